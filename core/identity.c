#include "config.h"
#include <stdio.h>
#include <string.h>
#include <ctype.h>
#include <time.h>
#include "error.h"
#include "identity.h"
#include "util.h"

const char *const tether_slot_names[TETHER_SLOT__COUNT] = { "current", "staged", "previous" };
const char *const tether_key_type_names[TETHER_KEY__COUNT] = {
	"rsa2048", "rsa3072", "rsa4096", "ec-p256", "ec-p384"
};

int tether_key_type_parse(const char *s)
{
	int i;
	for (i = 0; s && i < TETHER_KEY__COUNT; i++)
		if (!strcmp(s, tether_key_type_names[i]))
			return i;
	return -1;
}

int tether_thumbprint_of(tether_prov *p, const unsigned char *der, size_t len,
                         tether_thumbprint *out, tether_error *err)
{
	unsigned char md[64];
	size_t mdlen = sizeof(md);
	int r;

	r = p->t->digest(TETHER_DIGEST_SHA256, der, len, md, &mdlen, err);
	if (r < 0)
		return r;
	if (mdlen != TETHER_SHA256_LEN)
		return tether_err_set(err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
		                      "provider returned a %zu-byte SHA-256", mdlen);
	memcpy(out->b, md, TETHER_SHA256_LEN);
	return 0;
}

int tether_cert_summary(tether_prov *p, const unsigned char *der, size_t len,
                        tether_id_summary *out, tether_error *err)
{
	tether_id_summary s;
	tether_thumbprint tp;
	unsigned char md[64];
	size_t mdlen = sizeof(md);
	int r;

	memset(&s, 0, sizeof(s));
	r = tether_thumbprint_of(p, der, len, &tp, err);
	if (r < 0)
		return r;
	tether_thumbprint_hex(&tp, s.sha256);
	r = p->t->digest(TETHER_DIGEST_SHA1, der, len, md, &mdlen, err);
	if (r < 0)
		return r;
	tether_hex(md, mdlen < TETHER_SHA1_LEN ? mdlen : TETHER_SHA1_LEN, s.sha1);
	r = p->t->cert_info(der, len, &s.info, err);
	if (r < 0)
		return r;
	tether_iso8601(s.info.not_before, s.not_before, sizeof(s.not_before));
	tether_iso8601(s.info.not_after, s.not_after, sizeof(s.not_after));
	s.expired = s.info.not_after < (int64_t)time(NULL);
	s.present = 1;
	*out = s;
	return 0;
}

int tether_slot_summary(tether_prov *p, int slot, tether_id_summary *out,
                        tether_error *err)
{
	tether_identity *id = NULL;
	const unsigned char *der;
	size_t len;
	int r;

	r = p->t->identity_load(p->ctx, slot, &id, err);
	if (r == TETHER_ERR_NOT_FOUND) {
		memset(out, 0, sizeof(*out));
		tether_err_clear(err);
		return 0;
	}
	if (r < 0)
		return r;
	r = p->t->identity_cert_der(id, &der, &len);
	if (r == 0)
		r = tether_cert_summary(p, der, len, out, err);
	p->t->identity_free(id);
	return r;
}

json_t *tether_id_summary_json(const tether_id_summary *s)
{
	json_t *o = json_object();

	json_object_set_new(o, "sha256", json_string(s->sha256));
	json_object_set_new(o, "sha1", json_string(s->sha1));
	json_object_set_new(o, "cert_signature_algorithm",
	                    json_string(s->info.cert_signature_algorithm));
	json_object_set_new(o, "key_type", json_string(s->info.key_type));
	json_object_set_new(o, "key_bits", json_integer(s->info.key_bits));
	if (s->info.curve[0])
		json_object_set_new(o, "curve", json_string(s->info.curve));
	json_object_set_new(o, "subject", json_string(s->info.subject));
	json_object_set_new(o, "serial", json_string(s->info.serial_hex));
	json_object_set_new(o, "not_before", json_string(s->not_before));
	json_object_set_new(o, "not_after", json_string(s->not_after));
	json_object_set_new(o, "expired", json_boolean(s->expired));
	return o;
}

void tether_id_summary_print(FILE *f, const tether_id_summary *s, const char *indent)
{
	fprintf(f, "%sSHA-256 thumbprint: %s\n", indent, s->sha256);
	fprintf(f, "%sSHA-1 (reference only, never trusted): %s\n", indent, s->sha1);
	fprintf(f, "%sSignature algorithm: %s\n", indent, s->info.cert_signature_algorithm);
	fprintf(f, "%sKey: %s %d bits%s%s\n", indent, s->info.key_type, s->info.key_bits,
	        s->info.curve[0] ? " " : "", s->info.curve);
	fprintf(f, "%sValid: %s to %s%s\n", indent, s->not_before, s->not_after,
	        s->expired ? " (EXPIRED: still trusted by its pin, but renew it with new-certificate)" : "");
}

/* Case-insensitive substring test (strcasestr is not portable). */
static int contains_ci(const char *hay, const char *needle)
{
	char low[128];
	size_t i;

	for (i = 0; hay[i] && i < sizeof(low) - 1; i++)
		low[i] = (char)tolower((unsigned char)hay[i]);
	low[i] = '\0';
	return strstr(low, needle) != NULL;
}

json_t *tether_cert_flags(const char *sig_alg, const char *key_type, int key_bits, int64_t not_after)
{
	json_t *f = json_array();
	time_t now = time(NULL);

	if (sig_alg && contains_ci(sig_alg, "md5"))
		json_array_append_new(f, json_string("md5_signature"));
	else if (sig_alg && contains_ci(sig_alg, "sha1"))
		json_array_append_new(f, json_string("sha1_signature"));
	if (key_type && !strcmp(key_type, "rsa") && key_bits > 0 && key_bits < 2048)
		json_array_append_new(f, json_string("rsa_key_too_small"));
	if (not_after > 0 && not_after < now)
		json_array_append_new(f, json_string("expired"));
	else if (not_after > 0 && not_after < now + 30 * 86400)
		json_array_append_new(f, json_string("expires_within_30_days"));
	return f;
}

const char *tether_cert_flags_advice(json_t *flags)
{
	size_t i;
	json_t *v;

	json_array_foreach(flags, i, v) {
		const char *f = json_string_value(v);
		if (!strcmp(f, "sha1_signature") || !strcmp(f, "md5_signature"))
			return "the certificate is signed with a broken hash: it still works because the pin is the "
			       "trust, but regenerate it ('new-certificate' there, or 'tether-server "
			       "rotate-agent-certificate TARGET'); tether never generates SHA-1 certificates";
		if (!strcmp(f, "rsa_key_too_small"))
			return "the RSA key is shorter than 2048 bits: regenerate the certificate";
		if (!strcmp(f, "expired"))
			return "the certificate has expired: it still connects (the pin is the trust) but renew it";
		if (!strcmp(f, "expires_within_30_days"))
			return "the certificate expires within 30 days: renew it (it keeps working after expiry, "
			       "but scanners and policies will flag it)";
	}
	return NULL;
}
