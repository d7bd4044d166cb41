#include "config.h"
#include <string.h>
#include "error.h"
#include "thumbprint.h"
#include "util.h"

static int hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

int tether_thumbprint_parse(const char *s, tether_thumbprint *out, tether_error *err)
{
	tether_thumbprint t;
	size_t i, ndig = 0, len;
	int hi = -1;

	if (!s)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "no thumbprint given");
	len = strlen(s);
	if (len > 200)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.40s...' is not a SHA-256 thumbprint: too long (%zu characters)", s, len);
	for (i = 0; i < len; i++) {
		int c = (unsigned char)s[i], v;
		if (c == ':' || c == ' ') {
			/* separators only between byte pairs */
			if (hi >= 0 || i == 0 || i == len - 1 || s[i + 1] == ':' || s[i + 1] == ' ')
				goto bad_sep;
			continue;
		}
		v = hexval(c);
		if (v < 0)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "'%s' is not a SHA-256 thumbprint: character %zu ('%c') is not a hex digit",
			                      s, i + 1, c >= 32 && c < 127 ? c : '?');
		if (ndig >= 64) {
			ndig++;
			continue;
		}
		if (hi < 0) {
			hi = v;
		} else {
			t.b[ndig / 2] = (unsigned char)(hi << 4 | v);
			hi = -1;
		}
		ndig++;
	}
	if (ndig != 64)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%s' is not a SHA-256 thumbprint: it has %zu hex digits, 64 are needed%s",
		                      s, ndig, ndig == 40 ? " (this looks like a SHA-1 thumbprint, which tether "
		                      "shows for reference but never trusts)" : "");
	*out = t;
	return 0;
bad_sep:
	return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
	                      "'%s' is not a SHA-256 thumbprint: separator at character %zu is not between two hex pairs",
	                      s, i + 1);
}

void tether_thumbprint_hex(const tether_thumbprint *t, char out[TETHER_THUMBPRINT_HEX])
{
	tether_hex(t->b, sizeof(t->b), out);
}

int tether_thumbprint_equal(const tether_thumbprint *a, const tether_thumbprint *b)
{
	return tether_ct_equal(a->b, b->b, sizeof(a->b));
}
