/*
 * ossl_tls_test.c: the shared OpenSSL TLS session (providers/common/
 * ossl_tls.c), client against server entirely in memory.
 *
 * Identities are throw-away RSA-2048 and EC P-256 self-signed certificates
 * made in the test; struct tether_identity is filled directly.
 * TETHER_TEST_VERBOSE=1 prints each handshake failure's detail.
 *
 * Links providers/common/libtether-ossl.la (or ossl_tls.c + ossl_err.c).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ossl_common.h"

/* ------------------------------------------------------------------ */
/* Fixtures: identities                                                */
/* ------------------------------------------------------------------ */

static tether_identity *make_identity(EVP_PKEY *key, const char *cn)
{
	tether_identity *id = calloc(1, sizeof(*id));
	X509 *x = X509_new();
	X509_NAME *name;
	unsigned char *der = NULL;
	int n;

	assert_non_null(id);
	assert_non_null(x);
	assert_int_equal(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
	name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
	                           (const unsigned char *)cn, -1, -1, 0);
	assert_int_equal(X509_set_issuer_name(x, name), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	n = i2d_X509(x, &der);
	assert_true(n > 0);
	id->cert = x;
	id->key = key;
	id->der = der;
	id->der_len = (size_t)n;
	return id;
}

static void free_identity(tether_identity *id)
{
	if (id == NULL)
		return;
	X509_free(id->cert);
	EVP_PKEY_free(id->key);
	OPENSSL_free(id->der);
	free(id);
}

static tether_identity *rsa1, *rsa2, *ec1;

static int group_setup(void **state)
{
	(void)state;
	rsa1 = make_identity(EVP_RSA_gen(2048), "rsa one");
	rsa2 = make_identity(EVP_RSA_gen(2048), "rsa two");
	ec1 = make_identity(EVP_EC_gen("P-256"), "ec one");
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	free_identity(rsa1);
	free_identity(rsa2);
	free_identity(ec1);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Byte queues and the pump                                            */
/* ------------------------------------------------------------------ */

struct queue {
	unsigned char *buf;
	size_t off, len, cap;
	int eof;                /* reader sees the connection gone when empty */
};

static int q_read(void *arg, void *buf, size_t len)
{
	struct queue *q = arg;
	size_t n = q->len - q->off;

	if (n == 0)
		return q->eof ? -1 : 0;
	if (n > len)
		n = len;
	memcpy(buf, q->buf + q->off, n);
	q->off += n;
	if (q->off == q->len)
		q->off = q->len = 0;
	return (int)n;
}

static void q_push(struct queue *q, const void *buf, size_t len)
{
	if (q->len + len > q->cap) {
		q->cap = (q->len + len) * 2;
		q->buf = realloc(q->buf, q->cap);
		assert_non_null(q->buf);
	}
	memcpy(q->buf + q->len, buf, len);
	q->len += len;
}

static int q_write(void *arg, const void *buf, size_t len)
{
	q_push(arg, buf, len);
	return (int)len;
}

static size_t q_pending(const struct queue *q)
{
	return q->len - q->off;
}

struct peer {
	tether_tls_ctx *ctx;
	tether_tls *t;
	struct queue in;        /* ciphertext to this side */
	struct queue *out;      /* the other side's in */
	int done;               /* handshake DONE */
	int rc;                 /* < 0 once failed */
	tether_error err;
	/* pin check */
	int refuse;
	int verify_calls;
	size_t verify_len;
};

struct pair {
	struct peer c, s;
};

static int verify_fn(void *arg, const unsigned char *der, size_t len)
{
	struct peer *p = arg;

	(void)der;
	p->verify_calls++;
	p->verify_len = len;
	return p->refuse ? -1 : 0;
}

static tether_identity *choose_fn(void *arg, const char *name)
{
	(void)arg;
	if (name != NULL && strcmp(name, "p-second.tether.invalid") == 0)
		return rsa2;
	return NULL;
}

static const unsigned char ticket_key[80] = {
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
	0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
	0x42,
};

static tether_tls_ctx *make_ctx(int role, unsigned policy,
                                tether_identity *id)
{
	tether_tls_ctx_params p;
	tether_tls_ctx *c = NULL;
	tether_error err;

	memset(&p, 0, sizeof(p));
	p.role = role;
	p.policy = policy;
	p.identity = id;
	if (role == TETHER_TLS_SERVER) {
		p.choose_identity = choose_fn;
		if (policy & TETHER_TLS_POLICY_RESUMPTION) {
			p.ticket_key = ticket_key;
			p.ticket_key_len = sizeof(ticket_key);
		}
	}
	memset(&err, 0, sizeof(err));
	if (ossl_tls_ctx_new(NULL, &p, &c, &err) != 0)
		fail_msg("ctx_new: %s", err.detail);
	return c;
}

static int peer_read(void *arg, void *buf, size_t len)
{
	struct peer *p = arg;

	return q_read(&p->in, buf, len);
}

static int peer_write(void *arg, const void *buf, size_t len)
{
	struct peer *p = arg;

	return q_write(p->out, buf, len);
}

/* New session for p, its out queue set already. */
static void start(struct peer *p, int use_verify, const char *sni,
                  const unsigned char *sess, size_t sess_len,
                  tether_identity *id)
{
	tether_tls_params tp;

	memset(&tp, 0, sizeof(tp));
	tp.io.read = peer_read;
	tp.io.write = peer_write;
	tp.io.io_arg = p;
	tp.verify = use_verify ? verify_fn : NULL;
	tp.verify_arg = p;
	tp.server_name = sni;
	tp.session = sess;
	tp.session_len = sess_len;
	tp.identity = id;
	p->done = 0;
	p->rc = 0;
	memset(&p->err, 0, sizeof(p->err));
	if (ossl_tls_new(p->ctx, &tp, &p->t, &p->err) != 0)
		fail_msg("tls_new: %s", p->err.detail);
}

static void pair_init(struct pair *pr, tether_tls_ctx *cctx,
                      tether_tls_ctx *sctx)
{
	memset(pr, 0, sizeof(*pr));
	pr->c.ctx = cctx;
	pr->s.ctx = sctx;
	pr->c.out = &pr->s.in;
	pr->s.out = &pr->c.in;
}

static void pair_start(struct pair *pr, int cverify, int sverify,
                       const char *sni, const unsigned char *sess,
                       size_t sess_len, tether_identity *cid)
{
	start(&pr->c, cverify, sni, sess, sess_len, cid);
	start(&pr->s, sverify, NULL, NULL, 0, NULL);
}

static void pair_free(struct pair *pr)
{
	ossl_tls_free(pr->c.t);
	ossl_tls_free(pr->s.t);
	pr->c.t = pr->s.t = NULL;
	free(pr->c.in.buf);
	free(pr->s.in.buf);
	memset(&pr->c.in, 0, sizeof(pr->c.in));
	memset(&pr->s.in, 0, sizeof(pr->s.in));
}

static void step(struct peer *p)
{
	int r;

	if (p->done || p->rc < 0)
		return;
	r = ossl_tls_handshake(p->t, &p->err);
	if (r == TETHER_TLS_DONE) {
		p->done = 1;
	} else if (r < 0) {
		p->rc = r;
		if (getenv("TETHER_TEST_VERBOSE") != NULL)
			print_message("handshake failed: category %d: %s\n",
			              p->err.category, p->err.detail);
	}
	else
		assert_int_equal(r, TETHER_TLS_WANT_READ);
}

/* Drive both handshakes until neither can move. */
static void pump(struct pair *pr)
{
	int i;

	for (i = 0; i < 50; i++) {
		step(&pr->c);
		step(&pr->s);
		if ((pr->c.done || pr->c.rc < 0) &&
		    (pr->s.done || pr->s.rc < 0) &&
		    q_pending(&pr->c.in) == 0 && q_pending(&pr->s.in) == 0)
			break;
		if (q_pending(&pr->c.in) == 0 && q_pending(&pr->s.in) == 0 &&
		    !(pr->c.done || pr->c.rc < 0) &&
		    !(pr->s.done || pr->s.rc < 0) && i > 2)
			break;
	}
}

/* Read whatever is there: returns status, bytes appended to buf. */
static int drain(struct peer *p, unsigned char *buf, size_t cap,
                 size_t *got)
{
	size_t n;
	int r;

	*got = 0;
	for (;;) {
		r = ossl_tls_read(p->t, buf + *got, cap - *got, &n, &p->err);
		if (r != TETHER_TLS_DONE)
			return r;
		*got += n;
		if (*got == cap)
			return TETHER_TLS_DONE;
	}
}

static void expect_peer_cert(struct peer *p, const tether_identity *id)
{
	const unsigned char *der = NULL;
	size_t len = 0;

	assert_int_equal(ossl_tls_peer_cert(p->t, &der, &len), 0);
	if (id == NULL) {
		assert_int_equal(len, 0);
		return;
	}
	assert_int_equal(len, id->der_len);
	assert_memory_equal(der, id->der, len);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

static void handshake_ok(unsigned policy, tether_identity *sid,
                         tether_identity *cid, const char *version,
                         const char *cipher, const char *group,
                         const char *ssig, const char *csig)
{
	struct pair pr;
	tether_tls_info ci, si;
	static unsigned char big[1 << 20], got[1 << 20];
	size_t n, total;
	int r;

	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, policy, cid),
	          make_ctx(TETHER_TLS_SERVER, policy, sid));
	pair_start(&pr, 1, 1, "p-0123456789abcdef.tether.invalid", NULL, 0,
	           NULL);
	pump(&pr);
	if (!pr.c.done || !pr.s.done)
		fail_msg("handshake: client %d (%s) server %d (%s)", pr.c.rc,
		         pr.c.err.detail, pr.s.rc, pr.s.err.detail);

	/* The pin check ran inside the handshake, on both sides. */
	assert_int_equal(pr.c.verify_calls, 1);
	assert_int_equal(pr.s.verify_calls, 1);
	assert_int_equal(pr.c.verify_len, sid->der_len);
	assert_int_equal(pr.s.verify_len, cid->der_len);
	expect_peer_cert(&pr.c, sid);
	expect_peer_cert(&pr.s, cid);

	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ossl_tls_info(pr.s.t, &si), 0);
	assert_string_equal(ci.tls_version, version);
	assert_string_equal(si.tls_version, version);
	assert_string_equal(ci.cipher, cipher);
	assert_string_equal(si.cipher, cipher);
	assert_string_equal(ci.group, group);
	assert_string_equal(si.group, group);
	assert_string_equal(si.sig_scheme, ssig);
	assert_string_equal(ci.peer_sig_scheme, ssig);
	assert_string_equal(ci.sig_scheme, csig);
	assert_string_equal(si.peer_sig_scheme, csig);
	assert_int_equal(ci.resumed, 0);
	assert_int_equal(si.resumed, 0);
	assert_string_equal(si.server_name,
	                    "p-0123456789abcdef.tether.invalid");

	/* Small data both ways. */
	assert_int_equal(ossl_tls_write(pr.c.t, "ping", 4, &pr.c.err), 0);
	assert_int_equal(drain(&pr.s, got, sizeof(got), &n),
	                 TETHER_TLS_WANT_READ);
	assert_int_equal(n, 4);
	assert_memory_equal(got, "ping", 4);
	assert_int_equal(ossl_tls_write(pr.s.t, "pong!", 5, &pr.s.err), 0);
	assert_int_equal(drain(&pr.c, got, sizeof(got), &n),
	                 TETHER_TLS_WANT_READ);
	assert_int_equal(n, 5);
	assert_memory_equal(got, "pong!", 5);

	/* 1 MiB each way. */
	for (n = 0; n < sizeof(big); n++)
		big[n] = (unsigned char)(n * 7 + (n >> 11));
	assert_int_equal(ossl_tls_write(pr.c.t, big, sizeof(big), &pr.c.err),
	                 0);
	memset(got, 0, sizeof(got));
	total = 0;
	r = drain(&pr.s, got, sizeof(got), &total);
	assert_true(r == TETHER_TLS_DONE || r == TETHER_TLS_WANT_READ);
	assert_int_equal(total, sizeof(big));
	assert_memory_equal(got, big, sizeof(big));
	assert_int_equal(ossl_tls_write(pr.s.t, big, sizeof(big), &pr.s.err),
	                 0);
	memset(got, 0, sizeof(got));
	r = drain(&pr.c, got, sizeof(got), &total);
	assert_true(r == TETHER_TLS_DONE || r == TETHER_TLS_WANT_READ);
	assert_int_equal(total, sizeof(big));
	assert_memory_equal(got, big, sizeof(big));

	/* close_notify: the server sees CLOSED. */
	assert_int_equal(ossl_tls_close(pr.c.t), 0);
	assert_int_equal(drain(&pr.s, got, sizeof(got), &n),
	                 TETHER_TLS_CLOSED);
	assert_int_equal(n, 0);
	assert_int_equal(ossl_tls_close(pr.s.t), 0);
	assert_int_equal(drain(&pr.c, got, sizeof(got), &n),
	                 TETHER_TLS_CLOSED);

	ossl_tls_ctx_free(pr.c.ctx);
	ossl_tls_ctx_free(pr.s.ctx);
	pair_free(&pr);
}

