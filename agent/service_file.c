/*
 * The file service: file.upload and file.download (docs/protocol.md,
 * section 9).
 *
 * Paths are confined to [files] roots by core/pathjail: the text is resolved
 * against the roots, then the directory that holds the file is opened
 * beneath the root's descriptor in one step (openat2 RESOLVE_BENEATH, or the
 * walk), and everything after that is relative to that directory
 * descriptor, so a symbolic link swapped in meanwhile can't lead outside.
 *
 * Upload: the data goes to a temporary file beside the destination,
 * ".tether-upload-<16 hex>" (O_CREAT|O_EXCL|O_NOFOLLOW, 0600), written as
 * it arrives with the SHA-256 computed along; at the end of the stream the
 * size and digest are compared with the sender's, then (on the thread pool,
 * so a long fsync does not stall the loop) fchmod, fsync, renameat over the
 * destination in the same directory descriptor, fsync of the directory.
 * Any failure removes the temporary file; the destination is only ever
 * replaced whole.  Before the temporary file is created, a journal entry
 * <state>/uploads/<hex>.json names it, so temporary files left by a crash
 * (kill -9, power loss) are removed at the next start.
 *
 * Download: the file is opened the same way and streamed in chunks of at
 * most 256 KiB while agent_req_send takes them (resumed by on_writable),
 * then STREAM_END carries the SHA-256 and {"size"}, then the reply.
 *
 * Memory per transfer is bounded: one 256 KiB buffer for a download,
 * nothing beyond the frame being written for an upload (the engine's window
 * holds at most 1 MiB in flight).
 */
#include "config.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include <uv.h>
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "pathjail.h"
#include "rpc.h"
#include "service.h"
#include "util.h"

#define TMP_PREFIX ".tether-upload-"
#define CHUNK (256u * 1024u)
#define MAX_PUMP 64                 /* sends per on_writable (the window stops us long before) */
#define JOURNAL_MAX 1024            /* journal entries looked at per start */

static const agent_env *E;
static char *journal_dir;

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static const char *err_code(int code)
{
	switch (code) {
	case TETHER_ERR_NOT_FOUND: return TETHER_RPC_ERR_NOT_FOUND;
	case TETHER_ERR_PERMISSION: return TETHER_RPC_ERR_FORBIDDEN;
	case TETHER_ERR_EXISTS: return "exists";
	case TETHER_ERR_INVALID: return TETHER_RPC_ERR_INVALID_PARAMS;
	case TETHER_ERR_NOMEM: return TETHER_RPC_ERR_INTERNAL;
	default: return "io";
	}
}

static void to_hex(const unsigned char *in, size_t n, char *out)
{
	tether_hex(in, n, out);
}

/* The path param: a string without NUL bytes. */
static const char *param_path(json_t *params, const char *key)
{
	json_t *v = json_object_get(params, key);
	const char *s = json_string_value(v);
	if (!s || strlen(s) != json_string_length(v))
		return NULL;
	return s;
}

static char *join_abs(const char *root, const char *rel)
{
	size_t l = strlen(root);
	while (l > 1 && root[l - 1] == '/')
		l--;
	if (!*rel)
		return tether_asprintf("%.*s", (int)l, root);
	return tether_asprintf("%.*s%s%s", (int)l, root, l == 1 ? "" : "/", rel);
}

/* Resolve, open the root, and either the parent directory (parent=1) or
 * the file itself for reading.  On failure, answers r. */
typedef struct opened {
	tether_jailed_path jp;
	const char *root;
	int rootfd, fd;            /* fd: parent dir or the file */
	const char *base;          /* parent=1: last name, inside jp.rel */
	char *abs;
} opened;

