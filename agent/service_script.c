/*
 * The script service: script.start, script.status, script.cancel and
 * script.complete (docs/protocol.md, section 9).
 *
 * A ticket (32 hex digits, chosen by the server) names one run of a script
 * or an argv.  Its directory <work_dir>/scripts/<ticket>/ (0700) holds
 *   meta.json    owner, command summary (never env values), state, exit
 *                code, times: one JSON object a line, the first complete,
 *                then one line appended at every change of state with the
 *                members that changed (a line cut short by a crash is
 *                ignored, so the state read back is the one before it)
 *   output.log   the output records, appended as they arrive (format
 *                below); created at the first output
 *   script       the script text, when one was given (run as `sh script`)
 *   work/        the default working directory of the process
 * so a server that reconnects after a drop gets every record and the exit
 * code, and an agent that restarts knows which tickets it lost (state
 * `unknown`, exit code 254).
 *
 * Threads: the daemon runs several loops.  A process is spawned on the loop
 * of the request that started it (or, for a queued ticket, on the loop where
 * the ticket ahead of it in its isolation queue ended), and all its handles
 * live there (struct run).  Everything other loops may look at is in the
 * ticket, under S.lock.  A request on another loop reaches the process only
 * through run->async (cancel); long-polls (wait_ms) are woken through their
 * own async on their own loop whenever a ticket gets output or ends.
 *
 * output.log record: 24-byte header then the bytes.
 *   0  'T' 'R'     magic
 *   2  u8 stream   1 stdout, 2 stderr
 *   3  u8          0
 *   4  u32 length  1..RECORD_MAX
 *   8  u64 seq     1, 2, 3 ...
 *   16 u64 time    Unix time in milliseconds
 * (big-endian).  A record cut short by a crash is dropped at the next start.
 */
#include "config.h"
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
/* Linux with glibc 2.29 or later: commands are started with posix_spawn
 * (glibc: clone(CLONE_VM|CLONE_VFORK), no copy of the agent's page tables
 * and no copy-on-write faults afterwards) instead of libuv's fork(); see
 * spawn_process. */
#if defined(__linux__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 29))
#define USE_POSIX_SPAWN 1
#include <spawn.h>
#endif
#include <uv.h>
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "rpc.h"
#include "service.h"
#include "util.h"
#ifdef _WIN32
#include "proctree_win.h"
#endif

#define TICKETS_MAX 256                       /* tickets held (not completed) */
#define OUTPUT_CAP (1ULL << 30)               /* output.log bytes per ticket */
#define ANSWER_DEFAULT (256 * 1024)           /* output per answer, encoded */
#define ANSWER_MIN 4096
#define ANSWER_MAX (768 * 1024)               /* stays under the 1 MiB frame */
#define WAIT_MAX_MS 30000
#define GRACE_DEFAULT_MS 5000
#define GRACE_MAX_MS 600000
#define DRAIN_MS 2000                         /* pipes read after the exit */
#define TIMEOUT_MAX_S (366u * 24 * 3600)
#define ARGV_MAX 4096
#define ENV_MAX 4096
#define ISOLATION_MAX 128
#define READ_CHUNK 65536
#define RECORD_MAX (READ_CHUNK + 4)
#define HDR 24
#define INDEX_STRIDE 256                      /* index: offset of every 256th record */
#define META_MAX (4u << 20)
#define RECORD_COST 96                        /* JSON bytes of a record beside its data */

/* The move to running is written to meta.json only if the process is
 * still running this long after its start (see spawn). */
#define RUNNING_META_DELAY_MS 100

#define EXIT_CANCELLED 130
#define EXIT_TIMED_OUT 124
#define EXIT_UNKNOWN 254
#define EXIT_NOT_FOUND 127
#define EXIT_CANNOT_RUN 126

enum { ST_QUEUED, ST_RUNNING, ST_FINISHED, ST_CANCELLED, ST_TIMED_OUT, ST_UNKNOWN };
static const char *const state_names[] = { "queued", "running", "finished", "cancelled",
                                           "timed_out", "unknown" };
#define ENDED(s) ((s) >= ST_FINISHED)

enum { WHY_NONE, WHY_CANCEL, WHY_TIMEOUT };

typedef struct cmd {
	char **argv;                  /* NULL-terminated; script mode: shell + path */
	char *script;                 /* script text, or NULL (argv mode) */
	size_t script_len;
	char *shell;                  /* script mode */
	char **env;                   /* "NAME=VALUE" overrides, NULL-terminated */
	char *cwd;                    /* NULL: the ticket's work/ */
	uint32_t timeout_s;
} cmd;

struct run;
struct waiter;

typedef struct ticket {
	struct ticket *next;          /* S.tickets */
	char id[33];
	char owner[65];
	char *dir;
	int refs;                     /* S.list + runs + waiters + readers */
	int listed;
	int state;
	int preparing;                /* its directory is being made */
	int meta_lines;               /* lines in meta.json (0: not written yet) */
	int exit_code;
	int64_t created_ms, started_ms, ended_ms;
	uint64_t order;               /* creation order: queues are FIFO */
	char *isolation;
	uint32_t timeout_s;
	cmd *cmd;                     /* until it has ended */
	json_t *summary;              /* command summary for meta.json */
	long pid;
	uint64_t next_seq;            /* seq the next record gets */
	uint64_t committed;           /* complete bytes of output.log */
	uint64_t *index;              /* index[k]: offset of record k*STRIDE+1 */
	size_t nindex, capindex;
	uint64_t dropped;             /* output bytes discarded (cap, write errors) */
	struct run *run;              /* while a process belongs to it */
	int cancel_req;
	uint32_t grace_ms;
	struct waiter *waiters;
	pthread_mutex_t meta_lock;    /* serialises meta.json writes (taken before S.lock) */
} ticket;

typedef struct run {
	struct run *next, *prev;      /* S.runs */
	ticket *t;
	uv_loop_t *loop;
#ifdef USE_POSIX_SPAWN
	uv_signal_t proc;             /* SIGCHLD: reaps pid (spawn_process) */
#else
	uv_process_t proc;
#endif
	uv_pipe_t pipe[2];
	uv_timer_t timeout, grace, drain;
	uv_timer_t meta;              /* the delayed meta.json write of the move to running */
	uv_async_t async;
	int handles;                  /* open handles; freed at 0 */
	int pipes_open;
	int spawned, exited, finalized;
	int why;
	int64_t exit_status;
	int term_signal;
	long pid;
	int fd;                       /* output.log, O_APPEND; -1 until the first output */
	int created_output;           /* this run created output.log */
	size_t carry[2];
	int write_failed;
	/* last, and not zeroed (spawn): zeroing these 128 KiB before every
	 * spawn was a third of the agent's instructions for a short command */
	unsigned char buf[2][4 + READ_CHUNK]; /* 4 bytes for a held-back UTF-8 tail */
} run;

typedef struct waiter {
	struct waiter *next;          /* t->waiters while linked */
	agent_req *r;
	ticket *t;
	uv_async_t async;
	uv_timer_t timer;
	int handles;
	int linked, done;
	int want_end;                 /* start: wait for the end; status: for output */
	uint64_t after_seq;
	size_t max_bytes;
	uint64_t deadline;            /* tether_now_ms() */
} waiter;

static struct {
	pthread_mutex_t lock;
	int ready, enabled;
	char *scripts_dir;
	uint32_t retention_s;
	ticket *tickets;
	size_t ntickets;
	uint64_t order;
	run *runs;
} S = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static int64_t now_unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "2026-11-22T23:59:00.123Z" */
static void iso_ms(int64_t ms, char *out, size_t cap)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&s, &tm);
	snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static int parse_iso_ms(const char *s, int64_t *out)
{
	struct tm tm;
	int ms = 0, n = 0;
	time_t t;

	if (!s)
		return -1;
	memset(&tm, 0, sizeof(tm));
	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
	           &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
		return -1;
	if (s[n] == '.')
		sscanf(s + n + 1, "%3d", &ms);
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	*out = (int64_t)t * 1000 + ms;
	return 0;
}

