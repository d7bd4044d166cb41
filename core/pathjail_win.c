/*
 * Confining remote paths to root directories on Windows: the API of
 * pathjail.h with Windows calls (core/pathjail.c is the POSIX one; the
 * mingw-w64 build compiles this file instead).
 *
 * Text (tether_pathjail_resolve): absolute paths are "X:\..." (or "X:/...");
 * '\' and '/' both separate names; roots and paths are compared without
 * regard to ASCII case, as NTFS does by default.  Refused: "..", control
 * characters, ':' inside a name (alternate data streams), names ending in
 * '.' or ' ' (Windows strips those, so two spellings would name one file),
 * the reserved device names (CON, NUL, COM1, ...), and the UNC and
 * drive-relative forms ("\\server\share", "\dir", "C:dir").  The relative
 * result uses '/' between names, as on POSIX.
 *
 * Opening: a directory descriptor is a CRT descriptor wrapping a handle
 * opened with FILE_FLAG_BACKUP_SEMANTICS and without FILE_SHARE_DELETE, so
 * that neither the directory nor any directory above it can be renamed or
 * removed while it is held.  After a file or directory is opened, its
 * final path (GetFinalPathNameByHandleW, every link and junction resolved)
 * must lie inside the root's final path, or the handle is closed and the
 * open refused: a symbolic link or junction leading out of the root is
 * never used.  A file is created (O_CREAT) only inside a parent directory
 * that passed that check and is held open, and a link at the last name is
 * then opened itself, not followed (FILE_FLAG_OPEN_REPARSE_POINT).
 */
#ifdef _WIN32
#include "config.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
#include "error.h"
#include "pathjail.h"

#define NAME_MAX_WIN 255

/* Test hooks of the POSIX walk: there is no walk here. */
void tether_pathjail_force_walk(int on) { (void)on; }
void tether_pathjail_set_walk_hook(void (*hook)(void *arg, int dirfd, const char *name), void *arg)
{
	(void)hook;
	(void)arg;
}

int tether_pathjail_is_absolute(const char *p)
{
	return ((p[0] >= 'A' && p[0] <= 'Z') || (p[0] >= 'a' && p[0] <= 'z')) && p[1] == ':' &&
	       (p[2] == '\\' || p[2] == '/');
}

static int reserved_name(const char *n)
{
	static const char *const dev[] = { "CON", "PRN", "AUX", "NUL", NULL };
	size_t l = strcspn(n, "."), i;

	for (i = 0; dev[i]; i++)
		if (l == 3 && !_strnicmp(n, dev[i], 3))
			return 1;
	if (l == 4 && (!_strnicmp(n, "COM", 3) || !_strnicmp(n, "LPT", 3)) && n[3] >= '0' && n[3] <= '9')
		return 1;
	return 0;
}

/* Split into names ("" and "." dropped) in buf; comp[i] points into buf. */
static int split(const char *path, char *buf, size_t cap, const char **comp, size_t maxc,
                 const char *what, tether_error *err)
{
	size_t n = 0, len = strlen(path);
	char *p, *save = NULL, *tok;
	int first = 1;

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
	for (tok = strtok_r(buf, "/\\", &save); tok; tok = strtok_r(NULL, "/\\", &save), first = 0) {
		size_t tl = strlen(tok);
		if (!strcmp(tok, "."))
			continue;
		if (!strcmp(tok, ".."))
			return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_BAD_INPUT,
			                      "%s contains '..'; name the file without '..' (relative paths are "
			                      "under the first file root)", what);
		if (tl > NAME_MAX_WIN)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s has a name of %zu bytes; at most %d are allowed per name",
			                      what, tl, NAME_MAX_WIN);
		if (first && tether_pathjail_is_absolute(path)) {
			/* the drive, "C:" */
		} else if (strchr(tok, ':') || strpbrk(tok, "<>\"|?*")) {
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s has the name '%.100s', with a character Windows does not allow "
			                      "in names (: < > \" | ? *)", what, tok);
		} else if (tok[tl - 1] == '.' || tok[tl - 1] == ' ') {
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s has the name '%.100s', which ends in a dot or a space; Windows "
			                      "drops those, so give the name without them", what, tok);
		} else if (reserved_name(tok)) {
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s has the name '%.100s', a reserved device name on Windows", what, tok);
		}
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
	if (path[0] == '/' || path[0] == '\\' || (path[0] && path[1] == ':' && !tether_pathjail_is_absolute(path)))
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.200s' is neither a full path with a drive (C:\\dir\\file) nor a path "
		                      "relative to the first file root (dir\\file); network (UNC) and "
		                      "drive-relative paths are not accepted", path);
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
	if (!tether_pathjail_is_absolute(path)) {
		found = 1;
	} else {
		for (i = 0; roots[i]; i++) {
			size_t k;
			if (!tether_pathjail_is_absolute(roots[i]))
				continue;
			nr = split(roots[i], rbuf, TETHER_PATHJAIL_MAX, rc, maxc, "a file root", NULL);
			if (nr < 0 || nr > np)
				continue;
			for (k = 0; k < (size_t)nr; k++)
				if (_stricmp(rc[k], pc[k]))
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

static wchar_t *wide(const char *s)
{
	int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
	wchar_t *w = n > 0 ? malloc((size_t)n * sizeof(wchar_t)) : NULL;

	if (w && MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n) <= 0) {
		free(w);
		w = NULL;
	}
	return w;
}

/* The final path of h, allocated, without a trailing '\'. */
static wchar_t *final_path(HANDLE h)
{
	DWORD n = GetFinalPathNameByHandleW(h, NULL, 0, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS);
	wchar_t *p;
	size_t l;

	if (n == 0)
		return NULL;
	p = malloc((n + 1) * sizeof(wchar_t));
	if (!p)
		return NULL;
	if (GetFinalPathNameByHandleW(h, p, n + 1, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS) == 0) {
		free(p);
		return NULL;
	}
	l = wcslen(p);
	while (l > 0 && p[l - 1] == L'\\')
		p[--l] = 0;
	return p;
}

static int win_err(DWORD e, const char *rel, tether_error *err)
{
	switch (e) {
	case ERROR_FILE_NOT_FOUND:
	case ERROR_PATH_NOT_FOUND:
		return tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                      "'%.300s' does not exist (or a directory on the way is missing)", rel);
	case ERROR_FILE_EXISTS:
	case ERROR_ALREADY_EXISTS:
		return tether_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT, "'%.300s' already exists", rel);
	case ERROR_DIRECTORY:
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s': a name on the way is not a directory", rel);
	case ERROR_ACCESS_DENIED:
		return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
		                      "'%.300s': access denied to the agent's account (or it is a directory)", rel);
	case ERROR_SHARING_VIOLATION:
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "'%.300s' is in use by another program; try again when it is closed", rel);
	case ERROR_FILENAME_EXCED_RANGE:
	case ERROR_INVALID_NAME:
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s': name too long or not valid on Windows", rel);
	default:
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "'%.300s': %s", rel,
		                      tether_win_strerror(e));
	}
}