static int open_path(agent_req *r, const char *path, int parent, opened *o, char *msg, size_t cap,
                     const char **code)
{
	tether_error e;
	int rc;

	memset(&e, 0, sizeof(e));
	o->rootfd = o->fd = -1;
	o->abs = NULL;
	(void)r;
	rc = tether_pathjail_resolve(E->file_roots, path, &o->jp, &e);
	if (rc == 0 && !o->jp.rel[0])
		rc = tether_err_set(&e, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "'%.300s' names the file root %.300s itself, not a file in it", path,
		                    E->file_roots[o->jp.root]);
	if (rc < 0) {
		snprintf(msg, cap, "%s", e.detail);
		*code = err_code(rc);
		return rc;
	}
	o->root = E->file_roots[o->jp.root];
	rc = tether_pathjail_open_root(o->root, &o->rootfd, &e);
	if (rc == 0) {
		if (parent)
			rc = tether_pathjail_open_parent(o->rootfd, o->jp.rel, &o->fd, &o->base, &e);
		else
			rc = tether_pathjail_openat(o->rootfd, o->jp.rel, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0,
			                            &o->fd, &e);
	}
	if (rc < 0) {
		snprintf(msg, cap, "%s (file root %s)", e.detail, o->root);
		*code = err_code(rc);
		if (o->rootfd >= 0)
			close(o->rootfd);
		o->rootfd = -1;
		return rc;
	}
	o->abs = join_abs(o->root, o->jp.rel);
	return 0;
}

static void refuse_disabled(agent_req *r)
{
	agent_req_error(r, TETHER_RPC_ERR_FORBIDDEN,
	                "file transfer is turned off on this agent ([services] file = off); to allow it, "
	                "set 'file = on' under [services] in its agent.ini and restart tether-agent",
	                NULL);
}

/* ------------------------------------------------------------------ */
/* Journal of temporary files                                          */
/* ------------------------------------------------------------------ */

static char *journal_path(const char *hex)
{
	return tether_asprintf("%s/%s.json", journal_dir, hex);
}

static int journal_add(const char *hex, const char *root, const char *dir, const char *name,
                       tether_error *err)
{
	json_t *o = json_pack("{s:s, s:s, s:s}", "root", root, "dir", dir, "name", name);
	char *text = o ? json_dumps(o, JSON_COMPACT) : NULL, *p = journal_path(hex);
	int r;

	json_decref(o);
	if (!text) {
		free(p);
		return tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	}
	r = tether_write_atomic(p, text, strlen(text), 0600, err);
	free(text);
	free(p);
	return r;
}

static void journal_del(const char *hex)
{
	char *p = journal_path(hex);
	if (unlink(p) < 0 && errno != ENOENT)
		log_warn("cannot remove the upload journal entry %s: %s", p, strerror(errno));
	free(p);
}

/* Remove the temporary file a journal entry names (an earlier run died
 * during that upload). */
static void journal_clean_one(const char *file)
{
	unsigned char *buf = NULL;
	size_t len;
	json_t *o = NULL;
	const char *root, *dir, *name;
	tether_error e;
	int rootfd = -1, dirfd = -1;
	char *path = tether_asprintf("%s/%s", journal_dir, file);

	memset(&e, 0, sizeof(e));
	if (tether_read_file(path, 65536, &buf, &len, &e) < 0)
		goto out;
	o = json_loadb((const char *)buf, len, 0, NULL);
	root = json_string_value(json_object_get(o, "root"));
	dir = json_string_value(json_object_get(o, "dir"));
	name = json_string_value(json_object_get(o, "name"));
	if (!root || !dir || !name || strncmp(name, TMP_PREFIX, strlen(TMP_PREFIX)) || strchr(name, '/')) {
		log_warn("ignoring the malformed upload journal entry %s", path);
		goto drop;
	}
	if (tether_pathjail_open_root(root, &rootfd, &e) < 0 ||
	    tether_pathjail_openat(rootfd, dir, O_RDONLY | O_DIRECTORY, 0, &dirfd, &e) < 0) {
		if (e.code != TETHER_ERR_NOT_FOUND)
			log_warn("cannot look for the partial upload %s/%s/%s: %s", root, dir, name, e.detail);
		goto drop;
	}
	if (unlinkat(dirfd, name, 0) == 0)
		log_info("removed %s/%s%s%s, the partial upload of an earlier run that stopped during it",
		         root, dir, *dir ? "/" : "", name);
	else if (errno != ENOENT)
		log_warn("cannot remove the partial upload %s/%s/%s: %s; remove it by hand", root, dir, name,
		         strerror(errno));
drop:
	if (unlink(path) < 0 && errno != ENOENT)
		log_warn("cannot remove the upload journal entry %s: %s", path, strerror(errno));
out:
	if (dirfd >= 0)
		close(dirfd);
	if (rootfd >= 0)
		close(rootfd);
	json_decref(o);
	free(buf);
	free(path);
}

