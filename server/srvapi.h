/*
 * What the server daemon offers its modules (tasks, transfers): calling a
 * target, whatever its mode.  Everything runs on the daemon's single loop.
 *
 * A listening target is connected to on demand (the connection is held and
 * reused); a polling target is reached over the connection it holds open:
 * if it is not connected the call waits up to [polling] wait seconds for it,
 * then fails with "not connected since ...".
 */
#ifndef TETHER_SRVAPI_H
#define TETHER_SRVAPI_H

#include <stdint.h>
#include <jansson.h>
#include <uv.h>
#include "audit.h"
#include "conn.h"
#include "registry.h"

typedef struct srv srv;

uv_loop_t *srv_loop(srv *s);
registry *srv_registry(srv *s);
tether_audit *srv_audit(srv *s);
tether_prov *srv_prov(srv *s);
const char *srv_state_dir(srv *s);
/* A setting of the server's config file (def if absent). */
const char *srv_config_get(srv *s, const char *section, const char *key, const char *def);
/* This server's own SHA-256 thumbprint (hex). */
const char *srv_sha256(srv *s);

/* Answer of a call: resp (NULL on failure, then err says why, with a
 * category).  resp is valid only during the callback. */
typedef void (*srv_reply_fn)(void *arg, const tether_rpc_response *resp, const tether_error *err);
/* Call method on target; params is stolen.  timeout_ms 0: the default
 * ([timeouts] request). */
int srv_target_call(srv *s, const char *target, const char *method, json_t *params,
                    uint32_t timeout_ms, srv_reply_fn cb, void *arg);

/* Get an open connection to target (for streams); ready() is called once
 * with the connection or NULL and an error.  The connection is the daemon's:
 * don't close it. */
typedef void (*srv_conn_fn)(void *arg, tether_conn *c, const tether_error *err);
void srv_target_conn(srv *s, const char *target, srv_conn_fn ready, void *arg);

/* Identities and rotation primitives. */
const char *srv_previous_sha256(srv *s);                 /* "" if none */
/* Reload current and previous identities after a slot change. */
int srv_identities_reload(srv *s, tether_error *err);
/* The server identity a target trusts (default: current). */
int srv_target_trusts(srv *s, const char *target, char out[65]);
int srv_target_set_trusts(srv *s, const char *target, const char *sha256);
/* Close a target's connections; the next call makes a fresh one. */
void srv_target_close(srv *s, const char *target);
/* While set, the target may also present next_sha256 (agent rotation);
 * NULL clears.  Recorded in the registry (it outlives a restart); when
 * the target connects presenting it, the server re-pins the target to it. */
int srv_target_set_next_pin(srv *s, const char *target, const char *next_sha256, tether_error *err);
/* Present this identity (not stored; e.g. a recovery identity) to target's
 * next listening connection; NULL clears. */
void srv_target_set_oneoff_identity(srv *s, const char *target, tether_identity *id);
/* Present this identity to every polling agent that connects (a recovery
 * in progress); NULL ends it.  The polling listener's handshakes run on
 * worker threads and may still use an identity given here after it was
 * replaced: free it only through srv_retire_identity. */
void srv_set_recovery_identity(srv *s, tether_identity *id);
/* Keep id until the server exits (then it is freed), for identities a
 * worker thread may still be using. */
void srv_retire_identity(srv *s, tether_identity *id);

/* A target that still trusts the previous identity is connected: the
 * rotation module continues its rotation by itself (server/rotation.c). */
void srv_rotation_target_back(srv *s, const char *target);

/* Modules hook into the admin socket: return 1 if method was handled. */
struct admin_call;
typedef int (*srv_admin_fn)(srv *s, struct admin_call *call, const char *method, json_t *params);
/* Modules hook into start-up (after the registry is open and before the
 * admin socket accepts) and shutdown. */
typedef struct srv_module {
	const char *name;
	int (*start)(srv *s, tether_error *err);
	srv_admin_fn admin;
	void (*stop)(srv *s);
} srv_module;

/* Pre-authentication (registration): a polling connection whose
 * certificate is not registered is kept only if a module accepts it here
 * (return 1), and then every request on it goes to preauth_request and
 * nothing else of the protocol is reachable.  The module answers with
 * tether_conn_respond (on the daemon loop) and may close the connection. */
typedef struct srv_preauth {
	int (*accept)(srv *s, const char *sha256, const struct sockaddr_storage *peer);
	void (*request)(srv *s, tether_conn *c, const char *sha256, uint32_t id, const char *method,
	                json_t *params);
	void (*closed)(srv *s, tether_conn *c, const char *sha256);
} srv_preauth;
/* At most one module registers it (from its start hook). */
void srv_set_preauth(srv *s, const srv_preauth *p);
/* The registry changed behind the daemon's back (a module added a target):
 * refresh its caches. */
void srv_targets_changed(srv *s, const char *name);

extern const srv_module srv_module_tasks;      /* server/tasks.c: exec, run-script, task */
extern const srv_module srv_module_transfer;   /* server/transfer.c: upload, download */
extern const srv_module srv_module_registration; /* server/registration.c: register, tokens */
extern const srv_module srv_module_rotation;     /* server/rotation.c: rotate, rekey, check */

#endif
