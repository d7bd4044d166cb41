/*
 * conn.c: one tether connection.
 *
 * States: CONNECTING (client: DNS + TCP) -> HANDSHAKE (TLS) -> pin check ->
 * HELLO (the connecting side sends first) -> OPEN (frames) -> CLOSING.
 * A server-role connection whose peer sent no certificate goes to LANDING
 * instead: it may read one small HTTP request and gets a one-line page, or
 * nothing, and is closed.  Nothing of the protocol is reachable there.
 *
 * Received ciphertext is not copied: libuv reads into a per-loop buffer,
 * and the provider's BIO pulls from it during the pump; anything the TLS
 * layer did not take is kept in a small per-connection carry buffer.
 * Ciphertext the provider produces is appended to a write buffer, handed to
 * uv_write in one piece after each pump.
 */
#include "config.h"
#include <errno.h>
#include <pthread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include "conn.h"
#include "error.h"
#include "frame.h"
#include "identity.h"
#include "log.h"
#include "util.h"

#define READ_CHUNK (64 * 1024)
#define LANDING_MAX 2048
#define PROXY_MAX 4096
#define LANDING_WAIT_MS 3000
#define CARRY_MAX (256 * 1024)
#define MAX_PENDING_REQUESTS 1024

enum { PAUSE_QUEUE = 1, PAUSE_INFLIGHT = 2 }; /* why reading is paused */

enum conn_state {
	ST_CONNECTING,
	ST_PROXY,
	ST_HANDSHAKE,
	ST_LANDING,
	ST_HELLO,
	ST_OPEN,
	ST_CLOSING,
	ST_CLOSED,
};

typedef struct pending_req {
	struct pending_req *next;
	uint32_t id;
	uint64_t deadline;
	tether_conn_response_cb cb;
	void *arg;
} pending_req;

#define SEND_QUEUE_HIGH (4u << 20)  /* stop taking stream data above this */
/* Back-pressure on a peer that sends requests faster than it reads the
 * answers: reading from it stops, between two frames, once output holds
 * this much memory (wbuf and the writes libuv has not called back, see
 * out_held), and resumes below READ_RESUME_QUEUE.  Above SEND_QUEUE_HIGH
 * plus a STREAM_DATA frame, so outgoing streams alone do not stop the
 * reading (the peer's window grants and pings must get through). */
#define READ_PAUSE_QUEUE (SEND_QUEUE_HIGH + (1u << 20))
#define READ_RESUME_QUEUE SEND_QUEUE_HIGH
/* Requests received and not yet answered: a REQUEST beyond this many waits,
 * unread, until one is answered (a tether requester never has more than
 * MAX_PENDING_REQUESTS pending on one connection). */
#define MAX_INFLIGHT_IN MAX_PENDING_REQUESTS
/* Output made while an earlier write is still queued in libuv gathers in
 * wbuf, up to this much, instead of one write request and buffer per frame. */
#define WRITE_COALESCE (64u << 10)
#define GRANT_BATCH (256u << 10)     /* send WINDOW once this much is consumed */
#define DEAD_IDS 64

typedef struct stream {
	struct stream *next;
	uint32_t id;
	/* incoming */
	const tether_stream_handler *ih;
	void *iarg;
	int in_open;
	uint32_t recv_window;           /* credit the peer still has */
	size_t consumed_pending;        /* consumed, not yet granted back */
	/* outgoing */
	const tether_stream_handler *oh;
	void *oarg;
	int out_open;
	uint32_t send_window;
	int want_writable;
} stream;

typedef struct write_req {
	uv_write_t req;
	uv_buf_t buf;
	size_t cap;
} write_req;

/* While a stream is open, the buffer of a finished socket write is kept for
 * the next one instead of being freed: a transfer then reuses a few warm
 * buffers instead of faulting in fresh pages for every 256 KiB frame.  An
 * idle connection keeps none (memory per idle agent). */
#define SPARE_MAX (1u << 20)
#define SPARES 4

struct tether_conn {
	uv_loop_t *loop;
	uv_tcp_t tcp;
	uv_timer_t timer;               /* handshake deadline, then keepalive tick */
	uv_connect_t connect_req;
	uv_getaddrinfo_t gai_req;
	int handles_open;               /* tcp + timer, for the final free */
	int tcp_inited, timer_inited;
	enum conn_state state;
	tether_conn_opts o;
	char *server_name;
	char *proxy_host;
	char *proxy_auth;
	struct sockaddr_storage bind_sa; /* opts.bind_address, parsed */
	int has_bind;
	unsigned char *proxy_buf;        /* PROXY_MAX, only while talking to a proxy */
	size_t proxy_len;
	unsigned char *session;
	size_t session_len;
	char peer_addr[64];
	char host[256];
	int port;

	tether_tls *tls;
	/* input: the chunk being pumped, and carry-over */
	const unsigned char *in;
	size_t in_len, in_off;
	unsigned char *carry;
	size_t carry_len;
	int eof;
	uint64_t rx_bytes;
	/* output */
	unsigned char *wbuf;
	size_t wlen, wcap;
	unsigned char *spare[SPARES];   /* written-out wbufs, only while streams are open */
	size_t spare_cap[SPARES];
	int n_spare;
	int batching;                   /* in read_cb: flush once at its end */
	int batch_sent;                 /* frames sent in this batch */
	unsigned char *plain;           /* frames waiting to be sealed together (seal) */
	size_t plain_len, plain_cap;

	tether_thumbprint peer_tp;
	int has_peer_tp;
	int pinned;
	int ticket_done;                /* server: the session ticket issued or skipped */
	uint64_t ticket_due_ms;         /* server: ask tls_refresh_ticket then; 0: never */
	unsigned sessions_seen;         /* client: tls_sessions_received at the last on_session */
	tether_tls_info info;
	tether_hello *local_hello;       /* until the greeting is done */
	tether_hello *peer_hello;        /* from its HELLO until on_open returns */
	tether_frame_decoder dec;
	int dec_inited;
	unsigned char *landing;          /* LANDING_MAX, only for a certless caller */
	size_t landing_len;

	uint32_t next_id;
	stream *streams;
	uint32_t dead_ids[DEAD_IDS];
	unsigned dead_pos;
	pending_req *pending;
	size_t npending;
	size_t inflight_in;             /* requests received, not yet answered */
	int draining;                   /* close once nothing is in flight */
	int read_paused;                /* back-pressure: 0, PAUSE_QUEUE or PAUSE_INFLIGHT */
	unsigned char *held;            /* plaintext left unprocessed by the pause */
	size_t held_len;
	unsigned nwrites;               /* uv_writes not called back yet */
	size_t wout;                    /* and their bytes, in the socket already or not */
	/* handshake steps on the libuv thread pool (MAY_BLOCK providers, busy
	 * listeners): while one runs the loop does not touch the TLS state or
	 * the buffers, reading is stopped, and closing waits for it */
	int offload;
	int hs_busy;
	int destroy_pending;
	uv_work_t hs_work;
	int hs_r;
	tether_error hs_err;
	char drain_msg[128];
	uint64_t started_ms, last_rx_ms, last_activity_ms, ping_sent_ms;
	int ping_outstanding;
	uint64_t ping_seq;

	struct sockaddr_storage peer_sa;
	int has_peer_sa;
	tether_error close_err;
	int close_reported;
	void *data;
};

static void spares_free(tether_conn *c)
{
	while (c->n_spare > 0)
		free(c->spare[--c->n_spare]);
}

static uint64_t now_ms(void) { return tether_now_ms(); }

