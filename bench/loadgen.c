/*
 * bench-loadgen: load for tether's benchmarks, driven through the real
 * protocol engine (core/conn.h: TCP on libuv, TLS through the provider,
 * the pin check, HELLO, RPC).  Results are one JSON object per line on
 * stdout; bench/run reads them.
 *
 *   bench-loadgen hs --connect H:P --pem FILE [--concurrency C] [--duration S]
 *                    [--tls12] [--sources K]
 *       Full mutually-authenticated handshakes + HELLO as a polling agent
 *       against tether-server's polling listener, C in flight, each closed
 *       once HELLO is answered; no session resumption.
 *   bench-loadgen rtt --connect H:P --pem FILE [--count N] [--inflight K]
 *       health requests over one held connection to a listening agent (as
 *       its server), K in flight; requests/s and latency percentiles.
 *   bench-loadgen fleet --connect H:P --count N --home DIR [--instance I]
 *                       [--register] [--resume] [--sources K] [--duration S]
 *       N polling agents, each with its own ec-p256 identity generated in
 *       process and (--register) registered as its own target through the
 *       server's admin socket; each answers health.  Events: keygen,
 *       register, all_open (every time all N are connected), drop, end
 *       (at --duration or SIGTERM: fresh_sessions, the tickets received after
 *       connecting, kept for the next connection).
 */
#include "config.h"
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>
#include <jansson.h>
#include <uv.h>
#include "admin_client.h"
#include "conn.h"
#include "error.h"
#include "fsutil.h"
#include "identity.h"
#include "instance.h"
#include "log.h"
#include "util.h"

#define SOURCES_MAX 250
#define FLEET_MAX 100000
#define CONNECTING_MAX 256      /* fleet: handshakes started at once */

typedef struct opts {
	const char *mode, *connect, *pem, *home, *instance;
	int port;
	unsigned long concurrency, duration_s, count, inflight, sources;
	int tls12, resume, do_register;
} opts;

typedef struct lg {
	opts o;
	uv_loop_t *loop;
	tether_prov *prov;
	char *host_c;
	char *state_dir;
	tether_tls_ctx *tls;
	tether_identity *id;            /* hs, rtt */
	char sources[SOURCES_MAX][16];
	unsigned long next_source;
	uv_timer_t deadline;
	uv_signal_t sigterm, sigint;
	int stopping;
	/* hs */
	unsigned long inflight, completed, failures;
	uint64_t t0;
	double cpu0;                    /* this process's CPU seconds at t0 */
	char first_error[TETHER_ERROR_DETAIL_MAX];
	/* rtt */
	tether_conn *c;
	unsigned long sent, answered;
	uint64_t *t_sent;               /* by request index */
	double *lat_ms;
	uint64_t t_first;
	int failed;
} lg;

static double now_s(void)
{
	return (double)uv_hrtime() / 1e9;
}

static long long wall_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void emit(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);
	if (s) {
		printf("%s\n", s);
		fflush(stdout);
		free(s);
	}
	json_decref(o);
}

static void note_error(lg *g, const tether_error *e)
{
	g->failures++;
	if (!g->first_error[0] && e && e->detail[0])
		snprintf(g->first_error, sizeof(g->first_error), "%s", e->detail);
}

static const char *next_source(lg *g)
{
	if (g->o.sources <= 1)
		return NULL;
	return g->sources[g->next_source++ % g->o.sources];
}

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

/* ------------------------------------------------------------------ */
/* Provider, identities, TLS context                                   */
/* ------------------------------------------------------------------ */

static int setup_provider(lg *g, tether_error *err)
{
	tether_prov_opts po;
	const char *base = tether_is_dir("/dev/shm") ? "/dev/shm" : "/tmp";

	g->state_dir = tether_asprintf("%s/tether-loadgen-XXXXXX", base);
	if (!mkdtemp(g->state_dir))
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot create a temporary directory in %s: %s", base, strerror(errno));
	memset(&po, 0, sizeof(po));
	po.state_dir = g->state_dir;
	po.instance = "loadgen";
	po.program = "ping";
	return tether_provider_load("openssl", &po, &g->prov, err);
}

/* Generate (pem NULL) or import an identity into the current slot, load
 * it, and free the slot again: the identity lives on in memory. */