static void test_tls13_rsa(void **state)
{
	(void)state;
	handshake_ok(0, rsa1, rsa2, "TLSv1.3", "TLS_AES_128_GCM_SHA256",
	             "x25519", "rsa_pss_rsae_sha256", "rsa_pss_rsae_sha256");
}

static void test_tls12_rsa(void **state)
{
	(void)state;
	handshake_ok(TETHER_TLS_POLICY_TLS12_ONLY, rsa1, rsa2, "TLSv1.2",
	             "ECDHE-RSA-AES128-GCM-SHA256", "x25519",
	             "rsa_pss_rsae_sha256", "rsa_pss_rsae_sha256");
}

static void test_tls13_ec(void **state)
{
	(void)state;
	handshake_ok(0, ec1, ec1, "TLSv1.3", "TLS_AES_128_GCM_SHA256",
	             "x25519", "ecdsa_secp256r1_sha256",
	             "ecdsa_secp256r1_sha256");
}

static void test_tls12_ec(void **state)
{
	(void)state;
	handshake_ok(TETHER_TLS_POLICY_TLS12_ONLY, ec1, ec1, "TLSv1.2",
	             "ECDHE-ECDSA-AES128-GCM-SHA256", "x25519",
	             "ecdsa_secp256r1_sha256", "ecdsa_secp256r1_sha256");
}