/* ------------------------------------------------------------------ */
/* Closing                                                             */
/* ------------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h)
{
	tether_conn *c = h->data;

	if (--c->handles_open > 0)
		return;
	while (c->streams) {
		stream *st = c->streams;
		c->streams = st->next;
		free(st);
	}
	if (c->tls)
		c->o.prov->t->tls_free(c->tls);
	if (c->dec_inited)
		tether_frame_decoder_free(&c->dec);
	free(c->wbuf);
	free(c->plain);
	spares_free(c);
	free(c->carry);
	free(c->held);
	free(c->server_name);
	free(c->proxy_host);
	free(c->proxy_buf);
	free(c->landing);
	free(c->local_hello);
	free(c->peer_hello);
	if (c->proxy_auth)
		tether_free_secret(c->proxy_auth);
	if (c->session)
		tether_free_wiped(c->session, c->session_len);
	free(c);
}

static void fail_pending(tether_conn *c, const tether_error *why)
{
	while (c->pending) {
		pending_req *p = c->pending;
		tether_error e = *why;
		c->pending = p->next;
		c->npending--;
		if (!e.code)
			tether_err_set(&e, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
			               "the connection to %s closed before the answer came", c->peer_addr);
		p->cb(p->arg, c, NULL, &e);
		free(p);
	}
}

static void close_streams(tether_conn *c)
{
	while (c->streams) {
		stream *st = c->streams;
		c->streams = st->next;
		if (st->in_open && st->ih && st->ih->on_closed)
			st->ih->on_closed(st->iarg, c, st->id);
		else if (st->out_open && st->oh && st->oh->on_closed)
			st->oh->on_closed(st->oarg, c, st->id);
		free(st);
	}
}

static void report_close(tether_conn *c)
{
	if (c->close_reported)
		return;
	c->close_reported = 1;
	close_streams(c);
	fail_pending(c, &c->close_err);
	if (c->o.cbs->on_close)
		c->o.cbs->on_close(c->o.cb_arg, c, &c->close_err);
}

static void flush_now(tether_conn *c);

static void conn_destroy(tether_conn *c)
{
	if (c->state == ST_CLOSED)
		return;
	if (c->hs_busy) {
		c->destroy_pending = 1; /* after the handshake step comes back */
		return;
	}
	if (c->batching && (c->wlen || c->plain_len)) {
		/* what read_cb was holding back (a TLS alert, a GOAWAY) goes out
		 * before the socket is closed, as it did when written at once */
		c->batching = 0;
		flush_now(c);
		if (c->state == ST_CLOSED)
			return;
	}
	c->state = ST_CLOSED;
	report_close(c);
	c->handles_open = 0;
	if (c->timer_inited)
		c->handles_open++;
	if (c->tcp_inited)
		c->handles_open++;
	if (c->handles_open == 0) {
		c->handles_open = 1;
		on_handle_closed((uv_handle_t *)&c->timer);
		return;
	}
	if (c->timer_inited)
		uv_close((uv_handle_t *)&c->timer, on_handle_closed);
	if (c->tcp_inited)
		uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void set_close_err(tether_conn *c, int code, int category, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void set_close_err(tether_conn *c, int code, int category, const char *fmt, ...)
{
	va_list ap;

	if (c->close_err.code)
		return; /* the first reason wins */
	c->close_err.code = code;
	c->close_err.category = category;
	va_start(ap, fmt);
	vsnprintf(c->close_err.detail, sizeof(c->close_err.detail), fmt, ap);
	va_end(ap);
}

static void flush(tether_conn *c);
static void flush_now(tether_conn *c);

static void after_shutdown(uv_shutdown_t *req, int status)
{
	tether_conn *c = req->data;
	(void)status;
	free(req);
	conn_destroy(c);
}

/* Flush what is queued, then half-close and destroy. */
static void close_after_flush(tether_conn *c)
{
	uv_shutdown_t *req;

	if (c->state == ST_CLOSED)
		return;
	c->state = ST_CLOSING;
	flush_now(c);
	if (!c->tcp_inited || uv_is_closing((uv_handle_t *)&c->tcp)) {
		conn_destroy(c);
		return;
	}
	uv_read_stop((uv_stream_t *)&c->tcp);
	req = tether_xcalloc(1, sizeof(*req));
	req->data = c;
	if (uv_shutdown(req, (uv_stream_t *)&c->tcp, after_shutdown) < 0) {
		free(req);
		conn_destroy(c);
	}
}

void tether_conn_abort(tether_conn *c, int category, const char *why)
{
	if (c->state == ST_CLOSED)
		return;
	set_close_err(c, TETHER_ERR_CLOSED, category, "%s", why ? why : "aborted");
	conn_destroy(c);
}

static void send_frame(tether_conn *c, unsigned char *frame, size_t len);
static void seal(tether_conn *c);

void tether_conn_close(tether_conn *c, const char *code, const char *message)
{
	if (c->state == ST_CLOSED || c->state == ST_CLOSING)
		return;
	if (c->hs_busy) {
		set_close_err(c, 0, TETHER_CAT_NONE, "closed locally");
		c->close_err.code = 0;
		c->destroy_pending = 1;
		return;
	}
	if (c->state == ST_OPEN) {
		unsigned char *f = NULL;
		size_t fl = 0;
		if (tether_frame_encode_goaway(c->next_id, code ? code : "normal",
		                               message ? message : "closing", &f, &fl, NULL) == 0)
			send_frame(c, f, fl);
		free(f);
	}
	seal(c);
	if (c->tls && c->state != ST_CONNECTING)
		c->o.prov->t->tls_close(c->tls);
	set_close_err(c, 0, TETHER_CAT_NONE, "closed locally");
	c->close_err.code = 0;
	close_after_flush(c);
}

/* A GOAWAY code that says the sender found a protocol violation in what
 * it received (docs/protocol.md, section 8, and proto_fail's codes). */
static int is_violation_code(const char *code)
{
	static const char *const other[] = { "bad_request", "bad_response", "bad_hello", NULL };
	int i;

	for (i = TETHER_PROTO_OK + 1; i < TETHER_PROTO__COUNT; i++)
		if (i != TETHER_PROTO_VERSION && i != TETHER_PROTO_REFUSED &&
		    !strcmp(code, tether_proto_reason_name(i)))
			return 1;
	for (i = 0; other[i]; i++)
		if (!strcmp(code, other[i]))
			return 1;
	return 0;
}

/* A protocol violation by the peer (or, with code "internal", we could not
 * encode our own HELLO): log what, why and what to do, tell the peer,
 * close. */
static void proto_fail(tether_conn *c, const char *code, const tether_error *e)
{
	int ours = !strcmp(code, "internal");

	if (ours)
		log_warn("closing connection with %s: %s", c->peer_addr, e->detail);
	else
		log_warn("closing connection with %s: %s; it is not a tether peer of a compatible version, or "
		         "it is misbehaving: compare its version with this one's (" PACKAGE_VERSION ", protocol "
		         "%d.%d) and look at its log", c->peer_addr, e->detail, TETHER_PROTOCOL_MAJOR,
		         TETHER_PROTOCOL_MINOR);
	set_close_err(c, TETHER_ERR_PROTOCOL, ours ? (e->category ? e->category : TETHER_CAT_INTERNAL)
	              : TETHER_CAT_PEER_PROTOCOL, "%s", e->detail);
	if (c->state == ST_OPEN) {
		unsigned char *f = NULL;
		size_t fl = 0;
		if (tether_frame_encode_goaway(0, code, e->detail, &f, &fl, NULL) == 0)
			send_frame(c, f, fl);
		free(f);
	}
	seal(c);
	if (c->tls)
		c->o.prov->t->tls_close(c->tls);
	close_after_flush(c);
}

/* ------------------------------------------------------------------ */
/* Output                                                              */
/* ------------------------------------------------------------------ */

/* Make room for need bytes in wbuf (a spare buffer first). */
static void wbuf_reserve(tether_conn *c, size_t need)
{
	size_t ncap;

	if (!c->wbuf && c->n_spare) {
		c->n_spare--;
		c->wbuf = c->spare[c->n_spare];
		c->wcap = c->spare_cap[c->n_spare];
	}
	if (need <= c->wcap)
		return;
	ncap = c->wcap ? c->wcap : 4096;
	while (ncap < need)
		ncap *= 2;
	c->wbuf = realloc(c->wbuf, ncap);
	if (!c->wbuf)
		abort();
	c->wcap = ncap;
}

static int io_write(void *arg, const void *buf, size_t len)
{
	tether_conn *c = arg;

	if (!c->wbuf && c->n_spare)
		wbuf_reserve(c, len);
	if (c->wlen + len > c->wcap) {
		size_t ncap = c->wcap ? c->wcap : 4096;
		while (ncap < c->wlen + len)
			ncap *= 2;
		c->wbuf = realloc(c->wbuf, ncap);
		if (!c->wbuf)
			abort();
		c->wcap = ncap;
	}
	memcpy(c->wbuf + c->wlen, buf, len);
	c->wlen += len;
	return (int)len;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void resume_reading(tether_conn *c);

/* The memory output holds until libuv calls its writes back: wbuf, the
 * writes the socket has not taken yet and those it took in this turn of the
 * loop (their callbacks run in the next, and libuv reads up to 32 times in
 * one turn).  Stream back-pressure counts this, not only what the socket
 * has not taken: with a large window from the peer and a socket that takes
 * everything, a sender would otherwise never be told to wait, and a pump
 * loop would run without bound within one turn. */
static size_t out_held(tether_conn *c)
{
	return c->wout + c->wlen;
}

static void notify_writable(tether_conn *c)
{
	stream *st, *next;

	if (out_held(c) >= SEND_QUEUE_HIGH / 2)
		return;
	for (st = c->streams; st && c->state == ST_OPEN; st = next) {
		next = st->next;
		if (st->out_open && st->want_writable && st->send_window > 0) {
			st->want_writable = 0;
			if (st->oh && st->oh->on_writable)
				st->oh->on_writable(st->oarg, c, st->id);
		}
	}
}

static void after_write(uv_write_t *req, int status)
{
	write_req *w = (write_req *)req;
	tether_conn *c = req->data;

	c->nwrites--;
	c->wout -= w->buf.len;
	if (c->state != ST_CLOSED && c->streams && c->n_spare < SPARES && w->cap <= SPARE_MAX) {
		c->spare[c->n_spare] = (unsigned char *)w->buf.base;
		c->spare_cap[c->n_spare++] = w->cap;
	} else {
		free(w->buf.base);
	}
	free(w);
	if (status < 0 && c->state != ST_CLOSED) {
		set_close_err(c, TETHER_ERR_IO, TETHER_CAT_CONNECTION_RESET,
		              "cannot send to %s: %s", c->peer_addr, uv_strerror(status));
		conn_destroy(c);
		return;
	}
	if (c->state == ST_OPEN)
		flush(c); /* what gathered behind this write */
	resume_reading(c);
	if (c->state == ST_OPEN && c->streams)
		notify_writable(c);
}

/* While read_cb works through what arrived in one read (c->batching), the
 * answers it produces (many pipelined requests answered at once) are
 * encrypted into wbuf and go out in one socket write at the end, instead
 * of one write per answer. */
static void flush(tether_conn *c)
{
	if (!c->batching)
		flush_now(c);
}

static void flush_now(tether_conn *c)
{
	write_req *w;

	seal(c);
	if (!c->wlen || !c->tcp_inited || c->state == ST_CLOSED ||
	    uv_is_closing((uv_handle_t *)&c->tcp))
		return;
	/* while an earlier write has not been called back (still queued, or
	 * written but its callback not run yet), small frames gather behind it
	 * and after_write sends them together: a write request and a buffer of
	 * their own for each of many small answers would hold several times
	 * the memory of the answers themselves */
	if (c->state == ST_OPEN && c->wlen < WRITE_COALESCE && c->nwrites > 0)
		return;
	if (c->o.before_send)
		c->o.before_send(c->o.cb_arg, c);
	/* Nothing queued: write now with uv_try_write.  That saves the write
	 * request, its callback on the next turn of the loop, and the
	 * epoll_ctl libuv makes each time its write queue drains (one per
	 * answer for a sequential requester, BENCHMARKS.md).  Only for RPC
	 * traffic: while streams are open or reading waits for the output to
	 * drain, after_write's work (spare buffers, on_writable,
	 * resume_reading) is needed.  Errors and what the socket did not take
	 * go the uv_write way, as before. */
	if (c->state == ST_OPEN && c->nwrites == 0 && !c->streams && !c->read_paused) {
		uv_buf_t b = uv_buf_init((char *)c->wbuf, (unsigned)c->wlen);
		int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
		if (n > 0 && (size_t)n == c->wlen) {
			free(c->wbuf); /* an idle connection holds no buffer */
			c->wbuf = NULL;
			c->wlen = c->wcap = 0;
			return;
		}
		if (n > 0) {
			memmove(c->wbuf, c->wbuf + n, c->wlen - (size_t)n);
			c->wlen -= (size_t)n;
		}
	}
	/* doubling left up to half of it unused: give that back while it waits
	 * (streams keep theirs: the buffer is reused for the next frames) */
	if (!c->streams && c->wcap - c->wlen > c->wlen / 8) {
		unsigned char *p = realloc(c->wbuf, c->wlen);
		if (p) {
			c->wbuf = p;
			c->wcap = c->wlen;
		}
	}
	w = tether_xcalloc(1, sizeof(*w));
	w->buf = uv_buf_init((char *)c->wbuf, (unsigned)c->wlen);
	w->cap = c->wcap;
	w->req.data = c;
	c->nwrites++;
	c->wout += w->buf.len;
	c->wbuf = NULL;
	c->wlen = c->wcap = 0;
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, after_write) < 0) {
		c->nwrites--;
		c->wout -= w->buf.len;
		free(w->buf.base);
		free(w);
		set_close_err(c, TETHER_ERR_IO, TETHER_CAT_CONNECTION_RESET, "cannot send to %s", c->peer_addr);
		conn_destroy(c);
	}
}

/* Encrypt and queue a whole frame.
 *
 * While read_cb works through one read (c->batching), the RPC frames it
 * produces after the first (many pipelined requests answered, or a
 * request sent per answer received) wait in c->plain and are encrypted
 * together by seal(), in records of up to 16 KiB, instead of a TLS record
 * each: OpenSSL's cost per record (about 7 000 instructions, whatever its
 * size) was most of the cost of a small answer (BENCHMARKS.md, session 5).
 * Nothing waits longer than before: the batch's ciphertext only leaves at
 * its end anyway (flush_now, which seals first).  Frames keep their
 * order: whatever else writes to the TLS layer (tls_close, stream data)
 * seals first, and only while no stream is open; a lone frame (one
 * request answered) is encrypted at once, without the copy. */
#define SEAL_MAX 16384

static void seal(tether_conn *c)
{
	tether_error e;
	size_t n = c->plain_len;

	if (!n)
		return;
	c->plain_len = 0;
	if (c->state == ST_CLOSED || !c->tls)
		return;
	if (c->o.prov->t->tls_write(c->tls, c->plain, n, &e) < 0) {
		set_close_err(c, e.code, e.category, "TLS write to %s failed: %s", c->peer_addr, e.detail);
		conn_destroy(c);
		return;
	}
	/* an idle connection holds no buffer */
	free(c->plain);
	c->plain = NULL;
	c->plain_cap = 0;
}

static void send_frame(tether_conn *c, unsigned char *frame, size_t len)
{
	tether_error e;

	if (c->state == ST_CLOSED || !c->tls)
		return;
	if (c->batching && c->state == ST_OPEN && !c->streams && c->batch_sent++ > 0 && len < SEAL_MAX) {
		if (c->plain_len + len > SEAL_MAX)
			seal(c);
		if (c->state == ST_CLOSED)
			return;
		if (!c->plain) {
			c->plain = tether_xmalloc(SEAL_MAX);
			c->plain_cap = SEAL_MAX;
		}
		memcpy(c->plain + c->plain_len, frame, len);
		c->plain_len += len;
		return;
	}
	seal(c);
	if (c->state == ST_CLOSED)
		return;
	if (c->o.prov->t->tls_write(c->tls, frame, len, &e) < 0) {
		set_close_err(c, e.code, e.category, "TLS write to %s failed: %s", c->peer_addr, e.detail);
		conn_destroy(c);
	}
}

/* ------------------------------------------------------------------ */
/* Input                                                               */
/* ------------------------------------------------------------------ */

static int io_read(void *arg, void *buf, size_t len)
{
	tether_conn *c = arg;
	size_t n;

	if (c->carry_len) {
		n = c->carry_len < len ? c->carry_len : len;
		memcpy(buf, c->carry, n);
		memmove(c->carry, c->carry + n, c->carry_len - n);
		c->carry_len -= n;
		if (!c->carry_len) {
			/* an idle connection keeps no carry (the handshake's
			 * records went through it when offloaded) */
			free(c->carry);
			c->carry = NULL;
		}
		return (int)n;
	}
	if (c->in_off < c->in_len) {
		n = c->in_len - c->in_off;
		if (n > len)
			n = len;
		memcpy(buf, c->in + c->in_off, n);
		c->in_off += n;
		return (int)n;
	}
	return c->eof ? -1 : 0;
}

