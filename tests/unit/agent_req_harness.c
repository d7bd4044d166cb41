/* An in-process implementation of agent/service.h's agent_req contract for
 * unit tests (see agent_req_harness.h). */
#include "config.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "agent_req_harness.h"
#include "rpc.h"
#include "util.h"

#define WINDOW (1024 * 1024)
#define FRAME_MAX (256 * 1024)

typedef struct job {
	struct job *next;
	void (*fn)(harness_loop *hl, void *arg);
	void *arg;
} job;

struct harness_loop {
	uv_loop_t loop;
	uv_async_t async;
	uv_thread_t thread;
	pthread_t tid;
	pthread_mutex_t lock;           /* jobs, and every call's shared fields */
	pthread_cond_t cond;
	job *jobs, **tail;
	int running;
};

struct agent_req {
	harness_call *c;
	uv_loop_t *loop;
	pthread_t tid;
	void *data;
	int in_handler;
};

struct harness_call {
	harness_loop *hl;
	const agent_service *svc;
	agent_req *r;
	char method[TETHER_RPC_METHOD_MAX + 1];
	char server[65];
	json_t *params;
	/* under hl->lock */
	int alive;
	int answered;
	int handled;                    /* handle() returned */
	json_t *result;
	char code[65];
	char message[1100];
	const agent_stream_ops *in_ops, *out_ops;
	size_t in_window, out_window;
	int in_done, out_ended, closed;
	char reset_code[65];
	unsigned char *out;
	size_t out_len, out_cap;
	unsigned char out_sha[32];
	json_t *out_trailer;
};

static void die(const char *what)
{
	fprintf(stderr, "agent_req harness: the service broke the contract of agent/service.h: %s\n",
	        what);
	abort();
}

static void on_jobs(uv_async_t *a)
{
	harness_loop *hl = a->data;
	job *j;

	pthread_mutex_lock(&hl->lock);
	j = hl->jobs;
	hl->jobs = NULL;
	hl->tail = &hl->jobs;
	pthread_mutex_unlock(&hl->lock);
	while (j) {
		job *next = j->next;
		j->fn(hl, j->arg);
		free(j);
		j = next;
	}
}

static void post(harness_loop *hl, void (*fn)(harness_loop *, void *), void *arg)
{
	job *j = tether_xcalloc(1, sizeof(*j));
	j->fn = fn;
	j->arg = arg;
	pthread_mutex_lock(&hl->lock);
	*hl->tail = j;
	hl->tail = &j->next;
	pthread_mutex_unlock(&hl->lock);
	uv_async_send(&hl->async);
}

static void loop_main(void *arg)
{
	harness_loop *hl = arg;
	hl->tid = pthread_self();
	uv_run(&hl->loop, UV_RUN_DEFAULT);
}

harness_loop *harness_loop_new(void)
{
	harness_loop *hl = tether_xcalloc(1, sizeof(*hl));

	if (uv_loop_init(&hl->loop) < 0)
		die("uv_loop_init failed");
	uv_async_init(&hl->loop, &hl->async, on_jobs);
	hl->async.data = hl;
	pthread_mutex_init(&hl->lock, NULL);
	pthread_cond_init(&hl->cond, NULL);
	hl->tail = &hl->jobs;
	hl->running = 1;
	uv_thread_create(&hl->thread, loop_main, hl);
	return hl;
}

uv_loop_t *harness_loop_uv(harness_loop *hl)
{
	return &hl->loop;
}

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void stop_job(harness_loop *hl, void *arg)
{
	(void)arg;
	uv_walk(&hl->loop, close_walk, NULL);
}

void harness_loop_free(harness_loop *hl)
{
	if (!hl)
		return;
	post(hl, stop_job, NULL);
	uv_thread_join(&hl->thread);
	while (hl->jobs) {
		job *j = hl->jobs;
		hl->jobs = j->next;
		free(j);
	}
	uv_run(&hl->loop, UV_RUN_NOWAIT);
	if (uv_loop_close(&hl->loop) != 0)
		die("handles were still open on a stopped loop");
	pthread_mutex_destroy(&hl->lock);
	pthread_cond_destroy(&hl->cond);
	free(hl);
}

