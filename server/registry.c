/* The target registry on SQLite.  See registry.h. */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "error.h"
#include "registry.h"
#include "util.h"

#define SCHEMA_VERSION 3
#define BUSY_TIMEOUT_MS 5000

struct registry {
	sqlite3 *db;
	char *path;
	sqlite3_stmt *get;               /* registry_target_get's, prepared once */
};

static const char schema_v1[] =
	"CREATE TABLE targets ("
	" name TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 64),"
	" mode TEXT NOT NULL CHECK (mode IN ('listening', 'polling')),"
	" host TEXT,"
	" port INTEGER CHECK (port IS NULL OR port BETWEEN 1 AND 65535),"
	" sha256 TEXT NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),"
	" tags TEXT NOT NULL DEFAULT '[]',"
	" created INTEGER NOT NULL,"
	" updated INTEGER NOT NULL,"
	" last_state TEXT,"
	" last_category TEXT,"
	" last_error TEXT,"
	" last_checked INTEGER,"
	" last_seen INTEGER,"
	" last_rtt_ms INTEGER,"
	" last_tls_version TEXT,"
	" last_cipher TEXT,"
	" last_peer_sha256 TEXT,"
	" last_cert_signature_algorithm TEXT,"
	" CHECK ((mode = 'listening' AND host IS NOT NULL AND port IS NOT NULL) OR"
	"        (mode = 'polling' AND host IS NULL AND port IS NULL))"
	");"
	"PRAGMA user_version = 1;";

/* Migrations: migrations[v - 2] takes a registry from version v - 1 to v,
 * in the same transaction that reads the version. */
static const char *const migrations[] = {
	/* 2: the agent's next thumbprint while rotate-agent-certificate runs
	 * (pinned before identity.promote, so that an agent that switched is
	 * still accepted after a lost answer or a restart of the server) */
	"ALTER TABLE targets ADD COLUMN next_sha256 TEXT"
	" CHECK (next_sha256 IS NULL OR (length(next_sha256) = 64 AND next_sha256 NOT GLOB '*[^0-9a-f]*'));"
	"PRAGMA user_version = 2;",
	/* 3: the server identity the target's agent has still to retire
	 * (rotate-certificate: set before the target is moved to the new
	 * identity, cleared once trust.retire succeeded) */
	"ALTER TABLE targets ADD COLUMN retire_sha256 TEXT"
	" CHECK (retire_sha256 IS NULL OR (length(retire_sha256) = 64 AND retire_sha256 NOT GLOB '*[^0-9a-f]*'));"
	"PRAGMA user_version = 3;",
};

#define TARGET_COLS \
	"name, mode, host, port, sha256, tags, created, updated, last_state, last_category, " \
	"last_error, last_checked, last_seen, last_rtt_ms, last_tls_version, last_cipher, " \
	"last_peer_sha256, last_cert_signature_algorithm, next_sha256, retire_sha256"

/* Who holds the lock that made SQLite give up: the POSIX locks SQLite
 * takes on path-shm (WAL mode: the write, checkpoint, recovery and read
 * locks) and on path (the locking bytes, rollback mode), as /proc/locks
 * lists them.  /proc/locks and stat only: opening and closing the database
 * file here would drop the locks this process's own connection holds
 * (POSIX locks belong to the process and go with any close of the file).
 * A writer is preferred to a reader.  *pid = 0 and comm "" if none is seen
 * (another system, a PID namespace that hides it, /proc not mounted). */