static void put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static void put_u64(unsigned char *p, uint64_t v)
{
	put_u32(p, (uint32_t)(v >> 32));
	put_u32(p + 4, (uint32_t)v);
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(const unsigned char *p)
{
	return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

/* Valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF)
 * with no NUL: such bytes travel as JSON text, others as base64. */
static int utf8_text(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned c = s[i];
		size_t len, k;
		uint32_t cp;
		if (c == 0)
			return 0;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
		else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
		else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
		else return 0;
		if (i + len > n)
			return 0;
		for (k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += len;
	}
	return 1;
}

/* Bytes at the end of s[0..n) that start a UTF-8 sequence not complete yet
 * (0..3): held back until the next read so a character split across two
 * reads does not turn both records into base64. */
static size_t utf8_incomplete_tail(const unsigned char *s, size_t n)
{
	size_t back;

	for (back = 1; back <= 3 && back <= n; back++) {
		unsigned c = s[n - back];
		size_t need;
		if ((c & 0xc0) == 0x80)
			continue;              /* a continuation byte: look further back */
		if (c >= 0xc2 && c <= 0xdf) need = 2;
		else if (c >= 0xe0 && c <= 0xef) need = 3;
		else if (c >= 0xf0 && c <= 0xf4) need = 4;
		else return 0;
		return need > back ? back : 0;
	}
	return 0;
}

/* Bytes of the JSON string jansson writes for valid UTF-8 text. */
static size_t json_text_cost(const unsigned char *s, size_t n)
{
	size_t i, cost = 2;
	for (i = 0; i < n; i++) {
		if (s[i] == '"' || s[i] == '\\' || s[i] == '\b' || s[i] == '\f' || s[i] == '\n' ||
		    s[i] == '\r' || s[i] == '\t')
			cost += 2;
		else if (s[i] < 0x20 || s[i] == 0x7f)
			cost += 6;
		else
			cost++;
	}
	return cost;
}

static char *base64(const unsigned char *in, size_t n)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *out = tether_xmalloc(4 * ((n + 2) / 3) + 1), *o = out;
	size_t i;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*o++ = tab[v >> 18]; *o++ = tab[(v >> 12) & 63]; *o++ = tab[(v >> 6) & 63]; *o++ = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	*o = 0;
	return out;
}

static int ticket_id_ok(const char *s)
{
	size_t i;
	for (i = 0; i < 32; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[32] == 0;
}

static void strv_free(char **v)
{
	size_t i;
	if (!v)
		return;
	for (i = 0; v[i]; i++)
		free(v[i]);
	free(v);
}

static void cmd_free(cmd *c)
{
	size_t i;

	if (!c)
		return;
	strv_free(c->argv);
	if (c->script)
		tether_free_wiped(c->script, c->script_len);
	free(c->shell);
	if (c->env) {
		for (i = 0; c->env[i]; i++)
			tether_free_secret(c->env[i]);   /* env values may be secrets */
		free(c->env);
	}
	free(c->cwd);
	free(c);
}

/* ------------------------------------------------------------------ */
/* Tickets                                                             */
/* ------------------------------------------------------------------ */

static ticket *ticket_new(const char *id, const char *owner)
{
	ticket *t = tether_xcalloc(1, sizeof(*t));

	snprintf(t->id, sizeof(t->id), "%s", id);
	snprintf(t->owner, sizeof(t->owner), "%s", owner);
	t->dir = tether_asprintf("%s/%s", S.scripts_dir, id);
	t->refs = 1;
	t->next_seq = 1;
	t->exit_code = -1;
	t->pid = 0;
	pthread_mutex_init(&t->meta_lock, NULL);
	return t;
}

static void ticket_free(ticket *t)
{
	free(t->dir);
	free(t->isolation);
	cmd_free(t->cmd);
	json_decref(t->summary);
	free(t->index);
	pthread_mutex_destroy(&t->meta_lock);
	free(t);
}

/* Under S.lock. */
static void ticket_unref_locked(ticket *t)
{
	if (--t->refs == 0)
		ticket_free(t);
}

static void ticket_unref(ticket *t)
{
	pthread_mutex_lock(&S.lock);
	ticket_unref_locked(t);
	pthread_mutex_unlock(&S.lock);
}

/* Under S.lock. */
static ticket *ticket_find_locked(const char *id)
{
	ticket *t;
	for (t = S.tickets; t; t = t->next)
		if (!strcmp(t->id, id))
			return t;
	return NULL;
}

static void ticket_link_locked(ticket *t)
{
	t->next = S.tickets;
	S.tickets = t;
	t->listed = 1;
	S.ntickets++;
}

static void ticket_unlink_locked(ticket *t)
{
	ticket **pp;
	for (pp = &S.tickets; *pp; pp = &(*pp)->next)
		if (*pp == t) {
			*pp = t->next;
			t->listed = 0;
			S.ntickets--;
			ticket_unref_locked(t);
			return;
		}
}

/* Under S.lock: record a new output record's place. */
static void index_add_locked(ticket *t, uint64_t seq, uint64_t off)
{
	if ((seq - 1) % INDEX_STRIDE)
		return;
	if (t->nindex == t->capindex) {
		size_t cap = t->capindex ? t->capindex * 2 : 16;
		uint64_t *n = realloc(t->index, cap * sizeof(*n));
		if (!n)
			abort();
		t->index = n;
		t->capindex = cap;
	}
	t->index[t->nindex++] = off;
}

static void wake_waiters_locked(ticket *t)
{
	waiter *w;
	for (w = t->waiters; w; w = w->next)
		uv_async_send(&w->async);
}

/* Record the ticket's state in meta.json now.  Serialised per ticket so
 * that the last line always holds the newest state.
 * The first write creates the file (in the ticket's new directory) with
 * the whole record; every later one appends a line with the state and the
 * members that change with it.  Appending instead of replacing the file
 * keeps its inode: on ext4 each replacement was an inode allocation plus
 * the freeing (and discard) of the old one, most of the agent's time per
 * short command.  A line cut short (the agent killed in the write, the
 * machine stopped before it reached the disk) does not parse and is
 * ignored at the next start, which then sees the state before it: queued
 * or running, reported lost; a failed write is cut back off the file.
 * Durability: the states a server may ask about after the machine restarts
 * (queued: the ticket exists; ended: the exit code) are fsynced.  The move
 * to running (start time, pid) only has to survive the agent process: after
 * a machine restart the process is gone whatever the file says, and a
 * ticket found queued or running is reported lost either way.  Skipping
 * those two fsyncs takes about a third of the disk waits out of every exec. */
#ifndef O_BINARY
#define O_BINARY 0
#endif
enum { META_SYNC = 0, META_NOSYNC = TETHER_WRITE_NOSYNC };
static void meta_write_flags(ticket *t, unsigned flags)
{
	char created[40], started[40], ended[40];
	json_t *m;
	char *text = NULL, *path;
	int first, fd = -1;
	size_t len = 0, done = 0;
	struct stat st;
	const char *why = NULL;

	pthread_mutex_lock(&t->meta_lock);
	pthread_mutex_lock(&S.lock);
	first = t->meta_lines == 0;
	m = json_pack("{s:s}", "state", state_names[t->state]);
	if (first) {
		iso_ms(t->created_ms, created, sizeof(created));
		json_object_set_new(m, "ticket", json_string(t->id));
		json_object_set_new(m, "owner", json_string(t->owner));
		json_object_set_new(m, "created", json_string(created));
		json_object_set_new(m, "timeout_s", json_integer((json_int_t)t->timeout_s));
		if (t->summary)
			json_object_set(m, "command", t->summary);
		if (t->isolation)
			json_object_set_new(m, "isolation", json_string(t->isolation));
	}
	json_object_set_new(m, "output_dropped_bytes", json_integer((json_int_t)t->dropped));
	if (t->started_ms) {
		iso_ms(t->started_ms, started, sizeof(started));
		json_object_set_new(m, "started", json_string(started));
	}
	if (t->pid)
		json_object_set_new(m, "pid", json_integer(t->pid));
	if (ENDED(t->state)) {
		iso_ms(t->ended_ms, ended, sizeof(ended));
		json_object_set_new(m, "ended", json_string(ended));
		json_object_set_new(m, "exit_code", json_integer(t->exit_code));
	}
	pthread_mutex_unlock(&S.lock);
	{
		char *j = json_dumps(m, JSON_COMPACT);
		if (j) {
			text = tether_asprintf("%s\n", j);
			len = strlen(text);
			free(j);
		}
	}
	json_decref(m);
	path = tether_asprintf("%s/meta.json", t->dir);
	if (!text) {
		why = "out of memory";
		goto out;
	}
	fd = open(path, first ? O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC | O_BINARY
	                      : O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_BINARY, 0600);
	if (fd < 0 || fstat(fd, &st) < 0) {
		why = strerror(errno);
		goto out;
	}
	while (done < len) {
		ssize_t w = write(fd, text + done, len - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			why = w < 0 ? strerror(errno) : "short write";
			/* leave no partial line behind */
			if (ftruncate(fd, st.st_size) < 0)
				log_error("script ticket %s: cannot cut %s back: %s", t->id, path,
				          strerror(errno));
			goto out;
		}
		done += (size_t)w;
	}
	if (!(flags & META_NOSYNC) && fsync(fd) < 0 && errno != EINVAL) {
		why = strerror(errno);
		goto out;
	}
#ifndef _WIN32
	if (first && !(flags & META_NOSYNC)) {   /* the new directory's entries */
		int dfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			if (fsync(dfd) < 0 && errno != EINVAL)
				log_warn("script ticket %s: cannot fsync %s: %s", t->id, t->dir,
				         strerror(errno));
			close(dfd);
		}
	}
#endif
	t->meta_lines++;
out:
	if (fd >= 0)
		close(fd);
	if (why)
		log_error("script ticket %s: cannot record its state in %s: %s; a server asking "
		          "after an agent restart may get an outdated state: check the disk",
		          t->id, path, why);
	free(path);
	free(text);
	pthread_mutex_unlock(&t->meta_lock);
}

static void meta_write(ticket *t)
{
	meta_write_flags(t, META_SYNC);
}

/* Make a ticket's files durable off the event loop: fsync output.log,
 * meta.json and the directory on a thread of libuv's pool.  Used for the
 * two states that must outlive the machine (queued, ended): they are
 * written without fsync first (so the agent process may die at any point
 * after), the answer goes out at once, and the disk catches up in the
 * background instead of holding up this request and every other
 * connection on the loop.  A ticket removed meanwhile (script.complete)
 * is simply not there any more. */
#ifndef _WIN32 /* Windows: meta.json is written with its flushes (meta_write) */
typedef struct sync_job {
	uv_work_t w;
	char *dir;
	int sync_dir;                 /* entries were added since the last sync */
} sync_job;

static void sync_one(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	if (fsync(fd) < 0 && errno != EINVAL)
		log_warn("script ticket: cannot fsync %s: %s", name, strerror(errno));
	close(fd);
}

static void sync_work(uv_work_t *w)
{
	sync_job *j = w->data;
	int dfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return;
	sync_one(dfd, "output.log");
	sync_one(dfd, "meta.json");
	if (j->sync_dir && fsync(dfd) < 0 && errno != EINVAL)
		log_warn("script ticket: cannot fsync directory %s: %s", j->dir, strerror(errno));
	close(dfd);
}

static void sync_done(uv_work_t *w, int status)
{
	sync_job *j = w->data;
	(void)status;
	free(j->dir);
	free(j);
}

static void ticket_sync_later(uv_loop_t *loop, ticket *t, int sync_dir)
{
	sync_job *j = tether_xcalloc(1, sizeof(*j));
	j->dir = tether_strdup(t->dir);
	j->sync_dir = sync_dir;
	j->w.data = j;
	if (uv_queue_work(loop, &j->w, sync_work, sync_done) < 0) {
		sync_work(&j->w);
		sync_done(&j->w, 0);
	}
}
#endif

/* ------------------------------------------------------------------ */
/* Answers                                                             */
/* ------------------------------------------------------------------ */

/* Build the status result of t: records with seq > after_seq, at most
 * max_bytes of encoded JSON (at least one record when there is one). */
static json_t *status_json(ticket *t, uint64_t after_seq, size_t max_bytes)
{
	char when[40];
	json_t *res, *out = json_array();
	int state, exit_code, fd = -1;
	int64_t started, ended;
	uint64_t next_seq, committed, dropped, off = 0, seq = 1, last = after_seq;
	size_t used = 0, k;
	unsigned char *buf = NULL;
	int more = 0;
	char *path;

	pthread_mutex_lock(&S.lock);
	state = t->state;
	exit_code = t->exit_code;
	started = t->started_ms;
	ended = t->ended_ms;
	next_seq = t->next_seq;
	committed = t->committed;
	dropped = t->dropped;
	if (after_seq + 1 < next_seq && t->nindex) {
		k = (size_t)(after_seq / INDEX_STRIDE);
		if (k >= t->nindex)
			k = t->nindex - 1;
		off = t->index[k];
		seq = (uint64_t)k * INDEX_STRIDE + 1;
	}
	pthread_mutex_unlock(&S.lock);

	if (after_seq + 1 < next_seq) {
		path = tether_asprintf("%s/output.log", t->dir);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			log_error("script ticket %s: cannot read its output %s: %s", t->id, path,
			          strerror(errno));
		free(path);
		buf = tether_xmalloc(HDR + RECORD_MAX);
	}
	while (fd >= 0 && seq < next_seq && off + HDR <= committed) {
		ssize_t got = pread(fd, buf, HDR + RECORD_MAX, (off_t)off);
		uint32_t len;
		json_t *rec;
		size_t cost;
		int text;

		if (got < HDR || buf[0] != 'T' || buf[1] != 'R' ||
		    (len = get_u32(buf + 4)) == 0 || len > RECORD_MAX ||
		    (size_t)got < HDR + (size_t)len || get_u64(buf + 8) != seq) {
			log_error("script ticket %s: output.log is damaged at offset %llu; the "
			          "output after it can't be returned", t->id, (unsigned long long)off);
			break;
		}
		if (seq > after_seq) {
			text = utf8_text(buf + HDR, len);
			cost = RECORD_COST + (text ? json_text_cost(buf + HDR, len) : 4 * ((len + 2) / 3));
			if (used && used + cost > max_bytes) {
				more = 1;
				break;
			}
			iso_ms((int64_t)get_u64(buf + 16), when, sizeof(when));
			rec = json_pack("{s:I, s:s, s:s}", "seq", (json_int_t)seq, "stream",
			                buf[2] == 2 ? "stderr" : "stdout", "time", when);
			if (text) {
				json_object_set_new(rec, "text", json_stringn((const char *)buf + HDR, len));
			} else {
				char *b = base64(buf + HDR, len);
				json_object_set_new(rec, "base64", json_string(b));
				free(b);
			}
			json_array_append_new(out, rec);
			used += cost;
			last = seq;
		}
		off += HDR + len;
		seq++;
	}
	if (fd >= 0)
		close(fd);
	free(buf);

	res = json_pack("{s:s, s:s, s:o, s:I, s:b}", "ticket", t->id, "state", state_names[state],
	                "output", out, "next_seq", (json_int_t)(last + 1), "more", more);
	if (started) {
		iso_ms(started, when, sizeof(when));
		json_object_set_new(res, "started", json_string(when));
	}
	if (ENDED(state)) {
		json_object_set_new(res, "exit_code", json_integer(exit_code));
		iso_ms(ended, when, sizeof(when));
		json_object_set_new(res, "ended", json_string(when));
	}
	if (dropped)
		json_object_set_new(res, "output_dropped_bytes", json_integer((json_int_t)dropped));
	return res;
}

/* Long-polls. */

static void waiter_closed(uv_handle_t *h)
{
	waiter *w = h->data;
	if (--w->handles == 0) {
		ticket_unref(w->t);
		free(w);
	}
}

static void waiter_finish(waiter *w)
{
	waiter **pp;

	if (w->done)
		return;
	w->done = 1;
	pthread_mutex_lock(&S.lock);
	for (pp = &w->t->waiters; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	w->linked = 0;
	pthread_mutex_unlock(&S.lock);
	agent_req_reply(w->r, status_json(w->t, w->after_seq, w->max_bytes));
	uv_close((uv_handle_t *)&w->async, waiter_closed);
	uv_close((uv_handle_t *)&w->timer, waiter_closed);
}

/* Under S.lock. */
static int waiter_satisfied_locked(const waiter *w)
{
	if (ENDED(w->t->state))
		return 1;
	return !w->want_end && w->t->next_seq > w->after_seq + 1;
}

static void on_waiter_timer(uv_timer_t *h);

static void waiter_arm(waiter *w)
{
	uint64_t now = tether_now_ms(), left = w->deadline > now ? w->deadline - now : 0;
	uv_timer_start(&w->timer, on_waiter_timer, left < 1000 ? left : 1000, 0);
}

static void on_waiter_timer(uv_timer_t *h)
{
	waiter *w = h->data;
	uint64_t now = tether_now_ms();
	int sat;

	pthread_mutex_lock(&S.lock);
	sat = waiter_satisfied_locked(w);
	pthread_mutex_unlock(&S.lock);
	if (sat || now >= w->deadline || !agent_req_alive(w->r))
		waiter_finish(w);
	else
		waiter_arm(w);
}

static void on_waiter_async(uv_async_t *h)
{
	waiter *w = h->data;
	int sat;

	if (w->done)
		return;
	pthread_mutex_lock(&S.lock);
	sat = waiter_satisfied_locked(w);
	pthread_mutex_unlock(&S.lock);
	if (sat)
		waiter_finish(w);
}

/* Answer r with t's status, now or once the condition holds or wait_ms
 * passed.  Takes a reference to t of its own. */
static void answer(agent_req *r, ticket *t, uint64_t after_seq, size_t max_bytes,
                   uint32_t wait_ms, int want_end)
{
	waiter *w;
	int sat;

	if (wait_ms) {
		w = tether_xcalloc(1, sizeof(*w));
		w->r = r;
		w->t = t;
		w->after_seq = after_seq;
		w->max_bytes = max_bytes;
		w->want_end = want_end;
		w->deadline = tether_now_ms() + wait_ms;
		pthread_mutex_lock(&S.lock);
		sat = waiter_satisfied_locked(w);
		if (!sat) {
			t->refs++;
			/* init before linking: a loop that ends the script may wake it at once */
			uv_async_init(agent_req_loop(r), &w->async, on_waiter_async);
			w->next = t->waiters;
			t->waiters = w;
			w->linked = 1;
		}
		pthread_mutex_unlock(&S.lock);
		if (!sat) {
			w->async.data = w;
			uv_timer_init(agent_req_loop(r), &w->timer);
			w->timer.data = w;
			w->handles = 2;
			waiter_arm(w);
			return;
		}
		free(w);
	}
	agent_req_reply(r, status_json(t, after_seq, max_bytes));
}

/* ------------------------------------------------------------------ */
/* Processes                                                           */
/* ------------------------------------------------------------------ */

static void run_closed(uv_handle_t *h)
{
	run *ru = h->data;

	if (--ru->handles)
		return;
#ifdef _WIN32
	if (ru->spawned)
		proctree_release(ru->pid);
#endif
	pthread_mutex_lock(&S.lock);
	if (ru->prev)
		ru->prev->next = ru->next;
	else
		S.runs = ru->next;
	if (ru->next)
		ru->next->prev = ru->prev;
	ticket_unref_locked(ru->t);
	pthread_mutex_unlock(&S.lock);
	free(ru);
}

static void run_close(run *ru, uv_handle_t *h)
{
	if (!uv_is_closing(h))
		uv_close(h, run_closed);
}

static void kill_group(run *ru, int sig)
{
#ifdef _WIN32 /* the script's job object; immediate, whatever sig says */
	(void)sig;
	if (ru->pid > 0)
		proctree_kill(ru->pid);
	if (0)
#else
	if (ru->pid > 0 && kill(-(pid_t)ru->pid, sig) < 0 && errno != ESRCH)
#endif
		log_warn("script ticket %s: cannot signal process group %ld: %s", ru->t->id,
		         ru->pid, strerror(errno));
}

/* Append one record (loop thread of the run). */
static void record(run *ru, int stream, const unsigned char *data, size_t len)
{
	ticket *t = ru->t;
	unsigned char hdr[HDR];
	struct iovec iov[2];
	uint64_t seq, off;
	size_t want = HDR + len, done = 0;

	if (!len)
		return;
	pthread_mutex_lock(&S.lock);
	seq = t->next_seq;
	off = t->committed;
	if (ru->write_failed || off + want > OUTPUT_CAP) {
		t->dropped += len;
		pthread_mutex_unlock(&S.lock);
		return;
	}
	pthread_mutex_unlock(&S.lock);
	if (ru->fd < 0) {
		/* the first output: a command that prints nothing creates no file */
		char *path = tether_asprintf("%s/output.log", t->dir);
		ru->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_BINARY,
		              0600);
		if (ru->fd < 0) {
			log_error("script ticket %s: cannot open %s: %s; its output is discarded: "
			          "check the disk and the permissions of the work directory", t->id,
			          path, strerror(errno));
			free(path);
			ru->write_failed = 1;
			pthread_mutex_lock(&S.lock);
			t->dropped += len;
			pthread_mutex_unlock(&S.lock);
			return;
		}
		free(path);
		ru->created_output = 1;
	}

	hdr[0] = 'T';
	hdr[1] = 'R';
	hdr[2] = (unsigned char)stream;
	hdr[3] = 0;
	put_u32(hdr + 4, (uint32_t)len);
	put_u64(hdr + 8, seq);
	put_u64(hdr + 16, (uint64_t)now_unix_ms());
	while (done < want) {
		ssize_t w;
		iov[0].iov_base = hdr + (done < HDR ? done : HDR);
		iov[0].iov_len = done < HDR ? HDR - done : 0;
		iov[1].iov_base = (void *)(data + (done > HDR ? done - HDR : 0));
		iov[1].iov_len = len - (done > HDR ? done - HDR : 0);
		w = writev(ru->fd, iov, 2);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			log_error("script ticket %s: cannot write its output to %s/output.log: %s; "
			          "further output is discarded: free disk space",
			          t->id, t->dir, w < 0 ? strerror(errno) : "short write");
			ru->write_failed = 1;
			/* drop the partial record, so the file stays readable */
			if (ftruncate(ru->fd, (off_t)off) < 0)
				log_error("script ticket %s: cannot cut output.log back: %s", t->id,
				          strerror(errno));
			pthread_mutex_lock(&S.lock);
			t->dropped += len;
			pthread_mutex_unlock(&S.lock);
			return;
		}
		done += (size_t)w;
	}
	pthread_mutex_lock(&S.lock);
	index_add_locked(t, seq, off);
	t->committed = off + want;
	t->next_seq = seq + 1;
	wake_waiters_locked(t);
	pthread_mutex_unlock(&S.lock);
}

