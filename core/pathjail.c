/* Confining remote paths to root directories (see pathjail.h). */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/openat2.h>
#endif
#include "error.h"
#include "pathjail.h"

#define MAX_LINKS 40              /* as the kernel's MAXSYMLINKS */
#define MAX_DEPTH 1024            /* directories held open by the walk */
#define OPENAT2_RETRIES 16        /* EAGAIN: a rename raced with the lookup */

static int force_walk;
static int no_openat2;            /* set once the kernel said ENOSYS */
static void (*walk_hook)(void *arg, int dirfd, const char *name);
static void *walk_hook_arg;

void tether_pathjail_force_walk(int on) { force_walk = on; }

void tether_pathjail_set_walk_hook(void (*hook)(void *arg, int dirfd, const char *name), void *arg)
{
	walk_hook = hook;
	walk_hook_arg = arg;
}

/* ------------------------------------------------------------------ */
/* Text                                                                */
/* ------------------------------------------------------------------ */

/* Split path into components ("" and "." dropped) in buf; each comp[i]
 * points into buf.  ".." is refused.  Returns the count or < 0. */
static int split(const char *path, char *buf, size_t cap, const char **comp, size_t maxc,
                 const char *what, tether_error *err)
{
	size_t n = 0, len = strlen(path);
	char *p, *save = NULL, *tok;

	if (len >= cap)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s is %zu bytes long; at most %d are allowed", what, len, TETHER_PATHJAIL_MAX - 1);
	memcpy(buf, path, len + 1);
	for (p = buf; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s contains a control character (byte 0x%02x at offset %zu); "
			                      "tether refuses such names", what, (unsigned)(unsigned char)*p,
			                      (size_t)(p - buf));
	for (tok = strtok_r(buf, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
		if (!strcmp(tok, "."))
			continue;
		if (!strcmp(tok, ".."))
			return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_BAD_INPUT,
			                      "%s contains '..'; name the file without '..' (relative paths are "
			                      "under the first file root)", what);
		if (strlen(tok) > NAME_MAX)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s has a name of %zu bytes; at most %d are allowed per name",
			                      what, strlen(tok), NAME_MAX);
		if (n >= maxc)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s has more than %zu names", what, maxc);
		comp[n++] = tok;
	}
	return (int)n;
}

static void roots_list(const char *const *roots, char *out, size_t cap)
{
	size_t i, off = 0;

	out[0] = '\0';
	for (i = 0; roots[i] && off + 1 < cap; i++) {
		int w = snprintf(out + off, cap - off, "%s%s", i ? ", " : "", roots[i]);
		if (w < 0 || (size_t)w >= cap - off) {
			if (cap > 4)
				memcpy(out + cap - 4, "...", 4);
			return;
		}
		off += (size_t)w;
	}
}

int tether_pathjail_resolve(const char *const *roots, const char *path,
                            tether_jailed_path *out, tether_error *err)
{
	static const size_t maxc = TETHER_PATHJAIL_MAX / 2;
	char *pbuf = NULL, *rbuf = NULL, list[300];
	const char **pc = NULL, **rc = NULL;
	size_t i, best = 0, best_n = 0, off = 0;
	int np, nr, found = 0, r;

	if (!roots || !roots[0])
		return tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                      "no file roots are configured ([files] roots)");
	if (!path || !*path)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "the path is empty; give a file name");
	pbuf = malloc(TETHER_PATHJAIL_MAX);
	rbuf = malloc(TETHER_PATHJAIL_MAX);
	pc = malloc(maxc * sizeof(*pc));
	rc = malloc(maxc * sizeof(*rc));
	if (!pbuf || !rbuf || !pc || !rc) {
		r = tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	r = np = split(path, pbuf, TETHER_PATHJAIL_MAX, pc, maxc, "the path", err);
	if (r < 0)
		goto out;
	if (path[0] != '/') {
		best = 0;
		best_n = 0;
		found = 1;
	} else {
		for (i = 0; roots[i]; i++) {
			size_t k;
			if (roots[i][0] != '/')
				continue; /* not absolute: never matches an absolute path */
			nr = split(roots[i], rbuf, TETHER_PATHJAIL_MAX, rc, maxc, "a file root", NULL);
			if (nr < 0 || nr > np)
				continue;
			for (k = 0; k < (size_t)nr; k++)
				if (strcmp(rc[k], pc[k]))
					break;
			if (k == (size_t)nr && (!found || (size_t)nr > best_n)) {
				found = 1;
				best = i;
				best_n = (size_t)nr;
			}
		}
		if (!found) {
			roots_list(roots, list, sizeof(list));
			r = tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_BAD_INPUT,
			                   "%.200s is outside the file roots of this agent (%s); give a path "
			                   "inside one of them, or a relative path (it goes under the first)",
			                   path, list);
			goto out;
		}
	}
	for (i = best_n; i < (size_t)np; i++) {
		size_t l = strlen(pc[i]);
		if (off + l + 2 > sizeof(out->rel)) {
			r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, "the path is too long");
			goto out;
		}
		if (off)
			out->rel[off++] = '/';
		memcpy(out->rel + off, pc[i], l);
		off += l;
	}
	out->rel[off] = '\0';
	out->root = best;
	r = 0;
