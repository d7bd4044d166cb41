/*
 * libFuzzer harness for the identity import path shared by the openssl
 * and pkcs11 providers (providers/common/ossl_import.c): the PKCS#12 or
 * PEM an operator imports, parsed by the provider's identity_peek and
 * identity_import before anything is stored.
 * Input: byte 0 picks the password (none, empty, "fuzz"); the rest is the
 * file.  Oracles: every failure has a message; what is accepted is a
 * certificate whose key matches (checked again here) and which encodes.
 * Built and run by 'make fuzz-smoke' (tests/fuzz/Makefile.am).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "ossl_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const pw[] = { NULL, "", "fuzz", "fuzz" };
	tether_error err;
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;

	if (size < 1)
		return 0;
	memset(&err, 0, sizeof(err));
	if (ossl_parse_identity(NULL, data + 1, size - 1, pw[data[0] & 3], &cert,
	                        &key, &err) != 0) {
		if (err.detail[0] == '\0')
			abort();
		ERR_clear_error();
		return 0;
	}
	if (cert == NULL || key == NULL || X509_check_private_key(cert, key) != 1 ||
	    i2d_X509(cert, NULL) <= 0)
		abort();
	X509_free(cert);
	EVP_PKEY_free(key);
	ERR_clear_error();
	return 0;
}
