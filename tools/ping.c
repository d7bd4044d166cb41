/*
 * tether-ping: test the path between two machines with the real tether
 * protocol (core/conn.c: TLS through the provider, the pin check, HELLO,
 * RPC) and throw-away identities, without any configuration.
 *
 *   tether-ping listen [--port P] [--address A]
 *   tether-ping connect HOST:PORT [--count N] [--size BYTES]
 *                       [--expect-thumbprint T] [--json]
 *
 * listen answers HELLO as a listening agent and one method, "echo"
 * ({"data": STRING} -> {"data": STRING}).  connect prints what was
 * negotiated, the peer's certificate and the trust verdict (also when the
 * peer refuses us, as a real agent or server does), then times N echo
 * round trips.  When a handshake fails for a TLS reason, further probe
 * handshakes (ping_probe.c) find which parameter made the difference.
 */
#include "config.h"
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include <uv.h>
#include "conn.h"
#include "error.h"
#include "identity.h"
#include "log.h"
#include "ping.h"
#include "util.h"

#define LISTEN_MAX_CONNS 64
#define DEFAULT_COUNT 4
#define DEFAULT_SIZE 1024
#define DEFAULT_TIMEOUT_S 10

static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

static void usage(FILE *f)
{
	fprintf(f,
	        "Usage: tether-ping listen [--port P] [--address A]\n"
	        "       tether-ping connect HOST[:PORT] [--count N] [--size BYTES]\n"
	        "                           [--expect-thumbprint T] [--json]\n"
	        "\n"
	        "Test the network path and the TLS settings between two machines with the tether\n"
	        "protocol and throw-away identities, without any configuration.\n"
	        "\n"
	        "listen options:\n"
	        "  --port P                  port to listen on (default %d; 0: any free port)\n"
	        "  --address A               address to listen on (default 0.0.0.0)\n"
	        "connect options:\n"
	        "  --count N                 echo round trips (default %d, at most %u; 0: handshake only)\n"
	        "  --size BYTES              payload of each round trip (default %d, at most %u)\n"
	        "  --expect-thumbprint T     verify the peer's SHA-256 thumbprint (else: not verified)\n"
	        "  --timeout SECONDS         for connecting, the handshake and each round trip (default %d)\n"
	        "  --as-agent                speak as a polling agent (to test a server's polling port)\n"
	        "  --no-probe                do not run probe handshakes after a TLS failure\n"
	        "  --json                    print one JSON object\n"
	        "common options:\n"
	        "  --identity FILE           use this PEM certificate + key instead of a throw-away one\n"
#ifdef _WIN32
	        "  --provider NAME           crypto provider (default schannel)\n"
	        "  (no probe handshakes in the Windows build: they need OpenSSL)\n"
#else
	        "  --provider NAME           crypto provider (default openssl)\n"
#endif
	        "Exit status: 0 success, 1 failure, 2 usage error.\n",
	        PING_DEFAULT_PORT, DEFAULT_COUNT, PING_COUNT_MAX, DEFAULT_SIZE, PING_SIZE_MAX,
	        DEFAULT_TIMEOUT_S);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tether-ping: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see 'tether-ping --help')\n");
	return 2;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	unsigned long v;

	if (!s || !*s || *s == '-')
		return -1;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return -1;
	*out = v;
	return 0;
}

static double ms_since(uint64_t t0_ns)
{
	return (double)(uv_hrtime() - t0_ns) / 1e6;
}

/* The local OpenSSL configuration refuses our own identity (a
 * CipherString @SECLEVEL above what the key meets, typically). */
static void tls_setup_failed(const tether_error *e)
{
	const char *conf = getenv("OPENSSL_CONF");

	fprintf(stderr, "tether-ping: cannot set up TLS: %s\n", e->detail);
	if (strstr(e->detail, "md too weak"))
		fprintf(stderr, "hint: the certificate is signed with a digest (SHA-1) below the security level of "
		        "%s%s (CipherString @SECLEVEL): use a certificate signed with SHA-256\n",
		        conf ? "OPENSSL_CONF=" : "the system openssl.cnf", conf ? conf : "");
	else if (strstr(e->detail, "key too small"))
		fprintf(stderr, "hint: the security level set by CipherString (@SECLEVEL=N) in %s%s is higher "
		        "than an RSA 2048 / SHA-256 certificate meets: lower it to 2, or give tether-ping a "
		        "stronger identity with --identity FILE\n", conf ? "OPENSSL_CONF=" : "the system openssl.cnf",
		        conf ? conf : "");
	else
		fprintf(stderr, "hint: %s\n", tether_category_hint(e->category));
}

/* ------------------------------------------------------------------ */
/* listen                                                              */
/* ------------------------------------------------------------------ */

