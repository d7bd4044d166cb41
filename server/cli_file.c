/* tether-server upload TARGET LOCAL REMOTE and download TARGET REMOTE LOCAL:
 * start the transfer in the daemon (server/transfer.c), then long-poll its
 * progress; a progress bar on a terminal (stderr), none otherwise; the
 * SHA-256 at the end.  Ctrl-C cancels the transfer. */
#include "config.h"
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include "admin_client.h"
#include "server.h"
#include "util.h"

#define POLL_MS 500
#define FAILURES_MAX 5               /* consecutive failed progress calls */
#define CANCEL_WAIT_MS 30000

enum { O_MODE = OPT__VERB_BASE, O_NO_OVERWRITE };

typedef struct file_opts {
	const char *mode;
	int no_overwrite;
} file_opts;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	file_opts *o = arg;
	(void)c;
	if (id == O_MODE)
		o->mode = val;
	else if (id == O_NO_OVERWRITE)
		o->no_overwrite = 1;
	return 0;
}

static const cli_opt upload_spec[] = {
	{ "mode", required_argument, O_MODE, "MODE", "octal mode of the file on the agent (default: keep the "
	  "replaced file's, or 0644)" },
	{ "no-overwrite", no_argument, O_NO_OVERWRITE, NULL, "fail if REMOTE exists" },
	{ NULL, 0, 0, NULL, NULL }
};

static const cli_opt download_spec[] = {
	{ "no-overwrite", no_argument, O_NO_OVERWRITE, NULL, "fail if LOCAL exists" },
	{ NULL, 0, 0, NULL, NULL }
};

static void human(double v, char *out, size_t cap)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;
	while (v >= 1024.0 && u < 4) {
		v /= 1024.0;
		u++;
	}
	if (u == 0)
		snprintf(out, cap, "%.0f %s", v, units[u]);
	else
		snprintf(out, cap, "%.1f %s", v, units[u]);
}

static json_int_t num(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	return json_is_integer(v) ? json_integer_value(v) : -1;
}

