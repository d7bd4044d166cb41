/* Windows implementations of the directory-relative file calls (openat,
 * unlinkat, renameat2, fstatat), fallocate, pread, writev and strndup (see
 * compat_win.h).  Built only by the mingw-w64 cross-build.
 *
 * A "directory descriptor" is a CRT descriptor wrapping a directory handle
 * (core/pathjail_win.c opens them; FILE_FLAG_BACKUP_SEMANTICS, no
 * FILE_SHARE_DELETE, so the directory and its ancestors cannot be renamed
 * or removed while it is held).  A name relative to it is resolved against
 * the directory's final path (GetFinalPathNameByHandleW): with the
 * directory pinned that way, the path names the same directory.  Names must
 * be single components (no '/', '\\' or ':').
 */
#ifdef _WIN32
#include "config.h"
#include <errno.h>
#include <wchar.h>

#undef openat
#undef unlinkat
#undef renameat2
#undef fstatat
#undef fallocate
#undef pread
#undef writev
#undef strndup
#undef mkdtemp

static void errno_from_win(DWORD e)
{
	switch (e) {
	case ERROR_FILE_NOT_FOUND:
	case ERROR_PATH_NOT_FOUND:
	case ERROR_INVALID_DRIVE: errno = ENOENT; break;
	case ERROR_ACCESS_DENIED:
	case ERROR_SHARING_VIOLATION:
	case ERROR_LOCK_VIOLATION: errno = EACCES; break;
	case ERROR_ALREADY_EXISTS:
	case ERROR_FILE_EXISTS: errno = EEXIST; break;
	case ERROR_DIRECTORY: errno = ENOTDIR; break;
	case ERROR_DISK_FULL:
	case ERROR_HANDLE_DISK_FULL:
	case 1295: /* ERROR_DISK_QUOTA_EXCEEDED */ errno = ENOSPC; break;
	case ERROR_NOT_ENOUGH_MEMORY:
	case ERROR_OUTOFMEMORY: errno = ENOMEM; break;
	case ERROR_FILENAME_EXCED_RANGE: errno = ENAMETOOLONG; break;
	case ERROR_INVALID_NAME: errno = EINVAL; break;
	case ERROR_INVALID_HANDLE: errno = EBADF; break;
	default: errno = EIO; break;
	}
}

/* Final path of the directory behind dirfd + "\" + name, allocated. */
static wchar_t *at_path(int dirfd, const char *name)
{
	HANDLE h = (HANDLE)_get_osfhandle(dirfd);
	wchar_t *dir = NULL, *out = NULL;
	DWORD n;
	int wn;
	size_t dl;

	if (h == INVALID_HANDLE_VALUE) {
		errno = EBADF;
		return NULL;
	}
	if (!*name || strpbrk(name, "/\\:")) {
		errno = EINVAL;
		return NULL;
	}
	n = GetFinalPathNameByHandleW(h, NULL, 0, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS);
	if (n == 0) {
		errno_from_win(GetLastError());
		return NULL;
	}
	dir = malloc((n + 1) * sizeof(wchar_t));
	if (!dir) {
		errno = ENOMEM;
		return NULL;
	}
	n = GetFinalPathNameByHandleW(h, dir, n + 1, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS);
	if (n == 0) {
		errno_from_win(GetLastError());
		free(dir);
		return NULL;
	}
	dl = wcslen(dir);
	while (dl > 0 && dir[dl - 1] == L'\\')
		dl--;
	wn = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, name, -1, NULL, 0);
	if (wn <= 0) {
		errno = EILSEQ;
		free(dir);
		return NULL;
	}
	out = malloc((dl + 1 + (size_t)wn) * sizeof(wchar_t));
	if (!out) {
		errno = ENOMEM;
		free(dir);
		return NULL;
	}
	memcpy(out, dir, dl * sizeof(wchar_t));
	out[dl] = L'\\';
	MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, name, -1, out + dl + 1, wn);
	free(dir);
	return out;
}

int tether_win_open_handle(HANDLE h, int flags)
{
	int fd = _open_osfhandle((intptr_t)h, (flags & (O_WRONLY | O_RDWR | O_APPEND)) | _O_BINARY);

	if (fd < 0) {
		CloseHandle(h);
		errno = EMFILE;
	}
	return fd;
}

int tether_win_openat(int dirfd, const char *name, int flags, ...)
{
	wchar_t *p = at_path(dirfd, name);
	DWORD access, disp, attrs = FILE_ATTRIBUTE_NORMAL | FILE_FLAG_BACKUP_SEMANTICS;
	HANDLE h;
	int fd;

	if (!p)
		return -1;
	access = (flags & O_RDWR) ? GENERIC_READ | GENERIC_WRITE :
	         (flags & O_WRONLY) ? GENERIC_WRITE : GENERIC_READ;
	if (flags & O_APPEND)
		access |= FILE_APPEND_DATA;
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
	/* O_NOFOLLOW is 0 here: a reparse point is always opened itself,
	 * never followed, when the file is created */
	if (flags & O_CREAT)
		attrs |= FILE_FLAG_OPEN_REPARSE_POINT;
	/* FILE_SHARE_DELETE: an upload renames its temporary file while it is
	 * still open (renameat2 below), as POSIX allows */
	h = CreateFileW(p, access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, disp,
	                attrs, NULL);
	free(p);
	if (h == INVALID_HANDLE_VALUE) {
		errno_from_win(GetLastError());
		return -1;
	}
	fd = tether_win_open_handle(h, flags);
	return fd;
}