static void test_tls13_mixed(void **state)
{
	(void)state;
	handshake_ok(TETHER_TLS_POLICY_TLS13_ONLY, rsa1, ec1, "TLSv1.3",
	             "TLS_AES_128_GCM_SHA256", "x25519",
	             "rsa_pss_rsae_sha256", "ecdsa_secp256r1_sha256");
}

static void test_fips_policy(void **state)
{
	(void)state;
	/* FIPS policy on both: no x25519 (nor ChaCha20). */
	handshake_ok(TETHER_TLS_POLICY_FIPS, ec1, rsa1, "TLSv1.3",
	             "TLS_AES_128_GCM_SHA256", "secp256r1",
	             "ecdsa_secp256r1_sha256", "rsa_pss_rsae_sha256");
}

/* A failed pair: free everything. */
static void pair_done(struct pair *pr)
{
	ossl_tls_ctx_free(pr->c.ctx);
	ossl_tls_ctx_free(pr->s.ctx);
	pair_free(pr);
}

static void test_server_refuses_client(void **state)
{
	struct pair pr;
	unsigned char buf[64];
	size_t n;
	int r;

	(void)state;
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, 0, rsa2),
	          make_ctx(TETHER_TLS_SERVER, 0, rsa1));
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pr.s.refuse = 1;
	pump(&pr);
	assert_true(pr.s.rc < 0);
	assert_int_equal(pr.s.err.category, TETHER_CAT_UNTRUSTED);
	assert_int_equal(pr.s.rc, TETHER_ERR_UNTRUSTED);
	assert_non_null(strstr(pr.s.err.detail, "certificate unknown"));
	/* TLS 1.3: the client finished first; it sees the alert next. */
	if (pr.c.rc == 0) {
		assert_true(pr.c.done);
		r = ossl_tls_read(pr.c.t, buf, sizeof(buf), &n, &pr.c.err);
		assert_true(r < 0);
	}
	assert_int_equal(pr.c.err.category, TETHER_CAT_UNTRUSTED);
	assert_non_null(strstr(pr.c.err.detail, "certificate unknown"));
	/* Sticky: again the same. */
	r = ossl_tls_handshake(pr.s.t, &pr.s.err);
	assert_int_equal(r, TETHER_ERR_UNTRUSTED);
	assert_int_equal(pr.s.err.category, TETHER_CAT_UNTRUSTED);
	pair_done(&pr);
}

