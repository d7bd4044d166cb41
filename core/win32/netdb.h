/* Windows shim for <netdb.h>: getaddrinfo and friends are in Winsock 2 (see core/compat_win.h). */
#include "compat_win.h"
