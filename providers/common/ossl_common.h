/*
 * Code shared by the providers built on OpenSSL 3 (openssl, pkcs11):
 * the TLS session over memory, crypto helpers for the core, and error
 * classification.  Linked into each provider as a convenience library;
 * never copied.
 *
 * Prefix: ossl_ (shared) — the openssl provider's own files also use ossl_,
 * the pkcs11 provider's use pk11_.
 */
#ifndef TETHER_OSSL_COMMON_H
#define TETHER_OSSL_COMMON_H

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/evp.h>
#include "tether/provider.h"

/* A loaded identity.  Both OpenSSL-based providers fill it: the openssl
 * provider with a key read from a PKCS#8 file, the pkcs11 provider with a
 * key whose operations run on the token (fetched from its private
 * OSSL_LIB_CTX).  The TLS code only uses cert and key. */
struct tether_identity {
	X509 *cert;
	EVP_PKEY *key;          /* the key as loaded; never replaced */
	unsigned char *der;     /* cert DER, OPENSSL_malloc'd */
	size_t der_len;
	OSSL_LIB_CTX *libctx;   /* where key's operations live; NULL = default */
	const char *propq;      /* property query for that libctx; may be NULL */
	/* NULL, or where the current key lives when the provider may replace
	 * it while the identity is in use (the pkcs11 provider reloads a
	 * token's key from the token after the token came back).  The TLS
	 * code then signs with the box's key (ossl_identity_get1_key). */
	struct ossl_keybox *box;
};

/* ---- ossl_identity_common.c: a replaceable key ----
 * A reference-counted holder of an EVP_PKEY that a provider may swap for
 * a fresh one while other threads use it.  Readers take their own
 * reference (ossl_keybox_get1), so a replaced key is freed only when the
 * last TLS session or context that took it lets it go.  gen counts the
 * replacements: a session that took generation g and sees a larger one
 * knows its key is stale. */
typedef struct ossl_keybox ossl_keybox;
/* A box holding key (the box takes its own reference). */
ossl_keybox *ossl_keybox_new(EVP_PKEY *key);
ossl_keybox *ossl_keybox_ref(ossl_keybox *b);
void ossl_keybox_unref(ossl_keybox *b);
/* The current key, with a reference the caller frees; *gen (if not NULL)
 * its generation.  NULL only if out of memory/locks fail. */
EVP_PKEY *ossl_keybox_get1(ossl_keybox *b, unsigned *gen);
unsigned ossl_keybox_gen(ossl_keybox *b);
/* Replace the key (the box takes its own reference; the old one is
 * released, and freed once no reader holds it). */
int ossl_keybox_set(ossl_keybox *b, EVP_PKEY *key);
/* How many references the box has (the pkcs11 provider's registry of
 * live boxes drops those only it still holds). */
int ossl_keybox_refs(ossl_keybox *b);
/* The key to sign with: the box's current one, else id->key; a reference
 * the caller frees. */
EVP_PKEY *ossl_identity_get1_key(const tether_identity *id, unsigned *gen);

/* ---- ossl_identity_common.c (shared identity object helpers) ---- */
/* Build an identity from cert and key (takes ownership of both). */
int ossl_identity_wrap(X509 *cert, EVP_PKEY *key, OSSL_LIB_CTX *libctx,
                       const char *propq, tether_identity **out,
                       tether_error *err);
int ossl_identity_cert_der(const tether_identity *id,
                           const unsigned char **der, size_t *len);
void ossl_identity_free(tether_identity *id);

/* ---- ossl_cert.c: self-signed certificate of a new identity ---- */
/* Random 128-bit serial, CN=cn, valid from an hour ago for days, v3
 * end-entity extensions; signed with key (SHA-384 for P-384, else
 * SHA-256) in libctx (NULL: default). */
X509 *ossl_make_cert(EVP_PKEY *key, int key_type, const char *cn,
                     uint32_t days, OSSL_LIB_CTX *libctx, const char *propq);
/* "rsa2048", ... ("unknown" out of range). */
const char *ossl_key_type_name(int key_type);

/* ---- ossl_import.c: parse an identity to import ---- */
/* Parse a PKCS#12 or PEM identity (any form, including legacy RC2/3DES
 * PKCS#12; key possibly encrypted with password) and check it completely:
 * the key matches the certificate and is RSA >= 2048 or EC P-256/P-384.
 * The results live in the default library context.  host may be NULL. */
int ossl_parse_identity(const tether_host *host, const unsigned char *data,
                        size_t len, const char *password, X509 **cert,
                        EVP_PKEY **key, tether_error *err);
/* Password callback for PEM reads: never prompts.  u is a
 * struct ossl_pw *. */
