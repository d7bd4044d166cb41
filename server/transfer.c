/*
 * File transfers between this machine and agents: the admin methods
 * file.upload, file.download, file.progress, file.cancel, file.transfers
 * (the CLI verbs upload and download, server/cli_file.c).
 *
 * file.upload / file.download check the local side at once (the file to
 * send exists and may be read by the caller; the directory to write in
 * exists and belongs to the caller) and answer with a transfer_id; the
 * transfer then runs on the daemon's loop and the CLI long-polls
 * file.progress {transfer_id, wait_ms} until the state is final.  Finished
 * transfers stay visible for RETENTION_MS.
 *
 * Upload: the local file is read in chunks of 256 KiB while the stream
 * takes them (tether_conn_stream_send; on_writable resumes), its SHA-256
 * computed along and sent in STREAM_END with {"size"}; the agent verifies
 * and answers {path, size, sha256}, which must match.  Exactly the size
 * announced is sent: a local file that shrinks meanwhile fails the
 * transfer.
 * Download: file.stat first (for the total shown in progress; an agent
 * without it just gives no total), then file.download; the data goes to
 * ".tether-download-<hex>" beside the local path (0600, O_EXCL), its
 * SHA-256 computed while writing; only if it matches both STREAM_END and
 * the agent's answer is it fsynced (on the thread pool) and renamed over
 * the local path.  Otherwise the temporary file is removed.
 *
 * Memory: one 256 KiB buffer per upload; a download holds nothing beyond
 * the frame being written, and grants window only for bytes written.
 *
 * Local permissions: the daemon may run as another user than its caller
 * (the admin group).  A caller who is neither root nor the daemon's user may
 * only upload files they own or that are world-readable, and download into
 * directories they own (the file is then given to them when the daemon runs
 * as root).
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include <uv.h>
#include "admin.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "srvapi.h"
#include "util.h"

#define CHUNK (256u * 1024u)
#define MAX_PUMP 64
#define RETENTION_MS (10u * 60u * 1000u)
#define WAIT_MAX_MS 30000u
#define TRANSFERS_MAX 256                /* active + retained */
#define DL_PREFIX ".tether-download-"

enum { X_CONNECTING, X_RUNNING, X_VERIFYING, X_DONE, X_FAILED, X_CANCELLED };
static const char *const state_names[] = { "connecting", "running", "verifying", "done", "failed", "cancelled" };

typedef struct waiter {
	struct waiter *next;
	struct xfer *x;
	admin_call *call;
	uv_timer_t timer;
} waiter;

typedef struct xfer {
	struct xfer *next;
	srv *s;
	char id[17];
	int upload;
	char *target, *local, *remote;
	char who[128];
	uid_t caller;
	int fd;
	char *tmp;                       /* download: the temporary file's path */
	char *mode;                      /* upload: octal string or NULL */
	int overwrite;
	int has_total;
	uint64_t total, bytes, read;
	tether_write_behind_state wb;   /* download: write-behind and drop-behind */
	uint64_t started_ms, running_ms, ended_ms;
	int state;
	char sha[65];
	char error[TETHER_ERROR_DETAIL_MAX + 64];
	char category[40];
	json_t *result;                  /* the agent's answer */
	tether_conn *c;
	uint32_t rid;
	int stream_open;
	int cancel;                      /* the operator asked to cancel */
	tether_digest_ctx *dg;
	unsigned char *buf;
	size_t off, len;
	unsigned char end_sha[32];
	int got_end;
	uv_work_t work;
	int werr;
	waiter *waiters;
} xfer;

static struct {
	xfer *list;
	int stopping;
} T;

static uint64_t now_ms(void) { return tether_now_ms(); }

/* ------------------------------------------------------------------ */
/* Records and progress                                                */
/* ------------------------------------------------------------------ */

static void xfer_free(xfer *x)
{
	xfer **pp;

	for (pp = &T.list; *pp; pp = &(*pp)->next)
		if (*pp == x) {
			*pp = x->next;
			break;
		}
	if (x->dg)
		srv_prov(x->s)->t->digest_free(x->dg);
	if (x->fd >= 0)
		close(x->fd);
	json_decref(x->result);
	free(x->target);
	free(x->local);
	free(x->remote);
	free(x->tmp);
	free(x->mode);
	free(x->buf);
	free(x);
}

static int finished(const xfer *x) { return x->state >= X_DONE; }

