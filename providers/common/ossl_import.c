/*
 * ossl_import.c: parse an identity to import (PKCS#12 or PEM, detected by
 * content) and check it completely: the key matches the certificate and is
 * of a type tether can use in TLS.  Shared by the openssl provider (which
 * stores the result in a key file) and the pkcs11 provider (which writes
 * it onto the token as non-extractable objects).  Stores nothing.
 *
 * A PKCS#12 that uses an algorithm the default library context lacks
 * (RC2-40, as older Windows writes) is parsed again in a private
 * OSSL_LIB_CTX with the "legacy" and "default" providers, made this
 * thread's default only for that parse; the key and certificate are then
 * re-encoded into the default context and the private context freed.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include "ossl_common.h"

#define IMPORT_MAX       (1024 * 1024)

static void host_log(const tether_host *h, int level, const char *area,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void host_log(const tether_host *h, int level, const char *area,
                     const char *fmt, ...)
{
	va_list ap;

	if (h == NULL || h->log == NULL)
		return;
	va_start(ap, fmt);
	h->log(h->host_arg, level, area, fmt, ap);
	va_end(ap);
}

int ossl_pw_cb(char *buf, int size, int rwflag, void *u)
{
	struct ossl_pw *pw = u;
	size_t n;

	(void)rwflag;
	if (pw == NULL)
		return -1;
	pw->asked = 1;
	if (pw->pw == NULL || size <= 0)
		return -1;
	n = strlen(pw->pw);
	if (n > (size_t)size) {
		pw->too_long = 1;
		return -1;
	}
	memcpy(buf, pw->pw, n);
	return (int)n;
}

/* ------------------------------------------------------------------ */
/* Error-queue classification                                          */
/* ------------------------------------------------------------------ */

enum {
	Q_UNSUPPORTED = 1 << 0,     /* an algorithm is missing from the libctx */
	Q_MAC_FAIL = 1 << 1,
	Q_DECRYPT = 1 << 2,         /* decryption failed (wrong password?) */
	Q_NO_START = 1 << 3,        /* PEM: no (further) PEM block */
	Q_ANY = 1 << 4,             /* the queue was not empty */
};

/* Classify the queue and leave it as it was (for ossl_err_set's detail).
 * The strings an entry points to die with it, so they are copied. */
static int queue_scan(void)
{
	struct ent {
		unsigned long e;
		int has_data;
		char data[160];
	} ents[16];
	int n = 0, i, q = 0, flags;
	const char *data;
	unsigned long e;

	while (n < 16 && (e = ERR_get_error_all(NULL, NULL, NULL, &data,
	                                        &flags)) != 0) {
		int lib = ERR_GET_LIB(e), reason = ERR_GET_REASON(e);

		ents[n].e = e;
		ents[n].has_data = (flags & ERR_TXT_STRING) && data != NULL;
		if (ents[n].has_data) {
			size_t l = strlen(data);

			if (l >= sizeof(ents[n].data))
				l = sizeof(ents[n].data) - 1;
			memcpy(ents[n].data, data, l);
			ents[n].data[l] = '\0';
		}
		q |= Q_ANY;
		if (reason == ERR_R_UNSUPPORTED || reason == ERR_R_FETCH_FAILED ||
		    (lib == ERR_LIB_EVP &&
		     (reason == EVP_R_UNSUPPORTED_ALGORITHM ||
		      reason == EVP_R_UNSUPPORTED_CIPHER ||
		      reason == EVP_R_UNKNOWN_CIPHER ||
		      reason == EVP_R_UNKNOWN_PBE_ALGORITHM ||
		      reason == EVP_R_UNSUPPORTED_KEY_DERIVATION_FUNCTION ||
		      reason == EVP_R_UNSUPPORTED_PRF)))
			q |= Q_UNSUPPORTED;
		if (lib == ERR_LIB_PKCS12 && reason == PKCS12_R_MAC_VERIFY_FAILURE)
			q |= Q_MAC_FAIL;
		if ((lib == ERR_LIB_EVP && reason == EVP_R_BAD_DECRYPT) ||
		    (lib == ERR_LIB_PEM && reason == PEM_R_BAD_DECRYPT) ||
		    (lib == ERR_LIB_PKCS12 && reason == PKCS12_R_PKCS12_CIPHERFINAL_ERROR))
			q |= Q_DECRYPT;
		if (lib == ERR_LIB_PEM && reason == PEM_R_NO_START_LINE)
			q |= Q_NO_START;
		n++;
	}
	ERR_clear_error();      /* anything beyond 16 */
	for (i = 0; i < n; i++) {
		ERR_new();
		if (ents[i].has_data)
			ERR_set_error(ERR_GET_LIB(ents[i].e), ERR_GET_REASON(ents[i].e),
			              "%s", ents[i].data);
		else
			ERR_set_error(ERR_GET_LIB(ents[i].e), ERR_GET_REASON(ents[i].e),
			              NULL);
	}
	return q;
}

