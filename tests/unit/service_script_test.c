/* The agent's script service (agent/service_script.c), driven through the
 * agent_req harness on real libuv loops with real processes. */
#include "config.h"
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include "test.h"
#include "agent_req_harness.h"
#include "fsutil.h"
#include "util.h"

#define SRV_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SRV_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define CALL_MS 40000

static char *tmp, *work;
static agent_env env;
static harness_loop *L1, *L2;
static const agent_service *svc = &agent_service_script;

static void tk(char out[33], int n)
{
	snprintf(out, 33, "%032x", n);
}

static int setup_env(int enabled, uint32_t retention)
{
	memset(&env, 0, sizeof(env));
	env.state_dir = tmp;
	env.work_dir = work;
	env.script_enabled = enabled;
	env.file_enabled = 1;
	env.script_retention_s = retention;
	return svc->init(&env);
}

static int setup(void **state)
{
	(void)state;
	tmp = test_tmpdir();
	work = tether_asprintf("%s/work", tmp);
	assert_int_equal(mkdir(work, 0700), 0);
	assert_int_equal(setup_env(1, 3600), 0);
	L1 = harness_loop_new();
	L2 = harness_loop_new();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	harness_loop_free(L1);
	harness_loop_free(L2);
	L1 = L2 = NULL;
	svc->shutdown();
	tether_rmtree(tmp);
	free(tmp);
	free(work);
	return 0;
}

static json_t *call(harness_loop *hl, const char *server, const char *method, json_t *p,
                    char code[65])
{
	return harness_call_sync(hl, svc, server, method, p, CALL_MS, code);
}

static json_t *call_ok(harness_loop *hl, const char *server, const char *method, json_t *p)
{
	char code[65];
	json_t *r = call(hl, server, method, p, code);
	if (!r)
		fail_msg("%s failed: %s", method, code);
	return r;
}

static const char *state_of(json_t *r)
{
	return json_string_value(json_object_get(r, "state"));
}

static int exit_of(json_t *r)
{
	json_t *v = json_object_get(r, "exit_code");
	return v ? (int)json_integer_value(v) : -1000;
}

static json_t *start_script(harness_loop *hl, const char *ticket, const char *script,
                            uint32_t wait_ms)
{
	return call_ok(hl, SRV_A, "script.start",
	               json_pack("{s:s, s:s, s:i}", "ticket", ticket, "script", script,
	                         "wait_ms", (int)wait_ms));
}

typedef struct collected {
	char *out, *err;
	size_t nout, nerr;
	uint64_t records;
	int exit_code;
	char state[32];
	char started[40], ended[40];
} collected;

static void append(char **buf, size_t *n, const char *s, size_t len)
{
	*buf = realloc(*buf, *n + len + 1);
	memcpy(*buf + *n, s, len);
	*n += len;
	(*buf)[*n] = 0;
}

/* Fold records of r into c; check seq order.  Returns next_seq. */
static uint64_t fold(collected *c, json_t *r, uint64_t after)
{
	json_t *out = json_object_get(r, "output"), *rec;
	size_t i;

	assert_true(json_is_array(out));
	json_array_foreach(out, i, rec) {
		const char *stream = json_string_value(json_object_get(rec, "stream"));
		json_t *text = json_object_get(rec, "text");
		assert_int_equal(json_integer_value(json_object_get(rec, "seq")), after + 1);
		assert_non_null(json_string_value(json_object_get(rec, "time")));
		after++;
		c->records++;
		if (!text)
			continue;          /* base64: checked where expected */
		if (!strcmp(stream, "stdout"))
			append(&c->out, &c->nout, json_string_value(text), json_string_length(text));
		else
			append(&c->err, &c->nerr, json_string_value(text), json_string_length(text));
	}
	assert_int_equal((uint64_t)json_integer_value(json_object_get(r, "next_seq")), after + 1);
	return after;
}

/* script.status until the ticket ended and every record was read. */
static void collect(harness_loop *hl, const char *ticket, size_t max_bytes, collected *c)
{
	uint64_t after = 0;
	int i;

	memset(c, 0, sizeof(*c));
	append(&c->out, &c->nout, "", 0);
	append(&c->err, &c->nerr, "", 0);
	for (i = 0; i < 1000000; i++) {
		json_t *r = call_ok(hl, SRV_A, "script.status",
		                    json_pack("{s:s, s:I, s:i, s:I}", "ticket", ticket, "after_seq",
		                              (json_int_t)after, "wait_ms", 5000, "max_bytes",
		                              (json_int_t)max_bytes));
		int more = json_is_true(json_object_get(r, "more"));
		after = fold(c, r, after);
		snprintf(c->state, sizeof(c->state), "%s", state_of(r));
		if (json_object_get(r, "started"))
			snprintf(c->started, sizeof(c->started), "%s",
			         json_string_value(json_object_get(r, "started")));
		if (json_object_get(r, "ended"))
			snprintf(c->ended, sizeof(c->ended), "%s",
			         json_string_value(json_object_get(r, "ended")));
		c->exit_code = exit_of(r);
		json_decref(r);
		if (c->exit_code != -1000 && !more)
			return;
	}
	fail_msg("ticket %s did not end", ticket);
}

