#include "config.h"
#include <stdio.h>
#include <stdlib.h>
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

int tether_base64_decode(const char *in, unsigned char **out, size_t *len)
{
	size_t n = strlen(in), o = 0, i;
	unsigned acc = 0;
	int bits = 0, pad = 0;
	unsigned char *buf = tether_xmalloc(n / 4 * 3 + 4);

	for (i = 0; i < n; i++) {
		int c = (unsigned char)in[i], v;
		if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
			continue;
		if (c == '=') {
			pad++;
			continue;
		}
		if (pad)
			goto bad;
		if (c >= 'A' && c <= 'Z') v = c - 'A';
		else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
		else if (c >= '0' && c <= '9') v = c - '0' + 52;
		else if (c == '+') v = 62;
		else if (c == '/') v = 63;
		else goto bad;
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[o++] = (unsigned char)(acc >> bits);
		}
	}
	if (pad > 2)
		goto bad;
	*out = buf;
	*len = o;
	return 0;
bad:
	free(buf);
	return -1;
}

char *tether_base64_encode(const unsigned char *in, size_t len)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *out = tether_xmalloc(4 * ((len + 2) / 3) + 1), *p = out;
	size_t i;

	for (i = 0; i < len; i += 3) {
		unsigned v = (unsigned)in[i] << 16;
		size_t rem = len - i;
		if (rem > 1) v |= (unsigned)in[i + 1] << 8;
		if (rem > 2) v |= in[i + 2];
		*p++ = b64[(v >> 18) & 63];
		*p++ = b64[(v >> 12) & 63];
		*p++ = rem > 1 ? b64[(v >> 6) & 63] : '=';
		*p++ = rem > 2 ? b64[v & 63] : '=';
	}
	*p = '\0';
	return out;
}
