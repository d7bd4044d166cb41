/* The admin socket server.  See admin.h. */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "admin.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "util.h"

#define READ_CHUNK 65536
#define WRITE_QUEUE_MAX (64u * 1024 * 1024)

typedef struct admin_client admin_client;

struct admin_server {
	uv_pipe_t listener;              /* first: the handle's data is not used */
	uv_loop_t *loop;
	admin_handler_fn handler;
	void *arg;
	tether_audit *audit;
	char *path;
	char *lock_path;
	int lock_fd;
	int has_group;
	gid_t gid;
	char *group;
	int stopping;
	int leaked;                      /* some handle was closed by someone else */
	unsigned handles;                /* open uv handles (listener + clients) */
	unsigned nclients;
	admin_client *clients;
	admin_call *calls;               /* every pending call */
};

struct admin_client {
	uv_pipe_t pipe;
	admin_server *srv;
	admin_client *next, *prev;
	char *in;                        /* bytes received, not yet a full line */
	size_t in_len, in_cap, scanned;
	unsigned inflight;
	int closing;                     /* uv_close called */
	int draining;                    /* no more requests: close once written */
	uid_t uid;
	char user[128];
	char rbuf[READ_CHUNK];           /* last: not zeroed (on_connection) */
};

struct admin_call {
	admin_server *srv;               /* NULL once detached (server stopped) */
	admin_client *client;            /* NULL once the caller went away */
	admin_call *next, *prev;
	json_t *id;
	char *method;
	char *target;
	uid_t uid;
	char user[128];
	tether_audit *audit;             /* admin_call_set_audit */
};

typedef struct write_req {
	uv_write_t req;
	admin_client *client;
	int close_after;
	char *data;
} write_req;

static void server_maybe_free(admin_server *s)
{
	if (!s->stopping || s->handles || s->leaked)
		return;
	free(s->path);
	free(s->lock_path);
	free(s->group);
	free(s);
}

/* ---------------------------------------------------------------- calls */

static void call_unlink(admin_call *c)
{
	if (c->srv) {
		if (c->prev)
			c->prev->next = c->next;
		else
			c->srv->calls = c->next;
		if (c->next)
			c->next->prev = c->prev;
	}
	c->srv = NULL;
	c->next = c->prev = NULL;
}

static void call_free(admin_call *c)
{
	call_unlink(c);
	json_decref(c->id);
	free(c->method);
	free(c->target);
	free(c);
}

const char *admin_call_user(const admin_call *call)
{
	return call->user;
}

uid_t admin_call_uid(const admin_call *call)
{
	return call->uid;
}

int admin_call_abandoned(const admin_call *call)
{
	return call->client == NULL;
}

void admin_call_set_audit(admin_call *call, tether_audit *a)
{
	call->audit = a;
}

/* -------------------------------------------------------------- clients */

static void on_client_closed(uv_handle_t *h)
{
	admin_client *cl = (admin_client *)h;
	admin_server *s = cl->srv;

	free(cl->in);
	free(cl);
	s->handles--;
	server_maybe_free(s);
}

static void client_close(admin_client *cl)
{
	admin_server *s = cl->srv;
	admin_call *c;

	if (cl->closing)
		return;
	cl->closing = 1;
	for (c = s->calls; c; c = c->next)
		if (c->client == cl)
			c->client = NULL;
	if (cl->prev)
		cl->prev->next = cl->next;
	else
		s->clients = cl->next;
	if (cl->next)
		cl->next->prev = cl->prev;
	s->nclients--;
	uv_close((uv_handle_t *)&cl->pipe, on_client_closed);
}

static void on_written(uv_write_t *req, int status)
{
	write_req *w = (write_req *)req;

	if (status < 0 && status != UV_ECANCELED)
		tether_debug("admin", "write to %s failed: %s", w->client->user, uv_strerror(status));
	if ((w->close_after || status < 0) && !w->client->closing)
		client_close(w->client);
	free(w->data);
	free(w);
}