/* ------------------------------------------------------------------ */
/* PKCS#12 work bound                                                  */
/* ------------------------------------------------------------------ */

/*
 * Every MAC check and every decryption in a PKCS#12 file first derives a
 * key from the password, running a KDF as many times as the file says.
 * Nothing bounds that count but the file: a PFX asking for 2^31
 * iterations keeps import-certificate busy for tens of minutes before the
 * password can even be checked.  Exporters use a few thousand (OpenSSL 3
 * 2 048, Windows 2 000, Java 10 000) to 600 000 (Bouncy Castle 1.86,
 * after OWASP's advice for PBKDF2-HMAC-SHA256), so the iteration counts
 * of the MAC, of every encrypted part and of every encrypted key in the
 * file may add up to OSSL_P12_ITER_MAX at most: at worst about 7 s of
 * work per parse on one core of the build machine (an encrypted part at
 * the bound, which is decrypted twice), usually far less.  scrypt counts
 * N*r*p.  The fuzz harness builds this file with a lower bound, so that
 * no single input can be slow (docs/HARDENING.md).
 */
#ifndef OSSL_P12_ITER_MAX
#define OSSL_P12_ITER_MAX 10000000ULL
#endif

struct iter_budget {
	unsigned long long total;       /* counts added so far (saturating) */
	unsigned long long worst;       /* the largest single count */
	const char *worst_what;         /* and what asked for it */
};

/* An ASN.1 INTEGER iteration count.  Absent means 1; negative means no
 * work (OpenSSL refuses or derives once); one too large for 64 bits is
 * counted as the largest number, so that it is refused. */
static unsigned long long count_of(const ASN1_INTEGER *a)
{
	uint64_t v;

	if (a == NULL)
		return 1;
	if (ASN1_STRING_type(a) == V_ASN1_NEG_INTEGER)
		return 0;
	if (ASN1_INTEGER_get_uint64(&v, a) != 1)
		return ULLONG_MAX;
	return v;
}

static unsigned long long mul_sat(unsigned long long a, unsigned long long b)
{
	if (a != 0 && b > ULLONG_MAX / a)
		return ULLONG_MAX;
	return a * b;
}

/* Add one KDF run of n iterations; 0 if the total is still allowed. */
static int budget_add(struct iter_budget *b, unsigned long long n,
                      const char *what)
{
	if (n > b->worst || b->worst_what == NULL) {
		b->worst = n;
		b->worst_what = what;
	}
	b->total = n > ULLONG_MAX - b->total ? ULLONG_MAX : b->total + n;
	return b->total > OSSL_P12_ITER_MAX ? -1 : 0;
}

/* The iterations a PBKDF2 or scrypt AlgorithmIdentifier asks for, or 0
 * if it is neither or cannot be decoded (OpenSSL then refuses it without
 * deriving anything). */
