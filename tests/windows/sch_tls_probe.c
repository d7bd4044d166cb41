/* sch_tls_probe.exe: drives tether-schannel.dll's TLS client through the
 * provider ABI, as the core does, against a real peer (openssl s_server
 * in tests/integration/windows.sh, run under Wine).
 *
 *   sch_tls_probe STATE_DIR HOST PORT PIN SERVER_NAME
 *
 * Loads the provider with the core's loader, loads the current identity
 * from STATE_DIR, connects (blocking Winsock), handshakes with the pin
 * hint as target name, checks the peer's SHA-256 thumbprint against PIN
 * in the verify callback (as the core does), then sends "tether-probe\n"
 * and prints the first line that comes back, the TLS version and cipher.
 * Exit: 0 ok, 3 peer not pinned (refused), 1 any other failure. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "error.h"
#include "identity.h"
#include "loader.h"
#include "thumbprint.h"

struct io {
	SOCKET s;
	int eof;
};

static int io_read(void *arg, void *buf, size_t len)
{
	struct io *io = arg;
	fd_set rf;
	struct timeval tv = { 10, 0 };       /* every wait is bounded */
	int n;

	FD_ZERO(&rf);
	FD_SET(io->s, &rf);
	if (select(0, &rf, NULL, NULL, &tv) <= 0)
		return 0;
	n = recv(io->s, buf, (int)(len > 65536 ? 65536 : len), 0);
	if (n <= 0) {
		io->eof = 1;
		return 0;
	}
	return n;
}

static int io_write(void *arg, const void *buf, size_t len)
{
	struct io *io = arg;
	size_t off = 0;

	while (off < len) {
		int n = send(io->s, (const char *)buf + off, (int)(len - off), 0);
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return (int)len;
}

struct pin {
	tether_prov *p;
	tether_thumbprint want;
	int checked;
};

static int verify(void *arg, const unsigned char *der, size_t len)
{
	struct pin *pin = arg;
	tether_thumbprint got;
	char hex[TETHER_THUMBPRINT_HEX];

	pin->checked = 1;
	if (len == 0 || tether_thumbprint_of(pin->p, der, len, &got, NULL) < 0)
		return -1;
	tether_thumbprint_hex(&got, hex);
	printf("peer_sha256 %s\n", hex);
	return tether_thumbprint_equal(&got, &pin->want) ? 0 : -1;
}

int main(int argc, char **argv)
{
	tether_error err;
	tether_prov_opts po;
	tether_prov *p = NULL;
	tether_identity *id = NULL;
	tether_tls_ctx_params cp;
	tether_tls_ctx *ctx = NULL;
	tether_tls_params tp;
	tether_tls *t = NULL;
	tether_tls_info info;
	struct io io = { INVALID_SOCKET, 0 };
	struct pin pin;
	struct sockaddr_in sa;
	WSADATA wsa;
	char line[256];
	size_t got = 0;
	int r, i, rc = 1;

	if (argc != 6) {
		fprintf(stderr, "usage: sch_tls_probe STATE_DIR HOST PORT PIN SERVER_NAME\n");
		return 2;
	}
	memset(&err, 0, sizeof(err));
	memset(&pin, 0, sizeof(pin));
	if (tether_thumbprint_parse(argv[4], &pin.want, &err) < 0)
		goto fail;
	memset(&po, 0, sizeof(po));
	po.state_dir = argv[1];
	po.instance = "default";
	po.program = "agent";
	if (tether_provider_load("schannel", &po, &p, &err) < 0)
		goto fail;
	pin.p = p;
	if (p->t->identity_load(p->ctx, TETHER_SLOT_CURRENT, &id, &err) < 0)
		goto fail;
	memset(&cp, 0, sizeof(cp));
	cp.role = TETHER_TLS_CLIENT;
	cp.identity = id;
	if (p->t->tls_ctx_new(p->ctx, &cp, &ctx, &err) < 0)
		goto fail;
	WSAStartup(MAKEWORD(2, 2), &wsa);
	io.s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)atoi(argv[3]));
	inet_pton(AF_INET, argv[2], &sa.sin_addr);
	if (io.s == INVALID_SOCKET || connect(io.s, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		tether_err_set(&err, TETHER_ERR_IO, TETHER_CAT_CONNECTION_REFUSED, "cannot connect to %s:%s",
		               argv[2], argv[3]);
		goto fail;
	}
	memset(&tp, 0, sizeof(tp));
	tp.io.read = io_read;
	tp.io.write = io_write;
	tp.io.io_arg = &io;
	tp.verify = verify;
	tp.verify_arg = &pin;
	tp.server_name = argv[5];
	if (p->t->tls_new(ctx, &tp, &t, &err) < 0)
		goto fail;
	for (i = 0; i < 200; i++) {
		r = p->t->tls_handshake(t, &err);
		if (r == TETHER_TLS_DONE)
			break;
		if (r < 0 || io.eof) {
			if (r >= 0)
				tether_err_set(&err, TETHER_ERR_TLS, TETHER_CAT_CONNECTION_RESET,
				               "the peer closed the connection during the handshake");
			if (err.code == TETHER_ERR_UNTRUSTED)
				rc = 3;
			goto fail;
		}
	}
	if (r != TETHER_TLS_DONE || !pin.checked) {
		tether_err_set(&err, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT, "handshake did not finish");
		goto fail;
	}
	if (p->t->tls_info(t, &info) == 0)
		printf("tls_version %s\ncipher %s\n", info.tls_version, info.cipher);
	if (p->t->tls_write(t, "tether-probe\n", 13, &err) < 0)
		goto fail;
	for (i = 0; i < 50 && got < sizeof(line) - 1 && !memchr(line, '\n', got); i++) {
		size_t n = 0;
		r = p->t->tls_read(t, line + got, sizeof(line) - 1 - got, &n, &err);
		if (r < 0)
			goto fail;
		if (r == TETHER_TLS_CLOSED || (r == TETHER_TLS_WANT_READ && io.eof))
			break;
		got += n;
		line[got] = '\0';
	}
	line[got] = '\0';
	printf("reply %s", got ? line : "(none)\n");
	p->t->tls_close(t);
	rc = got ? 0 : 1;
	goto out;
fail:
	fprintf(stderr, "sch_tls_probe: %s (category %s)\n", err.detail,
	        tether_category_name(err.category));
out:
	if (t)
		p->t->tls_free(t);
	if (ctx)
		p->t->tls_ctx_free(ctx);
	if (id)
		p->t->identity_free(id);
	if (io.s != INVALID_SOCKET)
		closesocket(io.s);
	if (p)
		tether_provider_unload(p);
	return rc;
}
