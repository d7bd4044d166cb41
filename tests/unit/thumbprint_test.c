#include "config.h"
#include "test.h"
#include "thumbprint.h"
#include "error.h"

static const char *HEX = "3f4a9b0c1d2e3f405162738495a6b7c8d9eaf00112233445566778899000aabbcc";

static void parse_plain_lower(void **s)
{
	tether_thumbprint t;
	char out[TETHER_THUMBPRINT_HEX];
	(void)s;
	assert_int_equal(tether_thumbprint_parse("3f4a9b0c1d2e3f405162738495a6b7c8d9eaf00112233445566778899000aabb", &t, NULL), 0);
	tether_thumbprint_hex(&t, out);
	assert_string_equal(out, "3f4a9b0c1d2e3f405162738495a6b7c8d9eaf00112233445566778899000aabb");
	(void)HEX;
}

static void parse_upper_and_colons(void **s)
{
	tether_thumbprint a, b, c;
	(void)s;
	assert_int_equal(tether_thumbprint_parse("3F:4A:9B:0C:1D:2E:3F:40:51:62:73:84:95:A6:B7:C8:D9:EA:F0:01:12:23:34:45:56:67:78:89:90:00:AA:BB", &a, NULL), 0);
	assert_int_equal(tether_thumbprint_parse("3f4a9b0c1d2e3f405162738495a6b7c8d9eaf00112233445566778899000aabb", &b, NULL), 0);
	assert_int_equal(tether_thumbprint_parse("3F 4A 9B 0C 1D 2E 3F 40 51 62 73 84 95 A6 B7 C8 D9 EA F0 01 12 23 34 45 56 67 78 89 90 00 AA BB", &c, NULL), 0);
	assert_true(tether_thumbprint_equal(&a, &b));
	assert_true(tether_thumbprint_equal(&a, &c));
	b.b[31] ^= 1;
	assert_false(tether_thumbprint_equal(&a, &b));
}

static void reject_bad(void **s)
{
	tether_thumbprint t;
	tether_error e;
	(void)s;
	memset(&t, 0xaa, sizeof(t));
	assert_int_equal(tether_thumbprint_parse("abc", &t, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "3 hex digits, 64 are needed"));
	assert_int_equal(tether_thumbprint_parse("zz4a9b0c1d2e3f405162738495a6b7c8d9eaf0011223344556677889900aabb", &t, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "character 1 ('z')"));
	/* SHA-1 length gets a specific explanation */
	assert_int_equal(tether_thumbprint_parse("0123456789abcdef0123456789abcdef01234567", &t, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "SHA-1"));
	/* separators must sit between byte pairs */
	assert_int_equal(tether_thumbprint_parse(":3f4a9b0c1d2e3f405162738495a6b7c8d9eaf00112233445566778899000aabb", &t, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_thumbprint_parse("3:f4a9b0c1d2e3f405162738495a6b7c8d9eaf0011223344556677889900aabb", &t, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_thumbprint_parse("3f::4a9b0c1d2e3f405162738495a6b7c8d9eaf0011223344556677889900aabb", &t, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_thumbprint_parse("", &t, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_thumbprint_parse(NULL, &t, &e), TETHER_ERR_INVALID);
	/* out untouched on failure */
	{
		tether_thumbprint z;
		memset(&z, 0xaa, sizeof(z));
		assert_memory_equal(&t, &z, sizeof(z));
	}
}

static void too_long(void **s)
{
	tether_thumbprint t;
	tether_error e;
	char buf[300];
	(void)s;
	memset(buf, 'a', sizeof(buf) - 1);
	buf[sizeof(buf) - 1] = 0;
	assert_int_equal(tether_thumbprint_parse(buf, &t, &e), TETHER_ERR_INVALID);
	buf[66] = 0;
	assert_int_equal(tether_thumbprint_parse(buf, &t, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "66 hex digits"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parse_plain_lower),
		cmocka_unit_test(parse_upper_and_colons),
		cmocka_unit_test(reject_bad),
		cmocka_unit_test(too_long),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
