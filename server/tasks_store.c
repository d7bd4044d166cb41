/* Durable tasks on SQLite.  See tasks_store.h. */
#include "config.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "error.h"
#include "registry.h"
#include "tasks_store.h"
#include "util.h"

#define TASKS_SCHEMA_VERSION 1
#define DEFAULT_LIST 50
#define DEFAULT_MAX_BYTES (1024u * 1024)

static const char schema_v1[] =
	"CREATE TABLE IF NOT EXISTS tasks ("
	" id INTEGER PRIMARY KEY,"
	" target TEXT NOT NULL,"
	" ticket TEXT NOT NULL CHECK (length(ticket) = 32 AND ticket NOT GLOB '*[^0-9a-f]*'),"
	" command TEXT NOT NULL,"
	" state TEXT NOT NULL CHECK (state IN ('pending', 'queued', 'running', 'finished',"
	"   'cancelled', 'timed_out', 'unknown', 'failed')),"
	" exit_code INTEGER,"
	" created INTEGER NOT NULL,"
	" started,"
	" ended,"
	" error TEXT,"
	" category TEXT,"
	" next_seq INTEGER NOT NULL DEFAULT 1,"
	" agent_seq INTEGER,"
	" cancel_requested INTEGER NOT NULL DEFAULT 0,"
	" completed INTEGER NOT NULL DEFAULT 0"
	");"
	"CREATE INDEX IF NOT EXISTS tasks_target ON tasks (target, id);"
	"CREATE INDEX IF NOT EXISTS tasks_open ON tasks (id) WHERE completed = 0;"
	"CREATE TABLE IF NOT EXISTS task_output ("
	" task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,"
	" seq INTEGER NOT NULL,"
	" stream TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),"
	" time,"
	" data BLOB NOT NULL,"
	" PRIMARY KEY (task_id, seq)"
	") WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS tasks_schema (version INTEGER NOT NULL);"
	"INSERT INTO tasks_schema (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM tasks_schema);";

#define TASK_COLS \
	"id, target, ticket, command, state, exit_code, created, started, ended, error, " \
	"category, next_seq, agent_seq, cancel_requested, completed"

enum {
	ST_INSERT, ST_GET, ST_LIST, ST_LIST_TARGET, ST_UNFINISHED, ST_SEQS, ST_OUT_INSERT,
	ST_SET_SEQS, ST_SET_STATE, ST_SET_EXIT, ST_SET_STARTED, ST_SET_ENDED, ST_SET_ERROR,
	ST_CANCEL, ST_COMPLETED, ST_OUTPUT, ST__COUNT
};

static const char *const sql[ST__COUNT] = {
	[ST_INSERT] = "INSERT INTO tasks (target, ticket, command, state, created) "
	              "VALUES (?1, ?2, ?3, 'pending', ?4)",
	[ST_GET] = "SELECT " TASK_COLS " FROM tasks WHERE id = ?1",
	[ST_LIST] = "SELECT " TASK_COLS " FROM tasks ORDER BY id DESC LIMIT ?1",
	[ST_LIST_TARGET] = "SELECT " TASK_COLS " FROM tasks WHERE target = ?2 ORDER BY id DESC LIMIT ?1",
	[ST_UNFINISHED] = "SELECT " TASK_COLS " FROM tasks WHERE completed = 0 ORDER BY id",
	[ST_SEQS] = "SELECT next_seq, agent_seq, state FROM tasks WHERE id = ?1",
	[ST_OUT_INSERT] = "INSERT INTO task_output (task_id, seq, stream, time, data) "
	                  "VALUES (?1, ?2, ?3, ?4, ?5)",
	[ST_SET_SEQS] = "UPDATE tasks SET next_seq = ?2, agent_seq = ?3 WHERE id = ?1",
	[ST_SET_STATE] = "UPDATE tasks SET state = ?2 WHERE id = ?1",
	[ST_SET_EXIT] = "UPDATE tasks SET exit_code = ?2 WHERE id = ?1",
	[ST_SET_STARTED] = "UPDATE tasks SET started = ?2 WHERE id = ?1",
	[ST_SET_ENDED] = "UPDATE tasks SET ended = ?2 WHERE id = ?1",
	[ST_SET_ERROR] = "UPDATE tasks SET error = ?2, category = ?3 WHERE id = ?1",
	[ST_CANCEL] = "UPDATE tasks SET cancel_requested = 1 WHERE id = ?1",
	[ST_COMPLETED] = "UPDATE tasks SET completed = 1 WHERE id = ?1",
	[ST_OUTPUT] = "SELECT seq, stream, time, data FROM task_output WHERE task_id = ?1 AND seq > ?2 "
	              "ORDER BY seq",
};

