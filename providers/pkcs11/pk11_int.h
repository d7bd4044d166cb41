/*
 * Internal header of the pkcs11 provider (tether-pkcs11.so).
 *
 * Two users of one PKCS#11 module live in the process, and neither may
 * hurt the other:
 *   - this provider's own session (key generation, import, object
 *     management), through a module loaded by p11-kit as a *managed*
 *     module (p11_kit_module_load without P11_KIT_MODULE_UNMANAGED), and
 *   - pkcs11-provider (an OpenSSL 3 provider) that does the private-key
 *     operations of TLS and certificate signing, loaded into a private
 *     OSSL_LIB_CTX so it never affects the rest of the process.  When the
 *     module is registered with p11-kit, pkcs11-provider is pointed at
 *     p11-kit-proxy.so (also managed by the same libp11-kit: its
 *     C_Finalize and C_CloseAllSessions only touch its own sessions);
 *     otherwise it is pointed at the module itself with the "no-deinit"
 *     quirk, so that only p11-kit ever finalizes the module.
 *
 * Identity slots.  Each identity is three token objects (private key,
 * public key, certificate) sharing one random 8-byte CKA_ID and the label
 * "tether-<instance>".  Which CKA_ID is current/staged/previous is kept in
 * <state_dir>/pkcs11-slots (0600, written atomically), changed under an
 * flock() of <state_dir>/pkcs11-slots.lock:
 *
 *   current 0123456789abcdef
 *   staged  ...
 *
 * So promote is one atomic rename of that file and no key ever leaves
 * (or is rewritten on) the token.
 */
#ifndef TETHER_PK11_INT_H
#define TETHER_PK11_INT_H

#include <pthread.h>
#include <stddef.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>
#include <p11-kit/pkcs11.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "tether/provider.h"
#include "ossl_common.h"

#define PK11_ID_LEN 8
#define PK11_MAX_OLD_LIBCTX 32
/* While the token is gone, at most one attempt to bring it back (reopen
 * the session, log in, reload the keys) per this many milliseconds. */
#define PK11_RETRY_MS 2000

/* Config keys of [pkcs11]. */
#define PK11_CONF_MODULE   "module"
#define PK11_CONF_TOKEN    "token"
#define PK11_CONF_PIN_FILE "pin-file"

/* A key the provider handed out (in an identity) and reloads from the
 * token when the token comes back.  The registry holds its own reference
 * on the box; entries only the registry still holds are dropped. */
struct pk11_live {
	struct pk11_live *next;
	ossl_keybox *box;
	unsigned char id[PK11_ID_LEN];
};

struct tether_provider_ctx {
	tether_host host;          /* copy of the core's host services */
	pthread_mutex_t lock;      /* serializes this provider's own C_* calls */

	int opened;                /* the token is open (lazily, at first use) */
	char *module_path;         /* the module file p11-kit loaded */
	int registered;            /* registered with p11-kit: proxy for OpenSSL */
	P11KitUri *uri;            /* the [pkcs11] token URI */
	CK_FUNCTION_LIST *fl;      /* p11-kit managed module */
	int initialized;           /* p11_kit_module_initialize succeeded */
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE sess;    /* CK_INVALID_HANDLE when none */
	char token_label[33];      /* trailing blanks stripped */
	char *pin;                 /* wiped on free */
	char *pin_file;
	int have_pss;              /* CKM_RSA_PKCS_PSS: TLS 1.3 with RSA */
	int have_ec;               /* CKM_EC_KEY_PAIR_GEN */

	OSSL_LIB_CTX *libctx;      /* default + pkcs11-provider */
	OSSL_LIB_CTX *old_libctx[PK11_MAX_OLD_LIBCTX]; /* retired, freed at deinit */
	int n_old;

	char *map_path;            /* <state_dir>/pkcs11-slots */
	char *lock_path;

	/* Token loss and recovery (pk11_token.c).  recover_lock is taken
	 * before lock, never after. */
	struct pk11_live *live;    /* under lock */
	pthread_mutex_t recover_lock;
	int token_gone;            /* __atomic; 1 while the token is gone */
	int pin_refused;           /* under recover_lock: the PIN was refused
	                            * at a recovery; no automatic retry */
	uint64_t next_try_ms;      /* under recover_lock */
	uint64_t last_recovery_ms; /* under recover_lock */
	unsigned long recoveries;  /* under recover_lock */
};