/* Keep what the TLS layer did not take of the current chunk. */
static int keep_rest(tether_conn *c)
{
	size_t rest = c->in_len - c->in_off;

	if (rest) {
		if (c->carry_len + rest > CARRY_MAX)
			return -1;
		c->carry = realloc(c->carry, c->carry_len + rest);
		if (!c->carry)
			abort();
		memcpy(c->carry + c->carry_len, c->in + c->in_off, rest);
		c->carry_len += rest;
	}
	c->in = NULL;
	c->in_len = c->in_off = 0;
	return 0;
}

static void arm_keepalive(tether_conn *c);
static void drain_check(tether_conn *c);
static void hs_start(tether_conn *c);
static void hs_finish(tether_conn *c, int r, tether_error *e);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void proxy_input(tether_conn *c, const unsigned char *p, size_t n);
static void on_timer(uv_timer_t *t);
static int process_plaintext(tether_conn *c, const unsigned char *p, size_t n);
static void pause_reading(tether_conn *c, int why);

static int verify_cb(void *arg, const unsigned char *der, size_t len)
{
	tether_conn *c = arg;
	tether_thumbprint tp;
	char hex[TETHER_THUMBPRINT_HEX];

	if (!len)
		return 0; /* no certificate: decided after the handshake */
	if (tether_thumbprint_of_der(c->o.prov, der, len, &tp) < 0)
		return -1;
	c->peer_tp = tp;
	c->has_peer_tp = 1;
	if (c->offload)
		return 0; /* on a pool thread: the pin is checked on the loop right after */
	if (c->o.cbs->check_peer(c->o.cb_arg, c, &tp) < 0) {
		tether_thumbprint_hex(&tp, hex);
		tether_debug("tls", "pin check refused %s from %s in the handshake", hex, c->peer_addr);
		return -1;
	}
	return 0;
}

/* Server: a long-lived connection's client gets a fresh TLS 1.3 ticket
 * before its last one expires, made with the current ticket key, so that
 * it resumes after a restart however long it was connected.  The provider
 * sends one once the last is half its lifetime old and says when to ask
 * again; the connection's existing timer tick asks (no timer of its own).
 * A random delay of up to half that again spreads a fleet that connected
 * at once (after a restart) over a quarter of the lifetime. */
static void refresh_ticket(tether_conn *c)
{
	tether_error e;
	uint32_t rnd = 0;
	int r;

	c->ticket_due_ms = 0;
	if (!TETHER_PROV_HAS(c->o.prov, tls_refresh_ticket))
		return;
	memset(&e, 0, sizeof(e));
	r = c->o.prov->t->tls_refresh_ticket(c->tls, &e);
	if (r < 0) {
		tether_debug("tls", "no fresh session ticket for %s: %s", c->peer_addr, e.detail);
		return;
	}
	if (r == 0)
		return;
	c->o.prov->t->random_bytes(&rnd, sizeof(rnd));
	c->ticket_due_ms = now_ms() + (uint64_t)r * 1000 + rnd % ((uint64_t)r * 500 + 1);
}

/* Server: the TLS 1.3 session ticket, once the peer passed the pin (the
 * provider's tls_pinned issues it).  A tether client sends its HELLO with
 * its last handshake flight, so the ticket waits for it: a client that
 * keeps no sessions says so there (TETHER_CAP_NO_TLS_TICKETS) and gets
 * none, because making one parses the peer's certificate again (OpenSSL
 * 3.0: about a fifth of a full handshake's CPU) for a ticket nobody
 * uses.  If the HELLO did not come with that flight, the ticket goes out
 * at once (pump), as it did before clients could say so. */
static void issue_ticket(tether_conn *c, int wanted)
{
	tether_error e;

	if (c->ticket_done || !c->pinned)
		return;
	c->ticket_done = 1;
	memset(&e, 0, sizeof(e));
	if (!wanted)
		tether_debug("tls", "%s keeps no TLS sessions: no session ticket", c->peer_addr);
	else if (c->o.prov->t->tls_pinned && c->o.prov->t->tls_pinned(c->tls, &e) < 0)
		tether_debug("tls", "no session ticket for %s: %s", c->peer_addr, e.detail);
	else
		refresh_ticket(c);
}

static void send_hello(tether_conn *c)
{
	unsigned char *f = NULL;
	size_t fl = 0;
	tether_error e;

	if (tether_hello_encode(c->local_hello, &f, &fl, &e) < 0) {
		proto_fail(c, "internal", &e);
		return;
	}
	send_frame(c, f, fl);
	free(f);
}

/* One DER element at *p (single-byte tag, definite length), within end:
 * its tag and contents.  -1 if it does not fit. */
static int der_next(const unsigned char **p, const unsigned char *end, unsigned *tag,
                    const unsigned char **val, size_t *vlen)
{
	const unsigned char *q = *p;
	size_t l, k;

	if (end - q < 2)
		return -1;
	*tag = *q++;
	l = *q++;
	if (l & 0x80) {
		k = l & 0x7f;
		if (k == 0 || k > 4 || (size_t)(end - q) < k)
			return -1;
		for (l = 0; k > 0; k--)
			l = (l << 8) | *q++;
	}
	if ((size_t)(end - q) < l)
		return -1;
	*val = q;
	*vlen = l;
	*p = q + l;
	return 0;
}

static int two_digits(const unsigned char *s, int *v)
{
	if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
		return -1;
	*v = (s[0] - '0') * 10 + (s[1] - '0');
	return 0;
}

/* A certificate's notAfter, read straight from its DER: the handshake has
 * parsed and checked the certificate already, and asking the provider to
 * parse it again (cert_info: names, serial, key) cost about a fifth of the
 * server's CPU per handshake with OpenSSL 3.0.  Only the DER forms
 * (UTCTime YYMMDDHHMMSSZ, GeneralizedTime YYYYMMDDHHMMSSZ); -1 for
 * anything else, and the caller asks the provider. */
static int der_cert_not_after(const unsigned char *der, size_t len, int64_t *out)
{
	const unsigned char *p = der, *end = der + len, *v, *tbs_end, *val_end;
	size_t vl;
	unsigned tag;
	int i, f[6], yy, mo, d, h, mi, s;
	int64_t y, era, yoe, doy, doe, days;

	if (der_next(&p, end, &tag, &v, &vl) < 0 || tag != 0x30)
		return -1; /* Certificate */
	p = v;
	end = v + vl;
	if (der_next(&p, end, &tag, &v, &vl) < 0 || tag != 0x30)
		return -1; /* TBSCertificate */
	p = v;
	tbs_end = v + vl;
	if (der_next(&p, tbs_end, &tag, &v, &vl) < 0)
		return -1;
	if (tag == 0xa0 && der_next(&p, tbs_end, &tag, &v, &vl) < 0)
		return -1; /* [0] version, then serialNumber */
	if (tag != 0x02)
		return -1;
	if (der_next(&p, tbs_end, &tag, &v, &vl) < 0 || tag != 0x30) /* signature */
		return -1;
	if (der_next(&p, tbs_end, &tag, &v, &vl) < 0 || tag != 0x30) /* issuer */
		return -1;
	if (der_next(&p, tbs_end, &tag, &v, &vl) < 0 || tag != 0x30) /* validity */
		return -1;
	p = v;
	val_end = v + vl;
	if (der_next(&p, val_end, &tag, &v, &vl) < 0 || /* notBefore */
	    der_next(&p, val_end, &tag, &v, &vl) < 0)   /* notAfter */
		return -1;
	if (tag == 0x17 && vl == 13 && v[12] == 'Z') {
		if (two_digits(v, &yy) < 0)
			return -1;
		y = yy >= 50 ? 1900 + yy : 2000 + yy;
		v += 2;
	} else if (tag == 0x18 && vl == 15 && v[14] == 'Z') {
		int hi, lo;
		if (two_digits(v, &hi) < 0 || two_digits(v + 2, &lo) < 0)
			return -1;
		y = hi * 100 + lo;
		v += 4;
	} else {
		return -1;
	}
	for (i = 0; i < 5; i++)
		if (two_digits(v + 2 * i, &f[i]) < 0)
			return -1;
	mo = f[0];
	d = f[1];
	h = f[2];
	mi = f[3];
	s = f[4];
	if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
		return -1;
	/* days since 1970-01-01 in the proleptic Gregorian calendar */
	y -= mo <= 2;
	era = y / 400;
	yoe = y - era * 400;
	doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	days = era * 146097 + doe - 719468;
	*out = days * 86400 + h * 3600 + mi * 60 + s;
	return 0;
}

/* After the handshake: the pin decides, before any application data. */
/* An expired certificate is no reason to refuse a pinned peer (the pin is
 * the trust), but its owner should renew it. */
static void warn_if_expired(tether_conn *c, const unsigned char *der, size_t len,
                            const char *hex)
{
	tether_cert_info ci;
	tether_error e;
	char when[32];
	int64_t not_after;

	if (der_cert_not_after(der, len, &not_after) == 0 && not_after >= (int64_t)time(NULL))
		return; /* the usual case, without parsing the certificate again */
	if (!c->o.prov->t->cert_info || c->o.prov->t->cert_info(der, len, &ci, &e) < 0 ||
	    ci.not_after >= (int64_t)time(NULL))
		return;
	tether_iso8601(ci.not_after, when, sizeof(when));
	log_warn("%s presented certificate %s, which expired on %s: accepted because its "
	         "thumbprint is pinned (the pin is the trust); renew it on that side with "
	         "'new-certificate'", c->peer_addr, hex, when);
}

static void handshake_done(tether_conn *c)
{
	const unsigned char *der = NULL;
	size_t len = 0;
	char hex[TETHER_THUMBPRINT_HEX];
	tether_error e;

	c->o.prov->t->tls_info(c->tls, &c->info);
	c->o.prov->t->tls_peer_cert(c->tls, &der, &len);
	if (!len) {
		if (c->o.tls_role == TETHER_TLS_SERVER) {
			tether_debug("tls", "%s completed a handshake without a certificate", c->peer_addr);
			if (!c->o.landing_page) {
				set_close_err(c, TETHER_ERR_UNTRUSTED, TETHER_CAT_PEER_NO_CERTIFICATE,
				              "%s presented no certificate", c->peer_addr);
				seal(c);
				c->o.prov->t->tls_close(c->tls);
				close_after_flush(c);
				return;
			}
			c->state = ST_LANDING;
			uv_timer_start(&c->timer, on_timer, LANDING_WAIT_MS, 0);
			return;
		}
		set_close_err(c, TETHER_ERR_UNTRUSTED, TETHER_CAT_PEER_NO_CERTIFICATE,
		              "%s presented no certificate: it is not a tether peer", c->peer_addr);
		log_warn("%s", c->close_err.detail);
		seal(c);
		c->o.prov->t->tls_close(c->tls);
		close_after_flush(c);
		return;
	}
	if (tether_thumbprint_of_der(c->o.prov, der, len, &c->peer_tp) < 0) {
		set_close_err(c, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL, "cannot hash the peer certificate");
		conn_destroy(c);
		return;
	}
	c->has_peer_tp = 1;
	tether_thumbprint_hex(&c->peer_tp, hex);
	if (c->o.cbs->check_peer(c->o.cb_arg, c, &c->peer_tp) < 0) {
		set_close_err(c, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED,
		              "%s presented certificate %s, which is not trusted here", c->peer_addr, hex);
		if (c->offload && c->o.tls_role == TETHER_TLS_SERVER && c->local_hello) {
			/* the handshake already completed (the pin was checked after
			 * it, off the pool): say why in a refusing HELLO answer */
			unsigned char *out = NULL;
			size_t ol = 0;
			char msg[200];
			snprintf(msg, sizeof(msg), "certificate %s is not trusted by this peer", hex);
			if (tether_hello_answer_encode(c->local_hello, "untrusted", msg, &out, &ol, NULL) == 0)
				send_frame(c, out, ol);
			free(out);
		}
		c->o.prov->t->tls_reject(c->tls);
		close_after_flush(c);
		return;
	}
	c->pinned = 1;
	warn_if_expired(c, der, len, hex);
	/* a server issues its session ticket once it has read what came
	 * with the client's last flight (issue_ticket) */
	if (c->o.tls_role == TETHER_TLS_CLIENT && c->o.prov->t->tls_pinned &&
	    c->o.prov->t->tls_pinned(c->tls, &e) < 0)
		tether_debug("tls", "no session ticket for %s: %s", c->peer_addr, e.detail);
	tether_debug("tls", "%s pinned %s (%s %s, %s%s)", c->peer_addr, hex, c->info.tls_version,
	             c->info.cipher, c->info.group, c->info.resumed ? ", resumed" : "");
	c->state = ST_HELLO;
	if (c->o.tls_role == TETHER_TLS_CLIENT)
		send_hello(c);
}

