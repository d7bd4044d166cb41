/* Windows shim for <netinet/in.h>: see core/compat_win.h. */
#include "compat_win.h"
