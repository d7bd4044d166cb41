/* core/pathjail.c: paths from a remote peer stay inside the file roots,
 * through openat2 and through the component walk alike. */
#include "config.h"
#include "test.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include "fsutil.h"
#include "pathjail.h"
#include "util.h"

typedef struct fixture {
	char *dir;        /* temp dir */
	char *root;       /* <dir>/root: the jail */
	char *outside;    /* <dir>/outside: must never be reached */
	int rootfd;
} fixture;

static void put(const char *path, const char *text)
{
	assert_int_equal(tether_write_atomic(path, text, strlen(text), 0600, NULL), 0);
}

static char *slurp_fd(int fd)
{
	static char buf[256];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	assert_true(n >= 0);
	buf[n] = '\0';
	return buf;
}

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	char *p;

	f->dir = test_tmpdir();
	f->root = tether_asprintf("%s/root", f->dir);
	f->outside = tether_asprintf("%s/outside", f->dir);
	assert_int_equal(mkdir(f->root, 0700), 0);
	assert_int_equal(mkdir(f->outside, 0700), 0);
	p = tether_asprintf("%s/secret", f->outside); put(p, "OUTSIDE"); free(p);
	p = tether_asprintf("%s/a", f->root); assert_int_equal(mkdir(p, 0700), 0); free(p);
	p = tether_asprintf("%s/a/b", f->root); assert_int_equal(mkdir(p, 0700), 0); free(p);
	p = tether_asprintf("%s/a/b/file", f->root); put(p, "INSIDE"); free(p);
	p = tether_asprintf("%s/top", f->root); put(p, "TOP"); free(p);
	/* links that stay inside */
	p = tether_asprintf("%s/link_in", f->root); assert_int_equal(symlink("a/b/file", p), 0); free(p);
	p = tether_asprintf("%s/a/b/up", f->root); assert_int_equal(symlink("../../top", p), 0); free(p);
	p = tether_asprintf("%s/dirlink_in", f->root); assert_int_equal(symlink("a/./b", p), 0); free(p);
	/* links that lead out */
	{
		char *t = tether_asprintf("%s/secret", f->outside);
		p = tether_asprintf("%s/link_abs", f->root);
		assert_int_equal(symlink(t, p), 0);
		free(p);
		free(t);
	}
	p = tether_asprintf("%s/link_rel", f->root); assert_int_equal(symlink("../outside/secret", p), 0); free(p);
	p = tether_asprintf("%s/a/deep_rel", f->root); assert_int_equal(symlink("../../outside", p), 0); free(p);
	p = tether_asprintf("%s/dirlink_out", f->root); assert_int_equal(symlink(f->outside, p), 0); free(p);
	p = tether_asprintf("%s/proc", f->root); assert_int_equal(symlink("/proc/self/root", p), 0); free(p);
	p = tether_asprintf("%s/loop1", f->root); assert_int_equal(symlink("loop2", p), 0); free(p);
	p = tether_asprintf("%s/loop2", f->root); assert_int_equal(symlink("loop1", p), 0); free(p);
	assert_int_equal(tether_pathjail_open_root(f->root, &f->rootfd, NULL), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	tether_pathjail_force_walk(0);
	tether_pathjail_set_walk_hook(NULL, NULL);
	close(f->rootfd);
	tether_rmtree(f->dir);
	free(f->dir);
	free(f->root);
	free(f->outside);
	free(f);
	return 0;
}

/* ---------------- resolve (text) ---------------- */

static void resolve_relative_and_absolute(void **s)
{
	const char *roots[] = { "/srv/files", "/srv", "/var/lib//app/", NULL };
	tether_jailed_path jp;
	tether_error e;
	(void)s;

	assert_int_equal(tether_pathjail_resolve(roots, "a/b.txt", &jp, &e), 0);
	assert_int_equal(jp.root, 0);
	assert_string_equal(jp.rel, "a/b.txt");
	assert_int_equal(tether_pathjail_resolve(roots, "./a//./b.txt/", &jp, &e), 0);
	assert_string_equal(jp.rel, "a/b.txt");
	/* absolute: the longest matching root wins */
	assert_int_equal(tether_pathjail_resolve(roots, "/srv/files/x/y", &jp, &e), 0);
	assert_int_equal(jp.root, 0);
	assert_string_equal(jp.rel, "x/y");
	assert_int_equal(tether_pathjail_resolve(roots, "/srv/other", &jp, &e), 0);
	assert_int_equal(jp.root, 1);
	assert_string_equal(jp.rel, "other");
	assert_int_equal(tether_pathjail_resolve(roots, "//var/lib/app/./z", &jp, &e), 0);
	assert_int_equal(jp.root, 2);
	assert_string_equal(jp.rel, "z");
	/* the root itself */
	assert_int_equal(tether_pathjail_resolve(roots, "/srv/files/", &jp, &e), 0);
	assert_string_equal(jp.rel, "");
}