static void collected_free(collected *c)
{
	free(c->out);
	free(c->err);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* meta.json as the agent reads it: the first line, updated by each later
 * line (members of a change of state).  Every line must parse. */
static json_t *meta_load(const char *path)
{
	unsigned char *text = NULL;
	size_t len;
	tether_error err = { 0 };
	json_t *m = NULL;
	char *p, *nl;

	if (tether_read_file(path, 1 << 20, &text, &len, &err) < 0)
		return NULL;
	for (p = (char *)text; p < (char *)text + len; p = nl + 1) {
		json_t *o;
		nl = memchr(p, '\n', (size_t)((char *)text + len - p));
		assert_non_null(nl);                  /* every line is complete */
		o = json_loadb(p, (size_t)(nl - p), 0, NULL);
		assert_true(json_is_object(o));
		if (m) {
			json_object_update(m, o);
			json_decref(o);
		} else {
			m = o;
		}
	}
	free(text);
	return m;
}

/* The pid meta.json records for a running ticket.  The move to running is
 * written once the process has run RUNNING_META_DELAY_MS (100 ms): wait
 * for it, up to 5 s, and check the state written with it. */
static long ticket_pid(const char *ticket)
{
	char *p = tether_asprintf("%s/scripts/%s/meta.json", work, ticket);
	long pid = 0;
	int i;

	for (i = 0; i < 100 && !pid; i++) {
		json_t *m = meta_load(p);
		assert_non_null(m);
		pid = (long)json_integer_value(json_object_get(m, "pid"));
		if (pid)
			assert_string_equal(json_string_value(json_object_get(m, "state")), "running");
		json_decref(m);
		if (!pid)
			usleep(50 * 1000);
	}
	free(p);
	return pid;
}

/* Processes of group pgid that are not zombies (a zombie waits for a
 * reaper that may be slow in a container). */
static int group_alive(long pgid)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d))) {
		char path[300], buf[512], *p;
		FILE *f;
		char st;
		long pgrp;
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
		if (!(f = fopen(path, "r")))
			continue;
		if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')) &&
		    sscanf(p + 1, " %c %*d %ld", &st, &pgrp) == 2 && pgrp == pgid && st != 'Z')
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

/* ------------------------------------------------------------------ */

