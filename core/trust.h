/* The agent's trust: the set of server thumbprints it accepts, and its
 * recovery thumbprints (whose holder may only replace the whole set).
 * Kept in <state>/trust.json (0600), changed under <state>/trust.lock by
 * the CLI and the daemon alike. */
#ifndef TETHER_TRUST_H
#define TETHER_TRUST_H

#include <stddef.h>
#include <stdint.h>
#include "thumbprint.h"

#define TETHER_TRUST_MAX 256

typedef struct tether_trust_entry {
	tether_thumbprint tp;
	int64_t added;              /* epoch seconds */
	char note[128];             /* how it got there: "cli", "rotate", ... */
	/* trust.rotate: this entry was named by the server it succeeds, whose
	 * thumbprint this is; cleared when the successor retires it. */
	int has_predecessor;
	tether_thumbprint predecessor;
} tether_trust_entry;

typedef struct tether_trust {
	tether_trust_entry trusted[TETHER_TRUST_MAX];
	size_t ntrusted;
	tether_trust_entry recovery[TETHER_TRUST_MAX];
	size_t nrecovery;
	uint64_t generation;        /* bumped on every save */
} tether_trust;

int tether_trust_load(const char *state_dir, tether_trust *out, tether_error *err);
/* Lock, load, call fn, save if fn returned > 0 (changed), unlock.  fn
 * returns < 0 to abort with nothing written, 0 for "no change". */
typedef int (*tether_trust_fn)(tether_trust *t, void *arg, tether_error *err);
int tether_trust_update(const char *state_dir, tether_trust_fn fn, void *arg,
                        tether_error *err);

int tether_trust_find(const tether_trust_entry *v, size_t n, const tether_thumbprint *tp);
/* Add: 1 added, 0 already present, < 0 full. */
int tether_trust_add(tether_trust_entry *v, size_t *n, const tether_thumbprint *tp,
                     const char *note, tether_error *err);
/* Remove: 1 removed, 0 absent. */
int tether_trust_remove(tether_trust_entry *v, size_t *n, const tether_thumbprint *tp);
int tether_trust_is_trusted(const tether_trust *t, const tether_thumbprint *tp);

char *tether_trust_path(const char *state_dir);

#endif
