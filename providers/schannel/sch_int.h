/* tether-schannel.dll: internal declarations.
 *
 * File split as in the other providers: sch_provider.c (entry, table),
 * sch_identity.c (slots, keys, self-signed certificates, crypto helpers),
 * sch_pkcs12.c (PFX import/export), sch_tls.c (SSPI/Schannel over memory),
 * sch_err.c (SECURITY_STATUS -> categories, and the names of DESIGN.md).
 *
 * sch_err.c is plain C with no Windows header: it is compiled natively on
 * Linux as well and unit-tested there (tests/unit/sch_err_test.c). */
#ifndef TETHER_SCH_INT_H
#define TETHER_SCH_INT_H

#include <stddef.h>
#include <stdint.h>
#include "tether/provider.h"

/* ---- sch_err.c: pure tables (no Windows headers) -------------------- */

/* A SECURITY_STATUS (or HRESULT/NTE_* from CryptoAPI/CNG) as the ABI sees
 * it: the tether_err_code and the shared category, plus the status's
 * symbolic name ("SEC_E_ALGORITHM_MISMATCH") or NULL if unknown. */
typedef struct sch_status_map {
	int code;          /* enum tether_err_code */
	int category;      /* enum tether_category */
	const char *name;
} sch_status_map;

/* tls: 1 for a TLS operation (handshake, decrypt), 0 for identity/PFX
 * work; a few codes mean different things there (SEC_E_DECRYPT_FAILURE). */
void sch_status_lookup(uint32_t status, int tls, sch_status_map *out);

/* Row i of the status table (for its test): 1 with the status, its name and
 * its hint (" (...)"), 0 past the last row. */
int sch_status_row(size_t i, uint32_t *status, const char **name, const char **hint);
/* Fill err from a status: category from the table, detail
 * "<what>: <name> (0x%08x)<hint>".  Returns err->code (negative). */