typedef struct listener {
	uv_loop_t *loop;
	uv_tcp_t tcp;
	uv_signal_t sigint, sigterm;
	ping_ident *pi;
	tether_tls_ctx *tls;
	tether_conn *conns[LISTEN_MAX_CONNS];
	unsigned nconns;
	unsigned long served;
	int stopping;
} listener;

static int l_check_peer(void *arg, tether_conn *c, const tether_thumbprint *tp)
{
	(void)arg;
	(void)c;
	(void)tp;
	return 0; /* a diagnostic peer: any certificate may connect, and is shown */
}

static void l_on_open(void *arg, tether_conn *c)
{
	const tether_tls_info *ti = tether_conn_tls_info(c);
	const tether_hello *h = tether_conn_peer_hello(c);
	tether_thumbprint tp;
	char hex[TETHER_THUMBPRINT_HEX] = "?";

	(void)arg;
	if (tether_conn_peer_tp(c, &tp) == 0)
		tether_thumbprint_hex(&tp, hex);
	printf("%s connected: %s %s, group %s, peer %s %s, certificate %s\n", tether_conn_peer_addr(c),
	       ti->tls_version, ti->cipher, ti->group[0] ? ti->group : "-", tether_role_name(h->role),
	       h->software_version, hex);
	fflush(stdout);
}

static void l_on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	listener *l = arg;
	json_t *data = json_object_get(params, "data");

	if (strcmp(method, "echo")) {
		tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD,
		                    "tether-ping serves only \"echo\"", NULL);
		return;
	}
	if (!json_is_string(data) || json_string_length(data) > PING_SIZE_MAX) {
		tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_INVALID_PARAMS,
		                    "echo needs {\"data\": STRING} of at most 524288 bytes", NULL);
		return;
	}
	l->served++;
	tether_conn_respond(c, id, json_pack("{s:O}", "data", data), NULL, NULL, NULL);
}

static void l_on_close(void *arg, tether_conn *c, const tether_error *why)
{
	listener *l = arg;
	unsigned i;

	l->nconns--;
	for (i = 0; i < LISTEN_MAX_CONNS; i++)
		if (l->conns[i] == c)
			l->conns[i] = NULL;
	if (why->code && why->category == TETHER_CAT_UNTRUSTED)
		printf("%s refused this listener's certificate %s (it expects another thumbprint): %s "
		       "(untrusted)\n", tether_conn_peer_addr(c), l->pi->sha256, why->detail);
	else if (why->code && why->category != TETHER_CAT_NONE)
		printf("%s: %s (%s)\nhint: %s\n", tether_conn_peer_addr(c), why->detail,
		       tether_category_name(why->category), tether_category_hint(why->category));
	else
		printf("%s closed\n", tether_conn_peer_addr(c));
	fflush(stdout);
}

static const tether_conn_cbs listen_cbs = { l_check_peer, l_on_open, l_on_request, l_on_close, NULL };

static void l_on_connection(uv_stream_t *server, int status)
{
	listener *l = server->data;
	tether_conn_opts o;
	tether_conn *c = NULL;
	tether_error e;
	unsigned i;

	if (status < 0 || l->stopping)
		return;
	if (l->nconns >= LISTEN_MAX_CONNS) {
		uv_tcp_t *t = tether_xcalloc(1, sizeof(*t));
		uv_tcp_init(l->loop, t);
		if (uv_accept(server, (uv_stream_t *)t) == 0)
			fprintf(stderr, "tether-ping: more than %d connections at once: refusing one\n",
			        LISTEN_MAX_CONNS);
		uv_close((uv_handle_t *)t, (uv_close_cb)free);
		return;
	}
	memset(&o, 0, sizeof(o));
	o.tls_role = TETHER_TLS_SERVER;
	o.local_role = TETHER_ROLE_AGENT;
	o.mode = TETHER_MODE_LISTENING;
	o.prov = l->pi->prov;
	o.tls_ctx = l->tls;
	o.handshake_ms = 10000;
	o.idle_ms = 600000;
	o.keepalive_ms = 15000;
	o.landing_page = 1;
	o.landing_text = "tether-ping is listening";
	o.instance_id = tether_process_instance_id(l->pi->prov);
	o.cbs = &listen_cbs;
	o.cb_arg = l;
	l->nconns++;
	if (tether_conn_accept(l->loop, server, &o, &c, &e) < 0) {
		fprintf(stderr, "tether-ping: accept failed: %s\n", e.detail);
		return;
	}
	for (i = 0; i < LISTEN_MAX_CONNS; i++) {
		if (!l->conns[i]) {
			l->conns[i] = c;
			break;
		}
	}
}

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void l_on_signal(uv_signal_t *s, int signum)
{
	listener *l = s->data;
	unsigned i;

	(void)signum;
	if (l->stopping)
		return;
	l->stopping = 1;
	printf("stopping (%lu echo request%s served)\n", l->served, l->served == 1 ? "" : "s");
	fflush(stdout);
	for (i = 0; i < LISTEN_MAX_CONNS; i++)
		if (l->conns[i])
			tether_conn_abort(l->conns[i], TETHER_CAT_NONE, "tether-ping is stopping");
	uv_close((uv_handle_t *)&l->tcp, NULL);
	uv_close((uv_handle_t *)&l->sigint, NULL);
	uv_close((uv_handle_t *)&l->sigterm, NULL);
}

