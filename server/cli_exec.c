/*
 * Remote execution verbs: exec, run-script and task (list, show, logs,
 * cancel).  They ask the running daemon (server/tasks.c), which owns the
 * durable tasks and talks to the agents.
 *
 * exec and run-script create one task per target, then follow each with
 * long polls of task.poll (one thread per task) and copy the output as it
 * comes: to stdout and stderr byte for byte with one target, each line
 * prefixed by "TARGET: " with several.  Exit status: the script's exit
 * code with one target, 255 when tether itself failed (the reason and its
 * category on stderr), and with several targets 1 if any failed or exited
 * non-zero, else 0.  SIGINT or SIGTERM cancels the tasks still running,
 * waits up to CANCEL_WAIT_MS for their final status, and exits 130.
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include "admin_client.h"
#include "registry.h"
#include "server.h"
#include "tasks_store.h"
#include "util.h"

#define EXIT_TETHER_FAILED 255
#define EXIT_INTERRUPTED 130
#define POLL_WAIT_MS 20000
#define CREATE_WAIT_MS 500             /* task.create follows the task this long */
#define POLL_MARGIN_MS 30000
#define CANCEL_WAIT_MS 15000
#define DAEMON_LOST_MS 60000           /* how long a follower waits for the daemon to return */
#define SCRIPT_MAX (512 * 1024)
#define WORKER_STACK (256 * 1024)
#define WORKERS_MAX 32                 /* follower threads (admin connections) */
#define ROUND_PAUSE_MS 200

enum { O_TAG = OPT__VERB_BASE, O_TIMEOUT, O_ISOLATION, O_ENV, O_CWD, O_SHELL, O_TARGET, O_LIMIT };

/* ------------------------------------------------------------------ */
/* Argument helpers                                                    */
/* ------------------------------------------------------------------ */


static int parse_id(cli_ctx *c, const char *s, int64_t *id)
{
	char *end = NULL;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || !end || *end || v < 1)
		return cli_usage_error(c, "'%s' is not a task number: 'tether-server task list%s' shows them", s,
		                       cli_args(c));
	*id = (int64_t)v;
	return 0;
}

/* Write all of buf to fd. */
static void write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (w <= 0)
			return;       /* stdout closed: nothing more to do with it */
		p += w;
		len -= (size_t)w;
	}
}

/* The bytes of an output record (text or base64); *data is malloc'd. */
static int record_bytes(json_t *rec, unsigned char **data, size_t *len, int *fd)
{
	task_out o;
	tether_error e;

	if (task_out_from_json(rec, &o, &e) < 0)
		return -1;
	*data = o.data;
	*len = o.len;
	*fd = o.stream == TASK_STREAM_STDERR ? 2 : 1;
	json_decref(o.time);
	return 0;
}

static const char *jstr(json_t *o, const char *k, const char *def)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : def;
}

/* ------------------------------------------------------------------ */
/* exec / run-script options                                           */
/* ------------------------------------------------------------------ */

typedef struct exec_opts {
	const char *tag, *isolation, *cwd, *shell;
	json_int_t timeout;
	json_t *env;
} exec_opts;

static const cli_opt exec_spec[] = {
	{ "tag", required_argument, O_TAG, "TAG", "run on every target with this tag" },
	{ "timeout", required_argument, O_TIMEOUT, "S", "stop the command after S seconds (exit code 124)" },
	{ "isolation", required_argument, O_ISOLATION, "NAME", "never run at once with another command of the same NAME on a target" },
	{ "env", required_argument, O_ENV, "K=V", "set an environment variable (repeatable)" },
	{ "cwd", required_argument, O_CWD, "DIR", "working directory on the target" },
	{ NULL, 0, 0, NULL, NULL }
};

static const cli_opt script_spec[] = {
	{ "shell", required_argument, O_SHELL, "SHELL", "the shell that runs the script: sh or bash (default: the agent's, sh; cmd on Windows)" },
	{ "tag", required_argument, O_TAG, "TAG", "run on every target with this tag" },
	{ "timeout", required_argument, O_TIMEOUT, "S", "stop the script after S seconds (exit code 124)" },
	{ "isolation", required_argument, O_ISOLATION, "NAME", "never run at once with another script of the same NAME on a target" },
	{ "env", required_argument, O_ENV, "K=V", "set an environment variable (repeatable)" },
	{ "cwd", required_argument, O_CWD, "DIR", "working directory on the target" },
	{ NULL, 0, 0, NULL, NULL }
};

