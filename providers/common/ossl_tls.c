/*
 * ossl_tls.c: a TLS session over memory buffers, on OpenSSL 3 libssl,
 * shared by the openssl and pkcs11 providers.
 *
 * The core owns the socket.  libssl reads and writes ciphertext through a
 * small BIO_METHOD of our own whose read and write call the core's io
 * callbacks directly (no BIO pair, so no 17 KB buffers per connection).
 *
 * io.read returns > 0 bytes copied, 0 "nothing buffered now" (libssl sees
 * a retry), or < 0: the connection is gone (EOF or error), which libssl
 * sees as end of file, so a peer vanishing without close_notify is
 * reported as connection_reset (SSL_R_UNEXPECTED_EOF_WHILE_READING).
 * io.write must take everything; < 0 (or 0) is a fatal error.
 *
 * Trust: no chain validation at all.  The verify callback accepts every
 * X.509 error (expiry, self-signed, purpose...) except a key too small for
 * the security level, and runs the core's pin check (params->verify) on the
 * leaf inside the handshake.  A refusal fails the handshake with a
 * certificate_unknown alert.  OpenSSL does not call the verify callback on
 * resumption, so the pin check also runs
 *   - server: on the peer certificate stored in a decrypted ticket (a
 *     refused ticket is ignored: full handshake, where the verify callback
 *     refuses the presented certificate with the alert), and
 *   - client: on the server certificate stored in params->session before it
 *     is offered (a refused session is dropped: full handshake).
 * The core re-checks tls_peer_cert after every handshake anyway.
 *
 * Session tickets (RESUMPTION + ticket_key, HMAC-SHA256 + AES-256-CBC with
 * the core's key) are only issued to a pinned peer:
 *   - TLS 1.3: num_tickets is 0; tls_pinned() issues one ticket, except
 *     to a client that resumed with a ticket younger than half its
 *     lifetime and made with the current key: it keeps that one.
 *     tls_refresh_ticket() sends a fresh one on a long-lived connection
 *     once the client's is half its lifetime old.
 *   - TLS 1.2: the ticket is part of the handshake (server's last flight,
 *     after the client's Certificate was verified), so one is issued only
 *     when the pin check ran in that handshake (the verify callback, or the
 *     ticket check above) and passed; otherwise an empty ticket is sent
 *     (RFC 5077 allows it) and the session is not resumable.  A ticket
 *     made with the previous key is renewed (a new one with the current
 *     key).  Nothing is re-issued mid-connection (no renegotiation): a
 *     TLS 1.2 client's ticket expires a lifetime after its handshake.
 * Keys (tls_ctx_set_tickets): the first encrypts, every one decrypts; they
 * change in place under tkey_lock, so a running session issues its next
 * ticket with the current key, whatever key its context was made with.
 * The server keeps no session cache (no session-ID resumption).
 * A client with RESUMPTION counts the sessions it receives (a client
 * "cache" that stores nothing): tls_sessions_received.
 * A client context without RESUMPTION keeps and offers no session at all
 * (tls_get_session finds none, params->session is ignored), whatever the
 * server issues: so with resumption off every handshake signs with the
 * identity's key, in both roles.
 *
 * Lifetime: free every session (ossl_tls_free) before its context.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "ossl_common.h"

#define TICKET_KEY_LEN  80
#define TICKET_NAME_OFF 0
#define TICKET_HMAC_OFF 16
#define TICKET_AES_OFF  48
#define TICKET_NAME_LEN 16
#define TICKET_HMAC_LEN 32
#define TICKET_AES_LEN  32

/* The verify result set when the pin check refuses the peer.  Deliberately
 * not an X509_V_ERR_* value: libssl turns unknown verify results into a
 * certificate_unknown alert, while X509_V_ERR_CERT_REJECTED would give
 * bad_certificate. */
#define OSSL_TLS_V_ERR_NOT_PINNED 0x7e7e

#define CIPHERS_TLS12 \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define CIPHERS_TLS12_FIPS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
#define SUITES_TLS13 \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:" \
	"TLS_CHACHA20_POLY1305_SHA256"
#define SUITES_TLS13_FIPS "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
#define GROUPS      "x25519:secp256r1:secp384r1"
#define GROUPS_FIPS "secp256r1:secp384r1"
/* OpenSSL security level 2: 112 bits (RSA >= 2048, ECC >= 224). */
#define OSSL_TLS_FIPS_SECLEVEL 2
#define SIGALGS \
	"rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256:" \
	"rsa_pkcs1_sha384:ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384"

#define SIGALGS_NO_PSS \
	"rsa_pkcs1_sha256:rsa_pkcs1_sha384:ecdsa_secp256r1_sha256:" \
	"ecdsa_secp384r1_sha384"

#define MAX_ERRS 8

struct tether_tls_ctx {
	SSL_CTX *ctx;
	BIO_METHOD *biometh;
	EVP_CIPHER *ticket_cipher;      /* AES-256-CBC, server with tickets */
	const tether_host *host;
	int role;
	unsigned policy;
	tether_tls_choose_identity_fn choose_identity;
	void *choose_arg;
	/* [0] encrypts, each decrypts; under tkey_lock (they change while
	 * sessions run).  nticket_keys is 0 (no tickets) or stays >= 1. */
	CRYPTO_RWLOCK *tkey_lock;
	int nticket_keys;
	unsigned char ticket_keys[2][TICKET_KEY_LEN];
	uint32_t ticket_lifetime;       /* seconds; 0: OpenSSL's default */
	long default_timeout;           /* OpenSSL's default, for lifetime 0 */
	/* the default identity's replaceable key (NULL: fixed), its
	 * certificate, and the generation put into ctx */
	ossl_keybox *box;
	X509 *box_cert;
	unsigned box_gen;
	void *owner;                    /* ossl_tls_ctx_set_owner */
	ossl_tls_classify_fn classify;
};

struct tether_tls {
	tether_tls_ctx *c;
	SSL *ssl;
	tether_tls_io io;
	tether_tls_verify_fn verify;
	void *verify_arg;

	int io_eof;             /* io.read reported the connection gone */
	int io_werr;            /* io.write failed */
	int rx_tls;             /* received a handshake message or an alert */
	int alert_sent;         /* last alert description, -1: none */
	int alert_recv;

	int verify_ran;         /* the pin check ran in this handshake */
	int verify_passed;      /* ... and accepted the peer */
	int pin_refused;        /* ... and refused it */
	int pinned;             /* the core called tls_pinned */
	int ticket_prev_key;    /* server: resumed with the previous key's ticket */
	time_t ticket_time;     /* server: when the client's newest ticket was made, 0: it has none */
	unsigned sessions_received;     /* client: new_session_cb calls */

	int failed;             /* sticky failure: code, category, detail */
	int fail_code;
	int fail_cat;
	char fail_detail[TETHER_ERROR_DETAIL_MAX];

	X509 *peer_x509;        /* the certificate peer_der was made from */
	unsigned char *peer_der;
	size_t peer_der_len;

	char server_name[256];