static void landing_input(tether_conn *c, const unsigned char *p, size_t n)
{
	static const char *methods[] = { "GET ", "HEAD ", "POST ", "PUT ", "OPTIONS ", NULL };
	size_t room, i;

	if (!c->landing)
		c->landing = tether_xmalloc(LANDING_MAX);
	room = LANDING_MAX - c->landing_len;
	int is_http = 0;

	if (n > room)
		n = room;
	memcpy(c->landing + c->landing_len, p, n);
	c->landing_len += n;
	for (i = 0; methods[i]; i++) {
		size_t ml = strlen(methods[i]);
		size_t cmp = c->landing_len < ml ? c->landing_len : ml;
		if (!memcmp(c->landing, methods[i], cmp)) {
			if (c->landing_len >= ml)
				is_http = 1;
			else
				return; /* maybe, wait for more */
		}
	}
	if (is_http) {
		char resp[512];
		const char *body = c->o.landing_text ? c->o.landing_text : "tether is listening";
		int head = !memcmp(c->landing, "HEAD ", 5);
		int l = snprintf(resp, sizeof(resp),
		                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
		                 "Content-Length: %zu\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n%s",
		                 strlen(body) + 1, head ? "" : body);
		if (!head)
			l += snprintf(resp + l, sizeof(resp) - (size_t)l, "\n");
		c->o.prov->t->tls_write(c->tls, resp, (size_t)l, NULL);
		tether_debug("tls", "served the landing page to %s", c->peer_addr);
		/* a liveness check answered, not a failure to log */
		set_close_err(c, TETHER_ERR_CLOSED, TETHER_CAT_NONE, "served the landing page to %s", c->peer_addr);
	} else {
		set_close_err(c, TETHER_ERR_UNTRUSTED, TETHER_CAT_PEER_NO_CERTIFICATE,
		              "%s presented no certificate and sent data that is neither tether nor HTTP",
		              c->peer_addr);
	}
	seal(c);
	c->o.prov->t->tls_close(c->tls);
	close_after_flush(c);
}

/* Drive TLS with whatever input is available. */
/* The outcome of a handshake step: 0 to go on reading plaintext (or wait
 * for more input), -1 if the connection is gone. */
static int hs_result(tether_conn *c, int r, tether_error *e)
{
	if (r < 0) {
		char hex[TETHER_THUMBPRINT_HEX] = "";
		if (c->has_peer_tp)
			tether_thumbprint_hex(&c->peer_tp, hex);
		if (e->category == TETHER_CAT_UNTRUSTED && hex[0])
			set_close_err(c, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED,
			              "%s presented certificate %s, which is not trusted here", c->peer_addr, hex);
		else
			set_close_err(c, TETHER_ERR_TLS, e->category ? e->category : TETHER_CAT_HANDSHAKE,
			              "TLS handshake with %s failed (%s): %s", c->peer_addr,
			              tether_category_name(e->category), e->detail);
		flush(c);
		conn_destroy(c);
		return -1;
	}
	if (r == TETHER_TLS_WANT_READ)
		return 0;
	handshake_done(c);
	return 0;
}

static void pump(tether_conn *c);

/* Back on the loop after a pooled handshake step. */
static void hs_finish(tether_conn *c, int r, tether_error *e)
{
	flush(c);
	if (hs_result(c, r, e) < 0 || c->state == ST_CLOSED)
		return;
	if (c->state == ST_CLOSING)
		return;
	if (c->tcp_inited && !uv_is_closing((uv_handle_t *)&c->tcp))
		uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
	if (c->state == ST_HANDSHAKE) {
		/* more input may have been buffered meanwhile: another step */
		if (c->carry_len)
			hs_start(c);
		return;
	}
	pump(c); /* plaintext that came with the last flight (the HELLO) */
}

static int must_wait(tether_conn *c, const unsigned char *p, size_t n);
static void pump(tether_conn *c)
{
	unsigned char buf[16384];
	tether_error e;
	int r;

	if (c->state == ST_HANDSHAKE && c->offload) {
		if (!c->hs_busy)
			hs_start(c);
		return;
	}
	if (c->state == ST_HANDSHAKE) {
		memset(&e, 0, sizeof(e));
		r = c->o.prov->t->tls_handshake(c->tls, &e);
		if (hs_result(c, r, &e) < 0)
			return;
		if (c->state != ST_LANDING && c->state != ST_HELLO && c->state != ST_OPEN)
			goto out;
	}
	while ((c->state == ST_LANDING || c->state == ST_HELLO || c->state == ST_OPEN) &&
	       !c->read_paused) {
		size_t n = 0, cap = sizeof(buf);
		unsigned char *dst = NULL;
		/* The payload of a frame in progress (a stream's data): decrypt
		 * it straight into the frame rather than into buf and then copy
		 * it there, unless the next frame would have to wait anyway. */
		if (c->state == ST_OPEN && !must_wait(c, NULL, 0))
			cap = tether_frame_decoder_room(&c->dec, &dst);
		if (!dst || !cap) {
			dst = NULL;
			cap = sizeof(buf);
		}
		memset(&e, 0, sizeof(e));
		r = c->o.prov->t->tls_read(c->tls, dst ? dst : buf, cap, &n, &e);
		if (r < 0) {
			set_close_err(c, e.code ? e.code : TETHER_ERR_TLS,
			              e.category ? e.category : TETHER_CAT_CONNECTION_RESET,
			              "connection with %s failed: %s", c->peer_addr, e.detail);
			if (e.category == TETHER_CAT_UNTRUSTED || e.category == TETHER_CAT_PEER_NO_CERTIFICATE)
				log_warn("%s", c->close_err.detail);
			conn_destroy(c);
			return;
		}
		if (r == TETHER_TLS_CLOSED) {
			set_close_err(c, 0, TETHER_CAT_NONE, "%s closed the connection", c->peer_addr);
			seal(c);
			c->o.prov->t->tls_close(c->tls);
			close_after_flush(c);
			goto out;
		}
		if (r == TETHER_TLS_WANT_READ || n == 0)
			break;
		c->last_rx_ms = now_ms();
		if (dst) {
			tether_frame_decoder_advance(&c->dec, n);
			continue;
		}
		if (c->state == ST_LANDING) {
			landing_input(c, buf, n);
			continue;
		}
		if (process_plaintext(c, buf, n) < 0)
			return;
	}
out:
	/* pinned, and no HELLO came with the client's last flight */
	if (c->state == ST_HELLO && c->o.tls_role == TETHER_TLS_SERVER)
		issue_ticket(c, 1);
	if (c->state != ST_CLOSED)
		flush(c);
	if (c->state == ST_OPEN && !c->read_paused && out_held(c) >= READ_PAUSE_QUEUE)
		pause_reading(c, PAUSE_QUEUE);
}

/* Stop reading from the peer (back-pressure).  What was read and not yet
 * processed stays where it is: ciphertext in carry (read_cb), plaintext
 * in held (process_plaintext), a partial frame in the decoder. */
static void pause_reading(tether_conn *c, int why)
{
	if (c->read_paused)
		return;
	c->read_paused = why;
	if (c->tcp_inited && !uv_is_closing((uv_handle_t *)&c->tcp))
		uv_read_stop((uv_stream_t *)&c->tcp);
	if (why == PAUSE_QUEUE)
		tether_debug("rpc", "%s is not reading its answers (%zu bytes queued): pausing its requests",
		             c->peer_addr, out_held(c));
	else
		tether_debug("rpc", "%s has %zu requests in flight: its next request waits for an answer",
		             c->peer_addr, c->inflight_in);
}

/* From a libuv callback only (after_write, the timer), never while frames
 * are being processed: once the queue has drained and a request slot is
 * free, process what was held, then read again. */
