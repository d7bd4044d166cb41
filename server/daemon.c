/*
 * tether-server run: the server daemon.
 *
 * One loop owns the admin socket (CLI verbs), the SQLite registry, and the
 * connections to listening agents, which are held open and reused.  A
 * health check of many targets runs concurrently with a bound; all results
 * are recorded in one transaction.
 */
#include "config.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#ifdef HAVE_MALLOC_TRIM
#include <malloc.h>
#endif
#include <uv.h>
#include "admin.h"
#include "admin_targets.h"
#include "audit.h"
#include "conn.h"
#include "fsutil.h"
#include "identity.h"
#include "log.h"
#include "registry.h"
#include "server.h"
#include "cli_tls.h"
#include "srvapi.h"
#include <sqlite3.h>
#include <strings.h>
#include "ratelimit.h"
#include "ticketkey.h"
#include "util.h"

#define HEALTH_CONCURRENCY 64
#define HEALTH_TIMEOUT_MS 30000

typedef struct waiter {
	struct waiter *next;
	void (*ready)(void *arg, tether_conn *c, const tether_error *err);
	void *arg;
} waiter;

/* A small string-keyed hash map (open addressing), for fleets of
 * thousands of polling agents: thumbprint -> target name, name -> state. */
typedef struct smap {
	char **keys;
	void **vals;
	size_t cap, n;
} smap;

static size_t smap_hash(const char *k)
{
	size_t h = 1469598103934665603ull;
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 1099511628211ull;
	return h;
}

static void *smap_get(const smap *m, const char *k)
{
	size_t i;
	if (!m->cap)
		return NULL;
	for (i = smap_hash(k) & (m->cap - 1); m->keys[i]; i = (i + 1) & (m->cap - 1))
		if (!strcmp(m->keys[i], k))
			return m->vals[i];
	return NULL;
}

static void smap_put(smap *m, const char *k, void *v);

static void smap_grow(smap *m)
{
	smap old = *m;
	size_t i;

	m->cap = old.cap ? old.cap * 2 : 64;
	m->keys = tether_xcalloc(m->cap, sizeof(char *));
	m->vals = tether_xcalloc(m->cap, sizeof(void *));
	m->n = 0;
	for (i = 0; i < old.cap; i++)
		if (old.keys[i]) {
			smap_put(m, old.keys[i], old.vals[i]);
			free(old.keys[i]);
		}
	free(old.keys);
	free(old.vals);
}

static void smap_put(smap *m, const char *k, void *v)
{
	size_t i;

	if ((m->n + 1) * 2 > m->cap)
		smap_grow(m);
	for (i = smap_hash(k) & (m->cap - 1); m->keys[i]; i = (i + 1) & (m->cap - 1))
		if (!strcmp(m->keys[i], k)) {
			m->vals[i] = v;
			return;
		}
	m->keys[i] = tether_strdup(k);
	m->vals[i] = v;
	m->n++;
}

/* free_val: called on each value (may be NULL). */
static void smap_clear(smap *m, void (*free_val)(void *))
{
	size_t i;
	for (i = 0; i < m->cap; i++)
		if (m->keys[i]) {
			free(m->keys[i]);
			if (free_val)
				free_val(m->vals[i]);
		}
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

typedef struct nextpin {
	struct nextpin *next;
	char name[REG_NAME_MAX + 1];
	tether_thumbprint tp;
} nextpin;

/* A listening target's connection, held open and reused. */
typedef struct held {
	struct held *next;
	char name[REG_NAME_MAX + 1];
	char host[256];
	int port;
	tether_thumbprint pin;
	tether_conn *c;
	int open;
	int refused_by_us;              /* our pin check refused the agent */
	char presented[TETHER_THUMBPRINT_HEX]; /* what it presented then */
	waiter *waiters;
	unsigned char *session;         /* to resume next time */
	size_t session_len;
	struct srv *s;
	tether_identity *presenting;    /* identity this connection presents (NULL: current) */
	int retried;                    /* retried with the current identity once */
} held;

struct srv {
	cli_ctx *c;
	tether_prov *prov;
	uv_loop_t *loop;
	registry *reg;
	/* server_pins statements, prepared once: the polling listener reads
	 * a pin for every connection it accepts */
	sqlite3_stmt *pin_get, *pin_set;
	tether_audit *audit;
	admin_server *admin;
	tether_identity *id;             /* current */
	tether_id_summary summary;
	tether_identity *prev_id;        /* previous slot, during a rotation; may be NULL */
	tether_id_summary prev_summary;
	tether_tls_ctx *tls;             /* client role (listening agents) */
	/* contexts and identities replaced by a reload: kept until exit, as
	 * connections made with them may still be open */
	void *grave[64];
	int grave_kind[64];              /* 0 identity, 1 tls ctx, 2 server tls ctx */
	char grave_sha[64][65];          /* kind 2: its identity (ticket keys follow it) */
	size_t ngrave;
	/* the agent pin transition of rotate-agent-certificate: target -> next */
	struct nextpin *nextpins;
	/* a one-off identity presented to one target (recovery) */
	char oneoff_target[REG_NAME_MAX + 1];
	tether_identity *oneoff_id;
	tether_identity *recovery_id;    /* presented to every polling agent during a recovery */
	/* choose_by_hint runs in the polling listener's handshakes, on the
	 * libuv thread pool: id, summary, prev_id, prev_summary and
	 * recovery_id change under this lock, and what they pointed to is
	 * kept (the grave) rather than freed */
	pthread_mutex_t idlock;
	held *held;
	uv_signal_t sigterm, sigint, sighup;
	uv_timer_t tkey_timer;          /* renews the polling port's ticket key */
	uv_timer_t trim_timer;          /* memory back to the system after a burst */
	unsigned trim_events;            /* polling connections opened or closed since */
	int stopping;
	uint32_t connect_ms, handshake_ms, idle_ms, keepalive_ms, request_ms;
	/* polling */
	uv_tcp_t plisten;
	int plistening;
	char paddr[300];
	tether_tls_ctx *stls;            /* server role, for polling agents */
	struct ptarget *ptargets;
	struct pconn *pconns;            /* every polling connection */
	smap pcache;                     /* polling targets: sha256 -> name (malloc'd) */
	smap ptmap;                      /* name -> ptarget */
	int pcache_valid;
	int pcache_dirty;
	uint32_t pwait_ms;
	tether_ratelimit *rl;
	const srv_preauth *preauth;
	unsigned npreauth;
	/* health: target name -> the failure last logged for it (malloc'd
	 * "state|category|pin|presented"), so a repeat is not logged again */
	smap hfail;
	smap trust_warned;               /* "target/sha256" of unknown trusted thumbprints already logged */
};

/* A polling agent's connection. */
typedef struct pconn {
	struct pconn *next;
	struct srv *s;
	tether_conn *c;
	char name[REG_NAME_MAX + 1];     /* target it authenticated as */
	char sha[TETHER_THUMBPRINT_HEX];
	char instance[TETHER_HELLO_INSTANCE_ID_LEN + 1];
	struct sockaddr_storage sa;
	int counted;
	int open;
	int preauth;                     /* unregistered: registration requests only */
	struct pconn *tnext, *tprev;     /* the target's open connections */
	uv_timer_t *ptimer;              /* preauth: closed unless it registers in time */
} pconn;

typedef struct pwaiter {
	uv_timer_t timer;               /* first: freed from its close callback */
	struct pwaiter *next;
	struct ptarget *pt;
	void (*ready)(void *arg, tether_conn *c, const tether_error *err);
	void *arg;
} pwaiter;

/* What the server knows about a polling target's connections. */
typedef struct ptarget {
	struct ptarget *next;
	char name[REG_NAME_MAX + 1];
	time_t last_connected, last_disconnected;
	unsigned rr;
	pwaiter *waiters;
	char last_problem[TETHER_ERROR_DETAIL_MAX];
	pconn *conns;                    /* open connections of this target */
} ptarget;

static void polling_get(struct srv *s, const reg_target *t,
                        void (*ready)(void *, tether_conn *, const tether_error *), void *arg);

#define PREAUTH_MAX 64   /* unregistered connections at once */
#define PREAUTH_WAIT_MS 15000 /* time an unregistered agent has to send register */

/* Modules (server/modules.c). */
extern const srv_module *const srv_modules[];

/* ------------------------------------------------------------------ */
/* Held connections                                                    */
/* ------------------------------------------------------------------ */

static held *held_find(srv *s, const char *name)
{
	held *h;
	for (h = s->held; h; h = h->next)
		if (!strcmp(h->name, name))
			return h;
	return NULL;
}

static void held_notify(held *h, tether_conn *c, const tether_error *err)
{
	waiter *w = h->waiters;

	h->waiters = NULL;
	while (w) {
		waiter *next = w->next;
		w->ready(w->arg, c, err);
		free(w);
		w = next;
	}
}

static int nextpin_match(struct srv *s, const char *name, const tether_thumbprint *tp);
static int nextpin_arrived(struct srv *s, const char *name, tether_conn *c);
static void held_connect(struct srv *s, held *h);
static void held_drop_session(held *h);
int srv_target_set_trusts(struct srv *s, const char *target, const char *sha);

static int srv_check_peer(void *arg, tether_conn *c, const tether_thumbprint *tp)
{
	held *h = arg;
	(void)c;
	if (tether_thumbprint_equal(tp, &h->pin) || nextpin_match(h->s, h->name, tp))
		return 0;
	h->refused_by_us = 1;
	tether_thumbprint_hex(tp, h->presented);
	return -1;
}

static void srv_on_open(void *arg, tether_conn *c)
{
	held *h = arg;
	unsigned char *sess = NULL;
	size_t sl = 0;

	if (h->c != c) {
		tether_conn_close(c, "reconfigured", "replaced");
		return;
	}
	h->open = 1;
	/* re-pinned: later calls must not see a changed pin and start over */
	if (nextpin_arrived(h->s, h->name, c))
		tether_conn_peer_tp(c, &h->pin);
	if (tether_conn_session(c, &sess, &sl) == 0) {
		if (h->session)
			tether_free_wiped(h->session, h->session_len);
		h->session = sess;
		h->session_len = sl;
	}
	held_notify(h, c, NULL);
	/* after the waiters' requests: they finish before a rotation step
	 * closes this connection */
	if (h->s->prev_id) /* still trusts the previous identity, or has not retired it */
		srv_rotation_target_back(h->s, h->name);
}

/* The agent sent a fresh ticket on this held connection: keep the newest
 * (memory only, as at on_open). */
static void srv_on_session(void *arg, tether_conn *c)
{
	held *h = arg;
	unsigned char *sess = NULL;
	size_t sl = 0;

	if (h->c != c || !h->open || tether_conn_session(c, &sess, &sl) != 0)
		return;
	if (h->session)
		tether_free_wiped(h->session, h->session_len);
	h->session = sess;
	h->session_len = sl;
}

static void srv_on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	(void)arg;
	(void)params;
	(void)method;
	tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD,
	                    "the server serves no requests on this connection", NULL);
}

