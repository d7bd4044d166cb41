/* Files: atomic writes, secret files, reading with a bound, locks. */
#ifndef TETHER_FSUTIL_H
#define TETHER_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "tether/provider.h"

/* mkdir -p with mode for the directories created. */
int tether_mkdirs(const char *path, mode_t mode, tether_error *err);
/* Write data to path atomically: a temporary file in the same directory
 * created O_EXCL|O_NOFOLLOW with mode (never wider, even for an instant),
 * fsync, rename over path, fsync the directory. */
int tether_write_atomic(const char *path, const void *data, size_t len,
                        mode_t mode, tether_error *err);
/* The same with flags: TETHER_WRITE_NOSYNC skips both fsyncs, for state
 * that need only survive the process (a crash or kill of the daemon), not
 * the machine: the rename is still atomic, so readers see the old or the
 * new whole file, never part of one. */
#define TETHER_WRITE_NOSYNC 1u
int tether_write_atomic_flags(const char *path, const void *data, size_t len,
                              mode_t mode, unsigned flags, tether_error *err);
/* Read a whole file of at most max bytes.  *out is NUL-terminated
 * (not counted in *len); free with free() or tether_free_wiped(). */
int tether_read_file(const char *path, size_t max, unsigned char **out,
                     size_t *len, tether_error *err);
/* Exclusive advisory lock on path (created 0600 if absent).  Returns an
 * fd >= 0 or a negative error. */
int tether_lock(const char *path, tether_error *err);
void tether_unlock(int fd);
/* The same, waiting at most timeout_ms; the holder's pid is written into
 * the lock file so that a timeout can name it. */
int tether_lock_wait(const char *path, int timeout_ms, tether_error *err);
/* rm -rf of a directory we own.  Refuses "/" and "". */
int tether_rmtree(const char *path);
/* Write-behind for a file written front to back and fsynced at the end (a
 * transfer's temporary file), on Linux (elsewhere it does nothing):
 *  - each time TETHER_WRITE_BEHIND more bytes were written, their writeback
 *    to the disk is started without waiting (sync_file_range), so the
 *    final fsync has little left to do and the disk works while the data
 *    still arrives;
 *  - the windows before the previous one, whose writeback had a whole window's
 *    time to finish, are waited for and dropped from the page cache
 *    (POSIX_FADV_DONTNEED): a large transfer then keeps about three windows
 *    cached instead of the whole file, reuses the pages it just freed
 *    instead of taking fresh ones (BENCHMARKS.md, session 5: on a VM
 *    those cost the writer several times the copy), and does not push
 *    out what the machine's other programs keep cached.  The wait only
 *    lasts when the disk is slower than the data arrives, which then sets
 *    the pace.
 * written: the bytes written so far.  Returns 0, or a negative errno when
 * the writeback of an earlier window failed: the file is then not what was
 * written, and the error is reported here, not by the final fsync (the
 * kernel reports a writeback error once per descriptor), so the caller
 * must fail the transfer. */
#define TETHER_WRITE_BEHIND (8u << 20)
typedef struct tether_write_behind_state {
	uint64_t started;               /* writeback started up to here */
	uint64_t prev;                  /* where the previous window began */
	uint64_t dropped;               /* written back and dropped up to here */
} tether_write_behind_state;
int tether_write_behind(int fd, tether_write_behind_state *wb, uint64_t written);
int tether_path_exists(const char *path);
int tether_is_dir(const char *path);
/* Checks that dir is writable by us (creating it if needed). */
int tether_check_writable_dir(const char *dir, tether_error *err);

#endif