struct task_store {
	sqlite3 *db;
	sqlite3_stmt *st[ST__COUNT];
};

/* The tasks live in the registry's database: its messages (a lock names
 * the process holding it; read-only, full, damaged) apply as they are. */
static int fail(task_store *ts, int rc, tether_error *err, const char *what)
{
	if ((rc & 0xff) == SQLITE_CONSTRAINT)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "cannot %s: a value is not valid (%s)", what, sqlite3_errmsg(ts->db));
	return registry_db_fail(ts->db, rc, err, what);
}

static void rollback(task_store *ts)
{
	if (!sqlite3_get_autocommit(ts->db))
		sqlite3_exec(ts->db, "ROLLBACK", NULL, NULL, NULL);
}

static int exec_sql(task_store *ts, const char *s, tether_error *err, const char *what)
{
	int rc = sqlite3_exec(ts->db, s, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : fail(ts, rc, err, what);
}

static sqlite3_stmt *stmt(task_store *ts, int which)
{
	sqlite3_stmt *s = ts->st[which];
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return s;
}

/* Step a statement that returns no row. */
static int step_done(task_store *ts, sqlite3_stmt *s, tether_error *err, const char *what)
{
	int rc = sqlite3_step(s);
	int r = rc == SQLITE_DONE ? 0 : fail(ts, rc, err, what);
	sqlite3_reset(s);
	return r;
}

static int read_version(task_store *ts, int *version, tether_error *err)
{
	sqlite3_stmt *s = NULL;
	int rc, r;

	rc = sqlite3_prepare_v2(ts->db, "SELECT version FROM tasks_schema", -1, &s, NULL);
	if (rc != SQLITE_OK) {
		/* no table yet: a database without tasks */
		*version = 0;
		return 0;
	}
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*version = sqlite3_column_int(s, 0);
		r = 0;
	} else if (rc == SQLITE_DONE) {
		*version = 0;
		r = 0;
	} else {
		r = fail(ts, rc, err, "read the task tables' schema version");
	}
	sqlite3_finalize(s);
	return r;
}

int task_store_open(sqlite3 *db, task_store **out, tether_error *err)
{
	task_store *ts = tether_xcalloc(1, sizeof(*ts));
	int r, i, version = 0;

	ts->db = db;
	if ((r = read_version(ts, &version, err)) < 0)
		goto out;
	if (version > TASKS_SCHEMA_VERSION) {
		r = tether_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                   "the task tables have schema version %d, written by a newer "
		                   "tether-server (this one knows up to version %d): upgrade "
		                   "tether-server, or restore a backup made by this version",
		                   version, TASKS_SCHEMA_VERSION);
		goto out;
	}
	if (version < TASKS_SCHEMA_VERSION) {
		if ((r = exec_sql(ts, "BEGIN IMMEDIATE", err, "create the task tables")) < 0)
			goto out;
		if ((r = exec_sql(ts, schema_v1, err, "create the task tables")) < 0 ||
		    (r = exec_sql(ts, "COMMIT", err, "create the task tables")) < 0) {
			rollback(ts);
			goto out;
		}
	}
	for (i = 0; i < ST__COUNT; i++) {
		int rc = sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &ts->st[i], NULL);
		if (rc != SQLITE_OK) {
			r = fail(ts, rc, err, "prepare the task queries");
			goto out;
		}
	}
	*out = ts;
	return 0;
out:
	task_store_close(ts);
	return r;
}

void task_store_close(task_store *ts)
{
	int i;

	if (!ts)
		return;
	for (i = 0; i < ST__COUNT; i++)
		sqlite3_finalize(ts->st[i]);
	free(ts);
}