static void srv_on_close(void *arg, tether_conn *c, const tether_error *why)
{
	held *h = arg;
	tether_error e = *why;

	if (h->c != c)
		return; /* an old connection, replaced by srv_target_close */
	if (h->refused_by_us || e.category == TETHER_CAT_UNTRUSTED) {
		/* a client whose pin check fails drops its cached session */
		if (h->session) {
			tether_free_wiped(h->session, h->session_len);
			h->session = NULL;
			h->session_len = 0;
		}
	}
	h->c = NULL;
	h->open = 0;
	/* The agent refused the previous identity we presented (its operator
	 * moved it to the current one by hand): switch it over and retry once. */
	if (e.category == TETHER_CAT_UNTRUSTED && !h->refused_by_us && h->presenting &&
	    h->presenting == h->s->prev_id && h->waiters && !h->retried) {
		log_info("target %s no longer trusts the previous server identity: presenting the current one",
		         h->name);
		srv_target_set_trusts(h->s, h->name, h->s->summary.sha256);
		held_drop_session(h);
		h->retried = 1;
		held_connect(h->s, h);
		return;
	}
	if (!e.code && h->waiters)
		tether_err_set(&e, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
		               "the connection closed before the protocol greeting: %s", why->detail);
	held_notify(h, NULL, &e);
}

static const tether_conn_cbs srv_cbs = { srv_check_peer, srv_on_open, srv_on_request, srv_on_close, srv_on_session };

static tether_identity *srv_identity_for_target(struct srv *s, const char *name);

static void held_connect(srv *s, held *h)
{
	tether_conn_opts o;
	tether_error e;

	memset(&e, 0, sizeof(e));
	memset(&o, 0, sizeof(o));
	o.tls_role = TETHER_TLS_CLIENT;
	o.local_role = TETHER_ROLE_SERVER;
	o.mode = TETHER_MODE_LISTENING;
	o.prov = s->prov;
	o.tls_ctx = s->tls;
	h->presenting = srv_identity_for_target(s, h->name);
	o.identity = h->presenting;
	/* resume only a session made with the same identity */
	o.session = h->presenting ? NULL : h->session;
	o.session_len = h->presenting ? 0 : h->session_len;
	o.no_tickets = !(cli_tls_policy(s->c) & TETHER_TLS_POLICY_RESUMPTION);
	o.connect_ms = s->connect_ms;
	o.handshake_ms = s->handshake_ms;
	o.idle_ms = s->idle_ms;
	o.keepalive_ms = s->keepalive_ms;
	o.instance_id = tether_process_instance_id(s->prov);
	o.cbs = &srv_cbs;
	o.cb_arg = h;
	o.offload_handshake = 1;
	h->refused_by_us = 0;
	h->presented[0] = '\0';
	if (tether_conn_connect(s->loop, h->host, h->port, &o, &h->c, &e) < 0) {
		h->c = NULL;
		held_notify(h, NULL, &e);
	}
}

/* Get an open connection to a target (connecting if needed); ready() is
 * called once, with the connection or an error. */
static void held_get(srv *s, const reg_target *t, void (*ready)(void *, tether_conn *, const tether_error *),
                     void *arg)
{
	held *h = held_find(s, t->name);
	tether_thumbprint pin;
	tether_error e;
	waiter *w;

	memset(&e, 0, sizeof(e));
	if (tether_thumbprint_parse(t->sha256, &pin, &e) < 0) {
		ready(arg, NULL, &e);
		return;
	}
	if (h && (strcmp(h->host, t->host ? t->host : "") || h->port != t->port ||
	          !tether_thumbprint_equal(&h->pin, &pin))) {
		/* the target changed (set-thumbprint, new address): start over */
		tether_conn *old = h->c;
		h->c = NULL;
		h->open = 0;
		if (old)
			tether_conn_close(old, "reconfigured", "the target was changed on the server");
		h->pin = pin;
		snprintf(h->host, sizeof(h->host), "%s", t->host ? t->host : "");
		h->port = t->port;
		if (h->session) {
			tether_free_wiped(h->session, h->session_len);
			h->session = NULL;
			h->session_len = 0;
		}
	}
	if (!h) {
		h = tether_xcalloc(1, sizeof(*h));
		snprintf(h->name, sizeof(h->name), "%s", t->name);
		snprintf(h->host, sizeof(h->host), "%s", t->host ? t->host : "");
		h->port = t->port;
		h->pin = pin;
		h->s = s;
		h->next = s->held;
		s->held = h;
	}
	if (h->c && h->open) {
		ready(arg, h->c, NULL);
		return;
	}
	w = tether_xcalloc(1, sizeof(*w));
	w->ready = ready;
	w->arg = arg;
	w->next = h->waiters;
	h->waiters = w;
	if (!h->c) {
		h->retried = 0;
		held_connect(s, h);
	}
}

static void held_drop_session(held *h)
{
	if (h->session) {
		tether_free_wiped(h->session, h->session_len);
		h->session = NULL;
		h->session_len = 0;
	}
}

static void held_free_all(srv *s)
{
	while (s->held) {
		held *h = s->held;
		s->held = h->next;
		if (h->session)
			tether_free_wiped(h->session, h->session_len);
		free(h);
	}
}

/* ------------------------------------------------------------------ */
/* Health                                                              */
/* ------------------------------------------------------------------ */

typedef struct health_job health_job;

typedef struct health_item {
	health_job *job;
	reg_target t;
	uint64_t t0;
	int done;
	json_t *result;                 /* the row for this target */
	char state[24], category[32], error[TETHER_ERROR_DETAIL_MAX];
	char tls_version[16], cipher[64], peer_sha256[65], sig_alg[64];
	int64_t rtt_ms;
} health_item;

struct health_job {
	srv *s;
	admin_call *call;
	health_item *items;
	size_t n, next, running, finished;
	char who[128];
};

static void health_start_more(health_job *j);

static const char *state_of(int category, int refused_by_us)
{
	(void)refused_by_us;
	switch (category) {
	case TETHER_CAT_CONNECTION_REFUSED:
	case TETHER_CAT_DNS_FAILURE:
		return "unreachable";
	case TETHER_CAT_TIMEOUT:
		return "timeout";
	case TETHER_CAT_UNTRUSTED:
		return "untrusted";
	case TETHER_CAT_CONNECTION_RESET:
		return "unreachable";
	case TETHER_CAT_CLONED_IDENTITY:
		return "untrusted";
	default:
		return "handshake_failed";
	}
}

/* The compromise indicator: the thumbprints an agent trusts (health.trust)
 * that are none of this server's identities (current, previous, staged).
 * The server cannot know another server's thumbprint (DESIGN.md's two
 * trusted servers), so anything else is reported as unknown: the operator
 * tells another server of theirs from a planted one.  Logged once per
 * target and thumbprint. */
static json_t *unknown_trust(srv *s, const char *target, json_t *trust, const char *staged)
{
	json_t *out = json_array(), *v;
	size_t k;

	json_array_foreach(trust, k, v) {
		const char *t = json_string_value(json_object_get(v, "sha256"));
		const char *pre = json_string_value(json_object_get(v, "successor_of"));
		char key[REG_NAME_MAX + 80];
		json_t *o;
		if (!t || !strcasecmp(t, s->summary.sha256) || (s->prev_id && !strcasecmp(t, s->prev_summary.sha256)) ||
		    (staged[0] && !strcasecmp(t, staged)))
			continue;
		o = json_pack("{s:s}", "sha256", t);
		if (pre)
			json_object_set_new(o, "successor_of", json_string(pre));
		json_array_append_new(out, o);
		snprintf(key, sizeof(key), "%s/%s", target, t);
		if (!smap_get(&s->trust_warned, key)) {
			smap_put(&s->trust_warned, key, (void *)1);
			log_warn("target %s trusts server thumbprint %s%s%s, which is none of this server's identities "
			         "(current, previous, staged): unless it is another server you run, it may have been "
			         "planted (a compromise indicator; see docs/SECURITY.md, 'rekey-all --recovery-identity')",
			         target, t, pre ? ", named as the successor of " : "", pre ? pre : "");
		}
	}
	return out;
}

