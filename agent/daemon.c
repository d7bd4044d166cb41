/*
 * tether-agent run: the listening agent.
 *
 * The main thread owns signals, the trust file watch and reloads; N worker
 * threads each run a loop with their own listening socket (SO_REUSEPORT)
 * and the connections it accepted.  The trust set and the TLS context are
 * shared under a mutex; a trust change is pushed to every worker, which
 * closes at once the connections whose thumbprint is no longer trusted.
 */
#include "config.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <uv.h>
#include "agent.h"
#include "cli_tls.h"
#include "audit.h"
#include "service.h"
#include "conn.h"
#include "fsutil.h"
#include "identity.h"
#include "log.h"
#include "ratelimit.h"
#include "secret.h"
#include "ticketkey.h"
#include "trust.h"
#include "util.h"
#include "workers.h"

#define TICKET_KEY_LEN TETHER_TICKET_KEY_LEN

typedef struct tlsref {
	tether_tls_ctx *ctx;
	tether_identity *id;
	tether_id_summary summary;
	char *health_cert;              /* health's "certificate" object, as JSON */
	int refs;                       /* under agent.lock */
} tlsref;

typedef struct agent_conn {
	struct agent_conn *prev, *next;
	tether_conn *c;
	struct sockaddr_storage sa;
	tlsref *tls;
	int counted;                    /* holds a rate-limit slot */
	int open;
	tether_thumbprint tp;
	char tphex[TETHER_THUMBPRINT_HEX];
	struct worker_data *owner;
	uv_loop_t *loop;
	struct agent_req *reqs;         /* requests not answered yet */
	struct poller *poller;          /* polling mode: the slot that made it */
	unsigned session_gen;           /* polling mode: agent.session_gen when it opened */
	int recovery_only;              /* a recovery identity: may only replace the trust set */
} agent_conn;

typedef struct worker_data {
	agent_conn *conns;
	size_t nconns;
} worker_data;

typedef struct agent {
	cli_ctx *c;
	tether_prov *prov;
	pthread_mutex_t lock;
	tether_trust *trust;
	uint64_t trust_gen;
	tlsref *tls;
	tether_ratelimit *rl;
	tether_workers *ws;
	tether_audit *audit;
	uv_loop_t *loop;
	uv_signal_t sigterm, sigint, sighup;
	uv_fs_event_t watch, idwatch;
#ifdef __linux__
	/* trust.json is watched with inotify directly: libuv's fs_event also
	 * reports every write to audit.log beside it, which woke the main
	 * loop once per request served */
	int trust_ifd;
	uv_poll_t trust_poll;
#endif
	unsigned ticks;
	int id_check_busy;              /* an identity_check runs (main loop only) */
	int id_check_next;              /* then: 1 check again, 2 reload (SIGHUP) */
	uv_timer_t poll_timer, drain_timer;
	struct timespec trust_mtime;
	/* health's constant members as JSON text (no braces), under lock:
	 * version to provider_version built once; trusted_servers to services
	 * again when trust_gen moves on */
	char *health_head, *health_tail;
	uint64_t health_tail_gen;
	time_t started;
	int stopping;
	uint32_t handshake_ms, idle_ms, keepalive_ms, request_ms;
	int landing;
	char listen_addr[300];
	char os[256];
	agent_env env;
	char *work_dir;
	char **roots;
	const char *caps[8];
	int polling;                    /* [tether] mode = polling */
	/* bumped when the identity or the trust set changes: cached TLS
	 * sessions made before must not be resumed */
	volatile unsigned session_gen;
	struct poller *pollers;
	size_t npollers;
	char proxy_host[256];
	int proxy_port;
	char *proxy_auth;
} agent;

/* One outgoing connection slot of a polling agent. */
typedef struct poller {
	agent *a;
	int worker;
	char host[256];
	int port;
	uv_timer_t timer;
	int timer_inited;
	unsigned backoff_ms;
	agent_conn *ac;
	unsigned char *session;
	size_t session_len;
	unsigned session_gen;
	uint64_t opened_ms;
	int stopping;
	int fails;
} poller;

struct agent_req {
	struct agent_req *next;
	agent *a;
	agent_conn *ac;                 /* NULL once the connection closed */
	uint32_t id;
	char method[TETHER_RPC_METHOD_MAX + 1];
	json_t *params;
	char server[TETHER_THUMBPRINT_HEX];
	char peer[64];
	uv_loop_t *loop;
	void *data;
	const agent_stream_ops *in_ops, *out_ops;
	int streaming;
};

/* The services this agent offers (agent/services.c). */
extern const agent_service *const agent_services[];

/* ------------------------------------------------------------------ */
/* TLS context and identity                                            */
/* ------------------------------------------------------------------ */

/* o (stolen) as compact JSON text, without its braces unless whole is
 * set; NULL if o is NULL or cannot be dumped. */
static char *json_members(json_t *o, int whole)
{
	char *s;
	size_t n;

	if (!o)
		return NULL;
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!s || whole)
		return s;
	n = strlen(s);
	if (n < 2) {
		free(s);
		return NULL;
	}
	memmove(s, s + 1, n - 2);
	s[n - 2] = '\0';
	return s;
}

static void tlsref_release(agent *a, tlsref *t)
{
	int last;

	if (!t)
		return;
	pthread_mutex_lock(&a->lock);
	last = --t->refs == 0;
	pthread_mutex_unlock(&a->lock);
	if (!last)
		return;
	a->prov->t->tls_ctx_free(t->ctx);
	a->prov->t->identity_free(t->id);
	free(t->health_cert);
	free(t);
}

static tlsref *tlsref_get(agent *a)
{
	tlsref *t;

	pthread_mutex_lock(&a->lock);
	t = a->tls;
	if (t)
		t->refs++;
	pthread_mutex_unlock(&a->lock);
	return t;
}

static int build_tls(agent *a, tlsref **out, tether_error *err)
{
	tether_tls_ctx_params tp;
	unsigned char key[2 * TETHER_TICKET_KEY_LEN];
	int nkeys = 0;
	const unsigned char *der;
	size_t len;
	tlsref *t = tether_xcalloc(1, sizeof(*t));
	int r;

	r = a->prov->t->identity_load(a->prov->ctx, TETHER_SLOT_CURRENT, &t->id, err);
	if (r == TETHER_ERR_NOT_FOUND) {
		r = tether_err_set(err, r, TETHER_CAT_NOT_FOUND,
		                   "the agent has no certificate yet: run 'tether-agent new-certificate%s' first",
		                   cli_args(a->c));
		goto fail;
	}
	if (r < 0)
		goto fail;
	a->prov->t->identity_cert_der(t->id, &der, &len);
	r = tether_cert_summary(a->prov, der, len, &t->summary, err);
	if (r < 0)
		goto fail;
	/* NULL (out of memory) makes health answer an internal error */
	t->health_cert = json_members(json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "sha256", t->summary.sha256,
	                              "cert_signature_algorithm", t->summary.info.cert_signature_algorithm,
	                              "key_type", t->summary.info.key_type, "key_bits", t->summary.info.key_bits,
	                              "not_before", t->summary.not_before, "not_after", t->summary.not_after), 1);
	memset(&tp, 0, sizeof(tp));
	tp.policy = cli_tls_policy(a->c);
	/* No ticket key on disk unless resumption is on ([tls] resumption). */
	if (tp.policy & TETHER_TLS_POLICY_RESUMPTION) {
		r = tether_ticket_keys(a->prov, a->c->inst->state_dir, t->summary.sha256, cli_ticket_lifetime(a->c),
		                       key, &nkeys, err);
		if (r < 0)
			goto fail;
	}
	tp.role = a->polling ? TETHER_TLS_CLIENT : TETHER_TLS_SERVER;
	tp.identity = t->id;
	if (!a->polling && (tp.policy & TETHER_TLS_POLICY_RESUMPTION)) {
		tp.ticket_key = key;
		tp.ticket_key_len = TETHER_TICKET_KEY_LEN;
	}
	r = a->prov->t->tls_ctx_new(a->prov->ctx, &tp, &t->ctx, err);
	/* the previous key too, and the tickets' lifetime */
	if (r == 0 && tp.ticket_key && TETHER_PROV_HAS(a->prov, tls_ctx_set_tickets))
		r = a->prov->t->tls_ctx_set_tickets(t->ctx, key, (size_t)nkeys * TETHER_TICKET_KEY_LEN,
		                                    cli_ticket_lifetime(a->c), err);
	tether_wipe(key, sizeof(key));
	if (r < 0)
		goto fail;
	t->refs = 1;
	*out = t;
	return 0;
fail:
	if (t->id)
		a->prov->t->identity_free(t->id);
	free(t->health_cert);
	free(t);
	return r;
}

/* ------------------------------------------------------------------ */
/* Trust                                                               */
/* ------------------------------------------------------------------ */

static int trusted(agent *a, const tether_thumbprint *tp)
{
	int ok;
	pthread_mutex_lock(&a->lock);
	ok = tether_trust_is_trusted(a->trust, tp);
	pthread_mutex_unlock(&a->lock);
	return ok;
}