/* Send one JSON line (steals msg). */
static void client_send(admin_client *cl, json_t *msg, int close_after)
{
	write_req *w;
	uv_buf_t b;
	char *s;
	size_t n;
	int r;

	s = json_dumps(msg, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
	json_decref(msg);
	if (cl->closing) {
		free(s);
		return;
	}
	if (!s) {
		client_close(cl);
		return;
	}
	if (uv_stream_get_write_queue_size((uv_stream_t *)&cl->pipe) > WRITE_QUEUE_MAX) {
		log_warn("admin: %s does not read its answers (over %u MiB queued): disconnected",
		         cl->user, WRITE_QUEUE_MAX >> 20);
		free(s);
		client_close(cl);
		return;
	}
	n = strlen(s);
	s[n] = '\n'; /* replaces the NUL; the length is passed explicitly */
	w = tether_xcalloc(1, sizeof(*w));
	w->client = cl;
	w->close_after = close_after;
	w->data = s;
	b = uv_buf_init(s, (unsigned)(n + 1));
	r = uv_write(&w->req, (uv_stream_t *)&cl->pipe, &b, 1, on_written);
	if (r < 0) {
		free(s);
		free(w);
		client_close(cl);
	}
}

static json_t *error_obj(const char *message, const char *category)
{
	json_t *e = json_object();
	json_object_set_new(e, "message", json_string(message ? message : "unknown error"));
	json_object_set_new(e, "category", json_string(category ? category : "internal"));
	return e;
}

/* An error that ends the connection (id null). */
static void client_fail(admin_client *cl, const char *message, const char *category)
{
	json_t *m = json_object();

	json_object_set_new(m, "id", json_null());
	json_object_set_new(m, "error", error_obj(message, category));
	cl->draining = 1;
	uv_read_stop((uv_stream_t *)&cl->pipe);
	client_send(cl, m, 1);
}

/* An error for one request; the connection stays. */
static void client_request_error(admin_client *cl, json_t *id, const char *message,
                                 const char *category)
{
	json_t *m = json_object();

	json_object_set_new(m, "id", id ? json_incref(id) : json_null());
	json_object_set_new(m, "error", error_obj(message, category));
	client_send(cl, m, 0);
}

static void audit(tether_audit *a, const char *who, const char *what, const char *target,
                  const char *message, const char *category)
{
	tether_error err;

	if (!a)
		return;
	memset(&err, 0, sizeof(err));
	if (tether_audit_write(a, who, what, target, message ? "error" : "ok",
	                       category, message, &err) < 0)
		log_error("admin: %s", err.detail);
}

static void reply(admin_call *c, json_t *result, const char *message, const char *category)
{
	admin_client *cl = c->client;
	json_t *m;

	audit(c->audit, c->user, c->method, c->target, message, category);
	if (cl) {
		cl->inflight--;
		m = json_object();
		json_object_set_new(m, "id", json_incref(c->id));
		if (message)
			json_object_set_new(m, "error", error_obj(message, category));
		else
			json_object_set_new(m, "result", result ? result : json_null());
		result = NULL;
		client_send(cl, m, 0);
	}
	json_decref(result);
	call_free(c);
}

void admin_reply(admin_call *call, json_t *result)
{
	reply(call, result, NULL, NULL);
}

void admin_reply_error(admin_call *call, const char *message, const char *category)
{
	reply(call, NULL, message ? message : "the request failed", category ? category : "internal");
}

void admin_reply_tether_error(admin_call *call, const tether_error *err)
{
	const char *cat = err->code == TETHER_ERR_EXISTS ? "exists" :
	                  err->code == TETHER_ERR_PERMISSION ? "permission_denied" :
	                  tether_category_name(err->category);
	admin_reply_error(call, err->detail[0] ? err->detail : tether_err_str(err->code), cat);
}

static void handle_line(admin_client *cl, const char *line, size_t len)
{
	admin_server *s = cl->srv;
	json_error_t jerr;
	json_t *req, *id, *method, *params, *name;
	admin_call *c;
	char msg[256];

	while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	if (!len)
		return;
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!req) {
		snprintf(msg, sizeof(msg), "the request is not valid JSON (%s at column %d): send one "
		         "JSON object per line", jerr.text, jerr.column);
		client_request_error(cl, NULL, msg, "bad_input");
		return;
	}
	id = json_object_get(req, "id");
	method = json_object_get(req, "method");
	params = json_object_get(req, "params");
	if (!json_is_object(req) || (id && !json_is_integer(id) && !json_is_string(id) && !json_is_null(id))) {
		client_request_error(cl, NULL, "the request must be a JSON object with an integer "
		                     "or string \"id\", a \"method\" and an object \"params\"", "bad_input");
		goto out;
	}
	if (!json_is_string(method) || !json_string_length(method)) {
		client_request_error(cl, id, "the request has no \"method\" string", "bad_input");
		goto out;
	}
	if (params && !json_is_object(params) && !json_is_null(params)) {
		client_request_error(cl, id, "\"params\" must be a JSON object", "bad_input");
		goto out;
	}
	if (cl->inflight >= ADMIN_INFLIGHT_MAX) {
		snprintf(msg, sizeof(msg), "too many requests in flight on this connection (at most %d): "
		         "wait for answers before sending more", ADMIN_INFLIGHT_MAX);
		client_request_error(cl, id, msg, "busy");
		goto out;
	}
	c = tether_xcalloc(1, sizeof(*c));
	c->srv = s;
	c->client = cl;
	c->id = id ? json_incref(id) : json_null();
	c->method = tether_strdup(json_string_value(method));
	name = json_is_object(params) ? json_object_get(params, "name") : NULL;
	if (json_is_string(name))
		c->target = tether_asprintf("%.128s", json_string_value(name));
	c->uid = cl->uid;
	memcpy(c->user, cl->user, sizeof(c->user));
	c->next = s->calls;
	if (s->calls)
		s->calls->prev = c;
	s->calls = c;
	cl->inflight++;
	tether_debug("admin", "%s: %s", cl->user, c->method);
	if (json_is_object(params)) {
		s->handler(s->arg, c, c->method, params);
	} else {
		json_t *empty = json_object();
		s->handler(s->arg, c, c->method, empty);
		json_decref(empty);
	}
out:
	json_decref(req);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	admin_client *cl = (admin_client *)h;
	(void)suggested;
	*buf = uv_buf_init(cl->rbuf, sizeof(cl->rbuf));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	admin_client *cl = (admin_client *)st;
	size_t start = 0, i;

	if (nread < 0) {
		client_close(cl);
		return;
	}
	if (nread == 0 || cl->draining || cl->closing)
		return;
	if (cl->in_len + (size_t)nread > cl->in_cap) {
		cl->in_cap = cl->in_len + (size_t)nread + READ_CHUNK;
		cl->in = realloc(cl->in, cl->in_cap);
		if (!cl->in)
			abort();
	}
	memcpy(cl->in + cl->in_len, buf->base, (size_t)nread);
	cl->in_len += (size_t)nread;
	for (i = cl->scanned; i < cl->in_len; i++) {
		if (cl->in[i] != '\n')
			continue;
		if (i - start > ADMIN_LINE_MAX)
			break;
		handle_line(cl, cl->in + start, i - start);
		start = i + 1;
		if (cl->closing || cl->draining)
			return;
	}
	memmove(cl->in, cl->in + start, cl->in_len - start);
	cl->in_len -= start;
	cl->scanned = cl->in_len;
	if (cl->in_len > ADMIN_LINE_MAX) {
		char msg[160];
		log_warn("admin: %s sent a request line over %d bytes: disconnected", cl->user, ADMIN_LINE_MAX);
		audit(cl->srv->audit, cl->user, "connect", NULL, "request line too long", "bad_input");
		snprintf(msg, sizeof(msg), "request line longer than %d bytes: the connection is closed; "
		         "send smaller requests", ADMIN_LINE_MAX);
		client_fail(cl, msg, "bad_input");
	}
	if (cl->in_cap > 4 * READ_CHUNK && cl->in_len < READ_CHUNK) {
		cl->in_cap = READ_CHUNK;
		cl->in = realloc(cl->in, cl->in_cap);
		if (!cl->in)
			abort();
	}
}

