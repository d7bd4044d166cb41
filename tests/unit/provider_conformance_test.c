/*
 * Conformance test of a provider's identity and crypto operations.
 *
 * dlopens the provider named by $TETHER_PROVIDER_SO, or
 * $TOP_BUILDDIR/providers/openssl/.libs/tether-openssl.so, and drives it
 * through the ABI only, with a temporary directory as state_dir.  Checks
 * that look at the files of a slot (modes, byte-identical after a failed
 * import) know the openssl provider's layout and run only against it.
 * Test fixtures (an RC2 PKCS#12, PEM bundles) are made with libcrypto.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include "tether/provider.h"

#define PFX_PASSWORD "Corr3ct-horse!"
#define KEY_PASSPHRASE "key-pass-phrase-42"

static void *dl;
static tether_provider_init_fn init_fn;

struct fixture {
	char dir[PATH_MAX];
	char iddir[PATH_MAX + 16];
	char passfile[PATH_MAX + 16];
	int use_passfile;
	tether_host host;
	const tether_provider *t;
	tether_provider_ctx *ctx;
	char log[8192];
};

/* ---------------------------------------------------------------- */
/* Host                                                              */
/* ---------------------------------------------------------------- */

static void host_log(void *arg, int level, const char *area, const char *fmt,
                     va_list ap)
{
	struct fixture *f = arg;
	size_t l = strlen(f->log);

	(void)level;
	(void)area;
	if (l + 2 < sizeof(f->log)) {
		vsnprintf(f->log + l, sizeof(f->log) - l - 1, fmt, ap);
		strcat(f->log, "\n");
	}
}

static const char *host_config(void *arg, const char *key)
{
	struct fixture *f = arg;

	if (strcmp(key, "key-passphrase-file") == 0 && f->use_passfile)
		return f->passfile;
	return NULL;
}

static int rm_rf(const char *path)
{
	struct stat st;
	DIR *d;
	struct dirent *de;
	char sub[PATH_MAX * 2];

	if (lstat(path, &st) < 0)
		return 0;
	if (S_ISDIR(st.st_mode)) {
		d = opendir(path);
		if (d != NULL) {
			while ((de = readdir(d)) != NULL) {
				if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
					continue;
				snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
				rm_rf(sub);
			}
			closedir(d);
		}
		return rmdir(path);
	}
	return unlink(path);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	tether_error err;
	int r;

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "%s/tether-conf-XXXXXX", tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->iddir, sizeof(f->iddir), "%s/identity", f->dir);
	snprintf(f->passfile, sizeof(f->passfile), "%s/passphrase", f->dir);
	f->host.abi_major = TETHER_PROVIDER_ABI_MAJOR;
	f->host.abi_minor = TETHER_PROVIDER_ABI_MINOR;
	f->host.size = sizeof(f->host);
	f->host.host_arg = f;
	f->host.log = host_log;
	f->host.config_get = host_config;
	f->host.state_dir = f->dir;
	f->host.instance = "test";
	f->host.program = "agent";
	memset(&err, 0, sizeof(err));
	r = init_fn(&f->host, &f->t, &f->ctx, &err);
	if (r != 0)
		fail_msg("init: %d %s", r, err.detail);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	f->t->deinit(f->ctx);
	rm_rf(f->dir);
	free(f);
	return 0;
}