static void resume_reading(tether_conn *c)
{
	unsigned char *p;
	size_t n;

	if (!c->read_paused || c->state != ST_OPEN || c->hs_busy || !c->tcp_inited ||
	    uv_is_closing((uv_handle_t *)&c->tcp))
		return;
	if (out_held(c) >= READ_RESUME_QUEUE || c->inflight_in >= MAX_INFLIGHT_IN)
		return;
	c->read_paused = 0;
	/* nothing was read meanwhile, by our choice: the peer gets a fresh
	 * keepalive interval */
	c->last_rx_ms = now_ms();
	if (c->ping_outstanding)
		c->ping_sent_ms = c->last_rx_ms;
	if (c->held_len) {
		p = c->held;
		n = c->held_len;
		c->held = NULL;
		c->held_len = 0;
		if (process_plaintext(c, p, n) < 0 || c->state != ST_OPEN) {
			free(p);
			return;
		}
		free(p);
	}
	if (!c->read_paused)
		pump(c); /* records the TLS layer holds, then the carry */
	if (c->state == ST_OPEN && !c->read_paused && !uv_is_closing((uv_handle_t *)&c->tcp))
		uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void hs_run(uv_work_t *w)
{
	tether_conn *c = w->data;
	memset(&c->hs_err, 0, sizeof(c->hs_err));
	c->hs_r = c->o.prov->t->tls_handshake(c->tls, &c->hs_err);
}

static void hs_after(uv_work_t *w, int status)
{
	tether_conn *c = w->data;
	(void)status;

	c->hs_busy = 0;
	if (c->destroy_pending) {
		conn_destroy(c);
		return;
	}
	hs_finish(c, c->hs_r, &c->hs_err);
}

/* Run one handshake step on the pool with the input buffered so far. */
static void hs_start(tether_conn *c)
{
	if (c->tcp_inited)
		uv_read_stop((uv_stream_t *)&c->tcp);
	c->hs_busy = 1;
	c->hs_work.data = c;
	if (uv_queue_work(c->loop, &c->hs_work, hs_run, hs_after) < 0) {
		c->hs_busy = 0;
		set_close_err(c, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL, "cannot queue the handshake");
		conn_destroy(c);
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	(void)h;
	buf->base = tether_xmalloc(READ_CHUNK);
	buf->len = READ_CHUNK;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	tether_conn *c = s->data;

	if (nread < 0) {
		free(buf->base);
		if (c->state == ST_CLOSED)
			return;
		c->eof = 1;
		if (nread != UV_EOF) {
			set_close_err(c, TETHER_ERR_IO, TETHER_CAT_CONNECTION_RESET,
			              "connection with %s lost: %s", c->peer_addr, uv_strerror((int)nread));
			conn_destroy(c);
			return;
		}
		if (c->state == ST_PROXY) {
			set_close_err(c, TETHER_ERR_IO, TETHER_CAT_CONNECTION_RESET,
			              "the proxy %s closed the connection before answering CONNECT", c->peer_addr);
			conn_destroy(c);
			return;
		}
		if (c->state == ST_HANDSHAKE && c->rx_bytes == 0)
			set_close_err(c, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
			              "%s closed the connection without sending anything", c->peer_addr);
		else if (c->state == ST_HANDSHAKE)
			set_close_err(c, TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET,
			              "%s closed the connection during the TLS handshake", c->peer_addr);
		else if (c->state == ST_HELLO)
			set_close_err(c, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
			              "%s closed the connection before the protocol greeting", c->peer_addr);
		/* let TLS see the EOF (unexpected EOF vs close_notify) */
		pump(c);
		if (c->state != ST_CLOSED) {
			set_close_err(c, 0, TETHER_CAT_NONE, "%s closed the connection", c->peer_addr);
			conn_destroy(c);
		}
		return;
	}
	if (nread == 0 || c->state == ST_CLOSED || c->state == ST_CLOSING) {
		free(buf->base);
		return;
	}
	if (c->state == ST_PROXY) {
		proxy_input(c, (const unsigned char *)buf->base, (size_t)nread);
		free(buf->base);
		return;
	}
	c->rx_bytes += (uint64_t)nread;
	if (c->offload && c->state == ST_HANDSHAKE) {
		/* the pool thread reads from carry: keep everything there */
		c->in = (const unsigned char *)buf->base;
		c->in_len = (size_t)nread;
		c->in_off = 0;
		if (keep_rest(c) < 0) {
			free(buf->base);
			set_close_err(c, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
			              "%s sent more than the TLS layer could take", c->peer_addr);
			conn_destroy(c);
			return;
		}
		free(buf->base);
		if (!c->hs_busy)
			hs_start(c);
		return;
	}
	c->in = (const unsigned char *)buf->base;
	c->in_len = (size_t)nread;
	c->in_off = 0;
	c->batching = 1;
	c->batch_sent = 0;
	pump(c);
	c->batching = 0;
	flush_now(c);
	if (c->state != ST_CLOSED && keep_rest(c) < 0) {
		set_close_err(c, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
		              "%s sent more than the TLS layer could take", c->peer_addr);
		conn_destroy(c);
	}
	c->in = NULL;
	c->in_len = c->in_off = 0;
	free(buf->base);
}

/* ------------------------------------------------------------------ */
/* Frames                                                              */
/* ------------------------------------------------------------------ */

static void handle_hello(tether_conn *c, const tether_frame *f)
{
	tether_hello_agreed ag;
	char peer_code[TETHER_PROTO_CODE_MAX + 1] = "", peer_msg[512] = "";
	tether_error e;

	memset(&e, 0, sizeof(e));
	/* 5 KiB (the capability array): kept only while the greeting is
	 * processed and on_open runs, not for the connection's life */
	if (!c->peer_hello)
		c->peer_hello = tether_xmalloc(sizeof(*c->peer_hello));
	if (tether_hello_parse(f->body, f->body_len, c->peer_hello, &e) < 0) {
		proto_fail(c, "bad_hello", &e);
		return;
	}
	if (tether_hello_negotiate(c->local_hello, c->peer_hello, &ag, peer_code, peer_msg,
	                           sizeof(peer_msg), &e) < 0) {
		log_warn("refusing %s: %s", c->peer_addr, e.detail);
		if (c->peer_hello->has_error && !strcmp(c->peer_hello->error_code, "untrusted"))
			set_close_err(c, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED, "%s refused this connection: %s",
			              c->peer_addr, c->peer_hello->error_message);
		else
			set_close_err(c, TETHER_ERR_PROTOCOL, e.category ? e.category : TETHER_CAT_PROTOCOL_VERSION,
			              "%s", e.detail);
		if (c->o.tls_role == TETHER_TLS_SERVER) {
			unsigned char *out = NULL;
			size_t ol = 0;
			if (tether_hello_answer_encode(c->local_hello, peer_code[0] ? peer_code : "refused",
			                               peer_msg, &out, &ol, NULL) == 0)
				send_frame(c, out, ol);
			free(out);
		}
		seal(c);
		c->o.prov->t->tls_close(c->tls);
		close_after_flush(c);
		return;
	}
	if (c->o.tls_role == TETHER_TLS_SERVER) {
		/* before the answer: the client has the ticket when it takes
		 * its session at on_open */
		issue_ticket(c, !tether_hello_has_capability(c->peer_hello, TETHER_CAP_NO_TLS_TICKETS));
		send_hello(c);
	}
	/* the greeting is done: its memory is not needed any more */
	free(c->local_hello);
	c->local_hello = NULL;
	c->state = ST_OPEN;
	c->last_activity_ms = now_ms();
	uv_timer_stop(&c->timer);
	arm_keepalive(c);
	if (c->o.tls_role == TETHER_TLS_CLIENT && TETHER_PROV_HAS(c->o.prov, tls_sessions_received))
		c->sessions_seen = c->o.prov->t->tls_sessions_received(c->tls);
	if (c->o.cbs->on_open)
		c->o.cbs->on_open(c->o.cb_arg, c);
	free(c->peer_hello);
	c->peer_hello = NULL;
}

static stream *stream_find(tether_conn *c, uint32_t id);

static void handle_request(tether_conn *c, const tether_frame *f)
{
	tether_rpc_request req;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (tether_rpc_request_parse(f->id, f->body, f->body_len, &req, &e) < 0) {
		proto_fail(c, "bad_request", &e);
		return;
	}
	if (stream_find(c, req.id)) {
		tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
		               "%s reused request id %u while that request is still in flight", c->peer_addr, req.id);
		tether_rpc_request_clear(&req);
		proto_fail(c, "bad_frame_id", &e);
		return;
	}
	c->inflight_in++;
	c->last_activity_ms = now_ms();
	if (c->o.cbs->on_request)
		c->o.cbs->on_request(c->o.cb_arg, c, req.id, req.method, req.params);
	else
		tether_conn_respond(c, req.id, NULL, TETHER_RPC_ERR_UNKNOWN_METHOD,
		                    "this peer serves no requests", NULL);
	tether_rpc_request_clear(&req);
}

static void handle_response(tether_conn *c, const tether_frame *f)
{
	tether_rpc_response resp;
	pending_req **pp, *p;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (tether_rpc_response_parse(f->id, f->body, f->body_len, &resp, &e) < 0) {
		proto_fail(c, "bad_response", &e);
		return;
	}
	for (pp = &c->pending; *pp && (*pp)->id != resp.id; pp = &(*pp)->next)
		;
	p = *pp;
	if (!p) {
		/* timed out already: ignore */
		tether_debug("rpc", "late response %u from %s ignored", resp.id, c->peer_addr);
		tether_rpc_response_clear(&resp);
		return;
	}
	*pp = p->next;
	c->npending--;
	c->last_activity_ms = now_ms();
	p->cb(p->arg, c, &resp, NULL);
	free(p);
	tether_rpc_response_clear(&resp);
	drain_check(c);
}

static stream *stream_find(tether_conn *c, uint32_t id)
{
	stream *st;
	for (st = c->streams; st; st = st->next)
		if (st->id == id)
			return st;
	return NULL;
}

static int id_is_dead(tether_conn *c, uint32_t id)
{
	unsigned i;
	for (i = 0; i < DEAD_IDS; i++)
		if (c->dead_ids[i] == id)
			return 1;
	return 0;
}

static void stream_free_if_done(tether_conn *c, stream *st)
{
	stream **pp;

	if (st->in_open || st->out_open)
		return;
	for (pp = &c->streams; *pp; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	c->dead_ids[c->dead_pos++ % DEAD_IDS] = st->id;
	free(st);
	if (!c->streams) {
		spares_free(c);
		tether_frame_decoder_keep(&c->dec, 0);
	}
}

static int handle_stream_frame(tether_conn *c, const tether_frame *f)
{
	stream *st = stream_find(c, f->id);
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!st) {
		if (id_is_dead(c, f->id))
			return 0; /* in flight when the stream ended: drop */
		tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
		               "%s sent %s for stream %u, which is not open", c->peer_addr,
		               tether_frame_type_name(f->type), f->id);
		proto_fail(c, "bad_frame_id", &e);
		return -1;
	}
	switch (f->type) {
	case TETHER_FRAME_STREAM_DATA:
		if (!st->in_open) {
			if (st->ih == NULL)
				return 0; /* we reset it: drop what was in flight */
			tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
			               "%s sent data on stream %u after its end", c->peer_addr, f->id);
			proto_fail(c, "flow_control", &e);
			return -1;
		}
		if (tether_window_consume(&st->recv_window, f->length, &e) < 0) {
			char msg[TETHER_ERROR_DETAIL_MAX];
			snprintf(msg, sizeof(msg), "%s overran the flow-control window of stream %u: %s",
			         c->peer_addr, f->id, e.detail);
			snprintf(e.detail, sizeof(e.detail), "%s", msg);
			proto_fail(c, "flow_control", &e);
			return -1;
		}
		if (st->ih->on_data(st->iarg, c, f->id, f->payload, f->length) < 0) {
			if (c->state == ST_OPEN)
				tether_conn_stream_reset(c, f->id, "refused", "the receiver stopped the transfer");
		}
		return 0;
	case TETHER_FRAME_STREAM_END: {
		json_t *trailer = NULL;
		if (!st->in_open) {
			if (st->ih == NULL)
				return 0;
			tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
			               "%s ended stream %u twice", c->peer_addr, f->id);
			proto_fail(c, "flow_control", &e);
			return -1;
		}
		if (f->body_len && tether_json_parse_object(f->body, f->body_len, "stream trailer",
		                                            &trailer, &e) < 0) {
			proto_fail(c, "bad_json", &e);
			return -1;
		}
		st->in_open = 0;
		st->ih->on_end(st->iarg, c, f->id, f->sha256, trailer);
		json_decref(trailer);
		st = stream_find(c, f->id);
		if (st)
			stream_free_if_done(c, st);
		return 0;
	}
	case TETHER_FRAME_STREAM_WINDOW:
		if (!st->out_open)
			return 0; /* late credit for a finished stream */
		if (tether_window_grant(&st->send_window, f->value, &e) < 0) {
			proto_fail(c, "bad_window", &e);
			return -1;
		}
		if (st->want_writable)
			notify_writable(c);
		return 0;
	case TETHER_FRAME_STREAM_RESET: {
		tether_proto_reason_msg rm;
		int was_in = st->in_open, was_out = st->out_open;
		const tether_stream_handler *h = was_in ? st->ih : st->oh;
		void *arg = was_in ? st->iarg : st->oarg;
		memset(&rm, 0, sizeof(rm));
		tether_frame_parse_reason(f->body, f->body_len, &rm, NULL);
		st->in_open = st->out_open = 0;
		if ((was_in || was_out) && h && h->on_reset)
			h->on_reset(arg, c, f->id, rm.code, rm.message);
		st = stream_find(c, f->id);
		if (st)
			stream_free_if_done(c, st);
		return 0;
	}
	}
	return 0;
}

/* Whether the next frame must wait (back-pressure), and why: too much
 * output queued for a peer that does not read it, or a REQUEST while the
 * peer already has MAX_INFLIGHT_IN unanswered.  Checked before every frame,
 * so one read of many pipelined requests cannot overshoot. */
static int must_wait(tether_conn *c, const unsigned char *p, size_t n)
{
	int next_type;

	if (c->state != ST_OPEN)
		return 0;
	if (out_held(c) >= READ_PAUSE_QUEUE)
		return PAUSE_QUEUE;
	if (c->inflight_in >= MAX_INFLIGHT_IN) {
		/* the type of the frame whose bytes come next */
		next_type = c->dec.hdr_have ? c->dec.hdr[0] : n ? p[0] : -1;
		if (next_type == TETHER_FRAME_REQUEST)
			return PAUSE_INFLIGHT;
	}
	return 0;
}

