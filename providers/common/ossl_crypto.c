/*
 * ossl_crypto.c: crypto helpers the core asks for through the ABI:
 * digests (one-shot and streaming), certificate fields, random bytes.
 *
 * Digest output: out must hold the algorithm's full length
 * (TETHER_SHA256_LEN or TETHER_SHA1_LEN); *out_len is set to the length
 * written (it is not read as a capacity).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1           /* timegm */
#endif

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "ossl_common.h"

struct tether_digest_ctx {
	EVP_MD_CTX *md;
	size_t len;                 /* digest length */
};

static const EVP_MD *digest_md(int alg, size_t *len)
{
	switch (alg) {
	case TETHER_DIGEST_SHA256:
		*len = TETHER_SHA256_LEN;
		return EVP_sha256();
	case TETHER_DIGEST_SHA1:
		*len = TETHER_SHA1_LEN;
		return EVP_sha1();
	default:
		return NULL;
	}
}

int ossl_digest(int alg, const void *data, size_t len, unsigned char *out,
                size_t *out_len, tether_error *err)
{
	const EVP_MD *md;
	unsigned int n = 0;
	size_t dlen;

	md = digest_md(alg, &dlen);
	if (md == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_UNSUPPORTED,
		                    "unknown digest algorithm %d", alg);
	if (out == NULL || out_len == NULL || (data == NULL && len != 0))
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "digest: missing argument");
	if (!EVP_Digest(len ? data : "", len, out, &n, md, NULL) ||
	    n != dlen)
		return ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                    "%s digest failed", EVP_MD_get0_name(md));
	*out_len = n;
	return 0;
}

int ossl_digest_new(int alg, tether_digest_ctx **out, tether_error *err)
{
	tether_digest_ctx *d;
	const EVP_MD *md;
	size_t dlen;

	md = digest_md(alg, &dlen);
	if (md == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_UNSUPPORTED,
		                    "unknown digest algorithm %d", alg);
	if (out == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "digest_new: missing argument");
	d = calloc(1, sizeof(*d));
	if (d == NULL)
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	d->len = dlen;
	d->md = EVP_MD_CTX_new();
	if (d->md == NULL || !EVP_DigestInit_ex(d->md, md, NULL)) {
		ossl_digest_free(d);
		return ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                    "cannot start a %s digest",
		                    EVP_MD_get0_name(md));
	}
	*out = d;
	return 0;
}

int ossl_digest_update(tether_digest_ctx *d, const void *data, size_t len)
{
	if (d == NULL || (data == NULL && len != 0))
		return TETHER_ERR_INVALID;
	if (len == 0)
		return 0;
	if (!EVP_DigestUpdate(d->md, data, len)) {
		ERR_clear_error();
		return TETHER_ERR_CRYPTO;
	}
	return 0;
}

/* Always frees d, whether it succeeds or not. */
int ossl_digest_final(tether_digest_ctx *d, unsigned char *out,
                      size_t *out_len)
{
	unsigned int n = 0;
	int r = 0;

	if (d == NULL)
		return TETHER_ERR_INVALID;
	if (out == NULL || out_len == NULL) {
		r = TETHER_ERR_INVALID;
	} else if (!EVP_DigestFinal_ex(d->md, out, &n) || n != d->len) {
		ERR_clear_error();
		r = TETHER_ERR_CRYPTO;
	} else {
		*out_len = n;
	}
	ossl_digest_free(d);
	return r;
}

void ossl_digest_free(tether_digest_ctx *d)
{
	if (d == NULL)
		return;
	EVP_MD_CTX_free(d->md);
	free(d);
}

int ossl_random_bytes(void *buf, size_t len)
{
	unsigned char *p = buf;

	if (buf == NULL && len != 0)
		return TETHER_ERR_INVALID;
	while (len > 0) {
		int chunk = len > INT_MAX ? INT_MAX : (int)len;

		if (RAND_bytes(p, chunk) != 1) {
			ERR_clear_error();
			return TETHER_ERR_CRYPTO;
		}
		p += chunk;
		len -= (size_t)chunk;
	}
	return 0;
}

/* ---- cert_info ---- */

/* Copy with truncation (display fields). */
static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int name_rfc2253(const X509_NAME *name, char *out, size_t cap)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p;
	long n;

	if (b == NULL)
		return -1;
	if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) {
		BIO_free(b);
		return -1;
	}
	n = BIO_get_mem_data(b, &p);
	if (n < 0)
		n = 0;
	if ((size_t)n >= cap)
		n = (long)cap - 1;   /* truncate; display only */
	memcpy(out, p, (size_t)n);
	out[n] = '\0';
	BIO_free(b);
	return 0;
}