static int group_setup(void **state)
{
	char path[PATH_MAX];
	const char *so = getenv("TETHER_PROVIDER_SO");
	const char *top = getenv("TOP_BUILDDIR");

	(void)state;
	if (so == NULL || *so == '\0') {
		snprintf(path, sizeof(path),
		         "%s/providers/openssl/.libs/tether-openssl.so", top ? top : ".");
		so = path;
	}
	dl = dlopen(so, RTLD_NOW | RTLD_LOCAL);
	if (dl == NULL) {
		fprintf(stderr, "cannot load %s: %s\n", so, dlerror());
		return -1;
	}
	init_fn = (tether_provider_init_fn)dlsym(dl, TETHER_PROVIDER_ENTRY);
	if (init_fn == NULL) {
		fprintf(stderr, "%s: no %s\n", so, TETHER_PROVIDER_ENTRY);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	if (dl != NULL)
		dlclose(dl);
	return 0;
}

/* ---------------------------------------------------------------- */
/* Helpers                                                           */
/* ---------------------------------------------------------------- */

static int is_openssl(const struct fixture *f)
{
	return strcmp(f->t->name, "openssl") == 0;
}

static void ok(int r, const tether_error *err, const char *what)
{
	if (r != 0)
		fail_msg("%s: %d (cat %d) %s", what, r, err->category, err->detail);
}

static void expect_fail(int r, const tether_error *err, int code, int cat)
{
	if (r != code || (cat >= 0 && err->category != cat))
		fail_msg("expected %d/%d, got %d/%d: %s", code, cat, r,
		         err->category, err->detail);
	assert_true(err->detail[0] != '\0');
	assert_true(strlen(err->detail) < TETHER_ERROR_DETAIL_MAX);
}

static void gen(struct fixture *f, int slot, int type)
{
	tether_keygen_params kp = { type, 0, NULL, NULL };
	tether_error err;

	ok(f->t->identity_generate(f->ctx, slot, &kp, &err), &err, "generate");
}

/* SHA-256 of the slot's certificate, or zeros if the slot is empty. */
static void slot_fp(struct fixture *f, int slot, unsigned char fp[32])
{
	tether_identity *id = NULL;
	tether_error err;
	const unsigned char *der;
	size_t len, n;

	memset(fp, 0, 32);
	if (f->t->identity_load(f->ctx, slot, &id, &err) != 0)
		return;
	assert_int_equal(f->t->identity_cert_der(id, &der, &len), 0);
	ok(f->t->digest(TETHER_DIGEST_SHA256, der, len, fp, &n, &err), &err, "digest");
	assert_int_equal(n, 32);
	f->t->identity_free(id);
}

static char *read_file(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	char *buf;
	long n;

	if (fp == NULL)
		return NULL;
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
	buf[n] = '\0';
	fclose(fp);
	*len = (size_t)n;
	return buf;
}

/* Path of a file of a slot (openssl layout). */
static void slot_file(struct fixture *f, int slot, const char *file,
                      char *out, size_t cap)
{
	static const char *names[] = { "current", "staged", "previous" };
	char link[PATH_MAX + 32], target[64];
	ssize_t n;

	snprintf(link, sizeof(link), "%s/%s", f->iddir, names[slot]);
	n = readlink(link, target, sizeof(target) - 1);
	assert_true(n > 0);
	target[n] = '\0';
	snprintf(out, cap, "%s/%s/%s", f->iddir, target, file);
}

static char *slot_read(struct fixture *f, int slot, const char *file,
                       size_t *len)
{
	char path[PATH_MAX * 2];
	char *s;

	slot_file(f, slot, file, path, sizeof(path));
	s = read_file(path, len);
	assert_non_null(s);
	return s;
}

/* Everything under identity/: names, link targets, contents. */
static char *snapshot_dir(const char *dir, char *acc, size_t *acc_len)
{
	struct dirent **ents;
	int n, i;

	n = scandir(dir, &ents, NULL, alphasort);
	if (n < 0)
		return acc;
	for (i = 0; i < n; i++) {
		char path[PATH_MAX * 2], target[PATH_MAX];
		struct stat st;
		char *content = NULL;
		size_t clen = 0, need;
		const char *nm = ents[i]->d_name;

		if (!strcmp(nm, ".") || !strcmp(nm, "..")) {
			free(ents[i]);
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, nm);
		assert_int_equal(lstat(path, &st), 0);
		target[0] = '\0';
		if (S_ISLNK(st.st_mode)) {
			ssize_t l = readlink(path, target, sizeof(target) - 1);
			target[l > 0 ? l : 0] = '\0';
		} else if (S_ISREG(st.st_mode)) {
			content = read_file(path, &clen);
		}
		need = strlen(path) + strlen(target) + clen + 32;
		acc = realloc(acc, *acc_len + need);
		assert_non_null(acc);
		*acc_len += (size_t)snprintf(acc + *acc_len, need, "%s|%o|%s|", path,
		                             (unsigned)st.st_mode, target);
		if (content != NULL) {
			memcpy(acc + *acc_len, content, clen);
			*acc_len += clen;
			free(content);
		}
		acc[(*acc_len)++] = '\n';
		if (S_ISDIR(st.st_mode))
			acc = snapshot_dir(path, acc, acc_len);
		free(ents[i]);
	}
	free(ents);
	return acc;
}

static char *snapshot(struct fixture *f, size_t *len)
{
	*len = 0;
	return snapshot_dir(f->iddir, NULL, len);
}

static void assert_snapshot_equal(char *a, size_t al, char *b, size_t bl)
{
	assert_int_equal(al, bl);
	assert_memory_equal(a, b, al);
	free(a);
	free(b);
}

static void write_passfile(struct fixture *f, const char *pass)
{
	FILE *fp = fopen(f->passfile, "w");

	assert_non_null(fp);
	fprintf(fp, "%s\n", pass);
	fclose(fp);
	chmod(f->passfile, 0600);
}

/* ---------------------------------------------------------------- */
/* Init and table                                                    */
/* ---------------------------------------------------------------- */

static void test_init_refuses_other_abi(void **state)
{
	struct fixture *f = *state;
	tether_host h = f->host;
	const tether_provider *t = NULL;
	tether_provider_ctx *c = NULL;
	tether_error err;

	h.abi_major = TETHER_PROVIDER_ABI_MAJOR + 1;
	expect_fail(init_fn(&h, &t, &c, &err), &err, TETHER_ERR_ABI, -1);
	assert_null(t);
	assert_null(c);
}

static void test_table(void **state)
{
	struct fixture *f = *state;
	const tether_provider *t = f->t;

	assert_int_equal(t->abi_major, TETHER_PROVIDER_ABI_MAJOR);
	assert_true(t->size >= sizeof(tether_provider));
	assert_non_null(t->name);
	assert_non_null(t->version);
	assert_non_null(t->identity_generate);
	assert_non_null(t->identity_promote);
	assert_non_null(t->identity_remove);
	assert_non_null(t->identity_exists);
	assert_non_null(t->identity_load);
	assert_non_null(t->identity_cert_der);
	assert_non_null(t->identity_free);
	assert_non_null(t->identity_import);
	assert_non_null(t->digest);
	assert_non_null(t->digest_new);
	assert_non_null(t->digest_update);
	assert_non_null(t->digest_final);
	assert_non_null(t->digest_free);
	assert_non_null(t->cert_info);
	assert_non_null(t->random_bytes);
	assert_non_null(t->tls_ctx_new);
	assert_non_null(t->tls_new);
	if (!(t->flags & TETHER_PROVIDER_NO_KEY_EXPORT))
		assert_non_null(t->identity_export_pkcs12);
}

/* ---------------------------------------------------------------- */
/* Crypto helpers                                                    */
/* ---------------------------------------------------------------- */

static const unsigned char sha256_abc[32] = {
	0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde,
	0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
	0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad };
static const unsigned char sha256_empty[32] = {
	0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8,
	0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
	0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55 };
static const unsigned char sha1_abc[20] = {
	0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71,
	0x78, 0x50, 0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d };

static void test_digest_oneshot(void **state)
{
	struct fixture *f = *state;
	unsigned char out[64];
	size_t n = 0;
	tether_error err;

	ok(f->t->digest(TETHER_DIGEST_SHA256, "abc", 3, out, &n, &err), &err, "sha256");
	assert_int_equal(n, TETHER_SHA256_LEN);
	assert_memory_equal(out, sha256_abc, 32);
	ok(f->t->digest(TETHER_DIGEST_SHA256, NULL, 0, out, &n, &err), &err, "sha256 empty");
	assert_memory_equal(out, sha256_empty, 32);
	ok(f->t->digest(TETHER_DIGEST_SHA1, "abc", 3, out, &n, &err), &err, "sha1");
	assert_int_equal(n, TETHER_SHA1_LEN);
	assert_memory_equal(out, sha1_abc, 20);
	expect_fail(f->t->digest(99, "abc", 3, out, &n, &err), &err,
	            TETHER_ERR_INVALID, -1);
}

static void test_digest_streaming(void **state)
{
	struct fixture *f = *state;
	unsigned char big[10000], one[32], st[32], s1[20];
	tether_digest_ctx *d = NULL;
	tether_error err;
	size_t n, i;

	for (i = 0; i < sizeof(big); i++)
		big[i] = (unsigned char)(i * 7 + 3);
	ok(f->t->digest(TETHER_DIGEST_SHA256, big, sizeof(big), one, &n, &err), &err, "one");
	ok(f->t->digest_new(TETHER_DIGEST_SHA256, &d, &err), &err, "new");
	for (i = 0; i < sizeof(big); i += 777)
		assert_int_equal(f->t->digest_update(d, big + i,
		                 sizeof(big) - i < 777 ? sizeof(big) - i : 777), 0);
	assert_int_equal(f->t->digest_update(d, NULL, 0), 0);
	assert_int_equal(f->t->digest_final(d, st, &n), 0);
	assert_int_equal(n, 32);
	assert_memory_equal(one, st, 32);

	ok(f->t->digest_new(TETHER_DIGEST_SHA1, &d, &err), &err, "new sha1");
	assert_int_equal(f->t->digest_update(d, "a", 1), 0);
	assert_int_equal(f->t->digest_update(d, "bc", 2), 0);
	assert_int_equal(f->t->digest_final(d, s1, &n), 0);
	assert_int_equal(n, 20);
	assert_memory_equal(s1, sha1_abc, 20);

	/* freeing an unfinished context */
	ok(f->t->digest_new(TETHER_DIGEST_SHA256, &d, &err), &err, "new");
	assert_int_equal(f->t->digest_update(d, "x", 1), 0);
	f->t->digest_free(d);

	d = NULL;
	expect_fail(f->t->digest_new(7, &d, &err), &err, TETHER_ERR_INVALID, -1);
	assert_null(d);
}

static void test_random(void **state)
{
	struct fixture *f = *state;
	unsigned char a[32], b[32], z[32];

	memset(z, 0, sizeof(z));
	assert_int_equal(f->t->random_bytes(a, sizeof(a)), 0);
	assert_int_equal(f->t->random_bytes(b, sizeof(b)), 0);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_memory_not_equal(a, z, sizeof(a));
	assert_int_equal(f->t->random_bytes(a, 0), 0);
}

static void test_cert_info_bad_input(void **state)
{
	struct fixture *f = *state;
	static const unsigned char junk[] = { 0x30, 0x82, 0x01, 0x00, 0x01 };
	tether_cert_info ci;
	tether_error err;

	memset(&ci, 0x5a, sizeof(ci));
	expect_fail(f->t->cert_info(junk, sizeof(junk), &ci, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	assert_int_equal(((unsigned char *)&ci)[0], 0x5a);   /* untouched */
	expect_fail(f->t->cert_info(junk, 0, &ci, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
}

/* ---------------------------------------------------------------- */
/* Generate                                                          */
/* ---------------------------------------------------------------- */

static void check_generated(struct fixture *f, int type, const char *ktype,
                            int bits, const char *curve, const char *sigalg)
{
	tether_identity *id = NULL;
	tether_cert_info ci;
	tether_error err;
	const unsigned char *der;
	size_t len;
	time_t now = time(NULL);

	gen(f, TETHER_SLOT_CURRENT, type);
	ok(f->t->identity_load(f->ctx, TETHER_SLOT_CURRENT, &id, &err), &err, "load");
	assert_int_equal(f->t->identity_cert_der(id, &der, &len), 0);
	assert_true(len > 100);
	ok(f->t->cert_info(der, len, &ci, &err), &err, "cert_info");
	assert_string_equal(ci.key_type, ktype);
	assert_int_equal(ci.key_bits, bits);
	assert_string_equal(ci.curve, curve);
	assert_string_equal(ci.cert_signature_algorithm, sigalg);
	assert_string_equal(ci.subject, "CN=tether");
	assert_string_equal(ci.issuer, "CN=tether");
	assert_int_equal(ci.self_signed, 1);
	assert_true(ci.not_before <= (int64_t)now);
	assert_true(ci.not_before > (int64_t)now - 2 * 86400);
	/* 20 years by default */
	assert_true(ci.not_after - (int64_t)now > (int64_t)7299 * 86400);
	assert_true(ci.not_after - (int64_t)now < (int64_t)7301 * 86400);
	/* 128-bit serial: 32 hex digits, or 34 with a leading 00 */
	assert_true(strlen(ci.serial_hex) >= 30 && strlen(ci.serial_hex) <= 34);
	f->t->identity_free(id);

	if (is_openssl(f)) {
		char path[PATH_MAX * 2];
		struct stat st;
		size_t n;
		char *s;

		slot_file(f, TETHER_SLOT_CURRENT, "key.pem", path, sizeof(path));
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0600);
		s = read_file(path, &n);
		assert_non_null(strstr(s, "-----BEGIN PRIVATE KEY-----"));
		free(s);
	}
	ok(f->t->identity_remove(f->ctx, TETHER_SLOT_CURRENT, &err), &err, "remove");
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_CURRENT, &err), 0);
}

static void test_generate_rsa2048(void **state)
{
	check_generated(*state, TETHER_KEY_RSA2048, "rsa", 2048, "",
	                "sha256WithRSAEncryption");
}

static void test_generate_rsa3072(void **state)
{
	check_generated(*state, TETHER_KEY_RSA3072, "rsa", 3072, "",
	                "sha256WithRSAEncryption");
}

static void test_generate_rsa4096(void **state)
{
	check_generated(*state, TETHER_KEY_RSA4096, "rsa", 4096, "",
	                "sha256WithRSAEncryption");
}

static void test_generate_ec(void **state)
{
	check_generated(*state, TETHER_KEY_EC_P256, "ec", 256, "secp256r1",
	                "ecdsa-with-SHA256");
	check_generated(*state, TETHER_KEY_EC_P384, "ec", 384, "secp384r1",
	                "ecdsa-with-SHA384");
}

static void test_generate_params(void **state)
{
	struct fixture *f = *state;
	tether_keygen_params kp = { TETHER_KEY_EC_P256, 30, "agent-7", NULL };
	tether_identity *id = NULL;
	tether_cert_info ci;
	tether_error err;
	const unsigned char *der;
	size_t len;

	ok(f->t->identity_generate(f->ctx, TETHER_SLOT_STAGED, &kp, &err), &err, "gen");
	ok(f->t->identity_load(f->ctx, TETHER_SLOT_STAGED, &id, &err), &err, "load");
	assert_int_equal(f->t->identity_cert_der(id, &der, &len), 0);
	ok(f->t->cert_info(der, len, &ci, &err), &err, "info");
	assert_string_equal(ci.subject, "CN=agent-7");
	assert_true(ci.not_after - ci.not_before >= (int64_t)30 * 86400);
	assert_true(ci.not_after - ci.not_before <= (int64_t)31 * 86400);
	f->t->identity_free(id);

	kp.key_type = TETHER_KEY__COUNT;
	expect_fail(f->t->identity_generate(f->ctx, TETHER_SLOT_CURRENT, &kp, &err),
	            &err, TETHER_ERR_INVALID, -1);
	kp.key_type = TETHER_KEY_EC_P256;
	kp.key_passphrase = "";
	expect_fail(f->t->identity_generate(f->ctx, TETHER_SLOT_CURRENT, &kp, &err),
	            &err, TETHER_ERR_INVALID, -1);
	expect_fail(f->t->identity_generate(f->ctx, 7, NULL, &err), &err,
	            TETHER_ERR_INVALID, -1);
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_CURRENT, &err), 0);
}