static void lock_holder(const char *path, pid_t *pid, char *comm, size_t cap)
{
	struct stat st[2];
	char *shm = tether_asprintf("%s-shm", path), line[256];
	int have[2], i;
	pid_t self = getpid(), reader = 0;
	FILE *f;

	*pid = 0;
	comm[0] = '\0';
	have[0] = stat(shm, &st[0]) == 0;
	have[1] = stat(path, &st[1]) == 0;
	free(shm);
	if ((!have[0] && !have[1]) || !(f = fopen("/proc/locks", "re")))
		return;
	while (!*pid && fgets(line, sizeof(line), f)) {
		char kind[16], rw[16];
		unsigned maj, min;
		unsigned long ino;
		int p;
		if (strstr(line, "->") ||
		    sscanf(line, "%*d: %15s %*s %15s %d %x:%x:%lu", kind, rw, &p, &maj, &min, &ino) != 6 ||
		    strcmp(kind, "POSIX") || p <= 0 || (pid_t)p == self)
			continue;
		for (i = 0; i < 2; i++)
			if (have[i] && st[i].st_ino == (ino_t)ino && major(st[i].st_dev) == maj &&
			    minor(st[i].st_dev) == min) {
				if (!strcmp(rw, "WRITE"))
					*pid = (pid_t)p;
				else if (!reader)
					reader = (pid_t)p;
			}
	}
	fclose(f);
	if (!*pid)
		*pid = reader;
	if (*pid) {
		char cpath[64];
		FILE *c;
		snprintf(cpath, sizeof(cpath), "/proc/%d/comm", (int)*pid);
		if ((c = fopen(cpath, "re"))) {
			if (fgets(comm, (int)cap, c))
				comm[strcspn(comm, "\n")] = '\0';
			fclose(c);
		}
	}
}

/* Turn an SQLite failure into a message that says what failed, why and
 * what to do. */
static int db_fail(const char *path, sqlite3 *db, int rc, tether_error *err,
                   const char *what)
{
	const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);

	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED: {
		char comm[32], who[80] = "";
		pid_t pid;
		lock_holder(path, &pid, comm, sizeof(comm));
		if (pid)
			snprintf(who, sizeof(who), " (PID %d%s%s)", (int)pid, comm[0] ? ", " : "", comm);
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_LOCKED,
		                      "cannot %s: the registry %s is locked by another process%s, which did "
		                      "not let go in time (SQLite: %s): another tether-server using the same "
		                      "state directory, a backup tool or an sqlite3 shell holds it; only this "
		                      "daemon should write it: stop that process or wait for it to finish, "
		                      "then retry", what, path, who, msg);
	}
	case SQLITE_READONLY:
	case SQLITE_PERM:
		return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
		                      "cannot %s: the registry %s is read-only (SQLite: %s): the daemon's user "
		                      "needs write access to it, to its -wal and -shm files and to the state "
		                      "directory, on a file system mounted read-write: check the owner, the "
		                      "mode and the mount", what, path, msg);
	case SQLITE_CANTOPEN:
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot %s: the registry %s cannot be opened (%s): check that the "
		                      "state directory exists and is writable by the daemon's user",
		                      what, path, msg);
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT:
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot %s: %s is not a valid registry database (%s): restore it "
		                      "from a backup, or move it aside and the daemon starts with an "
		                      "empty registry", what, path, msg);
	case SQLITE_FULL:
	case SQLITE_IOERR:
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot %s: writing the registry %s failed (%s): check free space "
		                      "and the file system of the state directory", what, path, msg);
	case SQLITE_NOMEM:
		return tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                      "cannot %s: out of memory", what);
	default:
		return tether_err_set(err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
		                      "cannot %s: registry %s: %s (SQLite error %d)", what, path, msg, rc);
	}
}

int registry_db_fail(struct sqlite3 *db, int rc, tether_error *err, const char *what)
{
	const char *path = db ? sqlite3_db_filename(db, "main") : NULL;
	return db_fail(path && *path ? path : "registry.db", db, rc, err, what);
}

static int fail(registry *reg, int rc, tether_error *err, const char *what)
{
	return db_fail(reg->path, reg->db, rc, err, what);
}

