/* The task store (server/tasks_store.c): tasks and their output in the
 * registry's database.  Round trips, output appended in order with
 * duplicates skipped, final states, the list of tasks to resume after a
 * restart, a reopened database, a newer schema refused, and the output
 * record's JSON form (text, base64, malformed). */
#include "config.h"
#include "test.h"
#include <sqlite3.h>
#include "fsutil.h"
#include "registry.h"
#include "tasks_store.h"
#include "util.h"

#define TICKET_A "0123456789abcdef0123456789abcdef"
#define TICKET_B "fedcba9876543210fedcba9876543210"

typedef struct fixture {
	char *dir;
	char *path;
	registry *reg;
	task_store *ts;
} fixture;

static void open_all(fixture *f)
{
	tether_error err;

	memset(&err, 0, sizeof(err));
	assert_int_equal(registry_open(f->path, &f->reg, &err), 0);
	assert_int_equal(task_store_open(registry_db(f->reg), &f->ts, &err), 0);
}

static void close_all(fixture *f)
{
	task_store_close(f->ts);
	registry_close(f->reg);
	f->ts = NULL;
	f->reg = NULL;
}

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));

	f->dir = test_tmpdir();
	f->path = tether_asprintf("%s/registry.db", f->dir);
	open_all(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;

	close_all(f);
	tether_rmtree(f->dir);
	free(f->dir);
	free(f->path);
	free(f);
	return 0;
}

static task_out rec(int64_t seq, int stream, const char *text)
{
	task_out o;

	memset(&o, 0, sizeof(o));
	o.seq = seq;
	o.stream = stream;
	o.data = (unsigned char *)text;
	o.len = strlen(text);
	o.time = json_integer(1700000000 + seq);
	return o;
}

static void recs_release(task_out *v, size_t n)
{
	size_t i;
	for (i = 0; i < n; i++)
		json_decref(v[i].time);
}

static int64_t create(fixture *f, const char *target, const char *ticket)
{
	tether_error err;
	int64_t id = 0;

	memset(&err, 0, sizeof(err));
	assert_int_equal(task_store_create(f->ts, target, ticket, "{\"argv\":[\"true\"]}", &id, &err), 0);
	assert_true(id > 0);
	return id;
}

static void test_create_get(void **state)
{
	fixture *f = *state;
	tether_error err;
	task_rec r;
	int64_t id = create(f, "web1", TICKET_A), id2 = create(f, "web2", TICKET_B);

	assert_true(id2 > id);
	memset(&err, 0, sizeof(err));
	assert_int_equal(task_store_get(f->ts, id, &r, &err), 0);
	assert_string_equal(r.target, "web1");
	assert_string_equal(r.ticket, TICKET_A);
	assert_string_equal(r.command, "{\"argv\":[\"true\"]}");
	assert_string_equal(r.state, "pending");
	assert_false(r.has_exit_code);
	assert_false(r.has_agent_seq);
	assert_int_equal(r.next_seq, 1);
	assert_null(r.started);
	assert_null(r.error);
	assert_false(r.completed);
	assert_true(r.created > 1600000000);
	task_rec_clear(&r);

	/* absent */
	assert_int_equal(task_store_get(f->ts, id2 + 100, &r, &err), TETHER_ERR_NOT_FOUND);
	assert_non_null(strstr(err.detail, "task list"));
	/* a bad ticket is refused by the table */
	assert_true(task_store_create(f->ts, "web1", "XYZ", "{}", &id, &err) < 0);
}