static json_t *progress_json(const xfer *x)
{
	uint64_t now = finished(x) ? x->ended_ms : now_ms();
	uint64_t run = x->running_ms ? now - x->running_ms : 0;
	uint64_t rate = run >= 200 ? x->bytes * 1000 / run : 0;
	json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "transfer_id", x->id,
	                      "direction", x->upload ? "upload" : "download", "target", x->target,
	                      "local", x->local, "remote", x->remote, "state", state_names[x->state],
	                      "bytes", (json_int_t)x->bytes, "elapsed_ms", (json_int_t)(now - x->started_ms));
	json_object_set_new(o, "total", x->has_total ? json_integer((json_int_t)x->total) : json_null());
	json_object_set_new(o, "rate", json_integer((json_int_t)rate));
	if (!finished(x) && x->has_total && rate > 0 && x->total >= x->bytes)
		json_object_set_new(o, "eta_s", json_integer((json_int_t)((x->total - x->bytes) / rate)));
	if (x->state == X_DONE) {
		json_object_set_new(o, "sha256", json_string(x->sha));
		json_object_set_new(o, "size", json_integer((json_int_t)x->bytes));
		if (x->result)
			json_object_set_new(o, "agent", json_incref(x->result));
	}
	if (x->state == X_FAILED || x->state == X_CANCELLED) {
		json_object_set_new(o, "error", json_string(x->error));
		json_object_set_new(o, "category", json_string(x->category));
	}
	return o;
}

static void waiter_closed(uv_handle_t *h)
{
	free(h->data);
}

