/* Session ticket keys: <state>/ticket.key (0600) = the current key (80
 * bytes) + the SHA-256 (hex) of the identity it belongs to, then maybe the
 * previous key and its identity's SHA-256 (288 bytes; a 144-byte file from
 * an older tether is read as a current key alone).  The current key is
 * renewed once period_s old (its mtime) and whenever the identity
 * changes, so a ticket never outlives its identity.  The key it replaces
 * becomes the previous one (same identity only), kept one more period to
 * decrypt: with tickets that live period_s (the [tls] ticket-lifetime),
 * every ticket stays usable for its whole lifetime, across renewals and
 * restarts. */
#ifndef TETHER_TICKETKEY_H
#define TETHER_TICKETKEY_H

#include "loader.h"

#define TETHER_TICKET_KEY_LEN 80

/* keys: [0] current (encrypts), [1] previous if *nkeys is 2.  Writes a
 * new file when the current key is due.  The caller wipes keys. */
int tether_ticket_keys(tether_prov *prov, const char *state_dir, const char *identity_sha256,
                       unsigned period_s, unsigned char keys[2 * TETHER_TICKET_KEY_LEN],
                       int *nkeys, tether_error *err);

/* 1 if <state>/ticket.key is missing or at least max_age_s old (a running
 * daemon then renews it: tether_ticket_keys, then tls_ctx_set_tickets on
 * its contexts), else 0.  How often to look: TETHER_TICKET_CHECK_S. */
int tether_ticket_key_expired(const char *state_dir, unsigned max_age_s);
#define TETHER_TICKET_CHECK_S 10

/* [tls] ticket-lifetime: the default (12 h), and its bounds (RFC 8446
 * allows at most 7 days). */
#define TETHER_TICKET_LIFETIME_DEFAULT (12 * 3600)
#define TETHER_TICKET_LIFETIME_MIN 10
#define TETHER_TICKET_LIFETIME_MAX (7 * 24 * 3600)

#endif