/* Open a directory by path: the handle pins it (no FILE_SHARE_DELETE). */
static HANDLE open_dir_w(const wchar_t *p, DWORD *e)
{
	HANDLE h = CreateFileW(p, FILE_LIST_DIRECTORY | FILE_TRAVERSE | FILE_READ_ATTRIBUTES | SYNCHRONIZE,
	                       FILE_SHARE_READ | FILE_SHARE_WRITE, NULL, OPEN_EXISTING,
	                       FILE_FLAG_BACKUP_SEMANTICS, NULL);
	*e = h == INVALID_HANDLE_VALUE ? GetLastError() : 0;
	return h;
}

static int is_dir_handle(HANDLE h)
{
	BY_HANDLE_FILE_INFORMATION fi;
	return GetFileInformationByHandle(h, &fi) && (fi.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY);
}

int tether_pathjail_open_root(const char *root, int *out, tether_error *err)
{
	wchar_t *w = wide(root);
	DWORD e = ERROR_INVALID_NAME;
	HANDLE h = w ? open_dir_w(w, &e) : INVALID_HANDLE_VALUE;
	int fd;

	free(w);
	if (h != INVALID_HANDLE_VALUE && !is_dir_handle(h)) {
		CloseHandle(h);
		h = INVALID_HANDLE_VALUE;
		e = ERROR_DIRECTORY;
	}
	if (h == INVALID_HANDLE_VALUE)
		return tether_err_set(err, e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND ?
		                      TETHER_ERR_NOT_FOUND : TETHER_ERR_IO,
		                      e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND ?
		                      TETHER_CAT_NOT_FOUND : TETHER_CAT_IO,
		                      "cannot open the file root %.300s: %s; create it or fix [files] roots",
		                      root, tether_win_strerror(e));
	fd = tether_win_open_handle(h, O_RDONLY);
	if (fd < 0)
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot open the file root %.300s: "
		                      "too many open files", root);
	*out = fd;
	return 0;
}

/* Is p (a final path) base itself or inside it?  Case-insensitive. */
static int inside(const wchar_t *p, const wchar_t *base)
{
	size_t bl = wcslen(base);
	return !_wcsnicmp(p, base, bl) && (p[bl] == 0 || p[bl] == L'\\');
}

/* Open rel beneath the directory whose final path is base.  want_dir: the
 * result must be a directory (1), must not be (0). */
