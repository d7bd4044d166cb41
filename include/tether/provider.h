/*
 * tether provider ABI: the one contract between libtether (the core) and a
 * crypto provider (tether-openssl.so, tether-pkcs11.so, tether-schannel.dll).
 *
 * Rules
 *  - A provider exports exactly one symbol, TETHER_PROVIDER_ENTRY.
 *  - The operation table starts with the ABI version (major.minor) and its
 *    own size.  Fields are only ever added at the end (bumping the minor);
 *    a different major is refused by both sides.  The core never reads a
 *    field that lies beyond the size the provider reported.
 *  - An operation a backend cannot do is NULL, and the core checks.
 *  - Providers never print.  They report through host->log and fill the
 *    tether_error passed to every fallible operation.
 *  - Nothing in this header depends on OpenSSL, SSPI or PKCS#11.
 *
 * Return values: 0 success, > 0 "progress" codes where documented (TLS),
 * negative TETHER_ERR_* on failure, with err->category and err->detail set.
 */
#ifndef TETHER_PROVIDER_H
#define TETHER_PROVIDER_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TETHER_PROVIDER_ABI_MAJOR 1
#define TETHER_PROVIDER_ABI_MINOR 1
#define TETHER_PROVIDER_ENTRY     "tether_provider_init"

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/* Return codes shared by the core and providers. */
enum tether_err_code {
	TETHER_OK = 0,
	TETHER_ERR_INTERNAL = -1,     /* a bug or an unexpected backend failure */
	TETHER_ERR_NOMEM = -2,
	TETHER_ERR_INVALID = -3,      /* bad argument or malformed input */
	TETHER_ERR_NOT_FOUND = -4,    /* file, slot, object or symbol absent */
	TETHER_ERR_IO = -5,           /* read/write/rename/fsync failed */
	TETHER_ERR_UNSUPPORTED = -6,  /* the backend cannot do this */
	TETHER_ERR_CRYPTO = -7,       /* a cryptographic operation failed */
	TETHER_ERR_TLS = -8,          /* the TLS session failed; see category */
	TETHER_ERR_CLOSED = -9,       /* the peer closed the TLS session */
	TETHER_ERR_PASSWORD = -10,    /* wrong or missing password */
	TETHER_ERR_ABI = -11,         /* ABI version or table size mismatch */
	TETHER_ERR_EXISTS = -12,      /* would overwrite something */
	TETHER_ERR_PERMISSION = -13,
	TETHER_ERR_TIMEOUT = -14,
	TETHER_ERR_UNTRUSTED = -15,   /* pin check refused the peer */
	TETHER_ERR_PROTOCOL = -16,    /* tether protocol violation */
	TETHER_ERR_USAGE = -17,       /* command-line usage error */
};

/* Failure categories, shared by every provider so that Schannel, PKCS#11
 * and OpenSSL failures read the same to the user.  The core maps each to
 * exactly one troubleshooting hint.  The string forms (tether_category_name)
 * are the `category` values of DESIGN.md. */
