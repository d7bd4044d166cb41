#include "config.h"
#include "test.h"
#include "util.h"
#include "pem.h"
#include "error.h"

static void hostport(void **s)
{
	char *h = NULL;
	int port = 0;
	(void)s;
	assert_int_equal(tether_parse_hostport("127.0.0.1:10933", &h, &port, 0), 0);
	assert_string_equal(h, "127.0.0.1"); assert_int_equal(port, 10933); free(h);
	assert_int_equal(tether_parse_hostport("https://agent.example:443/", &h, &port, 0), 0);
	assert_string_equal(h, "agent.example"); assert_int_equal(port, 443); free(h);
	assert_int_equal(tether_parse_hostport("[::1]:5", &h, &port, 0), 0);
	assert_string_equal(h, "::1"); assert_int_equal(port, 5); free(h);
	assert_int_equal(tether_parse_hostport("host", &h, &port, 10933), 0);
	assert_int_equal(port, 10933); free(h);
	assert_int_equal(tether_parse_hostport("host", &h, &port, 0), TETHER_ERR_INVALID);
	assert_int_equal(tether_parse_hostport("host:0", &h, &port, 0), TETHER_ERR_INVALID);
	assert_int_equal(tether_parse_hostport("host:65536", &h, &port, 0), TETHER_ERR_INVALID);
	assert_int_equal(tether_parse_hostport("host:12x", &h, &port, 0), TETHER_ERR_INVALID);
	assert_int_equal(tether_parse_hostport("::1:80", &h, &port, 0), TETHER_ERR_INVALID);
	assert_int_equal(tether_parse_hostport(":80", &h, &port, 0), TETHER_ERR_INVALID);
	assert_int_equal(tether_parse_hostport("", &h, &port, 0), TETHER_ERR_INVALID);
	assert_int_equal(tether_parse_hostport("[::1", &h, &port, 0), TETHER_ERR_INVALID);
}

static void hex_and_ct(void **s)
{
	unsigned char b[3] = { 0x00, 0xab, 0xff };
	char out[16];
	(void)s;
	tether_hex(b, 3, out);
	assert_string_equal(out, "00abff");
	tether_hex_colons(b, 3, out);
	assert_string_equal(out, "00:AB:FF");
	assert_true(tether_ct_equal("abc", "abc", 3));
	assert_false(tether_ct_equal("abc", "abd", 3));
}

static void pem(void **s)
{
	unsigned char der[100];
	char *p;
	(void)s;
	memset(der, 'A', sizeof(der));
	p = tether_pem_encode("CERTIFICATE", der, 1);
	assert_string_equal(p, "-----BEGIN CERTIFICATE-----\nQQ==\n-----END CERTIFICATE-----\n");
	free(p);
	p = tether_pem_encode("CERTIFICATE", der, 48);
	assert_string_equal(p, "-----BEGIN CERTIFICATE-----\n"
	                    "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\n"
	                    "-----END CERTIFICATE-----\n");
	free(p);
}

static void iso(void **s)
{
	char b[32];
	(void)s;
	tether_iso8601(0, b, sizeof(b));
	assert_string_equal(b, "1970-01-01T00:00:00Z");
	tether_iso8601(1795305600, b, sizeof(b));
	assert_string_equal(b, "2026-11-22T00:00:00Z");
}

static void categories(void **s)
{
	int i;
	(void)s;
	assert_string_equal(tether_category_name(TETHER_CAT_UNTRUSTED), "untrusted");
	assert_string_equal(tether_category_name(TETHER_CAT_NO_SHARED_SIGALG), "no_shared_sigalg");
	assert_string_equal(tether_category_name(9999), "internal");
	assert_string_equal(tether_category_name(TETHER_CAT_PEER_PROTOCOL), "protocol_violation");
	assert_string_equal(tether_category_name(TETHER_CAT_LOCKED), "locked");
	/* hints that fit the failure, not the generic file hint */
	assert_non_null(strstr(tether_category_hint(TETHER_CAT_PEER_PROTOCOL), "not a tether peer of a compatible version"));
	assert_non_null(strstr(tether_category_hint(TETHER_CAT_LOCKED), "another tether-server on the same state directory"));
	assert_null(strstr(tether_category_hint(TETHER_CAT_PEER_PROTOCOL), "certificate"));
	assert_string_equal(tether_category_name(TETHER_CAT_TOKEN_UNAVAILABLE), "token_unavailable");
	assert_non_null(strstr(tether_category_hint(TETHER_CAT_TOKEN_UNAVAILABLE), "retries every 2 s"));
	assert_null(strstr(tether_category_hint(TETHER_CAT_TOKEN_UNAVAILABLE), "cipher"));
	for (i = 0; i < TETHER_CAT__COUNT; i++) {
		assert_non_null(tether_category_hint(i));
		assert_true(strlen(tether_category_name(i)) > 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hostport),
		cmocka_unit_test(hex_and_ct),
		cmocka_unit_test(pem),
		cmocka_unit_test(iso),
		cmocka_unit_test(categories),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
