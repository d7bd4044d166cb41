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

struct ossl_keybox {
	CRYPTO_RWLOCK *lock;    /* guards key and gen */
	int refs;               /* CRYPTO_atomic_add */
	EVP_PKEY *key;
	unsigned gen;
};

ossl_keybox *ossl_keybox_new(EVP_PKEY *key)
{
	ossl_keybox *b;

	if (key == NULL)
		return NULL;
	b = calloc(1, sizeof(*b));
	if (b == NULL)
		return NULL;
	b->lock = CRYPTO_THREAD_lock_new();
	if (b->lock == NULL || !EVP_PKEY_up_ref(key)) {
		CRYPTO_THREAD_lock_free(b->lock);
		free(b);
		return NULL;
	}
	b->key = key;
	b->refs = 1;
	return b;
}

ossl_keybox *ossl_keybox_ref(ossl_keybox *b)
{
	int n;

	if (b != NULL)
		CRYPTO_atomic_add(&b->refs, 1, &n, b->lock);
	return b;
}

int ossl_keybox_refs(ossl_keybox *b)
{
	int n = 0;

	if (b != NULL)
		CRYPTO_atomic_add(&b->refs, 0, &n, b->lock);
	return n;
}

void ossl_keybox_unref(ossl_keybox *b)
{
	int n;

	if (b == NULL)
		return;
	CRYPTO_atomic_add(&b->refs, -1, &n, b->lock);
	if (n > 0)
		return;
	EVP_PKEY_free(b->key);
	CRYPTO_THREAD_lock_free(b->lock);
	free(b);
}

EVP_PKEY *ossl_keybox_get1(ossl_keybox *b, unsigned *gen)
{
	EVP_PKEY *k = NULL;

	if (b == NULL || !CRYPTO_THREAD_read_lock(b->lock))
		return NULL;
	if (EVP_PKEY_up_ref(b->key))
		k = b->key;
	if (gen != NULL)
		*gen = b->gen;
	CRYPTO_THREAD_unlock(b->lock);
	return k;
}

unsigned ossl_keybox_gen(ossl_keybox *b)
{
	unsigned g = 0;

	if (b != NULL && CRYPTO_THREAD_read_lock(b->lock)) {
		g = b->gen;
		CRYPTO_THREAD_unlock(b->lock);
	}
	return g;
}

int ossl_keybox_set(ossl_keybox *b, EVP_PKEY *key)
{
	EVP_PKEY *old;

	if (b == NULL || key == NULL || !EVP_PKEY_up_ref(key))
		return 0;
	if (!CRYPTO_THREAD_write_lock(b->lock)) {
		EVP_PKEY_free(key);
		return 0;
	}
	old = b->key;
	b->key = key;
	b->gen++;
	CRYPTO_THREAD_unlock(b->lock);
	EVP_PKEY_free(old);     /* freed when the last reader lets it go */
	return 1;
}

EVP_PKEY *ossl_identity_get1_key(const tether_identity *id, unsigned *gen)
{
	if (id == NULL)
		return NULL;
	if (id->box != NULL)
		return ossl_keybox_get1(id->box, gen);
	if (gen != NULL)
		*gen = 0;
	return id->key != NULL && EVP_PKEY_up_ref(id->key) ? id->key : NULL;
}

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
	ossl_keybox_unref(id->box);
	OPENSSL_free(id->der);
	free(id);
}
