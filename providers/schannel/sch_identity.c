/* Identity slots of the Schannel provider.
 *
 * A slot is two files in <state_dir>/identity-schannel/: <slot>.cer (the
 * certificate's DER) and <slot>.key (where its private key lives: "cng" or
 * "capi", the key storage provider and the container name).  Keys never
 * leave their store.  On Windows a key is a CNG persisted key of the
 * Microsoft Software Key Storage Provider, as a machine key (a LocalSystem
 * service can use it; RSA-PSS and TLS 1.3 work).  Where CNG persisted keys
 * are not supported (detected at run time by the failure's code,
 * sch_cng_unsupported: Wine 8.0), the key goes to a named CryptoAPI machine
 * container (MS_ENH_RSA_AES_PROV, PROV_RSA_AES, AT_KEYEXCHANGE), one
 * container per identity (a second import into one container overwrites
 * the first key), and TLS is capped at 1.2.  Any other CNG failure
 * (permissions) is an error.  Promotion renames the slot files; the
 * containers keep their names. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <io.h>
#include <sys/stat.h>
#include "sch_int.h"

#define KEYREF_MAX 2048

wchar_t *sch_wide(const char *s)
{
	int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
	wchar_t *w = n > 0 ? malloc((size_t)n * sizeof(wchar_t)) : NULL;

	if (w && MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n) <= 0) {
		free(w);
		w = NULL;
	}
	return w;
}

static char *narrow(const wchar_t *w)
{
	int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
	char *s = n > 0 ? malloc((size_t)n) : NULL;

	if (s && WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL) <= 0) {
		free(s);
		s = NULL;
	}
	return s;
}

static char *slot_path(tether_provider_ctx *p, int slot, const char *ext)
{
	size_t n = strlen(p->dir) + 32;
	char *s = malloc(n);

	if (s)
		snprintf(s, n, "%s\\%s.%s", p->dir, sch_slot_name(slot), ext);
	return s;
}

static int file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* Whole small file (at most max bytes) into a malloc'd buffer. */
static int read_small(const char *path, size_t max, unsigned char **out, size_t *len,
                      tether_error *err)
{
	FILE *f = fopen(path, "rb");
	unsigned char *buf;
	size_t n;

	if (!f)
		return sch_err_set(err, errno == ENOENT ? TETHER_ERR_NOT_FOUND : TETHER_ERR_IO,
		                   errno == ENOENT ? TETHER_CAT_NOT_FOUND : TETHER_CAT_IO,
		                   "cannot open %s: %s", path, strerror(errno));
	buf = malloc(max + 1);
	if (!buf) {
		fclose(f);
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	}
	n = fread(buf, 1, max + 1, f);
	fclose(f);
	if (n == 0 || n > max) {
		free(buf);
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "%s is %s: remove the slot and create or import the certificate again",
		                   path, n ? "too large" : "empty");
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

/* Atomic write: temporary file, flush to disk, MoveFileEx over the target.
 * The state directory's DACL (private to the owner, SYSTEM and
 * Administrators, set by the core) is inherited. */
static int write_atomic(const char *path, const void *data, size_t len, tether_error *err)
{
	size_t n = strlen(path) + 16;
	char *tmp = malloc(n);
	wchar_t *wt = NULL, *wp = NULL;
	HANDLE h = INVALID_HANDLE_VALUE;
	DWORD w;
	int r = 0;

	if (!tmp)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	snprintf(tmp, n, "%s.tmp", path);
	wt = sch_wide(tmp);
	wp = sch_wide(path);
	if (!wt || !wp) {
		r = sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_IO, "bad path %s", path);
		goto out;
	}
	h = CreateFileW(wt, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
	if (h == INVALID_HANDLE_VALUE) {
		r = sch_err_last(err, TETHER_ERR_IO, TETHER_CAT_IO, tmp);
		goto out;
	}
	if (!WriteFile(h, data, (DWORD)len, &w, NULL) || w != len || !FlushFileBuffers(h)) {
		r = sch_err_last(err, TETHER_ERR_IO, TETHER_CAT_IO, tmp);
		goto out;
	}
	CloseHandle(h);
	h = INVALID_HANDLE_VALUE;
	if (!MoveFileExW(wt, wp, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))
		r = sch_err_last(err, TETHER_ERR_IO, TETHER_CAT_IO, path);
out:
	if (h != INVALID_HANDLE_VALUE)
		CloseHandle(h);
	if (r < 0 && wt)
		DeleteFileW(wt);
	free(wt);
	free(wp);
	free(tmp);
	return r;
}

static int ensure_dir(tether_provider_ctx *p, tether_error *err)
{
	wchar_t *w = sch_wide(p->dir);
	int r = 0;

	if (!w)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_IO, "bad path %s", p->dir);
	if (!CreateDirectoryW(w, NULL) && GetLastError() != ERROR_ALREADY_EXISTS)
		r = sch_err_last(err, TETHER_ERR_IO, TETHER_CAT_IO, p->dir);
	free(w);
	return r;
}

