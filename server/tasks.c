/*
 * Remote execution on the server: durable tasks driven on the daemon's
 * loop, and the admin methods behind exec, run-script and task.
 *
 * A task is one command on one target.  It is stored (tasks_store.h)
 * before anything is sent, and identified on the agent by a ticket of 32
 * random hex digits the server chose, which makes every call safe to
 * repeat: script.start of an existing ticket only returns its status.
 *
 * Driving a task (one call at a time, plus a cancel that may overtake a
 * long poll):
 *   pending  -> script.start {ticket, command..., wait_ms 1000}
 *   queued/running -> script.status {ticket, after_seq, wait_ms 10000}
 *               (wait_ms 0 while the agent says more output is ready)
 *   the agent reports a final state and no more output
 *            -> the final state, exit code and last records are stored
 *               in one transaction, then script.complete {ticket}.
 * Every answer's records are stored in one transaction; records the store
 * already has (by the agent's seq) are skipped, so a repeated answer
 * stores nothing twice.
 *
 * Failures (the policy):
 *  - The agent refuses (invalid parameters, forbidden, script service off,
 *    ticket unknown): the task fails at once with the agent's message and
 *    category.
 *  - The connection cannot be made before the agent ever got the task
 *    (connection refused, DNS, TLS or pin failures, target removed): the
 *    task fails at once; nothing ran.  exec reports it (exit 255).
 *  - Otherwise (the connection broke, a call timed out, the agent is busy
 *    or restarting): the script may be running, so the call is retried
 *    with exponential backoff from 1 s to 30 s, for up to TASKS_GIVE_UP_S
 *    seconds without an answer from the agent; then the task fails with
 *    the last error ("gave up after ...").  The agent keeps the ticket's
 *    output until its retention removes it.
 *  - The daemon restarts: at start every task whose ticket is not yet
 *    completed is resumed: pending ones repeat script.start (harmless),
 *    running ones poll their ticket for the rest of the output and the
 *    exit code, ended ones only complete their ticket.
 *
 * Admin methods (params -> result):
 *   task.create {targets: [name...] | tag, argv: [...] | script, shell?,
 *                env?: {K: V}, cwd?, timeout_s?, isolation?,
 *                wait_ms?: 0 (at most 60000), max_bytes?: 1 MiB}
 *               -> {tasks: [{id, target}], poll?}
 *               With wait_ms > 0 and one target, the answer also holds
 *               "poll": what task.poll {id, after_seq: 0, wait_ms,
 *               max_bytes} would have answered, and comes when that would
 *               have come (output, the end, or wait_ms): a short command
 *               is created and followed in one call instead of two.  A
 *               daemon without this answers without "poll" (clients then
 *               follow with task.poll as before).
 *   task.poll   {id, after_seq?: 0, wait_ms?: 0 (at most 60000),
 *                max_bytes?: 1 MiB}
 *               -> {id, target, state, exit_code, error?, category?,
 *                   output: [{seq, stream, time, text | base64}],
 *                   next_seq (the after_seq of the next call), more,
 *                   retrying?: {error, category}}
 *               answered at once when there is output after after_seq or
 *               the task has ended, else when either happens or wait_ms
 *               passes.
 *   task.logs   {id, after_seq?, max_bytes?} -> as task.poll, no wait
 *   task.list   {target?, limit?: 50} -> {tasks: [task...]}
 *   task.show   {id} -> task
 *   task.cancel {id} -> task (cancel_requested: true unless it had ended)
 * task.create and task.cancel are written to the audit log with the
 * caller.
 */
#include "config.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <jansson.h>
#include <sqlite3.h>
#include <uv.h>
#include "admin.h"
#include "error.h"
#include "log.h"
#include "registry.h"
#include "srvapi.h"
#include "tasks_store.h"
#include "util.h"

#define START_WAIT_MS 1000
#define STATUS_WAIT_MS 10000
#define CALL_MARGIN_MS 30000          /* beyond the agent's wait */
#define STATUS_MAX_BYTES (512 * 1024)    /* the agent allows 4 KiB to 768 KiB */
#define POLL_MAX_BYTES (1024 * 1024)
#define CANCEL_GRACE_MS 5000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define POLL_WAIT_MAX_MS 60000
#define COMMAND_MAX (768 * 1024)      /* the command's JSON (script text) */
#define CREATE_TARGETS_MAX 10000
#define OUTPUT_RECORDS_MAX 100000     /* records accepted in one agent answer */
/* Give a task up after this long without an answer from its agent. */
#define TASKS_GIVE_UP_S 3600

enum call_kind { CALL_START, CALL_STATUS, CALL_CANCEL, CALL_COMPLETE, CALL_SIDE_CANCEL };
static const char *const call_method[] = {
	"script.start", "script.status", "script.cancel", "script.complete", "script.cancel"
};

typedef struct task task;

typedef struct tasks_mod {
	srv *s;
	task_store *store;
	task *tasks;                  /* live tasks (work left with the agent) */
	struct pollw *waiters;        /* task.poll calls waiting */
	unsigned give_up_s;
} tasks_mod;

struct task {
	task *next, *prev;
	int64_t id;
	char target[REG_NAME_MAX + 1];
	char ticket[TASK_TICKET_HEX];
	json_t *command;              /* the script.start parameters */
	int acked;                    /* the agent has the ticket */
	int maybe_sent;               /* a script.start may have reached it */
	int agent_ended;              /* final state and every record stored */
	int more;                     /* the agent has more output ready */
	int has_agent_seq;
	int64_t agent_seq;
	int cancel_requested, cancel_sent;
	int in_flight, side_in_flight;
	unsigned answers;             /* answers handled (to tell a synchronous one) */
	int detached;                 /* off the list: freed once idle */
	int timer_closed;
	uv_timer_t timer;             /* backoff and kick */
	uint64_t contact_ms;          /* last useful answer (or creation) */
	unsigned backoff_ms;
	char retry_error[TETHER_ERROR_DETAIL_MAX];
	char retry_category[32];
};

typedef struct call_ctx {
	task *t;
	enum call_kind kind;
} call_ctx;

