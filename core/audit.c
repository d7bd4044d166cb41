#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include "audit.h"
#include "error.h"
#include "util.h"

struct tether_audit {
	int fd;
	char *path;
};

int tether_audit_open(const char *path, tether_audit **out, tether_error *err)
{
	tether_audit *a;
	struct stat st;
	int fd;

	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return tether_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                      TETHER_CAT_IO, "cannot open the audit log %s: %s: check that "
		                      "the state directory belongs to the user the daemon runs as",
		                      path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "the audit log %s is not a regular file: move it aside", path);
	}
	if ((st.st_mode & 077) && fchmod(fd, 0600) < 0) {
		int e = errno;
		close(fd);
		return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
		                      "the audit log %s is readable by others (mode %03o) and cannot be "
		                      "narrowed to 0600: %s: fix its owner or mode",
		                      path, (unsigned)(st.st_mode & 0777), strerror(e));
	}
	a = tether_xcalloc(1, sizeof(*a));
	a->fd = fd;
	a->path = tether_strdup(path);
	*out = a;
	return 0;
}

void tether_audit_close(tether_audit *a)
{
	if (!a)
		return;
	if (a->fd >= 0)
		close(a->fd);
	free(a->path);
	free(a);
}

const char *tether_audit_path(const tether_audit *a)
{
	return a ? a->path : NULL;
}

int tether_audit_write(tether_audit *a, const char *who, const char *what,
                       const char *target, const char *result,
                       const char *category, const char *message,
                       tether_error *err)
{
	char when[32], *line = NULL;
	json_t *o;
	size_t len, off = 0;
	int r = 0;

	if (!a)
		return 0;
	tether_iso8601((int64_t)time(NULL), when, sizeof(when));
	o = json_object();
	json_object_set_new(o, "time", json_string(when));
	json_object_set_new(o, "who", json_string(who ? who : "unknown"));
	json_object_set_new(o, "what", json_string(what ? what : "unknown"));
	json_object_set_new(o, "target", target ? json_string(target) : json_null());
	json_object_set_new(o, "result", json_string(result ? result : "unknown"));
	if (category)
		json_object_set_new(o, "category", json_string(category));
	if (message)
		json_object_set_new(o, "error", json_string(message));
	line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!line)
		return tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                      "cannot format an audit record for '%s'", what ? what : "?");
	len = strlen(line);
	line[len++] = '\n'; /* replaces the NUL: json_dumps never emits a newline in compact mode */
	while (off < len) {
		ssize_t w = write(a->fd, line + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
			                   "cannot append to the audit log %s: %s: check free space "
			                   "and permissions of the state directory",
			                   a->path, w < 0 ? strerror(errno) : "short write");
			goto out;
		}
		off += (size_t)w;
	}
out:
	free(line);
	return r;
}