static void spawn_next(uv_loop_t *loop, ticket *t);
static void finalize(run *ru);

static void maybe_finalize(run *ru)
{
	if (ru->exited && ru->pipes_open == 0)
		finalize(ru);
}

static void close_pipe(run *ru, int i)
{
	uv_handle_t *h = (uv_handle_t *)&ru->pipe[i];
	if (uv_is_closing(h))
		return;
	uv_read_stop((uv_stream_t *)h);
	if (ru->carry[i]) {
		record(ru, i + 1, ru->buf[i] + 4 - ru->carry[i], ru->carry[i]);
		ru->carry[i] = 0;
	}
	ru->pipes_open--;
	uv_close(h, run_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	run *ru = h->data;
	int i = h == (uv_handle_t *)&ru->pipe[1];
	(void)suggested;
	b->base = (char *)ru->buf[i] + 4;
	b->len = READ_CHUNK;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	run *ru = s->data;
	int i = s == (uv_stream_t *)&ru->pipe[1];
	unsigned char *start;
	size_t len, hold;

	(void)b;
	if (n < 0) {
		close_pipe(ru, i);
		maybe_finalize(ru);
		return;
	}
	if (n == 0)
		return;
	start = ru->buf[i] + 4 - ru->carry[i];
	len = ru->carry[i] + (size_t)n;
	hold = utf8_incomplete_tail(start, len);
	if (hold == len && len < 4) {
		/* only the start of a character so far */
		memmove(ru->buf[i] + 4 - len, start, len);
		ru->carry[i] = len;
		return;
	}
	if (hold == len)
		hold = 0;
	record(ru, i + 1, start, len - hold);
	if (hold)
		memmove(ru->buf[i] + 4 - hold, start + len - hold, hold);
	ru->carry[i] = hold;
}

static void on_drain(uv_timer_t *h)
{
	run *ru = h->data;
	/* the process ended but something it started still holds its output
	 * open: stop reading, so the ticket can end */
	close_pipe(ru, 0);
	close_pipe(ru, 1);
	maybe_finalize(ru);
}

static void process_exited(run *ru, int64_t exit_status, int term_signal)
{
	ru->exited = 1;
	ru->exit_status = exit_status;
	ru->term_signal = term_signal;
	run_close(ru, (uv_handle_t *)&ru->proc);
	if (ru->pipes_open)
		uv_timer_start(&ru->drain, on_drain, DRAIN_MS, 0);
	maybe_finalize(ru);
}

#ifdef USE_POSIX_SPAWN
/* SIGCHLD (every run's watcher hears every child's): reap this run's
 * process if it ended.  Only its own pid is waited for, so other
 * children of the agent are left to whoever started them. */
static void on_sigchld(uv_signal_t *h, int signum)
{
	run *ru = h->data;
	int status;
	pid_t r;

	(void)signum;
	if (ru->exited)
		return;
	do
		r = waitpid((pid_t)ru->pid, &status, WNOHANG);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return;
	uv_signal_stop(h);
	if (r < 0) {   /* reaped by someone else: its exit status is lost */
		log_warn("script ticket %s: cannot wait for process %ld: %s", ru->t->id, ru->pid,
		         strerror(errno));
		process_exited(ru, EXIT_UNKNOWN, 0);
	} else if (WIFSIGNALED(status)) {
		process_exited(ru, 0, WTERMSIG(status));
	} else {
		process_exited(ru, WEXITSTATUS(status), 0);
	}
}
#else
static void on_exit_cb(uv_process_t *p, int64_t exit_status, int term_signal)
{
	process_exited(p->data, exit_status, term_signal);
}
#endif

static void on_grace(uv_timer_t *h)
{
	run *ru = h->data;
	kill_group(ru, SIGKILL);
	if (ru->exited)
		on_drain(&ru->drain);
}

static void terminate(run *ru, uint32_t grace_ms)
{
	if (ru->finalized)
		return;
	kill_group(ru, SIGTERM);
	if (grace_ms == 0) {
		on_grace(&ru->grace);
		return;
	}
	/* a second request never lengthens the grace already running */
	if (!uv_is_active((uv_handle_t *)&ru->grace) ||
	    uv_timer_get_due_in(&ru->grace) > grace_ms)
		uv_timer_start(&ru->grace, on_grace, grace_ms, 0);
}

static void on_timeout(uv_timer_t *h)
{
	run *ru = h->data;
	if (!ru->exited && ru->why == WHY_NONE) {
		ru->why = WHY_TIMEOUT;
		log_info("script ticket %s: timed out after %u s; terminating it", ru->t->id,
		         ru->t->timeout_s);
	}
	terminate(ru, GRACE_DEFAULT_MS);
}

static void on_run_async(uv_async_t *h)
{
	run *ru = h->data;
	int req;
	uint32_t grace;

	pthread_mutex_lock(&S.lock);
	req = ru->t->cancel_req;
	grace = ru->t->grace_ms;
	ru->t->cancel_req = 0;
	pthread_mutex_unlock(&S.lock);
	if (!req || ru->finalized)
		return;
	if (!ru->exited && ru->why == WHY_NONE)
		ru->why = WHY_CANCEL;
	terminate(ru, grace);
}

/* The process and its pipes are done: record the end, start whatever was
 * queued behind it. */
static void finalize(run *ru)
{
	ticket *t = ru->t, *next = NULL, *q;
	waiter *w, *here[8];
	size_t nhere = 0, i;
	int state, code;

	if (ru->finalized)
		return;
	ru->finalized = 1;
	if (!ru->spawned) {
		state = ST_FINISHED;
		code = (int)ru->exit_status;
	} else if (ru->why == WHY_CANCEL) {
		state = ST_CANCELLED;
		code = EXIT_CANCELLED;
	} else if (ru->why == WHY_TIMEOUT) {
		state = ST_TIMED_OUT;
		code = EXIT_TIMED_OUT;
	} else {
		state = ST_FINISHED;
		code = ru->term_signal ? 128 + ru->term_signal : (int)ru->exit_status;
	}
	if (ru->fd >= 0) {   /* made durable with meta.json below */
#ifdef _WIN32
		if (fsync(ru->fd) < 0 && errno != EINVAL)
			log_warn("script ticket %s: cannot flush output.log: %s", t->id, strerror(errno));
#endif
		close(ru->fd);
		ru->fd = -1;
	}
	run_close(ru, (uv_handle_t *)&ru->timeout);
	run_close(ru, (uv_handle_t *)&ru->grace);
	run_close(ru, (uv_handle_t *)&ru->drain);
	run_close(ru, (uv_handle_t *)&ru->meta);   /* not written yet: the end supersedes it */

	pthread_mutex_lock(&S.lock);
	t->state = state;
	t->exit_code = code;
	t->ended_ms = now_unix_ms();
	t->run = NULL;
	t->cancel_req = 0;
	cmd_free(t->cmd);
	t->cmd = NULL;
	/* after t->run is cleared, no one sends to the async any more */
	run_close(ru, (uv_handle_t *)&ru->async);
	/* Long-polls on other loops are woken; those on this loop (the
	 * script.start with wait_ms of a short command) are answered below,
	 * once the end is in meta.json, before its fsync is queued: a wake-up
	 * through their async would cost a loop iteration, and the pool thread
	 * woken for the fsync would run first where the agent has one CPU.
	 * Only this thread answers or frees a waiter of this loop, so the
	 * pointers stay valid after the lock is dropped. */
	for (w = t->waiters; w; w = w->next)
		if (w->async.loop == ru->loop && nhere < sizeof(here) / sizeof(here[0]))
			here[nhere++] = w;
		else
			uv_async_send(&w->async);
	if (t->isolation) {
		for (q = S.tickets; q; q = q->next)
			if (q->state == ST_QUEUED && !q->preparing && q->isolation &&
			    !strcmp(q->isolation, t->isolation) && (!next || q->order < next->order))
				next = q;
		if (next) {
			next->state = ST_RUNNING;   /* claimed: no one else starts it */
			next->refs++;
		}
	}
	pthread_mutex_unlock(&S.lock);
#ifndef _WIN32
	meta_write_flags(t, META_NOSYNC);
	for (i = 0; i < nhere; i++)
		on_waiter_async(&here[i]->async);
	/* meta.json is appended to in place: the directory changed only if
	 * the run created output.log */
	ticket_sync_later(ru->loop, t, ru->created_output);
#else
	meta_write(t);
	for (i = 0; i < nhere; i++)
		on_waiter_async(&here[i]->async);
#endif
	tether_debug("script", "ticket %s %s, exit code %d", t->id, state_names[state], code);
	if (next) {
		spawn_next(ru->loop, next);
		ticket_unref(next);
	}
}

static void on_meta_timer(uv_timer_t *h)
{
	run *ru = h->data;
	if (!ru->finalized)
		meta_write_flags(ru->t, META_NOSYNC);
}

/* Make the environment: the agent's own, then the overrides, then
 * TETHER_TICKET. */
extern char **environ;

static char **make_env(ticket *t, char **over)
{
	size_t n = 0, no = 0, i, j, k = 0;
	char **e;

	for (i = 0; environ[i] && i < 65536; i++)
		n++;
	for (i = 0; over && over[i]; i++)
		no++;
	e = tether_xcalloc(n + no + 2, sizeof(*e));
	for (i = 0; i < n; i++) {
		const char *eq = strchr(environ[i], '=');
		size_t nl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
		int replaced = nl == 13 && !strncmp(environ[i], "TETHER_TICKET", 13);
		for (j = 0; j < no && !replaced; j++)
			if (!strncmp(over[j], environ[i], nl) && over[j][nl] == '=')
				replaced = 1;
		if (!replaced)
			e[k++] = environ[i];
	}
	for (j = 0; j < no; j++)
		e[k++] = over[j];
	e[k++] = tether_asprintf("TETHER_TICKET=%s", t->id);
	e[k] = NULL;
	return e;
}

/* Record a failure to start as the ticket's own output and end it with
 * exit code 127 (not found) or 126 (could not run), as a shell does. */
static void spawn_failed(run *ru, int uverr, const char *what)
{
	char *msg = tether_asprintf("tether-agent: cannot run %s: %s\n", what, uv_strerror(uverr));
	record(ru, 2, (const unsigned char *)msg, strlen(msg));
	free(msg);
	ru->exited = 1;
	ru->exit_status = uverr == UV_ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
	finalize(ru);
}

#ifdef USE_POSIX_SPAWN
/* PATH as execvp would read it in the child: from the environment the
 * command gets (which may set its own), else the default. */
static const char *env_path(char **env)
{
	size_t i;
	for (i = 0; env && env[i]; i++)
		if (!strncmp(env[i], "PATH=", 5))
			return env[i] + 5;
	return "/bin:/usr/bin";
}

/* cand (relative ones from the command's working directory, where the
 * child resolves them) certainly does not exist: execve would fail with
 * ENOENT or ENOTDIR, so no child need be started to find out. */
static int surely_missing(const char *cand, const char *cwd)
{
	struct stat st;
	char *full = cand[0] != '/' && cwd ? tether_asprintf("%s/%s", cwd, cand) : NULL;
	int r = stat(full ? full : cand, &st) < 0 && (errno == ENOENT || errno == ENOTDIR);
	free(full);
	return r;
}

static int spawn_one(pid_t *pid, const char *path, char **argv, char **env,
                     const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *at)
{
	int e = posix_spawn(pid, path, fa, at, argv, env);
	if (e == ENOEXEC) {
		/* not a binary and no #! line: run it with /bin/sh, as execvp does */
		size_t n = 0;
		char **sh;
		while (argv[n])
			n++;
		sh = tether_xcalloc(n + 2, sizeof(*sh));
		sh[0] = (char *)"/bin/sh";
		sh[1] = (char *)path;
		if (n > 1)
			memcpy(sh + 2, argv + 1, (n - 1) * sizeof(*sh));
		e = posix_spawn(pid, "/bin/sh", fa, at, sh, env);
		free(sh);
	}
	return e;
}

/* Start argv as libuv's uv_spawn with UV_PROCESS_DETACHED did (execvp
 * semantics: PATH search in the command's environment, EACCES remembered,
 * a file without #! run by /bin/sh; stdin /dev/null, stdout and stderr
 * into ru->pipe; cwd; its own session and process group; every signal
 * default and none blocked), but with posix_spawn: glibc starts the child
 * with clone(CLONE_VM|CLONE_VFORK), so the agent's page tables are not
 * copied for a child that execs at once, the copy is not torn down again
 * by the exec, and the agent takes no copy-on-write faults afterwards
 * (that fork was about a quarter of the agent's time per short command).
 * The exit is reaped by ru->proc, a SIGCHLD watcher (on_sigchld), started
 * before the child exists.  Returns 0 (ru->pid set) or a libuv error. */
static int spawn_process(run *ru, char **argv, const char *cwd, char **env)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, all;
	int fds[2][2] = { { -1, -1 }, { -1, -1 } }, e = 0, i, eacces = 0;
	pid_t pid = -1;
	const char *file = argv[0], *p, *end;
	char *cand;

	uv_signal_init(ru->loop, &ru->proc);
	ru->proc.data = ru;
	for (i = 0; i < 2; i++) {
		if (pipe2(fds[i], O_CLOEXEC) < 0) {
			e = errno;
			goto out;
		}
		/* the child's end must not be one of 0-2, or a dup2 below
		 * could overwrite another before it is used */
		if (fds[i][1] <= 2) {
			int fd = fcntl(fds[i][1], F_DUPFD_CLOEXEC, 3);
			if (fd < 0) {
				e = errno;
				goto out;
			}
			close(fds[i][1]);
			fds[i][1] = fd;
		}
		if ((e = uv_pipe_open(&ru->pipe[i], fds[i][0])) < 0) {
			e = -e;   /* libuv errors are negated errno values here */
			goto out;
		}
		fds[i][0] = -1;   /* the pipe handle owns it now */
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	sigfillset(&all);
	/* glibc's sigfillset leaves out the two signals it keeps for itself
	 * (32 and 33, below SIGRTMIN), and its posix_spawn sets those to
	 * SIG_IGN in the child unless they are in the set of signals to
	 * default, and an ignored signal stays ignored across the exec.  The
	 * set is copied as it is, so put them in by hand: the command starts
	 * with no signal ignored, as it did after fork and execvp. */
	for (i = 32; i < SIGRTMIN; i++)
		all.__val[(i - 1) / (8 * sizeof(all.__val[0]))] |=
			1UL << ((i - 1) % (8 * sizeof(all.__val[0])));
	if ((e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) ||
	    (e = posix_spawn_file_actions_adddup2(&fa, fds[0][1], 1)) ||
	    (e = posix_spawn_file_actions_adddup2(&fa, fds[1][1], 2)) ||
	    (cwd && (e = posix_spawn_file_actions_addchdir_np(&fa, cwd))) ||
	    (e = posix_spawnattr_setsigmask(&at, &none)) ||
	    (e = posix_spawnattr_setsigdefault(&at, &all)) ||
	    (e = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
	                                           POSIX_SPAWN_SETSIGDEF)))
		goto spawned;
	if ((e = -uv_signal_start(&ru->proc, on_sigchld, SIGCHLD)) != 0)
		goto spawned;
	if (!*file) {
		e = ENOENT;
	} else if (strchr(file, '/')) {
		e = spawn_one(&pid, file, argv, env, &fa, &at);
	} else {
		for (p = env_path(env);; p = end + 1) {
			end = strchrnul(p, ':');
			/* an empty entry is the working directory */
			cand = end > p ? tether_asprintf("%.*s/%s", (int)(end - p), p, file)
			               : tether_strdup(file);
			e = surely_missing(cand, cwd) ? ENOENT : spawn_one(&pid, cand, argv, env, &fa, &at);
			free(cand);
			if (e == EACCES)
				eacces = 1;
			else if (e != ENOENT && e != ESTALE && e != ENOTDIR && e != ENODEV &&
			         e != EHOSTUNREACH && e != ETIMEDOUT)
				break;   /* started, or an error execvp does not search past */
			if (!*end)
				break;
		}
		if (e && eacces)
			e = EACCES;
	}
spawned:
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
out:
	for (i = 0; i < 2; i++) {
		if (fds[i][0] >= 0)
			close(fds[i][0]);
		if (fds[i][1] >= 0)
			close(fds[i][1]);
	}
	if (e) {
		uv_signal_stop(&ru->proc);
		return uv_translate_sys_error(e);
	}
	ru->pid = pid;
	return 0;
}
#endif

