/* PEM encoding of a DER certificate (base64 with 64-column lines). */
#ifndef TETHER_PEM_H
#define TETHER_PEM_H
#include <stddef.h>
/* Returns a malloc'd "-----BEGIN <label>-----\n...-----END <label>-----\n". */
char *tether_pem_encode(const char *label, const unsigned char *der, size_t len);
#endif
