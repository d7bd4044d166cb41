/* No <termios.h> on Windows: core/secret.c uses tether_win_prompt_noecho. */
#include "compat_win.h"