static int make_identity(lg *g, const char *pem, int key_type, tether_identity **out,
                         char sha_hex[TETHER_THUMBPRINT_HEX], tether_error *err)
{
	const tether_provider *t = g->prov->t;
	tether_identity *id = NULL;
	unsigned char *data = NULL;
	const unsigned char *der;
	size_t len = 0, dlen;
	tether_thumbprint tp;
	int r;

	if (pem) {
		r = tether_read_file(pem, 1 << 20, &data, &len, err);
		if (r < 0)
			return r;
		r = t->identity_import(g->prov->ctx, TETHER_SLOT_CURRENT, data, len, NULL, err);
		tether_free_wiped(data, len);
	} else {
		tether_keygen_params kp;
		memset(&kp, 0, sizeof(kp));
		kp.key_type = key_type;
		kp.validity_days = 30;
		kp.subject_cn = "tether-bench";
		r = t->identity_generate(g->prov->ctx, TETHER_SLOT_CURRENT, &kp, err);
	}
	if (r < 0)
		return r;
	r = t->identity_load(g->prov->ctx, TETHER_SLOT_CURRENT, &id, err);
	t->identity_remove(g->prov->ctx, TETHER_SLOT_CURRENT, NULL);
	if (r < 0)
		return r;
	if (t->identity_cert_der(id, &der, &dlen) < 0 || tether_thumbprint_of(g->prov, der, dlen, &tp, err) < 0) {
		t->identity_free(id);
		return tether_err_set(err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
		                      "cannot compute the thumbprint of a generated identity");
	}
	tether_thumbprint_hex(&tp, sha_hex);
	*out = id;
	return 0;
}

static int setup_tls(lg *g, tether_identity *id, tether_error *err)
{
	tether_tls_ctx_params tp;

	memset(&tp, 0, sizeof(tp));
	tp.role = TETHER_TLS_CLIENT;
	tp.identity = id;
	if (g->o.tls12)
		tp.policy |= TETHER_TLS_POLICY_TLS12_ONLY;
	if (g->o.resume)
		tp.policy |= TETHER_TLS_POLICY_RESUMPTION;
	return g->prov->t->tls_ctx_new(g->prov->ctx, &tp, &g->tls, err);
}

static int accept_any(void *arg, tether_conn *c, const tether_thumbprint *tp)
{
	(void)arg;
	(void)c;
	(void)tp;
	return 0; /* a load generator: the servers under test check pins */
}

static void base_opts(lg *g, tether_conn_opts *o, int local_role, int mode)
{
	memset(o, 0, sizeof(*o));
	o->tls_role = TETHER_TLS_CLIENT;
	o->local_role = local_role;
	o->mode = mode;
	o->prov = g->prov;
	o->tls_ctx = g->tls;
	o->connect_ms = 30000;
	o->handshake_ms = 60000;
	o->instance_id = tether_process_instance_id(g->prov);
	/* as an agent with [tls] resumption off says: no session tickets */
	o->no_tickets = !g->o.resume;
}

static void fleet_stop(lg *g);

/* Stop: no new connections; what is in flight finishes or is aborted,
 * and the loop then runs out of work. */
static void stop(lg *g)
{
	if (g->stopping)
		return;
	g->stopping = 1;
	uv_close((uv_handle_t *)&g->deadline, NULL);
	uv_close((uv_handle_t *)&g->sigterm, NULL);
	uv_close((uv_handle_t *)&g->sigint, NULL);
	if (!strcmp(g->o.mode, "fleet"))
		fleet_stop(g);
}

static void fleet_end(void);

static void on_stop_signal(uv_signal_t *s, int signum)
{
	(void)signum;
	fleet_end();
	stop(s->data);
}

static void on_deadline(uv_timer_t *t)
{
	fleet_end();
	stop(t->data);
}

/* ------------------------------------------------------------------ */
/* hs: handshakes per second                                           */
/* ------------------------------------------------------------------ */

static void hs_start(lg *g);

static void hs_on_open(void *arg, tether_conn *c)
{
	lg *g = tether_conn_get_data(c);
	(void)arg;
	g->completed++;
	tether_conn_close(c, "normal", "bench: handshake done");
}

static void hs_on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	(void)arg;
	(void)method;
	(void)params;
	tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD, "bench load generator", NULL);
}

static void hs_on_close(void *arg, tether_conn *c, const tether_error *why)
{
	lg *g = arg;
	(void)c;
	g->inflight--;
	if (why->code && why->code != TETHER_ERR_CLOSED && !g->stopping)
		note_error(g, why);
	if (!g->stopping)
		hs_start(g);
}

