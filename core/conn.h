/* One tether connection: TCP on libuv, TLS through the provider's
 * memory-buffer session, the pin check, HELLO, frames and RPC, keepalive
 * and timeouts.  Every callback runs on the connection's loop thread. */
#ifndef TETHER_CONN_H
#define TETHER_CONN_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>
#include <jansson.h>
#include "hello.h"
#include "loader.h"
#include "rpc.h"
#include "thumbprint.h"

typedef struct tether_conn tether_conn;

typedef struct tether_conn_cbs {
	/* The pin check: 0 if tp is trusted for this connection, negative
	 * otherwise.  Called inside the handshake where the provider allows
	 * it, and again after every handshake, full or resumed. */
	int (*check_peer)(void *arg, tether_conn *c, const tether_thumbprint *tp);
	/* HELLO exchanged: requests may flow. */
	void (*on_open)(void *arg, tether_conn *c);
	/* An incoming request.  The callee answers with tether_conn_respond
	 * (now or later) and owns nothing: params is borrowed for the call. */
	void (*on_request)(void *arg, tether_conn *c, uint32_t id, const char *method,
	                   json_t *params);
	/* The connection is gone (before or after on_open).  why says why
	 * (code 0 for an orderly close).  c must not be used afterwards. */
	void (*on_close)(void *arg, tether_conn *c, const tether_error *why);
	/* Client role, optional: the server sent a newer session (a TLS 1.3
	 * ticket on a long-lived connection); tether_conn_session returns it.
	 * Noticed on the connection's timer tick (within a second). */
	void (*on_session)(void *arg, tether_conn *c);
} tether_conn_cbs;

/* Stream events for one request id (docs/protocol.md, section 5). */
typedef struct tether_stream_handler {
	/* incoming data: return 0, or negative to reset the stream */
	int (*on_data)(void *arg, tether_conn *c, uint32_t id, const unsigned char *data, size_t len);
	void (*on_end)(void *arg, tether_conn *c, uint32_t id, const unsigned char sha256[32],
	               json_t *trailer);
	void (*on_reset)(void *arg, tether_conn *c, uint32_t id, const char *code, const char *message);
	/* outgoing: more may be sent now */
	void (*on_writable)(void *arg, tether_conn *c, uint32_t id);
	/* the connection is gone while the stream was open */
	void (*on_closed)(void *arg, tether_conn *c, uint32_t id);
} tether_stream_handler;

typedef struct tether_conn_opts {
	int tls_role;                   /* TETHER_TLS_CLIENT / TETHER_TLS_SERVER */
	int local_role;                 /* TETHER_ROLE_AGENT / TETHER_ROLE_SERVER */
	int mode;                       /* TETHER_MODE_LISTENING / POLLING */
	tether_prov *prov;
	tether_tls_ctx *tls_ctx;        /* borrowed: outlives the connection */
	tether_identity *identity;      /* client role: present this one (NULL: ctx's) */
	const char *server_name;        /* client role: SNI / pin hint */
	const unsigned char *session;   /* client role: resume this session */
	size_t session_len;
	uint32_t connect_ms;
	uint32_t handshake_ms;          /* handshake + HELLO */
	uint32_t idle_ms;               /* 0: never */
	uint32_t keepalive_ms;          /* ping interval on a quiet connection; 0: off */
	int landing_page;               /* server role: answer certless HTTP callers */
	const char *landing_text;       /* e.g. "tether-agent is listening" */
	const char *instance_id;        /* our per-process random id (hex) */
	const tether_conn_cbs *cbs;
	void *cb_arg;
	void *data;                     /* initial tether_conn_get_data() */
	/* client role: reach host:port through an HTTP CONNECT proxy; the TLS
	 * session runs end to end through the tunnel. */
	const char *proxy_host;
	int proxy_port;
	const char *proxy_auth;         /* "user:password" for Basic auth, or NULL */
	/* Run the TLS handshake steps on the libuv thread pool, so one loop's
	 * handshakes use every core (always on for a MAY_BLOCK provider).  The
	 * pin is then checked on the loop right after the handshake. */
	int offload_handshake;
	/* client role: this side keeps no TLS sessions (resumption off): its
	 * HELLO says so (TETHER_CAP_NO_TLS_TICKETS) and the server side issues
	 * it no session ticket. */
	int no_tickets;
	/* HELLO capabilities (NULL-terminated); NULL: none beyond the role's */
	const char *const *capabilities;
	/* client role: bind the socket to this local IP address (port 0)
	 * before connecting, or NULL (load generators spread their source
	 * addresses over 127.0.0.0/8 this way). */
	const char *bind_address;
	/* Called with cb_arg right before output is handed to the socket (a
	 * batch of answers among it): the agent writes the audit lines of
	 * those answers first.  May be NULL. */
	void (*before_send)(void *arg, tether_conn *c);
} tether_conn_opts;

/* Accept a connection from a listening stream.  On failure on_close has
 * been called (and an error is returned). */
int tether_conn_accept(uv_loop_t *loop, uv_stream_t *server,
                       const tether_conn_opts *opts, tether_conn **out,
                       tether_error *err);
