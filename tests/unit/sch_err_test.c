/* The Schannel provider's pure tables (providers/schannel/sch_err.c),
 * compiled natively: SECURITY_STATUS and CryptoAPI codes -> categories,
 * protocol and cipher names, signature algorithm names, and the ClientHello
 * SNI parser the server role uses to pick its identity.  Under Wine most
 * failures come back as SEC_E_INTERNAL_ERROR, so this is where every
 * mapping is checked. */
#include "config.h"
#include "test.h"
#include "sch_int.h"

struct want {
	uint32_t status;
	int tls;
	int code;
	int category;
	const char *name;
};

static const struct want wants[] = {
	{ 0x80090331u, 1, TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_CIPHER, "SEC_E_ALGORITHM_MISMATCH" },
	{ 0x80090302u, 1, TETHER_ERR_TLS, TETHER_CAT_PROTOCOL_VERSION, "SEC_E_UNSUPPORTED_FUNCTION" },
	{ 0x80090327u, 1, TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "SEC_E_CERT_UNKNOWN" },
	{ 0x80090325u, 1, TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "SEC_E_UNTRUSTED_ROOT" },
	{ 0x80090308u, 1, TETHER_ERR_TLS, TETHER_CAT_NOT_TLS, "SEC_E_INVALID_TOKEN" },
	{ 0x8009030Eu, 1, TETHER_ERR_TLS, TETHER_CAT_PEER_NO_CERTIFICATE, "SEC_E_NO_CREDENTIALS" },
	{ 0x80090349u, 1, TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_SIGALG, "SEC_E_CERT_WRONG_USAGE" },
	{ 0x80090304u, 1, TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "SEC_E_INTERNAL_ERROR" },
	{ 0x80090326u, 1, TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "SEC_E_ILLEGAL_MESSAGE" },
	{ 0x80090317u, 1, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET, "SEC_E_CONTEXT_EXPIRED" },
	{ 0x8009030Fu, 1, TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET, "SEC_E_MESSAGE_ALTERED" },
	{ 0x80090330u, 1, TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET, "SEC_E_DECRYPT_FAILURE" },
	/* outside TLS, a decrypt failure of a PFX means a wrong password */
	{ 0x80090330u, 0, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD, "SEC_E_DECRYPT_FAILURE" },
	{ 0x80070056u, 0, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD, "ERROR_INVALID_PASSWORD" },
	{ 0x8009000Bu, 0, TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE, "NTE_BAD_KEY_STATE" },
	{ 0x80090016u, 0, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, "NTE_BAD_KEYSET" },
	{ 0x80090010u, 0, TETHER_ERR_PERMISSION, TETHER_CAT_IO, "NTE_PERM" },
	{ 0x80004001u, 0, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "E_NOTIMPL" },
	{ 0x8009310Bu, 0, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "CRYPT_E_ASN1_BADTAG" },
};

static void status_table(void **s)
{
	size_t i;
	sch_status_map m;
	(void)s;
	for (i = 0; i < sizeof(wants) / sizeof(wants[0]); i++) {
		sch_status_lookup(wants[i].status, wants[i].tls, &m);
		assert_int_equal(m.code, wants[i].code);
		assert_int_equal(m.category, wants[i].category);
		assert_non_null(m.name);
		assert_string_equal(m.name, wants[i].name);
	}
}

/* Every row of sch_err.c's table, as specified: status, name, code,
 * category, and words its hint must contain.  status_table_complete walks
 * the table itself, so a row added there without a line here fails. */
struct spec {
	uint32_t status;
	const char *name;
	int code;
	int category;
	const char *hint_words;
};