static void test_generate_occupied(void **state)
{
	struct fixture *f = *state;
	unsigned char before[32], after[32];
	tether_error err;
	char *s1, *s2;
	size_t l1, l2;

	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P256);
	slot_fp(f, TETHER_SLOT_CURRENT, before);
	s1 = snapshot(f, &l1);
	expect_fail(f->t->identity_generate(f->ctx, TETHER_SLOT_CURRENT, NULL, &err),
	            &err, TETHER_ERR_EXISTS, -1);
	s2 = snapshot(f, &l2);
	assert_snapshot_equal(s1, l1, s2, l2);
	slot_fp(f, TETHER_SLOT_CURRENT, after);
	assert_memory_equal(before, after, 32);
}

/* ---------------------------------------------------------------- */
/* Slots                                                             */
/* ---------------------------------------------------------------- */

static int count_generations(struct fixture *f)
{
	DIR *d = opendir(f->iddir);
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, "id-", 3) == 0)
			n++;
	closedir(d);
	return n;
}

static void test_empty_slots(void **state)
{
	struct fixture *f = *state;
	tether_identity *id = NULL;
	tether_error err;
	unsigned char *out = NULL;
	size_t len = 0;
	int s;

	for (s = 0; s < TETHER_SLOT__COUNT; s++) {
		assert_int_equal(f->t->identity_exists(f->ctx, s, &err), 0);
		expect_fail(f->t->identity_load(f->ctx, s, &id, &err), &err,
		            TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND);
		assert_null(id);
		expect_fail(f->t->identity_remove(f->ctx, s, &err), &err,
		            TETHER_ERR_NOT_FOUND, -1);
		if (f->t->identity_export_pkcs12 != NULL) {
			expect_fail(f->t->identity_export_pkcs12(f->ctx, s, PFX_PASSWORD,
			            0, &out, &len, &err), &err, TETHER_ERR_NOT_FOUND, -1);
			assert_null(out);
		}
	}
	expect_fail(f->t->identity_promote(f->ctx, &err), &err,
	            TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND);
	expect_fail(f->t->identity_exists(f->ctx, -1, &err), &err,
	            TETHER_ERR_INVALID, -1);
}

static void test_promote(void **state)
{
	struct fixture *f = *state;
	unsigned char a[32], b[32], c[32], x[32], zero[32];
	tether_error err;

	memset(zero, 0, sizeof(zero));
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P256);
	slot_fp(f, TETHER_SLOT_CURRENT, a);
	expect_fail(f->t->identity_promote(f->ctx, &err), &err,
	            TETHER_ERR_NOT_FOUND, -1);

	gen(f, TETHER_SLOT_STAGED, TETHER_KEY_EC_P256);
	slot_fp(f, TETHER_SLOT_STAGED, b);
	assert_memory_not_equal(a, b, 32);
	ok(f->t->identity_promote(f->ctx, &err), &err, "promote 1");
	slot_fp(f, TETHER_SLOT_CURRENT, x);
	assert_memory_equal(x, b, 32);
	slot_fp(f, TETHER_SLOT_PREVIOUS, x);
	assert_memory_equal(x, a, 32);
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_STAGED, &err), 0);

	gen(f, TETHER_SLOT_STAGED, TETHER_KEY_RSA2048);
	slot_fp(f, TETHER_SLOT_STAGED, c);
	ok(f->t->identity_promote(f->ctx, &err), &err, "promote 2");
	slot_fp(f, TETHER_SLOT_CURRENT, x);
	assert_memory_equal(x, c, 32);
	slot_fp(f, TETHER_SLOT_PREVIOUS, x);
	assert_memory_equal(x, b, 32);
	slot_fp(f, TETHER_SLOT_STAGED, x);
	assert_memory_equal(x, zero, 32);
	if (is_openssl(f))
		assert_int_equal(count_generations(f), 2);  /* a was destroyed */

	ok(f->t->identity_remove(f->ctx, TETHER_SLOT_PREVIOUS, &err), &err, "remove");
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_PREVIOUS, &err), 0);
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_CURRENT, &err), 1);
	if (is_openssl(f))
		assert_int_equal(count_generations(f), 1);
}