static void test_append_in_order(void **state)
{
	fixture *f = *state;
	tether_error err;
	task_rec r;
	task_out in[4], *out = NULL;
	task_update u;
	size_t n = 0, stored = 99;
	int more = 1;
	int64_t id = create(f, "web1", TICKET_A);

	memset(&err, 0, sizeof(err));
	/* the agent numbers from 0 here; our own numbering starts at 1 */
	in[0] = rec(0, TASK_STREAM_STDOUT, "one\n");
	in[1] = rec(1, TASK_STREAM_STDERR, "two\n");
	in[2] = rec(2, TASK_STREAM_STDOUT, "three");
	memset(&u, 0, sizeof(u));
	u.state = "running";
	u.started = json_integer(1700000000);
	assert_int_equal(task_store_ingest(f->ts, id, in, 3, &u, &stored, &err), 0);
	assert_int_equal(stored, 3);
	/* the same answer again (a retry): nothing is stored twice */
	assert_int_equal(task_store_ingest(f->ts, id, in, 3, &u, &stored, &err), 0);
	assert_int_equal(stored, 0);
	/* an overlapping answer: only the new record */
	in[3] = rec(3, TASK_STREAM_STDOUT, " and four\n");
	assert_int_equal(task_store_ingest(f->ts, id, in + 1, 3, NULL, &stored, &err), 0);
	assert_int_equal(stored, 1);
	json_decref(u.started);

	assert_int_equal(task_store_get(f->ts, id, &r, &err), 0);
	assert_string_equal(r.state, "running");
	assert_int_equal(r.next_seq, 5);
	assert_true(r.has_agent_seq);
	assert_int_equal(r.agent_seq, 3);
	assert_true(json_is_integer(r.started));
	task_rec_clear(&r);

	assert_int_equal(task_store_output(f->ts, id, 0, 0, &out, &n, &more, &err), 0);
	assert_int_equal(n, 4);
	assert_false(more);
	assert_int_equal(out[0].seq, 1);
	assert_int_equal(out[0].stream, TASK_STREAM_STDOUT);
	assert_memory_equal(out[0].data, "one\n", 4);
	assert_int_equal(out[1].stream, TASK_STREAM_STDERR);
	assert_memory_equal(out[1].data, "two\n", 4);
	assert_int_equal(out[2].len, 5);
	assert_int_equal(out[3].seq, 4);
	assert_memory_equal(out[3].data, " and four\n", 10);
	assert_int_equal(json_integer_value(out[3].time), 1700000003);
	task_out_free(out, n);

	/* after_seq and paging by max_bytes (always at least one record) */
	assert_int_equal(task_store_output(f->ts, id, 2, 0, &out, &n, &more, &err), 0);
	assert_int_equal(n, 2);
	assert_int_equal(out[0].seq, 3);
	task_out_free(out, n);
	assert_int_equal(task_store_output(f->ts, id, 0, 6, &out, &n, &more, &err), 0);
	assert_int_equal(n, 1);
	assert_true(more);
	task_out_free(out, n);
	assert_int_equal(task_store_output(f->ts, id, 4, 0, &out, &n, &more, &err), 0);
	assert_int_equal(n, 0);
	assert_false(more);
	free(out);

	/* the end, with the last output, in one step; later answers change nothing */
	memset(&u, 0, sizeof(u));
	u.state = "finished";
	u.has_exit_code = 1;
	u.exit_code = 3;
	u.ended = json_string("2026-01-02T03:04:05Z");
	assert_int_equal(task_store_ingest(f->ts, id, NULL, 0, &u, &stored, &err), 0);
	json_decref(u.ended);
	memset(&u, 0, sizeof(u));
	u.state = "running";
	u.has_exit_code = 1;
	u.exit_code = 0;
	json_decref(in[0].time);
	in[0] = rec(9, TASK_STREAM_STDOUT, "late\n");
	assert_int_equal(task_store_ingest(f->ts, id, in, 1, &u, &stored, &err), 0);
	assert_int_equal(stored, 0);
	assert_int_equal(task_store_get(f->ts, id, &r, &err), 0);
	assert_string_equal(r.state, "finished");
	assert_int_equal(r.exit_code, 3);
	assert_string_equal(json_string_value(r.ended), "2026-01-02T03:04:05Z");
	assert_int_equal(r.next_seq, 5);
	task_rec_clear(&r);
	recs_release(in, 4);

	/* a task that does not exist */
	assert_int_equal(task_store_ingest(f->ts, id + 50, NULL, 0, &u, NULL, &err), TETHER_ERR_NOT_FOUND);
}

/* The end stored in a transaction left open (the daemon answers the
 * waiting caller from it, then commits): this connection reads it at
 * once, another one only after the commit; a rollback leaves nothing. */
