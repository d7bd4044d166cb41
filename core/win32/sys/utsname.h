/* Windows shim for <sys/utsname.h>: see core/compat_win.h. */
#include "compat_win.h"
#ifndef TETHER_WIN_UTSNAME_H
#define TETHER_WIN_UTSNAME_H
struct utsname {
	char sysname[65], nodename[257], release[65], version[65], machine[65];
};
int tether_win_uname(struct utsname *u);
#define uname(u) tether_win_uname(u)
#endif