/* openssl layout: a promote interrupted after its first rename (previous
 * already points at current) is finished by the next slot change. */
static void test_promote_recovery(void **state)
{
	struct fixture *f = *state;
	char link[PATH_MAX + 32], cur[64];
	unsigned char a[32], b[32], x[32];
	tether_error err;
	ssize_t n;

	if (!is_openssl(f))
		skip();
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P256);
	gen(f, TETHER_SLOT_STAGED, TETHER_KEY_EC_P256);
	slot_fp(f, TETHER_SLOT_CURRENT, a);
	slot_fp(f, TETHER_SLOT_STAGED, b);
	snprintf(link, sizeof(link), "%s/current", f->iddir);
	n = readlink(link, cur, sizeof(cur) - 1);
	assert_true(n > 0);
	cur[n] = '\0';
	/* simulate the crash: previous := current, nothing else */
	snprintf(link, sizeof(link), "%s/previous", f->iddir);
	assert_int_equal(symlink(cur, link), 0);
	slot_fp(f, TETHER_SLOT_CURRENT, x);
	assert_memory_equal(x, a, 32);
	/* the next change finishes the promotion first: staged is free */
	gen(f, TETHER_SLOT_STAGED, TETHER_KEY_EC_P256);
	slot_fp(f, TETHER_SLOT_CURRENT, x);
	assert_memory_equal(x, b, 32);
	slot_fp(f, TETHER_SLOT_PREVIOUS, x);
	assert_memory_equal(x, a, 32);
	assert_int_equal(count_generations(f), 3);
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_STAGED, &err), 1);
}

/* ---------------------------------------------------------------- */
/* Encrypted keys                                                    */
/* ---------------------------------------------------------------- */

static void test_encrypted_key(void **state)
{
	struct fixture *f = *state;
	tether_keygen_params kp = { TETHER_KEY_EC_P256, 0, NULL, KEY_PASSPHRASE };
	tether_identity *id = NULL;
	tether_error err;
	size_t n;
	char *s;

	ok(f->t->identity_generate(f->ctx, TETHER_SLOT_CURRENT, &kp, &err), &err, "gen");
	if (is_openssl(f)) {
		s = slot_read(f, TETHER_SLOT_CURRENT, "key.pem", &n);
		assert_non_null(strstr(s, "-----BEGIN ENCRYPTED PRIVATE KEY-----"));
		free(s);
	}
	/* no passphrase configured */
	expect_fail(f->t->identity_load(f->ctx, TETHER_SLOT_CURRENT, &id, &err),
	            &err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD);
	/* wrong one */
	write_passfile(f, "not-the-passphrase");
	f->use_passfile = 1;
	expect_fail(f->t->identity_load(f->ctx, TETHER_SLOT_CURRENT, &id, &err),
	            &err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD);
	assert_null(strstr(err.detail, "not-the-passphrase"));
	/* right one */
	write_passfile(f, KEY_PASSPHRASE);
	ok(f->t->identity_load(f->ctx, TETHER_SLOT_CURRENT, &id, &err), &err, "load");
	f->t->identity_free(id);

	/* generate with the configured passphrase only */
	gen(f, TETHER_SLOT_STAGED, TETHER_KEY_EC_P256);
	if (is_openssl(f)) {
		s = slot_read(f, TETHER_SLOT_STAGED, "key.pem", &n);
		assert_non_null(strstr(s, "-----BEGIN ENCRYPTED PRIVATE KEY-----"));
		free(s);
	}
	ok(f->t->identity_load(f->ctx, TETHER_SLOT_STAGED, &id, &err), &err, "load staged");
	f->t->identity_free(id);
	assert_null(strstr(f->log, KEY_PASSPHRASE));
}

/* ---------------------------------------------------------------- */
/* PKCS#12                                                           */
/* ---------------------------------------------------------------- */

static void cert_of(struct fixture *f, int slot, unsigned char **der, size_t *len)
{
	tether_identity *id = NULL;
	tether_error err;
	const unsigned char *d;

	ok(f->t->identity_load(f->ctx, slot, &id, &err), &err, "load");
	assert_int_equal(f->t->identity_cert_der(id, &d, len), 0);
	*der = malloc(*len);
	memcpy(*der, d, *len);
	f->t->identity_free(id);
}

static void check_p12_algs(const unsigned char *p12der, size_t len, int legacy)
{
	const unsigned char *q = p12der;
	PKCS12 *p12 = d2i_PKCS12(NULL, &q, (long)len);
	const X509_ALGOR *macalg = NULL;
	const ASN1_OBJECT *obj;
	STACK_OF(PKCS7) *safes;
	int i, j, saw_key = 0;

	assert_non_null(p12);
	PKCS12_get0_mac(NULL, &macalg, NULL, NULL, p12);
	assert_non_null(macalg);
	X509_ALGOR_get0(&obj, NULL, NULL, macalg);
	assert_int_equal(OBJ_obj2nid(obj), legacy ? NID_sha1 : NID_sha256);
	safes = PKCS12_unpack_authsafes(p12);
	assert_non_null(safes);
	for (i = 0; i < sk_PKCS7_num(safes); i++) {
		PKCS7 *p7 = sk_PKCS7_value(safes, i);
		STACK_OF(PKCS12_SAFEBAG) *bags;

		if (PKCS7_type_is_encrypted(p7)) {
			const X509_ALGOR *a = p7->d.encrypted->enc_data->algorithm;

			X509_ALGOR_get0(&obj, NULL, NULL, a);
			assert_int_equal(OBJ_obj2nid(obj), legacy ?
			                 NID_pbe_WithSHA1And3_Key_TripleDES_CBC : NID_pbes2);
			continue;
		}
		bags = PKCS12_unpack_p7data(p7);
		for (j = 0; bags && j < sk_PKCS12_SAFEBAG_num(bags); j++) {
			PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, j);

			if (PKCS12_SAFEBAG_get_nid(bag) == NID_pkcs8ShroudedKeyBag) {
				const X509_SIG *sig = PKCS12_SAFEBAG_get0_pkcs8(bag);
				const X509_ALGOR *a;

				X509_SIG_get0(sig, &a, NULL);
				X509_ALGOR_get0(&obj, NULL, NULL, a);
				assert_int_equal(OBJ_obj2nid(obj), legacy ?
				                 NID_pbe_WithSHA1And3_Key_TripleDES_CBC : NID_pbes2);
				saw_key = 1;
			}
		}
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
	}
	assert_true(saw_key);
	sk_PKCS7_pop_free(safes, PKCS7_free);
	PKCS12_free(p12);
}

