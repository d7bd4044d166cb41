/*
 * libFuzzer harness for thumbprint parsing (core/thumbprint.c): every pin
 * an operator types or a config, trust file or JSON request carries.
 * Oracles: a failure always has a message; what parses prints as 64
 * lower-case hex digits that parse back to the same bytes, and the
 * colon-separated upper-case form of it parses too.
 * Built and run by 'make fuzz-smoke' (tests/fuzz/Makefile.am).
 */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "thumbprint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tether_thumbprint t, back;
	tether_error err;
	char hex[TETHER_THUMBPRINT_HEX], colon[3 * 32];
	char *s;
	size_t i;

	if (size > 4096)
		return 0;
	s = malloc(size + 1);
	if (s == NULL)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	memset(&err, 0, sizeof(err));
	if (tether_thumbprint_parse(s, &t, &err) != 0) {
		if (err.detail[0] == '\0')
			abort();    /* every failure says why */
		goto out;
	}
	tether_thumbprint_hex(&t, hex);
	if (strlen(hex) != 64)
		abort();
	for (i = 0; i < 64; i++)
		if (!isxdigit((unsigned char)hex[i]) || isupper((unsigned char)hex[i]))
			abort();
	if (tether_thumbprint_parse(hex, &back, &err) != 0 ||
	    !tether_thumbprint_equal(&t, &back))
		abort();
	for (i = 0; i < 32; i++) {
		colon[3 * i] = (char)toupper((unsigned char)hex[2 * i]);
		colon[3 * i + 1] = (char)toupper((unsigned char)hex[2 * i + 1]);
		colon[3 * i + 2] = i == 31 ? '\0' : ':';
	}
	if (tether_thumbprint_parse(colon, &back, &err) != 0 ||
	    !tether_thumbprint_equal(&t, &back))
		abort();
out:
	free(s);
	return 0;
}
