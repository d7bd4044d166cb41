/* tether-ping: a diagnostic client and server that speak the tether
 * protocol with throw-away identities and no configuration. */
#ifndef TETHER_PING_H
#define TETHER_PING_H

#include <stddef.h>
#include <jansson.h>
#include "loader.h"

/* Sizes and counts tether-ping accepts.  A round trip carries the payload
 * as a JSON string in an "echo" request and its response, so it must stay
 * well under the engine's 1 MiB JSON limit per frame. */
#define PING_SIZE_MAX (512u * 1024u)
#define PING_COUNT_MAX 100000u
#define PING_DEFAULT_PORT 10933

/* ---- ping_ident.c: the throw-away identity ---- */

typedef struct ping_ident {
	char *state_dir;                /* temporary, removed by ping_ident_free */
	tether_prov *prov;
	tether_identity *id;
	char sha256[65];
	char sig_alg[64];
} ping_ident;

/* Make a temporary state directory (0700, in memory when /dev/shm is
 * there), load the provider through the loader, and generate an identity
 * in it (or import pem_file, a PEM certificate + key).  */
int ping_ident_new(const char *provider, const char *pem_file, ping_ident **out,
                   tether_error *err);
/* Free everything and remove the temporary directory. */
void ping_ident_free(ping_ident *pi);
/* Remove the temporary directory now (signal-safe enough for our exit
 * paths: called from the loop, not from a signal handler). */
void ping_ident_cleanup_dir(ping_ident *pi);

/* ---- ping_tap.c: what the handshake saw ---- */

/* A view of a loaded provider whose TLS operations are wrapped to record
 * the peer's certificate (as soon as the handshake sees it) and the
 * negotiated parameters, also when the handshake fails, so that the report
 * shows them whichever side refused.  Everything else is the provider's. */
typedef struct ping_tap {
	tether_prov view;               /* pass &view as tether_conn_opts.prov */
	tether_provider table;
	const tether_prov *real;
	unsigned char *peer_der;        /* malloc'd copy */
	size_t peer_der_len;
	tether_tls_info info;
	int have_info;
	int handshake_done;
	int handshake_failed;
	tether_error hs_err;
} ping_tap;

/* Only one tap may be active per process (the wrapped callbacks find it
 * through a static pointer). */
int ping_tap_init(ping_tap *tap, const tether_prov *real);
void ping_tap_clear(ping_tap *tap);

/* ---- ping_probe.c: probe handshakes (OpenSSL directly) ---- */

typedef struct ping_probe_result {
	const char *name;               /* "tether policy", "versions", ... */
	const char *widened;            /* what this probe added */
	int server_hello;               /* the peer accepted the parameters */
	int completed;                  /* the whole handshake completed */
	char tls_version[16], cipher[64], group[32], sig_scheme[48];
	char error[256];
} ping_probe_result;

#define PING_PROBES_MAX 8

typedef struct ping_probe_report {
	ping_probe_result r[PING_PROBES_MAX];
	size_t n;
	int category;                   /* TETHER_CAT_* the probes point to, 0: none */
	char verdict[512];
} ping_probe_report;

/* Run the probe handshakes against host:port (each with timeout_ms).
 * Returns 0 when the probes ran (whatever they found), negative if they
 * could not run at all. */
int ping_probe_run(const char *host, int port, unsigned timeout_ms,
                   ping_probe_report *out, tether_error *err);
json_t *ping_probe_json(const ping_probe_report *rep);
void ping_probe_print(const ping_probe_report *rep);

#endif