enum tether_category {
	TETHER_CAT_NONE = 0,
	TETHER_CAT_PROTOCOL_VERSION,     /* "protocol_version" */
	TETHER_CAT_NO_SHARED_CIPHER,     /* "no_shared_cipher" */
	TETHER_CAT_NO_SHARED_GROUP,      /* "no_shared_group" */
	TETHER_CAT_NO_SHARED_SIGALG,     /* "no_shared_sigalg" */
	TETHER_CAT_PEER_NO_CERTIFICATE,  /* "peer_no_certificate" */
	TETHER_CAT_UNTRUSTED,            /* "untrusted" */
	TETHER_CAT_NOT_TLS,              /* "not_tls" */
	TETHER_CAT_CONNECTION_REFUSED,   /* "connection_refused" */
	TETHER_CAT_CONNECTION_RESET,     /* "connection_reset" */
	TETHER_CAT_DNS_FAILURE,          /* "dns_failure" */
	TETHER_CAT_TIMEOUT,              /* "timeout" */
	TETHER_CAT_CLONED_IDENTITY,      /* "cloned_identity" */
	TETHER_CAT_SHA1_REJECTED,        /* "sha1_rejected" */
	TETHER_CAT_HANDSHAKE,            /* "handshake" (unclassified TLS failure) */
	TETHER_CAT_BAD_PASSWORD,         /* "bad_password" */
	TETHER_CAT_KEY_NOT_EXPORTABLE,   /* "key_not_exportable" */
	TETHER_CAT_BAD_INPUT,            /* "bad_input": corrupt/truncated file */
	TETHER_CAT_NOT_FOUND,            /* "not_found" */
	TETHER_CAT_IO,                   /* "io" */
	TETHER_CAT_UNSUPPORTED,          /* "unsupported" */
	TETHER_CAT_INTERNAL,             /* "internal" */
	/* New categories are only ever added here, before the count.  The
	 * core's own (no provider reports them): */
	TETHER_CAT_PEER_PROTOCOL,        /* "protocol_violation": a peer broke the tether protocol */
	TETHER_CAT_LOCKED,               /* "locked": another process holds a lock we need */
	/* Reported by the pkcs11 provider (a core older than it shows
	 * "internal", as for any category it does not know): */
	TETHER_CAT_TOKEN_UNAVAILABLE,    /* "token_unavailable": the token/HSM holding the key did not answer */
	TETHER_CAT__COUNT
};

#define TETHER_ERROR_DETAIL_MAX 512

/* Filled by the operation that failed.  detail is the backend's own text
 * (OpenSSL error queue, SECURITY_STATUS, CKR_*), kept beside the category,
 * never instead of it.  It never contains secret material. */
typedef struct tether_error {
	int code;                           /* enum tether_err_code */
	int category;                       /* enum tether_category */
	char detail[TETHER_ERROR_DETAIL_MAX];
} tether_error;

/* ------------------------------------------------------------------ */
/* Host services given to the provider                                 */
/* ------------------------------------------------------------------ */

enum tether_log_level {
	TETHER_LOG_ERROR = 0,
	TETHER_LOG_WARN = 1,
	TETHER_LOG_INFO = 2,
	TETHER_LOG_DEBUG = 3,
};

typedef struct tether_host {
	uint16_t abi_major;
	uint16_t abi_minor;
	uint32_t size;                 /* sizeof(struct tether_host) of the core */

	void *host_arg;                /* passed back to every callback */

	/* Operator log (area NULL) or debug trace (area e.g. "prov", "tls"). */
	void (*log)(void *host_arg, int level, const char *area,
	            const char *fmt, va_list ap);

	/* The provider's own config section ([openssl], [pkcs11], [schannel]):
	 * returns the value or NULL.  Valid until deinit. */
	const char *(*config_get)(void *host_arg, const char *key);

	const char *state_dir;         /* the instance's state directory */
	const char *instance;          /* instance name, e.g. "default" */
	const char *program;           /* "agent", "server" or "ping" */
} tether_host;

/* ------------------------------------------------------------------ */
/* Identities                                                          */
/* ------------------------------------------------------------------ */

/* Each provider instance holds up to three identities, so that rotation
 * never exports nor overwrites a key. */
enum tether_slot {
	TETHER_SLOT_CURRENT = 0,
	TETHER_SLOT_STAGED = 1,
	TETHER_SLOT_PREVIOUS = 2,
	TETHER_SLOT__COUNT
};

enum tether_key_type {
	TETHER_KEY_RSA2048 = 0,        /* default */
	TETHER_KEY_RSA3072,
	TETHER_KEY_RSA4096,
	TETHER_KEY_EC_P256,
	TETHER_KEY_EC_P384,
	TETHER_KEY__COUNT
};