static int open_beneath(const wchar_t *base, const char *rel, int flags, int want_dir, int *out,
                        tether_error *err)
{
	size_t bl = wcslen(base), i;
	wchar_t *wrel = wide(rel), *full = NULL, *fin = NULL;
	DWORD access, disp, attrs = FILE_FLAG_BACKUP_SEMANTICS, e;
	HANDLE h = INVALID_HANDLE_VALUE;
	int r = 0, fd;

	if (!wrel)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' is not valid UTF-8", rel);
	full = malloc((bl + 2 + wcslen(wrel)) * sizeof(wchar_t));
	if (!full) {
		r = tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	wcscpy(full, base);
	if (*wrel) {
		wcscat(full, L"\\");
		wcscat(full, wrel);
	}
	for (i = bl; full[i]; i++)
		if (full[i] == L'/')
			full[i] = L'\\';
	if (want_dir == 1) {
		h = open_dir_w(full, &e);
	} else {
		access = (flags & O_RDWR) ? GENERIC_READ | GENERIC_WRITE :
		         (flags & O_WRONLY) ? GENERIC_WRITE : GENERIC_READ;
		if ((flags & O_CREAT) && (flags & O_EXCL))
			disp = CREATE_NEW;
		else if ((flags & O_CREAT) && (flags & O_TRUNC))
			disp = CREATE_ALWAYS;
		else if (flags & O_CREAT)
			disp = OPEN_ALWAYS;
		else if (flags & O_TRUNC)
			disp = TRUNCATE_EXISTING;
		else
			disp = OPEN_EXISTING;
		if (flags & O_CREAT)
			attrs |= FILE_FLAG_OPEN_REPARSE_POINT;
		h = CreateFileW(full, access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
		                disp, attrs, NULL);
		e = h == INVALID_HANDLE_VALUE ? GetLastError() : 0;
	}
	if (h == INVALID_HANDLE_VALUE) {
		r = win_err(e, rel, err);
		goto out;
	}
	fin = final_path(h);
	if (!fin) {
		r = win_err(GetLastError(), rel, err);
		goto out;
	}
	if (!inside(fin, base)) {
		r = tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_BAD_INPUT,
		                   "'%.300s' leads out of its file root (through a symbolic link or a "
		                   "junction); tether follows links only while they stay inside the root", rel);
		goto out;
	}
	if (want_dir >= 0 && is_dir_handle(h) != want_dir) {
		r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, want_dir ?
		                   "'%.300s': a name on the way is not a directory" : "'%.300s' is a directory", rel);
		goto out;
	}
	fd = tether_win_open_handle(h, flags);
	h = INVALID_HANDLE_VALUE; /* the descriptor owns it, or it was closed */
	if (fd < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "'%.300s': too many open files", rel);
		goto out;
	}
	*out = fd;
out:
	if (h != INVALID_HANDLE_VALUE)
		CloseHandle(h);
	free(wrel);
	free(full);
	free(fin);
	return r;
}

static wchar_t *fd_final_path(int fd)
{
	HANDLE h = (HANDLE)_get_osfhandle(fd);
	return h == INVALID_HANDLE_VALUE ? NULL : final_path(h);
}

int tether_pathjail_openat(int rootfd, const char *rel, int flags, mode_t mode,
                           int *out, tether_error *err)
{
	wchar_t *base = fd_final_path(rootfd);
	int r, want_dir = *rel ? -1 : 1;

	(void)mode; /* the file gets the directory's inherited permissions */
	if (!base)
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot find the path of the file root's directory: %s",
		                      tether_win_strerror(GetLastError()));
	if (rel[0] == '/' || rel[0] == '\\' || strchr(rel, ':')) {
		free(base);
		return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' is not a path inside the file root", rel);
	}
	if ((flags & O_CREAT) && *rel) {
		/* create only in a parent that passed the check and is held */
		const char *slash = strrchr(rel, '/');
		wchar_t *pbase = NULL;
		int pfd = -1;
		char *dir = slash ? tether_win_strndup(rel, (size_t)(slash - rel)) : NULL;

		r = slash ? (dir ? open_beneath(base, dir, 0, 1, &pfd, err) :
		             tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory")) : 0;
		free(dir);
		if (r == 0) {
			pbase = pfd >= 0 ? fd_final_path(pfd) : NULL;
			r = open_beneath(pbase ? pbase : base, slash ? slash + 1 : rel, flags, 0, out, err);
		}
		free(pbase);
		if (pfd >= 0)
			close(pfd);
	} else {
		r = open_beneath(base, rel, flags, want_dir, out, err);
	}
	free(base);
	return r;
}

int tether_pathjail_open_parent(int rootfd, const char *rel, int *out,
                                const char **base, tether_error *err)
{
	const char *slash = strrchr(rel, '/');
	wchar_t *rb;
	char *dir;
	int r, fd = -1;

	if (!*rel || (slash && !slash[1]))
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%.300s' names a directory, not a file", rel);
	rb = fd_final_path(rootfd);
	if (!rb)
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot find the path of the file root's directory: %s",
		                      tether_win_strerror(GetLastError()));
	dir = slash ? tether_win_strndup(rel, (size_t)(slash - rel)) : tether_win_strndup("", 0);
	if (!dir) {
		free(rb);
		return tether_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	}
	r = open_beneath(rb, dir, 0, 1, &fd, err);
	free(dir);
	free(rb);
	if (r < 0)
		return r;
	*base = slash ? slash + 1 : rel;
	*out = fd;
	return 0;
}
#endif /* _WIN32 */
