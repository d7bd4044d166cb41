#include "config.h"
#include <stdio.h>
#include <string.h>
#include "pem.h"
#include "util.h"

char *tether_pem_encode(const char *label, const unsigned char *der, size_t len)
{
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t out_len = 4 * ((len + 2) / 3), cap, i, col = 0;
	char *s, *p;

	cap = out_len + out_len / 64 + 2 + 2 * (strlen(label) + 32);
	s = p = tether_xmalloc(cap);
	p += sprintf(p, "-----BEGIN %s-----\n", label);
	for (i = 0; i < len; i += 3) {
		unsigned v = (unsigned)der[i] << 16;
		size_t rem = len - i;
		if (rem > 1)
			v |= (unsigned)der[i + 1] << 8;
		if (rem > 2)
			v |= der[i + 2];
		*p++ = b64[(v >> 18) & 63];
		*p++ = b64[(v >> 12) & 63];
		*p++ = rem > 1 ? b64[(v >> 6) & 63] : '=';
		*p++ = rem > 2 ? b64[v & 63] : '=';
		col += 4;
		if (col == 64) {
			*p++ = '\n';
			col = 0;
		}
	}
	if (col)
		*p++ = '\n';
	sprintf(p, "-----END %s-----\n", label);
	return s;
}
