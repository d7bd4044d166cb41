/*
 * Probe handshakes: when a handshake fails for a TLS reason (often only a
 * generic handshake_failure alert), tether-ping runs further handshakes,
 * each widening one parameter beyond what tether accepts, and names the one
 * that made the difference.
 *
 * These probes need a wider TLS configuration than the provider ABI's fixed
 * policy (TLS 1.0/1.1 at security level 0, suites without ECDHE or with CBC,
 * ffdhe groups, SHA-1 signature schemes), so they use libssl directly.  They
 * are diagnostics only: each one stops after the handshake, with a
 * throw-away certificate made here, and sends no application data.  The
 * connection that carries traffic always goes through the provider.
 *
 * The tether column of each parameter (TETHER_*) mirrors the policy in
 * providers/common/ossl_tls.c and DESIGN.md.
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include "error.h"
#include "ping.h"
#include "util.h"

#define TETHER_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TETHER_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TETHER_GROUPS "x25519:secp256r1:secp384r1"
#define TETHER_SIGALGS \
	"rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256:" \
	"rsa_pkcs1_sha384:ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384"

/* The CBC suites TLS 1.0 and 1.1 need (they have no GCM). */
#define LEGACY_CIPHERS \
	"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:" \
	"DHE-RSA-AES128-SHA:DHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA:DES-CBC3-SHA"
#define ALL_SUITES TETHER_SUITES ":TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"
#define WIDE_GROUPS TETHER_GROUPS ":x448:secp521r1:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192"
#define WIDE_SIGALGS TETHER_SIGALGS \
	":rsa_pss_rsae_sha512:rsa_pkcs1_sha512:ecdsa_secp521r1_sha512:ed25519:ed448:" \
	"rsa_pss_pss_sha256:rsa_pss_pss_sha384:rsa_pss_pss_sha512:RSA+SHA1:ECDSA+SHA1:RSA+SHA224:ECDSA+SHA224"

typedef struct probe_def {
	const char *name;
	const char *widened;
	int min_v, max_v;
	const char *ciphers, *suites, *groups, *sigalgs;
	int seclevel;                   /* -1: libssl's default */
	int category;                   /* what a success of this probe points to */
} probe_def;

static const probe_def probes[] = {
	{ "tether policy", "nothing: tether's own settings", TLS1_2_VERSION, TLS1_3_VERSION,
	  TETHER_CIPHERS, TETHER_SUITES, TETHER_GROUPS, TETHER_SIGALGS, -1, 0 },
	{ "TLS 1.2 only", "nothing: tether's settings without TLS 1.3", TLS1_2_VERSION, TLS1_2_VERSION,
	  TETHER_CIPHERS, TETHER_SUITES, TETHER_GROUPS, TETHER_SIGALGS, -1, TETHER_CAT_PROTOCOL_VERSION },
	{ "versions", "TLS 1.0 and 1.1 (with the CBC suites they need), security level 0",
	  TLS1_VERSION, TLS1_3_VERSION, TETHER_CIPHERS ":" LEGACY_CIPHERS, TETHER_SUITES, TETHER_GROUPS,
	  TETHER_SIGALGS ":RSA+SHA1:ECDSA+SHA1", 0, TETHER_CAT_PROTOCOL_VERSION },
	{ "cipher suites", "every suite (RSA and DHE key exchange, CBC, CCM), security level 0",
	  TLS1_2_VERSION, TLS1_3_VERSION, "ALL:@SECLEVEL=0", ALL_SUITES, TETHER_GROUPS, TETHER_SIGALGS, 0,
	  TETHER_CAT_NO_SHARED_CIPHER },
	{ "groups", "x448, secp521r1 and the ffdhe groups", TLS1_2_VERSION, TLS1_3_VERSION,
	  TETHER_CIPHERS ":DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384", TETHER_SUITES, WIDE_GROUPS,
	  TETHER_SIGALGS, -1, TETHER_CAT_NO_SHARED_GROUP },
	{ "signature schemes", "SHA-1, SHA-224 and SHA-512 schemes, EdDSA, RSA-PSS keys (TLS 1.2, where "
	  "SHA-1 schemes exist), security level 0", TLS1_2_VERSION, TLS1_2_VERSION, TETHER_CIPHERS,
	  TETHER_SUITES, TETHER_GROUPS, WIDE_SIGALGS, 0, TETHER_CAT_NO_SHARED_SIGALG },
};