typedef struct tether_keygen_params {
	int key_type;                  /* enum tether_key_type */
	uint32_t validity_days;        /* 0: provider default (20 years) */
	const char *subject_cn;        /* NULL: generic "tether" */
	/* Optional passphrase to protect a key stored in a file (openssl
	 * provider).  NULL: the provider's configured policy applies. */
	const char *key_passphrase;
} tether_keygen_params;

/* A loaded identity: certificate + private key handle.  Opaque. */
typedef struct tether_identity tether_identity;

/* ------------------------------------------------------------------ */
/* Crypto helpers for the core                                         */
/* ------------------------------------------------------------------ */

enum tether_digest_alg {
	TETHER_DIGEST_SHA256 = 0,
	TETHER_DIGEST_SHA1 = 1,        /* display only, never trusted */
};

#define TETHER_SHA256_LEN 32
#define TETHER_SHA1_LEN 20

typedef struct tether_digest_ctx tether_digest_ctx;

/* Certificate fields the core needs for display and policy checks. */
typedef struct tether_cert_info {
	char subject[256];             /* RFC 2253 one-line form */
	char issuer[256];
	char serial_hex[80];
	int64_t not_before;            /* seconds since the epoch, UTC */
	int64_t not_after;
	char cert_signature_algorithm[64]; /* OpenSSL long name */
	char key_type[16];             /* "rsa", "ec", "ed25519", ... */
	int key_bits;
	char curve[32];                /* EC curve name, "" otherwise */
	int self_signed;
} tether_cert_info;

/* ------------------------------------------------------------------ */
/* TLS over memory                                                     */
/* ------------------------------------------------------------------ */

/* The core owns sockets and the event loop.  A TLS session pulls
 * ciphertext from, and pushes ciphertext to, the core through these
 * callbacks:
 *   read:  copy up to len bytes of received ciphertext into buf; return the
 *          number copied, or 0 if nothing is buffered now (would block).
 *   write: take len bytes of ciphertext to send; returns len (the core
 *          queues everything) or a negative value on a fatal error. */
typedef struct tether_tls_io {
	int (*read)(void *io_arg, void *buf, size_t len);
	int (*write)(void *io_arg, const void *buf, size_t len);
	void *io_arg;
} tether_tls_io;

enum tether_tls_role {
	TETHER_TLS_CLIENT = 0,
	TETHER_TLS_SERVER = 1,
};

/* TLS progress codes (>= 0). */
enum tether_tls_status {
	TETHER_TLS_DONE = 0,           /* handshake complete / data moved */
	TETHER_TLS_WANT_READ = 1,      /* feed more ciphertext, then call again */
	TETHER_TLS_CLOSED = 2,         /* peer sent close_notify */
};

/* Called during the handshake, as soon as the peer's certificate is known,
 * where the backend allows it (OpenSSL does; Schannel only after it).
 * der/len: the peer's leaf certificate; len 0 if the peer sent none.
 * Return 0 to go on, negative to abort the handshake (the provider sends
 * certificate_unknown).  The core re-checks the pin after every handshake
 * anyway, full or resumed. */
typedef int (*tether_tls_verify_fn)(void *arg, const unsigned char *der,
                                    size_t len);

/* Server role: choose which identity to present, from the client's
 * server-name indication (the rotation pin hint).  Return an identity
 * borrowed from the core (it outlives the session) or NULL for the
 * context's default identity. */
typedef tether_identity *(*tether_tls_choose_identity_fn)(void *arg,
                                                          const char *server_name);

