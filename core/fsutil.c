#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#ifndef _WIN32
#include <pwd.h>
#endif
#include "error.h"
#include "fsutil.h"
#include "util.h"

int tether_mkdirs(const char *path, mode_t mode, tether_error *err)
{
	char buf[4096];
	size_t i, n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_IO,
		                      "bad directory path '%s'", path);
	memcpy(buf, path, n + 1);
	for (i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return tether_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
			                      TETHER_CAT_IO, "cannot create directory %s: %s",
			                      buf, strerror(errno));
		if (i < n)
			buf[i] = '/';
	}
	if (!tether_is_dir(path))
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                      "%s exists and is not a directory", path);
	return 0;
}

static int fsync_dir_of(const char *path)
{
	char *d = tether_strdup(path), *slash = strrchr(d, '/');
	int fd;

	if (slash == d)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		strcpy(d, ".");
	fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(d);
	if (fd < 0)
		return -1;
	fsync(fd);
	close(fd);
	return 0;
}

int tether_write_atomic(const char *path, const void *data, size_t len,
                        mode_t mode, tether_error *err)
{
	return tether_write_atomic_flags(path, data, len, mode, 0, err);
}

int tether_write_atomic_flags(const char *path, const void *data, size_t len,
                              mode_t mode, unsigned flags, tether_error *err)
{
	char *tmp = NULL;
	const unsigned char *p = data;
	int fd = -1, r = 0, tries;
	size_t off = 0;

	for (tries = 0; tries < 16; tries++) {
		unsigned rnd = (unsigned)getpid() ^ (unsigned)random() ^ ((unsigned)tries << 20);
		free(tmp);
		tmp = tether_asprintf("%s.tmp.%08x", path, rnd);
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
		if (fd >= 0 || errno != EEXIST)
			break;
	}
	if (fd < 0) {
		r = tether_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                   TETHER_CAT_IO, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	/* umask may have narrowed it; never widen beyond mode */
	if (fchmod(fd, mode) < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "chmod %s: %s", tmp, strerror(errno));
		goto out;
	}
	while (off < len) {
		ssize_t w = write(fd, p + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot write %s: %s",
			                   tmp, w < 0 ? strerror(errno) : "short write");
			goto out;
		}
		off += (size_t)w;
	}
	if (!(flags & TETHER_WRITE_NOSYNC) && fsync(fd) < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot fsync %s: %s",
		                   tmp, strerror(errno));
		goto out;
	}
	close(fd);
	fd = -1;
	if (rename(tmp, path) < 0) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot rename %s to %s: %s",
		                   tmp, path, strerror(errno));
		goto out;
	}
	if (!(flags & TETHER_WRITE_NOSYNC))
		fsync_dir_of(path);
out:
	if (fd >= 0)
		close(fd);
	if (r < 0 && tmp)
		unlink(tmp);
	free(tmp);
	return r;
}

int tether_read_file(const char *path, size_t max, unsigned char **out,
                     size_t *len, tether_error *err)
{
	int fd, r = 0;
	struct stat st;
	unsigned char *buf = NULL;
	size_t cap, n = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return tether_err_set(err, errno == ENOENT ? TETHER_ERR_NOT_FOUND :
		                      errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                      errno == ENOENT ? TETHER_CAT_NOT_FOUND : TETHER_CAT_IO,
		                      "cannot open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "%s is not a regular file", path);
		goto out;
	}
	if ((size_t)st.st_size > max) {
		r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "%s is too large (%lld bytes; at most %zu expected)",
		                   path, (long long)st.st_size, max);
		goto out;
	}
	cap = (size_t)st.st_size + 1;
	buf = tether_xmalloc(cap + 1);
	for (;;) {
		ssize_t rd;
		if (n == cap) {
			r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                   "%s grew while being read", path);
			goto out;
		}
		rd = read(fd, buf + n, cap - n);
		if (rd < 0 && errno == EINTR)
			continue;
		if (rd < 0) {
			r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot read %s: %s",
			                   path, strerror(errno));
			goto out;
		}
		if (rd == 0)
			break;
		n += (size_t)rd;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	buf = NULL;
out:
	if (buf)
		tether_free_wiped(buf, cap);
	close(fd);
	return r;
}

int tether_lock(const char *path, tether_error *err)
{
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (fd < 0)
		return tether_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                      TETHER_CAT_IO, "cannot open lock file %s: %s", path, strerror(errno));
	while (flock(fd, LOCK_EX) < 0) {
		if (errno == EINTR)
			continue;
		close(fd);
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot lock %s: %s",
		                      path, strerror(errno));
	}
	return fd;
}

