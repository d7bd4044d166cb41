/*
 * Windows (mingw-w64) compatibility layer for the core, the CLI and the
 * agent.  Force-included (-include) by scripts/windows.mk before any other
 * header; never used by the Linux build.  The POSIX headers Windows lacks
 * are small shims in core/win32/ that lead here.
 *
 * What it does, and why:
 *  - brings in Winsock 2 before anything includes <windows.h> (order
 *    matters) and the C99 stdio of mingw-w64 (%zu, %lld);
 *  - maps the project's format(printf) attributes to gnu_printf, because
 *    mingw's gcc reads "printf" as the Microsoft format and would reject
 *    %zu that the C99 stdio implements;
 *  - gives the few POSIX calls the core uses a Windows implementation in
 *    core/compat_win.c, with the same contract (returns, errno).
 */
#ifndef TETHER_COMPAT_WIN_H
#define TETHER_COMPAT_WIN_H
#ifdef _WIN32

#define _CRT_RAND_S                            /* rand_s */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#ifndef _POSIX_THREAD_SAFE_FUNCTIONS
#define _POSIX_THREAD_SAFE_FUNCTIONS 200112L   /* gmtime_r, localtime_r */
#endif

#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <io.h>
#include <direct.h>
#include <fcntl.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <unistd.h>
#include <process.h>

/* Winsock takes the socket as SOCKET and the option as const char *; the
 * core passes an int descriptor or libuv's uv_os_fd_t (the SOCKET as a
 * HANDLE), and an int pointer. */
#define setsockopt(s, l, o, v, n) \
	setsockopt((SOCKET)(uintptr_t)(s), (l), (o), (const char *)(v), (int)(n))
/* Keepalive probe count and interval: Windows 10 1709 and later. */
#ifndef TCP_KEEPCNT
#define TCP_KEEPCNT 16
#endif
#ifndef TCP_KEEPINTVL
#define TCP_KEEPINTVL 17
#endif
/* Retransmission timeout in seconds (ws2ipdef.h): TCP_USER_TIMEOUT's role. */
#ifndef TCP_MAXRT
#define TCP_MAXRT 5
#endif

/* format(printf, a, b) in our headers -> the C99 (GNU) checker. */
#define format(archetype, ...) format(gnu_printf, __VA_ARGS__)

/* Open flags Windows does not have.  Files are opened in binary mode by
 * default (binmode.o is linked); inheritance is off for our descriptors. */
#ifndef O_NOFOLLOW
#define O_NOFOLLOW 0
#endif
#ifndef O_CLOEXEC
#define O_CLOEXEC _O_NOINHERIT
#endif
#ifndef O_DIRECTORY
#define O_DIRECTORY 0
#endif
#ifndef O_NOCTTY
#define O_NOCTTY 0
#endif
/* msvcrt's access() knows only existence, read and write. */
#undef X_OK
#define X_OK 0

#define _SC_NPROCESSORS_ONLN 84
#define LOCK_SH 1
#define LOCK_EX 2
#define LOCK_NB 4
#define LOCK_UN 8

