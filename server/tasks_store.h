/* Durable remote-execution tasks: their storage in the server's SQLite
 * database (the registry's, see registry_db), and the JSON form of output
 * records shared by the agent's script service, the admin methods and the
 * CLI.
 *
 * Tables (schema version in tasks_schema, independent of the registry's
 * PRAGMA user_version):
 *   tasks        id, target, ticket (32 hex, the agent's handle), command
 *                (JSON: the script.start parameters), state, exit_code,
 *                created (epoch s), started/ended (as the agent reported
 *                them: number or string), error, category, next_seq (the
 *                seq the next stored record gets), agent_seq (the last
 *                agent record stored, NULL: none), cancel_requested,
 *                completed (nothing left to do with the agent: it
 *                acknowledged script.complete, or the task ended on our
 *                side).
 *   task_output  task_id, seq (1, 2, ... per task, our own numbering),
 *                stream ("stdout"/"stderr"), time (as the agent gave it),
 *                data (the raw bytes).
 *
 * States: pending (not yet acknowledged by the agent), queued, running
 * (the agent's), and the final ones: finished, cancelled, timed_out,
 * unknown (the agent's), failed (tether itself failed; error and category
 * say why).  A final state is stored together with the last output, in one
 * transaction, so a reader that sees the final state has all the output.
 *
 * Every function returns 0 or a negative TETHER_ERR_* with err set.  The
 * store is used from one thread (the daemon's loop).  task_state_final and
 * the record functions (task_out_*, base64, UTF-8) are in tasks_records.c,
 * which needs no SQLite: the tether-server front links it. */
#ifndef TETHER_TASKS_STORE_H
#define TETHER_TASKS_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <sqlite3.h>
#include "tether/provider.h"

#define TASK_TICKET_HEX 33            /* 32 hex digits + NUL */
#define TASK_STREAM_STDOUT 0
#define TASK_STREAM_STDERR 1

typedef struct task_store task_store;

typedef struct task_rec {
	int64_t id;
	char *target;
	char ticket[TASK_TICKET_HEX];
	char *command;                    /* JSON text */
	char *state;
	int has_exit_code;
	int exit_code;
	int64_t created;                  /* epoch seconds */
	json_t *started, *ended;          /* as the agent reported them; NULL: not yet */
	char *error, *category;           /* NULL unless failed */
	int64_t next_seq;                 /* seq of the next stored record (first: 1) */
	int has_agent_seq;
	int64_t agent_seq;
	int cancel_requested;
	int completed;
} task_rec;

/* One output record.  When read back, data and time are owned by the
 * record (task_out_clear). */
typedef struct task_out {
	int64_t seq;
	int stream;                       /* TASK_STREAM_* */
	json_t *time;                     /* a number or string, or NULL */
	unsigned char *data;
	size_t len;
} task_out;

/* What an agent answer changes: the new state (NULL: unchanged) and, for a
 * final one, the exit code. */
typedef struct task_update {
	const char *state;
	int has_exit_code;
	int exit_code;
	json_t *started, *ended;          /* borrowed; NULL: unchanged */
	const char *error, *category;     /* for "failed" */
} task_update;

/* Create the tables if needed.  db stays the caller's; close the store
 * before it. */
int task_store_open(sqlite3 *db, task_store **out, tether_error *err);
void task_store_close(task_store *ts);

int task_state_final(const char *state);

/* A new task in state "pending".  command: JSON text. */
int task_store_create(task_store *ts, const char *target, const char *ticket,
                      const char *command, int64_t *id, tether_error *err);
/* NOT_FOUND if absent.  Free with task_rec_clear. */
int task_store_get(task_store *ts, int64_t id, task_rec *out, tether_error *err);
/* Newest first; target may be NULL; limit 0: 50. */
int task_store_list(task_store *ts, const char *target, unsigned limit, task_rec **out,
                    size_t *n, tether_error *err);
/* Tasks the daemon still has work for (oldest first): those not marked
 * completed, i.e. not final, or final but the agent's ticket not yet freed
 * with script.complete.  A task that failed on our side, or was cancelled
 * before the agent had it, is marked completed when it ends. */
int task_store_unfinished(task_store *ts, task_rec **out, size_t *n, tether_error *err);

/* In one transaction: append the agent's records (recs[i].seq is the
 * agent's; records at or below the stored agent_seq are skipped, so an
 * answer received twice stores nothing twice), then apply upd (may be
 * NULL).  *stored (may be NULL) receives the number of records added. */
int task_store_ingest(task_store *ts, int64_t id, const task_out *recs, size_t n,
                      const task_update *upd, size_t *stored, tether_error *err);
/* The same, but on success the transaction is left open: this connection
 * already reads what it stored, nothing is durable or visible to others
 * until task_store_commit (a synchronous commit), and nothing else may be
 * written on the connection meanwhile.  On failure it was rolled back. */
int task_store_ingest_open(task_store *ts, int64_t id, const task_out *recs, size_t n,
                           const task_update *upd, size_t *stored, tether_error *err);
/* Commit the open transaction; on failure it is rolled back. */
int task_store_commit(task_store *ts, tether_error *err);
void task_store_rollback(task_store *ts);
int task_store_set_cancel_requested(task_store *ts, int64_t id, tether_error *err);
int task_store_set_completed(task_store *ts, int64_t id, tether_error *err);

/* Records with seq > after_seq, in order, up to about max_bytes of data
 * (at least one record; 0: 1 MiB).  *more: records remain.  Free with
 * task_out_free. */
int task_store_output(task_store *ts, int64_t id, int64_t after_seq, size_t max_bytes,
                      task_out **out, size_t *n, int *more, tether_error *err);

void task_rec_clear(task_rec *t);
void task_rec_list_free(task_rec *v, size_t n);
void task_out_clear(task_out *o);
void task_out_free(task_out *v, size_t n);

/* The record's JSON form: {"seq", "stream", "time", "text"} when the data
 * is valid UTF-8 without NUL bytes, else {"seq", "stream", "time",
 * "base64"}. */
json_t *task_out_to_json(const task_out *o);
/* Parse one; data and time are the caller's (task_out_clear). */
int task_out_from_json(json_t *j, task_out *out, tether_error *err);

/* Base64 (RFC 4648, padded).  decode: INVALID on a bad character or
 * length. */
char *task_b64_encode(const unsigned char *in, size_t len);
int task_b64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len);
int task_utf8_ok(const unsigned char *s, size_t len);

#endif