/* Start t on loop (t is claimed: state RUNNING, t->run NULL).  Runs on
 * loop's thread. */
static void spawn(uv_loop_t *loop, ticket *t)
{
	uv_process_options_t o;
	uv_stdio_container_t io[3];
	char *workdir = NULL, **env = NULL;
	run *ru = tether_xmalloc(sizeof(*ru));
	cmd *c;
	int r, cancel, i;
	uint32_t timeout_s;

	memset(ru, 0, offsetof(run, buf));
	ru->t = t;
	ru->loop = loop;
	ru->fd = -1;
	pthread_mutex_lock(&S.lock);
	t->refs++;
	ru->next = S.runs;
	if (S.runs)
		S.runs->prev = ru;
	S.runs = ru;
	c = t->cmd;
	timeout_s = c->timeout_s;
	pthread_mutex_unlock(&S.lock);

	uv_timer_init(loop, &ru->timeout);
	uv_timer_init(loop, &ru->grace);
	uv_timer_init(loop, &ru->drain);
	uv_timer_init(loop, &ru->meta);
	uv_async_init(loop, &ru->async, on_run_async);
	ru->timeout.data = ru->grace.data = ru->drain.data = ru->meta.data = ru->async.data = ru;
	ru->handles = 5;

	workdir = c->cwd ? NULL : tether_asprintf("%s/work", t->dir);
	env = make_env(t, c->env);
	memset(&o, 0, sizeof(o));
	memset(io, 0, sizeof(io));
	io[0].flags = UV_IGNORE;                  /* libuv opens /dev/null */
	for (i = 0; i < 2; i++) {
		uv_pipe_init(loop, &ru->pipe[i], 0);
		ru->pipe[i].data = ru;
		io[i + 1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
		io[i + 1].data.stream = (uv_stream_t *)&ru->pipe[i];
	}
	ru->handles += 2;
	ru->pipes_open = 2;
	o.file = c->argv[0];
	o.args = c->argv;
	o.env = env;
	o.cwd = c->cwd ? c->cwd : workdir;
	o.flags = UV_PROCESS_DETACHED;            /* setsid: its own process group */
#ifdef _WIN32
	o.flags |= UV_PROCESS_WINDOWS_HIDE;       /* no console window; the tree is a job object */
#endif
	o.stdio_count = 3;
	o.stdio = io;
#ifndef USE_POSIX_SPAWN
	o.exit_cb = on_exit_cb;
#endif
	ru->proc.data = ru;

	pthread_mutex_lock(&S.lock);
	t->run = ru;
	t->started_ms = now_unix_ms();
	pthread_mutex_unlock(&S.lock);

#ifdef USE_POSIX_SPAWN
	r = spawn_process(ru, c->argv, o.cwd, env);
#else
	r = uv_spawn(loop, &ru->proc, &o);
#endif
	if (r < 0) {
		char *what = tether_asprintf("'%s'", c->argv[0]);
		/* the process handle must be closed even when spawn failed */
		ru->handles++;
		uv_close((uv_handle_t *)&ru->proc, run_closed);
		close_pipe(ru, 0);
		close_pipe(ru, 1);
		spawn_failed(ru, r, what);
		free(what);
		goto out;
	}
	ru->handles++;
	ru->spawned = 1;
#ifndef USE_POSIX_SPAWN
	ru->pid = ru->proc.pid;
#endif
#ifdef _WIN32
	{
		char why[300];
		if (proctree_track(ru->pid, why, sizeof(why)) < 0)
			log_warn("script ticket %s: %s; cancelling it ends only its first process", t->id, why);
	}
#endif
	for (i = 0; i < 2; i++)
		uv_read_start((uv_stream_t *)&ru->pipe[i], on_alloc, on_read);
	if (timeout_s)
		uv_timer_start(&ru->timeout, on_timeout, (uint64_t)timeout_s * 1000, 0);
	pthread_mutex_lock(&S.lock);
	t->pid = ru->pid;
	cancel = t->cancel_req;
	pthread_mutex_unlock(&S.lock);
	if (cancel)
		uv_async_send(&ru->async);
	/* The move to running (start time, pid) goes to meta.json only once
	 * the process has run RUNNING_META_DELAY_MS: a shorter one ends first
	 * and its end is written instead, which saves a file creation and the
	 * freeing of the file it replaces (the ext4 inode allocation and the
	 * discard of the freed block were most of the agent's time per
	 * command).  The file's running state only matters after the agent
	 * process died, when queued and running are both reported lost. */
	uv_timer_start(&ru->meta, on_meta_timer, RUNNING_META_DELAY_MS, 0);
	tether_debug("script", "ticket %s: started %s as process %ld", t->id, c->argv[0], ru->pid);
out:
	free(workdir);
	if (env) {
		/* Only the last entry is make_env's own (TETHER_TICKET); the
		 * others belong to environ or to the command, which a failed
		 * spawn has already freed (finalize): count, never read them. */
		for (i = 0; env[i]; i++)
			;
		if (i > 0)
			free(env[i - 1]);
		free(env);
	}
}

static void spawn_next(uv_loop_t *loop, ticket *t)
{
	int cancel;

	pthread_mutex_lock(&S.lock);
	cancel = t->cancel_req;
	if (cancel) {
		t->cancel_req = 0;
		t->state = ST_CANCELLED;
		t->exit_code = EXIT_CANCELLED;
		t->ended_ms = now_unix_ms();
		wake_waiters_locked(t);
	}
	pthread_mutex_unlock(&S.lock);
	if (cancel) {
		meta_write(t);
		return;
	}
	spawn(loop, t);
}

/* ------------------------------------------------------------------ */
/* Parameters                                                          */
/* ------------------------------------------------------------------ */

typedef struct params {
	char ticket[33];
	uint64_t after_seq;
	size_t max_bytes;
	uint32_t wait_ms, grace_ms;
} params;

static int bad(agent_req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(agent_req *r, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS, msg, NULL);
	return -1;
}

/* An optional integer member in [lo, hi]. */
static int get_uint(agent_req *r, json_t *p, const char *name, uint64_t lo, uint64_t hi,
                    uint64_t dflt, uint64_t *out)
{
	json_t *v = json_object_get(p, name);
	json_int_t i;

	if (!v || json_is_null(v)) {
		*out = dflt;
		return 0;
	}
	if (!json_is_integer(v) || (i = json_integer_value(v)) < 0 || (uint64_t)i < lo ||
	    (uint64_t)i > hi)
		return bad(r, "'%s' must be an integer from %llu to %llu", name,
		           (unsigned long long)lo, (unsigned long long)hi);
	*out = (uint64_t)i;
	return 0;
}

static int common_params(agent_req *r, json_t *p, params *out)
{
	json_t *v = json_object_get(p, "ticket");
	const char *s;
	uint64_t u;
	size_t i;

	memset(out, 0, sizeof(*out));
	if (!json_is_string(v) || json_string_length(v) != 32)
		return bad(r, "'ticket' must be a string of 32 hex digits chosen by the server "
		              "(e.g. 16 random bytes in hex)");
	s = json_string_value(v);
	for (i = 0; i < 32; i++)
		out->ticket[i] = (char)((s[i] >= 'A' && s[i] <= 'F') ? s[i] - 'A' + 'a' : s[i]);
	out->ticket[32] = 0;
	if (!ticket_id_ok(out->ticket))
		return bad(r, "'ticket' must be 32 hex digits (0-9, a-f)");
	if (get_uint(r, p, "after_seq", 0, (uint64_t)1 << 53, 0, &out->after_seq) < 0 ||
	    get_uint(r, p, "wait_ms", 0, WAIT_MAX_MS, 0, &u) < 0)
		return -1;
	out->wait_ms = (uint32_t)u;
	if (get_uint(r, p, "max_bytes", ANSWER_MIN, ANSWER_MAX, ANSWER_DEFAULT, &u) < 0)
		return -1;
	out->max_bytes = (size_t)u;
	if (get_uint(r, p, "grace_ms", 0, GRACE_MAX_MS, GRACE_DEFAULT_MS, &u) < 0)
		return -1;
	out->grace_ms = (uint32_t)u;
	return 0;
}

/* A JSON string with no NUL, copied. */
static char *plain_string(json_t *v)
{
	if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
		return NULL;
	return tether_strdup(json_string_value(v));
}

static int parse_cmd(agent_req *r, json_t *p, cmd **out, json_t **summary)
{
	json_t *script = json_object_get(p, "script"), *argv = json_object_get(p, "argv");
	json_t *shell = json_object_get(p, "shell"), *env = json_object_get(p, "env");
	json_t *cwd = json_object_get(p, "cwd"), *v, *names, *sum;
	cmd *c = tether_xcalloc(1, sizeof(*c));
	const char *key;
	uint64_t u;
	size_t i, n;
	int rc = -1;

	sum = json_object();
	if ((script && argv) || (!script && !argv)) {
		bad(r, "give either 'script' (text, run by 'shell') or 'argv' (an array of "
		       "strings, run without a shell), not both or neither");
		goto out;
	}
	if (script) {
#ifdef _WIN32
		const char *sh = "cmd";
#else
		const char *sh = "sh";
#endif
		if (!json_is_string(script) ||
		    strlen(json_string_value(script)) != json_string_length(script)) {
			bad(r, "'script' must be a string with no NUL character");
			goto out;
		}
		if (shell) {
			if (!json_is_string(shell)) {
				bad(r, "'shell' must be a string: \"sh\" or \"bash\"");
				goto out;
			}
			sh = json_string_value(shell);
		}
#ifdef _WIN32 /* cmd (the default here) or powershell */
		if (!shell)
			sh = "cmd";
		if (!strcmp(sh, "sh") || !strcmp(sh, "bash")) {
			bad(r, "shell '%s' is not available on Windows agents; this agent runs "
			       "\"cmd\" or \"powershell\" ('tether-server run-script --shell cmd')", sh);
			goto out;
		}
		if (strcmp(sh, "cmd") && strcmp(sh, "powershell")) {
			bad(r, "unknown shell '%.64s': use \"cmd\" (the default) or \"powershell\"", sh);
			goto out;
		}
#else
		if (!strcmp(sh, "cmd") || !strcmp(sh, "powershell")) {
			bad(r, "shell '%s' is only available on Windows agents; this agent runs "
			       "\"sh\" or \"bash\"", sh);
			goto out;
		}
		if (strcmp(sh, "sh") && strcmp(sh, "bash")) {
			bad(r, "unknown shell '%.64s': use \"sh\" (the default) or \"bash\"", sh);
			goto out;
		}
#endif
		c->script_len = json_string_length(script);
		c->script = tether_xmalloc(c->script_len + 1);
		memcpy(c->script, json_string_value(script), c->script_len + 1);
		c->shell = tether_strdup(sh);
		json_object_set_new(sum, "shell", json_string(sh));
		json_object_set_new(sum, "script_bytes", json_integer((json_int_t)c->script_len));
	} else {
		n = json_is_array(argv) ? json_array_size(argv) : 0;
		if (n == 0 || n > ARGV_MAX) {
			bad(r, "'argv' must be an array of 1 to %d strings (program, then arguments)",
			    ARGV_MAX);
			goto out;
		}
		c->argv = tether_xcalloc(n + 1, sizeof(char *));
		for (i = 0; i < n; i++) {
			c->argv[i] = plain_string(json_array_get(argv, i));
			if (!c->argv[i] || (i == 0 && !c->argv[0][0])) {
				bad(r, "'argv' item %zu must be a%s string with no NUL character", i,
				    i == 0 ? " non-empty" : "");
				goto out;
			}
		}
		json_object_set(sum, "argv", argv);
	}
	if (env && !json_is_null(env)) {
		if (!json_is_object(env) || json_object_size(env) > ENV_MAX) {
			bad(r, "'env' must be an object of at most %d \"NAME\": \"value\" strings",
			    ENV_MAX);
			goto out;
		}
		c->env = tether_xcalloc(json_object_size(env) + 1, sizeof(char *));
		names = json_array();
		json_object_set_new(sum, "env_names", names);
		i = 0;
		json_object_foreach(env, key, v) {
			if (!key[0] || strchr(key, '=') || !json_is_string(v) ||
			    strlen(json_string_value(v)) != json_string_length(v)) {
				bad(r, "'env' member '%.64s': names must be non-empty without '=', "
				       "values strings with no NUL character", key);
				goto out;
			}
			c->env[i++] = tether_asprintf("%s=%s", key, json_string_value(v));
			json_array_append_new(names, json_string(key)); /* values may be secrets */
		}
	}
	if (cwd && !json_is_null(cwd)) {
		struct stat st;
		c->cwd = plain_string(cwd);
		if (!c->cwd || c->cwd[0] != '/') {
			bad(r, "'cwd' must be an absolute directory path");
			goto out;
		}
		if (stat(c->cwd, &st) < 0) {
			bad(r, "'cwd' %.512s can't be used on this agent: %s", c->cwd, strerror(errno));
			goto out;
		}
		if (!S_ISDIR(st.st_mode)) {
			bad(r, "'cwd' %.512s is not a directory on this agent", c->cwd);
			goto out;
		}
		json_object_set_new(sum, "cwd", json_string(c->cwd));
	}
	if (get_uint(r, p, "timeout_s", 0, TIMEOUT_MAX_S, 0, &u) < 0)
		goto out;
	c->timeout_s = (uint32_t)u;
	*out = c;
	*summary = sum;
	c = NULL;
	sum = NULL;
	rc = 0;
out:
	cmd_free(c);
	json_decref(sum);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Methods                                                             */
/* ------------------------------------------------------------------ */

/* Under S.lock: drop ended tickets whose retention passed.  Their
 * directories are renamed aside (quick) and returned for removal. */
static char **expire_locked(void)
{
	int64_t limit = now_unix_ms() - (int64_t)S.retention_s * 1000;
	ticket *t, *next;
	char **trash = NULL;
	size_t n = 0;

	if (!S.retention_s)
		return NULL;
	for (t = S.tickets; t; t = next) {
		next = t->next;
		if (!ENDED(t->state) || t->waiters || t->ended_ms > limit)
			continue;
		trash = realloc(trash, (n + 2) * sizeof(*trash));
		if (!trash)
			abort();
		trash[n] = tether_asprintf("%s/.trash-%s", S.scripts_dir, t->id);
		if (rename(t->dir, trash[n]) < 0) {
			free(trash[n]);
			trash[n] = NULL;
		} else {
			n++;
		}
		tether_debug("script", "ticket %s removed: not completed within %u s", t->id,
		             S.retention_s);
		ticket_unlink_locked(t);
	}
	if (trash)
		trash[n] = NULL;
	return trash;
}

static void remove_trash(char **trash)
{
	size_t i;
	for (i = 0; trash && trash[i]; i++) {
		tether_rmtree(trash[i]);
		free(trash[i]);
	}
	free(trash);
}

/* Create the ticket's directory and files; 0 or -1 (logged). */
static int prepare_dir(ticket *t, cmd *c, char **why)
{
	char *p = NULL;
	int rc = -1, fd;

	if (mkdir(t->dir, 0700) < 0) {
		*why = tether_asprintf("cannot create %s: %s", t->dir, strerror(errno));
		goto out;
	}
	p = tether_asprintf("%s/work", t->dir);
	if (mkdir(p, 0700) < 0) {
		*why = tether_asprintf("cannot create %s: %s", p, strerror(errno));
		goto out;
	}
	/* output.log is created at the first output (record) */
	if (c->script) {
		size_t done = 0;
		free(p);
#ifdef _WIN32 /* the interpreters go by the extension */
		p = tether_asprintf("%s\\script.%s", t->dir, strcmp(c->shell, "cmd") ? "ps1" : "cmd");
#else
		p = tether_asprintf("%s/script", t->dir);
#endif
		/* read only by the process started below: it need not outlive
		 * the agent (a ticket found queued after a restart is not run),
		 * and the directory is new, so it is written in place */
		fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_BINARY, 0600);
		if (fd < 0) {
			*why = tether_asprintf("cannot create %s: %s", p, strerror(errno));
			goto out;
		}
		while (done < c->script_len) {
			ssize_t w = write(fd, c->script + done, c->script_len - done);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				*why = tether_asprintf("cannot write %s: %s", p,
				                       w < 0 ? strerror(errno) : "short write");
				close(fd);
				goto out;
			}
			done += (size_t)w;
		}
		if (close(fd) < 0) {
			*why = tether_asprintf("cannot write %s: %s", p, strerror(errno));
			goto out;
		}
#ifdef _WIN32
		c->argv = tether_xcalloc(8, sizeof(char *));
		if (!strcmp(c->shell, "cmd")) {
			c->argv[0] = tether_strdup("cmd.exe");
			c->argv[1] = tether_strdup("/d");
			c->argv[2] = tether_strdup("/c");
			c->argv[3] = tether_strdup(p);
		} else {
			c->argv[0] = tether_strdup("powershell.exe");
			c->argv[1] = tether_strdup("-NoProfile");
			c->argv[2] = tether_strdup("-NonInteractive");
			c->argv[3] = tether_strdup("-ExecutionPolicy");
			c->argv[4] = tether_strdup("Bypass");
			c->argv[5] = tether_strdup("-File");
			c->argv[6] = tether_strdup(p);
		}
#else
		c->argv = tether_xcalloc(3, sizeof(char *));
		c->argv[0] = tether_strdup(c->shell);
		c->argv[1] = tether_strdup(p);
#endif
	}
	rc = 0;
out:
	free(p);
	return rc;
}