#ifdef __cplusplus
extern "C" {
#endif

/* Whole-file lock with LockFileEx (flock semantics: advisory to us, per
 * descriptor). */
int tether_win_flock(int fd, int op);
/* mkdir; mode 0700-like (no group/other bits) gets a private DACL. */
int tether_win_mkdir(const char *path, int mode);
/* Restrict a file to its owner, SYSTEM and Administrators when mode has
 * no group/other bits (the Windows reading of 0600). */
int tether_win_fchmod(int fd, int mode);
int tether_win_chmod(const char *path, int mode);
/* rename() that replaces an existing target, as POSIX rename does. */
int tether_win_rename(const char *from, const char *to);
int tether_win_fsync(int fd);
long tether_win_random(void);
void *tether_win_memmem(const void *h, size_t hl, const void *n, size_t nl);
/* dlopen family over LoadLibraryW / GetProcAddress. */
void *tether_win_dlopen(const char *path, int flags);
void *tether_win_dlsym(void *h, const char *sym);
int tether_win_dlclose(void *h);
const char *tether_win_dlerror(void);
/* Directory holding the running .exe (no trailing separator); static. */
const char *tether_win_exe_dir(void);
/* %ProgramData%\tether: where instances live when no --home is given. */
const char *tether_win_default_home(void);
/* Read a line from the console without echo.  0, or negative if there is
 * no console. */
int tether_win_prompt_noecho(const char *prompt, char *buf, size_t cap);
/* Message text of a Win32 error code (static buffer per thread). */
const char *tether_win_strerror(unsigned long code);
/* sysconf(_SC_NPROCESSORS_ONLN) only. */
long tether_win_sysconf(int name);

/* Directory-relative calls and a few more (core/compat_win_fs.c); a
 * directory descriptor wraps a directory handle (core/pathjail_win.c). */
struct iovec {
	void *iov_base;
	size_t iov_len;
};
int tether_win_open_handle(HANDLE h, int flags);
int tether_win_openat(int dirfd, const char *name, int flags, ...);
int tether_win_unlinkat(int dirfd, const char *name, int flags);
int tether_win_renameat2(int olddirfd, const char *oldname, int newdirfd, const char *newname,
                         unsigned int flags);
int tether_win_fstatat(int dirfd, const char *name, struct stat *st, int flags);
int tether_win_fallocate(int fd, int mode, off_t offset, off_t len);
ssize_t tether_win_pread(int fd, void *buf, size_t n, off_t off);
ssize_t tether_win_writev(int fd, const struct iovec *iov, int cnt);
char *tether_win_strndup(const char *s, size_t n);
/* mkdtemp: the XXXXXX are replaced, the directory is made private. */
char *tether_win_mkdtemp(char *tmpl);

#ifdef __cplusplus
}
#endif

#define openat tether_win_openat
#define unlinkat(d, n, f) tether_win_unlinkat((d), (n), (f))
#define renameat2(a, b, c, d, f) tether_win_renameat2((a), (b), (c), (d), (f))
#define fstatat(d, n, st, f) tether_win_fstatat((d), (n), (st), (f))
#define fallocate(fd, m, o, l) tether_win_fallocate((fd), (m), (o), (l))
#define pread(fd, b, n, o) tether_win_pread((fd), (b), (n), (o))
#define writev(fd, v, c) tether_win_writev((fd), (v), (c))
#define strndup(s, n) tether_win_strndup((s), (n))
#define timegm(tm) _mkgmtime(tm)
#define mkdtemp(t) tether_win_mkdtemp(t)
#define AT_SYMLINK_NOFOLLOW 0x100
#define AT_REMOVEDIR 0x200
#define RENAME_NOREPLACE 1
#ifndef O_NONBLOCK
#define O_NONBLOCK 0
#endif
/* Windows reports a full quota as a full disk (ERROR_DISK_QUOTA_EXCEEDED). */
#ifndef EDQUOT
#define EDQUOT ENOSPC
#endif
#ifndef EOPNOTSUPP
#define EOPNOTSUPP 130
#endif

static inline void explicit_bzero(void *p, size_t n) { SecureZeroMemory(p, n); }

#define flock(fd, op) tether_win_flock((fd), (op))
#define mkdir(p, m) tether_win_mkdir((p), (m))
#define fchmod(fd, m) tether_win_fchmod((fd), (m))
#define chmod(p, m) tether_win_chmod((p), (m))
#define rename(a, b) tether_win_rename((a), (b))
#define fsync(fd) tether_win_fsync(fd)
#define random() tether_win_random()
#define sysconf(n) tether_win_sysconf(n)
#define memmem(h, hl, n, nl) tether_win_memmem((h), (hl), (n), (nl))
#define lstat(p, st) stat((p), (st))
/* realpath(p, NULL) allocates, as _fullpath(NULL, ...) does */
#define realpath(p, r) _fullpath((r), (p), MAX_PATH)
#define dlopen(p, f) tether_win_dlopen((p), (f))
#define dlsym(h, s) tether_win_dlsym((h), (s))
#define dlclose(h) tether_win_dlclose(h)
#define dlerror() tether_win_dlerror()
#define RTLD_NOW 2
#define RTLD_LOCAL 0
#define RTLD_LAZY 1

#endif /* _WIN32 */
#endif