wchar_t *sch_container_name(tether_provider_ctx *p, int slot)
{
	unsigned char rnd[8];
	char hex[17], name[256];
	int i;

	if (sch_random_bytes(rnd, sizeof(rnd)) < 0)
		return NULL;
	for (i = 0; i < 8; i++)
		snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
	snprintf(name, sizeof(name), "%s-%s-%s", p->container_prefix, sch_slot_name(slot), hex);
	return sch_wide(name);
}

void sch_key_delete(int kind, int capi_machine, const wchar_t *prov_name, const wchar_t *container)
{
	if (kind == SCH_KEY_CAPI) {
		HCRYPTPROV h = 0;
		CryptAcquireContextW(&h, container, prov_name ? prov_name : MS_ENH_RSA_AES_PROV_W,
		                     PROV_RSA_AES, CRYPT_DELETEKEYSET |
		                     (capi_machine ? CRYPT_MACHINE_KEYSET : 0));
	} else {
		NCRYPT_PROV_HANDLE prov = 0;
		NCRYPT_KEY_HANDLE key = 0;
		if (NCryptOpenStorageProvider(&prov, prov_name ? prov_name : MS_KEY_STORAGE_PROVIDER, 0) == 0) {
			if (NCryptOpenKey(prov, &key, container, 0, NCRYPT_MACHINE_KEY_FLAG) == 0)
				NCryptDeleteKey(key, 0);      /* frees the handle */
			NCryptFreeObject(prov);
		}
	}
}

/* <slot>.key: "cng|capi\n<provider>\n<container>\n" (UTF-8), and for capi
 * "machine\n" (a file without it, from an earlier version, names a user
 * keyset). */
int sch_slot_store(tether_provider_ctx *p, int slot, const unsigned char *der, size_t len,
                   int kind, int capi_machine, const wchar_t *prov_name, const wchar_t *container,
                   tether_error *err)
{
	char *cer = slot_path(p, slot, "cer"), *key = slot_path(p, slot, "key");
	char *pn = narrow(prov_name), *cn = narrow(container), ref[KEYREF_MAX];
	int r;

	if (!cer || !key || !pn || !cn) {
		r = sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	r = ensure_dir(p, err);
	if (r < 0)
		goto out;
	snprintf(ref, sizeof(ref), "%s\n%s\n%s\n%s", kind == SCH_KEY_CAPI ? "capi" : "cng", pn, cn,
	         kind != SCH_KEY_CAPI ? "" : capi_machine ? "machine\n" : "user\n");
	/* key reference first: a .cer without .key is never left behind */
	r = write_atomic(key, ref, strlen(ref), err);
	if (r == 0)
		r = write_atomic(cer, der, len, err);
out:
	free(cer);
	free(key);
	free(pn);
	free(cn);
	return r;
}

static int read_keyref(tether_provider_ctx *p, int slot, int *kind, int *capi_machine,
                       wchar_t **prov, wchar_t **container, tether_error *err)
{
	char *path = slot_path(p, slot, "key"), *l1, *l2, *l3, *l4, *save = NULL;
	unsigned char *buf = NULL;
	size_t len;
	int r;

	if (!path)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	r = read_small(path, KEYREF_MAX, &buf, &len, err);
	if (r < 0)
		goto out;
	l1 = strtok_r((char *)buf, "\r\n", &save);
	l2 = l1 ? strtok_r(NULL, "\r\n", &save) : NULL;
	l3 = l2 ? strtok_r(NULL, "\r\n", &save) : NULL;
	l4 = l3 ? strtok_r(NULL, "\r\n", &save) : NULL;
	if (!l3 || (strcmp(l1, "cng") && strcmp(l1, "capi")) ||
	    (l4 && strcmp(l4, "machine") && strcmp(l4, "user"))) {
		r = sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                "%s is damaged: remove the slot and create or import the certificate again",
		                path);
		goto out;
	}
	*kind = strcmp(l1, "capi") == 0 ? SCH_KEY_CAPI : SCH_KEY_CNG;
	*capi_machine = l4 && strcmp(l4, "machine") == 0 ? SCH_CAPI_MACHINE : SCH_CAPI_USER;
	*prov = sch_wide(l2);
	*container = sch_wide(l3);
out:
	free(buf);
	free(path);
	return r;
}

int sch_identity_exists(tether_provider_ctx *p, int slot, tether_error *err)
{
	char *cer;
	int r;

	if (!sch_slot_name(slot))
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, "bad slot %d", slot);
	cer = slot_path(p, slot, "cer");
	if (!cer)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	r = file_exists(cer);
	free(cer);
	return r;
}