static int exec_sql(registry *reg, const char *sql, tether_error *err, const char *what)
{
	int rc = sqlite3_exec(reg->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : fail(reg, rc, err, what);
}

static void rollback(registry *reg)
{
	if (!sqlite3_get_autocommit(reg->db))
		sqlite3_exec(reg->db, "ROLLBACK", NULL, NULL, NULL);
}

static int prepare(registry *reg, const char *sql, sqlite3_stmt **st, tether_error *err,
                   const char *what)
{
	int rc = sqlite3_prepare_v2(reg->db, sql, -1, st, NULL);
	return rc == SQLITE_OK ? 0 : fail(reg, rc, err, what);
}

static int pragma_int(registry *reg, const char *sql, int *out, tether_error *err,
                      const char *what)
{
	sqlite3_stmt *st = NULL;
	int r, rc;

	if ((r = prepare(reg, sql, &st, err, what)) < 0)
		return r;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int(st, 0);
		r = 0;
	} else {
		r = fail(reg, rc, err, what);
	}
	sqlite3_finalize(st);
	return r;
}

static int set_wal(registry *reg, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	const char *what = "switch the registry to WAL mode";
	int r, rc;

	if ((r = prepare(reg, "PRAGMA journal_mode = WAL", &st, err, what)) < 0)
		return r;
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW)
		r = fail(reg, rc, err, what);
	else if (strcmp((const char *)sqlite3_column_text(st, 0), "wal"))
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                   "cannot %s: the file system of %s does not support it (journal mode "
		                   "stays '%s'): put the state directory on a local file system",
		                   what, reg->path, (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return r;
}

static int create_schema(registry *reg, tether_error *err)
{
	int r, version = 0;

	r = pragma_int(reg, "PRAGMA user_version", &version, err, "read the registry's schema version");
	if (r < 0)
		return r;
	if (version == SCHEMA_VERSION)
		return 0;
	if (version > SCHEMA_VERSION)
		return tether_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                      "the registry %s has schema version %d, written by a newer "
		                      "tether-server (this one knows up to version %d): upgrade "
		                      "tether-server, or restore a backup made by this version",
		                      reg->path, version, SCHEMA_VERSION);
	/* version 0: a new database; older: migrate.  BEGIN IMMEDIATE, then
	 * look again, so that two processes opening the registry at once
	 * create or migrate it once. */
	if ((r = exec_sql(reg, "BEGIN IMMEDIATE", err, "create the registry's tables")) < 0)
		return r;
	r = pragma_int(reg, "PRAGMA user_version", &version, err, "read the registry's schema version");
	if (r < 0)
		goto out;
	if (version == 0 && (r = exec_sql(reg, schema_v1, err, "create the registry's tables")) < 0)
		goto out;
	if (version == 0)
		version = 1;
	for (; version < SCHEMA_VERSION; version++)
		if ((r = exec_sql(reg, migrations[version - 1], err, "upgrade the registry's tables")) < 0)
			goto out;
	r = exec_sql(reg, "COMMIT", err, "create the registry's tables");
out:
	if (r < 0)
		rollback(reg);
	return r;
}

