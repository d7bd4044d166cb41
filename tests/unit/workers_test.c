/* core/workers.c: the teardown hook of tether_workers_join. */
#include "config.h"
#include "test.h"
#include <pthread.h>
#include "error.h"
#include "util.h"
#include "workers.h"

#define NLOOPS 3

static int inited[NLOOPS], torn[NLOOPS], slow_done;
static pthread_t joiner;

static void init_fn(tether_worker *w, void *arg)
{
	(void)arg;
	w->user = tether_xcalloc(1, 16);
	__atomic_add_fetch(&inited[w->index], 1, __ATOMIC_SEQ_CST);
}

/* A job still running on the last loop while the first is joined. */
static void slow_fn(tether_worker *w, void *arg)
{
	(void)w;
	(void)arg;
	usleep(200 * 1000);
	__atomic_store_n(&slow_done, 1, __ATOMIC_SEQ_CST);
}

static void teardown_fn(tether_worker *w, void *arg)
{
	int *calls = arg;

	/* on the joining thread, once every thread has ended */
	assert_true(pthread_equal(pthread_self(), joiner));
	assert_int_equal(__atomic_load_n(&slow_done, __ATOMIC_SEQ_CST), 1);
	assert_non_null(w->user);
	free(w->user);
	w->user = NULL;
	torn[w->index]++;
	(*calls)++;
}

static void teardown_after_every_thread(void **s)
{
	tether_workers *ws = NULL;
	tether_error err;
	int calls = 0, i;

	(void)s;
	memset(&err, 0, sizeof(err));
	joiner = pthread_self();
	assert_int_equal(tether_workers_start(NULL, NLOOPS, NULL, NULL, &ws, &err), 0);
	tether_workers_set_teardown(ws, teardown_fn, &calls);
	tether_workers_broadcast(ws, init_fn, NULL);
	tether_workers_post(ws, NLOOPS - 1, slow_fn, NULL);
	tether_workers_join(ws);
	assert_int_equal(calls, NLOOPS);
	for (i = 0; i < NLOOPS; i++) {
		assert_int_equal(inited[i], 1);
		assert_int_equal(torn[i], 1);
	}
}

/* Without a teardown, join does what it always did (and frees its own). */
static void join_without_teardown(void **s)
{
	tether_workers *ws = NULL;
	tether_error err;

	(void)s;
	memset(&err, 0, sizeof(err));
	assert_int_equal(tether_workers_start(NULL, 2, NULL, NULL, &ws, &err), 0);
	tether_workers_join(ws);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(teardown_after_every_thread),
		cmocka_unit_test(join_without_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
