/*
 * ossl_pkcs12.c: export an identity slot as PKCS#12, import PKCS#12 or PEM
 * into an empty slot.
 *
 * Export: AES-256-CBC with PBKDF2-HMAC-SHA256 for key and certificate,
 * MAC HMAC-SHA256 (what current Windows imports); legacy: PBE-SHA1-3DES for
 * both and a SHA-1 MAC (older Windows).  Neither needs OpenSSL's legacy
 * provider.
 *
 * Import detects PKCS#12 (DER) or PEM by content and checks everything
 * (key matches certificate) before anything is written; the parsing is
 * shared with the pkcs11 provider (providers/common/ossl_import.c).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include "ossl_int.h"

#define P12_ITER_MODERN  10000
#define P12_ITER_LEGACY  2048
#define P12_FRIENDLY     "tether"

/* ------------------------------------------------------------------ */
/* Export                                                              */
/* ------------------------------------------------------------------ */

int ossl_prov_identity_export_pkcs12(tether_provider_ctx *p, int slot,
                                     const char *password, int legacy,
                                     unsigned char **out, size_t *out_len,
                                     tether_error *err)
{
	int nid = legacy ? NID_pbe_WithSHA1And3_Key_TripleDES_CBC : NID_aes_256_cbc;
	int iter = legacy ? P12_ITER_LEGACY : P12_ITER_MODERN;
	const EVP_MD *mac = legacy ? EVP_sha1() : EVP_sha256();
	unsigned char *der = NULL, *buf;
	PKCS12 *p12 = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	int n, r;

	if (out == NULL || out_len == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "export_pkcs12: missing argument");
	if (password == NULL || password[0] == '\0')
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_PASSWORD,
		                    "a PKCS#12 export needs a non-empty password");
	r = ossl_slot_read(p, slot, &cert, &key, err);
	if (r < 0)
		return r;

	/* mac_iter -1: no MAC here; set below with the digest we want. */
	p12 = PKCS12_create(password, P12_FRIENDLY, key, cert, NULL, nid, nid,
	                    iter, -1, 0);
	if (p12 == NULL ||
	    !PKCS12_set_mac(p12, password, -1, NULL, 0, iter, mac)) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot build the PKCS#12 of the %s identity",
		                 ossl_slot_name(slot));
		goto out;
	}
	n = i2d_PKCS12(p12, &der);
	if (n <= 0) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot encode the PKCS#12");
		goto out;
	}
	buf = malloc((size_t)n);
	if (buf == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "out of memory");
		goto out;
	}
	memcpy(buf, der, (size_t)n);
	*out = buf;
	*out_len = (size_t)n;
	r = 0;
out:
	OPENSSL_free(der);
	PKCS12_free(p12);
	X509_free(cert);
	EVP_PKEY_free(key);
	return r;
}

int ossl_prov_identity_peek(tether_provider_ctx *p, const unsigned char *data, size_t len,
                            const char *password, unsigned char **der, size_t *der_len,
                            tether_error *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	unsigned char *buf = NULL, *q;
	int r, n;

	r = ossl_parse_identity(&p->host, data, len, password, &cert, &key, err);
	if (r < 0)
		return r;
	n = i2d_X509(cert, NULL);
	if (n <= 0) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_BAD_INPUT,
		                 "cannot encode the certificate");
		goto out;
	}
	buf = malloc((size_t)n);
	if (buf == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	q = buf;
	i2d_X509(cert, &q);
	*der = buf;
	*der_len = (size_t)n;
	r = 0;
out:
	X509_free(cert);
	EVP_PKEY_free(key);
	return r;
}

int ossl_prov_identity_load_data(tether_provider_ctx *p, const unsigned char *data, size_t len,
                                 const char *password, tether_identity **out, tether_error *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	int r;

	r = ossl_parse_identity(&p->host, data, len, password, &cert, &key, err);
	if (r < 0)
		return r;
	/* wrap takes ownership of both, even when it fails */
	return ossl_identity_wrap(cert, key, NULL, NULL, out, err);
}

int ossl_prov_identity_import(tether_provider_ctx *p, int slot,
                              const unsigned char *data, size_t len,
                              const char *password, tether_error *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	int r;

	if (ossl_slot_name(slot) == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "unknown identity slot %d", slot);
	/* Fail early when the slot is taken (checked again under the lock). */
	r = ossl_prov_identity_exists(p, slot, err);
	if (r < 0)
		return r;
	if (r == 1)
		return ossl_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_NONE,
		                    "the %s identity slot is in use: remove or promote it first",
		                    ossl_slot_name(slot));
	r = ossl_parse_identity(&p->host, data, len, password, &cert, &key, err);
	if (r < 0)
		return r;
	r = ossl_slot_store(p, slot, cert, key, NULL, err);
	if (r == 0)
		ossl_log(p, TETHER_LOG_INFO, "prov", "imported an identity into the %s slot",
		         ossl_slot_name(slot));
	X509_free(cert);
	EVP_PKEY_free(key);
	return r;
}
