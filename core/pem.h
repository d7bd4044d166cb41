/* PEM encoding of a DER certificate (base64 with 64-column lines). */
#ifndef TETHER_PEM_H
#define TETHER_PEM_H
#include <stddef.h>
/* Returns a malloc'd "-----BEGIN <label>-----\n...-----END <label>-----\n". */
char *tether_pem_encode(const char *label, const unsigned char *der, size_t len);
/* Decode standard base64 (whitespace ignored).  *out is malloc'd. */
int tether_base64_decode(const char *in, unsigned char **out, size_t *len);
/* Encode to standard base64 (malloc'd, NUL-terminated). */
char *tether_base64_encode(const unsigned char *in, size_t len);
#endif