enum tether_tls_policy_flags {
	TETHER_TLS_POLICY_FIPS = 1u << 0,       /* drop what FIPS does not approve */
	TETHER_TLS_POLICY_TLS13_ONLY = 1u << 1,
	TETHER_TLS_POLICY_TLS12_ONLY = 1u << 2, /* tests, and peers without 1.3 */
	/* Session tickets: a server issues and accepts them (with ticket_key),
	 * a client keeps and offers them.  Without it a client ignores
	 * tether_tls_params.session and tls_get_session finds nothing. */
	TETHER_TLS_POLICY_RESUMPTION = 1u << 3,
	TETHER_TLS_POLICY_REQUIRE_CERT = 1u << 4, /* server: refuse no-cert peers in the handshake */
	/* Refuse to make the context unless a validated FIPS module does the
	 * crypto (OpenSSL's fips provider active; a provider without one
	 * refuses).  Added in ABI 1.0; a provider that predates it ignores it. */
	TETHER_TLS_POLICY_FIPS_MODULE = 1u << 5,
};

/* Shared configuration of many sessions (an SSL_CTX, a credential). */
typedef struct tether_tls_ctx_params {
	int role;                          /* enum tether_tls_role */
	unsigned policy;                   /* enum tether_tls_policy_flags */
	tether_identity *identity;         /* default identity presented; borrowed */
	tether_tls_choose_identity_fn choose_identity; /* server role; may be NULL */
	void *choose_arg;
	/* Session ticket key material (server role, RESUMPTION): 80 bytes =
	 * 16 name + 32 HMAC + 32 AES.  NULL disables tickets.  Copied. */
	const unsigned char *ticket_key;
	size_t ticket_key_len;
} tether_tls_ctx_params;

typedef struct tether_tls_ctx tether_tls_ctx;
typedef struct tether_tls tether_tls;

/* Per-connection parameters. */
typedef struct tether_tls_params {
	tether_tls_io io;
	tether_tls_verify_fn verify;       /* may be NULL: core checks after */
	void *verify_arg;
	const char *server_name;           /* client role: SNI / pin hint; may be NULL */
	/* client role: opaque session blob from a previous tls_get_session,
	 * to resume.  NULL: full handshake. */
	const unsigned char *session;
	size_t session_len;
	/* client role: present this identity instead of the context's.  NULL:
	 * the context's. Borrowed. */
	tether_identity *identity;
} tether_tls_params;

/* What was negotiated, in DESIGN.md's names. */
typedef struct tether_tls_info {
	char tls_version[16];              /* "TLSv1.2", "TLSv1.3" */
	char cipher[64];                   /* OpenSSL cipher name */
	char group[32];                    /* "x25519", "secp256r1", ... */
	char sig_scheme[48];               /* "rsa_pss_rsae_sha256", ... */
	char peer_sig_scheme[48];          /* the scheme the peer signed with */
	int resumed;                       /* 1 if this was a resumed session */
	char server_name[256];             /* server role: SNI the client sent */
} tether_tls_info;

/* ------------------------------------------------------------------ */
/* The operation table                                                 */
/* ------------------------------------------------------------------ */

typedef struct tether_provider_ctx tether_provider_ctx;

enum tether_provider_flags {
	/* Operations may block for a long time (network HSM): the core runs
	 * handshakes and signatures on worker threads. */
	TETHER_PROVIDER_MAY_BLOCK = 1u << 0,
	/* Private keys cannot leave the backend. */
	TETHER_PROVIDER_NO_KEY_EXPORT = 1u << 1,
	/* Supports FIPS policy. */
	TETHER_PROVIDER_FIPS_CAPABLE = 1u << 2,
};