static void p12_roundtrip(void **state, int legacy)
{
	struct fixture *f = *state;
	unsigned char *pfx = NULL, *d1, *d2;
	size_t len = 0, l1, l2;
	tether_error err;

	if (f->t->identity_export_pkcs12 == NULL)
		skip();
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_RSA2048);
	ok(f->t->identity_export_pkcs12(f->ctx, TETHER_SLOT_CURRENT, PFX_PASSWORD,
	   legacy, &pfx, &len, &err), &err, "export");
	assert_true(len > 500);
	check_p12_algs(pfx, len, legacy);
	ok(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, pfx, len, PFX_PASSWORD,
	   &err), &err, "import");
	cert_of(f, TETHER_SLOT_CURRENT, &d1, &l1);
	cert_of(f, TETHER_SLOT_STAGED, &d2, &l2);
	assert_int_equal(l1, l2);
	assert_memory_equal(d1, d2, l1);
	free(d1);
	free(d2);

	/* import into an occupied slot */
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, pfx, len,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_EXISTS, -1);
	/* empty export password */
	free(pfx);
	pfx = NULL;
	expect_fail(f->t->identity_export_pkcs12(f->ctx, TETHER_SLOT_CURRENT, "",
	            legacy, &pfx, &len, &err), &err, TETHER_ERR_INVALID, -1);
	assert_null(pfx);
}

static void test_pkcs12_modern(void **state)
{
	p12_roundtrip(state, 0);
}

static void test_pkcs12_legacy(void **state)
{
	p12_roundtrip(state, 1);
}

static void test_pkcs12_failures(void **state)
{
	struct fixture *f = *state;
	unsigned char *pfx = NULL, *bad;
	size_t len = 0, l1, l2;
	tether_error err;
	char *s1, *s2;

	if (f->t->identity_export_pkcs12 == NULL)
		skip();
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P256);
	gen(f, TETHER_SLOT_PREVIOUS, TETHER_KEY_EC_P256);
	ok(f->t->identity_export_pkcs12(f->ctx, TETHER_SLOT_CURRENT, PFX_PASSWORD,
	   0, &pfx, &len, &err), &err, "export");
	s1 = snapshot(f, &l1);

	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, pfx, len,
	            "Wrong-password", &err), &err, TETHER_ERR_PASSWORD,
	            TETHER_CAT_BAD_PASSWORD);
	assert_null(strstr(err.detail, "Wrong-password"));
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, pfx, len,
	            NULL, &err), &err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD);
	/* truncated */
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, pfx, len / 2,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, pfx, len - 1,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	/* corrupt structure */
	bad = malloc(len);
	memcpy(bad, pfx, len);
	bad[4] ^= 0x55;
	bad[5] ^= 0xff;
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, bad, len,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	memset(bad, 0xa5, len);
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, bad, len,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, bad, 0,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	free(bad);
	/* occupied slot, correct file */
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_CURRENT, pfx, len,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_EXISTS, -1);

	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_STAGED, &err), 0);
	s2 = snapshot(f, &l2);
	assert_snapshot_equal(s1, l1, s2, l2);
	free(pfx);
}

/* A PKCS#12 as older Windows writes it: certificates under RC2-40, key
 * under 3DES, SHA-1 MAC; made here with OpenSSL's legacy provider. */
static void test_pkcs12_rc2_import(void **state)
{
	struct fixture *f = *state;
	OSSL_LIB_CTX *lc;
	OSSL_PROVIDER *leg, *def;
	EVP_PKEY *key;
	X509 *cert;
	PKCS12 *p12;
	BIO *b;
	unsigned char *der = NULL, *d1, *d2;
	size_t n, l1, l2;
	tether_error err;
	char *s;
	int len;

	if (!is_openssl(f))
		skip();
	lc = OSSL_LIB_CTX_new();
	leg = OSSL_PROVIDER_load(lc, "legacy");
	def = OSSL_PROVIDER_load(lc, "default");
	if (leg == NULL || def == NULL) {
		OSSL_LIB_CTX_free(lc);
		skip();
	}
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_RSA2048);
	s = slot_read(f, TETHER_SLOT_CURRENT, "key.pem", &n);
	b = BIO_new_mem_buf(s, (int)n);
	key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	free(s);
	s = slot_read(f, TETHER_SLOT_CURRENT, "cert.pem", &n);
	b = BIO_new_mem_buf(s, (int)n);
	cert = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	free(s);
	assert_non_null(key);
	assert_non_null(cert);
	p12 = PKCS12_create_ex(PFX_PASSWORD, "old windows", key, cert, NULL,
	                       NID_pbe_WithSHA1And3_Key_TripleDES_CBC,
	                       NID_pbe_WithSHA1And40BitRC2_CBC, 2000, 2000, 0,
	                       lc, NULL);
	assert_non_null(p12);
	len = i2d_PKCS12(p12, &der);
	assert_true(len > 0);
	PKCS12_free(p12);
	EVP_PKEY_free(key);
	X509_free(cert);
	OSSL_PROVIDER_unload(leg);
	OSSL_PROVIDER_unload(def);
	OSSL_LIB_CTX_free(lc);

	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, der,
	            (size_t)len, "Wrong-password", &err), &err, TETHER_ERR_PASSWORD,
	            TETHER_CAT_BAD_PASSWORD);
	ok(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, der, (size_t)len,
	   PFX_PASSWORD, &err), &err, "import RC2");
	OPENSSL_free(der);
	cert_of(f, TETHER_SLOT_CURRENT, &d1, &l1);
	cert_of(f, TETHER_SLOT_STAGED, &d2, &l2);
	assert_int_equal(l1, l2);
	assert_memory_equal(d1, d2, l1);
	free(d1);
	free(d2);
	/* the default context was left alone: RC2 is still unavailable there */
	{
		EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "RC2-40-CBC", NULL);
		assert_null(c);
		ERR_clear_error();
	}
}

/* ---------------------------------------------------------------- */
/* PBKDF iteration bound (providers/common/ossl_import.c)            */
/* ---------------------------------------------------------------- */

/* OSSL_P12_ITER_MAX: the counts of a file may add up to this at most.
 * Counts just above it keep each case below a minute even without the
 * bound, so that a missing check fails the test instead of hanging it. */
#define ITER_MAX 10000000ULL

/* Set the iteration count of a password-based encryption (PBES2 with
 * PBKDF2, or a PKCS#12 / PKCS#5 v1 PBE) without deriving anything. */
static void set_pbe_iter(X509_ALGOR *alg, uint64_t iter)
{
	const ASN1_OBJECT *obj;

	X509_ALGOR_get0(&obj, NULL, NULL, alg);
	if (OBJ_obj2nid(obj) == NID_pbes2) {
		PBE2PARAM *p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM),
		                                         alg->parameter);
		PBKDF2PARAM *k;

		assert_non_null(p);
		k = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM),
		                              p->keyfunc->parameter);
		assert_non_null(k);
		assert_int_equal(ASN1_INTEGER_set_uint64(k->iter, iter), 1);
		assert_non_null(ASN1_TYPE_pack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), k,
		                                        &p->keyfunc->parameter));
		assert_non_null(ASN1_TYPE_pack_sequence(ASN1_ITEM_rptr(PBE2PARAM), p,
		                                        &alg->parameter));
		PBKDF2PARAM_free(k);
		PBE2PARAM_free(p);
	} else {
		PBEPARAM *p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBEPARAM),
		                                        alg->parameter);

		assert_non_null(p);
		assert_int_equal(ASN1_INTEGER_set_uint64(p->iter, iter), 1);
		assert_non_null(ASN1_TYPE_pack_sequence(ASN1_ITEM_rptr(PBEPARAM), p,
		                                        &alg->parameter));
		PBEPARAM_free(p);
	}
}

/* The key and certificate of a freshly generated slot (openssl layout). */
static void slot_key_cert(struct fixture *f, int slot, EVP_PKEY **key, X509 **cert)
{
	size_t n;
	char *s;
	BIO *b;

	s = slot_read(f, slot, "key.pem", &n);
	b = BIO_new_mem_buf(s, (int)n);
	*key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	free(s);
	s = slot_read(f, slot, "cert.pem", &n);
	b = BIO_new_mem_buf(s, (int)n);
	*cert = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	free(s);
	assert_non_null(*key);
	assert_non_null(*cert);
}