static void recheck_fn(tether_worker *w, void *arg)
{
	worker_data *wd = w->user;
	agent *a = arg;
	agent_conn *ac, *next;

	for (ac = wd->conns; ac; ac = next) {
		next = ac->next;
		if (ac->open && !ac->recovery_only && !trusted(a, &ac->tp)) {
			char hex[TETHER_THUMBPRINT_HEX], why[200];
			tether_thumbprint_hex(&ac->tp, hex);
			log_info("trust in %s was removed: closing its connection from %s", hex,
			         tether_conn_peer_addr(ac->c));
			snprintf(why, sizeof(why), "trust in %s was removed", hex);
			tether_conn_abort(ac->c, TETHER_CAT_UNTRUSTED, why);
		}
	}
}

static void reload_trust(agent *a, int force)
{
	char *path = tether_trust_path(a->c->inst->state_dir);
	tether_trust *t;
	tether_error e;
	struct stat st;

	memset(&st, 0, sizeof(st));
	stat(path, &st);
	free(path);
#ifdef _WIN32 /* no st_mtim: whole seconds, and the size in place of the nanoseconds */
	{
		struct timespec m = { st.st_mtime, (long)st.st_size };
		if (!force && m.tv_sec == a->trust_mtime.tv_sec && m.tv_nsec == a->trust_mtime.tv_nsec)
			return;
		a->trust_mtime = m;
	}
#else
	if (!force && st.st_mtim.tv_sec == a->trust_mtime.tv_sec &&
	    st.st_mtim.tv_nsec == a->trust_mtime.tv_nsec)
		return;
	a->trust_mtime = st.st_mtim;
#endif
	t = tether_xcalloc(1, sizeof(*t));
	if (tether_trust_load(a->c->inst->state_dir, t, &e) < 0) {
		log_error("cannot reload trust, keeping the previous set: %s", e.detail);
		free(t);
		return;
	}
	pthread_mutex_lock(&a->lock);
	if (a->trust && t->generation == a->trust->generation && !force) {
		pthread_mutex_unlock(&a->lock);
		free(t);
		return;
	}
	free(a->trust);
	a->trust = t;
	a->trust_gen++;
	__atomic_add_fetch(&a->session_gen, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&a->lock);
	log_info("trust loaded: %zu trusted server%s, %zu recovery thumbprint%s", t->ntrusted,
	         t->ntrusted == 1 ? "" : "s", t->nrecovery, t->nrecovery == 1 ? "" : "s");
	if (a->ws)
		tether_workers_broadcast(a->ws, recheck_fn, a);
}

#ifndef __linux__
static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
	agent *a = h->data;
	(void)events;
	(void)status;
	if (!filename || !strcmp(filename, "trust.json"))
		reload_trust(a, 0);
}
#endif

#ifdef __linux__
static void on_trust_inotify(uv_poll_t *h, int status, int events)
{
	agent *a = h->data;
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int hit = 0, rounds;
	ssize_t n;
	(void)events;

	if (status < 0)
		return;
	for (rounds = 0; rounds < 64; rounds++) {
		char *p;
		n = read(a->trust_ifd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			if ((ev->mask & IN_Q_OVERFLOW) || (ev->len && !strcmp(ev->name, "trust.json")))
				hit = 1;
			p += sizeof(*ev) + ev->len;
		}
	}
	if (hit)
		reload_trust(a, 0);
}

static void trust_poll_closed(uv_handle_t *h)
{
	agent *a = h->data;
	if (a->trust_ifd >= 0)
		close(a->trust_ifd);
	a->trust_ifd = -1;
}

/* 0, or -1 when the watch can't be made (the 2 s poll still runs). */
static int watch_trust(agent *a, const char *dir)
{
	a->trust_ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (a->trust_ifd < 0)
		return -1;
	if (inotify_add_watch(a->trust_ifd, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE) < 0 ||
	    uv_poll_init(a->loop, &a->trust_poll, a->trust_ifd) < 0) {
		close(a->trust_ifd);
		a->trust_ifd = -1;
		return -1;
	}
	a->trust_poll.data = a;
	uv_poll_start(&a->trust_poll, UV_READABLE, on_trust_inotify);
	return 0;
}
#endif

static void identity_check(agent *a, int reload);

static void on_id_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
	(void)filename;
	(void)events;
	(void)status;
	identity_check(h->data, 0);
}

static void on_poll(uv_timer_t *t)
{
	agent *a = t->data;
	reload_trust(a, 0);
	if (++a->ticks % 5 == 0)
		identity_check(a, 0);
}

/* ------------------------------------------------------------------ */
/* Services                                                            */
/* ------------------------------------------------------------------ */

static json_t *trust_json(const tether_trust_entry *v, size_t n);

static void req_reply_raw(agent_req *r, const char *json, size_t len);

/* v in decimal into buf (at least 21 bytes), without snprintf (per
 * request); its length. */
static int fmt_int(char *buf, long long v)
{
	char tmp[24];
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
	int n = 0, k = 0;

	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		buf[k++] = '-';
	while (n)
		buf[k++] = tmp[--n];
	buf[k] = '\0';
	return k;
}

/* The answer's text is assembled from cached parts: only uptime_s changes
 * from one request to the next (BENCHMARKS.md, session 2: building and
 * dumping it with jansson was most of the agent's time per request). */
static void service_health(agent *a, agent_conn *ac, agent_req *r)
{
	tlsref *t = ac->tls;
	char small[2048], *buf = small, up[24];
	size_t n = 0, cap, nh, nt, nc;
	int nu;

	nu = fmt_int(up, (long long)(time(NULL) - a->started));
	pthread_mutex_lock(&a->lock);
	if (!a->health_head)
		a->health_head = json_members(json_pack("{s:s, s:s, s:s, s:s}", "version", PACKAGE_VERSION,
		                                        "os", a->os, "provider", a->prov->t->name,
		                                        "provider_version",
		                                        a->prov->t->version ? a->prov->t->version : ""), 0);
	if (!a->health_tail || a->health_tail_gen != a->trust_gen) {
		free(a->health_tail);
		a->health_tail = json_members(json_pack("{s:I, s:s, s:o, s:{s:b, s:b}}",
		                                        "trusted_servers", (json_int_t)a->trust->ntrusted,
		                                        "mode", "listening",
		                                        "trust", trust_json(a->trust->trusted, a->trust->ntrusted),
		                                        "services", "script", a->env.script_enabled,
		                                        "file", a->env.file_enabled), 0);
		a->health_tail_gen = a->trust_gen;
	}
	if (!a->health_head || !a->health_tail || !t->health_cert) {
		pthread_mutex_unlock(&a->lock);
		agent_req_error(r, TETHER_RPC_ERR_INTERNAL, "the health answer could not be built", NULL);
		return;
	}
	nh = strlen(a->health_head);
	nt = strlen(a->health_tail);
	nc = strlen(t->health_cert);
	cap = nh + nc + (size_t)nu + nt + 40;
	if (cap > sizeof(small))
		buf = tether_xmalloc(cap);
#define PUT(p, l) (memcpy(buf + n, (p), (l)), n += (l))
#define PUTS(lit) PUT(lit, sizeof(lit) - 1)
	PUTS("{");
	PUT(a->health_head, nh);
	PUTS(",\"certificate\":");
	PUT(t->health_cert, nc);
	PUTS(",\"uptime_s\":");
	PUT(up, (size_t)nu);
	PUTS(",");
	PUT(a->health_tail, nt);
	PUTS("}");
#undef PUTS
#undef PUT
	pthread_mutex_unlock(&a->lock);
	req_reply_raw(r, buf, n);
	if (buf != small)
		free(buf);
}


/* ------------------------------------------------------------------ */
/* Trust and identity services (DESIGN.md: what a server may change)   */
/* ------------------------------------------------------------------ */

static json_t *trust_json(const tether_trust_entry *v, size_t n)
{
	json_t *arr = json_array();
	size_t i;

	for (i = 0; i < n; i++) {
		char hex[TETHER_THUMBPRINT_HEX];
		json_t *o;
		tether_thumbprint_hex(&v[i].tp, hex);
		o = json_pack("{s:s}", "sha256", hex);
		if (v[i].has_predecessor) {
			char pre[TETHER_THUMBPRINT_HEX];
			tether_thumbprint_hex(&v[i].predecessor, pre);
			json_object_set_new(o, "successor_of", json_string(pre));
		}
		json_array_append_new(arr, o);
	}
	return arr;
}

typedef struct trust_op {
	const char *method;
	tether_thumbprint caller, arg;
	tether_thumbprint list[16];
	size_t nlist;
	char msg[256];
	json_t *result;
} trust_op;