int registry_open(const char *path, registry **out, tether_error *err)
{
	registry *reg = NULL;
	int fd, rc, r;

	/* Create the file ourselves so that it is 0600 from the start (SQLite
	 * gives the -wal and -shm files the database's mode). */
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		if (e == EROFS)
			return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
			                      "cannot open the registry %s for writing: %s: the file system "
			                      "that holds it is mounted read-only: remount it read-write, or "
			                      "move the state directory to one that is", path, strerror(e));
		if (e == EACCES || e == EPERM)
			return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
			                      "cannot open the registry %s for writing: %s: run the daemon "
			                      "as the owner of the state directory, with write access to "
			                      "it and to the registry files", path, strerror(e));
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot open the registry %s: %s: check that the state directory "
		                      "exists ('tether-server create-instance') and is writable",
		                      path, strerror(e));
	}
	close(fd);

	reg = tether_xcalloc(1, sizeof(*reg));
	reg->path = tether_strdup(path);
	rc = sqlite3_open_v2(path, &reg->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
	                     SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_FULLMUTEX, NULL);
	if (rc != SQLITE_OK) {
		r = fail(reg, rc, err, "open the target registry");
		goto out;
	}
	sqlite3_extended_result_codes(reg->db, 1);
	sqlite3_busy_timeout(reg->db, BUSY_TIMEOUT_MS);
	if (sqlite3_db_readonly(reg->db, "main") == 1) {
		r = db_fail(path, reg->db, SQLITE_READONLY, err, "open the target registry");
		goto out;
	}
	if ((r = set_wal(reg, err)) < 0)
		goto out;
	if ((r = exec_sql(reg, "PRAGMA synchronous = FULL", err, "configure the registry")) < 0)
		goto out;
	if ((r = create_schema(reg, err)) < 0)
		goto out;
	*out = reg;
	reg = NULL;
	r = 0;
out:
	registry_close(reg);
	return r;
}

void registry_close(registry *reg)
{
	if (!reg)
		return;
	sqlite3_finalize(reg->get);
	sqlite3_close_v2(reg->db);
	free(reg->path);
	free(reg);
}

sqlite3 *registry_db(registry *reg)
{
	return reg->db;
}

void registry_set_busy_timeout(registry *reg, int ms)
{
	sqlite3_busy_timeout(reg->db, ms);
}

int registry_parse_address(const char *s, char **host, int *port, tether_error *err)
{
	char *h = NULL;
	int p = 0;
	size_t i;

	if (!s || tether_parse_hostport(s, &h, &p, REG_DEFAULT_PORT) < 0)
		goto bad;
	for (i = 0; h[i]; i++) {
		unsigned char c = (unsigned char)h[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-' || c == '_' || c == ':' || c == '%'))
			goto bad;
	}
	*host = h;
	*port = p;
	return 0;
bad:
	free(h);
	return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
	                      "'%s' is not a valid agent address: use HOST, HOST:PORT, [IPv6]:PORT "
	                      "or https://HOST:PORT (the port defaults to %d)",
	                      s ? s : "(none)", REG_DEFAULT_PORT);
}

static int sha256_ok(const char *s, const char *what, tether_error *err)
{
	size_t i;

	for (i = 0; s && s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			break;
	if (!s || i != 64 || s[i])
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s '%s' is not a SHA-256 thumbprint in canonical form (64 "
		                      "lower-case hex digits)", what, s ? s : "(none)");
	return 0;
}

static int target_ok(const reg_target *t, tether_error *err)
{
	size_t i, j;
	int r;

	if ((r = registry_name_ok(t->name, "target name", err)) < 0)
		return r;
	if (!t->mode || (strcmp(t->mode, "listening") && strcmp(t->mode, "polling")))
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "target '%s': mode '%s' is not valid: use 'listening' or 'polling'",
		                      t->name, t->mode ? t->mode : "(none)");
	if (!strcmp(t->mode, "listening")) {
		if (!t->host || !*t->host || strlen(t->host) > 253 || t->port < 1 || t->port > 65535)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "listening target '%s' needs a host name and a port from 1 "
			                      "to 65535 (HOST:PORT)", t->name);
	} else if (t->host || t->port) {
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "polling target '%s' has no address (the agent connects to the "
		                      "server): leave out the host and port", t->name);
	}
	if ((r = sha256_ok(t->sha256, "thumbprint", err)) < 0)
		return r;
	if (t->n_tags > REG_TAGS_MAX)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "target '%s' has %zu tags: at most %d are allowed",
		                      t->name, t->n_tags, REG_TAGS_MAX);
	for (i = 0; i < t->n_tags; i++) {
		if ((r = registry_name_ok(t->tags[i], "tag", err)) < 0)
			return r;
		for (j = 0; j < i; j++)
			if (!strcmp(t->tags[i], t->tags[j]))
				return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
				                      "tag '%s' is given twice: give each tag once", t->tags[i]);
	}
	return 0;
}