/* Re-seal p12 with a MAC of count 2 (cheap; 1 would leave no count to
 * change), then give the MAC count mac if not 0; return its DER. */
static unsigned char *p12_seal(PKCS12 *p12, uint64_t mac, int *len)
{
	const ASN1_INTEGER *it = NULL;
	unsigned char *der = NULL;

	assert_int_equal(PKCS12_set_mac(p12, PFX_PASSWORD, -1, NULL, 0, 2, NULL), 1);
	if (mac != 0) {
		PKCS12_get0_mac(NULL, NULL, NULL, &it, p12);
		assert_non_null(it);
		assert_int_equal(ASN1_INTEGER_set_uint64((ASN1_INTEGER *)it, mac), 1);
	}
	*len = i2d_PKCS12(p12, &der);
	assert_true(*len > 0);
	PKCS12_free(p12);
	return der;
}

/* A PKCS#12 as PKCS12_create writes it (the certificate in an encrypted
 * part, the key shrouded in a plain one), made with count 1 and then
 * given the counts mac, certs and keyc (0: leave it).  legacy: 3DES
 * PBEs (PBEParameter) instead of PBES2. */
static unsigned char *p12_counts(EVP_PKEY *key, X509 *cert, int legacy,
                                 uint64_t mac, uint64_t certs, uint64_t keyc,
                                 int *len)
{
	int nid = legacy ? NID_pbe_WithSHA1And3_Key_TripleDES_CBC : NID_aes_256_cbc;
	PKCS12 *p12 = PKCS12_create(PFX_PASSWORD, "iter", key, cert, NULL, nid, nid,
	                            1, 1, 0);
	STACK_OF(PKCS7) *safes;
	int i, saw_certs = 0, saw_key = 0;

	assert_non_null(p12);
	safes = PKCS12_unpack_authsafes(p12);
	assert_non_null(safes);
	for (i = 0; i < sk_PKCS7_num(safes); i++) {
		PKCS7 *p7 = sk_PKCS7_value(safes, i);
		STACK_OF(PKCS12_SAFEBAG) *bags;
		int j;

		if (PKCS7_type_is_encrypted(p7)) {
			if (certs != 0)
				set_pbe_iter(p7->d.encrypted->enc_data->algorithm, certs);
			saw_certs = 1;
			continue;
		}
		bags = PKCS12_unpack_p7data(p7);
		assert_non_null(bags);
		for (j = 0; j < sk_PKCS12_SAFEBAG_num(bags); j++) {
			PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, j);
			X509_ALGOR *alg;

			if (PKCS12_SAFEBAG_get_nid(bag) != NID_pkcs8ShroudedKeyBag)
				continue;
			X509_SIG_getm((X509_SIG *)PKCS12_SAFEBAG_get0_pkcs8(bag), &alg, NULL);
			if (keyc != 0)
				set_pbe_iter(alg, keyc);
			saw_key = 1;
		}
		sk_PKCS7_set(safes, i, PKCS12_pack_p7data(bags));
		assert_non_null(sk_PKCS7_value(safes, i));
		PKCS7_free(p7);
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
	}
	assert_true(saw_certs && saw_key);
	assert_int_equal(PKCS12_pack_authsafes(p12, safes), 1);
	sk_PKCS7_pop_free(safes, PKCS7_free);
	return p12_seal(p12, mac, len);
}

/* The import of der is refused as asking for too many iterations, names
 * what asked for the most, and changes nothing. */
static void expect_iter_refusal(struct fixture *f, const unsigned char *der,
                                size_t len, const char *what)
{
	tether_error err;
	size_t l1, l2;
	char *s1 = snapshot(f, &l1), *s2;

	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, der, len,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	if (strstr(err.detail, "more than 10000000 password key derivation iterations") == NULL ||
	    strstr(err.detail, what) == NULL || strstr(err.detail, "usual iteration count") == NULL)
		fail_msg("not the iteration refusal for %s: %s", what, err.detail);
	assert_null(strstr(err.detail, PFX_PASSWORD));
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_STAGED, &err), 0);
	s2 = snapshot(f, &l2);
	assert_snapshot_equal(s1, l1, s2, l2);
}

