/* The server's target registry: SQLite, <state_dir>/registry.db, owned by
 * the daemon (WAL mode, busy timeout, schema versioned with
 * PRAGMA user_version and created on open).
 *
 * A target is an agent the server commands: a unique name, a mode
 * ("listening": the agent is the TLS server at host:port; "polling": the
 * agent connects to us, no host/port), its pinned SHA-256 thumbprint, tags,
 * and the result of its last health check.
 *
 * Every function returns 0 or a negative TETHER_ERR_* with err set to a
 * message saying what failed and what to do.  Out-parameters are set only
 * on success.  A registry handle is used from one thread at a time. */
#ifndef TETHER_REGISTRY_H
#define TETHER_REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "tether/provider.h"

#define REG_NAME_MAX 64          /* target names and tags: 1-64 of [A-Za-z0-9_.-] */
#define REG_TAGS_MAX 32          /* tags per target */
#define REG_DEFAULT_PORT 10933   /* a listening agent's default port */

typedef struct registry registry;

typedef struct reg_target {
	char *name;
	char *mode;                  /* "listening" or "polling" */
	char *host;                  /* NULL for polling */
	int port;                    /* 0 for polling */
	char *sha256;                /* 64 lower-case hex digits */
	char **tags;                 /* n_tags strings */
	size_t n_tags;
	int64_t created, updated;    /* epoch seconds (set by the registry on add) */
	/* The last health check; NULL / 0 / -1 if never checked. */
	char *last_state;            /* healthy, unreachable, untrusted, handshake_failed, timeout */
	char *last_category;         /* NULL unless something failed */
	char *last_error;            /* the message, NULL unless something failed */
	int64_t last_checked;        /* when the last check finished, 0: never */
	int64_t last_seen;           /* last healthy check, 0: never */
	int64_t last_rtt_ms;         /* -1: unknown */
	char *last_tls_version;
	char *last_cipher;
	char *last_peer_sha256;      /* what the peer presented (even when untrusted) */
	char *last_cert_signature_algorithm;
	/* rotate-agent-certificate: the agent's new thumbprint, accepted
	 * beside sha256 from before identity.promote until the target is
	 * re-pinned to it; NULL when no agent rotation is pending */
	char *next_sha256;
	/* rotate-certificate: the server identity this target's agent has
	 * still to retire (trust.retire); NULL when none */
	char *retire_sha256;
} reg_target;

/* One health-check result for registry_record_health.  Strings may be
 * NULL.  checked is the check's end time (0: now). */
typedef struct reg_health {
	const char *name;
	const char *state;
	const char *category;
	const char *error;
	int64_t checked;
	int64_t rtt_ms;              /* -1: unknown */
	const char *tls_version;
	const char *cipher;
	const char *peer_sha256;
	const char *cert_signature_algorithm;
} reg_health;

/* Open or create the registry at path (the file is created 0600). */
int registry_open(const char *path, registry **out, tether_error *err);
void registry_close(registry *reg);
/* The registry's SQLite handle, for modules that keep their own tables in
 * the same database (server/tasks_store.c).  Owned by the registry; use it
 * from the registry's thread only. */
struct sqlite3;
struct sqlite3 *registry_db(registry *reg);
/* An SQLite failure on db (the registry's handle) as a message that says
 * what failed, why and what to do (what: "add target 'x'", ...): a lock
 * another process holds is category locked and names that process (PID
 * and name from /proc/locks) when it can be found; a read-only database
 * says so.  Returns the negative code. */
int registry_db_fail(struct sqlite3 *db, int rc, tether_error *err, const char *what);
/* How long to wait for another process's lock (default 5000 ms). */
void registry_set_busy_timeout(registry *reg, int ms);

/* Name and tag rule: 1-64 of [A-Za-z0-9_.-].  what: "target name", "tag". */
int registry_name_ok(const char *name, const char *what, tether_error *err);

/* Parse a listening agent's address: HOST, HOST:PORT, [IPv6]:PORT or
 * https://HOST:PORT[/] (default port REG_DEFAULT_PORT).  *host is
 * malloc'd. */
int registry_parse_address(const char *s, char **host, int *port, tether_error *err);

/* Add t (created/updated and last_* are ignored).  EXISTS if the name is
 * taken, INVALID if a field is bad. */
int registry_target_add(registry *reg, const reg_target *t, tether_error *err);
/* NOT_FOUND if absent.  Free *out with reg_target_clear. */
int registry_target_get(registry *reg, const char *name, reg_target *out, tether_error *err);
/* All targets (those carrying tag, if not NULL), sorted by name.  Free
 * with reg_target_list_free(*out, *n). */
int registry_target_list(registry *reg, const char *tag, reg_target **out, size_t *n,
                         tether_error *err);
int registry_target_remove(registry *reg, const char *name, tether_error *err);
/* Pin a new thumbprint (64 lower hex).  old_sha256 (may be NULL) receives
 * the previous one.  NOT_FOUND if absent. */
int registry_target_set_thumbprint(registry *reg, const char *name, const char *sha256,
                                   char old_sha256[65], tether_error *err);
/* Set (or, with NULL, clear) the target's pending next thumbprint (see
 * reg_target.next_sha256).  set_thumbprint clears it.  NOT_FOUND if
 * absent. */
int registry_target_set_next(registry *reg, const char *name, const char *next_sha256, tether_error *err);
/* Set (or, with NULL, clear) reg_target.retire_sha256.  NOT_FOUND if
 * absent. */
int registry_target_set_retire(registry *reg, const char *name, const char *sha256, tether_error *err);
/* Record n results in one transaction.  Results for targets removed in
 * the meantime are skipped. */
int registry_record_health(registry *reg, const reg_health *results, size_t n,
                           tether_error *err);

void reg_target_clear(reg_target *t);
void reg_target_list_free(reg_target *v, size_t n);

/* The JSON form (names of DESIGN.md): name, mode, host, port, address,
 * sha256, tags, created, updated, state, category, error, last_checked,
 * last_seen, rtt_ms, tls_version, cipher, peer_sha256,
 * cert_signature_algorithm, next_sha256, retire_sha256.  Times are ISO 8601 UTC or null. */
json_t *reg_target_to_json(const reg_target *t);

#endif
