/* tether-agent register-with: ask a server to register this agent.
 *
 * Connects to the server's polling port with the agent's own certificate
 * (the handshake proves the agent holds its key), checks the server's
 * thumbprint against --server-thumbprint or the one inside the token
 * before anything is sent, sends "register", and on "accepted" or
 * "pending" trusts the server and (without --public-address) configures
 * polling mode with it. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <uv.h>
#include "agent.h"
#include "cli_tls.h"
#include "conn.h"
#include "identity.h"
#include "secret.h"
#include "trust.h"
#include "util.h"

#define REGISTER_TIMEOUT_MS 30000
#define MAX_TAGS 32

enum { O_SERVER = OPT__VERB_BASE, O_NAME, O_TAG, O_SERVER_TP, O_TOKEN_FILE, O_PUBLIC, O_YES };

typedef struct reg_opts {
	const char *server;
	const char *name;
	const char *tags[MAX_TAGS];
	size_t ntags;
	const char *server_tp;
	const char *token_file;
	const char *public_address;
	int yes;
} reg_opts;

typedef struct reg_run {
	cli_ctx *c;
	reg_opts *o;
	const char *token;
	tether_thumbprint expect;
	int has_expect;
	const char *expect_from;        /* "--server-thumbprint" or "the token" */
	char seen[TETHER_THUMBPRINT_HEX];
	char seen_sha1[3 * TETHER_SHA1_LEN];
	int mismatch;
	int need_confirm;
	int answered;
	json_t *result;                 /* the answer's result, owned */
	char code[65];
	char message[1100];
	char category[40];
	tether_error why;               /* how the connection ended */
} reg_run;

static int name_ok(const char *s)
{
	size_t i, n = strlen(s);

	if (n < 1 || n > 64)
		return 0;
	for (i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		      ch == '_' || ch == '.' || ch == '-'))
			return 0;
	}
	return 1;
}

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	reg_opts *o = arg;
	char why[128];

	switch (id) {
	case O_SERVER:
		if (tether_validate_hostport(val, why, sizeof(why)) < 0)
			return cli_usage_error(c, "--server '%s': %s", val, why);
		o->server = val;
		break;
	case O_NAME:
		if (!name_ok(val))
			return cli_usage_error(c, "--name '%s': use 1 to 64 letters, digits, '_', '.' or '-'", val);
		o->name = val;
		break;
	case O_TAG:
		if (!name_ok(val))
			return cli_usage_error(c, "--tag '%s': use 1 to 64 letters, digits, '_', '.' or '-'", val);
		if (o->ntags >= MAX_TAGS)
			return cli_usage_error(c, "at most %d tags", MAX_TAGS);
		o->tags[o->ntags++] = val;
		break;
	case O_SERVER_TP: o->server_tp = val; break;
	case O_TOKEN_FILE: o->token_file = val; break;
	case O_PUBLIC:
		if (tether_validate_hostport(val, why, sizeof(why)) < 0)
			return cli_usage_error(c, "--public-address '%s': %s", val, why);
		o->public_address = val;
		break;
	case O_YES: o->yes = 1; break;
	}
	return 0;
}

static const cli_opt opts_spec[] = {
	{ "server", required_argument, O_SERVER, "HOST:PORT", "the server's polling address (required)" },
	{ "name", required_argument, O_NAME, "NAME", "the target name to ask for (required)" },
	{ "tag", required_argument, O_TAG, "TAG", "a tag for the target (repeatable)" },
	{ "server-thumbprint", required_argument, O_SERVER_TP, "SHA256", "the server's certificate thumbprint, checked before anything is sent" },
	{ "token-file", required_argument, O_TOKEN_FILE, "FILE", "a one-time token from 'tether-server token create' (it names the server's thumbprint too)" },
	{ "public-address", required_argument, O_PUBLIC, "HOST:PORT", "listening agent: where the server should connect (default: polling mode)" },
	{ "yes", no_argument, O_YES, NULL, "go on without a thumbprint to check (trust the server first seen)" },
	{ NULL, 0, 0, NULL, NULL }
};