/* ------------------------------------------------------------------ */
/* The contract                                                        */
/* ------------------------------------------------------------------ */

static void on_loop_thread(const agent_req *r, const char *fn)
{
	char msg[200];
	if (!pthread_equal(pthread_self(), r->tid)) {
		snprintf(msg, sizeof(msg), "%s called off the request's loop thread", fn);
		die(msg);
	}
}

const char *agent_req_method(const agent_req *r) { return r->c->method; }
json_t *agent_req_params(const agent_req *r) { return r->c->params; }
const char *agent_req_server(const agent_req *r) { return r->c->server; }
const char *agent_req_peer_addr(const agent_req *r) { (void)r; return "127.0.0.1:1"; }
uv_loop_t *agent_req_loop(const agent_req *r) { return r->loop; }
void agent_req_set_data(agent_req *r, void *data) { r->data = data; }
void *agent_req_get_data(const agent_req *r) { return r->data; }

int agent_req_alive(const agent_req *r)
{
	int a;
	pthread_mutex_lock(&r->c->hl->lock);
	a = r->c->alive;
	pthread_mutex_unlock(&r->c->hl->lock);
	return a;
}

static void answered(harness_call *c)
{
	c->answered = 1;
	pthread_cond_broadcast(&c->hl->cond);
}

void agent_req_reply(agent_req *r, json_t *result)
{
	harness_call *c = r->c;
	tether_error err = { 0 };
	unsigned char *frame = NULL;
	size_t len;

	on_loop_thread(r, "agent_req_reply");
	if (!json_is_object(result))
		die("agent_req_reply with a result that is not a JSON object");
	pthread_mutex_lock(&c->hl->lock);
	if (c->answered)
		die("a request answered twice");
	if (tether_rpc_result_encode(1, result, 0, &frame, &len, &err) < 0) {
		/* what the daemon does with a result over the frame limit */
		snprintf(c->code, sizeof(c->code), "%s", TETHER_RPC_ERR_TOO_LARGE);
		snprintf(c->message, sizeof(c->message), "result too large: %s", err.detail);
		json_decref(result);
	} else {
		c->result = result;
	}
	free(frame);
	answered(c);
	pthread_mutex_unlock(&c->hl->lock);
}

void agent_req_error(agent_req *r, const char *code, const char *message, const char *category)
{
	harness_call *c = r->c;
	tether_error err = { 0 };
	unsigned char *frame = NULL;
	size_t len;

	on_loop_thread(r, "agent_req_error");
	if (!code || !tether_rpc_method_valid(code))
		die("agent_req_error with an invalid code (a token [a-z0-9._-]{1,64} is required)");
	if (!message)
		die("agent_req_error with no message");
	if (tether_rpc_error_encode(1, code, message, category, &frame, &len, &err) < 0)
		die("agent_req_error with a message or category that cannot be sent");
	free(frame);
	pthread_mutex_lock(&c->hl->lock);
	if (c->answered)
		die("a request answered twice");
	snprintf(c->code, sizeof(c->code), "%s", code);
	snprintf(c->message, sizeof(c->message), "%s", message);
	answered(c);
	pthread_mutex_unlock(&c->hl->lock);
}

int agent_req_accept_stream(agent_req *r, const agent_stream_ops *ops)
{
	harness_call *c = r->c;

	on_loop_thread(r, "agent_req_accept_stream");
	if (!r->in_handler)
		die("agent_req_accept_stream outside the request's handler");
	if (!ops || !ops->on_data || !ops->on_end || !ops->on_reset)
		die("agent_req_accept_stream without on_data, on_end and on_reset");
	pthread_mutex_lock(&c->hl->lock);
	c->in_ops = ops;
	c->in_window = WINDOW;
	pthread_mutex_unlock(&c->hl->lock);
	return 0;
}