static void resolve_refusals(void **s)
{
	const char *roots[] = { "/srv/files", NULL };
	const char *none[] = { NULL };
	tether_jailed_path jp;
	tether_error e;
	char *p;
	(void)s;

	assert_int_equal(tether_pathjail_resolve(roots, "/etc/passwd", &jp, &e), TETHER_ERR_PERMISSION);
	assert_non_null(strstr(e.detail, "outside the file roots"));
	assert_non_null(strstr(e.detail, "/srv/files"));
	/* a prefix that is not a whole component */
	assert_int_equal(tether_pathjail_resolve(roots, "/srv/filesystem/x", &jp, &e), TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_resolve(roots, "../x", &jp, &e), TETHER_ERR_PERMISSION);
	assert_non_null(strstr(e.detail, "'..'"));
	assert_int_equal(tether_pathjail_resolve(roots, "a/../../x", &jp, &e), TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_resolve(roots, "/srv/files/../../etc/passwd", &jp, &e),
	                 TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_resolve(roots, "a/..", &jp, &e), TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_resolve(roots, "", &jp, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_pathjail_resolve(roots, NULL, &jp, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_pathjail_resolve(roots, "a\nb", &jp, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "control character"));
	assert_int_equal(tether_pathjail_resolve(none, "a", &jp, &e), TETHER_ERR_NOT_FOUND);
	/* names over NAME_MAX, paths over the bound */
	p = calloc(1, 5000);
	memset(p, 'x', NAME_MAX + 1);
	assert_int_equal(tether_pathjail_resolve(roots, p, &jp, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "name of 256 bytes"));
	memset(p, 'x', NAME_MAX);
	p[NAME_MAX] = '\0';
	assert_int_equal(tether_pathjail_resolve(roots, p, &jp, &e), 0);
	{
		size_t i;
		for (i = 0; i < 4999; i++)
			p[i] = (i % 2) ? '/' : 'y';
		p[4999] = '\0';
	}
	assert_int_equal(tether_pathjail_resolve(roots, p, &jp, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "bytes long"));
	free(p);
}

/* ---------------- opening, both ways ---------------- */

static void check_open(fixture *f)
{
	tether_error e;
	int fd;
	const char *base;

	/* plain, and links that stay inside */
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/b/file", O_RDONLY, 0, &fd, &e), 0);
	assert_string_equal(slurp_fd(fd), "INSIDE");
	close(fd);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "link_in", O_RDONLY, 0, &fd, &e), 0);
	assert_string_equal(slurp_fd(fd), "INSIDE");
	close(fd);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/b/up", O_RDONLY, 0, &fd, &e), 0);
	assert_string_equal(slurp_fd(fd), "TOP");
	close(fd);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "dirlink_in/file", O_RDONLY, 0, &fd, &e), 0);
	assert_string_equal(slurp_fd(fd), "INSIDE");
	close(fd);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "", O_RDONLY | O_DIRECTORY, 0, &fd, &e), 0);
	close(fd);
	/* links that lead out: refused, whatever their form */
	assert_int_equal(tether_pathjail_openat(f->rootfd, "link_abs", O_RDONLY, 0, &fd, &e), TETHER_ERR_PERMISSION);
	assert_non_null(strstr(e.detail, "leads out of its file root"));
	assert_int_equal(tether_pathjail_openat(f->rootfd, "link_rel", O_RDONLY, 0, &fd, &e), TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/deep_rel/secret", O_RDONLY, 0, &fd, &e),
	                 TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "dirlink_out/secret", O_RDONLY, 0, &fd, &e),
	                 TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "proc/etc/passwd", O_RDONLY, 0, &fd, &e),
	                 TETHER_ERR_PERMISSION);
	/* ".." that escapes (resolve refuses it already; the open refuses it too) */
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/../../outside/secret", O_RDONLY, 0, &fd, &e),
	                 TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "/etc/passwd", O_RDONLY, 0, &fd, &e),
	                 TETHER_ERR_PERMISSION);
	/* writing through an outward link creates nothing outside */
	assert_true(tether_pathjail_openat(f->rootfd, "dirlink_out/new", O_WRONLY | O_CREAT, 0600, &fd, &e) < 0);
	{
		char *p = tether_asprintf("%s/new", f->outside);
		assert_int_equal(access(p, F_OK), -1);
		free(p);
	}
	/* other failures */
	assert_int_equal(tether_pathjail_openat(f->rootfd, "loop1", O_RDONLY, 0, &fd, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "missing/x", O_RDONLY, 0, &fd, &e), TETHER_ERR_NOT_FOUND);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "top/x", O_RDONLY, 0, &fd, &e), TETHER_ERR_INVALID);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "top", O_RDONLY | O_DIRECTORY, 0, &fd, &e),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "top", O_WRONLY | O_CREAT | O_EXCL, 0600, &fd, &e),
	                 TETHER_ERR_EXISTS);
	/* the parent of a file, then a new file beside it */
	assert_int_equal(tether_pathjail_open_parent(f->rootfd, "dirlink_in/new.txt", &fd, &base, &e), 0);
	assert_string_equal(base, "new.txt");
	{
		int nf = openat(fd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
		char *p = tether_asprintf("%s/a/b/new.txt", f->root);
		assert_true(nf >= 0);
		close(nf);
		assert_int_equal(access(p, F_OK), 0);
		unlink(p);
		free(p);
	}
	close(fd);
	assert_int_equal(tether_pathjail_open_parent(f->rootfd, "top", &fd, &base, &e), 0);
	assert_string_equal(base, "top");
	close(fd);
	assert_int_equal(tether_pathjail_open_parent(f->rootfd, "dirlink_out/x", &fd, &base, &e),
	                 TETHER_ERR_PERMISSION);
	assert_int_equal(tether_pathjail_open_parent(f->rootfd, "", &fd, &base, &e), TETHER_ERR_INVALID);
}