struct ossl_pw {
	const char *pw;            /* NULL: none available */
	int asked;                 /* set when the callback was called */
	int too_long;
};
int ossl_pw_cb(char *buf, int size, int rwflag, void *u);

/* ---- ossl_crypto.c: crypto helpers for the core ---- */
int ossl_digest(int alg, const void *data, size_t len, unsigned char *out,
                size_t *out_len, tether_error *err);
int ossl_digest_new(int alg, tether_digest_ctx **out, tether_error *err);
int ossl_digest_update(tether_digest_ctx *d, const void *data, size_t len);
int ossl_digest_final(tether_digest_ctx *d, unsigned char *out,
                      size_t *out_len);
void ossl_digest_free(tether_digest_ctx *d);
int ossl_cert_info(const unsigned char *der, size_t len,
                   tether_cert_info *out, tether_error *err);
int ossl_random_bytes(void *buf, size_t len);

/* ---- ossl_err.c: errors ---- */
/* Set err: code, category, and detail = msg + the drained OpenSSL error
 * queue.  Returns code. */
int ossl_err_set(tether_error *err, int code, int category,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- ossl_tls.c: TLS over memory buffers ---- */
/* A policy bit of the providers' own, outside the ABI's flags: the key
 * cannot sign RSA-PSS (a PKCS#11 token without CKM_RSA_PKCS_PSS), so only
 * PKCS#1 v1.5 and ECDSA signature schemes are offered and accepted (TLS
 * 1.2 would otherwise still pick rsa_pss_rsae_*).  Use with
 * TETHER_TLS_POLICY_TLS12_ONLY. */
#define OSSL_TLS_POLICY_NO_RSA_PSS (1u << 30)
int ossl_tls_ctx_new(const tether_host *host,
                     const tether_tls_ctx_params *params,
                     tether_tls_ctx **out, tether_error *err);
void ossl_tls_ctx_free(tether_tls_ctx *c);
int ossl_tls_new(tether_tls_ctx *c, const tether_tls_params *params,
                 tether_tls **out, tether_error *err);
int ossl_tls_handshake(tether_tls *t, tether_error *err);
int ossl_tls_read(tether_tls *t, void *buf, size_t cap, size_t *n,
                  tether_error *err);
int ossl_tls_write(tether_tls *t, const void *buf, size_t len,
                   tether_error *err);
int ossl_tls_close(tether_tls *t);
int ossl_tls_peer_cert(tether_tls *t, const unsigned char **der,
                       size_t *len);
int ossl_tls_info(tether_tls *t, tether_tls_info *out);
int ossl_tls_pinned(tether_tls *t, tether_error *err);
int ossl_tls_get_session(tether_tls *t, unsigned char **out,
                         size_t *out_len);
int ossl_tls_reject(tether_tls *t);
int ossl_tls_ctx_set_tickets(tether_tls_ctx *c, const unsigned char *keys,
                             size_t len, uint32_t lifetime_s,
                             tether_error *err);
int ossl_tls_refresh_ticket(tether_tls *t, tether_error *err);
unsigned ossl_tls_sessions_received(tether_tls *t);
void ossl_tls_free(tether_tls *t);

/* Hooks for a provider built on this TLS code (not part of the ABI).
 * owner: the provider's own pointer, given back by ossl_tls_owner.
 * classify: called by a failed handshake, read or write for each OpenSSL
 * error in the queue before it is formatted; a nonzero return is kept as
 * the session's backend code (the first one wins), read with
 * ossl_tls_backend_code.  The pkcs11 provider returns the CK_RV of
 * pkcs11-provider's token-class errors there. */
typedef unsigned long (*ossl_tls_classify_fn)(void *owner, unsigned long e);
void ossl_tls_ctx_set_owner(tether_tls_ctx *c, void *owner,
                            ossl_tls_classify_fn classify);
void *ossl_tls_owner(const tether_tls *t);
unsigned long ossl_tls_backend_code(const tether_tls *t);
/* Before the handshake started: if the key of the identity this session
 * presents was replaced since the session took it, present the current
 * one.  0 on success (nothing to do included), < 0 with err set. */
int ossl_tls_refresh_key(tether_tls *t, tether_error *err);
/* Has the key this session signs with been replaced since? */
int ossl_tls_key_stale(const tether_tls *t);
/* Has the handshake not started yet (no step run)? */
int ossl_tls_before_start(const tether_tls *t);
/* After a failed step: the provider's own reading of the failure (another
 * category, a longer detail), returned by later calls on the session. */
void ossl_tls_set_failure(tether_tls *t, const tether_error *err);

#endif
