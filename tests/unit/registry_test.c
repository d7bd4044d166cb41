/* The target registry (server/registry.c): round trips and the failure
 * cases: duplicate, not found, bad names, bad fields, locked (by this process
 * and by another, named with its PID), read-only,
 * corrupt and newer databases leave the data intact. */
#include "config.h"
#include "test.h"
#include <sys/stat.h>
#include <sys/wait.h>
#include <sqlite3.h>
#include "error.h"
#include "fsutil.h"
#include "registry.h"
#include "util.h"

#define TP_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define TP_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

typedef struct fixture {
	char *dir;
	char *path;
	registry *reg;
} fixture;

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	tether_error err;

	f->dir = test_tmpdir();
	f->path = tether_asprintf("%s/registry.db", f->dir);
	memset(&err, 0, sizeof(err));
	assert_int_equal(registry_open(f->path, &f->reg, &err), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;

	registry_close(f->reg);
	tether_rmtree(f->dir);
	free(f->dir);
	free(f->path);
	free(f);
	return 0;
}

static int add(registry *reg, const char *name, const char *host, int port, const char *sha,
               const char *tag1, const char *tag2, tether_error *err)
{
	char *tags[2] = { (char *)tag1, (char *)tag2 };
	reg_target t;

	memset(&t, 0, sizeof(t));
	t.name = (char *)name;
	t.mode = (char *)(host ? "listening" : "polling");
	t.host = (char *)host;
	t.port = port;
	t.sha256 = (char *)sha;
	t.tags = tags;
	t.n_tags = tag2 ? 2 : tag1 ? 1 : 0;
	return registry_target_add(reg, &t, err);
}

static size_t count(registry *reg, const char *tag)
{
	reg_target *v = NULL;
	size_t n = 99;
	tether_error err;

	assert_int_equal(registry_target_list(reg, tag, &v, &n, &err), 0);
	reg_target_list_free(v, n);
	return n;
}

static void test_open_creates(void **state)
{
	fixture *f = *state;
	struct stat st;
	sqlite3 *db;
	sqlite3_stmt *s;

	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
	sqlite3_finalize(s);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(s, 0), 3);
	sqlite3_finalize(s);
	sqlite3_close(db);
	assert_int_equal(count(f->reg, NULL), 0);
}