	/* the replaceable key this session presents (NULL: fixed), its
	 * certificate and the generation it took */
	ossl_keybox *box;
	X509 *box_cert;
	unsigned key_gen;
	unsigned long backend_code;     /* the ctx's classify hook, first nonzero */
	int started;                    /* a handshake step ran */
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static void tls_debug(const tether_tls_ctx *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void tls_debug(const tether_tls_ctx *c, const char *fmt, ...)
{
	va_list ap;

	if (c == NULL || c->host == NULL || c->host->log == NULL)
		return;
	va_start(ap, fmt);
	c->host->log(c->host->host_arg, TETHER_LOG_DEBUG, "tls", fmt, ap);
	va_end(ap);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
	if (src == NULL)
		src = "";
	snprintf(dst, cap, "%s", src);
}

/* Run the core's pin check on a certificate.  Returns 0 to go on, < 0 if
 * refused (or not encodable).  Records the outcome for ticket issuance. */
static int run_pin_check(tether_tls *t, X509 *cert)
{
	unsigned char *der = NULL;
	int n, r;

	if (t->verify == NULL)
		return 0;
	t->verify_ran = 1;
	n = cert != NULL ? i2d_X509(cert, &der) : 0;
	if (n < 0) {
		r = -1;
	} else {
		r = t->verify(t->verify_arg, der, (size_t)n);
	}
	OPENSSL_free(der);
	if (r < 0) {
		t->verify_passed = 0;
		t->pin_refused = 1;
		return -1;
	}
	t->verify_passed = 1;
	return 0;
}

/* ------------------------------------------------------------------ */
/* The BIO: ciphertext to and from the core's io callbacks             */
/* ------------------------------------------------------------------ */

static int bio_write(BIO *b, const char *buf, int len)
{
	tether_tls *t = BIO_get_data(b);
	int r;

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	if (t == NULL || t->io_werr)
		return -1;
	r = t->io.write(t->io.io_arg, buf, (size_t)len);
	if (r <= 0 || r > len) {
		t->io_werr = 1;
		return -1;
	}
	return r;
}

static int bio_read(BIO *b, char *buf, int len)
{
	tether_tls *t = BIO_get_data(b);
	int r;

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	if (t == NULL || t->io_eof)
		return 0;
	r = t->io.read(t->io.io_arg, buf, (size_t)len);
	if (r == 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	if (r < 0 || r > len) {
		t->io_eof = 1;
		return 0;
	}
	return r;
}

static int bio_puts(BIO *b, const char *s)
{
	size_t n = strlen(s);

	return bio_write(b, s, n > INT_MAX ? INT_MAX : (int)n);
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	tether_tls *t = BIO_get_data(b);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_EOF:
		return t != NULL && t->io_eof;
	case BIO_CTRL_PENDING:
	case BIO_CTRL_WPENDING:
		return 0;
	default:
		return 0;
	}
}

static int bio_create(BIO *b)
{
	BIO_set_data(b, NULL);
	BIO_set_init(b, 1);
	return 1;
}

static int bio_destroy(BIO *b)
{
	BIO_set_data(b, NULL);
	BIO_set_init(b, 0);
	return 1;
}

static BIO_METHOD *bio_method_new(void)
{
	BIO_METHOD *m;
	int idx = BIO_get_new_index();

	if (idx == -1)
		return NULL;
	m = BIO_meth_new(idx | BIO_TYPE_SOURCE_SINK, "tether memory io");
	if (m == NULL)
		return NULL;
	if (!BIO_meth_set_write(m, bio_write) ||
	    !BIO_meth_set_read(m, bio_read) ||
	    !BIO_meth_set_puts(m, bio_puts) ||
	    !BIO_meth_set_ctrl(m, bio_ctrl) ||
	    !BIO_meth_set_create(m, bio_create) ||
	    !BIO_meth_set_destroy(m, bio_destroy)) {
		BIO_meth_free(m);
		return NULL;
	}
	return m;
}

/* ------------------------------------------------------------------ */
/* libssl callbacks                                                    */
/* ------------------------------------------------------------------ */

static int verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(x,
	                SSL_get_ex_data_X509_STORE_CTX_idx());
	tether_tls *t = ssl != NULL ? SSL_get_app_data(ssl) : NULL;

	if (t == NULL)
		return 0;
	if (!ok) {
		/* A key too weak to prove anything is the one X.509 error we
		 * keep: the pin only means something if the key is sound. */
		if (X509_STORE_CTX_get_error(x) == X509_V_ERR_EE_KEY_TOO_SMALL)
			return 0;
		/* No chain validation: the pin is the trust. */
		X509_STORE_CTX_set_error(x, X509_V_OK);
	}
	if (!t->verify_ran) {
		if (run_pin_check(t, X509_STORE_CTX_get0_cert(x)) < 0) {
			X509_STORE_CTX_set_error(x, OSSL_TLS_V_ERR_NOT_PINNED);
			return 0;
		}
	}
	return 1;
}

static void msg_cb(int write_p, int version, int content_type,
                   const void *buf, size_t len, SSL *ssl, void *arg)
{
	tether_tls *t = SSL_get_app_data(ssl);
	const unsigned char *p = buf;

	(void)version;
	(void)arg;
	if (t == NULL)
		return;
	if (content_type == SSL3_RT_ALERT && len >= 2) {
		if (write_p)
			t->alert_sent = p[1];
		else
			t->alert_recv = p[1];
	}
	if (!write_p && (content_type == SSL3_RT_HANDSHAKE ||
	                 content_type == SSL3_RT_ALERT))
		t->rx_tls = 1;
}

/* The session now presents cert with box's key of generation gen (box
 * NULL: a fixed key). */
static void session_take_box(tether_tls *t, ossl_keybox *box, X509 *cert,
                             unsigned gen)
{
	ossl_keybox_unref(t->box);
	X509_free(t->box_cert);
	t->box = NULL;
	t->box_cert = NULL;
	if (box == NULL || cert == NULL || !X509_up_ref(cert))
		return;
	t->box = ossl_keybox_ref(box);
	t->box_cert = cert;
	t->key_gen = gen;
}

/* Server: SNI is known, the certificate not chosen yet. */
static int servername_cb(SSL *ssl, int *al, void *arg)
{
	tether_tls *t = SSL_get_app_data(ssl);
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	tether_identity *id;
	EVP_PKEY *key;
	unsigned gen;

	(void)arg;
	if (t == NULL || name == NULL)
		return SSL_TLSEXT_ERR_OK;
	copy_str(t->server_name, sizeof(t->server_name), name);
	if (t->c->choose_identity == NULL)
		return SSL_TLSEXT_ERR_OK;
	id = t->c->choose_identity(t->c->choose_arg, name);
	if (id == NULL)
		return SSL_TLSEXT_ERR_OK;
	/* Present only that identity, even if its key type differs from the
	 * default's (libssl would otherwise pick among both). */
	SSL_certs_clear(ssl);
	key = ossl_identity_get1_key(id, &gen);
	if (id->cert == NULL || key == NULL ||
	    !SSL_use_cert_and_key(ssl, id->cert, key, NULL, 1)) {
		EVP_PKEY_free(key);
		*al = SSL_AD_INTERNAL_ERROR;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	EVP_PKEY_free(key);
	session_take_box(t, id->box, id->cert, gen);
	return SSL_TLSEXT_ERR_OK;
}

/* May a ticket be issued now?  Only to a peer that passed the pin. */
static int may_issue_ticket(const tether_tls *t)
{
	if (SSL_version(t->ssl) == TLS1_3_VERSION)
		return t->pinned;
	return t->pinned || t->verify_passed;
}

static int ticket_key_cb(SSL *ssl, unsigned char key_name[16],
                         unsigned char *iv, EVP_CIPHER_CTX *cctx,
                         EVP_MAC_CTX *hctx, int enc)
{
	tether_tls *t = SSL_get_app_data(ssl);
	tether_tls_ctx *c;
	unsigned char key[TICKET_KEY_LEN];
	char digest[] = "SHA256";
	OSSL_PARAM params[3];
	int ivlen, i, found = -1, r = -1;

	if (t == NULL)
		return -1;
	c = t->c;
	if (c->nticket_keys == 0 || c->ticket_cipher == NULL)
		return 0;
	/* 0: TLS 1.2 sends an empty ticket, TLS 1.3 sends none. */
	if (enc && !may_issue_ticket(t))
		return 0;
	if (!CRYPTO_THREAD_read_lock(c->tkey_lock))
		return -1;
	if (enc) {
		found = 0;
	} else {
		for (i = 0; i < c->nticket_keys && found < 0; i++)
			if (CRYPTO_memcmp(key_name, c->ticket_keys[i] + TICKET_NAME_OFF,
			                  TICKET_NAME_LEN) == 0)
				found = i;
	}
	if (found >= 0)
		memcpy(key, c->ticket_keys[found], TICKET_KEY_LEN);
	CRYPTO_THREAD_unlock(c->tkey_lock);
	/* Unknown key name (a key older than the previous one): full
	 * handshake. */
	if (found < 0)
		return 0;
	params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
	                key + TICKET_HMAC_OFF, TICKET_HMAC_LEN);
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
	                digest, 0);
	params[2] = OSSL_PARAM_construct_end();

