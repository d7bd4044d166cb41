/* registry_name_ok (registry.h): the rule for target names, tags and
 * isolation names.  Apart from registry.c, which needs SQLite, so that the
 * tether-server front (server/front.c) can check names without it. */
#include "config.h"
#include <string.h>
#include "error.h"
#include "registry.h"

int registry_name_ok(const char *name, const char *what, tether_error *err)
{
	size_t i, n;

	if (!name || !*name)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "the %s is empty: use 1 to %d letters, digits, '_', '.' or '-'",
		                      what, REG_NAME_MAX);
	n = strlen(name);
	if (n > REG_NAME_MAX)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s '%.32s...' is too long (%zu characters): use at most %d",
		                      what, name, n, REG_NAME_MAX);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '_' || c == '.' || c == '-')
			continue;
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s '%s' is not valid: character %zu ('%c') is not allowed; use "
		                      "letters, digits, '_', '.' or '-'", what, name, i + 1,
		                      c >= 32 && c < 127 ? c : '?');
	}
	return 0;
}
