/*
 * ossl_err.c: fill a tether_error from a failure in OpenSSL-based code.
 *
 * detail = the caller's message, then every entry of the thread's OpenSSL
 * error queue ("library: reason (data)"), joined by "; ", truncated with
 * "..." to fit TETHER_ERROR_DETAIL_MAX.  The queue is always drained, so a
 * stale error never leaks into the next failure's detail.
 *
 * Never pass secrets in fmt's arguments: detail is shown to the user.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "ossl_common.h"

/* Append src to dst (capacity cap, currently *used long), marking a
 * truncation with "...".  Returns 0 when it fitted, -1 when truncated. */
static int append(char *dst, size_t cap, size_t *used, const char *src)
{
	size_t n = strlen(src);

	if (*used >= cap - 1)
		return -1;
	if (n <= cap - 1 - *used) {
		memcpy(dst + *used, src, n);
		*used += n;
		dst[*used] = '\0';
		return 0;
	}
	n = cap - 1 - *used;
	memcpy(dst + *used, src, n);
	*used += n;
	dst[*used] = '\0';
	if (cap > 4)
		memcpy(dst + cap - 4, "...", 4);
	*used = cap - 1;
	return -1;
}

int ossl_err_set(tether_error *err, int code, int category,
                 const char *fmt, ...)
{
	char buf[TETHER_ERROR_DETAIL_MAX];
	char ent[256];
	size_t used = 0;
	int truncated = 0, first = 1;
	unsigned long e;
	const char *data;
	int flags;
	va_list ap;

	buf[0] = '\0';
	if (fmt != NULL) {
		int n;

		va_start(ap, fmt);
		n = vsnprintf(buf, sizeof(buf), fmt, ap);
		va_end(ap);
		if (n < 0) {
			buf[0] = '\0';
		} else if ((size_t)n >= sizeof(buf)) {
			memcpy(buf + sizeof(buf) - 4, "...", 4);
			truncated = 1;
		}
		used = strlen(buf);
	}

	while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
		const char *lib, *reason;

		if (truncated)
			continue;       /* keep draining */
		lib = ERR_lib_error_string(e);
		reason = ERR_reason_error_string(e);
		if (reason != NULL)
			snprintf(ent, sizeof(ent), "%s%s%s", lib ? lib : "",
			         lib ? ": " : "", reason);
		else
			snprintf(ent, sizeof(ent), "%s%serror %08lx",
			         lib ? lib : "", lib ? ": " : "", e);
		if ((flags & ERR_TXT_STRING) && data != NULL && *data != '\0') {
			size_t l = strlen(ent);

			snprintf(ent + l, sizeof(ent) - l, " (%s)", data);
		}
		if (append(buf, sizeof(buf), &used,
		           first ? (used ? ": " : "") : "; ") < 0 ||
		    append(buf, sizeof(buf), &used, ent) < 0)
			truncated = 1;
		first = 0;
	}

	if (err != NULL) {
		err->code = code;
		err->category = category;
		memcpy(err->detail, buf, sizeof(err->detail));
	}
	return code;
}
