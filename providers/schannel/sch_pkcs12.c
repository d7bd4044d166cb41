/* PKCS#12 (PFX) import and export with the Windows certificate APIs.
 *
 * Import: PFXImportCertStore.  Where it gives a CNG key (Windows), the key
 * stays where Windows put it (a machine key with a unique name).  Where it
 * gives a CryptoAPI key (Wine), the key is copied into a container of our
 * own, one per identity, and the container PFXImportCertStore made is
 * deleted: Wine names that container after the certificate, so a second
 * import would overwrite the first key.
 *
 * Export: PFXExportCertStoreEx (AES-256/SHA-256 unless legacy).  Wine 8.0
 * implements it as a stub; that is detected and said. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sch_int.h"

#ifndef PKCS12_PBES2_EXPORT_AES256_SHA256
#define PKCS12_PBES2_EXPORT_AES256_SHA256 0x00100000   /* Windows 10 1709 and later */
#endif

static int is_pem(const unsigned char *d, size_t n)
{
	return n > 11 && memcmp(d, "-----BEGIN ", 11) == 0;
}

static void delete_imported_key(PCCERT_CONTEXT cc)
{
	DWORD n = 0;
	CRYPT_KEY_PROV_INFO *kpi;

	if (!CertGetCertificateContextProperty(cc, CERT_KEY_PROV_INFO_PROP_ID, NULL, &n) || !n)
		return;
	kpi = malloc(n);
	if (kpi && CertGetCertificateContextProperty(cc, CERT_KEY_PROV_INFO_PROP_ID, kpi, &n)) {
		if (kpi->dwProvType == 0) {
			NCRYPT_PROV_HANDLE prov = 0;
			NCRYPT_KEY_HANDLE key = 0;
			if (NCryptOpenStorageProvider(&prov, kpi->pwszProvName, 0) == 0) {
				if (NCryptOpenKey(prov, &key, kpi->pwszContainerName, 0,
				                  kpi->dwFlags & NCRYPT_MACHINE_KEY_FLAG) == 0)
					NCryptDeleteKey(key, 0);
				NCryptFreeObject(prov);
			}
		} else {
			HCRYPTPROV h = 0;
			CryptAcquireContextW(&h, kpi->pwszContainerName, kpi->pwszProvName, kpi->dwProvType,
			                     CRYPT_DELETEKEYSET | (kpi->dwFlags & CRYPT_MACHINE_KEYSET));
		}
	}
	free(kpi);
}

/* Import data into a certificate store; *leaf is the certificate that has
 * a private key (exactly one is expected). */
static int pfx_open(const unsigned char *data, size_t len, const char *password, DWORD flags,
                    HCERTSTORE *store_out, PCCERT_CONTEXT *leaf, uint32_t *status,
                    tether_error *err)
{
	CRYPT_DATA_BLOB blob;
	wchar_t *wpw = NULL;
	HCERTSTORE st;
	PCCERT_CONTEXT cc = NULL, found = NULL;
	int nkeys = 0, r = 0;

	*status = 0;
	if (is_pem(data, len))
		return sch_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                   "the schannel provider imports PFX (PKCS#12) files only: convert the "
		                   "PEM with 'openssl pkcs12 -export -in cert.pem -inkey key.pem -out id.pfx'");
	blob.cbData = (DWORD)len;
	blob.pbData = (BYTE *)data;
	if (len > 0x7fffffff || !PFXIsPFXBlob(&blob))
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "the file is not a PFX (PKCS#12) file, or it is damaged");
	wpw = sch_wide(password ? password : "");
	if (!wpw)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	SetLastError(0);
	st = PFXImportCertStore(&blob, wpw, flags);
	*status = st ? 0 : sch_last_status();
	SecureZeroMemory(wpw, wcslen(wpw) * sizeof(wchar_t));
	free(wpw);
	if (!st && GetLastError() == 0)     /* Wine reports nothing */
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "PFXImportCertStore could not read the file and gave no reason: "
		                   "check the password, or re-export the PFX (AES-256 or 3DES)");
	if (!st) {
		r = sch_err_last(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "PFXImportCertStore");
		if (r == TETHER_ERR_PASSWORD || err->category == TETHER_CAT_BAD_PASSWORD)
			sch_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
			            "wrong password for the PFX file: give the password it was exported with");
		return err->code;
	}
	while ((cc = CertEnumCertificatesInStore(st, cc)) != NULL) {
		DWORD n = 0;
		if (CertGetCertificateContextProperty(cc, CERT_KEY_PROV_INFO_PROP_ID, NULL, &n)) {
			nkeys++;
			if (!found)
				found = CertDuplicateCertificateContext(cc);
		}
	}
	if (nkeys != 1) {
		r = sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                nkeys ? "the PFX file holds %d private keys: export exactly one identity"
		                      : "the PFX file holds no private key (%d): export it with its key",
		                nkeys);
		while ((cc = CertEnumCertificatesInStore(st, cc)) != NULL)
			delete_imported_key(cc);
		if (found)
			CertFreeCertificateContext(found);
		CertCloseStore(st, 0);
		return r;
	}
	*store_out = st;
	*leaf = found;
	return 0;
}