int sch_identity_load(tether_provider_ctx *p, int slot, tether_identity **out, tether_error *err)
{
	char *cer = NULL;
	unsigned char *der = NULL;
	size_t len;
	wchar_t *prov = NULL, *container = NULL;
	int kind = 0, machine = 0, r;
	CRYPT_KEY_PROV_INFO kpi;
	PCCERT_CONTEXT cc = NULL;
	tether_identity *id;

	r = sch_identity_exists(p, slot, err);
	if (r <= 0) {
		if (r == 0)
			r = sch_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
			                "no %s certificate: create one with 'new-certificate' or "
			                "'import-certificate'", sch_slot_name(slot));
		return r;
	}
	cer = slot_path(p, slot, "cer");
	r = read_small(cer, 64 * 1024, &der, &len, err);
	if (r < 0)
		goto out;
	r = read_keyref(p, slot, &kind, &machine, &prov, &container, err);
	if (r < 0)
		goto out;
	cc = CertCreateCertificateContext(X509_ASN_ENCODING, der, (DWORD)len);
	if (!cc) {
		r = sch_err_last(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, cer);
		goto out;
	}
	memset(&kpi, 0, sizeof(kpi));
	kpi.pwszContainerName = container;
	kpi.pwszProvName = prov;
	if (kind == SCH_KEY_CAPI) {
		kpi.dwProvType = PROV_RSA_AES;
		kpi.dwKeySpec = AT_KEYEXCHANGE;
		kpi.dwFlags = machine ? CRYPT_MACHINE_KEYSET : 0;
	} else {
		kpi.dwProvType = 0;            /* CNG */
		kpi.dwFlags = NCRYPT_MACHINE_KEY_FLAG;
		kpi.dwKeySpec = 0;
	}
	if (!CertSetCertificateContextProperty(cc, CERT_KEY_PROV_INFO_PROP_ID, 0, &kpi)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot attach the private key to the certificate");
		goto out;
	}
	id = calloc(1, sizeof(*id));
	if (!id) {
		r = sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	id->cert = cc;
	id->kind = kind;
	id->capi_machine = machine;
	id->der = der;
	id->der_len = len;
	cc = NULL;
	der = NULL;
	*out = id;
out:
	if (cc)
		CertFreeCertificateContext(cc);
	free(der);
	free(cer);
	free(prov);
	free(container);
	return r;
}

int sch_identity_cert_der(const tether_identity *id, const unsigned char **der, size_t *len)
{
	if (!id)
		return TETHER_ERR_INVALID;
	*der = id->der;
	*len = id->der_len;
	return 0;
}

void sch_identity_free(tether_identity *id)
{
	if (!id)
		return;
	if (id->cert)
		CertFreeCertificateContext(id->cert);
	free(id->der);
	free(id);
}

int sch_identity_remove(tether_provider_ctx *p, int slot, tether_error *err)
{
	char *cer, *key;
	wchar_t *prov = NULL, *container = NULL;
	int kind, machine, r;

	r = sch_identity_exists(p, slot, err);
	if (r <= 0)
		return r == 0 ? sch_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                            "the %s slot is empty", sch_slot_name(slot)) : r;
	if (read_keyref(p, slot, &kind, &machine, &prov, &container, NULL) == 0)
		sch_key_delete(kind, machine, prov, container);
	free(prov);
	free(container);
	cer = slot_path(p, slot, "cer");
	key = slot_path(p, slot, "key");
	r = 0;
	if (cer && remove(cer) < 0 && errno != ENOENT)
		r = sch_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot remove %s: %s", cer, strerror(errno));
	if (key)
		remove(key);
	free(cer);
	free(key);
	return r;
}

static int move_slot(tether_provider_ctx *p, int from, int to, tether_error *err)
{
	const char *ext[2] = { "key", "cer" };
	int i, r = 0;

	for (i = 0; i < 2 && r == 0; i++) {
		char *a = slot_path(p, from, ext[i]), *b = slot_path(p, to, ext[i]);
		wchar_t *wa = a ? sch_wide(a) : NULL, *wb = b ? sch_wide(b) : NULL;
		if (!wa || !wb)
			r = sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		else if (!MoveFileExW(wa, wb, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))
			r = sch_err_last(err, TETHER_ERR_IO, TETHER_CAT_IO, a);
		free(wa);
		free(wb);
		free(a);
		free(b);
	}
	return r;
}

