/* Identity verbs: new-certificate, show-thumbprint, export-certificate,
 * import-certificate, use-staged-certificate.  They work without a
 * running daemon (a running one picks the change up on reload). */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include "cli.h"
#include "fsutil.h"
#include "identity.h"
#include "pem.h"
#include "secret.h"
#include "util.h"
#ifndef _WIN32
#include "admin_client.h"
#endif

#define PFX_MAX (1024 * 1024)
#define PW_ENV "TETHER_PFX_PASSWORD"

enum {
	O_KEY_TYPE = OPT__VERB_BASE, O_IF_BLANK, O_EXPORT_PFX, O_PFX_PW_FILE, O_EXPORT_PEM,
	O_FROM_FILE, O_LEGACY_PFX, O_SLOT, O_VALIDITY, O_DISCARD_STAGED, O_FORCE,
};

typedef struct cert_opts {
	const char *key_type;
	int if_blank;
	const char *export_pfx;
	const char *export_pem;
	const char *pw_file;
	const char *from_file;
	int legacy;
	const char *slot;
	const char *validity;
	int discard_staged;
} cert_opts;

static int on_cert_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	cert_opts *o = arg;
	(void)c;
	switch (id) {
	case O_KEY_TYPE: o->key_type = val; break;
	case O_IF_BLANK: o->if_blank = 1; break;
	case O_EXPORT_PFX: o->export_pfx = val; break;
	case O_EXPORT_PEM: o->export_pem = val; break;
	case O_PFX_PW_FILE: o->pw_file = val; break;
	case O_FROM_FILE: o->from_file = val; break;
	case O_LEGACY_PFX: o->legacy = 1; break;
	case O_SLOT: o->slot = val; break;
	case O_VALIDITY: o->validity = val; break;
	case O_DISCARD_STAGED: o->discard_staged = 1; break;
	}
	return 0;
}

/* A running server daemon picks up an identity change at once. */
static void tell_daemon(cli_ctx *c)
{
	json_t *res = NULL;
	tether_error e;

	if (strcmp(c->prog->program, "server") || !c->inst)
		return;
#ifndef _WIN32 /* tether-server is not built for Windows */
	memset(&e, 0, sizeof(e));
	if (admin_client_call(c->inst, "server.reload", NULL, 10000, &res, &e) == 0)
		printf("The running tether-server daemon now uses it.\n");
#else
	(void)e;
#endif
	json_decref(res);
}

static int slot_parse(const char *s)
{
	int i;
	for (i = 0; i < TETHER_SLOT__COUNT; i++)
		if (!strcmp(s, tether_slot_names[i]))
			return i;
	return -1;
}

/* Can a new file be written at path?  It must not exist, and its folder
 * must exist and take a new file (tried with a probe file, so that a
 * read-only file system or an ACL is found too).  Checked before anything
 * changes. */
static int export_dest_check(cli_ctx *c, const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir, *probe;
	unsigned char rnd[4] = { 0 };
	int fd, e;
#ifdef _WIN32
	const char *bs = strrchr(path, '\\');
	if (bs && (!slash || bs > slash))
		slash = bs;
#endif

	if (tether_path_exists(path))
		return tether_err_set(&c->err, TETHER_ERR_EXISTS, TETHER_CAT_IO,
		                      "%s already exists: choose another file name or remove it first "
		                      "(nothing was changed)", path);
	dir = tether_strdup(slash ? path : ".");
	if (slash)
		dir[slash == path ? 1 : slash - path] = '\0';
	if (!tether_is_dir(dir)) {
		e = tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_IO,
		                   "cannot write %s: the folder %s does not exist: create it or choose "
		                   "another path (nothing was changed)", path, dir);
		free(dir);
		return e;
	}
	c->prov->t->random_bytes(rnd, sizeof(rnd));
	probe = tether_asprintf("%s.tmp.probe%02x%02x%02x%02x", path, rnd[0], rnd[1], rnd[2], rnd[3]);
	fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		int why = errno;
		free(probe);
		e = tether_err_set(&c->err, why == EACCES || why == EPERM || why == EROFS ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                   TETHER_CAT_IO, "cannot write %s: cannot create a file in %s: %s: "
		                   "choose a folder you can write to (nothing was changed)", path, dir, strerror(why));
		free(dir);
		return e;
	}
	close(fd);
	unlink(probe);
	free(probe);
	free(dir);
	return 0;
}

