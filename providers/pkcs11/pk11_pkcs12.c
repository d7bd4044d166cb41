/*
 * pk11_pkcs12.c: PKCS#12 and the token.  Export is refused (the key never
 * leaves the token; the certificate alone can be exported as PEM).  Import
 * parses and checks the file exactly as the openssl provider does
 * (providers/common/ossl_import.c), then writes the key onto the token as
 * a private-key object with CKA_SENSITIVE true and CKA_EXTRACTABLE false,
 * its public key and the certificate, all under one fresh CKA_ID; the
 * key's components are wiped from memory at once.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "pk11_int.h"

#define NCOMP 8

int pk11_identity_export_pkcs12(tether_provider_ctx *p, int slot,
                                const char *password, int legacy,
                                unsigned char **out, size_t *out_len,
                                tether_error *err)
{
	(void)slot;
	(void)password;
	(void)legacy;
	(void)out;
	(void)out_len;
	return pk11_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE, CKR_OK,
	                    "the private key is held in the HSM (PKCS#11 token%s%s) and "
	                    "cannot be exported; export the certificate alone with "
	                    "--export-pem", p && p->token_label[0] ? " " : "",
	                    p && p->token_label[0] ? p->token_label : "");
}

struct comp {
	unsigned char *b;
	int len;
};

static void comps_free(struct comp *c, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (c[i].b != NULL)
			OPENSSL_clear_free(c[i].b, (size_t)c[i].len);
}

static int bn_param(EVP_PKEY *key, const char *name, struct comp *c)
{
	BIGNUM *bn = NULL;

	if (!EVP_PKEY_get_bn_param(key, name, &bn))
		return -1;
	c->len = BN_num_bytes(bn);
	c->b = OPENSSL_secure_malloc(c->len > 0 ? (size_t)c->len : 1);
	if (c->b == NULL) {
		BN_clear_free(bn);
		return -1;
	}
	BN_bn2bin(bn, c->b);
	BN_clear_free(bn);
	return 0;
}

struct imp_arg {
	X509 *cert;
	EVP_PKEY *key;
};

static int imp_store(tether_provider_ctx *p, const unsigned char *id, void *varg,
                     tether_error *err)
{
	struct imp_arg *a = varg;
	CK_OBJECT_CLASS cpriv = CKO_PRIVATE_KEY, cpub = CKO_PUBLIC_KEY;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_KEY_TYPE kt;
	CK_ATTRIBUTE priv[24], pub[12];
	CK_ULONG np = 0, nu = 0;
	CK_OBJECT_HANDLE h;
	struct comp c[NCOMP];
	unsigned char ecparams[16], *point_os = NULL;
	unsigned char point[160];
	size_t plen = 0;
	char label[80], group[32];
	int is_rsa = EVP_PKEY_get_base_id(a->key) == EVP_PKEY_RSA;
	int r, i, eplen = 0, oslen;
	CK_RV rv;

	memset(c, 0, sizeof(c));
	pk11_label(p, label, sizeof(label));
	priv[np++] = (CK_ATTRIBUTE){ CKA_CLASS, &cpriv, sizeof(cpriv) };
	pub[nu++] = (CK_ATTRIBUTE){ CKA_CLASS, &cpub, sizeof(cpub) };
	priv[np++] = (CK_ATTRIBUTE){ CKA_KEY_TYPE, &kt, sizeof(kt) };
	pub[nu++] = (CK_ATTRIBUTE){ CKA_KEY_TYPE, &kt, sizeof(kt) };
	priv[np++] = (CK_ATTRIBUTE){ CKA_TOKEN, &yes, sizeof(yes) };
	priv[np++] = (CK_ATTRIBUTE){ CKA_PRIVATE, &yes, sizeof(yes) };
	priv[np++] = (CK_ATTRIBUTE){ CKA_SENSITIVE, &yes, sizeof(yes) };
	priv[np++] = (CK_ATTRIBUTE){ CKA_EXTRACTABLE, &no, sizeof(no) };
	priv[np++] = (CK_ATTRIBUTE){ CKA_SIGN, &yes, sizeof(yes) };
	priv[np++] = (CK_ATTRIBUTE){ CKA_ID, (void *)id, PK11_ID_LEN };
	priv[np++] = (CK_ATTRIBUTE){ CKA_LABEL, label, strlen(label) };
	pub[nu++] = (CK_ATTRIBUTE){ CKA_TOKEN, &yes, sizeof(yes) };
	pub[nu++] = (CK_ATTRIBUTE){ CKA_PRIVATE, &no, sizeof(no) };
	pub[nu++] = (CK_ATTRIBUTE){ CKA_VERIFY, &yes, sizeof(yes) };
	pub[nu++] = (CK_ATTRIBUTE){ CKA_ID, (void *)id, PK11_ID_LEN };
	pub[nu++] = (CK_ATTRIBUTE){ CKA_LABEL, label, strlen(label) };

	if (is_rsa) {
		static const char *const names[NCOMP] = {
			OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D,
			OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2,
			OSSL_PKEY_PARAM_RSA_EXPONENT1, OSSL_PKEY_PARAM_RSA_EXPONENT2,
			OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
		};
		static const CK_ATTRIBUTE_TYPE types[NCOMP] = {
			CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT,
			CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2,
			CKA_COEFFICIENT,
		};

		kt = CKK_RSA;
		for (i = 0; i < NCOMP; i++) {
			if (bn_param(a->key, names[i], &c[i]) < 0) {
				r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
				                 "the RSA key lacks its CRT components; it cannot be "
				                 "put on the token");
				goto out;
			}
			priv[np++] = (CK_ATTRIBUTE){ types[i], c[i].b, (CK_ULONG)c[i].len };
			if (i < 2)
				pub[nu++] = (CK_ATTRIBUTE){ types[i], c[i].b, (CK_ULONG)c[i].len };
		}
	} else {
		const CK_BYTE *oid;

		kt = CKK_EC;
		if (!EVP_PKEY_get_utf8_string_param(a->key, OSSL_PKEY_PARAM_GROUP_NAME,
		                                    group, sizeof(group), NULL) ||
		    bn_param(a->key, OSSL_PKEY_PARAM_PRIV_KEY, &c[0]) < 0 ||
		    !EVP_PKEY_get_octet_string_param(a->key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
		                                     point, sizeof(point), &plen)) {
			r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
			                 "cannot read the EC key's components");
			goto out;
		}
		if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0) {
			static const CK_BYTE o[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
			oid = o;
			eplen = sizeof(o);
		} else {
			static const CK_BYTE o[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
			oid = o;
			eplen = sizeof(o);
		}
		memcpy(ecparams, oid, (size_t)eplen);
		/* CKA_EC_POINT is the DER OCTET STRING of the encoded point. */
		{
			ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();

			oslen = -1;
			if (os != NULL && ASN1_OCTET_STRING_set(os, point, (int)plen))
				oslen = i2d_ASN1_OCTET_STRING(os, &point_os);
			ASN1_OCTET_STRING_free(os);
			if (oslen <= 0) {
				r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
				                 "cannot encode the EC public key");
				goto out;
			}
		}
		priv[np++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, ecparams, (CK_ULONG)eplen };
		priv[np++] = (CK_ATTRIBUTE){ CKA_VALUE, c[0].b, (CK_ULONG)c[0].len };
		pub[nu++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, ecparams, (CK_ULONG)eplen };
		pub[nu++] = (CK_ATTRIBUTE){ CKA_EC_POINT, point_os, (CK_ULONG)oslen };
	}

	rv = p->fl->C_CreateObject(p->sess, priv, np, &h);
	if (rv != CKR_OK && pk11_recover_locked(p, rv, err))
		rv = p->fl->C_CreateObject(p->sess, priv, np, &h);
	if (rv == CKR_OK)
		rv = p->fl->C_CreateObject(p->sess, pub, nu, &h);
	if (rv != CKR_OK) {
		r = pk11_err_set(err, TETHER_ERR_IO, -1, rv,
		                 "cannot write the imported key onto token '%s'", p->token_label);
		goto out;
	}
	r = pk11_store_cert_locked(p, id, a->cert, err);