	if (enc) {
		ivlen = EVP_CIPHER_get_iv_length(c->ticket_cipher);
		if (ivlen <= 0 || ivlen > EVP_MAX_IV_LENGTH ||
		    RAND_bytes(iv, ivlen) <= 0)
			goto out;
		memcpy(key_name, key + TICKET_NAME_OFF, TICKET_NAME_LEN);
		if (!EVP_EncryptInit_ex2(cctx, c->ticket_cipher,
		                         key + TICKET_AES_OFF, iv, NULL) ||
		    !EVP_MAC_CTX_set_params(hctx, params))
			goto out;
		r = 1;
		goto out;
	}
	if (!EVP_MAC_CTX_set_params(hctx, params) ||
	    !EVP_DecryptInit_ex2(cctx, c->ticket_cipher,
	                         key + TICKET_AES_OFF, iv, NULL))
		goto out;
	/* The previous key's ticket: use it, and have a new one made with
	 * the current key (2: TLS 1.2 renews it in the handshake; TLS 1.3:
	 * tls_pinned sees ticket_prev_key). */
	t->ticket_prev_key = found > 0;
	r = found > 0 ? 2 : 1;
out:
	OPENSSL_cleanse(key, sizeof(key));
	return r;
}

/* Server: a ticket was decrypted.  Pin-check the certificate it carries:
 * OpenSSL will not call the verify callback on this resumption. */
static SSL_TICKET_RETURN ticket_decrypted_cb(SSL *ssl, SSL_SESSION *sess,
                                             const unsigned char *keyname,
                                             size_t keyname_len,
                                             SSL_TICKET_STATUS status,
                                             void *arg)
{
	tether_tls *t = SSL_get_app_data(ssl);
	X509 *peer;

	(void)keyname;
	(void)keyname_len;
	(void)arg;
	if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW)
		return SSL_TICKET_RETURN_IGNORE_RENEW;  /* libssl's default */
	if (t == NULL)
		return SSL_TICKET_RETURN_IGNORE;
	peer = SSL_SESSION_get0_peer(sess);
	if (peer == NULL) {
		/* Never issued by us (tickets need a pinned certificate). */
		return SSL_TICKET_RETURN_IGNORE;
	}
	if (t->verify != NULL) {
		if (run_pin_check(t, peer) < 0) {
			/* Not a failure yet: the full handshake decides, with
			 * the certificate the client presents. */
			t->pin_refused = 0;
			t->verify_ran = 0;
			t->verify_passed = 0;
			tls_debug(t->c, "ticket of a no longer pinned peer "
			          "ignored: full handshake");
			return SSL_TICKET_RETURN_IGNORE;
		}
	}
	return status == SSL_TICKET_SUCCESS_RENEW ?
	       SSL_TICKET_RETURN_USE_RENEW : SSL_TICKET_RETURN_USE;
}

/* Client: a session (TLS 1.3: a ticket) arrived.  0: not kept here. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	tether_tls *t = SSL_get_app_data(ssl);

	(void)sess;
	if (t != NULL)
		t->sessions_received++;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Failure classification                                              */
/* ------------------------------------------------------------------ */

/* Category of an OpenSSL error-queue reason; 0 when it says nothing
 * specific.  Reasons >= SSL_AD_REASON_OFFSET are alerts received. */
static int reason_category(int lib, int reason, int rx_tls)
{
	if (lib != ERR_LIB_SSL)
		return 0;
	switch (reason) {
	case SSL_R_UNSUPPORTED_PROTOCOL:
	case SSL_R_NO_PROTOCOLS_AVAILABLE:
	case SSL_R_VERSION_TOO_LOW:
	case SSL_R_VERSION_TOO_HIGH:
	case SSL_R_WRONG_SSL_VERSION:
	case SSL_R_BAD_LEGACY_VERSION:
	case SSL_R_UNSUPPORTED_SSL_VERSION:
	case SSL_R_INAPPROPRIATE_FALLBACK:
	case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
	case SSL_R_TLSV1_ALERT_INAPPROPRIATE_FALLBACK:
		return TETHER_CAT_PROTOCOL_VERSION;

	case SSL_R_WRONG_VERSION_NUMBER:
		/* A record from a peer that already spoke TLS: a version
		 * mismatch.  On the first record: not TLS at all. */
		return rx_tls ? TETHER_CAT_PROTOCOL_VERSION : TETHER_CAT_NOT_TLS;

	case SSL_R_HTTP_REQUEST:
	case SSL_R_HTTPS_PROXY_REQUEST:
		return TETHER_CAT_NOT_TLS;

	case SSL_R_PACKET_LENGTH_TOO_LONG:
	case SSL_R_ENCRYPTED_LENGTH_TOO_LONG:
	case SSL_R_RECORD_LENGTH_MISMATCH:
	case SSL_R_RECORD_TOO_SMALL:
	case SSL_R_UNKNOWN_PROTOCOL:
	case SSL_R_UNEXPECTED_RECORD:
	case SSL_R_UNEXPECTED_MESSAGE:
	case SSL_R_BAD_RECORD_TYPE:
	case SSL_R_LENGTH_TOO_SHORT:
		return rx_tls ? 0 : TETHER_CAT_NOT_TLS;

	case SSL_R_NO_SHARED_CIPHER:
	case SSL_R_NO_CIPHERS_AVAILABLE:
	case SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY:
		return TETHER_CAT_NO_SHARED_CIPHER;

	case SSL_R_NO_SUITABLE_KEY_SHARE:
	case SSL_R_NO_SHARED_GROUPS:
	case SSL_R_NO_SUITABLE_GROUPS:
	case SSL_R_WRONG_CURVE:
	case SSL_R_MISSING_SUPPORTED_GROUPS_EXTENSION:
		return TETHER_CAT_NO_SHARED_GROUP;

	case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
	case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
	case SSL_R_NO_SUITABLE_DIGEST_ALGORITHM:
	case SSL_R_WRONG_SIGNATURE_TYPE:
	case SSL_R_LEGACY_SIGALG_DISALLOWED_OR_UNSUPPORTED:
	case SSL_R_MISSING_SIGALGS_EXTENSION:
		return TETHER_CAT_NO_SHARED_SIGALG;

	case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
		return TETHER_CAT_PEER_NO_CERTIFICATE;

	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
	case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
		return TETHER_CAT_UNTRUSTED;

	case SSL_R_UNEXPECTED_EOF_WHILE_READING:
		return TETHER_CAT_CONNECTION_RESET;

	default:
		return 0;
	}
}

