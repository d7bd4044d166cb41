/* Provider loader: find a provider by name, dlopen it, check its ABI. */
#ifndef TETHER_LOADER_H
#define TETHER_LOADER_H

#include "tether/provider.h"

/* A loaded, initialised provider. */
typedef struct tether_prov {
	void *dl;                       /* dlopen handle */
	const tether_provider *t;       /* the provider's table */
	tether_provider_ctx *ctx;       /* its instance context */
	tether_host host;               /* what we gave it (stays valid) */
	char *path;                     /* the file loaded */
	char *name;                     /* config section: the name asked for */
	char *state_dir;
	char *instance;
	char *program;
	/* config lookup for the provider's section */
	const char *(*config_get)(void *arg, const char *section, const char *key);
	void *config_arg;
} tether_prov;

typedef struct tether_prov_opts {
	const char *state_dir;          /* the instance's state directory */
	const char *instance;
	const char *program;            /* "agent", "server", "ping" */
	/* Look a key up in a config section; may be NULL (no config). */
	const char *(*config_get)(void *arg, const char *section, const char *key);
	void *config_arg;
} tether_prov_opts;

/* Search order for NAME (file tether-NAME.so):
 *   1. each directory of $TETHER_PROVIDER_PATH (':'-separated)
 *   2. the build tree, when the running program is inside it
 *   3. the installed provider directory (TETHER_PROVIDER_DIR)
 * NAME may also be a path to a .so (contains '/').
 * On failure err->detail says what was searched and what went wrong. */
int tether_provider_load(const char *name, const tether_prov_opts *opts,
                         tether_prov **out, tether_error *err);
void tether_provider_unload(tether_prov *p);

/* True if the loaded table has operation `field` (it lies within the
 * size the provider reported, and is non-NULL). */
#define TETHER_PROV_HAS(p, field) \
	((p)->t->size >= offsetof(tether_provider, field) + sizeof((p)->t->field) && \
	 (p)->t->field != NULL)

#endif
