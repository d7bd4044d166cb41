/* A tap on the provider's TLS operations, for the report: it records the
 * peer's certificate as soon as the handshake sees it and the negotiated
 * parameters even when the handshake fails (the connection engine keeps
 * neither once it gives up).  Every call goes to the real provider; the
 * tap only copies what passes by. */
#include "config.h"
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "error.h"
#include "ping.h"
#include "util.h"

static ping_tap *g_tap;

typedef struct tap_verify {
	tether_tls_verify_fn verify;
	void *arg;
} tap_verify;

/* One connection at a time goes through the tap (tether-ping connect). */
static tap_verify g_inner;

static void record_der(const unsigned char *der, size_t len)
{
	if (!g_tap || !len)
		return;
	free(g_tap->peer_der);
	g_tap->peer_der = tether_xmalloc(len);
	memcpy(g_tap->peer_der, der, len);
	g_tap->peer_der_len = len;
}

static int tap_verify_cb(void *arg, const unsigned char *der, size_t len)
{
	(void)arg;
	record_der(der, len);
	return g_inner.verify ? g_inner.verify(g_inner.arg, der, len) : 0;
}

static int tap_tls_new(tether_tls_ctx *c, const tether_tls_params *params, tether_tls **out,
                       tether_error *err)
{
	tether_tls_params p = *params;

	g_inner.verify = params->verify;
	g_inner.arg = params->verify_arg;
	p.verify = tap_verify_cb;
	p.verify_arg = NULL;
	return g_tap->real->t->tls_new(c, &p, out, err);
}

static void record_info(tether_tls *t)
{
	const unsigned char *der = NULL;
	size_t len = 0;

	if (g_tap->real->t->tls_info(t, &g_tap->info) == 0)
		g_tap->have_info = 1;
	if (!g_tap->peer_der_len && g_tap->real->t->tls_peer_cert(t, &der, &len) == 0 && len)
		record_der(der, len);
}

static int tap_tls_handshake(tether_tls *t, tether_error *err)
{
	int r = g_tap->real->t->tls_handshake(t, err);

	if (r == TETHER_TLS_DONE) {
		g_tap->handshake_done = 1;
		record_info(t);
	} else if (r < 0) {
		g_tap->handshake_failed = 1;
		if (err)
			g_tap->hs_err = *err;
		record_info(t);
	}
	return r;
}

int ping_tap_init(ping_tap *tap, const tether_prov *real)
{
	size_t n;

	if (g_tap)
		return TETHER_ERR_INVALID;
	memset(tap, 0, sizeof(*tap));
	tap->real = real;
	n = real->t->size < sizeof(tap->table) ? real->t->size : sizeof(tap->table);
	memcpy(&tap->table, real->t, n);
	tap->table.size = (uint32_t)n;
	if (!TETHER_PROV_HAS(real, tls_new) || !TETHER_PROV_HAS(real, tls_handshake) ||
	    !TETHER_PROV_HAS(real, tls_info) || !TETHER_PROV_HAS(real, tls_peer_cert))
		return TETHER_ERR_UNSUPPORTED;
	tap->table.tls_new = tap_tls_new;
	tap->table.tls_handshake = tap_tls_handshake;
	tap->view = *real;
	tap->view.t = &tap->table;
	g_tap = tap;
	return 0;
}

void ping_tap_clear(ping_tap *tap)
{
	if (g_tap == tap)
		g_tap = NULL;
	free(tap->peer_der);
	tap->peer_der = NULL;
	tap->peer_der_len = 0;
}