int sch_err_status(tether_error *err, uint32_t status, int tls, const char *what);
/* Fill err with an explicit code/category and a formatted detail. */
int sch_err_set(tether_error *err, int code, int category, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Where making a CNG persisted key failed, for sch_cng_unsupported. */
enum sch_cng_step {
	SCH_CNG_OPEN = 1,        /* NCryptOpenStorageProvider */
	SCH_CNG_CREATE,          /* NCryptCreatePersistedKey, NCryptSetProperty, NCryptFinalizeKey */
	SCH_CNG_SELF_SIGN,       /* CertCreateSelfSignCertificate with the CNG key */
	SCH_CNG_PFX_IMPORT,      /* PFXImportCertStore with PKCS12_ALWAYS_CNG_KSP */
};
/* 1 if status (an HRESULT; GetLastError() as HRESULT_FROM_WIN32; 0 if the
 * call gave none) at step means that this system has no usable CNG
 * persisted keys, so the CryptoAPI fallback (TLS 1.2 at most) is right;
 * 0 if it is a failure to report (permissions, a damaged file, ...). */
int sch_cng_unsupported(int step, uint32_t status);
/* What to do about a CNG failure that is not "unsupported" (" : run ...").
 * Never NULL. */
const char *sch_cng_advice(uint32_t status);

/* "TLSv1.2" / "TLSv1.3" / "" from an SP_PROT_* bit set. */
const char *sch_protocol_name(uint32_t sp_prot);
/* OpenSSL's name of a TLS cipher suite id (0xC030 ->
 * "ECDHE-RSA-AES256-GCM-SHA384", 0x1302 -> "TLS_AES_256_GCM_SHA384");
 * NULL if it is not one tether allows. */
const char *sch_cipher_name(uint16_t suite);
/* Suite id from CryptoAPI algorithm ids when only SECPKG_ATTR_CONNECTION_INFO
 * is available (Wine): ECDHE + AES-128/256 (GCM) + SHA-256/384, with the
 * key type of the certificate ("rsa"/"ec").  0 if it is not one of those. */
uint16_t sch_suite_from_algs(uint32_t alg_exch, uint32_t alg_cipher, uint32_t cipher_bits,
                             uint32_t alg_hash, const char *key_type);
/* OpenSSL long name of a signature algorithm OID ("1.2.840.113549.1.1.11"
 * -> "sha256WithRSAEncryption"), or the OID itself if unknown. */
const char *sch_sigalg_name(const char *oid);
/* The server name of a TLS ClientHello at the start of buf (one record).
 * Returns 1 and copies it (NUL-terminated) if present, 0 if the hello has
 * no server_name, -1 if more bytes are needed, -2 if it is not a TLS
 * ClientHello. */
int sch_parse_sni(const unsigned char *buf, size_t len, char *out, size_t cap);
/* Slot names used in file names: "current", "staged", "previous". */
const char *sch_slot_name(int slot);

#ifdef _WIN32
/* ---- Windows-only part --------------------------------------------- */
#include <windows.h>
#include <wincrypt.h>
#include <ncrypt.h>
#define SECURITY_WIN32
#define SCHANNEL_USE_BLACKLISTS
#include <subauth.h>
#include <sspi.h>
#include <schannel.h>

/* Where a key lives. */
enum sch_key_kind {
	SCH_KEY_CNG = 1,     /* Microsoft Software Key Storage Provider, machine keys */
	SCH_KEY_CAPI = 2,    /* named CryptoAPI container (Wine); TLS 1.2 at most */
};
/* CryptoAPI containers tether makes are machine keysets (a LocalSystem
 * service can open them); slots written before that, with three lines in
 * their .key file, name user keysets. */
#define SCH_CAPI_MACHINE 1
#define SCH_CAPI_USER 0

struct tether_provider_ctx {
	tether_host host;
	char *dir;                       /* <state_dir>/identity-schannel */
	char *container_prefix;          /* "tether-<program>-<instance>" */
	int cng_broken;                  /* CNG persisted keys failed once: use CAPI */
	int capi_user;                   /* Schannel cannot use CAPI machine keysets here */
};

struct tether_identity {
	PCCERT_CONTEXT cert;             /* with CERT_KEY_PROV_INFO attached */
	int kind;                        /* enum sch_key_kind */
	int capi_machine;                /* SCH_KEY_CAPI: a machine keyset */
	unsigned char *der;
	size_t der_len;
};

void sch_log(tether_provider_ctx *p, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Error of a Win32/CryptoAPI call (GetLastError()). */
int sch_err_last(tether_error *err, int code, int category, const char *what);

/* sch_identity.c */
int sch_identity_generate(tether_provider_ctx *p, int slot, const tether_keygen_params *kp,
                          tether_error *err);
int sch_identity_promote(tether_provider_ctx *p, tether_error *err);
int sch_identity_remove(tether_provider_ctx *p, int slot, tether_error *err);
int sch_identity_exists(tether_provider_ctx *p, int slot, tether_error *err);
int sch_identity_load(tether_provider_ctx *p, int slot, tether_identity **out, tether_error *err);
int sch_identity_cert_der(const tether_identity *id, const unsigned char **der, size_t *len);
void sch_identity_free(tether_identity *id);
/* Store an identity whose key is already persisted: writes the slot's
 * .cer and .key files (key reference: kind, provider, container, and for
 * SCH_KEY_CAPI "machine" -- every CryptoAPI container made now is one). */
int sch_slot_store(tether_provider_ctx *p, int slot, const unsigned char *der, size_t len,
                   int kind, int capi_machine, const wchar_t *prov_name, const wchar_t *container,
                   tether_error *err);
/* A new CryptoAPI key in the machine container `container` (certificate
 * der): keep it there if this system's Schannel can use a machine keyset
 * for TLS, else (Wine 8.0: AcquireCredentialsHandle answers
 * SEC_E_UNKNOWN_CREDENTIALS) move it into a user container of the same
 * name, say so once at warning level, and use user containers for the
 * rest of the process.  *machine says where the key is now. */
int sch_capi_place(tether_provider_ctx *p, const unsigned char *der, size_t len,
                   const wchar_t *container, int *machine, tether_error *err);
/* Delete a persisted key (capi_machine: SCH_CAPI_MACHINE or SCH_CAPI_USER;
 * CNG keys are machine keys). */
void sch_key_delete(int kind, int capi_machine, const wchar_t *prov_name, const wchar_t *container);
/* The CNG failure (status, at step) is the "this system has no usable CNG
 * persisted keys" kind: mark CNG unusable for this process and log once, at
 * warning level, why, that CryptoAPI machine key containers are used
 * instead and that TLS is capped at 1.2. */
void sch_cng_fall_back(tether_provider_ctx *p, const char *why);
/* GetLastError() as an HRESULT (HRESULT_FROM_WIN32 of a Win32 code). */
uint32_t sch_last_status(void);
/* A fresh unique container name for slot. */
wchar_t *sch_container_name(tether_provider_ctx *p, int slot);
int sch_digest(int alg, const void *data, size_t len, unsigned char *out, size_t *out_len,
               tether_error *err);
int sch_digest_new(int alg, tether_digest_ctx **out, tether_error *err);
int sch_digest_update(tether_digest_ctx *d, const void *data, size_t len);
int sch_digest_final(tether_digest_ctx *d, unsigned char *out, size_t *out_len);
void sch_digest_free(tether_digest_ctx *d);
int sch_cert_info(const unsigned char *der, size_t len, tether_cert_info *out, tether_error *err);
int sch_random_bytes(void *buf, size_t len);
wchar_t *sch_wide(const char *s);

/* sch_pkcs12.c */
int sch_export_pkcs12(tether_provider_ctx *p, int slot, const char *password, int legacy,
                      unsigned char **out, size_t *out_len, tether_error *err);
int sch_import(tether_provider_ctx *p, int slot, const unsigned char *data, size_t len,
               const char *password, tether_error *err);
int sch_peek(tether_provider_ctx *p, const unsigned char *data, size_t len, const char *password,
             unsigned char **der, size_t *der_len, tether_error *err);

/* sch_tls.c */
int sch_tls_ctx_new(tether_provider_ctx *p, const tether_tls_ctx_params *params,
                    tether_tls_ctx **out, tether_error *err);
void sch_tls_ctx_free(tether_tls_ctx *c);
int sch_tls_new(tether_tls_ctx *c, const tether_tls_params *params, tether_tls **out,
                tether_error *err);
int sch_tls_handshake(tether_tls *t, tether_error *err);
int sch_tls_read(tether_tls *t, void *buf, size_t cap, size_t *n, tether_error *err);
int sch_tls_write(tether_tls *t, const void *buf, size_t len, tether_error *err);
int sch_tls_close(tether_tls *t);
int sch_tls_peer_cert(tether_tls *t, const unsigned char **der, size_t *len);
int sch_tls_info(tether_tls *t, tether_tls_info *out);
int sch_tls_reject(tether_tls *t);
void sch_tls_free(tether_tls *t);
#endif /* _WIN32 */

#endif
