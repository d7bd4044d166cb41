/* The service verb: install, remove and drive a systemd unit per instance.
 *
 * One unit per instance, tether-<program>-<instance>.service, in
 * /etc/systemd/system (or $TETHER_SYSTEMD_DIR).  It runs
 * "<this binary> run --instance NAME [--home DIR]".  systemctl is run
 * without a shell (posix_spawnp), its output goes straight to ours.
 *
 * The server's unit is sandboxed (ProtectSystem=strict and friends); the
 * agent's is not, because the agent exists to run an administrator's
 * scripts, which must be able to change the system.
 *
 * Test hooks: $TETHER_SYSTEMD_DIR (where units are written) and
 * $TETHER_SYSTEMCTL (the systemctl program; when set, it is used without
 * checking /run/systemd/system). */
#include "config.h"
#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "cli.h"
#include "fsutil.h"
#include "util.h"

extern char **environ;

#define SYSTEMD_DIR_DEFAULT "/etc/systemd/system"
#define SYSTEMD_RUNNING "/run/systemd/system"
#define UNIT_MAX (64 * 1024)

enum {
	A_INSTALL = OPT__VERB_BASE, A_UNINSTALL, A_START, A_STOP, A_RESTART, A_STATUS,
};

static const char *const action_names[] = {
	"install", "uninstall", "start", "stop", "restart", "status",
};

typedef struct service_opts {
	int action;             /* A_* or 0 */
	int count;
} service_opts;

typedef struct service {
	cli_ctx *c;
	char *unit;             /* tether-agent-default.service */
	char *unit_dir;
	char *unit_path;
	const char *systemctl;  /* program to run, NULL when systemd is absent */
	const char *absent_why; /* why systemd is considered absent */
	int user;               /* systemctl --user (not root) */
} service;

static int on_service_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	service_opts *o = arg;
	(void)c;
	(void)val;
	o->action = id;
	o->count++;
	return 0;
}

static const cli_opt service_opts_spec[] = {
	{ "install", no_argument, A_INSTALL, NULL, "write the systemd unit, reload systemd and enable it at boot" },
	{ "uninstall", no_argument, A_UNINSTALL, NULL, "stop and disable the service, remove the unit" },
	{ "start", no_argument, A_START, NULL, "start the service (systemctl start)" },
	{ "stop", no_argument, A_STOP, NULL, "stop the service (systemctl stop)" },
	{ "restart", no_argument, A_RESTART, NULL, "restart the service (systemctl restart)" },
	{ "status", no_argument, A_STATUS, NULL, "show the service's status (systemctl status); exit 1 if not running" },
	{ NULL, 0, 0, NULL, NULL }
};