static void test_client_refuses_server(void **state)
{
	struct pair pr;

	(void)state;
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, 0, rsa2),
	          make_ctx(TETHER_TLS_SERVER, 0, rsa1));
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pr.c.refuse = 1;
	pump(&pr);
	assert_true(pr.c.rc < 0);
	assert_true(pr.s.rc < 0);
	assert_int_equal(pr.c.err.category, TETHER_CAT_UNTRUSTED);
	assert_int_equal(pr.s.err.category, TETHER_CAT_UNTRUSTED);
	assert_non_null(strstr(pr.s.err.detail, "certificate unknown"));
	pair_done(&pr);
}

static void no_client_cert(unsigned policy)
{
	struct pair pr;

	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, policy, NULL),
	          make_ctx(TETHER_TLS_SERVER, policy, rsa1));
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	if (!pr.c.done || !pr.s.done)
		fail_msg("handshake: client %d (%s) server %d (%s)", pr.c.rc,
		         pr.c.err.detail, pr.s.rc, pr.s.err.detail);
	assert_int_equal(pr.s.verify_calls, 0);
	expect_peer_cert(&pr.s, NULL);
	expect_peer_cert(&pr.c, rsa1);
	pair_done(&pr);

	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, policy, NULL),
	          make_ctx(TETHER_TLS_SERVER,
	                   policy | TETHER_TLS_POLICY_REQUIRE_CERT, rsa1));
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.s.rc < 0);
	assert_int_equal(pr.s.err.category, TETHER_CAT_PEER_NO_CERTIFICATE);
	pair_done(&pr);
}

static void test_no_client_cert(void **state)
{
	(void)state;
	no_client_cert(0);
	no_client_cert(TETHER_TLS_POLICY_TLS12_ONLY);
}

static void test_sni_choose_identity(void **state)
{
	struct pair pr;
	tether_tls_info si;

	(void)state;
	/* Default identity EC, chosen one RSA: only the chosen one may be
	 * presented even though the client accepts both key types. */
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, 0, rsa1),
	          make_ctx(TETHER_TLS_SERVER, 0, ec1));
	pair_start(&pr, 1, 1, "p-second.tether.invalid", NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	expect_peer_cert(&pr.c, rsa2);
	assert_int_equal(ossl_tls_info(pr.s.t, &si), 0);
	assert_string_equal(si.server_name, "p-second.tether.invalid");
	assert_string_equal(si.sig_scheme, "rsa_pss_rsae_sha256");
	pair_free(&pr);

	/* Other name: the default. */
	pair_start(&pr, 1, 1, "p-other.tether.invalid", NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	expect_peer_cert(&pr.c, ec1);
	pair_free(&pr);

	/* Client identity override. */
	pair_start(&pr, 1, 1, NULL, NULL, 0, ec1);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	expect_peer_cert(&pr.s, ec1);
	pair_done(&pr);
}

static void resumption(unsigned policy)
{
	struct pair pr;
	unsigned char buf[64], *sess = NULL;
	size_t n, sess_len = 0;
	tether_tls_info ci, si;
	tether_tls_ctx *cctx, *sctx;

	policy |= TETHER_TLS_POLICY_RESUMPTION;
	cctx = make_ctx(TETHER_TLS_CLIENT, policy, rsa2);
	sctx = make_ctx(TETHER_TLS_SERVER, policy, rsa1);

	/* First connection: full handshake. */
	pair_init(&pr, cctx, sctx);
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	if (!(policy & TETHER_TLS_POLICY_TLS12_ONLY)) {
		/* TLS 1.3: no ticket before the pin passed. */
		assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n),
		                 TETHER_TLS_WANT_READ);
		assert_int_equal(ossl_tls_get_session(pr.c.t, &sess,
		                                      &sess_len),
		                 TETHER_ERR_NOT_FOUND);
	}
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.c.t, &pr.c.err), 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n),
	                 TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_get_session(pr.c.t, &sess, &sess_len), 0);
	assert_non_null(sess);
	assert_true(sess_len > 0);
	pair_free(&pr);

	/* Second: resumed; peer certificates still known. */
	pr.c.verify_calls = pr.s.verify_calls = 0;
	pair_start(&pr, 1, 1, NULL, sess, sess_len, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ossl_tls_info(pr.s.t, &si), 0);
	assert_int_equal(ci.resumed, 1);
	assert_int_equal(si.resumed, 1);
	expect_peer_cert(&pr.c, rsa1);
	expect_peer_cert(&pr.s, rsa2);
	/* The pin was checked on the stored certificates. */
	assert_int_equal(pr.c.verify_calls, 1);
	assert_int_equal(pr.s.verify_calls, 1);
	assert_int_equal(ossl_tls_write(pr.c.t, "hi", 2, &pr.c.err), 0);
	assert_int_equal(drain(&pr.s, buf, sizeof(buf), &n),
	                 TETHER_TLS_WANT_READ);
	assert_int_equal(n, 2);
	pair_free(&pr);

	/* Third: the server no longer pins the client: the ticket is
	 * ignored, the full handshake refuses the certificate. */
	pr.s.refuse = 1;
	pair_start(&pr, 1, 1, NULL, sess, sess_len, NULL);
	pump(&pr);
	assert_true(pr.s.rc < 0);
	assert_int_equal(pr.s.err.category, TETHER_CAT_UNTRUSTED);
	pair_free(&pr);
	pr.s.refuse = 0;

	/* Fourth: the client no longer pins the server: session dropped,
	 * full handshake refused by the client. */
	pr.c.refuse = 1;
	pair_start(&pr, 1, 1, NULL, sess, sess_len, NULL);
	pump(&pr);
	assert_true(pr.c.rc < 0);
	assert_int_equal(pr.c.err.category, TETHER_CAT_UNTRUSTED);
	pair_free(&pr);
	pr.c.refuse = 0;

	/* Fifth: resumption without any verify callback: the core checks
	 * tls_peer_cert, which must still give the certificates. */
	pair_start(&pr, 0, 0, NULL, sess, sess_len, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ci.resumed, 1);
	expect_peer_cert(&pr.c, rsa1);
	expect_peer_cert(&pr.s, rsa2);
	pair_free(&pr);

	free(sess);
	ossl_tls_ctx_free(cctx);
	ossl_tls_ctx_free(sctx);
}