/* The server thumbprint inside tether1.<id>.<secret>.<sha256>. */
static int token_server(const char *tok, tether_thumbprint *out)
{
	const char *p = strrchr(tok, '.');
	int dots = 0;
	const char *q;

	for (q = tok; *q; q++)
		dots += *q == '.';
	if (strncmp(tok, "tether1.", 8) || dots != 3 || !p || strlen(p + 1) != 64)
		return -1;
	return tether_thumbprint_parse(p + 1, out, NULL) < 0 ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* The connection                                                      */
/* ------------------------------------------------------------------ */

static int check_peer(void *arg, tether_conn *c, const tether_thumbprint *tp)
{
	reg_run *rr = arg;
	(void)c;

	tether_thumbprint_hex(tp, rr->seen);
	if (rr->has_expect && !tether_thumbprint_equal(tp, &rr->expect)) {
		rr->mismatch = 1;
		return -1;
	}
	return 0;
}

static void on_response(void *arg, tether_conn *c, const tether_rpc_response *resp, const tether_error *err)
{
	reg_run *rr = arg;

	if (resp) {
		rr->answered = 1;
		if (resp->is_error) {
			snprintf(rr->code, sizeof(rr->code), "%s", resp->code);
			snprintf(rr->message, sizeof(rr->message), "%s", resp->message);
			snprintf(rr->category, sizeof(rr->category), "%s", resp->category);
		} else {
			rr->result = json_incref(resp->result);
		}
	} else if (err) {
		rr->why = *err;
	}
	if (c)
		tether_conn_close(c, "done", "registration finished");
}

static void on_open(void *arg, tether_conn *c)
{
	reg_run *rr = arg;
	const unsigned char *der = NULL;
	size_t len = 0, i;
	json_t *params, *tags;
	tether_error e;

	if (tether_conn_peer_cert(c, &der, &len) == 0) {
		unsigned char d[TETHER_SHA1_LEN];
		size_t dl = sizeof(d);
		if (rr->c->prov->t->digest(TETHER_DIGEST_SHA1, der, len, d, &dl, NULL) == 0)
			tether_hex_colons(d, sizeof(d), rr->seen_sha1);
	}
	if (!rr->has_expect && !rr->o->yes) {
		rr->need_confirm = 1;
		tether_conn_close(c, "done", "the operator must confirm the server's thumbprint");
		return;
	}
	tags = json_array();
	for (i = 0; i < rr->o->ntags; i++)
		json_array_append_new(tags, json_string(rr->o->tags[i]));
	params = json_pack("{s:s, s:o}", "name", rr->o->name, "tags", tags);
	if (rr->o->public_address)
		json_object_set_new(params, "public_address", json_string(rr->o->public_address));
	if (rr->token)
		json_object_set_new(params, "token", json_string(rr->token));
	memset(&e, 0, sizeof(e));
	if (tether_conn_request(c, "register", params, REGISTER_TIMEOUT_MS, on_response, rr, &e) < 0) {
		rr->why = e;
		tether_conn_close(c, "internal", "cannot send the request");
	}
}

static void on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	(void)arg;
	(void)method;
	(void)params;
	tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD,
	                    "this agent is registering: it serves no requests on this connection", NULL);
}

static void on_close(void *arg, tether_conn *c, const tether_error *why)
{
	reg_run *rr = arg;
	(void)c;

	if (why->code && !rr->why.code)
		rr->why = *why;
}

static const tether_conn_cbs reg_cbs = { check_peer, on_open, on_request, on_close, NULL };

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

/* Connect, check the server, send register; the outcome lands in rr. */
static int run_register(cli_ctx *c, reg_run *rr)
{
	tether_identity *id = NULL;
	tether_tls_ctx *tls = NULL;
	tether_tls_ctx_params tp;
	tether_conn_opts o;
	tether_conn *conn = NULL;
	uv_loop_t loop;
	char *host = NULL;
	int port = 0, r, loop_ok = 0;

	r = c->prov->t->identity_load(c->prov->ctx, TETHER_SLOT_CURRENT, &id, &c->err);
	if (r == TETHER_ERR_NOT_FOUND) {
		r = tether_err_set(&c->err, r, TETHER_CAT_NOT_FOUND,
		                   "this agent has no certificate yet: run 'tether-agent new-certificate%s' first "
		                   "(registration proves the agent holds its key)", cli_args(c));
		goto out;
	}
	if (r < 0)
		goto out;
	memset(&tp, 0, sizeof(tp));
	tp.role = TETHER_TLS_CLIENT;
	tp.policy = cli_tls_policy(c) & ~(unsigned)TETHER_TLS_POLICY_RESUMPTION;
	tp.identity = id;
	r = c->prov->t->tls_ctx_new(c->prov->ctx, &tp, &tls, &c->err);
	if (r < 0)
		goto out;
	if (tether_parse_hostport(rr->o->server, &host, &port, 10943) < 0) {
		r = cli_usage_error(c, "--server '%s' is not HOST:PORT", rr->o->server);
		goto out;
	}
	if (uv_loop_init(&loop) < 0) {
		r = tether_err_set(&c->err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL, "cannot start an event loop");
		goto out;
	}
	loop_ok = 1;
	memset(&o, 0, sizeof(o));
	o.tls_role = TETHER_TLS_CLIENT;
	o.local_role = TETHER_ROLE_AGENT;
	o.mode = TETHER_MODE_POLLING;
	o.prov = c->prov;
	o.tls_ctx = tls;
	o.connect_ms = 10000;
	o.handshake_ms = 10000;
	o.idle_ms = REGISTER_TIMEOUT_MS + 5000;
	o.keepalive_ms = 0;
	o.instance_id = tether_process_instance_id(c->prov);
	o.cbs = &reg_cbs;
	o.cb_arg = rr;
	r = tether_conn_connect(&loop, host, port, &o, &conn, &c->err);
	if (r < 0)
		goto out;
	uv_run(&loop, UV_RUN_DEFAULT);
	r = 0;
out:
	if (loop_ok) {
		uv_walk(&loop, close_walk, NULL);
		uv_run(&loop, UV_RUN_DEFAULT);
		uv_loop_close(&loop);
	}
	free(host);
	if (tls)
		c->prov->t->tls_ctx_free(tls);
	if (id)
		c->prov->t->identity_free(id);
	return r;
}