/* Category of an alert received when the queue said nothing specific. */
static int alert_category(int desc)
{
	switch (desc) {
	case SSL_AD_PROTOCOL_VERSION:
	case SSL_AD_INAPPROPRIATE_FALLBACK:
		return TETHER_CAT_PROTOCOL_VERSION;
	case SSL_AD_INSUFFICIENT_SECURITY:
		return TETHER_CAT_NO_SHARED_CIPHER;
	case SSL_AD_BAD_CERTIFICATE:
	case SSL_AD_UNSUPPORTED_CERTIFICATE:
	case SSL_AD_CERTIFICATE_REVOKED:
	case SSL_AD_CERTIFICATE_EXPIRED:
	case SSL_AD_CERTIFICATE_UNKNOWN:
	case SSL_AD_UNKNOWN_CA:
	case SSL_AD_ACCESS_DENIED:
		return TETHER_CAT_UNTRUSTED;
	default:
		return 0;
	}
}

/* Alert description, including TLS 1.3 ones libssl 3.0 has no text for. */
static const char *alert_name(int desc)
{
	switch (desc) {
	case 109:
		return "missing extension";
	case 116:
		return "certificate required";
	case 120:
		return "no application protocol";
	default:
		return SSL_alert_desc_string_long(desc);
	}
}

static void append(char *buf, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void append(char *buf, size_t cap, const char *fmt, ...)
{
	size_t used = strlen(buf);
	va_list ap;

	if (used + 1 >= cap)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + used, cap - used, fmt, ap);
	va_end(ap);
}

/* Record the failure of an SSL_* call (drains the error queue), fill err,
 * return the code.  what: "TLS handshake failed", ... */
static int tls_fail(tether_tls *t, tether_error *err, int ssl_error,
                    const char *what)
{
	char detail[TETHER_ERROR_DETAIL_MAX];
	unsigned long e;
	const char *data;
	int flags, n = 0, cat = 0, code = TETHER_ERR_TLS;
	long vr;

	detail[0] = '\0';
	append(detail, sizeof(detail), "%s", what);

	while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
		const char *reason = ERR_reason_error_string(e);
		int c;

		if (n < MAX_ERRS) {
			append(detail, sizeof(detail), "%s", n ? "; " : ": ");
			if (reason != NULL) {
				append(detail, sizeof(detail), "%s", reason);
			} else {
				char tmp[128];

				ERR_error_string_n(e, tmp, sizeof(tmp));
				append(detail, sizeof(detail), "%s", tmp);
			}
			if ((flags & ERR_TXT_STRING) && data != NULL &&
			    *data != '\0')
				append(detail, sizeof(detail), " (%s)", data);
		}
		n++;
		if (t->backend_code == 0 && t->c->classify != NULL)
			t->backend_code = t->c->classify(t->c->owner, e);
		c = reason_category(ERR_GET_LIB(e), ERR_GET_REASON(e),
		                    t->rx_tls);
		if (cat == 0)
			cat = c;
	}

	if (t->pin_refused) {
		cat = TETHER_CAT_UNTRUSTED;
		code = TETHER_ERR_UNTRUSTED;
		append(detail, sizeof(detail),
		       "; the peer's certificate is not pinned");
	}
	if (cat == 0 && (t->io_werr || t->io_eof ||
	                 ssl_error == SSL_ERROR_SYSCALL))
		cat = TETHER_CAT_CONNECTION_RESET;
	if (cat == 0 && t->alert_recv >= 0)
		cat = alert_category(t->alert_recv);
	if (cat == 0) {
		cat = TETHER_CAT_HANDSHAKE;
		if (t->alert_recv == SSL_AD_HANDSHAKE_FAILURE)
			append(detail, sizeof(detail),
			       "; the peer gave no reason (handshake_failure "
			       "usually means no shared cipher, group or "
			       "signature algorithm)");
	}
	vr = SSL_get_verify_result(t->ssl);
	if (vr != X509_V_OK && vr != OSSL_TLS_V_ERR_NOT_PINNED)
		append(detail, sizeof(detail), "; peer certificate: %s",
		       X509_verify_cert_error_string(vr));
	if (vr == X509_V_ERR_EE_KEY_TOO_SMALL)
		append(detail, sizeof(detail), "; its key is too weak for this "
		       "side's OpenSSL security level %d%s: the peer needs a new "
		       "certificate (RSA 2048 bits or more, or EC P-256/P-384: "
		       "'new-certificate' there), then pin its thumbprint",
		       SSL_get_security_level(t->ssl),
		       (t->c->policy & TETHER_TLS_POLICY_FIPS) ?
		       " ([tls] policy = fips: no RSA keys under 2048 bits)" : "");
	if (t->alert_recv == 116)
		append(detail, sizeof(detail), "; the peer requires a client "
		       "certificate");
	if (t->alert_recv == SSL_AD_INTERNAL_ERROR && cat == TETHER_CAT_HANDSHAKE)
		append(detail, sizeof(detail), "; the peer failed on its side, "
		       "not over TLS parameters: its log says why (for example "
		       "its private key is on a PKCS#11 token that did not "
		       "answer)");
	if (t->io_werr)
		append(detail, sizeof(detail), "; writing to the connection "
		       "failed");
	else if (t->io_eof && n == 0)
		append(detail, sizeof(detail), "; the connection was closed "
		       "without close_notify");
	if (t->alert_sent >= 0)
		append(detail, sizeof(detail), "; alert sent: %s",
		       alert_name(t->alert_sent));
	if (t->alert_recv >= 0)
		append(detail, sizeof(detail), "; alert received: %s",
		       alert_name(t->alert_recv));

	t->failed = 1;
	t->fail_code = code;
	t->fail_cat = cat;
	memcpy(t->fail_detail, detail, sizeof(t->fail_detail));
	return ossl_err_set(err, code, cat, "%s", detail);
}

/* A later call on a failed session repeats the failure. */
static int tls_failed_again(tether_tls *t, tether_error *err)
{
	ERR_clear_error();
	return ossl_err_set(err, t->fail_code, t->fail_cat, "%s",
	                    t->fail_detail);
}

/* ------------------------------------------------------------------ */
/* Context                                                             */
/* ------------------------------------------------------------------ */

void ossl_tls_ctx_free(tether_tls_ctx *c)
{
	if (c == NULL)
		return;
	SSL_CTX_free(c->ctx);
	BIO_meth_free(c->biometh);
	EVP_CIPHER_free(c->ticket_cipher);
	ossl_keybox_unref(c->box);
	X509_free(c->box_cert);
	CRYPTO_THREAD_lock_free(c->tkey_lock);
	OPENSSL_cleanse(c->ticket_keys, sizeof(c->ticket_keys));
	free(c);
}