static void waiter_answer(waiter *w)
{
	xfer *x = w->x;
	waiter **pp;

	for (pp = &x->waiters; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	admin_reply(w->call, progress_json(x));
	uv_timer_stop(&w->timer);
	uv_close((uv_handle_t *)&w->timer, waiter_closed);
}

static void waiter_fire(uv_timer_t *t)
{
	waiter_answer(t->data);
}

static void wake_all(xfer *x)
{
	while (x->waiters)
		waiter_answer(x->waiters);
}

/* The end of a transfer, whatever way it ended. */
static void finish(xfer *x, int state)
{
	const char *what = x->upload ? "file.upload" : "file.download";

	if (finished(x))
		return;
	if (state == X_FAILED && x->cancel) {
		state = X_CANCELLED;
		if (!x->error[0])
			snprintf(x->error, sizeof(x->error), "cancelled by the operator");
	}
	x->state = state;
	x->ended_ms = now_ms();
	x->c = NULL;
	if (x->fd >= 0) {
		close(x->fd);
		x->fd = -1;
	}
	if (x->tmp) {
		if (unlink(x->tmp) < 0 && errno != ENOENT)
			log_warn("cannot remove the temporary file %s: %s", x->tmp, strerror(errno));
		free(x->tmp);
		x->tmp = NULL;
	}
	free(x->buf);
	x->buf = NULL;
	if (state == X_DONE) {
		log_info("%s %s %s %s:%s done: %llu bytes, sha256 %s", what, x->local, x->upload ? "->" : "<-",
		         x->target, x->remote, (unsigned long long)x->bytes, x->sha);
		tether_audit_write(srv_audit(x->s), x->who, what, x->target, "ok", NULL, NULL, NULL);
	} else {
		if (!x->category[0])
			snprintf(x->category, sizeof(x->category), "%s", state == X_CANCELLED ? "cancelled" : "io");
		log_warn("%s %s %s %s:%s %s after %llu bytes: %s", what, x->local, x->upload ? "->" : "<-",
		         x->target, x->remote, state == X_CANCELLED ? "cancelled" : "failed",
		         (unsigned long long)x->bytes, x->error);
		tether_audit_write(srv_audit(x->s), x->who, what, x->target, "error", x->category, x->error, NULL);
	}
	wake_all(x);
	if (T.stopping)
		xfer_free(x);
}

static void set_error(xfer *x, const char *category, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_error(xfer *x, const char *category, const char *fmt, ...)
{
	va_list ap;

	if (x->error[0])
		return; /* the first cause is the one to report */
	va_start(ap, fmt);
	vsnprintf(x->error, sizeof(x->error), fmt, ap);
	va_end(ap);
	snprintf(x->category, sizeof(x->category), "%s", category ? category : "io");
}

/* An agent's error answer: keep its code as the category. */
static void set_agent_error(xfer *x, const tether_rpc_response *resp)
{
	set_error(x, resp->code, "the agent %s: %s", x->target, resp->message);
}

static uint32_t request_timeout(uint64_t total)
{
	/* 10 minutes, plus a second per MiB (1 MiB/s at worst) */
	uint64_t ms = 600000u + total / 1024u;
	return ms > 0xfffffff0u ? 0xfffffff0u : (uint32_t)ms;
}

/* ------------------------------------------------------------------ */
/* Upload                                                              */
/* ------------------------------------------------------------------ */

static void up_pump(xfer *x);

static void up_stop_stream(xfer *x, const char *code, const char *msg)
{
	if (x->stream_open && x->c) {
		x->stream_open = 0;
		tether_conn_stream_reset(x->c, x->rid, code, msg);
	}
	x->stream_open = 0;
}

static void up_writable(void *arg, tether_conn *c, uint32_t id)
{
	(void)c; (void)id;
	up_pump(arg);
}

static void up_reset(void *arg, tether_conn *c, uint32_t id, const char *code, const char *message)
{
	xfer *x = arg;
	(void)c; (void)id;
	x->stream_open = 0;
	set_error(x, code, "the agent %s stopped the upload: %s", x->target, message ? message : "");
}

static void up_closed(void *arg, tether_conn *c, uint32_t id)
{
	xfer *x = arg;
	(void)c; (void)id;
	x->stream_open = 0;
	x->c = NULL;
}

static const tether_stream_handler up_handler = { NULL, NULL, up_reset, up_writable, up_closed };

static void up_pump(xfer *x)
{
	tether_prov *p = srv_prov(x->s);
	int i;

	for (i = 0; i < MAX_PUMP && x->stream_open && x->c; i++) {
		long n;
		if (x->off == x->len) {
			ssize_t rd;
			size_t want;
			if (x->read == x->total) {
				unsigned char sha[32];
				size_t sl = sizeof(sha);
				p->t->digest_final(x->dg, sha, &sl);
				x->dg = NULL;
				tether_hex(sha, sizeof(sha), x->sha);
				x->stream_open = 0;
				json_t *trailer = json_pack("{s:I}", "size", (json_int_t)x->total);
				int er = tether_conn_stream_end(x->c, x->rid, sha, trailer);

				json_decref(trailer);    /* stream_end only reads it */
				if (er < 0)
					set_error(x, "connection_reset", "the connection to %s closed at the end of the upload",
					          x->target);
				x->state = X_VERIFYING;
				return;
			}
			want = x->total - x->read < CHUNK ? (size_t)(x->total - x->read) : CHUNK;
			rd = read(x->fd, x->buf, want);
			if (rd < 0 && errno == EINTR)
				continue;
			if (rd <= 0) {
				set_error(x, "io", rd < 0 ? "cannot read %s: %s" : "%s shrank during the upload%s",
				          x->local, rd < 0 ? strerror(errno) : "; nothing was changed on the agent");
				up_stop_stream(x, "cancelled", x->error);
				return;
			}
			p->t->digest_update(x->dg, x->buf, (size_t)rd);
			x->read += (uint64_t)rd;
			x->off = 0;
			x->len = (size_t)rd;
		}
		n = tether_conn_stream_send(x->c, x->rid, x->buf + x->off, x->len - x->off);
		if (n < 0) {
			x->stream_open = 0; /* the connection is gone: the answer says so */
			return;
		}
		if (n == 0)
			return;
		x->off += (size_t)n;
		x->bytes += (uint64_t)n;
	}
	if (x->stream_open)
		up_stop_stream(x, "internal", "the stream took more than its window");
}

static void up_response(void *arg, tether_conn *c, const tether_rpc_response *resp, const tether_error *err)
{
	xfer *x = arg;
	const char *sha;
	json_t *size;

	/* The RESPONSE ends the request: no frame of its id may follow
	 * (docs/protocol.md, section 5), so the stream is only let go here.
	 * A STREAM_RESET now would reach an agent that has forgotten the id,
	 * and it would close the connection and every transfer on it. */
	if (x->stream_open) {
		x->stream_open = 0;
		tether_conn_stream_release(c, x->rid);
	}
	x->c = NULL;
	if (!resp) {
		set_error(x, tether_category_name(err->category), "%s", err->detail);
		finish(x, X_FAILED);
		return;
	}
	if (resp->is_error) {
		set_agent_error(x, resp);
		finish(x, X_FAILED);
		return;
	}
	sha = json_string_value(json_object_get(resp->result, "sha256"));
	size = json_object_get(resp->result, "size");
	if (x->error[0]) {
		finish(x, X_FAILED);
		return;
	}
	if (!sha || strcmp(sha, x->sha) || !json_is_integer(size) || (uint64_t)json_integer_value(size) != x->total) {
		set_error(x, "sha256_mismatch", "the agent %s stored %s bytes with SHA-256 %s, but %llu bytes with "
		          "SHA-256 %s were sent", x->target, json_is_integer(size) ? "other" : "an unknown number of",
		          sha ? sha : "(none)", (unsigned long long)x->total, x->sha);
		finish(x, X_FAILED);
		return;
	}
	x->result = json_incref(resp->result);
	finish(x, X_DONE);
}

static void up_conn(void *arg, tether_conn *c, const tether_error *err)
{
	xfer *x = arg;
	json_t *params;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!c) {
		set_error(x, tether_category_name(err->category), "cannot reach %s: %s", x->target, err->detail);
		finish(x, X_FAILED);
		return;
	}
	if (x->cancel) {
		finish(x, X_FAILED);
		return;
	}
	params = json_pack("{s:s, s:I, s:b}", "path", x->remote, "size", (json_int_t)x->total, "overwrite",
	                   x->overwrite);
	if (x->mode)
		json_object_set_new(params, "mode", json_string(x->mode));
	if (srv_prov(x->s)->t->digest_new(TETHER_DIGEST_SHA256, &x->dg, &e) < 0) {
		json_decref(params);
		set_error(x, "internal", "cannot start a SHA-256: %s", e.detail);
		finish(x, X_FAILED);
		return;
	}
	if (tether_conn_request_id(c, "file.upload", params, request_timeout(x->total), up_response, x,
	                           &x->rid, &e) < 0) {
		set_error(x, tether_category_name(e.category), "cannot send the request to %s: %s", x->target, e.detail);
		finish(x, X_FAILED);
		return;
	}
	/* From here on up_response is called exactly once. */
	x->c = c;
	if (tether_conn_stream_open(c, x->rid, &up_handler, x) < 0)
		return;
	x->stream_open = 1;
	x->state = X_RUNNING;
	x->running_ms = now_ms();
	x->buf = tether_xmalloc(CHUNK);
	up_pump(x);
}

/* ------------------------------------------------------------------ */
/* Download                                                            */
/* ------------------------------------------------------------------ */

static int dl_data(void *arg, tether_conn *c, uint32_t id, const unsigned char *data, size_t len)
{
	xfer *x = arg;
	size_t off = 0;
	int r;

	if (x->error[0])
		return 0;
	while (off < len) {
		ssize_t w = write(x->fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			set_error(x, e == ENOSPC || e == EDQUOT ? "no_space" : "io", "cannot write %s: %s%s", x->tmp,
			          strerror(e), e == ENOSPC ? "; free space on this machine and retry" : "");
			x->stream_open = 0;
			tether_conn_stream_reset(c, id, "io", x->error);
			return 0;
		}
		off += (size_t)w;
	}
	srv_prov(x->s)->t->digest_update(x->dg, data, len);
	/* The data is written as it arrives: a larger window keeps the agent
	 * sending.  Raised at the first data, not with the request: an agent
	 * that refuses the download never opens the stream, and a grant for a
	 * stream it never had is a protocol violation there. */
	if (x->bytes == 0)
		tether_conn_stream_window(c, id, TETHER_STREAM_WINDOW_BULK);
	x->bytes += len;
	if ((r = tether_write_behind(x->fd, &x->wb, x->bytes)) < 0) {
		set_error(x, r == -ENOSPC || r == -EDQUOT ? "no_space" : "io", "cannot write %s: %s", x->tmp,
		          strerror(-r));
		x->stream_open = 0;
		tether_conn_stream_reset(c, id, "io", x->error);
		return 0;
	}
	tether_conn_stream_consumed(c, id, len);
	return 0;
}

static void dl_end(void *arg, tether_conn *c, uint32_t id, const unsigned char sha256[32], json_t *trailer)
{
	xfer *x = arg;
	unsigned char sha[32];
	size_t sl = sizeof(sha);
	json_t *ts = json_object_get(trailer, "size");
	(void)c; (void)id;

	x->stream_open = 0;
	x->got_end = 1;
	memcpy(x->end_sha, sha256, 32);
	srv_prov(x->s)->t->digest_final(x->dg, sha, &sl);
	x->dg = NULL;
	tether_hex(sha, sizeof(sha), x->sha);
	if (memcmp(sha, sha256, 32)) {
		char theirs[65];
		tether_hex(sha256, 32, theirs);
		set_error(x, "sha256_mismatch", "the data received from %s has SHA-256 %s but the agent sent %s; "
		          "%s was not changed", x->target, x->sha, theirs, x->local);
	} else if (ts && (!json_is_integer(ts) || (uint64_t)json_integer_value(ts) != x->bytes)) {
		set_error(x, "size_mismatch", "%llu bytes arrived from %s but the agent says it sent %lld",
		          (unsigned long long)x->bytes, x->target, (long long)json_integer_value(ts));
	}
	x->state = X_VERIFYING;
}

static void dl_reset(void *arg, tether_conn *c, uint32_t id, const char *code, const char *message)
{
	xfer *x = arg;
	(void)c; (void)id;
	x->stream_open = 0;
	set_error(x, code, "the agent %s stopped the download: %s", x->target, message ? message : "");
}

static void dl_closed(void *arg, tether_conn *c, uint32_t id)
{
	xfer *x = arg;
	(void)c; (void)id;
	x->stream_open = 0;
	x->c = NULL;
}

static const tether_stream_handler dl_handler = { dl_data, dl_end, dl_reset, NULL, dl_closed };

static void dl_commit_work(uv_work_t *w)
{
	xfer *x = w->data;

	x->werr = 0;
	if (fsync(x->fd) < 0)
		x->werr = errno;
	else if (renameat2(AT_FDCWD, x->tmp, AT_FDCWD, x->local, x->overwrite ? 0 : RENAME_NOREPLACE) < 0)
		x->werr = errno;
	else {
		char *d = tether_strdup(x->local);
		int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		free(d);
		free(x->tmp);
		x->tmp = NULL;
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
}

static void dl_commit_done(uv_work_t *w, int status)
{
	xfer *x = w->data;

	if (status < 0 || x->werr) {
		int e = status < 0 ? ECANCELED : x->werr;
		set_error(x, e == ENOSPC ? "no_space" : e == EEXIST ? "exists" : "io", "cannot put %s in place: %s",
		          x->local, e == EEXIST ? "it exists and --no-overwrite was given" : strerror(e));
		finish(x, X_FAILED);
		return;
	}
	finish(x, X_DONE);
}

static void dl_response(void *arg, tether_conn *c, const tether_rpc_response *resp, const tether_error *err)
{
	xfer *x = arg;
	const char *sha;
	json_t *size;

	if (x->stream_open) { /* as in up_response: the RESPONSE ended the request */
		x->stream_open = 0;
		tether_conn_stream_release(c, x->rid);
	}
	x->c = NULL;
	if (!resp) {
		set_error(x, tether_category_name(err->category), "%s", err->detail);
		finish(x, X_FAILED);
		return;
	}
	if (resp->is_error) {
		set_agent_error(x, resp);
		finish(x, X_FAILED);
		return;
	}
	if (x->error[0]) {
		finish(x, X_FAILED);
		return;
	}
	sha = json_string_value(json_object_get(resp->result, "sha256"));
	size = json_object_get(resp->result, "size");
	if (!x->got_end || !sha || strcmp(sha, x->sha) || !json_is_integer(size) ||
	    (uint64_t)json_integer_value(size) != x->bytes) {
		set_error(x, "sha256_mismatch", "the agent %s answered SHA-256 %s for %s, but the data received has "
		          "%s; %s was not changed", x->target, sha ? sha : "(none)", x->remote,
		          x->got_end ? x->sha : "no end", x->local);
		finish(x, X_FAILED);
		return;
	}
	x->result = json_incref(resp->result);
	x->state = X_VERIFYING;
	x->work.data = x;
	if (uv_queue_work(srv_loop(x->s), &x->work, dl_commit_work, dl_commit_done) < 0) {
		dl_commit_work(&x->work);
		dl_commit_done(&x->work, 0);
	}
}

static void dl_start(xfer *x, tether_conn *c)
{
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (x->cancel) {
		finish(x, X_FAILED);
		return;
	}
	if (srv_prov(x->s)->t->digest_new(TETHER_DIGEST_SHA256, &x->dg, &e) < 0) {
		set_error(x, "internal", "cannot start a SHA-256: %s", e.detail);
		finish(x, X_FAILED);
		return;
	}
	if (tether_conn_request_id(c, "file.download", json_pack("{s:s}", "path", x->remote),
	                           request_timeout(x->has_total ? x->total : (1ull << 32)), dl_response, x,
	                           &x->rid, &e) < 0) {
		set_error(x, tether_category_name(e.category), "cannot send the request to %s: %s", x->target, e.detail);
		finish(x, X_FAILED);
		return;
	}
	x->c = c;
	if (tether_conn_stream_accept(c, x->rid, &dl_handler, x) < 0)
		return; /* dl_response will say why */
	x->stream_open = 1;
	x->state = X_RUNNING;
	x->running_ms = now_ms();
}

static void dl_stat(void *arg, tether_conn *c, const tether_rpc_response *resp, const tether_error *err)
{
	xfer *x = arg;
	json_t *size;

	if (!resp) {
		set_error(x, tether_category_name(err->category), "%s", err->detail);
		finish(x, X_FAILED);
		return;
	}
	if (resp->is_error && strcmp(resp->code, TETHER_RPC_ERR_UNKNOWN_METHOD)) {
		set_agent_error(x, resp);
		finish(x, X_FAILED);
		return;
	}
	size = resp->is_error ? NULL : json_object_get(resp->result, "size");
	if (json_is_integer(size)) {
		x->has_total = 1;
		x->total = (uint64_t)json_integer_value(size);
	}
	dl_start(x, c);
}

static void dl_conn(void *arg, tether_conn *c, const tether_error *err)
{
	xfer *x = arg;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!c) {
		set_error(x, tether_category_name(err->category), "cannot reach %s: %s", x->target, err->detail);
		finish(x, X_FAILED);
		return;
	}
	if (tether_conn_request(c, "file.stat", json_pack("{s:s}", "path", x->remote), 0, dl_stat, x, &e) < 0) {
		set_error(x, tether_category_name(e.category), "cannot send the request to %s: %s", x->target, e.detail);
		finish(x, X_FAILED);
	}
}

/* ------------------------------------------------------------------ */
/* Admin methods                                                       */
/* ------------------------------------------------------------------ */

static void sweep(void)
{
	uint64_t now = now_ms();
	xfer *x = T.list, *next;

	for (; x; x = next) {
		next = x->next;
		if (finished(x) && !x->waiters && now - x->ended_ms > RETENTION_MS)
			xfer_free(x);
	}
}

static size_t count(void)
{
	size_t n = 0;
	xfer *x;
	for (x = T.list; x; x = x->next)
		n++;
	return n;
}

static xfer *find(const char *id)
{
	xfer *x;
	for (x = T.list; x && id; x = x->next)
		if (!strcmp(x->id, id))
			return x;
	return NULL;
}

/* Answer helpers for the int-returning handlers below. */
static int reply_err(admin_call *call, const char *msg, const char *category)
{
	admin_reply_error(call, msg, category);
	return 0;
}

static int reply_ok(admin_call *call, json_t *result)
{
	admin_reply(call, result);
	return 0;
}

static const char *pstr(json_t *params, const char *key)
{
	json_t *v = json_object_get(params, key);
	const char *s = json_string_value(v);
	return s && *s && strlen(s) == json_string_length(v) ? s : NULL;
}

static xfer *xfer_new(srv *s, admin_call *call, int upload, const char *target, const char *local,
                      const char *remote)
{
	xfer *x = tether_xcalloc(1, sizeof(*x));
	unsigned char rnd[8];

	x->s = s;
	x->upload = upload;
	x->fd = -1;
	x->target = tether_strdup(target);
	x->local = tether_strdup(local);
	x->remote = tether_strdup(remote);
	x->caller = admin_call_uid(call);
	snprintf(x->who, sizeof(x->who), "%s", admin_call_user(call));
	srv_prov(s)->t->random_bytes(rnd, sizeof(rnd));
	tether_hex(rnd, sizeof(rnd), x->id);
	x->started_ms = now_ms();
	x->state = X_CONNECTING;
	return x;
}

/* A caller who is not root and not the daemon's user may only use their
 * own files. */
static int restricted(uid_t caller)
{
	return caller != 0 && caller != geteuid();
}

static int start_upload(srv *s, admin_call *call, json_t *params)
{
	const char *target = pstr(params, "target"), *local = pstr(params, "local"), *remote = pstr(params, "remote");
	json_t *jmode = json_object_get(params, "mode"), *jover = json_object_get(params, "overwrite");
	struct stat st;
	xfer *x;
	int fd;

	if (!target || !local || !remote)
		return reply_err(call, "file.upload needs target, local and remote (non-empty strings)",
		                         "bad_input");
	if (local[0] != '/')
		return reply_err(call, "file.upload: local must be an absolute path", "bad_input");
	if (jmode && !json_is_string(jmode))
		return reply_err(call, "file.upload: mode must be an octal string such as \"0644\"", "bad_input");
	fd = open(local, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		char m[600];
		snprintf(m, sizeof(m), "cannot open %.400s: %s", local, strerror(errno));
		return reply_err(call, m, errno == ENOENT ? "not_found" : "io");
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		char m[600];
		close(fd);
		snprintf(m, sizeof(m), "%.400s is not a regular file", local);
		return reply_err(call, m, "bad_input");
	}
	if (restricted(admin_call_uid(call)) && st.st_uid != admin_call_uid(call) && !(st.st_mode & S_IROTH)) {
		char m[600];
		close(fd);
		snprintf(m, sizeof(m), "%.400s belongs to another user and is not world-readable: the daemon reads "
		         "local files for its admin group only when they are the caller's own or public", local);
		return reply_err(call, m, "permission_denied");
	}
	x = xfer_new(s, call, 1, target, local, remote);
	x->fd = fd;
	x->has_total = 1;
	x->total = (uint64_t)st.st_size;
	x->overwrite = jover ? json_is_true(jover) : 1;
	x->mode = jmode ? tether_strdup(json_string_value(jmode)) : NULL;
	x->next = T.list;
	T.list = x;
	admin_reply(call, json_pack("{s:s, s:I}", "transfer_id", x->id, "total", (json_int_t)x->total));
	srv_target_conn(s, target, up_conn, x);
	return 0;
}

static int start_download(srv *s, admin_call *call, json_t *params)
{
	const char *target = pstr(params, "target"), *local = pstr(params, "local"), *remote = pstr(params, "remote");
	json_t *jover = json_object_get(params, "overwrite");
	char *d = NULL, *tmp = NULL, m[700];
	const char *dir;
	unsigned char rnd[8];
	char hex[17];
	struct stat st;
	xfer *x;
	int fd = -1, overwrite = jover ? json_is_true(jover) : 1;

	if (!target || !local || !remote)
		return reply_err(call, "file.download needs target, remote and local (non-empty strings)",
		                         "bad_input");
	if (local[0] != '/')
		return reply_err(call, "file.download: local must be an absolute path", "bad_input");
	if (lstat(local, &st) == 0) {
		if (S_ISDIR(st.st_mode)) {
			snprintf(m, sizeof(m), "%.400s is a directory; name the file to write", local);
			return reply_err(call, m, "bad_input");
		}
		if (!overwrite) {
			snprintf(m, sizeof(m), "%.400s exists (and overwrite is off)", local);
			return reply_err(call, m, "exists");
		}
		if (restricted(admin_call_uid(call)) && st.st_uid != admin_call_uid(call)) {
			snprintf(m, sizeof(m), "%.400s belongs to another user", local);
			return reply_err(call, m, "permission_denied");
		}
	}
	d = tether_strdup(local);
	dir = dirname(d);
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(m, sizeof(m), "the directory %.400s does not exist on this machine", dir);
		free(d);
		return reply_err(call, m, "not_found");
	}
	if (restricted(admin_call_uid(call)) && st.st_uid != admin_call_uid(call)) {
		snprintf(m, sizeof(m), "the directory %.400s belongs to another user: the daemon writes for its admin "
		         "group only into the caller's own directories", dir);
		free(d);
		return reply_err(call, m, "permission_denied");
	}
	srv_prov(s)->t->random_bytes(rnd, sizeof(rnd));
	tether_hex(rnd, sizeof(rnd), hex);
	tmp = tether_asprintf("%s%s%s%s", dir, strcmp(dir, "/") ? "/" : "", DL_PREFIX, hex);
	free(d);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(m, sizeof(m), "cannot create the temporary file %.400s: %s", tmp, strerror(errno));
		free(tmp);
		return reply_err(call, m, "io");
	}
	if (restricted(admin_call_uid(call)) && geteuid() == 0 && fchown(fd, admin_call_uid(call), (gid_t)-1) < 0)
		log_warn("cannot give %s to uid %u: %s", tmp, (unsigned)admin_call_uid(call), strerror(errno));
	x = xfer_new(s, call, 0, target, local, remote);
	x->fd = fd;
	x->tmp = tmp;
	x->overwrite = overwrite;
	x->next = T.list;
	T.list = x;
	admin_reply(call, json_pack("{s:s}", "transfer_id", x->id));
	srv_target_conn(s, target, dl_conn, x);
	return 0;
}