static void test_resumption_tls13(void **state)
{
	(void)state;
	resumption(0);
}

static void test_resumption_tls12(void **state)
{
	(void)state;
	resumption(TETHER_TLS_POLICY_TLS12_ONLY);
}

static void test_tls12_no_ticket_without_pin(void **state)
{
	struct pair pr;
	unsigned char *sess = NULL;
	size_t sess_len = 0;

	(void)state;
	/* TLS 1.2 with no pin check in the handshake: no ticket, and no
	 * session ID either (no server cache): nothing to resume. */
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT,
	                        TETHER_TLS_POLICY_TLS12_ONLY |
	                        TETHER_TLS_POLICY_RESUMPTION, rsa2),
	          make_ctx(TETHER_TLS_SERVER,
	                   TETHER_TLS_POLICY_TLS12_ONLY |
	                   TETHER_TLS_POLICY_RESUMPTION, rsa1));
	pair_start(&pr, 0, 0, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_get_session(pr.c.t, &sess, &sess_len),
	                 TETHER_ERR_NOT_FOUND);
	pair_done(&pr);
}

/* A client context without RESUMPTION, facing a server that issues
 * tickets: it keeps no session, and one offered to it (made by a client
 * with resumption) is not used: a full handshake, where it signs. */
static void client_no_resumption(unsigned policy)
{
	struct pair pr;
	unsigned char buf[64], *sess = NULL, *none = NULL;
	size_t n, sess_len = 0, none_len = 0;
	tether_tls_info ci, si;
	tether_tls_ctx *on, *off, *sctx;

	on = make_ctx(TETHER_TLS_CLIENT, policy | TETHER_TLS_POLICY_RESUMPTION, rsa2);
	off = make_ctx(TETHER_TLS_CLIENT, policy, rsa2);
	sctx = make_ctx(TETHER_TLS_SERVER, policy | TETHER_TLS_POLICY_RESUMPTION, rsa1);

	/* The server issues a ticket to the client without resumption. */
	pair_init(&pr, off, sctx);
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.c.t, &pr.c.err), 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_get_session(pr.c.t, &none, &none_len),
	                 TETHER_ERR_NOT_FOUND);
	assert_null(none);
	pair_free(&pr);

	/* A session the client with resumption got... */
	pr.c.ctx = on;
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.c.t, &pr.c.err), 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_get_session(pr.c.t, &sess, &sess_len), 0);
	assert_non_null(sess);
	pair_free(&pr);

	/* ...is resumable by it (the server would accept it)... */
	pair_start(&pr, 1, 1, NULL, sess, sess_len, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ci.resumed, 1);
	pair_free(&pr);

	/* ...but not offered by the client without resumption: full
	 * handshake, the certificates verified in it. */
	pr.c.ctx = off;
	pr.c.verify_calls = pr.s.verify_calls = 0;
	pair_start(&pr, 1, 1, NULL, sess, sess_len, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ossl_tls_info(pr.s.t, &si), 0);
	assert_int_equal(ci.resumed, 0);
	assert_int_equal(si.resumed, 0);
	assert_int_equal(pr.c.verify_calls, 1);
	assert_int_equal(pr.s.verify_calls, 1);
	pair_free(&pr);

	free(sess);
	ossl_tls_ctx_free(on);
	ossl_tls_ctx_free(off);
	ossl_tls_ctx_free(sctx);
}

static void test_client_no_resumption_tls13(void **state)
{
	(void)state;
	client_no_resumption(0);
}

static void test_client_no_resumption_tls12(void **state)
{
	(void)state;
	client_no_resumption(TETHER_TLS_POLICY_TLS12_ONLY);
}

static void test_protocol_version(void **state)
{
	struct pair pr;

	(void)state;
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT,
	                        TETHER_TLS_POLICY_TLS13_ONLY, rsa2),
	          make_ctx(TETHER_TLS_SERVER, TETHER_TLS_POLICY_TLS12_ONLY,
	                   rsa1));
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.s.rc < 0);
	assert_true(pr.c.rc < 0);
	assert_int_equal(pr.s.err.category, TETHER_CAT_PROTOCOL_VERSION);
	assert_int_equal(pr.c.err.category, TETHER_CAT_PROTOCOL_VERSION);
	pair_done(&pr);
}

static void server_gets(const void *bytes, size_t len, int cat1, int cat2)
{
	struct pair pr;

	pair_init(&pr, NULL, make_ctx(TETHER_TLS_SERVER, 0, rsa1));
	start(&pr.s, 1, NULL, NULL, 0, NULL);
	q_push(&pr.s.in, bytes, len);
	step(&pr.s);
	assert_true(pr.s.rc < 0);
	if (pr.s.err.category != cat1 && pr.s.err.category != cat2)
		fail_msg("category %d: %s", pr.s.err.category,
		         pr.s.err.detail);
	ossl_tls_ctx_free(pr.s.ctx);
	pair_free(&pr);
}