static void health_finish(health_job *j)
{
	srv *s = j->s;
	reg_health *rh = tether_xcalloc(j->n ? j->n : 1, sizeof(*rh));
	json_t *arr = json_array();
	tether_error e;
	size_t i;
	int all_ok = 1;
	char summary[64], staged[65] = "";

	{
		tether_id_summary st;
		memset(&e, 0, sizeof(e));
		if (tether_slot_summary(s->prov, TETHER_SLOT_STAGED, &st, &e) == 0 && st.present)
			snprintf(staged, sizeof(staged), "%s", st.sha256);
	}
	for (i = 0; i < j->n; i++) {
		health_item *it = &j->items[i];
		json_t *row = json_object();
		rh[i].name = it->t.name;
		rh[i].state = it->state;
		rh[i].category = it->category[0] ? it->category : NULL;
		rh[i].error = it->error[0] ? it->error : NULL;
		rh[i].checked = (int64_t)time(NULL);
		rh[i].rtt_ms = it->rtt_ms;
		rh[i].tls_version = it->tls_version[0] ? it->tls_version : NULL;
		rh[i].cipher = it->cipher[0] ? it->cipher : NULL;
		rh[i].peer_sha256 = it->peer_sha256[0] ? it->peer_sha256 : NULL;
		rh[i].cert_signature_algorithm = it->sig_alg[0] ? it->sig_alg : NULL;
		json_object_set_new(row, "target", json_string(it->t.name));
		json_object_set_new(row, "state", json_string(it->state));
		if (it->category[0])
			json_object_set_new(row, "category", json_string(it->category));
		if (it->error[0])
			json_object_set_new(row, "error", json_string(it->error));
		json_object_set_new(row, "rtt_ms", it->rtt_ms >= 0 ? json_integer(it->rtt_ms) : json_null());
		json_object_set_new(row, "tls_version", it->tls_version[0] ? json_string(it->tls_version) : json_null());
		json_object_set_new(row, "cipher", it->cipher[0] ? json_string(it->cipher) : json_null());
		json_object_set_new(row, "peer_sha256", it->peer_sha256[0] ? json_string(it->peer_sha256) : json_null());
		json_object_set_new(row, "cert_signature_algorithm",
		                    it->sig_alg[0] ? json_string(it->sig_alg) : json_null());
		if (it->result) {
			json_t *ce = json_object_get(it->result, "certificate");
			const char *na = json_string_value(json_object_get(ce, "not_after"));
			struct tm tm;
			int64_t nat = 0;
			json_t *flags;
			memset(&tm, 0, sizeof(tm));
			if (na && strptime(na, "%Y-%m-%dT%H:%M:%SZ", &tm))
				nat = (int64_t)timegm(&tm);
			flags = tether_cert_flags(json_string_value(json_object_get(ce, "cert_signature_algorithm")),
			                          json_string_value(json_object_get(ce, "key_type")),
			                          (int)json_integer_value(json_object_get(ce, "key_bits")), nat);
			if (json_array_size(flags)) {
				log_warn("target %s: %s", it->t.name, tether_cert_flags_advice(flags));
				json_object_set_new(row, "warnings", flags);
				json_object_set_new(row, "advice", json_string(tether_cert_flags_advice(flags)));
			} else {
				json_decref(flags);
			}
			json_object_set(row, "agent", it->result);
			if (json_is_array(json_object_get(it->result, "trust")))
				json_object_set_new(row, "unknown_trust", unknown_trust(s, it->t.name,
				                    json_object_get(it->result, "trust"), staged));
		}
		json_array_append_new(arr, row);
		if (strcmp(it->state, "healthy"))
			all_ok = 0;
	}
	if (j->n && registry_record_health(s->reg, rh, j->n, &e) < 0)
		log_error("%s; these health results are not stored (the caller still gets them)", e.detail);
	snprintf(summary, sizeof(summary), "%zu target%s, %s", j->n, j->n == 1 ? "" : "s",
	         all_ok ? "all healthy" : "not all healthy");
	tether_audit_write(s->audit, j->who, "health", NULL, all_ok ? "ok" : "error", NULL, summary, NULL);
	admin_reply(j->call, arr);
	for (i = 0; i < j->n; i++) {
		reg_target_clear(&j->items[i].t);
		json_decref(j->items[i].result);
	}
	free(rh);
	free(j->items);
	free(j);
}

static void item_done(health_item *it)
{
	health_job *j = it->job;

	if (it->done)
		return;
	it->done = 1;
	j->running--;
	j->finished++;
	if (j->finished == j->n)
		health_finish(j);
	else
		health_start_more(j);
}

/* Log a target's failed health check with its category and hint: the
 * first failure and each change, not every repeat (a health --all over
 * thousands of broken targets would flood the log otherwise). */
static void health_log_fail(srv *s, const health_item *it)
{
	char key[sizeof(it->state) + sizeof(it->category) + 2 * TETHER_THUMBPRINT_HEX + 4], where[300];
	char *old = smap_get(&s->hfail, it->t.name);
	int cat;

	for (cat = TETHER_CAT__COUNT - 1; cat > 0; cat--) /* the category's number, for its hint */
		if (!strcmp(tether_category_name(cat), it->category))
			break;

	snprintf(key, sizeof(key), "%s|%s|%s|%s", it->state, it->category, it->t.sha256, it->peer_sha256);
	if (old && !strcmp(old, key)) {
		tether_debug("health", "target %s failed again (%s): %s", it->t.name, it->category, it->error);
		return;
	}
	free(old);
	smap_put(&s->hfail, it->t.name, tether_strdup(key));
	if (it->t.host)
		snprintf(where, sizeof(where), "listening agent at %s:%d", it->t.host, it->t.port);
	else
		snprintf(where, sizeof(where), "polling agent");
	log_warn("health check of target %s (%s) failed (%s): %s; until this changes, repeats are not logged",
	         it->t.name, where, it->category, it->error);
	log_warn("hint: %s", tether_category_hint(cat ? cat : TETHER_CAT_INTERNAL));
}

/* A target that failed before is healthy again: say so once. */
static void health_log_ok(srv *s, const health_item *it)
{
	char *old = smap_get(&s->hfail, it->t.name);

	if (!old)
		return;
	free(old);
	smap_put(&s->hfail, it->t.name, NULL);
	log_info("target %s is healthy again", it->t.name);
}

static void item_fail(health_item *it, tether_conn *c, const tether_error *e)
{
	held *h = held_find(it->job->s, it->t.name);
	tether_thumbprint tp;
	int cat = e->category;

	snprintf(it->category, sizeof(it->category), "%s", tether_category_name(cat ? cat : TETHER_CAT_HANDSHAKE));
	snprintf(it->state, sizeof(it->state), "%s", state_of(cat, h && h->refused_by_us));
	if (c && tether_conn_peer_tp(c, &tp) == 0)
		tether_thumbprint_hex(&tp, it->peer_sha256);
	else if (h && h->refused_by_us && h->presented[0])
		snprintf(it->peer_sha256, sizeof(it->peer_sha256), "%s", h->presented);
	if (cat == TETHER_CAT_UNTRUSTED && h && h->refused_by_us)
		snprintf(it->error, sizeof(it->error),
		         "untrusted certificate: the agent presented %s but %s is pinned; if the agent got a new "
		         "certificate, run 'tether-server target set-thumbprint %s %s'",
		         it->peer_sha256[0] ? it->peer_sha256 : "another certificate", it->t.sha256, it->t.name,
		         it->peer_sha256[0] ? it->peer_sha256 : "NEW");
	else if (cat == TETHER_CAT_UNTRUSTED)
		snprintf(it->error, sizeof(it->error),
		         "the agent does not trust this server's certificate %s: run 'tether-agent configure "
		         "--trust %s' on the agent", it->job->s->summary.sha256, it->job->s->summary.sha256);
	else
		snprintf(it->error, sizeof(it->error), "%s", e->detail);
	it->rtt_ms = -1;
	health_log_fail(it->job->s, it);
	item_done(it);
}

static void on_health_response(void *arg, tether_conn *c, const tether_rpc_response *resp,
                               const tether_error *err)
{
	health_item *it = arg;
	const tether_tls_info *ti;

	if (!resp) {
		item_fail(it, c, err);
		return;
	}
	it->rtt_ms = (int64_t)(tether_now_ms() - it->t0);
	ti = tether_conn_tls_info(c);
	snprintf(it->tls_version, sizeof(it->tls_version), "%s", ti->tls_version);
	snprintf(it->cipher, sizeof(it->cipher), "%s", ti->cipher);
	{
		tether_thumbprint tp;
		if (tether_conn_peer_tp(c, &tp) == 0)
			tether_thumbprint_hex(&tp, it->peer_sha256);
	}
	if (resp->is_error) {
		snprintf(it->state, sizeof(it->state), "handshake_failed");
		snprintf(it->category, sizeof(it->category), "%s", resp->category[0] ? resp->category : "internal");
		snprintf(it->error, sizeof(it->error), "the agent answered health with an error: %s: %s",
		         resp->code, resp->message);
		health_log_fail(it->job->s, it);
	} else {
		const char *alg = json_string_value(json_object_get(json_object_get(resp->result, "certificate"),
		                                                    "cert_signature_algorithm"));
		snprintf(it->state, sizeof(it->state), "healthy");
		snprintf(it->sig_alg, sizeof(it->sig_alg), "%s", alg ? alg : "");
		it->result = json_incref(resp->result);
		health_log_ok(it->job->s, it);
	}
	item_done(it);
}

static void on_health_conn(void *arg, tether_conn *c, const tether_error *err)
{
	health_item *it = arg;
	tether_error e;

	if (!c) {
		item_fail(it, NULL, err);
		return;
	}
	memset(&e, 0, sizeof(e));
	if (tether_conn_request(c, "health", json_object(), it->job->s->request_ms ? it->job->s->request_ms :
	                        HEALTH_TIMEOUT_MS, on_health_response, it, &e) < 0)
		item_fail(it, c, &e);
}

static void health_start_more(health_job *j)
{
	while (j->running < HEALTH_CONCURRENCY && j->next < j->n) {
		health_item *it = &j->items[j->next++];
		j->running++;
		it->t0 = tether_now_ms();
		it->rtt_ms = -1;
		if (!strcmp(it->t.mode, "polling"))
			polling_get(j->s, &it->t, on_health_conn, it);
		else
			held_get(j->s, &it->t, on_health_conn, it);
	}
}

