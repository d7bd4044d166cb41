/* tether-agent configure / list-trust: the agent's trusted server
 * thumbprints, recovery thumbprints, and settings. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "agent.h"
#include "cli_tls.h"
#include "trust.h"
#include "util.h"

#define MAX_CHANGES 64

enum {
	O_TRUST = OPT__VERB_BASE, O_REMOVE_TRUST, O_RESET_TRUST, O_RECOVERY_TRUST,
	O_REMOVE_RECOVERY, O_LISTEN, O_LANDING, O_MODE, O_SERVER, O_ADD_SERVER, O_REMOVE_SERVER,
	O_PROXY, O_PROXY_CRED, O_POLL_CONNS,
};

typedef struct change {
	int op;
	tether_thumbprint tp;
	const char *text;
} change;

typedef struct configure_opts {
	change ch[MAX_CHANGES];
	size_t n;
	int reset;
	const char *listen;
	const char *landing;
	cli_pkcs11_opts pk11;
	const char *mode;
	const char *servers[16];        /* --server: replaces the list */
	size_t nservers;
	const char *add_servers[16];
	size_t nadd;
	const char *remove_servers[16];
	size_t nremove;
	const char *proxy;
	const char *proxy_cred;
	const char *poll_conns;
} configure_opts;

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	configure_opts *o = arg;
	tether_error e;

	switch (id) {
	case O_TRUST: case O_REMOVE_TRUST: case O_RECOVERY_TRUST: case O_REMOVE_RECOVERY:
		if (o->n >= MAX_CHANGES)
			return cli_usage_error(c, "too many trust changes in one command (at most %d)", MAX_CHANGES);
		if (tether_thumbprint_parse(val, &o->ch[o->n].tp, &e) < 0)
			return cli_usage_error(c, "%s", e.detail);
		o->ch[o->n].op = id;
		o->ch[o->n].text = val;
		o->n++;
		break;
	case O_RESET_TRUST: o->reset = 1; break;
	case O_LISTEN: o->listen = val; break;
	case O_LANDING: o->landing = val; break;
	case O_MODE: o->mode = val; break;
	case O_SERVER: case O_ADD_SERVER: case O_REMOVE_SERVER: {
		char why[128];
		const char **v = id == O_SERVER ? o->servers : id == O_ADD_SERVER ? o->add_servers : o->remove_servers;
		size_t *n = id == O_SERVER ? &o->nservers : id == O_ADD_SERVER ? &o->nadd : &o->nremove;
		if (id != O_REMOVE_SERVER && tether_validate_hostport(val, why, sizeof(why)) < 0)
			return cli_usage_error(c, "server '%s': %s", val, why);
		if (*n >= 16)
			return cli_usage_error(c, "at most 16 servers in one command");
		v[(*n)++] = val;
		break;
	}
	case O_PROXY: o->proxy = val; break;
	case O_PROXY_CRED: o->proxy_cred = val; break;
	case O_POLL_CONNS: o->poll_conns = val; break;
	default: return cli_pkcs11_opt(c, id, val, &o->pk11);
	}
	return 0;
}