static const struct spec specs[] = {
	{ 0x80090300u, "SEC_E_INSUFFICIENT_MEMORY", TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "the system is out" },
	{ 0x80090301u, "SEC_E_INVALID_HANDLE", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL, "a Schannel handle was" },
	{ 0x80090302u, "SEC_E_UNSUPPORTED_FUNCTION", TETHER_ERR_TLS, TETHER_CAT_PROTOCOL_VERSION, "Wine has no server role" },
	{ 0x80090303u, "SEC_E_TARGET_UNKNOWN", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "Schannel refused the target" },
	{ 0x80090304u, "SEC_E_INTERNAL_ERROR", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "under Wine most failures" },
	{ 0x80090305u, "SEC_E_SECPKG_NOT_FOUND", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "the Schannel security package" },
	{ 0x80090308u, "SEC_E_INVALID_TOKEN", TETHER_ERR_TLS, TETHER_CAT_NOT_TLS, "the peer does not" },
	{ 0x8009030Cu, "SEC_E_LOGON_DENIED", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "the peer refused the" },
	{ 0x8009030Du, "SEC_E_UNKNOWN_CREDENTIALS", TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "cannot be used by Schannel" },
	{ 0x8009030Eu, "SEC_E_NO_CREDENTIALS", TETHER_ERR_TLS, TETHER_CAT_PEER_NO_CERTIFICATE, "no client certificate" },
	{ 0x8009030Fu, "SEC_E_MESSAGE_ALTERED", TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET, "a TLS record failed" },
	{ 0x80090311u, "SEC_E_NO_AUTHENTICATING_AUTHORITY", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "Schannel could not check" },
	{ 0x80090317u, "SEC_E_CONTEXT_EXPIRED", TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET, "the peer closed the" },
	{ 0x80090318u, "SEC_E_INCOMPLETE_MESSAGE", TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET, "the connection ended inside" },
	{ 0x80090321u, "SEC_E_BUFFER_TOO_SMALL", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL, "a TLS buffer was" },
	{ 0x80090322u, "SEC_E_WRONG_PRINCIPAL", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "the peer's certificate does" },
	{ 0x80090325u, "SEC_E_UNTRUSTED_ROOT", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "Schannel distrusted the peer's" },
	{ 0x80090326u, "SEC_E_ILLEGAL_MESSAGE", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "the peer sent a" },
	{ 0x80090327u, "SEC_E_CERT_UNKNOWN", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "the peer refused our" },
	{ 0x80090328u, "SEC_E_CERT_EXPIRED", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "a certificate in the" },
	{ 0x80090329u, "SEC_E_ENCRYPT_FAILURE", TETHER_ERR_TLS, TETHER_CAT_INTERNAL, "a TLS record could" },
	{ 0x80090330u, "SEC_E_DECRYPT_FAILURE", TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET, "for a PFX file: wrong password" },
	{ 0x80090331u, "SEC_E_ALGORITHM_MISMATCH", TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_CIPHER, "no cipher suite in" },
	{ 0x80090337u, "SEC_E_CRYPTO_SYSTEM_INVALID", TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_CIPHER, "no cipher this system" },
	{ 0x8009033Fu, "SEC_E_SHUTDOWN_IN_PROGRESS", TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET, "the TLS session is" },
	{ 0x80090349u, "SEC_E_CERT_WRONG_USAGE", TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_SIGALG, "the certificate's key cannot" },
	{ 0x8009035Du, "SEC_E_INVALID_PARAMETER", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL, "Schannel refused a parameter" },
	{ 0x80090363u, "SEC_E_MUTUAL_AUTH_FAILED", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED, "the peer's certificate was" },
	{ 0x80090367u, "SEC_E_APPLICATION_PROTOCOL_MISMATCH", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "no application protocol (ALPN)" },
	{ 0x80090005u, "NTE_BAD_DATA", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "the data is damaged" },
	{ 0x80090009u, "NTE_BAD_FLAGS", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL, "the provider refused the" },
	{ 0x8009000Bu, "NTE_BAD_KEY_STATE", TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE, "the private key was" },
	{ 0x8009000Eu, "NTE_NO_MEMORY", TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "the key provider is" },
	{ 0x8009000Fu, "NTE_EXISTS", TETHER_ERR_EXISTS, TETHER_CAT_INTERNAL, "a key container of" },
	{ 0x80090010u, "NTE_PERM", TETHER_ERR_PERMISSION, TETHER_CAT_IO, "an administrator or LocalSystem" },
	{ 0x80090016u, "NTE_BAD_KEYSET", TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, "the key container is" },
	{ 0x80090013u, "NTE_BAD_PROVIDER", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "the key storage provider" },
	{ 0x80090014u, "NTE_BAD_PROV_TYPE", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "the provider type is" },
	{ 0x80090017u, "NTE_PROV_TYPE_NOT_DEF", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "the provider type is" },
	{ 0x8009001Eu, "NTE_PROV_DLL_NOT_FOUND", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "the provider's DLL is" },
	{ 0x80090029u, "NTE_NOT_SUPPORTED", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "not supported by this" },
	{ 0x80070005u, "E_ACCESSDENIED", TETHER_ERR_PERMISSION, TETHER_CAT_IO, "administrator or LocalSystem" },
	{ 0x80070078u, "ERROR_CALL_NOT_IMPLEMENTED", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "not implemented by this" },
	{ 0x80090027u, "NTE_INVALID_PARAMETER", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL, "the key provider refused" },
	{ 0x80004001u, "E_NOTIMPL", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, "not implemented by this" },
	{ 0x80070056u, "ERROR_INVALID_PASSWORD", TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD, "wrong PFX password" },
	{ 0x80092002u, "CRYPT_E_BAD_ENCODE", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "the data is not" },
	{ 0x8009310Bu, "CRYPT_E_ASN1_BADTAG", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "not a PKCS#12 file," },
	{ 0x80093102u, "CRYPT_E_ASN1_EOD", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "the file is truncated" },
	{ 0x80092004u, "CRYPT_E_NOT_FOUND", TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, "the object or property" },
};