int registry_target_add(registry *reg, const reg_target *t, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	json_t *tags = NULL;
	char *tags_text = NULL, what[128];
	int64_t now = (int64_t)time(NULL);
	size_t i;
	int r, rc;

	if ((r = target_ok(t, err)) < 0)
		return r;
	snprintf(what, sizeof(what), "add target '%s'", t->name);
	tags = json_array();
	for (i = 0; i < t->n_tags; i++)
		json_array_append_new(tags, json_string(t->tags[i]));
	tags_text = json_dumps(tags, JSON_COMPACT);
	r = prepare(reg, "INSERT INTO targets (name, mode, host, port, sha256, tags, created, updated)"
	            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)", &st, err, what);
	if (r < 0)
		goto out;
	sqlite3_bind_text(st, 1, t->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, t->mode, -1, SQLITE_STATIC);
	if (t->host) {
		sqlite3_bind_text(st, 3, t->host, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 4, t->port);
	}
	sqlite3_bind_text(st, 5, t->sha256, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, tags_text, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now);
	rc = sqlite3_step(st);
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
		r = tether_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT,
		                   "a target named '%s' already exists: pick another name, or remove "
		                   "it first ('tether-server target remove %s'); to change its "
		                   "thumbprint use 'tether-server target set-thumbprint'", t->name, t->name);
	else if (rc != SQLITE_DONE)
		r = fail(reg, rc, err, what);
out:
	sqlite3_finalize(st);
	free(tags_text);
	json_decref(tags);
	return r;
}

static char *col_str(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	return s ? tether_strdup((const char *)s) : NULL;
}

static int64_t col_i64(sqlite3_stmt *st, int i, int64_t dflt)
{
	return sqlite3_column_type(st, i) == SQLITE_NULL ? dflt : sqlite3_column_int64(st, i);
}

static void row_to_target(sqlite3_stmt *st, reg_target *t)
{
	json_t *tags;
	size_t i;

	memset(t, 0, sizeof(*t));
	t->name = col_str(st, 0);
	t->mode = col_str(st, 1);
	t->host = col_str(st, 2);
	t->port = (int)col_i64(st, 3, 0);
	t->sha256 = col_str(st, 4);
	tags = json_loads((const char *)sqlite3_column_text(st, 5), 0, NULL);
	if (json_is_array(tags) && json_array_size(tags) > 0) {
		t->tags = tether_xcalloc(json_array_size(tags), sizeof(char *));
		for (i = 0; i < json_array_size(tags); i++) {
			const char *s = json_string_value(json_array_get(tags, i));
			if (s)
				t->tags[t->n_tags++] = tether_strdup(s);
		}
	}
	json_decref(tags);
	t->created = col_i64(st, 6, 0);
	t->updated = col_i64(st, 7, 0);
	t->last_state = col_str(st, 8);
	t->last_category = col_str(st, 9);
	t->last_error = col_str(st, 10);
	t->last_checked = col_i64(st, 11, 0);
	t->last_seen = col_i64(st, 12, 0);
	t->last_rtt_ms = col_i64(st, 13, -1);
	t->last_tls_version = col_str(st, 14);
	t->last_cipher = col_str(st, 15);
	t->last_peer_sha256 = col_str(st, 16);
	t->last_cert_signature_algorithm = col_str(st, 17);
	t->next_sha256 = col_str(st, 18);
	t->retire_sha256 = col_str(st, 19);
}

static int not_found(const char *name, tether_error *err)
{
	return tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
	                      "there is no target named '%s': 'tether-server target list' shows "
	                      "the registered targets", name);
}

/* The daemon reads a target for every request it sends to an agent: the
 * statement is prepared once (compiling it was about 150 000 instructions,
 * more than the rest of a read) and reset after each use, so that no read
 * transaction stays open. */