static void pfx_close(HCERTSTORE st, PCCERT_CONTEXT leaf, int delete_keys)
{
	PCCERT_CONTEXT cc = NULL;

	if (delete_keys)
		while ((cc = CertEnumCertificatesInStore(st, cc)) != NULL)
			delete_imported_key(cc);
	if (leaf)
		CertFreeCertificateContext(leaf);
	CertCloseStore(st, 0);
}

/* Copy a CryptoAPI private key into our own container; check it matches
 * the certificate. */
static int capi_rehome(PCCERT_CONTEXT leaf, const wchar_t *container, tether_error *err)
{
	HCRYPTPROV src = 0, dst = 0;
	HCRYPTKEY k = 0, nk = 0;
	DWORD spec = 0, n = 0;
	BOOL free_src = FALSE;
	BYTE *blob = NULL;
	CERT_PUBLIC_KEY_INFO *pki = NULL;
	int r = 0;

	if (!CryptAcquireCertificatePrivateKey(leaf, CRYPT_ACQUIRE_SILENT_FLAG, NULL, &src, &spec,
	                                       &free_src) || spec == 0 /* NCrypt handle */) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot open the imported private key");
		goto out;
	}
	/* the key may sit in the other slot than the one announced (Wine) */
	if (!CryptGetUserKey(src, spec, &k) &&
	    CryptGetUserKey(src, spec == AT_KEYEXCHANGE ? AT_SIGNATURE : AT_KEYEXCHANGE, &k))
		spec = spec == AT_KEYEXCHANGE ? AT_SIGNATURE : AT_KEYEXCHANGE;
	if (!k ||
	    !CryptExportKey(k, 0, PRIVATEKEYBLOB, 0, NULL, &n) || !(blob = malloc(n)) ||
	    !CryptExportKey(k, 0, PRIVATEKEYBLOB, 0, blob, &n)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot read the imported private key");
		goto out;
	}
	if (spec == AT_SIGNATURE)      /* Schannel wants the exchange slot */
		((BLOBHEADER *)blob)->aiKeyAlg = CALG_RSA_KEYX;
	if (!CryptAcquireContextW(&dst, container, MS_ENH_RSA_AES_PROV_W, PROV_RSA_AES,
	                          CRYPT_NEWKEYSET | CRYPT_MACHINE_KEYSET) ||
	    !CryptImportKey(dst, blob, n, 0, CRYPT_EXPORTABLE, &nk)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot store the private key in a CryptoAPI machine key container");
		goto out;
	}
	n = 0;
	if (!CryptExportPublicKeyInfo(dst, AT_KEYEXCHANGE, X509_ASN_ENCODING, NULL, &n) ||
	    !(pki = malloc(n)) ||
	    !CryptExportPublicKeyInfo(dst, AT_KEYEXCHANGE, X509_ASN_ENCODING, pki, &n)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "CryptExportPublicKeyInfo");
		goto out;
	}
	if (!CertComparePublicKeyInfo(X509_ASN_ENCODING, pki, &leaf->pCertInfo->SubjectPublicKeyInfo)) {
		r = sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                "the PFX file's private key does not match its certificate");
		goto out;
	}