static void status_table_complete(void **s)
{
	size_t i, j, n_spec = sizeof(specs) / sizeof(specs[0]), rows = 0;
	uint32_t st, st2;
	const char *name, *hint, *name2, *hint2;
	sch_status_map m;
	tether_error e;
	char want[TETHER_ERROR_DETAIL_MAX];
	(void)s;
	for (i = 0; sch_status_row(i, &st, &name, &hint); i++) {
		const struct spec *sp = NULL;
		rows++;
		for (j = 0; j < n_spec; j++)
			if (specs[j].status == st)
				sp = &specs[j];
		if (!sp)
			fail_msg("table row 0x%08x (%s) has no line in specs[]", (unsigned)st, name);
		/* one row per status */
		for (j = i + 1; sch_status_row(j, &st2, &name2, &hint2); j++)
			if (st2 == st)
				fail_msg("status 0x%08x is in the table twice", (unsigned)st);
		assert_non_null(name);
		assert_string_equal(name, sp->name);
		/* the hint: never empty, " (...)", with the specified words */
		assert_non_null(hint);
		if (strlen(hint) < 4 || strncmp(hint, " (", 2) != 0 || hint[strlen(hint) - 1] != ')')
			fail_msg("%s: hint '%s' is not ' (...)'", name, hint);
		if (!strstr(hint, sp->hint_words))
			fail_msg("%s: hint '%s' lacks '%s'", name, hint, sp->hint_words);
		/* the lookup, in TLS work and in identity/PFX work */
		sch_status_lookup(st, 1, &m);
		assert_int_equal(m.code, sp->code);
		assert_int_equal(m.category, sp->category);
		assert_string_equal(m.name, sp->name);
		assert_true(m.category > TETHER_CAT_NONE && m.category < TETHER_CAT__COUNT);
		assert_true(m.code < 0);
		sch_status_lookup(st, 0, &m);
		if (st == 0x80090330u) {        /* a PFX that fails to decrypt: wrong password */
			assert_int_equal(m.code, TETHER_ERR_PASSWORD);
			assert_int_equal(m.category, TETHER_CAT_BAD_PASSWORD);
		} else {
			assert_int_equal(m.code, sp->code);
			assert_int_equal(m.category, sp->category);
		}
		/* the detail a user reads */
		memset(&e, 0, sizeof(e));
		assert_int_equal(sch_err_status(&e, st, 1, "op"), sp->code);
		assert_int_equal(e.category, sp->category);
		snprintf(want, sizeof(want), "op: %s (0x%08x)%s", name, (unsigned)st, hint);
		assert_string_equal(e.detail, want);
	}
	/* and every specified row is in the table */
	assert_int_equal(rows, n_spec);
}

