/* The CLI side of the admin socket (see server/admin.h for the protocol):
 * one request, one answer, over <run_dir>/admin.sock. */
#ifndef TETHER_ADMIN_CLIENT_H
#define TETHER_ADMIN_CLIENT_H

#include <stdint.h>
#include <jansson.h>
#include "instance.h"

#define ADMIN_CLIENT_TIMEOUT_MS 30000

/* Send method with params (borrowed; NULL for none) to the daemon of inst
 * and wait up to timeout_ms for the answer.  *result (owned by the caller)
 * is the "result" member.  Errors: NOT_FOUND (category not_found) if no
 * daemon runs, PERMISSION if the socket cannot be reached or the daemon
 * refused us (its message), TIMEOUT, CLOSED, and the daemon's own error
 * (message and category) mapped to a code: not_found -> NOT_FOUND,
 * exists -> EXISTS, bad_input -> INVALID, permission_denied -> PERMISSION,
 * io -> IO, unsupported/unknown_method -> UNSUPPORTED, else INTERNAL. */
int admin_client_call(const tether_instance *inst, const char *method, json_t *params,
                      uint32_t timeout_ms, json_t **result, tether_error *err);

#endif