static const cli_opt configure_opts_spec[] = {
	{ "trust", required_argument, O_TRUST, "THUMBPRINT", "trust a server's SHA-256 thumbprint (repeatable)" },
	{ "remove-trust", required_argument, O_REMOVE_TRUST, "THUMBPRINT", "stop trusting it (live connections close at once)" },
	{ "reset-trust", no_argument, O_RESET_TRUST, NULL, "remove every trusted server thumbprint (applied before --trust)" },
	{ "recovery-trust", required_argument, O_RECOVERY_TRUST, "THUMBPRINT", "pin a recovery thumbprint: its holder may only replace the whole trust set" },
	{ "remove-recovery-trust", required_argument, O_REMOVE_RECOVERY, "THUMBPRINT", "remove a recovery thumbprint" },
	{ "listen", required_argument, O_LISTEN, "ADDR:PORT", "where to listen for servers ([listen] address)" },
	{ "landing-page", required_argument, O_LANDING, "on|off", "answer plain HTTPS callers with a one-line page" },
	{ "mode", required_argument, O_MODE, "listening|polling", "listen for servers, or connect out to them (polling)" },
	{ "server", required_argument, O_SERVER, "HOST:PORT", "polling: the server(s) to connect to, replacing the list (repeatable)" },
	{ "add-server", required_argument, O_ADD_SERVER, "HOST:PORT", "polling: add a server" },
	{ "remove-server", required_argument, O_REMOVE_SERVER, "HOST:PORT", "polling: remove a server" },
	{ "proxy", required_argument, O_PROXY, "http://HOST:PORT|off", "polling: go through this HTTP CONNECT proxy" },
	{ "proxy-credentials-file", required_argument, O_PROXY_CRED, "FILE", "polling: file with USER:PASSWORD for the proxy" },
	{ "polling-connections", required_argument, O_POLL_CONNS, "N", "polling: connections held to each server (1-16)" },
	CLI_PKCS11_OPTS,
	{ NULL, 0, 0, NULL, NULL }
};

struct trust_arg {
	configure_opts *o;
	char log[4096];
};

static void logf_append(struct trust_arg *a, const char *verb, const tether_thumbprint *tp)
{
	char hex[TETHER_THUMBPRINT_HEX];
	size_t l = strlen(a->log);
	tether_thumbprint_hex(tp, hex);
	snprintf(a->log + l, sizeof(a->log) - l, "%s %s\n", verb, hex);
}

static int apply_trust(tether_trust *t, void *arg, tether_error *err)
{
	struct trust_arg *a = arg;
	configure_opts *o = a->o;
	size_t i;
	int changed = 0, r;

	if (o->reset && t->ntrusted) {
		for (i = 0; i < t->ntrusted; i++)
			logf_append(a, "Removed trust:", &t->trusted[i].tp);
		t->ntrusted = 0;
		changed = 1;
	}
	for (i = 0; i < o->n; i++) {
		change *ch = &o->ch[i];
		switch (ch->op) {
		case O_TRUST:
			r = tether_trust_add(t->trusted, &t->ntrusted, &ch->tp, "cli", err);
			if (r < 0)
				return r;
			logf_append(a, r ? "Trusted:" : "Already trusted:", &ch->tp);
			changed |= r;
			break;
		case O_REMOVE_TRUST:
			r = tether_trust_remove(t->trusted, &t->ntrusted, &ch->tp);
			logf_append(a, r ? "Removed trust:" : "Was not trusted:", &ch->tp);
			changed |= r;
			break;
		case O_RECOVERY_TRUST:
			r = tether_trust_add(t->recovery, &t->nrecovery, &ch->tp, "cli", err);
			if (r < 0)
				return r;
			logf_append(a, r ? "Recovery thumbprint pinned:" : "Recovery thumbprint already pinned:", &ch->tp);
			changed |= r;
			break;
		case O_REMOVE_RECOVERY:
			r = tether_trust_remove(t->recovery, &t->nrecovery, &ch->tp);
			logf_append(a, r ? "Recovery thumbprint removed:" : "Was not a recovery thumbprint:", &ch->tp);
			changed |= r;
			break;
		}
	}
	return changed;
}