int ossl_tls_ctx_new(const tether_host *host,
                     const tether_tls_ctx_params *params,
                     tether_tls_ctx **out, tether_error *err)
{
	tether_tls_ctx *c = NULL;
	tether_identity *id;
	SSL_CTX *ctx;
	int fips, server, resumption, mode, r;
	uint64_t opts;

	ERR_clear_error();
	if (params == NULL || out == NULL ||
	    (params->role != TETHER_TLS_CLIENT &&
	     params->role != TETHER_TLS_SERVER) ||
	    ((params->policy & TETHER_TLS_POLICY_TLS13_ONLY) &&
	     (params->policy & TETHER_TLS_POLICY_TLS12_ONLY)) ||
	    (params->ticket_key != NULL &&
	     params->ticket_key_len != TICKET_KEY_LEN)) {
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL,
		                    "invalid TLS context parameters");
	}
	id = params->identity;
	if (id != NULL && (id->cert == NULL || id->key == NULL))
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL,
		                    "TLS identity without certificate or key");

	if ((params->policy & TETHER_TLS_POLICY_FIPS_MODULE) &&
	    !(OSSL_PROVIDER_available(id != NULL ? id->libctx : NULL, "fips") &&
	      EVP_default_properties_is_fips_enabled(id != NULL ? id->libctx : NULL)))
		return ossl_err_set(err, TETHER_ERR_UNSUPPORTED,
		                    TETHER_CAT_UNSUPPORTED,
		                    "[tls] fips-module = required, but OpenSSL's FIPS "
		                    "module (fips.so) is not active in %s: install a "
		                    "validated FIPS provider, run 'openssl fipsinstall' "
		                    "and enable it with default_properties = fips=yes "
		                    "in OPENSSL_CONF, or set [tls] fips-module = off",
		                    id != NULL && id->libctx != NULL ?
		                    "the token's OpenSSL context" : "this process");
	server = params->role == TETHER_TLS_SERVER;
	fips = (params->policy & TETHER_TLS_POLICY_FIPS) != 0;
	resumption = (params->policy & TETHER_TLS_POLICY_RESUMPTION) != 0;

	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	c->host = host;
	c->role = params->role;
	c->policy = params->policy;
	c->choose_identity = params->choose_identity;
	c->choose_arg = params->choose_arg;

	if (id != NULL && id->libctx != NULL)
		c->ctx = SSL_CTX_new_ex(id->libctx, id->propq, TLS_method());
	else
		c->ctx = SSL_CTX_new(TLS_method());
	if (c->ctx == NULL) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot create the TLS context");
		goto fail;
	}
	ctx = c->ctx;
	SSL_CTX_set_app_data(ctx, c);
	c->default_timeout = SSL_CTX_get_timeout(ctx);

	if (!SSL_CTX_set_min_proto_version(ctx,
	        (params->policy & TETHER_TLS_POLICY_TLS13_ONLY) ?
	        TLS1_3_VERSION : TLS1_2_VERSION) ||
	    !SSL_CTX_set_max_proto_version(ctx,
	        (params->policy & TETHER_TLS_POLICY_TLS12_ONLY) ?
	        TLS1_2_VERSION : TLS1_3_VERSION)) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot set the TLS protocol versions");
		goto fail;
	}

	opts = SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	       SSL_OP_CIPHER_SERVER_PREFERENCE;
	SSL_CTX_set_options(ctx, opts);
	if (resumption && (!server || params->ticket_key != NULL))
		SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
	else
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	/* An EOF without close_notify must stay an error. */
	SSL_CTX_clear_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);

	if (!SSL_CTX_set_cipher_list(ctx, fips ? CIPHERS_TLS12_FIPS :
	                                         CIPHERS_TLS12) ||
	    !SSL_CTX_set_ciphersuites(ctx, fips ? SUITES_TLS13_FIPS :
	                                          SUITES_TLS13) ||
	    !SSL_CTX_set1_groups_list(ctx, fips ? GROUPS_FIPS : GROUPS) ||
	    !SSL_CTX_set1_sigalgs_list(ctx, (params->policy & OSSL_TLS_POLICY_NO_RSA_PSS) ?
	                                    SIGALGS_NO_PSS : SIGALGS) ||
	    !SSL_CTX_set1_client_sigalgs_list(ctx, (params->policy & OSSL_TLS_POLICY_NO_RSA_PSS) ?
	                                           SIGALGS_NO_PSS : SIGALGS)) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot set the TLS algorithms");
		goto fail;
	}

	/* FIPS: keys and curves of at least 112 bits of security (RSA and
	 * DH >= 2048, ECC >= 224), whatever OPENSSL_CONF's ssl_conf section
	 * set (CipherString = DEFAULT@SECLEVEL=1 would otherwise let a pinned
	 * RSA-1024 peer in: the pin is only worth the key's strength). */
	if (fips && SSL_CTX_get_security_level(ctx) < OSSL_TLS_FIPS_SECLEVEL)
		SSL_CTX_set_security_level(ctx, OSSL_TLS_FIPS_SECLEVEL);

	if (!SSL_CTX_set_max_early_data(ctx, 0)) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot disable 0-RTT");
		goto fail;
	}
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_clear_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
	                        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

	mode = SSL_VERIFY_PEER;
	if (server && (params->policy & TETHER_TLS_POLICY_REQUIRE_CERT))
		mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
	SSL_CTX_set_verify(ctx, mode, verify_cb);
	SSL_CTX_set_msg_callback(ctx, msg_cb);

	if (server) {
		static const unsigned char sid_ctx[] = "tether";

		/* No stateful cache: no session-ID resumption, and TLS 1.2
		 * sessions without a ticket are single-use. */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		if (!SSL_CTX_set_session_id_context(ctx, sid_ctx,
		                                    sizeof(sid_ctx) - 1) ||
		    !SSL_CTX_set_num_tickets(ctx, 0)) {
			r = ossl_err_set(err, TETHER_ERR_CRYPTO,
			                 TETHER_CAT_INTERNAL,
			                 "cannot configure TLS sessions");
			goto fail;
		}
		SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
		if (resumption && params->ticket_key != NULL) {
			memcpy(c->ticket_keys[0], params->ticket_key,
			       TICKET_KEY_LEN);
			c->nticket_keys = 1;
			c->tkey_lock = CRYPTO_THREAD_lock_new();
			c->ticket_cipher = EVP_CIPHER_fetch(
			        id != NULL ? id->libctx : NULL, "AES-256-CBC",
			        id != NULL ? id->propq : NULL);
			if (c->ticket_cipher == NULL || c->tkey_lock == NULL ||
			    !SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx,
			                                          ticket_key_cb) ||
			    !SSL_CTX_set_session_ticket_cb(ctx, NULL,
			                                   ticket_decrypted_cb,
			                                   NULL)) {
				r = ossl_err_set(err, TETHER_ERR_CRYPTO,
				                 TETHER_CAT_INTERNAL,
				                 "cannot set up session tickets");
				goto fail;
			}
		}
	} else if (resumption) {
		/* A client "cache" that stores nothing: new_session_cb counts
		 * the sessions received (TLS 1.3 tickets arrive after the
		 * handshake; the core takes the newest). */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
		                                    SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
	} else {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	}

	if (id != NULL) {
		EVP_PKEY *key = ossl_identity_get1_key(id, &c->box_gen);
		int ok = key != NULL &&
		         SSL_CTX_use_cert_and_key(ctx, id->cert, key, NULL, 1);

		EVP_PKEY_free(key);
		if (!ok) {
			r = ossl_err_set(err, TETHER_ERR_CRYPTO,
			                 TETHER_CAT_INTERNAL,
			                 "cannot use the identity's certificate "
			                 "and key for TLS");
			goto fail;
		}
		if (id->box != NULL && X509_up_ref(id->cert)) {
			c->box = ossl_keybox_ref(id->box);
			c->box_cert = id->cert;
		}
	}

	c->biometh = bio_method_new();
	if (c->biometh == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "cannot create the TLS I/O method");
		goto fail;
	}

	*out = c;
	return 0;
fail:
	ossl_tls_ctx_free(c);
	return r;
}

/* ------------------------------------------------------------------ */
/* Session                                                             */
/* ------------------------------------------------------------------ */

void ossl_tls_free(tether_tls *t)
{
	if (t == NULL)
		return;
	SSL_free(t->ssl);       /* frees the BIO */
	OPENSSL_free(t->peer_der);
	ossl_keybox_unref(t->box);
	X509_free(t->box_cert);
	free(t);
}

/* Client: offer a saved session if it parses, is resumable, and the
 * server certificate stored in it still passes the pin. */