static int bind_addr(const char *address, int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (uv_ip4_addr(address, port, (struct sockaddr_in *)ss) == 0)
		return 0;
	if (uv_ip6_addr(address, port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	return -1;
}

enum {
	O_PORT = 1, O_ADDRESS, O_COUNT, O_SIZE, O_EXPECT, O_JSON, O_TIMEOUT, O_IDENTITY,
	O_PROVIDER, O_AS_AGENT, O_NO_PROBE, O_HELP
};

static const struct option long_opts[] = {
	{ "port", required_argument, NULL, O_PORT },
	{ "address", required_argument, NULL, O_ADDRESS },
	{ "count", required_argument, NULL, O_COUNT },
	{ "size", required_argument, NULL, O_SIZE },
	{ "expect-thumbprint", required_argument, NULL, O_EXPECT },
	{ "json", no_argument, NULL, O_JSON },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "identity", required_argument, NULL, O_IDENTITY },
	{ "provider", required_argument, NULL, O_PROVIDER },
	{ "as-agent", no_argument, NULL, O_AS_AGENT },
	{ "no-probe", no_argument, NULL, O_NO_PROBE },
	{ "help", no_argument, NULL, O_HELP },
	{ NULL, 0, NULL, 0 }
};

typedef struct ping_opts {
	int listen;
	unsigned long port;
	const char *address;
	const char *target;
	unsigned long count, size, timeout_s;
	const char *expect;
	int json, as_agent, no_probe;
	const char *identity, *provider;
} ping_opts;

static int do_listen(const ping_opts *po)
{
	listener l;
	tether_tls_ctx_params tp;
	struct sockaddr_storage ss, bound;
	tether_error e;
	int r, len = sizeof(bound), port = 0;
	char ip[64] = "";

	memset(&l, 0, sizeof(l));
	memset(&e, 0, sizeof(e));
	if (bind_addr(po->address, (int)po->port, &ss) < 0)
		return usage_error("--address %s is not an IPv4 or IPv6 address", po->address);
	r = ping_ident_new(po->provider, po->identity, &l.pi, &e);
	if (r < 0) {
		fprintf(stderr, "tether-ping: %s\n", e.detail);
		return 1;
	}
	memset(&tp, 0, sizeof(tp));
	tp.role = TETHER_TLS_SERVER;
	tp.identity = l.pi->id;
	r = l.pi->prov->t->tls_ctx_new(l.pi->prov->ctx, &tp, &l.tls, &e);
	if (r < 0) {
		tls_setup_failed(&e);
		ping_ident_free(l.pi);
		return 1;
	}
	l.loop = uv_default_loop();
	uv_tcp_init(l.loop, &l.tcp);
	l.tcp.data = &l;
	r = uv_tcp_bind(&l.tcp, (struct sockaddr *)&ss, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&l.tcp, 128, l_on_connection);
	if (r < 0) {
		fprintf(stderr, "tether-ping: cannot listen on %s port %lu: %s: %s\n", po->address, po->port,
		        uv_strerror(r),
		        r == UV_EADDRINUSE ? "something else listens there (an agent?); choose another --port" :
		        r == UV_EACCES ? "ports below 1024 need root; choose another --port" :
		        "check the address");
		uv_close((uv_handle_t *)&l.tcp, NULL);
		uv_run(l.loop, UV_RUN_DEFAULT);
		l.pi->prov->t->tls_ctx_free(l.tls);
		ping_ident_free(l.pi);
		return 1;
	}
	if (uv_tcp_getsockname(&l.tcp, (struct sockaddr *)&bound, &len) == 0) {
		if (bound.ss_family == AF_INET6) {
			uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
		} else {
			uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
		}
	}
	uv_signal_init(l.loop, &l.sigint);
	uv_signal_init(l.loop, &l.sigterm);
	l.sigint.data = l.sigterm.data = &l;
	uv_signal_start(&l.sigint, l_on_signal, SIGINT);
	uv_signal_start(&l.sigterm, l_on_signal, SIGTERM);
	printf("tether-ping listening on %s port %d\n", ip, port);
	printf("thumbprint: %s\n", l.pi->sha256);
	printf("(a throw-away identity: it accepts any peer and answers HELLO and \"echo\"; Ctrl-C stops)\n");
	fflush(stdout);
	uv_run(l.loop, UV_RUN_DEFAULT);
	uv_loop_close(l.loop);
	l.pi->prov->t->tls_ctx_free(l.tls);
	ping_ident_free(l.pi);
	return 0;
}

/* ------------------------------------------------------------------ */
/* connect                                                             */
/* ------------------------------------------------------------------ */

typedef struct pinger {
	const ping_opts *o;
	uv_loop_t *loop;
	ping_ident *pi;
	ping_tap tap;
	tether_tls_ctx *tls;
	tether_conn *c;
	char *host;
	int port;
	int have_expect;
	tether_thumbprint expect;
	int refused_by_us;              /* our check_peer said no */
	int opened;                     /* HELLO exchanged */
	tether_hello peer_hello;
	tether_tls_info info;
	char peer_addr[64];
	/* rounds */
	unsigned long done_rounds;
	double *ms;
	uint64_t bytes_sent, bytes_received;
	uint64_t t_round;
	char *payload;
	int failed;
	tether_error err;               /* the failure */
	int finished;
} pinger;

static void fail_with(pinger *p, const tether_error *e)
{
	if (p->failed)
		return;
	p->failed = 1;
	p->err = *e;
}

static int p_check_peer(void *arg, tether_conn *c, const tether_thumbprint *tp)
{
	pinger *p = arg;

	(void)c;
	if (p->have_expect && !tether_thumbprint_equal(tp, &p->expect)) {
		p->refused_by_us = 1;
		return -1;
	}
	return 0;
}

static void send_round(pinger *p);

static void on_echo(void *arg, tether_conn *c, const tether_rpc_response *resp, const tether_error *err)
{
	pinger *p = arg;
	double ms = ms_since(p->t_round);
	json_t *data;
	size_t got;
	tether_error e;

	if (!resp) {
		fail_with(p, err);
		tether_conn_close(c, "normal", "tether-ping done");
		return;
	}
	if (resp->is_error) {
		tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
		               "the peer answered echo with an error: %s: %s (it is not a tether-ping listener; "
		               "the handshake and greeting above did work)", resp->code, resp->message);
		fail_with(p, &e);
		tether_conn_close(c, "normal", "tether-ping done");
		return;
	}
	data = json_object_get(resp->result, "data");
	got = json_is_string(data) ? json_string_length(data) : 0;
	p->bytes_received += got;
	if (!json_is_string(data) || got != p->o->size || memcmp(json_string_value(data), p->payload, got)) {
		tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
		               "round %lu: the peer echoed %zu bytes that differ from the %lu sent",
		               p->done_rounds + 1, got, p->o->size);
		fail_with(p, &e);
		tether_conn_close(c, "normal", "tether-ping done");
		return;
	}
	p->ms[p->done_rounds++] = ms;
	if (!p->o->json) {
		printf("round %lu: %lu bytes sent, %zu bytes echoed, %.3f ms\n", p->done_rounds, p->o->size,
		       got, ms);
		fflush(stdout);
	}
	send_round(p);
}