static void test_round_trip(void **state)
{
	fixture *f = *state;
	tether_error err;
	reg_target t;
	reg_target *v;
	size_t n;
	char old[65];
	json_t *j;
	registry *again;

	assert_int_equal(add(f->reg, "web1", "10.0.0.5", 10933, TP_A, "web", "prod", &err), 0);
	assert_int_equal(add(f->reg, "db-1.x_y", "::1", 4443, TP_B, "prod", NULL, &err), 0);
	assert_int_equal(registry_target_get(f->reg, "web1", &t, &err), 0);
	assert_string_equal(t.mode, "listening");
	assert_string_equal(t.host, "10.0.0.5");
	assert_int_equal(t.port, 10933);
	assert_string_equal(t.sha256, TP_A);
	assert_int_equal(t.n_tags, 2);
	assert_string_equal(t.tags[1], "prod");
	assert_true(t.created > 0);
	assert_null(t.last_state);
	assert_int_equal(t.last_rtt_ms, -1);
	j = reg_target_to_json(&t);
	assert_string_equal(json_string_value(json_object_get(j, "address")), "10.0.0.5:10933");
	assert_true(json_is_null(json_object_get(j, "state")));
	json_decref(j);
	reg_target_clear(&t);

	assert_int_equal(registry_target_get(f->reg, "db-1.x_y", &t, &err), 0);
	j = reg_target_to_json(&t);
	assert_string_equal(json_string_value(json_object_get(j, "address")), "[::1]:4443");
	json_decref(j);
	reg_target_clear(&t);

	assert_int_equal(registry_target_list(f->reg, NULL, &v, &n, &err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[0].name, "db-1.x_y"); /* sorted */
	reg_target_list_free(v, n);
	assert_int_equal(count(f->reg, "prod"), 2);
	assert_int_equal(count(f->reg, "web"), 1);
	assert_int_equal(count(f->reg, "none"), 0);

	assert_int_equal(registry_target_set_thumbprint(f->reg, "web1", TP_B, old, &err), 0);
	assert_string_equal(old, TP_A);
	assert_int_equal(registry_target_get(f->reg, "web1", &t, &err), 0);
	assert_string_equal(t.sha256, TP_B);
	reg_target_clear(&t);

	assert_int_equal(registry_target_remove(f->reg, "web1", &err), 0);
	assert_int_equal(count(f->reg, NULL), 1);

	/* persists across a reopen */
	registry_close(f->reg);
	assert_int_equal(registry_open(f->path, &again, &err), 0);
	f->reg = again;
	assert_int_equal(count(f->reg, NULL), 1);
}

static void test_duplicate(void **state)
{
	fixture *f = *state;
	tether_error err;
	reg_target t;

	assert_int_equal(add(f->reg, "web1", "h1", 1, TP_A, NULL, NULL, &err), 0);
	memset(&err, 0, sizeof(err));
	assert_int_equal(add(f->reg, "web1", "h2", 2, TP_B, NULL, NULL, &err), TETHER_ERR_EXISTS);
	assert_non_null(strstr(err.detail, "a target named 'web1' already exists"));
	assert_non_null(strstr(err.detail, "set-thumbprint"));
	assert_int_equal(registry_target_get(f->reg, "web1", &t, &err), 0);
	assert_string_equal(t.host, "h1"); /* the first one is intact */
	reg_target_clear(&t);
}

static void test_not_found(void **state)
{
	fixture *f = *state;
	tether_error err;
	reg_target t;
	char old[65] = "untouched";

	memset(&t, 0, sizeof(t));
	assert_int_equal(registry_target_get(f->reg, "ghost", &t, &err), TETHER_ERR_NOT_FOUND);
	assert_non_null(strstr(err.detail, "no target named 'ghost'"));
	assert_non_null(strstr(err.detail, "target list"));
	assert_null(t.name); /* out-param untouched */
	assert_int_equal(registry_target_remove(f->reg, "ghost", &err), TETHER_ERR_NOT_FOUND);
	assert_int_equal(registry_target_set_thumbprint(f->reg, "ghost", TP_A, old, &err),
	                 TETHER_ERR_NOT_FOUND);
	assert_string_equal(old, "untouched");
}

static void test_bad_input(void **state)
{
	fixture *f = *state;
	tether_error err;
	char long_name[80];
	reg_target t;

	memset(long_name, 'x', 65);
	long_name[65] = '\0';
	assert_int_equal(add(f->reg, "we b", "h", 1, TP_A, NULL, NULL, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "target name 'we b' is not valid: character 3"));
	assert_int_equal(add(f->reg, "", "h", 1, TP_A, NULL, NULL, &err), TETHER_ERR_INVALID);
	assert_int_equal(add(f->reg, long_name, "h", 1, TP_A, NULL, NULL, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "too long"));
	assert_int_equal(add(f->reg, "a/b", "h", 1, TP_A, NULL, NULL, &err), TETHER_ERR_INVALID);
	assert_int_equal(add(f->reg, "ok", "h", 1, TP_A, "bad tag", NULL, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "tag 'bad tag'"));
	assert_int_equal(add(f->reg, "ok", "h", 1, TP_A, "t", "t", &err), TETHER_ERR_INVALID);
	assert_int_equal(add(f->reg, "ok", "h", 0, TP_A, NULL, NULL, &err), TETHER_ERR_INVALID);
	assert_int_equal(add(f->reg, "ok", "h", 70000, TP_A, NULL, NULL, &err), TETHER_ERR_INVALID);
	assert_int_equal(add(f->reg, "ok", "h", 1, "ABCD", NULL, NULL, &err), TETHER_ERR_INVALID);
	assert_int_equal(add(f->reg, "ok", "h", 1, TP_A "00", NULL, NULL, &err), TETHER_ERR_INVALID);
	/* upper case is not canonical: callers normalise with tether_thumbprint_parse */
	assert_int_equal(add(f->reg, "ok", "h", 1,
	                     "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	                     NULL, NULL, &err), TETHER_ERR_INVALID);
	memset(&t, 0, sizeof(t));
	t.name = "p";
	t.mode = "polling";
	t.host = "h";
	t.sha256 = TP_A;
	assert_int_equal(registry_target_add(f->reg, &t, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "polling target 'p' has no address"));
	t.mode = "sideways";
	assert_int_equal(registry_target_add(f->reg, &t, &err), TETHER_ERR_INVALID);
	assert_int_equal(registry_target_set_thumbprint(f->reg, "x", "nothex", NULL, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(count(f->reg, NULL), 0);
	/* a polling target (no address) is allowed by the schema */
	assert_int_equal(add(f->reg, "poll1", NULL, 0, TP_A, NULL, NULL, &err), 0);
	assert_int_equal(registry_target_get(f->reg, "poll1", &t, &err), 0);
	assert_null(t.host);
	assert_string_equal(t.mode, "polling");
	reg_target_clear(&t);
}

static void test_parse_address(void **state)
{
	tether_error err;
	char *h = NULL;
	int p = 0;

	(void)state;
	assert_int_equal(registry_parse_address("web1", &h, &p, &err), 0);
	assert_string_equal(h, "web1");
	assert_int_equal(p, 10933);
	free(h);
	assert_int_equal(registry_parse_address("https://10.1.2.3:444/", &h, &p, &err), 0);
	assert_string_equal(h, "10.1.2.3");
	assert_int_equal(p, 444);
	free(h);
	assert_int_equal(registry_parse_address("[fe80::1%eth0]:5", &h, &p, &err), 0);
	free(h);
	assert_int_equal(registry_parse_address("a b:1", &h, &p, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "'a b:1' is not a valid agent address"));
	assert_int_equal(registry_parse_address("h:0", &h, &p, &err), TETHER_ERR_INVALID);
	assert_int_equal(registry_parse_address("h:99999", &h, &p, &err), TETHER_ERR_INVALID);
	assert_int_equal(registry_parse_address("", &h, &p, &err), TETHER_ERR_INVALID);
	assert_int_equal(registry_parse_address("user@h:1", &h, &p, &err), TETHER_ERR_INVALID);
}

static void test_health(void **state)
{
	fixture *f = *state;
	tether_error err;
	reg_target t;
	reg_health h[3];

	assert_int_equal(add(f->reg, "a", "h", 1, TP_A, NULL, NULL, &err), 0);
	assert_int_equal(add(f->reg, "b", "h", 2, TP_B, NULL, NULL, &err), 0);
	memset(h, 0, sizeof(h));
	h[0] = (reg_health){ "a", "healthy", NULL, NULL, 1000, 12, "TLSv1.3", "TLS_AES_256_GCM_SHA384",
	                     TP_A, "sha256WithRSAEncryption" };
	h[1] = (reg_health){ "b", "untrusted", "untrusted", "not pinned", 1000, -1, NULL, NULL, TP_A, NULL };
	h[2] = (reg_health){ "gone", "timeout", "timeout", "x", 1000, -1, NULL, NULL, NULL, NULL };
	assert_int_equal(registry_record_health(f->reg, h, 3, &err), 0);
	assert_int_equal(registry_target_get(f->reg, "a", &t, &err), 0);
	assert_string_equal(t.last_state, "healthy");
	assert_int_equal(t.last_seen, 1000);
	assert_int_equal(t.last_rtt_ms, 12);
	assert_string_equal(t.last_tls_version, "TLSv1.3");
	assert_string_equal(t.last_cert_signature_algorithm, "sha256WithRSAEncryption");
	reg_target_clear(&t);
	assert_int_equal(registry_target_get(f->reg, "b", &t, &err), 0);
	assert_string_equal(t.last_state, "untrusted");
	assert_string_equal(t.last_category, "untrusted");
	assert_int_equal(t.last_seen, 0);
	assert_int_equal(t.last_checked, 1000);
	assert_string_equal(t.last_peer_sha256, TP_A);
	reg_target_clear(&t);

	/* a bad state in the batch: nothing is written */
	h[0].state = "fine";
	h[1].checked = 2000;
	assert_int_equal(registry_record_health(f->reg, h, 2, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "'fine'"));
	assert_int_equal(registry_target_get(f->reg, "b", &t, &err), 0);
	assert_int_equal(t.last_checked, 1000);
	reg_target_clear(&t);
	/* a later unhealthy check keeps last_seen */
	h[0] = (reg_health){ "a", "unreachable", "connection_refused", "refused", 3000, -1,
	                     NULL, NULL, NULL, NULL };
	assert_int_equal(registry_record_health(f->reg, h, 1, &err), 0);
	assert_int_equal(registry_target_get(f->reg, "a", &t, &err), 0);
	assert_int_equal(t.last_seen, 1000);
	assert_int_equal(t.last_checked, 3000);
	assert_null(t.last_tls_version);
	reg_target_clear(&t);
}

static void test_locked(void **state)
{
	fixture *f = *state;
	tether_error err;
	sqlite3 *db;
	reg_target t;
	reg_health h = { "a", "healthy", NULL, NULL, 5, 1, NULL, NULL, NULL, NULL };

	assert_int_equal(add(f->reg, "a", "h", 1, TP_A, NULL, NULL, &err), 0);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	registry_set_busy_timeout(f->reg, 50);
	memset(&err, 0, sizeof(err));
	assert_int_equal(add(f->reg, "b", "h", 1, TP_B, NULL, NULL, &err), TETHER_ERR_IO);
	assert_non_null(strstr(err.detail, "cannot add target 'b'"));
	assert_non_null(strstr(err.detail, "is locked by another process"));
	assert_int_equal(registry_target_set_thumbprint(f->reg, "a", TP_B, NULL, &err), TETHER_ERR_IO);
	assert_int_equal(registry_record_health(f->reg, &h, 1, &err), TETHER_ERR_IO);
	assert_int_equal(registry_target_remove(f->reg, "a", &err), TETHER_ERR_IO);
	/* readers are not blocked by a writer in WAL mode */
	assert_int_equal(count(f->reg, NULL), 1);
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(db);
	/* intact, and usable again */
	assert_int_equal(registry_target_get(f->reg, "a", &t, &err), 0);
	assert_string_equal(t.sha256, TP_A);
	assert_null(t.last_state);
	reg_target_clear(&t);
	assert_int_equal(add(f->reg, "b", "h", 1, TP_B, NULL, NULL, &err), 0);
}

/* A lock held by another process: category locked, and the message names
 * that process (PID and name, from /proc/locks) and what to do. */
static void test_locked_by_another_process(void **state)
{
	fixture *f = *state;
	tether_error err;
	int go[2], done[2], status;
	char c, want[64];
	pid_t pid;

	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(done), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		sqlite3 *db;
		close(go[0]);
		close(done[1]);
		if (sqlite3_open(f->path, &db) != SQLITE_OK ||
		    sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
			_exit(1);
		if (write(go[1], "x", 1) != 1 || read(done[0], &c, 1) < 0)
			_exit(2);
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
		sqlite3_close(db);
		_exit(0);
	}
	close(go[1]);
	close(done[0]);
	assert_int_equal(read(go[0], &c, 1), 1);
	registry_set_busy_timeout(f->reg, 50);
	memset(&err, 0, sizeof(err));
	assert_int_equal(add(f->reg, "b", "h", 1, TP_B, NULL, NULL, &err), TETHER_ERR_IO);
	assert_int_equal(err.category, TETHER_CAT_LOCKED);
	assert_string_equal(tether_category_name(err.category), "locked");
	snprintf(want, sizeof(want), "is locked by another process (PID %d, ", (int)pid);
	if (!strstr(err.detail, want) || !strstr(err.detail, f->path) ||
	    !strstr(err.detail, "another tether-server using the same state directory") ||
	    !strstr(err.detail, "stop that process or wait"))
		fail_msg("unclear message: %s", err.detail);
	assert_int_equal(write(done[1], "x", 1), 1);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	close(go[0]);
	close(done[1]);
	assert_int_equal(add(f->reg, "b", "h", 1, TP_B, NULL, NULL, &err), 0);
}

static void test_read_only(void **state)
{
	fixture *f = *state;
	tether_error err;
	pid_t pid;
	int status;

	assert_int_equal(add(f->reg, "a", "h", 1, TP_A, NULL, NULL, &err), 0);
	registry_close(f->reg);
	f->reg = NULL;
	assert_int_equal(chmod(f->path, 0444), 0);
	assert_int_equal(chmod(f->dir, 0755), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		registry *r = NULL;
		int rc;
		/* root writes anyway: be nobody for this */
		if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
			_exit(3);
		memset(&err, 0, sizeof(err));
		rc = registry_open(f->path, &r, &err);
		if (rc != TETHER_ERR_PERMISSION || r) {
			fprintf(stderr, "# open returned %d: %s\n", rc, err.detail);
			_exit(1);
		}
		if (!strstr(err.detail, "registry") || !strstr(err.detail, "run the daemon as")) {
			fprintf(stderr, "# unclear message: %s\n", err.detail);
			_exit(2);
		}
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(chmod(f->path, 0600), 0);
	assert_int_equal(registry_open(f->path, &f->reg, &err), 0);
	assert_int_equal(count(f->reg, NULL), 1);
}

static void test_corrupt(void **state)
{
	fixture *f = *state;
	tether_error err;
	registry *r = NULL;
	char *p = tether_asprintf("%s/junk.db", f->dir);
	unsigned char *back = NULL;
	size_t len = 0;
	static const char junk[] = "this is not an SQLite database, it is a text file of some length "
	                           "that someone put here by mistake.................................";

	assert_int_equal(tether_write_atomic(p, junk, sizeof(junk) - 1, 0600, &err), 0);
	memset(&err, 0, sizeof(err));
	assert_int_equal(registry_open(p, &r, &err), TETHER_ERR_IO);
	assert_null(r);
	assert_non_null(strstr(err.detail, "is not a valid registry database"));
	assert_non_null(strstr(err.detail, "move it aside"));
	assert_int_equal(tether_read_file(p, 4096, &back, &len, &err), 0);
	assert_int_equal(len, sizeof(junk) - 1);
	assert_memory_equal(back, junk, len);
	free(back);
	free(p);
}

static void test_newer_schema(void **state)
{
	fixture *f = *state;
	tether_error err;
	registry *r = NULL;
	sqlite3 *db;

	assert_int_equal(add(f->reg, "a", "h", 1, TP_A, NULL, NULL, &err), 0);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 7", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(registry_open(f->path, &r, &err), TETHER_ERR_UNSUPPORTED);
	assert_non_null(strstr(err.detail, "schema version 7"));
	assert_non_null(strstr(err.detail, "upgrade tether-server"));
	assert_int_equal(count(f->reg, NULL), 1);
}

/* A registry written by a version-1 tether-server is upgraded in place:
 * its targets are kept, and the next thumbprint (version 2) and the
 * identity to retire (version 3) work. */
static void test_migrate_v1(void **state)
{
	fixture *f = *state;
	tether_error err;
	registry *r = NULL;
	reg_target t;
	sqlite3 *db;
	char *p = tether_asprintf("%s/v1.db", f->dir);
	static const char v1[] =
		"CREATE TABLE targets (name TEXT PRIMARY KEY NOT NULL, mode TEXT NOT NULL, host TEXT, port INTEGER,"
		" sha256 TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '[]', created INTEGER NOT NULL,"
		" updated INTEGER NOT NULL, last_state TEXT, last_category TEXT, last_error TEXT,"
		" last_checked INTEGER, last_seen INTEGER, last_rtt_ms INTEGER, last_tls_version TEXT,"
		" last_cipher TEXT, last_peer_sha256 TEXT, last_cert_signature_algorithm TEXT);"
		"INSERT INTO targets (name, mode, host, port, sha256, created, updated) VALUES"
		" ('old', 'listening', 'h', 1, '" TP_A "', 1, 1);"
		"PRAGMA user_version = 1;";

	memset(&err, 0, sizeof(err));
	assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, v1, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(registry_open(p, &r, &err), 0);
	assert_int_equal(registry_target_get(r, "old", &t, &err), 0);
	assert_string_equal(t.sha256, TP_A);
	assert_null(t.next_sha256);
	reg_target_clear(&t);
	assert_int_equal(registry_target_set_next(r, "old", TP_B, &err), 0);
	assert_int_equal(registry_target_set_next(r, "nobody", TP_B, &err), TETHER_ERR_NOT_FOUND);
	assert_int_equal(registry_target_set_next(r, "old", "xyz", &err), TETHER_ERR_INVALID);
	registry_close(r);
	/* it outlives a reopen; a new pin clears it */
	assert_int_equal(registry_open(p, &r, &err), 0);
	assert_int_equal(registry_target_get(r, "old", &t, &err), 0);
	assert_string_equal(t.next_sha256, TP_B);
	reg_target_clear(&t);
	assert_int_equal(registry_target_set_thumbprint(r, "old", TP_B, NULL, &err), 0);
	assert_int_equal(registry_target_get(r, "old", &t, &err), 0);
	assert_string_equal(t.sha256, TP_B);
	assert_null(t.next_sha256);
	assert_null(t.retire_sha256);
	reg_target_clear(&t);
	/* version 3: the server identity to retire, kept by a new pin */
	assert_int_equal(registry_target_set_retire(r, "old", TP_A, &err), 0);
	assert_int_equal(registry_target_set_thumbprint(r, "old", TP_A, NULL, &err), 0);
	assert_int_equal(registry_target_get(r, "old", &t, &err), 0);
	assert_string_equal(t.retire_sha256, TP_A);
	reg_target_clear(&t);
	assert_int_equal(registry_target_set_retire(r, "old", NULL, &err), 0);
	assert_int_equal(registry_target_get(r, "old", &t, &err), 0);
	assert_null(t.retire_sha256);
	reg_target_clear(&t);
	registry_close(r);
	free(p);
}

static void test_open_missing_dir(void **state)
{
	tether_error err;
	registry *r = NULL;

	(void)state;
	assert_int_equal(registry_open("/nonexistent-tether-dir/registry.db", &r, &err), TETHER_ERR_IO);
	assert_null(r);
	assert_non_null(strstr(err.detail, "cannot open the registry /nonexistent-tether-dir/registry.db"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_creates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
		cmocka_unit_test(test_parse_address),
		cmocka_unit_test_setup_teardown(test_health, setup, teardown),
		cmocka_unit_test_setup_teardown(test_locked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_locked_by_another_process, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_schema, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_v1, setup, teardown),
		cmocka_unit_test(test_open_missing_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
