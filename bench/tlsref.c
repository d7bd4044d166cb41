/*
 * bench-tlsref: the in-process OpenSSL reference for tether's benchmarks.
 * Plain libssl on blocking sockets, the same certificates, mutual
 * authentication with a SHA-256 pin checked inside the handshake (as
 * tether does), no session resumption.  One JSON object per result on
 * stdout.
 *
 *   bench-tlsref server --port P --identity PEM --pin HEX [--tls12]
 *       accept, handshake, then echo every byte back (thread per connection)
 *   bench-tlsref hs --connect H:P --identity PEM [--tls12] [--concurrency C] [--duration S]
 *       full handshakes, each followed by a 1-byte echo (as tether's HELLO
 *       is one round trip), then close_notify and close
 *   bench-tlsref rtt --connect H:P --identity PEM [--count N] [--inflight K] [--size B]
 *       B-byte ping-pong over one connection, K in flight
 *   bench-tlsref server ... --send FILE | --recv FILE
 *   bench-tlsref bulk --connect H:P --identity PEM --send FILE | --recv FILE
 *       raw TLS file transfer over one connection: the sender writes FILE
 *       down it and ends with close_notify, the receiver writes what it
 *       reads to FILE (no checksum, no fsync); the server handles one
 *       connection and exits
 */
#include "config.h"
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define SIZE_MAX_MSG 65536

static struct {
	const char *mode, *identity, *pin_hex, *host, *send_file, *recv_file;
	int port, tls12;
	unsigned long concurrency, duration_s, count, inflight, size;
} o = { .concurrency = 64, .duration_s = 5, .count = 10000, .inflight = 1, .size = 64 };

static unsigned char pin[32];
static int have_pin;
static atomic_ulong completed, failures;
static double deadline;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	char buf[256];
	unsigned long e = ERR_get_error();
	ERR_error_string_n(e, buf, sizeof(buf));
	fprintf(stderr, "bench-tlsref: %s: %s%s%s\n", what, e ? buf : "", e ? "" : strerror(errno), "");
	exit(1);
}

/* The pin check, inside the handshake: the leaf's SHA-256 must match
 * (server side, when --pin is given); chain and expiry are ignored, as in
 * tether. */
static int verify_cb(int preverify, X509_STORE_CTX *x)
{
	unsigned char md[32];
	unsigned int len = sizeof(md);
	(void)preverify;
	if (X509_STORE_CTX_get_error_depth(x) != 0)
		return 1;
	if (!have_pin)
		return 1;
	if (!X509_digest(X509_STORE_CTX_get_current_cert(x), EVP_sha256(), md, &len))
		return 0;
	return len == 32 && CRYPTO_memcmp(md, pin, 32) == 0;
}

static SSL_CTX *make_ctx(int server)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!ctx)
		die("SSL_CTX_new");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_max_proto_version(ctx, o.tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
	if (SSL_CTX_use_certificate_chain_file(ctx, o.identity) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, o.identity, SSL_FILETYPE_PEM) != 1)
		die("cannot load --identity (PEM certificate + key)");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), verify_cb);
	/* a file transfer uses tether's TLS 1.3 suite order (AES-128-GCM first) */
	if ((o.send_file || o.recv_file) &&
	    !SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"))
		die("SSL_CTX_set_ciphersuites");
	/* no resumption: every handshake is a full one */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_num_tickets(ctx, 0);
	return ctx;
}

static void nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---- bulk: raw TLS file transfer ---- */

#define BULK_BUF (256 * 1024)

/* Sends --send or receives into --recv over an established connection;
 * prints the result as JSON.  0 on success. */
static int bulk_pump(SSL *ssl)
{
	static char buf[BULK_BUF];
	unsigned long long bytes = 0;
	double t0 = now_s();
	int fd, ok = 0;

	if (o.send_file) {
		ssize_t n;
		if ((fd = open(o.send_file, O_RDONLY)) < 0)
			die("cannot open --send");
		while ((n = read(fd, buf, sizeof(buf))) > 0) {
			size_t w;
			if (SSL_write_ex(ssl, buf, (size_t)n, &w) != 1 || w != (size_t)n)
				break;
			bytes += (unsigned long long)n;
		}
		ok = n == 0 && SSL_shutdown(ssl) >= 0;
	} else {
		size_t n;
		if ((fd = open(o.recv_file, O_WRONLY | O_CREAT | O_TRUNC, 0600)) < 0)
			die("cannot create --recv");
		while (SSL_read_ex(ssl, buf, sizeof(buf), &n) == 1) {
			if (write(fd, buf, n) != (ssize_t)n)
				die("write --recv");
			bytes += n;
		}
		/* only the sender's close_notify ends a complete transfer */
		ok = SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN;
	}
	close(fd);
	printf("{\"bench\":\"bulk\",\"ok\":%s,\"bytes\":%llu,\"seconds\":%.6f}\n", ok ? "true" : "false", bytes,
	       now_s() - t0);
	fflush(stdout);
	return ok ? 0 : 1;
}