static unsigned long long kdf_count(const X509_ALGOR *kdf)
{
	const ASN1_OBJECT *obj;
	unsigned long long n = 0;

	X509_ALGOR_get0(&obj, NULL, NULL, kdf);
	if (kdf->parameter == NULL)
		return 0;
	switch (OBJ_obj2nid(obj)) {
	case NID_id_pbkdf2: {
		PBKDF2PARAM *p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM),
		                                           kdf->parameter);
		if (p != NULL)
			n = count_of(p->iter);
		PBKDF2PARAM_free(p);
		break;
	}
#ifndef OPENSSL_NO_SCRYPT
	case NID_id_scrypt: {
		SCRYPT_PARAMS *p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(SCRYPT_PARAMS),
		                                             kdf->parameter);
		if (p != NULL)
			n = mul_sat(mul_sat(count_of(p->costParameter), count_of(p->blockSize)),
			            count_of(p->parallelizationParameter));
		SCRYPT_PARAMS_free(p);
		break;
	}
#endif
	default:
		break;
	}
	return n;
}

/* The iterations a password-based encryption asks for: PBES2 (its KDF),
 * or one of the PKCS#5 v1 / PKCS#12 PBEs (PBEParameter).  0 if none. */
static unsigned long long pbe_count(const X509_ALGOR *alg)
{
	const ASN1_OBJECT *obj;
	unsigned long long n = 0;
	int nid;

	if (alg == NULL || alg->parameter == NULL)
		return 0;
	X509_ALGOR_get0(&obj, NULL, NULL, alg);
	nid = OBJ_obj2nid(obj);
	if (nid == NID_pbes2) {
		PBE2PARAM *p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM),
		                                         alg->parameter);
		if (p != NULL && p->keyfunc != NULL)
			n = kdf_count(p->keyfunc);
		PBE2PARAM_free(p);
	} else if (nid != NID_undef &&
	           EVP_PBE_find(EVP_PBE_TYPE_OUTER, nid, NULL, NULL, NULL)) {
		PBEPARAM *p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBEPARAM),
		                                        alg->parameter);
		if (p != NULL)
			n = count_of(p->iter);
		PBEPARAM_free(p);
	}
	return n;
}

/* PBMAC1-params (RFC 8018 A.5), which OpenSSL 3.4 and later accept for
 * the MAC: the KDF is the first AlgorithmIdentifier.  Declared here with
 * OpenSSL's ASN.1 templates (so that it decodes exactly as OpenSSL's own
 * PBMAC1PARAM would, BER included) and bounded on every OpenSSL 3. */
typedef struct {
	X509_ALGOR *kdf;
	X509_ALGOR *mac;
} P12_PBMAC1;

ASN1_SEQUENCE(P12_PBMAC1) = {
	ASN1_SIMPLE(P12_PBMAC1, kdf, X509_ALGOR),
	ASN1_SIMPLE(P12_PBMAC1, mac, X509_ALGOR),
} static_ASN1_SEQUENCE_END(P12_PBMAC1)

static unsigned long long pbmac1_count(const X509_ALGOR *macalg)
{
	P12_PBMAC1 *p;
	unsigned long long n = 0;

	if (macalg->parameter == NULL)
		return 0;
	p = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(P12_PBMAC1), macalg->parameter);
	if (p != NULL && p->kdf != NULL)
		n = kdf_count(p->kdf);
	ASN1_item_free((ASN1_VALUE *)p, ASN1_ITEM_rptr(P12_PBMAC1));
	return n;
}

/* Count the shrouded keys among bags (and in nested SafeContents, which
 * the ASN.1 decoder already limits in depth). */
static int bags_count(const STACK_OF(PKCS12_SAFEBAG) *bags,
                      struct iter_budget *b)
{
	int i;

	for (i = 0; i < sk_PKCS12_SAFEBAG_num(bags); i++) {
		const PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, i);
		const X509_ALGOR *alg = NULL;