static void test_garbage(void **state)
{
	static const unsigned char junk[] = {
		0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
		0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
	};
	static const unsigned char big_record[] = {
		0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00,
	};

	(void)state;
	server_gets(junk, sizeof(junk), TETHER_CAT_NOT_TLS,
	            TETHER_CAT_HANDSHAKE);
	server_gets(big_record, sizeof(big_record), TETHER_CAT_NOT_TLS,
	            TETHER_CAT_HANDSHAKE);
	server_gets("SSH-2.0-OpenSSH_9.2\r\n", 21, TETHER_CAT_NOT_TLS,
	            TETHER_CAT_HANDSHAKE);
}

static void test_http(void **state)
{
	(void)state;
	server_gets("GET / HTTP/1.1\r\n", 16, TETHER_CAT_NOT_TLS,
	            TETHER_CAT_NOT_TLS);
}

static void test_unexpected_eof(void **state)
{
	struct pair pr;

	(void)state;
	/* The server vanishes after the ClientHello. */
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, 0, rsa2),
	          make_ctx(TETHER_TLS_SERVER, 0, rsa1));
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	step(&pr.c);
	pr.c.in.eof = 1;
	step(&pr.c);
	assert_true(pr.c.rc < 0);
	assert_int_equal(pr.c.err.category, TETHER_CAT_CONNECTION_RESET);
	pair_done(&pr);
}

static void test_reject_after_handshake(void **state)
{
	struct pair pr;
	unsigned char buf[16];
	size_t n;

	(void)state;
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, 0, rsa2),
	          make_ctx(TETHER_TLS_SERVER, 0, rsa1));
	pair_start(&pr, 0, 0, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_reject(pr.s.t), 0);
	assert_int_equal(ossl_tls_write(pr.s.t, "x", 1, &pr.s.err),
	                 TETHER_ERR_UNTRUSTED);
	assert_int_equal(pr.s.err.category, TETHER_CAT_UNTRUSTED);
	/* The client is not left waiting. */
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n),
	                 TETHER_TLS_CLOSED);
	pair_done(&pr);
}

static void test_bad_params(void **state)
{
	tether_tls_ctx_params p;
	tether_tls_ctx *c = NULL;
	tether_error err;

	(void)state;
	memset(&p, 0, sizeof(p));
	p.role = TETHER_TLS_SERVER;
	p.identity = rsa1;
	p.policy = TETHER_TLS_POLICY_TLS12_ONLY | TETHER_TLS_POLICY_TLS13_ONLY;
	assert_int_equal(ossl_tls_ctx_new(NULL, &p, &c, &err),
	                 TETHER_ERR_INVALID);
	assert_null(c);
	p.policy = TETHER_TLS_POLICY_RESUMPTION;
	p.ticket_key = ticket_key;
	p.ticket_key_len = 32;
	assert_int_equal(ossl_tls_ctx_new(NULL, &p, &c, &err),
	                 TETHER_ERR_INVALID);
	assert_null(c);
	p.role = 7;
	p.ticket_key = NULL;
	assert_int_equal(ossl_tls_ctx_new(NULL, &p, &c, &err),
	                 TETHER_ERR_INVALID);
}

/* ------------------------------------------------------------------ */
/* Replaceable keys (ossl_keybox): the pkcs11 provider's recovery      */
/* ------------------------------------------------------------------ */

static void test_keybox_basic(void **state)
{
	EVP_PKEY *k1 = rsa1->key, *k2 = EVP_PKEY_dup(rsa1->key), *got;
	ossl_keybox *b;
	unsigned gen = 99;

	(void)state;
	assert_non_null(k2);
	b = ossl_keybox_new(k1);
	assert_non_null(b);
	assert_int_equal(ossl_keybox_refs(b), 1);
	got = ossl_keybox_get1(b, &gen);
	assert_ptr_equal(got, k1);
	assert_int_equal(gen, 0);
	EVP_PKEY_free(got);
	assert_int_equal(ossl_keybox_set(b, k2), 1);
	EVP_PKEY_free(k2);              /* the box holds its own reference */
	got = ossl_keybox_get1(b, &gen);
	assert_ptr_equal(got, k2);
	assert_int_equal(gen, 1);
	assert_int_equal(ossl_keybox_gen(b), 1);
	assert_ptr_equal(ossl_keybox_ref(b), b);
	assert_int_equal(ossl_keybox_refs(b), 2);
	ossl_keybox_unref(b);
	ossl_keybox_unref(b);
	/* the key taken before the box went away is still ours */
	assert_int_equal(EVP_PKEY_get_bits(got), 2048);
	EVP_PKEY_free(got);
	assert_null(ossl_keybox_new(NULL));
}

struct box_reader {
	ossl_keybox *b;
	unsigned last_gen;
	int bad;
};

static void *box_reader_run(void *arg)
{
	struct box_reader *r = arg;
	unsigned gen;
	int i;

	for (i = 0; i < 20000; i++) {
		EVP_PKEY *k = ossl_keybox_get1(r->b, &gen);

		/* the key stays usable while held, whatever the writer does */
		if (k == NULL || EVP_PKEY_get_bits(k) != 2048 || gen < r->last_gen)
			r->bad++;
		r->last_gen = gen;
		EVP_PKEY_free(k);
	}
	return NULL;
}

/* Readers on several threads while the key is replaced: every reader
 * gets a live key and generations never go back (run it under ASan to
 * catch a key freed while held). */
