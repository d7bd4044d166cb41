/* The target verbs: target add | list | show | remove | set-thumbprint.
 * They validate their input here (usage errors exit 2) and ask the running
 * daemon over the admin socket, which owns the registry. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "admin_client.h"
#include "registry.h"
#include "server.h"
#include "thumbprint.h"
#include "util.h"


static int call(cli_ctx *c, const char *method, json_t *params, json_t **result)
{
	int r = cli_open_instance(c);

	if (r == 0)
		r = admin_client_call(c->inst, method, params, ADMIN_CLIENT_TIMEOUT_MS, result, &c->err);
	json_decref(params);
	return r;
}

static int one_name(cli_ctx *c, int argc, char **argv, int oi, const char **name)
{
	tether_error e;

	if (oi >= argc)
		return cli_usage_error(c, "the target NAME is missing");
	if (argc - oi > 1)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi + 1]);
	memset(&e, 0, sizeof(e));
	if (registry_name_ok(argv[oi], "target name", &e) < 0)
		return cli_usage_error(c, "%s", e.detail);
	*name = argv[oi];
	return 0;
}

static int parse_thumbprint(cli_ctx *c, const char *s, char out[TETHER_THUMBPRINT_HEX])
{
	tether_thumbprint tp;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (tether_thumbprint_parse(s, &tp, &e) < 0)
		return cli_usage_error(c, "%s", e.detail);
	tether_thumbprint_hex(&tp, out);
	return 0;
}

static const char *jstr(json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : dflt;
}

/* ------------------------------------------------------------- add */

enum { OPT_LISTENING = OPT__VERB_BASE, OPT_THUMBPRINT, OPT_TAG, OPT_POLLING };

typedef struct add_opts {
	const char *listening;
	int polling;
	const char *thumbprint;
	json_t *tags;
} add_opts;

static int add_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	add_opts *o = arg;
	tether_error e;

	switch (id) {
	case OPT_LISTENING:
		if (o->listening)
			return cli_usage_error(c, "--listening is given twice");
		o->listening = val;
		return 0;
	case OPT_POLLING:
		o->polling = 1;
		return 0;
	case OPT_THUMBPRINT:
		if (o->thumbprint)
			return cli_usage_error(c, "--thumbprint is given twice");
		o->thumbprint = val;
		return 0;
	case OPT_TAG:
		memset(&e, 0, sizeof(e));
		if (registry_name_ok(val, "tag", &e) < 0)
			return cli_usage_error(c, "%s", e.detail);
		if (json_array_size(o->tags) >= REG_TAGS_MAX)
			return cli_usage_error(c, "too many --tag options (at most %d)", REG_TAGS_MAX);
		json_array_append_new(o->tags, json_string(val));
		return 0;
	}
	return cli_usage_error(c, "unexpected option");
}

static int target_add(cli_ctx *c, int argc, char **argv)
{
	static const cli_opt opts[] = {
		{ "listening", required_argument, OPT_LISTENING, "HOST:PORT",
		  "the agent's address (it listens; also https://HOST:PORT; port defaults to 10933)" },
		{ "polling", no_argument, OPT_POLLING, NULL,
		  "the agent connects to this server ([polling] address) and is known by its thumbprint" },
		{ "thumbprint", required_argument, OPT_THUMBPRINT, "SHA256",
		  "the agent certificate's SHA-256 thumbprint ('tether-agent show-thumbprint' there)" },
		{ "tag", required_argument, OPT_TAG, "TAG", "a tag to select targets by (repeatable)" },
		{ NULL, 0, 0, NULL, NULL }
	};
	add_opts o = { NULL, 0, NULL, json_array() };
	char sha[TETHER_THUMBPRINT_HEX], *host = NULL;
	const char *name;
	json_t *res = NULL, *params;
	tether_error e;
	int oi, r, port;

	cli_options_first(argc, argv, opts);
	r = cli_parse(c, argc, argv, opts, "NAME (--listening HOST:PORT | --polling) --thumbprint SHA256 [--tag TAG]...",
	              "Register an agent as a target. Listening: the daemon connects to it at HOST:PORT.\n"
	              "Polling: the agent connects to this server and is known only by its authenticated\n"
	              "thumbprint. Either way it is trusted only if its certificate has this SHA-256 thumbprint.",
	              add_opt, &o, &oi);
	if (r)
		goto out;
	if ((r = one_name(c, argc, argv, oi, &name)) < 0)
		goto out;
	if (!o.listening && !o.polling) {
		r = cli_usage_error(c, "give --listening HOST:PORT (the agent's address) or --polling (the agent connects here)");
		goto out;
	}
	if (o.listening && o.polling) {
		r = cli_usage_error(c, "--listening and --polling exclude each other");
		goto out;
	}
	if (!o.thumbprint) {
		r = cli_usage_error(c, "--thumbprint SHA256 is missing: run 'tether-agent show-thumbprint' "
		                    "on the agent and give its SHA-256 thumbprint");
		goto out;
	}
	memset(&e, 0, sizeof(e));
	if (o.listening && registry_parse_address(o.listening, &host, &port, &e) < 0) {
		r = cli_usage_error(c, "%s", e.detail);
		goto out;
	}
	if ((r = parse_thumbprint(c, o.thumbprint, sha)) < 0)
		goto out;
	if (o.polling)
		params = json_pack("{s:s, s:s, s:s, s:O}", "name", name, "mode", "polling",
		                   "sha256", sha, "tags", o.tags);
	else
		params = json_pack("{s:s, s:s, s:s, s:s, s:O}", "name", name, "mode", "listening",
		                   "address", o.listening, "sha256", sha, "tags", o.tags);
	if ((r = call(c, "target.add", params, &res)) < 0)
		goto out;
	if (c->json) {
		cli_print_json(res);
		res = NULL;
	} else {
		if (o.polling)
			printf("Added target '%s': polling agent, thumbprint %s (it connects to this server's "
			       "[polling] address)\n", name, jstr(res, "sha256", "?"));
		else
			printf("Added target '%s': listening agent at %s, thumbprint %s\n", name,
			       jstr(res, "address", "?"), jstr(res, "sha256", "?"));
	}
out:
	free(host);
	json_decref(o.tags);
	json_decref(res);
	return r > 0 ? 0 : r;
}

