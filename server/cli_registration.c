/* The registration verbs: registrations list | accept ID [--name NEW] |
 * reject ID, and token create [--expires DURATION] [--tag T]... | list |
 * revoke ID.  They ask the running daemon over the admin socket; it owns
 * the registry (server/registration.c). */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include "admin_client.h"
#include "registry.h"
#include "server.h"
#include "util.h"

enum { O_NAME = OPT__VERB_BASE, O_STATE, O_EXPIRES, O_TAG };

typedef struct sub {
	const char *name;
	const char *verb;
	int (*fn)(cli_ctx *c, int argc, char **argv);
} sub;


static int call(cli_ctx *c, const char *method, json_t *params, json_t **result)
{
	int r = cli_open_instance(c);

	if (r == 0)
		r = admin_client_call(c->inst, method, params, ADMIN_CLIENT_TIMEOUT_MS, result, &c->err);
	json_decref(params);
	return r;
}

static const char *jstr(json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : dflt;
}

static int dispatch(cli_ctx *c, int argc, char **argv, const sub *subs, const char *names)
{
	size_t i;

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		FILE *f = argc < 2 ? stderr : stdout;
		fprintf(f, "Usage: %s %s SUBVERB [OPTIONS]\n\nSubverbs:", c->prog->progname, c->verb);
		for (i = 0; subs[i].name; i++)
			fprintf(f, " %s", subs[i].name);
		fprintf(f, "\n\nEach subverb takes --help.\n");
		return argc < 2 ? cli_usage_error(c, "a subverb is missing: use %s", names) : 0;
	}
	for (i = 0; subs[i].name; i++)
		if (!strcmp(subs[i].name, argv[1])) {
			c->verb = subs[i].verb;
			return subs[i].fn(c, argc - 1, argv + 1);
		}
	return cli_usage_error(c, "unknown subverb '%s': use %s", argv[1], names);
}

/* -------------------------------------------------- registrations */

typedef struct reg_opts {
	const char *name;
	const char *state;
} reg_opts;

static int reg_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	reg_opts *o = arg;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (id == O_NAME) {
		if (registry_name_ok(val, "target name", &e) < 0)
			return cli_usage_error(c, "--name: %s", e.detail);
		o->name = val;
	} else if (id == O_STATE) {
		if (strcmp(val, "pending") && strcmp(val, "accepted") && strcmp(val, "rejected"))
			return cli_usage_error(c, "--state '%s': use pending, accepted or rejected", val);
		o->state = val;
	}
	return 0;
}

static int one_id(cli_ctx *c, int argc, char **argv, int oi, long long *id)
{
	char *end;

	if (oi >= argc)
		return cli_usage_error(c, "the registration ID is missing ('tether-server registrations list' shows them)");
	if (argc - oi > 1)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi + 1]);
	*id = strtoll(argv[oi], &end, 10);
	if (*end || *id < 1)
		return cli_usage_error(c, "'%s' is not a registration ID (a positive number)", argv[oi]);
	return 0;
}