int registry_target_get(registry *reg, const char *name, reg_target *out, tether_error *err)
{
	sqlite3_stmt *st;
	char what[128];
	int r, rc;

	snprintf(what, sizeof(what), "read target '%.64s'", name ? name : "");
	if ((r = registry_name_ok(name, "target name", err)) < 0)
		return r;
	if (!reg->get) {
		rc = sqlite3_prepare_v3(reg->db, "SELECT " TARGET_COLS " FROM targets WHERE name = ?1", -1,
		                        SQLITE_PREPARE_PERSISTENT, &reg->get, NULL);
		if (rc != SQLITE_OK) {
			reg->get = NULL;
			return fail(reg, rc, err, what);
		}
	}
	st = reg->get;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		row_to_target(st, out);
	else if (rc == SQLITE_DONE)
		r = not_found(name, err);
	else
		r = fail(reg, rc, err, what);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

int registry_target_list(registry *reg, const char *tag, reg_target **out, size_t *n,
                         tether_error *err)
{
	sqlite3_stmt *st = NULL;
	reg_target *v = NULL;
	size_t cnt = 0, cap = 0;
	int r, rc;

	if (tag && (r = registry_name_ok(tag, "tag", err)) < 0)
		return r;
	r = prepare(reg, "SELECT " TARGET_COLS " FROM targets WHERE ?1 IS NULL OR EXISTS "
	            "(SELECT 1 FROM json_each(targets.tags) WHERE json_each.value = ?1) ORDER BY name",
	            &st, err, "list the targets");
	if (r < 0)
		return r;
	if (tag)
		sqlite3_bind_text(st, 1, tag, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 16;
			v = realloc(v, cap * sizeof(*v));
			if (!v)
				abort();
		}
		row_to_target(st, &v[cnt++]);
	}
	if (rc != SQLITE_DONE) {
		r = fail(reg, rc, err, "list the targets");
		reg_target_list_free(v, cnt);
		goto out;
	}
	*out = v;
	*n = cnt;
out:
	sqlite3_finalize(st);
	return r;
}

int registry_target_remove(registry *reg, const char *name, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	char what[128];
	int r, rc;

	if ((r = registry_name_ok(name, "target name", err)) < 0)
		return r;
	snprintf(what, sizeof(what), "remove target '%s'", name);
	if ((r = prepare(reg, "DELETE FROM targets WHERE name = ?1", &st, err, what)) < 0)
		return r;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE)
		r = fail(reg, rc, err, what);
	else if (sqlite3_changes(reg->db) == 0)
		r = not_found(name, err);
	sqlite3_finalize(st);
	return r;
}

int registry_target_set_thumbprint(registry *reg, const char *name, const char *sha256,
                                   char old_sha256[65], tether_error *err)
{
	sqlite3_stmt *st = NULL;
	char what[128], old[65] = "";
	int r, rc;

	if ((r = registry_name_ok(name, "target name", err)) < 0)
		return r;
	if ((r = sha256_ok(sha256, "thumbprint", err)) < 0)
		return r;
	snprintf(what, sizeof(what), "change the thumbprint of target '%s'", name);
	if ((r = exec_sql(reg, "BEGIN IMMEDIATE", err, what)) < 0)
		return r;
	if ((r = prepare(reg, "SELECT sha256 FROM targets WHERE name = ?1", &st, err, what)) < 0)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		r = not_found(name, err);
		goto out;
	}
	if (rc != SQLITE_ROW) {
		r = fail(reg, rc, err, what);
		goto out;
	}
	snprintf(old, sizeof(old), "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	st = NULL;
	/* a new pin ends any pending agent rotation (next_sha256) */
	if ((r = prepare(reg, "UPDATE targets SET sha256 = ?2, updated = ?3, next_sha256 = NULL WHERE name = ?1",
	                 &st, err, what)) < 0)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, sha256, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (int64_t)time(NULL));
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE) {
		r = fail(reg, rc, err, what);
		goto out;
	}
	r = exec_sql(reg, "COMMIT", err, what);