int verb_configure(cli_ctx *c, int argc, char **argv)
{
	configure_opts o;
	struct trust_arg ta;
	tether_config_edit edits[64];
	size_t ne = 0;
	int oi, r, ta_done = 0;

	memset(&o, 0, sizeof(o));
	r = cli_parse(c, argc, argv, configure_opts_spec, "[--trust T]... [--remove-trust T]... [--listen ADDR:PORT] ...",
	              "Change the agent's trust and settings. Trust changes are written under a lock and a running\n"
	              "agent applies them at once. The config file is edited in place (comments kept); a change\n"
	              "that would leave it invalid is refused. Thumbprints: 64 hex digits, any case, colons allowed.",
	              on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (o.listen) {
		char why[128];
		if (tether_validate_hostport(o.listen, why, sizeof(why)) < 0)
			return cli_usage_error(c, "--listen '%s': %s", o.listen, why);
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "listen", "address", o.listen };
	}
	if (o.landing) {
		if (tether_config_bool(o.landing) < 0)
			return cli_usage_error(c, "--landing-page '%s': expected on or off", o.landing);
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "listen", "landing-page", o.landing };
	}
	if (c->provider)
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "tether", "provider", c->provider };
	if (cli_pkcs11_edits(c, &o.pk11, edits, &ne) < 0)
		return TETHER_ERR_USAGE;
	if (o.mode) {
		if (strcmp(o.mode, "listening") && strcmp(o.mode, "polling"))
			return cli_usage_error(c, "--mode '%s': use listening or polling", o.mode);
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "tether", "mode", o.mode };
	}
	if (o.nservers) {
		size_t i;
		edits[ne++] = (tether_config_edit){ TETHER_CFG_UNSET, "polling", "server", NULL };
		for (i = 0; i < o.nservers; i++)
			edits[ne++] = (tether_config_edit){ TETHER_CFG_ADD, "polling", "server", o.servers[i] };
	}
	{
		size_t i;
		for (i = 0; i < o.nadd; i++)
			edits[ne++] = (tether_config_edit){ TETHER_CFG_ADD, "polling", "server", o.add_servers[i] };
		for (i = 0; i < o.nremove; i++)
			edits[ne++] = (tether_config_edit){ TETHER_CFG_REMOVE_VALUE, "polling", "server", o.remove_servers[i] };
	}
	if (o.proxy) {
		if (!strcmp(o.proxy, "off"))
			edits[ne++] = (tether_config_edit){ TETHER_CFG_UNSET, "polling", "proxy", NULL };
		else
			edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "polling", "proxy", o.proxy };
	}
	if (o.proxy_cred)
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "polling", "proxy-credentials-file", o.proxy_cred };
	if (o.poll_conns) {
		char *end;
		long v = strtol(o.poll_conns, &end, 10);
		if (*end || v < 1 || v > 16)
			return cli_usage_error(c, "--polling-connections '%s': give a number from 1 to 16", o.poll_conns);
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "polling", "connections", o.poll_conns };
	}
	if (!o.n && !o.reset && !ne)
		return cli_usage_error(c, "nothing to change: give --trust, --remove-trust, --reset-trust, "
		                          "--recovery-trust, --listen, ...");
	r = cli_open_instance(c);
	if (r < 0)
		return r;
	/* Trust and configuration change together or not at all: the edits
	 * are checked first, the trust (which has its own checks) changed,
	 * then the configuration written. */
	if (ne && (o.n || o.reset)) {
		r = tether_config_check_edits(c->inst->config_path, agent_schema, edits, ne, &c->err);
		if (r < 0)
			return r;
	}
	if (o.n || o.reset) {
		memset(&ta, 0, sizeof(ta));
		ta.o = &o;
		r = tether_trust_update(c->inst->state_dir, apply_trust, &ta, &c->err);
		if (r < 0)
			return r;
		ta_done = 1;
	}
	if (ne) {
		r = tether_config_apply(c->inst->config_path, agent_schema, edits, ne, &c->err);
		if (r < 0) {
			if (ta_done) {   /* checked above: only an I/O failure or the lock */
				fputs(ta.log, stdout);
				tether_err_prefix(&c->err, "the trust was changed (above) but not the configuration");
			}
			return r;
		}
		if (o.listen)
			printf("Listening address set to %s (restart the agent to apply)\n", o.listen);
		if (o.landing)
			printf("Landing page %s\n", tether_config_bool(o.landing) ? "on" : "off");
		if (c->provider)
			printf("Provider set to %s\n", c->provider);
		int later = o.landing || c->provider || o.pk11.v[0] || o.pk11.v[1] || o.pk11.v[2] ||
		            o.proxy || o.proxy_cred || o.poll_conns;
		cli_pkcs11_print(&o.pk11);
		if (o.mode)
			printf("Mode set to %s (restart the agent to apply)\n", o.mode);
		if (o.nservers || o.nadd || o.nremove) {
			tether_config *cf = NULL;
			const char *v[64];
			size_t i, n;
			if (tether_config_load(c->inst->config_path, agent_schema, &cf, NULL) == 0) {
				n = tether_config_get_all(cf, "polling", "server", v, 64);
				printf("Servers to poll:%s", n ? "" : " (none)");
				for (i = 0; i < n && i < 64; i++)
					printf(" %s", v[i]);
				printf(" (restart the agent to apply)\n");
				tether_config_free(cf);
			}
		}
		if (o.proxy)
			printf("Proxy %s\n", strcmp(o.proxy, "off") ? o.proxy : "off");
		/* the running agent reloads only its trust and identity (SIGHUP) */
		if (later)
			printf("Restart the agent to apply these settings (a running agent reloads only "
			       "its trust and certificate by itself)\n");
	}
	if (ta_done)
		fputs(ta.log, stdout);
	return 0;
}