static void do_start(agent_req *r, json_t *p, const char *server)
{
	params pa;
	cmd *c = NULL;
	json_t *summary = NULL, *iso = json_object_get(p, "isolation");
	ticket *t;
	char *why = NULL, **trash = NULL;
	int run_now = 0, cancel;
	char *isolation = NULL;

	if (common_params(r, p, &pa) < 0)
		return;
	pthread_mutex_lock(&S.lock);
	t = ticket_find_locked(pa.ticket);
	if (t) {
		int mine = !strcmp(t->owner, server);
		if (mine)
			t->refs++;
		pthread_mutex_unlock(&S.lock);
		if (!mine) {
			agent_req_error(r, TETHER_RPC_ERR_FORBIDDEN,
			                "this ticket is in use by another server; start the script "
			                "with a new random ticket", NULL);
			return;
		}
		answer(r, t, 0, pa.max_bytes, pa.wait_ms, 1);   /* idempotent: never twice */
		ticket_unref(t);
		return;
	}
	pthread_mutex_unlock(&S.lock);

	if (iso && !json_is_null(iso)) {
		isolation = plain_string(iso);
		if (!isolation || !isolation[0] || strlen(isolation) > ISOLATION_MAX) {
			free(isolation);
			bad(r, "'isolation' must be a name of 1 to %d characters", ISOLATION_MAX);
			return;
		}
	}
	if (parse_cmd(r, p, &c, &summary) < 0) {
		free(isolation);
		return;
	}

	pthread_mutex_lock(&S.lock);
	if (ticket_find_locked(pa.ticket)) {
		/* started by a concurrent request meanwhile: answer as a repeat */
		pthread_mutex_unlock(&S.lock);
		cmd_free(c);
		json_decref(summary);
		free(isolation);
		do_start(r, p, server);
		return;
	}
	if (S.ntickets >= TICKETS_MAX)
		trash = expire_locked();
	if (S.ntickets >= TICKETS_MAX) {
		pthread_mutex_unlock(&S.lock);
		remove_trash(trash);
		cmd_free(c);
		json_decref(summary);
		free(isolation);
		char msg[256];
		snprintf(msg, sizeof(msg), "this agent holds %d script tickets already (its limit); "
		         "free finished ones with script.complete, or wait for their retention "
		         "to pass", TICKETS_MAX);
		agent_req_error(r, TETHER_RPC_ERR_BUSY, msg, NULL);
		return;
	}
	t = ticket_new(pa.ticket, server);
	t->state = ST_QUEUED;
	t->preparing = 1;
	t->created_ms = now_unix_ms();
	t->order = ++S.order;
	t->isolation = isolation;
	t->cmd = c;
	t->timeout_s = c->timeout_s;
	t->summary = summary;
	ticket_link_locked(t);
	t->refs++;                         /* ours, for the rest of this function */
	pthread_mutex_unlock(&S.lock);
	remove_trash(trash);

	if (prepare_dir(t, c, &why) < 0) {
		log_error("script ticket %s: %s; the script is not run: check the disk and the "
		          "permissions of %s", t->id, why, S.scripts_dir);
		pthread_mutex_lock(&S.lock);
		ticket_unlink_locked(t);
		pthread_mutex_unlock(&S.lock);
		tether_rmtree(t->dir);
		agent_req_error(r, TETHER_RPC_ERR_INTERNAL, why, NULL);
		free(why);
		ticket_unref(t);
		return;
	}
#ifndef _WIN32
	meta_write_flags(t, META_NOSYNC);
	ticket_sync_later(agent_req_loop(r), t, 1);
#else
	meta_write(t);
#endif

	pthread_mutex_lock(&S.lock);
	t->preparing = 0;
	cancel = t->cancel_req;
	if (cancel) {
		t->cancel_req = 0;
		t->state = ST_CANCELLED;
		t->exit_code = EXIT_CANCELLED;
		t->ended_ms = now_unix_ms();
		wake_waiters_locked(t);
	} else {
		ticket *q;
		run_now = 1;
		if (t->isolation)
			for (q = S.tickets; q; q = q->next)
				if (q != t && q->isolation && !strcmp(q->isolation, t->isolation) &&
				    (q->state == ST_RUNNING ||
				     (q->state == ST_QUEUED && !q->preparing && q->order < t->order)))
					run_now = 0;
		if (run_now)
			t->state = ST_RUNNING;
	}
	pthread_mutex_unlock(&S.lock);
	if (cancel)
		meta_write(t);
	else if (run_now)
		spawn(agent_req_loop(r), t);
	else
		tether_debug("script", "ticket %s queued behind isolation '%s'", t->id, t->isolation);
	answer(r, t, 0, pa.max_bytes, pa.wait_ms, 1);
	ticket_unref(t);
}