#define NPROBES (sizeof(probes) / sizeof(probes[0]))

/* ------------------------------------------------------------------ */

typedef struct probe_state {
	int accepted;                   /* a server message after ServerHello */
	int alert_recv;
} probe_state;

static int g_ex_idx = -1;

static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                   void *arg)
{
	probe_state *ps = SSL_get_ex_data(ssl, g_ex_idx);
	const unsigned char *p = buf;

	(void)version;
	(void)arg;
	if (!ps || write_p || len < 1)
		return;
	if (content_type == SSL3_RT_HANDSHAKE) {
		switch (p[0]) {
		case 8:  /* encrypted_extensions (1.3) */
		case 11: /* certificate */
		case 12: /* server_key_exchange */
		case 13: /* certificate_request */
		case 14: /* server_hello_done */
			ps->accepted = 1;
			break;
		default:
			break;
		}
	} else if (content_type == SSL3_RT_ALERT && len >= 2) {
		ps->alert_recv = p[1];
	}
}

static int verify_any(int ok, X509_STORE_CTX *x)
{
	(void)ok;
	(void)x;
	return 1; /* probes judge negotiation, not trust */
}

/* A throw-away RSA-2048 certificate, SHA-256 signed, for the probes. */
static int make_cert(EVP_PKEY **key, X509 **cert)
{
	EVP_PKEY *k = EVP_RSA_gen(2048);
	X509 *c = X509_new();
	X509_NAME *n;

	if (!k || !c)
		goto fail;
	X509_set_version(c, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
	X509_gmtime_adj(X509_getm_notBefore(c), -3600);
	X509_gmtime_adj(X509_getm_notAfter(c), 86400);
	n = X509_get_subject_name(c);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"tether-ping probe", -1, -1, 0);
	X509_set_issuer_name(c, n);
	if (!X509_set_pubkey(c, k) || !X509_sign(c, k, EVP_sha256()))
		goto fail;
	*key = k;
	*cert = c;
	return 0;
fail:
	EVP_PKEY_free(k);
	X509_free(c);
	return -1;
}