static void test_keybox_threads(void **state)
{
	struct box_reader r[4];
	pthread_t th[4];
	ossl_keybox *b = ossl_keybox_new(rsa1->key);
	int i;

	(void)state;
	assert_non_null(b);
	for (i = 0; i < 4; i++) {
		r[i].b = b;
		r[i].last_gen = 0;
		r[i].bad = 0;
		assert_int_equal(pthread_create(&th[i], NULL, box_reader_run, &r[i]), 0);
	}
	for (i = 0; i < 2000; i++) {
		EVP_PKEY *k = EVP_PKEY_dup(i % 2 ? rsa1->key : rsa2->key);

		assert_non_null(k);
		assert_int_equal(ossl_keybox_set(b, k), 1);
		EVP_PKEY_free(k);
	}
	for (i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(r[i].bad, 0);
	}
	assert_int_equal(ossl_keybox_gen(b), 2000);
	ossl_keybox_unref(b);
}

/* A server identity whose key lives in a box: a session made before the
 * key was replaced sees it stale and, before its handshake starts,
 * presents the current one; after the start it keeps its key. */
static void test_refresh_key(void **state)
{
	tether_identity *sid = make_identity(EVP_PKEY_dup(rsa1->key), "boxed");
	EVP_PKEY *same = EVP_PKEY_dup(sid->key);
	tether_tls_ctx *sctx;
	struct pair pr;
	tether_error err;

	(void)state;
	sid->box = ossl_keybox_new(sid->key);
	assert_non_null(sid->box);
	sctx = make_ctx(TETHER_TLS_SERVER, 0, sid);
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, 0, rsa2), sctx);

	/* nothing replaced: not stale, refresh is a no-op */
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	assert_int_equal(ossl_tls_key_stale(pr.s.t), 0);
	assert_int_equal(ossl_tls_before_start(pr.s.t), 1);
	assert_int_equal(ossl_tls_refresh_key(pr.s.t, &err), 0);

	/* replaced by a key that does not match the certificate: the
	 * refresh really tries to present it, and libssl refuses */
	assert_int_equal(ossl_keybox_set(sid->box, ec1->key), 1);
	assert_int_equal(ossl_tls_key_stale(pr.s.t), 1);
	memset(&err, 0, sizeof(err));
	assert_true(ossl_tls_refresh_key(pr.s.t, &err) < 0);
	assert_non_null(strstr(err.detail, "reloaded key"));
	pair_free(&pr);

	/* replaced by the right key (a new object): presented, and the
	 * handshake works with it */
	assert_int_equal(ossl_keybox_set(sid->box, same), 1);
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	assert_int_equal(ossl_tls_key_stale(pr.s.t), 1);
	assert_int_equal(ossl_tls_refresh_key(pr.s.t, &err), 0);
	assert_int_equal(ossl_tls_key_stale(pr.s.t), 0);
	pump(&pr);
	if (!pr.c.done || !pr.s.done)
		fail_msg("handshake: client %d (%s) server %d (%s)", pr.c.rc,
		         pr.c.err.detail, pr.s.rc, pr.s.err.detail);
	expect_peer_cert(&pr.c, sid);
	assert_int_equal(ossl_tls_before_start(pr.s.t), 0);
	/* once started, a replacement is seen but not applied */
	assert_int_equal(ossl_keybox_set(sid->box, ec1->key), 1);
	assert_int_equal(ossl_tls_key_stale(pr.s.t), 1);
	assert_int_equal(ossl_tls_refresh_key(pr.s.t, &err), 0);
	pair_free(&pr);

	/* a session of a context made now takes the current key */
	assert_int_equal(ossl_keybox_set(sid->box, same), 1);
	EVP_PKEY_free(same);
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	assert_int_equal(ossl_tls_key_stale(pr.s.t), 1);
	assert_int_equal(ossl_tls_refresh_key(pr.s.t, &err), 0);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	pair_done(&pr);
	/* the context and sessions hold their own references to the box */
	assert_int_equal(ossl_keybox_refs(sid->box), 1);
	ossl_keybox_unref(sid->box);
	free_identity(sid);
}

/* Session tickets over a connection's life: the lifetime the context is
 * given, a fresh ticket on a long-lived connection once the last is half
 * its lifetime old (the client counts what it receives), and keys changed
 * in place: the previous key still decrypts (and its ticket is replaced
 * at once), an older one does not. */
static unsigned char *take_session(struct pair *pr, size_t *len)
{
	unsigned char *sess = NULL;

	assert_int_equal(ossl_tls_get_session(pr->c.t, &sess, len), 0);
	assert_non_null(sess);
	return sess;
}

static long session_lifetime_hint(const unsigned char *blob, size_t len)
{
	const unsigned char *p = blob;
	SSL_SESSION *s = d2i_SSL_SESSION(NULL, &p, (long)len);
	long l;

	assert_non_null(s);
	l = (long)SSL_SESSION_get_ticket_lifetime_hint(s);
	SSL_SESSION_free(s);
	return l;
}