int tether_lock_wait(const char *path, int timeout_ms, tether_error *err)
{
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	int waited = 0;
	char pid[32];

	if (fd < 0)
		return tether_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                      TETHER_CAT_IO, "cannot open lock file %s: %s", path, strerror(errno));
	while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EINTR)
			continue;
		if (errno != EWOULDBLOCK || waited >= timeout_ms) {
			int e = errno;
			ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
			pid[n > 0 ? n : 0] = '\0';
			pid[strcspn(pid, "\n")] = '\0';
			close(fd);
			if (e != EWOULDBLOCK)
				return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot lock %s: %s",
				                      path, strerror(e));
			return tether_err_set(err, TETHER_ERR_TIMEOUT, TETHER_CAT_IO,
			                      "%s is held by another process (pid %s) for more than %d s: let it "
			                      "finish (or stop it) and try again", path, pid[0] ? pid : "unknown",
			                      timeout_ms / 1000);
		}
		usleep(10000);
		waited += 10;
	}
	snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	/* best effort (lseek + write: mingw has no pwrite) */
	if (ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0 && write(fd, pid, strlen(pid)) < 0) { }
	return fd;
}

void tether_unlock(int fd)
{
	if (fd >= 0) {
		flock(fd, LOCK_UN);
		close(fd);
	}
}

int tether_rmtree(const char *path)
{
	DIR *d;
	struct dirent *e;
	int r = 0;

	if (!path || !*path || !strcmp(path, "/"))
		return -1;
	d = opendir(path);
	if (!d)
		return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
	while ((e = readdir(d))) {
		char *p;
		struct stat st;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		p = tether_asprintf("%s/%s", path, e->d_name);
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			r |= tether_rmtree(p);
		else if (unlink(p) < 0)
			r = -1;
		free(p);
	}
	closedir(d);
	if (rmdir(path) < 0)
		r = -1;
	return r;
}

int tether_path_exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

int tether_is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int tether_check_writable_dir(const char *dir, tether_error *err)
{
	int r = tether_mkdirs(dir, 0700, err);
	if (r < 0)
		return r;
	if (access(dir, W_OK | X_OK) < 0) {
		int e = errno;
#ifndef _WIN32
		struct stat st;
		if (stat(dir, &st) == 0 && st.st_uid != geteuid()) {
			struct passwd *pw = getpwuid(st.st_uid);
			char uid[24];
			snprintf(uid, sizeof(uid), "uid %u", (unsigned)st.st_uid);
			return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
			                      "state directory %s is not writable by this user (uid %u): %s: "
			                      "run as the instance's owner (%s), or fix the directory's permissions",
			                      dir, (unsigned)geteuid(), strerror(e), pw ? pw->pw_name : uid);
		}
#endif
		return tether_err_set(err, TETHER_ERR_PERMISSION, TETHER_CAT_IO,
		                      "state directory %s is not writable: %s: fix its permissions (it must "
		                      "be writable by the instance's owner) or run as that owner", dir, strerror(e));
	}
	return 0;
}

int tether_write_behind(int fd, tether_write_behind_state *wb, uint64_t written)
{
	if (written < wb->started || written - wb->started < TETHER_WRITE_BEHIND)
		return 0;
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
	/* Only starts the writeback; a failure of this step shows at the
	 * wait below or at the fsync. */
	(void)sync_file_range(fd, (off_t)wb->started, (off_t)(written - wb->started), SYNC_FILE_RANGE_WRITE);
	if (wb->dropped != UINT64_MAX && wb->prev > wb->dropped) {
		/* The wait consumes a writeback error of this descriptor (the
		 * fsync would not see it again): hand it to the caller. */
		if (sync_file_range(fd, (off_t)wb->dropped, (off_t)(wb->prev - wb->dropped),
		                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
		                    SYNC_FILE_RANGE_WAIT_AFTER) < 0) {
			int e = errno;
			/* not for this file (no error was consumed): only write-behind */
			if (e == EINVAL || e == ESPIPE || e == ENOSYS)
				wb->dropped = UINT64_MAX;
			else if (e != EINTR)
				return -(e ? e : EIO);
		} else {
			(void)posix_fadvise(fd, (off_t)wb->dropped, (off_t)(wb->prev - wb->dropped),
			                    POSIX_FADV_DONTNEED);
			wb->dropped = wb->prev;
		}
	}
#else
	(void)fd;
#endif
	wb->prev = wb->started;
	wb->started = written;
	return 0;
}
