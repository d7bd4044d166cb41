/* Thumbprints: SHA-256 of a certificate's DER, as 64 hex digits. */
#ifndef TETHER_THUMBPRINT_H
#define TETHER_THUMBPRINT_H

#include <stddef.h>
#include "tether/provider.h"

#define TETHER_THUMBPRINT_HEX 65   /* 64 digits + NUL */

typedef struct tether_thumbprint {
	unsigned char b[TETHER_SHA256_LEN];
} tether_thumbprint;

/* Parse 64 hex digits, either case, with or without ':' (or spaces)
 * between byte pairs.  On failure err->detail names the bad input and
 * why (wrong length, bad character at position N). */
int tether_thumbprint_parse(const char *s, tether_thumbprint *out, tether_error *err);
/* 64 lower-case hex digits. */
void tether_thumbprint_hex(const tether_thumbprint *t, char out[TETHER_THUMBPRINT_HEX]);
/* Constant-time compare: 1 equal, 0 not. */
int tether_thumbprint_equal(const tether_thumbprint *a, const tether_thumbprint *b);

#endif