/* Connect out (DNS, TCP, TLS, HELLO); progress is reported through the
 * callbacks (on_close with a category for failures). */
int tether_conn_connect(uv_loop_t *loop, const char *host, int port,
                        const tether_conn_opts *opts, tether_conn **out,
                        tether_error *err);

/* Client side of a request.  params is stolen.  cb gets the response (or
 * NULL and err on failure: timeout, connection closed).  */
typedef void (*tether_conn_response_cb)(void *arg, tether_conn *c,
                                        const tether_rpc_response *resp,
                                        const tether_error *err);
int tether_conn_request(tether_conn *c, const char *method, json_t *params,
                        uint32_t timeout_ms, tether_conn_response_cb cb, void *arg,
                        tether_error *err);
/* Same, giving the request id (to attach streams to it). */
int tether_conn_request_id(tether_conn *c, const char *method, json_t *params,
                           uint32_t timeout_ms, tether_conn_response_cb cb, void *arg,
                           uint32_t *id_out, tether_error *err);

/* Streams.  Incoming: accept the stream of request id (call it before
 * returning from on_request, or right after sending the request); report
 * consumed bytes to open the sender's window again.  Outgoing: open, send
 * while it accepts bytes (0: wait for on_writable), end with the SHA-256
 * of everything sent.  Either side may reset.  A stream is released when
 * it ended or was reset in both directions it was used. */
int tether_conn_stream_accept(tether_conn *c, uint32_t id, const tether_stream_handler *h, void *arg);
void tether_conn_stream_consumed(tether_conn *c, uint32_t id, size_t n);
/* Raise the receive window of an accepted stream to window bytes at once
 * (one STREAM_WINDOW frame), for bulk data the receiver consumes as it
 * arrives: a file transfer moves about a third faster on loopback with
 * 4 MiB than with the initial 1 MiB (docs/BENCHMARKS.md).  Never lowers
 * it. */
int tether_conn_stream_window(tether_conn *c, uint32_t id, uint32_t window);
int tether_conn_stream_open(tether_conn *c, uint32_t id, const tether_stream_handler *h, void *arg);
/* Bytes taken (0: window closed or send queue full), negative if gone. */
long tether_conn_stream_send(tether_conn *c, uint32_t id, const void *data, size_t len);
int tether_conn_stream_end(tether_conn *c, uint32_t id, const unsigned char sha256[32], json_t *trailer);
int tether_conn_stream_reset(tether_conn *c, uint32_t id, const char *code, const char *message);
/* Forget the handlers of id (the owner is going away); later frames for
 * it are dropped. */
void tether_conn_stream_release(tether_conn *c, uint32_t id);

/* Answer a request: result (stolen) or an error code and message. */
int tether_conn_respond(tether_conn *c, uint32_t id, json_t *result,
                        const char *code, const char *message, const char *category);
/* Answer with a result already serialised (json: len bytes, a complete
 * JSON object; see tether_rpc_result_encode_raw). */
int tether_conn_respond_raw(tether_conn *c, uint32_t id, const char *json, size_t len);

/* Orderly close: GOAWAY, close_notify, then close.  Idempotent. */
void tether_conn_close(tether_conn *c, const char *code, const char *message);
/* Take no new requests; close (as tether_conn_close) once the requests in
 * flight both ways are answered. */
void tether_conn_close_when_idle(tether_conn *c, const char *message);
/* Close at once. */
void tether_conn_abort(tether_conn *c, int category, const char *why);

int tether_conn_is_open(const tether_conn *c);
/* Work in flight on c: requests sent and not answered, requests received
 * and not answered, and open streams (a server spreading requests over
 * several connections picks the least busy). */
size_t tether_conn_load(const tether_conn *c);
const char *tether_conn_peer_addr(const tether_conn *c);     /* "1.2.3.4:5" */
/* The thumbprint the peer presented (valid once has_peer_tp is set). */
int tether_conn_peer_tp(const tether_conn *c, tether_thumbprint *out);
/* The certificate the peer presented, DER (valid while c is open), once
 * it passed the pin check: NOT_FOUND before. */
int tether_conn_peer_cert(const tether_conn *c, const unsigned char **der, size_t *len);
const tether_tls_info *tether_conn_tls_info(const tether_conn *c);
/* The peer's HELLO: only in on_open (NULL before and after; it is not
 * kept for the connection's life, 5 KiB each on a server with many). */
const tether_hello *tether_conn_peer_hello(const tether_conn *c);
/* Client role: the session to resume next time (malloc'd) or NULL. */
int tether_conn_session(tether_conn *c, unsigned char **out, size_t *len);
void tether_conn_set_data(tether_conn *c, void *data);
/* The peer's socket address (0, or NOT_FOUND before connect). */
int tether_conn_peer_sockaddr(const tether_conn *c, struct sockaddr_storage *out);
void *tether_conn_get_data(const tether_conn *c);
uint64_t tether_conn_rtt_start(const tether_conn *c); /* ms when connect began */

/* Random per-process instance id (32 hex digits). */
const char *tether_process_instance_id(tether_prov *prov);

#endif
