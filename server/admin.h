/* The admin socket: how the CLI talks to a running tether-server daemon.
 *
 * A Unix stream socket <run_dir>/admin.sock (0660) in <run_dir> (0750, its
 * group set to [admin] group when one is configured).  Each caller is
 * checked with SO_PEERCRED: allowed if root, the daemon's own user, or a
 * member of [admin] group (primary group or getgrouplist of its passwd
 * entry); others get one JSON error line and are disconnected.
 *
 * Protocol: newline-delimited JSON, at most ADMIN_LINE_MAX bytes a line.
 *   request  {"id": 1, "method": "target.add", "params": {...}}
 *   answer   {"id": 1, "result": ...}
 *         or {"id": 1, "error": {"message": "...", "category": "..."}}
 * Answers may come later and out of order; up to ADMIN_INFLIGHT_MAX
 * requests per connection may be in flight.  An error about the
 * connection itself (refused caller, oversized line) has "id": null and
 * the daemon closes the connection after it.  Error categories are those
 * of DESIGN.md (bad_input, not_found, io, internal, unsupported, ...) and
 * "exists", "permission_denied", "unknown_method", "busy".
 *
 * Auditing: a call marked with admin_call_set_audit writes its audit
 * record (who, method, params.name, ok/error) when it is answered; the
 * audit log given to admin_server_set_audit receives the refused callers
 * and connections closed for oversized lines.
 *
 * Everything here runs on the loop's thread, admin_reply included. */
#ifndef TETHER_ADMIN_H
#define TETHER_ADMIN_H

#include <sys/types.h>
#include <uv.h>
#include <jansson.h>
#include "audit.h"
#include "tether/provider.h"

#define ADMIN_SOCKET_NAME "admin.sock"
#define ADMIN_LINE_MAX (1024 * 1024)
#define ADMIN_INFLIGHT_MAX 64
#define ADMIN_CLIENTS_MAX 128

typedef struct admin_server admin_server;
typedef struct admin_call admin_call;

/* Called for each request.  params is a JSON object (empty if the request
 * had none), borrowed for the duration of the call: json_incref it to keep
 * it.  The handler answers exactly once, now or later, with admin_reply or
 * admin_reply_error. */
typedef void (*admin_handler_fn)(void *arg, admin_call *call, const char *method,
                                 json_t *params);

/* Create run_dir (0750) and listen on run_dir/admin.sock.  admin_group may
 * be NULL or "" (only root and the daemon's user are allowed).  Refuses
 * with TETHER_ERR_EXISTS if another daemon serves this run_dir; removes a
 * stale socket file. */
int admin_server_start(uv_loop_t *loop, const char *run_dir, const char *admin_group,
                       admin_handler_fn handler, void *arg, admin_server **out,
                       tether_error *err);
/* Where connection-level audit records go (refused callers, oversized
 * lines); NULL: none.  a must stay open until admin_server_stop. */
void admin_server_set_audit(admin_server *s, tether_audit *a);
/* Stop listening, disconnect every client, remove the socket file, release
 * the instance lock.  Calls still pending may be answered afterwards (the
 * answer is dropped).  The memory is released once the loop has run the
 * close callbacks, so call it while the loop still runs (before a final
 * uv_walk that closes every handle). */
void admin_server_stop(admin_server *s);
const char *admin_server_socket_path(const admin_server *s);

/* Answer a call (steals result; NULL means JSON null) and free it. */
void admin_reply(admin_call *call, json_t *result);
/* Answer with an error and free the call.  category: see above. */
void admin_reply_error(admin_call *call, const char *message, const char *category);
/* ...from a tether_error (EXISTS -> "exists", PERMISSION ->
 * "permission_denied", else the category's name). */
void admin_reply_tether_error(admin_call *call, const tether_error *err);

/* The caller, for the audit log: "uid=0(root)" (valid until the reply). */
const char *admin_call_user(const admin_call *call);
uid_t admin_call_uid(const admin_call *call);
/* Write an audit record for this call when it is answered (a may be
 * NULL).  Used by admin_targets_dispatch; a must outlive the call. */
void admin_call_set_audit(admin_call *call, tether_audit *a);
/* 0 while the caller is still connected, 1 once it went away. */
int admin_call_abandoned(const admin_call *call);

#endif