static const tether_conn_cbs hs_cbs = { accept_any, hs_on_open, hs_on_request, hs_on_close, NULL };

static void hs_start(lg *g)
{
	tether_conn_opts o;
	tether_conn *c;
	tether_error e;
	unsigned guard = 0;

	while (!g->stopping && g->inflight < g->o.concurrency && guard++ < 1000) {
		base_opts(g, &o, TETHER_ROLE_AGENT, TETHER_MODE_POLLING);
		o.cbs = &hs_cbs;
		o.cb_arg = g;
		o.data = g;
		o.bind_address = next_source(g);
		memset(&e, 0, sizeof(e));
		if (tether_conn_connect(g->loop, g->host_c, g->o.port, &o, &c, &e) < 0) {
			note_error(g, &e);
			continue;
		}
		g->inflight++;
	}
}

/* user + system CPU time of this process, all threads */
static double cpu_seconds(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void hs_deadline(uv_timer_t *t)
{
	lg *g = t->data;
	double secs = (double)(uv_hrtime() - g->t0) / 1e9;

	emit(json_pack("{s:s, s:s, s:I, s:f, s:f, s:f, s:I, s:s}", "bench", "handshake",
	               "tls", g->o.tls12 ? "1.2" : "1.3", "completed", (json_int_t)g->completed, "seconds", secs,
	               "per_s", secs > 0 ? (double)g->completed / secs : 0.0,
	               "cpu_s", cpu_seconds() - g->cpu0, "failures", (json_int_t)g->failures,
	               "first_error", g->first_error));
	stop(g);
}

/* ------------------------------------------------------------------ */
/* rtt: request round trips over one held connection                  */
/* ------------------------------------------------------------------ */

static void rtt_send(lg *g);

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void rtt_report(lg *g)
{
	double secs = (double)(uv_hrtime() - g->t_first) / 1e9;
	unsigned long n = g->answered;

	qsort(g->lat_ms, n, sizeof(double), cmp_double);
	emit(json_pack("{s:s, s:I, s:I, s:f, s:f, s:f, s:f, s:b, s:s}", "bench", "rtt",
	               "inflight", (json_int_t)g->o.inflight, "requests", (json_int_t)n, "seconds", secs,
	               "per_s", secs > 0 ? (double)n / secs : 0.0, "p50_ms", n ? g->lat_ms[n / 2] : -1.0,
	               "p99_ms", n ? g->lat_ms[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] : -1.0,
	               "ok", !g->failed && n == g->o.count, "first_error", g->first_error));
}

static void rtt_on_response(void *arg, tether_conn *c, const tether_rpc_response *resp,
                            const tether_error *err)
{
	uintptr_t idx = (uintptr_t)arg;
	lg *g = tether_conn_get_data(c);

	if (!resp || resp->is_error) {
		tether_error e;
		if (resp)
			tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE, "health answered an error: %s: %s",
			               resp->code, resp->message);
		note_error(g, resp ? &e : err);
		g->failed = 1;
		tether_conn_close(c, "normal", "bench done");
		return;
	}
	g->lat_ms[g->answered++] = (double)(uv_hrtime() - g->t_sent[idx]) / 1e6;
	if (g->answered == g->o.count) {
		rtt_report(g);
		tether_conn_close(c, "normal", "bench done");
		return;
	}
	rtt_send(g);
}

static void rtt_send(lg *g)
{
	tether_error e;

	while (g->sent < g->o.count && g->sent - g->answered < g->o.inflight) {
		uintptr_t idx = g->sent++;
		g->t_sent[idx] = uv_hrtime();
		if (tether_conn_request(g->c, "health", json_object(), 30000, rtt_on_response, (void *)idx, &e) < 0) {
			note_error(g, &e);
			g->failed = 1;
			tether_conn_close(g->c, "normal", "bench done");
			return;
		}
	}
}

static void rtt_on_open(void *arg, tether_conn *c)
{
	lg *g = arg;
	g->c = c;
	g->t_first = uv_hrtime();
	rtt_send(g);
}

static void rtt_on_close(void *arg, tether_conn *c, const tether_error *why)
{
	lg *g = arg;
	(void)c;
	g->c = NULL;
	if (g->answered < g->o.count) {
		if (why->code)
			note_error(g, why);
		g->failed = 1;
		rtt_report(g);
	}
	stop(g);
}

