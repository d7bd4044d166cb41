/* Session ticket keys: <state>/ticket.key (0600) = 80 key bytes + the
 * SHA-256 (hex) of the identity it belongs to.  Renewed after max_age_s and
 * whenever the identity changes, so a ticket never outlives its identity. */
#ifndef TETHER_TICKETKEY_H
#define TETHER_TICKETKEY_H

#include "loader.h"

#define TETHER_TICKET_KEY_LEN 80

int tether_ticket_key(tether_prov *prov, const char *state_dir, const char *identity_sha256,
                      unsigned max_age_s, unsigned char key[TETHER_TICKET_KEY_LEN],
                      tether_error *err);

/* 1 if <state>/ticket.key is missing or at least max_age_s old (a running
 * daemon then rebuilds its TLS context, which writes a new key), else 0.
 * How often to look: TETHER_TICKET_CHECK_S. */
int tether_ticket_key_expired(const char *state_dir, unsigned max_age_s);
#define TETHER_TICKET_CHECK_S 10

#endif
