#include "config.h"
#include "test.h"
#include "loader.h"
#include "util.h"

static char *mock_path(const char *name)
{
	const char *b = getenv("TOP_BUILDDIR");
	return tether_asprintf("%s/tests/unit/.libs/mock-%s.so", b ? b : ".", name);
}

static void good(void **s)
{
	char *p = mock_path("good");
	tether_prov *pv = NULL;
	tether_error e;
	unsigned char b[4];
	(void)s;
	assert_int_equal(tether_provider_load(p, NULL, &pv, &e), 0);
	assert_string_equal(pv->t->name, "mock");
	assert_true(TETHER_PROV_HAS(pv, random_bytes));
	assert_false(TETHER_PROV_HAS(pv, identity_generate));
	pv->t->random_bytes(b, 4);
	assert_int_equal(b[0], 0x42);
	tether_provider_unload(pv);
	free(p);
}

static void bad_abi(void **s)
{
	char *p = mock_path("badabi");
	tether_prov *pv = NULL;
	tether_error e;
	(void)s;
	assert_int_equal(tether_provider_load(p, NULL, &pv, &e), TETHER_ERR_ABI);
	assert_non_null(strstr(e.detail, "ABI 99."));  /* 99.<this header's minor> */
	assert_non_null(strstr(e.detail, "needs 1.x"));
	assert_null(pv);
	free(p);
}

static void no_symbol(void **s)
{
	char *p = mock_path("nosym");
	tether_prov *pv = NULL;
	tether_error e;
	(void)s;
	assert_int_equal(tether_provider_load(p, NULL, &pv, &e), TETHER_ERR_ABI);
	assert_non_null(strstr(e.detail, "symbol tether_provider_init missing"));
	free(p);
}

static void short_table(void **s)
{
	char *p = mock_path("short");
	tether_prov *pv = NULL;
	tether_error e;
	(void)s;
	assert_int_equal(tether_provider_load(p, NULL, &pv, &e), TETHER_ERR_ABI);
	assert_non_null(strstr(e.detail, "truncated"));
	free(p);
}

static void not_found_lists_paths(void **s)
{
	tether_prov *pv = NULL;
	tether_error e;
	(void)s;
	setenv("TETHER_PROVIDER_PATH", "/nonexistent-a:/nonexistent-b", 1);
	assert_int_equal(tether_provider_load("nosuch", NULL, &pv, &e), TETHER_ERR_NOT_FOUND);
	assert_non_null(strstr(e.detail, "/nonexistent-a/tether-nosuch.so"));
	assert_non_null(strstr(e.detail, "/nonexistent-b/tether-nosuch.so"));
	assert_non_null(strstr(e.detail, "TETHER_PROVIDER_PATH"));
	assert_int_equal(tether_provider_load("../evil", NULL, &pv, &e), TETHER_ERR_NOT_FOUND);
	assert_int_equal(tether_provider_load("Bad Name", NULL, &pv, &e), TETHER_ERR_INVALID);
}

static void not_a_library(void **s)
{
	char *d = test_tmpdir(), *p = tether_asprintf("%s/tether-junk.so", d);
	FILE *f = fopen(p, "w");
	tether_prov *pv = NULL;
	tether_error e;
	(void)s;
	fputs("not an ELF file", f);
	fclose(f);
	setenv("TETHER_PROVIDER_PATH", d, 1);
	assert_int_equal(tether_provider_load("junk", NULL, &pv, &e), TETHER_ERR_NOT_FOUND);
	assert_non_null(strstr(e.detail, "cannot load provider 'junk'"));
	unlink(p);
	rmdir(d);
	free(p); free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(good),
		cmocka_unit_test(bad_abi),
		cmocka_unit_test(no_symbol),
		cmocka_unit_test(short_table),
		cmocka_unit_test(not_found_lists_paths),
		cmocka_unit_test(not_a_library),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