static const tether_conn_cbs rtt_cbs = { accept_any, rtt_on_open, hs_on_request, rtt_on_close, NULL };

/* ------------------------------------------------------------------ */
/* fleet: N polling agents                                             */
/* ------------------------------------------------------------------ */

typedef struct agent {
	lg *g;
	unsigned idx;
	tether_identity *id;
	char sha[TETHER_THUMBPRINT_HEX];
	tether_conn *c;
	uv_timer_t timer;
	unsigned backoff_ms;
	int open, connecting, waiting;
	unsigned char *session;
	size_t session_len;
} agent;

typedef struct fleet {
	agent *a;
	unsigned long n, n_open, connecting, resumed, full, healths;
	unsigned long fresh;            /* sessions received after on_open (fresh tickets) */
	agent **queue;                  /* waiting to connect */
	unsigned long qhead, qtail;     /* ring of n */
	int all_open_reported;
	long long t_drop;
} fleet;

static fleet F;

static void fleet_end(void)
{
	if (F.n)
		emit(json_pack("{s:s, s:I, s:I}", "event", "end", "fresh_sessions", (json_int_t)F.fresh, "wall_ms",
		               (json_int_t)wall_ms()));
}

static void fleet_pump(lg *g);

/* The agent's own policy (agent/daemon.c poller_schedule): exponential
 * backoff from 1 s to 60 s with +-25 % jitter. */
static void agent_retry_cb(uv_timer_t *t)
{
	agent *a = t->data;
	a->waiting = 0;
	F.queue[F.qtail++ % F.n] = a;
	fleet_pump(a->g);
}

static void agent_schedule(agent *a)
{
	unsigned base, delay;
	unsigned char rnd[2];

	a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : 1000;
	if (a->backoff_ms > 60000)
		a->backoff_ms = 60000;
	base = a->backoff_ms;
	a->g->prov->t->random_bytes(rnd, sizeof(rnd));
	delay = base - base / 4 + (unsigned)(((rnd[0] << 8) | rnd[1]) % (base / 2 + 1));
	a->waiting = 1;
	uv_timer_start(&a->timer, agent_retry_cb, delay, 0);
}

static void fl_on_open(void *arg, tether_conn *c)
{
	agent *a = arg;
	lg *g = a->g;
	const tether_tls_info *ti = tether_conn_tls_info(c);

	a->open = 1;
	a->connecting = 0;
	a->backoff_ms = 0;
	F.connecting--;
	F.n_open++;
	if (ti->resumed)
		F.resumed++;
	else
		F.full++;
	if (g->o.resume) {
		unsigned char *s = NULL;
		size_t len = 0;
		if (tether_conn_session(c, &s, &len) == 0 && s) {
			free(a->session);
			a->session = s;
			a->session_len = len;
		}
	}
	if (F.n_open == F.n && !F.all_open_reported) {
		F.all_open_reported = 1;
		emit(json_pack("{s:s, s:I, s:I, s:I, s:I}", "event", "all_open", "n", (json_int_t)F.n, "wall_ms",
		               (json_int_t)wall_ms(), "resumed", (json_int_t)F.resumed, "full", (json_int_t)F.full));
		F.resumed = F.full = 0;
	}
	fleet_pump(g);
}

static void fl_on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	agent *a = arg;
	(void)params;
	if (strcmp(method, "health")) {
		tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD, "bench agent: health only", NULL);
		return;
	}
	F.healths++;
	tether_conn_respond(c, id, json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:i}}", "version",
	                                     PACKAGE_VERSION, "os", "linux", "provider", "openssl", "mode", "polling",
	                                     "certificate", "sha256", a->sha, "cert_signature_algorithm",
	                                     "ecdsa-with-SHA256", "key_type", "ec", "key_bits", 256),
	                    NULL, NULL, NULL);
}

static void fl_on_close(void *arg, tether_conn *c, const tether_error *why)
{
	agent *a = arg;
	lg *g = a->g;
	(void)c;

	a->c = NULL;
	if (a->open) {
		a->open = 0;
		if (F.n_open == F.n) {
			F.t_drop = wall_ms();
			emit(json_pack("{s:s, s:I}", "event", "drop", "wall_ms", (json_int_t)F.t_drop));
		}
		F.n_open--;
		F.all_open_reported = 0;
	} else if (a->connecting) {
		a->connecting = 0;
		F.connecting--;
		if (why->code)
			note_error(g, why);
		if (why->category == TETHER_CAT_UNTRUSTED && a->session) {
			free(a->session);
			a->session = NULL;
		}
	}
	if (!g->stopping)
		agent_schedule(a);
	fleet_pump(g);
}