static void status_unknown(void **s)
{
	sch_status_map m;
	(void)s;
	sch_status_lookup(0x80091234u, 1, &m);
	assert_int_equal(m.code, TETHER_ERR_TLS);
	assert_int_equal(m.category, TETHER_CAT_HANDSHAKE);
	assert_null(m.name);
	sch_status_lookup(0x80091234u, 0, &m);
	assert_int_equal(m.code, TETHER_ERR_CRYPTO);
	assert_int_equal(m.category, TETHER_CAT_INTERNAL);
}

static void status_detail(void **s)
{
	tether_error e;
	(void)s;
	memset(&e, 0, sizeof(e));
	assert_int_equal(sch_err_status(&e, 0x80090331u, 1, "TLS handshake"), TETHER_ERR_TLS);
	assert_int_equal(e.category, TETHER_CAT_NO_SHARED_CIPHER);
	assert_non_null(strstr(e.detail, "TLS handshake: SEC_E_ALGORITHM_MISMATCH (0x80090331)"));
	assert_non_null(strstr(e.detail, "no cipher suite in common"));
	assert_int_equal(sch_err_status(&e, 0x80091234u, 1, "x"), TETHER_ERR_TLS);
	assert_string_equal(e.detail, "x: status 0x80091234");
	assert_int_equal(sch_err_status(NULL, 0x80090304u, 1, "x"), TETHER_ERR_TLS);
}

/* The CryptoAPI fallback happens only when CNG persisted keys are not
 * supported (sch_err.c: sch_cng_unsupported); a permission error and the
 * like are reported, with advice. */
static void cng_fallback_rule(void **s)
{
	static const uint32_t unsupported[] = {
		0x80090029u /* NTE_NOT_SUPPORTED */, 0x80004001u /* E_NOTIMPL */,
		0x80090013u /* NTE_BAD_PROVIDER */, 0x80090014u /* NTE_BAD_PROV_TYPE */,
		0x80090017u /* NTE_PROV_TYPE_NOT_DEF */, 0x8009001Eu /* NTE_PROV_DLL_NOT_FOUND */,
		0x80070078u /* ERROR_CALL_NOT_IMPLEMENTED */, 0x80070032u /* ERROR_NOT_SUPPORTED */,
	};
	static const uint32_t reported[] = {
		0x80090010u /* NTE_PERM */, 0x80070005u /* E_ACCESSDENIED */,
		0x80070522u /* ERROR_PRIVILEGE_NOT_HELD */, 0x80090016u /* NTE_BAD_KEYSET */,
		0x8009000Fu /* NTE_EXISTS */, 0x80090009u /* NTE_BAD_FLAGS */,
		0x80090027u /* NTE_INVALID_PARAMETER */, 0x8009000Eu /* NTE_NO_MEMORY */,
		0x80070070u /* ERROR_DISK_FULL */, 0x80090330u /* SEC_E_DECRYPT_FAILURE */,
		0x80070056u /* ERROR_INVALID_PASSWORD */, 0x8009310Bu /* CRYPT_E_ASN1_BADTAG */,
	};
	size_t i;
	int step;
	(void)s;
	for (step = SCH_CNG_OPEN; step <= SCH_CNG_PFX_IMPORT; step++) {
		for (i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++)
			assert_int_equal(sch_cng_unsupported(step, unsupported[i]), 1);
		for (i = 0; i < sizeof(reported) / sizeof(reported[0]); i++)
			assert_int_equal(sch_cng_unsupported(step, reported[i]), 0);
		/* Wine 8.0: CertCreateSelfSignCertificate with an NCrypt key
		 * handle says ERROR_INVALID_PARAMETER; only that step may read
		 * it as "not supported" */
		assert_int_equal(sch_cng_unsupported(step, 0x80070057u), step == SCH_CNG_SELF_SIGN);
		/* Wine 8.0: PFXImportCertStore with PKCS12_ALWAYS_CNG_KSP gives
		 * NULL and no error at all */
		assert_int_equal(sch_cng_unsupported(step, 0), step == SCH_CNG_PFX_IMPORT);
	}
	/* not a step: never a fallback */
	assert_int_equal(sch_cng_unsupported(0, 0x80090029u), 0);
	assert_int_equal(sch_cng_unsupported(SCH_CNG_PFX_IMPORT + 1, 0x80090029u), 0);
	/* advice: elevation for permission errors, key-storage = capi otherwise */
	assert_non_null(strstr(sch_cng_advice(0x80090010u), "elevated"));
	assert_non_null(strstr(sch_cng_advice(0x80070005u), "elevated"));
	assert_non_null(strstr(sch_cng_advice(0x80070522u), "LocalSystem"));
	assert_null(strstr(sch_cng_advice(0x80090016u), "elevated"));
	assert_non_null(strstr(sch_cng_advice(0x80090016u), "key-storage = capi"));
	assert_non_null(strstr(sch_cng_advice(0x80070070u), "TLS 1.2"));
}