static void send_round(pinger *p)
{
	unsigned char rnd[256];
	tether_error e;
	size_t i;

	if (p->done_rounds >= p->o->count) {
		p->finished = 1;
		tether_conn_close(p->c, "normal", "tether-ping done");
		return;
	}
	p->pi->prov->t->random_bytes(rnd, sizeof(rnd));
	for (i = 0; i < p->o->size; i++)
		p->payload[i] = alphabet[(rnd[i % sizeof(rnd)] + i / sizeof(rnd)) % (sizeof(alphabet) - 1)];
	p->payload[p->o->size] = '\0';
	p->t_round = uv_hrtime();
	p->bytes_sent += p->o->size;
	if (tether_conn_request(p->c, "echo", json_pack("{s:s%}", "data", p->payload, (size_t)p->o->size),
	                        (uint32_t)(p->o->timeout_s * 1000), on_echo, p, &e) < 0) {
		p->bytes_sent -= p->o->size;
		fail_with(p, &e);
		tether_conn_close(p->c, "normal", "tether-ping done");
	}
}

static void p_on_open(void *arg, tether_conn *c)
{
	pinger *p = arg;

	p->opened = 1;
	p->peer_hello = *tether_conn_peer_hello(c);
	p->info = *tether_conn_tls_info(c);
	snprintf(p->peer_addr, sizeof(p->peer_addr), "%s", tether_conn_peer_addr(c));
	send_round(p);
}

static void p_on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	(void)arg;
	(void)method;
	(void)params;
	tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD, "tether-ping serves no requests", NULL);
}