int sch_identity_promote(tether_provider_ctx *p, tether_error *err)
{
	int r = sch_identity_exists(p, TETHER_SLOT_STAGED, err);

	if (r <= 0)
		return r == 0 ? sch_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                            "no staged certificate to promote") : r;
	if (sch_identity_exists(p, TETHER_SLOT_PREVIOUS, err) == 1) {
		r = sch_identity_remove(p, TETHER_SLOT_PREVIOUS, err);
		if (r < 0)
			return r;
	}
	if (sch_identity_exists(p, TETHER_SLOT_CURRENT, err) == 1) {
		r = move_slot(p, TETHER_SLOT_CURRENT, TETHER_SLOT_PREVIOUS, err);
		if (r < 0)
			return r;
	}
	return move_slot(p, TETHER_SLOT_STAGED, TETHER_SLOT_CURRENT, err);
}

/* Can this system's Schannel use the CryptoAPI key in container (machine
 * or user keyset) as the private key of certificate der?  Returns the
 * status of AcquireCredentialsHandle (SEC_E_OK: yes), which is where
 * Schannel opens the key. */
static uint32_t capi_schannel_status(const unsigned char *der, size_t len,
                                     const wchar_t *container, int machine)
{
	PCCERT_CONTEXT cc = CertCreateCertificateContext(X509_ASN_ENCODING, der, (DWORD)len);
	CRYPT_KEY_PROV_INFO kpi;
	SCHANNEL_CRED sc;
	CredHandle cred;
	TimeStamp ts;
	SECURITY_STATUS s;

	if (!cc)
		return sch_last_status();
	memset(&kpi, 0, sizeof(kpi));
	kpi.pwszContainerName = (LPWSTR)container;
	kpi.pwszProvName = (LPWSTR)MS_ENH_RSA_AES_PROV_W;
	kpi.dwProvType = PROV_RSA_AES;
	kpi.dwKeySpec = AT_KEYEXCHANGE;
	kpi.dwFlags = machine ? CRYPT_MACHINE_KEYSET : 0;
	if (!CertSetCertificateContextProperty(cc, CERT_KEY_PROV_INFO_PROP_ID, 0, &kpi)) {
		s = (SECURITY_STATUS)sch_last_status();
		CertFreeCertificateContext(cc);
		return (uint32_t)s;
	}
	memset(&sc, 0, sizeof(sc));
	sc.dwVersion = SCHANNEL_CRED_VERSION;
	sc.cCreds = 1;
	sc.paCred = &cc;
	sc.grbitEnabledProtocols = SP_PROT_TLS1_2_CLIENT;
	sc.dwFlags = SCH_CRED_MANUAL_CRED_VALIDATION | SCH_CRED_NO_DEFAULT_CREDS;
	s = AcquireCredentialsHandleW(NULL, (LPWSTR)UNISP_NAME_W, SECPKG_CRED_OUTBOUND, NULL, &sc,
	                              NULL, NULL, &cred, &ts);
	if (s == SEC_E_OK)
		FreeCredentialsHandle(&cred);
	CertFreeCertificateContext(cc);
	return (uint32_t)s;
}

/* Copy the key of machine container `container` into a new user container
 * of the same name, then delete the machine one. */
static int capi_to_user(const wchar_t *container, tether_error *err)
{
	HCRYPTPROV src = 0, dst = 0;
	HCRYPTKEY k = 0, nk = 0;
	BYTE *blob = NULL;
	DWORD n = 0;
	int r = 0;

	if (!CryptAcquireContextW(&src, container, MS_ENH_RSA_AES_PROV_W, PROV_RSA_AES,
	                          CRYPT_MACHINE_KEYSET) ||
	    !CryptGetUserKey(src, AT_KEYEXCHANGE, &k) ||
	    !CryptExportKey(k, 0, PRIVATEKEYBLOB, 0, NULL, &n) || !(blob = malloc(n)) ||
	    !CryptExportKey(k, 0, PRIVATEKEYBLOB, 0, blob, &n)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot read the key of the CryptoAPI machine container");
		goto out;
	}
	if (!CryptAcquireContextW(&dst, container, MS_ENH_RSA_AES_PROV_W, PROV_RSA_AES, CRYPT_NEWKEYSET) ||
	    !CryptImportKey(dst, blob, n, 0, CRYPT_EXPORTABLE, &nk)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot store the key in a CryptoAPI user container");
		if (dst) {
			CryptReleaseContext(dst, 0);
			dst = 0;
			sch_key_delete(SCH_KEY_CAPI, SCH_CAPI_USER, NULL, container);
		}
	}
out:
	if (blob) {
		SecureZeroMemory(blob, n);
		free(blob);
	}
	if (nk)
		CryptDestroyKey(nk);
	if (k)
		CryptDestroyKey(k);
	if (dst)
		CryptReleaseContext(dst, 0);
	if (src)
		CryptReleaseContext(src, 0);
	if (r == 0)
		sch_key_delete(SCH_KEY_CAPI, SCH_CAPI_MACHINE, NULL, container);
	return r;
}