static int exec_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	exec_opts *o = arg;
	const char *eq;
	char *end = NULL, *name;
	long long v;

	switch (id) {
	case O_TAG:
		o->tag = val;
		break;
	case O_ISOLATION:
		if (registry_name_ok(val, "isolation name", &c->err) < 0)
			return cli_usage_error(c, "%s", c->err.detail);
		o->isolation = val;
		break;
	case O_CWD:
		if (!*val)
			return cli_usage_error(c, "--cwd needs a directory");
		o->cwd = val;
		break;
	case O_SHELL:
		if (!*val || strchr(val, ' '))
			return cli_usage_error(c, "--shell needs a shell name such as sh or bash");
		o->shell = val;
		break;
	case O_TIMEOUT:
		errno = 0;
		v = strtoll(val, &end, 10);
		if (errno || !end || *end || v < 1 || v > 30LL * 24 * 3600)
			return cli_usage_error(c, "--timeout '%s' is not valid: give seconds, from 1 to %d", val,
			                       30 * 24 * 3600);
		o->timeout = v;
		break;
	case O_ENV:
		eq = strchr(val, '=');
		if (!eq || eq == val)
			return cli_usage_error(c, "--env '%s' is not valid: use NAME=VALUE", val);
		if (!o->env)
			o->env = json_object();
		name = tether_asprintf("%.*s", (int)(eq - val), val);
		json_object_set_new(o->env, name, json_string(eq + 1));
		free(name);
		break;
	default:
		return cli_usage_error(c, "unexpected option");
	}
	return 0;
}

static json_t *base_params(const exec_opts *o, char **targets, int n_targets)
{
	json_t *p = json_object();
	int i;

	if (o->tag) {
		json_object_set_new(p, "tag", json_string(o->tag));
	} else {
		json_t *arr = json_array();
		for (i = 0; i < n_targets; i++)
			json_array_append_new(arr, json_string(targets[i]));
		json_object_set_new(p, "targets", arr);
	}
	if (o->env)
		json_object_set(p, "env", o->env);
	if (o->cwd)
		json_object_set_new(p, "cwd", json_string(o->cwd));
	if (o->timeout)
		json_object_set_new(p, "timeout_s", json_integer(o->timeout));
	if (o->isolation)
		json_object_set_new(p, "isolation", json_string(o->isolation));
	return p;
}

