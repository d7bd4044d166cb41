/*
 * ossl_cert.c: the self-signed certificate of a new identity, shared by the
 * openssl provider (key in memory) and the pkcs11 provider (key on the
 * token: X509_sign runs in the token's library context, so the signature
 * is made on the token).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ossl_common.h"

static const char *const key_type_names[TETHER_KEY__COUNT] = {
	"rsa2048", "rsa3072", "rsa4096", "ec-p256", "ec-p384",
};

const char *ossl_key_type_name(int key_type)
{
	if (key_type < 0 || key_type >= TETHER_KEY__COUNT)
		return "unknown";
	return key_type_names[key_type];
}

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
	int ok;

	if (ext == NULL)
		return 0;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

X509 *ossl_make_cert(EVP_PKEY *key, int key_type, const char *cn,
                     uint32_t days, OSSL_LIB_CTX *libctx, const char *propq)
{
	int is_rsa = key_type <= TETHER_KEY_RSA4096;
	const EVP_MD *md = key_type == TETHER_KEY_EC_P384 ? EVP_sha384() : EVP_sha256();
	unsigned char rnd[16];
	X509_NAME *name = NULL;
	BIGNUM *bn = NULL;
	X509V3_CTX v3;
	X509 *x;

	x = X509_new_ex(libctx, propq);
	if (x == NULL || !X509_set_version(x, X509_VERSION_3))
		goto fail;

	/* Random 128-bit positive serial (never zero). */
	if (RAND_bytes_ex(libctx, rnd, sizeof(rnd), 0) != 1)
		goto fail;
	rnd[0] |= 0x01;
	bn = BN_bin2bn(rnd, sizeof(rnd), NULL);
	if (bn == NULL || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
		goto fail;

	name = X509_NAME_new();
	if (name == NULL ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
	                                (const unsigned char *)cn, -1, -1, 0) ||
	    !X509_set_subject_name(x, name) || !X509_set_issuer_name(x, name))
		goto fail;

	/* Backdated an hour for peers whose clocks lag a little. */
	if (X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), (int)days, 0, NULL) == NULL)
		goto fail;

	if (!X509_set_pubkey(x, key))
		goto fail;

	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	if (!add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE") ||
	    !add_ext(x, &v3, NID_key_usage,
	             is_rsa ? "critical,digitalSignature,keyEncipherment"
	                    : "critical,digitalSignature") ||
	    !add_ext(x, &v3, NID_ext_key_usage, "serverAuth,clientAuth") ||
	    !add_ext(x, &v3, NID_subject_key_identifier, "hash"))
		goto fail;

	if (X509_sign(x, key, md) <= 0)
		goto fail;
	X509_NAME_free(name);
	BN_free(bn);
	return x;
fail:
	X509_NAME_free(name);
	BN_free(bn);
	X509_free(x);
	return NULL;
}

