#include "config.h"
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "error.h"
#include "log.h"
#include "util.h"
#include "workers.h"

#define BACKLOG 4096

typedef struct job {
	struct job *next;
	tether_worker_fn fn;
	void *arg;
	int stop;
} job;

typedef struct worker_impl {
	tether_worker w;            /* first: the public part */
	uv_thread_t thread;
	uv_async_t async;
	uv_tcp_t listen;
	int listening;
	pthread_mutex_t lock;
	job *jobs, **tail;
	tether_accept_fn on_accept;
	void *accept_arg;
	int fd;
} worker_impl;

struct tether_workers {
	int n;
	worker_impl *w;
	int port;
	tether_worker_fn teardown;  /* run by tether_workers_join at the end */
	void *teardown_arg;
};

int tether_default_loops(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > 64)
		n = 64;
	return (int)n;
}

static void on_connection(uv_stream_t *s, int status)
{
	worker_impl *wi = s->data;

	if (status < 0) {
		log_warn("accept on worker %d failed: %s", wi->w.index, uv_strerror(status));
		return;
	}
	wi->on_accept(wi->accept_arg, &wi->w, s);
}

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void on_async(uv_async_t *a)
{
	worker_impl *wi = a->data;
	job *j;
	int stop = 0;

	pthread_mutex_lock(&wi->lock);
	j = wi->jobs;
	wi->jobs = NULL;
	wi->tail = &wi->jobs;
	pthread_mutex_unlock(&wi->lock);
	while (j) {
		job *next = j->next;
		if (j->stop)
			stop = 1;
		else if (j->fn)
			j->fn(&wi->w, j->arg);
		free(j);
		j = next;
	}
	if (stop)
		uv_walk(&wi->w.loop, close_walk, NULL);
}

static void post(worker_impl *wi, tether_worker_fn fn, void *arg, int stop)
{
	job *j = tether_xcalloc(1, sizeof(*j));

	j->fn = fn;
	j->arg = arg;
	j->stop = stop;
	pthread_mutex_lock(&wi->lock);
	*wi->tail = j;
	wi->tail = &j->next;
	pthread_mutex_unlock(&wi->lock);
	uv_async_send(&wi->async);
}

static void thread_main(void *arg)
{
	worker_impl *wi = arg;
	uv_run(&wi->w.loop, UV_RUN_DEFAULT);
}

/* A worker's loop, its job queue and its (not yet bound) listening handle. */
static void worker_setup(worker_impl *wi, tether_workers *ws, tether_accept_fn on_accept, void *arg)
{
	wi->w.ws = ws;
	wi->on_accept = on_accept;
	wi->accept_arg = arg;
	pthread_mutex_init(&wi->lock, NULL);
	wi->tail = &wi->jobs;
	uv_loop_init(&wi->w.loop);
	uv_async_init(&wi->w.loop, &wi->async, on_async);
	wi->async.data = wi;
	uv_tcp_init(&wi->w.loop, &wi->listen);
	wi->listen.data = wi;
}