/* Is prog an executable file, or found as one in $PATH? */
static int program_found(const char *prog)
{
	const char *path = getenv("PATH");
	char *p, *dir, *save = NULL;
	int found = 0;

	if (strchr(prog, '/'))
		return access(prog, X_OK) == 0;
	p = tether_strdup(path && *path ? path : "/usr/bin:/bin:/usr/sbin:/sbin");
	for (dir = strtok_r(p, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
		char *cand = tether_asprintf("%s/%s", *dir ? dir : ".", prog);
		found = access(cand, X_OK) == 0;
		free(cand);
	}
	free(p);
	return found;
}

static void detect_systemd(service *s)
{
	const char *override = getenv("TETHER_SYSTEMCTL");

	s->systemctl = NULL;
	if (override && *override) {
		if (program_found(override))
			s->systemctl = override;
		else
			s->absent_why = "the systemctl named by $TETHER_SYSTEMCTL was not found";
		return;
	}
	if (!tether_is_dir(SYSTEMD_RUNNING))
		s->absent_why = "systemd is not running on this machine (no " SYSTEMD_RUNNING ")";
	else if (!program_found("systemctl"))
		s->absent_why = "systemctl was not found in $PATH";
	else
		s->systemctl = "systemctl";
}

/* Run systemctl [--user] args...; its output is shown as it comes.
 * *status receives its exit status.  Fails only if it could not run. */
static int run_systemctl(service *s, const char *const *args, int *status)
{
	const char *argv[16];
	size_t n = 0, i;
	pid_t pid;
	int r, ws;

	argv[n++] = s->systemctl;
	if (s->user)
		argv[n++] = "--user";
	for (i = 0; args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	fflush(stdout);
	fflush(stderr);
	r = posix_spawnp(&pid, s->systemctl, NULL, NULL, (char *const *)argv, environ);
	if (r != 0)
		return tether_err_set(&s->c->err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot run %s: %s: check that systemd is installed", s->systemctl,
		                      strerror(r));
	while (waitpid(pid, &ws, 0) < 0) {
		if (errno != EINTR)
			return tether_err_set(&s->c->err, TETHER_ERR_IO, TETHER_CAT_IO,
			                      "cannot wait for %s: %s", s->systemctl, strerror(errno));
	}
	if (WIFSIGNALED(ws))
		return tether_err_set(&s->c->err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "%s %s was killed by signal %d", s->systemctl, args[0],
		                      WTERMSIG(ws));
	*status = WEXITSTATUS(ws);
	return 0;
}

/* systemctl ARGS, failing with a message if it exits non-zero. */
static int systemctl_must(service *s, const char *const *args, const char *what_next)
{
	int st = 0, r;

	r = run_systemctl(s, args, &st);
	if (r < 0)
		return r;
	if (st != 0)
		return tether_err_set(&s->c->err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "'systemctl %s%s %s' failed (exit %d, its message is above)%s%s",
		                      s->user ? "--user " : "", args[0], args[1] ? args[1] : "", st,
		                      what_next ? ": " : "", what_next ? what_next : "");
	return 0;
}

/* A path written into the unit: absolute and free of what systemd would
 * split or unquote.  '%' and '$' are escaped by unit_escape. */
static int unit_path_ok(service *s, const char *what, const char *p)
{
	const char *q;

	if (p[0] != '/')
		return tether_err_set(&s->c->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s '%s' is not an absolute path, which a systemd unit needs", what, p);
	for (q = p; *q; q++)
		if ((unsigned char)*q <= ' ' || *q == '"' || *q == '\'' || *q == '\\' || *q == 0x7f)
			return tether_err_set(&s->c->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s '%s' contains a space, quote, backslash or control character, "
			                      "which a systemd unit line cannot hold safely: use a plain path", what, p);
	return 0;
}

/* Write p with systemd specifiers escaped ('%' -> "%%"; '$' -> "$$" in
 * command lines, where $ expands variables). */
static void unit_escape(FILE *f, const char *p, int cmdline)
{
	for (; *p; p++) {
		if (*p == '%')
			fputs("%%", f);
		else if (*p == '$' && cmdline)
			fputs("$$", f);
		else
			fputc(*p, f);
	}
}

static char *dir_of(const char *path)
{
	char *d = tether_strdup(path), *slash = strrchr(d, '/');
	if (slash && slash != d)
		*slash = '\0';
	else if (slash)
		slash[1] = '\0';
	return d;
}

/* The absolute path of this program.  In a build tree libtool runs the
 * real binary from .libs/ through a wrapper script beside it; the unit
 * must name the wrapper, which sets up the library path.  A program behind
 * a front (cli_program.front) names the front, the command users run,
 * where it is installed (or in the build tree, if this one runs there). */
static int self_path(service *s, char **out)
{
	char buf[PATH_MAX];
	ssize_t n;
	char *dir, *base, *wrapper;
	size_t dl;

	if (s->c->prog->front) {
		char *front = cli_running_from_build_tree()
		                      ? tether_asprintf("%s/%s", TETHER_BUILD_DIR, s->c->prog->front)
		                      : tether_asprintf("%s/%s", TETHER_BINDIR, s->c->prog->front);
		char *real = realpath(front, NULL);

		free(front);
		if (real && access(real, X_OK) == 0) {
			*out = real;
			return 0;
		}
		free(real);     /* not there: name this program, as before */
	}
	n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
	if (n <= 0)
		return tether_err_set(&s->c->err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot find this program's own path (/proc/self/exe: %s): is /proc mounted?",
		                      n < 0 ? strerror(errno) : "empty");
	buf[n] = '\0';
	dir = dir_of(buf);
	base = strrchr(buf, '/') + 1;
	if (!strncmp(base, "lt-", 3))
		base += 3;
	dl = strlen(dir);
	if (dl >= 6 && !strcmp(dir + dl - 6, "/.libs")) {
		dir[dl - 6] = '\0';
		wrapper = tether_asprintf("%s/%s", dir, base);
		if (access(wrapper, X_OK) == 0) {
			free(dir);
			*out = wrapper;
			return 0;
		}
		free(wrapper);
	}
	free(dir);
	*out = tether_strdup(buf);
	return 0;
}

static int has_verb(const cli_program *p, const char *name)
{
	const cli_verb *v;
	for (v = p->verbs; v->name; v++)
		if (!strcmp(v->name, name))
			return 1;
	return 0;
}

/* Build the unit text into *out (malloc'd). */
static int unit_text(service *s, const char *exe, const char *home, char **out)
{
	cli_ctx *c = s->c;
	tether_instance *in = c->inst;
	int server = !strcmp(c->prog->program, "server");
	const char *provider_path = getenv("TETHER_PROVIDER_PATH");
	const char *log_file = tether_config_get(c->conf, "log", "file", NULL);
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	int r;

	if ((r = unit_path_ok(s, "the program path", exe)) < 0)
		return r;
	if (home && (r = unit_path_ok(s, "the --home directory", home)) < 0)
		return r;
	if (provider_path && *provider_path && strchr(provider_path, '/') &&
	    (r = unit_path_ok(s, "$TETHER_PROVIDER_PATH", provider_path)) < 0)
		return r;
	if (server && !s->user) {
		if ((r = unit_path_ok(s, "the state directory", in->state_dir)) < 0)
			return r;
		if (log_file && log_file[0] == '/' && (r = unit_path_ok(s, "[log] file", log_file)) < 0)
			return r;
	}
	f = open_memstream(&text, &len);
	if (!f)
		return tether_err_set(&c->err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	fprintf(f, "# Written by '%s service --install --instance %s'.\n"
	           "# Changes are lost on the next --install; add a drop-in instead\n"
	           "# ('systemctl edit %s').\n", c->prog->progname, in->name, s->unit);
	fprintf(f, "[Unit]\nDescription=tether %s, instance %s\n", c->prog->program, in->name);
	fprintf(f, "Documentation=man:%s(8)\n", c->prog->progname);
	fprintf(f, "Wants=network-online.target\nAfter=network-online.target\n\n");
	fprintf(f, "[Service]\nType=simple\nExecStart=");
	unit_escape(f, exe, 1);
	fprintf(f, " run --instance %s", in->name);
	if (home) {
		fputs(" --home ", f);
		unit_escape(f, home, 1);
	}
	fputc('\n', f);
	if (provider_path && *provider_path) {
		/* Installed with a provider path in the environment: keep it, or the
		 * service would not find the provider the operator tested with. */
		fputs("Environment=TETHER_PROVIDER_PATH=", f);
		unit_escape(f, provider_path, 0);
		fputc('\n', f);
	}
	fprintf(f, "Restart=on-failure\nRestartSec=5\nKillSignal=SIGTERM\nTimeoutStopSec=30\n"
	           "LimitNOFILE=65536\n");
	if (server && !s->user) {
		fprintf(f, "# Sandbox: the server needs to write only its state, its admin socket\n"
		           "# and its log.  Its config is edited by the CLI, never by the daemon,\n"
		           "# so it stays read-only here.\n"
		           "NoNewPrivileges=yes\nProtectSystem=strict\n");
		/* A private /tmp would hide a --home under /tmp. */
		if (!home || (strncmp(home, "/tmp/", 5) && strncmp(home, "/var/tmp/", 9)))
			fputs("PrivateTmp=yes\n", f);
		if (home) {
			fputs("ReadWritePaths=", f);
			unit_escape(f, in->base_dir, 0);
			fputc('\n', f);
			/* ProtectHome=yes would hide a --home under /home or /root. */
			if (!strncmp(home, "/home/", 6) || !strcmp(home, "/home") ||
			    !strncmp(home, "/root", 5) || !strncmp(home, "/run/user/", 10))
				fputs("ProtectHome=read-only\n", f);
			else
				fputs("ProtectHome=yes\n", f);
		} else {
			fputs("ReadWritePaths=", f);
			unit_escape(f, in->state_dir, 0);
			fputc('\n', f);
			/* /run/tether/<program>-<name>, created by systemd at each start. */
			fprintf(f, "RuntimeDirectory=tether/%s-%s\nRuntimeDirectoryMode=0750\n",
			        c->prog->program, in->name);
			fputs("ProtectHome=yes\n", f);
		}
		if (log_file && log_file[0] == '/') {
			char *d = dir_of(log_file);
			fputs("ReadWritePaths=-", f);
			unit_escape(f, d, 0);
			fputc('\n', f);
			free(d);
		}
		fputs("ProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectControlGroups=yes\n"
		      "RestrictSUIDSGID=yes\nLockPersonality=yes\n", f);
	} else if (!server) {
		fputs("# No sandbox: the agent runs its administrators' scripts, which must be\n"
		      "# able to change the system (no ProtectSystem=, no NoNewPrivileges=, so\n"
		      "# sudo works, and no PrivateTmp=).\n", f);
		if (!home)
			fprintf(f, "RuntimeDirectory=tether/%s-%s\nRuntimeDirectoryMode=0750\n",
			        c->prog->program, in->name);
	}
	fprintf(f, "\n[Install]\nWantedBy=%s\n", s->user ? "default.target" : "multi-user.target");
	if (fclose(f) != 0 || !text) {
		free(text);
		return tether_err_set(&c->err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	}
	*out = text;
	return 0;
}

/* The ExecStart= line of a unit text, or NULL. */
static char *execstart_of(const char *text)
{
	const char *p = strstr(text, "\nExecStart=");
	const char *e;

	if (!p)
		return NULL;
	p++;
	e = strchr(p, '\n');
	return e ? strndup(p, (size_t)(e - p)) : tether_strdup(p);
}

static int do_install(service *s)
{
	cli_ctx *c = s->c;
	char *exe = NULL, *text = NULL, *old_exec = NULL, *new_exec = NULL;
	unsigned char *old = NULL;
	size_t old_len = 0;
	int r;

	r = self_path(s, &exe);
	if (r < 0)
		goto out;
	r = unit_text(s, exe, c->home, &text);
	if (r < 0)
		goto out;
	if (tether_path_exists(s->unit_path)) {
		r = tether_read_file(s->unit_path, UNIT_MAX, &old, &old_len, &c->err);
		if (r < 0)
			goto out;
		old_exec = execstart_of((char *)old);
		new_exec = execstart_of(text);
		if (old_exec && new_exec && strcmp(old_exec, new_exec)) {
			r = tether_err_set(&c->err, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT,
			                   "%s already exists and runs something else (%s): if it is an old "
			                   "install of this instance, remove it with 'service --uninstall' "
			                   "(or delete the file) and install again (nothing was changed)",
			                   s->unit_path, old_exec);
			goto out;
		}
	}
	r = tether_mkdirs(s->unit_dir, 0755, &c->err);
	if (r < 0)
		goto out;
	r = tether_write_atomic(s->unit_path, text, strlen(text), 0644, &c->err);
	if (r < 0) {
		if (r == TETHER_ERR_PERMISSION)
			tether_err_prefix(&c->err, "cannot write the unit file: run as root, or set "
			                  "TETHER_SYSTEMD_DIR (e.g. ~/.config/systemd/user) for a user service");
		goto out;
	}
	printf("Wrote %s\n", s->unit_path);
	if (!has_verb(c->prog, "run"))
		fprintf(stderr, "warning: this %s has no 'run' verb yet, so the service cannot start "
		        "until a version that has one is installed\n", c->prog->progname);
	if (!s->systemctl) {
		printf("%s, so systemctl was not run. Where systemd runs, activate the unit with:\n"
		       "  systemctl%s daemon-reload\n  systemctl%s enable --now %s\n",
		       s->absent_why, s->user ? " --user" : "", s->user ? " --user" : "", s->unit);
		r = 0;
		goto out;
	}
	r = systemctl_must(s, (const char *const[]){ "daemon-reload", NULL },
	                   "the unit file was written; run 'systemctl daemon-reload' as root");
	if (r < 0)
		goto out;
	r = systemctl_must(s, (const char *const[]){ "enable", s->unit, NULL },
	                   "the unit file was written and systemd reloaded; fix the cause and run "
	                   "'systemctl enable' on it");
	if (r < 0)
		goto out;
	printf("Enabled %s (it starts at boot). Start it now with '%s service --start%s%s'.\n",
	       s->unit, c->prog->progname, c->instance_name ? " --instance " : "",
	       c->instance_name ? c->instance_name : "");
	r = 0;
out:
	free(exe);
	free(text);
	free(old);
	free(old_exec);
	free(new_exec);
	return r;
}

static int do_uninstall(service *s)
{
	cli_ctx *c = s->c;
	int st = 0, r;

	if (!tether_path_exists(s->unit_path))
		return tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                      "%s does not exist, so there is nothing to uninstall (is the instance "
		                      "name right? is TETHER_SYSTEMD_DIR the same as at install?)", s->unit_path);
	if (s->systemctl) {
		/* disable --now stops it too; a unit systemd never loaded fails
		 * here, which must not keep us from removing the file. */
		r = run_systemctl(s, (const char *const[]){ "disable", "--now", s->unit, NULL }, &st);
		if (r < 0)
			return r;
		if (st != 0)
			fprintf(stderr, "warning: 'systemctl disable --now %s' exited %d (message above); "
			        "removing the unit file anyway\n", s->unit, st);
	}
	if (unlink(s->unit_path) < 0)
		return tether_err_set(&c->err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                      TETHER_CAT_IO, "cannot remove %s: %s%s", s->unit_path, strerror(errno),
		                      errno == EACCES ? ": run as root" : "");
	printf("Removed %s\n", s->unit_path);
	if (!s->systemctl) {
		printf("%s, so systemctl was not run.\n", s->absent_why);
		return 0;
	}
	r = systemctl_must(s, (const char *const[]){ "daemon-reload", NULL },
	                   "the unit file was removed; run 'systemctl daemon-reload' as root");
	if (r < 0)
		return r;
	printf("Stopped and disabled %s.\n", s->unit);
	return 0;
}

static int do_control(service *s, int action)
{
	cli_ctx *c = s->c;
	const char *verb = action_names[action - A_INSTALL];
	char *next;
	int st = 0, r;

	if (!s->systemctl)
		return tether_err_set(&c->err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                      "cannot %s %s: %s, and only systemd is supported: start the program "
		                      "with its own command line, under another supervisor", verb, s->unit,
		                      s->absent_why);
	if (!tether_path_exists(s->unit_path))
		return tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                      "%s is not installed (no %s): run '%s service --install%s' first",
		                      s->unit, s->unit_path, c->prog->progname, cli_args(c));
	if (action == A_STATUS) {
		r = run_systemctl(s, (const char *const[]){ "status", "--no-pager", "--full", s->unit, NULL }, &st);
		if (r < 0)
			return r;
		if (st == 3)
			return tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
			                      "%s is not running: start it with '%s service --start%s', and see "
			                      "'journalctl -u %s' if it stopped by itself", s->unit,
			                      c->prog->progname, cli_args(c), s->unit);
		if (st != 0)
			return tether_err_set(&c->err, TETHER_ERR_IO, TETHER_CAT_IO,
			                      "'systemctl status %s' failed (exit %d, its message is above)",
			                      s->unit, st);
		return 0;
	}
	next = tether_asprintf("see why with '%s service --status%s%s' and 'journalctl -u %s'",
	                       c->prog->progname, c->instance_name ? " --instance " : "",
	                       c->instance_name ? c->instance_name : "", s->unit);
	r = systemctl_must(s, (const char *const[]){ verb, s->unit, NULL }, next);
	free(next);
	if (r < 0)
		return r;
	printf("%s %s.\n", action == A_START ? "Started" : action == A_STOP ? "Stopped" : "Restarted",
	       s->unit);
	return 0;
}

int verb_service(cli_ctx *c, int argc, char **argv)
{
	service_opts o = { 0, 0 };
	service s;
	const char *dir, *home_arg;
	char *abs_home = NULL;
	int oi, r;

	memset(&s, 0, sizeof(s));
	s.c = c;
	r = cli_parse(c, argc, argv, service_opts_spec,
	              "--install|--uninstall|--start|--stop|--restart|--status [--instance NAME]",
	              "Run this instance as a systemd service, one unit per instance:\n"
	              "tether-PROGRAM-INSTANCE.service in /etc/systemd/system (or $TETHER_SYSTEMD_DIR), running\n"
	              "'<this program> run --instance NAME [--home DIR]', restarted on failure.\n"
	              "Without systemd, --install only writes the unit and says what to run.",
	              on_service_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (o.count == 0)
		return cli_usage_error(c, "give one of --install, --uninstall, --start, --stop, --restart, --status");
	if (o.count > 1)
		return cli_usage_error(c, "give only one of --install, --uninstall, --start, --stop, --restart, --status");
	/* The unit runs from /, so --home must be absolute. */
	home_arg = c->home;
	if (c->home) {
		abs_home = realpath(c->home, NULL);
		if (!abs_home && o.action == A_INSTALL)
			return tether_err_set(&c->err, errno == ENOENT ? TETHER_ERR_NOT_FOUND : TETHER_ERR_IO,
			                      TETHER_CAT_NOT_FOUND, "cannot use --home %s: %s: create the "
			                      "instance there first ('%s create-instance --home %s')",
			                      c->home, strerror(errno), c->prog->progname, c->home);
		if (abs_home)
			c->home = abs_home;
	}
	/* --install needs the instance (and reads its config); the others work
	 * on the unit alone, so that a deleted instance can still be removed. */
	if (o.action == A_INSTALL)
		r = cli_open_instance(c);
	else
		r = tether_instance_init(c->prog->program, c->instance_name, c->home, &c->inst, &c->err);
	if (r < 0)
		goto out;
	dir = getenv("TETHER_SYSTEMD_DIR");
	s.unit_dir = tether_strdup(dir && *dir ? dir : SYSTEMD_DIR_DEFAULT);
	s.unit = tether_asprintf("tether-%s-%s.service", c->prog->program, c->inst->name);
	s.unit_path = tether_asprintf("%s/%s", s.unit_dir, s.unit);
	/* A non-root user with their own unit directory drives their own
	 * systemd instance; anyone else talks to the system manager. */
	s.user = geteuid() != 0 && strcmp(s.unit_dir, SYSTEMD_DIR_DEFAULT) != 0;
	detect_systemd(&s);
	switch (o.action) {
	case A_INSTALL: r = do_install(&s); break;
	case A_UNINSTALL: r = do_uninstall(&s); break;
	default: r = do_control(&s, o.action); break;
	}
out:
	c->home = home_arg;
	free(abs_home);
	free(s.unit);
	free(s.unit_dir);
	free(s.unit_path);
	return r;
}