static int tcp_connect(const char *host, int port, uint64_t deadline, char *why, size_t whylen)
{
	struct addrinfo hints, *res = NULL, *ai;
	char ps[16];
	int fd = -1, r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	snprintf(ps, sizeof(ps), "%d", port);
	r = getaddrinfo(host, ps, &hints, &res);
	if (r) {
		snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(r));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		struct pollfd pfd;
		int err = 0;
		socklen_t el = sizeof(err);
		int64_t left = (int64_t)deadline - (int64_t)tether_now_ms();

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS && left > 0) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			if (poll(&pfd, 1, (int)left) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 &&
			    err == 0)
				break;
			snprintf(why, whylen, "cannot connect: %s", err ? strerror(err) : "timed out");
		} else {
			snprintf(why, whylen, "cannot connect: %s", strerror(errno));
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

static const char *sig_scheme_name(int type, int hash)
{
	switch (type) {
	case EVP_PKEY_RSA_PSS:
		return hash == NID_sha256 ? "rsa_pss_rsae_sha256" : hash == NID_sha384 ? "rsa_pss_rsae_sha384" :
		       hash == NID_sha512 ? "rsa_pss_rsae_sha512" : "rsa_pss";
	case EVP_PKEY_RSA:
		return hash == NID_sha256 ? "rsa_pkcs1_sha256" : hash == NID_sha384 ? "rsa_pkcs1_sha384" :
		       hash == NID_sha512 ? "rsa_pkcs1_sha512" : hash == NID_sha1 ? "rsa_pkcs1_sha1" :
		       hash == NID_sha224 ? "rsa_pkcs1_sha224" : "rsa_pkcs1";
	case EVP_PKEY_EC:
		return hash == NID_sha256 ? "ecdsa_secp256r1_sha256" : hash == NID_sha384 ?
		       "ecdsa_secp384r1_sha384" : hash == NID_sha512 ? "ecdsa_secp521r1_sha512" :
		       hash == NID_sha1 ? "ecdsa_sha1" : "ecdsa";
	case EVP_PKEY_ED25519:
		return "ed25519";
	case EVP_PKEY_ED448:
		return "ed448";
	default:
		return "";
	}
}

static const char *group_name(int nid)
{
	const char *n;

	if (nid == NID_undef || (nid & TLSEXT_nid_unknown))
		return "";
	if (nid == NID_X9_62_prime256v1)
		return "secp256r1";
	if (nid == NID_X25519)
		return "x25519";
	if (nid == NID_X448)
		return "x448";
	n = OBJ_nid2sn(nid);
	return n ? n : "";
}

static void one_probe(const probe_def *d, const char *host, int port, unsigned timeout_ms, EVP_PKEY *key,
                      X509 *cert, ping_probe_result *out)
{
	uint64_t deadline = tether_now_ms() + timeout_ms;
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	probe_state ps;
	int fd, r, type = NID_undef, hash = NID_undef;
	unsigned long e;

	memset(out, 0, sizeof(*out));
	memset(&ps, 0, sizeof(ps));
	ps.alert_recv = -1;
	out->name = d->name;
	out->widened = d->widened;
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || !SSL_CTX_set_min_proto_version(ctx, d->min_v) ||
	    !SSL_CTX_set_max_proto_version(ctx, d->max_v)) {
		snprintf(out->error, sizeof(out->error), "cannot set up the probe");
		goto out;
	}
	if (d->seclevel >= 0)
		SSL_CTX_set_security_level(ctx, d->seclevel);
	/* unknown names in a list (a libssl without ffdhe, say) are skipped
	 * by libssl where it can; a list that fails entirely is reported */
	if (!SSL_CTX_set_cipher_list(ctx, d->ciphers) || !SSL_CTX_set_ciphersuites(ctx, d->suites) ||
	    !SSL_CTX_set1_groups_list(ctx, d->groups) || !SSL_CTX_set1_sigalgs_list(ctx, d->sigalgs)) {
		char buf[160];
		ERR_error_string_n(ERR_peek_last_error(), buf, sizeof(buf));
		snprintf(out->error, sizeof(out->error), "this libssl cannot offer these parameters: %s", buf);
		goto out;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_any);
	SSL_CTX_set_msg_callback(ctx, msg_cb);
	if (!SSL_CTX_use_certificate(ctx, cert) || !SSL_CTX_use_PrivateKey(ctx, key)) {
		snprintf(out->error, sizeof(out->error), "cannot use the probe certificate");
		goto out;
	}
	fd = tcp_connect(host, port, deadline, out->error, sizeof(out->error));
	if (fd < 0)
		goto out;
	ssl = SSL_new(ctx);
	SSL_set_ex_data(ssl, g_ex_idx, &ps);
	SSL_set_fd(ssl, fd);
	SSL_set_connect_state(ssl);
	for (;;) {
		int64_t left = (int64_t)deadline - (int64_t)tether_now_ms();
		struct pollfd pfd;

		r = SSL_do_handshake(ssl);
		if (r == 1) {
			out->completed = 1;
			break;
		}
		r = SSL_get_error(ssl, r);
		if ((r != SSL_ERROR_WANT_READ && r != SSL_ERROR_WANT_WRITE) || left <= 0) {
			if (left <= 0)
				snprintf(out->error, sizeof(out->error), "no answer within %u ms", timeout_ms);
			else if ((e = ERR_peek_last_error()) != 0)
				snprintf(out->error, sizeof(out->error), "%s", ERR_reason_error_string(e) ?
				         ERR_reason_error_string(e) : "TLS error");
			else
				snprintf(out->error, sizeof(out->error), "the peer closed the connection");
			if (ps.alert_recv >= 0) {
				size_t l = strlen(out->error);
				snprintf(out->error + l, sizeof(out->error) - l, " (alert %d, %s)", ps.alert_recv,
				         SSL_alert_desc_string_long(ps.alert_recv));
			}
			break;
		}
		pfd.fd = fd;
		pfd.events = r == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		if (poll(&pfd, 1, (int)(left > 1000 ? 1000 : left)) < 0 && errno != EINTR)
			break;
	}
	out->server_hello = ps.accepted || out->completed;
	if (out->server_hello) {
		const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
		snprintf(out->tls_version, sizeof(out->tls_version), "%s", SSL_get_version(ssl));
		snprintf(out->cipher, sizeof(out->cipher), "%s", c ? SSL_CIPHER_get_name(c) : "");
		snprintf(out->group, sizeof(out->group), "%s", group_name(SSL_get_negotiated_group(ssl)));
		if (SSL_get_peer_signature_type_nid(ssl, &type) && SSL_get_peer_signature_nid(ssl, &hash))
			snprintf(out->sig_scheme, sizeof(out->sig_scheme), "%s", sig_scheme_name(type, hash));
	}
	if (out->completed)
		SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
out:
	SSL_CTX_free(ctx);
	ERR_clear_error();
}