int verb_list_trust(cli_ctx *c, int argc, char **argv)
{
	tether_trust *t;
	int oi, r;
	size_t i;

	r = cli_parse(c, argc, argv, NULL, "[--json]",
	              "List the server thumbprints this agent trusts, and its recovery thumbprints.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = cli_open_instance(c);
	if (r < 0)
		return r;
	t = tether_xcalloc(1, sizeof(*t));
	r = tether_trust_load(c->inst->state_dir, t, &c->err);
	if (r < 0)
		goto out;
	if (c->json) {
		json_t *j = json_object(), *a = json_array(), *rc = json_array();
		for (i = 0; i < t->ntrusted; i++) {
			char hex[TETHER_THUMBPRINT_HEX], when[32];
			tether_thumbprint_hex(&t->trusted[i].tp, hex);
			tether_iso8601(t->trusted[i].added, when, sizeof(when));
			json_t *o = json_pack("{s:s, s:s, s:s}", "sha256", hex, "added", when, "note", t->trusted[i].note);
			if (t->trusted[i].has_predecessor) {
				char pre[TETHER_THUMBPRINT_HEX];
				tether_thumbprint_hex(&t->trusted[i].predecessor, pre);
				json_object_set_new(o, "successor_of", json_string(pre));
			}
			json_array_append_new(a, o);
		}
		for (i = 0; i < t->nrecovery; i++) {
			char hex[TETHER_THUMBPRINT_HEX], when[32];
			tether_thumbprint_hex(&t->recovery[i].tp, hex);
			tether_iso8601(t->recovery[i].added, when, sizeof(when));
			json_array_append_new(rc, json_pack("{s:s, s:s}", "sha256", hex, "added", when));
		}
		json_object_set_new(j, "trusted", a);
		json_object_set_new(j, "recovery", rc);
		cli_print_json(j);
		goto out;
	}
	if (!t->ntrusted)
		printf("No trusted servers. Add one with 'tether-agent configure%s --trust THUMBPRINT'.\n", cli_args(c));
	for (i = 0; i < t->ntrusted; i++) {
		char hex[TETHER_THUMBPRINT_HEX];
		tether_thumbprint_hex(&t->trusted[i].tp, hex);
		if (t->trusted[i].has_predecessor) {
			char pre[TETHER_THUMBPRINT_HEX];
			tether_thumbprint_hex(&t->trusted[i].predecessor, pre);
			printf("trusted  %s (successor of %.16s..., pending)\n", hex, pre);
		} else {
			printf("trusted  %s\n", hex);
		}
	}
	for (i = 0; i < t->nrecovery; i++) {
		char hex[TETHER_THUMBPRINT_HEX];
		tether_thumbprint_hex(&t->recovery[i].tp, hex);
		printf("recovery %s\n", hex);
	}
out:
	free(t);
	return r;
}
