/* Windows shim for <sys/socket.h>: Winsock 2 (see core/compat_win.h). */
#include "compat_win.h"
#ifndef SHUT_RDWR
#define SHUT_RD SD_RECEIVE
#define SHUT_WR SD_SEND
#define SHUT_RDWR SD_BOTH
#endif