/* ---- server ---- */

typedef struct sconn {
	SSL_CTX *ctx;
	int fd;
} sconn;

static void *serve(void *arg)
{
	sconn *sc = arg;
	SSL *ssl = SSL_new(sc->ctx);
	char buf[SIZE_MAX_MSG];
	int n;

	SSL_set_fd(ssl, sc->fd);
	if (SSL_accept(ssl) == 1) {
		while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
			if (SSL_write(ssl, buf, n) != n)
				break;
		SSL_shutdown(ssl);
	}
	SSL_free(ssl);
	close(sc->fd);
	free(sc);
	ERR_clear_error();
	return NULL;
}

static int run_server(void)
{
	SSL_CTX *ctx = make_ctx(1);
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	pthread_attr_t at;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)o.port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4096) < 0)
		die("cannot listen on 127.0.0.1");
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&at, 256 * 1024);
	printf("{\"ready\":true,\"port\":%d}\n", o.port);
	fflush(stdout);
	if (o.send_file || o.recv_file) {
		int c = accept(fd, NULL, NULL), r = 1;
		SSL *ssl;
		if (c < 0)
			die("accept");
		ssl = SSL_new(ctx);
		SSL_set_fd(ssl, c);
		if (SSL_accept(ssl) == 1)
			r = bulk_pump(ssl);
		else
			die("handshake");
		SSL_free(ssl);
		close(c);
		return r;
	}
	for (;;) {
		pthread_t th;
		sconn *sc;
		int c = accept(fd, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
				continue;
			die("accept");
		}
		nodelay(c);
		sc = malloc(sizeof(*sc));
		if (!sc)
			die("out of memory");
		sc->ctx = ctx;
		sc->fd = c;
		if (pthread_create(&th, &at, serve, sc) != 0) {
			close(c);
			free(sc);
		}
	}
	return 0;
}

/* ---- clients ---- */

static int tcp_connect(void)
{
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)o.port);
	if (inet_pton(AF_INET, o.host, &sa.sin_addr) != 1 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	nodelay(fd);
	return fd;
}

static void *hs_thread(void *arg)
{
	SSL_CTX *ctx = arg;
	char b = 'x';

	while (now_s() < deadline) {
		int fd = tcp_connect(), ok = 0;
		SSL *ssl;
		if (fd < 0) {
			atomic_fetch_add(&failures, 1);
			continue;
		}
		ssl = SSL_new(ctx);
		SSL_set_fd(ssl, fd);
		if (SSL_connect(ssl) == 1 && SSL_write(ssl, &b, 1) == 1 && SSL_read(ssl, &b, 1) == 1)
			ok = 1;
		SSL_shutdown(ssl);
		SSL_free(ssl);
		close(fd);
		ERR_clear_error();
		atomic_fetch_add(ok ? &completed : &failures, 1);
	}
	return NULL;
}