/* Everything a PFX export needs, found before anything changes: a provider
 * that can export keys, a destination that can be written, and a
 * non-empty password (*pw, free with tether_free_secret). */
static int export_prepare(cli_ctx *c, const char *path, const char *pw_file, char **pw)
{
	int r;

	*pw = NULL;
	if (c->prov->t->identity_export_pkcs12 && (c->prov->t->flags & TETHER_PROVIDER_NO_KEY_EXPORT)) {
		/* the provider says where its keys are held (e.g. which token) */
		unsigned char *o = NULL;
		size_t ol = 0;
		r = c->prov->t->identity_export_pkcs12(c->prov->ctx, TETHER_SLOT_CURRENT, "", 0, &o, &ol, &c->err);
		if (o)
			tether_free_wiped(o, ol);
		if (r < 0) {
			size_t n = strlen(c->err.detail);
			snprintf(c->err.detail + n, sizeof(c->err.detail) - n, " (nothing was changed)");
			return r;
		}
	}
	if (!c->prov->t->identity_export_pkcs12 || (c->prov->t->flags & TETHER_PROVIDER_NO_KEY_EXPORT))
		return tether_err_set(&c->err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE,
		                      "the %s provider cannot export private keys: export the certificate alone "
		                      "with --export-pem, or leave out --export-pfx (nothing was changed)",
		                      c->prov->t->name);
	r = export_dest_check(c, path);
	if (r < 0)
		return r;
	r = tether_secret_get(pw_file, PW_ENV, "Password for the PFX file: ", 1, pw, &c->err);
	if (r < 0) {
		tether_err_prefix(&c->err, "nothing was changed");
		return r;
	}
	if (!(*pw)[0]) {
		tether_free_secret(*pw);
		*pw = NULL;
		return tether_err_set(&c->err, TETHER_ERR_USAGE, TETHER_CAT_BAD_PASSWORD,
		                      "the PFX password is empty: a PFX holds the private key, give it a password "
		                      "(nothing was changed)");
	}
	return 0;
}

/* Write a PFX of slot to path (0600, refusing to replace a file). */
static int export_write(cli_ctx *c, int slot, const char *path, const char *pw, int legacy)
{
	unsigned char *pfx = NULL;
	size_t len = 0;
	int r;

	r = c->prov->t->identity_export_pkcs12(c->prov->ctx, slot, pw, legacy, &pfx, &len, &c->err);
	if (r < 0)
		return r;
	if (tether_path_exists(path))   /* appeared since export_dest_check */
		r = tether_err_set(&c->err, TETHER_ERR_EXISTS, TETHER_CAT_IO,
		                   "%s already exists: choose another file name or remove it first", path);
	else
		r = tether_write_atomic(path, pfx, len, 0600, &c->err);
	tether_free_wiped(pfx, len);
	return r;
}

static const cli_opt new_cert_opts[] = {
	{ "key-type", required_argument, O_KEY_TYPE, "TYPE", "rsa2048 (default), rsa3072, rsa4096, ec-p256 or ec-p384" },
	{ "validity-days", required_argument, O_VALIDITY, "DAYS", "certificate validity (default 7300, 20 years)" },
	{ "if-blank", no_argument, O_IF_BLANK, NULL, "do nothing if the instance already has a certificate" },
	{ "export-pfx", required_argument, O_EXPORT_PFX, "FILE", "also write the new certificate and key to a PKCS#12 file (0600)" },
	{ "pfx-password-file", required_argument, O_PFX_PW_FILE, "FILE", "file holding the PFX password (else $" PW_ENV " or a prompt)" },
	{ "legacy-pfx", no_argument, O_LEGACY_PFX, NULL, "write the PFX with 3DES/SHA-1 for old Windows versions" },
	{ NULL, 0, 0, NULL, NULL }
};

