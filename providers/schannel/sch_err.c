/* SECURITY_STATUS and CryptoAPI/CNG codes -> tether's shared categories,
 * and the names DESIGN.md uses (TLS versions, OpenSSL cipher names,
 * signature algorithms).  Plain C, no Windows header: compiled natively on
 * Linux too and tested there (tests/unit/sch_err_test.c), so that every
 * mapping is checked without Schannel. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "sch_int.h"

struct status_row {
	uint32_t status;
	const char *name;
	int code;
	int category;
	const char *hint;      /* appended to the detail: " (...)", never empty */
};

#define R(s, n, c, cat, h) { s, n, c, cat, h }
static const struct status_row rows[] = {
	/* TLS handshake and record layer (SSPI) */
	R(0x80090300u, "SEC_E_INSUFFICIENT_MEMORY", TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
	  " (the system is out of memory)"),
	R(0x80090301u, "SEC_E_INVALID_HANDLE", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
	  " (a Schannel handle was used after it was freed: a bug in tether)"),
	R(0x80090302u, "SEC_E_UNSUPPORTED_FUNCTION", TETHER_ERR_TLS, TETHER_CAT_PROTOCOL_VERSION,
	  " (no TLS version in common, or an operation this Schannel lacks: Wine has no server role)"),
	R(0x80090303u, "SEC_E_TARGET_UNKNOWN", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE,
	  " (Schannel refused the target name: the pin hint sent as SNI)"),
	R(0x80090304u, "SEC_E_INTERNAL_ERROR", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE,
	  " (Schannel gives no reason; under Wine most failures read like this)"),
	R(0x80090305u, "SEC_E_SECPKG_NOT_FOUND", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (the Schannel security package is missing)"),
	R(0x80090308u, "SEC_E_INVALID_TOKEN", TETHER_ERR_TLS, TETHER_CAT_NOT_TLS,
	  " (the peer does not speak TLS)"),
	R(0x8009030Cu, "SEC_E_LOGON_DENIED", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED,
	  " (the peer refused the credentials presented)"),
	R(0x8009030Du, "SEC_E_UNKNOWN_CREDENTIALS", TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
	  " (the certificate's private key cannot be used by Schannel)"),
	R(0x8009030Eu, "SEC_E_NO_CREDENTIALS", TETHER_ERR_TLS, TETHER_CAT_PEER_NO_CERTIFICATE,
	  " (no client certificate: the peer presented none, or ours was not sent)"),
	R(0x8009030Fu, "SEC_E_MESSAGE_ALTERED", TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET,
	  " (a TLS record failed its integrity check)"),
	R(0x80090311u, "SEC_E_NO_AUTHENTICATING_AUTHORITY", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE,
	  " (Schannel could not check the peer's certificate)"),
	R(0x80090317u, "SEC_E_CONTEXT_EXPIRED", TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
	  " (the peer closed the TLS session)"),
	R(0x80090318u, "SEC_E_INCOMPLETE_MESSAGE", TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET,
	  " (the connection ended inside a TLS record)"),
	R(0x80090321u, "SEC_E_BUFFER_TOO_SMALL", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
	  " (a TLS buffer was too small: a bug in tether)"),
	R(0x80090322u, "SEC_E_WRONG_PRINCIPAL", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED,
	  " (the peer's certificate does not name the target)"),
	R(0x80090325u, "SEC_E_UNTRUSTED_ROOT", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED,
	  " (Schannel distrusted the peer's certificate chain)"),
	R(0x80090326u, "SEC_E_ILLEGAL_MESSAGE", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE,
	  " (the peer sent a fatal alert: often no shared signature scheme or group)"),
	R(0x80090327u, "SEC_E_CERT_UNKNOWN", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED,
	  " (the peer refused our certificate: it has not pinned our thumbprint)"),
	R(0x80090328u, "SEC_E_CERT_EXPIRED", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED,
	  " (a certificate in the handshake has expired)"),
	R(0x80090329u, "SEC_E_ENCRYPT_FAILURE", TETHER_ERR_TLS, TETHER_CAT_INTERNAL,
	  " (a TLS record could not be encrypted)"),
	R(0x80090330u, "SEC_E_DECRYPT_FAILURE", TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET,
	  " (a TLS record could not be decrypted; for a PFX file: wrong password)"),
	R(0x80090331u, "SEC_E_ALGORITHM_MISMATCH", TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_CIPHER,
	  " (no cipher suite in common)"),
	R(0x80090337u, "SEC_E_CRYPTO_SYSTEM_INVALID", TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_CIPHER,
	  " (no cipher this system allows in common with the peer)"),
	R(0x8009033Fu, "SEC_E_SHUTDOWN_IN_PROGRESS", TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
	  " (the TLS session is closing)"),
	R(0x80090349u, "SEC_E_CERT_WRONG_USAGE", TETHER_ERR_TLS, TETHER_CAT_NO_SHARED_SIGALG,
	  " (the certificate's key cannot sign with a scheme the peer accepts)"),
	R(0x8009035Du, "SEC_E_INVALID_PARAMETER", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
	  " (Schannel refused a parameter: a bug in tether or an old Windows)"),
	R(0x80090363u, "SEC_E_MUTUAL_AUTH_FAILED", TETHER_ERR_TLS, TETHER_CAT_UNTRUSTED,
	  " (the peer's certificate was refused)"),
	R(0x80090367u, "SEC_E_APPLICATION_PROTOCOL_MISMATCH", TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE,
	  " (no application protocol (ALPN) in common)"),
	/* CryptoAPI / CNG (identity and PFX work) */
	R(0x80090005u, "NTE_BAD_DATA", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
	  " (the data is damaged or not what was expected)"),
	R(0x80090009u, "NTE_BAD_FLAGS", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
	  " (the provider refused the flags: a bug in tether or an old Windows)"),
	R(0x8009000Bu, "NTE_BAD_KEY_STATE", TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE,
	  " (the private key was stored as not exportable)"),
	R(0x8009000Eu, "NTE_NO_MEMORY", TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
	  " (the key provider is out of memory)"),
	R(0x8009000Fu, "NTE_EXISTS", TETHER_ERR_EXISTS, TETHER_CAT_INTERNAL,
	  " (a key container of that name exists already)"),
	R(0x80090010u, "NTE_PERM", TETHER_ERR_PERMISSION, TETHER_CAT_IO,
	  " (machine keys need an administrator or LocalSystem)"),
	R(0x80090016u, "NTE_BAD_KEYSET", TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
	  " (the key container is gone)"),
	R(0x80090013u, "NTE_BAD_PROVIDER", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (the key storage provider is not installed)"),
	R(0x80090014u, "NTE_BAD_PROV_TYPE", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (the provider type is not supported here)"),
	R(0x80090017u, "NTE_PROV_TYPE_NOT_DEF", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (the provider type is not registered on this system)"),
	R(0x8009001Eu, "NTE_PROV_DLL_NOT_FOUND", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (the provider's DLL is missing)"),
	R(0x80090029u, "NTE_NOT_SUPPORTED", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (not supported by this system's key provider)"),
	R(0x80070005u, "E_ACCESSDENIED", TETHER_ERR_PERMISSION, TETHER_CAT_IO,
	  " (access denied: machine keys and the instance's files need an administrator or LocalSystem)"),
	R(0x80070078u, "ERROR_CALL_NOT_IMPLEMENTED", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (not implemented by this system)"),
	R(0x80090027u, "NTE_INVALID_PARAMETER", TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
	  " (the key provider refused a parameter: a bug in tether or an old Windows)"),
	R(0x80004001u, "E_NOTIMPL", TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	  " (not implemented by this system; Wine lacks several CNG and PFX functions)"),
	R(0x80070056u, "ERROR_INVALID_PASSWORD", TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
	  " (wrong PFX password)"),
	R(0x80092002u, "CRYPT_E_BAD_ENCODE", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
	  " (the data is not valid DER)"),
	R(0x8009310Bu, "CRYPT_E_ASN1_BADTAG", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
	  " (not a PKCS#12 file, or damaged)"),
	R(0x80093102u, "CRYPT_E_ASN1_EOD", TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
	  " (the file is truncated)"),
	R(0x80092004u, "CRYPT_E_NOT_FOUND", TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
	  " (the object or property is missing)"),
};
#undef R

int sch_status_row(size_t i, uint32_t *status, const char **name, const char **hint)
{
	if (i >= sizeof(rows) / sizeof(rows[0]))
		return 0;
	*status = rows[i].status;
	*name = rows[i].name;
	*hint = rows[i].hint;
	return 1;
}

static const struct status_row *find_row(uint32_t status)
{
	size_t i;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		if (rows[i].status == status)
			return &rows[i];
	return NULL;
}

void sch_status_lookup(uint32_t status, int tls, sch_status_map *out)
{
	const struct status_row *r = find_row(status);

	if (r) {
		out->code = r->code;
		out->category = r->category;
		out->name = r->name;
		/* outside TLS a decrypt failure of a PFX is a wrong password */
		if (!tls && status == 0x80090330u) {
			out->code = TETHER_ERR_PASSWORD;
			out->category = TETHER_CAT_BAD_PASSWORD;
		}
		return;
	}
	out->code = tls ? TETHER_ERR_TLS : TETHER_ERR_CRYPTO;
	out->category = tls ? TETHER_CAT_HANDSHAKE : TETHER_CAT_INTERNAL;
	out->name = NULL;
}

/* The CryptoAPI fallback is for systems without CNG persisted keys, not
 * for a CNG that refused: a permission error must not silently give a key
 * a LocalSystem service cannot open (a non-elevated user's key), so only
 * "this is not there" codes qualify, plus the two answers measured under
 * Wine 8.0, which has NCrypt keys but nothing that uses them:
 *  - CertCreateSelfSignCertificate with an NCrypt key handle fails with
 *    ERROR_INVALID_PARAMETER (it takes the handle for a CryptoAPI one);
 *  - PFXImportCertStore with PKCS12_ALWAYS_CNG_KSP returns NULL and sets
 *    no error (flags it does not know).
 * (NCryptOpenStorageProvider, NCryptCreatePersistedKey with
 * NCRYPT_MACHINE_KEY_FLAG and NCryptFinalizeKey all succeed there.) */
int sch_cng_unsupported(int step, uint32_t status)
{
	switch (status) {
	case 0x80090029u:        /* NTE_NOT_SUPPORTED */
	case 0x80004001u:        /* E_NOTIMPL */
	case 0x80090013u:        /* NTE_BAD_PROVIDER */
	case 0x80090014u:        /* NTE_BAD_PROV_TYPE */
	case 0x80090017u:        /* NTE_PROV_TYPE_NOT_DEF */
	case 0x8009001Eu:        /* NTE_PROV_DLL_NOT_FOUND */
	case 0x80070078u:        /* HRESULT_FROM_WIN32(ERROR_CALL_NOT_IMPLEMENTED) */
	case 0x80070032u:        /* HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED) */
		return step >= SCH_CNG_OPEN && step <= SCH_CNG_PFX_IMPORT;
	case 0x80070057u:        /* HRESULT_FROM_WIN32(ERROR_INVALID_PARAMETER) */
		return step == SCH_CNG_SELF_SIGN;
	case 0:
		return step == SCH_CNG_PFX_IMPORT;
	default:
		return 0;
	}
}

const char *sch_cng_advice(uint32_t status)
{
	switch (status) {
	case 0x80090010u:        /* NTE_PERM */
	case 0x80070005u:        /* E_ACCESSDENIED */
	case 0x80070522u:        /* HRESULT_FROM_WIN32(ERROR_PRIVILEGE_NOT_HELD) */
		return ": run the command elevated (an Administrator prompt) or as LocalSystem: "
		       "the key is a machine key so that the agent's service can use it";
	default:
		return ": no key was made; if this system's CNG key storage cannot be repaired, "
		       "set [schannel] key-storage = capi for a CryptoAPI key (TLS 1.2 at most)";
	}
}

int sch_err_set(tether_error *err, int code, int category, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		err->code = code;
		err->category = category;
		va_start(ap, fmt);
		vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
		va_end(ap);
	}
	return code;
}

int sch_err_status(tether_error *err, uint32_t status, int tls, const char *what)
{
	sch_status_map m;
	const struct status_row *r = find_row(status);

	sch_status_lookup(status, tls, &m);
	if (m.name)
		return sch_err_set(err, m.code, m.category, "%s: %s (0x%08x)%s", what, m.name,
		                   (unsigned)status, r ? r->hint : "");
	return sch_err_set(err, m.code, m.category, "%s: status 0x%08x", what, (unsigned)status);
}

/* SP_PROT_* bits (schannel.h) */
#define P_TLS1_2 (0x00000400u | 0x00000800u)
#define P_TLS1_3 (0x00001000u | 0x00002000u)
#define P_TLS1_1 (0x00000100u | 0x00000200u)
#define P_TLS1_0 (0x00000040u | 0x00000080u)

const char *sch_protocol_name(uint32_t p)
{
	if (p & P_TLS1_3)
		return "TLSv1.3";
	if (p & P_TLS1_2)
		return "TLSv1.2";
	if (p & P_TLS1_1)
		return "TLSv1.1";
	if (p & P_TLS1_0)
		return "TLSv1";
	return "";
}

static const struct { uint16_t id; const char *name; } suites[] = {
	{ 0x1301, "TLS_AES_128_GCM_SHA256" },
	{ 0x1302, "TLS_AES_256_GCM_SHA384" },
	{ 0x1303, "TLS_CHACHA20_POLY1305_SHA256" },
	{ 0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256" },
	{ 0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384" },
	{ 0xC02F, "ECDHE-RSA-AES128-GCM-SHA256" },
	{ 0xC030, "ECDHE-RSA-AES256-GCM-SHA384" },
	{ 0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305" },
	{ 0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305" },
};

const char *sch_cipher_name(uint16_t suite)
{
	size_t i;
	for (i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
		if (suites[i].id == suite)
			return suites[i].name;
	return NULL;
}

/* CryptoAPI ALG_IDs (wincrypt.h) */
#define A_ECDH_EPHEM 0xAE06u
#define A_ECDH 0xAA05u
#define A_AES_128 0x660Eu
#define A_AES_256 0x6610u
#define A_AES 0x6611u
#define A_SHA_256 0x800Cu
#define A_SHA_384 0x800Du

uint16_t sch_suite_from_algs(uint32_t exch, uint32_t cipher, uint32_t bits, uint32_t hash,
                             const char *key_type)
{
	int ec = key_type && strcmp(key_type, "ec") == 0;
	int b;

	if (exch != A_ECDH_EPHEM && exch != A_ECDH)
		return 0;
	if (cipher == A_AES_128)
		b = 128;
	else if (cipher == A_AES_256)
		b = 256;
	else if (cipher == A_AES)
		b = (int)bits;
	else
		return 0;
	if (b == 128 && hash == A_SHA_256)
		return ec ? 0xC02B : 0xC02F;
	if (b == 256 && hash == A_SHA_384)
		return ec ? 0xC02C : 0xC030;
	return 0;
}

static const struct { const char *oid; const char *name; } sigalgs[] = {
	{ "1.2.840.113549.1.1.11", "sha256WithRSAEncryption" },
	{ "1.2.840.113549.1.1.12", "sha384WithRSAEncryption" },
	{ "1.2.840.113549.1.1.13", "sha512WithRSAEncryption" },
	{ "1.2.840.113549.1.1.5", "sha1WithRSAEncryption" },
	{ "1.2.840.113549.1.1.10", "rsassaPss" },
	{ "1.2.840.10045.4.3.2", "ecdsa-with-SHA256" },
	{ "1.2.840.10045.4.3.3", "ecdsa-with-SHA384" },
	{ "1.2.840.10045.4.3.4", "ecdsa-with-SHA512" },
	{ "1.2.840.10045.4.1", "ecdsa-with-SHA1" },
};

const char *sch_sigalg_name(const char *oid)
{
	size_t i;
	if (!oid)
		return "";
	for (i = 0; i < sizeof(sigalgs) / sizeof(sigalgs[0]); i++)
		if (strcmp(sigalgs[i].oid, oid) == 0)
			return sigalgs[i].name;
	return oid;
}

const char *sch_slot_name(int slot)
{
	switch (slot) {
	case TETHER_SLOT_CURRENT: return "current";
	case TETHER_SLOT_STAGED: return "staged";
	case TETHER_SLOT_PREVIOUS: return "previous";
	default: return NULL;
	}
}

static unsigned get16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

/* TLS record (5) + handshake header (4) + ClientHello body; every length
 * is checked against what is there and what the enclosing field allows. */
int sch_parse_sni(const unsigned char *buf, size_t len, char *out, size_t cap)
{
	size_t rec_len, hs_len, off, end, ext_end;

	if (len < 5)
		return -1;
	if (buf[0] != 0x16 || buf[1] != 0x03)
		return -2;
	rec_len = get16(buf + 3);
	if (rec_len < 4 || rec_len > 16384)
		return -2;
	if (len < 5 + rec_len)
		return -1;
	if (buf[5] != 0x01)
		return -2;
	hs_len = (size_t)buf[6] << 16 | (size_t)buf[7] << 8 | buf[8];
	end = 9 + hs_len;
	if (end > 5 + rec_len)
		return 0;      /* hello spans records: no SNI seen (default identity) */
	off = 9 + 2 + 32;                       /* version, random */
	if (off + 1 > end)
		return -2;
	off += 1 + buf[off];                    /* session id */
	if (off + 2 > end)
		return -2;
	off += 2 + get16(buf + off);            /* cipher suites */
	if (off + 1 > end)
		return -2;
	off += 1 + buf[off];                    /* compression methods */
	if (off == end)
		return 0;                       /* no extensions */
	if (off + 2 > end)
		return -2;
	ext_end = off + 2 + get16(buf + off);
	if (ext_end > end)
		return -2;
	off += 2;
	while (off + 4 <= ext_end) {
		unsigned type = get16(buf + off), elen = get16(buf + off + 2);
		size_t e = off + 4, eend = e + elen, lend;
		if (eend > ext_end)
			return -2;
		if (type == 0) {        /* server_name: list, then (type, len, name) */
			if (e + 2 > eend)
				return -2;
			lend = e + 2 + get16(buf + e);
			if (lend > eend)
				return -2;
			e += 2;
			while (e + 3 <= lend) {
				unsigned nt = buf[e], nl = get16(buf + e + 1);
				if (e + 3 + nl > lend)
					return -2;
				if (nt == 0) {
					if (nl == 0 || nl >= cap)
						return -2;
					memcpy(out, buf + e + 3, nl);
					out[nl] = '\0';
					return 1;
				}
				e += 3 + nl;
			}
			return 0;
		}
		off = eend;
	}
	return 0;
}