static int reg_list(cli_ctx *c, int argc, char **argv)
{
	static const cli_opt opts[] = {
		{ "state", required_argument, O_STATE, "STATE", "only pending, accepted or rejected registrations" },
		{ NULL, 0, 0, NULL, NULL }
	};
	reg_opts o = { NULL, NULL };
	json_t *res = NULL, *t;
	size_t i, wn = 4;
	int oi, r;

	cli_options_first(argc, argv, opts);
	r = cli_parse(c, argc, argv, opts, "[--state STATE] [--json]",
	              "List the agents that asked to be registered, oldest first, and what became of them.",
	              reg_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = call(c, "registration.list", o.state ? json_pack("{s:s}", "state", o.state) : json_object(), &res);
	if (r < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	if (json_array_size(res) == 0) {
		printf("No registrations%s%s.\n", o.state ? " in state " : "", o.state ? o.state : "");
		json_decref(res);
		return 0;
	}
	json_array_foreach(res, i, t) {
		size_t n = strlen(jstr(t, "name", ""));
		if (n > wn)
			wn = n;
	}
	printf("%-5s  %-8s  %-*s  %-9s  %-64s  %-21s  %s\n", "ID", "STATE", (int)wn, "NAME", "MODE", "SHA256",
	       "FROM", "ASKED");
	json_array_foreach(res, i, t) {
		printf("%-5lld  %-8s  %-*s  %-9s  %-64s  %-21s  %s\n",
		       (long long)json_integer_value(json_object_get(t, "id")), jstr(t, "state", "?"), (int)wn,
		       jstr(t, "name", ""), jstr(t, "mode", "?"), jstr(t, "sha256", "?"), jstr(t, "peer", "-"),
		       jstr(t, "created", "-"));
		if (json_string_value(json_object_get(t, "note")))
			printf("       note: %s\n", jstr(t, "note", ""));
		if (!strcmp(jstr(t, "state", ""), "accepted"))
			printf("       target %s, by %s\n", jstr(t, "target", "?"), jstr(t, "decided_by", "?"));
		else if (!strcmp(jstr(t, "state", ""), "rejected"))
			printf("       rejected by %s\n", jstr(t, "decided_by", "?"));
	}
	json_decref(res);
	return 0;
}

static int reg_decide(cli_ctx *c, int argc, char **argv, int accept)
{
	static const cli_opt accept_opts[] = {
		{ "name", required_argument, O_NAME, "NEW", "create the target under this name instead of the one asked for" },
		{ NULL, 0, 0, NULL, NULL }
	};
	reg_opts o = { NULL, NULL };
	json_t *res = NULL, *params;
	long long id = 0;
	int oi, r;

	cli_options_first(argc, argv, accept ? accept_opts : NULL);
	r = cli_parse(c, argc, argv, accept ? accept_opts : NULL, accept ? "ID [--name NEW]" : "ID",
	              accept ? "Accept a registration: create its target, pinned to the certificate the agent\n"
	                       "presented when it registered. A name already used by a target is never replaced:\n"
	                       "give --name NEW instead."
	                     : "Reject a registration: the agent gets nothing, and asking again with the same\n"
	                       "certificate is refused until the registration is accepted.",
	              reg_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = one_id(c, argc, argv, oi, &id)) < 0)
		return r;
	params = json_pack("{s:I}", "id", (json_int_t)id);
	if (o.name)
		json_object_set_new(params, "name", json_string(o.name));
	r = call(c, accept ? "registration.accept" : "registration.reject", params, &res);
	if (r < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	if (accept)
		printf("Registration %lld accepted: %s target %s pinned to %s\n%s", id, jstr(res, "mode", "?"),
		       jstr(res, "target", "?"), jstr(res, "sha256", "?"),
		       !strcmp(jstr(res, "mode", ""), "polling") ?
		       "The agent connects at its next attempt ('tether-agent run' on the agent, if it is not running).\n" :
		       "Check it with 'tether-server health NAME'.\n");
	else
		printf("Registration %lld rejected (certificate %s)\n", id, jstr(res, "sha256", "?"));
	json_decref(res);
	return 0;
}

static int reg_accept(cli_ctx *c, int argc, char **argv) { return reg_decide(c, argc, argv, 1); }
static int reg_reject(cli_ctx *c, int argc, char **argv) { return reg_decide(c, argc, argv, 0); }

int verb_registrations(cli_ctx *c, int argc, char **argv)
{
	static const sub subs[] = {
		{ "list", "registrations list", reg_list },
		{ "accept", "registrations accept", reg_accept },
		{ "reject", "registrations reject", reg_reject },
		{ NULL, NULL, NULL }
	};
	return dispatch(c, argc, argv, subs, "list, accept ID or reject ID");
}

/* -------------------------------------------------- tokens */

typedef struct tok_opts {
	long long expires;
	json_t *tags;
} tok_opts;

/* "90s", "30m", "24h", "7d", "2w", or plain seconds. */
static long long parse_duration(const char *s)
{
	char *end;
	long long v = strtoll(s, &end, 10), mul = 1;

	if (end == s || v < 1)
		return -1;
	if (*end == 's')
		mul = 1;
	else if (*end == 'm')
		mul = 60;
	else if (*end == 'h')
		mul = 3600;
	else if (*end == 'd')
		mul = 86400;
	else if (*end == 'w')
		mul = 7 * 86400;
	else if (*end)
		return -1;
	if (*end && end[1])
		return -1;
	if (v > 366LL * 86400 / mul)
		return -1;
	return v * mul;
}

static int tok_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	tok_opts *o = arg;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (id == O_EXPIRES) {
		o->expires = parse_duration(val);
		if (o->expires < 1)
			return cli_usage_error(c, "--expires '%s': give a duration such as 30m, 24h or 7d (at most 366d)", val);
	} else if (id == O_TAG) {
		if (registry_name_ok(val, "tag", &e) < 0)
			return cli_usage_error(c, "--tag: %s", e.detail);
		if (json_array_size(o->tags) >= REG_TAGS_MAX)
			return cli_usage_error(c, "at most %d tags", REG_TAGS_MAX);
		json_array_append_new(o->tags, json_string(val));
	}
	return 0;
}

static int tok_create(cli_ctx *c, int argc, char **argv)
{
	static const cli_opt opts[] = {
		{ "expires", required_argument, O_EXPIRES, "DURATION", "how long the token stays valid: 30m, 24h, 7d (default 24h)" },
		{ "tag", required_argument, O_TAG, "TAG", "give the target this tag (repeatable)" },
		{ NULL, 0, 0, NULL, NULL }
	};
	tok_opts o;
	json_t *res = NULL, *params;
	int oi, r;

	o.expires = 0;
	o.tags = json_array();
	cli_options_first(argc, argv, opts);
	r = cli_parse(c, argc, argv, opts, "[--expires DURATION] [--tag T]...",
	              "Create a one-time registration token for an automated install. An agent that registers\n"
	              "with it ('tether-agent register-with --token-file F') is accepted at once, unless its\n"
	              "name is taken. The token also names this server's thumbprint, so the agent checks the\n"
	              "server with it. Only a hash of it is stored: keep it secret until it is used.",
	              tok_opt, &o, &oi);
	if (r || oi < argc) {
		json_decref(o.tags);
		if (!r)
			return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
		return r > 0 ? 0 : r;
	}
	params = json_pack("{s:o}", "tags", o.tags);
	if (o.expires)
		json_object_set_new(params, "expires", json_integer(o.expires));
	r = call(c, "token.create", params, &res);
	if (r < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	printf("%s\n", jstr(res, "token", ""));
	if (isatty(STDOUT_FILENO))
		fprintf(stderr, "Token %s, valid until %s, single use. Give it to the agent in a file (mode 0600):\n"
		        "  tether-agent register-with --server HOST:PORT --name NAME --token-file FILE\n",
		        jstr(res, "id", "?"), jstr(res, "expires", "?"));
	{
		/* the JSON answer held the secret: wipe what we can reach */
		const char *tok = json_string_value(json_object_get(res, "token"));
		if (tok)
			tether_wipe((void *)tok, strlen(tok));
	}
	json_decref(res);
	return 0;
}

static int tok_list(cli_ctx *c, int argc, char **argv)
{
	json_t *res = NULL, *t;
	size_t i;
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "[--json]", "List the registration tokens (never their secrets).",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = call(c, "token.list", json_object(), &res);
	if (r < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	if (json_array_size(res) == 0) {
		printf("No tokens. Create one with 'tether-server token create'.\n");
		json_decref(res);
		return 0;
	}
	printf("%-16s  %-7s  %-20s  %-20s  %s\n", "ID", "STATE", "CREATED", "EXPIRES", "USED BY");
	json_array_foreach(res, i, t)
		printf("%-16s  %-7s  %-20s  %-20s  %s\n", jstr(t, "id", "?"), jstr(t, "state", "?"),
		       jstr(t, "created", "-"), jstr(t, "expires", "-"), jstr(t, "used_by", "-"));
	json_decref(res);
	return 0;
}

static int tok_revoke(cli_ctx *c, int argc, char **argv)
{
	json_t *res = NULL;
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "ID", "Revoke an unused token: registering with it is refused from now on.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi >= argc)
		return cli_usage_error(c, "the token ID is missing ('tether-server token list' shows them)");
	if (argc - oi > 1)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi + 1]);
	r = call(c, "token.revoke", json_pack("{s:s}", "id", argv[oi]), &res);
	if (r < 0)
		return r;
	if (c->json)
		cli_print_json(res);
	else {
		printf("Token %s revoked\n", argv[oi]);
		json_decref(res);
	}
	return 0;
}

int verb_token(cli_ctx *c, int argc, char **argv)
{
	static const sub subs[] = {
		{ "create", "token create", tok_create },
		{ "list", "token list", tok_list },
		{ "revoke", "token revoke", tok_revoke },
		{ NULL, NULL, NULL }
	};
	return dispatch(c, argc, argv, subs, "create, list or revoke ID");
}