static int asn1_time_epoch(const ASN1_TIME *t, int64_t *out)
{
	struct tm tm;
	time_t s;

	memset(&tm, 0, sizeof(tm));
	if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
		return -1;
	s = timegm(&tm);
	if (s == (time_t)-1 && !(tm.tm_year == 69 && tm.tm_mon == 11 &&
	                         tm.tm_mday == 31))
		return -1;
	*out = (int64_t)s;
	return 0;
}

/* SEC 2 names, as TLS and DESIGN.md spell groups. */
static const char *curve_name(int nid)
{
	switch (nid) {
	case NID_X9_62_prime256v1: return "secp256r1";
	case NID_secp384r1: return "secp384r1";
	case NID_secp521r1: return "secp521r1";
	default: return nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
	}
}

static void key_fields(EVP_PKEY *pk, tether_cert_info *ci)
{
	const char *t;
	size_t i;

	switch (EVP_PKEY_get_base_id(pk)) {
	case EVP_PKEY_RSA: t = "rsa"; break;
	case EVP_PKEY_RSA_PSS: t = "rsa-pss"; break;
	case EVP_PKEY_EC: t = "ec"; break;
	case EVP_PKEY_ED25519: t = "ed25519"; break;
	case EVP_PKEY_ED448: t = "ed448"; break;
	default:
		t = EVP_PKEY_get0_type_name(pk);
		if (t == NULL)
			t = "unknown";
	}
	copy_str(ci->key_type, sizeof(ci->key_type), t);
	for (i = 0; ci->key_type[i] != '\0'; i++)
		ci->key_type[i] = (char)tolower((unsigned char)ci->key_type[i]);
	ci->key_bits = EVP_PKEY_get_bits(pk);
	if (ci->key_bits < 0)
		ci->key_bits = 0;

	if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC) {
		char grp[64];
		const char *c = NULL;

		if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME,
		                                   grp, sizeof(grp), NULL)) {
			c = curve_name(OBJ_sn2nid(grp));
			if (c == NULL)
				c = curve_name(EC_curve_nist2nid(grp));
			if (c == NULL)
				c = grp;
		}
		copy_str(ci->curve, sizeof(ci->curve), c ? c : "");
	}
	ERR_clear_error();
}

int ossl_cert_info(const unsigned char *der, size_t len,
                   tether_cert_info *out, tether_error *err)
{
	tether_cert_info ci;
	const unsigned char *p = der;
	X509 *x = NULL;
	EVP_PKEY *pk;
	const ASN1_INTEGER *sn;
	BIGNUM *bn = NULL;
	char *hex = NULL;
	int nid, r;

	if (der == NULL || out == NULL || len == 0 || len > LONG_MAX)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "cert_info: no certificate given");
	memset(&ci, 0, sizeof(ci));

	x = d2i_X509(NULL, &p, (long)len);
	if (x == NULL || p != der + len) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "not a DER X.509 certificate");
		goto out;
	}
	if (name_rfc2253(X509_get_subject_name(x), ci.subject,
	                 sizeof(ci.subject)) < 0 ||
	    name_rfc2253(X509_get_issuer_name(x), ci.issuer,
	                 sizeof(ci.issuer)) < 0) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot print the certificate's names");
		goto out;
	}

	sn = X509_get0_serialNumber(x);
	bn = sn ? ASN1_INTEGER_to_BN(sn, NULL) : NULL;
	hex = bn ? BN_bn2hex(bn) : NULL;
	if (hex == NULL) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "cannot read the certificate's serial number");
		goto out;
	}
	{
		size_t i, n = strlen(hex), o = 0;
		int neg = hex[0] == '-';

		if (neg)
			ci.serial_hex[o++] = '-';
		if ((n - (size_t)neg) % 2 && o < sizeof(ci.serial_hex) - 1)
			ci.serial_hex[o++] = '0';
		for (i = (size_t)neg; i < n && o < sizeof(ci.serial_hex) - 1; i++)
			ci.serial_hex[o++] = (char)tolower((unsigned char)hex[i]);
		ci.serial_hex[o] = '\0';
	}

	if (asn1_time_epoch(X509_get0_notBefore(x), &ci.not_before) < 0 ||
	    asn1_time_epoch(X509_get0_notAfter(x), &ci.not_after) < 0) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "cannot read the certificate's validity");
		goto out;
	}

	nid = X509_get_signature_nid(x);
	copy_str(ci.cert_signature_algorithm, sizeof(ci.cert_signature_algorithm),
	         nid != NID_undef && OBJ_nid2ln(nid) ? OBJ_nid2ln(nid) : "unknown");

	pk = X509_get0_pubkey(x);
	if (pk == NULL) {
		r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                 "the certificate's public key type is not supported");
		goto out;
	}
	key_fields(pk, &ci);

	ci.self_signed = X509_self_signed(x, 1) == 1;
	ERR_clear_error();

	*out = ci;
	r = 0;
out:
	OPENSSL_free(hex);
	BN_free(bn);
	X509_free(x);
	return r;
}