static void client_set_session(tether_tls *t, const unsigned char *blob,
                               size_t len)
{
	const unsigned char *p = blob;
	SSL_SESSION *sess;

	if (len > LONG_MAX)
		return;
	sess = d2i_SSL_SESSION(NULL, &p, (long)len);
	if (sess == NULL || !SSL_SESSION_is_resumable(sess)) {
		tls_debug(t->c, "saved TLS session unusable: full handshake");
		goto out;
	}
	if (t->verify != NULL) {
		X509 *peer = SSL_SESSION_get0_peer(sess);
		int refused = peer == NULL || run_pin_check(t, peer) < 0;

		/* Whatever the outcome, a full handshake (the server may
		 * decline the session) checks the presented certificate. */
		t->verify_ran = 0;
		t->verify_passed = 0;
		t->pin_refused = 0;
		if (refused) {
			tls_debug(t->c, "saved TLS session of a peer no "
			          "longer pinned dropped: full handshake");
			goto out;
		}
	}
	if (!SSL_set_session(t->ssl, sess))
		tls_debug(t->c, "saved TLS session refused: full handshake");
out:
	SSL_SESSION_free(sess);
	ERR_clear_error();
}

int ossl_tls_new(tether_tls_ctx *c, const tether_tls_params *params,
                 tether_tls **out, tether_error *err)
{
	tether_tls *t = NULL;
	BIO *bio;
	int r;

	ERR_clear_error();
	if (c == NULL || params == NULL || out == NULL ||
	    params->io.read == NULL || params->io.write == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL,
		                    "invalid TLS session parameters");
	if (params->identity != NULL &&
	    (params->identity->cert == NULL || params->identity->key == NULL))
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL,
		                    "TLS identity without certificate or key");

	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	t->c = c;
	t->io = params->io;
	t->verify = params->verify;
	t->verify_arg = params->verify_arg;
	t->alert_sent = -1;
	t->alert_recv = -1;
	/* the context's identity, unless the client presents another */
	session_take_box(t, c->box, c->box_cert, c->box_gen);

	t->ssl = SSL_new(c->ctx);
	if (t->ssl == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "cannot create the TLS session");
		goto fail;
	}
	SSL_set_app_data(t->ssl, t);
	bio = BIO_new(c->biometh);
	if (bio == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "cannot create the TLS I/O");
		goto fail;
	}
	BIO_set_data(bio, t);
	SSL_set_bio(t->ssl, bio, bio);  /* one reference, taken */

	if (c->role == TETHER_TLS_SERVER) {
		SSL_set_accept_state(t->ssl);
	} else {
		SSL_set_connect_state(t->ssl);
		if (params->server_name != NULL &&
		    params->server_name[0] != '\0') {
			if (!SSL_set_tlsext_host_name(t->ssl,
			                              params->server_name)) {
				r = ossl_err_set(err, TETHER_ERR_INVALID,
				                 TETHER_CAT_INTERNAL,
				                 "invalid TLS server name");
				goto fail;
			}
			copy_str(t->server_name, sizeof(t->server_name),
			         params->server_name);
		}
		if (params->identity != NULL) {
			unsigned gen = 0;
			EVP_PKEY *key = ossl_identity_get1_key(params->identity,
			                                       &gen);
			int ok;

			SSL_certs_clear(t->ssl);
			ok = key != NULL &&
			     SSL_use_cert_and_key(t->ssl, params->identity->cert,
			                          key, NULL, 1);
			EVP_PKEY_free(key);
			if (!ok) {
				r = ossl_err_set(err, TETHER_ERR_CRYPTO,
				                 TETHER_CAT_INTERNAL,
				                 "cannot use the identity's "
				                 "certificate and key for TLS");
				goto fail;
			}
			session_take_box(t, params->identity->box,
			                 params->identity->cert, gen);
		}
		/* Without RESUMPTION a client resumes nothing either, even
		 * with a server that issues tickets: every handshake signs
		 * with the identity's key (on a token: uses the token). */
		if (params->session != NULL && params->session_len > 0 &&
		    (c->policy & TETHER_TLS_POLICY_RESUMPTION))
			client_set_session(t, params->session,
			                   params->session_len);
		else if (params->session != NULL && params->session_len > 0)
			tls_debug(c, "resumption is off: saved TLS session not "
			          "offered, full handshake");
	}

	*out = t;
	return 0;
fail:
	ossl_tls_free(t);
	return r;
}

int ossl_tls_handshake(tether_tls *t, tether_error *err)
{
	int r, e;

	if (t == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL, "no TLS session");
	if (t->failed)
		return tls_failed_again(t, err);
	ERR_clear_error();
	t->started = 1;
	r = SSL_do_handshake(t->ssl);
	if (r == 1)
		return TETHER_TLS_DONE;
	e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ)
		return TETHER_TLS_WANT_READ;
	return tls_fail(t, err, e, "TLS handshake failed");
}

/* SSL_get_error needs an empty error queue before the call, but
 * ERR_clear_error clears every slot of the thread's queue whether it is
 * empty or not: about 840 instructions, twice per message received
 * (callgrind, BENCHMARKS.md session 4).  ERR_peek_error is what
 * SSL_get_error looks at. */
static void err_clear_fast(void)
{
	if (ERR_peek_error() != 0)
		ERR_clear_error();
}

int ossl_tls_read(tether_tls *t, void *buf, size_t cap, size_t *n,
                  tether_error *err)
{
	size_t got = 0;
	int r, e;

	if (t == NULL || buf == NULL || n == NULL || cap == 0)
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL,
		                    "invalid TLS read arguments");
	if (t->failed)
		return tls_failed_again(t, err);
	err_clear_fast();
	r = SSL_read_ex(t->ssl, buf, cap, &got);
	if (r == 1) {
		*n = got;
		return TETHER_TLS_DONE;
	}
	e = SSL_get_error(t->ssl, r);
	switch (e) {
	case SSL_ERROR_WANT_READ:
		*n = 0;
		return TETHER_TLS_WANT_READ;
	case SSL_ERROR_ZERO_RETURN:
		*n = 0;
		return TETHER_TLS_CLOSED;
	default:
		return tls_fail(t, err, e, "TLS read failed");
	}
}

int ossl_tls_write(tether_tls *t, const void *buf, size_t len,
                   tether_error *err)
{
	const unsigned char *p = buf;
	size_t off = 0, w;
	int r, e;

	if (t == NULL || (buf == NULL && len > 0))
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL,
		                    "invalid TLS write arguments");
	if (t->failed)
		return tls_failed_again(t, err);
	if (len == 0)
		return 0;
	if (!SSL_is_init_finished(t->ssl))
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL,
		                    "TLS write before the handshake completed");
	err_clear_fast();
	while (off < len) {
		w = 0;
		r = SSL_write_ex(t->ssl, p + off, len - off, &w);
		if (r == 1) {
			off += w;
			continue;
		}
		e = SSL_get_error(t->ssl, r);
		return tls_fail(t, err, e, "TLS write failed");
	}
	return 0;
}

int ossl_tls_close(tether_tls *t)
{
	int r;

	if (t == NULL)
		return TETHER_ERR_INVALID;
	if (t->failed)
		return t->fail_code;
	if (!SSL_is_init_finished(t->ssl))
		return TETHER_ERR_INVALID;
	ERR_clear_error();
	r = SSL_shutdown(t->ssl);
	ERR_clear_error();
	return r < 0 ? TETHER_ERR_TLS : 0;
}

int ossl_tls_peer_cert(tether_tls *t, const unsigned char **der,
                       size_t *len)
{
	X509 *peer;
	unsigned char *buf = NULL;
	int n;

	if (t == NULL || der == NULL || len == NULL)
		return TETHER_ERR_INVALID;
	/* Resumed sessions too: the certificate is stored in the session. */
	peer = SSL_get0_peer_certificate(t->ssl);
	if (peer == NULL) {
		*der = NULL;
		*len = 0;
		return 0;
	}
	if (peer != t->peer_x509 || t->peer_der == NULL) {
		n = i2d_X509(peer, &buf);
		if (n <= 0) {
			ERR_clear_error();
			return TETHER_ERR_CRYPTO;
		}
		OPENSSL_free(t->peer_der);
		t->peer_der = buf;
		t->peer_der_len = (size_t)n;
		t->peer_x509 = peer;
	}
	*der = t->peer_der;
	*len = t->peer_der_len;
	return 0;
}

