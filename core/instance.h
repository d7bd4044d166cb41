/* Instances: several named agents or servers on one machine, each with
 * its own config file and state directory.
 *
 * Layout, system-wide (default):
 *   /etc/tether/<program>-<name>.ini
 *   /var/lib/tether/<program>-<name>/        state (0700)
 *   /run/tether/<program>-<name>/            sockets (0750)
 * With --home DIR (or $TETHER_HOME), for tests and non-root use:
 *   DIR/<program>-<name>/<program>.ini, DIR/<program>-<name>/state/,
 *   DIR/<program>-<name>/run/
 */
#ifndef TETHER_INSTANCE_H
#define TETHER_INSTANCE_H

#include "tether/provider.h"

#define TETHER_DEFAULT_INSTANCE "default"

typedef struct tether_instance {
	char *program;      /* "agent" or "server" */
	char *name;
	char *home;         /* NULL: system layout */
	char *config_path;
	char *state_dir;
	char *run_dir;
	char *base_dir;     /* home layout: DIR/<program>-<name>; else NULL */
} tether_instance;

/* Validate an instance name: 1-64 of [A-Za-z0-9_.-], not starting with '.'. */
int tether_instance_name_ok(const char *name, tether_error *err);
/* Compute paths (does not touch the disk).  home may be NULL. */
int tether_instance_init(const char *program, const char *name,
                         const char *home, tether_instance **out,
                         tether_error *err);
void tether_instance_free(tether_instance *in);
int tether_instance_exists(const tether_instance *in);
/* Create config (from template) and state dirs; EXISTS if present. */
int tether_instance_create(const tether_instance *in, const char *config_text,
                           tether_error *err);
/* Remove config and state; NOT_FOUND if absent. */
int tether_instance_delete(const tether_instance *in, tether_error *err);
/* Names of existing instances of program, sorted; returns count.  *names
 * is malloc'd, each name too. */
int tether_instance_list(const char *program, const char *home,
                         char ***names, tether_error *err);
/* " --instance NAME --home DIR", each part only when not the default (name
 * NULL or "default", home NULL or empty): what a command printed for the
 * user to run needs so that it acts on this instance.  Returns buf. */
const char *tether_instance_args(const char *name, const char *home, char *buf, size_t n);
/* Error for a missing instance, with what to run. */
int tether_instance_missing(const tether_instance *in, tether_error *err);

#endif