static void test_pkcs12_iteration_bound(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *key;
	X509 *cert;
	unsigned char *der;
	tether_error err;
	int len, i;

	if (!is_openssl(f))
		skip();
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P256);
	slot_key_cert(f, TETHER_SLOT_CURRENT, &key, &cert);

	/* each kind of count alone above the bound */
	der = p12_counts(key, cert, 0, ITER_MAX + 1, 0, 0, &len);
	expect_iter_refusal(f, der, (size_t)len, "the MAC alone: 10000001");
	OPENSSL_free(der);
	der = p12_counts(key, cert, 0, UINT64_MAX, 0, 0, &len);
	expect_iter_refusal(f, der, (size_t)len, "the MAC alone: 18446744073709551615");
	OPENSSL_free(der);
	{
		/* 2^70: more than 64 bits can hold */
		PKCS12 *p12 = PKCS12_create(PFX_PASSWORD, "iter", key, cert, NULL,
		                            NID_aes_256_cbc, NID_aes_256_cbc, 1, 2, 0);
		const ASN1_INTEGER *it = NULL;
		BIGNUM *bn = BN_new();

		assert_non_null(p12);
		assert_int_equal(BN_set_bit(bn, 70), 1);
		PKCS12_get0_mac(NULL, NULL, NULL, &it, p12);
		assert_non_null(BN_to_ASN1_INTEGER(bn, (ASN1_INTEGER *)it));
		BN_free(bn);
		der = NULL;
		len = i2d_PKCS12(p12, &der);
		PKCS12_free(p12);
		expect_iter_refusal(f, der, (size_t)len,
		                    "the MAC alone: 18446744073709551615 or more");
		OPENSSL_free(der);
	}
	der = p12_counts(key, cert, 0, 0, ITER_MAX + 1, 0, &len);
	expect_iter_refusal(f, der, (size_t)len, "an encrypted part alone: 10000001");
	OPENSSL_free(der);
	der = p12_counts(key, cert, 0, 0, 0, ITER_MAX + 1, &len);
	expect_iter_refusal(f, der, (size_t)len, "an encrypted private key alone: 10000001");
	OPENSSL_free(der);
	der = p12_counts(key, cert, 1, 0, 0, ITER_MAX + 1, &len);
	expect_iter_refusal(f, der, (size_t)len, "an encrypted private key alone: 10000001");
	OPENSSL_free(der);
	der = p12_counts(key, cert, 1, 0, 2147483647, 0, &len);
	expect_iter_refusal(f, der, (size_t)len, "an encrypted part alone: 2147483647");
	OPENSSL_free(der);
	/* each below the bound, together above it: two keys of 6 000 000 */
	{
		STACK_OF(PKCS12_SAFEBAG) *bags = NULL;
		STACK_OF(PKCS7) *safes = NULL;
		PKCS12 *p12;

		assert_non_null(PKCS12_add_cert(&bags, cert));
		for (i = 0; i < 2; i++) {
			PKCS12_SAFEBAG *kb = PKCS12_add_key(&bags, key, 0, 1, NID_aes_256_cbc,
			                                    PFX_PASSWORD);
			X509_ALGOR *alg;

			assert_non_null(kb);
			X509_SIG_getm((X509_SIG *)PKCS12_SAFEBAG_get0_pkcs8(kb), &alg, NULL);
			set_pbe_iter(alg, 6000000);
		}
		assert_non_null(PKCS12_add_safe(&safes, bags, -1, 0, NULL));
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
		p12 = PKCS12_add_safes(safes, 0);
		sk_PKCS7_pop_free(safes, PKCS7_free);
		assert_non_null(p12);
		der = p12_seal(p12, 0, &len);
		expect_iter_refusal(f, der, (size_t)len, "(an encrypted private key alone: 6000000)");
		OPENSSL_free(der);
	}
	/* no MAC, no password: the counts are still bounded */
	{
		PKCS12 *p12 = PKCS12_create(NULL, "iter", key, cert, NULL,
		                            NID_aes_256_cbc, NID_aes_256_cbc, 1, -1, 0);
		STACK_OF(PKCS7) *safes;
		PKCS7 *p7;
		size_t l1, l2;
		char *s1, *s2;

		assert_non_null(p12);
		assert_int_equal(PKCS12_mac_present(p12), 0);
		safes = PKCS12_unpack_authsafes(p12);
		p7 = sk_PKCS7_value(safes, 0);
		assert_true(PKCS7_type_is_encrypted(p7));
		set_pbe_iter(p7->d.encrypted->enc_data->algorithm, ITER_MAX + 1);
		assert_int_equal(PKCS12_pack_authsafes(p12, safes), 1);
		sk_PKCS7_pop_free(safes, PKCS7_free);
		der = NULL;
		len = i2d_PKCS12(p12, &der);
		PKCS12_free(p12);
		s1 = snapshot(f, &l1);
		expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, der,
		            (size_t)len, NULL, &err), &err, TETHER_ERR_INVALID,
		            TETHER_CAT_BAD_INPUT);
		assert_non_null(strstr(err.detail, "an encrypted part alone: 10000001"));
		s2 = snapshot(f, &l2);
		assert_snapshot_equal(s1, l1, s2, l2);
		OPENSSL_free(der);
	}
	/* a key encrypted inside an encrypted part: seen only once that part
	 * is decrypted (its own count, 1, is allowed) */
	{
		STACK_OF(PKCS12_SAFEBAG) *bags = NULL;
		STACK_OF(PKCS7) *safes = NULL;
		PKCS12_SAFEBAG *kb;
		X509_ALGOR *alg;
		PKCS12 *p12;

		assert_non_null(PKCS12_add_cert(&bags, cert));
		kb = PKCS12_add_key(&bags, key, 0, 1, NID_aes_256_cbc, PFX_PASSWORD);
		assert_non_null(kb);
		X509_SIG_getm((X509_SIG *)PKCS12_SAFEBAG_get0_pkcs8(kb), &alg, NULL);
		set_pbe_iter(alg, ITER_MAX + 1);
		assert_non_null(PKCS12_add_safe(&safes, bags, NID_aes_256_cbc, 1, PFX_PASSWORD));
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
		p12 = PKCS12_add_safes(safes, 0);
		sk_PKCS7_pop_free(safes, PKCS7_free);
		assert_non_null(p12);
		der = p12_seal(p12, 0, &len);
		expect_iter_refusal(f, der, (size_t)len, "an encrypted private key alone: 10000001");
		OPENSSL_free(der);
	}
	/* a PBMAC1 MAC (RFC 9579; OpenSSL 3.4+ checks it with PBKDF2), its
	 * parameters in DER and in BER with an indefinite length */
	for (i = 0; i < 2; i++) {
		X509_ALGOR *kdf = PKCS5_pbkdf2_set((int)(ITER_MAX + 1), NULL, 0,
		                                   NID_hmacWithSHA256, 32);
		X509_ALGOR *hm = X509_ALGOR_new();
		const X509_ALGOR *macalg = NULL;
		unsigned char *seq, *p, *k = NULL, *m = NULL;
		int kl, ml, sl;
		ASN1_STRING *s = ASN1_STRING_new();
		PKCS12 *p12 = PKCS12_create(PFX_PASSWORD, "iter", key, cert, NULL,
		                            NID_aes_256_cbc, NID_aes_256_cbc, 1, 1, 0);

		assert_non_null(kdf);
		assert_non_null(p12);
		assert_int_equal(X509_ALGOR_set0(hm, OBJ_nid2obj(NID_hmacWithSHA256),
		                                 V_ASN1_NULL, NULL), 1);
		kl = i2d_X509_ALGOR(kdf, &k);
		ml = i2d_X509_ALGOR(hm, &m);
		assert_true(kl > 0 && ml > 0);
		sl = i == 0 ? ASN1_object_size(1, kl + ml, V_ASN1_SEQUENCE) : 2 + kl + ml + 2;
		seq = p = OPENSSL_malloc((size_t)sl);
		ASN1_put_object(&p, i == 0 ? 1 : 2, kl + ml, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
		memcpy(p, k, (size_t)kl);
		memcpy(p + kl, m, (size_t)ml);
		if (i == 1) {
			p += kl + ml;
			ASN1_put_eoc(&p);
		}
		assert_int_equal(ASN1_STRING_set(s, seq, sl), 1);
		PKCS12_get0_mac(NULL, &macalg, NULL, NULL, p12);
		assert_non_null(macalg);
		assert_int_equal(X509_ALGOR_set0((X509_ALGOR *)macalg, OBJ_nid2obj(NID_pbmac1),
		                                 V_ASN1_SEQUENCE, s), 1);
		der = NULL;
		len = i2d_PKCS12(p12, &der);
		assert_true(len > 0);
		expect_iter_refusal(f, der, (size_t)len, "the MAC alone: 10000001");
		OPENSSL_free(der);
		OPENSSL_free(seq);
		OPENSSL_free(k);
		OPENSSL_free(m);
		X509_ALGOR_free(kdf);
		X509_ALGOR_free(hm);
		PKCS12_free(p12);
	}
	/* an encrypted PKCS#8 key in PEM */
	{
		PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(key);
		X509_SIG *sig = PKCS8_encrypt(-1, EVP_aes_256_cbc(), KEY_PASSPHRASE, -1,
		                              NULL, 0, 1, p8);
		BIO *b = BIO_new(BIO_s_mem());
		X509_ALGOR *alg;
		char *pem;
		long pl;
		size_t l1, l2;
		char *s1, *s2;

		assert_non_null(sig);
		X509_SIG_getm(sig, &alg, NULL);
		set_pbe_iter(alg, ITER_MAX + 1);
		assert_int_equal(PEM_write_bio_PKCS8(b, sig), 1);
		assert_int_equal(PEM_write_bio_X509(b, cert), 1);
		pl = BIO_get_mem_data(b, &pem);
		s1 = snapshot(f, &l1);
		expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
		            (unsigned char *)pem, (size_t)pl, KEY_PASSPHRASE, &err), &err,
		            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
		if (strstr(err.detail, "the PEM data asks for more than 10000000") == NULL ||
		    strstr(err.detail, "the encrypted private key alone: 10000001") == NULL)
			fail_msg("not the iteration refusal: %s", err.detail);
		s2 = snapshot(f, &l2);
		assert_snapshot_equal(s1, l1, s2, l2);
		BIO_free(b);
		X509_SIG_free(sig);
		PKCS8_PRIV_KEY_INFO_free(p8);
	}

	/* counts that add up to the bound exactly are allowed: the MAC (made
	 * with count 2, given ITER_MAX - 2; the two parts have 1 each) is
	 * checked, and fails (about 2 s of work) */
	der = p12_counts(key, cert, 0, ITER_MAX - 2, 0, 0, &len);
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, der, (size_t)len,
	            PFX_PASSWORD, &err), &err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD);
	OPENSSL_free(der);
	EVP_PKEY_free(key);
	X509_free(cert);
}

/* A PFX as Bouncy Castle 1.86 writes it by default, 600 000 iterations
 * for the MAC, the certificates and the key: imported. */