static void names(void **s)
{
	(void)s;
	assert_string_equal(sch_protocol_name(0x00000800u), "TLSv1.2");     /* TLS1_2_CLIENT */
	assert_string_equal(sch_protocol_name(0x00000400u), "TLSv1.2");     /* TLS1_2_SERVER */
	assert_string_equal(sch_protocol_name(0x00002000u), "TLSv1.3");
	assert_string_equal(sch_protocol_name(0x00000200u), "TLSv1.1");
	assert_string_equal(sch_protocol_name(0), "");
	assert_string_equal(sch_cipher_name(0xC030), "ECDHE-RSA-AES256-GCM-SHA384");
	assert_string_equal(sch_cipher_name(0xC02B), "ECDHE-ECDSA-AES128-GCM-SHA256");
	assert_string_equal(sch_cipher_name(0x1301), "TLS_AES_128_GCM_SHA256");
	assert_string_equal(sch_cipher_name(0xCCA8), "ECDHE-RSA-CHACHA20-POLY1305");
	assert_null(sch_cipher_name(0x002F));        /* AES128-SHA: not allowed */
	/* Wine's connection info: ECDHE (0xAE06) + AES-256 (0x6610) + SHA-384 */
	assert_int_equal(sch_suite_from_algs(0xAE06, 0x6610, 256, 0x800D, "rsa"), 0xC030);
	assert_int_equal(sch_suite_from_algs(0xAE06, 0x660E, 128, 0x800C, "ec"), 0xC02B);
	assert_int_equal(sch_suite_from_algs(0xAE06, 0x6611, 128, 0x800C, "rsa"), 0xC02F);
	assert_int_equal(sch_suite_from_algs(0xA400, 0x6610, 256, 0x800D, "rsa"), 0);  /* RSA kx */
	assert_int_equal(sch_suite_from_algs(0xAE06, 0x6610, 256, 0x800C, "rsa"), 0);  /* odd pair */
	assert_string_equal(sch_sigalg_name("1.2.840.113549.1.1.11"), "sha256WithRSAEncryption");
	assert_string_equal(sch_sigalg_name("1.2.840.10045.4.3.3"), "ecdsa-with-SHA384");
	assert_string_equal(sch_sigalg_name("1.2.3"), "1.2.3");
	assert_string_equal(sch_slot_name(TETHER_SLOT_STAGED), "staged");
	assert_null(sch_slot_name(7));
}