typedef struct pollw {
	struct pollw *next, *prev;
	admin_call *call;
	int64_t id, after_seq;
	size_t max_bytes;
	json_t *create_res;           /* task.create with wait_ms: its answer, "poll" added */
	uv_timer_t timer;
} pollw;

/* One daemon per process: the module's state lives here between start()
 * and stop() (srv_module hooks carry no argument of their own). */
static tasks_mod *g;

static void task_step(task *t);
static void wake_waiters(int64_t id);

/* ------------------------------------------------------------------ */
/* Task lifetime                                                       */
/* ------------------------------------------------------------------ */

static void task_maybe_free(task *t)
{
	if (!t->detached || t->in_flight || t->side_in_flight || !t->timer_closed)
		return;
	json_decref(t->command);
	free(t);
}

static void on_task_timer_closed(uv_handle_t *h)
{
	task *t = h->data;
	t->timer_closed = 1;
	task_maybe_free(t);
}

/* Take t off the live list; it is freed once no call is in flight. */
static void task_detach(task *t)
{
	if (t->detached)
		return;
	t->detached = 1;
	if (g) {
		if (t->prev)
			t->prev->next = t->next;
		else
			g->tasks = t->next;
		if (t->next)
			t->next->prev = t->prev;
	}
	t->next = t->prev = NULL;
	/* A timer the daemon's final walk already closed is left alone (and
	 * the task with it: the loop may still touch the handle). */
	if (!uv_is_closing((uv_handle_t *)&t->timer))
		uv_close((uv_handle_t *)&t->timer, on_task_timer_closed);
}

static void on_task_timer(uv_timer_t *tm)
{
	task_step(tm->data);
}

static task *task_new(const task_rec *rec)
{
	task *t = tether_xcalloc(1, sizeof(*t));
	json_error_t jerr;

	t->id = rec->id;
	snprintf(t->target, sizeof(t->target), "%s", rec->target);
	snprintf(t->ticket, sizeof(t->ticket), "%s", rec->ticket);
	t->command = json_loads(rec->command, 0, &jerr);
	if (!json_is_object(t->command)) {
		json_decref(t->command);
		t->command = json_object();
	}
	t->acked = strcmp(rec->state, "pending") != 0;
	t->agent_ended = task_state_final(rec->state);
	t->has_agent_seq = rec->has_agent_seq;
	t->agent_seq = rec->agent_seq;
	t->cancel_requested = rec->cancel_requested;
	t->contact_ms = tether_now_ms();
	uv_timer_init(srv_loop(g->s), &t->timer);
	t->timer.data = t;
	t->next = g->tasks;
	if (g->tasks)
		g->tasks->prev = t;
	g->tasks = t;
	return t;
}

static task *task_find(int64_t id)
{
	task *t;

	for (t = g ? g->tasks : NULL; t; t = t->next)
		if (t->id == id)
			return t;
	return NULL;
}

/* Run task_step from the loop (not from inside a caller's stack). */
static void task_kick(task *t, uint64_t delay_ms)
{
	uv_timer_start(&t->timer, on_task_timer, delay_ms, 0);
}

/* The task ends on our side: store upd (with completed = 1), wake the
 * waiters, forget the task. */
static void task_end_local(task *t, const task_update *upd)
{
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (task_store_ingest(g->store, t->id, NULL, 0, upd, NULL, &e) < 0 ||
	    task_store_set_completed(g->store, t->id, &e) < 0)
		log_error("task %lld: %s", (long long)t->id, e.detail);
	wake_waiters(t->id);
	task_detach(t);
}