/* The caller's own ticket, referenced; NULL after answering not_found. */
static ticket *own_ticket(agent_req *r, const char *id, const char *server)
{
	ticket *t;

	pthread_mutex_lock(&S.lock);
	t = ticket_find_locked(id);
	if (t && strcmp(t->owner, server))
		t = NULL;                     /* another server's: not even its existence */
	if (t)
		t->refs++;
	pthread_mutex_unlock(&S.lock);
	if (!t)
		agent_req_error(r, TETHER_RPC_ERR_NOT_FOUND,
		                "no such script ticket on this agent (never started, completed, "
		                "or removed after its retention)", NULL);
	return t;
}

static void do_status(agent_req *r, json_t *p, const char *server)
{
	params pa;
	ticket *t;

	if (common_params(r, p, &pa) < 0 || !(t = own_ticket(r, pa.ticket, server)))
		return;
	answer(r, t, pa.after_seq, pa.max_bytes, pa.wait_ms, 0);
	ticket_unref(t);
}

static void do_cancel(agent_req *r, json_t *p, const char *server)
{
	params pa;
	ticket *t;
	int ended_now = 0, active;

	if (common_params(r, p, &pa) < 0 || !(t = own_ticket(r, pa.ticket, server)))
		return;
	pthread_mutex_lock(&S.lock);
	if (t->state == ST_QUEUED && !t->preparing) {
		t->state = ST_CANCELLED;
		t->exit_code = EXIT_CANCELLED;
		t->ended_ms = now_unix_ms();
		wake_waiters_locked(t);
		ended_now = 1;
	} else if (!ENDED(t->state)) {
		t->cancel_req = 1;
		t->grace_ms = pa.grace_ms;
		if (t->run)
			uv_async_send(&t->run->async);
	}
	active = !ENDED(t->state) || ended_now;
	pthread_mutex_unlock(&S.lock);
	if (ended_now)
		meta_write(t);
	if (active)
		log_info("script ticket %s: cancelled by the server", t->id);
	answer(r, t, pa.after_seq, pa.max_bytes, pa.wait_ms, 1);
	ticket_unref(t);
}