static int progress(admin_call *call, json_t *params)
{
	xfer *x = find(pstr(params, "transfer_id"));
	json_t *jw = json_object_get(params, "wait_ms");
	uint64_t wait = json_is_integer(jw) && json_integer_value(jw) > 0 ? (uint64_t)json_integer_value(jw) : 0;
	waiter *w;

	if (!x)
		return reply_err(call, "no such transfer (finished transfers are kept for 10 minutes)",
		                         "not_found");
	if (finished(x) || wait == 0)
		return reply_ok(call, progress_json(x));
	if (wait > WAIT_MAX_MS)
		wait = WAIT_MAX_MS;
	w = tether_xcalloc(1, sizeof(*w));
	w->x = x;
	w->call = call;
	uv_timer_init(srv_loop(x->s), &w->timer);
	w->timer.data = w;
	w->next = x->waiters;
	x->waiters = w;
	uv_timer_start(&w->timer, waiter_fire, wait, 0);
	return 0;
}

static int cancel(admin_call *call, json_t *params)
{
	xfer *x = find(pstr(params, "transfer_id"));

	if (!x)
		return reply_err(call, "no such transfer", "not_found");
	if (restricted(admin_call_uid(call)) && admin_call_uid(call) != x->caller)
		return reply_err(call, "this transfer was started by another user", "permission_denied");
	if (finished(x))
		return reply_ok(call, progress_json(x));
	if (x->state == X_VERIFYING && x->upload)
		return reply_err(call, "too late to cancel: all the data was sent and the agent is putting the "
		                         "file in place", "busy");
	x->cancel = 1;
	set_error(x, "cancelled", "cancelled by %s", admin_call_user(call));
	if (x->stream_open && x->c) {
		x->stream_open = 0;
		tether_conn_stream_reset(x->c, x->rid, "cancelled", "cancelled by the operator");
	}
	return reply_ok(call, progress_json(x));
}

