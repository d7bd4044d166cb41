/* The CLI side of the admin socket.  See admin_client.h. */
#include "config.h"
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "admin_client.h"
#include "error.h"
#include "util.h"

#define ANSWER_MAX (64u * 1024 * 1024)

static int not_running(const tether_instance *inst, const char *path, tether_error *err)
{
	char args[600];

	tether_instance_args(inst->name, inst->home, args, sizeof(args));
	return tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
	                      "the tether-server daemon for instance '%s' is not running (no %s): "
	                      "start it with 'tether-server run%s' or "
	                      "'tether-server service --start%s'", inst->name, path, args, args);
}

/* Milliseconds left before deadline (0 if passed). */
static int remaining(uint64_t deadline)
{
	uint64_t now = tether_now_ms();
	return now >= deadline ? 0 : (int)(deadline - now);
}

static int timed_out(const tether_instance *inst, const char *method, uint32_t timeout_ms,
                     tether_error *err)
{
	return tether_err_set(err, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
	                      "the tether-server daemon for instance '%s' did not answer '%s' within "
	                      "%u s: it may be overloaded or stuck; check its log", inst->name, method,
	                      (unsigned)((timeout_ms + 999) / 1000));
}

static int map_error(json_t *e, const tether_instance *inst, const char *method,
                     tether_error *err)
{
	const char *msg = json_string_value(json_object_get(e, "message"));
	const char *cat = json_string_value(json_object_get(e, "category"));
	int code = TETHER_ERR_INTERNAL, category = TETHER_CAT_INTERNAL, i;

	if (!cat)
		cat = "internal";
	for (i = 0; i < TETHER_CAT__COUNT; i++)
		if (!strcmp(tether_category_name(i), cat))
			category = i;
	if (!strcmp(cat, "not_found"))
		code = TETHER_ERR_NOT_FOUND;
	else if (!strcmp(cat, "exists"))
		code = TETHER_ERR_EXISTS, category = TETHER_CAT_BAD_INPUT;
	else if (!strcmp(cat, "bad_input"))
		code = TETHER_ERR_INVALID;
	else if (!strcmp(cat, "permission_denied"))
		code = TETHER_ERR_PERMISSION, category = TETHER_CAT_IO;
	else if (!strcmp(cat, "io"))
		code = TETHER_ERR_IO;
	else if (!strcmp(cat, "unsupported") || !strcmp(cat, "unknown_method"))
		code = TETHER_ERR_UNSUPPORTED, category = TETHER_CAT_UNSUPPORTED;
	else if (!strcmp(cat, "timeout"))
		code = TETHER_ERR_TIMEOUT;
	if (!msg)
		return tether_err_set(err, code, category, "the daemon for instance '%s' refused '%s' "
		                      "(%s) without a message: check its log", inst->name, method, cat);
	return tether_err_set(err, code, category, "%s", msg);
}

int admin_client_call(const tether_instance *inst, const char *method, json_t *params,
                      uint32_t timeout_ms, json_t **result, tether_error *err)
{
	struct sockaddr_un sa;
	json_t *req = NULL, *ans = NULL, *v;
	json_error_t jerr;
	char *path = NULL, *line = NULL, *in = NULL;
	size_t len, off = 0, in_len = 0, in_cap = 0;
	uint64_t deadline = tether_now_ms() + timeout_ms;
	int fd = -1, r;

	path = tether_asprintf("%s/admin.sock", inst->run_dir);
	if (strlen(path) >= sizeof(sa.sun_path)) {
		r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "the admin socket path %s is too long for a Unix socket: use a "
		                   "shorter --home directory", path);
		goto out;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot create a socket: %s",
		                   strerror(errno));
		goto out;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
			r = not_running(inst, path, err);
		else if (e == EACCES || e == EPERM)
			r = tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
			                   "cannot reach the tether-server daemon for instance '%s': "
			                   "permission denied on %s: run the command as root or as a member "
			                   "of the group named by [admin] group", inst->name, path);
		else
			r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
			                   "cannot connect to the tether-server daemon for instance '%s' "
			                   "(%s): %s", inst->name, path, strerror(e));
		goto out;
	}

	req = json_object();
	json_object_set_new(req, "id", json_integer(1));
	json_object_set_new(req, "method", json_string(method));
	if (params)
		json_object_set(req, "params", params);
	else
		json_object_set_new(req, "params", json_object());
	line = json_dumps(req, JSON_COMPACT);
	if (!line) {
		r = tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                   "cannot encode the '%s' request", method);
		goto out;
	}
	len = strlen(line);
	line[len++] = '\n';
	while (off < len) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		ssize_t w;
		int pr = poll(&p, 1, remaining(deadline));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			r = timed_out(inst, method, timeout_ms, err);
			goto out;
		}
		w = send(fd, line + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (w < 0)
			break; /* the daemon may have refused us and closed: read its answer */
		off += (size_t)w;
	}

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char *nl;
		ssize_t n;
		int pr;

		if (in_cap - in_len < 65536) {
			in_cap = in_cap ? in_cap * 2 : 65536;
			in = realloc(in, in_cap);
			if (!in)
				abort();
		}
		pr = poll(&p, 1, remaining(deadline));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			r = timed_out(inst, method, timeout_ms, err);
			goto out;
		}
		n = recv(fd, in + in_len, in_cap - in_len - 1, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			r = tether_err_set(err, TETHER_ERR_CLOSED, TETHER_CAT_CONNECTION_RESET,
			                   "the tether-server daemon for instance '%s' closed the admin "
			                   "connection without answering '%s'%s%s: it may have stopped; "
			                   "check its log", inst->name, method, n < 0 ? ": " : "",
			                   n < 0 ? strerror(errno) : "");
			goto out;
		}
		in_len += (size_t)n;
		in[in_len] = '\0';
		nl = memchr(in, '\n', in_len);
		if (nl) {
			in_len = (size_t)(nl - in);
			break;
		}
		if (in_len > ANSWER_MAX) {
			r = tether_err_set(err, TETHER_ERR_PROTOCOL, TETHER_CAT_INTERNAL,
			                   "the daemon's answer to '%s' is over %u MiB: refused", method,
			                   ANSWER_MAX >> 20);
			goto out;
		}
	}
	ans = json_loadb(in, in_len, 0, &jerr);
	if (!json_is_object(ans)) {
		r = tether_err_set(err, TETHER_ERR_PROTOCOL, TETHER_CAT_INTERNAL,
		                   "the daemon's answer to '%s' is not a JSON object (%s): is %s a "
		                   "tether-server admin socket?", method, jerr.text, path);
		goto out;
	}
	if ((v = json_object_get(ans, "error")) != NULL) {
		r = map_error(v, inst, method, err);
		goto out;
	}
	v = json_object_get(ans, "id");
	if (!json_is_integer(v) || json_integer_value(v) != 1 || !json_object_get(ans, "result")) {
		r = tether_err_set(err, TETHER_ERR_PROTOCOL, TETHER_CAT_INTERNAL,
		                   "the daemon's answer to '%s' has no result for our request", method);
		goto out;
	}
	*result = json_incref(json_object_get(ans, "result"));
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	json_decref(req);
	json_decref(ans);
	free(line);
	free(in);
	free(path);
	return r;
}
