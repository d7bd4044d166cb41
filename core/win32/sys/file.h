/* Windows shim for <sys/file.h>: see core/compat_win.h. */
#include "compat_win.h"