static int run_hs(void)
{
	SSL_CTX *ctx = make_ctx(0);
	pthread_t *th = calloc(o.concurrency, sizeof(*th));
	double t0 = now_s();
	unsigned long i;

	deadline = t0 + (double)o.duration_s;
	for (i = 0; i < o.concurrency; i++)
		pthread_create(&th[i], NULL, hs_thread, ctx);
	for (i = 0; i < o.concurrency; i++)
		pthread_join(th[i], NULL);
	t0 = now_s() - t0;
	printf("{\"bench\":\"handshake_ref\",\"tls\":\"%s\",\"completed\":%lu,\"seconds\":%.3f,\"per_s\":%.1f,"
	       "\"failures\":%lu}\n", o.tls12 ? "1.2" : "1.3", (unsigned long)completed, t0,
	       (double)completed / t0, (unsigned long)failures);
	free(th);
	SSL_CTX_free(ctx);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int read_full(SSL *ssl, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		int n = SSL_read(ssl, buf + got, (int)(len - got));
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static int run_rtt(void)
{
	SSL_CTX *ctx = make_ctx(0);
	double *sent = calloc(o.count, sizeof(double)), *lat = calloc(o.count, sizeof(double)), t0;
	char *msg = malloc(o.size), *in = malloc(o.size);
	unsigned long s = 0, r = 0;
	int fd = tcp_connect();
	SSL *ssl;

	if (fd < 0)
		die("cannot connect");
	memset(msg, 'p', o.size);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		die("handshake");
	t0 = now_s();
	while (r < o.count) {
		while (s < o.count && s - r < o.inflight) {
			sent[s] = now_s();
			if (SSL_write(ssl, msg, (int)o.size) != (int)o.size)
				die("write");
			s++;
		}
		if (read_full(ssl, in, o.size) < 0)
			die("read");
		lat[r] = (now_s() - sent[r]) * 1000.0;
		r++;
	}
	t0 = now_s() - t0;
	qsort(lat, r, sizeof(double), cmp_double);
	printf("{\"bench\":\"rtt_ref\",\"inflight\":%lu,\"requests\":%lu,\"seconds\":%.3f,\"per_s\":%.1f,"
	       "\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"size\":%lu}\n", o.inflight, r, t0, (double)r / t0, lat[r / 2],
	       lat[(r * 99) / 100 < r ? (r * 99) / 100 : r - 1], o.size);
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	SSL_CTX_free(ctx);
	free(sent);
	free(lat);
	free(msg);
	free(in);
	return 0;
}

static int run_bulk(void)
{
	SSL_CTX *ctx = make_ctx(0);
	SSL *ssl = SSL_new(ctx);
	int fd = tcp_connect(), r;

	if (fd < 0)
		die("connect");
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		die("handshake");
	r = bulk_pump(ssl);
	SSL_free(ssl);
	close(fd);
	SSL_CTX_free(ctx);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "port", required_argument, NULL, 'P' }, { "identity", required_argument, NULL, 'i' },
		{ "pin", required_argument, NULL, 'p' }, { "tls12", no_argument, NULL, '2' },
		{ "connect", required_argument, NULL, 'c' }, { "concurrency", required_argument, NULL, 'C' },
		{ "duration", required_argument, NULL, 'd' }, { "count", required_argument, NULL, 'n' },
		{ "inflight", required_argument, NULL, 'k' }, { "size", required_argument, NULL, 's' },
		{ "send", required_argument, NULL, 'S' }, { "recv", required_argument, NULL, 'R' },
		{ NULL, 0, NULL, 0 }
	};
	static char host[64];
	int ch;
	size_t i;

	if (argc < 2) {
		fprintf(stderr, "Usage: bench-tlsref server|hs|rtt|bulk [options] (see the comment in bench/tlsref.c)\n");
		return 2;
	}
	o.mode = argv[1];
	optind = 2;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'P': o.port = atoi(optarg); break;
		case 'i': o.identity = optarg; break;
		case 'p': o.pin_hex = optarg; break;
		case '2': o.tls12 = 1; break;
		case 'c': {
			const char *colon = strrchr(optarg, ':');
			if (!colon || (size_t)(colon - optarg) >= sizeof(host)) {
				fprintf(stderr, "bench-tlsref: --connect HOST:PORT\n");
				return 2;
			}
			memcpy(host, optarg, (size_t)(colon - optarg));
			o.host = host;
			o.port = atoi(colon + 1);
			break;
		}
		case 'C': o.concurrency = strtoul(optarg, NULL, 10); break;
		case 'd': o.duration_s = strtoul(optarg, NULL, 10); break;
		case 'n': o.count = strtoul(optarg, NULL, 10); break;
		case 'k': o.inflight = strtoul(optarg, NULL, 10); break;
		case 's': o.size = strtoul(optarg, NULL, 10); break;
		case 'S': o.send_file = optarg; break;
		case 'R': o.recv_file = optarg; break;
		default: return 2;
		}
	}
	if (!o.identity || o.port <= 0 || o.port > 65535 || !o.concurrency || o.concurrency > 4096 || !o.count ||
	    o.count > 10000000 || !o.inflight || !o.size || o.size > SIZE_MAX_MSG) {
		fprintf(stderr, "bench-tlsref: --identity PEM and a port are required; counts must be positive "
		        "(concurrency <= 4096, size <= %d)\n", SIZE_MAX_MSG);
		return 2;
	}
	if (o.pin_hex) {
		if (strlen(o.pin_hex) != 64) {
			fprintf(stderr, "bench-tlsref: --pin needs 64 hex digits\n");
			return 2;
		}
		for (i = 0; i < 32; i++) {
			unsigned v;
			if (sscanf(o.pin_hex + 2 * i, "%2x", &v) != 1)
				return 2;
			pin[i] = (unsigned char)v;
		}
		have_pin = 1;
	}
	if ((o.send_file != NULL) + (o.recv_file != NULL) != (!strcmp(o.mode, "bulk") ? 1 : o.send_file || o.recv_file)) {
		fprintf(stderr, "bench-tlsref: bulk needs exactly one of --send FILE and --recv FILE (server: at most one)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(o.mode, "server"))
		return run_server();
	if (!o.host) {
		fprintf(stderr, "bench-tlsref: --connect HOST:PORT is required\n");
		return 2;
	}
	if (!strcmp(o.mode, "hs"))
		return run_hs();
	if (!strcmp(o.mode, "rtt"))
		return run_rtt();
	if (!strcmp(o.mode, "bulk"))
		return run_bulk();
	fprintf(stderr, "bench-tlsref: unknown mode '%s'\n", o.mode);
	return 2;
}