static int check_targets(cli_ctx *c, const exec_opts *o, char **targets, int n)
{
	int i;

	if (!n && !o->tag)
		return cli_usage_error(c, "name the targets, or give --tag TAG");
	if (n && o->tag)
		return cli_usage_error(c, "give target names or --tag, not both");
	for (i = 0; i < n; i++)
		if (registry_name_ok(targets[i], "target name", &c->err) < 0)
			return cli_usage_error(c, "%s", c->err.detail);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Following tasks                                                     */
/* ------------------------------------------------------------------ */

typedef struct runner runner;

typedef struct linebuf {
	char *buf;
	size_t len, cap;
} linebuf;

typedef struct follower {
	runner *R;
	int64_t id;
	char target[REG_NAME_MAX + 1];
	linebuf lines[2];                /* stdout, stderr (several targets) */
	/* set by the thread, read by the main thread after done */
	char state[24];
	int has_exit_code, exit_code;
	char error[TETHER_ERROR_DETAIL_MAX];
	char category[40];
	char retrying[TETHER_ERROR_DETAIL_MAX];
	int64_t after;                   /* the last record seen */
	uint64_t lost_since;             /* the daemon went away then (0: it is there) */
	int over;                        /* the worker is done with it */
	volatile int done;               /* under R->lock */
} follower;

typedef struct worker {
	runner *R;
	pthread_t thread;
	int started;
	size_t first, step;
} worker;

struct runner {
	const char *progname, *verb;
	const tether_instance *inst;
	follower *f;
	size_t n;
	worker *w;
	size_t nw;
	int several;
	pthread_mutex_t lock;            /* output and done flags */
	pthread_cond_t cond;
	size_t n_done;
	volatile int cancelling;
	pthread_t main_thread;           /* woken with SIGUSR1 when a follower ends */
};

/* Write a record's bytes: as they are with one target, else line by line
 * with "TARGET: " before each (a partial line waits for its end). */
static void emit(follower *f, int fd, const unsigned char *data, size_t len)
{
	linebuf *lb = &f->lines[fd == 2];
	size_t i, start = 0;

	if (!f->R->several) {
		write_all(fd, data, len);
		return;
	}
	for (i = 0; i < len; i++) {
		if (data[i] != '\n')
			continue;
		if (lb->len + (i + 1 - start) + strlen(f->target) + 2 > lb->cap) {
			lb->cap = lb->len + (i + 1 - start) + strlen(f->target) + 2 + 256;
			lb->buf = realloc(lb->buf, lb->cap);
			if (!lb->buf)
				abort();
		}
		if (!lb->len) {
			lb->len = (size_t)snprintf(lb->buf, lb->cap, "%s: ", f->target);
		}
		memcpy(lb->buf + lb->len, data + start, i + 1 - start);
		lb->len += i + 1 - start;
		write_all(fd, lb->buf, lb->len);
		lb->len = 0;
		start = i + 1;
	}
	if (start < len) {
		size_t rest = len - start;
		if (lb->len + rest + strlen(f->target) + 3 > lb->cap) {
			lb->cap = lb->len + rest + strlen(f->target) + 3 + 256;
			lb->buf = realloc(lb->buf, lb->cap);
			if (!lb->buf)
				abort();
		}
		if (!lb->len)
			lb->len = (size_t)snprintf(lb->buf, lb->cap, "%s: ", f->target);
		memcpy(lb->buf + lb->len, data + start, rest);
		lb->len += rest;
	}
}

/* A last line without its newline, at the end (several targets). */
static void flush_lines(follower *f)
{
	int s;

	for (s = 0; s < 2; s++) {
		linebuf *lb = &f->lines[s];
		if (lb->len) {
			write_all(s ? 2 : 1, lb->buf, lb->len);
			write_all(s ? 2 : 1, "\n", 1);
			lb->len = 0;
		}
	}
}

static void note(runner *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(runner *R, const char *fmt, ...)
{
	char msg[TETHER_ERROR_DETAIL_MAX + 256];
	int n;
	va_list ap;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(msg))
		n = (int)sizeof(msg) - 1;
	pthread_mutex_lock(&R->lock);
	write_all(2, R->progname, strlen(R->progname));
	write_all(2, " ", 1);
	write_all(2, R->verb, strlen(R->verb));
	write_all(2, ": ", 2);
	write_all(2, msg, (size_t)n);
	write_all(2, "\n", 1);
	pthread_mutex_unlock(&R->lock);
}

static void follower_finish(follower *f)
{
	runner *R = f->R;

	pthread_mutex_lock(&R->lock);
	flush_lines(f);
	f->done = 1;
	R->n_done++;
	pthread_cond_broadcast(&R->cond);
	pthread_mutex_unlock(&R->lock);
	if (!pthread_equal(pthread_self(), R->main_thread))
		pthread_kill(R->main_thread, SIGUSR1);
}

/* The daemon has too many admin connections (other CLIs): try again. */
static int daemon_busy(const tether_error *e)
{
	return strstr(e->detail, "too many admin connections") != NULL;
}

/* Errors that mean the daemon itself is not there (now). */
static int daemon_lost(const tether_error *e)
{
	return e->code == TETHER_ERR_CLOSED || e->code == TETHER_ERR_TIMEOUT ||
	       (e->code == TETHER_ERR_NOT_FOUND && strstr(e->detail, "is not running"));
}

/* One task.poll of f (waiting up to wait_ms for news).  Returns 1 once the
 * task is over for us (ended, or tether failed), 2 if the answer brought
 * output, else 0. */
static int poll_handle(follower *f, json_t *res);

static int poll_once(follower *f, int wait_ms)
{
	runner *R = f->R;
	json_t *p, *res = NULL;
	tether_error e;
	int r;

	memset(&e, 0, sizeof(e));
	p = json_pack("{s:I, s:I, s:i}", "id", (json_int_t)f->id, "after_seq", (json_int_t)f->after,
	              "wait_ms", wait_ms);
	r = admin_client_call(R->inst, "task.poll", p, (uint32_t)wait_ms + POLL_MARGIN_MS, &res, &e);
	json_decref(p);
	if (r < 0) {
		uint64_t now = tether_now_ms();
		if (daemon_lost(&e) || daemon_busy(&e)) {
			if (!f->lost_since) {
				f->lost_since = now;
				if (daemon_lost(&e))
					note(R, "%s: lost the daemon (%s); task %lld goes on on the server: "
					     "waiting up to %d s for the daemon", f->target, e.detail,
					     (long long)f->id, DAEMON_LOST_MS / 1000);
			}
			if (now - f->lost_since < DAEMON_LOST_MS && !R->cancelling) {
				struct timespec ts = { 0, (daemon_busy(&e) ? 200 : 1000) * 1000000L };
				nanosleep(&ts, NULL);
				return 0;
			}
		}
		snprintf(f->state, sizeof(f->state), "failed");
		snprintf(f->category, sizeof(f->category), "%s",
		         tether_category_name(e.category ? e.category : TETHER_CAT_INTERNAL));
		snprintf(f->error, sizeof(f->error), "%s; task %lld may go on on the server: follow it "
		         "with 'tether-server task logs %lld'", e.detail, (long long)f->id,
		         (long long)f->id);
		follower_finish(f);
		return 1;
	}
	if (f->lost_since) {
		note(R, "%s: the daemon is back", f->target);
		f->lost_since = 0;
	}
	r = poll_handle(f, res);
	json_decref(res);
	return r;
}

/* Handle a task.poll answer (res, borrowed) for f: write its output, note
 * its retries.  Returns 1 once the task has ended (f finished), 2 if the
 * answer brought output or said more is ready, else 0. */
static int poll_handle(follower *f, json_t *res)
{
	runner *R = f->R;
	json_t *out, *rec, *retry;
	size_t i;
	int got = 0;

	out = json_object_get(res, "output");
	pthread_mutex_lock(&R->lock);
	json_array_foreach(out, i, rec) {
		unsigned char *data = NULL;
		size_t len = 0;
		int fd = 1;
		if (record_bytes(rec, &data, &len, &fd) == 0)
			emit(f, fd, data, len);
		free(data);
		got = 2;
	}
	pthread_mutex_unlock(&R->lock);
	if (json_is_integer(json_object_get(res, "next_seq")))
		f->after = (int64_t)json_integer_value(json_object_get(res, "next_seq"));
	retry = json_object_get(res, "retrying");
	if (json_is_object(retry) && strcmp(f->retrying, jstr(retry, "error", ""))) {
		snprintf(f->retrying, sizeof(f->retrying), "%s", jstr(retry, "error", ""));
		note(R, "%s: %s (%s): retrying; the command may still be running there",
		     f->target, f->retrying, jstr(retry, "category", "internal"));
	} else if (!retry) {
		f->retrying[0] = '\0';
	}
	if (task_state_final(jstr(res, "state", "")) && !json_is_true(json_object_get(res, "more"))) {
		json_t *ec = json_object_get(res, "exit_code");
		snprintf(f->state, sizeof(f->state), "%s", jstr(res, "state", ""));
		if (json_is_integer(ec)) {
			f->has_exit_code = 1;
			f->exit_code = (int)json_integer_value(ec);
		}
		snprintf(f->error, sizeof(f->error), "%s", jstr(res, "error", ""));
		snprintf(f->category, sizeof(f->category), "%s", jstr(res, "category", ""));
		follower_finish(f);
		return 1;
	}
	if (json_is_true(json_object_get(res, "more")))
		got = 2;
	return got;
}

/* A worker follows tasks first, first + step, ...: with one task left it
 * long-polls it; with several it polls each without waiting, and pauses
 * when a round brought nothing (so at most WORKERS_MAX admin connections
 * are open, whatever the number of targets). */
static void *work(void *arg)
{
	worker *w = arg;
	runner *R = w->R;
	size_t i, left = 0;

	for (i = w->first; i < R->n; i += w->step)
		if (!R->f[i].over)
			left++;
	while (left) {
		int news = 0;
		for (i = w->first; i < R->n; i += w->step) {
			follower *f = &R->f[i];
			int r;
			if (f->over)
				continue;
			r = poll_once(f, left == 1 ? (R->cancelling ? 2000 : POLL_WAIT_MS) : 0);
			if (r == 1) {
				f->over = 1;
				left--;
			}
			news |= r;
		}
		if (left > 1 && !news) {
			struct timespec ts = { 0, ROUND_PAUSE_MS * 1000000L };
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

static void cancel_all(runner *R)
{
	size_t i;

	R->cancelling = 1;
	for (i = 0; i < R->n; i++) {
		follower *f = &R->f[i];
		json_t *p, *res = NULL;
		tether_error e;
		int done;

		pthread_mutex_lock(&R->lock);
		done = f->done;
		pthread_mutex_unlock(&R->lock);
		if (done)
			continue;
		memset(&e, 0, sizeof(e));
		p = json_pack("{s:I}", "id", (json_int_t)f->id);
		if (admin_client_call(R->inst, "task.cancel", p, ADMIN_CLIENT_TIMEOUT_MS, &res, &e) < 0)
			note(R, "%s: cannot cancel task %lld: %s (%s)", f->target, (long long)f->id, e.detail,
			     tether_category_name(e.category));
		json_decref(p);
		json_decref(res);
	}
}

/* Create the tasks (params: task.create's), follow them, return the exit
 * status. */
static int run_remote(cli_ctx *c, json_t *params)
{
	runner R;
	json_t *res = NULL, *tasks, *v;
	sigset_t sigs, old;
	pthread_attr_t attr;
	size_t i;
	int r, e, interrupted = 0, status = 0;
	uint64_t deadline = 0;

	r = cli_open_instance(c);
	if (r < 0)
		return r;
	/* Signals go to this thread only (sigtimedwait below); SIGUSR1 comes
	 * from a follower that ended.  Blocked from before task.create: a
	 * Ctrl-C while it waits (at most CREATE_WAIT_MS) cancels the task
	 * once its number is known. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, &old);
	/* with one target the daemon follows the task in this call too, for
	 * up to CREATE_WAIT_MS: a short command needs no task.poll */
	json_object_set_new(params, "wait_ms", json_integer(CREATE_WAIT_MS));
	r = admin_client_call(c->inst, "task.create", params, CREATE_WAIT_MS + ADMIN_CLIENT_TIMEOUT_MS,
	                      &res, &c->err);
	if (r < 0) {
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		fprintf(stderr, "%s %s: %s (%s)\n", c->prog->progname, c->verb, c->err.detail,
		        tether_category_name(c->err.category ? c->err.category : TETHER_CAT_INTERNAL));
		return EXIT_TETHER_FAILED;
	}
	tasks = json_object_get(res, "tasks");
	if (!json_is_array(tasks) || !json_array_size(tasks)) {
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		fprintf(stderr, "%s %s: the daemon created no task (its answer has no \"tasks\"): check "
		        "its log (internal)\n", c->prog->progname, c->verb);
		json_decref(res);
		return EXIT_TETHER_FAILED;
	}
	memset(&R, 0, sizeof(R));
	R.progname = c->prog->progname;
	R.verb = c->verb;
	R.inst = c->inst;
	R.n = json_array_size(tasks);
	R.several = R.n > 1;
	R.f = tether_xcalloc(R.n, sizeof(*R.f));
	R.main_thread = pthread_self();
	pthread_mutex_init(&R.lock, NULL);
	pthread_cond_init(&R.cond, NULL);
	json_array_foreach(tasks, i, v) {
		R.f[i].R = &R;
		R.f[i].id = (int64_t)json_integer_value(json_object_get(v, "id"));
		snprintf(R.f[i].target, sizeof(R.f[i].target), "%s", jstr(v, "target", "?"));
	}
	/* the first poll's answer, from a daemon that follows in task.create
	 * (an older one leaves it out: the followers poll from the start) */
	if (R.n == 1 && json_is_object(json_object_get(res, "poll")) &&
	    poll_handle(&R.f[0], json_object_get(res, "poll")) == 1)
		R.f[0].over = 1;
	json_decref(res);

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, WORKER_STACK);
	R.nw = R.n < WORKERS_MAX ? R.n : WORKERS_MAX;
	if (R.n == 1 && R.f[0].over)
		R.nw = 0;             /* it ended within task.create: nothing to follow */
	R.w = tether_xcalloc(R.nw, sizeof(*R.w));
	for (i = 0; i < R.nw; i++) {
		worker *w = &R.w[i];
		size_t k;
		w->R = &R;
		w->first = i;
		w->step = R.nw;
		if ((e = pthread_create(&w->thread, &attr, work, w)) == 0) {
			w->started = 1;
			continue;
		}
		for (k = i; k < R.n; k += R.nw) {
			follower *f = &R.f[k];
			snprintf(f->state, sizeof(f->state), "failed");
			snprintf(f->category, sizeof(f->category), "internal");
			snprintf(f->error, sizeof(f->error), "cannot start a thread to follow task %lld: %s; "
			         "follow it with 'tether-server task logs %lld'", (long long)f->id,
			         strerror(e), (long long)f->id);
			follower_finish(f);
		}
	}
	pthread_attr_destroy(&attr);

	for (;;) {
		struct timespec ts = { 0, 200 * 1000 * 1000 };
		siginfo_t si;
		size_t done;

		pthread_mutex_lock(&R.lock);
		done = R.n_done;
		pthread_mutex_unlock(&R.lock);
		if (done == R.n)
			break;
		if (interrupted && tether_now_ms() > deadline)
			break;
		if (sigtimedwait(&sigs, &si, &ts) > 0 && si.si_signo != SIGUSR1 && !interrupted) {
			interrupted = 1;
			deadline = tether_now_ms() + CANCEL_WAIT_MS;
			note(&R, "interrupted: cancelling the command on %zu target%s", R.n - done,
			     R.n - done == 1 ? "" : "s");
			cancel_all(&R);
		}
	}

	if (R.n_done < R.n) {
		/* followers still waiting on the daemon: leave without them */
		note(&R, "no final status within %d s; the tasks go on on the server: see "
		     "'tether-server task list'", CANCEL_WAIT_MS / 1000);
		_exit(EXIT_INTERRUPTED);
	}
	for (i = 0; i < R.nw; i++)
		if (R.w[i].started)
			pthread_join(R.w[i].thread, NULL);
	/* consume what is pending (the followers' SIGUSR1 would kill us once
	 * unblocked; a second Ctrl-C changes nothing now) */
	for (i = 0; i < 4 * R.n + 16; i++) {
		struct timespec zero = { 0, 0 };
		siginfo_t si;
		if (sigtimedwait(&sigs, &si, &zero) < 0)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	for (i = 0; i < R.n; i++) {
		follower *f = &R.f[i];
		int code = f->has_exit_code ? f->exit_code : -1;

		if (!strcmp(f->state, "failed")) {
			note(&R, "%s: %s (%s)", f->target, f->error[0] ? f->error : "the task failed",
			     f->category[0] ? f->category : "internal");
			status = R.several ? 1 : EXIT_TETHER_FAILED;
		} else if (!strcmp(f->state, "timed_out")) {
			note(&R, "%s: the command timed out and was stopped (exit code %d)", f->target, code);
		} else if (!strcmp(f->state, "unknown")) {
			note(&R, "%s: the agent restarted while the command ran: its result is unknown "
			     "(exit code %d)", f->target, code);
		} else if (!strcmp(f->state, "cancelled") && !interrupted) {
			note(&R, "%s: the command was cancelled (exit code %d)", f->target, code);
		} else if (R.several && code != 0) {
			note(&R, "%s: exit code %d", f->target, code);
		}
		if (strcmp(f->state, "failed")) {
			if (R.several)
				status = status || code != 0 ? 1 : 0;
			else
				status = code < 0 || code > 255 ? EXIT_TETHER_FAILED : code;
		}
		free(f->lines[0].buf);
		free(f->lines[1].buf);
	}
	pthread_mutex_destroy(&R.lock);
	pthread_cond_destroy(&R.cond);
	free(R.f);
	free(R.w);
	return interrupted ? EXIT_INTERRUPTED : status;
}

int verb_exec(cli_ctx *c, int argc, char **argv)
{
	exec_opts o;
	json_t *params, *cmd;
	int dd, oi, r, i;

	memset(&o, 0, sizeof(o));
	for (dd = 1; dd < argc; dd++)
		if (!strcmp(argv[dd], "--"))
			break;
	cli_options_first(dd, argv, exec_spec);
	r = cli_parse(c, dd, argv, exec_spec, "TARGET... [--tag TAG] [OPTIONS] -- COMMAND [ARG...]",
	              "Run COMMAND (no shell) on each target, streaming its output here as it comes: byte\n"
	              "for byte with one target, each line prefixed with the target's name with several.\n"
	              "Each run is a durable task on the server ('tether-server task list').\n"
	              "Exit status: the command's with one target; 255 if tether failed (the reason is on\n"
	              "stderr); with several targets, 1 if any failed or exited non-zero. Ctrl-C cancels\n"
	              "the command on the targets and exits 130.",
	              exec_opt, &o, &oi);
	if (r) {
		json_decref(o.env);
		return r > 0 ? 0 : r;
	}
	if (dd >= argc || dd + 1 >= argc) {
		json_decref(o.env);
		return cli_usage_error(c, "the COMMAND is missing: put it after '--', for example "
		                       "'tether-server exec web1 -- uname -a'");
	}
	if ((r = check_targets(c, &o, argv + oi, dd - oi)) < 0) {
		json_decref(o.env);
		return r;
	}
	params = base_params(&o, argv + oi, dd - oi);
	cmd = json_array();
	for (i = dd + 1; i < argc; i++)
		json_array_append_new(cmd, json_string(argv[i]));
	json_object_set_new(params, "argv", cmd);
	json_decref(o.env);
	r = run_remote(c, params);
	json_decref(params);
	return r;
}

/* Read a script file (at most SCRIPT_MAX bytes of UTF-8 text). */
static int read_script(cli_ctx *c, const char *path, char **out, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	int fd, r;
	struct stat st;

	fd = !strcmp(path, "-") ? dup(0) : open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return tether_err_set(&c->err, errno == ENOENT ? TETHER_ERR_NOT_FOUND : TETHER_ERR_IO,
		                      errno == ENOENT ? TETHER_CAT_NOT_FOUND : TETHER_CAT_IO,
		                      "cannot read the script %s: %s", path, strerror(errno));
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		close(fd);
		return tether_err_set(&c->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "the script %s is a directory: give a script file", path);
	}
	buf = tether_xmalloc(SCRIPT_MAX + 1);
	for (;;) {
		ssize_t k = read(fd, buf + n, SCRIPT_MAX + 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = tether_err_set(&c->err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot read the script %s: %s",
			                   path, strerror(errno));
			goto fail;
		}
		if (k == 0)
			break;
		n += (size_t)k;
		if (n > SCRIPT_MAX) {
			r = tether_err_set(&c->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                   "the script %s is larger than %d KiB: upload it with 'tether-server "
			                   "upload' and run it with 'tether-server exec'", path, SCRIPT_MAX / 1024);
			goto fail;
		}
	}
	close(fd);
	if (!task_utf8_ok((unsigned char *)buf, n)) {
		free(buf);
		return tether_err_set(&c->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "the script %s is not UTF-8 text (or holds NUL bytes): convert it, or "
		                      "upload it and run it with 'tether-server exec'", path);
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
fail:
	close(fd);
	free(buf);
	return r;
}

int verb_run_script(cli_ctx *c, int argc, char **argv)
{
	exec_opts o;
	json_t *params;
	char *text = NULL;
	size_t len = 0;
	int oi, r, nt;

	memset(&o, 0, sizeof(o));
	cli_options_first(argc, argv, script_spec);
	r = cli_parse(c, argc, argv, script_spec, "TARGET... [--tag TAG] [--shell sh|bash] [OPTIONS] FILE",
	              "Send the script FILE ('-': standard input) to each target and run it there with the\n"
	              "shell, streaming its output as exec does. Same exit status as exec.",
	              exec_opt, &o, &oi);
	if (r) {
		json_decref(o.env);
		return r > 0 ? 0 : r;
	}
	if (oi >= argc) {
		json_decref(o.env);
		return cli_usage_error(c, "the script FILE is missing");
	}
	nt = argc - oi - 1;
	if ((r = check_targets(c, &o, argv + oi, nt)) < 0) {
		json_decref(o.env);
		return r;
	}
	if ((r = read_script(c, argv[argc - 1], &text, &len)) < 0) {
		json_decref(o.env);
		return r;
	}
	params = base_params(&o, argv + oi, nt);
	json_object_set_new(params, "script", json_stringn(text, len));
	if (o.shell) /* else the agent's default: sh, or cmd on Windows */
		json_object_set_new(params, "shell", json_string(o.shell));
	free(text);
	json_decref(o.env);
	r = run_remote(c, params);
	json_decref(params);
	return r;
}

/* ------------------------------------------------------------------ */
/* task list | show | logs | cancel                                    */
/* ------------------------------------------------------------------ */

static int call(cli_ctx *c, const char *method, json_t *params, json_t **result)
{
	int r = cli_open_instance(c);

	if (r == 0)
		r = admin_client_call(c->inst, method, params, ADMIN_CLIENT_TIMEOUT_MS, result, &c->err);
	json_decref(params);
	return r;
}

/* "uname -a" or "script (sh, 120 bytes)", cut to width. */
static void describe_command(json_t *cmd, char *out, size_t cap)
{
	json_t *argv = json_object_get(cmd, "argv"), *v;
	size_t i, n = 0;

	out[0] = '\0';
	if (json_is_array(argv)) {
		json_array_foreach(argv, i, v) {
			int k = snprintf(out + n, cap - n, "%s%s", i ? " " : "", json_string_value(v) ?
			                 json_string_value(v) : "");
			if (k < 0 || (size_t)k >= cap - n)
				break;
			n += (size_t)k;
		}
	} else if (json_is_string(json_object_get(cmd, "script"))) {
		snprintf(out, cap, "script (%s, %zu bytes)", jstr(cmd, "shell", "the agent's default shell"),
		         json_string_length(json_object_get(cmd, "script")));
	}
	for (i = 0; out[i]; i++)
		if ((unsigned char)out[i] < 32)
			out[i] = ' ';
}

static void time_str(json_t *v, char *out, size_t cap)
{
	if (json_is_integer(v)) {
		json_int_t t = json_integer_value(v);
		tether_iso8601(t > 100000000000LL ? t / 1000 : t, out, cap);
	} else if (json_is_real(v)) {
		tether_iso8601((int64_t)json_real_value(v), out, cap);
	} else if (json_is_string(v)) {
		snprintf(out, cap, "%s", json_string_value(v));
	} else {
		snprintf(out, cap, "-");
	}
}

static const cli_opt list_spec[] = {
	{ "target", required_argument, O_TARGET, "NAME", "only the tasks of this target" },
	{ "limit", required_argument, O_LIMIT, "N", "at most N tasks, newest first (default 50)" },
	{ NULL, 0, 0, NULL, NULL }
};

typedef struct list_opts {
	const char *target;
	long limit;
} list_opts;

static int list_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	list_opts *o = arg;
	char *end = NULL;

	if (id == O_TARGET) {
		if (registry_name_ok(val, "target name", &c->err) < 0)
			return cli_usage_error(c, "%s", c->err.detail);
		o->target = val;
	} else if (id == O_LIMIT) {
		errno = 0;
		o->limit = strtol(val, &end, 10);
		if (errno || !end || *end || o->limit < 1 || o->limit > 100000)
			return cli_usage_error(c, "--limit '%s' is not valid: give a number from 1 to 100000", val);
	}
	return 0;
}

static int task_list(cli_ctx *c, int argc, char **argv)
{
	list_opts o = { NULL, 0 };
	json_t *p, *res = NULL, *tasks, *t;
	size_t i;
	int oi, r;

	cli_options_first(argc, argv, list_spec);
	r = cli_parse(c, argc, argv, list_spec, "[--target NAME] [--limit N] [--json]",
	              "List the remote execution tasks, newest first.", list_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	p = json_object();
	if (o.target)
		json_object_set_new(p, "target", json_string(o.target));
	if (o.limit)
		json_object_set_new(p, "limit", json_integer(o.limit));
	if ((r = call(c, "task.list", p, &res)) < 0)
		return r;
	tasks = json_object_get(res, "tasks");
	if (c->json) {
		cli_print_json(json_incref(tasks ? tasks : json_array()));
		json_decref(res);
		return 0;
	}
	if (!json_array_size(tasks)) {
		printf("No tasks%s%s. Run one with 'tether-server exec%s TARGET -- COMMAND'.\n",
		       o.target ? " for " : "", o.target ? o.target : "", cli_args(c));
		json_decref(res);
		return 0;
	}
	printf("%-6s %-20s %-10s %4s  %-20s %s\n", "ID", "TARGET", "STATE", "EXIT", "CREATED", "COMMAND");
	json_array_foreach(tasks, i, t) {
		char cmd[61], ec[16] = "-";
		describe_command(json_object_get(t, "command"), cmd, sizeof(cmd));
		if (json_is_integer(json_object_get(t, "exit_code")))
			snprintf(ec, sizeof(ec), "%lld", (long long)json_integer_value(json_object_get(t, "exit_code")));
		printf("%-6lld %-20s %-10s %4s  %-20s %s\n", (long long)json_integer_value(json_object_get(t, "id")),
		       jstr(t, "target", "?"), jstr(t, "state", "?"), ec, jstr(t, "created", "-"), cmd);
	}
	json_decref(res);
	return 0;
}

static int one_id(cli_ctx *c, int argc, char **argv, const char *usage, const char *desc,
                  int64_t *id)
{
	int oi, r;

	cli_options_first(argc, argv, NULL);
	r = cli_parse(c, argc, argv, NULL, usage, desc, NULL, NULL, &oi);
	if (r)
		return r > 0 ? 1 : r;
	if (oi >= argc)
		return cli_usage_error(c, "the task ID is missing: 'tether-server task list%s' shows them", cli_args(c));
	if (argc - oi > 1)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi + 1]);
	return parse_id(c, argv[oi], id);
}

static int task_show(cli_ctx *c, int argc, char **argv)
{
	json_t *res = NULL, *cmd, *v;
	int64_t id;
	char when[64], desc[256];
	int r;

	r = one_id(c, argc, argv, "ID [--json]", "Show a task: its command, state, exit code and times.", &id);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = call(c, "task.show", json_pack("{s:I}", "id", (json_int_t)id), &res)) < 0)
		return r;
	if (c->json) {
		cli_print_json(res);
		return 0;
	}
	cmd = json_object_get(res, "command");
	describe_command(cmd, desc, sizeof(desc));
	printf("task:       %lld\n", (long long)id);
	printf("target:     %s\n", jstr(res, "target", "?"));
	printf("command:    %s\n", desc);
	if ((v = json_object_get(cmd, "cwd")))
		printf("cwd:        %s\n", json_string_value(v));
	if ((v = json_object_get(cmd, "timeout_s")))
		printf("timeout:    %lld s\n", (long long)json_integer_value(v));
	if ((v = json_object_get(cmd, "isolation")))
		printf("isolation:  %s\n", json_string_value(v));
	printf("state:      %s%s\n", jstr(res, "state", "?"),
	       json_is_true(json_object_get(res, "cancel_requested")) &&
	       !task_state_final(jstr(res, "state", "")) ? " (cancel requested)" : "");
	if (json_is_integer(json_object_get(res, "exit_code")))
		printf("exit code:  %lld\n", (long long)json_integer_value(json_object_get(res, "exit_code")));
	printf("created:    %s\n", jstr(res, "created", "-"));
	time_str(json_object_get(res, "started"), when, sizeof(when));
	printf("started:    %s\n", when);
	time_str(json_object_get(res, "ended"), when, sizeof(when));
	printf("ended:      %s\n", when);
	printf("records:    %lld\n", (long long)json_integer_value(json_object_get(res, "records")));
	printf("ticket:     %s\n", jstr(res, "ticket", "?"));
	if (json_object_get(res, "error"))
		printf("error:      %s (%s)\n", jstr(res, "error", ""), jstr(res, "category", "internal"));
	if ((v = json_object_get(res, "retrying")))
		printf("retrying:   %s (%s)\n", jstr(v, "error", ""), jstr(v, "category", ""));
	json_decref(res);
	return 0;
}