static void do_health(srv *s, admin_call *call, json_t *params)
{
	json_t *names = json_object_get(params, "targets");
	const char *tag = json_string_value(json_object_get(params, "tag"));
	int all = json_is_true(json_object_get(params, "all"));
	health_job *j;
	reg_target *list = NULL;
	size_t n = 0, i;
	tether_error e;

	memset(&e, 0, sizeof(e));
	j = tether_xcalloc(1, sizeof(*j));
	j->s = s;
	j->call = call;
	snprintf(j->who, sizeof(j->who), "%s", admin_call_user(call));
	if (json_is_array(names) && json_array_size(names) > 0) {
		json_t *v;
		j->items = tether_xcalloc(json_array_size(names), sizeof(*j->items));
		json_array_foreach(names, i, v) {
			const char *name = json_string_value(v);
			if (!name || registry_target_get(s->reg, name, &j->items[j->n].t, &e) < 0) {
				size_t k;
				admin_reply_error(call, name ? e.detail : "target names must be strings",
				                  tether_category_name(e.category ? e.category : TETHER_CAT_BAD_INPUT));
				for (k = 0; k < j->n; k++)
					reg_target_clear(&j->items[k].t);
				free(j->items);
				free(j);
				return;
			}
			j->items[j->n].job = j;
			j->n++;
		}
	} else if (all || tag) {
		if (registry_target_list(s->reg, tag, &list, &n, &e) < 0) {
			admin_reply_error(call, e.detail, tether_category_name(e.category));
			free(j);
			return;
		}
		j->items = tether_xcalloc(n ? n : 1, sizeof(*j->items));
		for (i = 0; i < n; i++) {
			j->items[i].t = list[i];
			j->items[i].job = j;
		}
		free(list); /* the items own the strings now */
		j->n = n;
	} else {
		admin_reply_error(call, "name the targets to check, or give --all or --tag TAG", "bad_input");
		free(j);
		return;
	}
	if (j->n == 0) {
		health_finish(j);
		return;
	}
	health_start_more(j);
}


/* ------------------------------------------------------------------ */
/* Polling agents                                                      */
/* ------------------------------------------------------------------ */

static ptarget *ptarget_get(srv *s, const char *name)
{
	ptarget *pt = smap_get(&s->ptmap, name);

	if (pt)
		return pt;
	pt = tether_xcalloc(1, sizeof(*pt));
	snprintf(pt->name, sizeof(pt->name), "%s", name);
	pt->next = s->ptargets;
	s->ptargets = pt;
	smap_put(&s->ptmap, name, pt);
	return pt;
}

static void pcache_free(srv *s)
{
	smap_clear(&s->pcache, free);
	s->pcache_valid = 0;
}

/* The name of the polling target pinned to this thumbprint, or NULL. */
static const char *pcache_lookup(srv *s, const char *sha)
{
	const char *name;

	if (s->pcache_dirty || !s->pcache_valid) {
		reg_target *list = NULL;
		size_t n = 0, i;
		tether_error e;
		pcache_free(s);
		memset(&e, 0, sizeof(e));
		if (registry_target_list(s->reg, NULL, &list, &n, &e) < 0) {
			log_error("cannot read the registry: %s", e.detail);
			return NULL;
		}
		for (i = 0; i < n; i++)
			if (!strcmp(list[i].mode, "polling"))
				smap_put(&s->pcache, list[i].sha256, tether_strdup(list[i].name));
		reg_target_list_free(list, n);
		s->pcache_dirty = 0;
		s->pcache_valid = 1;
	}
	name = smap_get(&s->pcache, sha);
	if (name)
		return name;
	{
		nextpin *np;
		tether_thumbprint tp;
		if (tether_thumbprint_parse(sha, &tp, NULL) == 0)
			for (np = s->nextpins; np; np = np->next)
				if (tether_thumbprint_equal(&np->tp, &tp))
					return np->name;
	}
	return NULL;
}

static int p_check_peer(void *arg, tether_conn *c, const tether_thumbprint *tp)
{
	pconn *pc = arg;
	const char *name;
	(void)c;

	tether_thumbprint_hex(tp, pc->sha);
	name = pcache_lookup(pc->s, pc->sha);
	if (!name) {
		srv *s = pc->s;
		/* not registered: only the registration role, if offered, bounded */
		if (s->preauth && s->npreauth < PREAUTH_MAX && s->preauth->accept(s, pc->sha, &pc->sa)) {
			if (!pc->preauth)
				s->npreauth++;
			pc->preauth = 1;
			return 0;
		}
		return -1;
	}
	snprintf(pc->name, sizeof(pc->name), "%s", name);
	return 0;
}

static void pwaiter_done(pwaiter *w, tether_conn *c, const tether_error *err)
{
	ptarget *pt = w->pt;
	pwaiter **pp;

	for (pp = &pt->waiters; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	uv_timer_stop(&w->timer);
	w->ready(w->arg, c, err);
	uv_close((uv_handle_t *)&w->timer, (uv_close_cb)free);
}

/* The least busy of the target's open connections (fewest requests and
 * streams in flight: a request does not queue behind a long transfer);
 * round-robin among equally busy ones. */
static tether_conn *ptarget_pick(srv *s, ptarget *pt)
{
	pconn *pc, *open[64];
	unsigned n = 0, i, k, best = 0;
	size_t load, least = (size_t)-1;

	(void)s;
	for (pc = pt->conns; pc && n < 64; pc = pc->tnext)
		if (pc->open && tether_conn_is_open(pc->c))
			open[n++] = pc;
	if (!n)
		return NULL;
	for (i = 0; i < n; i++) {
		k = (pt->rr + i) % n;
		load = tether_conn_load(open[k]->c);
		if (load < least) {
			least = load;
			best = k;
		}
	}
	pt->rr = best + 1;
	if (n > 1)
		tether_debug("rpc", "polling target %s: request on the connection from %s (%zu in flight; %u "
		             "connections open)", pt->name, tether_conn_peer_addr(open[best]->c), least, n);
	return open[best]->c;
}

/* An unregistered agent that does not register in time (a polling agent
 * whose target was never added) is told so and closed; it retries with
 * backoff and logs why. */
static void preauth_expire(uv_timer_t *t)
{
	pconn *pc = t->data;
	char msg[200];

	snprintf(msg, sizeof(msg), "this agent's certificate %.64s is not registered on this server: "
	         "'tether-server target add NAME --polling --thumbprint %.64s' there, or 'tether-agent "
	         "register-with' here", pc->sha, pc->sha);
	log_info("closing the connection of unregistered agent %s (%s): it did not register", pc->sha,
	         tether_conn_peer_addr(pc->c));
	tether_conn_close(pc->c, "not_registered", msg);
}

static void preauth_timer_free(pconn *pc)
{
	if (pc->ptimer) {
		uv_timer_stop(pc->ptimer);
		uv_close((uv_handle_t *)pc->ptimer, (uv_close_cb)free);
		pc->ptimer = NULL;
	}
}

/* A burst of connections (a fleet starting or coming back after a restart)
 * leaves freed memory in glibc's arenas: the handshakes run on libuv's pool
 * threads, each with an arena of its own, and what their handshake state
 * freed stays there in pieces between the live sessions. Once the burst is
 * over (no polling connection opened or closed for TRIM_IDLE_MS after at
 * least TRIM_AFTER of them) malloc_trim gives the free pages back. */
#define TRIM_AFTER 64
#define TRIM_IDLE_MS 500
static void on_trim_timer(uv_timer_t *t)
{
	srv *s = t->data;

	s->trim_events = 0;
#ifdef HAVE_MALLOC_TRIM
	malloc_trim(0);
#endif
}

static void trim_note(srv *s)
{
	if (++s->trim_events >= TRIM_AFTER)
		uv_timer_start(&s->trim_timer, on_trim_timer, TRIM_IDLE_MS, 0);
}

static void p_on_open(void *arg, tether_conn *c)
{
	pconn *pc = arg, *o;
	srv *s = pc->s;
	const tether_hello *h = tether_conn_peer_hello(c);
	ptarget *pt = ptarget_get(s, pc->name);

	trim_note(s);
	if (pc->counted) {
		/* a pinned agent's handshake does not count against its address */
		tether_ratelimit_done(s->rl, (struct sockaddr *)&pc->sa, !pc->preauth);
		pc->counted = 0;
	}
	snprintf(pc->instance, sizeof(pc->instance), "%s", h->instance_id);
	if (pc->preauth) {
		tether_debug("rpc", "unregistered agent %s from %s: registration requests only", pc->sha,
		             tether_conn_peer_addr(c));
		pc->ptimer = tether_xcalloc(1, sizeof(*pc->ptimer));
		uv_timer_init(s->loop, pc->ptimer);
		pc->ptimer->data = pc;
		uv_timer_start(pc->ptimer, preauth_expire, PREAUTH_WAIT_MS, 0);
		return;
	}
	for (o = pt->conns; o; o = o->tnext) {
		if (o != pc && o->open && !strcmp(o->sha, pc->sha) && strcmp(o->instance, pc->instance)) {
			snprintf(pt->last_problem, sizeof(pt->last_problem),
			         "cloned identity: certificate %s is used by two agent processes (instance %s at %s "
			         "and instance %s at %s); run 'tether-agent new-certificate' on the clone and register "
			         "its new thumbprint", pc->sha, o->instance, tether_conn_peer_addr(o->c), pc->instance,
			         tether_conn_peer_addr(c));
			log_error("refused %s (target %s): %s", tether_conn_peer_addr(c), pc->name, pt->last_problem);
			tether_audit_write(s->audit, "server", "polling.connect", pc->name, "error",
			                   "cloned_identity", pt->last_problem, NULL);
			tether_conn_close(c, "cloned_identity", "this certificate is already connected from "
			                  "another agent process (cloned identity)");
			return;
		}
	}
	pc->open = 1;
	pc->tnext = pt->conns;
	if (pt->conns)
		pt->conns->tprev = pc;
	pt->conns = pc;
	pt->last_connected = time(NULL);
	nextpin_arrived(s, pc->name, c);
	{
		/* the identity it asked for with its pin hint is the one it trusts */
		const char *sni = tether_conn_tls_info(c)->server_name;
		const char *which = s->summary.sha256;
		if (sni && !strncmp(sni, "p-", 2) && s->prev_id && !strncasecmp(sni + 2, s->prev_summary.sha256, 16))
			which = s->prev_summary.sha256;
		if (!s->recovery_id) {
			char cur[65];
			srv_target_trusts(s, pc->name, cur);
			if (strcmp(cur, which)) {
				/* an agent that asks for the new identity after trust.rotate
				 * still trusts the previous one until it retires it */
				if (s->prev_id && !strcmp(cur, s->prev_summary.sha256)) {
					tether_error e;
					memset(&e, 0, sizeof(e));
					if (registry_target_set_retire(s->reg, pc->name, cur, &e) < 0)
						log_error("target %s: %s", pc->name, e.detail);
				}
				srv_target_set_trusts(s, pc->name, which);
			}
		}
	}
	pt->last_problem[0] = '\0';
	log_info("polling agent %s connected from %s (%s, %s%s)", pc->name, tether_conn_peer_addr(c),
	         tether_conn_tls_info(c)->tls_version, tether_conn_tls_info(c)->cipher,
	         tether_conn_tls_info(c)->resumed ? ", resumed" : "");
	while (pt->waiters)
		pwaiter_done(pt->waiters, c, NULL);
	/* after the waiters' requests, as for a listening target */
	if (s->prev_id)
		srv_rotation_target_back(s, pc->name);
}

static void p_on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	pconn *pc = arg;

	if (pc->preauth && pc->s->preauth) {
		pc->s->preauth->request(pc->s, c, pc->sha, id, method, params);
		return;
	}
	tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD,
	                    "the server serves no requests to agents in this version", NULL);
}