static void open_with_openat2(void **s)
{
	tether_pathjail_force_walk(0);
	check_open(*s);
}

static void open_with_walk(void **s)
{
	tether_pathjail_force_walk(1);
	check_open(*s);
}

/* ---------------- a symbolic link swapped in during the walk ---------------- */

typedef struct swap {
	fixture *f;
	const char *at;   /* component name that triggers the swap */
	int mode;         /* 1: replace a/b by a link out; 2: move a away, link a out */
	int done;
} swap;

static void swap_hook(void *arg, int dirfd, const char *name)
{
	swap *sw = arg;
	(void)dirfd;
	if (sw->done || strcmp(name, sw->at))
		return;
	sw->done = 1;
	if (sw->mode == 1) {
		char *from = tether_asprintf("%s/a/b", sw->f->root), *to = tether_asprintf("%s/a/b.real", sw->f->root);
		assert_int_equal(rename(from, to), 0);
		assert_int_equal(symlink(sw->f->outside, from), 0);
		free(from);
		free(to);
	} else {
		char *from = tether_asprintf("%s/a", sw->f->root), *to = tether_asprintf("%s/a.moved", sw->f->root);
		assert_int_equal(rename(from, to), 0);
		assert_int_equal(symlink(sw->f->outside, from), 0);
		free(from);
		free(to);
	}
}

static void swap_to_link_is_refused(void **s)
{
	fixture *f = *s;
	swap sw = { f, "b", 1, 0 };
	tether_error e;
	int fd = -1;

	/* outside/secret exists: a/b/secret would reach it if the swap worked */
	tether_pathjail_force_walk(1);
	tether_pathjail_set_walk_hook(swap_hook, &sw);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/b/secret", O_RDONLY, 0, &fd, &e), TETHER_ERR_PERMISSION);
	assert_int_equal(sw.done, 1);
}

static void directory_moved_during_walk_stays_inside(void **s)
{
	fixture *f = *s;
	swap sw = { f, "b", 2, 0 };
	tether_error e;
	int fd = -1;

	/* we hold "a" already when it is replaced by a link out: the walk goes
	 * on in the real (moved) directory, never outside */
	tether_pathjail_force_walk(1);
	tether_pathjail_set_walk_hook(swap_hook, &sw);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/b/file", O_RDONLY, 0, &fd, &e), 0);
	assert_int_equal(sw.done, 1);
	assert_string_equal(slurp_fd(fd), "INSIDE");
	close(fd);
	/* and afterwards a plain lookup through the new link is refused */
	tether_pathjail_set_walk_hook(NULL, NULL);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/secret", O_RDONLY, 0, &fd, &e), TETHER_ERR_PERMISSION);
	tether_pathjail_force_walk(0);
	assert_int_equal(tether_pathjail_openat(f->rootfd, "a/secret", O_RDONLY, 0, &fd, &e), TETHER_ERR_PERMISSION);
}

static void long_names(void **s)
{
	fixture *f = *s;
	char name[NAME_MAX + 2];
	tether_error e;
	int fd, pass;

	for (pass = 0; pass < 2; pass++) {
		tether_pathjail_force_walk(pass);
		memset(name, pass ? 'w' : 'o', NAME_MAX);
		name[NAME_MAX] = '\0';
		assert_int_equal(tether_pathjail_openat(f->rootfd, name, O_WRONLY | O_CREAT | O_EXCL, 0600, &fd, &e), 0);
		close(fd);
		name[NAME_MAX] = 'x';
		name[NAME_MAX + 1] = '\0';
		assert_int_equal(tether_pathjail_openat(f->rootfd, name, O_RDONLY, 0, &fd, &e), TETHER_ERR_INVALID);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(resolve_relative_and_absolute),
		cmocka_unit_test(resolve_refusals),
		cmocka_unit_test_setup_teardown(open_with_openat2, setup, teardown),
		cmocka_unit_test_setup_teardown(open_with_walk, setup, teardown),
		cmocka_unit_test_setup_teardown(swap_to_link_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(directory_moved_during_walk_stays_inside, setup, teardown),
		cmocka_unit_test_setup_teardown(long_names, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