static int task_logs(cli_ctx *c, int argc, char **argv)
{
	int64_t id, after = 0;
	unsigned pages = 0;
	int r;

	r = one_id(c, argc, argv, "ID",
	           "Print a task's stored output as the command wrote it: its stdout here on stdout,\n"
	           "its stderr on stderr.", &id);
	if (r)
		return r > 0 ? 0 : r;
	for (;;) {
		json_t *res = NULL, *rec;
		size_t i;
		int more;

		r = call(c, "task.logs", json_pack("{s:I, s:I}", "id", (json_int_t)id, "after_seq",
		                                   (json_int_t)after), &res);
		if (r < 0)
			return r;
		json_array_foreach(json_object_get(res, "output"), i, rec) {
			unsigned char *data = NULL;
			size_t len = 0;
			int fd = 1;
			if (record_bytes(rec, &data, &len, &fd) == 0)
				write_all(fd, data, len);
			free(data);
		}
		more = json_is_true(json_object_get(res, "more"));
		after = (int64_t)json_integer_value(json_object_get(res, "next_seq"));
		json_decref(res);
		/* a page is at least one record: the loop ends */
		if (!more || ++pages > 10000000)
			break;
	}
	return 0;
}

static int task_cancel(cli_ctx *c, int argc, char **argv)
{
	json_t *res = NULL;
	int64_t id;
	int r;

	r = one_id(c, argc, argv, "ID",
	           "Cancel a task: the agent stops the command's whole process tree (SIGTERM, then\n"
	           "SIGKILL) and the task ends as cancelled (exit code 130).", &id);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = call(c, "task.cancel", json_pack("{s:I}", "id", (json_int_t)id), &res)) < 0)
		return r;
	if (c->json)
		cli_print_json(json_incref(res));
	else if (task_state_final(jstr(res, "state", "")))
		printf("Task %lld had already ended (%s); nothing to cancel.\n", (long long)id,
		       jstr(res, "state", "?"));
	else
		printf("Cancelling task %lld on %s: 'tether-server task show%s %lld' shows when it ended.\n",
		       (long long)id, jstr(res, "target", "?"), cli_args(c), (long long)id);
	json_decref(res);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(cli_ctx *c, int argc, char **argv);
	const char *verb;
	const char *summary;
} subs[] = {
	{ "list", task_list, "task list", "list tasks, newest first ([--target NAME] [--json])" },
	{ "show", task_show, "task show", "show a task (ID [--json])" },
	{ "logs", task_logs, "task logs", "print a task's stored output exactly (ID)" },
	{ "cancel", task_cancel, "task cancel", "cancel a running task (ID)" },
	{ NULL, NULL, NULL, NULL }
};

static void print_subs(cli_ctx *c, FILE *f)
{
	size_t i;

	fprintf(f, "Usage: %s task SUBVERB [OPTIONS]\n\nSubverbs:\n", c->prog->progname);
	for (i = 0; subs[i].name; i++)
		fprintf(f, "  %-10s %s\n", subs[i].name, subs[i].summary);
}

int verb_task(cli_ctx *c, int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		print_subs(c, stderr);
		return cli_usage_error(c, "a subverb is missing");
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		print_subs(c, stdout);
		return 0;
	}
	for (i = 0; subs[i].name; i++) {
		if (!strcmp(subs[i].name, argv[1])) {
			c->verb = subs[i].verb;
			return subs[i].fn(c, argc - 1, argv + 1);
		}
	}
	return cli_usage_error(c, "unknown subverb '%s': use list, show, logs or cancel", argv[1]);
}