out:
	sqlite3_finalize(st);
	if (r < 0) {
		rollback(reg);
		return r;
	}
	if (old_sha256)
		memcpy(old_sha256, old, sizeof(old));
	return 0;
}

/* sql: an UPDATE of one column with ?1 the name and ?2 the value. */
static int set_column(registry *reg, const char *sql, const char *name, const char *next_sha256,
                      const char *noun, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	char what[160];
	int r, rc;

	if ((r = registry_name_ok(name, "target name", err)) < 0)
		return r;
	if (next_sha256 && (r = sha256_ok(next_sha256, "thumbprint", err)) < 0)
		return r;
	snprintf(what, sizeof(what), "record %s of target '%s'", noun, name);
	if ((r = prepare(reg, sql, &st, err, what)) < 0)
		return r;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (next_sha256)
		sqlite3_bind_text(st, 2, next_sha256, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 2);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE)
		r = fail(reg, rc, err, what);
	else if (sqlite3_changes(reg->db) == 0)
		r = not_found(name, err);
	sqlite3_finalize(st);
	return r;
}

int registry_target_set_next(registry *reg, const char *name, const char *next_sha256, tether_error *err)
{
	return set_column(reg, "UPDATE targets SET next_sha256 = ?2 WHERE name = ?1", name, next_sha256,
	                  "the next thumbprint", err);
}

int registry_target_set_retire(registry *reg, const char *name, const char *sha256, tether_error *err)
{
	return set_column(reg, "UPDATE targets SET retire_sha256 = ?2 WHERE name = ?1", name, sha256,
	                  "the server identity to retire", err);
}

static int state_ok(const char *s)
{
	static const char *const states[] = {
		"healthy", "unreachable", "untrusted", "handshake_failed", "timeout", NULL
	};
	size_t i;

	for (i = 0; s && states[i]; i++)
		if (!strcmp(s, states[i]))
			return 1;
	return 0;
}

static void bind_opt(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

int registry_record_health(registry *reg, const reg_health *results, size_t n,
                           tether_error *err)
{
	sqlite3_stmt *st = NULL;
	const char *what = "record health-check results";
	int64_t now = (int64_t)time(NULL);
	size_t i;
	int r, rc;

	for (i = 0; i < n; i++) {
		if (!results[i].name || !state_ok(results[i].state))
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
			                      "cannot %s: result %zu (target '%s') has state '%s', which is "
			                      "not one of healthy, unreachable, untrusted, handshake_failed, "
			                      "timeout", what, i, results[i].name ? results[i].name : "(none)",
			                      results[i].state ? results[i].state : "(none)");
	}
	if (n == 0)
		return 0;
	if ((r = exec_sql(reg, "BEGIN IMMEDIATE", err, what)) < 0)
		return r;
	r = prepare(reg, "UPDATE targets SET last_state = ?2, last_category = ?3, last_error = ?4,"
	            " last_checked = ?5, last_seen = CASE WHEN ?2 = 'healthy' THEN ?5 ELSE last_seen END,"
	            " last_rtt_ms = ?6, last_tls_version = ?7, last_cipher = ?8, last_peer_sha256 = ?9,"
	            " last_cert_signature_algorithm = ?10 WHERE name = ?1", &st, err, what);
	if (r < 0)
		goto out;
	for (i = 0; i < n; i++) {
		const reg_health *h = &results[i];
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		sqlite3_bind_text(st, 1, h->name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, h->state, -1, SQLITE_STATIC);
		bind_opt(st, 3, h->category);
		bind_opt(st, 4, h->error);
		sqlite3_bind_int64(st, 5, h->checked ? h->checked : now);
		if (h->rtt_ms >= 0)
			sqlite3_bind_int64(st, 6, h->rtt_ms);
		bind_opt(st, 7, h->tls_version);
		bind_opt(st, 8, h->cipher);
		bind_opt(st, 9, h->peer_sha256);
		bind_opt(st, 10, h->cert_signature_algorithm);
		rc = sqlite3_step(st);
		if (rc != SQLITE_DONE) {
			r = fail(reg, rc, err, what);
			goto out;
		}
	}
	sqlite3_finalize(st);
	st = NULL;
	r = exec_sql(reg, "COMMIT", err, what);
out:
	sqlite3_finalize(st);
	if (r < 0)
		rollback(reg);
	return r;
}