out:
	free(pbuf);
	free(rbuf);
	free(pc);
	free(rc);
	return r;
}

/* ------------------------------------------------------------------ */
/* Opening                                                             */
/* ------------------------------------------------------------------ */

static int errno_err(int e, const char *rel, tether_error *err)
{
	switch (e) {
	case ENOENT:
		return tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                      "'%.300s' does not exist (or a directory on the way is missing)", rel);
	case EXDEV:
		return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' leads out of its file root (through a symbolic link or '..'); "
		                      "tether follows links only while they stay inside the root", rel);
	case ELOOP:
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' goes through too many symbolic links, or a link of /proc", rel);
	case ENOTDIR:
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s': a name on the way is not a directory", rel);
	case EEXIST:
		return tether_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' already exists", rel);
	case EISDIR:
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' is a directory", rel);
	case EACCES:
	case EPERM:
		return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
		                      "'%.300s': permission denied to the agent's user", rel);
	case EAGAIN:
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "'%.300s' changed while it was being opened; try again", rel);
	case ENAMETOOLONG:
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s': name too long", rel);
	default:
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "'%.300s': %s", rel, strerror(e));
	}
}

int tether_pathjail_open_root(const char *root, int *out, tether_error *err)
{
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		int e = errno;
		return tether_err_set(err, e == ENOENT ? TETHER_ERR_NOT_FOUND : TETHER_ERR_IO,
		                      e == ENOENT ? TETHER_CAT_NOT_FOUND : TETHER_CAT_IO,
		                      "cannot open the file root %.300s: %s; create it or fix [files] roots",
		                      root, strerror(e));
	}
	*out = fd;
	return 0;
}

#ifdef SYS_openat2
/* 1 with *fd set, 0 if openat2 is not available, < 0 on failure. */
static int try_openat2(int rootfd, const char *rel, int flags, mode_t mode, int *fd, int *e)
{
	struct open_how how;
	int i;
	long r;

	if (force_walk || __atomic_load_n(&no_openat2, __ATOMIC_RELAXED))
		return 0;
	memset(&how, 0, sizeof(how));
	how.flags = (unsigned long long)(flags | O_CLOEXEC);
	how.mode = (flags & (O_CREAT | O_TMPFILE)) ? (unsigned long long)mode : 0;
	how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
	for (i = 0; i < OPENAT2_RETRIES; i++) {
		r = syscall(SYS_openat2, rootfd, *rel ? rel : ".", &how, sizeof(how));
		if (r >= 0) {
			*fd = (int)r;
			return 1;
		}
		if (errno != EAGAIN && errno != EINTR)
			break;
	}
	if (errno == ENOSYS) {
		__atomic_store_n(&no_openat2, 1, __ATOMIC_RELAXED);
		return 0;
	}
	*e = errno;
	return -1;
}
#endif