static const char *group_name(int nid)
{
	switch (nid) {
	case NID_X25519:
		return "x25519";
	case NID_X448:
		return "x448";
	case NID_X9_62_prime256v1:
		return "secp256r1";
	case NID_secp384r1:
		return "secp384r1";
	case NID_secp521r1:
		return "secp521r1";
	case NID_ffdhe2048:
		return "ffdhe2048";
	case NID_ffdhe3072:
		return "ffdhe3072";
	case NID_ffdhe4096:
		return "ffdhe4096";
	case NID_undef:
		return "";
	default:
		if ((nid & TLSEXT_nid_unknown) != 0)
			return "";
		return OBJ_nid2sn(nid) != NULL ? OBJ_nid2sn(nid) : "";
	}
}

/* TLS SignatureScheme name from libssl's (signature type, hash) pair.
 * libssl reports EVP_PKEY_RSA_PSS for both rsa_pss_rsae_* and
 * rsa_pss_pss_*: the signing key's own type tells them apart. */
static const char *sig_scheme_name(int type, int hash, const EVP_PKEY *key)
{
	int pss_key = key != NULL && EVP_PKEY_is_a(key, "RSA-PSS");

	switch (type) {
	case EVP_PKEY_RSA_PSS:
		switch (hash) {
		case NID_sha256:
			return pss_key ? "rsa_pss_pss_sha256" :
			                 "rsa_pss_rsae_sha256";
		case NID_sha384:
			return pss_key ? "rsa_pss_pss_sha384" :
			                 "rsa_pss_rsae_sha384";
		case NID_sha512:
			return pss_key ? "rsa_pss_pss_sha512" :
			                 "rsa_pss_rsae_sha512";
		}
		break;
	case EVP_PKEY_RSA:
		switch (hash) {
		case NID_sha256:
			return "rsa_pkcs1_sha256";
		case NID_sha384:
			return "rsa_pkcs1_sha384";
		case NID_sha512:
			return "rsa_pkcs1_sha512";
		case NID_sha1:
			return "rsa_pkcs1_sha1";
		}
		break;
	case EVP_PKEY_EC:
		switch (hash) {
		case NID_sha256:
			return "ecdsa_secp256r1_sha256";
		case NID_sha384:
			return "ecdsa_secp384r1_sha384";
		case NID_sha512:
			return "ecdsa_secp521r1_sha512";
		case NID_sha1:
			return "ecdsa_sha1";
		}
		break;
	case EVP_PKEY_ED25519:
		return "ed25519";
	case EVP_PKEY_ED448:
		return "ed448";
	}
	return "";
}

int ossl_tls_info(tether_tls *t, tether_tls_info *out)
{
	const SSL_CIPHER *cipher;
	X509 *peer;
	int type = NID_undef, hash = NID_undef;

	if (t == NULL || out == NULL)
		return TETHER_ERR_INVALID;
	memset(out, 0, sizeof(*out));
	if (SSL_is_init_finished(t->ssl))
		copy_str(out->tls_version, sizeof(out->tls_version),
		         SSL_get_version(t->ssl));
	cipher = SSL_get_current_cipher(t->ssl);
	if (cipher != NULL)
		copy_str(out->cipher, sizeof(out->cipher),
		         SSL_CIPHER_get_name(cipher));
	copy_str(out->group, sizeof(out->group),
	         group_name(SSL_get_negotiated_group(t->ssl)));

	if (SSL_get_signature_type_nid(t->ssl, &type) &&
	    SSL_get_signature_nid(t->ssl, &hash))
		copy_str(out->sig_scheme, sizeof(out->sig_scheme),
		         sig_scheme_name(type, hash,
		                         SSL_get_privatekey(t->ssl)));
	type = hash = NID_undef;
	peer = SSL_get0_peer_certificate(t->ssl);
	if (SSL_get_peer_signature_type_nid(t->ssl, &type) &&
	    SSL_get_peer_signature_nid(t->ssl, &hash))
		copy_str(out->peer_sig_scheme, sizeof(out->peer_sig_scheme),
		         sig_scheme_name(type, hash,
		                         peer != NULL ? X509_get0_pubkey(peer) :
		                                        NULL));
	out->resumed = SSL_session_reused(t->ssl) ? 1 : 0;
	if (t->server_name[0] != '\0')
		copy_str(out->server_name, sizeof(out->server_name),
		         t->server_name);
	else
		copy_str(out->server_name, sizeof(out->server_name),
		         SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name));
	ERR_clear_error();
	return 0;
}

/* The lifetime of the tickets issued now (0: OpenSSL's default). */
static uint32_t ticket_lifetime(tether_tls_ctx *c)
{
	uint32_t l = 0;

	if (CRYPTO_THREAD_read_lock(c->tkey_lock)) {
		l = c->ticket_lifetime;
		CRYPTO_THREAD_unlock(c->tkey_lock);
	}
	return l;
}

/* Server, TLS 1.3, handshake done: send one NewSessionTicket now. */
static int send_ticket(tether_tls *t, tether_error *err)
{
	SSL_SESSION *s = SSL_get_session(t->ssl);
	uint32_t life = ticket_lifetime(t->c);
	time_t now = time(NULL);
	int r, e;

	ERR_clear_error();
	/* A resumed session carries the timeout and time of the ticket it
	 * came from: the new ticket gets the lifetime configured now, and
	 * its age counts from now. */
	if (s != NULL) {
		SSL_SESSION_set_timeout(s, life ? (long)life :
		                        SSL_CTX_get_timeout(t->c->ctx));
		SSL_SESSION_set_time(s, (long)now);
	}
	if (!SSL_new_session_ticket(t->ssl))
		return tls_fail(t, err, SSL_ERROR_SSL,
		                "cannot issue a TLS session ticket");
	/* Writes the NewSessionTicket through io.write. */
	r = SSL_do_handshake(t->ssl);
	if (r != 1) {
		e = SSL_get_error(t->ssl, r);
		return tls_fail(t, err, e, "cannot send a TLS session ticket");
	}
	/* libssl 3.0 keeps the write buffer (about 17 KiB) a handshake
	 * message went out through until the next application write, despite
	 * SSL_MODE_RELEASE_BUFFERS: on an idle connection that is its next
	 * keepalive.  io.write took everything, so nothing is pending. */
	(void)SSL_free_buffers(t->ssl);
	t->ticket_time = now;
	return 0;
}

int ossl_tls_pinned(tether_tls *t, tether_error *err)
{
	if (t == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL, "no TLS session");
	if (t->failed)
		return tls_failed_again(t, err);
	t->pinned = 1;
	if (t->c->role != TETHER_TLS_SERVER || t->c->nticket_keys == 0 ||
	    SSL_version(t->ssl) != TLS1_3_VERSION ||
	    !SSL_is_init_finished(t->ssl))
		return 0;
	if (SSL_session_reused(t->ssl) && !t->ticket_prev_key) {
		/* The client resumed with a ticket issued less than half its
		 * lifetime ago: it keeps using that one (TLS 1.3 allows it;
		 * tether sends no early data, so there is nothing to replay).
		 * Making a ticket costs OpenSSL 3.0 a re-encoding and a second
		 * parse of the peer's certificate, about a fifth of the
		 * server's CPU in a fleet's reconnection after a restart.  A
		 * ticket made with the previous key is replaced at once: that
		 * key goes at the next renewal. */
		SSL_SESSION *s = SSL_get0_session(t->ssl);
		long age = s != NULL ? (long)time(NULL) - (long)SSL_SESSION_get_time(s) : -1;
		long life = s != NULL ? SSL_SESSION_get_timeout(s) : 0;
		uint32_t now_life = ticket_lifetime(t->c);

		if (now_life != 0 && (long)now_life < life)
			life = (long)now_life;
		if (s != NULL && age >= 0 && age < life / 2) {
			t->ticket_time = (time_t)SSL_SESSION_get_time(s);
			return 0;
		}
	}
	return send_ticket(t, err);
}

