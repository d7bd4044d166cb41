#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "audit.h"
#include "error.h"
#include "util.h"

/* A deferred log writes out at this size without waiting for a flush. */
#define AUDIT_BUF_MAX (64 * 1024)

struct tether_audit {
	int fd;
	char *path;
	pthread_mutex_t lock;           /* the buffer; loops of several threads write */
	int deferred;
	char *buf;                      /* whole lines not written yet */
	size_t len, cap;
	time_t when;                    /* the second when_s names */
	char when_s[32];
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
	pthread_mutex_init(&a->lock, NULL);
	*out = a;
	return 0;
}

void tether_audit_close(tether_audit *a)
{
	if (!a)
		return;
	tether_audit_flush(a, NULL);
	if (a->fd >= 0)
		close(a->fd);
	pthread_mutex_destroy(&a->lock);
	free(a->buf);
	free(a->path);
	free(a);
}

const char *tether_audit_path(const tether_audit *a)
{
	return a ? a->path : NULL;
}

void tether_audit_set_deferred(tether_audit *a, int on)
{
	if (!a)
		return;
	if (!on)
		tether_audit_flush(a, NULL);
	pthread_mutex_lock(&a->lock);
	a->deferred = on;
	pthread_mutex_unlock(&a->lock);
}

/* Write out the buffer (caller holds the lock).  What cannot be written
 * is dropped, as the line alone would have been. */
static int write_out(tether_audit *a, tether_error *err)
{
	size_t off = 0;
	int r = 0;

	while (off < a->len) {
		ssize_t w = write(a->fd, a->buf + off, a->len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
			                   "cannot append to the audit log %s: %s: check free space "
			                   "and permissions of the state directory",
			                   a->path, w < 0 ? strerror(errno) : "short write");
			break;
		}
		off += (size_t)w;
	}
	a->len = 0;
	return r;
}

int tether_audit_flush(tether_audit *a, tether_error *err)
{
	int r = 0;

	if (!a)
		return 0;
	pthread_mutex_lock(&a->lock);
	if (a->len)
		r = write_out(a, err);
	pthread_mutex_unlock(&a->lock);
	return r;
}

static void reserve(tether_audit *a, size_t more)
{
	if (a->len + more <= a->cap)
		return;
	a->cap = a->cap ? a->cap : 1024;
	while (a->cap < a->len + more)
		a->cap *= 2;
	a->buf = realloc(a->buf, a->cap);
	if (!a->buf)
		abort();
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned c = p[0], cp, min;
	size_t k, i;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		k = 2; cp = c & 0x1f; min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		k = 3; cp = c & 0x0f; min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		k = 4; cp = c & 0x07; min = 0x10000;
	} else {
		return 0;
	}
	if (n < k)
		return 0;
	for (i = 1; i < k; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return k;
}

/* "key":"value" with JSON escapes; bytes that are not UTF-8 become
 * U+FFFD, so a line is always valid JSON. */
static void put_member(tether_audit *a, int first, const char *key, const char *v)
{
	const unsigned char *p = (const unsigned char *)v;
	size_t n = strlen(v), i = 0, k;

	size_t nk = strlen(key);

	/* worst case: every byte as \ufffd (6 bytes) */
	reserve(a, nk + 6 * n + 8);
	if (!first)
		a->buf[a->len++] = ',';
	a->buf[a->len++] = '"';
	memcpy(a->buf + a->len, key, nk);
	a->len += nk;
	memcpy(a->buf + a->len, "\":\"", 3);
	a->len += 3;
	while (i < n) {
		unsigned char c = p[i];
		size_t j = i;
		/* a run of printable ASCII other than '"' and '\\' goes as is,
		 * in one copy (most of a line: this loop is per request) */
		while (j < n && p[j] >= 0x20 && p[j] < 0x80 && p[j] != '"' && p[j] != '\\')
			j++;
		if (j > i) {
			memcpy(a->buf + a->len, p + i, j - i);
			a->len += j - i;
			i = j;
			continue;
		}
		if (c == '"' || c == '\\') {
			a->buf[a->len++] = '\\';
			a->buf[a->len++] = (char)c;
			i++;
		} else if (c < 0x20) {
			const char *e = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" :
			                c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
			if (e) {
				memcpy(a->buf + a->len, e, 2);
				a->len += 2;
			} else {
				a->len += (size_t)sprintf(a->buf + a->len, "\\u%04X", c);
			}
			i++;
		} else if ((k = utf8_len(p + i, n - i)) == 0) {
			memcpy(a->buf + a->len, "\\ufffd", 6);
			a->len += 6;
			i++;
		} else {
			memcpy(a->buf + a->len, p + i, k);
			a->len += k;
			i += k;
		}
	}
	a->buf[a->len++] = '"';
}

int tether_audit_write(tether_audit *a, const char *who, const char *what,
                       const char *target, const char *result,
                       const char *category, const char *message,
                       tether_error *err)
{
	time_t now;
	int r = 0;

	if (!a)
		return 0;
	now = time(NULL);
	pthread_mutex_lock(&a->lock);
	if (now != a->when || !a->when_s[0]) {
		tether_iso8601((int64_t)now, a->when_s, sizeof(a->when_s));
		a->when = now;
	}
	reserve(a, 1);
	a->buf[a->len++] = '{';
	put_member(a, 1, "time", a->when_s);
	put_member(a, 0, "who", who ? who : "unknown");
	put_member(a, 0, "what", what ? what : "unknown");
	if (target) {
		put_member(a, 0, "target", target);
	} else {
		reserve(a, 16);
		memcpy(a->buf + a->len, ",\"target\":null", 14);
		a->len += 14;
	}
	put_member(a, 0, "result", result ? result : "unknown");
	if (category)
		put_member(a, 0, "category", category);
	if (message)
		put_member(a, 0, "error", message);
	reserve(a, 2);
	a->buf[a->len++] = '}';
	a->buf[a->len++] = '\n';
	if (!a->deferred || a->len >= AUDIT_BUF_MAX)
		r = write_out(a, err);
	pthread_mutex_unlock(&a->lock);
	return r;
}