/* As the agent: keep the fresh ticket a long-lived connection receives. */
static void fl_on_session(void *arg, tether_conn *c)
{
	agent *a = arg;
	unsigned char *s = NULL;
	size_t len = 0;

	if (!a->g->o.resume || !a->open || tether_conn_session(c, &s, &len) != 0 || !s)
		return;
	free(a->session);
	a->session = s;
	a->session_len = len;
	F.fresh++;
}

static const tether_conn_cbs fl_cbs = { accept_any, fl_on_open, fl_on_request, fl_on_close, fl_on_session };

static void fleet_pump(lg *g)
{
	tether_conn_opts o;
	tether_error e;

	while (!g->stopping && F.connecting < CONNECTING_MAX && F.qhead != F.qtail) {
		agent *a = F.queue[F.qhead++ % F.n];
		base_opts(g, &o, TETHER_ROLE_AGENT, TETHER_MODE_POLLING);
		o.identity = a->id;
		o.idle_ms = 0;
		o.keepalive_ms = 0; /* the server pings; an idle fleet stays quiet */
		o.cbs = &fl_cbs;
		o.cb_arg = a;
		o.data = a;
		o.session = a->session;
		o.session_len = a->session_len;
		o.bind_address = next_source(g);
		a->connecting = 1;
		F.connecting++;
		memset(&e, 0, sizeof(e));
		if (tether_conn_connect(g->loop, g->host_c, g->o.port, &o, &a->c, &e) < 0) {
			a->connecting = 0;
			F.connecting--;
			note_error(g, &e);
			agent_schedule(a);
		}
	}
}

static int fleet_register(lg *g, tether_error *err)
{
	tether_instance *inst = NULL;
	unsigned long i;
	int r;
	double t0 = now_s();

	r = tether_instance_init("server", g->o.instance, g->o.home, &inst, err);
	if (r < 0)
		return r;
	for (i = 0; i < F.n; i++) {
		char name[32];
		json_t *params, *res = NULL;
		snprintf(name, sizeof(name), "fleet-%05lu", i);
		params = json_pack("{s:s, s:s, s:s}", "name", name, "mode", "polling", "sha256", F.a[i].sha);
		r = admin_client_call(inst, "target.add", params, ADMIN_CLIENT_TIMEOUT_MS, &res, err);
		json_decref(params);
		json_decref(res);
		if (r < 0) {
			tether_err_prefix(err, "cannot register fleet agent %lu", i);
			break;
		}
	}
	tether_instance_free(inst);
	if (r == 0)
		emit(json_pack("{s:s, s:I, s:f}", "event", "register", "n", (json_int_t)F.n, "seconds", now_s() - t0));
	return r;
}

static int fleet_run(lg *g, tether_error *err)
{
	unsigned long i;
	double t0 = now_s();
	int r;

	F.n = g->o.count;
	F.a = tether_xcalloc(F.n, sizeof(agent));
	F.queue = tether_xcalloc(F.n, sizeof(agent *));
	for (i = 0; i < F.n; i++) {
		agent *a = &F.a[i];
		a->g = g;
		a->idx = (unsigned)i;
		r = make_identity(g, NULL, TETHER_KEY_EC_P256, &a->id, a->sha, err);
		if (r < 0)
			return r;
		uv_timer_init(g->loop, &a->timer);
		a->timer.data = a;
	}
	emit(json_pack("{s:s, s:I, s:f}", "event", "keygen", "n", (json_int_t)F.n, "seconds", now_s() - t0));
	r = setup_tls(g, F.a[0].id, err);
	if (r < 0)
		return r;
	if (g->o.do_register) {
		r = fleet_register(g, err);
		if (r < 0)
			return r;
	}
	emit(json_pack("{s:s, s:I}", "event", "connecting", "wall_ms", (json_int_t)wall_ms()));
	for (i = 0; i < F.n; i++)
		F.queue[F.qtail++] = &F.a[i];
	fleet_pump(g);
	return 0;
}