int sch_capi_place(tether_provider_ctx *p, const unsigned char *der, size_t len,
                   const wchar_t *container, int *machine, tether_error *err)
{
	uint32_t s;
	int r;

	*machine = SCH_CAPI_MACHINE;
	if (!p->capi_user) {
		s = capi_schannel_status(der, len, container, SCH_CAPI_MACHINE);
		/* only this answer means "not from a machine keyset"; any other
		 * failure is the TLS code's to report, with the key where it
		 * belongs */
		if (s != (uint32_t)SEC_E_UNKNOWN_CREDENTIALS)
			return 0;
		p->capi_user = 1;
		sch_log(p, TETHER_LOG_WARN, "this system's Schannel cannot use a key in a CryptoAPI "
		        "machine key container (AcquireCredentialsHandle: SEC_E_UNKNOWN_CREDENTIALS, as "
		        "under Wine 8.0): the key goes to a user key container, which only this "
		        "account can open (a service must run as the same account)");
	}
	r = capi_to_user(container, err);
	if (r == 0)
		*machine = SCH_CAPI_USER;
	return r;
}

/* ---- key generation ---------------------------------------------------- */

static int key_bits(int type)
{
	switch (type) {
	case TETHER_KEY_RSA2048: return 2048;
	case TETHER_KEY_RSA3072: return 3072;
	case TETHER_KEY_RSA4096: return 4096;
	default: return 0;
	}
}

/* CNG persisted machine key.  Returns 0, or a negative code with err set
 * and *status, *step saying what failed (sch_cng_unsupported decides
 * whether the caller falls back to CryptoAPI). */
static int cng_generate(const wchar_t *name, int type, NCRYPT_KEY_HANDLE *out, uint32_t *status,
                        int *step, tether_error *err)
{
	NCRYPT_PROV_HANDLE prov = 0;
	NCRYPT_KEY_HANDLE key = 0;
	const wchar_t *alg = type == TETHER_KEY_EC_P256 ? BCRYPT_ECDSA_P256_ALGORITHM :
	                     type == TETHER_KEY_EC_P384 ? BCRYPT_ECDSA_P384_ALGORITHM :
	                     BCRYPT_RSA_ALGORITHM;
	DWORD bits = (DWORD)key_bits(type);
	DWORD policy = NCRYPT_ALLOW_EXPORT_FLAG | NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG;
	SECURITY_STATUS s;
	int r = 0;

	*step = SCH_CNG_OPEN;
	*status = (uint32_t)(s = NCryptOpenStorageProvider(&prov, MS_KEY_STORAGE_PROVIDER, 0));
	if (s != 0)
		return sch_err_status(err, (uint32_t)s, 0, "NCryptOpenStorageProvider");
	*step = SCH_CNG_CREATE;
	*status = (uint32_t)(s = NCryptCreatePersistedKey(prov, &key, alg, name, 0, NCRYPT_MACHINE_KEY_FLAG));
	if (s != 0) {
		r = sch_err_status(err, (uint32_t)s, 0, "NCryptCreatePersistedKey (a machine key)");
		key = 0;
		goto out;
	}
	if (bits)
		s = NCryptSetProperty(key, NCRYPT_LENGTH_PROPERTY, (PBYTE)&bits, sizeof(bits), 0);
	if (s == 0)
		s = NCryptSetProperty(key, NCRYPT_EXPORT_POLICY_PROPERTY, (PBYTE)&policy, sizeof(policy), 0);
	if (s == 0)
		s = NCryptFinalizeKey(key, 0);
	*status = (uint32_t)s;
	if (s != 0) {
		r = sch_err_status(err, (uint32_t)s, 0, "NCryptFinalizeKey (a machine key)");
		NCryptDeleteKey(key, 0);
		key = 0;
		goto out;
	}
	*out = key;
	key = 0;
out:
	if (key)
		NCryptFreeObject(key);
	NCryptFreeObject(prov);
	return r;
}

static int capi_generate(const wchar_t *name, int type, HCRYPTPROV *out, tether_error *err)
{
	HCRYPTPROV h = 0;
	HCRYPTKEY k = 0;
	int bits = key_bits(type);

	if (!bits)
		return sch_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                   "EC keys need CNG, which this system lacks (CryptoAPI fallback, as "
		                   "under Wine): use --key-type rsa2048, rsa3072 or rsa4096");
	if (!CryptAcquireContextW(&h, name, MS_ENH_RSA_AES_PROV_W, PROV_RSA_AES,
	                          CRYPT_NEWKEYSET | CRYPT_MACHINE_KEYSET))
		return sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                    "cannot create a CryptoAPI machine key container");
	if (!CryptGenKey(h, AT_KEYEXCHANGE, ((DWORD)bits << 16) | CRYPT_EXPORTABLE, &k)) {
		int r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                     "cannot generate an RSA key");
		CryptReleaseContext(h, 0);
		sch_key_delete(SCH_KEY_CAPI, SCH_CAPI_MACHINE, NULL, name);
		return r;
	}
	CryptDestroyKey(k);
	*out = h;
	return 0;
}