static void p_on_close(void *arg, tether_conn *c, const tether_error *why)
{
	pinger *p = arg;

	if (!p->peer_addr[0])
		snprintf(p->peer_addr, sizeof(p->peer_addr), "%s", tether_conn_peer_addr(c));
	if (why->code && !p->finished)
		fail_with(p, why);
	else if (!p->finished && !p->failed) {
		tether_error e;
		tether_err_set(&e, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
		               "%s closed the connection before tether-ping was done: %s", p->peer_addr,
		               why->detail[0] ? why->detail : "no reason given");
		fail_with(p, &e);
	}
	p->c = NULL;
}

static const tether_conn_cbs connect_cbs = { p_check_peer, p_on_open, p_on_request, p_on_close, NULL };

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The category to report, refined with what tether-ping knows: a refusal
 * of our own certificate when it is SHA-1 signed, and the probes. */
typedef struct verdict {
	int category;
	int peer_refused_us;
	const char *trust;              /* verified / mismatch / not_verified */
	char message[TETHER_ERROR_DETAIL_MAX + 256];
} verdict;

static int tls_negotiation_category(int cat)
{
	return cat == TETHER_CAT_HANDSHAKE || cat == TETHER_CAT_PROTOCOL_VERSION ||
	       cat == TETHER_CAT_NO_SHARED_CIPHER || cat == TETHER_CAT_NO_SHARED_GROUP ||
	       cat == TETHER_CAT_NO_SHARED_SIGALG;
}

static void make_verdict(pinger *p, const tether_id_summary *peer, verdict *v)
{
	memset(v, 0, sizeof(*v));
	if (p->refused_by_us)
		v->trust = "mismatch";
	else if (p->have_expect && peer->present)
		v->trust = "verified";
	else
		v->trust = "not_verified";
	if (!p->failed)
		return;
	v->category = p->err.category ? p->err.category : TETHER_CAT_HANDSHAKE;
	if (p->err.category == TETHER_CAT_UNTRUSTED && p->refused_by_us) {
		snprintf(v->message, sizeof(v->message),
		         "the peer presented certificate %s, not the expected %s: something else answers at "
		         "that address, or the peer has a new certificate", peer->present ? peer->sha256 : "?",
		         p->o->expect);
	} else if (p->err.category == TETHER_CAT_UNTRUSTED) {
		const char *al = strstr(p->err.detail, "SSL alert number ");
		int alert = al ? atoi(al + strlen("SSL alert number ")) : -1;
		v->peer_refused_us = 1;
		/* bad_certificate / unsupported_certificate: what OpenSSL sends
		 * for a digest below its security level (a tether peer refuses
		 * with certificate_unknown, and only for the pin) */
		if ((strstr(p->pi->sig_alg, "sha1") || strstr(p->pi->sig_alg, "SHA1")) &&
		    (alert == 42 || alert == 43)) {
			v->category = TETHER_CAT_SHA1_REJECTED;
			snprintf(v->message, sizeof(v->message),
			         "the peer refused this tether-ping's certificate, which is signed with %s: %s",
			         p->pi->sig_alg, p->err.detail);
		} else {
			snprintf(v->message, sizeof(v->message),
			         "the peer refused this tether-ping's throw-away certificate %s (it is not pinned "
			         "there; a real agent or server always does this, and the TLS details above are "
			         "what it negotiated): %s", p->pi->sha256, p->err.detail);
		}
	} else if (p->err.category == TETHER_CAT_TIMEOUT && p->tap.handshake_done && !p->opened) {
		snprintf(v->message, sizeof(v->message), "the TLS handshake worked, but the peer did not answer "
		         "tether's greeting (HELLO): it is not a tether agent or server, or something in between "
		         "terminates TLS: %s", p->err.detail);
	} else {
		snprintf(v->message, sizeof(v->message), "%s", p->err.detail);
	}
}

