#include "config.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <errno.h>
#include "tether/provider.h"
#include "util.h"

static void oom(void)
{
	fputs("tether: out of memory\n", stderr);
	abort();
}

void *tether_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom();
	return p;
}

void *tether_xcalloc(size_t n, size_t m)
{
	void *p = calloc(n ? n : 1, m ? m : 1);
	if (!p)
		oom();
	return p;
}

char *tether_strdup(const char *s)
{
	char *d = strdup(s ? s : "");
	if (!d)
		oom();
	return d;
}

char *tether_asprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0)
		oom();
	return s;
}

void tether_hex(const unsigned char *in, size_t len, char *out)
{
	static const char hx[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < len; i++) {
		out[2 * i] = hx[in[i] >> 4];
		out[2 * i + 1] = hx[in[i] & 15];
	}
	out[2 * len] = '\0';
}

void tether_hex_colons(const unsigned char *in, size_t len, char *out)
{
	static const char hx[] = "0123456789ABCDEF";
	size_t i, o = 0;

	for (i = 0; i < len; i++) {
		if (i)
			out[o++] = ':';
		out[o++] = hx[in[i] >> 4];
		out[o++] = hx[in[i] & 15];
	}
	out[o] = '\0';
}

void tether_wipe(void *p, size_t len)
{
	if (p && len)
		explicit_bzero(p, len);
}

void tether_free_secret(char *s)
{
	if (!s)
		return;
	tether_wipe(s, strlen(s));
	free(s);
}

void tether_free_wiped(void *p, size_t len)
{
	if (!p)
		return;
	tether_wipe(p, len);
	free(p);
}

void tether_iso8601(int64_t t, char *out, size_t cap)
{
	struct tm tm;
	time_t tt = (time_t)t;

	if (!gmtime_r(&tt, &tm)) {
		snprintf(out, cap, "invalid");
		return;
	}
	strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int tether_ct_equal(const void *a, const void *b, size_t len)
{
	const volatile unsigned char *x = a, *y = b;
	unsigned char d = 0;
	size_t i;

	for (i = 0; i < len; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}

int tether_parse_hostport(const char *s, char **host, int *port, int default_port)
{
	const char *p = s, *h, *he, *colon;
	char *end;
	long v;
	size_t hl;

	if (!s || !*s)
		return TETHER_ERR_INVALID;
	if (!strncasecmp(p, "https://", 8))
		p += 8;
	if (*p == '[') {
		h = p + 1;
		he = strchr(h, ']');
		if (!he)
			return TETHER_ERR_INVALID;
		colon = he[1] == ':' ? he + 1 : NULL;
		if (!colon && he[1] && strcmp(he + 1, "/"))
			return TETHER_ERR_INVALID;
	} else {
		h = p;
		colon = strrchr(p, ':');
		he = colon ? colon : p + strcspn(p, "/");
		if (colon && strchr(h, ':') != colon)
			return TETHER_ERR_INVALID; /* bare IPv6 needs brackets */
	}
	hl = (size_t)(he - h);
	if (hl == 0 || hl > 253)
		return TETHER_ERR_INVALID;
	if (colon) {
		errno = 0;
		v = strtol(colon + 1, &end, 10);
		if (errno || end == colon + 1 || v < 1 || v > 65535 ||
		    (*end && strcmp(end, "/")))
			return TETHER_ERR_INVALID;
		*port = (int)v;
	} else {
		if (default_port <= 0)
			return TETHER_ERR_INVALID;
		*port = default_port;
	}
	*host = tether_xmalloc(hl + 1);
	memcpy(*host, h, hl);
	(*host)[hl] = '\0';
	return 0;
}

uint64_t tether_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