static void p_on_close(void *arg, tether_conn *c, const tether_error *why)
{
	pconn *pc = arg, **pp;
	srv *s = pc->s;

	trim_note(s);
	if (pc->counted)
		tether_ratelimit_done(s->rl, (struct sockaddr *)&pc->sa, 0);
	if (pc->preauth) {
		preauth_timer_free(pc);
		if (s->npreauth)
			s->npreauth--;
		if (s->preauth && s->preauth->closed)
			s->preauth->closed(s, c, pc->sha);
	} else if (pc->open) {
		ptarget *pt = ptarget_get(s, pc->name);
		if (pc->tprev)
			pc->tprev->tnext = pc->tnext;
		else if (pt->conns == pc)
			pt->conns = pc->tnext;
		if (pc->tnext)
			pc->tnext->tprev = pc->tprev;
		pt->last_disconnected = time(NULL);
		log_info("polling agent %s (%s) disconnected%s%s", pc->name, tether_conn_peer_addr(c),
		         why->code ? ": " : "", why->code ? why->detail : "");
	} else if (why->code && why->category == TETHER_CAT_UNTRUSTED && pc->sha[0] && !pc->name[0]) {
		log_warn("refused a polling agent from %s: its certificate %s is not registered; if it is yours, "
		         "run 'tether-server target add NAME --polling --thumbprint %s'", tether_conn_peer_addr(c),
		         pc->sha, pc->sha);
	} else if (why->code && why->code != TETHER_ERR_CLOSED) {
		log_info("polling connection from %s failed (%s): %s", tether_conn_peer_addr(c),
		         tether_category_name(why->category), why->detail);
		log_info("hint: %s", tether_category_hint(why->category));
	}
	for (pp = &s->pconns; *pp; pp = &(*pp)->next)
		if (*pp == pc) {
			*pp = pc->next;
			break;
		}
	free(pc);
}

static const tether_conn_cbs p_cbs = { p_check_peer, p_on_open, p_on_request, p_on_close, NULL };

static void p_on_connection(uv_stream_t *server, int status)
{
	srv *s = server->data;
	tether_conn_opts o;
	tether_conn *c = NULL;
	tether_error e;
	const char *why = NULL;
	pconn *pc;

	if (status < 0)
		return;
	pc = tether_xcalloc(1, sizeof(*pc));
	pc->s = s;
	pc->next = s->pconns;
	s->pconns = pc;
	memset(&o, 0, sizeof(o));
	o.tls_role = TETHER_TLS_SERVER;
	o.local_role = TETHER_ROLE_SERVER;
	o.mode = TETHER_MODE_POLLING;
	o.prov = s->prov;
	o.tls_ctx = s->stls;
	o.handshake_ms = s->handshake_ms;
	o.idle_ms = 0; /* the agent holds the connection: keepalive decides */
	o.keepalive_ms = s->keepalive_ms;
	o.landing_page = 1;
	o.landing_text = "tether-server is listening";
	o.instance_id = tether_process_instance_id(s->prov);
	o.cbs = &p_cbs;
	o.cb_arg = pc;
	o.offload_handshake = 1; /* one loop, every core for the handshakes */
	memset(&e, 0, sizeof(e));
	if (tether_conn_accept(s->loop, server, &o, &c, &e) < 0)
		return; /* on_close freed pc */
	pc->c = c;
	if (tether_conn_peer_sockaddr(c, &pc->sa) == 0) {
		if (!tether_ratelimit_admit(s->rl, (struct sockaddr *)&pc->sa, &why)) {
			tether_debug("tls", "dropping %s: %s", tether_conn_peer_addr(c), why);
			tether_conn_abort(c, TETHER_CAT_NONE, why);
			return;
		}
		pc->counted = 1;
	}
}

static void pwaiter_timeout(uv_timer_t *t)
{
	pwaiter *w = t->data;
	ptarget *pt = w->pt;
	tether_error e;
	char since[40];

	if (pt->last_disconnected)
		tether_iso8601(pt->last_disconnected, since, sizeof(since));
	tether_err_set(&e, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
	               "polling target %s is not connected %s%s%s: check that the agent runs in polling mode "
	               "with this server's address, trusts this server, and can reach it",
	               pt->name, pt->last_disconnected ? "since " : "(it has never connected",
	               pt->last_disconnected ? since : "", pt->last_disconnected ? "" : ")");
	if (pt->last_problem[0]) {
		char msg[TETHER_ERROR_DETAIL_MAX];
		snprintf(msg, sizeof(msg), "%s; last refusal: %s", e.detail, pt->last_problem);
		snprintf(e.detail, sizeof(e.detail), "%s", msg);
		if (strstr(pt->last_problem, "cloned identity"))
			e.category = TETHER_CAT_CLONED_IDENTITY;
	}
	pwaiter_done(w, NULL, &e);
}

static void polling_get(srv *s, const reg_target *t,
                        void (*ready)(void *, tether_conn *, const tether_error *), void *arg)
{
	ptarget *pt = ptarget_get(s, t->name);
	tether_conn *c = ptarget_pick(s, pt);
	pwaiter *w;

	if (c) {
		ready(arg, c, NULL);
		return;
	}
	w = tether_xcalloc(1, sizeof(*w));
	w->pt = pt;
	w->ready = ready;
	w->arg = arg;
	w->next = pt->waiters;
	pt->waiters = w;
	uv_timer_init(s->loop, &w->timer);
	w->timer.data = w;
	uv_timer_start(&w->timer, pwaiter_timeout, s->pwait_ms ? s->pwait_ms : 1, 0);
}

/* An agent waiting in the registration role whose certificate is now a
 * registered target reconnects as one. */
static void preauth_recheck(srv *s)
{
	pconn *pc;

	for (pc = s->pconns; pc; pc = pc->next)
		if (pc->preauth && pc->c && tether_conn_is_open(pc->c) && pcache_lookup(s, pc->sha))
			tether_conn_close(pc->c, "registered", "reconnect: this agent is now registered");
}

/* A target changed: drop its polling connections if its pin changed. */
static void polling_target_changed(srv *s, const char *name)
{
	pconn *pc;

	s->pcache_dirty = 1;
	preauth_recheck(s);
	for (pc = s->pconns; pc; pc = pc->next)
		if (pc->open && !strcmp(pc->name, name))
			tether_conn_close(pc->c, "reconfigured", "the target was changed on the server");
}

static int load_identities(srv *s, tether_error *err);

/* To a polling agent: present the identity its pin hint names
 * (p-<first 16 hex of the thumbprint it pins>.tether.invalid). */
static tether_identity *choose_by_hint(void *arg, const char *server_name)
{
	srv *s = arg;
	tether_identity *id = NULL;

	pthread_mutex_lock(&s->idlock);
	if (s->recovery_id)
		id = s->recovery_id; /* a recovery is running: agents see the recovery identity */
	else if (!server_name || strncmp(server_name, "p-", 2) || strlen(server_name) < 18)
		id = NULL;
	else if (!strncasecmp(server_name + 2, s->summary.sha256, 16))
		id = s->id;
	else if (s->prev_id && !strncasecmp(server_name + 2, s->prev_summary.sha256, 16))
		id = s->prev_id;
	pthread_mutex_unlock(&s->idlock);
	return id;
}