out:
	if (blob) {
		SecureZeroMemory(blob, n);
		free(blob);
	}
	free(pki);
	if (nk)
		CryptDestroyKey(nk);
	if (k)
		CryptDestroyKey(k);
	if (dst)
		CryptReleaseContext(dst, 0);
	if (src && free_src)
		CryptReleaseContext(src, 0);
	if (r < 0)
		sch_key_delete(SCH_KEY_CAPI, SCH_CAPI_MACHINE, NULL, container);
	return r;
}

static int key_prov_info(PCCERT_CONTEXT cc, CRYPT_KEY_PROV_INFO **out)
{
	DWORD n = 0;
	CRYPT_KEY_PROV_INFO *k;

	if (!CertGetCertificateContextProperty(cc, CERT_KEY_PROV_INFO_PROP_ID, NULL, &n) || !n)
		return -1;
	k = malloc(n);
	if (!k || !CertGetCertificateContextProperty(cc, CERT_KEY_PROV_INFO_PROP_ID, k, &n)) {
		free(k);
		return -1;
	}
	*out = k;
	return 0;
}

int sch_import(tether_provider_ctx *p, int slot, const unsigned char *data, size_t len,
               const char *password, tether_error *err)
{
	HCERTSTORE st = NULL;
	PCCERT_CONTEXT leaf = NULL;
	CRYPT_KEY_PROV_INFO *kpi = NULL;
	wchar_t *container = NULL;
	uint32_t status = 0;
	int r, keep_key = 0, machine = SCH_CAPI_MACHINE;

	r = sch_identity_exists(p, slot, err);
	if (r != 0)
		return r < 0 ? r : sch_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_INTERNAL,
		                               "the %s slot is in use", sch_slot_name(slot));
	r = pfx_open(data, len, password,
	             CRYPT_EXPORTABLE | (p->cng_broken ? CRYPT_USER_KEYSET :
	                                 PKCS12_ALWAYS_CNG_KSP | CRYPT_MACHINE_KEYSET),
	             &st, &leaf, &status, err);
	if (r < 0 && !p->cng_broken && status != 0 && !sch_cng_unsupported(SCH_CNG_PFX_IMPORT, status) &&
	    err->category != TETHER_CAT_BAD_PASSWORD && err->category != TETHER_CAT_BAD_INPUT) {
		/* CNG is there but refused (permissions, ...): say so */
		char why[TETHER_ERROR_DETAIL_MAX];
		snprintf(why, sizeof(why), "%s", err->detail);
		return sch_err_set(err, err->code, err->category, "cannot import the PFX into a CNG "
		                   "machine key: %s%s", why, sch_cng_advice(status));
	}
	if (r < 0 && !p->cng_broken && sch_cng_unsupported(SCH_CNG_PFX_IMPORT, status)) {
		/* no CNG key storage for PFX keys here (Wine: no error at all for
		 * PKCS12_ALWAYS_CNG_KSP): CryptoAPI.  If that fails too, its error
		 * (a wrong password, say) is the one to report, and CNG is not
		 * judged. */
		tether_error first = *err;
		r = pfx_open(data, len, password, CRYPT_EXPORTABLE | CRYPT_USER_KEYSET, &st, &leaf,
		             &status, err);
		if (r == 0)
			sch_cng_fall_back(p, status == 0 && first.detail[0] ?
			                  "PFXImportCertStore with PKCS12_ALWAYS_CNG_KSP failed and gave no reason"
			                  : first.detail);
	}
	if (r < 0)
		return r;
	if (key_prov_info(leaf, &kpi) < 0) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "no key information");
		goto out;
	}
	if (kpi->dwProvType == 0) {
		/* a CNG key: Windows gave it a unique name; keep it */
		r = sch_slot_store(p, slot, leaf->pbCertEncoded, leaf->cbCertEncoded, SCH_KEY_CNG, 0,
		                   kpi->pwszProvName, kpi->pwszContainerName, err);
		keep_key = r == 0;
		goto out;
	}
	container = sch_container_name(p, slot);
	if (!container) {
		r = sch_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "no random bytes");
		goto out;
	}
	r = capi_rehome(leaf, container, err);
	if (r < 0)
		goto out;
	r = sch_capi_place(p, leaf->pbCertEncoded, leaf->cbCertEncoded, container, &machine, err);
	if (r < 0) {
		sch_key_delete(SCH_KEY_CAPI, SCH_CAPI_MACHINE, NULL, container);
		goto out;
	}
	r = sch_slot_store(p, slot, leaf->pbCertEncoded, leaf->cbCertEncoded, SCH_KEY_CAPI, machine,
	                   MS_ENH_RSA_AES_PROV_W, container, err);
	if (r < 0)
		sch_key_delete(SCH_KEY_CAPI, machine, NULL, container);
