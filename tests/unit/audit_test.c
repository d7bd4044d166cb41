/* core/audit.c: the line format (escapes, bytes that are not UTF-8) and
 * the deferred mode the agent uses (lines wait for a flush, in order;
 * close flushes; a bound on what waits). */
#include "config.h"
#include "test.h"
#include <sys/stat.h>
#include <jansson.h>
#include "audit.h"
#include "fsutil.h"
#include "util.h"

typedef struct fx {
	char *dir, *path;
	tether_audit *a;
} fx;

static int setup(void **s)
{
	fx *f = calloc(1, sizeof(*f));
	tether_error e;
	f->dir = test_tmpdir();
	f->path = tether_asprintf("%s/audit.log", f->dir);
	assert_int_equal(tether_audit_open(f->path, &f->a, &e), 0);
	*s = f;
	return 0;
}

static int teardown(void **s)
{
	fx *f = *s;
	tether_audit_close(f->a);
	tether_rmtree(f->dir);
	free(f->dir);
	free(f->path);
	free(f);
	return 0;
}

static off_t fsize(const char *p)
{
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	return st.st_size;
}

/* The log's lines parsed; *n their count.  Fails on a line that is not a
 * whole JSON object. */
static json_t **lines(const char *p, size_t *n)
{
	FILE *fp = fopen(p, "r");
	char buf[4096];
	json_t **v = NULL;
	size_t k = 0;

	assert_non_null(fp);
	while (fgets(buf, sizeof(buf), fp)) {
		json_error_t je;
		json_t *o;
		assert_true(strlen(buf) > 0 && buf[strlen(buf) - 1] == '\n');
		o = json_loads(buf, JSON_REJECT_DUPLICATES, &je);
		if (!o)
			fail_msg("line %zu is not JSON (%s): %s", k + 1, je.text, buf);
		assert_true(json_is_object(o));
		v = realloc(v, (k + 1) * sizeof(*v));
		v[k++] = o;
	}
	fclose(fp);
	*n = k;
	return v;
}

static void free_lines(json_t **v, size_t n)
{
	size_t i;
	for (i = 0; i < n; i++)
		json_decref(v[i]);
	free(v);
}

static const char *sget(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static void format(void **s)
{
	fx *f = *s;
	tether_error e;
	json_t **v;
	size_t n;

	assert_int_equal(tether_audit_write(f->a, "uid=0(root)", "target.add", "web1", "ok", NULL, NULL, &e), 0);
	assert_int_equal(tether_audit_write(f->a, "server:ab", "file.get", NULL, "error", "not_found",
	                                    "no \"such\" file\\dir\n\t\x01 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 /x", &e), 0);
	/* not UTF-8: a stray byte, a cut sequence, an overlong '/', a
	 * surrogate, a code point over U+10FFFF */
	assert_int_equal(tether_audit_write(f->a, "server:ab", "file.get", "h:1", "error", "io",
	                                    "a\xff" "b\xc3" "c\xc0\xaf" "d\xed\xa0\x80" "e\xf4\x90\x80\x80" "f\xe2\x82", &e), 0);
	v = lines(f->path, &n);
	assert_int_equal(n, 3);
	assert_string_equal(sget(v[0], "who"), "uid=0(root)");
	assert_string_equal(sget(v[0], "what"), "target.add");
	assert_string_equal(sget(v[0], "target"), "web1");
	assert_string_equal(sget(v[0], "result"), "ok");
	assert_int_equal(strlen(sget(v[0], "time")), 20);
	assert_null(json_object_get(v[0], "category"));
	assert_null(json_object_get(v[0], "error"));
	assert_int_equal(json_object_size(v[0]), 5);
	assert_true(json_is_null(json_object_get(v[1], "target")));
	assert_string_equal(sget(v[1], "category"), "not_found");
	assert_string_equal(sget(v[1], "error"),
	                    "no \"such\" file\\dir\n\t\x01 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 /x");
	assert_string_equal(sget(v[2], "error"),
	                    "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd"
	                    "d\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "e\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
	                    "f\xef\xbf\xbd\xef\xbf\xbd");
	free_lines(v, n);
}

static void deferred(void **s)
{
	fx *f = *s;
	tether_error e;
	char what[32];
	json_t **v;
	size_t n, i;

	tether_audit_set_deferred(f->a, 1);
	for (i = 0; i < 100; i++) {
		snprintf(what, sizeof(what), "m.%zu", i);
		assert_int_equal(tether_audit_write(f->a, "server:ab", what, "h:1", "ok", NULL, NULL, &e), 0);
	}
	assert_int_equal(fsize(f->path), 0); /* waiting for the flush */
	assert_int_equal(tether_audit_flush(f->a, &e), 0);
	assert_int_equal(tether_audit_flush(f->a, &e), 0); /* nothing more */
	for (i = 100; i < 150; i++) {
		snprintf(what, sizeof(what), "m.%zu", i);
		assert_int_equal(tether_audit_write(f->a, "server:ab", what, "h:1", "ok", NULL, NULL, &e), 0);
	}
	/* close writes what waits */
	tether_audit_close(f->a);
	f->a = NULL;
	v = lines(f->path, &n);
	assert_int_equal(n, 150);
	for (i = 0; i < n; i++) {
		snprintf(what, sizeof(what), "m.%zu", i);
		assert_string_equal(sget(v[i], "what"), what);
	}
	free_lines(v, n);
}

static void deferred_bound(void **s)
{
	fx *f = *s;
	tether_error e;
	char msg[1001];
	size_t i;

	memset(msg, 'x', 1000);
	msg[1000] = '\0';
	tether_audit_set_deferred(f->a, 1);
	for (i = 0; i < 100; i++)
		assert_int_equal(tether_audit_write(f->a, "server:ab", "m", NULL, "error", "io", msg, &e), 0);
	/* about 110 KB written: no more than 64 KiB may wait */
	assert_true(fsize(f->path) >= 100 * 1000 - 64 * 1024);
	/* turning it off flushes: every line is there */
	tether_audit_set_deferred(f->a, 0);
	{
		json_t **v;
		size_t n;
		v = lines(f->path, &n);
		assert_int_equal(n, 100);
		free_lines(v, n);
	}
	/* and off means at once */
	i = (size_t)fsize(f->path);
	assert_int_equal(tether_audit_write(f->a, "server:ab", "m", NULL, "ok", NULL, NULL, &e), 0);
	assert_true((size_t)fsize(f->path) > i);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(format, setup, teardown),
		cmocka_unit_test_setup_teardown(deferred, setup, teardown),
		cmocka_unit_test_setup_teardown(deferred_bound, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