static int polling_start(srv *s, tether_error *err)
{
	struct sockaddr_storage ss;
	char *host = NULL;
	int port = 0, r;

	snprintf(s->paddr, sizeof(s->paddr), "%s",
	         tether_config_get(s->c->conf, "polling", "address", "0.0.0.0:10943"));
	s->pwait_ms = (uint32_t)strtoul(tether_config_get(s->c->conf, "polling", "wait", "30"), NULL, 10) * 1000u;
	s->rl = tether_ratelimit_new(20.0, 40.0, 512);
	s->pcache_dirty = 1;
	/* the server-role context, now that [polling] address is known */
	r = load_identities(s, err);
	if (r < 0)
		return r;
	if (!strcmp(s->paddr, "off"))
		return 0;
	if (tether_parse_hostport(s->paddr, &host, &port, 0) < 0)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "[polling] address '%s' is not HOST:PORT", s->paddr);
	memset(&ss, 0, sizeof(ss));
	if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) < 0 &&
	    uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) < 0) {
		free(host);
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "[polling] address '%s' is not an IP address of this machine", s->paddr);
	}
	free(host);
	uv_tcp_init(s->loop, &s->plisten);
	s->plisten.data = s;
	r = uv_tcp_bind(&s->plisten, (struct sockaddr *)&ss, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&s->plisten, 4096, p_on_connection);
	if (r < 0) {
		uv_close((uv_handle_t *)&s->plisten, NULL);
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot listen for polling agents on %s: %s%s", s->paddr, uv_strerror(r),
		                      r == UV_EADDRINUSE ? " (another program uses that port: stop it, or change "
		                      "[polling] address with 'tether-server configure --polling-listen ADDR:PORT')" : "");
	}
	s->plistening = 1;
	return 0;
}

static void polling_stop(srv *s)
{
	pconn *pc;
	ptarget *pt;

	if (s->plistening && !uv_is_closing((uv_handle_t *)&s->plisten))
		uv_close((uv_handle_t *)&s->plisten, NULL);
	s->plistening = 0;
	for (pc = s->pconns; pc; pc = pc->next)
		if (pc->c)
			tether_conn_close(pc->c, "shutting_down", "the server is stopping");
	for (pt = s->ptargets; pt; pt = pt->next)
		while (pt->waiters) {
			tether_error e;
			tether_err_set(&e, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET, "the server is stopping");
			pwaiter_done(pt->waiters, NULL, &e);
		}
}

static void polling_free(srv *s)
{
	smap_clear(&s->ptmap, NULL);
	while (s->ptargets) {
		ptarget *pt = s->ptargets;
		s->ptargets = pt->next;
		free(pt);
	}
	pcache_free(s);
	if (s->stls)
		s->prov->t->tls_ctx_free(s->stls);
	tether_ratelimit_free(s->rl);
}

/* ------------------------------------------------------------------ */
/* srvapi.h                                                            */
/* ------------------------------------------------------------------ */

/* ---- identities, pins, rotation primitives ---- */

static void grave_put(srv *s, void *p, int kind)
{
	if (!p)
		return;
	if (s->ngrave < 64) {
		s->grave[s->ngrave] = p;
		snprintf(s->grave_sha[s->ngrave], sizeof(s->grave_sha[0]), "%s", kind == 2 ? s->summary.sha256 : "");
		s->grave_kind[s->ngrave++] = kind;
	}
	/* beyond 64 reloads in one run: leak rather than free in use */
}

static void grave_free(srv *s)
{
	size_t i;
	for (i = 0; i < s->ngrave; i++) {
		if (s->grave_kind[i])
			s->prov->t->tls_ctx_free(s->grave[i]);
		tether_wipe(s->grave_sha[i], sizeof(s->grave_sha[i]));
	}
	for (i = 0; i < s->ngrave; i++) {
		if (!s->grave_kind[i])
			s->prov->t->identity_free(s->grave[i]);
	}
	s->ngrave = 0;
}

/* Load current and previous identities and build the TLS contexts. */
static int load_identities(srv *s, tether_error *err)
{
	tether_identity *cur = NULL, *prev = NULL;
	tether_id_summary cs, ps;
	tether_tls_ctx *ctls = NULL, *stls = NULL;
	tether_tls_ctx_params tp;
	unsigned char key[2 * TETHER_TICKET_KEY_LEN];
	int nkeys = 0;
	const unsigned char *der;
	size_t len;
	int r;

	memset(&ps, 0, sizeof(ps));
	r = s->prov->t->identity_load(s->prov->ctx, TETHER_SLOT_CURRENT, &cur, err);
	if (r == TETHER_ERR_NOT_FOUND)
		return tether_err_set(err, r, TETHER_CAT_NOT_FOUND,
		                      "the server has no certificate yet: run 'tether-server new-certificate%s' first",
		                      cli_args(s->c));
	if (r < 0)
		return r;
	s->prov->t->identity_cert_der(cur, &der, &len);
	r = tether_cert_summary(s->prov, der, len, &cs, err);
	if (r < 0)
		goto fail;
	if (s->prov->t->identity_load(s->prov->ctx, TETHER_SLOT_PREVIOUS, &prev, NULL) == 0) {
		s->prov->t->identity_cert_der(prev, &der, &len);
		if (tether_cert_summary(s->prov, der, len, &ps, NULL) < 0) {
			s->prov->t->identity_free(prev);
			prev = NULL;
		}
	}
	memset(&tp, 0, sizeof(tp));
	tp.role = TETHER_TLS_CLIENT;
	tp.policy = cli_tls_policy(s->c);
	tp.identity = cur;
	r = s->prov->t->tls_ctx_new(s->prov->ctx, &tp, &ctls, err);
	if (r < 0)
		goto fail;
	if (s->stls || s->paddr[0]) {
		memset(&tp, 0, sizeof(tp));
		tp.policy = cli_tls_policy(s->c);
		if (tp.policy & TETHER_TLS_POLICY_RESUMPTION) {
			r = tether_ticket_keys(s->prov, s->c->inst->state_dir, cs.sha256, cli_ticket_lifetime(s->c),
			                       key, &nkeys, err);
			if (r < 0)
				goto fail;
			tp.ticket_key = key;
			tp.ticket_key_len = TETHER_TICKET_KEY_LEN;
		}
		tp.role = TETHER_TLS_SERVER;
		tp.identity = cur;
		tp.choose_identity = choose_by_hint;
		tp.choose_arg = s;
		r = s->prov->t->tls_ctx_new(s->prov->ctx, &tp, &stls, err);
		/* the previous key too, and the tickets' lifetime */
		if (r == 0 && tp.ticket_key && TETHER_PROV_HAS(s->prov, tls_ctx_set_tickets))
			r = s->prov->t->tls_ctx_set_tickets(stls, key, (size_t)nkeys * TETHER_TICKET_KEY_LEN,
			                                    cli_ticket_lifetime(s->c), err);
		tether_wipe(key, sizeof(key));
		if (r < 0) {
			if (stls)
				s->prov->t->tls_ctx_free(stls);
			goto fail;
		}
	}
	grave_put(s, s->id, 0);
	grave_put(s, s->prev_id, 0);
	grave_put(s, s->tls, 1);
	grave_put(s, s->stls, 2);
	pthread_mutex_lock(&s->idlock);
	s->id = cur;
	s->summary = cs;
	s->prev_id = prev;
	s->prev_summary = ps;
	pthread_mutex_unlock(&s->idlock);
	s->tls = ctls;
	if (stls)
		s->stls = stls;
	return 0;
fail:
	if (ctls)
		s->prov->t->tls_ctx_free(ctls);
	if (cur)
		s->prov->t->identity_free(cur);
	if (prev)
		s->prov->t->identity_free(prev);
	return r;
}

int srv_identities_reload(srv *s, tether_error *err)
{
	int r = load_identities(s, err);
	if (r == 0)
		log_info("identities loaded: current %s%s%s", s->summary.sha256,
		         s->prev_id ? ", previous " : "", s->prev_id ? s->prev_summary.sha256 : "");
	return r;
}

const char *srv_previous_sha256(srv *s) { return s->prev_id ? s->prev_summary.sha256 : ""; }

static int pins_table(srv *s)
{
	return sqlite3_exec(registry_db(s->reg),
	                    "CREATE TABLE IF NOT EXISTS server_pins (name TEXT PRIMARY KEY, "
	                    "server_sha256 TEXT NOT NULL, updated INTEGER NOT NULL)", NULL, NULL, NULL);
}

int srv_target_trusts(srv *s, const char *target, char out[65])
{
	sqlite3_stmt *st = NULL;
	int r = 0;

	snprintf(out, 65, "%s", s->summary.sha256);
	if (!s->pin_get &&
	    sqlite3_prepare_v3(registry_db(s->reg), "SELECT server_sha256 FROM server_pins WHERE name = ?",
	                       -1, SQLITE_PREPARE_PERSISTENT, &s->pin_get, NULL) != SQLITE_OK) {
		s->pin_get = NULL;
		return TETHER_ERR_IO;
	}
	st = s->pin_get;
	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(out, 65, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

int srv_target_set_trusts(srv *s, const char *target, const char *sha)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (!s->pin_set &&
	    sqlite3_prepare_v3(registry_db(s->reg),
	                       "INSERT INTO server_pins(name, server_sha256, updated) VALUES (?, ?, ?) "
	                       "ON CONFLICT(name) DO UPDATE SET server_sha256 = excluded.server_sha256, "
	                       "updated = excluded.updated", -1, SQLITE_PREPARE_PERSISTENT,
	                       &s->pin_set, NULL) != SQLITE_OK) {
		s->pin_set = NULL;
		return TETHER_ERR_IO;
	}
	st = s->pin_set;
	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, sha, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)time(NULL));
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE ? 0 : TETHER_ERR_IO;
}

/* The identity to present to a listening target: the one it trusts. */
static tether_identity *srv_identity_for_target(srv *s, const char *name)
{
	char sha[65];

	if (s->oneoff_id && !strcmp(s->oneoff_target, name))
		return s->oneoff_id;
	if (!s->prev_id)
		return NULL;
	srv_target_trusts(s, name, sha);
	if (!strcmp(sha, s->prev_summary.sha256))
		return s->prev_id;
	return NULL;
}

