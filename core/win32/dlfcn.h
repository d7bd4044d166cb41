/* Windows shim for <dlfcn.h>: see core/compat_win.h. */
#include "compat_win.h"
