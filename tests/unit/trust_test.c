#include "config.h"
#include "test.h"
#include <sys/stat.h>
#include "trust.h"
#include "fsutil.h"
#include "util.h"

static tether_thumbprint tp_of(int n)
{
	tether_thumbprint t;
	memset(&t, n, sizeof(t));
	return t;
}

static int add_two(tether_trust *t, void *arg, tether_error *err)
{
	tether_thumbprint a = tp_of(1), b = tp_of(2);
	(void)arg;
	tether_trust_add(t->trusted, &t->ntrusted, &a, "test", err);
	tether_trust_add(t->trusted, &t->ntrusted, &b, "test", err);
	tether_trust_add(t->recovery, &t->nrecovery, &b, "test", err);
	return 1;
}

static int fail_midway(tether_trust *t, void *arg, tether_error *err)
{
	tether_thumbprint c = tp_of(3);
	(void)arg;
	t->ntrusted = 0; /* would wipe everything */
	tether_trust_add(t->trusted, &t->ntrusted, &c, "test", err);
	return -1;
}

static void roundtrip(void **s)
{
	char *d = test_tmpdir(), *p;
	tether_trust t;
	tether_thumbprint a = tp_of(1), c = tp_of(3);
	unsigned char *before, *after;
	size_t lb, la;
	struct stat st;
	(void)s;
	assert_int_equal(tether_trust_load(d, &t, NULL), 0);
	assert_int_equal(t.ntrusted, 0);
	assert_int_equal(tether_trust_update(d, add_two, NULL, NULL), 1);
	assert_int_equal(tether_trust_load(d, &t, NULL), 0);
	assert_int_equal(t.ntrusted, 2);
	assert_int_equal(t.nrecovery, 1);
	assert_true(tether_trust_is_trusted(&t, &a));
	assert_false(tether_trust_is_trusted(&t, &c));
	p = tether_trust_path(d);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	/* a failing update writes nothing */
	assert_int_equal(tether_read_file(p, 1 << 20, &before, &lb, NULL), 0);
	assert_int_equal(tether_trust_update(d, fail_midway, NULL, NULL), -1);
	assert_int_equal(tether_read_file(p, 1 << 20, &after, &la, NULL), 0);
	assert_int_equal(la, lb);
	assert_memory_equal(before, after, lb);
	free(before); free(after);
	/* add is idempotent, remove reports absence */
	assert_int_equal(tether_trust_add(t.trusted, &t.ntrusted, &a, "x", NULL), 0);
	assert_int_equal(tether_trust_remove(t.trusted, &t.ntrusted, &a), 1);
	assert_int_equal(tether_trust_remove(t.trusted, &t.ntrusted, &a), 0);
	tether_rmtree(d);
	free(p); free(d);
}

static void damaged_file(void **s)
{
	char *d = test_tmpdir(), *p = tether_asprintf("%s/trust.json", d);
	tether_trust t;
	tether_error e;
	(void)s;
	assert_int_equal(tether_write_atomic(p, "{\"trusted\": [", 13, 0600, NULL), 0);
	assert_int_equal(tether_trust_load(d, &t, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "damaged"));
	assert_int_equal(tether_write_atomic(p, "{\"trusted\": [{\"sha256\":\"12\"}]}", 30, 0600, NULL), 0);
	assert_int_equal(tether_trust_load(d, &t, &e), TETHER_ERR_INVALID);
	tether_rmtree(d);
	free(p); free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(roundtrip),
		cmocka_unit_test(damaged_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