		switch (PKCS12_SAFEBAG_get_nid(bag)) {
		case NID_pkcs8ShroudedKeyBag:
			if (PKCS12_SAFEBAG_get0_pkcs8(bag) != NULL)
				X509_SIG_get0(PKCS12_SAFEBAG_get0_pkcs8(bag), &alg, NULL);
			if (budget_add(b, pbe_count(alg), "an encrypted private key") < 0)
				return -1;
			break;
		case NID_safeContentsBag:
			if (bags_count(PKCS12_SAFEBAG_get0_safes(bag), b) < 0)
				return -1;
			break;
		default:
			break;
		}
	}
	return 0;
}

static int iter_refuse(const struct iter_budget *b, const char *file,
                       const char *how, tether_error *err)
{
	char worst[32];

	ERR_clear_error();
	snprintf(worst, sizeof(worst), "%llu%s", b->worst,
	         b->worst == ULLONG_MAX ? " or more" : "");
	return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
	                    "%s asks for more than %llu password key derivation "
	                    "iterations in all (%s alone: %s), each of which costs "
	                    "time before the password can even be checked; "
	                    "exporters use 2 000 to 600 000: %s",
	                    file, (unsigned long long)OSSL_P12_ITER_MAX, b->worst_what,
	                    worst, how);
}

#define P12_HOW "export the PFX again with the usual iteration count " \
	"(OpenSSL: 'openssl pkcs12 -export -iter 2048 -maciter 2048')"
#define PEM_HOW "encrypt the key again with the usual iteration count " \
	"(OpenSSL: 'openssl pkcs8 -topk8 -v2 aes-256-cbc -iter 2048')"

/* The MAC's key derivation, checked before the MAC is. */
static int mac_iter_check(PKCS12 *p12, struct iter_budget *b, tether_error *err)
{
	const X509_ALGOR *macalg = NULL;
	const ASN1_INTEGER *iter = NULL;
	const ASN1_OBJECT *obj;
	unsigned long long n;

	PKCS12_get0_mac(NULL, &macalg, NULL, &iter, p12);
	if (macalg == NULL)
		return 0;
	X509_ALGOR_get0(&obj, NULL, NULL, macalg);
	/* PBMAC1 derives with PBKDF2 and ignores MacData's count (RFC 9579) */
	n = OBJ_obj2nid(obj) == NID_pbmac1 ? pbmac1_count(macalg) : count_of(iter);
	if (budget_add(b, n, "the MAC") < 0)
		return iter_refuse(b, "the PKCS#12 file", P12_HOW, err);
	return 0;
}

/* Every other key derivation PKCS12_parse() may run: the encrypted
 * parts, and the encrypted keys in the plain parts and (decrypted here
 * with the password PKCS12_parse() will use, once the part's own count
 * is known to be allowed) in the encrypted ones.  What cannot be
 * unpacked or decrypted is left for PKCS12_parse() to refuse: it fails
 * there too, before deriving anything more. */
static int parts_iter_check(PKCS12 *p12, const char *pass,
                            struct iter_budget *b, tether_error *err)
{
	STACK_OF(PKCS7) *safes;
	int i, r = 0;

	safes = PKCS12_unpack_authsafes(p12);
	if (safes == NULL) {
		ERR_clear_error();
		return 0;
	}
	for (i = 0; i < sk_PKCS7_num(safes) && r == 0; i++) {
		PKCS7 *p7 = sk_PKCS7_value(safes, i);
		STACK_OF(PKCS12_SAFEBAG) *bags = NULL;

		if (PKCS7_type_is_data(p7)) {
			bags = PKCS12_unpack_p7data(p7);
		} else if (PKCS7_type_is_encrypted(p7)) {
			if (p7->d.encrypted == NULL || p7->d.encrypted->enc_data == NULL)
				continue;
			if (budget_add(b, pbe_count(p7->d.encrypted->enc_data->algorithm),
			               "an encrypted part") < 0) {
				r = -1;
				break;
			}
			bags = PKCS12_unpack_p7encdata(p7, pass, -1);
		}
		if (bags != NULL && bags_count(bags, b) < 0)
			r = -1;
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
	}
	sk_PKCS7_pop_free(safes, PKCS7_free);
	ERR_clear_error();
	return r < 0 ? iter_refuse(b, "the PKCS#12 file", P12_HOW, err) : 0;
}

