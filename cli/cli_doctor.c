/*
 * doctor: check an instance locally and print a pass/warn/fail list, each
 * with the fix.  Shared by tether-agent and tether-server.
 *
 * The TLS check negotiates with itself in memory through the provider's
 * own TLS operations (both sides use the instance's identity), so it runs
 * under whatever OpenSSL configuration (OPENSSL_CONF, the system
 * openssl.cnf) the daemon would run under.
 */
#include "config.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include "admin_client.h"
#include "cli.h"
#include "fsutil.h"
#include "identity.h"
#include "trust.h"
#include "util.h"

#define EXPIRY_WARN_DAYS 30
#define SELFTEST_ROUNDS 64
#define PORT_PROBE_MS 3000
#define WALK_MAX_FILES 256
#define WALK_MAX_DEPTH 4

enum { ST_PASS, ST_WARN, ST_FAIL, ST_SKIP };
static const char *const st_names[] = { "pass", "warn", "fail", "skip" };

typedef struct doctor {
	cli_ctx *c;
	json_t *checks;
	int counts[4];
	char sfx[600];                   /* " --instance X --home Y" for fixes */
	tether_id_summary id;
} doctor;

static void add(doctor *d, int st, const char *name, const char *fix, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void add(doctor *d, int st, const char *name, const char *fix, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	json_t *o;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	d->counts[st]++;
	o = json_pack("{s:s, s:s, s:s}", "check", name, "status", st_names[st], "message", msg);
	if (fix)
		json_object_set_new(o, "fix", json_string(fix));
	json_array_append_new(d->checks, o);
}

/* ------------------------------------------------------------------ */
/* Files                                                               */
/* ------------------------------------------------------------------ */

/* A file holding a private key or secret: named so, or PEM-marked. */
static int is_secret_file(const char *path, const char *name)
{
	char buf[4097];
	ssize_t n;
	int fd;

	if (strstr(name, "key") || strstr(name, "pin") || strstr(name, "pass") || strstr(name, ".p12") ||
	    strstr(name, ".pfx"))
		return 1;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return 1; /* cannot tell: judge it as a secret */
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strstr(buf, "PRIVATE KEY") != NULL;
}

/* Every key file under dir (following the slot links) must be ours and
 * 0600 or stricter, every directory 0700.  Returns 0, or -1 with the
 * finding in bad and the command that fixes it in fix. */
static int walk_private(const char *dir, int depth, int *nfiles, char *bad, char *fix, size_t cap)
{
	DIR *dh;
	struct dirent *de;
	int r = 0;

	if (depth > WALK_MAX_DEPTH)
		return 0;
	dh = opendir(dir);
	if (!dh) {
		snprintf(bad, cap, "cannot read %s: %s", dir, strerror(errno));
		snprintf(fix, cap, "check the ownership of %s: it must belong to the user running tether", dir);
		return -1;
	}
	while ((de = readdir(dh)) != NULL && r == 0 && *nfiles < WALK_MAX_FILES) {
		char *p;
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		p = tether_asprintf("%s/%s", dir, de->d_name);
		if (stat(p, &st) == 0) {
			if (S_ISDIR(st.st_mode)) {
				if (st.st_mode & 077) {
					snprintf(bad, cap, "directory %s is open to other users (mode %03o)", p,
					         (unsigned)(st.st_mode & 0777));
					snprintf(fix, cap, "chmod 700 %s", p);
					r = -1;
				} else if (lstat(p, &st) == 0 && !S_ISLNK(st.st_mode)) {
					r = walk_private(p, depth + 1, nfiles, bad, fix, cap);
				}
			} else if (S_ISREG(st.st_mode) && is_secret_file(p, de->d_name)) {
				(*nfiles)++;
				if (st.st_uid != geteuid()) {
					snprintf(bad, cap, "%s belongs to uid %u, not to the user running tether (uid %u)", p,
					         (unsigned)st.st_uid, (unsigned)geteuid());
					snprintf(fix, cap, "chown %u %s (or run tether as its owner)", (unsigned)geteuid(), p);
					r = -1;
				} else if (st.st_mode & 077) {
					snprintf(bad, cap, "key file %s is open to other users (mode %03o)", p,
					         (unsigned)(st.st_mode & 0777));
					snprintf(fix, cap, "chmod 600 %s", p);
					r = -1;
				} else if (access(p, R_OK) != 0) {
					snprintf(bad, cap, "key file %s is not readable by its owner", p);
					snprintf(fix, cap, "chmod 600 %s", p);
					r = -1;
				}
			}
		}
		free(p);
	}
	closedir(dh);
	return r;
}

static void check_key_files(doctor *d)
{
	cli_ctx *c = d->c;
	char *iddir = tether_asprintf("%s/identity", c->inst->state_dir);
	char bad[1024] = "", fix[1024] = "";
	struct stat st;
	int n = 0;
	const char *pf = tether_config_get(c->conf, "openssl", "key-passphrase-file", NULL);

	if (stat(c->inst->state_dir, &st) == 0 && (st.st_mode & 077)) {
		snprintf(fix, sizeof(fix), "chmod 700 %s", c->inst->state_dir);
		add(d, ST_FAIL, "key-permissions", fix, "the state directory %s is open to other users (mode %03o)",
		    c->inst->state_dir, (unsigned)(st.st_mode & 0777));
		free(iddir);
		return;
	}
	if (!tether_is_dir(iddir)) {
		add(d, ST_PASS, "key-permissions", NULL, "provider %s keeps no key files in %s",
		    c->prov->t->name, c->inst->state_dir);
		free(iddir);
		return;
	}
	if (walk_private(iddir, 0, &n, bad, fix, sizeof(bad)) < 0)
		add(d, ST_FAIL, "key-permissions", fix, "%s", bad);
	else if (n == 0)
		add(d, ST_WARN, "key-permissions", NULL, "no key file found under %s", iddir);
	else
		add(d, ST_PASS, "key-permissions", NULL, "%d key file%s under %s, owned by uid %u and readable "
		    "only by it", n, n == 1 ? "" : "s", iddir, (unsigned)geteuid());
	if (pf) {
		if (stat(pf, &st) < 0)
			add(d, ST_FAIL, "passphrase-file", "create it (one line, mode 600) or remove key-passphrase-file "
			    "from the [openssl] section", "key-passphrase-file %s: %s", pf, strerror(errno));
		else if (st.st_mode & 077) {
			snprintf(fix, sizeof(fix), "chmod 600 %s", pf);
			add(d, ST_FAIL, "passphrase-file", fix, "key-passphrase-file %s is readable by other users "
			    "(mode %03o)", pf, (unsigned)(st.st_mode & 0777));
		} else
			add(d, ST_PASS, "passphrase-file", NULL, "key-passphrase-file %s is private", pf);
	}
	free(iddir);
}

/* ------------------------------------------------------------------ */
/* Certificate                                                         */
/* ------------------------------------------------------------------ */

static void regen_fix(doctor *d, char *fix, size_t cap, const char *why)
{
	const char *p = d->c->prog->progname;

	if (!strcmp(d->c->prog->program, "server"))
		snprintf(fix, cap, "%s: run '%s new-certificate%s', trust the new thumbprint on each agent "
		         "('tether-agent configure --trust NEW'), then '%s use-staged-certificate%s'", why, p, d->sfx,
		         p, d->sfx);
	else
		snprintf(fix, cap, "%s: run '%s new-certificate%s', then on the server 'tether-server target "
		         "set-thumbprint NAME NEW'", why, p, d->sfx);
}

static void check_certificate(doctor *d)
{
	const tether_cert_info *ci = &d->id.info;
	char fix[1024];
	int64_t left = ci->not_after - (int64_t)time(NULL);

	if (strcasestr(ci->cert_signature_algorithm, "sha1") || strcasestr(ci->cert_signature_algorithm, "md5") ||
	    strcasestr(ci->cert_signature_algorithm, "md2") || strcasestr(ci->cert_signature_algorithm, "md4")) {
		regen_fix(d, fix, sizeof(fix), "regenerate it (new certificates are signed with SHA-256)");
		add(d, ST_FAIL, "signature-algorithm", fix, "the certificate is signed with %s: peers at OpenSSL's "
		    "default security level, Windows and FIPS systems refuse it", ci->cert_signature_algorithm);
	} else {
		add(d, ST_PASS, "signature-algorithm", NULL, "signed with %s", ci->cert_signature_algorithm);
	}

	if (!strcmp(ci->key_type, "rsa") && ci->key_bits < 2048) {
		regen_fix(d, fix, sizeof(fix), "use a stronger key");
		add(d, ST_FAIL, "key-size", fix, "RSA %d bits: below 2048, refused by OpenSSL's default security "
		    "level", ci->key_bits);
	} else if (!strcmp(ci->key_type, "ec") && ci->key_bits < 256) {
		regen_fix(d, fix, sizeof(fix), "use a stronger key");
		add(d, ST_FAIL, "key-size", fix, "EC %d bits (%s): tether needs P-256 or P-384", ci->key_bits,
		    ci->curve);
	} else if (!strcmp(ci->key_type, "ec") && strcmp(ci->curve, "prime256v1") && strcmp(ci->curve, "secp384r1") &&
	           strcmp(ci->curve, "P-256") && strcmp(ci->curve, "P-384")) {
		regen_fix(d, fix, sizeof(fix), "use a supported curve");
		add(d, ST_FAIL, "key-size", fix, "EC curve %s: tether's signature schemes cover P-256 and P-384 only",
		    ci->curve);
	} else {
		add(d, ST_PASS, "key-size", NULL, "%s %d bits%s%s", ci->key_type, ci->key_bits, ci->curve[0] ? " " : "",
		    ci->curve);
	}

	if (left < 0) {
		regen_fix(d, fix, sizeof(fix), "renew it when convenient");
		add(d, ST_WARN, "expiry", fix, "the certificate expired on %s: it still connects (the pin is the "
		    "trust), but some tools complain", d->id.not_after);
	} else if (left < (int64_t)EXPIRY_WARN_DAYS * 86400) {
		regen_fix(d, fix, sizeof(fix), "renew it");
		add(d, ST_WARN, "expiry", fix, "the certificate expires on %s, in %lld day%s", d->id.not_after,
		    (long long)(left / 86400), left / 86400 == 1 ? "" : "s");
	} else {
		add(d, ST_PASS, "expiry", NULL, "valid until %s", d->id.not_after);
	}
}

/* ------------------------------------------------------------------ */
/* TLS self-test in memory                                             */
/* ------------------------------------------------------------------ */

typedef struct membuf {
	unsigned char *b;
	size_t len, cap;
} membuf;

typedef struct pipe_end {
	membuf *in, *out;
} pipe_end;

static int mb_read(void *arg, void *buf, size_t len)
{
	pipe_end *pe = arg;
	size_t n = pe->in->len < len ? pe->in->len : len;

	if (n == 0)
		return 0;    /* pe->in->b may still be NULL */
	memcpy(buf, pe->in->b, n);
	memmove(pe->in->b, pe->in->b + n, pe->in->len - n);
	pe->in->len -= n;
	return (int)n;
}

static int mb_write(void *arg, const void *buf, size_t len)
{
	pipe_end *pe = arg;
	membuf *m = pe->out;

	if (m->len + len > (1u << 20))
		return -1;
	if (m->len + len > m->cap) {
		m->cap = (m->len + len) * 2;
		m->b = realloc(m->b, m->cap);
		if (!m->b)
			abort();
	}
	memcpy(m->b + m->len, buf, len);
	m->len += len;
	return (int)len;
}

static int accept_any(void *arg, const unsigned char *der, size_t len)
{
	(void)arg;
	(void)der;
	return len ? 0 : -1;
}

/* Negotiate with itself under policy; fills info on success. */
static int selftest(tether_prov *p, tether_identity *id, unsigned policy, tether_tls_info *info,
                    tether_error *err)
{
	tether_tls_ctx_params cp;
	tether_tls_params tp;
	tether_tls_ctx *cctx = NULL, *sctx = NULL;
	tether_tls *cl = NULL, *sv = NULL;
	membuf c2s = { 0 }, s2c = { 0 };
	pipe_end ce = { &s2c, &c2s }, se = { &c2s, &s2c };
	int r, i, cdone = 0, sdone = 0;

	memset(&cp, 0, sizeof(cp));
	cp.role = TETHER_TLS_SERVER;
	cp.policy = policy | TETHER_TLS_POLICY_REQUIRE_CERT;
	cp.identity = id;
	r = p->t->tls_ctx_new(p->ctx, &cp, &sctx, err);
	if (r < 0)
		goto out;
	cp.role = TETHER_TLS_CLIENT;
	cp.policy = policy;
	r = p->t->tls_ctx_new(p->ctx, &cp, &cctx, err);
	if (r < 0)
		goto out;
	memset(&tp, 0, sizeof(tp));
	tp.verify = accept_any;
	tp.io.read = mb_read;
	tp.io.write = mb_write;
	tp.io.io_arg = &ce;
	r = p->t->tls_new(cctx, &tp, &cl, err);
	if (r < 0)
		goto out;
	tp.io.io_arg = &se;
	r = p->t->tls_new(sctx, &tp, &sv, err);
	if (r < 0)
		goto out;
	for (i = 0; i < SELFTEST_ROUNDS && !(cdone && sdone); i++) {
		if (!cdone) {
			r = p->t->tls_handshake(cl, err);
			if (r < 0) {
				tether_err_prefix(err, "client side");
				goto out;
			}
			cdone = r == TETHER_TLS_DONE;
		}
		if (!sdone) {
			r = p->t->tls_handshake(sv, err);
			if (r < 0) {
				tether_err_prefix(err, "server side");
				goto out;
			}
			sdone = r == TETHER_TLS_DONE;
		}
	}
	if (!(cdone && sdone)) {
		r = tether_err_set(err, TETHER_ERR_TIMEOUT, TETHER_CAT_INTERNAL,
		                   "the in-memory handshake did not finish in %d steps", SELFTEST_ROUNDS);
		goto out;
	}
	p->t->tls_info(cl, info);
	r = 0;
out:
	if (cl)
		p->t->tls_free(cl);
	if (sv)
		p->t->tls_free(sv);
	if (cctx)
		p->t->tls_ctx_free(cctx);
	if (sctx)
		p->t->tls_ctx_free(sctx);
	free(c2s.b);
	free(s2c.b);
	return r;
}

static void check_tls(doctor *d, tether_identity *id)
{
	static const struct { unsigned policy; const char *name; } pol[] = {
		{ TETHER_TLS_POLICY_TLS13_ONLY, "tls13" },
		{ TETHER_TLS_POLICY_TLS12_ONLY, "tls12" },
	};
	const char *conf = getenv("OPENSSL_CONF");
	char where[600], fix[1400];
	size_t i;

	snprintf(where, sizeof(where), "%s%s", conf ? "OPENSSL_CONF=" : "the system openssl.cnf (on Debian "
	         "/etc/ssl/openssl.cnf)", conf ? conf : "");
	for (i = 0; i < sizeof(pol) / sizeof(pol[0]); i++) {
		tether_tls_info info;
		tether_error e;
		char name[32];

		memset(&e, 0, sizeof(e));
		memset(&info, 0, sizeof(info));
		snprintf(name, sizeof(name), "tls-%s", pol[i].name);
		if (selftest(d->c->prov, id, pol[i].policy, &info, &e) == 0) {
			add(d, ST_PASS, name, NULL, "negotiated with itself under %s: %s, %s, group %s, signature %s",
			    where, info.tls_version, info.cipher, info.group[0] ? info.group : "-",
			    info.sig_scheme[0] ? info.sig_scheme : "-");
			continue;
		}
		/* The pkcs11 provider refuses TLS 1.3 for an RSA key on a token
		 * without CKM_RSA_PKCS_PSS: the identity is capped at TLS 1.2. */
		if (pol[i].policy == TETHER_TLS_POLICY_TLS13_ONLY && strstr(e.detail, "has no RSA-PSS")) {
			snprintf(fix, sizeof(fix), "for TLS 1.3 make an EC identity on the token ('%s "
			         "new-certificate --key-type ec-p256%s') or use a token with CKM_RSA_PKCS_PSS",
			         d->c->prog->progname, d->sfx);
			add(d, ST_WARN, name, fix, "this identity is capped at TLS 1.2: %s", e.detail);
			continue;
		}
		if (e.category == TETHER_CAT_TOKEN_UNAVAILABLE)
			snprintf(fix, sizeof(fix), "%s", tether_category_hint(e.category));
		else if (strstr(e.detail, "md too weak"))
			regen_fix(d, fix, sizeof(fix), "the certificate's signature digest (SHA-1) is below the "
			          "security level of the OpenSSL configuration, so TLS cannot use it: regenerate it");
		else if (strstr(e.detail, "key too small"))
			snprintf(fix, sizeof(fix), "the security level set by CipherString (@SECLEVEL=N) in %s is "
			         "higher than this identity meets (RSA 2048 and SHA-256 need @SECLEVEL=2 or lower): "
			         "lower it, or make a stronger key: '%s new-certificate --key-type rsa3072%s' (level 3 "
			         "needs RSA 3072 or EC P-256, level 4 RSA 7680 or EC P-384)", where, d->c->prog->progname,
			         d->sfx);
		else
			snprintf(fix, sizeof(fix), "%s%sin %s look at the [system_default_sect] settings: "
			         "MinProtocol/MaxProtocol must allow TLSv1.2 and TLSv1.3, CipherString must keep the "
			         "ECDHE-*-GCM suites and a @SECLEVEL the key meets, Ciphersuites TLS_AES_*_GCM_*, "
			         "Groups x25519/P-256/P-384, SignatureAlgorithms the RSA-PSS/PKCS#1/ECDSA SHA-256/384 "
			         "schemes", e.category && e.category != TETHER_CAT_INTERNAL ?
			         tether_category_hint(e.category) : "", e.category && e.category != TETHER_CAT_INTERNAL ?
			         "; " : "", where);
		add(d, ST_FAIL, name, fix, "%s cannot be negotiated with this identity under %s: %s",
		    i == 0 ? "TLS 1.3" : "TLS 1.2", where, e.detail);
	}
}

/* ------------------------------------------------------------------ */
/* Agent: listen port and trust                                        */
/* ------------------------------------------------------------------ */

typedef struct port_peer {
	unsigned char *der;
	size_t len;
} port_peer;

static int grab_der(void *arg, const unsigned char *der, size_t len)
{
	port_peer *pp = arg;

	if (len && !pp->der) {
		pp->der = tether_xmalloc(len);
		memcpy(pp->der, der, len);
		pp->len = len;
	}
	return -1; /* we only wanted to see it */
}

typedef struct sock_io {
	int fd;
	membuf in, out;
} sock_io;

static int sk_read(void *arg, void *buf, size_t len)
{
	sock_io *s = arg;
	pipe_end pe = { &s->in, NULL };
	return mb_read(&pe, buf, len);
}

static int sk_write(void *arg, const void *buf, size_t len)
{
	sock_io *s = arg;
	pipe_end pe = { NULL, &s->out };
	return mb_write(&pe, buf, len);
}

/* Who listens at host:port?  Handshakes as a TLS client without a
 * certificate just far enough to see the listener's certificate. */
static int who_listens(tether_prov *p, const struct addrinfo *ai, port_peer *pp)
{
	tether_tls_ctx_params cp;
	tether_tls_params tp;
	tether_tls_ctx *ctx = NULL;
	tether_tls *t = NULL;
	tether_error e;
	sock_io s;
	uint64_t deadline = tether_now_ms() + PORT_PROBE_MS;
	int r = -1, i;

	memset(&s, 0, sizeof(s));
	s.fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s.fd < 0)
		return -1;
	{
		struct timeval tv = { PORT_PROBE_MS / 1000, 0 };
		setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(s.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	if (connect(s.fd, ai->ai_addr, ai->ai_addrlen) < 0)
		goto out;
	memset(&cp, 0, sizeof(cp));
	cp.role = TETHER_TLS_CLIENT;
	if (p->t->tls_ctx_new(p->ctx, &cp, &ctx, &e) < 0)
		goto out;
	memset(&tp, 0, sizeof(tp));
	tp.io.read = sk_read;
	tp.io.write = sk_write;
	tp.io.io_arg = &s;
	tp.verify = grab_der;
	tp.verify_arg = pp;
	if (p->t->tls_new(ctx, &tp, &t, &e) < 0)
		goto out;
	for (i = 0; i < 32 && tether_now_ms() < deadline && !pp->der; i++) {
		unsigned char buf[16384];
		ssize_t n;

		r = p->t->tls_handshake(t, &e);
		if (s.out.len) {
			if (send(s.fd, s.out.b, s.out.len, MSG_NOSIGNAL) != (ssize_t)s.out.len)
				break;
			s.out.len = 0;
		}
		if (r != TETHER_TLS_WANT_READ || pp->der)
			break;
		n = recv(s.fd, buf, sizeof(buf), 0);
		if (n <= 0)
			break;
		{
			pipe_end pe = { NULL, &s.in };
			mb_write(&pe, buf, (size_t)n);
		}
	}
	r = pp->der ? 0 : -1;
out:
	if (t)
		p->t->tls_free(t);
	if (ctx)
		p->t->tls_ctx_free(ctx);
	close(s.fd);
	free(s.in.b);
	free(s.out.b);
	return r;
}

static void check_port(doctor *d, const char *section, const char *def)
{
	cli_ctx *c = d->c;
	const char *addr = tether_config_get(c->conf, section, "address", def);
	const char *name = !strcmp(section, "listen") ? "listen-port" : "polling-port";
	int is_agent = !strcmp(c->prog->program, "agent");
	struct addrinfo hints, *res = NULL;
	char *host = NULL, ps[16], fix[700];
	int port = 0, fd, one = 1, r;

	if (tether_parse_hostport(addr, &host, &port, 0) < 0) {
		snprintf(fix, sizeof(fix), "set [%s] address to HOST:PORT in %s", section, c->inst->config_path);
		add(d, ST_FAIL, name, fix, "[%s] address '%s' is not HOST:PORT", section, addr);
		return;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	snprintf(ps, sizeof(ps), "%d", port);
	r = getaddrinfo(host, ps, &hints, &res);
	if (r) {
		snprintf(fix, sizeof(fix), "set [%s] address to an address of this machine in %s", section,
		         c->inst->config_path);
		add(d, ST_FAIL, name, fix, "[%s] address %s: cannot resolve %s: %s", section, addr, host,
		    gai_strerror(r));
		free(host);
		return;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd >= 0 && bind(fd, res->ai_addr, res->ai_addrlen) == 0) {
		add(d, ST_PASS, name, NULL, "%s is free (the %s is not running)", addr, is_agent ? "agent" : "server");
	} else if (errno == EADDRINUSE) {
		struct addrinfo *ai = res, lo;
		struct sockaddr_storage ss;
		port_peer pp = { NULL, 0 };
		tether_thumbprint tp;
		char hex[TETHER_THUMBPRINT_HEX] = "";

		/* a wildcard listener is reached on loopback */
		memcpy(&ss, res->ai_addr, res->ai_addrlen);
		if (!strcmp(host, "0.0.0.0") || !strcmp(host, "::")) {
			lo = *res;
			if (ss.ss_family == AF_INET)
				((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(0x7f000001);
			else
				((struct sockaddr_in6 *)&ss)->sin6_addr = in6addr_loopback;
			lo.ai_addr = (struct sockaddr *)&ss;
			ai = &lo;
		}
		if (who_listens(c->prov, ai, &pp) == 0 &&
		    tether_thumbprint_of(c->prov, pp.der, pp.len, &tp, NULL) == 0)
			tether_thumbprint_hex(&tp, hex);
		free(pp.der);
		if (hex[0] && !strcmp(hex, d->id.sha256)) {
			add(d, ST_PASS, name, NULL, "%s is in use by this instance (it presents this instance's "
			    "certificate): the %s is running", addr, is_agent ? "agent" : "server");
		} else {
			snprintf(fix, sizeof(fix), "find the owner with 'ss -ltnp \"sport = :%d\"' and stop it, or "
			         "choose another port: [%s] address in %s", port, section, c->inst->config_path);
			add(d, ST_FAIL, name, fix, "%s is in use by another program%s%s", addr,
			    hex[0] ? " presenting certificate " : " (it does not answer TLS like a tether agent)", hex);
		}
	} else {
		int e = errno;
		snprintf(fix, sizeof(fix), "%s: change [%s] address in %s", e == EACCES ?
		         "ports below 1024 need root" : "check the address", section, c->inst->config_path);
		add(d, ST_FAIL, name, fix, "cannot bind %s: %s", addr, strerror(e));
	}
	if (fd >= 0)
		close(fd);
	freeaddrinfo(res);
	free(host);
}

static void check_trust(doctor *d)
{
	tether_trust *t = tether_xcalloc(1, sizeof(*t));
	tether_error e;
	char fix[600];

	if (tether_trust_load(d->c->inst->state_dir, t, &e) < 0) {
		add(d, ST_FAIL, "trust", "restore the file from a backup, or rebuild it with 'configure --trust'",
		    "cannot read the trust set: %s", e.detail);
	} else if (t->ntrusted == 0) {
		snprintf(fix, sizeof(fix), "on the server run 'tether-server show-thumbprint', then here '%s "
		         "configure --trust THUMBPRINT%s'", d->c->prog->progname, d->sfx);
		add(d, ST_FAIL, "trust", fix, "no server is trusted: every server will be refused");
	} else {
		add(d, ST_PASS, "trust", NULL, "%zu trusted server%s, %zu recovery thumbprint%s", t->ntrusted,
		    t->ntrusted == 1 ? "" : "s", t->nrecovery, t->nrecovery == 1 ? "" : "s");
	}
	free(t);
}

/* ------------------------------------------------------------------ */
/* Server: targets' last health                                        */
/* ------------------------------------------------------------------ */

static const char *jstr(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

static void check_targets(doctor *d)
{
	json_t *res = NULL, *arr, *t;
	tether_error e;
	size_t i;
	char name[128], fix[1200];

	memset(&e, 0, sizeof(e));
	if (admin_client_call(d->c->inst, "target.list", NULL, 10000, &res, &e) < 0) {
		if (e.code == TETHER_ERR_NOT_FOUND)
			snprintf(fix, sizeof(fix), "start it: '%s run%s' (or 'service --start')", d->c->prog->progname,
			         d->sfx);
		else
			snprintf(fix, sizeof(fix), "%s", tether_category_hint(e.category));
		add(d, ST_WARN, "targets", fix, "target health skipped: the daemon did not answer: %s", e.detail);
		return;
	}
	arr = json_object_get(res, "targets");
	if (!json_array_size(arr))
		add(d, ST_WARN, "targets", "add one: 'tether-server target add NAME --listening HOST:PORT "
		    "--thumbprint T'", "no targets registered");
	json_array_foreach(arr, i, t) {
		const char *state = jstr(t, "state"), *cat = jstr(t, "category");
		snprintf(name, sizeof(name), "target %s", jstr(t, "name"));
		if (!state[0]) {
			snprintf(fix, sizeof(fix), "run 'tether-server health %s%s'", jstr(t, "name"), d->sfx);
			add(d, ST_WARN, name, fix, "never checked");
		} else if (!strcmp(state, "healthy")) {
			add(d, ST_PASS, name, NULL, "healthy at the last check (%s, %s)", jstr(t, "tls_version"),
			    jstr(t, "cipher"));
		} else {
			int c;
			for (c = 0; c < TETHER_CAT__COUNT; c++)
				if (!strcmp(tether_category_name(c), cat))
					break;
			if (c == TETHER_CAT_TOKEN_UNAVAILABLE) /* this side's token: no path or TLS problem */
				snprintf(fix, sizeof(fix), "%s", tether_category_hint(c));
			else
				snprintf(fix, sizeof(fix), "%s; then 'tether-ping connect %s' tests the path and the "
				         "TLS settings", c < TETHER_CAT__COUNT ? tether_category_hint(c) : "see the error",
				         jstr(t, "address")[0] ? jstr(t, "address") : "HOST:PORT");
			add(d, !strcmp(state, "unreachable") || !strcmp(state, "timeout") ? ST_WARN : ST_FAIL, name, fix,
			    "%s at the last check (%s): %s", state, cat[0] ? cat : "-", jstr(t, "error"));
		}
	}
	json_decref(res);
}

/* ------------------------------------------------------------------ */

static void print_text(doctor *d)
{
	size_t i;
	json_t *o;

	printf("%s doctor, instance %s\n", d->c->prog->progname,
	       d->c->inst ? d->c->inst->name : d->c->instance_name ? d->c->instance_name : "default");
	json_array_foreach(d->checks, i, o) {
		const char *st = jstr(o, "status");
		printf("  %-4s  %-20s %s\n", !strcmp(st, "pass") ? "ok" : !strcmp(st, "warn") ? "WARN" :
		       !strcmp(st, "fail") ? "FAIL" : "skip", jstr(o, "check"), jstr(o, "message"));
		if (jstr(o, "fix")[0])
			printf("        %-20s fix: %s\n", "", jstr(o, "fix"));
	}
	printf("%d passed, %d warning%s, %d failed\n", d->counts[ST_PASS], d->counts[ST_WARN],
	       d->counts[ST_WARN] == 1 ? "" : "s", d->counts[ST_FAIL]);
}

int verb_doctor(cli_ctx *c, int argc, char **argv)
{
	doctor d;
	tether_identity *id = NULL;
	int oi, r, is_agent;
	char fix[700];

	r = cli_parse(c, argc, argv, NULL, "[--json]",
	              "Check this instance and print what is wrong and how to fix it: the configuration, the\n"
	              "provider, the identity (key file permissions, signature algorithm, key size, expiry), that\n"
	              "the OpenSSL configuration in effect lets tether negotiate TLS 1.3 and 1.2 (tested by a\n"
	              "handshake with itself in memory), and for an agent the listen port and the trust set, for\n"
	              "a server each target's last health. Exit status 1 if any check fails.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	memset(&d, 0, sizeof(d));
	d.c = c;
	d.checks = json_array();
	is_agent = !strcmp(c->prog->program, "agent");
	snprintf(d.sfx, sizeof(d.sfx), "%s", cli_args(c));

	r = cli_open_instance(c);
	if (r < 0) {
		if (c->inst && !tether_instance_exists(c->inst))
			snprintf(fix, sizeof(fix), "run '%s create-instance%s'", c->prog->progname, d.sfx);
		else
			snprintf(fix, sizeof(fix), "edit %s (or see '%s show-configuration%s' for the keys)",
			         c->inst ? c->inst->config_path : "the configuration file", c->prog->progname, d.sfx);
		add(&d, ST_FAIL, "config", fix, "%s", c->err.detail);
		goto report;
	}
	add(&d, ST_PASS, "config", NULL, "%s parses", c->inst->config_path);
	r = cli_open_provider(c);
	if (r < 0) {
		add(&d, ST_FAIL, "provider", "install the provider package, or set TETHER_PROVIDER_PATH / [tether] "
		    "provider", "%s", c->err.detail);
		goto report;
	}
	add(&d, ST_PASS, "provider", NULL, "%s (%s) from %s", c->prov->t->name,
	    c->prov->t->version ? c->prov->t->version : "?", c->prov->path);

	r = c->prov->t->identity_load(c->prov->ctx, TETHER_SLOT_CURRENT, &id, &c->err);
	if (r == TETHER_ERR_NOT_FOUND) {
		snprintf(fix, sizeof(fix), "run '%s new-certificate%s'", c->prog->progname, d.sfx);
		add(&d, ST_FAIL, "identity", fix, "this instance has no certificate yet");
	} else if (r < 0) {
		snprintf(fix, sizeof(fix), "%s", tether_category_hint(c->err.category));
		add(&d, ST_FAIL, "identity", fix, "the identity cannot be loaded: %s", c->err.detail);
	} else {
		const unsigned char *der;
		size_t len;
		c->prov->t->identity_cert_der(id, &der, &len);
		if (tether_cert_summary(c->prov, der, len, &d.id, &c->err) < 0) {
			add(&d, ST_FAIL, "identity", "regenerate it with 'new-certificate'",
			    "the certificate cannot be read: %s", c->err.detail);
			c->prov->t->identity_free(id);
			id = NULL;
		} else {
			add(&d, ST_PASS, "identity", NULL, "certificate %s", d.id.sha256);
		}
	}
	check_key_files(&d);
	if (id) {
		check_certificate(&d);
		check_tls(&d, id);
	}
	if (is_agent) {
		if (!strcmp(tether_config_get(c->conf, "tether", "mode", "listening"), "polling"))
			add(&d, ST_PASS, "listen-port", NULL, "polling mode: the agent does not listen");
		else if (id)
			check_port(&d, "listen", "0.0.0.0:10933");
		check_trust(&d);
	} else {
		if (id)
			check_port(&d, "polling", "0.0.0.0:10943");
		check_targets(&d);
	}
	if (id)
		c->prov->t->identity_free(id);
report:
	tether_err_clear(&c->err);
	if (c->json) {
		json_t *o = json_pack("{s:b, s:s, s:i, s:i, s:i, s:O}", "ok", d.counts[ST_FAIL] == 0,
		                      "instance", c->inst ? c->inst->name : "", "passed", d.counts[ST_PASS],
		                      "warnings", d.counts[ST_WARN], "failed", d.counts[ST_FAIL], "checks", d.checks);
		cli_print_json(o);
	} else {
		print_text(&d);
	}
	json_decref(d.checks);
	return d.counts[ST_FAIL] ? 1 : 0;
}