/* ---- pk11_provider.c ---- */
void pk11_log(tether_provider_ctx *p, int level, const char *area,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
const char *pk11_config(tether_provider_ctx *p, const char *key);

/* ---- pk11_token.c: module, token, session, login, OpenSSL context ---- */
/* Open the module and token, log in, build the OpenSSL context (once).
 * Takes p->lock itself. */
int pk11_open(tether_provider_ctx *p, tether_error *err);
/* Close everything, in order (deinit). */
void pk11_close(tether_provider_ctx *p);
/* Called with p->lock held after a C_* call on p->sess failed with rv:
 * if rv means the session or login is gone (CKR_SESSION_HANDLE_INVALID,
 * CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN, CKR_DEVICE_REMOVED,
 * CKR_TOKEN_NOT_PRESENT, ...), reopen the session and log in again and
 * return 1 (the caller retries once); 0 when rv is another failure or the
 * reopen failed (err set then). */
int pk11_recover_locked(tether_provider_ctx *p, CK_RV rv, tether_error *err);
/* Rebuild the OpenSSL context after the token came back, when no
 * identity still uses the old one (which is kept until deinit). */
int pk11_libctx_renew_locked(tether_provider_ctx *p, tether_error *err);
/* A handshake (or another key operation) failed with rv, a token-class
 * PKCS#11 error (pk11_rv_token_class) seen in pkcs11-provider's errors.
 * stale: the session used a key that was already reloaded since (another
 * thread recovered).  Reopens the session, logs in and reloads every live
 * key from the token, or marks the token gone and retries at most every
 * PK11_RETRY_MS; logs once per change ("gone", "back").  Takes the locks
 * itself; may block on the token (handshakes run on worker threads). */
void pk11_token_failed(tether_provider_ctx *p, CK_RV rv, int stale);
/* Before a handshake: while the token is gone and a retry is due, try to
 * bring it back.  Cheap (one atomic read) while the token is present. */
void pk11_token_precheck(tether_provider_ctx *p);
/* The token answered again outside a recovery (an identity loaded):
 * while it is "gone", the next handshake retries at once (without waiting
 * for PK11_RETRY_MS), also after a refused PIN.  Takes recover_lock; call
 * without lock. */
void pk11_token_seen(tether_provider_ctx *p);
/* An RFC 7512 URI for the object with id on our token; malloc'd. */
char *pk11_object_uri(tether_provider_ctx *p, const unsigned char *id,
                      const char *type);

/* ---- pk11_identity.c ---- */
const char *pk11_slot_name(int slot);
int pk11_identity_generate(tether_provider_ctx *p, int slot,
                           const tether_keygen_params *params,
                           tether_error *err);
int pk11_identity_promote(tether_provider_ctx *p, tether_error *err);
int pk11_identity_remove(tether_provider_ctx *p, int slot, tether_error *err);
int pk11_identity_exists(tether_provider_ctx *p, int slot, tether_error *err);
int pk11_identity_load(tether_provider_ctx *p, int slot,
                       tether_identity **out, tether_error *err);
/* Reload the private key of every live identity from the token (p->lock
 * held), rebuilding the OpenSSL context if the current one cannot find
 * them; swap them in only when all loaded.  Returns how many, or < 0. */
int pk11_reload_keys_locked(tether_provider_ctx *p, tether_error *err);
/* Drop the registry (deinit; p->lock held). */
void pk11_live_free_locked(tether_provider_ctx *p);
/* Shared with pk11_pkcs12.c: */
/* Reserve slot (must be empty) under the lock, call fn to put objects with
 * a fresh CKA_ID on the token, then record the slot.  fn's objects are
 * destroyed if anything fails. */
typedef int (*pk11_store_fn)(tether_provider_ctx *p, const unsigned char *id,
                             void *arg, tether_error *err);
int pk11_slot_create(tether_provider_ctx *p, int slot, pk11_store_fn fn,
                     void *arg, tether_error *err);
/* Store cert as a certificate object with id (p->lock held). */
int pk11_store_cert_locked(tether_provider_ctx *p, const unsigned char *id,
                           X509 *cert, tether_error *err);
/* Destroy every object with id (p->lock held); best effort. */
void pk11_destroy_id_locked(tether_provider_ctx *p, const unsigned char *id);
/* Label of our objects ("tether-<instance>"). */
void pk11_label(tether_provider_ctx *p, char *buf, size_t len);

/* ---- pk11_pkcs12.c ---- */
int pk11_identity_export_pkcs12(tether_provider_ctx *p, int slot,
                                const char *password, int legacy,
                                unsigned char **out, size_t *out_len,
                                tether_error *err);
int pk11_identity_import(tether_provider_ctx *p, int slot,
                         const unsigned char *data, size_t len,
                         const char *password, tether_error *err);
int pk11_identity_peek(tether_provider_ctx *p, const unsigned char *data,
                       size_t len, const char *password, unsigned char **der,
                       size_t *der_len, tether_error *err);

/* ---- pk11_tls.c ---- */
int pk11_tls_ctx_new(tether_provider_ctx *p,
                     const tether_tls_ctx_params *params,
                     tether_tls_ctx **out, tether_error *err);
/* ossl_tls_handshake, plus: a pending recovery before the first step, the
 * reloaded key presented, and a token-class failure reported to
 * pk11_token_failed. */
int pk11_tls_handshake(tether_tls *t, tether_error *err);

/* ---- pk11_err.c ---- */
/* "CKR_PIN_INCORRECT" etc.; never NULL. */
const char *pk11_rv_name(CK_RV rv);
/* The category a PKCS#11 failure falls in. */
int pk11_rv_category(CK_RV rv);
/* Set err (code, category from rv unless category >= 0) with detail =
 * message + ": CKR_NAME (p11-kit's text)".  Returns code. */
int pk11_err_set(tether_error *err, int code, int category, CK_RV rv,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Does rv mean the session, login or token went away? */
int pk11_rv_session_lost(CK_RV rv);
/* ... or that, or that an object handle died with them (a key handle
 * kept by pkcs11-provider from before the token was reinserted)? */
int pk11_rv_token_class(CK_RV rv);

#endif