static int trust_op_apply(tether_trust *t, void *arg, tether_error *err)
{
	trust_op *op = arg;
	char hex[TETHER_THUMBPRINT_HEX];
	size_t i;

	if (!strcmp(op->method, "trust.rotate")) {
		int k = tether_trust_find(t->trusted, t->ntrusted, &op->arg);
		/* the caller may name one pending successor of its own pin */
		for (i = 0; i < t->ntrusted; i++)
			if (t->trusted[i].has_predecessor &&
			    tether_thumbprint_equal(&t->trusted[i].predecessor, &op->caller) &&
			    !tether_thumbprint_equal(&t->trusted[i].tp, &op->arg)) {
				memmove(&t->trusted[i], &t->trusted[i + 1], (t->ntrusted - i - 1) * sizeof(t->trusted[0]));
				t->ntrusted--;
				i--;
			}
		tether_thumbprint_hex(&op->arg, hex);
		if (k >= 0) {
			op->result = json_pack("{s:s, s:b}", "successor", hex, "pending",
			                       t->trusted[tether_trust_find(t->trusted, t->ntrusted, &op->arg)].has_predecessor);
			return 1;
		}
		if (tether_trust_add(t->trusted, &t->ntrusted, &op->arg, "rotate", err) < 0)
			return err->code;
		t->trusted[t->ntrusted - 1].has_predecessor = 1;
		t->trusted[t->ntrusted - 1].predecessor = op->caller;
		op->result = json_pack("{s:s, s:b}", "successor", hex, "pending", 1);
		return 1;
	}
	if (!strcmp(op->method, "trust.retire")) {
		int k = tether_trust_find(t->trusted, t->ntrusted, &op->caller);
		tether_thumbprint pre;
		if (k < 0 || !t->trusted[k].has_predecessor)
			return tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
			                      "this server's certificate succeeds no other here: nothing to retire");
		pre = t->trusted[k].predecessor;
		t->trusted[k].has_predecessor = 0;
		snprintf(t->trusted[k].note, sizeof(t->trusted[k].note), "rotated");
		tether_trust_remove(t->trusted, &t->ntrusted, &pre);
		tether_thumbprint_hex(&pre, hex);
		op->result = json_pack("{s:s}", "retired", hex);
		snprintf(op->msg, sizeof(op->msg), "retired %s", hex);
		return 1;
	}
	if (!strcmp(op->method, "trust.replace")) {
		t->ntrusted = 0;
		for (i = 0; i < op->nlist; i++)
			tether_trust_add(t->trusted, &t->ntrusted, &op->list[i], "recovery", err);
		op->result = json_pack("{s:o}", "trusted", trust_json(t->trusted, t->ntrusted));
		return 1;
	}
	return TETHER_ERR_INVALID;
}

static void service_trust(agent *a, agent_conn *ac, agent_req *r)
{
	trust_op op;
	tether_error e;
	json_t *params = agent_req_params(r);
	const char *m = agent_req_method(r);
	int rc;

	memset(&op, 0, sizeof(op));
	memset(&e, 0, sizeof(e));
	op.method = m;
	op.caller = ac->tp;
	if (!strcmp(m, "trust.list")) {
		pthread_mutex_lock(&a->lock);
		op.result = json_pack("{s:o, s:o}", "trusted", trust_json(a->trust->trusted, a->trust->ntrusted),
		                      "recovery", trust_json(a->trust->recovery, a->trust->nrecovery));
		pthread_mutex_unlock(&a->lock);
		agent_req_reply(r, op.result);
		return;
	}
	if (!strcmp(m, "trust.rotate")) {
		const char *succ = json_string_value(json_object_get(params, "successor"));
		if (!succ || tether_thumbprint_parse(succ, &op.arg, &e) < 0) {
			agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS,
			                succ ? e.detail : "trust.rotate needs \"successor\": the new thumbprint", NULL);
			return;
		}
	} else if (!strcmp(m, "trust.replace")) {
		json_t *list = json_object_get(params, "trusted"), *v;
		size_t i;
		if (!ac->recovery_only) {
			agent_req_error(r, TETHER_RPC_ERR_FORBIDDEN,
			                "only a recovery identity may replace the whole trust set", NULL);
			return;
		}
		if (!json_is_array(list) || json_array_size(list) < 1 || json_array_size(list) > 16) {
			agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS,
			                "trust.replace needs \"trusted\": 1 to 16 thumbprints", NULL);
			return;
		}
		json_array_foreach(list, i, v) {
			if (!json_is_string(v) || tether_thumbprint_parse(json_string_value(v), &op.list[i], &e) < 0) {
				agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS, "trust.replace: a thumbprint is invalid", NULL);
				return;
			}
		}
		op.nlist = json_array_size(list);
	} else if (strcmp(m, "trust.retire")) {
		agent_req_error(r, TETHER_RPC_ERR_UNKNOWN_METHOD, "unknown trust method", NULL);
		return;
	}
	rc = tether_trust_update(a->c->inst->state_dir, trust_op_apply, &op, &e);
	if (rc < 0) {
		json_decref(op.result);
		agent_req_error(r, rc == TETHER_ERR_NOT_FOUND ? TETHER_RPC_ERR_NOT_FOUND : TETHER_RPC_ERR_INTERNAL,
		                e.detail, tether_category_name(e.category));
		return;
	}
	log_info("server %s: %s%s%s", ac->tphex, m, op.msg[0] ? ": " : "", op.msg);
	reload_trust(a, 1);
	agent_req_reply(r, op.result);
}

/* Agent rotation: identity.stage generates a staged identity (off the
 * loop: RSA key generation takes a while); identity.promote switches to it.
 * Existing connections drain on the old identity. */
typedef struct stage_work {
	uv_work_t w;
	agent *a;
	agent_req *r;
	int key_type;
	int rc;
	tether_error e;
	tether_id_summary s;
} stage_work;

static void stage_run(uv_work_t *w)
{
	stage_work *sw = (stage_work *)w;
	tether_provider_ctx *pc = sw->a->prov->ctx;
	const tether_provider *t = sw->a->prov->t;
	tether_keygen_params kp;

	memset(&kp, 0, sizeof(kp));
	kp.key_type = sw->key_type;
	if (t->identity_exists(pc, TETHER_SLOT_STAGED, &sw->e) == 1)
		t->identity_remove(pc, TETHER_SLOT_STAGED, &sw->e);
	sw->rc = t->identity_generate(pc, TETHER_SLOT_STAGED, &kp, &sw->e);
	if (sw->rc == 0)
		sw->rc = tether_slot_summary(sw->a->prov, TETHER_SLOT_STAGED, &sw->s, &sw->e);
}

static void stage_done(uv_work_t *w, int status)
{
	stage_work *sw = (stage_work *)w;
	(void)status;
	if (sw->rc < 0)
		agent_req_error(sw->r, TETHER_RPC_ERR_INTERNAL, sw->e.detail, tether_category_name(sw->e.category));
	else
		agent_req_reply(sw->r, json_pack("{s:s, s:s, s:i}", "sha256", sw->s.sha256,
		                                  "cert_signature_algorithm", sw->s.info.cert_signature_algorithm,
		                                  "key_bits", sw->s.info.key_bits));
	free(sw);
}

static void service_identity(agent *a, agent_conn *ac, agent_req *r)
{
	const char *m = agent_req_method(r);
	json_t *params = agent_req_params(r);
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!strcmp(m, "identity.stage")) {
		stage_work *sw = tether_xcalloc(1, sizeof(*sw));
		const char *kt = json_string_value(json_object_get(params, "key_type"));
		sw->a = a;
		sw->r = r;
		sw->key_type = kt ? tether_key_type_parse(kt) : TETHER_KEY_RSA2048;
		if (sw->key_type < 0) {
			free(sw);
			agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS, "unknown key_type", NULL);
			return;
		}
		log_info("server %s asked for a new identity (staged; the current one stays in use)", ac->tphex);
		uv_queue_work(agent_req_loop(r), &sw->w, stage_run, stage_done);
		return;
	}
	if (!strcmp(m, "identity.promote")) {
		const char *want = json_string_value(json_object_get(params, "sha256"));
		tether_id_summary st;
		tlsref *t = NULL, *old;
		if (!want) {
			agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS, "identity.promote needs \"sha256\" of the staged identity", NULL);
			return;
		}
		if (tether_slot_summary(a->prov, TETHER_SLOT_STAGED, &st, &e) < 0 || !st.present ||
		    strcasecmp(st.sha256, want)) {
			agent_req_error(r, TETHER_RPC_ERR_NOT_FOUND, "no staged identity with that thumbprint", NULL);
			return;
		}
		if (a->prov->t->identity_promote(a->prov->ctx, &e) < 0 || build_tls(a, &t, &e) < 0) {
			agent_req_error(r, TETHER_RPC_ERR_INTERNAL, e.detail, tether_category_name(e.category));
			return;
		}
		pthread_mutex_lock(&a->lock);
		old = a->tls;
		a->tls = t;
		pthread_mutex_unlock(&a->lock);
		__atomic_add_fetch(&a->session_gen, 1, __ATOMIC_SEQ_CST);
		tlsref_release(a, old);
		log_info("server %s switched this agent to its new identity %s", ac->tphex, t->summary.sha256);
		agent_req_reply(r, json_pack("{s:s}", "sha256", t->summary.sha256));
		return;
	}
	agent_req_error(r, TETHER_RPC_ERR_UNKNOWN_METHOD, "unknown identity method", NULL);
}

/* ------------------------------------------------------------------ */
/* Requests handed to services (agent/service.h)                       */
/* ------------------------------------------------------------------ */

const char *agent_req_method(const agent_req *r) { return r->method; }
json_t *agent_req_params(const agent_req *r) { return r->params; }
const char *agent_req_server(const agent_req *r) { return r->server; }
const char *agent_req_peer_addr(const agent_req *r) { return r->peer; }
uv_loop_t *agent_req_loop(const agent_req *r) { return r->loop; }
int agent_req_alive(const agent_req *r) { return r->ac != NULL && tether_conn_is_open(r->ac->c); }
void agent_req_set_data(agent_req *r, void *data) { r->data = data; }
void *agent_req_get_data(const agent_req *r) { return r->data; }

static void req_unlink(agent_req *r)
{
	agent_req **pp;

	if (!r->ac)
		return;
	for (pp = &r->ac->reqs; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			break;
		}
}