/* -------------------------------------------------------- who is calling */

static void describe_user(uid_t uid, char *out, size_t cap)
{
	struct passwd pw, *res = NULL;
	char buf[4096];

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) == 0 && res)
		snprintf(out, cap, "uid=%u(%s)", (unsigned)uid, res->pw_name);
	else
		snprintf(out, cap, "uid=%u", (unsigned)uid);
}

static int in_admin_group(admin_server *s, uid_t uid, gid_t gid)
{
	struct passwd pw, *res = NULL;
	char buf[4096];
	gid_t *groups = NULL;
	int ng = 64, i, found = 0;

	if (!s->has_group)
		return 0;
	if (gid == s->gid)
		return 1;
	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
		return 0;
	for (;;) {
		int want = ng;
		groups = realloc(groups, (size_t)ng * sizeof(gid_t));
		if (!groups)
			abort();
		if (getgrouplist(res->pw_name, res->pw_gid, groups, &ng) >= 0)
			break;
		if (ng <= want)
			ng = want * 2;
		if (ng > 65536)
			goto out;
	}
	for (i = 0; i < ng; i++)
		if (groups[i] == s->gid)
			found = 1;
out:
	free(groups);
	return found;
}

static void on_connection(uv_stream_t *server, int status)
{
	admin_server *s = (admin_server *)server;
	admin_client *cl;
	struct ucred cred;
	socklen_t cl_len = sizeof(cred);
	uv_os_fd_t fd;
	char msg[384];

	if (status < 0) {
		log_warn("admin: accepting a connection on %s failed: %s", s->path, uv_strerror(status));
		return;
	}
	/* every field but the read buffer zeroed: zeroing 64 KiB per
	 * connection was about 70 000 instructions, 6 % of the daemon's work
	 * for a short exec */
	cl = tether_xmalloc(sizeof(*cl));
	memset(cl, 0, offsetof(admin_client, rbuf));
	cl->srv = s;
	uv_pipe_init(s->loop, &cl->pipe, 0);
	s->handles++;
	cl->next = s->clients;
	if (s->clients)
		s->clients->prev = cl;
	s->clients = cl;
	s->nclients++;
	snprintf(cl->user, sizeof(cl->user), "unknown");
	if (uv_accept(server, (uv_stream_t *)&cl->pipe) < 0) {
		client_close(cl);
		return;
	}
	if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl_len) < 0) {
		log_warn("admin: cannot identify a caller on %s (SO_PEERCRED: %s): disconnected",
		         s->path, strerror(errno));
		client_close(cl);
		return;
	}
	cl->uid = cred.uid;
	describe_user(cred.uid, cl->user, sizeof(cl->user));
	if (cred.uid != 0 && cred.uid != geteuid() && !in_admin_group(s, cred.uid, cred.gid)) {
		if (s->has_group)
			snprintf(msg, sizeof(msg), "permission denied: %s is not root, not the daemon's "
			         "user and not a member of group '%s' ([admin] group): ask an administrator "
			         "to add you to that group, or run the command as root", cl->user, s->group);
		else
			snprintf(msg, sizeof(msg), "permission denied: %s is not root nor the daemon's user, "
			         "and no [admin] group is configured: run the command as root, or set "
			         "[admin] group in the server's configuration", cl->user);
		log_warn("admin: refused %s (pid %d): not root, the daemon's user or in [admin] group",
		         cl->user, (int)cred.pid);
		audit(s->audit, cl->user, "connect", NULL, msg, "permission_denied");
		client_fail(cl, msg, "permission_denied");
		return;
	}
	if (s->nclients > ADMIN_CLIENTS_MAX) {
		snprintf(msg, sizeof(msg), "the daemon has too many admin connections (%d): retry "
		         "in a moment", ADMIN_CLIENTS_MAX);
		client_fail(cl, msg, "busy");
		return;
	}
	tether_debug("admin", "connection from %s (pid %d)", cl->user, (int)cred.pid);
	uv_read_start((uv_stream_t *)&cl->pipe, on_alloc, on_read);
}