static int process_plaintext(tether_conn *c, const unsigned char *p, size_t n)
{
	while (n > 0 && c->state != ST_CLOSED && c->state != ST_CLOSING) {
		tether_frame f;
		size_t used = 0;
		tether_error e;
		int r, why;

		if ((why = must_wait(c, p, n)) != 0) {
			/* keep the rest (at most one tls_read's worth) for
			 * resume_reading, and read no more meanwhile */
			c->held = tether_xmalloc(n);
			memcpy(c->held, p, n);
			c->held_len = n;
			pause_reading(c, why);
			return 0;
		}
		memset(&e, 0, sizeof(e));
		r = tether_frame_decode(&c->dec, p, n, &used, &f, &e);
		if (r < 0) {
			char msg[TETHER_ERROR_DETAIL_MAX];
			snprintf(msg, sizeof(msg), "%s sent a malformed frame: %s", c->peer_addr, e.detail);
			snprintf(e.detail, sizeof(e.detail), "%s", msg);
			proto_fail(c, tether_proto_reason_name(tether_frame_decoder_reason(&c->dec)), &e);
			return -1;
		}
		p += used;
		n -= used;
		if (r != TETHER_FRAME_READY)
			continue;
		if (c->state == ST_HELLO) {
			if (f.type != TETHER_FRAME_HELLO) {
				tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE,
				               "%s sent %s before the protocol greeting", c->peer_addr,
				               tether_frame_type_name(f.type));
				proto_fail(c, "hello_expected", &e);
				return -1;
			}
			handle_hello(c, &f);
			continue;
		}
		switch (f.type) {
		case TETHER_FRAME_REQUEST:
			handle_request(c, &f);
			break;
		case TETHER_FRAME_RESPONSE:
			handle_response(c, &f);
			break;
		case TETHER_FRAME_PING: {
			unsigned char out[TETHER_FRAME_PING_FRAME_LEN];
			if (tether_frame_encode_ping(TETHER_FRAME_PONG, f.opaque, out, NULL) == 0)
				send_frame(c, out, sizeof(out));
			break;
		}
		case TETHER_FRAME_PONG:
			c->ping_outstanding = 0;
			break;
		case TETHER_FRAME_GOAWAY: {
			tether_proto_reason_msg rm;
			memset(&rm, 0, sizeof(rm));
			tether_frame_parse_reason(f.body, f.body_len, &rm, NULL);
			tether_debug("rpc", "%s sent goaway (%s: %s)", c->peer_addr, rm.code, rm.message);
			if (is_violation_code(rm.code))
				set_close_err(c, TETHER_ERR_CLOSED, TETHER_CAT_PEER_PROTOCOL,
				              "%s is closing the connection: it says this side broke the protocol "
				              "(%s: %s)", c->peer_addr, rm.code, rm.message);
			else
				set_close_err(c, TETHER_ERR_CLOSED, TETHER_CAT_NONE,
				              "%s is closing the connection (%s: %s)", c->peer_addr, rm.code, rm.message);
			seal(c);
			c->o.prov->t->tls_close(c->tls);
			close_after_flush(c);
			return -1;
		}
		case TETHER_FRAME_STREAM_DATA:
		case TETHER_FRAME_STREAM_END:
		case TETHER_FRAME_STREAM_WINDOW:
		case TETHER_FRAME_STREAM_RESET:
			if (handle_stream_frame(c, &f) < 0)
				return -1;
			break;
		default:
			break;
		}
	}
	return c->state == ST_CLOSED ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Timers                                                              */
/* ------------------------------------------------------------------ */

static void expire_requests(tether_conn *c, uint64_t now)
{
	pending_req **pp = &c->pending;

	while (*pp) {
		pending_req *p = *pp;
		if (p->deadline && now >= p->deadline) {
			tether_error e;
			*pp = p->next;
			c->npending--;
			tether_err_set(&e, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
			               "%s did not answer request %u in time", c->peer_addr, p->id);
			p->cb(p->arg, c, NULL, &e);
			free(p);
			continue;
		}
		pp = &p->next;
	}
}

static void on_timer(uv_timer_t *t)
{
	tether_conn *c = t->data;
	uint64_t now = now_ms();

	switch (c->state) {
	case ST_CONNECTING:
	case ST_PROXY:
		set_close_err(c, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
		              "connecting to %s%s timed out after %u ms", c->peer_addr,
		              c->state == ST_PROXY ? " (waiting for the proxy's answer to CONNECT)" : "",
		              c->o.connect_ms);
		conn_destroy(c);
		return;
	case ST_HANDSHAKE:
	case ST_HELLO:
		set_close_err(c, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
		              "%s did not complete the %s within %u ms", c->peer_addr,
		              c->state == ST_HANDSHAKE ? "TLS handshake" : "protocol greeting",
		              c->o.handshake_ms);
		tether_debug("tls", "%s", c->close_err.detail);
		conn_destroy(c);
		return;
	case ST_LANDING:
		set_close_err(c, TETHER_ERR_UNTRUSTED, TETHER_CAT_PEER_NO_CERTIFICATE,
		              "%s presented no certificate and sent nothing", c->peer_addr);
		seal(c);
		c->o.prov->t->tls_close(c->tls);
		close_after_flush(c);
		return;
	case ST_OPEN:
		break;
	default:
		return;
	}
	resume_reading(c);
	if (c->state != ST_OPEN)
		return;
	expire_requests(c, now);
	drain_check(c);
	if (c->state != ST_OPEN)
		return;
	if (c->ticket_due_ms && now >= c->ticket_due_ms) {
		refresh_ticket(c);
		flush(c);
		if (c->state != ST_OPEN)
			return;
	}
	/* client: a fresh ticket arrived (TLS 1.3, after the handshake) */
	if (c->o.cbs->on_session && TETHER_PROV_HAS(c->o.prov, tls_sessions_received)) {
		unsigned n = c->o.prov->t->tls_sessions_received(c->tls);
		if (n != c->sessions_seen) {
			c->sessions_seen = n;
			c->o.cbs->on_session(c->o.cb_arg, c);
			if (c->state != ST_OPEN)
				return;
		}
	}
	/* not reading because the peer's own requests are still running: its
	 * pongs wait unread too, so they prove nothing either way */
	if (c->o.keepalive_ms && c->read_paused != PAUSE_INFLIGHT) {
		/* anything that arrived after the PING proves the peer alive as
		 * well as its PONG would (protocol.md, section 6): on a lossy link
		 * the PONG may wait behind stream data that TCP is retransmitting */
		if (c->ping_outstanding && c->last_rx_ms > c->ping_sent_ms)
			c->ping_outstanding = 0;
		if (c->ping_outstanding && now - c->ping_sent_ms >= 2ull * c->o.keepalive_ms) {
			set_close_err(c, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
			              "%s stopped answering keepalive pings (nothing for %llu ms)",
			              c->peer_addr, (unsigned long long)(now - c->last_rx_ms));
			log_warn("%s", c->close_err.detail);
			conn_destroy(c);
			return;
		}
		if (!c->ping_outstanding && now - c->last_rx_ms >= c->o.keepalive_ms) {
			unsigned char out[TETHER_FRAME_PING_FRAME_LEN], op[8];
			uint64_t seq = ++c->ping_seq;
			memcpy(op, &seq, 8);
			if (tether_frame_encode_ping(TETHER_FRAME_PING, op, out, NULL) == 0) {
				send_frame(c, out, sizeof(out));
				flush(c);
			}
			c->ping_outstanding = 1;
			c->ping_sent_ms = now;
		}
	}
	if (c->o.idle_ms && !c->npending && !c->inflight_in && !c->read_paused &&
	    now - c->last_activity_ms >= c->o.idle_ms) {
		tether_debug("rpc", "closing idle connection with %s", c->peer_addr);
		tether_conn_close(c, "idle", "idle timeout");
	}
}

static void arm_keepalive(tether_conn *c)
{
	uint64_t tick = 1000;

	if (c->o.keepalive_ms && c->o.keepalive_ms / 2 < tick)
		tick = c->o.keepalive_ms / 2 ? c->o.keepalive_ms / 2 : 1;
	uv_timer_start(&c->timer, on_timer, tick, tick);
}

/* ------------------------------------------------------------------ */
/* Setup                                                               */
/* ------------------------------------------------------------------ */

#ifndef _WIN32
#ifdef TCP_RTO_MAX_MS
#define TETHER_TCP_RTO_MAX_MS TCP_RTO_MAX_MS
#else
#define TETHER_TCP_RTO_MAX_MS 44 /* linux/tcp.h since 6.15; Debian 12's headers are older */
#endif
#endif

static void set_sockopts(tether_conn *c)
{
	uv_os_fd_t fd;
	unsigned ka = c->o.keepalive_ms ? (c->o.keepalive_ms + 999) / 1000 : 15;

	uv_tcp_nodelay(&c->tcp, 1);
	uv_tcp_keepalive(&c->tcp, 1, ka);
	if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
		int cnt = 3, intvl = (int)ka;
#ifdef _WIN32 /* TCP_MAXRT: the same limit, in seconds */
		DWORD uto = ka * 4;
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
		setsockopt(fd, IPPROTO_TCP, TCP_MAXRT, &uto, sizeof(uto));
#else
		unsigned int uto = (ka * 4) * 1000; /* data unacknowledged this long: dead */
		/* TCP doubles its retransmission timeout after every loss, up to
		 * 120 s: after 7 losses in a row (30% loss makes that likely over
		 * a long transfer) its next try would come after the keepalive
		 * has given the connection up, even if the link is back.  A cap
		 * of a third of the keepalive interval (at least 1 s) keeps it
		 * trying within that window.  Linux 6.15 and later; elsewhere
		 * setsockopt fails and the kernel's default stays. */
		int rto_max = ka >= 3 ? (int)(ka / 3) * 1000 : 1000;
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
		setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof(uto));
		setsockopt(fd, IPPROTO_TCP, TETHER_TCP_RTO_MAX_MS, &rto_max, sizeof(rto_max));
#endif
	}
}

static void fmt_addr(const struct sockaddr *sa, char *out, size_t cap)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		uv_ip4_name(s4, ip, sizeof(ip));
		port = ntohs(s4->sin_port);
		snprintf(out, cap, "%s:%d", ip, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		uv_ip6_name(s6, ip, sizeof(ip));
		port = ntohs(s6->sin6_port);
		snprintf(out, cap, "[%s]:%d", ip, port);
	} else {
		snprintf(out, cap, "unknown");
	}
}

static tether_conn *conn_new(uv_loop_t *loop, const tether_conn_opts *opts)
{
	tether_conn *c = tether_xcalloc(1, sizeof(*c));

	c->loop = loop;
	c->o = *opts;
	c->data = opts->data;
	c->offload = opts->offload_handshake ||
	             (opts->prov->t->flags & TETHER_PROVIDER_MAY_BLOCK) != 0;
	if (opts->server_name) {
		c->server_name = tether_strdup(opts->server_name);
		c->o.server_name = c->server_name;
	}
	if (opts->session && opts->session_len) {
		c->session = tether_xmalloc(opts->session_len);
		memcpy(c->session, opts->session, opts->session_len);
		c->session_len = opts->session_len;
	}
	c->o.session = c->session;
	if (opts->proxy_host) {
		c->proxy_host = tether_strdup(opts->proxy_host);
		c->o.proxy_host = c->proxy_host;
	}
	if (opts->proxy_auth) {
		c->proxy_auth = tether_strdup(opts->proxy_auth);
		c->o.proxy_auth = c->proxy_auth;
	}
	/* request ids: odd from the server, even from the agent (docs/protocol.md) */
	c->next_id = opts->local_role == TETHER_ROLE_SERVER ? 1 : 2;
	c->started_ms = c->last_rx_ms = c->last_activity_ms = now_ms();
	uv_timer_init(loop, &c->timer);
	c->timer.data = c;
	c->timer_inited = 1;
	tether_frame_decoder_init(&c->dec, 0, NULL);
	c->dec_inited = 1;
	c->local_hello = tether_xcalloc(1, sizeof(*c->local_hello));
	tether_hello_init(c->local_hello, opts->local_role, opts->mode, PACKAGE_VERSION,
	                  opts->instance_id, NULL);
	if (opts->local_role == TETHER_ROLE_AGENT)
		tether_hello_add_capability(c->local_hello, "health", NULL);
	if (opts->tls_role == TETHER_TLS_CLIENT && opts->no_tickets)
		tether_hello_add_capability(c->local_hello, TETHER_CAP_NO_TLS_TICKETS, NULL);
	if (opts->capabilities) {
		size_t i;
		for (i = 0; opts->capabilities[i] && i < 32; i++)
			tether_hello_add_capability(c->local_hello, opts->capabilities[i], NULL);
	}
	return c;
}

static int start_tls(tether_conn *c, tether_error *err)
{
	tether_tls_params tp;
	int r;

	memset(&tp, 0, sizeof(tp));
	tp.io.read = io_read;
	tp.io.write = io_write;
	tp.io.io_arg = c;
	tp.verify = verify_cb;
	tp.verify_arg = c;
	tp.server_name = c->o.server_name;
	tp.session = c->session;
	tp.session_len = c->session_len;
	tp.identity = c->o.identity;
	r = c->o.prov->t->tls_new(c->o.tls_ctx, &tp, &c->tls, err);
	if (r < 0)
		return r;
	c->state = ST_HANDSHAKE;
	uv_timer_start(&c->timer, on_timer, c->o.handshake_ms ? c->o.handshake_ms : 10000, 0);
	if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0)
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot read from the socket");
	if (c->o.tls_role == TETHER_TLS_CLIENT)
		pump(c); /* ClientHello */
	return 0;
}