/* Put back a staged identity saved by verb_new_certificate (no-op without
 * one).  Keeps c->err. */
static int restore_staged(cli_ctx *c, const unsigned char *pfx, size_t len, const char *pw)
{
	tether_error e;
	int r;

	if (!pfx)
		return -1;
	memset(&e, 0, sizeof(e));
	r = c->prov->t->identity_import(c->prov->ctx, TETHER_SLOT_STAGED, pfx, len, pw, &e);
	if (r < 0)
		tether_err_prefix(&c->err, "the previously staged certificate could not be put back (%s)", e.detail);
	return r;
}

int verb_new_certificate(cli_ctx *c, int argc, char **argv)
{
	cert_opts o = { 0 };
	tether_keygen_params kp;
	tether_id_summary cur, neu;
	tether_id_summary old_staged;
	int oi, r, server = !strcmp(c->prog->program, "server");
	int target_slot;
	char *pw = NULL;
	char backup_pw[49] = "";
	unsigned char *backup = NULL;
	size_t backup_len = 0;

	r = cli_parse(c, argc, argv, new_cert_opts, "[--key-type TYPE] [--if-blank] [--export-pfx FILE --pfx-password-file FILE]",
	              server ? "Generate a new certificate. On the server it is STAGED: the certificate in use is not\n"
	                       "replaced until 'use-staged-certificate' (or 'import-certificate' of it), so agents can be\n"
	                       "told to trust the new thumbprint first. A server without any certificate gets one directly."
	                     : "Generate a new certificate for this agent, replacing the current one (which is kept in the\n"
	                       "'previous' slot). Servers must then be told the new thumbprint ('target set-thumbprint').",
	              on_cert_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	memset(&kp, 0, sizeof(kp));
	kp.key_type = TETHER_KEY_RSA2048;
	if (o.key_type && (kp.key_type = tether_key_type_parse(o.key_type)) < 0)
		return cli_usage_error(c, "unknown key type '%s': use rsa2048, rsa3072, rsa4096, ec-p256 or ec-p384", o.key_type);
	if (o.validity) {
		char *end;
		long d;
		errno = 0;
		d = strtol(o.validity, &end, 10);
		if (errno || *end || d < 1 || d > 36500)
			return cli_usage_error(c, "--validity-days '%s' must be a number of days from 1 to 36500", o.validity);
		kp.validity_days = (uint32_t)d;
	}
	if (o.pw_file && !o.export_pfx)
		return cli_usage_error(c, "--pfx-password-file needs --export-pfx");
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	r = tether_slot_summary(c->prov, TETHER_SLOT_CURRENT, &cur, &c->err);
	if (r < 0)
		return r;
	if (o.if_blank && cur.present) {
		printf("The %s already has a certificate (%s); nothing changed.\n", c->prog->program, cur.sha256);
		return 0;
	}
	/* Everything that can be checked is checked, and the password read,
	 * before anything changes: a failed export must not replace the
	 * identity (every peer's pin would break) nor a staged one (agents
	 * may already trust it). */
	if (o.export_pfx) {
		r = export_prepare(c, o.export_pfx, o.pw_file, &pw);
		if (r < 0)
			return r;
	}
	/* The staged slot receives the new identity.  One staged there
	 * already is replaced only if all goes well: until then it is kept as
	 * an in-memory PKCS#12 (when the provider can export keys) and put
	 * back if anything below fails. */
	r = tether_slot_summary(c->prov, TETHER_SLOT_STAGED, &old_staged, &c->err);
	if (r < 0)
		goto out;
	if (old_staged.present) {
		if (c->prov->t->identity_export_pkcs12 && !(c->prov->t->flags & TETHER_PROVIDER_NO_KEY_EXPORT)) {
			unsigned char rnd[24];
			size_t i;
			c->prov->t->random_bytes(rnd, sizeof(rnd));
			for (i = 0; i < sizeof(rnd); i++)
				snprintf(backup_pw + 2 * i, 3, "%02x", rnd[i]);
			tether_wipe(rnd, sizeof(rnd));
			r = c->prov->t->identity_export_pkcs12(c->prov->ctx, TETHER_SLOT_STAGED, backup_pw, 0,
			                                         &backup, &backup_len, &c->err);
			if (r < 0) {
				tether_err_prefix(&c->err, "cannot keep the staged certificate %s while a new one "
				                  "is made (nothing was changed)", old_staged.sha256);
				goto out;
			}
		}
		r = c->prov->t->identity_remove(c->prov->ctx, TETHER_SLOT_STAGED, &c->err);
		if (r < 0)
			goto out;
	}
	r = c->prov->t->identity_generate(c->prov->ctx, TETHER_SLOT_STAGED, &kp, &c->err);
	if (r < 0) {
		restore_staged(c, backup, backup_len, backup_pw);
		goto out;
	}
	r = tether_slot_summary(c->prov, TETHER_SLOT_STAGED, &neu, &c->err);
	if (r == 0 && o.export_pfx)
		r = export_write(c, TETHER_SLOT_STAGED, o.export_pfx, pw, o.legacy);
	target_slot = TETHER_SLOT_STAGED;
	if (r == 0 && (!server || !cur.present)) {
		r = c->prov->t->identity_promote(c->prov->ctx, &c->err);
		if (r < 0 && o.export_pfx)
			unlink(o.export_pfx);   /* of a certificate never used */
		target_slot = TETHER_SLOT_CURRENT;
	}
	if (r < 0) {
		/* Undo: drop the new certificate, put the old staged one back. */
		tether_error keep = c->err;
		c->prov->t->identity_remove(c->prov->ctx, TETHER_SLOT_STAGED, &c->err);
		c->err = keep;
		if (restore_staged(c, backup, backup_len, backup_pw) == 0)
			tether_err_prefix(&c->err, "the new certificate was discarded; the certificate in use "
			                  "and the staged one %s are kept", old_staged.sha256);
		else if (!old_staged.present)
			tether_err_prefix(&c->err, "the new certificate was discarded; the certificate in use is kept");
		goto out;
	}
	if (old_staged.present && !c->json)
		printf("Discarded the previously staged certificate %s\n", old_staged.sha256);
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "old", cur.present ? tether_id_summary_json(&cur) : json_null());
		json_object_set_new(j, "new", tether_id_summary_json(&neu));
		json_object_set_new(j, "slot", json_string(tether_slot_names[target_slot]));
		cli_print_json(j);
		goto done;
	}
	if (server && cur.present) {
		printf("Current certificate (in use): %s\n", cur.sha256);
		printf("New certificate (staged):     %s\n", neu.sha256);
		printf("Next: on each agent 'tether-agent configure --trust %s', then\n"
		       "'tether-server use-staged-certificate%s' (or 'import-certificate' of the exported PFX).\n",
		       neu.sha256, cli_args(c));
	} else {
		printf("Old thumbprint: %s\n", cur.present ? cur.sha256 : "(none)");
		printf("New thumbprint: %s\n", neu.sha256);
		if (!server && cur.present)
			printf("Next: on the server 'tether-server target set-thumbprint NAME %s'.\n", neu.sha256);
	}
	if (o.export_pfx)
		printf("Exported to %s (mode 0600)\n", o.export_pfx);