static void req_free(agent_req *r)
{
	if (r->ac && r->streaming)
		tether_conn_stream_release(r->ac->c, r->id);
	req_unlink(r);
	json_decref(r->params);
	free(r);
}

/* The audit log is deferred (run_daemon): a line waits in memory until the
 * answer it records is handed to the socket (before_send), or is written
 * at once when no answer goes out (sent 0: the connection is gone). */
static void req_audit(agent_req *r, int sent, const char *result, const char *category, const char *message)
{
	char who[TETHER_THUMBPRINT_HEX + 16];
	size_t n = strnlen(r->server, sizeof(r->server));
	memcpy(who, "server:", 7); /* per request: no snprintf */
	memcpy(who + 7, r->server, n);
	who[7 + n] = '\0';
	tether_audit_write(r->a->audit, who, r->method, r->peer, result, category, message, NULL);
	if (!sent || !r->ac) /* r->ac: the answer's write may have closed it */
		tether_audit_flush(r->a->audit, NULL);
}

static void before_send(void *arg, tether_conn *c)
{
	agent *a = arg;
	(void)c;
	tether_audit_flush(a->audit, NULL);
}

static void req_reply_raw(agent_req *r, const char *json, size_t len)
{
	int sent = r->ac && tether_conn_respond_raw(r->ac->c, r->id, json, len) == 0;
	req_audit(r, sent, "ok", NULL, NULL);
	req_free(r);
}

void agent_req_reply(agent_req *r, json_t *result)
{
	int sent = 0;
	if (r->ac)
		sent = tether_conn_respond(r->ac->c, r->id, result, NULL, NULL, NULL) == 0;
	else
		json_decref(result);
	req_audit(r, sent, "ok", NULL, NULL);
	req_free(r);
}

void agent_req_error(agent_req *r, const char *code, const char *message, const char *category)
{
	int sent = r->ac && tether_conn_respond(r->ac->c, r->id, NULL, code, message, category) == 0;
	req_audit(r, sent, "error", category ? category : code, message);
	req_free(r);
}

static int rs_data(void *arg, tether_conn *c, uint32_t id, const unsigned char *d, size_t n)
{
	agent_req *r = arg;
	(void)c; (void)id;
	return r->in_ops && r->in_ops->on_data ? r->in_ops->on_data(r, d, n) : -1;
}

static void rs_end(void *arg, tether_conn *c, uint32_t id, const unsigned char sha[32], json_t *t)
{
	agent_req *r = arg;
	(void)c; (void)id;
	if (r->in_ops && r->in_ops->on_end)
		r->in_ops->on_end(r, sha, t);
}

static void rs_reset(void *arg, tether_conn *c, uint32_t id, const char *code, const char *msg)
{
	agent_req *r = arg;
	const agent_stream_ops *ops = r->in_ops ? r->in_ops : r->out_ops;
	(void)c; (void)id;
	if (ops && ops->on_reset)
		ops->on_reset(r, code, msg);
}

static void rs_writable(void *arg, tether_conn *c, uint32_t id)
{
	agent_req *r = arg;
	(void)c; (void)id;
	if (r->out_ops && r->out_ops->on_writable)
		r->out_ops->on_writable(r);
}

static void rs_closed(void *arg, tether_conn *c, uint32_t id)
{
	agent_req *r = arg;
	const agent_stream_ops *ops = r->in_ops ? r->in_ops : r->out_ops;
	(void)c; (void)id;
	r->streaming = 0;
	if (ops && ops->on_closed)
		ops->on_closed(r);
}

static const tether_stream_handler req_stream_handler = { rs_data, rs_end, rs_reset, rs_writable, rs_closed };

int agent_req_accept_stream(agent_req *r, const agent_stream_ops *ops)
{
	int rc;
	if (!r->ac)
		return TETHER_ERR_CLOSED;
	r->in_ops = ops;
	rc = tether_conn_stream_accept(r->ac->c, r->id, &req_stream_handler, r);
	if (rc == 0)
		r->streaming = 1;
	return rc;
}

int agent_req_stream_window(agent_req *r, uint32_t window)
{
	if (!r->ac)
		return TETHER_ERR_CLOSED;
	return tether_conn_stream_window(r->ac->c, r->id, window);
}

void agent_req_consumed(agent_req *r, size_t n)
{
	if (r->ac)
		tether_conn_stream_consumed(r->ac->c, r->id, n);
}

int agent_req_open_stream(agent_req *r, const agent_stream_ops *ops)
{
	int rc;
	if (!r->ac)
		return TETHER_ERR_CLOSED;
	r->out_ops = ops;
	rc = tether_conn_stream_open(r->ac->c, r->id, &req_stream_handler, r);
	if (rc == 0)
		r->streaming = 1;
	return rc;
}

ssize_t agent_req_send(agent_req *r, const void *data, size_t len)
{
	if (!r->ac)
		return TETHER_ERR_CLOSED;
	return (ssize_t)tether_conn_stream_send(r->ac->c, r->id, data, len);
}

int agent_req_end_stream(agent_req *r, const unsigned char sha256[32], json_t *trailer)
{
	if (!r->ac)
		return TETHER_ERR_CLOSED;
	return tether_conn_stream_end(r->ac->c, r->id, sha256, trailer);
}

int agent_req_reset_stream(agent_req *r, const char *code, const char *message)
{
	if (!r->ac)
		return TETHER_ERR_CLOSED;
	return tether_conn_stream_reset(r->ac->c, r->id, code, message);
}

/* snprintf(dst, cap, "%s", src) without snprintf (per request). */
static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