static void task_fail(task *t, const char *category, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void task_fail(task *t, const char *category, const char *fmt, ...)
{
	char msg[TETHER_ERROR_DETAIL_MAX];
	task_update u;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warn("task %lld on %s failed: %s (%s)", (long long)t->id, t->target, msg, category);
	memset(&u, 0, sizeof(u));
	u.state = "failed";
	u.error = msg;
	u.category = category;
	task_end_local(t, &u);
}

/* ------------------------------------------------------------------ */
/* Calls to the agent                                                  */
/* ------------------------------------------------------------------ */

static void on_answer(void *arg, const tether_rpc_response *resp, const tether_error *err);

static void handle_answer(call_ctx *cc, const tether_rpc_response *resp, const tether_error *err);

static void send_call(task *t, enum call_kind kind, json_t *params, uint32_t timeout_ms)
{
	call_ctx *cc = tether_xcalloc(1, sizeof(*cc));
	unsigned before = t->answers;
	int r;

	cc->t = t;
	cc->kind = kind;
	if (kind == CALL_SIDE_CANCEL)
		t->side_in_flight = 1;
	else
		t->in_flight = 1;
	tether_debug("tasks", "task %lld: %s", (long long)t->id, call_method[kind]);
	r = srv_target_call(g->s, t->target, call_method[kind], params, timeout_ms, on_answer, cc);
	if (r < 0 && t->answers == before) {   /* refused without calling back */
		tether_error e;
		tether_err_set(&e, r, r == TETHER_ERR_NOT_FOUND ? TETHER_CAT_NOT_FOUND : TETHER_CAT_INTERNAL,
		               "cannot send %s to target %s: %s", call_method[kind], t->target,
		               tether_err_str(r));
		handle_answer(cc, NULL, &e);
	}
}

static json_t *ticket_params(task *t)
{
	return json_pack("{s:s}", "ticket", t->ticket);
}

static void task_step(task *t)
{
	json_t *p;

	if (!g || t->detached || t->in_flight)
		return;
	uv_timer_stop(&t->timer);
	if (!t->acked || (!t->agent_ended && t->cancel_requested && !t->cancel_sent)) {
		if (t->cancel_requested) {
			p = ticket_params(t);
			json_object_set_new(p, "grace_ms", json_integer(CANCEL_GRACE_MS));
			send_call(t, CALL_CANCEL, p, CANCEL_GRACE_MS + CALL_MARGIN_MS);
			return;
		}
		p = json_deep_copy(t->command);
		json_object_set_new(p, "ticket", json_string(t->ticket));
		json_object_set_new(p, "wait_ms", json_integer(START_WAIT_MS));
		send_call(t, CALL_START, p, START_WAIT_MS + CALL_MARGIN_MS);
		return;
	}
	if (!t->agent_ended) {
		uint32_t wait = t->more ? 0 : STATUS_WAIT_MS;
		p = ticket_params(t);
		if (t->has_agent_seq)
			json_object_set_new(p, "after_seq", json_integer((json_int_t)t->agent_seq));
		json_object_set_new(p, "wait_ms", json_integer(wait));
		json_object_set_new(p, "max_bytes", json_integer(STATUS_MAX_BYTES));
		send_call(t, CALL_STATUS, p, wait + CALL_MARGIN_MS);
		return;
	}
	send_call(t, CALL_COMPLETE, ticket_params(t), CALL_MARGIN_MS);
}

/* 1 if err means the request never left (the connection could not be
 * made): retrying cannot have run anything twice, and failing is safe. */
static int never_sent(const tether_error *err)
{
	if (err->code == TETHER_ERR_NOT_FOUND || err->code == TETHER_ERR_UNSUPPORTED ||
	    err->code == TETHER_ERR_INVALID)
		return 1;
	/* a polling target that did not connect within [polling] wait (the
	 * daemon reports it as a timeout, but nothing was sent) */
	if (err->code == TETHER_ERR_TIMEOUT && strstr(err->detail, " is not connected "))
		return 1;
	switch (err->category) {
	case TETHER_CAT_CONNECTION_REFUSED:
	case TETHER_CAT_DNS_FAILURE:
	case TETHER_CAT_UNTRUSTED:
	case TETHER_CAT_PROTOCOL_VERSION:
	case TETHER_CAT_NO_SHARED_CIPHER:
	case TETHER_CAT_NO_SHARED_GROUP:
	case TETHER_CAT_NO_SHARED_SIGALG:
	case TETHER_CAT_PEER_NO_CERTIFICATE:
	case TETHER_CAT_NOT_TLS:
	case TETHER_CAT_HANDSHAKE:
	case TETHER_CAT_CLONED_IDENTITY:
	case TETHER_CAT_SHA1_REJECTED:
		return 1;
	default:
		return 0;
	}
}

static void task_retry(task *t, const char *category, const char *message)
{
	uint64_t waited = tether_now_ms() - t->contact_ms;

	if (waited / 1000 >= g->give_up_s) {
		task_fail(t, category, "gave up after %u s without an answer from the agent: %s; the "
		          "script may still have run: its output stays on the agent until the agent's "
		          "retention removes it", g->give_up_s, message);
		return;
	}
	t->backoff_ms = t->backoff_ms ? t->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (t->backoff_ms > BACKOFF_MAX_MS)
		t->backoff_ms = BACKOFF_MAX_MS;
	if (strcmp(t->retry_error, message))
		log_warn("task %lld on %s: %s (%s): retrying in %u s", (long long)t->id, t->target,
		         message, category, t->backoff_ms / 1000);
	snprintf(t->retry_error, sizeof(t->retry_error), "%s", message);
	snprintf(t->retry_category, sizeof(t->retry_category), "%s", category);
	task_kick(t, t->backoff_ms);
}

static int parse_state(const char *s)
{
	static const char *const known[] = { "queued", "running", "finished", "cancelled",
		                             "timed_out", "unknown", NULL };
	int i;

	for (i = 0; s && known[i]; i++)
		if (!strcmp(s, known[i]))
			return i;
	return -1;
}

/* A status-shaped answer (start, status, cancel). */
static void handle_status(task *t, enum call_kind kind, json_t *res)
{
	const char *state = json_string_value(json_object_get(res, "state"));
	json_t *output = json_object_get(res, "output"), *ec = json_object_get(res, "exit_code"), *v;
	int more = json_is_true(json_object_get(res, "more"));
	task_out *recs = NULL;
	task_update u;
	tether_error e;
	size_t n = 0, i, stored = 0;
	int final, ending;

	memset(&u, 0, sizeof(u));
	memset(&e, 0, sizeof(e));
	if (parse_state(state) < 0) {
		task_fail(t, "internal", "the agent answered %s with an unknown state '%s': it may "
		          "speak another version of the script service", call_method[kind],
		          state ? state : "(none)");
		return;
	}
	if (output && !json_is_array(output)) {
		task_fail(t, "internal", "the agent's answer to %s has no output list",
		          call_method[kind]);
		return;
	}
	if (json_array_size(output) > OUTPUT_RECORDS_MAX) {
		task_fail(t, "internal", "the agent's answer to %s has %zu output records (at most %d)",
		          call_method[kind], json_array_size(output), OUTPUT_RECORDS_MAX);
		return;
	}
	recs = tether_xcalloc(json_array_size(output) + 1, sizeof(*recs));
	json_array_foreach(output, i, v) {
		if (task_out_from_json(v, &recs[n], &e) < 0) {
			task_out_free(recs, n);
			task_fail(t, "internal", "the agent's answer to %s: %s", call_method[kind], e.detail);
			return;
		}
		n++;
	}
	final = parse_state(state) >= 2;
	if (final && !more) {
		u.state = state;
		if (json_is_integer(ec)) {
			u.has_exit_code = 1;
			u.exit_code = (int)json_integer_value(ec);
		}
		u.ended = json_object_get(res, "ended");
	} else {
		u.state = final ? "running" : state;
	}
	u.started = json_object_get(res, "started");
	/* The end (final state, exit code, last records) is answered to the
	 * caller waiting on this task (exec's task.create or task.poll) from
	 * the open transaction, and committed (fdatasync) right after: the
	 * caller does not wait for the disk, and script.complete, which lets
	 * the agent forget the ticket, is only sent once the end is durable
	 * here.  Should the commit fail, or the machine stop before it, the
	 * agent still holds the ticket and the end is fetched again. */
	ending = final && !more;
	if ((ending ? task_store_ingest_open(g->store, t->id, recs, n, &u, &stored, &e)
	            : task_store_ingest(g->store, t->id, recs, n, &u, &stored, &e)) < 0) {
		task_out_free(recs, n);
		log_error("task %lld: %s", (long long)t->id, e.detail);
		task_retry(t, "io", e.detail);
		return;
	}
	if (ending) {
		wake_waiters(t->id);
		if (task_store_commit(g->store, &e) < 0) {
			task_out_free(recs, n);
			log_error("task %lld: %s", (long long)t->id, e.detail);
			task_retry(t, "io", e.detail);   /* agent_seq unchanged: asked again */
			return;
		}
	}
	for (i = 0; i < n; i++) {
		if (!t->has_agent_seq || recs[i].seq > t->agent_seq) {
			t->agent_seq = recs[i].seq;
			t->has_agent_seq = 1;
		}
	}
	task_out_free(recs, n);
	t->acked = 1;
	t->more = more;
	if (kind == CALL_CANCEL)
		t->cancel_sent = 1;
	if (ending)
		t->agent_ended = 1;
	else
		wake_waiters(t->id);
	task_step(t);
}

static const char *agent_category(const tether_rpc_response *resp)
{
	if (resp->category[0])
		return resp->category;
	if (!strcmp(resp->code, TETHER_RPC_ERR_UNKNOWN_METHOD))
		return "unsupported";
	if (!strcmp(resp->code, TETHER_RPC_ERR_INVALID_PARAMS))
		return "bad_input";
	if (!strcmp(resp->code, TETHER_RPC_ERR_FORBIDDEN))
		return "permission_denied";
	if (!strcmp(resp->code, TETHER_RPC_ERR_NOT_FOUND))
		return "not_found";
	return "internal";
}

static void handle_agent_error(task *t, enum call_kind kind, const tether_rpc_response *resp)
{
	const char *m = call_method[kind];

	if (!strcmp(resp->code, TETHER_RPC_ERR_BUSY) || !strcmp(resp->code, TETHER_RPC_ERR_SHUTTING_DOWN) ||
	    !strcmp(resp->code, TETHER_RPC_ERR_TIMEOUT)) {
		char msg[TETHER_ERROR_DETAIL_MAX];
		snprintf(msg, sizeof(msg), "the agent answered %s with %s: %s", m, resp->code, resp->message);
		task_retry(t, resp->category[0] ? resp->category : "busy", msg);
		return;
	}
	if (!strcmp(resp->code, TETHER_RPC_ERR_UNKNOWN_METHOD)) {
		task_fail(t, "unsupported", "the agent of target %s does not run scripts (%s is unknown "
		          "to it): turn its script service on ([services] script = on) or upgrade it",
		          t->target, m);
		return;
	}
	if (!strcmp(resp->code, TETHER_RPC_ERR_NOT_FOUND)) {
		if (kind == CALL_COMPLETE) {
			task_store_set_completed(g->store, t->id, NULL);
			task_detach(t);
			return;
		}
		if (kind == CALL_CANCEL && !t->acked) {
			/* cancelled before the agent ever had it: nothing ran */
			task_update u;
			memset(&u, 0, sizeof(u));
			u.state = "cancelled";
			u.has_exit_code = 1;
			u.exit_code = 130;
			task_end_local(t, &u);
			return;
		}
		task_fail(t, "not_found", "the agent no longer knows ticket %s (%s: %s): its work "
		          "directory was removed (retention) or its state was reset; the output stored "
		          "so far is kept", t->ticket, m, resp->message);
		return;
	}
	task_fail(t, agent_category(resp), "the agent refused %s: %s", m, resp->message);
}

static void handle_answer(call_ctx *cc, const tether_rpc_response *resp, const tether_error *err)
{
	task *t = cc->t;
	enum call_kind kind = cc->kind;

	t->answers++;
	free(cc);
	if (kind == CALL_SIDE_CANCEL) {
		t->side_in_flight = 0;
		if (t->detached) {
			task_maybe_free(t);
			return;
		}
		/* the main sequence sees the result; on failure it sends the
		 * cancel itself */
		if (resp && !resp->is_error)
			t->cancel_sent = 1;
		return;
	}
	t->in_flight = 0;
	if (t->detached || !g) {
		task_maybe_free(t);
		return;
	}
	if (!resp) {
		const char *cat = tether_category_name(err->category ? err->category : TETHER_CAT_INTERNAL);
		if (never_sent(err) && !t->maybe_sent && !t->acked) {
			task_fail(t, cat, "%s", err->detail[0] ? err->detail : tether_err_str(err->code));
			return;
		}
		if (kind == CALL_START && !never_sent(err))
			t->maybe_sent = 1;
		task_retry(t, cat, err->detail[0] ? err->detail : tether_err_str(err->code));
		return;
	}
	if (resp->is_error) {
		handle_agent_error(t, kind, resp);
		return;
	}
	t->contact_ms = tether_now_ms();
	t->backoff_ms = 0;
	t->retry_error[0] = '\0';
	t->retry_category[0] = '\0';
	if (kind == CALL_COMPLETE) {
		tether_error e;
		memset(&e, 0, sizeof(e));
		if (task_store_set_completed(g->store, t->id, &e) < 0)
			log_error("task %lld: %s", (long long)t->id, e.detail);
		tether_debug("tasks", "task %lld: ticket %s completed", (long long)t->id, t->ticket);
		task_detach(t);
		return;
	}
	if (!json_is_object(resp->result)) {
		task_fail(t, "internal", "the agent answered %s without a result object", call_method[kind]);
		return;
	}
	handle_status(t, kind, resp->result);
}

static void on_answer(void *arg, const tether_rpc_response *resp, const tether_error *err)
{
	handle_answer(arg, resp, err);
}

/* ------------------------------------------------------------------ */
/* JSON for the admin methods                                          */
/* ------------------------------------------------------------------ */

static json_t *task_json(const task_rec *r)
{
	json_t *j = json_object(), *cmd;
	json_error_t jerr;
	char created[32];
	task *t = task_find(r->id);

	tether_iso8601(r->created, created, sizeof(created));
	cmd = json_loads(r->command, 0, &jerr);
	json_object_set_new(j, "id", json_integer((json_int_t)r->id));
	json_object_set_new(j, "target", json_string(r->target));
	json_object_set_new(j, "ticket", json_string(r->ticket));
	json_object_set_new(j, "command", cmd ? cmd : json_null());
	json_object_set_new(j, "state", json_string(r->state));
	json_object_set_new(j, "exit_code", r->has_exit_code ? json_integer(r->exit_code) : json_null());
	json_object_set_new(j, "created", json_string(created));
	json_object_set(j, "started", r->started ? r->started : json_null());
	json_object_set(j, "ended", r->ended ? r->ended : json_null());
	if (r->error)
		json_object_set_new(j, "error", json_string(r->error));
	if (r->category)
		json_object_set_new(j, "category", json_string(r->category));
	json_object_set_new(j, "records", json_integer((json_int_t)(r->next_seq - 1)));
	json_object_set_new(j, "cancel_requested", json_boolean(r->cancel_requested));
	if (t && t->retry_error[0] && !task_state_final(r->state))
		json_object_set_new(j, "retrying", json_pack("{s:s, s:s}", "error", t->retry_error,
		                                              "category", t->retry_category));
	return j;
}

/* The task.poll / task.logs answer. */
static int poll_result(int64_t id, int64_t after_seq, size_t max_bytes, json_t **out,
                       tether_error *err)
{
	task_rec r;
	task_out *recs = NULL;
	size_t n = 0, i;
	int more = 0, rc;
	json_t *j, *arr;
	int64_t next = after_seq;

	if ((rc = task_store_get(g->store, id, &r, err)) < 0)
		return rc;
	if ((rc = task_store_output(g->store, id, after_seq, max_bytes, &recs, &n, &more, err)) < 0) {
		task_rec_clear(&r);
		return rc;
	}
	j = task_json(&r);
	json_object_del(j, "command");
	arr = json_array();
	for (i = 0; i < n; i++) {
		json_array_append_new(arr, task_out_to_json(&recs[i]));
		next = recs[i].seq;
	}
	json_object_set_new(j, "output", arr);
	json_object_set_new(j, "next_seq", json_integer((json_int_t)next));
	json_object_set_new(j, "more", json_boolean(more));
	task_out_free(recs, n);
	task_rec_clear(&r);
	*out = j;
	return 0;
}

/* ------------------------------------------------------------------ */
/* task.poll waiters                                                   */
/* ------------------------------------------------------------------ */

static void on_waiter_closed(uv_handle_t *h)
{
	pollw *w = h->data;
	json_decref(w->create_res);
	free(w);
}

/* The answer of w: the poll result, or task.create's answer holding it. */
static void waiter_reply(pollw *w, json_t *res)
{
	if (!w->create_res) {
		admin_reply(w->call, res);
		return;
	}
	if (res)
		json_object_set_new(w->create_res, "poll", res);
	admin_reply(w->call, w->create_res);
	w->create_res = NULL;
}

static void waiter_answer(pollw *w)
{
	tether_error e;
	json_t *res = NULL;

	if (w->prev)
		w->prev->next = w->next;
	else if (g)
		g->waiters = w->next;
	if (w->next)
		w->next->prev = w->prev;
	memset(&e, 0, sizeof(e));
	if (!g)
		admin_reply_error(w->call, "the tether-server daemon is stopping: the task continues "
		                  "when it runs again; follow it with 'tether-server task logs'", "busy");
	else if (poll_result(w->id, w->after_seq, w->max_bytes, &res, &e) < 0 && !w->create_res)
		admin_reply_tether_error(w->call, &e);
	else
		waiter_reply(w, res);   /* task.create: the tasks exist; without "poll" on error */
	uv_timer_stop(&w->timer);
	if (!uv_is_closing((uv_handle_t *)&w->timer))
		uv_close((uv_handle_t *)&w->timer, on_waiter_closed);
}

static void on_waiter_timer(uv_timer_t *tm)
{
	waiter_answer(tm->data);
}

static void wake_waiters(int64_t id)
{
	pollw *w, *next;

	for (w = g ? g->waiters : NULL; w; w = next) {
		next = w->next;
		if (w->id == id)
			waiter_answer(w);
	}
}

/* Answer call once task id has records after after_seq, has ended, or
 * wait_ms passed: with the poll result, or with create_res (task.create's
 * answer, stolen) holding it as "poll". */
static void waiter_start(admin_call *call, int64_t id, int64_t after, size_t max_bytes,
                         uint64_t wait_ms, json_t *create_res)
{
	pollw *w = tether_xcalloc(1, sizeof(*w));

	w->call = call;
	w->id = id;
	w->after_seq = after;
	w->max_bytes = max_bytes;
	w->create_res = create_res;
	uv_timer_init(srv_loop(g->s), &w->timer);
	w->timer.data = w;
	w->next = g->waiters;
	if (g->waiters)
		g->waiters->prev = w;
	g->waiters = w;
	uv_timer_start(&w->timer, on_waiter_timer, wait_ms, 0);
}

/* ------------------------------------------------------------------ */
/* Admin methods                                                       */
/* ------------------------------------------------------------------ */

static void bad(admin_call *call, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bad(admin_call *call, const char *fmt, ...)
{
	char msg[TETHER_ERROR_DETAIL_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	admin_reply_error(call, msg, "bad_input");
}

static void audit(admin_call *call, const char *what, const char *target, const char *category,
                  const char *message)
{
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (tether_audit_write(srv_audit(g->s), admin_call_user(call), what, target,
	                       message ? "error" : "ok", category, message, &e) < 0)
		log_error("tasks: %s", e.detail);
}

static int id_param(admin_call *call, const char *m, json_t *params, int64_t *id)
{
	json_t *v = json_object_get(params, "id");

	if (!json_is_integer(v) || json_integer_value(v) < 1) {
		bad(call, "%s needs the parameter \"id\" (a task number)", m);
		return -1;
	}
	*id = (int64_t)json_integer_value(v);
	return 0;
}

static int int_param(admin_call *call, const char *m, json_t *params, const char *key,
                     json_int_t min, json_int_t max, json_int_t def, json_int_t *out)
{
	json_t *v = json_object_get(params, key);

	if (!v || json_is_null(v)) {
		*out = def;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
		bad(call, "%s: parameter \"%s\" must be an integer from %lld to %lld", m, key,
		    (long long)min, (long long)max);
		return -1;
	}
	*out = json_integer_value(v);
	return 0;
}

static void make_ticket(char out[TASK_TICKET_HEX])
{
	unsigned char b[16];
	size_t got = 0;

	while (got < sizeof(b)) {
		ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			abort();  /* the kernel's random source does not fail after boot */
		got += (size_t)n;
	}
	tether_hex(b, sizeof(b), out);
}

/* Validate the command part of task.create; *out: the script.start
 * parameters (without ticket and wait_ms). */
static int command_param(admin_call *call, json_t *params, json_t **out)
{
	const char *M = "task.create";
	json_t *argv = json_object_get(params, "argv"), *script = json_object_get(params, "script");
	json_t *shell = json_object_get(params, "shell"), *env = json_object_get(params, "env");
	json_t *cwd = json_object_get(params, "cwd"), *iso = json_object_get(params, "isolation");
	json_t *cmd, *v;
	json_int_t timeout;
	const char *k;
	char *dump;
	size_t i, len;

	if ((argv != NULL) == (script != NULL)) {
		bad(call, "%s needs either \"argv\" (a command and its arguments) or \"script\" "
		    "(script text), not both", M);
		return -1;
	}
	cmd = json_object();
	if (argv) {
		if (!json_is_array(argv) || json_array_size(argv) == 0) {
			bad(call, "%s: \"argv\" must be a non-empty array of strings", M);
			goto bad;
		}
		json_array_foreach(argv, i, v) {
			if (!json_is_string(v) || (i == 0 && !json_string_length(v))) {
				bad(call, "%s: \"argv\" must hold strings (the command first, not empty)", M);
				goto bad;
			}
		}
		json_object_set(cmd, "argv", argv);
	} else {
		if (!json_is_string(script)) {
			bad(call, "%s: \"script\" must be a string (the script's text)", M);
			goto bad;
		}
		if (shell && !json_is_null(shell) && (!json_is_string(shell) || !json_string_length(shell))) {
			bad(call, "%s: \"shell\" must be a shell name such as sh or bash", M);
			goto bad;
		}
		json_object_set(cmd, "script", script);
		if (json_is_string(shell)) /* else the agent's default shell */
			json_object_set(cmd, "shell", shell);
	}
	if (env && !json_is_null(env)) {
		if (!json_is_object(env)) {
			bad(call, "%s: \"env\" must be an object of NAME: value strings", M);
			goto bad;
		}
		json_object_foreach(env, k, v) {
			if (!*k || strchr(k, '=') || !json_is_string(v)) {
				bad(call, "%s: environment variable '%s' is not valid: names are not empty and "
				    "have no '=', values are strings", M, k);
				goto bad;
			}
		}
		if (json_object_size(env))
			json_object_set(cmd, "env", env);
	}
	if (cwd && !json_is_null(cwd)) {
		if (!json_is_string(cwd) || !json_string_length(cwd)) {
			bad(call, "%s: \"cwd\" must be a directory path", M);
			goto bad;
		}
		json_object_set(cmd, "cwd", cwd);
	}
	if (int_param(call, M, params, "timeout_s", 0, 30LL * 24 * 3600, 0, &timeout) < 0)
		goto bad;
	if (timeout)
		json_object_set_new(cmd, "timeout_s", json_integer(timeout));
	if (iso && !json_is_null(iso)) {
		if (!json_is_string(iso) || registry_name_ok(json_string_value(iso), "isolation name", NULL) < 0) {
			bad(call, "%s: the isolation name must be 1 to %d letters, digits, '_', '.' or '-'",
			    M, REG_NAME_MAX);
			goto bad;
		}
		json_object_set(cmd, "isolation", iso);
	}
	dump = json_dumps(cmd, JSON_COMPACT);
	len = dump ? strlen(dump) : 0;
	free(dump);
	if (len > COMMAND_MAX) {
		bad(call, "%s: the command is too large (%zu bytes of JSON, at most %d): copy large "
		    "scripts to the target with 'tether-server upload' and run them from there",
		    M, len, COMMAND_MAX);
		goto bad;
	}
	*out = cmd;
	return 0;
bad:
	json_decref(cmd);
	return -1;
}

/* The target names of task.create, checked against the registry. */
static int targets_param(admin_call *call, json_t *params, char ***names, size_t *n)
{
	const char *M = "task.create";
	json_t *targets = json_object_get(params, "targets"), *v;
	const char *tag = json_string_value(json_object_get(params, "tag"));
	registry *reg = srv_registry(g->s);
	reg_target t, *list = NULL;
	tether_error e;
	char **out = NULL;
	size_t i, cnt = 0, k;

	memset(&e, 0, sizeof(e));
	if ((targets && json_array_size(targets)) && tag) {
		bad(call, "%s: give target names or a tag, not both", M);
		return -1;
	}
	if (tag) {
		if (registry_target_list(reg, tag, &list, &cnt, &e) < 0) {
			admin_reply_tether_error(call, &e);
			return -1;
		}
		if (!cnt) {
			admin_reply_error(call, "no target has this tag: 'tether-server target list' shows "
			                  "the targets and their tags", "not_found");
			return -1;
		}
		if (cnt > CREATE_TARGETS_MAX) {
			reg_target_list_free(list, cnt);
			bad(call, "%s: the tag names %zu targets, at most %d at once", M, cnt, CREATE_TARGETS_MAX);
			return -1;
		}
		out = tether_xcalloc(cnt, sizeof(*out));
		for (i = 0; i < cnt; i++)
			out[i] = tether_strdup(list[i].name);
		reg_target_list_free(list, cnt);
		*names = out;
		*n = cnt;
		return 0;
	}
	if (!json_is_array(targets) || !json_array_size(targets)) {
		bad(call, "%s needs \"targets\" (a list of target names) or \"tag\"", M);
		return -1;
	}
	if (json_array_size(targets) > CREATE_TARGETS_MAX) {
		bad(call, "%s: %zu targets given, at most %d at once", M, json_array_size(targets),
		    CREATE_TARGETS_MAX);
		return -1;
	}
	out = tether_xcalloc(json_array_size(targets), sizeof(*out));
	json_array_foreach(targets, i, v) {
		const char *name = json_string_value(v);
		if (!name) {
			bad(call, "%s: target names must be strings", M);
			goto fail;
		}
		for (k = 0; k < cnt; k++)
			if (!strcmp(out[k], name))
				break;
		if (k < cnt)
			continue;   /* named twice: once is enough */
		if (registry_name_ok(name, "target name", &e) < 0 ||
		    registry_target_get(reg, name, &t, &e) < 0) {
			admin_reply_tether_error(call, &e);
			goto fail;
		}
		reg_target_clear(&t);
		out[cnt++] = tether_strdup(name);
	}
	*names = out;
	*n = cnt;
	return 0;
fail:
	for (k = 0; k < cnt; k++)
		free(out[k]);
	free(out);
	return -1;
}

static void m_create(admin_call *call, json_t *params)
{
	json_t *cmd = NULL, *res, *arr;
	char **names = NULL, *cmd_text = NULL;
	size_t n = 0, i;
	int64_t *ids = NULL;
	tether_error e;
	sqlite3 *db = registry_db(srv_registry(g->s));
	int r = 0, rc;
	const char *M = "task.create";
	json_int_t wait, maxb;

	memset(&e, 0, sizeof(e));
	/* a refusal is audited by the admin layer when it is answered */
	admin_call_set_audit(call, srv_audit(g->s));
	if (int_param(call, M, params, "wait_ms", 0, POLL_WAIT_MAX_MS, 0, &wait) < 0 ||
	    int_param(call, M, params, "max_bytes", 1, 16 * 1024 * 1024, POLL_MAX_BYTES, &maxb) < 0)
		return;
	if (command_param(call, params, &cmd) < 0)
		return;
	if (targets_param(call, params, &names, &n) < 0) {
		json_decref(cmd);
		return;
	}
	cmd_text = json_dumps(cmd, JSON_COMPACT);
	ids = tether_xcalloc(n, sizeof(*ids));
	/* all the tasks in one transaction: one fsync, and all or none */
	if ((rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK) {
		registry_db_fail(db, rc, &e, "record the tasks");
		r = -1;
	}
	for (i = 0; r == 0 && i < n; i++) {
		char ticket[TASK_TICKET_HEX];
		make_ticket(ticket);
		r = task_store_create(g->store, names[i], ticket, cmd_text, &ids[i], &e);
	}
	if (r == 0 && (rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		registry_db_fail(db, rc, &e, "record the tasks");
		r = -1;
	}
	if (r < 0) {
		if (!sqlite3_get_autocommit(db))
			sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
		admin_reply_tether_error(call, &e);
		goto out;
	}
	admin_call_set_audit(call, NULL);   /* one record per task instead */
	arr = json_array();
	for (i = 0; i < n; i++) {
		task_rec rec;
		if (task_store_get(g->store, ids[i], &rec, &e) == 0) {
			task *t = task_new(&rec);
			task_kick(t, 0);
			task_rec_clear(&rec);
		}
		audit(call, "task.create", names[i], NULL, NULL);
		json_array_append_new(arr, json_pack("{s:I, s:s}", "id", (json_int_t)ids[i],
		                                     "target", names[i]));
		log_info("task %lld: %s on %s for %s", (long long)ids[i],
		         json_object_get(cmd, "argv") ? "command" : "script", names[i], admin_call_user(call));
	}
	res = json_object();
	json_object_set_new(res, "tasks", arr);
	if (wait > 0 && n == 1) {
		/* follow it in this call, as task.poll {id, after_seq 0, wait_ms} */
		task_rec rec;
		int now = 1;
		json_t *first = NULL;
		if (task_store_get(g->store, ids[0], &rec, &e) == 0) {
			now = task_state_final(rec.state) || rec.next_seq > 1;
			task_rec_clear(&rec);
		}
		if (!now) {
			waiter_start(call, ids[0], 0, (size_t)maxb, (uint64_t)wait, res);
			goto out;
		}
		if (poll_result(ids[0], 0, (size_t)maxb, &first, &e) == 0)
			json_object_set_new(res, "poll", first);
	}
	admin_reply(call, res);
out:
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(ids);
	free(cmd_text);
	json_decref(cmd);
}

static void m_poll(admin_call *call, json_t *params, int may_wait)
{
	const char *M = may_wait ? "task.poll" : "task.logs";
	json_int_t after, wait = 0, maxb;
	int64_t id;
	task_rec r;
	tether_error e;
	json_t *res = NULL;
	int ended, news;

	memset(&e, 0, sizeof(e));
	if (id_param(call, M, params, &id) < 0 ||
	    int_param(call, M, params, "after_seq", 0, INT64_MAX, 0, &after) < 0 ||
	    int_param(call, M, params, "max_bytes", 1, 16 * 1024 * 1024, POLL_MAX_BYTES, &maxb) < 0 ||
	    (may_wait && int_param(call, M, params, "wait_ms", 0, POLL_WAIT_MAX_MS, 0, &wait) < 0))
		return;
	if (task_store_get(g->store, id, &r, &e) < 0) {
		admin_reply_tether_error(call, &e);
		return;
	}
	ended = task_state_final(r.state);
	news = r.next_seq - 1 > after;
	task_rec_clear(&r);
	/* nothing new: wait for output, the end, or wait_ms */
	if (!ended && wait > 0 && !news) {
		waiter_start(call, id, after, (size_t)maxb, (uint64_t)wait, NULL);
		return;
	}
	if (poll_result(id, after, (size_t)maxb, &res, &e) < 0)
		admin_reply_tether_error(call, &e);
	else
		admin_reply(call, res);
}

static void m_list(admin_call *call, json_t *params)
{
	json_t *tv = json_object_get(params, "target"), *arr, *res;
	json_int_t limit;
	task_rec *v = NULL;
	size_t n = 0, i;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (tv && !json_is_null(tv) && !json_is_string(tv)) {
		bad(call, "task.list: \"target\" must be a target name");
		return;
	}
	if (int_param(call, "task.list", params, "limit", 1, 100000, 50, &limit) < 0)
		return;
	if (task_store_list(g->store, json_string_value(tv), (unsigned)limit, &v, &n, &e) < 0) {
		admin_reply_tether_error(call, &e);
		return;
	}
	arr = json_array();
	for (i = 0; i < n; i++)
		json_array_append_new(arr, task_json(&v[i]));
	task_rec_list_free(v, n);
	res = json_object();
	json_object_set_new(res, "tasks", arr);
	admin_reply(call, res);
}

static void m_show(admin_call *call, json_t *params)
{
	int64_t id;
	task_rec r;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (id_param(call, "task.show", params, &id) < 0)
		return;
	if (task_store_get(g->store, id, &r, &e) < 0) {
		admin_reply_tether_error(call, &e);
		return;
	}
	admin_reply(call, task_json(&r));
	task_rec_clear(&r);
}

static void m_cancel(admin_call *call, json_t *params)
{
	int64_t id;
	task_rec r;
	tether_error e;
	task *t;
	json_t *res;

	memset(&e, 0, sizeof(e));
	/* a refusal is audited by the admin layer when it is answered */
	admin_call_set_audit(call, srv_audit(g->s));
	if (id_param(call, "task.cancel", params, &id) < 0)
		return;
	if (task_store_get(g->store, id, &r, &e) < 0) {
		admin_reply_tether_error(call, &e);
		return;
	}
	admin_call_set_audit(call, NULL);   /* audited below, with the target */
	if (task_state_final(r.state)) {
		audit(call, "task.cancel", r.target, NULL, NULL);
		admin_reply(call, task_json(&r));
		task_rec_clear(&r);
		return;
	}
	if (task_store_set_cancel_requested(g->store, id, &e) < 0) {
		audit(call, "task.cancel", r.target, tether_category_name(e.category), e.detail);
		admin_reply_tether_error(call, &e);
		task_rec_clear(&r);
		return;
	}
	audit(call, "task.cancel", r.target, NULL, NULL);
	log_info("task %lld on %s: cancel requested by %s", (long long)id, r.target,
	         admin_call_user(call));
	t = task_find(id);
	if (t && !t->cancel_requested) {
		t->cancel_requested = 1;
		if (t->in_flight && t->acked && !t->agent_ended && !t->side_in_flight) {
			/* a long poll is in flight: don't wait for it */
			json_t *p = ticket_params(t);
			json_object_set_new(p, "grace_ms", json_integer(CANCEL_GRACE_MS));
			send_call(t, CALL_SIDE_CANCEL, p, CANCEL_GRACE_MS + CALL_MARGIN_MS);
		} else if (!t->in_flight) {
			t->backoff_ms = 0;
			task_kick(t, 0);
		}
	}
	task_rec_clear(&r);
	if (task_store_get(g->store, id, &r, &e) < 0) {
		admin_reply_tether_error(call, &e);
		return;
	}
	res = task_json(&r);
	task_rec_clear(&r);
	admin_reply(call, res);
}

static int tasks_admin(srv *s, admin_call *call, const char *method, json_t *params)
{
	(void)s;
	if (strncmp(method, "task.", 5))
		return 0;
	if (!g) {
		admin_reply_error(call, "remote execution is not available: the task module did not "
		                  "start (see the daemon's log)", "unsupported");
		return 1;
	}
	if (!strcmp(method, "task.create"))
		m_create(call, params);
	else if (!strcmp(method, "task.poll"))
		m_poll(call, params, 1);
	else if (!strcmp(method, "task.logs"))
		m_poll(call, params, 0);
	else if (!strcmp(method, "task.list"))
		m_list(call, params);
	else if (!strcmp(method, "task.show"))
		m_show(call, params);
	else if (!strcmp(method, "task.cancel"))
		m_cancel(call, params);
	else
		admin_reply_error(call, "unknown task method: use task.create, task.poll, task.logs, "
		                  "task.list, task.show or task.cancel", "unknown_method");
	return 1;
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */
/* ------------------------------------------------------------------ */

static int tasks_start(srv *s, tether_error *err)
{
	task_rec *v = NULL;
	size_t n = 0, i;
	int r;

	g = tether_xcalloc(1, sizeof(*g));
	g->s = s;
	g->give_up_s = TASKS_GIVE_UP_S;
	r = task_store_open(registry_db(srv_registry(s)), &g->store, err);
	if (r < 0)
		goto fail;
	r = task_store_unfinished(g->store, &v, &n, err);
	if (r < 0)
		goto fail;
	for (i = 0; i < n; i++) {
		task *t = task_new(&v[i]);
		t->maybe_sent = 1;      /* we can't know whether the last start got there */
		task_kick(t, 0);
	}
	if (n)
		log_info("tasks: resuming %zu unfinished task%s", n, n == 1 ? "" : "s");
	task_rec_list_free(v, n);
	return 0;
fail:
	task_store_close(g->store);
	free(g);
	g = NULL;
	return r;
}

static void tasks_stop(srv *s)
{
	tasks_mod *m = g;
	(void)s;

	if (!m)
		return;
	/* long polls get what there is now; the CLI then finds the daemon
	 * gone and waits for it to come back */
	while (m->waiters)
		waiter_answer(m->waiters);
	g = NULL;               /* answers arriving from now on only free their task */
	while (m->tasks) {
		task *t = m->tasks;
		m->tasks = t->next;
		if (m->tasks)
			m->tasks->prev = NULL;
		t->next = t->prev = NULL;
		task_detach(t);
	}
	task_store_close(m->store);
	free(m);
}

const srv_module srv_module_tasks = { "tasks", tasks_start, tasks_admin, tasks_stop };