done:
	if (target_slot == TETHER_SLOT_CURRENT)
		tell_daemon(c);
	r = 0;
out:
	tether_free_secret(pw);
	if (backup)
		tether_free_wiped(backup, backup_len);
	tether_wipe(backup_pw, sizeof(backup_pw));
	return r;
}

int verb_show_thumbprint(cli_ctx *c, int argc, char **argv)
{
	tether_id_summary s[TETHER_SLOT__COUNT];
	int oi, r, i;

	r = cli_parse(c, argc, argv, NULL, "[--json]",
	              "Show this instance's certificate: SHA-256 thumbprint (what peers pin), SHA-1 (for\n"
	              "cross-reference with Windows certificate stores only), signature algorithm, key, validity,\n"
	              "and the staged and previous certificates when present.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	for (i = 0; i < TETHER_SLOT__COUNT; i++) {
		r = tether_slot_summary(c->prov, i, &s[i], &c->err);
		if (r < 0)
			return r;
	}
	if (!s[TETHER_SLOT_CURRENT].present)
		return tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                      "instance '%s' has no certificate yet: run '%s new-certificate%s'",
		                      c->inst->name, c->prog->progname, cli_args(c));
	{
		json_t *flags = tether_cert_flags(s[TETHER_SLOT_CURRENT].info.cert_signature_algorithm,
		                                  s[TETHER_SLOT_CURRENT].info.key_type,
		                                  s[TETHER_SLOT_CURRENT].info.key_bits,
		                                  s[TETHER_SLOT_CURRENT].info.not_after);
		if (c->json) {
			json_t *j = tether_id_summary_json(&s[TETHER_SLOT_CURRENT]);
			json_object_set_new(j, "flags", flags);
			json_object_set_new(j, "provider", json_string(c->prov->t->name));
			for (i = 1; i < TETHER_SLOT__COUNT; i++)
				if (s[i].present)
					json_object_set_new(j, tether_slot_names[i], tether_id_summary_json(&s[i]));
			cli_print_json(j);
			return 0;
		}
		if (json_array_size(flags))
			fprintf(stderr, "warning: %s\n", tether_cert_flags_advice(flags));
		json_decref(flags);
	}
	if (c->json) {
		json_t *j = tether_id_summary_json(&s[TETHER_SLOT_CURRENT]);
		json_object_set_new(j, "provider", json_string(c->prov->t->name));
		for (i = 1; i < TETHER_SLOT__COUNT; i++)
			if (s[i].present)
				json_object_set_new(j, tether_slot_names[i], tether_id_summary_json(&s[i]));
		cli_print_json(j);
		return 0;
	}
	printf("%s\n", s[TETHER_SLOT_CURRENT].sha256);
	tether_id_summary_print(stdout, &s[TETHER_SLOT_CURRENT], "  ");
	for (i = 1; i < TETHER_SLOT__COUNT; i++)
		if (s[i].present) {
			printf("%s certificate: %s\n", i == TETHER_SLOT_STAGED ? "Staged" : "Previous", s[i].sha256);
			tether_id_summary_print(stdout, &s[i], "  ");
		}
	return 0;
}