static void test_ingest_open_commit(void **state)
{
	fixture *f = *state;
	tether_error err;
	task_update u;
	task_out in[1], *out = NULL;
	task_rec r;
	size_t stored = 0, n = 0;
	int more = 0;
	int64_t id = create(f, "web1", TICKET_A);
	sqlite3 *other;
	sqlite3_stmt *st;

	memset(&err, 0, sizeof(err));
	memset(&u, 0, sizeof(u));
	assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(other, "SELECT state FROM tasks WHERE id = ?1", -1, &st,
	                                    NULL), SQLITE_OK);
	sqlite3_bind_int64(st, 1, id);

	/* rolled back: nothing stored */
	in[0] = rec(1, TASK_STREAM_STDOUT, "gone\n");
	u.state = "finished";
	u.has_exit_code = 1;
	u.exit_code = 9;
	assert_int_equal(task_store_ingest_open(f->ts, id, in, 1, &u, &stored, &err), 0);
	assert_int_equal(stored, 1);
	task_store_rollback(f->ts);
	assert_int_equal(task_store_get(f->ts, id, &r, &err), 0);
	assert_string_equal(r.state, "pending");
	task_rec_clear(&r);
	assert_int_equal(task_store_output(f->ts, id, 0, 0, &out, &n, &more, &err), 0);
	assert_int_equal(n, 0);
	free(out);
	/* no transaction open any more */
	assert_int_equal(task_store_commit(f->ts, &err), TETHER_ERR_INTERNAL);

	/* left open: read here, not elsewhere, until the commit */
	u.exit_code = 4;
	assert_int_equal(task_store_ingest_open(f->ts, id, in, 1, &u, &stored, &err), 0);
	assert_int_equal(task_store_get(f->ts, id, &r, &err), 0);
	assert_string_equal(r.state, "finished");
	assert_int_equal(r.exit_code, 4);
	task_rec_clear(&r);
	assert_int_equal(task_store_output(f->ts, id, 0, 0, &out, &n, &more, &err), 0);
	assert_int_equal(n, 1);
	task_out_free(out, n);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "pending");
	sqlite3_reset(st);
	assert_int_equal(task_store_commit(f->ts, &err), 0);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "finished");
	sqlite3_reset(st);
	json_decref(in[0].time);

	/* and it survives closing and reopening */
	close_all(f);
	open_all(f);
	assert_int_equal(task_store_get(f->ts, id, &r, &err), 0);
	assert_string_equal(r.state, "finished");
	assert_int_equal(r.exit_code, 4);
	task_rec_clear(&r);
	sqlite3_finalize(st);
	sqlite3_close(other);
}

static void test_many_records_in_order(void **state)
{
	fixture *f = *state;
	enum { N = 100000, BATCH = 5000 };
	tether_error err;
	task_out *in = calloc(BATCH, sizeof(*in)), *out = NULL;
	char (*texts)[16] = calloc(BATCH, 16);
	int64_t id = create(f, "web1", TICKET_A), after = 0, expect = 1;
	size_t i, b, n, total = 0;
	int more;

	memset(&err, 0, sizeof(err));
	for (b = 0; b < N / BATCH; b++) {
		for (i = 0; i < BATCH; i++) {
			size_t k = b * BATCH + i;
			snprintf(texts[i], 16, "%zu\n", k);
			memset(&in[i], 0, sizeof(in[i]));
			in[i].seq = (int64_t)k + 1;
			in[i].data = (unsigned char *)texts[i];
			in[i].len = strlen(texts[i]);
		}
		assert_int_equal(task_store_ingest(f->ts, id, in, BATCH, NULL, &n, &err), 0);
		assert_int_equal(n, BATCH);
	}
	/* read back page by page: every line, in order */
	do {
		assert_int_equal(task_store_output(f->ts, id, after, 64 * 1024, &out, &n, &more, &err), 0);
		for (i = 0; i < n; i++) {
			char want[16];
			assert_int_equal(out[i].seq, expect);
			snprintf(want, sizeof(want), "%lld\n", (long long)expect - 1);
			assert_int_equal(out[i].len, strlen(want));
			assert_memory_equal(out[i].data, want, out[i].len);
			expect++;
			after = out[i].seq;
		}
		total += n;
		task_out_free(out, n);
	} while (more);
	assert_int_equal(total, N);
	free(in);
	free(texts);
}

