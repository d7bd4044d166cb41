/*
 * An in-process implementation of the agent_req contract of
 * agent/service.h, for unit tests of the agent's services.
 *
 * Each harness_loop is a libuv loop running on its own thread, as the
 * daemon's worker loops do.  A call hands one request to a service's handle
 * on that loop's thread and collects the single answer.  The harness checks
 * the contract and aborts the test with a message when a service breaks it:
 * an answer given twice, off the request's loop, a result that is not an
 * object or does not fit a 1 MiB RESPONSE frame (answered as too_large, as
 * the daemon does), an invalid error code, a stream accepted outside the
 * handler or beyond its window.
 *
 * Streams: the test plays the server.  harness_push_data/end/reset feed an
 * upload accepted with agent_req_accept_stream (the 1 MiB window is honoured:
 * push waits for agent_req_consumed); harness_take_out reads what the
 * service sent with agent_req_send and grants the window back (then
 * on_writable runs).
 */
#ifndef TETHER_AGENT_REQ_HARNESS_H
#define TETHER_AGENT_REQ_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>
#include "service.h"

typedef struct harness_loop harness_loop;
typedef struct harness_call harness_call;

harness_loop *harness_loop_new(void);
uv_loop_t *harness_loop_uv(harness_loop *hl);
/* Stop the loop as the daemon does at exit: every handle still open is
 * closed without its callback, then the thread is joined.  Calls not
 * answered by then stay unanswered (free them after). */
void harness_loop_free(harness_loop *hl);

/* Hand a request to svc->handle on hl's thread.  params is stolen (NULL:
 * {}).  server: the caller's thumbprint (64 hex). */
harness_call *harness_begin(harness_loop *hl, const agent_service *svc, const char *server,
                            const char *method, json_t *params);
/* Wait for the answer: 0, or -1 after timeout_ms. */
int harness_wait(harness_call *c, uint32_t timeout_ms);
int harness_answered(harness_call *c);
/* The result (borrowed) or NULL after an error. */
json_t *harness_result(harness_call *c);
const char *harness_error_code(harness_call *c);     /* "" when none */
const char *harness_error_message(harness_call *c);
/* The connection goes away: agent_req_alive becomes 0, and on_closed runs
 * for an open stream. */
void harness_close_conn(harness_call *c);
void harness_call_free(harness_call *c);

/* begin + wait (aborts the test after timeout_ms); returns a new reference
 * to the result, or NULL with the error code copied to code (65 bytes). */
json_t *harness_call_sync(harness_loop *hl, const agent_service *svc, const char *server,
                          const char *method, json_t *params, uint32_t timeout_ms,
                          char code[65]);

/* Upload: feed the stream the service accepted.  Waits (up to timeout_ms)
 * for window; returns 0, or -1 (no stream, reset by the service, timeout). */
int harness_push_data(harness_call *c, const void *data, size_t len, uint32_t timeout_ms);
int harness_push_end(harness_call *c, const unsigned char sha256[32], json_t *trailer);
int harness_push_reset(harness_call *c, const char *code, const char *message);
/* Download: take up to cap bytes the service sent (granting them back as
 * window).  Returns the count; *ended is set once agent_req_end_stream was
 * called and everything was taken (sha256/trailer then available). */
size_t harness_take_out(harness_call *c, void *buf, size_t cap, int *ended);
const unsigned char *harness_out_sha256(harness_call *c);
json_t *harness_out_trailer(harness_call *c);       /* borrowed */
/* The code of a reset the service sent on either stream, or NULL. */
const char *harness_stream_reset_code(harness_call *c);

#endif