static const cli_opt export_opts[] = {
	{ "export-pfx", required_argument, O_EXPORT_PFX, "FILE", "write certificate and private key as PKCS#12 (0600)" },
	{ "pfx-password-file", required_argument, O_PFX_PW_FILE, "FILE", "file holding the PFX password (else $" PW_ENV " or a prompt)" },
	{ "legacy-pfx", no_argument, O_LEGACY_PFX, NULL, "3DES/SHA-1 PFX for old Windows versions" },
	{ "export-pem", required_argument, O_EXPORT_PEM, "FILE", "write the certificate only, as PEM" },
	{ "slot", required_argument, O_SLOT, "SLOT", "current (default), staged or previous" },
	{ NULL, 0, 0, NULL, NULL }
};

int verb_export_certificate(cli_ctx *c, int argc, char **argv)
{
	cert_opts o = { 0 };
	int oi, r, slot = TETHER_SLOT_CURRENT;

	r = cli_parse(c, argc, argv, export_opts, "--export-pfx FILE [--pfx-password-file FILE] | --export-pem FILE",
	              "Export this instance's certificate: with its private key as PKCS#12 (a backup, or to\n"
	              "move the identity), or the certificate alone as PEM.",
	              on_cert_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (!o.export_pfx && !o.export_pem)
		return cli_usage_error(c, "give --export-pfx FILE or --export-pem FILE");
	if (o.pw_file && !o.export_pfx)
		return cli_usage_error(c, "--pfx-password-file needs --export-pfx");
	if (o.slot && (slot = slot_parse(o.slot)) < 0)
		return cli_usage_error(c, "unknown slot '%s': use current, staged or previous", o.slot);
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	if (o.export_pem) {
		tether_identity *id = NULL;
		const unsigned char *der;
		size_t len;
		char *pem;
		if (tether_path_exists(o.export_pem))
			return tether_err_set(&c->err, TETHER_ERR_EXISTS, TETHER_CAT_IO,
			                      "%s already exists: choose another file name or remove it first", o.export_pem);
		r = c->prov->t->identity_load(c->prov->ctx, slot, &id, &c->err);
		if (r == TETHER_ERR_NOT_FOUND)
			return tether_err_set(&c->err, r, TETHER_CAT_NOT_FOUND, "the %s slot holds no certificate",
			                      tether_slot_names[slot]);
		if (r < 0)
			return r;
		c->prov->t->identity_cert_der(id, &der, &len);
		pem = tether_pem_encode("CERTIFICATE", der, len);
		c->prov->t->identity_free(id);
		r = tether_write_atomic(o.export_pem, pem, strlen(pem), 0644, &c->err);
		free(pem);
		if (r < 0)
			return r;
		printf("Certificate written to %s\n", o.export_pem);
	}
	if (o.export_pfx) {
		r = c->prov->t->identity_exists(c->prov->ctx, slot, &c->err);
		if (r < 0)
			return r;
		if (r == 0)
			return tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
			                      "the %s slot holds no certificate", tether_slot_names[slot]);
		char *pw = NULL;
		r = export_prepare(c, o.export_pfx, o.pw_file, &pw);
		if (r == 0)
			r = export_write(c, slot, o.export_pfx, pw, o.legacy);
		tether_free_secret(pw);
		if (r < 0)
			return r;
		printf("Certificate and private key written to %s (mode 0600)\n", o.export_pfx);
	}
	return 0;
}