void srv_target_close(srv *s, const char *target)
{
	held *h = held_find(s, target);
	pconn *pc;

	if (h) {
		tether_conn *old = h->c;
		h->c = NULL;
		h->open = 0;
		/* requests in flight on it finish first */
		if (old)
			tether_conn_close_when_idle(old, "the server is switching identities");
		held_drop_session(h);
	}
	for (pc = s->pconns; pc; pc = pc->next)
		if (pc->open && !strcmp(pc->name, target))
			tether_conn_close_when_idle(pc->c, "the server is switching identities");
}

static int nextpin_match(srv *s, const char *name, const tether_thumbprint *tp)
{
	nextpin *np;
	for (np = s->nextpins; np; np = np->next)
		if (!strcmp(np->name, name) && tether_thumbprint_equal(&np->tp, tp))
			return 1;
	return 0;
}

static void nextpin_forget(srv *s, const char *target)
{
	nextpin **pp, *np;

	for (pp = &s->nextpins; *pp; pp = &(*pp)->next)
		if (!strcmp((*pp)->name, target)) {
			np = *pp;
			*pp = np->next;
			free(np);
			break;
		}
	s->pcache_dirty = 1;
}

static void nextpin_remember(srv *s, const char *target, const tether_thumbprint *tp)
{
	nextpin *np;

	nextpin_forget(s, target);
	np = tether_xcalloc(1, sizeof(*np));
	snprintf(np->name, sizeof(np->name), "%s", target);
	np->tp = *tp;
	np->next = s->nextpins;
	s->nextpins = np;
}

/* The pending next thumbprints recorded in the registry (a rotation that
 * a restart interrupted). */
static void nextpins_load(srv *s)
{
	reg_target *list = NULL;
	size_t n = 0, i;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (registry_target_list(s->reg, NULL, &list, &n, &e) < 0) {
		log_error("cannot read the pending agent rotations: %s", e.detail);
		return;
	}
	for (i = 0; i < n; i++) {
		tether_thumbprint tp;
		if (list[i].next_sha256 && tether_thumbprint_parse(list[i].next_sha256, &tp, NULL) == 0) {
			nextpin_remember(s, list[i].name, &tp);
			log_info("target %s: an agent rotation is pending: its new certificate %s is accepted beside "
			         "%s until it connects with it", list[i].name, list[i].next_sha256, list[i].sha256);
		}
	}
	reg_target_list_free(list, n);
}

/* A target connected presenting its pending next thumbprint: the agent
 * switched (identity.promote) and the server may have missed the answer,
 * or restarted since.  The handshake proved it holds the new key, the
 * thumbprint came from the agent over the trusted channel: re-pin. */
static int nextpin_arrived(srv *s, const char *name, tether_conn *c)
{
	tether_thumbprint tp;
	char hex[TETHER_THUMBPRINT_HEX], old[65] = "";
	tether_error e;

	if (!s->nextpins || tether_conn_peer_tp(c, &tp) < 0 || !nextpin_match(s, name, &tp))
		return 0;
	memset(&e, 0, sizeof(e));
	tether_thumbprint_hex(&tp, hex);
	if (registry_target_set_thumbprint(s->reg, name, hex, old, &e) < 0) {
		log_error("target %s presented its new certificate %s but it cannot be pinned: %s", name, hex, e.detail);
		return 0;
	}
	nextpin_forget(s, name);
	log_info("target %s connected with its new certificate %s: re-pinned (was %s); its agent rotation is "
	         "complete", name, hex, old);
	tether_audit_write(s->audit, "server", "rotate-agent-certificate", name, "ok", NULL,
	                   "re-pinned when the agent connected with its new certificate", NULL);
	return 1;
}

int srv_target_set_next_pin(srv *s, const char *target, const char *next_sha, tether_error *err)
{
	tether_thumbprint tp;
	int r;

	if (next_sha && (r = tether_thumbprint_parse(next_sha, &tp, err)) < 0)
		return r;
	/* recorded first: it must outlive a lost answer or a restart */
	if ((r = registry_target_set_next(s->reg, target, next_sha, err)) < 0)
		return r;
	if (next_sha)
		nextpin_remember(s, target, &tp);
	else
		nextpin_forget(s, target);
	return 0;
}

void srv_target_set_oneoff_identity(srv *s, const char *target, tether_identity *id)
{
	snprintf(s->oneoff_target, sizeof(s->oneoff_target), "%s", target ? target : "");
	s->oneoff_id = id;
}

void srv_set_recovery_identity(srv *s, tether_identity *id)
{
	pthread_mutex_lock(&s->idlock);
	s->recovery_id = id;
	pthread_mutex_unlock(&s->idlock);
}

void srv_retire_identity(srv *s, tether_identity *id)
{
	grave_put(s, id, 0);
}
const char *srv_config_get(srv *s, const char *section, const char *key, const char *def)
{
	return tether_config_get(s->c->conf, section, key, def);
}

uv_loop_t *srv_loop(srv *s) { return s->loop; }
void srv_set_preauth(srv *s, const srv_preauth *p) { s->preauth = p; }
void srv_targets_changed(srv *s, const char *name)
{
	s->pcache_dirty = 1;
	if (name)
		polling_target_changed(s, name);
}
registry *srv_registry(srv *s) { return s->reg; }
tether_audit *srv_audit(srv *s) { return s->audit; }
tether_prov *srv_prov(srv *s) { return s->prov; }
const char *srv_state_dir(srv *s) { return s->c->inst->state_dir; }
const char *srv_sha256(srv *s) { return s->summary.sha256; }

typedef struct conn_req {
	srv_conn_fn ready;
	void *arg;
	reg_target t;
} conn_req;

static void conn_req_ready(void *arg, tether_conn *c, const tether_error *err)
{
	conn_req *cr = arg;
	cr->ready(cr->arg, c, err);
	reg_target_clear(&cr->t);
	free(cr);
}

void srv_target_conn(srv *s, const char *target, srv_conn_fn ready, void *arg)
{
	conn_req *cr = tether_xcalloc(1, sizeof(*cr));
	tether_error e;

	memset(&e, 0, sizeof(e));
	cr->ready = ready;
	cr->arg = arg;
	if (registry_target_get(s->reg, target, &cr->t, &e) < 0) {
		free(cr);
		ready(arg, NULL, &e);
		return;
	}
	if (!strcmp(cr->t.mode, "polling")) {
		polling_get(s, &cr->t, conn_req_ready, cr);
		return;
	}
	held_get(s, &cr->t, conn_req_ready, cr);
}

typedef struct call_req {
	srv *s;
	char method[TETHER_RPC_METHOD_MAX + 1];
	json_t *params;
	uint32_t timeout_ms;
	srv_reply_fn cb;
	void *arg;
} call_req;

static void call_on_response(void *arg, tether_conn *c, const tether_rpc_response *resp,
                             const tether_error *err)
{
	call_req *cr = arg;
	(void)c;
	cr->cb(cr->arg, resp, err);
	free(cr);
}

static void call_on_conn(void *arg, tether_conn *c, const tether_error *err)
{
	call_req *cr = arg;
	tether_error e;
	json_t *params = cr->params;

	cr->params = NULL;
	if (!c) {
		json_decref(params);
		cr->cb(cr->arg, NULL, err);
		free(cr);
		return;
	}
	memset(&e, 0, sizeof(e));
	if (tether_conn_request(c, cr->method, params, cr->timeout_ms ? cr->timeout_ms : cr->s->request_ms,
	                        call_on_response, cr, &e) < 0) {
		cr->cb(cr->arg, NULL, &e);
		free(cr);
	}
}

