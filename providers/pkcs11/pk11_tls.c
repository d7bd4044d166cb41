/*
 * pk11_tls.c: TLS for identities on the token.  The session itself is the
 * shared OpenSSL code (providers/common/ossl_tls.c), whose SSL_CTX lives in
 * the identity's library context, so libssl's private-key operations run
 * on the token through pkcs11-provider.  This file only adds what the
 * token decides: without CKM_RSA_PKCS_PSS an RSA identity cannot sign TLS
 * 1.3's CertificateVerify, so its contexts are capped at TLS 1.2.  And
 * what the token does: a handshake whose signature failed with a
 * token-class PKCS#11 error (device removed, session or key handle
 * invalid, not logged in...) starts the recovery of pk11_token.c, and a
 * handshake that starts while the token is gone first tries to bring it
 * back (rate-limited), then presents the reloaded key.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "pk11_int.h"

/* pkcs11-provider raises its errors in a library of its own, named after
 * the provider ("pkcs11"), with the CK_RV as the reason. */
static unsigned long classify(void *owner, unsigned long e)
{
	const char *lib = ERR_lib_error_string(e);
	CK_RV rv = (CK_RV)ERR_GET_REASON(e);

	(void)owner;
	if (lib == NULL || strcmp(lib, "pkcs11") != 0 || ERR_SYSTEM_ERROR(e))
		return 0;
	return pk11_rv_token_class(rv) ? (unsigned long)rv : 0;
}

int pk11_tls_handshake(tether_tls *t, tether_error *err)
{
	tether_provider_ctx *p = ossl_tls_owner(t);
	unsigned long rv, before = ossl_tls_backend_code(t);
	int r;

	if (p != NULL && ossl_tls_before_start(t)) {
		pk11_token_precheck(p);
		r = ossl_tls_refresh_key(t, err);
		if (r < 0)
			return r;
	}
	r = ossl_tls_handshake(t, err);
	if (r >= 0 || p == NULL || before != 0)
		return r;
	rv = ossl_tls_backend_code(t);
	if (rv == 0)
		return r;
	pk11_token_failed(p, (CK_RV)rv, ossl_tls_key_stale(t));
	if (err != NULL) {
		size_t l = strlen(err->detail);

		/* The token failed, not the TLS parameters: its own category,
		 * whose hint is about the token and not ciphers or groups. */
		err->category = TETHER_CAT_TOKEN_UNAVAILABLE;
		snprintf(err->detail + l, sizeof(err->detail) - l,
		         "; the private key is on PKCS#11 token '%s', which could "
		         "not sign (%s): %s", p->token_label, pk11_rv_name((CK_RV)rv),
		         __atomic_load_n(&p->token_gone, __ATOMIC_SEQ_CST) ?
		         "the token is gone; handshakes fail until it answers "
		         "again (retried every 2 s, no restart needed)" :
		         "its session was reopened and the key reloaded: the next "
		         "handshake uses it");
		ossl_tls_set_failure(t, err);
	}
	return r;
}

int pk11_tls_ctx_new(tether_provider_ctx *p, const tether_tls_ctx_params *params,
                     tether_tls_ctx **out, tether_error *err)
{
	tether_tls_ctx_params tp;
	int r;

	if (p == NULL || params == NULL)
		return ossl_tls_ctx_new(p ? &p->host : NULL, params, out, err);
	tp = *params;
	if (params->identity != NULL && params->identity->key != NULL &&
	    EVP_PKEY_get_base_id(params->identity->key) == EVP_PKEY_RSA &&
	    p->opened && !p->have_pss) {
		if (tp.policy & TETHER_TLS_POLICY_TLS13_ONLY)
			return pk11_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_PROTOCOL_VERSION,
			                    CKR_OK, "token '%s' has no RSA-PSS, so its RSA identity "
			                    "cannot do TLS 1.3, which this policy requires: use an "
			                    "EC key or a token with CKM_RSA_PKCS_PSS", p->token_label);
		/* TLS 1.2 alone is not enough: libssl would still sign with
		 * rsa_pss_rsae_* when the peer offers it (seen: CKM_RSA_PKCS_PSS
		 * unavailable), so PKCS#1 v1.5 only. */
		tp.policy |= TETHER_TLS_POLICY_TLS12_ONLY | OSSL_TLS_POLICY_NO_RSA_PSS;
		pk11_log(p, TETHER_LOG_DEBUG, "tls",
		         "token '%s' has no RSA-PSS: TLS 1.2 only for this identity",
		         p->token_label);
	}
	r = ossl_tls_ctx_new(&p->host, &tp, out, err);
	if (r == 0)
		ossl_tls_ctx_set_owner(*out, p, classify);
	return r;
}