/* Removal of a completed ticket's directory, renamed aside already, on a
 * thread of libuv's pool: freeing its inodes (and the discards of their
 * blocks) need not hold up the answer and the other connections of the
 * loop.  A removal cut short leaves a .trash- directory, removed at the
 * next start. */
typedef struct rm_job {
	uv_work_t w;
	char *path;
	char id[33];
} rm_job;

static void rm_work(uv_work_t *w)
{
	rm_job *j = w->data;
	if (tether_rmtree(j->path) < 0)
		log_warn("script ticket %s: could not remove all of %s; remove it by hand", j->id,
		         j->path);
}

static void rm_done(uv_work_t *w, int status)
{
	rm_job *j = w->data;
	(void)status;
	free(j->path);
	free(j);
}

static void remove_later(uv_loop_t *loop, const ticket *t, char *path)
{
	rm_job *j = tether_xcalloc(1, sizeof(*j));
	j->path = path;
	snprintf(j->id, sizeof(j->id), "%s", t->id);
	j->w.data = j;
	if (uv_queue_work(loop, &j->w, rm_work, rm_done) < 0) {
		rm_work(&j->w);
		rm_done(&j->w, 0);
	}
}

static void do_complete(agent_req *r, json_t *p, const char *server)
{
	params pa;
	ticket *t;
	char *trash = NULL;
	int ok, aside = 0;
	uv_loop_t *loop = agent_req_loop(r);   /* r is gone once answered */

	if (common_params(r, p, &pa) < 0 || !(t = own_ticket(r, pa.ticket, server)))
		return;
	pthread_mutex_lock(&S.lock);
	ok = ENDED(t->state) && !t->run;
	if (ok) {
		trash = tether_asprintf("%s/.trash-%s", S.scripts_dir, t->id);
		if (rename(t->dir, trash) < 0) {
			log_warn("script ticket %s: cannot move %s aside: %s; removing it in place",
			         t->id, t->dir, strerror(errno));
			free(trash);
			trash = tether_strdup(t->dir);
		} else {
			aside = 1;
		}
		ticket_unlink_locked(t);
	}
	pthread_mutex_unlock(&S.lock);
	if (!ok) {
		agent_req_error(r, TETHER_RPC_ERR_BUSY,
		                "the script has not ended yet: cancel it (script.cancel) or wait "
		                "for it to end, then complete it", NULL);
	} else {
		if (!aside && tether_rmtree(trash) < 0)
			log_warn("script ticket %s: could not remove all of %s; remove it by hand",
			         t->id, trash);
		agent_req_reply(r, json_pack("{s:s, s:b}", "ticket", t->id, "completed", 1));
		if (aside) {
			remove_later(loop, t, trash);
			trash = NULL;
		}
	}
	free(trash);
	ticket_unref(t);
}

static void script_handle(agent_req *r)
{
	const char *m = agent_req_method(r), *server = agent_req_server(r);
	json_t *p = agent_req_params(r);

	if (!S.enabled) {
		agent_req_error(r, TETHER_RPC_ERR_FORBIDDEN,
		                "the script service is turned off on this agent; to turn it on, set "
		                "'script = on' in the [services] section of its configuration and "
		                "restart it", NULL);
		return;
	}
	if (!S.ready) {
		agent_req_error(r, TETHER_RPC_ERR_INTERNAL,
		                "the script service could not start (see the agent's log)", NULL);
		return;
	}
	if (!server || !server[0]) {
		agent_req_error(r, TETHER_RPC_ERR_FORBIDDEN, "the caller has no thumbprint", NULL);
		return;
	}
	if (!json_is_object(p)) {
		bad(r, "params must be an object");
		return;
	}
	if (!strcmp(m, "script.start"))
		do_start(r, p, server);
	else if (!strcmp(m, "script.status"))
		do_status(r, p, server);
	else if (!strcmp(m, "script.cancel"))
		do_cancel(r, p, server);
	else if (!strcmp(m, "script.complete"))
		do_complete(r, p, server);
	else
		agent_req_error(r, TETHER_RPC_ERR_UNKNOWN_METHOD,
		                "this agent has no such script method (script.start, script.status, "
		                "script.cancel, script.complete)", NULL);
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */
/* ------------------------------------------------------------------ */

/* Rebuild the output index of t from output.log; cut a torn last record. */
static void scan_output(ticket *t)
{
	char *path = tether_asprintf("%s/output.log", t->dir);
	unsigned char hdr[HDR];
	uint64_t off = 0, seq = 1;
	struct stat st;
	int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0 || fstat(fd, &st) < 0) {
		if (fd >= 0)
			close(fd);
		free(path);
		return;
	}
	while (off + HDR <= (uint64_t)st.st_size) {
		uint32_t len;
		if (pread(fd, hdr, HDR, (off_t)off) != HDR || hdr[0] != 'T' || hdr[1] != 'R' ||
		    (len = get_u32(hdr + 4)) == 0 || len > RECORD_MAX || get_u64(hdr + 8) != seq ||
		    off + HDR + len > (uint64_t)st.st_size)
			break;
		index_add_locked(t, seq, off);
		off += HDR + len;
		seq++;
	}
	if (off != (uint64_t)st.st_size) {
		log_warn("script ticket %s: output.log ends with %llu bytes of a record cut short "
		         "(the agent stopped while writing it); they are dropped", t->id,
		         (unsigned long long)((uint64_t)st.st_size - off));
		if (ftruncate(fd, (off_t)off) < 0)
			log_warn("script ticket %s: cannot cut output.log: %s", t->id, strerror(errno));
	}
	t->committed = off;
	t->next_seq = seq;
	close(fd);
	free(path);
}

