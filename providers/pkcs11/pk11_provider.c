/*
 * pk11_provider.c: the entry point and operation table of tether-pkcs11.so.
 * The token is opened lazily, at the first operation that needs it
 * (pk11_token.c), so commands that only read the configuration never touch
 * the HSM.  Crypto helpers, errors and the TLS session are the shared
 * OpenSSL code of providers/common.
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

#include "pk11_int.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define EXPORT __attribute__((visibility("default")))

void pk11_log(tether_provider_ctx *p, int level, const char *area,
              const char *fmt, ...)
{
	va_list ap;

	if (p == NULL || p->host.log == NULL)
		return;
	va_start(ap, fmt);
	p->host.log(p->host.host_arg, level, area, fmt, ap);
	va_end(ap);
}

const char *pk11_config(tether_provider_ctx *p, const char *key)
{
	const char *v;

	if (p == NULL || p->host.config_get == NULL)
		return NULL;
	v = p->host.config_get(p->host.host_arg, key);
	return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Identities and TLS contexts are gone by now (the core frees them
 * first); close the token in order. */
static void prov_deinit(tether_provider_ctx *p)
{
	if (p == NULL)
		return;
	pk11_close(p);
	pthread_mutex_destroy(&p->lock);
	pthread_mutex_destroy(&p->recover_lock);
	free(p->map_path);
	free(p->lock_path);
	free(p);
}

static const tether_provider pk11_table = {
	.abi_major = TETHER_PROVIDER_ABI_MAJOR,
	.abi_minor = TETHER_PROVIDER_ABI_MINOR,
	.size = sizeof(tether_provider),
	.name = "pkcs11",
	.version = "tether-pkcs11 " PACKAGE_VERSION " (built with "
	           OPENSSL_VERSION_TEXT ", p11-kit)",
	.flags = TETHER_PROVIDER_MAY_BLOCK | TETHER_PROVIDER_NO_KEY_EXPORT,
	.deinit = prov_deinit,

	.identity_generate = pk11_identity_generate,
	.identity_promote = pk11_identity_promote,
	.identity_remove = pk11_identity_remove,
	.identity_exists = pk11_identity_exists,
	.identity_load = pk11_identity_load,
	.identity_cert_der = ossl_identity_cert_der,
	.identity_free = ossl_identity_free,
	.identity_export_pkcs12 = pk11_identity_export_pkcs12,
	.identity_import = pk11_identity_import,
	.identity_peek = pk11_identity_peek,

	.digest = ossl_digest,
	.digest_new = ossl_digest_new,
	.digest_update = ossl_digest_update,
	.digest_final = ossl_digest_final,
	.digest_free = ossl_digest_free,
	.cert_info = ossl_cert_info,
	.random_bytes = ossl_random_bytes,

	.tls_ctx_new = pk11_tls_ctx_new,
	.tls_ctx_free = ossl_tls_ctx_free,
	.tls_new = ossl_tls_new,
	.tls_handshake = pk11_tls_handshake,
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

static char *path_join(const char *dir, const char *name)
{
	size_t l = strlen(dir) + strlen(name) + 2;
	char *s = malloc(l);

	if (s != NULL)
		snprintf(s, l, "%s/%s", dir, name);
	return s;
}

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
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, CKR_OK,
		                    "tether_provider_init: missing argument");
	if (host->abi_major != TETHER_PROVIDER_ABI_MAJOR)
		return pk11_err_set(err, TETHER_ERR_ABI, TETHER_CAT_INTERNAL, CKR_OK,
		                    "provider 'pkcs11' speaks ABI %d.%d, the core %u.%u: "
		                    "install matching versions of tether and its providers",
		                    TETHER_PROVIDER_ABI_MAJOR, TETHER_PROVIDER_ABI_MINOR,
		                    (unsigned)host->abi_major, (unsigned)host->abi_minor);
	if (host->size < offsetof(tether_host, program) + sizeof(host->program))
		return pk11_err_set(err, TETHER_ERR_ABI, TETHER_CAT_INTERNAL, CKR_OK,
		                    "the core's host structure is too short (%u bytes)",
		                    (unsigned)host->size);
	if (OPENSSL_version_major() < 3)
		return pk11_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, CKR_OK,
		                    "OpenSSL %s is too old: the pkcs11 provider needs OpenSSL 3",
		                    OpenSSL_version(OPENSSL_VERSION));

	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
		                    "out of memory");
	n = host->size < sizeof(p->host) ? host->size : sizeof(p->host);
	memcpy(&p->host, host, n);
	p->host.size = (uint32_t)n;
	p->sess = CK_INVALID_HANDLE;
	pthread_mutex_init(&p->lock, NULL);
	pthread_mutex_init(&p->recover_lock, NULL);
	if (host->state_dir != NULL && host->state_dir[0] != '\0') {
		p->map_path = path_join(host->state_dir, "pkcs11-slots");
		p->lock_path = path_join(host->state_dir, "pkcs11-slots.lock");
		if (p->map_path == NULL || p->lock_path == NULL) {
			prov_deinit(p);
			return pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
			                    "out of memory");
		}
	}
	pk11_log(p, TETHER_LOG_DEBUG, "prov", "pkcs11 provider: %s, runtime %s",
	         pk11_table.version, OpenSSL_version(OPENSSL_VERSION));
	*table = &pk11_table;
	*ctx = p;
	return 0;
}
