/* The admin methods on the target registry: target.add, target.list,
 * target.show, target.remove, target.set-thumbprint.  Every parameter is
 * validated; unknown parameters are refused. */
#ifndef TETHER_ADMIN_TARGETS_H
#define TETHER_ADMIN_TARGETS_H

#include <jansson.h>
#include "admin.h"
#include "registry.h"

/* Handle method if it is one of the above: answers call (now), writes an
 * audit record to a (may be NULL) and returns 1.  Returns 0, without
 * touching call, for any other method. */
int admin_targets_dispatch(registry *reg, tether_audit *a, admin_call *call,
                           const char *method, json_t *params);

#endif