static void journal_clean(void)
{
	DIR *d = opendir(journal_dir);
	struct dirent *de;
	int n = 0;

	if (!d)
		return;
	while ((de = readdir(d)) && n < JOURNAL_MAX) {
		size_t l = strlen(de->d_name);
		if (l > 5 && !strcmp(de->d_name + l - 5, ".json")) {
			journal_clean_one(de->d_name);
			n++;
		}
	}
	closedir(d);
}

/* ------------------------------------------------------------------ */
/* Upload                                                              */
/* ------------------------------------------------------------------ */

typedef struct upload {
	agent_req *r;
	opened o;                       /* o.fd: the destination's directory */
	int fd;                         /* the temporary file */
	char hex[17];
	char tmp[sizeof(TMP_PREFIX) + 16];
	char *base;
	uint64_t size, got;
	tether_write_behind_state wb;   /* write-behind and drop-behind */
	mode_t mode;
	int overwrite;
	int stream_open;
	tether_digest_ctx *dg;
	unsigned char sha[TETHER_SHA256_LEN];
	uv_work_t work;
	int werr;                       /* errno of the finishing step */
	const char *wstep;
} upload;

static void upload_free(upload *u)
{
	if (u->dg)
		E->prov->t->digest_free(u->dg);
	if (u->fd >= 0)
		close(u->fd);
	if (u->o.fd >= 0)
		close(u->o.fd);
	if (u->o.rootfd >= 0)
		close(u->o.rootfd);
	free(u->o.abs);
	free(u->base);
	free(u);
}

/* Remove the temporary file and its journal entry. */
static void upload_discard(upload *u)
{
	if (u->fd >= 0) {
		close(u->fd);
		u->fd = -1;
	}
	if (u->tmp[0]) {
		if (unlinkat(u->o.fd, u->tmp, 0) < 0 && errno != ENOENT)
			log_warn("cannot remove the temporary file %s beside %s: %s", u->tmp, u->o.abs, strerror(errno));
		journal_del(u->hex);
		u->tmp[0] = '\0';
	}
}