static void on_request(void *arg, tether_conn *c, uint32_t id, const char *method, json_t *params)
{
	agent_conn *ac = tether_conn_get_data(c);
	agent *a = arg;
	agent_req *r;
	size_t i;

	r = tether_xcalloc(1, sizeof(*r));
	r->a = a;
	r->ac = ac;
	r->id = id;
	copy_str(r->method, sizeof(r->method), method);
	r->params = json_incref(params);
	copy_str(r->server, sizeof(r->server), ac->tphex);
	copy_str(r->peer, sizeof(r->peer), tether_conn_peer_addr(c));
	r->loop = ac->loop;
	r->next = ac->reqs;
	ac->reqs = r;
	if (ac->recovery_only && strcmp(method, "trust.replace")) {
		log_warn("recovery identity %s may only call trust.replace, not '%s'", ac->tphex, method);
		agent_req_error(r, TETHER_RPC_ERR_FORBIDDEN,
		                "a recovery identity may only replace the trust set (trust.replace)", NULL);
		return;
	}
	if (!strcmp(method, "health")) {
		service_health(a, ac, r);
		return;
	}
	if (!strncmp(method, "trust.", 6)) {
		service_trust(a, ac, r);
		return;
	}
	if (!strncmp(method, "identity.", 9)) {
		service_identity(a, ac, r);
		return;
	}
	for (i = 0; agent_services[i]; i++) {
		const agent_service *svc = agent_services[i];
		if (!strncmp(method, svc->prefix, strlen(svc->prefix))) {
			svc->handle(r);
			return;
		}
	}
	log_warn("server %s asked for unknown method '%s'", ac->tphex, method);
	agent_req_error(r, TETHER_RPC_ERR_UNKNOWN_METHOD, "this agent does not know that method", NULL);
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */
/* ------------------------------------------------------------------ */

static void poller_closed(poller *p, int was_open, const tether_error *why);

static int check_peer(void *arg, tether_conn *c, const tether_thumbprint *tp)
{
	agent_conn *ac = tether_conn_get_data(c);
	agent *a = arg;

	if (trusted(a, tp)) {
		ac->tp = *tp;
		ac->recovery_only = 0;
		tether_thumbprint_hex(tp, ac->tphex);
		return 0;
	}
	pthread_mutex_lock(&a->lock);
	if (tether_trust_find(a->trust->recovery, a->trust->nrecovery, tp) >= 0) {
		ac->tp = *tp;
		ac->recovery_only = 1;
		tether_thumbprint_hex(tp, ac->tphex);
		pthread_mutex_unlock(&a->lock);
		return 0;
	}
	pthread_mutex_unlock(&a->lock);
	return -1;
}

static void on_open(void *arg, tether_conn *c)
{
	agent_conn *ac = tether_conn_get_data(c);
	agent *a = arg;
	const tether_tls_info *ti = tether_conn_tls_info(c);
	char hex[TETHER_THUMBPRINT_HEX];

	ac->open = 1;
	if (ac->counted) {
		tether_ratelimit_done(a->rl, (struct sockaddr *)&ac->sa, 1);
		ac->counted = 0;
	}
	tether_thumbprint_hex(&ac->tp, hex);
	if (ac->poller) {
		poller *p = ac->poller;
		unsigned char *sess = NULL;
		size_t sl = 0;
		p->backoff_ms = 0;
		p->fails = 0;
		p->opened_ms = tether_now_ms();
		ac->session_gen = a->session_gen;
		if (tether_conn_session(c, &sess, &sl) == 0) {
			if (p->session)
				tether_free_wiped(p->session, p->session_len);
			p->session = sess;
			p->session_gen = a->session_gen;
			p->session_len = sl;
		}
		log_info("connected to server %s at %s (%s, %s%s); waiting for its requests", hex,
		         tether_conn_peer_addr(c), ti->tls_version, ti->cipher, ti->resumed ? ", resumed" : "");
		return;
	}
	log_info("server %s connected from %s (%s, %s%s)", hex, tether_conn_peer_addr(c),
	         ti->tls_version, ti->cipher, ti->resumed ? ", resumed" : "");
}

/* Polling: the server sent a fresh ticket on this long-lived connection
 * (before the last one expires).  Keep the newest, in memory like the
 * first, so that the one offered after a server restart is still valid
 * however long the agent was connected. */
static void on_session(void *arg, tether_conn *c)
{
	agent_conn *ac = tether_conn_get_data(c);
	agent *a = arg;
	poller *p = ac->poller;
	unsigned char *sess = NULL;
	size_t sl = 0;

	/* identity or trust changed since it opened: its sessions are not
	 * offered again (poller_connect) */
	if (!p || p->ac != ac || ac->session_gen != a->session_gen)
		return;
	if (tether_conn_session(c, &sess, &sl) != 0)
		return;
	if (p->session)
		tether_free_wiped(p->session, p->session_len);
	p->session = sess;
	p->session_len = sl;
	p->session_gen = ac->session_gen;
	tether_debug("tls", "kept the fresh TLS session from server %s", tether_conn_peer_addr(c));
}

static void on_close(void *arg, tether_conn *c, const tether_error *why)
{
	agent_conn *ac = tether_conn_get_data(c);
	agent *a = arg;
	/* answers queued on it will not go out: their audit lines now */
	tether_audit_flush(a->audit, NULL);
	if (!ac)
		return;
	if (ac->counted)
		tether_ratelimit_done(a->rl, (struct sockaddr *)&ac->sa, 0);
	if (ac->poller) {
		/* logged by poller_closed */
	} else if (!ac->open && ac->tls && ((why->code && why->code != TETHER_ERR_UNTRUSTED &&
	                                     why->category == TETHER_CAT_UNTRUSTED) ||
	                                    (ac->tphex[0] && (!why->code ||
	                                                      why->category == TETHER_CAT_CONNECTION_RESET)))) {
		/* The peer refused this agent's certificate: with an alert in the
		 * handshake (certificate_unknown, bad_certificate), or, a server
		 * that checks the pin right after the handshake, by closing
		 * before its HELLO (a connecting tether side sends it at once;
		 * the close may show as a reset when this side was writing). */
		const char *sha = ac->tls->summary.sha256;
		if (why->category == TETHER_CAT_UNTRUSTED)
			log_warn("handshake with %s failed (untrusted): the peer refused this agent's certificate %s: %s",
			         tether_conn_peer_addr(c), sha, why->detail);
		else
			log_warn("handshake with %s failed (untrusted): server %s closed the connection right after the "
			         "TLS handshake, without its greeting (%s), which is how a tether server refuses an "
			         "agent whose certificate %s it does not pin", tether_conn_peer_addr(c), ac->tphex,
			         why->code ? why->detail : "close_notify", sha);
		log_warn("hint: if that server should trust this agent, run 'tether-server target set-thumbprint "
		         "NAME %s' there (NAME: this agent's target); 'tether-agent show-thumbprint' shows this "
		         "agent's certificate", sha);
	} else if (why->code && why->category == TETHER_CAT_PEER_NO_CERTIFICATE && !ac->open) {
		/* a TLS client without a certificate (scanners, probes); served
		 * landing pages are closed without an error and not logged */
		log_info("handshake with %s failed (peer_no_certificate): %s", tether_conn_peer_addr(c), why->detail);
		log_info("hint: %s", tether_category_hint(why->category));
	} else if (why->code && why->category == TETHER_CAT_UNTRUSTED) {
		tether_thumbprint tp;
		char hex[TETHER_THUMBPRINT_HEX];
		if (tether_conn_peer_tp(c, &tp) == 0) {
			tether_thumbprint_hex(&tp, hex);
			log_warn("refused %s: certificate %s is not trusted by this agent; if this is your "
			         "server, run 'tether-agent configure --trust %s%s'", tether_conn_peer_addr(c),
			         hex, hex, cli_args(a->c));
		}
	} else if (why->code == TETHER_ERR_CLOSED && !ac->open) {
		tether_debug("tls", "%s", why->detail); /* port probes, load balancer checks */
	} else if (why->code && why->category != TETHER_CAT_PEER_NO_CERTIFICATE && !ac->open) {
		log_info("handshake with %s failed (%s): %s", tether_conn_peer_addr(c),
		         tether_category_name(why->category), why->detail);
		log_info("hint: %s", tether_category_hint(why->category));
	} else if (ac->open) {
		log_info("connection from %s closed%s%s", tether_conn_peer_addr(c),
		         why->code ? ": " : "", why->code ? why->detail : "");
	}
	while (ac->reqs) {
		agent_req *r = ac->reqs;
		ac->reqs = r->next;
		r->ac = NULL;
		r->streaming = 0;
	}
	if (ac->poller)
		poller_closed(ac->poller, ac->open, why);
	tlsref_release(a, ac->tls);
	ac->tls = NULL;
	if (ac->prev)
		ac->prev->next = ac->next;
	if (ac->next)
		ac->next->prev = ac->prev;
	if (ac->owner->conns == ac)
		ac->owner->conns = ac->next;
	ac->owner->nconns--;
	free(ac);
}

static const tether_conn_cbs agent_cbs = { check_peer, on_open, on_request, on_close, on_session };


/* ------------------------------------------------------------------ */
/* Polling mode: connect out and hold the connection                   */
/* ------------------------------------------------------------------ */

static void poller_connect(poller *p);

static void poller_timer_cb(uv_timer_t *t)
{
	poller *p = t->data;
	if (!p->stopping && !p->a->stopping)
		poller_connect(p);
}

/* Exponential backoff: a base doubling from 1 s up to 60 s, +-25 % jitter,
 * the delay itself kept within 1 s to 60 s. */
static void poller_schedule(poller *p)
{
	unsigned base, delay;
	unsigned char rnd[2];

	if (p->stopping || p->a->stopping)
		return;
	p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : 1000;
	if (p->backoff_ms > 60000)
		p->backoff_ms = 60000;
	base = p->backoff_ms;
	p->a->prov->t->random_bytes(rnd, sizeof(rnd));
	delay = base - base / 4 + (unsigned)(((rnd[0] << 8) | rnd[1]) % (base / 2 + 1));
	if (delay < 1000)
		delay = 1000;
	if (delay > 60000)
		delay = 60000;
	tether_debug("tls", "server %s:%d: next attempt in %u ms (backoff %u ms +-25 %%)", p->host, p->port,
	             delay, base);
	uv_timer_start(&p->timer, poller_timer_cb, delay, 0);
}

static void poller_closed(poller *p, int was_open, const tether_error *why)
{
	p->ac = NULL;
	if (p->stopping || p->a->stopping)
		return;
	if (was_open) {
		log_warn("connection to server %s:%d lost%s%s; reconnecting", p->host, p->port,
		         why->code ? ": " : "", why->code ? why->detail : "");
		/* a connection that lived a while reconnects quickly */
		if (tether_now_ms() - p->opened_ms > 60000)
			p->backoff_ms = 0;
	} else {
		p->fails++;
		if (why->category == TETHER_CAT_UNTRUSTED && why->code == TETHER_ERR_UNTRUSTED)
			log_warn("server %s:%d: %s; if this is your server, run 'tether-agent configure%s --trust "
			         "THUMBPRINT'", p->host, p->port, why->detail, cli_args(p->a->c));
		else if (p->fails == 1 || p->fails % 10 == 0)
			log_warn("cannot connect to server %s:%d (%s): %s; retrying with backoff (attempt %d)",
			         p->host, p->port, tether_category_name(why->category), why->detail, p->fails);
		else
			tether_debug("tls", "cannot connect to %s:%d: %s", p->host, p->port, why->detail);
	}
	if (why->category == TETHER_CAT_UNTRUSTED && p->session) {
		tether_free_wiped(p->session, p->session_len);
		p->session = NULL;
		p->session_len = 0;
	}
	poller_schedule(p);
}

static void poller_connect(poller *p)
{
	agent *a = p->a;
	tether_worker *w = tether_workers_get(a->ws, p->worker);
	worker_data *wd = w->user;
	agent_conn *ac;
	tether_conn_opts o;
	tether_conn *c = NULL;
	tether_error e;
	char hint[64] = "";

	ac = tether_xcalloc(1, sizeof(*ac));
	ac->owner = wd;
	ac->loop = &w->loop;
	ac->poller = p;
	ac->tls = tlsref_get(a);
	pthread_mutex_lock(&a->lock);
	if (a->trust->ntrusted) {
		char hex[TETHER_THUMBPRINT_HEX];
		size_t k, pick = 0;
		/* a successor named by trust.rotate is the identity to ask for */
		for (k = 0; k < a->trust->ntrusted; k++)
			if (a->trust->trusted[k].has_predecessor)
				pick = k;
		tether_thumbprint_hex(&a->trust->trusted[pick].tp, hex);
		/* the pin hint: which server identity this agent trusts */
		snprintf(hint, sizeof(hint), "p-%.16s.tether.invalid", hex);
	}
	pthread_mutex_unlock(&a->lock);
	memset(&o, 0, sizeof(o));
	o.tls_role = TETHER_TLS_CLIENT;
	o.local_role = TETHER_ROLE_AGENT;
	o.mode = TETHER_MODE_POLLING;
	o.prov = a->prov;
	o.tls_ctx = ac->tls->ctx;
	o.server_name = hint[0] ? hint : NULL;
	if (p->session && p->session_gen != a->session_gen) {
		/* identity or trust changed since: a full handshake */
		tether_free_wiped(p->session, p->session_len);
		p->session = NULL;
		p->session_len = 0;
	}
	o.session = p->session;
	o.session_len = p->session_len;
	o.no_tickets = !(cli_tls_policy(a->c) & TETHER_TLS_POLICY_RESUMPTION);
	o.connect_ms = a->handshake_ms;
	o.handshake_ms = a->handshake_ms;
	o.idle_ms = 0;                  /* held open; keepalive notices a dead link */
	o.keepalive_ms = a->keepalive_ms;
	o.instance_id = tether_process_instance_id(a->prov);
	o.cbs = &agent_cbs;
	o.cb_arg = a;
	o.before_send = before_send;
	o.data = ac;
	o.capabilities = a->caps;
	if (a->proxy_host[0]) {
		o.proxy_host = a->proxy_host;
		o.proxy_port = a->proxy_port;
		o.proxy_auth = a->proxy_auth;
	}
	ac->next = wd->conns;
	if (wd->conns)
		wd->conns->prev = ac;
	wd->conns = ac;
	wd->nconns++;
	p->ac = ac;
	memset(&e, 0, sizeof(e));
	if (tether_conn_connect(&w->loop, p->host, p->port, &o, &c, &e) < 0) {
		/* no callback came: undo and retry later */
		if (ac->prev)
			ac->prev->next = ac->next;
		if (ac->next)
			ac->next->prev = ac->prev;
		if (wd->conns == ac)
			wd->conns = ac->next;
		wd->nconns--;
		tlsref_release(a, ac->tls);
		free(ac);
		poller_closed(p, 0, &e);
		return;
	}
	ac->c = c;
}

static void poller_start_fn(tether_worker *w, void *arg)
{
	poller *p = arg;

	if (!w->user)
		w->user = tether_xcalloc(1, sizeof(worker_data));
	uv_timer_init(&w->loop, &p->timer);
	p->timer.data = p;
	p->timer_inited = 1;
	poller_connect(p);
}

static void poller_stop_fn(tether_worker *w, void *arg)
{
	agent *a = arg;
	size_t i;

	for (i = 0; i < a->npollers; i++) {
		poller *p = &a->pollers[i];
		if (p->worker != w->index)
			continue;
		p->stopping = 1;
		if (p->timer_inited)
			uv_timer_stop(&p->timer);
	}
}

/* Read [polling] server, proxy and connections; fail with a clear message. */
static int setup_polling(agent *a, tether_error *err)
{
	cli_ctx *c = a->c;
	const char *servers[64];
	size_t n = tether_config_get_all(c->conf, "polling", "server", servers, 64), i, k;
	unsigned conns = (unsigned)strtoul(tether_config_get(c->conf, "polling", "connections", "1"), NULL, 10);
	const char *proxy = tether_config_get(c->conf, "polling", "proxy", NULL);
	const char *cred = tether_config_get(c->conf, "polling", "proxy-credentials-file", NULL);

	if (n == 0)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "polling mode needs a server to connect to: run 'tether-agent configure%s "
		                      "--server HOST:PORT'", cli_args(c));
	if (n > 64)
		n = 64;
	if (conns < 1)
		conns = 1;
	if (conns > 16)
		conns = 16;
	if (proxy && *proxy) {
		char *h = NULL;
		int port;
		if (tether_parse_hostport(strncmp(proxy, "http://", 7) ? proxy : proxy + 7, &h, &port, 3128) < 0)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "[polling] proxy '%s' is not http://HOST:PORT", proxy);
		snprintf(a->proxy_host, sizeof(a->proxy_host), "%s", h);
		a->proxy_port = port;
		free(h);
		if (cred && *cred) {
			int r = tether_secret_from_file(cred, &a->proxy_auth, err);
			if (r < 0)
				return r;
			if (!strchr(a->proxy_auth, ':'))
				return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
				                      "%s must hold USER:PASSWORD for the proxy", cred);
		}
	}
	a->pollers = tether_xcalloc(n * conns, sizeof(*a->pollers));
	for (i = 0; i < n; i++) {
		char *h = NULL;
		int port;
		if (tether_parse_hostport(servers[i], &h, &port, 10943) < 0)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "[polling] server '%s' is not HOST:PORT", servers[i]);
		for (k = 0; k < conns; k++) {
			poller *p = &a->pollers[a->npollers];
			p->a = a;
			snprintf(p->host, sizeof(p->host), "%s", h);
			p->port = port;
			p->worker = (int)(a->npollers % (size_t)tether_default_loops());
			a->npollers++;
		}
		free(h);
	}
	return 0;
}

