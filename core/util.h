/* Small helpers: strings, hex, wiping, time. */
#ifndef TETHER_UTIL_H
#define TETHER_UTIL_H

#include <stddef.h>
#include <stdint.h>

char *tether_strdup(const char *s);              /* aborts on OOM */
char *tether_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *tether_xmalloc(size_t n);
void *tether_xcalloc(size_t n, size_t m);

/* Lower-case hex of len bytes into out (2*len+1 bytes). */
void tether_hex(const unsigned char *in, size_t len, char *out);
/* Hex with ':' between bytes, upper case (Windows display). */
void tether_hex_colons(const unsigned char *in, size_t len, char *out);

/* Wipe memory in a way the compiler keeps. */
void tether_wipe(void *p, size_t len);
/* Wipe a NUL-terminated secret string and free it. */
void tether_free_secret(char *s);
/* Wipe len bytes and free. */
void tether_free_wiped(void *p, size_t len);

/* ISO 8601 UTC "2026-11-22T23:59:00Z" of t. */
void tether_iso8601(int64_t t, char *out, size_t cap);

/* Constant-time equality of two buffers of equal length. */
int tether_ct_equal(const void *a, const void *b, size_t len);

/* Parse "HOST:PORT", "[V6]:PORT" or "https://HOST:PORT[/]".  Allocates
 * *host.  Returns 0 or TETHER_ERR_INVALID. */
int tether_parse_hostport(const char *s, char **host, int *port, int default_port);

/* Monotonic milliseconds. */
uint64_t tether_now_ms(void);

#endif