static int in_list(const char *list, const char *name)
{
	size_t n = strlen(name);
	const char *p = list;

	if (!n)
		return 1; /* nothing negotiated for that parameter: not the difference */
	while ((p = strstr(p, name)) != NULL) {
		if ((p == list || p[-1] == ':') && (p[n] == ':' || p[n] == '\0'))
			return 1;
		p += n;
	}
	return 0;
}

/* Which negotiated value lies outside tether's policy. */
static int outside_policy(const ping_probe_result *r, char *what, size_t cap)
{
	if (strcmp(r->tls_version, "TLSv1.2") && strcmp(r->tls_version, "TLSv1.3")) {
		snprintf(what, cap, "the peer negotiated %s, older than tether's minimum TLS 1.2", r->tls_version);
		return TETHER_CAT_PROTOCOL_VERSION;
	}
	if (!in_list(TETHER_CIPHERS ":" TETHER_SUITES, r->cipher)) {
		snprintf(what, cap, "the peer chose the suite %s (%s), which tether does not offer", r->cipher,
		         r->tls_version);
		return TETHER_CAT_NO_SHARED_CIPHER;
	}
	if (!in_list(TETHER_GROUPS, r->group)) {
		snprintf(what, cap, "the peer chose the group %s, which tether does not offer", r->group);
		return TETHER_CAT_NO_SHARED_GROUP;
	}
	if (!in_list(TETHER_SIGALGS, r->sig_scheme)) {
		snprintf(what, cap, "the peer signed with %s, a signature scheme tether does not accept",
		         r->sig_scheme);
		return TETHER_CAT_NO_SHARED_SIGALG;
	}
	return 0;
}

static const char *param_name(int cat)
{
	switch (cat) {
	case TETHER_CAT_PROTOCOL_VERSION: return "TLS version";
	case TETHER_CAT_NO_SHARED_CIPHER: return "cipher suite";
	case TETHER_CAT_NO_SHARED_GROUP: return "key-exchange group";
	case TETHER_CAT_NO_SHARED_SIGALG: return "signature scheme";
	default: return "parameter";
	}
}

