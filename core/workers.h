/* Workers: one event loop per thread, each with its own listening socket
 * on the same address (SO_REUSEPORT: the kernel spreads connections), so
 * handshake crypto and transfers use every core. */
#ifndef TETHER_WORKERS_H
#define TETHER_WORKERS_H

#include <uv.h>
#include "tether/provider.h"

typedef struct tether_worker tether_worker;
typedef struct tether_workers tether_workers;

/* Called on the worker's thread for each pending connection on its
 * listening socket; the callee accepts (or rejects) it. */
typedef void (*tether_accept_fn)(void *arg, tether_worker *w, uv_stream_t *server);
/* A function run on a worker's thread. */
typedef void (*tether_worker_fn)(tether_worker *w, void *arg);

struct tether_worker {
	int index;
	uv_loop_t loop;
	tether_workers *ws;
	void *user;                 /* per-worker data of the owner */
};

/* Bind address (HOST:PORT) n times with SO_REUSEPORT (backlog 4096), start
 * n threads.  Fails before starting anything if the address can't be bound
 * (in use, permission), saying so. */
int tether_workers_start(const char *address, int n, tether_accept_fn on_accept,
                         void *arg, tether_workers **out, tether_error *err);
/* address NULL: loops only, no listening sockets. */
/* Run fn(w, arg) on worker i's thread (asynchronously). */
void tether_workers_post(tether_workers *ws, int i, tether_worker_fn fn, void *arg);
/* Run fn(w, arg) on every worker's thread (asynchronously). */
void tether_workers_broadcast(tether_workers *ws, tether_worker_fn fn, void *arg);
/* Stop listening on every worker (existing connections go on). */
void tether_workers_stop_listening(tether_workers *ws);
/* Stop every loop (after the owner closed its connections) and join. */
void tether_workers_join(tether_workers *ws);
/* Have tether_workers_join run fn(w, arg) for every worker once all the
 * threads are joined and every loop is closed: no callback, and no job
 * posted to a loop (a broadcast still queued is dropped), can run after
 * that, so fn may free w->user.  It runs on the joining thread; set it
 * from that thread, before tether_workers_join. */
void tether_workers_set_teardown(tether_workers *ws, tether_worker_fn fn, void *arg);
int tether_workers_count(const tether_workers *ws);
tether_worker *tether_workers_get(tether_workers *ws, int i);
/* Bound port (first worker), for logging and tests. */
int tether_workers_port(const tether_workers *ws);

/* A reasonable default: the number of online CPUs (1..64). */
int tether_default_loops(void);

#endif