#ifdef _WIN32
/* Windows has no SO_REUSEPORT: one loop listens, bound by libuv. */
static int start_one_listener(const struct sockaddr *sa, const char *address, tether_accept_fn on_accept,
                              void *arg, tether_workers **out, tether_error *err)
{
	tether_workers *ws = tether_xcalloc(1, sizeof(*ws));
	worker_impl *wi;
	struct sockaddr_storage b;
	int bl = sizeof(b), r;

	ws->n = 1;
	ws->w = tether_xcalloc(1, sizeof(*ws->w));
	wi = &ws->w[0];
	wi->fd = -1;
	worker_setup(wi, ws, on_accept, arg);
	r = uv_tcp_bind(&wi->listen, sa, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&wi->listen, BACKLOG, on_connection);
	if (r == 0)
		r = uv_tcp_getsockname(&wi->listen, (struct sockaddr *)&b, &bl);
	if (r < 0) {
		uv_walk(&wi->w.loop, close_walk, NULL);
		uv_run(&wi->w.loop, UV_RUN_DEFAULT);
		uv_loop_close(&wi->w.loop);
		pthread_mutex_destroy(&wi->lock);
		free(ws->w);
		free(ws);
		return tether_err_set(err, r == UV_EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot listen on %s: %s%s", address, uv_strerror(r),
		                      r == UV_EADDRINUSE ? " (another program, or another instance, uses that port: "
		                      "stop it or choose another address with 'configure --listen')" :
		                      r == UV_EADDRNOTAVAIL ? " (that address is not one of this machine's)" : "");
	}
	ws->port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port :
	                 ((struct sockaddr_in6 *)&b)->sin6_port);
	wi->listening = 1;
	uv_thread_create(&wi->thread, thread_main, wi);
	*out = ws;
	return 0;
}
#else
static int bind_one(const struct sockaddr *sa, socklen_t salen, tether_error *err, const char *address)
{
	int fd, one = 1;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot create a socket: %s",
		                      strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* libuv 1.44 has no UV_TCP_REUSEPORT: set it here and hand the fd over */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
		close(fd);
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "SO_REUSEPORT: %s", strerror(errno));
	}
	if (bind(fd, sa, salen) < 0) {
		int e = errno;
		close(fd);
		return tether_err_set(err, e == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO, TETHER_CAT_IO,
		                      "cannot listen on %s: %s%s", address, strerror(e),
		                      e == EADDRINUSE ? " (another program, or another instance, uses that port: "
		                      "stop it or choose another address with 'configure --listen')" :
		                      e == EACCES ? " (ports below 1024 need root)" :
		                      e == EADDRNOTAVAIL ? " (that address is not one of this machine's)" : "");
	}
	if (listen(fd, BACKLOG) < 0) {
		int e = errno;
		close(fd);
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot listen on %s: %s",
		                      address, strerror(e));
	}
	return fd;
}
#endif

/* Loops without listening sockets (an agent in polling mode). */
static int start_loops_only(int n, tether_workers **out)
{
	tether_workers *ws = tether_xcalloc(1, sizeof(*ws));
	int i;

	ws->n = n;
	ws->w = tether_xcalloc((size_t)n, sizeof(*ws->w));
	for (i = 0; i < n; i++) {
		worker_impl *wi = &ws->w[i];
		wi->fd = -1;
		wi->w.index = i;
		wi->w.ws = ws;
		pthread_mutex_init(&wi->lock, NULL);
		wi->tail = &wi->jobs;
		uv_loop_init(&wi->w.loop);
		uv_async_init(&wi->w.loop, &wi->async, on_async);
		wi->async.data = wi;
	}
	for (i = 0; i < n; i++)
		uv_thread_create(&ws->w[i].thread, thread_main, &ws->w[i]);
	*out = ws;
	return 0;
}

int tether_workers_start(const char *address, int n, tether_accept_fn on_accept,
                         void *arg, tether_workers **out, tether_error *err)
{
	tether_workers *ws;
	struct sockaddr_storage ss;
	socklen_t salen;
	char *host = NULL;
	int port = 0, r = 0, i;

	if (n < 1)
		n = 1;
	if (n > 64)
		n = 64;
	if (!address)
		return start_loops_only(n, out);
	if (tether_parse_hostport(address, &host, &port, 0) < 0)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%s' is not a listening address (expected HOST:PORT)", address);
	memset(&ss, 0, sizeof(ss));
	if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0) {
		salen = sizeof(struct sockaddr_in);
	} else if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
		salen = sizeof(struct sockaddr_in6);
	} else {
		free(host);
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "'%s' is not an IP address to listen on (use 0.0.0.0, [::] or an address "
		                      "of this machine)", address);
	}
	free(host);
#ifdef _WIN32
	(void)ws;
	(void)i;
	(void)r;
	(void)salen;
	return start_one_listener((struct sockaddr *)&ss, address, on_accept, arg, out, err);
