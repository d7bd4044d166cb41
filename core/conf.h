/* Configuration: INI files read with inih, edited in place (comments and
 * order kept), validated before any change is written. */
#ifndef TETHER_CONF_H
#define TETHER_CONF_H

#include <stddef.h>
#include "tether/provider.h"

typedef struct tether_config_entry {
	char *section;
	char *key;
	char *value;
	int line;
} tether_config_entry;

typedef struct tether_config {
	char *path;                 /* NULL for an in-memory config */
	tether_config_entry *e;
	size_t n, cap;
} tether_config;

/* A key a program knows: section, key, a validator (NULL: any string),
 * whether it may repeat, and its default shown by show-configuration. */
typedef struct tether_config_key {
	const char *section;
	const char *key;
	int (*validate)(const char *value, char *why, size_t why_len);
	int multi;
	const char *def;
	const char *help;
} tether_config_key;

/* Parse a file (NOT_FOUND if absent) or a string.  Unknown sections and
 * keys are errors when schema is given (they are usually typos). */
int tether_config_load(const char *path, const tether_config_key *schema,
                       tether_config **out, tether_error *err);
int tether_config_parse(const char *text, const char *name,
                        const tether_config_key *schema,
                        tether_config **out, tether_error *err);
void tether_config_free(tether_config *c);

/* Last value of section.key, or def if absent. */
const char *tether_config_get(const tether_config *c, const char *section,
                              const char *key, const char *def);
/* All values of a repeatable key, in file order; returns the count. */
size_t tether_config_get_all(const tether_config *c, const char *section,
                             const char *key, const char **out, size_t max);
/* "on/off/yes/no/true/false/1/0": 1, 0, or -1 if not a boolean. */
int tether_config_bool(const char *v);

/* Edits, applied to the file text in place.  value NULL removes the key
 * (every occurrence).  add appends another occurrence of a repeatable key;
 * remove_value removes the occurrences equal to value.  The result is
 * parsed and validated against schema before it is written (atomically);
 * on failure the file is untouched. */
typedef enum { TETHER_CFG_SET, TETHER_CFG_ADD, TETHER_CFG_REMOVE_VALUE, TETHER_CFG_UNSET } tether_cfg_op;
typedef struct tether_config_edit {
	tether_cfg_op op;
	const char *section;
	const char *key;
	const char *value;
} tether_config_edit;
int tether_config_apply(const char *path, const tether_config_key *schema,
                        const tether_config_edit *edits, size_t n,
                        tether_error *err);
/* What tether_config_apply would refuse, without writing anything (to
 * check edits before another change they go with). */
int tether_config_check_edits(const char *path, const tether_config_key *schema,
                              const tether_config_edit *edits, size_t n,
                              tether_error *err);
/* Same on a text; returns a malloc'd new text. */
int tether_config_edit_text(const char *text, const tether_config_edit *edits,
                            size_t n, char **out, tether_error *err);

/* Common validators. */
int tether_validate_hostport(const char *v, char *why, size_t n);
int tether_validate_hostport_or_off(const char *v, char *why, size_t n);
int tether_validate_bool(const char *v, char *why, size_t n);
int tether_validate_uint(const char *v, char *why, size_t n);
int tether_validate_log_level(const char *v, char *why, size_t n);

#endif
