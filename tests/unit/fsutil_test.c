#include "config.h"
#include "test.h"
#include <sys/stat.h>
#include "fsutil.h"
#include "util.h"

static void atomic_write_mode(void **s)
{
	char *d = test_tmpdir(), *p = tether_asprintf("%s/secret", d);
	unsigned char *buf;
	size_t len;
	struct stat st;
	mode_t old = umask(0);
	(void)s;
	assert_int_equal(tether_write_atomic(p, "hello", 5, 0600, NULL), 0);
	umask(old);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(tether_read_file(p, 100, &buf, &len, NULL), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(buf, "hello", 5);
	free(buf);
	/* replace */
	assert_int_equal(tether_write_atomic(p, "bye", 3, 0600, NULL), 0);
	assert_int_equal(tether_read_file(p, 100, &buf, &len, NULL), 0);
	assert_int_equal(len, 3);
	free(buf);
	/* without the fsyncs: the same whole-file replace, same mode */
	assert_int_equal(tether_write_atomic_flags(p, "nosync", 6, 0600, TETHER_WRITE_NOSYNC, NULL), 0);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(tether_read_file(p, 100, &buf, &len, NULL), 0);
	assert_int_equal(len, 6);
	assert_memory_equal(buf, "nosync", 6);
	free(buf);
	/* bound */
	{
		tether_error e;
		assert_int_equal(tether_read_file(p, 2, &buf, &len, &e), TETHER_ERR_INVALID);
		assert_non_null(strstr(e.detail, "too large"));
		assert_int_equal(tether_read_file("/nonexistent/x", 2, &buf, &len, &e), TETHER_ERR_NOT_FOUND);
	}
	tether_rmtree(d);
	free(p);
	free(d);
}

static void write_into_missing_dir_fails_cleanly(void **s)
{
	tether_error e;
	(void)s;
	assert_true(tether_write_atomic("/nonexistent-dir/x", "a", 1, 0600, &e) < 0);
	assert_non_null(strstr(e.detail, "/nonexistent-dir/x"));
}

static void symlink_not_followed(void **s)
{
	char *d = test_tmpdir();
	char *target = tether_asprintf("%s/target", d), *link = tether_asprintf("%s/f", d);
	unsigned char *buf;
	size_t len;
	(void)s;
	assert_int_equal(tether_write_atomic(target, "orig", 4, 0600, NULL), 0);
	assert_int_equal(symlink(target, link), 0);
	/* replacing the link renames over it: the target is untouched */
	assert_int_equal(tether_write_atomic(link, "new", 3, 0600, NULL), 0);
	assert_int_equal(tether_read_file(target, 100, &buf, &len, NULL), 0);
	assert_memory_equal(buf, "orig", 4);
	free(buf);
	tether_rmtree(d);
	free(target); free(link); free(d);
}

static void mkdirs_and_lock(void **s)
{
	char *d = test_tmpdir(), *p = tether_asprintf("%s/a/b/c", d), *l = tether_asprintf("%s/lock", d);
	int fd;
	(void)s;
	assert_int_equal(tether_mkdirs(p, 0700, NULL), 0);
	assert_true(tether_is_dir(p));
	fd = tether_lock(l, NULL);
	assert_true(fd >= 0);
	tether_unlock(fd);
	assert_int_equal(tether_rmtree(d), 0);
	assert_false(tether_path_exists(d));
	assert_int_equal(tether_rmtree("/"), -1);
	free(p); free(l); free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(atomic_write_mode),
		cmocka_unit_test(write_into_missing_dir_fails_cleanly),
		cmocka_unit_test(symlink_not_followed),
		cmocka_unit_test(mkdirs_and_lock),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