static int state_from_name(const char *s)
{
	int i;
	for (i = 0; s && i <= ST_UNKNOWN; i++)
		if (!strcmp(s, state_names[i]))
			return i;
	return -1;
}

/* The state recorded in meta.json: its first line, updated by every later
 * line up to the first that does not parse (cut short by a crash).  NULL
 * when even the first does not.  *good: the bytes of the lines used.  An
 * agent before the line format wrote one object without a newline: that is
 * a first line. */
static json_t *meta_parse(const char *text, size_t len, int *lines, size_t *good)
{
	const char *p = text, *end = text + len;
	json_t *m = NULL;

	*lines = 0;
	*good = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		json_error_t je;
		json_t *o = json_loadb(p, n, 0, &je);
		if (!json_is_object(o)) {
			json_decref(o);
			break;
		}
		if (m) {
			json_object_update(m, o);
			json_decref(o);
		} else {
			m = o;
		}
		++*lines;
		*good = nl ? (size_t)(nl + 1 - text) : len;
		if (!nl)
			break;
		p = nl + 1;
	}
	return m;
}

/* Load one ticket directory left by an earlier agent process. */
static void load_ticket(const char *name, int64_t now)
{
	char *dir = tether_asprintf("%s/%s", S.scripts_dir, name), *path = NULL;
	unsigned char *text = NULL;
	size_t len;
	json_t *m = NULL;
	tether_error err = { 0 };
	ticket *t = NULL;
	int state, lost = 0, lines = 0;
	size_t good = 0;
	json_t *v;

	path = tether_asprintf("%s/meta.json", dir);
	if (tether_read_file(path, META_MAX, &text, &len, &err) < 0 ||
	    !(m = meta_parse((const char *)text, len, &lines, &good)) ||
	    !json_is_string(json_object_get(m, "owner")) ||
	    (state = state_from_name(json_string_value(json_object_get(m, "state")))) < 0) {
		log_warn("script ticket %s: %s is missing or damaged; removing the ticket (its "
		         "script never started, or its record is lost)", name, path);
		tether_rmtree(dir);
		goto out;
	}
	if (good < len) {
		/* a line cut short: cut it off, so lines appended from now on are read */
		log_warn("script ticket %s: %s ends with %zu bytes of a state record cut short "
		         "(the agent stopped while writing it); they are dropped", name, path,
		         len - good);
		int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_BINARY);
		if (fd < 0 || ftruncate(fd, (off_t)good) < 0)
			log_warn("script ticket %s: cannot cut %s: %s", name, path, strerror(errno));
		if (fd >= 0)
			close(fd);
	} else if (text[len - 1] != '\n') {
		/* an earlier agent's file (no newline): lines appended go below it */
		int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_BINARY);
		if (fd < 0 || write(fd, "\n", 1) != 1)
			log_warn("script ticket %s: cannot add a newline to %s: %s", name, path,
			         strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	t = ticket_new(name, json_string_value(json_object_get(m, "owner")));
	t->state = state;
	t->meta_lines = lines;
	if (parse_iso_ms(json_string_value(json_object_get(m, "created")), &t->created_ms) < 0)
		t->created_ms = now;
	if (parse_iso_ms(json_string_value(json_object_get(m, "started")), &t->started_ms) < 0)
		t->started_ms = 0;
	if (parse_iso_ms(json_string_value(json_object_get(m, "ended")), &t->ended_ms) < 0)
		t->ended_ms = 0;
	v = json_object_get(m, "exit_code");
	t->exit_code = json_is_integer(v) ? (int)json_integer_value(v) : -1;
	v = json_object_get(m, "isolation");
	t->isolation = json_is_string(v) ? tether_strdup(json_string_value(v)) : NULL;
	v = json_object_get(m, "timeout_s");
	t->timeout_s = json_is_integer(v) ? (uint32_t)json_integer_value(v) : 0;
	v = json_object_get(m, "pid");
	t->pid = json_is_integer(v) ? (long)json_integer_value(v) : 0;
	v = json_object_get(m, "output_dropped_bytes");
	t->dropped = json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
	t->summary = json_incref(json_object_get(m, "command"));
	t->order = ++S.order;
	if (!ENDED(t->state)) {
		/* it was queued or running when the agent went away: its result is lost */
		t->state = ST_UNKNOWN;
		t->exit_code = EXIT_UNKNOWN;
		t->ended_ms = now;
		lost = 1;
	}
	if (S.retention_s && (t->ended_ms ? t->ended_ms : t->created_ms) +
	                     (int64_t)S.retention_s * 1000 < now) {
		tether_debug("script", "ticket %s removed: not completed within %u s", name,
		             S.retention_s);
		tether_rmtree(dir);
		goto out;
	}
	scan_output(t);
	if (lost) {
		log_warn("script ticket %s was %s when the agent stopped; its result can't be "
		         "known (state unknown, exit code %d)", name,
		         json_string_value(json_object_get(m, "state")), EXIT_UNKNOWN);
		meta_write(t);
	}
	ticket_link_locked(t);
	t = NULL;
out:
	if (t)
		ticket_free(t);
	json_decref(m);
	free(text);
	free(path);
	free(dir);
}

static void script_shutdown(void);

static int script_init(const agent_env *env)
{
	tether_error err = { 0 };
	DIR *d = NULL;
	struct dirent *de;
	int64_t now = now_unix_ms();
	size_t seen = 0;

	script_shutdown();
	S.enabled = env->script_enabled;
	S.retention_s = env->script_retention_s;
	if (!S.enabled)
		return 0;
	S.scripts_dir = tether_asprintf("%s/scripts", env->work_dir);
	if (tether_mkdirs(S.scripts_dir, 0700, &err) < 0) {
		log_error("script service: cannot create %s: %s; check the permissions of %s, or "
		          "turn the script service off ([services] script = off)", S.scripts_dir,
		          err.detail, env->work_dir);
		return TETHER_ERR_IO;
	}
	if (chmod(S.scripts_dir, 0700) < 0)
		log_warn("script service: cannot make %s private (0700): %s", S.scripts_dir,
		         strerror(errno));
	d = opendir(S.scripts_dir);
	if (!d) {
		log_error("script service: cannot read %s: %s; check its permissions, or turn the "
		          "script service off ([services] script = off)", S.scripts_dir,
		          strerror(errno));
		return TETHER_ERR_IO;
	}
	/* bounded: the directory holds at most the tickets plus litter */
	while ((de = readdir(d)) && seen++ < 1000000) {
		char *p;
		if (de->d_name[0] == '.' && strncmp(de->d_name, ".trash-", 7))
			continue;
		p = tether_asprintf("%s/%s", S.scripts_dir, de->d_name);
		if (!strncmp(de->d_name, ".trash-", 7))
			tether_rmtree(p);            /* a completion cut short */
		else if (ticket_id_ok(de->d_name) && tether_is_dir(p))
			load_ticket(de->d_name, now);
		else if (strstr(de->d_name, ".tmp."))
			unlink(p);
		free(p);
	}
	closedir(d);
	if (S.ntickets)
		log_info("script service: %zu ticket(s) kept from before", S.ntickets);
	S.ready = 1;
	return 0;
}

/* Loops are stopped: scripts still running are killed (the agent can no
 * longer collect their output) and recorded as unknown. */
static void script_shutdown(void)
{
	ticket *t, *next;
	run *ru;

	for (ru = S.runs; ru; ru = ru->next)
		if (ru->spawned && !ru->exited)
			kill_group(ru, SIGTERM);
	if (S.runs) {
		uint64_t until = tether_now_ms() + 1000;
		int left = 1;
		while (left && tether_now_ms() < until) {
			left = 0;
			for (ru = S.runs; ru; ru = ru->next)
#ifdef _WIN32
				if (ru->spawned && !ru->exited && ru->pid > 0 && proctree_alive(ru->pid))
#else
				if (ru->spawned && !ru->exited && ru->pid > 0 &&
				    kill(-(pid_t)ru->pid, 0) == 0)
#endif
					left = 1;
			if (left)
				usleep(20000);
#ifndef _WIN32
			/* our children are zombies until reaped: reap them here */
			for (ru = S.runs; ru; ru = ru->next)
				if (ru->spawned && !ru->exited && ru->pid > 0 &&
				    waitpid((pid_t)ru->pid, NULL, WNOHANG) == (pid_t)ru->pid)
					ru->exited = 1;
#endif
		}
		for (ru = S.runs; ru; ru = ru->next)
			if (ru->spawned && !ru->exited) {
				kill_group(ru, SIGKILL);
#ifdef _WIN32
				proctree_release(ru->pid);
#else
				waitpid((pid_t)ru->pid, NULL, 0);
#endif
			}
	}
	while ((ru = S.runs)) {
		S.runs = ru->next;
		if (!ru->finalized) {
			ru->t->state = ST_UNKNOWN;
			ru->t->exit_code = EXIT_UNKNOWN;
			ru->t->ended_ms = now_unix_ms();
			ru->t->run = NULL;
			meta_write(ru->t);
		}
		if (ru->fd >= 0)
			close(ru->fd);
		/* its handles were closed with the loops, without callbacks */
		ru->t->refs--;
		free(ru);
	}
	for (t = S.tickets; t; t = next) {
		next = t->next;
		while (t->waiters) {
			waiter *w = t->waiters;
			t->waiters = w->next;
			free(w);                    /* its req went with its connection */
		}
		if (!ENDED(t->state)) {          /* queued: never ran */
			t->state = ST_UNKNOWN;
			t->exit_code = EXIT_UNKNOWN;
			t->ended_ms = now_unix_ms();
			meta_write(t);
		}
		ticket_free(t);
	}
	S.tickets = NULL;
	S.ntickets = 0;
	free(S.scripts_dir);
	S.scripts_dir = NULL;
	S.ready = 0;
}

const agent_service agent_service_script = {
	.prefix = "script.",
	.init = script_init,
	.handle = script_handle,
	.shutdown = script_shutdown,
};