/* ---------------------------------------------------------- start, stop */

/* 1 if a daemon answers on path, 0 if not. */
static int socket_answers(const char *path)
{
	struct sockaddr_un sa;
	int fd, r;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	close(fd);
	return r == 0;
}

static int already_running(const char *path, tether_error *err)
{
	return tether_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT,
	                      "another tether-server daemon is already running on this instance "
	                      "(it answers on %s): stop it first ('tether-server service --stop'), "
	                      "or run this one with another --instance", path);
}

static int lookup_group(const char *name, gid_t *gid, tether_error *err)
{
	struct group gr, *res = NULL;
	char buf[16384];
	int e = getgrnam_r(name, &gr, buf, sizeof(buf), &res);

	if (e || !res)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "[admin] group '%s' does not exist%s%s: create it ('groupadd %s') "
		                      "or change [admin] group in the server's configuration",
		                      name, e ? ": " : "", e ? strerror(e) : "", name);
	*gid = res->gr_gid;
	return 0;
}

int admin_server_start(uv_loop_t *loop, const char *run_dir, const char *admin_group,
                       admin_handler_fn handler, void *arg, admin_server **out,
                       tether_error *err)
{
	admin_server *s;
	struct sockaddr_un sa;
	struct stat st;
	int fd = -1, r;

	s = tether_xcalloc(1, sizeof(*s));
	s->loop = loop;
	s->handler = handler;
	s->arg = arg;
	s->lock_fd = -1;
	s->path = tether_asprintf("%s/" ADMIN_SOCKET_NAME, run_dir);
	s->lock_path = tether_asprintf("%s/admin.lock", run_dir);
	if (strlen(s->path) >= sizeof(sa.sun_path)) {
		r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "the admin socket path %s is too long for a Unix socket (%zu bytes, "
		                   "at most %zu): use a shorter --home directory", s->path,
		                   strlen(s->path), sizeof(sa.sun_path) - 1);
		goto out;
	}
	if (admin_group && *admin_group) {
		if ((r = lookup_group(admin_group, &s->gid, err)) < 0)
			goto out;
		s->has_group = 1;
		s->group = tether_strdup(admin_group);
	}
	if ((r = tether_mkdirs(run_dir, 0750, err)) < 0)
		goto out;
	if (stat(run_dir, &st) == 0 && st.st_uid == geteuid()) {
		if ((st.st_mode & 07777) != 0750 && chmod(run_dir, 0750) < 0)
			log_warn("admin: cannot set the mode of %s to 0750: %s", run_dir, strerror(errno));
		if (s->has_group && st.st_gid != s->gid && chown(run_dir, (uid_t)-1, s->gid) < 0)
			log_warn("admin: cannot give %s to group '%s' ([admin] group): %s: its members "
			         "cannot reach the admin socket", run_dir, s->group, strerror(errno));
	}

	/* One daemon per run directory: a lock held for our lifetime makes the
	 * check below free of races; the probe catches a daemon without it. */
	s->lock_fd = open(s->lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (s->lock_fd < 0) {
		r = tether_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                   TETHER_CAT_IO, "cannot open %s: %s: check the owner and mode of %s",
		                   s->lock_path, strerror(errno), run_dir);
		goto out;
	}
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? already_running(s->path, err) :
		    tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot lock %s: %s",
		                   s->lock_path, strerror(errno));
		goto out;
	}
	if (lstat(s->path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			r = tether_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_IO,
			                   "%s exists and is not a socket: remove it, then start the daemon "
			                   "again", s->path);
			goto out;
		}
		if (socket_answers(s->path)) {
			r = already_running(s->path, err);
			goto out;
		}
		if (unlink(s->path) < 0 && errno != ENOENT) {
			r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
			                   "cannot remove the stale admin socket %s: %s: remove it by hand",
			                   s->path, strerror(errno));
			goto out;
		}
		log_info("admin: removed a stale admin socket %s (no daemon answered on it)", s->path);
	}

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                   "cannot create the admin socket: %s", strerror(errno));
		goto out;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, s->path, strlen(s->path) + 1);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = tether_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                   TETHER_CAT_IO, "cannot create the admin socket %s: %s: check the "
		                   "owner and mode of %s", s->path, strerror(errno), run_dir);
		goto out;
	}
	if (chmod(s->path, 0660) < 0 ||
	    (s->has_group && chown(s->path, (uid_t)-1, s->gid) < 0 && errno != EPERM)) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                   "cannot set the mode or group of the admin socket %s: %s",
		                   s->path, strerror(errno));
		unlink(s->path);
		goto out;
	}
	if (listen(fd, 64) < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                   "cannot listen on the admin socket %s: %s", s->path, strerror(errno));
		unlink(s->path);
		goto out;
	}
	uv_pipe_init(loop, &s->listener, 0);
	s->handles = 1;
	if ((r = uv_pipe_open(&s->listener, fd)) < 0 ||
	    (r = uv_listen((uv_stream_t *)&s->listener, 64, on_connection)) < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                   "cannot listen on the admin socket %s: %s", s->path, uv_strerror(r));
		admin_server_stop(s); /* closes fd through the handle */
		return r;
	}
	tether_debug("admin", "listening on %s", s->path);
	*out = s;
	return 0;