static void on_accept(void *arg, tether_worker *w, uv_stream_t *server)
{
	agent *a = arg;
	worker_data *wd;
	agent_conn *ac;
	tether_conn_opts o;
	tether_conn *c = NULL;
	tether_error e;
	const char *why = NULL;
	uv_tcp_t *probe;

	/* The loops listen as soon as tether_workers_start returns, before
	 * worker_init_fn (posted after it) has run on this loop: a connection
	 * at once (the tests' port probe) found w->user NULL and crashed here
	 * (seen in pkcs11_ops.sh; reproduced under helgrind).  Both run on
	 * this worker's thread, so initializing here is safe. */
	if (!w->user)
		w->user = tether_xcalloc(1, sizeof(worker_data));
	wd = w->user;
	ac = tether_xcalloc(1, sizeof(*ac));
	ac->owner = wd;
	ac->loop = &w->loop;
	if (a->stopping) {
		probe = tether_xcalloc(1, sizeof(*probe));
		uv_tcp_init(&w->loop, probe);
		uv_accept(server, (uv_stream_t *)probe);
		uv_close((uv_handle_t *)probe, (uv_close_cb)free);
		free(ac);
		return;
	}
	ac->tls = tlsref_get(a);
	memset(&o, 0, sizeof(o));
	o.tls_role = TETHER_TLS_SERVER;
	o.local_role = TETHER_ROLE_AGENT;
	o.mode = TETHER_MODE_LISTENING;
	o.prov = a->prov;
	o.tls_ctx = ac->tls->ctx;
	o.handshake_ms = a->handshake_ms;
	o.idle_ms = a->idle_ms;
	o.keepalive_ms = a->keepalive_ms;
	o.landing_page = a->landing;
	o.landing_text = "tether-agent is listening";
	o.instance_id = tether_process_instance_id(a->prov);
	o.cbs = &agent_cbs;
	o.cb_arg = a;
	o.before_send = before_send;
	o.data = ac;
	o.capabilities = a->caps;
	/* link first: callbacks may fire during accept */
	ac->next = wd->conns;
	if (wd->conns)
		wd->conns->prev = ac;
	wd->conns = ac;
	wd->nconns++;
	if (tether_conn_accept(&w->loop, server, &o, &c, &e) < 0) {
		tether_debug("tls", "accept failed: %s", e.detail);
		return; /* on_close already unlinked and freed ac */
	}
	ac->c = c;
	if (tether_conn_peer_sockaddr(c, &ac->sa) == 0) {
		if (!tether_ratelimit_admit(a->rl, (struct sockaddr *)&ac->sa, &why)) {
			tether_debug("tls", "dropping %s: %s", tether_conn_peer_addr(c), why);
			tether_conn_abort(c, TETHER_CAT_NONE, why);
			return;
		}
		ac->counted = 1;
	}
}

static void worker_init_fn(tether_worker *w, void *arg)
{
	(void)arg;
	if (!w->user)
		w->user = tether_xcalloc(1, sizeof(worker_data));
}

/* tether_workers_join's teardown: every thread is joined and every loop
 * closed, so nothing (a late recheck_fn, a connection's close callback)
 * can reach the worker data any more.  Its connections unlinked
 * themselves as their handles closed, before the loop ended. */
static void worker_free_fn(tether_worker *w, void *arg)
{
	(void)arg;
	free(w->user);
	w->user = NULL;
}

static void close_all_fn(tether_worker *w, void *arg)
{
	worker_data *wd = w->user;
	agent_conn *ac, *next;
	(void)arg;

	if (!wd)
		return;
	for (ac = wd->conns; ac; ac = next) {
		next = ac->next;
		if (ac->c)
			tether_conn_close(ac->c, "shutting_down", "the agent is stopping");
	}
}

static void abort_all_fn(tether_worker *w, void *arg)
{
	worker_data *wd = w->user;
	agent_conn *ac, *next;
	(void)arg;

	if (!wd)
		return;
	for (ac = wd->conns; ac; ac = next) {
		next = ac->next;
		if (ac->c)
			tether_conn_abort(ac->c, TETHER_CAT_NONE, "the agent is stopping");
	}
}

/* ------------------------------------------------------------------ */
/* Main loop                                                           */
/* ------------------------------------------------------------------ */

#ifdef _WIN32
/* The Service Control Manager's stop request (agent/service_win.c) comes on
 * another thread: it starts the same drain as SIGTERM on the main loop. */
static uv_async_t win_stop;
static int win_stop_ready;
static pthread_mutex_t win_stop_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_signal(uv_signal_t *s, int signum);
static void on_win_stop(uv_async_t *h)
{
	agent *a = h->data;
	on_signal(&a->sigterm, SIGTERM);
}