typedef struct tether_provider {
	uint16_t abi_major;
	uint16_t abi_minor;
	uint32_t size;                     /* sizeof(struct tether_provider) as built */

	const char *name;                  /* "openssl", "pkcs11", "schannel" */
	const char *version;               /* provider and backend version text */
	unsigned flags;                    /* enum tether_provider_flags */

	void (*deinit)(tether_provider_ctx *p);

	/* --- identity --- */

	/* Generate a key pair and self-signed certificate into slot,
	 * replacing nothing: fails with TETHER_ERR_EXISTS if the slot is in
	 * use (the core removes or promotes first). */
	int (*identity_generate)(tether_provider_ctx *p, int slot,
	                         const tether_keygen_params *params,
	                         tether_error *err);
	/* staged -> current, current -> previous (the old previous is
	 * destroyed).  Fails with NOT_FOUND if nothing is staged. */
	int (*identity_promote)(tether_provider_ctx *p, tether_error *err);
	/* Destroy the identity in slot (NOT_FOUND if empty). */
	int (*identity_remove)(tether_provider_ctx *p, int slot,
	                       tether_error *err);
	/* Is the slot in use?  1 yes, 0 no, negative on error. */
	int (*identity_exists)(tether_provider_ctx *p, int slot,
	                       tether_error *err);
	/* Load the identity in slot (NOT_FOUND if empty). */
	int (*identity_load)(tether_provider_ctx *p, int slot,
	                     tether_identity **out, tether_error *err);
	/* The certificate's DER; valid while the identity lives. */
	int (*identity_cert_der)(const tether_identity *id,
	                         const unsigned char **der, size_t *len);
	void (*identity_free)(tether_identity *id);
	/* PKCS#12 of slot, protected by password (AES-256-CBC + PBKDF2-SHA256,
	 * or 3DES/SHA-1 with legacy != 0).  *out is allocated with malloc;
	 * the caller frees it.  NO_KEY_EXPORT providers fail with
	 * TETHER_ERR_UNSUPPORTED / TETHER_CAT_KEY_NOT_EXPORTABLE. */
	int (*identity_export_pkcs12)(tether_provider_ctx *p, int slot,
	                              const char *password, int legacy,
	                              unsigned char **out, size_t *out_len,
	                              tether_error *err);
	/* Import a PKCS#12 (any form, including RC2/3DES legacy) or PEM
	 * (certificate + private key, in any order, key possibly encrypted
	 * with password) into slot, which must be empty.  The data is
	 * checked completely (key matches certificate) before anything is
	 * written. */
	int (*identity_import)(tether_provider_ctx *p, int slot,
	                       const unsigned char *data, size_t len,
	                       const char *password, tether_error *err);

	/* --- crypto helpers --- */
	int (*digest)(int alg, const void *data, size_t len,
	              unsigned char *out, size_t *out_len, tether_error *err);
	int (*digest_new)(int alg, tether_digest_ctx **out, tether_error *err);
	int (*digest_update)(tether_digest_ctx *d, const void *data, size_t len);
	/* Writes the digest and frees the context. */
	int (*digest_final)(tether_digest_ctx *d, unsigned char *out,
	                    size_t *out_len);
	void (*digest_free)(tether_digest_ctx *d);
	int (*cert_info)(const unsigned char *der, size_t len,
	                 tether_cert_info *out, tether_error *err);
	int (*random_bytes)(void *buf, size_t len);

	/* --- TLS over memory buffers --- */
	int (*tls_ctx_new)(tether_provider_ctx *p,
	                   const tether_tls_ctx_params *params,
	                   tether_tls_ctx **out, tether_error *err);
	void (*tls_ctx_free)(tether_tls_ctx *c);
	int (*tls_new)(tether_tls_ctx *c, const tether_tls_params *params,
	               tether_tls **out, tether_error *err);
	/* Drive the handshake: TETHER_TLS_DONE, TETHER_TLS_WANT_READ, or
	 * negative with err->category set. */
	int (*tls_handshake)(tether_tls *t, tether_error *err);
	/* Read plaintext: DONE with *n > 0, WANT_READ (*n == 0), CLOSED, or
	 * negative. */
	int (*tls_read)(tether_tls *t, void *buf, size_t cap, size_t *n,
	                tether_error *err);
	/* Write plaintext (all of it, ciphertext goes to io.write). */
	int (*tls_write)(tether_tls *t, const void *buf, size_t len,
	                 tether_error *err);
	/* Send close_notify. */
	int (*tls_close)(tether_tls *t);
	/* After the handshake: the peer's leaf certificate (len 0 if none).
	 * Works for resumed sessions too.  Valid while the session lives. */
	int (*tls_peer_cert)(tether_tls *t, const unsigned char **der,
	                     size_t *len);
	int (*tls_info)(tether_tls *t, tether_tls_info *out);
	/* The core calls this once the peer passed the pin check: a server may
	 * now issue a session ticket. */
	int (*tls_pinned)(tether_tls *t, tether_error *err);
	/* Client role: an opaque resumable session blob (malloc'd), if any. */
	int (*tls_get_session)(tether_tls *t, unsigned char **out,
	                       size_t *out_len);
	/* Abort the handshake/session with an alert (certificate_unknown). */
	int (*tls_reject)(tether_tls *t);
	void (*tls_free)(tether_tls *t);

	/* --- identity, continued --- */
	/* Parse a PKCS#12 or PEM as identity_import would, check it fully
	 * (password, key matches certificate), store nothing, and return the
	 * certificate's DER (malloc'd) so the core can show and compare its
	 * thumbprint before anything changes. */
	int (*identity_peek)(tether_provider_ctx *p, const unsigned char *data,
	                     size_t len, const char *password,
	                     unsigned char **der, size_t *der_len,
	                     tether_error *err);
	/* An identity from a PKCS#12 or PEM held only in memory, never stored
	 * (a recovery identity kept offline, used for one operation).  NULL in
	 * providers whose keys must live in their store. */
	int (*identity_load_data)(tether_provider_ctx *p, const unsigned char *data,
	                          size_t len, const char *password,
	                          tether_identity **out, tether_error *err);

	/* --- session tickets over a connection's life (ABI 1.1) ---
	 * NULL in a provider that issues or keeps no tickets itself
	 * (schannel); the core then does without (TETHER_PROV_HAS). */

	/* Server role, a context made with a ticket_key: replace its ticket
	 * keys in place, for every session made on it, running ones
	 * included.  keys: 1 or 2 keys of 80 bytes (as ticket_key); the
	 * first encrypts every ticket issued from now on, each decrypts (the
	 * second is the previous key, kept so that the tickets it made stay
	 * usable for their whole lifetime).  lifetime_s: the lifetime of the
	 * tickets issued from now on (0: the backend's default; at most
	 * 604800, RFC 8446); set it before the context is in use: changing it
	 * later only reaches TLS 1.3 tickets.  A context made without
	 * ticket_key: TETHER_ERR_INVALID. */
	int (*tls_ctx_set_tickets)(tether_tls_ctx *c, const unsigned char *keys,
	                           size_t len, uint32_t lifetime_s,
	                           tether_error *err);
	/* Server role, after tls_pinned, on a TLS 1.3 session whose client
	 * holds a ticket from it: if that ticket is at least half its
	 * lifetime old, send a fresh one (made with the context's current
	 * key) through io.write.  Returns the seconds until the next call
	 * can do something (> 0), 0 if none ever will (TLS 1.2, no tickets,
	 * a client that got none), or negative on failure (the session
	 * failed, as after a failed tls_write). */
	int (*tls_refresh_ticket)(tether_tls *t, tether_error *err);
	/* Client role: how many sessions the server has given this
	 * connection so far (tickets received, TLS 1.3 ones after the
	 * handshake included).  When it changes, tls_get_session returns a
	 * newer session than before. */
	unsigned (*tls_sessions_received)(tether_tls *t);
} tether_provider;

/* The one exported symbol.  Checks host->abi_major, sets *table and
 * *ctx.  Must not print. */
typedef int (*tether_provider_init_fn)(const tether_host *host,
                                       const tether_provider **table,
                                       tether_provider_ctx **ctx,
                                       tether_error *err);

#ifdef __cplusplus
}
#endif
#endif /* TETHER_PROVIDER_H */