/* ------------------------------------------------------------------ */
/* PKCS#12 import                                                      */
/* ------------------------------------------------------------------ */

/* Parse in the thread's current default library context. */
static int p12_parse_here(const unsigned char *data, size_t len,
                          const char *password, int *qflags, X509 **cert,
                          EVP_PKEY **key, tether_error *err)
{
	const unsigned char *q = data;
	STACK_OF(X509) *ca = NULL;
	struct iter_budget budget = { 0, 0, NULL };
	/* the password as PKCS12_parse() will use it: no MAC and an empty
	 * password mean none; with a MAC, the form that verifies it */
	const char *pass = password != NULL && *password != '\0' ? password : NULL;
	PKCS12 *p12;
	int r, have_mac;

	*qflags = 0;
	p12 = d2i_PKCS12(NULL, &q, (long)len);
	if (p12 == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "the PKCS#12 file is corrupt or truncated");

	/* Bound the work before doing any of it. */
	r = mac_iter_check(p12, &budget, err);
	if (r < 0)
		goto out;

	/* Check the password first: a wrong one must not read as corruption. */
	have_mac = PKCS12_mac_present(p12);
	if (have_mac) {
		int ok;

		if (password != NULL) {
			ok = PKCS12_verify_mac(p12, password, -1);
			pass = password;
		} else if (PKCS12_verify_mac(p12, "", 0)) {
			ok = 1;
			pass = "";
		} else {
			ok = PKCS12_verify_mac(p12, NULL, 0);
		}
		if (!ok) {
			*qflags = queue_scan();
			if (*qflags & Q_UNSUPPORTED)
				r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
				                 "the PKCS#12 file's integrity check uses an "
				                 "unsupported algorithm");
			else if (password == NULL)
				r = ossl_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
				                 "the PKCS#12 file is password-protected: give its password");
			else if ((*qflags & Q_MAC_FAIL) || !(*qflags & Q_ANY))
				/* PKCS12_verify_mac() fails silently on a mismatch */
				r = ossl_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
				                 "wrong password for the PKCS#12 file (or the file is damaged)");
			else
				r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
				                 "cannot check the PKCS#12 file's integrity");
			goto out;
		}
	}
	ERR_clear_error();
	r = parts_iter_check(p12, pass, &budget, err);
	if (r < 0)
		goto out;

	if (!PKCS12_parse(p12, password, key, cert, &ca)) {
		*qflags = queue_scan();
		if (*qflags & Q_UNSUPPORTED)
			r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
			                 "the PKCS#12 file uses an unsupported algorithm");
		else if (!have_mac && (*qflags & Q_DECRYPT))
			r = ossl_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
			                 "cannot decrypt the PKCS#12 file: wrong password?");
		else
			r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                 "the PKCS#12 file is corrupt");
		goto out;
	}
	r = 0;
out:
	sk_X509_pop_free(ca, X509_free);
	PKCS12_free(p12);
	return r;
}