static void test_exact_output(void **state)
{
	char t[33], code[65];
	json_t *r;
	collected c;

	(void)state;
	tk(t, 1);
	r = start_script(L1, t, "printf 'out1\\n'; printf 'err1\\n' >&2; printf 'out2'; exit 3", 10000);
	assert_string_equal(state_of(r), "finished");
	assert_int_equal(exit_of(r), 3);
	assert_non_null(json_object_get(r, "started"));
	assert_non_null(json_object_get(r, "ended"));
	json_decref(r);
	collect(L1, t, 262144, &c);
	assert_string_equal(c.out, "out1\nout2");
	assert_string_equal(c.err, "err1\n");
	assert_int_equal(c.exit_code, 3);
	collected_free(&c);

	/* argv without a shell, env and cwd */
	tk(t, 2);
	r = call_ok(L1, SRV_A, "script.start",
	            json_pack("{s:s, s:[s,s,s], s:{s:s}, s:s, s:i}", "ticket", t, "argv", "/bin/sh",
	                      "-c", "echo \"$FOO $TETHER_TICKET\"; pwd; echo 'a  b' \"$0\"",
	                      "env", "FOO", "bar baz", "cwd", "/", "wait_ms", 10000));
	assert_int_equal(exit_of(r), 0);
	json_decref(r);
	collect(L1, t, 262144, &c);
	{
		char want[200];
		snprintf(want, sizeof(want), "bar baz %s\n/\na  b /bin/sh\n", t);
		assert_string_equal(c.out, want);
	}
	collected_free(&c);

	/* default working directory: the ticket's own work/ */
	tk(t, 3);
	r = call_ok(L1, SRV_A, "script.start",
	            json_pack("{s:s, s:s, s:s, s:i}", "ticket", t, "script", "pwd", "shell", "bash",
	                      "wait_ms", 10000));
	json_decref(r);
	collect(L1, t, 262144, &c);
	{
		char *want = tether_asprintf("%s/scripts/%s/work\n", work, t);
		char real[4096];
		assert_non_null(realpath(work, real));
		free(want);
		want = tether_asprintf("%s/scripts/%s/work\n", real, t);
		assert_string_equal(c.out, want);
		free(want);
	}
	collected_free(&c);

	/* a program that does not exist: 127 and a message on stderr */
	tk(t, 4);
	r = call_ok(L1, SRV_A, "script.start",
	            json_pack("{s:s, s:[s], s:i}", "ticket", t, "argv", "/nonexistent/prog",
	                      "wait_ms", 10000));
	assert_string_equal(state_of(r), "finished");
	assert_int_equal(exit_of(r), 127);
	json_decref(r);
	collect(L1, t, 262144, &c);
	assert_non_null(strstr(c.err, "/nonexistent/prog"));
	collected_free(&c);

	/* killed by a signal: 128 + N */
	tk(t, 5);
	r = start_script(L1, t, "kill -9 $$", 10000);
	assert_int_equal(exit_of(r), 128 + 9);
	json_decref(r);

	/* UTF-8 split across two writes stays text; other bytes travel as base64 */
	tk(t, 6);
	r = start_script(L1, t, "printf '\\303'; sleep 0.3; printf '\\251\\n'; printf '\\377\\000' >&2",
	                 10000);
	json_decref(r);
	r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t));
	{
		json_t *out = json_object_get(r, "output"), *rec;
		size_t i;
		int text = 0, b64 = 0;
		json_array_foreach(out, i, rec) {
			if (json_object_get(rec, "text")) {
				assert_string_equal(json_string_value(json_object_get(rec, "text")), "\xc3\xa9\n");
				text++;
			} else {
				assert_string_equal(json_string_value(json_object_get(rec, "stream")), "stderr");
				assert_string_equal(json_string_value(json_object_get(rec, "base64")), "/wA=");
				b64++;
			}
		}
		assert_int_equal(text, 1);
		assert_int_equal(b64, 1);
	}
	json_decref(r);

	/* bad params */
	assert_null(call(L1, SRV_A, "script.start", json_pack("{s:s, s:s}", "ticket", "xyz",
	                                                       "script", "true"), code));
	assert_string_equal(code, "invalid_params");
	tk(t, 7);
	assert_null(call(L1, SRV_A, "script.start",
	                 json_pack("{s:s, s:s, s:[s]}", "ticket", t, "script", "true", "argv", "true"),
	                 code));
	assert_string_equal(code, "invalid_params");
	assert_null(call(L1, SRV_A, "script.start",
	                 json_pack("{s:s, s:s, s:s}", "ticket", t, "script", "dir", "shell", "cmd"),
	                 code));
	assert_string_equal(code, "invalid_params");
	assert_null(call(L1, SRV_A, "script.start",
	                 json_pack("{s:s, s:s, s:i}", "ticket", t, "script", "true", "wait_ms", 30001),
	                 code));
	assert_string_equal(code, "invalid_params");
	assert_null(call(L1, SRV_A, "script.nope", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "unknown_method");
}

/* Run argv (JSON array) with env (object or NULL) and cwd (or NULL) to
 * its end; returns its exit code, its output in c. */