out:
	if (fd >= 0)
		close(fd);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	free(s->path);
	free(s->lock_path);
	free(s->group);
	free(s);
	return r;
}

void admin_server_set_audit(admin_server *s, tether_audit *a)
{
	s->audit = a;
}

const char *admin_server_socket_path(const admin_server *s)
{
	return s->path;
}

static void on_listener_closed(uv_handle_t *h)
{
	admin_server *s = (admin_server *)h;

	s->handles--;
	server_maybe_free(s);
}

void admin_server_stop(admin_server *s)
{
	if (!s || s->stopping)
		return;
	s->stopping = 1;
	while (s->calls) {
		admin_call *c = s->calls;
		c->client = NULL;
		c->audit = NULL;
		call_unlink(c);  /* answered later into the void */
	}
	unlink(s->path);
	if (s->lock_fd >= 0)
		close(s->lock_fd);  /* releases the lock; the file stays (no unlink races) */
	s->lock_fd = -1;
	/* Handles somebody else already closed (uv_walk at exit) are left
	 * alone: their memory is not released, which only matters at exit. */
	while (s->clients) {
		admin_client *cl = s->clients;
		if (!uv_is_closing((uv_handle_t *)&cl->pipe)) {
			client_close(cl);
			continue;
		}
		cl->closing = 1;
		s->clients = cl->next;
		s->nclients--;
		s->leaked = 1;
	}
	if (!uv_is_closing((uv_handle_t *)&s->listener))
		uv_close((uv_handle_t *)&s->listener, on_listener_closed);
	else
		s->leaked = 1;
}