void agent_req_consumed(agent_req *r, size_t n)
{
	harness_call *c = r->c;

	on_loop_thread(r, "agent_req_consumed");
	pthread_mutex_lock(&c->hl->lock);
	c->in_window += n;
	if (c->in_window > 0x7fffffffu)
		die("agent_req_consumed beyond what was received (window over 2^31-1)");
	pthread_cond_broadcast(&c->hl->cond);
	pthread_mutex_unlock(&c->hl->lock);
}

int agent_req_open_stream(agent_req *r, const agent_stream_ops *ops)
{
	harness_call *c = r->c;

	on_loop_thread(r, "agent_req_open_stream");
	if (!ops || !ops->on_writable)
		die("agent_req_open_stream without on_writable");
	pthread_mutex_lock(&c->hl->lock);
	if (c->out_ops)
		die("a second outgoing stream on one request");
	c->out_ops = ops;
	c->out_window = WINDOW;
	pthread_mutex_unlock(&c->hl->lock);
	return 0;
}

ssize_t agent_req_send(agent_req *r, const void *data, size_t len)
{
	harness_call *c = r->c;
	size_t n;

	on_loop_thread(r, "agent_req_send");
	pthread_mutex_lock(&c->hl->lock);
	if (!c->out_ops || c->out_ended)
		die("agent_req_send with no open outgoing stream");
	if (!c->alive || c->closed) {
		pthread_mutex_unlock(&c->hl->lock);
		return -1;
	}
	n = len < c->out_window ? len : c->out_window;
	if (n > FRAME_MAX)
		n = FRAME_MAX;
	if (c->out_len + n > c->out_cap) {
		c->out_cap = (c->out_len + n) * 2;
		c->out = realloc(c->out, c->out_cap);
		if (!c->out)
			abort();
	}
	memcpy(c->out + c->out_len, data, n);
	c->out_len += n;
	c->out_window -= n;
	pthread_cond_broadcast(&c->hl->cond);
	pthread_mutex_unlock(&c->hl->lock);
	return (ssize_t)n;
}

int agent_req_end_stream(agent_req *r, const unsigned char sha256[32], json_t *trailer)
{
	harness_call *c = r->c;

	on_loop_thread(r, "agent_req_end_stream");
	pthread_mutex_lock(&c->hl->lock);
	if (!c->out_ops || c->out_ended)
		die("agent_req_end_stream with no open outgoing stream");
	memcpy(c->out_sha, sha256, 32);
	c->out_trailer = trailer ? json_incref(trailer) : NULL;   /* borrowed */
	c->out_ended = 1;
	pthread_cond_broadcast(&c->hl->cond);
	pthread_mutex_unlock(&c->hl->lock);
	return c->alive ? 0 : -1;
}

int agent_req_reset_stream(agent_req *r, const char *code, const char *message)
{
	harness_call *c = r->c;

	on_loop_thread(r, "agent_req_reset_stream");
	if (!code || !tether_rpc_method_valid(code) || !message)
		die("agent_req_reset_stream with an invalid code or no message");
	pthread_mutex_lock(&c->hl->lock);
	snprintf(c->reset_code, sizeof(c->reset_code), "%s", code);
	c->out_ended = c->in_done = 1;
	pthread_cond_broadcast(&c->hl->cond);
	pthread_mutex_unlock(&c->hl->lock);
	return 0;
}

/* ------------------------------------------------------------------ */
/* The test's side                                                     */
/* ------------------------------------------------------------------ */

static void dispatch_job(harness_loop *hl, void *arg)
{
	harness_call *c = arg;
	agent_req *r = c->r;
	c->r->tid = pthread_self();
	r->in_handler = 1;
	c->svc->handle(r);
	r->in_handler = 0;
	pthread_mutex_lock(&hl->lock);
	c->handled = 1;
	pthread_cond_broadcast(&hl->cond);
	pthread_mutex_unlock(&hl->lock);
}