/* Re-encode objects of a private library context into the default one. */
static int reencode(X509 *cert_in, EVP_PKEY *key_in, X509 **cert,
                    EVP_PKEY **key, tether_error *err)
{
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	unsigned char *kder = NULL, *cder = NULL;
	const unsigned char *q;
	int kn = -1, cn, r;

	p8 = EVP_PKEY2PKCS8(key_in);
	if (p8 != NULL)
		kn = i2d_PKCS8_PRIV_KEY_INFO(p8, &kder);
	PKCS8_PRIV_KEY_INFO_free(p8);
	p8 = NULL;
	cn = i2d_X509(cert_in, &cder);
	if (kn <= 0 || cn <= 0) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot re-encode the imported key");
		goto out;
	}
	q = kder;
	p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &q, kn);
	*key = p8 ? EVP_PKCS82PKEY(p8) : NULL;
	q = cder;
	*cert = d2i_X509(NULL, &q, cn);
	if (*key == NULL || *cert == NULL) {
		EVP_PKEY_free(*key);
		X509_free(*cert);
		*key = NULL;
		*cert = NULL;
		r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                 "the imported key type is not supported");
		goto out;
	}
	r = 0;
out:
	PKCS8_PRIV_KEY_INFO_free(p8);
	if (kder != NULL)
		OPENSSL_clear_free(kder, (size_t)kn);
	OPENSSL_free(cder);
	return r;
}

/* The RC2/legacy path: parse in a private context with the legacy
 * provider, made this thread's default for the parse only. */
static int p12_parse_legacy(const tether_host *p, const unsigned char *data,
                            size_t len, const char *password, X509 **cert,
                            EVP_PKEY **key, tether_error *err)
{
	OSSL_LIB_CTX *lc, *prev;
	OSSL_PROVIDER *leg = NULL, *def = NULL;
	X509 *c = NULL;
	EVP_PKEY *k = NULL;
	int r, qf;

	lc = OSSL_LIB_CTX_new();
	if (lc == NULL)
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	leg = OSSL_PROVIDER_load(lc, "legacy");
	def = OSSL_PROVIDER_load(lc, "default");
	if (leg == NULL || def == NULL) {
		r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                 "the PKCS#12 file uses a legacy algorithm (such as RC2) "
		                 "and OpenSSL's legacy provider cannot be loaded: install "
		                 "it, or export the file again with AES-256");
		goto out;
	}
	host_log(p, TETHER_LOG_DEBUG, "prov",
	         "PKCS#12 uses a legacy algorithm: parsing with the legacy provider");
	prev = OSSL_LIB_CTX_set0_default(lc);
	r = p12_parse_here(data, len, password, &qf, &c, &k, err);
	OSSL_LIB_CTX_set0_default(prev);
	if (r < 0)
		goto out;
	if (c == NULL || k == NULL) {
		r = 0;          /* the caller reports what is missing */
		*cert = NULL;
		*key = NULL;
		if (c != NULL || k != NULL)
			r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                 "the PKCS#12 file holds no %s",
			                 c == NULL ? "certificate" : "private key");
		else
			r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                 "the PKCS#12 file holds no certificate and key");
		goto out;
	}
	r = reencode(c, k, cert, key, err);
out:
	X509_free(c);
	EVP_PKEY_free(k);
	OSSL_PROVIDER_unload(leg);
	OSSL_PROVIDER_unload(def);
	OSSL_LIB_CTX_free(lc);
	return r;
}

static int p12_parse(const tether_host *p, const unsigned char *data,
                     size_t len, const char *password, X509 **cert,
                     EVP_PKEY **key, tether_error *err)
{
	int r, qf = 0;

	*cert = NULL;
	*key = NULL;
	r = p12_parse_here(data, len, password, &qf, cert, key, err);
	if (r == TETHER_ERR_UNSUPPORTED && (qf & Q_UNSUPPORTED)) {
		ERR_clear_error();
		r = p12_parse_legacy(p, data, len, password, cert, key, err);
	}
	if (r < 0)
		return r;
	if (*cert == NULL || *key == NULL) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the PKCS#12 file holds no %s",
		                 *key == NULL ? "private key" : "certificate");
		X509_free(*cert);
		EVP_PKEY_free(*key);
		*cert = NULL;
		*key = NULL;
	}
	return r;
}

