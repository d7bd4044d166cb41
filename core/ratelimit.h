/* Admission control for unauthenticated handshakes: a token bucket per
 * source address, and a cap on handshakes in progress.  Each handshake
 * costs the listener a private-key signature, so a flood from one address
 * must not starve trusted peers.  Thread-safe. */
#ifndef TETHER_RATELIMIT_H
#define TETHER_RATELIMIT_H

#include <stdint.h>
#include <sys/socket.h>

typedef struct tether_ratelimit tether_ratelimit;

/* rate: handshakes per second per source address; burst: bucket size;
 * max_inflight: handshakes in progress at once (all sources). */
tether_ratelimit *tether_ratelimit_new(double rate, double burst, int max_inflight);
void tether_ratelimit_free(tether_ratelimit *rl);
/* May a handshake from sa start now?  1 yes (counted in flight: call
 * tether_ratelimit_done when it ends), 0 no (why says which limit). */
int tether_ratelimit_admit(tether_ratelimit *rl, const struct sockaddr *sa, const char **why);
/* The handshake ended; pinned = 1 refunds the source's token (a trusted
 * peer's handshakes don't count against its address). */
void tether_ratelimit_done(tether_ratelimit *rl, const struct sockaddr *sa, int pinned);

#endif