static const cli_opt import_opts[] = {
	{ "from-file", required_argument, O_FROM_FILE, "FILE", "a PKCS#12 (.pfx/.p12) file, or PEM with certificate and key" },
	{ "pfx-password-file", required_argument, O_PFX_PW_FILE, "FILE", "file holding the password (else $" PW_ENV ", a prompt, or none for an unencrypted PEM)" },
	{ "discard-staged", no_argument, O_DISCARD_STAGED, NULL, "discard a different staged certificate that is waiting" },
	{ NULL, 0, 0, NULL, NULL }
};

/* Does data look like PEM with an unencrypted key (no password needed)? */
static int pem_needs_no_password(const unsigned char *data, size_t len)
{
	return memmem(data, len, "-----BEGIN ", 11) &&
	       !memmem(data, len, "ENCRYPTED", 9);
}

int verb_import_certificate(cli_ctx *c, int argc, char **argv)
{
	cert_opts o = { 0 };
	unsigned char *data = NULL, *der = NULL;
	size_t len = 0, der_len = 0;
	char *pw = NULL;
	tether_id_summary cur, neu, staged;
	int oi, r;

	r = cli_parse(c, argc, argv, import_opts, "--from-file FILE [--pfx-password-file FILE]",
	              "Replace this instance's certificate with one from a file (PKCS#12, including the RC2/3DES\n"
	              "files older Windows writes, or PEM). The file is checked completely before anything changes;\n"
	              "the replaced certificate is kept in the 'previous' slot. Prints the old and new thumbprint.",
	              on_cert_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (!o.from_file)
		return cli_usage_error(c, "give --from-file FILE");
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	if (!c->prov->t->identity_import || !TETHER_PROV_HAS(c->prov, identity_peek))
		return tether_err_set(&c->err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                      "the %s provider cannot import certificates: use new-certificate",
		                      c->prov->t->name);
	r = tether_read_file(o.from_file, PFX_MAX, &data, &len, &c->err);
	if (r < 0)
		goto out;
	if (len == 0) {
		r = tether_err_set(&c->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "%s is empty", o.from_file);
		goto out;
	}
	if (o.pw_file || !pem_needs_no_password(data, len)) {
		r = tether_secret_get(o.pw_file, PW_ENV, "Password of the file: ", 0, &pw, &c->err);
		if (r < 0)
			goto out;
	}
	/* Check it all before changing anything. */
	r = c->prov->t->identity_peek(c->prov->ctx, data, len, pw, &der, &der_len, &c->err);
	if (r < 0) {
		tether_err_prefix(&c->err, "cannot import %s (nothing was changed)", o.from_file);
		goto out;
	}
	r = tether_cert_summary(c->prov, der, der_len, &neu, &c->err);
	if (r < 0)
		goto out;
	r = tether_slot_summary(c->prov, TETHER_SLOT_CURRENT, &cur, &c->err);
	if (r < 0)
		goto out;
	if (cur.present && !strcmp(cur.sha256, neu.sha256)) {
		printf("%s is already the current certificate; nothing changed.\n", neu.sha256);
		r = 0;
		goto out;
	}
	r = tether_slot_summary(c->prov, TETHER_SLOT_STAGED, &staged, &c->err);
	if (r < 0)
		goto out;
	if (staged.present && strcmp(staged.sha256, neu.sha256)) {
		if (!o.discard_staged) {
			r = tether_err_set(&c->err, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT,
			                   "a different certificate %s is staged (from new-certificate) and agents may "
			                   "already trust it: make it current with 'use-staged-certificate', or give "
			                   "--discard-staged to import %s anyway (nothing was changed)",
			                   staged.sha256, neu.sha256);
			goto out;
		}
		r = c->prov->t->identity_remove(c->prov->ctx, TETHER_SLOT_STAGED, &c->err);
		if (r < 0)
			goto out;
		staged.present = 0;
	}
	if (!staged.present) {
		r = c->prov->t->identity_import(c->prov->ctx, TETHER_SLOT_STAGED, data, len, pw, &c->err);
		if (r < 0)
			goto out;
	}
	r = c->prov->t->identity_promote(c->prov->ctx, &c->err);
	if (r < 0)
		goto out;
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "old", cur.present ? tether_id_summary_json(&cur) : json_null());
		json_object_set_new(j, "new", tether_id_summary_json(&neu));
		cli_print_json(j);
	} else {
		printf("Old thumbprint: %s\n", cur.present ? cur.sha256 : "(none)");
		printf("New thumbprint: %s\n", neu.sha256);
	}
	tell_daemon(c);
	r = 0;
