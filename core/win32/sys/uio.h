/* Windows shim for <sys/uio.h>: struct iovec and writev are in core/compat_win.h. */
#include "compat_win.h"