static void test_ticket_refresh_and_keys(void **state)
{
	struct pair pr;
	unsigned char buf[64], keys[160], *s1, *s2, *s3;
	size_t n, l1, l2, l3;
	tether_tls_info ci;
	tether_tls_ctx *cctx, *sctx;
	tether_error err;
	int r;

	(void)state;
	cctx = make_ctx(TETHER_TLS_CLIENT, TETHER_TLS_POLICY_RESUMPTION, rsa2);
	sctx = make_ctx(TETHER_TLS_SERVER, TETHER_TLS_POLICY_RESUMPTION, rsa1);
	memset(&err, 0, sizeof(err));
	/* a client context has no ticket keys */
	assert_int_equal(ossl_tls_ctx_set_tickets(cctx, ticket_key, 80, 4, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(ossl_tls_ctx_set_tickets(sctx, ticket_key, 81, 4, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(ossl_tls_ctx_set_tickets(sctx, ticket_key, 80, 604801, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(ossl_tls_ctx_set_tickets(sctx, ticket_key, 80, 4, &err), 0);

	pair_init(&pr, cctx, sctx);
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	/* before tls_pinned: nothing to refresh */
	assert_int_equal(ossl_tls_refresh_ticket(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.c.t, &pr.c.err), 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_sessions_received(pr.c.t), 1);
	s1 = take_session(&pr, &l1);
	assert_int_equal(session_lifetime_hint(s1, l1), 4);
	/* a young ticket: nothing sent, ask again in at most 2 s */
	r = ossl_tls_refresh_ticket(pr.s.t, &pr.s.err);
	assert_true(r >= 1 && r <= 2);
	assert_int_equal(q_pending(&pr.c.in), 0);
	sleep(3);
	/* half its lifetime old: a fresh one, which the client counts */
	assert_int_equal(ossl_tls_refresh_ticket(pr.s.t, &pr.s.err), 2);
	assert_true(q_pending(&pr.c.in) > 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_sessions_received(pr.c.t), 2);
	/* the connection still carries data both ways */
	assert_int_equal(ossl_tls_write(pr.c.t, "hi", 2, &pr.c.err), 0);
	assert_int_equal(drain(&pr.s, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(n, 2);
	pair_free(&pr);

	/* a new key, the old one kept as previous: s1 still resumes, and the
	 * server replaces its ticket at once with the new key's */
	memset(keys, 0x77, 80);
	memcpy(keys + 80, ticket_key, 80);
	assert_int_equal(ossl_tls_ctx_set_tickets(sctx, keys, 160, 4, &err), 0);
	pair_start(&pr, 1, 1, NULL, s1, l1, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ci.resumed, 1);
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.c.t, &pr.c.err), 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_sessions_received(pr.c.t), 1);
	s2 = take_session(&pr, &l2);
	pair_free(&pr);

	/* one more renewal: the first key is gone, s1 makes a full
	 * handshake; s2 (made with the second key) still resumes */
	memset(keys, 0x55, 80);
	memset(keys + 80, 0x77, 80);
	assert_int_equal(ossl_tls_ctx_set_tickets(sctx, keys, 160, 4, &err), 0);
	pair_start(&pr, 1, 1, NULL, s1, l1, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ci.resumed, 0);
	pair_free(&pr);
	pair_start(&pr, 1, 1, NULL, s2, l2, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ci.resumed, 1);
	/* s2 is young but made with what is now the previous key: replaced
	 * with one of the current key */
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.c.t, &pr.c.err), 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_sessions_received(pr.c.t), 1);
	s3 = take_session(&pr, &l3);
	pair_free(&pr);
	/* resumed with the current key's young ticket: it keeps it */
	pair_start(&pr, 1, 1, NULL, s3, l3, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_info(pr.c.t, &ci), 0);
	assert_int_equal(ci.resumed, 1);
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_pinned(pr.c.t, &pr.c.err), 0);
	assert_int_equal(drain(&pr.c, buf, sizeof(buf), &n), TETHER_TLS_WANT_READ);
	assert_int_equal(ossl_tls_sessions_received(pr.c.t), 0);
	r = ossl_tls_refresh_ticket(pr.s.t, &pr.s.err);
	assert_true(r >= 1 && r <= 2);
	pair_free(&pr);

	free(s1);
	free(s2);
	free(s3);
	ossl_tls_ctx_free(cctx);
	ossl_tls_ctx_free(sctx);
}

/* TLS 1.2: nothing is re-issued mid-connection. */
static void test_ticket_refresh_tls12(void **state)
{
	struct pair pr;
	tether_error err;
	unsigned pol = TETHER_TLS_POLICY_RESUMPTION | TETHER_TLS_POLICY_TLS12_ONLY;

	(void)state;
	pair_init(&pr, make_ctx(TETHER_TLS_CLIENT, pol, rsa2), make_ctx(TETHER_TLS_SERVER, pol, rsa1));
	memset(&err, 0, sizeof(err));
	assert_int_equal(ossl_tls_ctx_set_tickets(pr.s.ctx, ticket_key, 80, 4, &err), 0);
	pair_start(&pr, 1, 1, NULL, NULL, 0, NULL);
	pump(&pr);
	assert_true(pr.c.done && pr.s.done);
	assert_int_equal(ossl_tls_pinned(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_refresh_ticket(pr.s.t, &pr.s.err), 0);
	assert_int_equal(ossl_tls_sessions_received(pr.c.t), 1);
	pair_done(&pr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tls13_rsa),
		cmocka_unit_test(test_tls12_rsa),
		cmocka_unit_test(test_tls13_ec),
		cmocka_unit_test(test_tls12_ec),
		cmocka_unit_test(test_tls13_mixed),
		cmocka_unit_test(test_fips_policy),
		cmocka_unit_test(test_server_refuses_client),
		cmocka_unit_test(test_client_refuses_server),
		cmocka_unit_test(test_no_client_cert),
		cmocka_unit_test(test_sni_choose_identity),
		cmocka_unit_test(test_resumption_tls13),
		cmocka_unit_test(test_resumption_tls12),
		cmocka_unit_test(test_tls12_no_ticket_without_pin),
		cmocka_unit_test(test_client_no_resumption_tls13),
		cmocka_unit_test(test_client_no_resumption_tls12),
		cmocka_unit_test(test_protocol_version),
		cmocka_unit_test(test_garbage),
		cmocka_unit_test(test_http),
		cmocka_unit_test(test_unexpected_eof),
		cmocka_unit_test(test_reject_after_handshake),
		cmocka_unit_test(test_bad_params),
		cmocka_unit_test(test_keybox_basic),
		cmocka_unit_test(test_keybox_threads),
		cmocka_unit_test(test_refresh_key),
		cmocka_unit_test(test_ticket_refresh_and_keys),
		cmocka_unit_test(test_ticket_refresh_tls12),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