int agent_request_stop(void)
{
	int sent = 0;
	pthread_mutex_lock(&win_stop_lock);
	if (win_stop_ready)
		sent = uv_async_send(&win_stop) == 0;
	pthread_mutex_unlock(&win_stop_lock);
	return sent ? 0 : TETHER_ERR_NOT_FOUND;
}
#endif

static void on_drained(uv_timer_t *t)
{
	agent *a = t->data;
#ifdef _WIN32
	pthread_mutex_lock(&win_stop_lock);
	win_stop_ready = 0;
	pthread_mutex_unlock(&win_stop_lock);
	uv_close((uv_handle_t *)&win_stop, NULL);
#endif

	tether_workers_broadcast(a->ws, abort_all_fn, a);
#ifdef __linux__
	if (a->trust_ifd >= 0) {
		uv_poll_stop(&a->trust_poll);
		uv_close((uv_handle_t *)&a->trust_poll, trust_poll_closed);
	}
#endif
	uv_fs_event_stop(&a->watch);
	uv_fs_event_stop(&a->idwatch);
	uv_close((uv_handle_t *)&a->idwatch, NULL);
	uv_close((uv_handle_t *)&a->sigterm, NULL);
	uv_close((uv_handle_t *)&a->sigint, NULL);
	uv_close((uv_handle_t *)&a->sighup, NULL);
	uv_close((uv_handle_t *)&a->watch, NULL);
	uv_close((uv_handle_t *)&a->poll_timer, NULL);
	uv_close((uv_handle_t *)&a->drain_timer, NULL);
}

/* Is the identity in the current slot another one than in use (after
 * new-certificate, import-certificate or use-staged-certificate while
 * running), or was a reload asked for (SIGHUP)?  Then switch to it.
 * Loading an identity reads its key: from files (maybe decrypting a
 * protected key) or from a PKCS#11 token, where a network HSM may take
 * long to answer.  So the check runs on the thread pool, never on the
 * main loop, one at a time: a check asked for while one runs runs after
 * it (a reload wins over a plain check). */
typedef struct id_check {
	uv_work_t w;
	agent *a;
	int reload;                     /* SIGHUP: load it even if unchanged */
	int changed;
	int rekey;                      /* the session ticket key is due */
	int rc;
	tlsref *neu;                    /* the identity to switch to */
	int nkeys;                      /* rekey in place: the new ticket keys */
	unsigned char keys[2 * TETHER_TICKET_KEY_LEN];
	char sha256[TETHER_THUMBPRINT_HEX];
	tether_error e;
} id_check;

static void id_check_run(uv_work_t *w)
{
	id_check *k = (id_check *)w;
	agent *a = k->a;
	tether_id_summary cur;

	if (!k->reload) {
		k->rc = tether_slot_summary(a->prov, TETHER_SLOT_CURRENT, &cur, &k->e);
		if (k->rc < 0 || !cur.present)
			return;
		pthread_mutex_lock(&a->lock);
		k->changed = strcmp(cur.sha256, a->tls->summary.sha256) != 0;
		pthread_mutex_unlock(&a->lock);
		/* a listening agent issues tickets: their key is renewed every
		 * [tls] ticket-lifetime while it runs, not only at start */
		if (!k->changed)
			k->rekey = !a->polling && (cli_tls_policy(a->c) & TETHER_TLS_POLICY_RESUMPTION) &&
			           tether_ticket_key_expired(a->c->inst->state_dir, cli_ticket_lifetime(a->c));
		if (!k->changed && !k->rekey)
			return;
		snprintf(k->sha256, sizeof(k->sha256), "%s", cur.sha256);
		/* same identity: the running context takes the new key in
		 * place (id_check_done), so that its connections, however old,
		 * issue their next tickets with it */
		if (!k->changed && TETHER_PROV_HAS(a->prov, tls_ctx_set_tickets)) {
			k->rc = tether_ticket_keys(a->prov, a->c->inst->state_dir, cur.sha256,
			                           cli_ticket_lifetime(a->c), k->keys, &k->nkeys, &k->e);
			return;
		}
	}
	k->rc = build_tls(a, &k->neu, &k->e);
}

static void id_check_done(uv_work_t *w, int status)
{
	id_check *k = (id_check *)w;
	agent *a = k->a;
	tlsref *old;
	int next;

	(void)status;
	a->id_check_busy = 0;
	if (k->changed)
		log_info("the certificate changed on disk (%s): switching to it", k->sha256);
	if (k->neu && !a->stopping) {
		pthread_mutex_lock(&a->lock);
		old = a->tls;
		a->tls = k->neu;
		pthread_mutex_unlock(&a->lock);
		__atomic_add_fetch(&a->session_gen, 1, __ATOMIC_SEQ_CST);
		if (k->rekey)
			log_info("session ticket key renewed (older than %u s): tickets issued before "
			         "now lead to a full handshake", cli_ticket_lifetime(a->c));
		else
			log_info("identity %s loaded; existing connections drain on the old one",
			         k->neu->summary.sha256);
		tlsref_release(a, old);
	} else if (k->neu) {
		tlsref_release(a, k->neu);
	} else if (k->nkeys && !a->stopping) {
		tlsref *t = tlsref_get(a);
		tether_error e;
		memset(&e, 0, sizeof(e));
		if (t && a->prov->t->tls_ctx_set_tickets(t->ctx, k->keys, (size_t)k->nkeys * TETHER_TICKET_KEY_LEN,
		                                         cli_ticket_lifetime(a->c), &e) == 0)
			log_info("session ticket key renewed (older than %u s); the previous one still "
			         "decrypts for as long", cli_ticket_lifetime(a->c));
		else
			log_error("cannot renew the session ticket key, keeping the one in use: %s", e.detail);
		if (t)
			tlsref_release(a, t);
	} else if (k->rc < 0 && (k->reload || k->changed || k->rekey)) {
		log_error("cannot reload the identity, keeping the current one: %s", k->e.detail);
	} else if (k->rc < 0) {
		tether_debug("prov", "identity check: %s", k->e.detail);
	}
	tether_wipe(k->keys, sizeof(k->keys));
	free(k);
	next = a->id_check_next;
	a->id_check_next = 0;
	if (next && !a->stopping)
		identity_check(a, next == 2);
}

/* On the main loop. */
static void identity_check(agent *a, int reload)
{
	id_check *k;

	if (a->stopping)
		return;
	if (a->id_check_busy) {
		if (reload || !a->id_check_next)
			a->id_check_next = reload ? 2 : 1;
		return;
	}
	k = tether_xcalloc(1, sizeof(*k));
	k->a = a;
	k->reload = reload;
	if (uv_queue_work(a->loop, &k->w, id_check_run, id_check_done) < 0) {
		free(k);
		return;
	}
	a->id_check_busy = 1;
}

static void on_signal(uv_signal_t *s, int signum)
{
	agent *a = s->data;

	if (signum == SIGHUP) {
		log_info("SIGHUP: reloading identity and trust");
		reload_trust(a, 1);
		identity_check(a, 1);
		return;
	}
	if (a->stopping)
		return;
	a->stopping = 1;
	log_info("stopping: no new connections, closing the open ones");
	if (a->polling)
		tether_workers_broadcast(a->ws, poller_stop_fn, a);
	else
		tether_workers_stop_listening(a->ws);
	tether_workers_broadcast(a->ws, close_all_fn, a);
	uv_timer_start(&a->drain_timer, on_drained, 500, 0);
}

/* The services' environment: work directory, file roots, switches. */
static int setup_env(agent *a, tether_error *err)
{
	cli_ctx *c = a->c;
	const char *roots = tether_config_get(c->conf, "files", "roots", NULL);
	size_t n = 0, i;
	int r;

	a->work_dir = tether_asprintf("%s/work", c->inst->state_dir);
	r = tether_mkdirs(a->work_dir, 0700, err);
	if (r < 0)
		return r;
	a->roots = tether_xcalloc(33, sizeof(char *));
	if (roots && *roots) {
		char *copy = tether_strdup(roots), *save = NULL, *tok;
		for (tok = strtok_r(copy, ",", &save); tok && n < 32; tok = strtok_r(NULL, ",", &save)) {
			while (*tok == ' ' || *tok == '\t')
				tok++;
			for (i = strlen(tok); i > 0 && (tok[i - 1] == ' ' || tok[i - 1] == '\t'); i--)
				tok[i - 1] = '\0';
			if (*tok)
				a->roots[n++] = tether_strdup(tok);
		}
		free(copy);
	}
	if (n == 0)
		a->roots[n++] = tether_strdup(a->work_dir);
	a->env.prov = a->prov;
	a->env.state_dir = c->inst->state_dir;
	a->env.work_dir = a->work_dir;
	a->env.file_roots = (const char *const *)a->roots;
	a->env.script_enabled = tether_config_bool(tether_config_get(c->conf, "services", "script", "on")) != 0;
	a->env.file_enabled = tether_config_bool(tether_config_get(c->conf, "services", "file", "on")) != 0;
	a->env.script_retention_s = (uint32_t)strtoul(tether_config_get(c->conf, "scripts", "retention",
	                                                                  "604800"), NULL, 10);
	n = 0;
	a->caps[n++] = "trust";
	a->caps[n++] = "identity";
	if (a->env.script_enabled)
		a->caps[n++] = "script";
	if (a->env.file_enabled)
		a->caps[n++] = "file";
	a->caps[n] = NULL;
	for (i = 0; agent_services[i]; i++) {
		if (agent_services[i]->init && (r = agent_services[i]->init(&a->env)) < 0)
			return tether_err_set(err, r, TETHER_CAT_INTERNAL,
			                      "the %s service could not start (see the log above)",
			                      agent_services[i]->prefix);
	}
	return 0;
}