static void to_systemtime(int64_t t, SYSTEMTIME *st)
{
	/* seconds since 1970 -> 100 ns since 1601 */
	ULARGE_INTEGER u;
	FILETIME ft;

	u.QuadPart = (ULONGLONG)(t + 11644473600LL) * 10000000ULL;
	ft.dwLowDateTime = u.LowPart;
	ft.dwHighDateTime = u.HighPart;
	FileTimeToSystemTime(&ft, st);
}

/* Self-signed certificate, sha256 (RSA: sha256RSA; EC: sha256ECDSA). */
static int self_sign(HCRYPTPROV_OR_NCRYPT_KEY_HANDLE key, int kind, int type,
                     const wchar_t *container, const tether_keygen_params *kp,
                     PCCERT_CONTEXT *out, uint32_t *status, tether_error *err)
{
	char cn[200];
	wchar_t *x500 = NULL;
	BYTE name_buf[512];
	CERT_NAME_BLOB name;
	DWORD name_len = sizeof(name_buf);
	CRYPT_ALGORITHM_IDENTIFIER alg;
	CRYPT_KEY_PROV_INFO kpi;
	SYSTEMTIME start, end;
	int64_t now = (int64_t)time(NULL);
	uint32_t days = kp && kp->validity_days ? kp->validity_days : 7300;
	PCCERT_CONTEXT cc;
	int r = 0;

	/* generic subject; characters that X.500 strings treat specially are refused */
	snprintf(cn, sizeof(cn), "CN=%s", kp && kp->subject_cn && *kp->subject_cn ? kp->subject_cn : "tether");
	if (strpbrk(cn + 3, ",+=\"\\<>;#"))
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "subject '%s' has characters a certificate name cannot carry here",
		                   cn + 3);
	x500 = sch_wide(cn);
	if (!x500 || !CertStrToNameW(X509_ASN_ENCODING, x500, CERT_X500_NAME_STR, NULL, name_buf,
	                             &name_len, NULL)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "CertStrToName");
		goto out;
	}
	name.cbData = name_len;
	name.pbData = name_buf;
	memset(&alg, 0, sizeof(alg));
	alg.pszObjId = (type == TETHER_KEY_EC_P256) ? (LPSTR)szOID_ECDSA_SHA256 :
	               (type == TETHER_KEY_EC_P384) ? (LPSTR)szOID_ECDSA_SHA384 :
	               (LPSTR)szOID_RSA_SHA256RSA;
	memset(&kpi, 0, sizeof(kpi));
	kpi.pwszContainerName = (LPWSTR)container;
	if (kind == SCH_KEY_CAPI) {
		kpi.pwszProvName = (LPWSTR)MS_ENH_RSA_AES_PROV_W;
		kpi.dwProvType = PROV_RSA_AES;
		kpi.dwKeySpec = AT_KEYEXCHANGE;
		kpi.dwFlags = CRYPT_MACHINE_KEYSET;
	} else {
		kpi.pwszProvName = (LPWSTR)MS_KEY_STORAGE_PROVIDER;
		kpi.dwFlags = NCRYPT_MACHINE_KEY_FLAG;
	}
	to_systemtime(now - 3600, &start);      /* an hour of clock skew */
	to_systemtime(now + (int64_t)days * 86400, &end);
	cc = CertCreateSelfSignCertificate(key, &name, 0, &kpi, &alg, &start, &end, NULL);
	if (!cc) {
		*status = sch_last_status();
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "CertCreateSelfSignCertificate");
		goto out;
	}
	*out = cc;
out:
	free(x500);
	return r;
}