out:
	if (data)
		tether_free_wiped(data, len);
	free(der);
	tether_free_secret(pw);
	return r;
}

int verb_use_staged_certificate(cli_ctx *c, int argc, char **argv)
{
	tether_id_summary cur, st;
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "",
	              "Make the staged certificate (from new-certificate) the current one. The old one moves to\n"
	              "the 'previous' slot. This works even when keys cannot leave an HSM.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	r = tether_slot_summary(c->prov, TETHER_SLOT_STAGED, &st, &c->err);
	if (r < 0)
		return r;
	if (!st.present)
		return tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                      "no certificate is staged: run '%s new-certificate%s' first", c->prog->progname,
		                      cli_args(c));
	r = tether_slot_summary(c->prov, TETHER_SLOT_CURRENT, &cur, &c->err);
	if (r < 0)
		return r;
	r = c->prov->t->identity_promote(c->prov->ctx, &c->err);
	if (r < 0)
		return r;
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "old", cur.present ? tether_id_summary_json(&cur) : json_null());
		json_object_set_new(j, "new", tether_id_summary_json(&st));
		cli_print_json(j);
	} else {
		printf("Old thumbprint: %s\n", cur.present ? cur.sha256 : "(none)");
		printf("New thumbprint: %s\n", st.sha256);
	}
	tell_daemon(c);
	return 0;
}