static int run_argv(int n, json_t *argv, json_t *envo, const char *cwd, collected *c)
{
	char t[33];
	json_t *p, *r;
	int code;

	tk(t, n);
	p = json_pack("{s:s, s:o, s:i}", "ticket", t, "argv", argv, "wait_ms", 10000);
	if (envo)
		json_object_set_new(p, "env", envo);
	if (cwd)
		json_object_set_new(p, "cwd", json_string(cwd));
	r = call_ok(L1, SRV_A, "script.start", p);
	assert_string_equal(state_of(r), "finished");
	code = (int)exit_of(r);
	json_decref(r);
	collect(L1, t, 262144, c);
	assert_int_equal(c->exit_code, code);
	return code;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

/* How a command is started (execvp's rules, as with libuv's fork+execvp
 * before the agent used posix_spawn): the PATH of the command's own
 * environment, a relative PATH entry from its working directory, a file
 * without #! run by /bin/sh, not executable 126, not found 127; stdin
 * /dev/null; its own session and process group; no signal blocked or
 * ignored (the agent ignores SIGPIPE). */
static void test_spawn_semantics(void **state)
{
	char *bin = tether_asprintf("%s/bin", tmp), *path, *f, want[256];
	collected c;

	(void)state;
	assert_int_equal(mkdir(bin, 0700), 0);
	f = tether_asprintf("%s/tt-prog", bin);
	write_file(f, "#!/bin/sh\necho \"via-path $# [$1]\"\n", 0755);
	free(f);
	f = tether_asprintf("%s/tt-noshebang", bin);
	write_file(f, "echo \"no-shebang [$1]\"\n", 0755);
	free(f);
	f = tether_asprintf("%s/tt-noexec", bin);
	write_file(f, "#!/bin/sh\necho never\n", 0644);
	free(f);
	path = tether_asprintf("/nonexistent-dir:%s:/bin:/usr/bin", bin);

	/* found through PATH given in the command's environment */
	assert_int_equal(run_argv(0x101, json_pack("[s,s]", "tt-prog", "a b"),
	                          json_pack("{s:s}", "PATH", path), NULL, &c), 0);
	assert_string_equal(c.out, "via-path 1 [a b]\n");
	collected_free(&c);

	/* no #! line: run by /bin/sh with its arguments */
	assert_int_equal(run_argv(0x102, json_pack("[s,s]", "tt-noshebang", "x y"),
	                          json_pack("{s:s}", "PATH", path), NULL, &c), 0);
	assert_string_equal(c.out, "no-shebang [x y]\n");
	collected_free(&c);

	/* found but not executable (and nothing later in PATH): 126 */
	assert_int_equal(run_argv(0x103, json_pack("[s]", "tt-noexec"),
	                          json_pack("{s:s}", "PATH", path), NULL, &c), 126);
	assert_non_null(strstr(c.err, "tt-noexec"));
	collected_free(&c);

	/* not anywhere in PATH: 127 */
	assert_int_equal(run_argv(0x104, json_pack("[s]", "tt-nosuch"),
	                          json_pack("{s:s}", "PATH", path), NULL, &c), 127);
	assert_non_null(strstr(c.err, "tt-nosuch"));
	collected_free(&c);

	/* an empty PATH entry is the command's working directory, and so is
	 * the start of a relative path with a slash */
	assert_int_equal(run_argv(0x105, json_pack("[s]", "tt-prog"),
	                          json_pack("{s:s}", "PATH", "/nonexistent-dir::/bin"), bin, &c), 0);
	assert_string_equal(c.out, "via-path 0 []\n");
	collected_free(&c);
	assert_int_equal(run_argv(0x106, json_pack("[s,s]", "./tt-prog", "z"), NULL, bin, &c), 0);
	assert_string_equal(c.out, "via-path 1 [z]\n");
	collected_free(&c);

	/* stdin is /dev/null; a session and process group of its own */
	assert_int_equal(run_argv(0x107, json_pack("[s,s,s]", "/bin/sh", "-c",
	                                           "readlink /proc/self/fd/0; "
	                                           "read pid comm st pp pg sid rest < /proc/$$/stat; "
	                                           "[ \"$pg\" = $$ ] && [ \"$sid\" = $$ ] && echo leader; "
	                                           "exit 7"),
	                          NULL, NULL, &c), 7);
	assert_string_equal(c.out, "/dev/null\nleader\n");
	collected_free(&c);

	/* the command itself (no shell between) sees no signal blocked or
	 * ignored, though this process ignores SIGPIPE */
	assert_int_equal(run_argv(0x108, json_pack("[s,s,s,s]", "grep", "-E", "^Sig(Blk|Ign)",
	                                           "/proc/self/status"),
	                          NULL, NULL, &c), 0);
	snprintf(want, sizeof(want), "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
	assert_string_equal(c.out, want);
	collected_free(&c);

	free(path);
	free(bin);
}

static void test_many_lines(void **state)
{
	char t[33], want[32];
	json_t *r;
	collected c;
	char *p, *line;
	long n = 0;
	json_int_t mid;
	double t0 = now_s();

	(void)state;
	tk(t, 10);
	r = start_script(L1, t, "i=1; while [ $i -le 100000 ]; do echo line$i; i=$((i+1)); done; "
	                        "echo done >&2", 0);
	json_decref(r);
	/* small answers: many rounds, from another loop than the process's */
	collect(L2, t, 65536, &c);
	assert_string_equal(c.state, "finished");
	assert_int_equal(c.exit_code, 0);
	assert_string_equal(c.err, "done\n");
	p = c.out;
	while ((line = strsep(&p, "\n")) && *line) {
		n++;
		snprintf(want, sizeof(want), "line%ld", n);
		assert_string_equal(line, want);
	}
	assert_int_equal(n, 100000);
	print_message("# 100000 lines in %llu records, read back in %.2f s\n",
	              (unsigned long long)c.records, now_s() - t0);
	/* how many records the output makes depends on how much each read
	 * of the pipe finds: start in the middle, whatever that is */
	assert_true(c.records >= 2);
	mid = (json_int_t)(c.records / 2);
	collected_free(&c);

	/* a late reader starting in the middle gets the rest in order */
	r = call_ok(L1, SRV_A, "script.status",
	            json_pack("{s:s, s:I}", "ticket", t, "after_seq", mid));
	{
		json_t *rec = json_array_get(json_object_get(r, "output"), 0);
		assert_int_equal(json_integer_value(json_object_get(rec, "seq")), mid + 1);
	}
	json_decref(r);
}

static void test_cancel_escalates(void **state)
{
	char t[33];
	json_t *r;
	long pid;
	double t0;
	collected c;
	int i;

	(void)state;
	tk(t, 20);
	/* the shell and its sleep both ignore SIGTERM */
	r = start_script(L1, t, "trap '' TERM; echo ready; sleep 60; echo never", 0);
	json_decref(r);
	for (i = 0; i < 100; i++) {
		r = call_ok(L2, SRV_A, "script.status",
		            json_pack("{s:s, s:i}", "ticket", t, "wait_ms", 5000));
		if (json_array_size(json_object_get(r, "output"))) {
			json_decref(r);
			break;
		}
		json_decref(r);
	}
	pid = ticket_pid(t);
	assert_true(pid > 0);
	t0 = now_s();
	/* cancelled from another loop than the one that spawned it */
	r = call_ok(L2, SRV_A, "script.cancel",
	            json_pack("{s:s, s:i, s:i}", "ticket", t, "grace_ms", 700, "wait_ms", 15000));
	assert_string_equal(state_of(r), "cancelled");
	assert_int_equal(exit_of(r), 130);
	json_decref(r);
	assert_true(now_s() - t0 >= 0.6);         /* SIGTERM was ignored: it took SIGKILL */
	assert_true(now_s() - t0 < 10);
	assert_int_equal(group_alive(pid), 0);        /* the whole group is gone */
	collect(L1, t, 262144, &c);
	assert_string_equal(c.out, "ready\n");
	collected_free(&c);

	/* cancelling an ended ticket changes nothing */
	r = call_ok(L1, SRV_A, "script.cancel", json_pack("{s:s}", "ticket", t));
	assert_string_equal(state_of(r), "cancelled");
	json_decref(r);
}

static void test_isolation(void **state)
{
	char a[33], b[33], c3[33];
	json_t *r;
	collected ca, cb;

	(void)state;
	tk(a, 30);
	tk(b, 31);
	tk(c3, 32);
	r = call_ok(L1, SRV_A, "script.start",
	            json_pack("{s:s, s:s, s:s}", "ticket", a, "script", "sleep 1; echo A",
	                      "isolation", "pkg"));
	assert_string_equal(state_of(r), "running");
	json_decref(r);
	r = call_ok(L2, SRV_A, "script.start",
	            json_pack("{s:s, s:s, s:s}", "ticket", b, "script", "echo B", "isolation", "pkg"));
	assert_string_equal(state_of(r), "queued");
	assert_null(json_object_get(r, "started"));
	json_decref(r);
	/* another name is not held back */
	r = call_ok(L2, SRV_A, "script.start",
	            json_pack("{s:s, s:s, s:s, s:i}", "ticket", c3, "script", "echo C",
	                      "isolation", "other", "wait_ms", 5000));
	assert_string_equal(state_of(r), "finished");
	json_decref(r);
	collect(L2, b, 262144, &cb);
	collect(L1, a, 262144, &ca);
	assert_string_equal(ca.out, "A\n");
	assert_string_equal(cb.out, "B\n");
	assert_string_equal(cb.state, "finished");
	/* B started only once A had ended */
	assert_true(strcmp(cb.started, ca.ended) >= 0);
	collected_free(&ca);
	collected_free(&cb);
}

static void test_timeout(void **state)
{
	char t[33];
	json_t *r;
	double t0 = now_s();

	(void)state;
	tk(t, 40);
	r = call_ok(L1, SRV_A, "script.start",
	            json_pack("{s:s, s:s, s:i, s:i}", "ticket", t, "script", "echo hi; sleep 30",
	                      "timeout_s", 1, "wait_ms", 15000));
	assert_string_equal(state_of(r), "timed_out");
	assert_int_equal(exit_of(r), 124);
	assert_true(now_s() - t0 >= 0.9);
	assert_true(now_s() - t0 < 10);
	assert_string_equal(json_string_value(json_object_get(
		json_array_get(json_object_get(r, "output"), 0), "text")), "hi\n");
	json_decref(r);
}

static void test_idempotent(void **state)
{
	char t[33];
	char *marker = tether_asprintf("%s/marker", tmp), *script;
	unsigned char *data;
	size_t len;
	json_t *r;
	int i;

	(void)state;
	tk(t, 50);
	script = tether_asprintf("echo x >> %s; sleep 0.5; echo ran", marker);
	r = start_script(L1, t, script, 0);
	assert_string_equal(state_of(r), "running");
	json_decref(r);
	/* repeats while it runs and after it ended, from either loop */
	for (i = 0; i < 3; i++) {
		r = start_script(i % 2 ? L2 : L1, t, "echo other >> /dev/null", i == 2 ? 10000 : 0);
		if (i == 2) {
			assert_string_equal(state_of(r), "finished");
			assert_string_equal(json_string_value(json_object_get(
				json_array_get(json_object_get(r, "output"), 0), "text")), "ran\n");
		}
		json_decref(r);
	}
	assert_int_equal(tether_read_file(marker, 1000, &data, &len, NULL), 0);
	assert_string_equal((char *)data, "x\n");   /* it ran once */
	free(data);
	free(script);
	free(marker);
}

static void test_other_server(void **state)
{
	char t[33], code[65];
	json_t *r;

	(void)state;
	tk(t, 60);
	r = start_script(L1, t, "echo secret", 10000);
	json_decref(r);
	assert_null(call(L1, SRV_B, "script.status", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "not_found");
	assert_null(call(L1, SRV_B, "script.cancel", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "not_found");
	assert_null(call(L1, SRV_B, "script.complete", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "not_found");
	assert_null(call(L1, SRV_B, "script.start",
	                 json_pack("{s:s, s:s}", "ticket", t, "script", "echo mine"), code));
	assert_string_equal(code, "forbidden");
	/* the owner still sees it, unchanged */
	r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t));
	assert_string_equal(state_of(r), "finished");
	json_decref(r);
	/* a ticket nobody made */
	tk(t, 61);
	assert_null(call(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "not_found");
}

static void test_complete(void **state)
{
	char t[33], code[65];
	char *dir;
	json_t *r;

	(void)state;
	tk(t, 70);
	dir = tether_asprintf("%s/scripts/%s", work, t);
	r = start_script(L1, t, "sleep 30", 0);
	json_decref(r);
	assert_true(tether_is_dir(dir));
	{
		struct stat st;
		assert_int_equal(stat(dir, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0700);
	}
	assert_null(call(L1, SRV_A, "script.complete", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "busy");
	assert_true(tether_is_dir(dir));
	r = call_ok(L1, SRV_A, "script.cancel",
	            json_pack("{s:s, s:i}", "ticket", t, "wait_ms", 10000));
	assert_string_equal(state_of(r), "cancelled");
	json_decref(r);
	r = call_ok(L2, SRV_A, "script.complete", json_pack("{s:s}", "ticket", t));
	json_decref(r);
	assert_false(tether_path_exists(dir));
	assert_null(call(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "not_found");
	free(dir);
}

static void test_long_poll_and_closed_conn(void **state)
{
	char t[33];
	json_t *r;
	harness_call *hc;
	double t0;

	(void)state;
	tk(t, 80);
	r = start_script(L1, t, "sleep 0.5; echo late; sleep 30", 0);
	json_decref(r);
	/* woken as soon as output arrives (on another loop), not at wait_ms */
	t0 = now_s();
	r = call_ok(L2, SRV_A, "script.status", json_pack("{s:s, s:i}", "ticket", t, "wait_ms", 20000));
	assert_true(now_s() - t0 < 5);
	assert_string_equal(json_string_value(json_object_get(
		json_array_get(json_object_get(r, "output"), 0), "text")), "late\n");
	json_decref(r);
	/* a long-poll whose connection closes ends quickly, answer dropped */
	hc = harness_begin(L2, svc, SRV_A, "script.status",
	                   json_pack("{s:s, s:i, s:i}", "ticket", t, "after_seq", 1, "wait_ms", 30000));
	usleep(100000);
	assert_false(harness_answered(hc));
	t0 = now_s();
	harness_close_conn(hc);
	assert_int_equal(harness_wait(hc, 5000), 0);
	assert_true(now_s() - t0 < 3);
	harness_call_free(hc);
	r = call_ok(L1, SRV_A, "script.cancel",
	            json_pack("{s:s, s:i, s:i}", "ticket", t, "grace_ms", 0, "wait_ms", 10000));
	assert_string_equal(state_of(r), "cancelled");
	json_decref(r);
}

static void test_disabled(void **state)
{
	char t[33], code[65];
	harness_call *hc;

	(void)state;
	svc->shutdown();
	assert_int_equal(setup_env(0, 3600), 0);
	tk(t, 90);
	hc = harness_begin(L1, svc, SRV_A, "script.start",
	                   json_pack("{s:s, s:s}", "ticket", t, "script", "true"));
	assert_int_equal(harness_wait(hc, CALL_MS), 0);
	assert_string_equal(harness_error_code(hc), "forbidden");
	assert_non_null(strstr(harness_error_message(hc), "script = on"));
	harness_call_free(hc);
	assert_null(call(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "forbidden");
}

/* The agent is killed (-9) while a script runs; the next agent reports the
 * ticket as unknown (254) with the output recorded before.  Short scripts
 * that ended before the kill keep their output and exit code (one that
 * printed nothing has no output.log); one started just before the kill,
 * within its first 100 ms (no running state written yet), is unknown
 * (254) too, and a repeated script.start does not run it again. */
static void test_restart_recovery(void **state)
{
	char t[33], t2[33], t3[33], t4[33];
	pid_t child;
	int status;
	json_t *r;
	collected c;
	long pid;

	(void)state;
	tk(t, 100);
	tk(t2, 101);
	tk(t3, 102);
	tk(t4, 103);
	harness_loop_free(L1);
	harness_loop_free(L2);
	L1 = L2 = NULL;
	svc->shutdown();
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		harness_loop *hl;
		json_t *x;
		int i;
		if (setup_env(1, 3600) < 0)
			_exit(3);
		hl = harness_loop_new();
		x = start_script(hl, t2, "echo finished-before", 10000);
		json_decref(x);
		x = start_script(hl, t3, "exit 3", 10000);
		if (strcmp(state_of(x), "finished"))
			_exit(5);
		json_decref(x);
		x = start_script(hl, t, "echo before; sleep 60", 0);
		json_decref(x);
		for (i = 0; i < 100; i++) {
			x = call_ok(hl, SRV_A, "script.status",
			            json_pack("{s:s, s:i}", "ticket", t, "wait_ms", 5000));
			/* killed while it runs, once its running state (and
			 * pid, for the clean-up below) is in meta.json */
			if (json_array_size(json_object_get(x, "output")) && ticket_pid(t) > 0) {
				/* writes a file the second agent must not see again */
				json_decref(start_script(hl, t4, "sleep 0.5; echo x >> ran", 0));
				kill(getpid(), SIGKILL);
			}
			json_decref(x);
		}
		_exit(4);
	}
	assert_int_equal(waitpid(child, &status, 0), child);
	assert_true(WIFSIGNALED(status));
	/* a torn record at the end, as from a kill in the middle of a write */
	{
		char *p = tether_asprintf("%s/scripts/%s/output.log", work, t);
		FILE *f = fopen(p, "a");
		assert_non_null(f);
		fwrite("TR\001\000\000\000\000\050", 1, 8, f);
		fclose(f);
		free(p);
	}
	pid = ticket_pid(t);
	assert_int_equal(setup_env(1, 3600), 0);
	L1 = harness_loop_new();
	L2 = harness_loop_new();
	r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t));
	assert_string_equal(state_of(r), "unknown");
	assert_int_equal(exit_of(r), 254);
	json_decref(r);
	collect(L1, t, 262144, &c);
	assert_string_equal(c.out, "before\n");
	collected_free(&c);
	r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t2));
	assert_string_equal(state_of(r), "finished");
	assert_int_equal(exit_of(r), 0);
	json_decref(r);
	collect(L1, t2, 262144, &c);
	assert_string_equal(c.out, "finished-before\n");
	collected_free(&c);
	{
		char *p = tether_asprintf("%s/scripts/%s/output.log", work, t3);
		assert_false(tether_path_exists(p));   /* no output, no file */
		free(p);
	}
	collect(L1, t3, 262144, &c);
	assert_string_equal(c.state, "finished");
	assert_int_equal(c.exit_code, 3);
	assert_int_equal(c.records, 0);
	collected_free(&c);
	r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t4));
	assert_string_equal(state_of(r), "unknown");
	assert_int_equal(exit_of(r), 254);
	json_decref(r);
	/* the server repeats the start it got no answer for: never run twice */
	r = start_script(L1, t4, "sleep 0.5; echo x >> ran", 2000);
	assert_string_equal(state_of(r), "unknown");
	assert_int_equal(exit_of(r), 254);
	json_decref(r);
	{
		/* the first run's orphan ends within 0.5 s; the file has its line only */
		char *p = tether_asprintf("%s/scripts/%s/work/ran", work, t4);
		unsigned char *text = NULL;
		size_t len = 0;
		tether_error err = { 0 };
		int i;
		for (i = 0; i < 50 && !tether_path_exists(p); i++)
			usleep(100 * 1000);
		sleep(1);
		assert_int_equal(tether_read_file(p, 100, &text, &len, &err), 0);
		assert_int_equal(len, 2);
		free(text);
		free(p);
	}
	/* the orphan of the killed agent: ours to clean up */
	if (pid > 0)
		kill(-(pid_t)pid, SIGKILL);
}

/* meta.json is a line per change of state: a last line cut short (the
 * agent killed while appending it) is ignored and cut off, so the ticket is
 * read in the state before it; a meta.json of an earlier agent (one object,
 * no newline) is read as before. */
static void test_meta_lines(void **state)
{
	char t[33], t2[33], t3[33];
	char *d, *m, *d2, *m2, *d3;
	json_t *r, *x;
	unsigned char *text = NULL;
	size_t len = 0;
	tether_error err = { 0 };
	FILE *f;

	(void)state;
	tk(t, 120);
	tk(t2, 121);
	tk(t3, 122);
	d3 = tether_asprintf("%s/scripts/%s", work, t3);
	d = tether_asprintf("%s/scripts/%s", work, t);
	m = tether_asprintf("%s/meta.json", d);
	d2 = tether_asprintf("%s/scripts/%s", work, t2);
	m2 = tether_asprintf("%s/meta.json", d2);
	r = start_script(L1, t, "echo one; exit 4", 10000);
	assert_string_equal(state_of(r), "finished");
	json_decref(r);
	x = meta_load(m);
	assert_string_equal(json_string_value(json_object_get(x, "state")), "finished");
	assert_int_equal(json_integer_value(json_object_get(x, "exit_code")), 4);
	assert_string_equal(json_string_value(json_object_get(x, "owner")), SRV_A);
	json_decref(x);
	harness_loop_free(L1);
	harness_loop_free(L2);
	L1 = L2 = NULL;
	svc->shutdown();
	/* keep only the first line (queued), then half of a finished line */
	assert_int_equal(tether_read_file(m, 1 << 20, &text, &len, &err), 0);
	f = fopen(m, "w");
	assert_non_null(f);
	fwrite(text, 1, (size_t)((unsigned char *)memchr(text, '\n', len) + 1 - text), f);
	fputs("{\"state\":\"finished\",\"exit_co", f);
	fclose(f);
	free(text);
	/* an earlier agent's ticket */
	assert_int_equal(mkdir(d2, 0700), 0);
	f = fopen(m2, "w");
	assert_non_null(f);
	fprintf(f, "{\"ticket\":\"%s\",\"owner\":\"%s\",\"state\":\"finished\","
	        "\"created\":\"2026-11-23T05:00:00.000Z\",\"timeout_s\":0,"
	        "\"output_dropped_bytes\":0,\"ended\":\"2099-11-23T05:00:01.000Z\","
	        "\"exit_code\":9}", t2, SRV_A);
	fclose(f);
	/* and one that was running when that agent stopped */
	assert_int_equal(mkdir(d3, 0700), 0);
	{
		char *m3 = tether_asprintf("%s/meta.json", d3);
		f = fopen(m3, "w");
		assert_non_null(f);
		fprintf(f, "{\"ticket\":\"%s\",\"owner\":\"%s\",\"state\":\"running\","
		        "\"created\":\"2099-11-23T05:00:00.000Z\",\"timeout_s\":0,"
		        "\"output_dropped_bytes\":0}", t3, SRV_A);
		fclose(f);
		free(m3);
	}
	assert_int_equal(setup_env(1, 3600), 0);
	L1 = harness_loop_new();
	L2 = harness_loop_new();
	r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t));
	assert_string_equal(state_of(r), "unknown");
	assert_int_equal(exit_of(r), 254);
	json_decref(r);
	/* the torn line was cut and the lost state appended after the first */
	x = meta_load(m);
	assert_string_equal(json_string_value(json_object_get(x, "state")), "unknown");
	assert_int_equal(json_integer_value(json_object_get(x, "exit_code")), 254);
	json_decref(x);
	r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t2));
	assert_string_equal(state_of(r), "finished");
	assert_int_equal(exit_of(r), 9);
	json_decref(r);
	r = call_ok(L2, SRV_A, "script.complete", json_pack("{s:s}", "ticket", t2));
	json_decref(r);
	assert_false(tether_path_exists(d2));
	/* the lost state went below the earlier agent's line: read again the
	 * same after another restart */
	for (int i = 0; i < 2; i++) {
		r = call_ok(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t3));
		assert_string_equal(state_of(r), "unknown");
		assert_int_equal(exit_of(r), 254);
		json_decref(r);
		harness_loop_free(L1);
		harness_loop_free(L2);
		svc->shutdown();
		assert_int_equal(setup_env(1, 3600), 0);
		L1 = harness_loop_new();
		L2 = harness_loop_new();
	}
	free(d3);
	free(d);
	free(m);
	free(d2);
	free(m2);
}

static void test_retention(void **state)
{
	char t[33], code[65];
	json_t *r;
	char *dir;

	(void)state;
	tk(t, 110);
	dir = tether_asprintf("%s/scripts/%s", work, t);
	r = start_script(L1, t, "echo old", 10000);
	json_decref(r);
	harness_loop_free(L1);
	harness_loop_free(L2);
	L1 = L2 = NULL;
	svc->shutdown();
	/* still within retention: kept */
	assert_int_equal(setup_env(1, 3600), 0);
	assert_true(tether_is_dir(dir));
	sleep(2);
	svc->shutdown();
	assert_int_equal(setup_env(1, 1), 0);
	assert_false(tether_path_exists(dir));
	L1 = harness_loop_new();
	L2 = harness_loop_new();
	assert_null(call(L1, SRV_A, "script.status", json_pack("{s:s}", "ticket", t), code));
	assert_string_equal(code, "not_found");
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_exact_output, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spawn_semantics, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_escalates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_isolation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idempotent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_other_server, setup, teardown),
		cmocka_unit_test_setup_teardown(test_complete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_poll_and_closed_conn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_disabled, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_recovery, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
		cmocka_unit_test_setup_teardown(test_meta_lines, setup, teardown),
	};
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