/* The walk: RESOLVE_BENEATH done by hand. */
static int walk_open(int rootfd, const char *rel, int flags, mode_t mode, int *out, tether_error *err)
{
	int *stack = NULL;                /* stack[0] = rootfd (not ours) */
	size_t depth = 0, links = 0;
	char *rem = NULL, *lnk = NULL;    /* the path still to walk; a link's target */
	size_t cap = 2 * TETHER_PATHJAIL_MAX, pos = 0;
	int r = 0, fd = -1;

	stack = malloc(MAX_DEPTH * sizeof(*stack));
	rem = malloc(cap);
	lnk = malloc(TETHER_PATHJAIL_MAX);
	if (!stack || !rem || !lnk) {
		r = tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	stack[0] = rootfd;
	if (rel[0] == '/') { /* as RESOLVE_BENEATH: absolute paths are refused */
		r = errno_err(EXDEV, rel, err);
		goto out;
	}
	if (strlen(rel) >= cap) {
		r = errno_err(ENAMETOOLONG, rel, err);
		goto out;
	}
	strcpy(rem, rel);
	for (;;) {
		char name[NAME_MAX + 1];
		size_t start, len;
		int last, cur = stack[depth];
		struct stat st;
		ssize_t ll;

		while (rem[pos] == '/')
			pos++;
		start = pos;
		while (rem[pos] && rem[pos] != '/')
			pos++;
		len = pos - start;
		while (rem[pos] == '/')
			pos++;
		last = rem[pos] == '\0';
		if (len > NAME_MAX) {
			r = errno_err(ENAMETOOLONG, rel, err);
			goto out;
		}
		memcpy(name, rem + start, len);
		name[len] = '\0';
		if (len == 0 || !strcmp(name, ".")) {
			if (!last)
				continue;
			strcpy(name, "."); /* the directory we are in is the result */
		} else if (!strcmp(name, "..")) {
			if (depth == 0) {
				r = errno_err(EXDEV, rel, err);
				goto out;
			}
			close(stack[depth--]);
			if (!last)
				continue;
			strcpy(name, ".");
		}
		if (walk_hook)
			walk_hook(walk_hook_arg, cur, name);
		if (last) {
			fd = openat(cur, name, flags | O_NOFOLLOW | O_CLOEXEC, mode);
			if (fd >= 0)
				break;
			if (errno != ELOOP && !((flags & O_DIRECTORY) && errno == ENOTDIR)) {
				r = errno_err(errno, rel, err);
				goto out;
			}
			/* a symbolic link (or not a directory): look closer below */
		}
		fd = openat(cur, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0) {
			r = errno_err(errno, rel, err);
			goto out;
		}
		if (S_ISDIR(st.st_mode) && !last) {
			if (depth + 1 >= MAX_DEPTH) {
				r = errno_err(ENAMETOOLONG, rel, err);
				goto out;
			}
			stack[++depth] = fd;
			fd = -1;
			continue;
		}
		if (!S_ISLNK(st.st_mode)) {
			/* not a directory in the middle; at the end, not the
			 * directory asked for, or it changed under us */
			r = errno_err(!last || ((flags & O_DIRECTORY) && !S_ISDIR(st.st_mode)) ? ENOTDIR : EAGAIN,
			              rel, err);
			goto out;
		}
		if (++links > MAX_LINKS) {
			r = errno_err(ELOOP, rel, err);
			goto out;
		}
		ll = readlinkat(fd, "", lnk, TETHER_PATHJAIL_MAX);
		close(fd);
		fd = -1;
		if (ll < 0 || ll >= TETHER_PATHJAIL_MAX) {
			r = errno_err(ll < 0 ? errno : ENAMETOOLONG, rel, err);
			goto out;
		}
		if (ll == 0 || lnk[0] == '/') {
			r = errno_err(ll == 0 ? ENOENT : EXDEV, rel, err);
			goto out;
		}
		/* rem := target + "/" + the rest */
		{
			size_t restlen = strlen(rem + pos);
			if ((size_t)ll + 1 + restlen + 1 > cap) {
				r = errno_err(ENAMETOOLONG, rel, err);
				goto out;
			}
			memmove(rem + ll + 1, rem + pos, restlen + 1);
			memcpy(rem, lnk, (size_t)ll);
			rem[ll] = restlen ? '/' : '\0';
			pos = 0;
		}
	}
	*out = fd;
	fd = -1;
out:
	if (fd >= 0)
		close(fd);
	while (stack && depth > 0)
		close(stack[depth--]);
	free(stack);
	free(rem);
	free(lnk);
	return r;
}

int tether_pathjail_openat(int rootfd, const char *rel, int flags, mode_t mode,
                           int *out, tether_error *err)
{
	int fd = -1;
#ifdef SYS_openat2
	int e = 0, r = try_openat2(rootfd, rel, flags, mode, &fd, &e);

	if (r < 0)
		return errno_err(e, rel, err);
	if (r > 0) {
		*out = fd;
		return 0;
	}
#endif
	if (walk_open(rootfd, rel, flags, mode, &fd, err) < 0)
		return err ? err->code : TETHER_ERR_IO;
	*out = fd;
	return 0;
}

int tether_pathjail_open_parent(int rootfd, const char *rel, int *out,
                                const char **base, tether_error *err)
{
	const char *slash = strrchr(rel, '/');
	char *dir;
	int r, fd = -1;

	if (!*rel || (slash && !slash[1]))
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' names a directory, not a file", rel);
	if (!slash) {
		r = tether_pathjail_openat(rootfd, "", O_RDONLY | O_DIRECTORY, 0, &fd, err);
		if (r < 0)
			return r;
		*base = rel;
		*out = fd;
		return 0;
	}
	dir = strndup(rel, (size_t)(slash - rel));
	if (!dir)
		return tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	r = tether_pathjail_openat(rootfd, dir, O_RDONLY | O_DIRECTORY, 0, &fd, err);
	free(dir);
	if (r < 0)
		return r;
	*base = slash + 1;
	*out = fd;
	return 0;
}