static void upload_fail(upload *u, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void upload_fail(upload *u, const char *code, const char *fmt, ...)
{
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	upload_discard(u);
	log_warn("upload to %s from server %.16s failed after %llu of %llu bytes: %s (the destination is "
	         "unchanged)", u->o.abs, agent_req_server(u->r), (unsigned long long)u->got,
	         (unsigned long long)u->size, msg);
	if (u->stream_open) {
		u->stream_open = 0;
		agent_req_reset_stream(u->r, code, msg);
	}
	agent_req_error(u->r, code, msg, NULL);
	upload_free(u);
}

static int up_data(agent_req *r, const unsigned char *data, size_t len)
{
	upload *u = agent_req_get_data(r);
	size_t off = 0;
	int rc;

	if (u->got + len > u->size) {
		upload_fail(u, TETHER_RPC_ERR_TOO_LARGE, "the server sent more than the %llu bytes it announced",
		            (unsigned long long)u->size);
		return 0;
	}
	while (off < len) {
		ssize_t w = write(u->fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			if (e == ENOSPC || e == EDQUOT)
				upload_fail(u, "no_space", "the agent's disk is full writing beside %s (%s); free space "
				            "there and retry", u->o.abs, strerror(e));
			else
				upload_fail(u, "io", "cannot write beside %s: %s", u->o.abs, strerror(e));
			return 0;
		}
		off += (size_t)w;
	}
	E->prov->t->digest_update(u->dg, data, len);
	u->got += len;
	if ((rc = tether_write_behind(u->fd, &u->wb, u->got)) < 0) {
		upload_fail(u, rc == -ENOSPC || rc == -EDQUOT ? "no_space" : "io", "cannot write beside %s: %s",
		            u->o.abs, strerror(-rc));
		return 0;
	}
	agent_req_consumed(r, len);
	return 0;
}

static void up_finish_work(uv_work_t *w)
{
	upload *u = w->data;
	int r;

	u->werr = 0;
	if (fchmod(u->fd, u->mode) < 0) {
		u->werr = errno;
		u->wstep = "set the mode of";
		return;
	}
	if (fsync(u->fd) < 0) {
		u->werr = errno;
		u->wstep = "flush";
		return;
	}
	r = renameat2(u->o.fd, u->tmp, u->o.fd, u->base, u->overwrite ? 0 : RENAME_NOREPLACE);
	if (r < 0) {
		u->werr = errno;
		u->wstep = "rename the temporary file over";
		return;
	}
	u->tmp[0] = '\0'; /* renamed: nothing to remove any more */
	if (fsync(u->o.fd) < 0) {
		u->werr = errno;
		u->wstep = "flush the directory of";
	}
}

static void up_finish_done(uv_work_t *w, int status)
{
	upload *u = w->data;
	char hex[TETHER_SHA256_LEN * 2 + 1];

	if (status < 0 || (u->werr && u->tmp[0])) {
		int e = status < 0 ? ECANCELED : u->werr;
		upload_fail(u, e == EEXIST ? "exists" : (e == ENOSPC || e == EDQUOT) ? "no_space" : "io",
		            "cannot %s %s: %s", u->wstep ? u->wstep : "finish", u->o.abs,
		            e == EEXIST ? "it exists and overwrite is false" : strerror(e));
		return;
	}
	if (u->werr)
		log_warn("upload to %s: %s it failed (%s); the file is in place but may not survive a power loss",
		         u->o.abs, u->wstep, strerror(u->werr));
	journal_del(u->hex);
	close(u->fd);
	u->fd = -1;
	to_hex(u->sha, sizeof(u->sha), hex);
	log_info("received %s (%llu bytes, sha256 %s) from server %.16s", u->o.abs,
	         (unsigned long long)u->size, hex, agent_req_server(u->r));
	agent_req_reply(u->r, json_pack("{s:s, s:s, s:s, s:I, s:s}", "path", u->o.jp.rel, "absolute", u->o.abs,
	                                "root", u->o.root, "size", (json_int_t)u->size, "sha256", hex));
	upload_free(u);
}

static void up_end(agent_req *r, const unsigned char sha256[32], json_t *trailer)
{
	upload *u = agent_req_get_data(r);
	json_t *ts = json_object_get(trailer, "size");
	size_t n = sizeof(u->sha);
	int rc;

	u->stream_open = 0;
	if (u->got != u->size || (ts && (!json_is_integer(ts) || (uint64_t)json_integer_value(ts) != u->size))) {
		upload_fail(u, "size_mismatch", "the stream ended after %llu bytes but the upload announced %llu",
		            (unsigned long long)u->got, (unsigned long long)u->size);
		return;
	}
	rc = E->prov->t->digest_final(u->dg, u->sha, &n);
	u->dg = NULL;
	if (rc < 0) {
		upload_fail(u, TETHER_RPC_ERR_INTERNAL, "cannot compute the SHA-256 of the data");
		return;
	}
	if (!tether_ct_equal(u->sha, sha256, sizeof(u->sha))) {
		char got[65], want[65];
		to_hex(u->sha, 32, got);
		to_hex(sha256, 32, want);
		upload_fail(u, "sha256_mismatch", "the data received has SHA-256 %s but the server sent %s; "
		            "nothing was written", got, want);
		return;
	}
	u->work.data = u;
	if (uv_queue_work(agent_req_loop(r), &u->work, up_finish_work, up_finish_done) < 0) {
		u->werr = EAGAIN;
		up_finish_work(&u->work);
		up_finish_done(&u->work, 0);
	}
}

static void up_reset(agent_req *r, const char *code, const char *message)
{
	upload *u = agent_req_get_data(r);
	u->stream_open = 0;
	upload_fail(u, TETHER_RPC_ERR_CANCELLED, "the server stopped the upload (%s: %s)", code ? code : "?",
	            message ? message : "");
}

static void up_closed(agent_req *r)
{
	upload *u = agent_req_get_data(r);
	u->stream_open = 0;
	upload_fail(u, TETHER_RPC_ERR_CANCELLED, "the connection to the server closed during the upload");
}

static const agent_stream_ops upload_ops = { up_data, up_end, up_reset, NULL, up_closed };

static int parse_mode(json_t *v, mode_t *out)
{
	const char *s = json_string_value(v);
	char *end = NULL;
	unsigned long m;

	if (!s || !*s || strlen(s) > 5)
		return -1;
	m = strtoul(s, &end, 8);
	if (*end || m > 07777)
		return -1;
	*out = (mode_t)m;
	return 0;
}

static void do_upload(agent_req *r)
{
	json_t *p = agent_req_params(r);
	json_t *jsize = json_object_get(p, "size"), *jmode = json_object_get(p, "mode"),
	       *jover = json_object_get(p, "overwrite");
	const char *path = param_path(p, "path"), *code = NULL;
	char msg[TETHER_PROTO_MESSAGE_MAX + 1], *dir = NULL;
	unsigned char rnd[8];
	upload *u;
	struct stat st;
	tether_error e;

	memset(&e, 0, sizeof(e));
	/* Accept first: a refusal then resets the stream, so the data already
	 * in flight is dropped instead of hitting a stream that is not open. */
	if (agent_req_accept_stream(r, &upload_ops) < 0) {
		agent_req_error(r, TETHER_RPC_ERR_CANCELLED, "the connection closed", NULL);
		return;
	}
#define REFUSE(c, ...) do { snprintf(msg, sizeof(msg), __VA_ARGS__); code = (c); goto refuse; } while (0)
	u = tether_xcalloc(1, sizeof(*u));
	u->r = r;
	u->fd = u->o.fd = u->o.rootfd = -1;
	u->stream_open = 1;
	if (!E->file_enabled)
		REFUSE(TETHER_RPC_ERR_FORBIDDEN, "file transfer is turned off on this agent ([services] file = off); "
		       "to allow it, set 'file = on' under [services] in its agent.ini and restart tether-agent");
	if (!path)
		REFUSE(TETHER_RPC_ERR_INVALID_PARAMS, "file.upload needs \"path\", a string without NUL bytes");
	if (!json_is_integer(jsize) || json_integer_value(jsize) < 0)
		REFUSE(TETHER_RPC_ERR_INVALID_PARAMS, "file.upload needs \"size\", the byte count, an integer >= 0");
	if (jover && !json_is_boolean(jover))
		REFUSE(TETHER_RPC_ERR_INVALID_PARAMS, "file.upload: \"overwrite\" must be true or false");
	u->size = (uint64_t)json_integer_value(jsize);
	u->overwrite = jover ? json_is_true(jover) : 1;
	u->mode = 0644;
	if (jmode && parse_mode(jmode, &u->mode) < 0)
		REFUSE(TETHER_RPC_ERR_INVALID_PARAMS, "file.upload: \"mode\" must be an octal string such as \"0644\"");
	if (open_path(r, path, 1, &u->o, msg, sizeof(msg), &code) < 0)
		goto refuse;
	u->base = tether_strdup(u->o.base);
	if (fstatat(u->o.fd, u->base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (S_ISDIR(st.st_mode))
			REFUSE(TETHER_RPC_ERR_INVALID_PARAMS, "%s is a directory; name the file to write", u->o.abs);
		if (!u->overwrite)
			REFUSE("exists", "%s exists and overwrite is false", u->o.abs);
		if (!jmode && S_ISREG(st.st_mode))
			u->mode = st.st_mode & 07777;
	}
	if (E->prov->t->digest_new(TETHER_DIGEST_SHA256, &u->dg, &e) < 0)
		REFUSE(TETHER_RPC_ERR_INTERNAL, "cannot start a SHA-256: %s", e.detail);
	if (E->prov->t->random_bytes(rnd, sizeof(rnd)) < 0)
		REFUSE(TETHER_RPC_ERR_INTERNAL, "no random bytes for a temporary name");
	to_hex(rnd, sizeof(rnd), u->hex);
	snprintf(u->tmp, sizeof(u->tmp), "%s%s", TMP_PREFIX, u->hex);
	dir = strrchr(u->o.jp.rel, '/') ? strndup(u->o.jp.rel, (size_t)(strrchr(u->o.jp.rel, '/') - u->o.jp.rel))
	                                : tether_strdup("");
	if (journal_add(u->hex, u->o.root, dir, u->tmp, &e) < 0) {
		u->tmp[0] = '\0';
		REFUSE("io", "cannot record the upload in the agent's state directory: %s", e.detail);
	}
	u->fd = openat(u->o.fd, u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (u->fd < 0) {
		int en = errno;
		journal_del(u->hex);
		u->tmp[0] = '\0';
		REFUSE(en == EACCES || en == EPERM ? TETHER_RPC_ERR_FORBIDDEN : en == ENOSPC ? "no_space" : "io",
		       "cannot create a temporary file beside %s: %s", u->o.abs, strerror(en));
	}
	/* Claim the space now: a full disk fails here, not after the transfer. */
	if (u->size > 0 && fallocate(u->fd, 0, 0, (off_t)u->size) < 0 && (errno == ENOSPC || errno == EDQUOT)) {
		int en = errno;
		upload_discard(u);
		REFUSE("no_space", "not enough space on the agent for %llu bytes beside %s (%s); free space there "
		       "and retry", (unsigned long long)u->size, u->o.abs, strerror(en));
	}
	free(dir);
	agent_req_set_data(r, u);
	/* The data is written as it arrives: a larger window keeps the
	 * sender busy (docs/protocol.md, flow control). */
	agent_req_stream_window(r, TETHER_STREAM_WINDOW_BULK);
	tether_debug("file", "upload of %llu bytes to %s started", (unsigned long long)u->size, u->o.abs);
	return;
#undef REFUSE
refuse:
	free(dir);
	upload_discard(u);
	log_warn("refused an upload to '%.200s' from server %.16s: %s", path ? path : "?", agent_req_server(r), msg);
	agent_req_reset_stream(r, code, msg);
	agent_req_error(r, code, msg, NULL);
	upload_free(u);
}

/* ------------------------------------------------------------------ */
/* Download                                                            */
/* ------------------------------------------------------------------ */

typedef struct download {
	agent_req *r;
	opened o;                       /* o.fd: the file */
	uint64_t size, sent;
	tether_digest_ctx *dg;
	unsigned char *buf;
	size_t off, len;
	int stream_open;
} download;

static void download_free(download *d)
{
	if (d->dg)
		E->prov->t->digest_free(d->dg);
	if (d->o.fd >= 0)
		close(d->o.fd);
	if (d->o.rootfd >= 0)
		close(d->o.rootfd);
	free(d->o.abs);
	free(d->buf);
	free(d);
}

static void download_fail(download *d, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void download_fail(download *d, const char *code, const char *fmt, ...)
{
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warn("download of %s by server %.16s failed after %llu bytes: %s", d->o.abs, agent_req_server(d->r),
	         (unsigned long long)d->sent, msg);
	if (d->stream_open) {
		d->stream_open = 0;
		agent_req_reset_stream(d->r, code, msg);
	}
	agent_req_error(d->r, code, msg, NULL);
	download_free(d);
}

static void download_finish(download *d)
{
	unsigned char sha[TETHER_SHA256_LEN];
	char hex[TETHER_SHA256_LEN * 2 + 1];
	size_t n = sizeof(sha);
	int rc = E->prov->t->digest_final(d->dg, sha, &n);
	json_t *trailer;

	d->dg = NULL;
	if (rc < 0) {
		download_fail(d, TETHER_RPC_ERR_INTERNAL, "cannot compute the SHA-256 of the data");
		return;
	}
	d->stream_open = 0;
	trailer = json_pack("{s:I}", "size", (json_int_t)d->sent);
	rc = agent_req_end_stream(d->r, sha, trailer);
	json_decref(trailer);    /* stream_end only reads it */
	if (rc < 0) {
		download_fail(d, TETHER_RPC_ERR_CANCELLED, "the connection closed at the end of the download");
		return;
	}
	to_hex(sha, sizeof(sha), hex);
	if (d->sent != d->size)
		log_warn("%s changed size during its download (%llu bytes at the start, %llu sent)", d->o.abs,
		         (unsigned long long)d->size, (unsigned long long)d->sent);
	tether_debug("file", "sent %s (%llu bytes, sha256 %s)", d->o.abs, (unsigned long long)d->sent, hex);
	agent_req_reply(d->r, json_pack("{s:s, s:s, s:s, s:I, s:s}", "path", d->o.jp.rel, "absolute", d->o.abs,
	                                "root", d->o.root, "size", (json_int_t)d->sent, "sha256", hex));
	download_free(d);
}

static void download_pump(download *d)
{
	int i;

	for (i = 0; i < MAX_PUMP; i++) {
		ssize_t n;
		if (d->off == d->len) {
			n = read(d->o.fd, d->buf, CHUNK);
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n < 0) {
				download_fail(d, "io", "cannot read %s: %s", d->o.abs, strerror(errno));
				return;
			}
			if (n == 0) {
				download_finish(d);
				return;
			}
			E->prov->t->digest_update(d->dg, d->buf, (size_t)n);
			d->off = 0;
			d->len = (size_t)n;
		}
		n = agent_req_send(d->r, d->buf + d->off, d->len - d->off);
		if (n < 0) {
			d->stream_open = 0;
			download_fail(d, TETHER_RPC_ERR_CANCELLED, "the connection closed during the download");
			return;
		}
		if (n == 0)
			return; /* on_writable */
		d->off += (size_t)n;
		d->sent += (uint64_t)n;
	}
	/* The window (1 MiB) and the send queue stop us long before this. */
	download_fail(d, TETHER_RPC_ERR_INTERNAL, "the connection took more data than its window allows");
}

static void down_writable(agent_req *r)
{
	download_pump(agent_req_get_data(r));
}

static void down_reset(agent_req *r, const char *code, const char *message)
{
	download *d = agent_req_get_data(r);
	d->stream_open = 0;
	download_fail(d, TETHER_RPC_ERR_CANCELLED, "the server stopped the download (%s: %s)", code ? code : "?",
	              message ? message : "");
}

static void down_closed(agent_req *r)
{
	download *d = agent_req_get_data(r);
	d->stream_open = 0;
	download_fail(d, TETHER_RPC_ERR_CANCELLED, "the connection to the server closed during the download");
}

static const agent_stream_ops download_ops = { NULL, NULL, down_reset, down_writable, down_closed };

static void do_download(agent_req *r)
{
	json_t *p = agent_req_params(r);
	const char *path = param_path(p, "path"), *code = NULL;
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	download *d;
	struct stat st;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!E->file_enabled) {
		refuse_disabled(r);
		return;
	}
	if (!path) {
		agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS, "file.download needs \"path\", a string without NUL bytes",
		                NULL);
		return;
	}
	d = tether_xcalloc(1, sizeof(*d));
	d->r = r;
	d->o.fd = d->o.rootfd = -1;
	if (open_path(r, path, 0, &d->o, msg, sizeof(msg), &code) < 0)
		goto refuse;
	if (fstat(d->o.fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(msg, sizeof(msg), "%s is not a regular file", d->o.abs);
		code = TETHER_RPC_ERR_INVALID_PARAMS;
		goto refuse;
	}
	if (E->prov->t->digest_new(TETHER_DIGEST_SHA256, &d->dg, &e) < 0) {
		snprintf(msg, sizeof(msg), "cannot start a SHA-256: %s", e.detail);
		code = TETHER_RPC_ERR_INTERNAL;
		goto refuse;
	}
	d->size = (uint64_t)st.st_size;
	d->buf = tether_xmalloc(CHUNK);
	agent_req_set_data(r, d);
	if (agent_req_open_stream(r, &download_ops) < 0) {
		snprintf(msg, sizeof(msg), "the connection closed");
		code = TETHER_RPC_ERR_CANCELLED;
		goto refuse;
	}
	d->stream_open = 1;
	tether_debug("file", "download of %s (%llu bytes) started", d->o.abs, (unsigned long long)d->size);
	download_pump(d);
	return;
refuse:
	log_warn("refused a download of '%.200s' by server %.16s: %s", path, agent_req_server(r), msg);
	agent_req_error(r, code, msg, NULL);
	download_free(d);
}

/* ------------------------------------------------------------------ */
/* Stat                                                                */
/* ------------------------------------------------------------------ */

/* file.stat {path}: what a download would send (size for a progress bar). */
static void do_stat(agent_req *r)
{
	const char *path = param_path(agent_req_params(r), "path"), *code = NULL;
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	opened o;
	struct stat st;

	if (!E->file_enabled) {
		refuse_disabled(r);
		return;
	}
	if (!path) {
		agent_req_error(r, TETHER_RPC_ERR_INVALID_PARAMS, "file.stat needs \"path\", a string without NUL bytes",
		                NULL);
		return;
	}
	if (open_path(r, path, 0, &o, msg, sizeof(msg), &code) < 0) {
		agent_req_error(r, code, msg, NULL);
		return;
	}
	if (fstat(o.fd, &st) < 0) {
		snprintf(msg, sizeof(msg), "cannot stat %s: %s", o.abs, strerror(errno));
		agent_req_error(r, "io", msg, NULL);
	} else {
		char mode[8];
		snprintf(mode, sizeof(mode), "%04o", (unsigned)(st.st_mode & 07777));
		agent_req_reply(r, json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:I}", "path", o.jp.rel, "absolute", o.abs,
		                             "root", o.root, "type", S_ISREG(st.st_mode) ? "file" :
		                             S_ISDIR(st.st_mode) ? "directory" : "other",
		                             "size", (json_int_t)st.st_size, "mode", mode,
		                             "mtime", (json_int_t)st.st_mtime));
	}
	close(o.fd);
	close(o.rootfd);
	free(o.abs);
}