void reg_target_clear(reg_target *t)
{
	size_t i;

	if (!t)
		return;
	free(t->name);
	free(t->mode);
	free(t->host);
	free(t->sha256);
	for (i = 0; i < t->n_tags; i++)
		free(t->tags[i]);
	free(t->tags);
	free(t->last_state);
	free(t->last_category);
	free(t->last_error);
	free(t->last_tls_version);
	free(t->last_cipher);
	free(t->last_peer_sha256);
	free(t->last_cert_signature_algorithm);
	free(t->next_sha256);
	free(t->retire_sha256);
	memset(t, 0, sizeof(*t));
}

void reg_target_list_free(reg_target *v, size_t n)
{
	size_t i;

	for (i = 0; v && i < n; i++)
		reg_target_clear(&v[i]);
	free(v);
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *time_or_null(int64_t t)
{
	char buf[32];

	if (t <= 0)
		return json_null();
	tether_iso8601(t, buf, sizeof(buf));
	return json_string(buf);
}

json_t *reg_target_to_json(const reg_target *t)
{
	json_t *o = json_object(), *tags = json_array();
	size_t i;

	json_object_set_new(o, "name", str_or_null(t->name));
	json_object_set_new(o, "mode", str_or_null(t->mode));
	json_object_set_new(o, "host", str_or_null(t->host));
	json_object_set_new(o, "port", t->port ? json_integer(t->port) : json_null());
	if (t->host) {
		char *a = strchr(t->host, ':') ? tether_asprintf("[%s]:%d", t->host, t->port)
		                               : tether_asprintf("%s:%d", t->host, t->port);
		json_object_set_new(o, "address", json_string(a));
		free(a);
	} else {
		json_object_set_new(o, "address", json_null());
	}
	json_object_set_new(o, "sha256", str_or_null(t->sha256));
	for (i = 0; i < t->n_tags; i++)
		json_array_append_new(tags, json_string(t->tags[i]));
	json_object_set_new(o, "tags", tags);
	json_object_set_new(o, "created", time_or_null(t->created));
	json_object_set_new(o, "updated", time_or_null(t->updated));
	json_object_set_new(o, "state", str_or_null(t->last_state));
	json_object_set_new(o, "category", str_or_null(t->last_category));
	json_object_set_new(o, "error", str_or_null(t->last_error));
	json_object_set_new(o, "last_checked", time_or_null(t->last_checked));
	json_object_set_new(o, "last_seen", time_or_null(t->last_seen));
	json_object_set_new(o, "rtt_ms", t->last_rtt_ms >= 0 ? json_integer(t->last_rtt_ms) : json_null());
	json_object_set_new(o, "tls_version", str_or_null(t->last_tls_version));
	json_object_set_new(o, "cipher", str_or_null(t->last_cipher));
	json_object_set_new(o, "peer_sha256", str_or_null(t->last_peer_sha256));
	json_object_set_new(o, "cert_signature_algorithm", str_or_null(t->last_cert_signature_algorithm));
	json_object_set_new(o, "next_sha256", str_or_null(t->next_sha256));
	json_object_set_new(o, "retire_sha256", str_or_null(t->retire_sha256));
	return o;
}
