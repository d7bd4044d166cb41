#include "config.h"
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "ratelimit.h"
#include "util.h"

#define NBUCKETS 4096

typedef struct bucket {
	unsigned char key[16];
	int used;
	double tokens;
	uint64_t last_ms;
} bucket;

struct tether_ratelimit {
	pthread_mutex_t lock;
	double rate, burst;
	int max_inflight, inflight;
	bucket b[NBUCKETS];
};

tether_ratelimit *tether_ratelimit_new(double rate, double burst, int max_inflight)
{
	tether_ratelimit *rl = tether_xcalloc(1, sizeof(*rl));
	pthread_mutex_init(&rl->lock, NULL);
	rl->rate = rate;
	rl->burst = burst;
	rl->max_inflight = max_inflight;
	return rl;
}

void tether_ratelimit_free(tether_ratelimit *rl)
{
	if (!rl)
		return;
	pthread_mutex_destroy(&rl->lock);
	free(rl);
}

static void key_of(const struct sockaddr *sa, unsigned char k[16])
{
	memset(k, 0, 16);
	if (sa->sa_family == AF_INET) {
		memcpy(k + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		k[10] = k[11] = 0xff;
	} else if (sa->sa_family == AF_INET6) {
		/* an IPv6 source is limited per /64, as one host owns at least that */
		memcpy(k, &((const struct sockaddr_in6 *)sa)->sin6_addr, 8);
	}
}

static bucket *find(tether_ratelimit *rl, const unsigned char k[16], uint64_t now)
{
	uint32_t h = 2166136261u;
	size_t i, probe;

	for (i = 0; i < 16; i++)
		h = (h ^ k[i]) * 16777619u;
	for (probe = 0; probe < 8; probe++) {
		bucket *b = &rl->b[(h + probe) % NBUCKETS];
		if (b->used && !memcmp(b->key, k, 16))
			return b;
		/* reuse a slot idle long enough to be full again */
		if (!b->used || now - b->last_ms > (uint64_t)(rl->burst / rl->rate * 1000.0) + 1000) {
			memcpy(b->key, k, 16);
			b->used = 1;
			b->tokens = rl->burst;
			b->last_ms = now;
			return b;
		}
	}
	/* table crowded: share the home slot (errs on the strict side) */
	return &rl->b[h % NBUCKETS];
}

int tether_ratelimit_admit(tether_ratelimit *rl, const struct sockaddr *sa, const char **why)
{
	unsigned char k[16];
	uint64_t now = tether_now_ms();
	bucket *b;
	int ok = 0;

	key_of(sa, k);
	pthread_mutex_lock(&rl->lock);
	if (rl->inflight >= rl->max_inflight) {
		if (why)
			*why = "too many handshakes in progress";
		goto out;
	}
	b = find(rl, k, now);
	b->tokens += (double)(now - b->last_ms) / 1000.0 * rl->rate;
	if (b->tokens > rl->burst)
		b->tokens = rl->burst;
	b->last_ms = now;
	if (b->tokens < 1.0) {
		if (why)
			*why = "too many handshakes from this address";
		goto out;
	}
	b->tokens -= 1.0;
	rl->inflight++;
	ok = 1;
out:
	pthread_mutex_unlock(&rl->lock);
	return ok;
}

void tether_ratelimit_done(tether_ratelimit *rl, const struct sockaddr *sa, int pinned)
{
	unsigned char k[16];

	key_of(sa, k);
	pthread_mutex_lock(&rl->lock);
	if (rl->inflight > 0)
		rl->inflight--;
	if (pinned) {
		bucket *b = find(rl, k, tether_now_ms());
		b->tokens += 1.0;
		if (b->tokens > rl->burst)
			b->tokens = rl->burst;
	}
	pthread_mutex_unlock(&rl->lock);
}