int tether_win_unlinkat(int dirfd, const char *name, int flags)
{
	wchar_t *p = at_path(dirfd, name);
	BOOL ok;

	if (!p)
		return -1;
	ok = (flags & AT_REMOVEDIR) ? RemoveDirectoryW(p) : DeleteFileW(p);
	if (!ok)
		errno_from_win(GetLastError());
	free(p);
	return ok ? 0 : -1;
}

int tether_win_renameat2(int olddirfd, const char *oldname, int newdirfd, const char *newname,
                         unsigned int flags)
{
	wchar_t *a = at_path(olddirfd, oldname), *b = a ? at_path(newdirfd, newname) : NULL;
	int r = 0;

	if (!a || !b) {
		r = -1;
	} else if (!MoveFileExW(a, b, MOVEFILE_WRITE_THROUGH |
	                        ((flags & RENAME_NOREPLACE) ? 0 : MOVEFILE_REPLACE_EXISTING))) {
		errno_from_win(GetLastError());
		r = -1;
	}
	free(a);
	free(b);
	return r;
}

static time_t filetime_unix(FILETIME ft)
{
	uint64_t t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
	return (time_t)(t / 10000000ULL - 11644473600ULL);
}

int tether_win_fstatat(int dirfd, const char *name, struct stat *st, int flags)
{
	wchar_t *p = at_path(dirfd, name);
	WIN32_FILE_ATTRIBUTE_DATA fa;

	(void)flags;
	if (!p)
		return -1;
	if (!GetFileAttributesExW(p, GetFileExInfoStandard, &fa)) {
		errno_from_win(GetLastError());
		free(p);
		return -1;
	}
	free(p);
	memset(st, 0, sizeof(*st));
	st->st_mode = (fa.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) ? (_S_IFDIR | 0755) :
	              (fa.dwFileAttributes & FILE_ATTRIBUTE_READONLY) ? (_S_IFREG | 0444) : (_S_IFREG | 0644);
	st->st_size = (off_t)(((uint64_t)fa.nFileSizeHigh << 32) | fa.nFileSizeLow);
	st->st_mtime = filetime_unix(fa.ftLastWriteTime);
	st->st_atime = filetime_unix(fa.ftLastAccessTime);
	st->st_ctime = filetime_unix(fa.ftCreationTime);
	st->st_nlink = 1;
	return 0;
}

int tether_win_fallocate(int fd, int mode, off_t offset, off_t len)
{
	HANDLE h = (HANDLE)_get_osfhandle(fd);
	FILE_ALLOCATION_INFO ai;

	if (h == INVALID_HANDLE_VALUE) {
		errno = EBADF;
		return -1;
	}
	if (mode != 0 || offset < 0 || len < 0) {
		errno = EOPNOTSUPP;
		return -1;
	}
	ai.AllocationSize.QuadPart = (LONGLONG)(offset + len);
	if (!SetFileInformationByHandle(h, FileAllocationInfo, &ai, sizeof(ai))) {
		errno_from_win(GetLastError());
		return -1;
	}
	return 0;
}

ssize_t tether_win_pread(int fd, void *buf, size_t n, off_t off)
{
	HANDLE h = (HANDLE)_get_osfhandle(fd);
	OVERLAPPED ov;
	DWORD got = 0;

	if (h == INVALID_HANDLE_VALUE) {
		errno = EBADF;
		return -1;
	}
	if (n > 0x7fffffff)
		n = 0x7fffffff;
	memset(&ov, 0, sizeof(ov));
	ov.Offset = (DWORD)((uint64_t)off & 0xffffffffu);
	ov.OffsetHigh = (DWORD)((uint64_t)off >> 32);
	if (!ReadFile(h, buf, (DWORD)n, &got, &ov)) {
		DWORD e = GetLastError();
		if (e == ERROR_HANDLE_EOF)
			return 0;
		errno_from_win(e);
		return -1;
	}
	return (ssize_t)got;
}

/* Not atomic as POSIX writev is: the buffers are written one after the
 * other (the callers hold their own lock around a record). */
ssize_t tether_win_writev(int fd, const struct iovec *iov, int cnt)
{
	ssize_t total = 0;
	int i;

	for (i = 0; i < cnt; i++) {
		const char *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;
		while (left > 0) {
			int w = _write(fd, p, left > 0x40000000 ? 0x40000000u : (unsigned)left);
			if (w < 0)
				return total > 0 ? total : -1;
			if (w == 0)
				return total;
			p += w;
			left -= (size_t)w;
			total += w;
		}
	}
	return total;
}

char *tether_win_strndup(const char *s, size_t n)
{
	size_t l = strnlen(s, n);
	char *d = malloc(l + 1);

	if (!d) {
		errno = ENOMEM;
		return NULL;
	}
	memcpy(d, s, l);
	d[l] = '\0';
	return d;
}

char *tether_win_mkdtemp(char *tmpl)
{
	size_t l = strlen(tmpl);
	int i;

	if (l < 6 || strcmp(tmpl + l - 6, "XXXXXX")) {
		errno = EINVAL;
		return NULL;
	}
	for (i = 0; i < 100; i++) {
		static const char al[] = "abcdefghijklmnopqrstuvwxyz0123456789";
		unsigned int v;
		int k;
		for (k = 0; k < 6; k++) {
			if (rand_s(&v) != 0) {
				errno = EIO;
				return NULL;
			}
			tmpl[l - 6 + k] = al[v % (sizeof(al) - 1)];
		}
		if (tether_win_mkdir(tmpl, 0700) == 0)
			return tmpl;
		if (errno != EEXIST)
			return NULL;
	}
	errno = EEXIST;
	return NULL;
}
#endif /* _WIN32 */