static void free_env(agent *a)
{
	size_t i;

	for (i = 0; agent_services[i]; i++)
		if (agent_services[i]->shutdown)
			agent_services[i]->shutdown();
	for (i = 0; a->roots && a->roots[i]; i++)
		free(a->roots[i]);
	free(a->roots);
	free(a->work_dir);
}

static uint32_t conf_ms(cli_ctx *c, const char *key, const char *def)
{
	return (uint32_t)strtoul(tether_config_get(c->conf, "timeouts", key, def), NULL, 10) * 1000u;
}

int verb_run(cli_ctx *c, int argc, char **argv)
{
	agent a;
	tether_error e;
	struct utsname un;
	const char *level, *logfile;
	int oi, r, nloops;

	r = cli_parse(c, argc, argv, NULL, "",
	              "Run the agent in the foreground (logs to stderr; systemd-friendly). In listening mode it\n"
	              "listens on [listen] address for servers it trusts; in polling mode ([tether] mode = polling)\n"
	              "it connects out to each [polling] server and holds the connection. SIGTERM drains and\n"
	              "exits; SIGHUP reloads the identity and trust. Trust changes made with 'configure' and a\n"
	              "new certificate apply without a restart.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	r = cli_open_provider(c);
	if (r < 0)
		return r;
	memset(&a, 0, sizeof(a));
	a.c = c;
	a.prov = c->prov;
	pthread_mutex_init(&a.lock, NULL);
	a.started = time(NULL);
	level = tether_config_get(c->conf, "log", "level", "info");
	tether_log_set_level(!strcmp(level, "error") ? TETHER_LOG_ERROR : !strcmp(level, "warning") ?
	                     TETHER_LOG_WARN : !strcmp(level, "debug") ? TETHER_LOG_DEBUG : TETHER_LOG_INFO);
	logfile = tether_config_get(c->conf, "log", "file", NULL);
	if (logfile && tether_log_set_file(logfile) < 0)
		log_warn("cannot open log file %s: %s (logging to stderr only)", logfile, strerror(errno));
	a.handshake_ms = conf_ms(c, "handshake", "10");
	a.idle_ms = conf_ms(c, "idle", "600");
	a.keepalive_ms = conf_ms(c, "keepalive", "15");
	a.request_ms = conf_ms(c, "request", "3600");
	a.landing = tether_config_bool(tether_config_get(c->conf, "listen", "landing-page", "on")) != 0;
	snprintf(a.listen_addr, sizeof(a.listen_addr), "%s",
	         tether_config_get(c->conf, "listen", "address", "0.0.0.0:10933"));
	a.polling = !strcmp(tether_config_get(c->conf, "tether", "mode", "listening"), "polling");
	nloops = (int)strtol(tether_config_get(c->conf, "engine", "loops", "0"), NULL, 10);
	if (nloops <= 0)
		nloops = tether_default_loops();
	if (uname(&un) == 0)
		snprintf(a.os, sizeof(a.os), "%s %s %s", un.sysname, un.release, un.machine);
	r = setup_env(&a, &c->err);
	if (r < 0)
		return r;
	a.trust = tether_xcalloc(1, sizeof(*a.trust));
	reload_trust(&a, 1);
	r = build_tls(&a, &a.tls, &e);
	if (r < 0) {
		c->err = e;
		goto early_out;
	}
	{
		char *ap = tether_asprintf("%s/audit.log", c->inst->state_dir);
		r = tether_audit_open(ap, &a.audit, &c->err);
		free(ap);
		if (r < 0) {
			tlsref_release(&a, a.tls);
			goto early_out;
		}
		/* lines of many pipelined requests in one write(2) (req_audit) */
		tether_audit_set_deferred(a.audit, 1);
	}
	a.rl = tether_ratelimit_new(20.0, 40.0, 256);
	if (a.polling) {
		size_t i;
		r = setup_polling(&a, &c->err);
		if (r < 0)
			return r;
		r = tether_workers_start(NULL, nloops, on_accept, &a, &a.ws, &c->err);
		if (r < 0)
			return r;
		tether_workers_set_teardown(a.ws, worker_free_fn, NULL);
		tether_workers_broadcast(a.ws, worker_init_fn, NULL);
		for (i = 0; i < a.npollers; i++) {
			a.pollers[i].worker %= nloops;
			tether_workers_post(a.ws, a.pollers[i].worker, poller_start_fn, &a.pollers[i]);
		}
		log_info("tether-agent %s in polling mode: %zu connection%s to %zu server address%s%s%s, "
		         "certificate %s, provider %s", PACKAGE_VERSION, a.npollers, a.npollers == 1 ? "" : "s",
		         tether_config_get_all(c->conf, "polling", "server", NULL, 0),
		         tether_config_get_all(c->conf, "polling", "server", NULL, 0) == 1 ? "" : "es",
		         a.proxy_host[0] ? " through proxy " : "", a.proxy_host, a.tls->summary.sha256,
		         a.prov->t->name);
	} else {
		r = tether_workers_start(a.listen_addr, nloops, on_accept, &a, &a.ws, &c->err);
		if (r < 0)
			return r;
		tether_workers_set_teardown(a.ws, worker_free_fn, NULL);
		tether_workers_broadcast(a.ws, worker_init_fn, NULL);
		log_info("tether-agent %s listening on %s (port %d, %d loop%s), certificate %s, provider %s",
		         PACKAGE_VERSION, a.listen_addr, tether_workers_port(a.ws), nloops, nloops == 1 ? "" : "s",
		         a.tls->summary.sha256, a.prov->t->name);
	}
	if (!a.trust->ntrusted)
		log_warn("no server is trusted yet: run 'tether-agent configure%s --trust THUMBPRINT'", cli_args(c));
	if (a.tls->summary.expired)
		log_warn("this agent's certificate expired on %s: it still works (the pin is the trust), "
		         "but renew it with 'new-certificate'", a.tls->summary.not_after);

	a.loop = uv_default_loop();
	uv_signal_init(a.loop, &a.sigterm);
	uv_signal_init(a.loop, &a.sigint);
	uv_signal_init(a.loop, &a.sighup);
	a.sigterm.data = a.sigint.data = a.sighup.data = &a;
	uv_signal_start(&a.sigterm, on_signal, SIGTERM);
	uv_signal_start(&a.sigint, on_signal, SIGINT);
	uv_signal_start(&a.sighup, on_signal, SIGHUP);
	uv_fs_event_init(a.loop, &a.watch);
	a.watch.data = &a;
#ifdef __linux__
	if (watch_trust(&a, c->inst->state_dir) < 0)
		log_warn("cannot watch %s: %s; trust changes are polled every 2 s",
		         c->inst->state_dir, strerror(errno));
#else
	if (uv_fs_event_start(&a.watch, on_fs_event, c->inst->state_dir, 0) < 0)
		log_warn("cannot watch %s; trust changes are polled every 2 s", c->inst->state_dir);
#endif
	uv_fs_event_init(a.loop, &a.idwatch);
	a.idwatch.data = &a;
	{
		char *idd = tether_asprintf("%s/identity", c->inst->state_dir);
		if (tether_is_dir(idd))
			uv_fs_event_start(&a.idwatch, on_id_event, idd, 0);
		free(idd);
	}
	uv_timer_init(a.loop, &a.poll_timer);
	a.poll_timer.data = &a;
	uv_timer_start(&a.poll_timer, on_poll, 2000, 2000);
	uv_timer_init(a.loop, &a.drain_timer);
	a.drain_timer.data = &a;
#ifdef _WIN32
	uv_async_init(a.loop, &win_stop, on_win_stop);
	win_stop.data = &a;
	pthread_mutex_lock(&win_stop_lock);
	win_stop_ready = 1;
	pthread_mutex_unlock(&win_stop_lock);
#endif
#ifndef _WIN32 /* Windows has no SIGPIPE: a broken socket is an error return */
	signal(SIGPIPE, SIG_IGN);
#endif

	uv_run(a.loop, UV_RUN_DEFAULT);

	tether_workers_join(a.ws);
	{
		size_t i;
		for (i = 0; i < a.npollers; i++)
			if (a.pollers[i].session)
				tether_free_wiped(a.pollers[i].session, a.pollers[i].session_len);
		free(a.pollers);
		if (a.proxy_auth)
			tether_free_secret(a.proxy_auth);
	}
	free_env(&a);
	tlsref_release(&a, a.tls);
	tether_ratelimit_free(a.rl);
	tether_audit_close(a.audit);
	free(a.trust);
	free(a.health_head);
	free(a.health_tail);
	pthread_mutex_destroy(&a.lock);
	uv_loop_close(a.loop);
	/* Join libuv's pool threads now, while OpenSSL is still initialised:
	 * handshakes that ran there left per-thread OpenSSL state (error
	 * queue, DRBGs) that only a thread's exit frees, and OpenSSL's own
	 * atexit cleanup runs before libuv's destructor would join them. */
	uv_library_shutdown();
	log_info("stopped");
	return 0;
early_out:    /* refused to start: nothing runs yet */
	free_env(&a);
	free(a.trust);
	pthread_mutex_destroy(&a.lock);
	return r;
}