/* ------------------------------------------------------------------ */
/* PEM import                                                          */
/* ------------------------------------------------------------------ */

static int is_cert_name(const char *n)
{
	return strcmp(n, PEM_STRING_X509) == 0 ||
	       strcmp(n, PEM_STRING_X509_OLD) == 0 ||
	       strcmp(n, PEM_STRING_X509_TRUSTED) == 0;
}

static int is_key_name(const char *n)
{
	size_t l = strlen(n), s = sizeof("PRIVATE KEY") - 1;

	return l >= s && strcmp(n + l - s, "PRIVATE KEY") == 0;
}

static int pem_parse(const unsigned char *data, size_t len,
                     const char *password, X509 **cert_out,
                     EVP_PKEY **key_out, tether_error *err)
{
	struct ossl_pw pw = { password, 0, 0 };
	struct iter_budget budget = { 0, 0, NULL };
	STACK_OF(X509) *certs = NULL;
	EVP_PKEY *key = NULL;
	X509 *x, *match = NULL;
	BIO *b = NULL;
	int ncert = 0, nkey = 0, r, i;

	/* 1. Every block must be well-formed: truncation or damage shows here. */
	b = BIO_new_mem_buf(data, (int)len);
	if (b == NULL)
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	for (;;) {
		char *name = NULL, *header = NULL;
		unsigned char *d = NULL;
		long dlen = 0;

		if (!PEM_read_bio_ex(b, &name, &header, &d, &dlen,
		                     PEM_FLAG_EAY_COMPATIBLE)) {
			int qf = queue_scan();

			if ((qf & Q_NO_START) && BIO_eof(b)) {
				ERR_clear_error();
				break;
			}
			r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                 "the PEM data is damaged or truncated");
			goto out;
		}
		if (is_cert_name(name))
			ncert++;
		else if (is_key_name(name))
			nkey++;
		if (strcmp(name, PEM_STRING_PKCS8) == 0) {
			/* an encrypted PKCS#8 key: the same bound as PKCS#12 */
			const unsigned char *dq = d;
			X509_SIG *sig = d2i_X509_SIG(NULL, &dq, dlen);
			const X509_ALGOR *alg = NULL;

			if (sig != NULL)
				X509_SIG_get0(sig, &alg, NULL);
			if (sig != NULL &&
			    budget_add(&budget, pbe_count(alg), "the encrypted private key") < 0) {
				X509_SIG_free(sig);
				OPENSSL_free(name);
				OPENSSL_free(header);
				OPENSSL_clear_free(d, (size_t)dlen);
				r = iter_refuse(&budget, "the PEM data", PEM_HOW, err);
				goto out;
			}
			X509_SIG_free(sig);
			ERR_clear_error();
		}
		OPENSSL_free(name);
		OPENSSL_free(header);
		OPENSSL_clear_free(d, (size_t)dlen);
	}
	BIO_free(b);
	b = NULL;
	if (ncert == 0 || nkey == 0) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the PEM data holds no %s: give the certificate and "
		                 "its private key in one file",
		                 ncert == 0 ? "certificate" : "private key");
		goto out;
	}
	if (nkey > 1) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the PEM data holds %d private keys; give exactly one", nkey);
		goto out;
	}

	/* 2. The key (PKCS#8, encrypted PKCS#8 or traditional). */
	b = BIO_new_mem_buf(data, (int)len);
	if (b == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "out of memory");
		goto out;
	}
	key = PEM_read_bio_PrivateKey(b, NULL, ossl_pw_cb, &pw);
	BIO_free(b);
	b = NULL;
	if (key == NULL) {
		if (pw.asked && password == NULL)
			r = ossl_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
			                 "the private key is encrypted: give its password");
		else if (pw.too_long)
			r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_PASSWORD,
			                 "the password is too long");
		else if (pw.asked)
			r = ossl_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
			                 "cannot decrypt the private key: wrong password");
		else
			r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                 "the private key in the PEM data is damaged or of "
			                 "an unsupported type");
		goto out;
	}

	/* 3. The certificates; keep the one that matches the key. */
	certs = sk_X509_new_null();
	b = BIO_new_mem_buf(data, (int)len);
	if (certs == NULL || b == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                 "out of memory");
		goto out;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_push(certs, x)) {
			X509_free(x);
			r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
			                 "out of memory");
			goto out;
		}
	}
	ERR_clear_error();
	if (sk_X509_num(certs) == 0) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the certificate in the PEM data is damaged");
		goto out;
	}
	for (i = 0; i < sk_X509_num(certs) && match == NULL; i++) {
		x = sk_X509_value(certs, i);
		if (X509_check_private_key(x, key) == 1)
			match = x;
	}
	ERR_clear_error();
	if (match == NULL) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the private key does not match the certificate%s",
		                 sk_X509_num(certs) > 1 ? "s" : "");
		goto out;
	}
	if (!X509_up_ref(match)) {
		r = ossl_err_set(err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
		                 "X509_up_ref failed");
		goto out;
	}
	*cert_out = match;
	*key_out = key;
	key = NULL;
	r = 0;
