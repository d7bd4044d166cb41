/*
 * Internal header of the openssl provider (tether-openssl.so).
 *
 * Identity storage, under <state_dir>/identity/ (directory 0700):
 *
 *   .lock                  sidecar lock file, flock()ed around slot changes
 *                          (LOCK_EX) and slot reads (LOCK_SH)
 *   current  -> id-<hex>   each slot is a symbolic link to a generation
 *   staged   -> id-<hex>   directory; an empty slot has no link
 *   previous -> id-<hex>
 *   id-<16 hex>/           one identity, never modified once linked (0700)
 *       key.pem            PKCS#8 PEM private key, 0600, optionally
 *                          encrypted (PBES2 AES-256-CBC)
 *       cert.pem           X.509 certificate, PEM, 0644
 *
 * A slot changes with one atomic rename() or symlink() of its link, so a
 * key and its certificate always change together, and promote never leaves
 * the instance without a current identity (see ossl_identity.c).
 */
#ifndef TETHER_OSSL_INT_H
#define TETHER_OSSL_INT_H

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "tether/provider.h"
#include "ossl_common.h"

struct tether_provider_ctx {
	tether_host host;          /* copy of the core's host services */
	const char *state_dir;     /* the core's string, valid until deinit */
	char *identity_dir;        /* <state_dir>/identity, malloc'd; NULL if no state_dir */
};

/* Config key naming a file whose first line is the key passphrase. */
#define OSSL_CONF_KEY_PASSPHRASE_FILE "key-passphrase-file"

/* ---- ossl_provider.c ---- */
void ossl_log(tether_provider_ctx *p, int level, const char *area,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
const char *ossl_config(tether_provider_ctx *p, const char *key);

/* ---- ossl_identity.c ---- */
int ossl_prov_identity_generate(tether_provider_ctx *p, int slot,
                                const tether_keygen_params *params,
                                tether_error *err);
int ossl_prov_identity_promote(tether_provider_ctx *p, tether_error *err);
int ossl_prov_identity_remove(tether_provider_ctx *p, int slot,
                              tether_error *err);
int ossl_prov_identity_exists(tether_provider_ctx *p, int slot,
                              tether_error *err);
int ossl_prov_identity_load(tether_provider_ctx *p, int slot,
                            tether_identity **out, tether_error *err);

/* Shared with ossl_pkcs12.c: */
/* Read and verify the cert and key of slot (NOT_FOUND if empty). */
int ossl_slot_read(tether_provider_ctx *p, int slot, X509 **cert,
                   EVP_PKEY **key, tether_error *err);
/* Store cert and key into the empty slot (EXISTS if in use).  passphrase
 * NULL: the configured policy (key-passphrase-file) applies; "" is
 * refused. Does not take ownership. */
int ossl_slot_store(tether_provider_ctx *p, int slot, X509 *cert,
                    EVP_PKEY *key, const char *passphrase, tether_error *err);
const char *ossl_slot_name(int slot);

/* ---- ossl_pkcs12.c ---- */
int ossl_prov_identity_export_pkcs12(tether_provider_ctx *p, int slot,
                                     const char *password, int legacy,
                                     unsigned char **out, size_t *out_len,
                                     tether_error *err);
int ossl_prov_identity_peek(tether_provider_ctx *p, const unsigned char *data, size_t len,
                            const char *password, unsigned char **der, size_t *der_len,
                            tether_error *err);
int ossl_prov_identity_load_data(tether_provider_ctx *p, const unsigned char *data, size_t len,
                                 const char *password, tether_identity **out, tether_error *err);
int ossl_prov_identity_import(tether_provider_ctx *p, int slot,
                              const unsigned char *data, size_t len,
                              const char *password, tether_error *err);

#endif