int ossl_tls_refresh_ticket(tether_tls *t, tether_error *err)
{
	long life, age;
	int r;

	if (t == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID,
		                    TETHER_CAT_INTERNAL, "no TLS session");
	if (t->failed)
		return tls_failed_again(t, err);
	if (t->c->role != TETHER_TLS_SERVER || t->c->nticket_keys == 0 ||
	    !t->pinned || t->ticket_time == 0 ||
	    SSL_version(t->ssl) != TLS1_3_VERSION ||
	    !SSL_is_init_finished(t->ssl))
		return 0;
	life = ticket_lifetime(t->c);
	if (life == 0)
		life = SSL_CTX_get_timeout(t->c->ctx);
	if (life < 2)
		life = 2;
	age = (long)(time(NULL) - t->ticket_time);
	if (age >= 0 && age < life / 2)
		return (int)(life / 2 - age);
	r = send_ticket(t, err);
	if (r < 0)
		return r;
	tls_debug(t->c, "fresh session ticket sent (the last one was %ld s old, "
	          "lifetime %ld s)", age, life);
	return (int)(life / 2);
}

unsigned ossl_tls_sessions_received(tether_tls *t)
{
	return t != NULL ? t->sessions_received : 0;
}

int ossl_tls_ctx_set_tickets(tether_tls_ctx *c, const unsigned char *keys,
                             size_t len, uint32_t lifetime_s,
                             tether_error *err)
{
	int n;

	if (c == NULL || keys == NULL ||
	    (len != TICKET_KEY_LEN && len != 2 * TICKET_KEY_LEN) ||
	    lifetime_s > 604800)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "invalid session ticket keys or lifetime");
	if (c->role != TETHER_TLS_SERVER || c->nticket_keys == 0)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "this TLS context issues no session tickets");
	n = (int)(len / TICKET_KEY_LEN);
	if (!CRYPTO_THREAD_write_lock(c->tkey_lock))
		return ossl_err_set(err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
		                    "cannot lock the session ticket keys");
	memcpy(c->ticket_keys, keys, len);
	if (n < 2)
		OPENSSL_cleanse(c->ticket_keys[1], TICKET_KEY_LEN);
	c->nticket_keys = n;
	if (lifetime_s != c->ticket_lifetime) {
		c->ticket_lifetime = lifetime_s;
		/* TLS 1.2 sessions take it when they are made */
		SSL_CTX_set_timeout(c->ctx, lifetime_s ? (long)lifetime_s :
		                    c->default_timeout);
	}
	CRYPTO_THREAD_unlock(c->tkey_lock);
	return 0;
}

int ossl_tls_get_session(tether_tls *t, unsigned char **out,
                         size_t *out_len)
{
	SSL_SESSION *sess;
	unsigned char *buf = NULL, *p;
	int n, r = TETHER_ERR_NOT_FOUND;

	if (t == NULL || out == NULL || out_len == NULL ||
	    t->c->role != TETHER_TLS_CLIENT)
		return TETHER_ERR_INVALID;
	if (t->failed || !SSL_is_init_finished(t->ssl) ||
	    !(t->c->policy & TETHER_TLS_POLICY_RESUMPTION))
		return TETHER_ERR_NOT_FOUND;
	sess = SSL_get1_session(t->ssl);
	if (sess == NULL || !SSL_SESSION_is_resumable(sess))
		goto out;
	n = i2d_SSL_SESSION(sess, NULL);
	if (n <= 0) {
		r = TETHER_ERR_CRYPTO;
		goto out;
	}
	buf = malloc((size_t)n);
	if (buf == NULL) {
		r = TETHER_ERR_NOMEM;
		goto out;
	}
	p = buf;
	if (i2d_SSL_SESSION(sess, &p) != n) {
		OPENSSL_cleanse(buf, (size_t)n);
		free(buf);
		r = TETHER_ERR_CRYPTO;
		goto out;
	}
	*out = buf;
	*out_len = (size_t)n;
	r = 0;
out:
	SSL_SESSION_free(sess);
	ERR_clear_error();
	return r;
}

/*
 * Abort with certificate_unknown.  libssl 3.0 has no public call to send
 * an arbitrary alert: the certificate_unknown alert is sent by libssl
 * itself when the pin check refuses the peer inside the handshake (the
 * verify callback), which is where the core should refuse.  Called later
 * (after the handshake, or between handshake steps), this marks the
 * session failed (every later call fails with category untrusted) and, if
 * the handshake had completed, sends close_notify so the peer is not left
 * waiting; the core then closes the connection.
 */
int ossl_tls_reject(tether_tls *t)
{
	if (t == NULL)
		return TETHER_ERR_INVALID;
	if (!t->failed) {
		ERR_clear_error();
		if (SSL_is_init_finished(t->ssl))
			(void)SSL_shutdown(t->ssl);
		ERR_clear_error();
		t->failed = 1;
		t->fail_code = TETHER_ERR_UNTRUSTED;
		t->fail_cat = TETHER_CAT_UNTRUSTED;
		copy_str(t->fail_detail, sizeof(t->fail_detail),
		         "TLS session rejected: the peer's certificate is not "
		         "pinned");
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Hooks for the providers built on this code                          */
/* ------------------------------------------------------------------ */

void ossl_tls_ctx_set_owner(tether_tls_ctx *c, void *owner,
                            ossl_tls_classify_fn classify)
{
	if (c == NULL)
		return;
	c->owner = owner;
	c->classify = classify;
}

void *ossl_tls_owner(const tether_tls *t)
{
	return t != NULL ? t->c->owner : NULL;
}

unsigned long ossl_tls_backend_code(const tether_tls *t)
{
	return t != NULL ? t->backend_code : 0;
}

int ossl_tls_before_start(const tether_tls *t)
{
	return t != NULL && !t->started && !t->failed;
}

void ossl_tls_set_failure(tether_tls *t, const tether_error *err)
{
	if (t == NULL || err == NULL || !t->failed)
		return;
	t->fail_code = err->code;
	t->fail_cat = err->category;
	copy_str(t->fail_detail, sizeof(t->fail_detail), err->detail);
}

int ossl_tls_key_stale(const tether_tls *t)
{
	return t != NULL && t->box != NULL &&
	       ossl_keybox_gen(t->box) != t->key_gen;
}

int ossl_tls_refresh_key(tether_tls *t, tether_error *err)
{
	EVP_PKEY *key;
	unsigned gen;
	int ok;

	if (t == NULL || t->box == NULL || t->started ||
	    ossl_keybox_gen(t->box) == t->key_gen)
		return 0;
	key = ossl_keybox_get1(t->box, &gen);
	ERR_clear_error();
	ok = key != NULL &&
	     SSL_use_cert_and_key(t->ssl, t->box_cert, key, NULL, 1);
	EVP_PKEY_free(key);
	if (!ok)
		return ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                    "cannot present the reloaded key");
	t->key_gen = gen;
	tls_debug(t->c, "session presents the reloaded key (generation %u)",
	          gen);
	return 0;
}