out:
	BIO_free(b);
	sk_X509_pop_free(certs, X509_free);
	EVP_PKEY_free(key);
	return r;
}

/* ------------------------------------------------------------------ */
/* Import                                                              */
/* ------------------------------------------------------------------ */

/* Keys tether can use in TLS with DESIGN.md's signature schemes. */
static int key_usable(EVP_PKEY *key, tether_error *err)
{
	int bits = EVP_PKEY_get_bits(key);

	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_RSA:
		if (bits < 2048)
			return ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
			                    "the RSA key has %d bits; at least 2048 are needed",
			                    bits);
		return 0;
	case EVP_PKEY_EC:
		if (bits != 256 && bits != 384)
			return ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
			                    "the EC key is on a %d-bit curve; use P-256 or P-384",
			                    bits);
		return 0;
	default:
		return ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                    "keys of type %s are not supported; use RSA or EC "
		                    "P-256/P-384", EVP_PKEY_get0_type_name(key) ?
		                    EVP_PKEY_get0_type_name(key) : "unknown");
	}
}

static const void *find_bytes(const unsigned char *h, size_t hl,
                              const char *needle)
{
	size_t nl = strlen(needle), i;

	for (i = 0; i + nl <= hl; i++)
		if (memcmp(h + i, needle, nl) == 0)
			return h + i;
	return NULL;
}

/* Parse a PKCS#12 or PEM identity and check it completely: the key matches
 * the certificate and is of a usable type.  Stores nothing. */
int ossl_parse_identity(const tether_host *p, const unsigned char *data, size_t len,
                          const char *password, X509 **cert_out, EVP_PKEY **key_out,
                          tether_error *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	size_t i = 0;
	int r;

	if (data == NULL || len == 0)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "nothing to import: the file is empty");
	if (len > IMPORT_MAX)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "the file to import is too large (%zu bytes)", len);
	ERR_clear_error();
	while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' ||
	                   data[i] == '\n'))
		i++;
	if (data[0] == 0x30)
		r = p12_parse(p, data, len, password, &cert, &key, err);
	else if (i < len && find_bytes(data + i, len - i, "-----BEGIN ") != NULL)
		r = pem_parse(data, len, password, &cert, &key, err);
	else
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the file is neither PKCS#12 (.pfx/.p12) nor PEM");
	if (r < 0)
		goto out;
	if (X509_check_private_key(cert, key) != 1) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the private key does not match the certificate");
		goto out;
	}
	r = key_usable(key, err);
	if (r < 0)
		goto out;
	*cert_out = cert;
	*key_out = key;
	cert = NULL;
	key = NULL;
out:
	X509_free(cert);
	EVP_PKEY_free(key);
	return r;
}