int ping_probe_run(const char *host, int port, unsigned timeout_ms, ping_probe_report *out,
                   tether_error *err)
{
	ping_probe_report rep;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	size_t i;
	char what[256];

	memset(&rep, 0, sizeof(rep));
	if (g_ex_idx < 0)
		g_ex_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	if (g_ex_idx < 0 || make_cert(&key, &cert) < 0) {
		ERR_clear_error();
		return tether_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                      "cannot make the probes' throw-away certificate");
	}
	for (i = 0; i < NPROBES && i < PING_PROBES_MAX; i++) {
		one_probe(&probes[i], host, port, timeout_ms, key, cert, &rep.r[i]);
		rep.n++;
		/* the peer is not reachable at all: more probes won't tell more */
		if (i == 0 && !strncmp(rep.r[0].error, "cannot ", 7))
			break;
	}
	EVP_PKEY_free(key);
	X509_free(cert);

	if (rep.r[0].server_hello) {
		snprintf(rep.verdict, sizeof(rep.verdict),
		         "with tether's own settings the peer accepts the handshake now (%s, %s): the failure was "
		         "not in the TLS parameters, or it came and went", rep.r[0].tls_version, rep.r[0].cipher);
		goto done;
	}
	for (i = 1; i < rep.n; i++) {
		int cat;
		if (!rep.r[i].server_hello)
			continue;
		what[0] = '\0';
		cat = outside_policy(&rep.r[i], what, sizeof(what));
		if (!cat && i == 1) {
			rep.category = TETHER_CAT_PROTOCOL_VERSION;
			snprintf(rep.verdict, sizeof(rep.verdict),
			         "TLS version: the peer fails TLS 1.3 with tether's parameters but accepts them in "
			         "TLS 1.2 (%s, %s); look at the peer's TLS 1.3 settings (Ciphersuites, Groups, "
			         "SignatureAlgorithms)", rep.r[i].cipher, rep.r[i].sig_scheme[0] ? rep.r[i].sig_scheme : "-");
			goto done;
		}
		if (!cat)
			cat = probes[i].category;
		rep.category = cat;
		if (!what[0])
			snprintf(what, sizeof(what), "the peer accepted once they were offered (%s, %s)",
			         rep.r[i].tls_version, rep.r[i].cipher);
		snprintf(rep.verdict, sizeof(rep.verdict), "the %s made the difference (probe \"%s\"): %s",
		         param_name(cat), probes[i].name, what);
		goto done;
	}
	snprintf(rep.verdict, sizeof(rep.verdict),
	         "no single widened parameter made the peer accept a handshake: it may require a client "
	         "certificate from its own CA, a pre-shared key, or a protocol tether-ping does not probe; "
	         "look at the peer's log");
done:
	*out = rep;
	return 0;
}

json_t *ping_probe_json(const ping_probe_report *rep)
{
	json_t *arr = json_array(), *o;
	size_t i;

	for (i = 0; i < rep->n; i++) {
		const ping_probe_result *r = &rep->r[i];
		json_t *p = json_pack("{s:s, s:s, s:b, s:b}", "name", r->name, "widened", r->widened,
		                      "accepted", r->server_hello, "completed", r->completed);
		if (r->server_hello) {
			json_object_set_new(p, "tls_version", json_string(r->tls_version));
			json_object_set_new(p, "cipher", json_string(r->cipher));
			json_object_set_new(p, "group", r->group[0] ? json_string(r->group) : json_null());
			json_object_set_new(p, "sig_scheme", r->sig_scheme[0] ? json_string(r->sig_scheme) : json_null());
		}
		if (r->error[0])
			json_object_set_new(p, "error", json_string(r->error));
		json_array_append_new(arr, p);
	}
	o = json_pack("{s:o, s:s}", "results", arr, "verdict", rep->verdict);
	json_object_set_new(o, "category", rep->category ? json_string(tether_category_name(rep->category)) :
	                                   json_null());
	return o;
}

void ping_probe_print(const ping_probe_report *rep)
{
	size_t i;

	printf("probes (diagnostic handshakes only, never used for traffic):\n");
	for (i = 0; i < rep->n; i++) {
		const ping_probe_result *r = &rep->r[i];
		if (r->server_hello)
			printf("  %-18s accepted: %s, %s%s%s%s%s   [widened: %s]\n", r->name, r->tls_version, r->cipher,
			       r->group[0] ? ", " : "", r->group, r->sig_scheme[0] ? ", " : "", r->sig_scheme,
			       r->widened);
		else
			printf("  %-18s refused: %s   [widened: %s]\n", r->name, r->error[0] ? r->error : "-",
			       r->widened);
	}
	printf("verdict: %s\n", rep->verdict);
}