static void print_text(pinger *p, const tether_id_summary *peer, const verdict *v,
                       const ping_probe_report *probes, int probed)
{
	const tether_tls_info *ti = &p->info;

	if (ti->tls_version[0] || ti->cipher[0]) {
		printf("TLS: %s, cipher %s, group %s, signature scheme %s%s\n",
		       ti->tls_version[0] ? ti->tls_version : "(handshake not completed)",
		       ti->cipher[0] ? ti->cipher : "-", ti->group[0] ? ti->group : "-",
		       ti->peer_sig_scheme[0] ? ti->peer_sig_scheme : ti->sig_scheme[0] ? ti->sig_scheme : "-",
		       ti->resumed ? " (resumed)" : "");
	}
	if (peer->present) {
		printf("peer certificate: %s\n", peer->sha256);
		printf("  signed with %s, key %s %d bits%s%s, valid %s to %s%s\n",
		       peer->info.cert_signature_algorithm, peer->info.key_type, peer->info.key_bits,
		       peer->info.curve[0] ? " " : "", peer->info.curve, peer->not_before, peer->not_after,
		       peer->expired ? " (EXPIRED: a pin still trusts it)" : "");
		if (strstr(peer->info.cert_signature_algorithm, "sha1"))
			printf("  warning: the certificate is signed with SHA-1; tether itself accepts it (the pin "
			       "is the trust), but hardened peers refuse it: regenerate it with 'new-certificate'\n");
	}
	if (!strcmp(v->trust, "verified"))
		printf("trust: verified (the thumbprint matches --expect-thumbprint)\n");
	else if (!strcmp(v->trust, "mismatch"))
		printf("trust: MISMATCH (expected %s)\n", p->o->expect);
	else if (peer->present)
		printf("trust: not verified (no --expect-thumbprint): compare the thumbprint above with "
		       "'show-thumbprint' on the peer\n");
	if (p->opened)
		printf("peer: %s, protocol %u.%u, software %s, mode %s\n", tether_role_name(p->peer_hello.role),
		       p->peer_hello.major, p->peer_hello.minor, p->peer_hello.software_version,
		       tether_mode_name(p->peer_hello.mode));
	if (p->done_rounds) {
		double *s = tether_xmalloc(p->done_rounds * sizeof(double)), total = 0;
		unsigned long i;
		memcpy(s, p->ms, p->done_rounds * sizeof(double));
		qsort(s, p->done_rounds, sizeof(double), cmp_double);
		for (i = 0; i < p->done_rounds; i++)
			total += s[i];
		printf("summary: %lu round%s of %lu bytes: %llu bytes sent, %llu bytes received; "
		       "round trip min/median/max %.3f/%.3f/%.3f ms; %.2f MB/s (payload, both ways), "
		       "%.0f round trips/s\n", p->done_rounds, p->done_rounds == 1 ? "" : "s", p->o->size,
		       (unsigned long long)p->bytes_sent, (unsigned long long)p->bytes_received, s[0],
		       s[p->done_rounds / 2], s[p->done_rounds - 1],
		       total > 0 ? (double)(p->bytes_sent + p->bytes_received) / (total / 1000.0) / 1e6 : 0.0,
		       total > 0 ? (double)p->done_rounds / (total / 1000.0) : 0.0);
		free(s);
	}
	if (probed)
		ping_probe_print(probes);
	if (p->failed) {
		printf("FAILED (%s): %s\n", tether_category_name(v->category), v->message);
		printf("hint: %s\n", tether_category_hint(v->category));
	} else {
		printf("ok\n");
	}
}

static json_t *str_or_null(const char *s)
{
	return s && s[0] ? json_string(s) : json_null();
}