static void test_pkcs12_high_counts_import(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *key;
	X509 *cert;
	PKCS12 *p12;
	unsigned char *der = NULL, *d1, *d2;
	size_t l1, l2;
	tether_error err;
	int len;

	if (!is_openssl(f))
		skip();
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P256);
	slot_key_cert(f, TETHER_SLOT_CURRENT, &key, &cert);
	p12 = PKCS12_create(PFX_PASSWORD, "bc", key, cert, NULL, NID_aes_256_cbc,
	                    NID_aes_256_cbc, 600000, 600000, 0);
	assert_non_null(p12);
	len = i2d_PKCS12(p12, &der);
	assert_true(len > 0);
	PKCS12_free(p12);
	EVP_PKEY_free(key);
	X509_free(cert);
	ok(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, der, (size_t)len,
	   PFX_PASSWORD, &err), &err, "import at 600000 iterations");
	OPENSSL_free(der);
	cert_of(f, TETHER_SLOT_CURRENT, &d1, &l1);
	cert_of(f, TETHER_SLOT_STAGED, &d2, &l2);
	assert_int_equal(l1, l2);
	assert_memory_equal(d1, d2, l1);
	free(d1);
	free(d2);
}

/* ---------------------------------------------------------------- */
/* PEM                                                               */
/* ---------------------------------------------------------------- */

static char *cat2(const char *a, size_t al, const char *b, size_t bl, size_t *len)
{
	char *s = malloc(al + bl + 1);

	memcpy(s, a, al);
	memcpy(s + al, b, bl);
	s[al + bl] = '\0';
	*len = al + bl;
	return s;
}

static void test_pem_import(void **state)
{
	struct fixture *f = *state;
	char *key, *crt, *pem;
	size_t kl, cl, pl, l1, l2;
	unsigned char *d1, *d2;
	tether_error err;

	if (!is_openssl(f))
		skip();
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P384);
	key = slot_read(f, TETHER_SLOT_CURRENT, "key.pem", &kl);
	crt = slot_read(f, TETHER_SLOT_CURRENT, "cert.pem", &cl);

	/* cert then key */
	pem = cat2(crt, cl, key, kl, &pl);
	ok(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, (unsigned char *)pem,
	   pl, NULL, &err), &err, "import cert+key");
	free(pem);
	cert_of(f, TETHER_SLOT_CURRENT, &d1, &l1);
	cert_of(f, TETHER_SLOT_STAGED, &d2, &l2);
	assert_int_equal(l1, l2);
	assert_memory_equal(d1, d2, l1);
	free(d1);
	free(d2);

	/* key then cert, with text around */
	pem = malloc(kl + cl + 64);
	pl = (size_t)sprintf(pem, "Bag Attributes\n%sjunk line\n%s\n", key, crt);
	ok(f->t->identity_import(f->ctx, TETHER_SLOT_PREVIOUS, (unsigned char *)pem,
	   pl, NULL, &err), &err, "import key+cert");
	free(pem);
	free(key);
	free(crt);
}

static void test_pem_encrypted(void **state)
{
	struct fixture *f = *state;
	tether_keygen_params kp = { TETHER_KEY_RSA2048, 0, NULL, KEY_PASSPHRASE };
	char *key, *crt, *pem, *s1, *s2;
	size_t kl, cl, pl, l1, l2;
	tether_error err;

	if (!is_openssl(f))
		skip();
	ok(f->t->identity_generate(f->ctx, TETHER_SLOT_CURRENT, &kp, &err), &err, "gen");
	key = slot_read(f, TETHER_SLOT_CURRENT, "key.pem", &kl);
	crt = slot_read(f, TETHER_SLOT_CURRENT, "cert.pem", &cl);
	pem = cat2(key, kl, crt, cl, &pl);
	s1 = snapshot(f, &l1);

	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (unsigned char *)pem, pl, NULL, &err), &err,
	            TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD);
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (unsigned char *)pem, pl, "nope-nope", &err), &err,
	            TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD);
	assert_null(strstr(err.detail, "nope-nope"));
	s2 = snapshot(f, &l2);
	assert_snapshot_equal(s1, l1, s2, l2);

	ok(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED, (unsigned char *)pem,
	   pl, KEY_PASSPHRASE, &err), &err, "import encrypted");
	/* stored without a passphrase: none is configured */
	free(key);
	key = slot_read(f, TETHER_SLOT_STAGED, "key.pem", &kl);
	assert_non_null(strstr(key, "-----BEGIN PRIVATE KEY-----"));
	free(key);
	free(crt);
	free(pem);
	assert_null(strstr(f->log, KEY_PASSPHRASE));
}

static void test_pem_failures(void **state)
{
	struct fixture *f = *state;
	char *keyA, *crtB, *crtA, *pem, *s1, *s2;
	size_t kl, cl, cal, pl, l1, l2;
	tether_error err;

	if (!is_openssl(f))
		skip();
	gen(f, TETHER_SLOT_CURRENT, TETHER_KEY_EC_P256);
	gen(f, TETHER_SLOT_PREVIOUS, TETHER_KEY_EC_P256);
	keyA = slot_read(f, TETHER_SLOT_CURRENT, "key.pem", &kl);
	crtA = slot_read(f, TETHER_SLOT_CURRENT, "cert.pem", &cal);
	crtB = slot_read(f, TETHER_SLOT_PREVIOUS, "cert.pem", &cl);
	s1 = snapshot(f, &l1);

	/* key of A, certificate of B */
	pem = cat2(crtB, cl, keyA, kl, &pl);
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (unsigned char *)pem, pl, NULL, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	/* truncated in the middle of the key */
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (unsigned char *)pem, cl + kl / 2, NULL, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	/* truncated after the certificate: no key */
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (unsigned char *)pem, cl, NULL, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	/* damaged base64 in the certificate */
	pem[cl / 2] = '*';
	pem[cl / 2 + 1] = '!';
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (unsigned char *)pem, pl, NULL, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	free(pem);
	/* key only */
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (unsigned char *)keyA, kl, NULL, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	/* neither PEM nor PKCS#12 */
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_STAGED,
	            (const unsigned char *)"hello world\n", 12, NULL, &err), &err,
	            TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT);
	/* valid, but the slot is in use */
	pem = cat2(crtA, cal, keyA, kl, &pl);
	expect_fail(f->t->identity_import(f->ctx, TETHER_SLOT_PREVIOUS,
	            (unsigned char *)pem, pl, NULL, &err), &err,
	            TETHER_ERR_EXISTS, -1);
	free(pem);

	s2 = snapshot(f, &l2);
	assert_snapshot_equal(s1, l1, s2, l2);
	assert_int_equal(f->t->identity_exists(f->ctx, TETHER_SLOT_STAGED, &err), 0);
	free(keyA);
	free(crtA);
	free(crtB);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(test_init_refuses_other_abi),
		T(test_table),
		T(test_digest_oneshot),
		T(test_digest_streaming),
		T(test_random),
		T(test_cert_info_bad_input),
		T(test_generate_rsa2048),
		T(test_generate_rsa3072),
		T(test_generate_rsa4096),
		T(test_generate_ec),
		T(test_generate_params),
		T(test_generate_occupied),
		T(test_empty_slots),
		T(test_promote),
		T(test_promote_recovery),
		T(test_encrypted_key),
		T(test_pkcs12_modern),
		T(test_pkcs12_legacy),
		T(test_pkcs12_failures),
		T(test_pkcs12_rc2_import),
		T(test_pkcs12_iteration_bound),
		T(test_pkcs12_high_counts_import),
		T(test_pem_import),
		T(test_pem_encrypted),
		T(test_pem_failures),
#undef T
	};

	return cmocka_run_group_tests_name("provider_conformance", tests,
	                                   group_setup, group_teardown);
}
