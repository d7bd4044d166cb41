/* Identity summaries for the user: thumbprints and certificate fields of
 * a provider's slots, as text and as JSON (DESIGN.md's names). */
#ifndef TETHER_IDENTITY_H
#define TETHER_IDENTITY_H

#include <jansson.h>
#include "loader.h"
#include "thumbprint.h"

typedef struct tether_id_summary {
	int present;
	char sha256[TETHER_THUMBPRINT_HEX];
	char sha1[2 * TETHER_SHA1_LEN + 1];
	tether_cert_info info;
	char not_before[32];           /* ISO 8601 UTC */
	char not_after[32];
	int expired;
} tether_id_summary;

extern const char *const tether_slot_names[TETHER_SLOT__COUNT];
extern const char *const tether_key_type_names[TETHER_KEY__COUNT];
/* "rsa2048" -> TETHER_KEY_RSA2048; -1 if unknown. */
int tether_key_type_parse(const char *s);

/* SHA-256 thumbprint of a certificate's DER, through the provider. */
int tether_thumbprint_of(tether_prov *p, const unsigned char *der, size_t len,
                         tether_thumbprint *out, tether_error *err);
#define tether_thumbprint_of_der(p, der, len, out) tether_thumbprint_of((p), (der), (len), (out), NULL)
/* Summary of a DER certificate. */
int tether_cert_summary(tether_prov *p, const unsigned char *der, size_t len,
                        tether_id_summary *out, tether_error *err);
/* Summary of a slot; present = 0 if the slot is empty. */
int tether_slot_summary(tether_prov *p, int slot, tether_id_summary *out,
                        tether_error *err);
json_t *tether_id_summary_json(const tether_id_summary *s);
/* Weak or expiring: an array of "sha1_signature", "md5_signature",
 * "rsa_key_too_small", "expired", "expires_within_30_days" (may be empty). */
json_t *tether_cert_flags(const char *sig_alg, const char *key_type, int key_bits, int64_t not_after);
/* One line telling what to do about the flags, or NULL if none. */
const char *tether_cert_flags_advice(json_t *flags);
/* Human text, several lines, each prefixed by indent. */
void tether_id_summary_print(FILE *f, const tether_id_summary *s, const char *indent);

#endif