int sch_identity_generate(tether_provider_ctx *p, int slot, const tether_keygen_params *kp,
                          tether_error *err)
{
	int type = kp ? kp->key_type : TETHER_KEY_RSA2048;
	wchar_t *name = NULL;
	PCCERT_CONTEXT cc = NULL;
	int kind = SCH_KEY_CNG, machine = 0, r;
	tether_error cng_err;

	if (type < 0 || type >= TETHER_KEY__COUNT)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "unknown key type %d", type);
	r = sch_identity_exists(p, slot, err);
	if (r != 0)
		return r < 0 ? r : sch_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_INTERNAL,
		                               "the %s slot is in use", sch_slot_name(slot));
	name = sch_container_name(p, slot);
	if (!name)
		return sch_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                   "no random bytes for a key container name");
	memset(&cng_err, 0, sizeof(cng_err));
	if (!p->cng_broken) {
		NCRYPT_KEY_HANDLE key = 0;
		uint32_t status = 0;
		int step = 0;
		r = cng_generate(name, type, &key, &status, &step, &cng_err);
		if (r == 0) {
			step = SCH_CNG_SELF_SIGN;
			r = self_sign(key, SCH_KEY_CNG, type, name, kp, &cc, &status, &cng_err);
			NCryptFreeObject(key);
			if (r < 0)
				sch_key_delete(SCH_KEY_CNG, 0, NULL, name);
		}
		if (r < 0 && !sch_cng_unsupported(step, status)) {
			/* CNG is there but refused (permissions, ...): say so, never
			 * quietly make a key the agent's service may not open */
			r = sch_err_set(err, cng_err.code, cng_err.category, "cannot make the CNG machine "
			                "key: %s%s", cng_err.detail, sch_cng_advice(status));
			goto out;
		}
		if (r < 0)
			sch_cng_fall_back(p, cng_err.detail);      /* detected at run time (Wine) */
	}
	if (!cc) {
		HCRYPTPROV h = 0;
		uint32_t status = 0;
		kind = SCH_KEY_CAPI;
		machine = SCH_CAPI_MACHINE;
		free(name);
		name = sch_container_name(p, slot);
		if (!name)
			return sch_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
			                   "no random bytes for a key container name");
		r = capi_generate(name, type, &h, err);
		if (r < 0)
			goto out;
		r = self_sign(h, SCH_KEY_CAPI, type, name, kp, &cc, &status, err);
		CryptReleaseContext(h, 0);
		if (r < 0) {
			sch_key_delete(SCH_KEY_CAPI, SCH_CAPI_MACHINE, NULL, name);
			goto out;
		}
		r = sch_capi_place(p, cc->pbCertEncoded, cc->cbCertEncoded, name, &machine, err);
		if (r < 0)
			goto out;
	}
	r = sch_slot_store(p, slot, cc->pbCertEncoded, cc->cbCertEncoded, kind, machine,
	                   kind == SCH_KEY_CAPI ? MS_ENH_RSA_AES_PROV_W : MS_KEY_STORAGE_PROVIDER,
	                   name, err);
	if (r < 0)
		sch_key_delete(kind, machine, NULL, name);
out:
	if (cc)
		CertFreeCertificateContext(cc);
	free(name);
	return r;
}

/* ---- crypto helpers: CryptoAPI hashing (works on Wine and Windows) ------ */

struct tether_digest_ctx {
	HCRYPTPROV prov;
	HCRYPTHASH hash;
	int alg;
};

static HCRYPTPROV verify_prov(void)
{
	HCRYPTPROV h = 0;
	if (!CryptAcquireContextW(&h, NULL, MS_ENH_RSA_AES_PROV_W, PROV_RSA_AES, CRYPT_VERIFYCONTEXT))
		return 0;
	return h;
}

int sch_digest_new(int alg, tether_digest_ctx **out, tether_error *err)
{
	tether_digest_ctx *d;
	ALG_ID a = alg == TETHER_DIGEST_SHA1 ? CALG_SHA1 : CALG_SHA_256;

	if (alg != TETHER_DIGEST_SHA1 && alg != TETHER_DIGEST_SHA256)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, "unknown digest %d", alg);
	d = calloc(1, sizeof(*d));
	if (!d)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	d->alg = alg;
	d->prov = verify_prov();
	if (!d->prov || !CryptCreateHash(d->prov, a, 0, 0, &d->hash)) {
		int r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "CryptCreateHash");
		sch_digest_free(d);
		return r;
	}
	*out = d;
	return 0;
}

int sch_digest_update(tether_digest_ctx *d, const void *data, size_t len)
{
	const BYTE *b = data;

	while (len > 0) {
		DWORD n = len > 0x40000000 ? 0x40000000 : (DWORD)len;
		if (!CryptHashData(d->hash, b, n, 0))
			return TETHER_ERR_CRYPTO;
		b += n;
		len -= n;
	}
	return 0;
}

int sch_digest_final(tether_digest_ctx *d, unsigned char *out, size_t *out_len)
{
	DWORD n = d->alg == TETHER_DIGEST_SHA1 ? TETHER_SHA1_LEN : TETHER_SHA256_LEN;
	int r = 0;

	if (!CryptGetHashParam(d->hash, HP_HASHVAL, out, &n, 0))
		r = TETHER_ERR_CRYPTO;
	else
		*out_len = n;
	sch_digest_free(d);
	return r;
}

void sch_digest_free(tether_digest_ctx *d)
{
	if (!d)
		return;
	if (d->hash)
		CryptDestroyHash(d->hash);
	if (d->prov)
		CryptReleaseContext(d->prov, 0);
	free(d);
}

