/*
 * libFuzzer harness for the path confinement (core/pathjail.c): remote
 * paths for file.upload / file.download.
 * Oracles: a resolved path is normalized (no "", ".", ".." components, no
 * leading or doubled '/', no control character) and resolves to itself;
 * and whatever opens beneath the fixture root -- through openat2 or the
 * component walk (first input byte chooses) -- really is inside it
 * (checked with /proc/self/fd).
 * Built and run by 'make fuzz-smoke' (tests/fuzz/Makefile.am).
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pathjail.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[256];
static size_t rootlen;
static int rootfd = -1;

/* A small tree with links in and out, made once per process. */
static void fixture(void)
{
	const char *tmp = getenv("TMPDIR");
	char tmpl[200], p[512];
	char *d;
	int fd;

	/* under $TMPDIR when set ('make fuzz-smoke' points it at a directory
	 * it removes afterwards) */
	snprintf(tmpl, sizeof(tmpl), "%s/tether-fuzz-pathjail-XXXXXX",
	         tmp && tmp[0] && strlen(tmp) < 100 ? tmp : "/tmp");
	d = mkdtemp(tmpl);

	if (!d)
		abort();
	snprintf(root, sizeof(root), "%s/root", d);
	rootlen = strlen(root);
	if (mkdir(root, 0700) < 0)
		abort();
	snprintf(p, sizeof(p), "%s/outside", d);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/a", root);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/a/b", root);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/a/b/f", root);
	fd = open(p, O_WRONLY | O_CREAT, 0600);
	if (fd >= 0)
		close(fd);
	snprintf(p, sizeof(p), "%s/in", root);
	symlink("a/b", p);
	snprintf(p, sizeof(p), "%s/a/up", root);
	symlink("..", p);
	snprintf(p, sizeof(p), "%s/a/out", root);
	symlink("../../outside", p);
	snprintf(p, sizeof(p), "%s/abs", root);
	symlink("/tmp", p);
	snprintf(p, sizeof(p), "%s/l1", root);
	symlink("l2", p);
	snprintf(p, sizeof(p), "%s/l2", root);
	symlink("l1/x", p);
	rootfd = open(root, O_RDONLY | O_DIRECTORY);
	if (rootfd < 0)
		abort();
}

static void check_normalized(const char *rel)
{
	const char *p = rel, *c;

	if (rel[0] == '/')
		abort();
	for (c = rel; *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			abort();
	while (*p) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			abort();
		p += n;
		if (*p == '/') {
			p++;
			if (!*p)
				abort(); /* trailing slash */
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *roots[] = { "/srv/files", "/srv", "/", NULL };
	tether_jailed_path *jp, *again;
	char *path, link[64], where[4096];
	int fd = -1;
	ssize_t n;

	if (rootfd < 0)
		fixture();
	if (size < 1)
		return 0;
	tether_pathjail_force_walk(data[0] & 1);
	path = malloc(size);
	jp = malloc(sizeof(*jp));
	again = malloc(sizeof(*again));
	if (!path || !jp || !again)
		abort();
	memcpy(path, data + 1, size - 1);
	path[size - 1] = '\0';
	if (tether_pathjail_resolve(roots, path, jp, NULL) == 0) {
		if (jp->root > 2)
			abort();
		check_normalized(jp->rel);
		if (tether_pathjail_resolve(roots, jp->rel[0] ? jp->rel : ".", again, NULL) != 0 ||
		    strcmp(again->rel, jp->rel) || again->root != 0)
			abort();
	}
	/* the open, on the raw input too (the walk must hold on its own) */
	if (tether_pathjail_openat(rootfd, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0, &fd, NULL) == 0) {
		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		n = readlink(link, where, sizeof(where) - 1);
		if (n < 0)
			abort();
		where[n] = '\0';
		if (strncmp(where, root, rootlen) || (where[rootlen] != '\0' && where[rootlen] != '/'))
			abort(); /* escaped */
		close(fd);
	}
	free(path);
	free(jp);
	free(again);
	return 0;
}
