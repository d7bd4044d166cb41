/* Windows shim for <sys/wait.h>: nothing is needed (processes are libuv handles). */
#include "compat_win.h"