harness_call *harness_begin(harness_loop *hl, const agent_service *svc, const char *server,
                            const char *method, json_t *params)
{
	harness_call *c = tether_xcalloc(1, sizeof(*c));

	c->hl = hl;
	c->svc = svc;
	snprintf(c->method, sizeof(c->method), "%s", method);
	snprintf(c->server, sizeof(c->server), "%s", server);
	c->params = params ? params : json_object();
	c->alive = 1;
	c->r = tether_xcalloc(1, sizeof(*c->r));
	c->r->c = c;
	c->r->loop = &hl->loop;
	post(hl, dispatch_job, c);
	return c;
}

static void deadline(struct timespec *ts, uint32_t ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

int harness_wait(harness_call *c, uint32_t timeout_ms)
{
	struct timespec ts;
	int rc = 0;

	deadline(&ts, timeout_ms);
	pthread_mutex_lock(&c->hl->lock);
	while (!(c->answered && c->handled) && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&c->hl->cond, &c->hl->lock, &ts);
	rc = c->answered && c->handled ? 0 : -1;
	pthread_mutex_unlock(&c->hl->lock);
	return rc;
}

int harness_answered(harness_call *c)
{
	int a;
	pthread_mutex_lock(&c->hl->lock);
	a = c->answered && c->handled;
	pthread_mutex_unlock(&c->hl->lock);
	return a;
}

json_t *harness_result(harness_call *c) { return c->result; }
const char *harness_error_code(harness_call *c) { return c->code; }
const char *harness_error_message(harness_call *c) { return c->message; }

static void close_job(harness_loop *hl, void *arg)
{
	harness_call *c = arg;
	const agent_stream_ops *in, *out;
	int open_in, open_out;

	pthread_mutex_lock(&hl->lock);
	in = c->in_ops;
	out = c->out_ops;
	open_in = in && !c->in_done && !c->answered;
	open_out = out && !c->out_ended && !c->answered;
	pthread_mutex_unlock(&hl->lock);
	if (open_in && in->on_closed)
		in->on_closed(c->r);
	else if (open_out && out->on_closed)
		out->on_closed(c->r);
}

void harness_close_conn(harness_call *c)
{
	pthread_mutex_lock(&c->hl->lock);
	c->alive = 0;
	c->closed = 1;
	pthread_cond_broadcast(&c->hl->cond);
	pthread_mutex_unlock(&c->hl->lock);
	post(c->hl, close_job, c);
}

void harness_call_free(harness_call *c)
{
	if (!c)
		return;
	json_decref(c->result);
	json_decref(c->params);
	json_decref(c->out_trailer);
	free(c->out);
	free(c->r);
	free(c);
}

json_t *harness_call_sync(harness_loop *hl, const agent_service *svc, const char *server,
                          const char *method, json_t *params, uint32_t timeout_ms,
                          char code[65])
{
	harness_call *c = harness_begin(hl, svc, server, method, params);
	json_t *res;

	if (harness_wait(c, timeout_ms) < 0) {
		fprintf(stderr, "agent_req harness: %s got no answer within %u ms\n", method,
		        timeout_ms);
		abort();
	}
	res = c->result ? json_incref(c->result) : NULL;
	if (code)
		snprintf(code, 65, "%s", c->code);
	harness_call_free(c);
	return res;
}

typedef struct push {
	harness_call *c;
	int kind;                       /* 0 data, 1 end, 2 reset */
	unsigned char *data;
	size_t len;
	unsigned char sha[32];
	json_t *trailer;
	char code[65], message[1025];
} push;

static void push_job(harness_loop *hl, void *arg)
{
	push *p = arg;
	harness_call *c = p->c;
	const agent_stream_ops *ops;
	int skip;

	pthread_mutex_lock(&hl->lock);
	ops = c->in_ops;
	skip = c->in_done || c->answered;
	if (p->kind)
		c->in_done = 1;
	pthread_mutex_unlock(&hl->lock);
	if (!skip) {
		if (p->kind == 0 && ops->on_data(c->r, p->data, p->len) < 0) {
			pthread_mutex_lock(&hl->lock);
			c->in_done = 1;
			snprintf(c->reset_code, sizeof(c->reset_code), "%s", "reset_by_service");
			pthread_cond_broadcast(&hl->cond);
			pthread_mutex_unlock(&hl->lock);
		} else if (p->kind == 1) {
			ops->on_end(c->r, p->sha, p->trailer);
		} else if (p->kind == 2) {
			ops->on_reset(c->r, p->code, p->message);
		}
	}
	json_decref(p->trailer);
	free(p->data);
	free(p);
}

int harness_push_data(harness_call *c, const void *data, size_t len, uint32_t timeout_ms)
{
	const unsigned char *d = data;
	struct timespec ts;
	int rc = 0;

	deadline(&ts, timeout_ms);
	while (len) {
		size_t n = len < FRAME_MAX ? len : FRAME_MAX;
		push *p;
		pthread_mutex_lock(&c->hl->lock);
		while (c->in_ops && !c->in_done && !c->answered && c->in_window < n && rc != ETIMEDOUT)
			rc = pthread_cond_timedwait(&c->hl->cond, &c->hl->lock, &ts);
		if (!c->in_ops || c->in_done || c->answered || c->in_window < n) {
			pthread_mutex_unlock(&c->hl->lock);
			return -1;
		}
		c->in_window -= n;
		pthread_mutex_unlock(&c->hl->lock);
		p = tether_xcalloc(1, sizeof(*p));
		p->c = c;
		p->data = tether_xmalloc(n);
		memcpy(p->data, d, n);
		p->len = n;
		post(c->hl, push_job, p);
		d += n;
		len -= n;
	}
	return 0;
}

int harness_push_end(harness_call *c, const unsigned char sha256[32], json_t *trailer)
{
	push *p = tether_xcalloc(1, sizeof(*p));
	p->c = c;
	p->kind = 1;
	memcpy(p->sha, sha256, 32);
	p->trailer = trailer;
	post(c->hl, push_job, p);
	return 0;
}

int harness_push_reset(harness_call *c, const char *code, const char *message)
{
	push *p = tether_xcalloc(1, sizeof(*p));
	p->c = c;
	p->kind = 2;
	snprintf(p->code, sizeof(p->code), "%s", code);
	snprintf(p->message, sizeof(p->message), "%s", message);
	post(c->hl, push_job, p);
	return 0;
}

static void writable_job(harness_loop *hl, void *arg)
{
	harness_call *c = arg;
	const agent_stream_ops *ops;
	int go;

	pthread_mutex_lock(&hl->lock);
	ops = c->out_ops;
	go = ops && !c->out_ended && !c->answered && c->alive;
	pthread_mutex_unlock(&hl->lock);
	if (go)
		ops->on_writable(c->r);
}

size_t harness_take_out(harness_call *c, void *buf, size_t cap, int *ended)
{
	size_t n;

	pthread_mutex_lock(&c->hl->lock);
	n = c->out_len < cap ? c->out_len : cap;
	memcpy(buf, c->out, n);
	memmove(c->out, c->out + n, c->out_len - n);
	c->out_len -= n;
	c->out_window += n;
	*ended = c->out_ended && c->out_len == 0;
	pthread_mutex_unlock(&c->hl->lock);
	if (n)
		post(c->hl, writable_job, c);
	return n;
}

const unsigned char *harness_out_sha256(harness_call *c) { return c->out_sha; }
json_t *harness_out_trailer(harness_call *c) { return c->out_trailer; }

const char *harness_stream_reset_code(harness_call *c)
{
	return c->reset_code[0] ? c->reset_code : NULL;
}