static const char *str(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

static void draw(json_t *p)
{
	json_int_t bytes = num(p, "bytes"), total = num(p, "total"), rate = num(p, "rate"), eta = num(p, "eta_s");
	char b[32], t[32], r[32], e[32] = "--:--", bar[32];
	int i, fill = 0;

	human((double)(bytes < 0 ? 0 : bytes), b, sizeof(b));
	human((double)(rate < 0 ? 0 : rate), r, sizeof(r));
	if (eta >= 0)
		snprintf(e, sizeof(e), "%lld:%02lld", (long long)(eta / 60), (long long)(eta % 60));
	if (total > 0) {
		human((double)total, t, sizeof(t));
		fill = (int)(bytes * 25 / total);
		for (i = 0; i < 25; i++)
			bar[i] = i < fill ? '#' : ' ';
		bar[25] = '\0';
		fprintf(stderr, "\r[%s] %3d%%  %s / %s  %s/s  ETA %s   ", bar, (int)(bytes * 100 / total), b, t, r, e);
	} else {
		fprintf(stderr, "\r%s  %s/s  (%s)   ", b, r, str(p, "state"));
	}
	fflush(stderr);
}

/* Make path absolute (the daemon has another working directory). */
static char *absolute(const char *path)
{
	char cwd[PATH_MAX];
	if (path[0] == '/')
		return tether_strdup(path);
	if (!getcwd(cwd, sizeof(cwd)))
		return NULL;
	return tether_asprintf("%s/%s", cwd, path);
}

static int run(cli_ctx *c, const char *method, json_t *params)
{
	json_t *res = NULL, *p = NULL, *q;
	const char *id, *state = "";
	int tty = isatty(2), r, failures = 0, cancel_sent = 0;
	uint64_t cancel_at = 0;
	struct sigaction sa, old_int, old_term;

	r = admin_client_call(c->inst, method, params, ADMIN_CLIENT_TIMEOUT_MS, &res, &c->err);
	if (r < 0)
		return r;
	id = str(res, "transfer_id");
	if (!*id) {
		json_decref(res);
		return tether_err_set(&c->err, TETHER_ERR_PROTOCOL, TETHER_CAT_INTERNAL,
		                      "the daemon started the transfer but gave no transfer_id");
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigint;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	q = json_pack("{s:s, s:i}", "transfer_id", id, "wait_ms", POLL_MS);
	for (;;) {
		json_t *np = NULL;
		if (interrupted && !cancel_sent) {
			json_t *cr = NULL, *cp = json_pack("{s:s}", "transfer_id", id);
			tether_error ce;
			cancel_sent = 1;
			cancel_at = tether_now_ms();
			if (tty)
				fprintf(stderr, "\ncancelling...\n");
			if (admin_client_call(c->inst, "file.cancel", cp, ADMIN_CLIENT_TIMEOUT_MS, &cr, &ce) < 0)
				fprintf(stderr, "cannot cancel the transfer: %s\n", ce.detail);
			json_decref(cr);
			json_decref(cp);
		}
		if (cancel_sent && tether_now_ms() - cancel_at > CANCEL_WAIT_MS) {
			r = tether_err_set(&c->err, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
			                   "the transfer %s did not stop within 30 s of the cancel; see "
			                   "'journalctl' or the daemon's log", id);
			goto out;
		}
		r = admin_client_call(c->inst, "file.progress", q, POLL_MS + ADMIN_CLIENT_TIMEOUT_MS, &np, &c->err);
		if (r < 0) {
			if (++failures >= FAILURES_MAX || r == TETHER_ERR_NOT_FOUND)
				goto out;
			usleep(200000);
			continue;
		}
		failures = 0;
		json_decref(p);
		p = np;
		state = str(p, "state");
		if (!strcmp(state, "done") || !strcmp(state, "failed") || !strcmp(state, "cancelled"))
			break;
		if (tty)
			draw(p);
	}
	if (tty) {
		if (!strcmp(state, "done"))
			draw(p);
		fprintf(stderr, "\n");
	}
	if (strcmp(state, "done")) {
		r = tether_err_set(&c->err, TETHER_ERR_IO, TETHER_CAT_NONE, "%s %s %s: %s (%s)", !strcmp(state, "cancelled") ? "cancelled:" : "failed:",
		                   str(p, "local"), str(p, "remote"), str(p, "error"), str(p, "category"));
		goto out;
	}
	if (c->json) {
		cli_print_json(json_incref(p));
	} else {
		json_t *agent = json_object_get(p, "agent");
		char sz[32];
		human((double)num(p, "bytes"), sz, sizeof(sz));
		if (!strcmp(str(p, "direction"), "upload"))
			printf("uploaded %s to %s:%s (%lld bytes, %s)\n", str(p, "local"), str(p, "target"),
			       str(agent, "absolute")[0] ? str(agent, "absolute") : str(p, "remote"),
			       (long long)num(p, "bytes"), sz);
		else
			printf("downloaded %s:%s to %s (%lld bytes, %s)\n", str(p, "target"),
			       str(agent, "absolute")[0] ? str(agent, "absolute") : str(p, "remote"), str(p, "local"),
			       (long long)num(p, "bytes"), sz);
		printf("sha256 %s\n", str(p, "sha256"));
	}
	r = 0;
out:
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	json_decref(q);
	json_decref(p);
	json_decref(res);
	return r;
}

int verb_upload(cli_ctx *c, int argc, char **argv)
{
	file_opts o = { 0 };
	json_t *params;
	char *local;
	int oi, r;

	r = cli_parse(c, argc, argv, upload_spec, "TARGET LOCAL REMOTE [--mode MODE] [--no-overwrite]",
	              "Send the file LOCAL (on this machine) to REMOTE on the agent TARGET. REMOTE is confined\n"
	              "to the agent's [files] roots; a relative REMOTE goes under the first root. The agent\n"
	              "writes a temporary file beside REMOTE and renames it over REMOTE only once its size\n"
	              "and SHA-256 match what was sent: a failed transfer leaves REMOTE as it was.\n"
	              "A progress bar is shown on a terminal; Ctrl-C cancels.",
	              on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (argc - oi != 3)
		return cli_usage_error(c, "give TARGET LOCAL REMOTE");
	r = cli_open_instance(c);
	if (r < 0)
		return r;
	local = realpath(argv[oi + 1], NULL);
	if (!local)
		return tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, "cannot open %s: %s",
		                      argv[oi + 1], strerror(errno));
	params = json_pack("{s:s, s:s, s:s, s:b}", "target", argv[oi], "local", local, "remote", argv[oi + 2],
	                   "overwrite", !o.no_overwrite);
	if (o.mode)
		json_object_set_new(params, "mode", json_string(o.mode));
	r = run(c, "file.upload", params);
	json_decref(params);
	free(local);
	return r;
}

int verb_download(cli_ctx *c, int argc, char **argv)
{
	file_opts o = { 0 };
	json_t *params;
	char *local;
	struct stat st;
	int oi, r;

	r = cli_parse(c, argc, argv, download_spec, "TARGET REMOTE LOCAL [--no-overwrite]",
	              "Fetch REMOTE from the agent TARGET into LOCAL on this machine (a directory: the file\n"
	              "keeps its name). The data goes to a temporary file beside LOCAL, which replaces LOCAL\n"
	              "only once its SHA-256 matches the agent's. A progress bar is shown on a terminal;\n"
	              "Ctrl-C cancels.",
	              on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (argc - oi != 3)
		return cli_usage_error(c, "give TARGET REMOTE LOCAL");
	r = cli_open_instance(c);
	if (r < 0)
		return r;
	local = absolute(argv[oi + 2]);
	if (!local)
		return tether_err_set(&c->err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot find the current directory: %s",
		                      strerror(errno));
	if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
		char *rem = tether_strdup(argv[oi + 1]), *joined;
		joined = tether_asprintf("%s/%s", local, basename(rem));
		free(rem);
		free(local);
		local = joined;
	}
	params = json_pack("{s:s, s:s, s:s, s:b}", "target", argv[oi], "local", local, "remote", argv[oi + 1],
	                   "overwrite", !o.no_overwrite);
	r = run(c, "file.download", params);
	json_decref(params);
	free(local);
	return r;
}