int sch_digest(int alg, const void *data, size_t len, unsigned char *out, size_t *out_len,
               tether_error *err)
{
	tether_digest_ctx *d;
	int r = sch_digest_new(alg, &d, err);

	if (r < 0)
		return r;
	if (sch_digest_update(d, data, len) < 0) {
		sch_digest_free(d);
		return sch_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "CryptHashData failed");
	}
	if (sch_digest_final(d, out, out_len) < 0)
		return sch_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "CryptGetHashParam failed");
	return 0;
}

int sch_random_bytes(void *buf, size_t len)
{
	HCRYPTPROV h = verify_prov();
	int r = 0;

	if (!h)
		return TETHER_ERR_CRYPTO;
	if (len > 0xffffffffu || !CryptGenRandom(h, (DWORD)len, buf))
		r = TETHER_ERR_CRYPTO;
	CryptReleaseContext(h, 0);
	return r;
}

static int64_t from_filetime(const FILETIME *ft)
{
	ULARGE_INTEGER u;
	u.LowPart = ft->dwLowDateTime;
	u.HighPart = ft->dwHighDateTime;
	return (int64_t)(u.QuadPart / 10000000ULL) - 11644473600LL;
}

int sch_cert_info(const unsigned char *der, size_t len, tether_cert_info *out, tether_error *err)
{
	PCCERT_CONTEXT cc = CertCreateCertificateContext(X509_ASN_ENCODING, der, (DWORD)len);
	tether_cert_info ci;
	const char *koid;
	CRYPT_INTEGER_BLOB *sn;
	wchar_t w[256];
	DWORD i;

	if (!cc)
		return sch_err_last(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "cannot parse the certificate");
	memset(&ci, 0, sizeof(ci));
	if (CertNameToStrW(X509_ASN_ENCODING, &cc->pCertInfo->Subject,
	                   CERT_X500_NAME_STR | CERT_NAME_STR_REVERSE_FLAG, w, 256))
		WideCharToMultiByte(CP_UTF8, 0, w, -1, ci.subject, sizeof(ci.subject), NULL, NULL);
	if (CertNameToStrW(X509_ASN_ENCODING, &cc->pCertInfo->Issuer,
	                   CERT_X500_NAME_STR | CERT_NAME_STR_REVERSE_FLAG, w, 256))
		WideCharToMultiByte(CP_UTF8, 0, w, -1, ci.issuer, sizeof(ci.issuer), NULL, NULL);
	sn = &cc->pCertInfo->SerialNumber;         /* little-endian */
	for (i = 0; i < sn->cbData && 2 * i + 2 < sizeof(ci.serial_hex); i++)
		snprintf(ci.serial_hex + 2 * i, 3, "%02x", sn->pbData[sn->cbData - 1 - i]);
	ci.not_before = from_filetime(&cc->pCertInfo->NotBefore);
	ci.not_after = from_filetime(&cc->pCertInfo->NotAfter);
	snprintf(ci.cert_signature_algorithm, sizeof(ci.cert_signature_algorithm), "%s",
	         sch_sigalg_name(cc->pCertInfo->SignatureAlgorithm.pszObjId));
	koid = cc->pCertInfo->SubjectPublicKeyInfo.Algorithm.pszObjId;
	if (koid && strcmp(koid, szOID_RSA_RSA) == 0) {
		snprintf(ci.key_type, sizeof(ci.key_type), "rsa");
	} else if (koid && strcmp(koid, szOID_ECC_PUBLIC_KEY) == 0) {
		CRYPT_OBJID_BLOB *prm = &cc->pCertInfo->SubjectPublicKeyInfo.Algorithm.Parameters;
		snprintf(ci.key_type, sizeof(ci.key_type), "ec");
		/* the named curve OID, DER-encoded: compare its last bytes */
		if (prm->cbData == 10 && prm->pbData[9] == 0x07)
			snprintf(ci.curve, sizeof(ci.curve), "prime256v1");
		else if (prm->cbData == 7 && prm->pbData[6] == 0x22)
			snprintf(ci.curve, sizeof(ci.curve), "secp384r1");
	} else {
		snprintf(ci.key_type, sizeof(ci.key_type), "%s", koid ? koid : "?");
	}
	ci.key_bits = (int)CertGetPublicKeyLength(X509_ASN_ENCODING, &cc->pCertInfo->SubjectPublicKeyInfo);
	ci.self_signed = CertCompareCertificateName(X509_ASN_ENCODING, &cc->pCertInfo->Subject,
	                                            &cc->pCertInfo->Issuer) ? 1 : 0;
	CertFreeCertificateContext(cc);
	*out = ci;
	return 0;
}