/* ------------------------------------------------------------------ */
/* After the answer                                                    */
/* ------------------------------------------------------------------ */

static int trust_server(tether_trust *t, void *arg, tether_error *err)
{
	const tether_thumbprint *tp = arg;
	return tether_trust_add(t->trusted, &t->ntrusted, tp, "register-with", err);
}

int verb_register_with(cli_ctx *c, int argc, char **argv)
{
	reg_opts o;
	reg_run rr;
	char *token = NULL;
	tether_thumbprint from_token, server_tp;
	int oi, r, accepted;
	const char *state;

	memset(&o, 0, sizeof(o));
	memset(&rr, 0, sizeof(rr));
	r = cli_parse(c, argc, argv, opts_spec,
	              "--server HOST:PORT --name NAME [--tag T]... [--server-thumbprint T] [--token-file F] "
	              "[--public-address HOST:PORT] [--yes]",
	              "Ask a server to register this agent as a target. The agent connects with its own\n"
	              "certificate and checks the server's thumbprint (from --server-thumbprint or the token)\n"
	              "before sending anything. With a valid token the server accepts it at once; otherwise the\n"
	              "registration waits until the operator runs 'tether-server registrations accept ID'.\n"
	              "On success the server is trusted and, without --public-address, polling mode is set up.",
	              on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (!o.server)
		return cli_usage_error(c, "--server HOST:PORT is required (the server's polling address)");
	if (!o.name)
		return cli_usage_error(c, "--name NAME is required (the target name to ask for)");
	if (o.server_tp) {
		tether_error e;
		memset(&e, 0, sizeof(e));
		if (tether_thumbprint_parse(o.server_tp, &rr.expect, &e) < 0)
			return cli_usage_error(c, "--server-thumbprint: %s", e.detail);
		rr.has_expect = 1;
		rr.expect_from = "--server-thumbprint";
	}
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	if (o.token_file) {
		r = tether_secret_from_file(o.token_file, &token, &c->err);
		if (r < 0)
			return r;
		if (token_server(token, &from_token) < 0) {
			r = tether_err_set(&c->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                   "%s does not hold a tether token (tether1.ID.SECRET.SERVER-SHA256): put the "
			                   "line printed by 'tether-server token create' in it", o.token_file);
			goto out;
		}
		if (rr.has_expect && !tether_thumbprint_equal(&from_token, &rr.expect)) {
			char a[TETHER_THUMBPRINT_HEX], b[TETHER_THUMBPRINT_HEX];
			tether_thumbprint_hex(&rr.expect, a);
			tether_thumbprint_hex(&from_token, b);
			r = tether_err_set(&c->err, TETHER_ERR_USAGE, TETHER_CAT_BAD_INPUT,
			                   "--server-thumbprint %s and the token's server thumbprint %s differ: one of them "
			                   "is for another server; check both", a, b);
			goto out;
		}
		if (!rr.has_expect) {
			rr.expect = from_token;
			rr.has_expect = 1;
			rr.expect_from = "the token";
		}
		rr.token = token;
	}
	rr.c = c;
	rr.o = &o;
	r = run_register(c, &rr);
	if (r < 0)
		goto out;
	if (rr.mismatch) {
		char want[TETHER_THUMBPRINT_HEX];
		tether_thumbprint_hex(&rr.expect, want);
		r = tether_err_set(&c->err, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED,
		                   "the server at %s presented certificate %s, but %s names %s: nothing was sent. "
		                   "Check that %s is the right server and that the thumbprint is current "
		                   "('tether-server show-thumbprint' on the server)",
		                   o.server, rr.seen, rr.expect_from, want, o.server);
		goto out;
	}
	if (rr.need_confirm) {
		printf("Server %s presented this certificate:\n  SHA-256 %s\n  SHA-1   %s (for reference only)\n",
		       o.server, rr.seen, rr.seen_sha1[0] ? rr.seen_sha1 : "(unknown)");
		r = tether_err_set(&c->err, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED,
		                   "not registered: compare the SHA-256 above with 'tether-server show-thumbprint' on the "
		                   "server, then run again with --server-thumbprint %s (or --yes to trust it as seen)",
		                   rr.seen);
		goto out;
	}
	if (!rr.answered) {
		tether_error *w = &rr.why;
		r = tether_err_set(&c->err, w->code ? w->code : TETHER_ERR_CLOSED,
		                   w->category ? w->category : TETHER_CAT_CONNECTION_RESET,
		                   "cannot register with %s: %s%s", o.server,
		                   w->detail[0] ? w->detail : "the connection closed before an answer",
		                   w->category == TETHER_CAT_UNTRUSTED && !rr.mismatch ?
		                   " (the server refused this agent's certificate: registration is probably off there; the "
		                   "operator turns it on with '[registration] enabled = on' in the server's config, or "
		                   "adds this agent with 'tether-server target add')" : "");
		goto out;
	}
	if (rr.code[0]) {
		r = tether_err_set(&c->err, !strcmp(rr.code, "forbidden") ? TETHER_ERR_PERMISSION :
		                   !strcmp(rr.code, "exists") ? TETHER_ERR_EXISTS : TETHER_ERR_PROTOCOL,
		                   !strcmp(rr.code, "forbidden") ? TETHER_CAT_UNTRUSTED : TETHER_CAT_NONE,
		                   "the server at %s refused the registration (%s): %s", o.server, rr.code,
		                   !strcmp(rr.code, "unknown_method") ?
		                   "it does not offer registration, or this certificate is already registered there "
		                   "as a target" : rr.message);
		goto out;
	}
	state = json_string_value(json_object_get(rr.result, "state"));
	if (!state || (strcmp(state, "accepted") && strcmp(state, "pending"))) {
		r = tether_err_set(&c->err, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
		                   "the server at %s answered the registration with an unexpected state '%s'",
		                   o.server, state ? state : "(none)");
		goto out;
	}
	accepted = !strcmp(state, "accepted");
	if (tether_thumbprint_parse(rr.seen, &server_tp, &c->err) < 0) {
		r = TETHER_ERR_INTERNAL;
		goto out;
	}
	r = tether_trust_update(c->inst->state_dir, trust_server, &server_tp, &c->err);
	if (r < 0) {
		tether_err_prefix(&c->err, "registered, but trusting the server failed");
		goto out;
	}
	if (!o.public_address) {
		tether_config_edit edits[3] = {
			{ TETHER_CFG_SET, "tether", "mode", "polling" },
			{ TETHER_CFG_REMOVE_VALUE, "polling", "server", o.server },
			{ TETHER_CFG_ADD, "polling", "server", o.server },
		};
		r = tether_config_apply(c->inst->config_path, agent_schema, edits, 3, &c->err);
		if (r < 0) {
			tether_err_prefix(&c->err, "registered and trusted the server, but configuring polling mode failed");
			goto out;
		}
	}
	if (c->json) {
		json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "state", state, "server", o.server, "server_sha256",
		                      rr.seen, "name", o.name);
		if (json_object_get(rr.result, "id"))
			json_object_set(j, "id", json_object_get(rr.result, "id"));
		if (json_object_get(rr.result, "target"))
			json_object_set(j, "target", json_object_get(rr.result, "target"));
		json_object_set_new(j, "mode", json_string(o.public_address ? "listening" : "polling"));
		cli_print_json(j);
	} else {
		long long rid = (long long)json_integer_value(json_object_get(rr.result, "id"));
		printf("Server %s (certificate %s) is now trusted.\n", o.server, rr.seen);
		if (!o.public_address)
			printf("Polling mode configured with server %s.\n", o.server);
		if (accepted)
			printf("Registered: the server accepted this agent as target %s.\n",
			       json_string_value(json_object_get(rr.result, "target")) ?
			       json_string_value(json_object_get(rr.result, "target")) : o.name);
		else
			printf("Registration %lld is pending: on the server, run\n  tether-server registrations accept %lld\n%s",
			       rid, rid, json_is_true(json_object_get(rr.result, "name_taken")) ?
			       "(a target named so already exists: the operator must give it another name with --name)\n" : "");
		if (o.public_address)
			printf("Next: make sure this agent listens at %s ('tether-agent configure%s --listen ...') and runs "
			       "('tether-agent run%s', or restart its service).\n", o.public_address, cli_args(c), cli_args(c));
		else
			printf("Next: start the agent with 'tether-agent run%s' (or restart its service)%s.\n",
			       cli_args(c), accepted ? "" : "; it connects once the registration is accepted");
	}
	r = 0;
out:
	json_decref(rr.result);
	if (token)
		tether_free_secret(token);
	return r;
}
