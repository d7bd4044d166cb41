/*
 * Agent services: the methods a trusted server may call.
 *
 * The daemon (agent/daemon.c) receives a request on one of its loops and
 * hands it to a service as an agent_req.  The service answers exactly once
 * with agent_req_reply / agent_req_error, now or later, ON THE SAME LOOP
 * (agent_req_loop).  If the connection closes first, the answer is dropped
 * silently (agent_req_alive says so); work that must survive a dropped
 * connection (a running script) keeps its state on disk, not in the req.
 *
 * Streams (file transfer): a request may carry one stream in each
 * direction, identified by the request id (docs/protocol.md, section 5).
 *  - incoming (upload): the service calls agent_req_accept_stream inside
 *    its handler, before returning; data then arrives through ops->on_data
 *    and ends with ops->on_end (the sender's SHA-256 + trailer) or
 *    ops->on_reset.  The service calls agent_req_consumed(n) once it has
 *    written n bytes, which opens the sender's window again (bounded memory).
 *  - outgoing (download): agent_req_open_stream, then agent_req_send while
 *    it accepts bytes; when it returns 0 wait for ops->on_writable; finish
 *    with agent_req_end_stream (SHA-256 + trailer) and then the reply.
 * ops->on_closed is called if the connection goes away while a stream is
 * open; the req must not be used for sending after that, but must still be
 * released with agent_req_reply/agent_req_error (they just free it).
 */
#ifndef TETHER_AGENT_SERVICE_H
#define TETHER_AGENT_SERVICE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <jansson.h>
#include <uv.h>
#include "loader.h"

typedef struct agent_req agent_req;

typedef struct agent_stream_ops {
	int (*on_data)(agent_req *r, const unsigned char *data, size_t len); /* < 0: reset */
	void (*on_end)(agent_req *r, const unsigned char sha256[32], json_t *trailer);
	void (*on_reset)(agent_req *r, const char *code, const char *message);
	void (*on_writable)(agent_req *r);
	void (*on_closed)(agent_req *r);
} agent_stream_ops;

/* What a service may know about the request. */
const char *agent_req_method(const agent_req *r);
json_t *agent_req_params(const agent_req *r);        /* borrowed, valid until the reply */
const char *agent_req_server(const agent_req *r);    /* caller's SHA-256 thumbprint (hex) */
const char *agent_req_peer_addr(const agent_req *r);
uv_loop_t *agent_req_loop(const agent_req *r);
int agent_req_alive(const agent_req *r);             /* connection still open */
void agent_req_set_data(agent_req *r, void *data);
void *agent_req_get_data(const agent_req *r);

/* Answer (exactly once; frees r).  result is stolen. */
void agent_req_reply(agent_req *r, json_t *result);
/* code: an rpc.h TETHER_RPC_ERR_* token; category may be NULL. */
void agent_req_error(agent_req *r, const char *code, const char *message, const char *category);

/* Streams. */
int agent_req_accept_stream(agent_req *r, const agent_stream_ops *ops);
void agent_req_consumed(agent_req *r, size_t n);
/* Raise the incoming stream's window at once (tether_conn_stream_window). */
int agent_req_stream_window(agent_req *r, uint32_t window);
int agent_req_open_stream(agent_req *r, const agent_stream_ops *ops);
/* Bytes accepted (0: window closed or send queue full; wait for
 * on_writable), or negative if the connection is gone. */
ssize_t agent_req_send(agent_req *r, const void *data, size_t len);
int agent_req_end_stream(agent_req *r, const unsigned char sha256[32], json_t *trailer);
int agent_req_reset_stream(agent_req *r, const char *code, const char *message);

/* The agent's context for services. */
typedef struct agent_env {
	tether_prov *prov;            /* digests: prov->t->digest_new/update/final */
	const char *state_dir;        /* the instance's state directory */
	const char *work_dir;         /* <state>/work: default file root, script dirs */
	const char *const *file_roots; /* [files] roots, NULL-terminated */
	int script_enabled;           /* [services] script */
	int file_enabled;             /* [services] file */
	uint32_t script_retention_s;  /* [scripts] retention: uncompleted tickets removed after */
} agent_env;

/* A service: called on the request's loop for each of its methods. */
typedef struct agent_service {
	const char *prefix;           /* "script." or "file." */
	int (*init)(const agent_env *env);   /* once at start (main thread) */
	void (*handle)(agent_req *r);
	void (*shutdown)(void);       /* at exit (main thread, loops stopped) */
} agent_service;

extern const agent_service agent_service_script;  /* agent/service_script.c */
extern const agent_service agent_service_file;    /* agent/service_file.c */

#endif
