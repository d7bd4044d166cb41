/* tether-server health and run: the verbs that need the daemon's engine. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "admin_client.h"
#include "server.h"
#include "util.h"

enum { O_ALL = OPT__VERB_BASE, O_TAG };

typedef struct health_opts {
	int all;
	const char *tag;
} health_opts;

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	health_opts *o = arg;
	(void)c;
	if (id == O_ALL)
		o->all = 1;
	else if (id == O_TAG)
		o->tag = val;
	return 0;
}

static const cli_opt health_opts_spec[] = {
	{ "all", no_argument, O_ALL, NULL, "check every target" },
	{ "tag", required_argument, O_TAG, "TAG", "check the targets with this tag" },
	{ NULL, 0, 0, NULL, NULL }
};

static const char *str(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

/* The hint of a category given by name ("no_shared_cipher"). */
static const char *category_hint(const char *name)
{
	int i;

	for (i = 1; i < TETHER_CAT__COUNT; i++)
		if (!strcmp(tether_category_name(i), name))
			return tether_category_hint(i);
	return tether_category_hint(TETHER_CAT_HANDSHAKE);
}

int verb_health(cli_ctx *c, int argc, char **argv)
{
	health_opts o = { 0 };
	json_t *params, *names, *res = NULL, *row;
	size_t i;
	int oi, r, healthy = 0;

	r = cli_parse(c, argc, argv, health_opts_spec, "[NAME...|--all|--tag TAG] [--json]",
	              "Check targets: connect (or reuse the held connection), run the health service on the\n"
	              "agent, record and print the result. Exit status 0 only if every target is healthy.",
	              on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi == argc && !o.all && !o.tag)
		return cli_usage_error(c, "name the targets to check, or give --all or --tag TAG");
	if (oi < argc && (o.all || o.tag))
		return cli_usage_error(c, "give target names or --all/--tag, not both");
	r = cli_open_instance(c);
	if (r < 0)
		return r;
	params = json_object();
	if (o.all)
		json_object_set_new(params, "all", json_true());
	if (o.tag)
		json_object_set_new(params, "tag", json_string(o.tag));
	if (oi < argc) {
		names = json_array();
		for (; oi < argc; oi++)
			json_array_append_new(names, json_string(argv[oi]));
		json_object_set_new(params, "targets", names);
	}
	r = admin_client_call(c->inst, "health", params, 120000, &res, &c->err);
	json_decref(params);
	if (r < 0)
		return r;
	if (!json_is_array(res)) {
		json_decref(res);
		return tether_err_set(&c->err, TETHER_ERR_PROTOCOL, TETHER_CAT_INTERNAL,
		                      "the daemon answered health with something else than a list");
	}
	json_array_foreach(res, i, row)
		healthy += !strcmp(str(row, "state"), "healthy");
	if (c->json) {
		json_t *copy = json_incref(res);
		json_array_foreach(copy, i, row)
			json_object_del(row, "agent");
		cli_print_json(copy);
	} else if (json_array_size(res) == 0) {
		printf("No targets%s%s. Add one with 'tether-server target add NAME --listening HOST:PORT "
		       "--thumbprint T'.\n", o.tag ? " with tag " : "", o.tag ? o.tag : "");
	} else {
		printf("%-20s %-17s %8s  %-8s %-24s %s\n", "TARGET", "STATE", "RTT", "TLS", "CIPHER", "AGENT CERT");
		json_array_foreach(res, i, row) {
			json_t *rtt = json_object_get(row, "rtt_ms");
			char rtts[32] = "-";
			if (json_is_integer(rtt))
				snprintf(rtts, sizeof(rtts), "%lld ms", (long long)json_integer_value(rtt));
			printf("%-20s %-17s %8s  %-8s %-24s %s\n", str(row, "target"), str(row, "state"), rtts,
			       str(row, "tls_version")[0] ? str(row, "tls_version") : "-",
			       str(row, "cipher")[0] ? str(row, "cipher") : "-",
			       str(row, "cert_signature_algorithm")[0] ? str(row, "cert_signature_algorithm") : "-");
			if (str(row, "advice")[0])
				printf("    warning: %s\n", str(row, "advice"));
			{
				size_t k;
				json_t *u;
				json_array_foreach(json_object_get(row, "unknown_trust"), k, u)
					printf("    warning: the agent trusts %s, none of this server's identities: unless it is "
					       "another server you run, it may have been planted (compromise indicator; see "
					       "docs/SECURITY.md)\n", str(u, "sha256"));
			}
			if (str(row, "error")[0]) {
				printf("    %s (%s)\n", str(row, "error"), str(row, "category"));
				printf("    hint: %s\n", category_hint(str(row, "category")));
			}
		}
	}
	r = (size_t)healthy == json_array_size(res) ? 0 : 1;
	json_decref(res);
	if (r) {
		/* the table says what failed; exit 1 without another message */
		return 1;
	}
	return 0;
}