static void test_unfinished_and_restart(void **state)
{
	fixture *f = *state;
	tether_error err;
	task_rec *v = NULL, r;
	task_out in[2];
	task_update u;
	size_t n = 0;
	int64_t pending = create(f, "a", TICKET_A), running = create(f, "b", TICKET_B);
	int64_t ended = create(f, "c", TICKET_A), done = create(f, "d", TICKET_B);
	int64_t failed = create(f, "e", TICKET_A);

	memset(&err, 0, sizeof(err));
	memset(&u, 0, sizeof(u));
	in[0] = rec(1, TASK_STREAM_STDOUT, "first\n");
	u.state = "running";
	assert_int_equal(task_store_ingest(f->ts, running, in, 1, &u, NULL, &err), 0);
	assert_int_equal(task_store_set_cancel_requested(f->ts, running, &err), 0);
	u.state = "finished";
	u.has_exit_code = 1;
	u.exit_code = 0;
	assert_int_equal(task_store_ingest(f->ts, ended, NULL, 0, &u, NULL, &err), 0);
	assert_int_equal(task_store_ingest(f->ts, done, NULL, 0, &u, NULL, &err), 0);
	assert_int_equal(task_store_set_completed(f->ts, done, &err), 0);
	memset(&u, 0, sizeof(u));
	u.state = "failed";
	u.error = "connection refused";
	u.category = "connection_refused";
	assert_int_equal(task_store_ingest(f->ts, failed, NULL, 0, &u, NULL, &err), 0);
	assert_int_equal(task_store_set_completed(f->ts, failed, &err), 0);

	assert_int_equal(task_store_unfinished(f->ts, &v, &n, &err), 0);
	assert_int_equal(n, 3);
	assert_int_equal(v[0].id, pending);
	assert_int_equal(v[1].id, running);
	assert_true(v[1].cancel_requested);
	assert_int_equal(v[2].id, ended);
	task_rec_list_free(v, n);

	/* the daemon restarts: everything is still there, and the running
	 * task goes on from where it was */
	close_all(f);
	open_all(f);
	assert_int_equal(task_store_unfinished(f->ts, &v, &n, &err), 0);
	assert_int_equal(n, 3);
	assert_string_equal(v[1].state, "running");
	assert_true(v[1].has_agent_seq);
	assert_int_equal(v[1].agent_seq, 1);
	assert_int_equal(v[1].next_seq, 2);
	task_rec_list_free(v, n);
	json_decref(in[0].time);
	in[0] = rec(1, TASK_STREAM_STDOUT, "first\n");    /* sent again after the restart */
	in[1] = rec(2, TASK_STREAM_STDERR, "second\n");
	memset(&u, 0, sizeof(u));
	u.state = "cancelled";
	u.has_exit_code = 1;
	u.exit_code = 130;
	assert_int_equal(task_store_ingest(f->ts, running, in, 2, &u, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(task_store_get(f->ts, running, &r, &err), 0);
	assert_string_equal(r.state, "cancelled");
	assert_int_equal(r.exit_code, 130);
	assert_int_equal(r.next_seq, 3);
	task_rec_clear(&r);
	assert_int_equal(task_store_get(f->ts, failed, &r, &err), 0);
	assert_string_equal(r.error, "connection refused");
	assert_string_equal(r.category, "connection_refused");
	task_rec_clear(&r);
	recs_release(in, 2);

	/* newest first, by target */
	assert_int_equal(task_store_list(f->ts, NULL, 0, &v, &n, &err), 0);
	assert_int_equal(n, 5);
	assert_int_equal(v[0].id, failed);
	task_rec_list_free(v, n);
	assert_int_equal(task_store_list(f->ts, "b", 10, &v, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(v[0].id, running);
	task_rec_list_free(v, n);
	assert_int_equal(task_store_list(f->ts, NULL, 2, &v, &n, &err), 0);
	assert_int_equal(n, 2);
	task_rec_list_free(v, n);
}

static void test_newer_schema_refused(void **state)
{
	fixture *f = *state;
	tether_error err;
	task_store *ts = NULL;

	memset(&err, 0, sizeof(err));
	assert_int_equal(sqlite3_exec(registry_db(f->reg), "UPDATE tasks_schema SET version = 7",
	                              NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(task_store_open(registry_db(f->reg), &ts, &err), TETHER_ERR_UNSUPPORTED);
	assert_null(ts);
	assert_non_null(strstr(err.detail, "newer"));
}

static void test_record_json(void **state)
{
	tether_error err;
	task_out o, back;
	json_t *j;
	unsigned char bin[] = { 'a', 0, 0xff, '\n' };
	unsigned char *dec = NULL;
	size_t dl;
	char *b64;
	(void)state;

	memset(&err, 0, sizeof(err));
	o = rec(5, TASK_STREAM_STDERR, "h\xc3\xa9llo\n");
	j = task_out_to_json(&o);
	assert_string_equal(json_string_value(json_object_get(j, "text")), "h\xc3\xa9llo\n");
	assert_string_equal(json_string_value(json_object_get(j, "stream")), "stderr");
	assert_int_equal(task_out_from_json(j, &back, &err), 0);
	assert_int_equal(back.seq, 5);
	assert_int_equal(back.stream, TASK_STREAM_STDERR);
	assert_int_equal(back.len, o.len);
	assert_memory_equal(back.data, o.data, o.len);
	task_out_clear(&back);
	json_decref(j);
	json_decref(o.time);

	/* bytes that are not UTF-8 text travel as base64, exactly */
	memset(&o, 0, sizeof(o));
	o.seq = 6;
	o.data = bin;
	o.len = sizeof(bin);
	j = task_out_to_json(&o);
	assert_null(json_object_get(j, "text"));
	assert_string_equal(json_string_value(json_object_get(j, "base64")), "YQD/Cg==");
	assert_int_equal(task_out_from_json(j, &back, &err), 0);
	assert_int_equal(back.len, sizeof(bin));
	assert_memory_equal(back.data, bin, sizeof(bin));
	task_out_clear(&back);
	json_decref(j);

	/* malformed records */
	j = json_pack("{s:s, s:s}", "stream", "stdout", "text", "x");
	assert_int_equal(task_out_from_json(j, &back, &err), TETHER_ERR_PROTOCOL);
	json_decref(j);
	j = json_pack("{s:i, s:s, s:s}", "seq", 1, "stream", "stdin", "text", "x");
	assert_int_equal(task_out_from_json(j, &back, &err), TETHER_ERR_PROTOCOL);
	json_decref(j);
	j = json_pack("{s:i, s:s, s:s}", "seq", 1, "stream", "stdout", "base64", "YQ=x");
	assert_int_equal(task_out_from_json(j, &back, &err), TETHER_ERR_PROTOCOL);
	json_decref(j);

	/* base64 edge cases */
	b64 = task_b64_encode((const unsigned char *)"ab", 2);
	assert_string_equal(b64, "YWI=");
	free(b64);
	assert_int_equal(task_b64_decode("YWI=", 4, &dec, &dl), 0);
	assert_int_equal(dl, 2);
	assert_memory_equal(dec, "ab", 2);
	free(dec);
	assert_int_equal(task_b64_decode("", 0, &dec, &dl), 0);
	assert_int_equal(dl, 0);
	free(dec);
	assert_int_equal(task_b64_decode("YWI", 3, &dec, &dl), TETHER_ERR_INVALID);
	assert_int_equal(task_b64_decode("Y=I=", 4, &dec, &dl), TETHER_ERR_INVALID);
	assert_int_equal(task_b64_decode("YW==YWI=", 8, &dec, &dl), TETHER_ERR_INVALID);

	/* UTF-8: overlong, surrogate, truncated, NUL */
	assert_true(task_utf8_ok((const unsigned char *)"\xe2\x82\xac", 3));
	assert_false(task_utf8_ok((const unsigned char *)"\xc0\xaf", 2));
	assert_false(task_utf8_ok((const unsigned char *)"\xed\xa0\x80", 3));
	assert_false(task_utf8_ok((const unsigned char *)"\xe2\x82", 2));
	assert_false(task_utf8_ok((const unsigned char *)"a\0b", 3));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create_get, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ingest_open_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_records_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unfinished_and_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
		cmocka_unit_test(test_record_json),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
