/* tether-schannel.dll: entry point and operation table.  Exports only
 * tether_provider_init (schannel.def). */
#include "config.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sch_int.h"

void sch_log(tether_provider_ctx *p, int level, const char *fmt, ...)
{
	va_list ap;

	if (!p || !p->host.log)
		return;
	va_start(ap, fmt);
	p->host.log(p->host.host_arg, level, level == TETHER_LOG_DEBUG ? "prov" : NULL, fmt, ap);
	va_end(ap);
}

uint32_t sch_last_status(void)
{
	DWORD e = GetLastError();

	return e && (e & 0xFFFF0000u) == 0 ? 0x80070000u | e : (uint32_t)e;
}

void sch_cng_fall_back(tether_provider_ctx *p, const char *why)
{
	if (p->cng_broken)
		return;
	p->cng_broken = 1;
	sch_log(p, TETHER_LOG_WARN, "CNG persisted keys are not usable on this system (%s): the "
	        "key goes to a CryptoAPI key container instead (a machine keyset where Schannel "
	        "can use one), and TLS is capped at 1.2 for it (a CryptoAPI key cannot sign RSA-PSS, which TLS 1.3 needs)", why);
}

int sch_err_last(tether_error *err, int code, int category, const char *what)
{
	DWORD e = GetLastError();
	uint32_t s = e;
	sch_status_map m;
	char msg[256] = "";
	DWORD n;

	/* a Win32 error code -> HRESULT_FROM_WIN32, as the tables use */
	if (e && (e & 0xFFFF0000u) == 0)
		s = 0x80070000u | e;
	sch_status_lookup(s, 0, &m);
	n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, e, 0,
	                   msg, sizeof(msg), NULL);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r' || msg[n - 1] == '.'))
		msg[--n] = '\0';
	if (m.name)
		return sch_err_set(err, m.code, m.category, "%s: %s (0x%08x)%s%s", what, m.name,
		                   (unsigned)s, n ? ": " : "", msg);
	return sch_err_set(err, code, category, "%s failed: 0x%08x%s%s", what, (unsigned)s,
	                   n ? " " : "", msg);
}

static void sch_deinit(tether_provider_ctx *p)
{
	if (!p)
		return;
	free(p->dir);
	free(p->container_prefix);
	free(p);
}

static const tether_provider sch_table = {
	.abi_major = TETHER_PROVIDER_ABI_MAJOR,
	.abi_minor = TETHER_PROVIDER_ABI_MINOR,
	.size = sizeof(tether_provider),
	.name = "schannel",
	.version = "tether-schannel " PACKAGE_VERSION " (SSPI/Schannel, CNG or CryptoAPI keys)",
	.flags = 0,
	.deinit = sch_deinit,
	.identity_generate = sch_identity_generate,
	.identity_promote = sch_identity_promote,
	.identity_remove = sch_identity_remove,
	.identity_exists = sch_identity_exists,
	.identity_load = sch_identity_load,
	.identity_cert_der = sch_identity_cert_der,
	.identity_free = sch_identity_free,
	.identity_export_pkcs12 = sch_export_pkcs12,
	.identity_import = sch_import,
	.digest = sch_digest,
	.digest_new = sch_digest_new,
	.digest_update = sch_digest_update,
	.digest_final = sch_digest_final,
	.digest_free = sch_digest_free,
	.cert_info = sch_cert_info,
	.random_bytes = sch_random_bytes,
	.tls_ctx_new = sch_tls_ctx_new,
	.tls_ctx_free = sch_tls_ctx_free,
	.tls_new = sch_tls_new,
	.tls_handshake = sch_tls_handshake,
	.tls_read = sch_tls_read,
	.tls_write = sch_tls_write,
	.tls_close = sch_tls_close,
	.tls_peer_cert = sch_tls_peer_cert,
	.tls_info = sch_tls_info,
	.tls_pinned = NULL,             /* no session tickets issued by this provider */
	.tls_get_session = NULL,        /* Schannel caches sessions itself */
	.tls_reject = sch_tls_reject,
	.tls_free = sch_tls_free,
	.identity_peek = sch_peek,
	/* Schannel issues, keeps and renews its tickets itself: the core
	 * sees these as absent (TETHER_PROV_HAS) */
	.tls_ctx_set_tickets = NULL,
	.tls_refresh_ticket = NULL,
	.tls_sessions_received = NULL,
};

__declspec(dllexport) int tether_provider_init(const tether_host *host,
                                               const tether_provider **table,
                                               tether_provider_ctx **ctx, tether_error *err);

int tether_provider_init(const tether_host *host, const tether_provider **table,
                         tether_provider_ctx **ctx, tether_error *err)
{
	tether_provider_ctx *p;
	size_t n;
	const char *force;

	if (!host || !table || !ctx)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                   "tether_provider_init: missing argument");
	if (host->abi_major != TETHER_PROVIDER_ABI_MAJOR)
		return sch_err_set(err, TETHER_ERR_ABI, TETHER_CAT_INTERNAL,
		                   "provider 'schannel' speaks ABI %d.%d, the core %u.%u: install "
		                   "matching versions of tether and its providers",
		                   TETHER_PROVIDER_ABI_MAJOR, TETHER_PROVIDER_ABI_MINOR,
		                   (unsigned)host->abi_major, (unsigned)host->abi_minor);
	if (host->size < offsetof(tether_host, program) + sizeof(host->program))
		return sch_err_set(err, TETHER_ERR_ABI, TETHER_CAT_INTERNAL,
		                   "the core's host structure is too short (%u bytes)", (unsigned)host->size);
	if (!host->state_dir || !*host->state_dir)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                   "the schannel provider needs the instance's state directory");
	p = calloc(1, sizeof(*p));
	if (!p)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	n = host->size < sizeof(p->host) ? host->size : sizeof(p->host);
	memcpy(&p->host, host, n);
	p->host.size = (uint32_t)n;
	n = strlen(host->state_dir) + sizeof("\\identity-schannel");
	p->dir = malloc(n);
	if (p->dir)
		snprintf(p->dir, n, "%s\\identity-schannel", host->state_dir);
	n = strlen(host->program ? host->program : "tether") +
	    strlen(host->instance ? host->instance : "default") + 16;
	p->container_prefix = malloc(n);
	if (p->container_prefix)
		snprintf(p->container_prefix, n, "tether-%s-%s", host->program ? host->program : "tether",
		         host->instance ? host->instance : "default");
	if (!p->dir || !p->container_prefix) {
		sch_deinit(p);
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	}
	/* [schannel] key-storage = auto | cng | capi */
	force = host->config_get ? host->config_get(host->host_arg, "key-storage") : NULL;
	if (force && strcmp(force, "capi") == 0)
		p->cng_broken = 1;
	else if (force && strcmp(force, "auto") && strcmp(force, "cng")) {
		sch_deinit(p);
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "[schannel] key-storage = %s: use auto, cng or capi", force);
	}
	*table = &sch_table;
	*ctx = p;
	return 0;
}
