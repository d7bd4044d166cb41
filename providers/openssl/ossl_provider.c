/*
 * ossl_provider.c: the entry point and operation table of tether-openssl.so.
 * Identity operations live in ossl_identity.c and ossl_pkcs12.c; crypto
 * helpers, errors and TLS in the shared providers/common library.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#include "ossl_int.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define EXPORT __attribute__((visibility("default")))

void ossl_log(tether_provider_ctx *p, int level, const char *area,
              const char *fmt, ...)
{
	va_list ap;

	if (p == NULL || p->host.log == NULL)
		return;
	va_start(ap, fmt);
	p->host.log(p->host.host_arg, level, area, fmt, ap);
	va_end(ap);
}

const char *ossl_config(tether_provider_ctx *p, const char *key)
{
	if (p == NULL || p->host.config_get == NULL)
		return NULL;
	return p->host.config_get(p->host.host_arg, key);
}

static void prov_deinit(tether_provider_ctx *p)
{
	if (p == NULL)
		return;
	free(p->identity_dir);
	free(p);
}

static int prov_tls_ctx_new(tether_provider_ctx *p,
                            const tether_tls_ctx_params *params,
                            tether_tls_ctx **out, tether_error *err)
{
	return ossl_tls_ctx_new(p ? &p->host : NULL, params, out, err);
}

static const tether_provider ossl_table = {
	.abi_major = TETHER_PROVIDER_ABI_MAJOR,
	.abi_minor = TETHER_PROVIDER_ABI_MINOR,
	.size = sizeof(tether_provider),
	.name = "openssl",
	.version = "tether-openssl " PACKAGE_VERSION " (built with "
	           OPENSSL_VERSION_TEXT ")",
	.flags = 0,
	.deinit = prov_deinit,

	.identity_generate = ossl_prov_identity_generate,
	.identity_promote = ossl_prov_identity_promote,
	.identity_remove = ossl_prov_identity_remove,
	.identity_exists = ossl_prov_identity_exists,
	.identity_load = ossl_prov_identity_load,
	.identity_cert_der = ossl_identity_cert_der,
	.identity_free = ossl_identity_free,
	.identity_export_pkcs12 = ossl_prov_identity_export_pkcs12,
	.identity_import = ossl_prov_identity_import,
	.identity_peek = ossl_prov_identity_peek,
	.identity_load_data = ossl_prov_identity_load_data,

	.digest = ossl_digest,
	.digest_new = ossl_digest_new,
	.digest_update = ossl_digest_update,
	.digest_final = ossl_digest_final,
	.digest_free = ossl_digest_free,
	.cert_info = ossl_cert_info,
	.random_bytes = ossl_random_bytes,

	.tls_ctx_new = prov_tls_ctx_new,
	.tls_ctx_free = ossl_tls_ctx_free,
	.tls_new = ossl_tls_new,
	.tls_handshake = ossl_tls_handshake,
	.tls_read = ossl_tls_read,
	.tls_write = ossl_tls_write,
	.tls_close = ossl_tls_close,
	.tls_peer_cert = ossl_tls_peer_cert,
	.tls_info = ossl_tls_info,
	.tls_pinned = ossl_tls_pinned,
	.tls_get_session = ossl_tls_get_session,
	.tls_reject = ossl_tls_reject,
	.tls_free = ossl_tls_free,
	.tls_ctx_set_tickets = ossl_tls_ctx_set_tickets,
	.tls_refresh_ticket = ossl_tls_refresh_ticket,
	.tls_sessions_received = ossl_tls_sessions_received,
};

EXPORT int tether_provider_init(const tether_host *host,
                                const tether_provider **table,
                                tether_provider_ctx **ctx,
                                tether_error *err);

int tether_provider_init(const tether_host *host,
                         const tether_provider **table,
                         tether_provider_ctx **ctx, tether_error *err)
{
	tether_provider_ctx *p;
	size_t n;

	if (host == NULL || table == NULL || ctx == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "tether_provider_init: missing argument");
	if (host->abi_major != TETHER_PROVIDER_ABI_MAJOR)
		return ossl_err_set(err, TETHER_ERR_ABI, TETHER_CAT_INTERNAL,
		                    "provider 'openssl' speaks ABI %d.%d, the core %u.%u: "
		                    "install matching versions of tether and its providers",
		                    TETHER_PROVIDER_ABI_MAJOR, TETHER_PROVIDER_ABI_MINOR,
		                    (unsigned)host->abi_major, (unsigned)host->abi_minor);
	/* Every field up to `program` exists since ABI 1.0. */
	if (host->size < offsetof(tether_host, program) + sizeof(host->program))
		return ossl_err_set(err, TETHER_ERR_ABI, TETHER_CAT_INTERNAL,
		                    "the core's host structure is too short (%u bytes)",
		                    (unsigned)host->size);
	if (OPENSSL_version_major() < 3)
		return ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                    "OpenSSL %s is too old: the openssl provider needs OpenSSL 3",
		                    OpenSSL_version(OPENSSL_VERSION));

	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	/* Copy what the core has; fields it does not know stay zero. */
	n = host->size < sizeof(p->host) ? host->size : sizeof(p->host);
	memcpy(&p->host, host, n);
	p->host.size = (uint32_t)n;
	p->state_dir = host->state_dir;
	if (p->state_dir != NULL && p->state_dir[0] != '\0') {
		size_t l = strlen(p->state_dir) + sizeof("/identity");

		p->identity_dir = malloc(l);
		if (p->identity_dir == NULL) {
			free(p);
			return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
			                    "out of memory");
		}
		snprintf(p->identity_dir, l, "%s/identity", p->state_dir);
	}

	ossl_log(p, TETHER_LOG_DEBUG, "prov", "openssl provider: %s, runtime %s",
	         ossl_table.version, OpenSSL_version(OPENSSL_VERSION));
	*table = &ossl_table;
	*ctx = p;
	return 0;
}