int tether_conn_accept(uv_loop_t *loop, uv_stream_t *server,
                       const tether_conn_opts *opts, tether_conn **out,
                       tether_error *err)
{
	tether_conn *c = conn_new(loop, opts);
	struct sockaddr_storage ss;
	int len = sizeof(ss), r;

	uv_tcp_init(loop, &c->tcp);
	c->tcp.data = c;
	c->tcp_inited = 1;
	r = uv_accept(server, (uv_stream_t *)&c->tcp);
	if (r < 0) {
		tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "accept failed: %s", uv_strerror(r));
		c->close_err = *err;
		conn_destroy(c);
		return TETHER_ERR_IO;
	}
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
		fmt_addr((struct sockaddr *)&ss, c->peer_addr, sizeof(c->peer_addr));
		c->peer_sa = ss;
		c->has_peer_sa = 1;
	}
	else
		snprintf(c->peer_addr, sizeof(c->peer_addr), "unknown");
	set_sockopts(c);
	r = start_tls(c, err);
	if (r < 0) {
		c->close_err = *err;
		conn_destroy(c);
		return r;
	}
	*out = c;
	return 0;
}

static char *b64(const char *in)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t n = strlen(in), i, o = 0;
	char *out = tether_xmalloc(4 * ((n + 2) / 3) + 1);

	for (i = 0; i < n; i += 3) {
		unsigned v = (unsigned)(unsigned char)in[i] << 16;
		if (i + 1 < n) v |= (unsigned)(unsigned char)in[i + 1] << 8;
		if (i + 2 < n) v |= (unsigned char)in[i + 2];
		out[o++] = t[(v >> 18) & 63];
		out[o++] = t[(v >> 12) & 63];
		out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? t[v & 63] : '=';
	}
	out[o] = '\0';
	return out;
}

/* Through an HTTP proxy: CONNECT host:port, then TLS inside the tunnel. */
static void proxy_start(tether_conn *c)
{
	char req[1024], target[300];
	int l;

	c->state = ST_PROXY;
	if (strchr(c->host, ':'))
		snprintf(target, sizeof(target), "[%s]:%d", c->host, c->port);
	else
		snprintf(target, sizeof(target), "%s:%d", c->host, c->port);
	l = snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tether\r\n", target, target);
	if (c->o.proxy_auth) {
		char *a = b64(c->o.proxy_auth);
		l += snprintf(req + l, sizeof(req) - (size_t)l, "Proxy-Authorization: Basic %s\r\n", a);
		tether_free_secret(a);
	}
	l += snprintf(req + l, sizeof(req) - (size_t)l, "\r\n");
	io_write(c, req, (size_t)l);
	tether_wipe(req, sizeof(req));
	flush(c);
	if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0) {
		set_close_err(c, TETHER_ERR_IO, TETHER_CAT_IO, "cannot read from the proxy");
		conn_destroy(c);
	}
}

static void proxy_input(tether_conn *c, const unsigned char *p, size_t n)
{
	unsigned char *end;
	size_t hdr_len, rest;
	int code = 0;
	tether_error e;

	if (!c->proxy_buf)
		c->proxy_buf = tether_xmalloc(PROXY_MAX + 1);
	if (n > PROXY_MAX - c->proxy_len) {
		set_close_err(c, TETHER_ERR_PROTOCOL, TETHER_CAT_NOT_TLS,
		              "the proxy %s sent an over-long answer to CONNECT", c->peer_addr);
		conn_destroy(c);
		return;
	}
	memcpy(c->proxy_buf + c->proxy_len, p, n);
	c->proxy_len += n;
	c->proxy_buf[c->proxy_len] = '\0';
	end = memmem(c->proxy_buf, c->proxy_len, "\r\n\r\n", 4);
	if (!end)
		return;
	hdr_len = (size_t)(end - c->proxy_buf) + 4;
	if (sscanf((const char *)c->proxy_buf, "HTTP/1.%*d %d", &code) != 1 || code != 200) {
		char line[160];
		size_t ll = strcspn((const char *)c->proxy_buf, "\r\n");
		if (ll >= sizeof(line))
			ll = sizeof(line) - 1;
		memcpy(line, c->proxy_buf, ll);
		line[ll] = '\0';
		set_close_err(c, TETHER_ERR_IO, TETHER_CAT_CONNECTION_REFUSED,
		              "the proxy %s refused CONNECT to %s:%d: %s%s", c->peer_addr, c->host, c->port, line,
		              code == 407 || code == 401 ? " (check the user and password in [polling] "
		              "proxy-credentials-file)" : code == 403 ? " (the proxy does not allow that "
		              "destination or port: check its access rules, e.g. tinyproxy's ConnectPort)" : "");
		conn_destroy(c);
		return;
	}
	rest = c->proxy_len - hdr_len;
	tether_debug("tls", "proxy %s opened a tunnel to %s:%d", c->peer_addr, c->host, c->port);
	snprintf(c->peer_addr, sizeof(c->peer_addr), "%s:%d", c->host, c->port);
	uv_read_stop((uv_stream_t *)&c->tcp);
	uv_timer_stop(&c->timer);
	if (rest) {
		c->carry = tether_xmalloc(rest);
		memcpy(c->carry, c->proxy_buf + hdr_len, rest);
		c->carry_len = rest;
	}
	free(c->proxy_buf);
	c->proxy_buf = NULL;
	memset(&e, 0, sizeof(e));
	if (start_tls(c, &e) < 0) {
		set_close_err(c, e.code, e.category, "%s", e.detail);
		conn_destroy(c);
	}
}

static void on_connect(uv_connect_t *req, int status)
{
	tether_conn *c = req->data;
	tether_error e;

	if (c->state == ST_CLOSED)
		return;
	if (status < 0) {
		int cat = status == UV_ECONNREFUSED ? TETHER_CAT_CONNECTION_REFUSED :
		          status == UV_ETIMEDOUT ? TETHER_CAT_TIMEOUT :
		          status == UV_ECANCELED ? TETHER_CAT_TIMEOUT : TETHER_CAT_CONNECTION_RESET;
		if (!c->close_err.code)
			set_close_err(c, TETHER_ERR_IO, cat, "cannot connect to %s: %s", c->peer_addr,
			              uv_strerror(status));
		conn_destroy(c);
		return;
	}
	set_sockopts(c);
	if (c->o.proxy_host) {
		proxy_start(c);
		return;
	}
	uv_timer_stop(&c->timer);
	memset(&e, 0, sizeof(e));
	if (start_tls(c, &e) < 0) {
		set_close_err(c, e.code, e.category, "%s", e.detail);
		conn_destroy(c);
	}
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	tether_conn *c = req->data;
	int r;

	if (c->state == ST_CLOSED) {
		if (res)
			uv_freeaddrinfo(res);
		return;
	}
	if (status < 0 || !res) {
		set_close_err(c, TETHER_ERR_NOT_FOUND, TETHER_CAT_DNS_FAILURE,
		              "cannot resolve %s: %s", c->host, uv_strerror(status));
		if (res)
			uv_freeaddrinfo(res);
		conn_destroy(c);
		return;
	}
	fmt_addr(res->ai_addr, c->peer_addr, sizeof(c->peer_addr));
	uv_tcp_init(c->loop, &c->tcp);
	c->tcp.data = c;
	c->tcp_inited = 1;
	c->connect_req.data = c;
	r = c->has_bind ? uv_tcp_bind(&c->tcp, (struct sockaddr *)&c->bind_sa, 0) : 0;
	if (r == 0)
		r = uv_tcp_connect(&c->connect_req, &c->tcp, res->ai_addr, on_connect);
	uv_freeaddrinfo(res);
	if (r < 0) {
		set_close_err(c, TETHER_ERR_IO, r == UV_ECONNREFUSED ? TETHER_CAT_CONNECTION_REFUSED :
		              TETHER_CAT_CONNECTION_RESET, "cannot connect to %s: %s", c->peer_addr,
		              uv_strerror(r));
		conn_destroy(c);
	}
}

int tether_conn_connect(uv_loop_t *loop, const char *host, int port,
                        const tether_conn_opts *opts, tether_conn **out,
                        tether_error *err)
{
	tether_conn *c = conn_new(loop, opts);
	struct addrinfo hints;
	char portstr[16];
	int r;

	snprintf(c->host, sizeof(c->host), "%s", host);
	c->port = port;
	if (opts->bind_address) {
		if (uv_ip4_addr(opts->bind_address, 0, (struct sockaddr_in *)&c->bind_sa) < 0 &&
		    uv_ip6_addr(opts->bind_address, 0, (struct sockaddr_in6 *)&c->bind_sa) < 0) {
			tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			               "cannot bind to '%s': not an IPv4 or IPv6 address of this machine",
			               opts->bind_address);
			c->close_reported = 1;
			conn_destroy(c);
			return TETHER_ERR_INVALID;
		}
		c->has_bind = 1;
		c->o.bind_address = NULL; /* borrowed: parsed into bind_sa */
	}
	if (strchr(host, ':'))
		snprintf(c->peer_addr, sizeof(c->peer_addr), "[%s]:%d", host, port);
	else
		snprintf(c->peer_addr, sizeof(c->peer_addr), "%s:%d", host, port);
	c->state = ST_CONNECTING;
	uv_timer_start(&c->timer, on_timer, opts->connect_ms ? opts->connect_ms : 10000, 0);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(portstr, sizeof(portstr), "%d", port);
	c->gai_req.data = c;
	if (opts->proxy_host) {
		snprintf(portstr, sizeof(portstr), "%d", opts->proxy_port);
		snprintf(c->peer_addr, sizeof(c->peer_addr), "%s:%d", opts->proxy_host, opts->proxy_port);
		r = uv_getaddrinfo(loop, &c->gai_req, on_resolved, opts->proxy_host, portstr, &hints);
	} else {
		r = uv_getaddrinfo(loop, &c->gai_req, on_resolved, host, portstr, &hints);
	}
	if (r < 0) {
		tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_DNS_FAILURE, "cannot resolve %s: %s",
		               host, uv_strerror(r));
		c->close_reported = 1;
		conn_destroy(c);
		return TETHER_ERR_NOT_FOUND;
	}
	*out = c;
	return 0;
}

/* ------------------------------------------------------------------ */
/* RPC                                                                 */
/* ------------------------------------------------------------------ */

int tether_conn_request(tether_conn *c, const char *method, json_t *params,
                        uint32_t timeout_ms, tether_conn_response_cb cb, void *arg,
                        tether_error *err)
{
	return tether_conn_request_id(c, method, params, timeout_ms, cb, arg, NULL, err);
}

int tether_conn_request_id(tether_conn *c, const char *method, json_t *params,
                           uint32_t timeout_ms, tether_conn_response_cb cb, void *arg,
                           uint32_t *id_out, tether_error *err)
{
	unsigned char *f = NULL;
	size_t fl = 0;
	pending_req *p;
	uint32_t id;
	int r;

	if (c->state != ST_OPEN || c->draining) {
		json_decref(params);
		return tether_err_set(err, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
		                      "the connection to %s is not open", c->peer_addr);
	}
	if (c->npending >= MAX_PENDING_REQUESTS) {
		json_decref(params);
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_NONE,
		                      "too many requests in flight to %s", c->peer_addr);
	}
	id = c->next_id;
	c->next_id += 2;
	if (c->next_id < 3) {
		json_decref(params);
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_NONE,
		                      "request ids exhausted on the connection to %s", c->peer_addr);
	}
	r = tether_rpc_request_encode(id, method, params, 0, &f, &fl, err);
	json_decref(params);
	if (r < 0)
		return r;
	p = tether_xcalloc(1, sizeof(*p));
	p->id = id;
	p->cb = cb;
	p->arg = arg;
	p->deadline = timeout_ms ? now_ms() + timeout_ms : 0;
	p->next = c->pending;
	c->pending = p;
	c->npending++;
	c->last_activity_ms = now_ms();
	if (id_out)
		*id_out = id;
	send_frame(c, f, fl);
	free(f);
	flush(c);
	return 0;
}

