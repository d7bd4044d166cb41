/* Passwords and PINs: from a file, an environment variable, or a prompt on
 * a terminal; never from the command line.  Free with tether_free_secret. */
#ifndef TETHER_SECRET_H
#define TETHER_SECRET_H

#include "tether/provider.h"

/* Read a secret from file (one trailing "\n" or "\r\n" removed).  The
 * file must be a regular file of at most 4 KiB. */
int tether_secret_from_file(const char *path, char **out, tether_error *err);
/* file if given, else $envvar if set, else prompt (twice if confirm) on the
 * controlling terminal, else an error naming the three ways. */
int tether_secret_get(const char *file, const char *envvar, const char *prompt,
                      int confirm, char **out, tether_error *err);

#endif