static void print_json(pinger *p, const tether_id_summary *peer, const verdict *v,
                       const ping_probe_report *probes, int probed)
{
	const tether_tls_info *ti = &p->info;
	json_t *o = json_object(), *rounds = json_array();
	unsigned long i;

	json_object_set_new(o, "ok", json_boolean(!p->failed));
	json_object_set_new(o, "target", json_string(p->o->target));
	json_object_set_new(o, "address", str_or_null(p->peer_addr));
	json_object_set_new(o, "tls_version", str_or_null(ti->tls_version));
	json_object_set_new(o, "cipher", str_or_null(ti->cipher));
	json_object_set_new(o, "group", str_or_null(ti->group));
	json_object_set_new(o, "sig_scheme", str_or_null(ti->peer_sig_scheme[0] ? ti->peer_sig_scheme :
	                                                 ti->sig_scheme));
	json_object_set_new(o, "local_sig_scheme", str_or_null(ti->sig_scheme));
	json_object_set_new(o, "peer_sha256", peer->present ? json_string(peer->sha256) : json_null());
	json_object_set_new(o, "cert_signature_algorithm",
	                    peer->present ? json_string(peer->info.cert_signature_algorithm) : json_null());
	if (peer->present) {
		json_object_set_new(o, "peer_key_type", json_string(peer->info.key_type));
		json_object_set_new(o, "peer_key_bits", json_integer(peer->info.key_bits));
		json_object_set_new(o, "peer_not_after", json_string(peer->not_after));
	}
	json_object_set_new(o, "trust", json_string(v->trust));
	json_object_set_new(o, "peer_refused_us", json_boolean(v->peer_refused_us));
	json_object_set_new(o, "sha256", json_string(p->pi->sha256));
	if (p->opened)
		json_object_set_new(o, "peer", json_pack("{s:s, s:s, s:s, s:s}", "role",
		                    tether_role_name(p->peer_hello.role), "protocol",
		                    p->peer_hello.minor ? "1.x" : "1.0", "software_version",
		                    p->peer_hello.software_version, "mode", tether_mode_name(p->peer_hello.mode)));
	for (i = 0; i < p->done_rounds; i++)
		json_array_append_new(rounds, json_real(p->ms[i]));
	json_object_set_new(o, "count", json_integer((json_int_t)p->o->count));
	json_object_set_new(o, "size", json_integer((json_int_t)p->o->size));
	json_object_set_new(o, "rounds_ms", rounds);
	json_object_set_new(o, "bytes_sent", json_integer((json_int_t)p->bytes_sent));
	json_object_set_new(o, "bytes_received", json_integer((json_int_t)p->bytes_received));
	if (p->done_rounds) {
		double *s = tether_xmalloc(p->done_rounds * sizeof(double)), total = 0;
		memcpy(s, p->ms, p->done_rounds * sizeof(double));
		qsort(s, p->done_rounds, sizeof(double), cmp_double);
		for (i = 0; i < p->done_rounds; i++)
			total += s[i];
		json_object_set_new(o, "min_ms", json_real(s[0]));
		json_object_set_new(o, "median_ms", json_real(s[p->done_rounds / 2]));
		json_object_set_new(o, "max_ms", json_real(s[p->done_rounds - 1]));
		json_object_set_new(o, "throughput_mb_s",
		                    json_real(total > 0 ? (double)(p->bytes_sent + p->bytes_received) /
		                                          (total / 1000.0) / 1e6 : 0.0));
		free(s);
	}
	if (p->failed) {
		json_object_set_new(o, "category", json_string(tether_category_name(v->category)));
		json_object_set_new(o, "hint", json_string(tether_category_hint(v->category)));
		json_object_set_new(o, "error", json_string(v->message));
	}
	if (probed)
		json_object_set_new(o, "probes", ping_probe_json(probes));
	{
		char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		if (s) {
			puts(s);
			free(s);
		}
	}
	json_decref(o);
}