static int transfer_admin(srv *s, struct admin_call *call, const char *method, json_t *params)
{
	if (strncmp(method, "file.", 5))
		return 0;
	sweep();
	if (!strcmp(method, "file.upload") || !strcmp(method, "file.download")) {
		if (T.stopping) {
			admin_reply_error(call, "the server is stopping", "busy");
			return 1;
		}
		if (count() >= TRANSFERS_MAX) {
			admin_reply_error(call, "too many transfers (256 running or finished in the last 10 minutes); "
			                  "retry later", "busy");
			return 1;
		}
		if (method[5] == 'u')
			start_upload(s, call, params);
		else
			start_download(s, call, params);
	} else if (!strcmp(method, "file.progress")) {
		progress(call, params);
	} else if (!strcmp(method, "file.cancel")) {
		cancel(call, params);
	} else if (!strcmp(method, "file.transfers")) {
		json_t *a = json_array();
		xfer *x;
		for (x = T.list; x; x = x->next)
			json_array_append_new(a, progress_json(x));
		admin_reply(call, a);
	} else {
		return 0;
	}
	return 1;
}

static int transfer_start(srv *s, tether_error *err)
{
	(void)s;
	(void)err;
	T.list = NULL;
	T.stopping = 0;
	return 0;
}

/* Called when the daemon starts stopping: transfers in flight are
 * cancelled (their answers still come as the connections close); finished
 * records are dropped. */
static void transfer_stop(srv *s)
{
	xfer *x, *next;
	(void)s;

	T.stopping = 1;
	for (x = T.list; x; x = next) {
		next = x->next;
		wake_all(x);
		if (finished(x)) {
			xfer_free(x);
			continue;
		}
		x->cancel = 1;
		set_error(x, "shutting_down", "the server stopped during the transfer");
		if (x->stream_open && x->c) {
			x->stream_open = 0;
			tether_conn_stream_reset(x->c, x->rid, "shutting_down", "the server is stopping");
		}
	}
}

const srv_module srv_module_transfer = { "transfer", transfer_start, transfer_admin, transfer_stop };
