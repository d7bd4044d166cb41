/* Errors: category names and hints, and setting a tether_error. */
#ifndef TETHER_ERROR_H
#define TETHER_ERROR_H

#include "tether/provider.h"

/* The JSON/log spelling of a category ("untrusted", "timeout", ...). */
const char *tether_category_name(int category);
/* One troubleshooting hint per category: what tether requires and where
 * to look.  Never NULL. */
const char *tether_category_hint(int category);
/* A short text for a return code ("not found", "I/O error", ...). */
const char *tether_err_str(int code);

/* Set err (may be NULL) and return code. */
int tether_err_set(tether_error *err, int code, int category,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void tether_err_clear(tether_error *err);
/* Prefix err->detail with more context: "context: old detail". */
void tether_err_prefix(tether_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
