/*
 * A per-thread cache of the small blocks jansson allocates for its values.
 *
 * Every frame's JSON becomes a jansson tree, and freeing a tree returns
 * dozens of blocks of the same few sizes at once: a 600-byte health answer
 * is about 60 blocks (a string is two, a key one, an object two).  glibc's
 * per-thread cache keeps 7 blocks of a size; the rest go to its fast bins,
 * and the next large allocation (a TLS record buffer, a read buffer)
 * consolidates them all again.  On a server reading health answers that
 * was a third of the user-space instructions per answer (BENCHMARKS.md,
 * session 5).  Here each thread keeps up to JA_KEEP freed blocks of each
 * small size and hands them back to jansson's next values.
 *
 * The blocks are ordinary malloc blocks, never carved or headed: one freed
 * here may have come from malloc before this was installed, and what
 * json_dumps returns may still be given to free() by its caller.  The size
 * class comes from malloc_usable_size.  A thread's blocks are freed when it
 * ends (a pthread key's destructor); the main thread's stay reachable
 * until the process exits.  Installed when libtether is loaded, on glibc
 * only, and not in sanitizer builds (so AddressSanitizer still sees every
 * jansson block freed and used again).
 */
#include "config.h"
#include <stdlib.h>           /* __GLIBC__ */

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define JA_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define JA_SANITIZED 1
#endif

#if defined(__GLIBC__) && !defined(_WIN32) && !defined(JA_SANITIZED)
#include <malloc.h>
#include <pthread.h>
#include <jansson.h>

#define JA_MIN 24               /* glibc's smallest usable size */
#define JA_STEP 16              /* glibc's usable sizes: 24, 40, 56, ... */
#define JA_CLASSES 12           /* up to 200 bytes */
#define JA_KEEP 128             /* blocks kept per class and thread: at most 200 KiB */

typedef struct jblock {
	struct jblock *next;
} jblock;

typedef struct jcache {
	jblock *head[JA_CLASSES];
	unsigned n[JA_CLASSES];
	int state;              /* 0: not yet used, 1: in use, 2: the thread is ending */
} jcache;

/* initial-exec: libtether is loaded with the program, never dlopen()ed,
 * and the general model costs a __tls_get_addr call per access */
static __thread jcache tc __attribute__((tls_model("initial-exec")));
static pthread_key_t ja_key;

static void ja_drain(void *arg)
{
	jcache *c = arg;
	jblock *b;
	int k;

	c->state = 2;           /* from here on, straight to malloc and free */
	for (k = 0; k < JA_CLASSES; k++) {
		while ((b = c->head[k]) != NULL) {
			c->head[k] = b->next;
			free(b);
		}
		c->n[k] = 0;
	}
}

static void *ja_malloc(size_t n)
{
	size_t k = n <= JA_MIN ? 0 : (n - JA_MIN + JA_STEP - 1) / JA_STEP;
	jblock *b;

	if (k >= JA_CLASSES)
		return malloc(n);
	if ((b = tc.head[k]) != NULL) {
		tc.head[k] = b->next;
		tc.n[k]--;
		return b;
	}
	return malloc(JA_MIN + k * JA_STEP);
}

static void ja_free(void *p)
{
	size_t u, k;
	jblock *b = p;

	if (!p)
		return;
	if (tc.state != 1) {
		/* the key's destructor frees this thread's blocks when it ends */
		if (tc.state != 0 || pthread_setspecific(ja_key, &tc) != 0) {
			free(p);
			return;
		}
		tc.state = 1;
	}
	u = malloc_usable_size(p);
	if (u < JA_MIN) {
		free(p);
		return;
	}
	k = (u - JA_MIN) / JA_STEP; /* the largest class this block can serve */
	if (k >= JA_CLASSES || tc.n[k] >= JA_KEEP) {
		free(p);
		return;
	}
	b->next = tc.head[k];
	tc.head[k] = b;
	tc.n[k]++;
}

__attribute__((constructor)) static void ja_install(void)
{
	if (pthread_key_create(&ja_key, ja_drain) == 0)
		json_set_alloc_funcs(ja_malloc, ja_free);
}
#else
/* ISO C wants something in a translation unit */
typedef int tether_jalloc_unused;
#endif
