/*
 * ossl_identity_common.c: the identity object shared by the OpenSSL-based
 * providers (certificate + private key handle + the certificate's DER).
 *
 * libctx/propq are borrowed: they belong to the provider that made the
 * identity (NULL = the default library context) and must outlive it.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdlib.h>

#include <openssl/crypto.h>

#include "ossl_common.h"

/* Takes ownership of cert and key, also on failure (both are freed). */
int ossl_identity_wrap(X509 *cert, EVP_PKEY *key, OSSL_LIB_CTX *libctx,
                       const char *propq, tether_identity **out,
                       tether_error *err)
{
	tether_identity *id = NULL;
	unsigned char *der = NULL;
	int n, r;

	if (cert == NULL || key == NULL || out == NULL) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                 "identity needs a certificate and a key");
		goto fail;
	}
	n = i2d_X509(cert, &der);
	if (n <= 0) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_BAD_INPUT,
		                 "cannot encode the certificate as DER");
		goto fail;
	}
	id = calloc(1, sizeof(*id));
	if (id == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "out of memory");
		goto fail;
	}
	id->cert = cert;
	id->key = key;
	id->der = der;
	id->der_len = (size_t)n;
	id->libctx = libctx;
	id->propq = propq;
	*out = id;
	return 0;

fail:
	OPENSSL_free(der);
	X509_free(cert);
	EVP_PKEY_free(key);
	return r;
}

int ossl_identity_cert_der(const tether_identity *id,
                           const unsigned char **der, size_t *len)
{
	if (id == NULL || der == NULL || len == NULL || id->der == NULL)
		return TETHER_ERR_INVALID;
	*der = id->der;
	*len = id->der_len;
	return 0;
}

void ossl_identity_free(tether_identity *id)
{
	if (id == NULL)
		return;
	X509_free(id->cert);
	EVP_PKEY_free(id->key);    /* EVP_PKEY_free wipes key material */
	OPENSSL_free(id->der);
	free(id);
}