/* ------------------------------------------------------------- list */

typedef struct list_opts {
	const char *tag;
} list_opts;

static int list_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	list_opts *o = arg;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (id != OPT_TAG)
		return cli_usage_error(c, "unexpected option");
	if (o->tag)
		return cli_usage_error(c, "--tag is given twice: list one tag at a time");
	if (registry_name_ok(val, "tag", &e) < 0)
		return cli_usage_error(c, "%s", e.detail);
	o->tag = val;
	return 0;
}

static void time_short(const char *iso, char *out, size_t cap)
{
	/* "2026-01-02T03:04:05Z" -> "2026-01-02 03:04:05" */
	if (!iso) {
		snprintf(out, cap, "never");
		return;
	}
	snprintf(out, cap, "%.10s %.8s", iso, strlen(iso) > 11 ? iso + 11 : "");
}

static int target_list(cli_ctx *c, int argc, char **argv)
{
	static const cli_opt opts[] = {
		{ "tag", required_argument, OPT_TAG, "TAG", "only the targets with this tag" },
		{ NULL, 0, 0, NULL, NULL }
	};
	list_opts o = { NULL };
	json_t *res = NULL, *arr, *t;
	size_t i, wn = 4, wa = 7, ws = 10;
	int oi, r;

	cli_options_first(argc, argv, opts);
	r = cli_parse(c, argc, argv, opts, "[--tag TAG] [--json]",
	              "List the registered targets with the result of their last health check.",
	              list_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = call(c, "target.list", o.tag ? json_pack("{s:s}", "tag", o.tag) : json_object(), &res);
	if (r < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	arr = json_object_get(res, "targets");
	if (json_array_size(arr) == 0) {
		if (o.tag)
			printf("No target has the tag '%s'.\n", o.tag);
		else
			printf("No targets registered: add one with 'tether-server target add NAME "
			       "--listening HOST:PORT --thumbprint SHA256'.\n");
		json_decref(res);
		return 0;
	}
	json_array_foreach(arr, i, t) {
		size_t n;
		if ((n = strlen(jstr(t, "name", ""))) > wn)
			wn = n;
		if ((n = strlen(jstr(t, "address", "-"))) > wa)
			wa = n;
		if ((n = strlen(jstr(t, "state", "unchecked"))) > ws)
			ws = n;
	}
	printf("%-*s  %-9s  %-*s  %-17s  %-*s  %s\n", (int)wn, "NAME", "MODE", (int)wa, "ADDRESS",
	       "THUMBPRINT", (int)ws, "LAST STATE", "LAST SEEN");
	json_array_foreach(arr, i, t) {
		char seen[32];
		time_short(json_string_value(json_object_get(t, "last_seen")), seen, sizeof(seen));
		/* "…" is one column but three bytes: print it outside the field */
		printf("%-*s  %-9s  %-*s  %.16s\xe2\x80\xa6  %-*s  %s\n", (int)wn, jstr(t, "name", ""),
		       jstr(t, "mode", "?"), (int)wa, jstr(t, "address", "-"), jstr(t, "sha256", "?"),
		       (int)ws, jstr(t, "state", "unchecked"), seen);
	}
	json_decref(res);
	return 0;
}

/* ------------------------------------------------------------- show */

static int target_show(cli_ctx *c, int argc, char **argv)
{
	static const char *const fields[] = {
		"mode", "address", "sha256", "created", "updated", "state", "category", "error",
		"last_checked", "last_seen", "rtt_ms", "tls_version", "cipher", "peer_sha256",
		"cert_signature_algorithm", NULL
	};
	const char *name;
	json_t *res = NULL, *v, *tags;
	size_t i;
	int oi, r;

	cli_options_first(argc, argv, NULL);
	r = cli_parse(c, argc, argv, NULL, "NAME [--json]",
	              "Show a target: its address, pinned thumbprint, tags and last health check.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = one_name(c, argc, argv, oi, &name)) < 0)
		return r;
	if ((r = call(c, "target.show", json_pack("{s:s}", "name", name), &res)) < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	printf("%-25s %s\n", "name:", jstr(res, "name", name));
	for (i = 0; fields[i]; i++) {
		char label[40];
		v = json_object_get(res, fields[i]);
		snprintf(label, sizeof(label), "%s:", fields[i]);
		if (json_is_string(v))
			printf("%-25s %s\n", label, json_string_value(v));
		else if (json_is_integer(v))
			printf("%-25s %" JSON_INTEGER_FORMAT "\n", label, json_integer_value(v));
		else if (!strcmp(fields[i], "state"))
			printf("%-25s %s\n", label, "unchecked (no health check yet)");
		else if (!strcmp(fields[i], "last_seen"))
			printf("%-25s %s\n", label, "never");
	}
	tags = json_object_get(res, "tags");
	printf("%-25s ", "tags:");
	json_array_foreach(tags, i, v)
		printf("%s%s", i ? ", " : "", json_string_value(v));
	printf("%s\n", json_array_size(tags) ? "" : "-");
	json_decref(res);
	return 0;
}

/* ----------------------------------------------------- remove, set-thumbprint */

static int target_remove(cli_ctx *c, int argc, char **argv)
{
	const char *name;
	json_t *res = NULL;
	int oi, r;

	cli_options_first(argc, argv, NULL);
	r = cli_parse(c, argc, argv, NULL, "NAME",
	              "Remove a target from the registry: the daemon stops contacting it.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = one_name(c, argc, argv, oi, &name)) < 0)
		return r;
	if ((r = call(c, "target.remove", json_pack("{s:s}", "name", name), &res)) < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	printf("Removed target '%s' (%s, thumbprint %s)\n", name, jstr(res, "address", "no address"),
	       jstr(res, "sha256", "?"));
	json_decref(res);
	return 0;
}

static int target_set_thumbprint(cli_ctx *c, int argc, char **argv)
{
	char sha[TETHER_THUMBPRINT_HEX];
	const char *name;
	json_t *res = NULL;
	int oi, r;

	cli_options_first(argc, argv, NULL);
	r = cli_parse(c, argc, argv, NULL, "NAME SHA256",
	              "Pin a new SHA-256 thumbprint for a target (after the agent got a new "
	              "certificate); the old one is no longer trusted.", NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (argc - oi < 2)
		return cli_usage_error(c, "%s", oi >= argc ? "the target NAME and the new SHA256 "
		                       "thumbprint are missing" : "the new SHA256 thumbprint is missing");
	if (argc - oi > 2)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi + 2]);
	if ((r = one_name(c, oi + 1, argv, oi, &name)) < 0)
		return r;
	if ((r = parse_thumbprint(c, argv[oi + 1], sha)) < 0)
		return r;
	r = call(c, "target.set-thumbprint", json_pack("{s:s, s:s}", "name", name, "sha256", sha), &res);
	if (r < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	if (!strcmp(jstr(res, "old_sha256", ""), sha))
		printf("Target '%s': thumbprint unchanged (%s)\n", name, sha);
	else
		printf("Target '%s': thumbprint %s \xe2\x86\x92 %s\n", name, jstr(res, "old_sha256", "?"), sha);
	json_decref(res);
	return 0;
}

/* ------------------------------------------------------------ dispatch */

static const struct {
	const char *name, *verb;
	int (*fn)(cli_ctx *c, int argc, char **argv);
	const char *summary;
} subs[] = {
	{ "add", "target add", target_add, "register an agent (NAME --listening HOST:PORT --thumbprint SHA256)" },
	{ "list", "target list", target_list, "list the targets and their last health check" },
	{ "show", "target show", target_show, "show one target" },
	{ "remove", "target remove", target_remove, "remove a target" },
	{ "set-thumbprint", "target set-thumbprint", target_set_thumbprint, "pin a target's new thumbprint" },
	{ NULL, NULL, NULL, NULL }
};

static void print_subs(cli_ctx *c, FILE *f)
{
	size_t i;

	fprintf(f, "Usage: %s target SUBVERB [OPTIONS]\n\nThe registry of agents this server "
	        "commands (kept by the running daemon).\n\nSubverbs:\n", c->prog->progname);
	for (i = 0; subs[i].name; i++)
		fprintf(f, "  %-16s %s\n", subs[i].name, subs[i].summary);
	fprintf(f, "\nEach takes --help, --instance NAME, --home DIR and (list, show) --json.\n");
}

int verb_target(cli_ctx *c, int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		print_subs(c, stderr);
		return cli_usage_error(c, "a subverb is missing");
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		print_subs(c, stdout);
		return 0;
	}
	for (i = 0; subs[i].name; i++) {
		if (!strcmp(subs[i].name, argv[1])) {
			c->verb = subs[i].verb;
			return subs[i].fn(c, argc - 1, argv + 1);
		}
	}
	return cli_usage_error(c, "unknown subverb '%s': use add, list, show, remove or set-thumbprint",
	                       argv[1]);
}