static void fleet_stop(lg *g)
{
	unsigned long i;
	for (i = 0; i < F.n; i++) {
		if (F.a[i].c)
			tether_conn_abort(F.a[i].c, TETHER_CAT_NONE, "bench: stopping");
		if (F.a[i].timer.data && !uv_is_closing((uv_handle_t *)&F.a[i].timer))
			uv_close((uv_handle_t *)&F.a[i].timer, NULL);
	}
}

static void fleet_free(lg *g)
{
	unsigned long i;
	for (i = 0; i < F.n; i++) {
		if (F.a[i].id)
			g->prov->t->identity_free(F.a[i].id);
		free(F.a[i].session);
	}
	free(F.a);
	free(F.queue);
}

/* ------------------------------------------------------------------ */
/* main                                                                */
/* ------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f, "Usage: bench-loadgen hs|rtt|fleet --connect HOST:PORT [options]\n"
	        "  --pem FILE          identity (certificate + key) for hs and rtt\n"
	        "  --concurrency C     hs: handshakes in flight (default 64)\n"
	        "  --duration S        hs: seconds to run; fleet: seconds before exiting (default 5 / 3600)\n"
	        "  --tls12             TLS 1.2 only\n"
	        "  --count N           rtt: requests (default 10000); fleet: agents\n"
	        "  --inflight K        rtt: requests in flight (default 1)\n"
	        "  --sources K         spread source addresses over 127.0.0.2..127.0.0.K+1\n"
	        "  --home DIR --instance NAME --register   fleet: register targets via the admin socket\n"
	        "  --resume            fleet: resume sessions on reconnect\n");
}

static int parse_ul(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	unsigned long v;
	errno = 0;
	if (!s || !*s || *s == '-')
		return -1;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "connect", required_argument, NULL, 'c' }, { "pem", required_argument, NULL, 'p' },
		{ "concurrency", required_argument, NULL, 'C' }, { "duration", required_argument, NULL, 'd' },
		{ "tls12", no_argument, NULL, '2' }, { "count", required_argument, NULL, 'n' },
		{ "inflight", required_argument, NULL, 'k' }, { "sources", required_argument, NULL, 's' },
		{ "home", required_argument, NULL, 'H' }, { "instance", required_argument, NULL, 'I' },
		{ "register", no_argument, NULL, 'R' }, { "resume", no_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 }
	};
	lg *g = tether_xcalloc(1, sizeof(*g));
	tether_error e;
	struct rlimit rl;
	char sha[TETHER_THUMBPRINT_HEX];
	int ch, r = 0, rc = 1;
	unsigned long i;

	memset(&e, 0, sizeof(e));
	g->o.concurrency = 64;
	g->o.count = 10000;
	g->o.inflight = 1;
	g->o.instance = "default";
	if (argc < 2 || !strcmp(argv[1], "--help")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	g->o.mode = argv[1];
	optind = 2;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		int bad = 0;
		switch (ch) {
		case 'c': g->o.connect = optarg; break;
		case 'p': g->o.pem = optarg; break;
		case 'C': bad = parse_ul(optarg, 10000, &g->o.concurrency) < 0 || !g->o.concurrency; break;
		case 'd': bad = parse_ul(optarg, 86400, &g->o.duration_s) < 0; break;
		case '2': g->o.tls12 = 1; break;
		case 'n': bad = parse_ul(optarg, FLEET_MAX > 10000000 ? FLEET_MAX : 10000000, &g->o.count) < 0 ||
		                !g->o.count; break;
		case 'k': bad = parse_ul(optarg, 4096, &g->o.inflight) < 0 || !g->o.inflight; break;
		case 's': bad = parse_ul(optarg, SOURCES_MAX, &g->o.sources) < 0; break;
		case 'H': g->o.home = optarg; break;
		case 'I': g->o.instance = optarg; break;
		case 'R': g->o.do_register = 1; break;
		case 'r': g->o.resume = 1; break;
		case 'h': usage(stdout); return 0;
		default: return 2;
		}
		if (bad) {
			fprintf(stderr, "bench-loadgen: bad option value '%s' (see --help)\n", optarg);
			return 2;
		}
	}
	if (!g->o.connect || tether_parse_hostport(g->o.connect, &g->host_c, &g->o.port, 0) < 0 || !g->o.port) {
		fprintf(stderr, "bench-loadgen: --connect HOST:PORT is required\n");
		return 2;
	}
	if (strcmp(g->o.mode, "hs") && strcmp(g->o.mode, "rtt") && strcmp(g->o.mode, "fleet")) {
		fprintf(stderr, "bench-loadgen: unknown mode '%s': use hs, rtt or fleet\n", g->o.mode);
		return 2;
	}
	if (!strcmp(g->o.mode, "fleet") && g->o.count > FLEET_MAX) {
		fprintf(stderr, "bench-loadgen: --count %lu: at most %d fleet agents\n", g->o.count, FLEET_MAX);
		return 2;
	}
	if (strcmp(g->o.mode, "fleet") && !g->o.pem) {
		fprintf(stderr, "bench-loadgen: --pem FILE is required for %s\n", g->o.mode);
		return 2;
	}
	for (i = 0; i < g->o.sources; i++)
		snprintf(g->sources[i], sizeof(g->sources[i]), "127.0.0.%lu", i + 2);
	/* every connection is a descriptor, plus the provider's and libuv's */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);
	tether_log_init("bench-loadgen");
	tether_log_set_quiet(1);
	g->loop = uv_default_loop();
	r = setup_provider(g, &e);
	if (r < 0)
		goto out;
	uv_signal_init(g->loop, &g->sigterm);
	uv_signal_init(g->loop, &g->sigint);
	g->sigterm.data = g->sigint.data = g;
	uv_signal_start(&g->sigterm, on_stop_signal, SIGTERM);
	uv_signal_start(&g->sigint, on_stop_signal, SIGINT);
	uv_timer_init(g->loop, &g->deadline);
	g->deadline.data = g;
	if (!strcmp(g->o.mode, "fleet")) {
		r = fleet_run(g, &e);
		if (r < 0)
			goto out;
		uv_update_time(g->loop);
		uv_timer_start(&g->deadline, on_deadline, (g->o.duration_s ? g->o.duration_s : 3600) * 1000, 0);
	} else {
		r = make_identity(g, g->o.pem, 0, &g->id, sha, &e);
		if (r == 0)
			r = setup_tls(g, g->id, &e);
		if (r < 0)
			goto out;
	}
	/* identities took a while: timers count from now, not from loop start */
	uv_update_time(g->loop);
	if (!strcmp(g->o.mode, "hs")) {
		g->t0 = uv_hrtime();
		g->cpu0 = cpu_seconds();
		uv_timer_start(&g->deadline, hs_deadline, (g->o.duration_s ? g->o.duration_s : 5) * 1000, 0);
		hs_start(g);
	} else if (!strcmp(g->o.mode, "rtt")) {
		tether_conn_opts o;
		g->t_sent = tether_xcalloc(g->o.count, sizeof(uint64_t));
		g->lat_ms = tether_xcalloc(g->o.count, sizeof(double));
		base_opts(g, &o, TETHER_ROLE_SERVER, TETHER_MODE_LISTENING);
		o.cbs = &rtt_cbs;
		o.cb_arg = g;
		o.data = g;
		r = tether_conn_connect(g->loop, g->host_c, g->o.port, &o, &g->c, &e);
		if (r < 0)
			goto out;
	}
	uv_run(g->loop, UV_RUN_DEFAULT);
	rc = !strcmp(g->o.mode, "rtt") ? (g->failed || g->answered != g->o.count) : 0;
out:
	if (r < 0) {
		fprintf(stderr, "bench-loadgen: %s\n", e.detail);
		rc = 1;
	}
	if (r < 0) {
		if (!strcmp(g->o.mode, "fleet") && F.a)
			fleet_stop(g);
		if (g->c)
			tether_conn_abort(g->c, TETHER_CAT_NONE, "bench: stopping");
		uv_walk(g->loop, close_walk, NULL);
	}
	uv_run(g->loop, UV_RUN_DEFAULT);
	if (!strcmp(g->o.mode, "fleet") && g->prov)
		fleet_free(g);
	if (g->id)
		g->prov->t->identity_free(g->id);
	if (g->tls)
		g->prov->t->tls_ctx_free(g->tls);
	if (g->prov)
		tether_provider_unload(g->prov);
	if (g->state_dir) {
		tether_rmtree(g->state_dir);
		free(g->state_dir);
	}
	free(g->host_c);
	free(g->t_sent);
	free(g->lat_ms);
	free(g);
	return rc;
}
