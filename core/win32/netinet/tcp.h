/* Windows shim for <netinet/tcp.h>: see core/compat_win.h. */
#include "compat_win.h"