int task_store_create(task_store *ts, const char *target, const char *ticket,
                      const char *command, int64_t *id, tether_error *err)
{
	sqlite3_stmt *s = stmt(ts, ST_INSERT);
	int r;

	sqlite3_bind_text(s, 1, target, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 2, ticket, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 3, command, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(s, 4, (sqlite3_int64)time(NULL));
	r = step_done(ts, s, err, "record a new task");
	if (r < 0)
		return r;
	*id = (int64_t)sqlite3_last_insert_rowid(ts->db);
	return 0;
}

static char *col_str(sqlite3_stmt *s, int i)
{
	const unsigned char *v = sqlite3_column_text(s, i);
	return v ? tether_strdup((const char *)v) : NULL;
}

/* A dynamically typed column (time, started, ended) as JSON. */
static json_t *col_json(sqlite3_stmt *s, int i)
{
	switch (sqlite3_column_type(s, i)) {
	case SQLITE_INTEGER:
		return json_integer((json_int_t)sqlite3_column_int64(s, i));
	case SQLITE_FLOAT:
		return json_real(sqlite3_column_double(s, i));
	case SQLITE_TEXT:
		return json_string((const char *)sqlite3_column_text(s, i));
	default:
		return NULL;
	}
}

static void bind_json(sqlite3_stmt *s, int i, json_t *v)
{
	if (json_is_integer(v))
		sqlite3_bind_int64(s, i, (sqlite3_int64)json_integer_value(v));
	else if (json_is_real(v))
		sqlite3_bind_double(s, i, json_real_value(v));
	else if (json_is_string(v))
		sqlite3_bind_text(s, i, json_string_value(v), -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(s, i);
}

static void row_to_rec(sqlite3_stmt *s, task_rec *t)
{
	const unsigned char *tk;

	memset(t, 0, sizeof(*t));
	t->id = (int64_t)sqlite3_column_int64(s, 0);
	t->target = col_str(s, 1);
	tk = sqlite3_column_text(s, 2);
	snprintf(t->ticket, sizeof(t->ticket), "%s", tk ? (const char *)tk : "");
	t->command = col_str(s, 3);
	t->state = col_str(s, 4);
	if (sqlite3_column_type(s, 5) != SQLITE_NULL) {
		t->has_exit_code = 1;
		t->exit_code = sqlite3_column_int(s, 5);
	}
	t->created = (int64_t)sqlite3_column_int64(s, 6);
	t->started = col_json(s, 7);
	t->ended = col_json(s, 8);
	t->error = col_str(s, 9);
	t->category = col_str(s, 10);
	t->next_seq = (int64_t)sqlite3_column_int64(s, 11);
	if (sqlite3_column_type(s, 12) != SQLITE_NULL) {
		t->has_agent_seq = 1;
		t->agent_seq = (int64_t)sqlite3_column_int64(s, 12);
	}
	t->cancel_requested = sqlite3_column_int(s, 13);
	t->completed = sqlite3_column_int(s, 14);
}

int task_store_get(task_store *ts, int64_t id, task_rec *out, tether_error *err)
{
	sqlite3_stmt *s = stmt(ts, ST_GET);
	int rc, r;

	sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		row_to_rec(s, out);
		r = 0;
	} else if (rc == SQLITE_DONE) {
		r = tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                   "there is no task %lld: 'tether-server task list' shows the tasks",
		                   (long long)id);
	} else {
		r = fail(ts, rc, err, "read a task");
	}
	sqlite3_reset(s);
	return r;
}

static int list_rows(task_store *ts, sqlite3_stmt *s, task_rec **out, size_t *n,
                     tether_error *err, const char *what)
{
	task_rec *v = NULL;
	size_t cnt = 0, cap = 0;
	int rc;

	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 16;
			v = realloc(v, cap * sizeof(*v));
			if (!v)
				abort();
		}
		row_to_rec(s, &v[cnt++]);
	}
	sqlite3_reset(s);
	if (rc != SQLITE_DONE) {
		task_rec_list_free(v, cnt);
		return fail(ts, rc, err, what);
	}
	*out = v;
	*n = cnt;
	return 0;
}

int task_store_list(task_store *ts, const char *target, unsigned limit, task_rec **out,
                    size_t *n, tether_error *err)
{
	sqlite3_stmt *s = stmt(ts, target ? ST_LIST_TARGET : ST_LIST);

	sqlite3_bind_int64(s, 1, limit ? (sqlite3_int64)limit : DEFAULT_LIST);
	if (target)
		sqlite3_bind_text(s, 2, target, -1, SQLITE_TRANSIENT);
	return list_rows(ts, s, out, n, err, "list the tasks");
}