#else
	ws = tether_xcalloc(1, sizeof(*ws));
	ws->n = n;
	ws->w = tether_xcalloc((size_t)n, sizeof(*ws->w));
	for (i = 0; i < n; i++)
		ws->w[i].fd = -1;
	/* bind all first: fail before starting threads */
	for (i = 0; i < n; i++) {
		int fd = bind_one((struct sockaddr *)&ss, salen, err, address);
		if (fd < 0) {
			r = fd;
			goto fail;
		}
		ws->w[i].fd = fd;
		if (i == 0 && port == 0) {
			/* port 0: every later socket must bind the port the first got */
			struct sockaddr_storage b;
			socklen_t bl = sizeof(b);
			getsockname(fd, (struct sockaddr *)&b, &bl);
			if (b.ss_family == AF_INET)
				((struct sockaddr_in *)&ss)->sin_port = ((struct sockaddr_in *)&b)->sin_port;
			else
				((struct sockaddr_in6 *)&ss)->sin6_port = ((struct sockaddr_in6 *)&b)->sin6_port;
		}
	}
	{
		struct sockaddr_storage b;
		socklen_t bl = sizeof(b);
		getsockname(ws->w[0].fd, (struct sockaddr *)&b, &bl);
		ws->port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port :
		                 ((struct sockaddr_in6 *)&b)->sin6_port);
	}
	for (i = 0; i < n; i++) {
		worker_impl *wi = &ws->w[i];
		wi->w.index = i;
		worker_setup(wi, ws, on_accept, arg);
		if (uv_tcp_open(&wi->listen, wi->fd) < 0 ||
		    uv_listen((uv_stream_t *)&wi->listen, BACKLOG, on_connection) < 0) {
			r = tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot listen on %s", address);
			goto fail;
		}
		wi->fd = -1; /* owned by libuv now */
		wi->listening = 1;
	}
	for (i = 0; i < n; i++)
		uv_thread_create(&ws->w[i].thread, thread_main, &ws->w[i]);
	*out = ws;
	return 0;
fail:
	for (i = 0; i < n; i++)
		if (ws->w[i].fd >= 0)
			close(ws->w[i].fd);
	/* loops that were initialised are torn down by closing their handles */
	for (i = 0; i < n; i++) {
		worker_impl *wi = &ws->w[i];
		if (wi->w.ws) {
			uv_walk(&wi->w.loop, close_walk, NULL);
			uv_run(&wi->w.loop, UV_RUN_DEFAULT);
			uv_loop_close(&wi->w.loop);
			pthread_mutex_destroy(&wi->lock);
		}
	}
	free(ws->w);
	free(ws);
	return r;
#endif
}

void tether_workers_broadcast(tether_workers *ws, tether_worker_fn fn, void *arg)
{
	int i;
	for (i = 0; i < ws->n; i++)
		post(&ws->w[i], fn, arg, 0);
}

static void stop_listen_fn(tether_worker *w, void *arg)
{
	worker_impl *wi = (worker_impl *)w;
	(void)arg;
	if (wi->listening && !uv_is_closing((uv_handle_t *)&wi->listen))
		uv_close((uv_handle_t *)&wi->listen, NULL);
	wi->listening = 0;
}

void tether_workers_post(tether_workers *ws, int i, tether_worker_fn fn, void *arg)
{
	post(&ws->w[i % ws->n], fn, arg, 0);
}

void tether_workers_stop_listening(tether_workers *ws)
{
	tether_workers_broadcast(ws, stop_listen_fn, NULL);
}

void tether_workers_join(tether_workers *ws)
{
	int i;

	for (i = 0; i < ws->n; i++)
		post(&ws->w[i], NULL, NULL, 1);
	for (i = 0; i < ws->n; i++) {
		worker_impl *wi = &ws->w[i];
		uv_thread_join(&wi->thread);
		/* anything still queued */
		while (wi->jobs) {
			job *j = wi->jobs;
			wi->jobs = j->next;
			free(j);
		}
		uv_run(&wi->w.loop, UV_RUN_NOWAIT);
		uv_loop_close(&wi->w.loop);
		pthread_mutex_destroy(&wi->lock);
	}
	/* only now: a loop still running could reach another's data */
	if (ws->teardown)
		for (i = 0; i < ws->n; i++)
			ws->teardown(&ws->w[i].w, ws->teardown_arg);
	free(ws->w);
	free(ws);
}

void tether_workers_set_teardown(tether_workers *ws, tether_worker_fn fn, void *arg)
{
	ws->teardown = fn;
	ws->teardown_arg = arg;
}

int tether_workers_count(const tether_workers *ws) { return ws->n; }
tether_worker *tether_workers_get(tether_workers *ws, int i) { return &ws->w[i].w; }
int tether_workers_port(const tether_workers *ws) { return ws->port; }
