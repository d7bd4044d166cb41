/*
 * no_openat2.c: an LD_PRELOAD shim for tests only.  It answers ENOSYS to
 * syscall(SYS_openat2, ...), as a kernel older than 5.6 does, and forwards
 * every other syscall() to the C library.  core/pathjail.c calls openat2
 * through syscall(); on ENOSYS it falls back to its own component walk, so
 * a real tether-agent started with this shim confines paths the way it
 * would on an old kernel (tests/integration/symlink_race.sh).
 *
 * Environment:
 *   TETHER_NO_OPENAT2_MARK  optional: a file created the first time openat2
 *                           is refused, so the test can tell that the shim
 *                           was in the way (a shim that never runs would
 *                           make the walk's test a second openat2 test).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

long syscall(long number, ...);

long syscall(long number, ...)
{
	static long (*real)(long, ...);
	long a[6];
	va_list ap;
	int i;

	if (number == SYS_openat2) {
		const char *mark = getenv("TETHER_NO_OPENAT2_MARK");
		if (mark) {
			int fd = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
			if (fd >= 0)
				close(fd);
		}
		errno = ENOSYS;
		return -1;
	}
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "syscall");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	/* Every Linux syscall takes at most six word-sized arguments. */
	va_start(ap, number);
	for (i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