int task_store_unfinished(task_store *ts, task_rec **out, size_t *n, tether_error *err)
{
	return list_rows(ts, stmt(ts, ST_UNFINISHED), out, n, err, "list the unfinished tasks");
}

static int set_one(task_store *ts, int which, int64_t id, tether_error *err, const char *what)
{
	sqlite3_stmt *s = stmt(ts, which);
	sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
	return step_done(ts, s, err, what);
}

static int ingest(task_store *ts, int64_t id, const task_out *recs, size_t n,
                  const task_update *upd, size_t *stored, int commit, tether_error *err)
{
	const char *what = "store a task's output";
	sqlite3_stmt *s;
	int64_t next_seq, agent_seq = 0;
	int has_agent_seq, rc, r, final_before;
	size_t i, added = 0;

	if ((r = exec_sql(ts, "BEGIN IMMEDIATE", err, what)) < 0)
		return r;
	s = stmt(ts, ST_SEQS);
	sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(s);
		r = rc == SQLITE_DONE ?
		    tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                   "there is no task %lld", (long long)id) :
		    fail(ts, rc, err, what);
		goto out;
	}
	next_seq = (int64_t)sqlite3_column_int64(s, 0);
	has_agent_seq = sqlite3_column_type(s, 1) != SQLITE_NULL;
	if (has_agent_seq)
		agent_seq = (int64_t)sqlite3_column_int64(s, 1);
	final_before = task_state_final((const char *)sqlite3_column_text(s, 2));
	sqlite3_reset(s);
	if (final_before && n) {
		/* output after the end: ignore (a late duplicate answer) */
		n = 0;
	}

	for (i = 0; i < n; i++) {
		const task_out *o = &recs[i];
		if (has_agent_seq && o->seq <= agent_seq)
			continue;
		s = stmt(ts, ST_OUT_INSERT);
		sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)next_seq);
		sqlite3_bind_text(s, 3, o->stream == TASK_STREAM_STDERR ? "stderr" : "stdout", -1,
		                  SQLITE_STATIC);
		bind_json(s, 4, o->time);
		sqlite3_bind_blob64(s, 5, o->data ? (const void *)o->data : "", (sqlite3_uint64)o->len,
		                    SQLITE_STATIC);
		if ((r = step_done(ts, s, err, what)) < 0)
			goto out;
		next_seq++;
		agent_seq = o->seq;
		has_agent_seq = 1;
		added++;
	}
	if (added) {
		s = stmt(ts, ST_SET_SEQS);
		sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)next_seq);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)agent_seq);
		if ((r = step_done(ts, s, err, what)) < 0)
			goto out;
	}
	if (upd && !final_before) {
		if (upd->state) {
			s = stmt(ts, ST_SET_STATE);
			sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
			sqlite3_bind_text(s, 2, upd->state, -1, SQLITE_STATIC);
			if ((r = step_done(ts, s, err, what)) < 0)
				goto out;
		}
		if (upd->has_exit_code) {
			s = stmt(ts, ST_SET_EXIT);
			sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
			sqlite3_bind_int(s, 2, upd->exit_code);
			if ((r = step_done(ts, s, err, what)) < 0)
				goto out;
		}
		if (upd->started && !json_is_null(upd->started)) {
			s = stmt(ts, ST_SET_STARTED);
			sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
			bind_json(s, 2, upd->started);
			if ((r = step_done(ts, s, err, what)) < 0)
				goto out;
		}
		if (upd->ended && !json_is_null(upd->ended)) {
			s = stmt(ts, ST_SET_ENDED);
			sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
			bind_json(s, 2, upd->ended);
			if ((r = step_done(ts, s, err, what)) < 0)
				goto out;
		}
		if (upd->error || upd->category) {
			s = stmt(ts, ST_SET_ERROR);
			sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
			if (upd->error)
				sqlite3_bind_text(s, 2, upd->error, -1, SQLITE_STATIC);
			if (upd->category)
				sqlite3_bind_text(s, 3, upd->category, -1, SQLITE_STATIC);
			if ((r = step_done(ts, s, err, what)) < 0)
				goto out;
		}
	}
	if (commit && (r = exec_sql(ts, "COMMIT", err, what)) < 0)
		goto out;
	if (stored)
		*stored = added;
	return 0;