int srv_target_call(srv *s, const char *target, const char *method, json_t *params,
                    uint32_t timeout_ms, srv_reply_fn cb, void *arg)
{
	call_req *cr = tether_xcalloc(1, sizeof(*cr));

	cr->s = s;
	snprintf(cr->method, sizeof(cr->method), "%s", method);
	cr->params = params ? params : json_object();
	cr->timeout_ms = timeout_ms;
	cr->cb = cb;
	cr->arg = arg;
	srv_target_conn(s, target, call_on_conn, cr);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Admin dispatch                                                      */
/* ------------------------------------------------------------------ */

static void close_held_of(srv *s, const char *name)
{
	held *h = held_find(s, name);
	if (h && h->c)
		tether_conn_close(h->c, "reconfigured", "the target was changed on the server");
}

static void on_admin(void *arg, admin_call *call, const char *method, json_t *params)
{
	srv *s = arg;

	if (!strcmp(method, "health")) {
		do_health(s, call, params);
		return;
	}
	if (!strncmp(method, "target.", 7)) {
		const char *name = json_string_value(json_object_get(params, "name"));
		s->pcache_dirty = 1;
		if (name && (!strcmp(method, "target.remove") || !strcmp(method, "target.set-thumbprint"))) {
			nextpin_forget(s, name); /* a new pin ends a pending agent rotation */
			close_held_of(s, name);
			polling_target_changed(s, name);
		}
	}
	{
		/* the call, its method and params are freed once it is answered */
		int is_add = !strcmp(method, "target.add");
		if (admin_targets_dispatch(s->reg, s->audit, call, method, params)) {
			if (is_add) {
				s->pcache_dirty = 1;
				preauth_recheck(s);
			}
			return;
		}
	}
	{
		size_t i;
		for (i = 0; srv_modules[i]; i++)
			if (srv_modules[i]->admin && srv_modules[i]->admin(s, (struct admin_call *)call, method, params))
				return;
	}
	if (!strcmp(method, "server.reload")) {
		tether_error e;
		memset(&e, 0, sizeof(e));
		if (srv_identities_reload(s, &e) < 0) {
			admin_reply_tether_error(call, &e);
			return;
		}
		tether_audit_write(s->audit, admin_call_user(call), "server.reload", NULL, "ok", NULL, NULL, NULL);
		admin_reply(call, json_pack("{s:s, s:s}", "sha256", s->summary.sha256, "previous", srv_previous_sha256(s)));
		return;
	}
	if (!strcmp(method, "server.status")) {
		admin_reply(call, json_pack("{s:s, s:s, s:s}", "version", PACKAGE_VERSION, "sha256",
		                            s->summary.sha256, "provider", s->prov->t->name));
		return;
	}
	admin_reply_error(call, "unknown admin method: this tether-server daemon may be older than the CLI",
	                  "unsupported");
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                           */
/* ------------------------------------------------------------------ */

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

/* The polling port issues session tickets: their key is renewed every
 * [tls] ticket-lifetime while the server runs, not only at start, and in
 * place: every context of the current identity (connections made before a
 * SIGHUP keep theirs) takes the new key, so that the fresh tickets its
 * connections send, however old they are, are made with it.  The previous
 * key still decrypts for one lifetime. */
static void on_tkey_timer(uv_timer_t *t)
{
	srv *s = t->data;
	unsigned life = cli_ticket_lifetime(s->c);
	unsigned char key[2 * TETHER_TICKET_KEY_LEN];
	int nkeys = 0, r;
	size_t i;
	tether_error e;

	if (s->stopping || !s->stls || !(cli_tls_policy(s->c) & TETHER_TLS_POLICY_RESUMPTION) ||
	    !tether_ticket_key_expired(s->c->inst->state_dir, life))
		return;
	memset(&e, 0, sizeof(e));
	if (!TETHER_PROV_HAS(s->prov, tls_ctx_set_tickets)) {
		if (srv_identities_reload(s, &e) < 0)
			log_error("cannot renew the session ticket key, keeping the one in use: %s", e.detail);
		else
			log_info("session ticket key renewed (older than %u s): tickets issued before now lead "
			         "to a full handshake", life);
		return;
	}
	r = tether_ticket_keys(s->prov, s->c->inst->state_dir, s->summary.sha256, life, key, &nkeys, &e);
	if (r == 0)
		r = s->prov->t->tls_ctx_set_tickets(s->stls, key, (size_t)nkeys * TETHER_TICKET_KEY_LEN, life, &e);
	for (i = 0; r == 0 && i < s->ngrave; i++)
		if (s->grave_kind[i] == 2 && !strcmp(s->grave_sha[i], s->summary.sha256))
			s->prov->t->tls_ctx_set_tickets(s->grave[i], key, (size_t)nkeys * TETHER_TICKET_KEY_LEN, life,
			                                NULL);
	tether_wipe(key, sizeof(key));
	if (r < 0)
		log_error("cannot renew the session ticket key, keeping the one in use: %s", e.detail);
	else
		log_info("session ticket key renewed (older than %u s); the previous one still decrypts the "
		         "tickets it made for as long", life);
}

static void on_signal(uv_signal_t *sig, int signum)
{
	srv *s = sig->data;
	held *h;

	if (signum == SIGHUP) {
		tether_error e;
		memset(&e, 0, sizeof(e));
		log_info("SIGHUP: reloading the identities");
		if (srv_identities_reload(s, &e) < 0)
			log_error("cannot reload the identities, keeping the ones in use: %s", e.detail);
		return;
	}
	if (s->stopping)
		return;
	s->stopping = 1;
	log_info("stopping");
	{
		size_t i;
		for (i = 0; srv_modules[i]; i++)
			if (srv_modules[i]->stop)
				srv_modules[i]->stop(s);
	}
	polling_stop(s);
	for (h = s->held; h; h = h->next)
		if (h->c)
			tether_conn_close(h->c, "shutting_down", "the server is stopping");
	if (s->admin)
		admin_server_stop(s->admin);
	s->admin = NULL;
	uv_close((uv_handle_t *)&s->sigterm, NULL);
	uv_close((uv_handle_t *)&s->sigint, NULL);
	uv_close((uv_handle_t *)&s->sighup, NULL);
}

static uint32_t conf_ms(cli_ctx *c, const char *key, const char *def)
{
	return (uint32_t)strtoul(tether_config_get(c->conf, "timeouts", key, def), NULL, 10) * 1000u;
}

int verb_server_run(cli_ctx *c, int argc, char **argv)
{
	srv s;
	char *dbpath = NULL, *auditpath = NULL;
	const char *level, *logfile;
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "",
	              "Run the server daemon in the foreground (logs to stderr; systemd-friendly). It holds the\n"
	              "server identity, the target registry and the admin socket the other verbs talk to.\n"
	              "SIGTERM stops it.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	memset(&s, 0, sizeof(s));
	pthread_mutex_init(&s.idlock, NULL);
	s.c = c;
	s.prov = c->prov;
	level = tether_config_get(c->conf, "log", "level", "info");
	tether_log_set_level(!strcmp(level, "error") ? TETHER_LOG_ERROR : !strcmp(level, "warning") ?
	                     TETHER_LOG_WARN : !strcmp(level, "debug") ? TETHER_LOG_DEBUG : TETHER_LOG_INFO);
	logfile = tether_config_get(c->conf, "log", "file", NULL);
	if (logfile && tether_log_set_file(logfile) < 0)
		log_warn("cannot open log file %s: %s (logging to stderr only)", logfile, strerror(errno));
	s.connect_ms = conf_ms(c, "connect", "10");
	s.handshake_ms = conf_ms(c, "handshake", "10");
	s.idle_ms = conf_ms(c, "idle", "600");
	s.keepalive_ms = conf_ms(c, "keepalive", "15");
	s.request_ms = conf_ms(c, "request", "3600");
	if (s.request_ms > HEALTH_TIMEOUT_MS)
		s.request_ms = HEALTH_TIMEOUT_MS;

	r = load_identities(&s, &c->err);
	if (r < 0)
		goto out;
	dbpath = tether_asprintf("%s/registry.db", c->inst->state_dir);
	r = registry_open(dbpath, &s.reg, &c->err);
	if (r < 0)
		goto out;
	if (pins_table(&s) != SQLITE_OK) {
		r = tether_err_set(&c->err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot create the server_pins table in %s",
		                   dbpath);
		goto out;
	}
	nextpins_load(&s);
	auditpath = tether_asprintf("%s/audit.log", c->inst->state_dir);
	r = tether_audit_open(auditpath, &s.audit, &c->err);
	if (r < 0)
		goto out;
	s.loop = uv_default_loop();
	r = polling_start(&s, &c->err);
	if (r < 0)
		goto out;
	{
		size_t i;
		for (i = 0; srv_modules[i]; i++)
			if (srv_modules[i]->start && (r = srv_modules[i]->start(&s, &c->err)) < 0) {
				tether_err_prefix(&c->err, "the %s module could not start", srv_modules[i]->name);
				goto out;
			}
	}
	r = admin_server_start(s.loop, c->inst->run_dir, tether_config_get(c->conf, "admin", "group", NULL),
	                       on_admin, &s, &s.admin, &c->err);
	if (r < 0)
		goto out;
	admin_server_set_audit(s.admin, s.audit);
	uv_signal_init(s.loop, &s.sigterm);
	uv_signal_init(s.loop, &s.sigint);
	uv_signal_init(s.loop, &s.sighup);
	s.sigterm.data = s.sigint.data = s.sighup.data = &s;
	uv_signal_start(&s.sigterm, on_signal, SIGTERM);
	uv_signal_start(&s.sigint, on_signal, SIGINT);
	uv_signal_start(&s.sighup, on_signal, SIGHUP);
	uv_timer_init(s.loop, &s.tkey_timer);
	s.tkey_timer.data = &s;
	uv_timer_start(&s.tkey_timer, on_tkey_timer, TETHER_TICKET_CHECK_S * 1000, TETHER_TICKET_CHECK_S * 1000);
	uv_unref((uv_handle_t *)&s.tkey_timer); /* never what keeps the loop running */
	uv_timer_init(s.loop, &s.trim_timer);
	s.trim_timer.data = &s;
	uv_unref((uv_handle_t *)&s.trim_timer);
	signal(SIGPIPE, SIG_IGN);
	log_info("tether-server %s running, certificate %s, provider %s, admin socket in %s, polling agents on %s",
	         PACKAGE_VERSION, s.summary.sha256, s.prov->t->name, c->inst->run_dir, s.paddr);
	if (s.summary.expired)
		log_warn("this server's certificate expired on %s: agents that pin it still connect, but renew it",
		         s.summary.not_after);
	uv_run(s.loop, UV_RUN_DEFAULT);
	uv_walk(s.loop, close_walk, NULL);
	uv_run(s.loop, UV_RUN_DEFAULT);
	uv_loop_close(s.loop);
	/* Join libuv's pool threads now, while OpenSSL is still initialised:
	 * handshakes that ran there left per-thread OpenSSL state (error
	 * queue, DRBGs) that only a thread's exit frees, and OpenSSL's own
	 * atexit cleanup runs before libuv's destructor would join them. */
	uv_library_shutdown();
	log_info("stopped");
	r = 0;
out:
	held_free_all(&s);
	smap_clear(&s.hfail, free);
	polling_free(&s);
	if (s.admin)
		admin_server_stop(s.admin);
	if (s.tls)
		s.prov->t->tls_ctx_free(s.tls);
	if (s.id)
		s.prov->t->identity_free(s.id);
	if (s.prev_id)
		s.prov->t->identity_free(s.prev_id);
	grave_free(&s);
	while (s.nextpins) {
		nextpin *np = s.nextpins;
		s.nextpins = np->next;
		free(np);
	}
	smap_clear(&s.trust_warned, NULL);
	sqlite3_finalize(s.pin_get);
	sqlite3_finalize(s.pin_set);
	if (s.reg)
		registry_close(s.reg);
	if (s.audit)
		tether_audit_close(s.audit);
	free(dbpath);
	free(auditpath);
	return r;
}
