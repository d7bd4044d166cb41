/*
 * pk11_tls.c: TLS for identities on the token.  The session itself is the
 * shared OpenSSL code (providers/common/ossl_tls.c), whose SSL_CTX lives in
 * the identity's library context, so libssl's private-key operations run
 * on the token through pkcs11-provider.  This file only adds what the
 * token decides: without CKM_RSA_PKCS_PSS an RSA identity cannot sign TLS
 * 1.3's CertificateVerify, so its contexts are capped at TLS 1.2.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include "pk11_int.h"

int pk11_tls_ctx_new(tether_provider_ctx *p, const tether_tls_ctx_params *params,
                     tether_tls_ctx **out, tether_error *err)
{
	tether_tls_ctx_params tp;

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
	return ossl_tls_ctx_new(&p->host, &tp, out, err);
}