out:
	comps_free(c, NCOMP);
	OPENSSL_cleanse(priv, sizeof(priv));
	OPENSSL_free(point_os);
	return r;
}

int pk11_identity_import(tether_provider_ctx *p, int slot,
                         const unsigned char *data, size_t len,
                         const char *password, tether_error *err)
{
	struct imp_arg a = { NULL, NULL };
	int r;

	if (pk11_slot_name(slot) == NULL)
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, CKR_OK,
		                    "unknown identity slot %d", slot);
	r = pk11_identity_exists(p, slot, err);
	if (r < 0)
		return r;
	if (r == 1)
		return pk11_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_NONE, CKR_OK,
		                    "the %s identity slot is in use: remove or promote it first",
		                    pk11_slot_name(slot));
	r = ossl_parse_identity(&p->host, data, len, password, &a.cert, &a.key, err);
	if (r < 0)
		return r;
	r = pk11_slot_create(p, slot, imp_store, &a, err);
	if (r == 0)
		pk11_log(p, TETHER_LOG_INFO, "prov",
		         "imported an identity onto token '%s' in the %s slot (key "
		         "non-extractable)", p->token_label, pk11_slot_name(slot));
	X509_free(a.cert);
	EVP_PKEY_free(a.key);
	return r;
}

int pk11_identity_peek(tether_provider_ctx *p, const unsigned char *data,
                       size_t len, const char *password, unsigned char **der,
                       size_t *der_len, tether_error *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	unsigned char *buf = NULL, *q;
	int r, n;

	r = ossl_parse_identity(&p->host, data, len, password, &cert, &key, err);
	if (r < 0)
		return r;
	n = i2d_X509(cert, NULL);
	if (n <= 0 || (buf = malloc((size_t)n)) == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "cannot encode the certificate");
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