out:
	free(kpi);
	free(container);
	pfx_close(st, leaf, !keep_key);
	return r;
}

int sch_peek(tether_provider_ctx *p, const unsigned char *data, size_t len, const char *password,
             unsigned char **der, size_t *der_len, tether_error *err)
{
	HCERTSTORE st = NULL;
	PCCERT_CONTEXT leaf = NULL;
	unsigned char *copy;
	uint32_t status;
	int r;

	/* a full import (keys land in a store) that is then undone */
	r = pfx_open(data, len, password, CRYPT_EXPORTABLE | CRYPT_USER_KEYSET, &st, &leaf, &status,
	             err);
	if (r < 0)
		return r;
	copy = malloc(leaf->cbCertEncoded);
	if (!copy) {
		r = sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	} else {
		memcpy(copy, leaf->pbCertEncoded, leaf->cbCertEncoded);
		*der = copy;
		*der_len = leaf->cbCertEncoded;
	}
	pfx_close(st, leaf, 1);
	(void)p;
	return r;
}

int sch_export_pkcs12(tether_provider_ctx *p, int slot, const char *password, int legacy,
                      unsigned char **out, size_t *out_len, tether_error *err)
{
	tether_identity *id = NULL;
	HCERTSTORE mem = NULL;
	CRYPT_DATA_BLOB blob = { 0, NULL };
	wchar_t *wpw = NULL;
	DWORD flags = EXPORT_PRIVATE_KEYS | REPORT_NO_PRIVATE_KEY |
	              REPORT_NOT_ABLE_TO_EXPORT_PRIVATE_KEY |
	              (legacy ? 0 : PKCS12_PBES2_EXPORT_AES256_SHA256);
	int r;

	r = sch_identity_load(p, slot, &id, err);
	if (r < 0)
		return r;
	wpw = sch_wide(password ? password : "");
	mem = CertOpenStore(CERT_STORE_PROV_MEMORY, 0, 0, 0, NULL);
	if (!wpw || !mem || !CertAddCertificateContextToStore(mem, id->cert, CERT_STORE_ADD_ALWAYS, NULL)) {
		r = sch_err_last(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "cannot prepare the PFX");
		goto out;
	}
	SetLastError(0);
	if (!PFXExportCertStoreEx(mem, &blob, wpw, NULL, flags) || blob.cbData == 0) {
		DWORD e = GetLastError();
		if (e == 0 || e == ERROR_CALL_NOT_IMPLEMENTED || e == (DWORD)E_NOTIMPL)
			r = sch_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE,
			                "PFXExportCertStoreEx produced nothing: this system cannot export "
			                "PFX files (Wine implements it as a stub); export on Windows, or "
			                "keep the instance's state directory as the backup");
		else
			r = sch_err_last(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE,
			                 "PFXExportCertStoreEx");
		goto out;
	}
	blob.pbData = malloc(blob.cbData);
	if (!blob.pbData) {
		r = sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	if (!PFXExportCertStoreEx(mem, &blob, wpw, NULL, flags)) {
		r = sch_err_last(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_KEY_NOT_EXPORTABLE,
		                 "PFXExportCertStoreEx");
		goto out;
	}
	*out = blob.pbData;
	*out_len = blob.cbData;
	blob.pbData = NULL;
out:
	if (blob.pbData) {
		SecureZeroMemory(blob.pbData, blob.cbData);
		free(blob.pbData);
	}
	if (wpw) {
		SecureZeroMemory(wpw, wcslen(wpw) * sizeof(wchar_t));
		free(wpw);
	}
	if (mem)
		CertCloseStore(mem, 0);
	sch_identity_free(id);
	return r;
}