out:
	rollback(ts);
	return r;
}

int task_store_ingest(task_store *ts, int64_t id, const task_out *recs, size_t n,
                      const task_update *upd, size_t *stored, tether_error *err)
{
	return ingest(ts, id, recs, n, upd, stored, 1, err);
}

int task_store_ingest_open(task_store *ts, int64_t id, const task_out *recs, size_t n,
                           const task_update *upd, size_t *stored, tether_error *err)
{
	return ingest(ts, id, recs, n, upd, stored, 0, err);
}

int task_store_commit(task_store *ts, tether_error *err)
{
	int r;

	if (sqlite3_get_autocommit(ts->db))
		return tether_err_set(err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
		                      "cannot store a task's output: no transaction is open");
	if ((r = exec_sql(ts, "COMMIT", err, "store a task's output")) < 0)
		rollback(ts);   /* a failed COMMIT may leave the transaction open */
	return r;
}

void task_store_rollback(task_store *ts)
{
	rollback(ts);
}

int task_store_set_cancel_requested(task_store *ts, int64_t id, tether_error *err)
{
	return set_one(ts, ST_CANCEL, id, err, "record a task's cancellation");
}

/* Needs no fsync of its own: if this commit is lost with the machine, the
 * daemon repeats script.complete at its next start, and the agent's "no
 * such ticket" also marks the task completed.  The next synchronous commit
 * (the WAL is appended in order) makes it durable anyway.  Saves an
 * fdatasync on the daemon's loop per task. */
int task_store_set_completed(task_store *ts, int64_t id, tether_error *err)
{
	const char *what = "record that a task's ticket was freed";
	int r, relaxed = sqlite3_get_autocommit(ts->db) &&
	                 sqlite3_exec(ts->db, "PRAGMA synchronous = OFF", NULL, NULL, NULL) == SQLITE_OK;
	int rc;

	r = set_one(ts, ST_COMPLETED, id, err, what);
	/* back to the registry's own setting (server/registry.c) */
	if (relaxed && (rc = sqlite3_exec(ts->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL)) != SQLITE_OK)
		return fail(ts, rc, err, what);
	return r;
}

int task_store_output(task_store *ts, int64_t id, int64_t after_seq, size_t max_bytes,
                      task_out **out, size_t *n, int *more, tether_error *err)
{
	sqlite3_stmt *s = stmt(ts, ST_OUTPUT);
	task_out *v = NULL;
	size_t cnt = 0, cap = 0, bytes = 0;
	int rc, m = 0;

	if (!max_bytes)
		max_bytes = DEFAULT_MAX_BYTES;
	sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)after_seq);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		size_t len = (size_t)sqlite3_column_bytes(s, 3);
		const void *blob = sqlite3_column_blob(s, 3);
		task_out *o;

		if (cnt && bytes + len > max_bytes) {
			m = 1;
			break;
		}
		if (cnt == cap) {
			cap = cap ? cap * 2 : 64;
			v = realloc(v, cap * sizeof(*v));
			if (!v)
				abort();
		}
		o = &v[cnt++];
		memset(o, 0, sizeof(*o));
		o->seq = (int64_t)sqlite3_column_int64(s, 0);
		o->stream = !strcmp((const char *)sqlite3_column_text(s, 1), "stderr") ?
		            TASK_STREAM_STDERR : TASK_STREAM_STDOUT;
		o->time = col_json(s, 2);
		o->data = tether_xmalloc(len ? len : 1);
		if (len)
			memcpy(o->data, blob, len);
		o->len = len;
		bytes += len;
	}
	sqlite3_reset(s);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		task_out_free(v, cnt);
		return fail(ts, rc, err, "read a task's output");
	}
	*out = v;
	*n = cnt;
	*more = m;
	return 0;
}

void task_rec_clear(task_rec *t)
{
	if (!t)
		return;
	free(t->target);
	free(t->command);
	free(t->state);
	json_decref(t->started);
	json_decref(t->ended);
	free(t->error);
	free(t->category);
	memset(t, 0, sizeof(*t));
}

void task_rec_list_free(task_rec *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		task_rec_clear(&v[i]);
	free(v);
}