/* ------------------------------------------------------------------ */
/* The service                                                         */
/* ------------------------------------------------------------------ */

static int file_init(const agent_env *env)
{
	tether_error e;
	size_t i;

	memset(&e, 0, sizeof(e));
	E = env;
	for (i = 0; env->file_roots && env->file_roots[i]; i++) {
#ifdef _WIN32
		if (!tether_pathjail_is_absolute(env->file_roots[i])) {
			log_error("[files] roots: '%s' is not a full path with a drive (C:\\dir); give absolute "
			          "directories, separated by commas", env->file_roots[i]);
			return TETHER_ERR_INVALID;
		}
#else
		if (env->file_roots[i][0] != '/') {
			log_error("[files] roots: '%s' is not an absolute path; give absolute directories, "
			          "separated by commas", env->file_roots[i]);
			return TETHER_ERR_INVALID;
		}
#endif
		if (env->file_enabled && !tether_is_dir(env->file_roots[i]))
			log_warn("[files] roots: %s is not a directory (yet); transfers there fail until it exists",
			         env->file_roots[i]);
	}
	journal_dir = tether_asprintf("%s/uploads", env->state_dir);
	if (tether_mkdirs(journal_dir, 0700, &e) < 0) {
		log_error("cannot create %s: %s", journal_dir, e.detail);
		return e.code ? e.code : TETHER_ERR_IO;
	}
	journal_clean();
	return 0;
}

static void file_handle(agent_req *r)
{
	const char *m = agent_req_method(r);

	if (!strcmp(m, "file.upload"))
		do_upload(r);
	else if (!strcmp(m, "file.download"))
		do_download(r);
	else if (!strcmp(m, "file.stat"))
		do_stat(r);
	else
		agent_req_error(r, TETHER_RPC_ERR_UNKNOWN_METHOD, "the file service has file.upload, file.download and file.stat",
		                NULL);
}

static void file_shutdown(void)
{
	free(journal_dir);
	journal_dir = NULL;
}

const agent_service agent_service_file = { "file.", file_init, file_handle, file_shutdown };