/* A minimal ClientHello record with an SNI extension of name. */
static size_t hello(unsigned char *b, const char *name, int with_sni)
{
	size_t nl = strlen(name), o = 0, body, ext, rec_len_at, hs_len_at, ext_len_at;
	b[o++] = 0x16; b[o++] = 0x03; b[o++] = 0x01;
	rec_len_at = o; o += 2;
	b[o++] = 0x01;
	hs_len_at = o; o += 3;
	body = o;
	b[o++] = 0x03; b[o++] = 0x03;
	memset(b + o, 0xAB, 32); o += 32;
	b[o++] = 0;                                  /* session id */
	b[o++] = 0; b[o++] = 2; b[o++] = 0xC0; b[o++] = 0x30;
	b[o++] = 1; b[o++] = 0;                      /* compression */
	ext_len_at = o; o += 2;
	ext = o;
	b[o++] = 0x00; b[o++] = 0x0b; b[o++] = 0; b[o++] = 2; b[o++] = 1; b[o++] = 0; /* ec_point_formats */
	if (with_sni) {
		b[o++] = 0; b[o++] = 0;
		b[o++] = (unsigned char)((nl + 5) >> 8); b[o++] = (unsigned char)(nl + 5);
		b[o++] = (unsigned char)((nl + 3) >> 8); b[o++] = (unsigned char)(nl + 3);
		b[o++] = 0;
		b[o++] = (unsigned char)(nl >> 8); b[o++] = (unsigned char)nl;
		memcpy(b + o, name, nl); o += nl;
	}
	b[ext_len_at] = (unsigned char)((o - ext) >> 8); b[ext_len_at + 1] = (unsigned char)(o - ext);
	b[hs_len_at] = 0; b[hs_len_at + 1] = (unsigned char)((o - body) >> 8); b[hs_len_at + 2] = (unsigned char)(o - body);
	b[rec_len_at] = (unsigned char)((o - 5) >> 8); b[rec_len_at + 1] = (unsigned char)(o - 5);
	return o;
}

static void sni(void **s)
{
	unsigned char b[512];
	char out[256];
	size_t n, i;
	(void)s;
	n = hello(b, "p-0123456789abcdef.tether.invalid", 1);
	assert_int_equal(sch_parse_sni(b, n, out, sizeof(out)), 1);
	assert_string_equal(out, "p-0123456789abcdef.tether.invalid");
	/* every shorter prefix asks for more bytes, never reads past them */
	for (i = 0; i < n; i++)
		assert_int_equal(sch_parse_sni(b, i, out, sizeof(out)), -1);
	n = hello(b, "x", 0);
	assert_int_equal(sch_parse_sni(b, n, out, sizeof(out)), 0);
	/* a name that does not fit is refused, not truncated */
	n = hello(b, "p-0123456789abcdef.tether.invalid", 1);
	assert_int_equal(sch_parse_sni(b, n, out, 8), -2);
	/* not TLS: HTTP */
	assert_int_equal(sch_parse_sni((const unsigned char *)"GET / HTTP/1.1\r\n", 16, out, sizeof(out)), -2);
	/* a lying extension length (server_name's, high byte) */
	n = hello(b, "abc", 1);
	b[n - 10] = 0x7f;
	assert_int_equal(sch_parse_sni(b, n, out, sizeof(out)), -2);
	/* not a ClientHello */
	n = hello(b, "abc", 1);
	b[5] = 0x02;
	assert_int_equal(sch_parse_sni(b, n, out, sizeof(out)), -2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(status_table),
		cmocka_unit_test(status_table_complete),
		cmocka_unit_test(status_unknown),
		cmocka_unit_test(status_detail),
		cmocka_unit_test(cng_fallback_rule),
		cmocka_unit_test(names),
		cmocka_unit_test(sni),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
