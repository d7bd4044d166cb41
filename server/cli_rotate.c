/* Certificate lifecycle verbs that run in the daemon: rotate-certificate,
 * rotate-agent-certificate, rekey-all, check-certificates. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "admin_client.h"
#include "fsutil.h"
#include "identity.h"
#include "pem.h"
#include "secret.h"
#include "server.h"
#include "util.h"

#define LONG_CALL_MS (30u * 60u * 1000u)

enum { O_KEY_TYPE = OPT__VERB_BASE, O_FINISH, O_FORCE, O_ALL, O_RECOVERY, O_PW_FILE };

typedef struct rot_opts {
	const char *key_type;
	int finish, force, all;
	const char *recovery, *pw_file;
} rot_opts;

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	rot_opts *o = arg;
	(void)c;
	switch (id) {
	case O_KEY_TYPE: o->key_type = val; break;
	case O_FINISH: o->finish = 1; break;
	case O_FORCE: o->force = 1; break;
	case O_ALL: o->all = 1; break;
	case O_RECOVERY: o->recovery = val; break;
	case O_PW_FILE: o->pw_file = val; break;
	}
	return 0;
}

static const char *jstr(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

static int print_targets(json_t *arr, const char *title)
{
	size_t i;
	json_t *row;
	int bad = 0;

	if (!json_array_size(arr)) {
		printf("%s: no targets needed it.\n", title);
		return 0;
	}
	printf("%s:\n", title);
	json_array_foreach(arr, i, row) {
		printf("  %-20s %-10s %s%s%s\n", jstr(row, "target"), jstr(row, "state"),
		       jstr(row, "sha256")[0] ? "new " : "", jstr(row, "sha256"), "");
		if (jstr(row, "error")[0])
			printf("      %s\n", jstr(row, "error"));
		if (strcmp(jstr(row, "state"), "rotated") && strcmp(jstr(row, "state"), "replaced"))
			bad = 1;
	}
	return bad;
}

static int check_key_type(cli_ctx *c, const char *kt)
{
	if (kt && tether_key_type_parse(kt) < 0)
		return cli_usage_error(c, "unknown key type '%s': use rsa2048, rsa3072, rsa4096, ec-p256 or ec-p384", kt);
	return 0;
}

static const cli_opt rot_opts_spec[] = {
	{ "key-type", required_argument, O_KEY_TYPE, "TYPE", "key type of the new identity (default rsa2048)" },
	{ "finish", no_argument, O_FINISH, NULL, "drop the previous identity once no target depends on it" },
	{ "force", no_argument, O_FORCE, NULL, "with --finish: drop it even if targets still depend on it" },
	{ NULL, 0, 0, NULL, NULL }
};

int verb_rotate_certificate(cli_ctx *c, int argc, char **argv)
{
	rot_opts o = { 0 };
	json_t *params, *res = NULL;
	int oi, r, bad = 0;

	r = cli_parse(c, argc, argv, rot_opts_spec, "[--key-type T] [--finish [--force]] [--json]",
	              "Rotate the server's certificate with no downtime. A new identity (or the one staged by\n"
	              "new-certificate) becomes current; the old one stays available as 'previous' for agents\n"
	              "that still trust it. For each reachable target the old identity names its successor\n"
	              "(trust.rotate), the server reconnects with the new identity, checks health on that fresh\n"
	              "connection and then retires the old pin on the agent. Unreachable targets keep working on\n"
	              "the previous identity; run this again to continue with them. --finish drops the previous\n"
	              "identity once no target depends on it.", on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (o.force && !o.finish)
		return cli_usage_error(c, "--force only goes with --finish");
	if ((r = check_key_type(c, o.key_type)) < 0)
		return r;
	if ((r = cli_open_instance(c)) < 0)
		return r;
	params = json_object();
	if (o.key_type)
		json_object_set_new(params, "key_type", json_string(o.key_type));
	if (o.finish)
		json_object_set_new(params, "finish", json_true());
	if (o.force)
		json_object_set_new(params, "force", json_true());
	r = admin_client_call(c->inst, "rotate.certificate", params, LONG_CALL_MS, &res, &c->err);
	json_decref(params);
	if (r < 0)
		return r;
	if (c->json) {
		bad = o.finish ? !json_is_true(json_object_get(res, "dropped")) :
		      print_targets(NULL, "") != 0;
		{
			size_t i;
			json_t *row;
			json_array_foreach(json_object_get(res, "targets"), i, row)
				if (strcmp(jstr(row, "state"), "rotated"))
					bad = 1;
		}
		cli_print_json(res);
		return bad ? 1 : 0;
	}
	if (o.finish) {
		if (json_is_true(json_object_get(res, "dropped"))) {
			printf("Previous identity %s dropped; current is %s.\n", jstr(res, "previous")[0] ?
			       jstr(res, "previous") : "(none)", jstr(res, "current"));
		} else if (jstr(res, "previous")[0]) {
			size_t i;
			json_t *row;
			printf("%s\n", jstr(res, "message"));
			json_array_foreach(json_object_get(res, "remaining"), i, row)
				printf("  %-20s %s\n", jstr(row, "target"), jstr(row, "manual"));
			bad = 1;
		} else {
			printf("There is no previous identity to drop; current is %s.\n", jstr(res, "current"));
		}
		json_decref(res);
		return bad;
	}
	printf("Current identity:  %s\nPrevious identity: %s\n", jstr(res, "current"), jstr(res, "previous"));
	bad = print_targets(json_object_get(res, "targets"), "Targets");
	if (bad)
		printf("Some targets were not rotated; they keep working on the previous identity. Run "
		       "'tether-server rotate-certificate%s' again to continue with them.\n", cli_args(c));
	else
		printf("All targets trust the new identity. Drop the old one with "
		       "'tether-server rotate-certificate%s --finish'.\n", cli_args(c));
	json_decref(res);
	return bad;
}

static const cli_opt agent_opts_spec[] = {
	{ "all", no_argument, O_ALL, NULL, "every target" },
	{ "key-type", required_argument, O_KEY_TYPE, "TYPE", "key type of the agents' new identities (default rsa2048)" },
	{ NULL, 0, 0, NULL, NULL }
};

int verb_rotate_agent_certificate(cli_ctx *c, int argc, char **argv)
{
	rot_opts o = { 0 };
	json_t *params, *res = NULL, *names;
	int oi, r, bad;

	r = cli_parse(c, argc, argv, agent_opts_spec, "TARGET...|--all [--key-type T] [--json]",
	              "Give agents new certificates over the trusted channel: the agent generates a staged\n"
	              "identity and reports its thumbprint, the server accepts both pins, the agent switches,\n"
	              "the server verifies the new certificate on a fresh connection and re-pins the target.\n"
	              "A failed step leaves the old pin working.", on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi == argc && !o.all)
		return cli_usage_error(c, "name the targets or give --all");
	if (oi < argc && o.all)
		return cli_usage_error(c, "give target names or --all, not both");
	if ((r = check_key_type(c, o.key_type)) < 0)
		return r;
	if ((r = cli_open_instance(c)) < 0)
		return r;
	params = json_object();
	if (o.key_type)
		json_object_set_new(params, "key_type", json_string(o.key_type));
	if (o.all)
		json_object_set_new(params, "all", json_true());
	names = json_array();
	for (; oi < argc; oi++)
		json_array_append_new(names, json_string(argv[oi]));
	json_object_set_new(params, "targets", names);
	r = admin_client_call(c->inst, "rotate.agents", params, LONG_CALL_MS, &res, &c->err);
	json_decref(params);
	if (r < 0)
		return r;
	if (c->json) {
		size_t i;
		json_t *row;
		bad = 0;
		json_array_foreach(json_object_get(res, "targets"), i, row)
			if (strcmp(jstr(row, "state"), "rotated"))
				bad = 1;
		cli_print_json(res);
		return bad;
	}
	bad = print_targets(json_object_get(res, "targets"), "Agents");
	json_decref(res);
	return bad;
}

static const cli_opt rekey_opts_spec[] = {
	{ "recovery-identity", required_argument, O_RECOVERY, "FILE.pfx", "replace every agent's whole trust set using this recovery identity (kept offline)" },
	{ "pfx-password-file", required_argument, O_PW_FILE, "FILE", "password of the recovery PFX (else $TETHER_PFX_PASSWORD or a prompt)" },
	{ "key-type", required_argument, O_KEY_TYPE, "TYPE", "key type of the new identities (default rsa2048)" },
	{ NULL, 0, 0, NULL, NULL }
};

int verb_rekey_all(cli_ctx *c, int argc, char **argv)
{
	rot_opts o = { 0 };
	json_t *params, *res = NULL;
	unsigned char *pfx = NULL;
	size_t len = 0;
	char *pw = NULL, *b64;
	int oi, r, bad = 0;

	r = cli_parse(c, argc, argv, rekey_opts_spec, "[--recovery-identity FILE.pfx] [--key-type T] [--json]",
	              "Re-key everything: a new server identity and every agent re-keyed and re-pinned over the\n"
	              "trusted channel, old thumbprints removed; prints what could not be reached and the manual\n"
	              "commands for it. This defeats a thief who copied a key but does not use it. Against a\n"
	              "thief who actively uses a stolen server key, give --recovery-identity: the agents' pinned\n"
	              "recovery identity replaces each agent's whole trust set with the new server identity,\n"
	              "removing anything the thief added.", on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if ((r = check_key_type(c, o.key_type)) < 0)
		return r;
	if ((r = cli_open_instance(c)) < 0)
		return r;
	params = json_object();
	if (o.key_type)
		json_object_set_new(params, "key_type", json_string(o.key_type));
	if (o.recovery) {
		r = tether_read_file(o.recovery, 1 << 20, &pfx, &len, &c->err);
		if (r < 0) {
			json_decref(params);
			return r;
		}
		r = tether_secret_get(o.pw_file, "TETHER_PFX_PASSWORD", "Password of the recovery PFX: ", 0, &pw, &c->err);
		if (r < 0) {
			tether_free_wiped(pfx, len);
			json_decref(params);
			return r;
		}
		b64 = tether_base64_encode(pfx, len);
		tether_free_wiped(pfx, len);
		json_object_set_new(params, "recovery_pfx", json_string(b64));
		json_object_set_new(params, "password", json_string(pw));
		tether_free_secret(b64);
		tether_free_secret(pw);
	}
	r = admin_client_call(c->inst, "rekey", params, LONG_CALL_MS, &res, &c->err);
	json_decref(params);
	if (r < 0)
		return r;
	if (c->json) {
		const char *keys[] = { "recovery", "server", "agents" };
		size_t k, i;
		json_t *row;
		for (k = 0; k < 3; k++)
			json_array_foreach(json_object_get(res, keys[k]), i, row)
				if (strcmp(jstr(row, "state"), "rotated") && strcmp(jstr(row, "state"), "replaced"))
					bad = 1;
		cli_print_json(res);
		return bad;
	}
	printf("Server identity now %s\n", jstr(res, "current"));
	if (json_object_get(res, "recovery"))
		bad |= print_targets(json_object_get(res, "recovery"), "Trust sets replaced (recovery)");
	if (json_object_get(res, "server_continued"))
		bad |= print_targets(json_object_get(res, "server_continued"), "Pending rotation continued on");
	if (json_object_get(res, "server"))
		bad |= print_targets(json_object_get(res, "server"), "Server identity rotated on");
	bad |= print_targets(json_object_get(res, "agents"), "Agents re-keyed");
	if (json_array_size(json_object_get(res, "manual"))) {
		size_t i;
		json_t *row;
		printf("Targets not reached keep their old pins; run for each:\n");
		json_array_foreach(json_object_get(res, "manual"), i, row) {
			if (jstr(row, "trust")[0])
				printf("  %-20s on the agent: tether-agent configure --trust %s\n", jstr(row, "target"),
				       jstr(row, "trust"));
			if (jstr(row, "remove_trust")[0])
				printf("  %-20s on the agent: tether-agent configure --remove-trust %s\n", jstr(row, "target"),
				       jstr(row, "remove_trust"));
			if (json_is_true(json_object_get(row, "rekey_agent")))
				printf("  %-20s then here: tether-server rotate-agent-certificate%s %s\n", jstr(row, "target"),
				       cli_args(c), jstr(row, "target"));
		}
		bad = 1;
	}
	if (jstr(res, "dropped")[0])
		printf("Every target was reached: the previous identity %s is dropped.\n", jstr(res, "dropped"));
	else if (jstr(res, "previous")[0])
		printf("When every target is done: 'tether-server rotate-certificate%s --finish'.\n", cli_args(c));
	json_decref(res);
	return bad;
}

int verb_check_certificates(cli_ctx *c, int argc, char **argv)
{
	json_t *res = NULL, *rows, *row;
	size_t i;
	int oi, r, flagged = 0;

	r = cli_parse(c, argc, argv, NULL, "[--json]",
	              "Check the server's and every agent's certificate: signature algorithm (SHA-1, MD5),\n"
	              "key size (RSA < 2048), expiry (within 30 days, expired), as seen in a handshake now\n"
	              "(or as last recorded for unreachable agents).", NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if ((r = cli_open_instance(c)) < 0)
		return r;
	r = admin_client_call(c->inst, "certs.check", NULL, 120000, &res, &c->err);
	if (r < 0)
		return r;
	rows = json_object_get(res, "certificates");
	json_array_foreach(rows, i, row)
		flagged += json_array_size(json_object_get(row, "flags")) > 0;
	if (c->json) {
		cli_print_json(json_incref(rows));
		json_decref(res);
		return flagged ? 1 : 0;
	}
	printf("%-22s %-26s %-8s %-22s %s\n", "WHO", "SIGNATURE", "KEY", "NOT AFTER", "FLAGS");
	json_array_foreach(rows, i, row) {
		char who[64], key[24], flags[256] = "";
		size_t k;
		json_t *f;
		if (!strcmp(jstr(row, "who"), "server"))
			snprintf(who, sizeof(who), "server (%s)", jstr(row, "slot"));
		else
			snprintf(who, sizeof(who), "%s", jstr(row, "target"));
		snprintf(key, sizeof(key), "%s %lld", jstr(row, "key_type"),
		         (long long)json_integer_value(json_object_get(row, "key_bits")));
		json_array_foreach(json_object_get(row, "flags"), k, f) {
			size_t l = strlen(flags);
			snprintf(flags + l, sizeof(flags) - l, "%s%s", l ? "," : "", json_string_value(f));
		}
		printf("%-22s %-26s %-8s %-22s %s\n", who, jstr(row, "cert_signature_algorithm"), key,
		       jstr(row, "not_after"), flags[0] ? flags : "ok");
	}
	if (flagged)
		printf("Fix: regenerate flagged certificates (server: 'tether-server rotate-certificate'; agents: "
		       "'tether-server rotate-agent-certificate TARGET' or 'tether-agent new-certificate' there). "
		       "tether never generates SHA-1 certificates.\n");
	json_decref(res);
	return flagged ? 1 : 0;
}