int tether_conn_respond(tether_conn *c, uint32_t id, json_t *result,
                        const char *code, const char *message, const char *category)
{
	unsigned char *f = NULL;
	size_t fl = 0;
	tether_error e;
	int r;

	if (c->inflight_in)
		c->inflight_in--;
	c->last_activity_ms = now_ms();
	if (c->state != ST_OPEN) {
		json_decref(result);
		return TETHER_ERR_CLOSED;
	}
	if (result) {
		r = tether_rpc_result_encode(id, result, 0, &f, &fl, &e);
		json_decref(result);
		if (r < 0) {
			log_error("cannot encode the answer to request %u: %s", id, e.detail);
			r = tether_rpc_error_encode(id, TETHER_RPC_ERR_INTERNAL, "the answer could not be encoded",
			                            NULL, &f, &fl, &e);
		}
	} else {
		r = tether_rpc_error_encode(id, code ? code : TETHER_RPC_ERR_INTERNAL,
		                            message ? message : "failed", category, &f, &fl, &e);
	}
	if (r < 0)
		return r;
	send_frame(c, f, fl);
	free(f);
	flush(c);
	drain_check(c);
	return 0;
}

int tether_conn_respond_raw(tether_conn *c, uint32_t id, const char *json, size_t len)
{
	unsigned char *f = NULL;
	size_t fl = 0;
	tether_error e;
	int r;

	if (c->state != ST_OPEN) {
		if (c->inflight_in)
			c->inflight_in--;
		return TETHER_ERR_CLOSED;
	}
	r = tether_rpc_result_encode_raw(id, json, len, 0, &f, &fl, &e);
	if (r < 0) {
		log_error("cannot encode the answer to request %u: %s", id, e.detail);
		return tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_INTERNAL,
		                           "the answer could not be encoded", NULL);
	}
	if (c->inflight_in)
		c->inflight_in--;
	c->last_activity_ms = now_ms();
	send_frame(c, f, fl);
	free(f);
	flush(c);
	drain_check(c);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Streams                                                             */
/* ------------------------------------------------------------------ */

static stream *stream_get(tether_conn *c, uint32_t id)
{
	stream *st = stream_find(c, id);
	if (!st) {
		st = tether_xcalloc(1, sizeof(*st));
		st->id = id;
		st->next = c->streams;
		c->streams = st;
	}
	return st;
}

int tether_conn_stream_accept(tether_conn *c, uint32_t id, const tether_stream_handler *h, void *arg)
{
	stream *st;

	if (c->state != ST_OPEN)
		return TETHER_ERR_CLOSED;
	st = stream_get(c, id);
	if (st->in_open)
		return TETHER_ERR_EXISTS;
	st->ih = h;
	st->iarg = arg;
	st->in_open = 1;
	st->recv_window = TETHER_STREAM_WINDOW_INITIAL;
	/* its data frames are assembled in one kept buffer (frame.h) */
	tether_frame_decoder_keep(&c->dec, TETHER_FRAME_DATA_MAX);
	return 0;
}

int tether_conn_stream_window(tether_conn *c, uint32_t id, uint32_t window)
{
	stream *st = stream_find(c, id);
	unsigned char f[TETHER_FRAME_WINDOW_FRAME_LEN];
	uint32_t extra;

	if (!st || !st->in_open || c->state != ST_OPEN)
		return TETHER_ERR_CLOSED;
	if (window > TETHER_FRAME_WINDOW_MAX)
		window = TETHER_FRAME_WINDOW_MAX;
	if (st->recv_window >= window)
		return 0;
	extra = window - st->recv_window;
	if (tether_frame_encode_window(id, extra, f, NULL) < 0)
		return TETHER_ERR_INTERNAL;
	st->recv_window = window;
	send_frame(c, f, sizeof(f));
	flush(c);
	return 0;
}

void tether_conn_stream_consumed(tether_conn *c, uint32_t id, size_t n)
{
	stream *st = stream_find(c, id);
	unsigned char f[TETHER_FRAME_WINDOW_FRAME_LEN];

	if (!st || !st->in_open || c->state != ST_OPEN)
		return;
	st->consumed_pending += n;
	if (st->consumed_pending < GRANT_BATCH && st->recv_window >= GRANT_BATCH)
		return;
	if (tether_frame_encode_window(id, (uint32_t)st->consumed_pending, f, NULL) == 0) {
		st->recv_window += (uint32_t)st->consumed_pending;
		st->consumed_pending = 0;
		send_frame(c, f, sizeof(f));
		flush(c);
	}
}

int tether_conn_stream_open(tether_conn *c, uint32_t id, const tether_stream_handler *h, void *arg)
{
	stream *st;

	if (c->state != ST_OPEN)
		return TETHER_ERR_CLOSED;
	st = stream_get(c, id);
	if (st->out_open)
		return TETHER_ERR_EXISTS;
	st->oh = h;
	st->oarg = arg;
	st->out_open = 1;
	st->send_window = TETHER_STREAM_WINDOW_INITIAL;
	return 0;
}

long tether_conn_stream_send(tether_conn *c, uint32_t id, const void *data, size_t len)
{
	stream *st = stream_find(c, id);
	unsigned char hdr[TETHER_FRAME_HEADER_LEN];
	size_t n = len;
	tether_error e;

	if (c->state != ST_OPEN || !st || !st->out_open)
		return TETHER_ERR_CLOSED;
	if (n > st->send_window)
		n = st->send_window;
	if (n > TETHER_FRAME_DATA_MAX)
		n = TETHER_FRAME_DATA_MAX;
	if (n == 0 || out_held(c) >= SEND_QUEUE_HIGH) {
		st->want_writable = 1;
		return 0;
	}
	if (tether_frame_header_write(TETHER_FRAME_STREAM_DATA, id, (uint32_t)n, hdr, NULL) < 0)
		return TETHER_ERR_INTERNAL;
	st->send_window -= (uint32_t)n;
	{
		/* Room for the records first (TLS adds at most 22 bytes to each
		 * of 16 KiB, well under 1/16), so the buffer does not grow by
		 * doubling and copying while a 256 KiB frame is encrypted.  A
		 * small frame goes out as one record with its header; a large
		 * one as a 9-byte record and then full records straight from
		 * the caller's buffer, without copying it first. */
		unsigned char small[TETHER_FRAME_HEADER_LEN + 4096];
		int r;
		seal(c); /* RPC frames of this batch, from before the stream opened, go first */
		if (c->state == ST_CLOSED)
			return TETHER_ERR_CLOSED;
		wbuf_reserve(c, c->wlen + n + n / 16 + 512);
		if (n <= 4096) {
			memcpy(small, hdr, sizeof(hdr));
			memcpy(small + sizeof(hdr), data, n);
			r = c->o.prov->t->tls_write(c->tls, small, sizeof(hdr) + n, &e);
		} else {
			r = c->o.prov->t->tls_write(c->tls, hdr, sizeof(hdr), &e);
			if (r >= 0)
				r = c->o.prov->t->tls_write(c->tls, data, n, &e);
		}
		if (r < 0) {
			set_close_err(c, e.code, e.category, "TLS write to %s failed: %s", c->peer_addr, e.detail);
			conn_destroy(c);
			return TETHER_ERR_CLOSED;
		}
	}
	flush(c);
	if (st->send_window == 0 || out_held(c) >= SEND_QUEUE_HIGH)
		st->want_writable = 1;
	return (long)n;
}

int tether_conn_stream_end(tether_conn *c, uint32_t id, const unsigned char sha256[32], json_t *trailer)
{
	stream *st = stream_find(c, id);
	unsigned char *f = NULL;
	size_t fl = 0;
	int r;

	if (c->state != ST_OPEN || !st || !st->out_open)
		return TETHER_ERR_CLOSED;
	r = tether_frame_encode_stream_end(id, sha256, trailer, &f, &fl, NULL);
	if (r < 0)
		return r;
	send_frame(c, f, fl);
	free(f);
	flush(c);
	st->out_open = 0;
	stream_free_if_done(c, st);
	return 0;
}

int tether_conn_stream_reset(tether_conn *c, uint32_t id, const char *code, const char *message)
{
	stream *st = stream_find(c, id);
	unsigned char *f = NULL;
	size_t fl = 0;

	if (!st)
		return TETHER_ERR_NOT_FOUND;
	if (c->state == ST_OPEN && tether_frame_encode_reset(id, code ? code : "cancelled",
	                                                     message ? message : "reset", &f, &fl, NULL) == 0) {
		send_frame(c, f, fl);
		flush(c);
	}
	free(f);
	st->in_open = st->out_open = 0;
	stream_free_if_done(c, st);
	return 0;
}

void tether_conn_stream_release(tether_conn *c, uint32_t id)
{
	stream *st = stream_find(c, id);

	if (!st)
		return;
	st->in_open = st->out_open = 0;
	stream_free_if_done(c, st);
}

/* ------------------------------------------------------------------ */
/* Accessors                                                           */
/* ------------------------------------------------------------------ */

int tether_conn_is_open(const tether_conn *c) { return c->state == ST_OPEN && !c->draining; }

static void drain_check(tether_conn *c)
{
	if (c->draining && c->state == ST_OPEN && !c->npending && !c->inflight_in && !c->read_paused)
		tether_conn_close(c, "reconfigured", c->drain_msg);
}

void tether_conn_close_when_idle(tether_conn *c, const char *message)
{
	if (c->state != ST_OPEN) {
		tether_conn_close(c, "reconfigured", message);
		return;
	}
	c->draining = 1;
	snprintf(c->drain_msg, sizeof(c->drain_msg), "%s", message ? message : "closing");
	drain_check(c);
}
size_t tether_conn_load(const tether_conn *c)
{
	const stream *st;
	size_t n = c->npending + c->inflight_in;

	for (st = c->streams; st; st = st->next)
		n++;
	return n;
}
const char *tether_conn_peer_addr(const tether_conn *c) { return c->peer_addr; }
const tether_tls_info *tether_conn_tls_info(const tether_conn *c) { return &c->info; }
const tether_hello *tether_conn_peer_hello(const tether_conn *c) { return c->peer_hello; }
void tether_conn_set_data(tether_conn *c, void *data) { c->data = data; }
void *tether_conn_get_data(const tether_conn *c) { return c->data; }
uint64_t tether_conn_rtt_start(const tether_conn *c) { return c->started_ms; }

int tether_conn_peer_tp(const tether_conn *c, tether_thumbprint *out)
{
	if (!c->has_peer_tp)
		return TETHER_ERR_NOT_FOUND;
	*out = c->peer_tp;
	return 0;
}

int tether_conn_peer_cert(const tether_conn *c, const unsigned char **der, size_t *len)
{
	const unsigned char *d = NULL;
	size_t l = 0;

	if (!c->pinned || !c->tls || c->o.prov->t->tls_peer_cert(c->tls, &d, &l) < 0 || !l)
		return TETHER_ERR_NOT_FOUND;
	*der = d;
	*len = l;
	return 0;
}

int tether_conn_peer_sockaddr(const tether_conn *c, struct sockaddr_storage *out)
{
	if (!c->has_peer_sa)
		return TETHER_ERR_NOT_FOUND;
	*out = c->peer_sa;
	return 0;
}

int tether_conn_session(tether_conn *c, unsigned char **out, size_t *len)
{
	if (!c->tls || !c->pinned || !c->o.prov->t->tls_get_session)
		return TETHER_ERR_NOT_FOUND;
	return c->o.prov->t->tls_get_session(c->tls, out, len);
}

const char *tether_process_instance_id(tether_prov *prov)
{
	/* several loops ask at once when a daemon starts: one of them makes
	 * it, under the lock, or two ids could mix and the server would take
	 * this process for a clone of itself */
	static char id[TETHER_HELLO_INSTANCE_ID_LEN + 1];
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	unsigned char r[16];

	pthread_mutex_lock(&lock);
	if (!id[0]) {
		prov->t->random_bytes(r, sizeof(r));
		tether_hex(r, sizeof(r), id);
	}
	pthread_mutex_unlock(&lock);
	return id;
}