static int do_connect(const ping_opts *po)
{
	pinger p;
	tether_tls_ctx_params tp;
	tether_conn_opts o;
	tether_id_summary peer;
	ping_probe_report probes;
	verdict v;
	tether_error e;
	int r, probed = 0;

	memset(&p, 0, sizeof(p));
	memset(&e, 0, sizeof(e));
	memset(&peer, 0, sizeof(peer));
	memset(&probes, 0, sizeof(probes));
	p.o = po;
	if (tether_parse_hostport(po->target, &p.host, &p.port, PING_DEFAULT_PORT) < 0)
		return usage_error("'%s' is not HOST[:PORT]", po->target);
	if (po->expect) {
		if (tether_thumbprint_parse(po->expect, &p.expect, &e) < 0) {
			free(p.host);
			return usage_error("--expect-thumbprint: %s", e.detail);
		}
		p.have_expect = 1;
	}
	r = ping_ident_new(po->provider, po->identity, &p.pi, &e);
	if (r < 0) {
		fprintf(stderr, "tether-ping: %s\n", e.detail);
		free(p.host);
		return 1;
	}
	r = ping_tap_init(&p.tap, p.pi->prov);
	if (r < 0) {
		fprintf(stderr, "tether-ping: the provider %s lacks the TLS operations tether-ping needs\n",
		        p.pi->prov->t->name);
		goto out;
	}
	memset(&tp, 0, sizeof(tp));
	tp.role = TETHER_TLS_CLIENT;
	tp.identity = p.pi->id;
	r = p.pi->prov->t->tls_ctx_new(p.pi->prov->ctx, &tp, &p.tls, &e);
	if (r < 0) {
		tls_setup_failed(&e);
		goto out;
	}
	p.ms = tether_xcalloc(po->count ? po->count : 1, sizeof(double));
	p.payload = tether_xmalloc(po->size + 1);
	if (!po->json) {
		printf("tether-ping: connecting to %s port %d as a %s, throw-away certificate %s\n", p.host, p.port,
		       po->as_agent ? "polling agent" : "server", p.pi->sha256);
		fflush(stdout);
	}
	p.loop = uv_default_loop();
	memset(&o, 0, sizeof(o));
	o.tls_role = TETHER_TLS_CLIENT;
	o.local_role = po->as_agent ? TETHER_ROLE_AGENT : TETHER_ROLE_SERVER;
	o.mode = po->as_agent ? TETHER_MODE_POLLING : TETHER_MODE_LISTENING;
	o.prov = &p.tap.view;
	o.tls_ctx = p.tls;
	o.connect_ms = o.handshake_ms = (uint32_t)(po->timeout_s * 1000);
	o.keepalive_ms = 0;
	o.instance_id = tether_process_instance_id(p.pi->prov);
	o.cbs = &connect_cbs;
	o.cb_arg = &p;
#ifndef _WIN32 /* Windows has no SIGPIPE */
	signal(SIGPIPE, SIG_IGN);
#endif
	if (tether_conn_connect(p.loop, p.host, p.port, &o, &p.c, &e) < 0)
		fail_with(&p, &e);
	else
		uv_run(p.loop, UV_RUN_DEFAULT);
	/* what the handshake saw, also when it failed */
	if (!p.info.tls_version[0] && p.tap.have_info)
		p.info = p.tap.info;
	if (p.tap.peer_der_len)
		tether_cert_summary(p.pi->prov, p.tap.peer_der, p.tap.peer_der_len, &peer, NULL);
	if (p.failed && !po->no_probe && tls_negotiation_category(p.err.category)) {
		tether_error pe;
		memset(&pe, 0, sizeof(pe));
		if (ping_probe_run(p.host, p.port, (unsigned)(po->timeout_s * 1000), &probes, &pe) == 0)
			probed = 1;
		else if (!po->json)
			printf("probes could not run: %s\n", pe.detail);
	}
	make_verdict(&p, &peer, &v);
	if (probed && probes.category &&
	    (v.category == TETHER_CAT_HANDSHAKE || v.category == probes.category))
		v.category = probes.category;
	if (po->json)
		print_json(&p, &peer, &v, &probes, probed);
	else
		print_text(&p, &peer, &v, &probes, probed);
	r = p.failed ? TETHER_ERR_TLS : 0;
out:
	if (p.tls)
		p.pi->prov->t->tls_ctx_free(p.tls);
	ping_tap_clear(&p.tap);
	if (p.loop) {
		uv_walk(p.loop, close_walk, NULL);
		uv_run(p.loop, UV_RUN_DEFAULT);
		uv_loop_close(p.loop);
	}
	ping_ident_free(p.pi);
	free(p.ms);
	free(p.payload);
	free(p.host);
	return r < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
	ping_opts po;
	unsigned long v;
	int c;

	memset(&po, 0, sizeof(po));
	po.port = PING_DEFAULT_PORT;
	po.address = "0.0.0.0";
	po.count = DEFAULT_COUNT;
	po.size = DEFAULT_SIZE;
	po.timeout_s = DEFAULT_TIMEOUT_S;
	tether_log_init("tether-ping");
	tether_log_set_quiet(1); /* the report says it all; TETHER_DEBUG=tls,rpc traces */
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		printf("tether-ping %s\n", PACKAGE_VERSION);
		return 0;
	}
	if (!strcmp(argv[1], "listen"))
		po.listen = 1;
	else if (strcmp(argv[1], "connect"))
		return usage_error("unknown command '%s': use listen or connect", argv[1]);
	optind = 2;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
		switch (c) {
		case O_PORT:
			if (parse_uint(optarg, 65535, &v) < 0)
				return usage_error("--port needs a number from 0 to 65535, not '%s'", optarg);
			po.port = v;
			break;
		case O_ADDRESS: po.address = optarg; break;
		case O_COUNT:
			if (parse_uint(optarg, PING_COUNT_MAX, &v) < 0)
				return usage_error("--count needs a number from 0 to %u, not '%s'", PING_COUNT_MAX, optarg);
			po.count = v;
			break;
		case O_SIZE:
			if (parse_uint(optarg, PING_SIZE_MAX, &v) < 0)
				return usage_error("--size needs a number of bytes from 0 to %u (the payload travels "
				                   "as a JSON string under the 1 MiB message limit), not '%s'",
				                   PING_SIZE_MAX, optarg);
			po.size = v;
			break;
		case O_EXPECT: po.expect = optarg; break;
		case O_JSON: po.json = 1; break;
		case O_TIMEOUT:
			if (parse_uint(optarg, 3600, &v) < 0 || v == 0)
				return usage_error("--timeout needs seconds from 1 to 3600, not '%s'", optarg);
			po.timeout_s = v;
			break;
		case O_IDENTITY: po.identity = optarg; break;
		case O_PROVIDER: po.provider = optarg; break;
		case O_AS_AGENT: po.as_agent = 1; break;
		case O_NO_PROBE: po.no_probe = 1; break;
		case O_HELP: usage(stdout); return 0;
		case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
		default: return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (po.listen) {
		if (optind < argc)
			return usage_error("unexpected argument '%s'", argv[optind]);
		return do_listen(&po);
	}
	if (optind >= argc)
		return usage_error("connect needs HOST[:PORT]");
	if (optind + 1 < argc)
		return usage_error("unexpected argument '%s'", argv[optind + 1]);
	po.target = argv[optind];
	return do_connect(&po);
}
