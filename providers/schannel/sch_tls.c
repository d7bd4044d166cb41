/* TLS over memory buffers with SSPI/Schannel.
 *
 * The core owns the socket: ciphertext comes in through io.read and goes
 * out through io.write.  Client role: InitializeSecurityContext (polling
 * agents, tether-ping); server role: AcceptSecurityContext (listening
 * agents; Wine has no server role).  Schannel validates nothing (manual
 * credential validation): the core's pin decides, after the handshake and
 * before any application data, since Schannel shows the peer certificate
 * only then.  The client's target name is the pin hint (SNI).  A server
 * picks its identity from the SNI of the ClientHello (sch_parse_sni)
 * before Schannel sees it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sch_int.h"

#define IN_MAX (64 * 1024)       /* bound of buffered ciphertext */
#define STEP_MAX 64              /* handshake calls per tls_handshake() */

struct tether_tls_ctx {
	tether_provider_ctx *p;
	int role;
	unsigned policy;
	tether_identity *identity;
	tether_tls_choose_identity_fn choose;
	void *choose_arg;
	CredHandle cred;
	int have_cred;
};

struct tether_tls {
	tether_tls_ctx *c;
	tether_tls_io io;
	tether_tls_verify_fn verify;
	void *verify_arg;
	wchar_t *target;                   /* client: SNI / pin hint */
	tether_identity *identity;         /* presented identity (borrowed) */
	CredHandle cred;                   /* own credential, if own_cred */
	int own_cred;
	CtxtHandle h;
	int have_h;
	int done, closed, failed;
	unsigned char *in;
	size_t in_len;
	unsigned char *plain;
	size_t plain_off, plain_len;
	SecPkgContext_StreamSizes sizes;
	unsigned char *peer_der;
	size_t peer_len;
	char sni[256];
};

static CredHandle *cred_of(tether_tls *t)
{
	return t->own_cred ? &t->cred : &t->c->cred;
}

/* SP_PROT_* allowed for this identity and policy. */
static DWORD allowed_protocols(int role, unsigned policy, const tether_identity *id)
{
	DWORD v12 = role == TETHER_TLS_CLIENT ? SP_PROT_TLS1_2_CLIENT : SP_PROT_TLS1_2_SERVER;
	DWORD v13 = role == TETHER_TLS_CLIENT ? SP_PROT_TLS1_3_CLIENT : SP_PROT_TLS1_3_SERVER;

	/* a CryptoAPI key cannot do RSA-PSS: TLS 1.3 would fail */
	if ((policy & TETHER_TLS_POLICY_TLS12_ONLY) || (id && id->kind == SCH_KEY_CAPI))
		return v12;
	if (policy & TETHER_TLS_POLICY_TLS13_ONLY)
		return v13;
	return v12 | v13;
}

static int make_cred(tether_provider_ctx *p, int role, unsigned policy, tether_identity *id,
                     CredHandle *out, tether_error *err)
{
	SCH_CREDENTIALS sc;
	TLS_PARAMETERS tp;
	SCHANNEL_CRED old;
	PCCERT_CONTEXT certs[1];
	DWORD allowed = allowed_protocols(role, policy, id);
	DWORD use = role == TETHER_TLS_CLIENT ? SECPKG_CRED_OUTBOUND : SECPKG_CRED_INBOUND;
	DWORD flags = SCH_USE_STRONG_CRYPTO |
	              (role == TETHER_TLS_CLIENT ? SCH_CRED_MANUAL_CRED_VALIDATION |
	                                           SCH_CRED_NO_DEFAULT_CREDS : 0);
	SECURITY_STATUS s;
	TimeStamp ts;

	if (id)
		certs[0] = id->cert;
	memset(&tp, 0, sizeof(tp));
	tp.grbitDisabledProtocols = (DWORD)~allowed;
	memset(&sc, 0, sizeof(sc));
	sc.dwVersion = SCH_CREDENTIALS_VERSION;
	sc.cCreds = id ? 1 : 0;
	sc.paCred = id ? certs : NULL;
	sc.dwFlags = flags;
	sc.cTlsParameters = 1;
	sc.pTlsParameters = &tp;
	s = AcquireCredentialsHandleW(NULL, (LPWSTR)UNISP_NAME_W, use, NULL, &sc, NULL, NULL, out, &ts);
	if (s == SEC_E_OK)
		return 0;
	sch_log(p, TETHER_LOG_DEBUG, "SCH_CREDENTIALS refused (0x%08lx): using SCHANNEL_CRED, TLS 1.2",
	        (unsigned long)s);
	/* systems before Windows 10 1809 know only SCHANNEL_CRED (no TLS 1.3) */
	memset(&old, 0, sizeof(old));
	old.dwVersion = SCHANNEL_CRED_VERSION;
	old.cCreds = id ? 1 : 0;
	old.paCred = id ? certs : NULL;
	old.grbitEnabledProtocols = allowed & (SP_PROT_TLS1_2_CLIENT | SP_PROT_TLS1_2_SERVER);
	old.dwFlags = flags;
	if (!old.grbitEnabledProtocols)
		return sch_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_PROTOCOL_VERSION,
		                   "this system's Schannel has no TLS 1.3, and the policy allows only 1.3");
	s = AcquireCredentialsHandleW(NULL, (LPWSTR)UNISP_NAME_W, use, NULL, &old, NULL, NULL, out, &ts);
	if (s != SEC_E_OK)
		return sch_err_status(err, (uint32_t)s, 1, "AcquireCredentialsHandle");
	return 0;
}

int sch_tls_ctx_new(tether_provider_ctx *p, const tether_tls_ctx_params *params,
                    tether_tls_ctx **out, tether_error *err)
{
	tether_tls_ctx *c;
	int r;

	if (params->role != TETHER_TLS_CLIENT && params->role != TETHER_TLS_SERVER)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, "bad TLS role");
	if (params->policy & TETHER_TLS_POLICY_FIPS)
		return sch_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                   "the schannel provider does not enforce a FIPS policy itself: enable "
		                   "Windows' FIPS mode (a system policy) and remove the FIPS option");
	/* [tls] fips-module = required: Windows' validated modules (CNG, and the
	 * CryptoAPI providers built on it) run in their FIPS-approved mode only
	 * when the system policy says so; BCryptGetFipsAlgorithmMode reads it. */
	if (params->policy & TETHER_TLS_POLICY_FIPS_MODULE) {
		BOOLEAN fips_on = FALSE;
		NTSTATUS st = BCryptGetFipsAlgorithmMode(&fips_on);
		if (st != 0)
			return sch_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
			                   "[tls] fips-module = required, but Windows' FIPS mode cannot "
			                   "be read (BCryptGetFipsAlgorithmMode: 0x%08lx): check the "
			                   "system's CNG (bcrypt.dll), or set [tls] fips-module = off",
			                   (unsigned long)st);
		if (!fips_on)
			return sch_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
			                   "[tls] fips-module = required, but Windows' FIPS mode is off "
			                   "(BCryptGetFipsAlgorithmMode): enable the security policy "
			                   "\"System cryptography: Use FIPS compliant algorithms for "
			                   "encryption, hashing, and signing\" (secpol.msc or Group "
			                   "Policy; it sets HKLM\\System\\CurrentControlSet\\Control\\"
			                   "Lsa\\FipsAlgorithmPolicy\\Enabled = 1), restart the agent, or "
			                   "set [tls] fips-module = off");
		sch_log(p, TETHER_LOG_DEBUG, "[tls] fips-module = required: Windows' FIPS mode is on");
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	c->p = p;
	c->role = params->role;
	c->policy = params->policy;
	c->identity = params->identity;
	c->choose = params->choose_identity;
	c->choose_arg = params->choose_arg;
	r = make_cred(p, c->role, c->policy, c->identity, &c->cred, err);
	if (r < 0) {
		free(c);
		return r;
	}
	c->have_cred = 1;
	*out = c;
	return 0;
}

void sch_tls_ctx_free(tether_tls_ctx *c)
{
	if (!c)
		return;
	if (c->have_cred)
		FreeCredentialsHandle(&c->cred);
	free(c);
}

int sch_tls_new(tether_tls_ctx *c, const tether_tls_params *params, tether_tls **out,
                tether_error *err)
{
	tether_tls *t = calloc(1, sizeof(*t));
	int r;

	if (!t)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	t->c = c;
	t->io = params->io;
	t->verify = params->verify;
	t->verify_arg = params->verify_arg;
	t->identity = c->identity;
	t->in = malloc(IN_MAX);
	if (!t->in) {
		free(t);
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	}
	if (c->role == TETHER_TLS_CLIENT && params->server_name && *params->server_name)
		t->target = sch_wide(params->server_name);
	if (c->role == TETHER_TLS_CLIENT && params->identity && params->identity != c->identity) {
		t->identity = params->identity;
		r = make_cred(c->p, c->role, c->policy, t->identity, &t->cred, err);
		if (r < 0) {
			sch_tls_free(t);
			return r;
		}
		t->own_cred = 1;
	}
	*out = t;
	return 0;
}

void sch_tls_free(tether_tls *t)
{
	if (!t)
		return;
	if (t->have_h)
		DeleteSecurityContext(&t->h);
	if (t->own_cred)
		FreeCredentialsHandle(&t->cred);
	free(t->target);
	if (t->in) {
		SecureZeroMemory(t->in, IN_MAX);
		free(t->in);
	}
	if (t->plain) {
		SecureZeroMemory(t->plain, t->plain_len);
		free(t->plain);
	}
	free(t->peer_der);
	free(t);
}

/* Pull ciphertext from the core.  Returns the bytes added (0: none now). */
static size_t fill(tether_tls *t)
{
	int n;

	if (t->in_len >= IN_MAX)
		return 0;
	n = t->io.read(t->io.io_arg, t->in + t->in_len, IN_MAX - t->in_len);
	if (n <= 0)
		return 0;
	t->in_len += (size_t)n;
	return (size_t)n;
}

static int send_all(tether_tls *t, const void *b, size_t n)
{
	return n == 0 || t->io.write(t->io.io_arg, b, n) == (int)n ? 0 : -1;
}

/* Send and free SSPI-allocated output buffers. */
static int flush_out(tether_tls *t, SecBuffer *ob, int n)
{
	int i, r = 0;

	for (i = 0; i < n; i++) {
		if (ob[i].pvBuffer) {
			if ((ob[i].BufferType == SECBUFFER_TOKEN || ob[i].BufferType == SECBUFFER_ALERT) &&
			    ob[i].cbBuffer && send_all(t, ob[i].pvBuffer, ob[i].cbBuffer) < 0)
				r = -1;
			FreeContextBuffer(ob[i].pvBuffer);
			ob[i].pvBuffer = NULL;
		}
	}
	return r;
}

static SECURITY_STATUS step(tether_tls *t, SecBufferDesc *in, SecBufferDesc *out)
{
	ULONG attrs = 0;
	TimeStamp ts;
	SECURITY_STATUS s;

	if (t->c->role == TETHER_TLS_CLIENT) {
		ULONG f = ISC_REQ_SEQUENCE_DETECT | ISC_REQ_REPLAY_DETECT | ISC_REQ_CONFIDENTIALITY |
		          ISC_REQ_ALLOCATE_MEMORY | ISC_REQ_STREAM | ISC_REQ_EXTENDED_ERROR |
		          ISC_REQ_MANUAL_CRED_VALIDATION | ISC_REQ_USE_SUPPLIED_CREDS;
		s = InitializeSecurityContextW(cred_of(t), t->have_h ? &t->h : NULL, t->target, f, 0, 0,
		                               in, 0, t->have_h ? NULL : &t->h, out, &attrs, &ts);
	} else {
		ULONG f = ASC_REQ_SEQUENCE_DETECT | ASC_REQ_REPLAY_DETECT | ASC_REQ_CONFIDENTIALITY |
		          ASC_REQ_ALLOCATE_MEMORY | ASC_REQ_STREAM | ASC_REQ_EXTENDED_ERROR |
		          ASC_REQ_MUTUAL_AUTH;
		s = AcceptSecurityContext(cred_of(t), t->have_h ? &t->h : NULL, in, f, 0,
		                          t->have_h ? NULL : &t->h, out, &attrs, &ts);
	}
	if (!t->have_h && (s == SEC_E_OK || s == SEC_I_CONTINUE_NEEDED ||
	                   s == SEC_I_INCOMPLETE_CREDENTIALS || s == SEC_I_CONTEXT_EXPIRED))
		t->have_h = 1;
	return s;
}

static void keep_extra(tether_tls *t, const SecBuffer *extra)
{
	if (extra->BufferType == SECBUFFER_EXTRA && extra->cbBuffer > 0 &&
	    extra->cbBuffer <= t->in_len) {
		memmove(t->in, t->in + (t->in_len - extra->cbBuffer), extra->cbBuffer);
		t->in_len = extra->cbBuffer;
	} else {
		t->in_len = 0;
	}
}

static int finish(tether_tls *t, tether_error *err)
{
	PCCERT_CONTEXT peer = NULL;
	SECURITY_STATUS s;

	s = QueryContextAttributesW(&t->h, SECPKG_ATTR_STREAM_SIZES, &t->sizes);
	if (s != SEC_E_OK)
		return sch_err_status(err, (uint32_t)s, 1, "QueryContextAttributes(STREAM_SIZES)");
	s = QueryContextAttributesW(&t->h, SECPKG_ATTR_REMOTE_CERT_CONTEXT, &peer);
	if (s == SEC_E_OK && peer) {
		t->peer_der = malloc(peer->cbCertEncoded);
		if (t->peer_der) {
			memcpy(t->peer_der, peer->pbCertEncoded, peer->cbCertEncoded);
			t->peer_len = peer->cbCertEncoded;
		}
		CertFreeCertificateContext(peer);
	}
	t->done = 1;
	if (t->verify && t->verify(t->verify_arg, t->peer_der, t->peer_len) < 0) {
		sch_tls_reject(t);
		t->failed = 1;
		return sch_err_set(err, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED,
		                   "the peer's certificate is not pinned");
	}
	return 0;
}

/* Server: choose the identity from the ClientHello's SNI before the first
 * AcceptSecurityContext.  0 go on, 1 need more bytes, negative error. */
static int server_pick(tether_tls *t, tether_error *err)
{
	int r = sch_parse_sni(t->in, t->in_len, t->sni, sizeof(t->sni));
	tether_identity *id;

	if (r == -1)
		return t->in_len >= IN_MAX ? sch_err_set(err, TETHER_ERR_TLS, TETHER_CAT_NOT_TLS,
		                                         "oversized ClientHello") : 1;
	if (r == -2)
		return sch_err_set(err, TETHER_ERR_TLS, TETHER_CAT_NOT_TLS,
		                   "the client did not start a TLS handshake");
	if (r == 0)
		t->sni[0] = '\0';
	if (!t->c->choose || !t->sni[0])
		return 0;
	id = t->c->choose(t->c->choose_arg, t->sni);
	if (id && id != t->c->identity) {
		int e = make_cred(t->c->p, t->c->role, t->c->policy, id, &t->cred, err);
		if (e < 0)
			return e;
		t->own_cred = 1;
		t->identity = id;
	}
	return 0;
}

int sch_tls_handshake(tether_tls *t, tether_error *err)
{
	int i;

	if (t->done)
		return TETHER_TLS_DONE;
	if (t->failed)
		return sch_err_set(err, TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE, "the handshake already failed");
	for (i = 0; i < STEP_MAX; i++) {
		SecBuffer ib[2], ob[2];
		SecBufferDesc in = { SECBUFFER_VERSION, 2, ib }, out = { SECBUFFER_VERSION, 2, ob };
		SECURITY_STATUS s;
		int first_client = t->c->role == TETHER_TLS_CLIENT && !t->have_h;

		if (!first_client && t->in_len == 0 && fill(t) == 0)
			return TETHER_TLS_WANT_READ;
		if (t->c->role == TETHER_TLS_SERVER && !t->have_h) {
			int r = server_pick(t, err);
			if (r < 0) {
				t->failed = 1;
				return r;
			}
			if (r == 1) {
				if (fill(t) == 0)
					return TETHER_TLS_WANT_READ;
				continue;
			}
		}
		ib[0].BufferType = SECBUFFER_TOKEN;
		ib[0].pvBuffer = t->in;
		ib[0].cbBuffer = (ULONG)t->in_len;
		ib[1].BufferType = SECBUFFER_EMPTY;
		ib[1].pvBuffer = NULL;
		ib[1].cbBuffer = 0;
		ob[0].BufferType = SECBUFFER_TOKEN;
		ob[0].pvBuffer = NULL;
		ob[0].cbBuffer = 0;
		ob[1].BufferType = SECBUFFER_ALERT;
		ob[1].pvBuffer = NULL;
		ob[1].cbBuffer = 0;
		s = step(t, first_client ? NULL : &in, &out);
		if (s == SEC_E_INCOMPLETE_MESSAGE) {
			flush_out(t, ob, 2);
			if (fill(t) == 0)
				return TETHER_TLS_WANT_READ;
			continue;
		}
		if (flush_out(t, ob, 2) < 0) {
			t->failed = 1;
			return sch_err_set(err, TETHER_ERR_IO, TETHER_CAT_CONNECTION_RESET,
			                   "cannot send handshake data");
		}
		if (FAILED(s)) {
			t->failed = 1;
			return sch_err_status(err, (uint32_t)s, 1,
			                      t->c->role == TETHER_TLS_CLIENT ? "TLS handshake "
			                      "(InitializeSecurityContext)" : "TLS handshake (AcceptSecurityContext)");
		}
		if (!first_client)
			keep_extra(t, &ib[1]);
		if (s == SEC_E_OK)
			return finish(t, err) < 0 ? err->code : TETHER_TLS_DONE;
		/* SEC_I_CONTINUE_NEEDED, SEC_I_INCOMPLETE_CREDENTIALS (our
		 * credential already carries the certificate): go on */
	}
	t->failed = 1;
	return sch_err_set(err, TETHER_ERR_TLS, TETHER_CAT_HANDSHAKE,
	                   "the TLS handshake did not finish in %d steps", STEP_MAX);
}

/* TLS 1.3 post-handshake messages (tickets, key updates) come back from
 * DecryptMessage as SEC_I_RENEGOTIATE: hand them to the handshake call. */
static int post_handshake(tether_tls *t, tether_error *err)
{
	SecBuffer ib[2], ob[2];
	SecBufferDesc in = { SECBUFFER_VERSION, 2, ib }, out = { SECBUFFER_VERSION, 2, ob };
	SECURITY_STATUS s;

	ib[0].BufferType = SECBUFFER_TOKEN;
	ib[0].pvBuffer = t->in;
	ib[0].cbBuffer = (ULONG)t->in_len;
	ib[1].BufferType = SECBUFFER_EMPTY;
	ib[1].pvBuffer = NULL;
	ib[1].cbBuffer = 0;
	ob[0].BufferType = SECBUFFER_TOKEN;
	ob[0].pvBuffer = NULL;
	ob[0].cbBuffer = 0;
	ob[1].BufferType = SECBUFFER_ALERT;
	ob[1].pvBuffer = NULL;
	ob[1].cbBuffer = 0;
	s = step(t, &in, &out);
	flush_out(t, ob, 2);
	if (FAILED(s) && s != SEC_E_INCOMPLETE_MESSAGE)
		return sch_err_status(err, (uint32_t)s, 1, "TLS post-handshake message");
	if (s != SEC_E_INCOMPLETE_MESSAGE)
		keep_extra(t, &ib[1]);
	return 0;
}

int sch_tls_read(tether_tls *t, void *buf, size_t cap, size_t *n, tether_error *err)
{
	int i;

	*n = 0;
	if (!t->done)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, "read before the handshake");
	for (i = 0; i < STEP_MAX; i++) {
		SecBuffer b[4];
		SecBufferDesc d = { SECBUFFER_VERSION, 4, b };
		SECURITY_STATUS s;
		int k;
		SecBuffer *data = NULL, *extra = NULL;

		if (t->plain_off < t->plain_len) {
			size_t m = t->plain_len - t->plain_off;
			if (m > cap)
				m = cap;
			memcpy(buf, t->plain + t->plain_off, m);
			t->plain_off += m;
			*n = m;
			return TETHER_TLS_DONE;
		}
		if (t->closed)
			return TETHER_TLS_CLOSED;
		if (t->in_len == 0 && fill(t) == 0)
			return TETHER_TLS_WANT_READ;
		b[0].BufferType = SECBUFFER_DATA;
		b[0].pvBuffer = t->in;
		b[0].cbBuffer = (ULONG)t->in_len;
		for (k = 1; k < 4; k++) {
			b[k].BufferType = SECBUFFER_EMPTY;
			b[k].pvBuffer = NULL;
			b[k].cbBuffer = 0;
		}
		s = DecryptMessage(&t->h, &d, 0, NULL);
		if (s == SEC_E_INCOMPLETE_MESSAGE) {
			if (fill(t) == 0)
				return TETHER_TLS_WANT_READ;
			continue;
		}
		if (s == SEC_I_CONTEXT_EXPIRED) {
			t->closed = 1;
			t->in_len = 0;
			return TETHER_TLS_CLOSED;
		}
		if (s != SEC_E_OK && s != SEC_I_RENEGOTIATE)
			return sch_err_status(err, (uint32_t)s, 1, "DecryptMessage");
		for (k = 1; k < 4; k++) {
			if (b[k].BufferType == SECBUFFER_DATA && !data)
				data = &b[k];
			else if (b[k].BufferType == SECBUFFER_EXTRA && !extra)
				extra = &b[k];
		}
		if (data && data->cbBuffer) {
			unsigned char *pl = realloc(t->plain, data->cbBuffer);
			if (!pl)
				return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
			t->plain = pl;
			memcpy(t->plain, data->pvBuffer, data->cbBuffer);
			t->plain_off = 0;
			t->plain_len = data->cbBuffer;
		}
		if (extra && extra->cbBuffer <= t->in_len) {
			memmove(t->in, t->in + (t->in_len - extra->cbBuffer), extra->cbBuffer);
			t->in_len = extra->cbBuffer;
		} else {
			t->in_len = 0;
		}
		if (s == SEC_I_RENEGOTIATE) {
			int r = post_handshake(t, err);
			if (r < 0)
				return r;
		}
	}
	return TETHER_TLS_WANT_READ;     /* bounded: the caller comes back */
}

int sch_tls_write(tether_tls *t, const void *buf, size_t len, tether_error *err)
{
	const unsigned char *p = buf;
	unsigned char *rec;
	size_t max, off = 0;
	int r = 0;

	if (!t->done)
		return sch_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, "write before the handshake");
	max = t->sizes.cbMaximumMessage;
	rec = malloc(t->sizes.cbHeader + max + t->sizes.cbTrailer);
	if (!rec)
		return sch_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
	while (off < len) {
		size_t n = len - off > max ? max : len - off;
		SecBuffer b[4];
		SecBufferDesc d = { SECBUFFER_VERSION, 4, b };
		SECURITY_STATUS s;

		memcpy(rec + t->sizes.cbHeader, p + off, n);
		b[0].BufferType = SECBUFFER_STREAM_HEADER;
		b[0].pvBuffer = rec;
		b[0].cbBuffer = t->sizes.cbHeader;
		b[1].BufferType = SECBUFFER_DATA;
		b[1].pvBuffer = rec + t->sizes.cbHeader;
		b[1].cbBuffer = (ULONG)n;
		b[2].BufferType = SECBUFFER_STREAM_TRAILER;
		b[2].pvBuffer = rec + t->sizes.cbHeader + n;
		b[2].cbBuffer = t->sizes.cbTrailer;
		b[3].BufferType = SECBUFFER_EMPTY;
		b[3].pvBuffer = NULL;
		b[3].cbBuffer = 0;
		s = EncryptMessage(&t->h, 0, &d, 0);
		if (s != SEC_E_OK) {
			r = sch_err_status(err, (uint32_t)s, 1, "EncryptMessage");
			break;
		}
		if (send_all(t, rec, b[0].cbBuffer + b[1].cbBuffer + b[2].cbBuffer) < 0) {
			r = sch_err_set(err, TETHER_ERR_IO, TETHER_CAT_CONNECTION_RESET,
			                "cannot queue TLS data");
			break;
		}
		off += n;
	}
	SecureZeroMemory(rec, t->sizes.cbHeader + max + t->sizes.cbTrailer);
	free(rec);
	return r;
}

/* Apply a control token (shutdown or alert) and send what Schannel makes
 * of it. */
static int control(tether_tls *t, void *token, ULONG len)
{
	SecBuffer cb = { len, SECBUFFER_TOKEN, token };
	SecBufferDesc cd = { SECBUFFER_VERSION, 1, &cb };
	SecBuffer ob[2];
	SecBufferDesc out = { SECBUFFER_VERSION, 2, ob };

	if (!t->have_h || ApplyControlToken(&t->h, &cd) != SEC_E_OK)
		return TETHER_ERR_TLS;
	ob[0].BufferType = SECBUFFER_TOKEN;
	ob[0].pvBuffer = NULL;
	ob[0].cbBuffer = 0;
	ob[1].BufferType = SECBUFFER_ALERT;
	ob[1].pvBuffer = NULL;
	ob[1].cbBuffer = 0;
	step(t, NULL, &out);
	return flush_out(t, ob, 2) < 0 ? TETHER_ERR_IO : 0;
}

int sch_tls_close(tether_tls *t)
{
	DWORD tok = SCHANNEL_SHUTDOWN;
	return control(t, &tok, sizeof(tok));
}

int sch_tls_reject(tether_tls *t)
{
	SCHANNEL_ALERT_TOKEN a;

	a.dwTokenType = SCHANNEL_ALERT;
	a.dwAlertType = TLS1_ALERT_FATAL;
	a.dwAlertNumber = TLS1_ALERT_CERTIFICATE_UNKNOWN;
	t->failed = 1;
	return control(t, &a, sizeof(a));
}

int sch_tls_peer_cert(tether_tls *t, const unsigned char **der, size_t *len)
{
	if (!t->done)
		return TETHER_ERR_INVALID;
	*der = t->peer_der;
	*len = t->peer_len;
	return 0;
}

int sch_tls_info(tether_tls *t, tether_tls_info *out)
{
	SecPkgContext_ConnectionInfo ci;
	SecPkgContext_CipherInfo cipher;
	tether_tls_info info;
	const char *name = NULL;
	tether_cert_info peer;

	if (!t->done)
		return TETHER_ERR_INVALID;
	memset(&info, 0, sizeof(info));
	memset(&ci, 0, sizeof(ci));
	if (QueryContextAttributesW(&t->h, SECPKG_ATTR_CONNECTION_INFO, &ci) == SEC_E_OK)
		snprintf(info.tls_version, sizeof(info.tls_version), "%s", sch_protocol_name(ci.dwProtocol));
	memset(&cipher, 0, sizeof(cipher));
	cipher.dwVersion = SECPKGCONTEXT_CIPHERINFO_V1;
	if (QueryContextAttributesW(&t->h, SECPKG_ATTR_CIPHER_INFO, &cipher) == SEC_E_OK)
		name = sch_cipher_name((uint16_t)cipher.dwCipherSuite);
	if (!name) {
		/* Wine: only the CryptoAPI algorithm ids; the key type says RSA or ECDSA */
		const char *kt = "rsa";
		if (t->identity && sch_cert_info(t->identity->der, t->identity->der_len, &peer, NULL) == 0)
			kt = peer.key_type[0] == 'e' ? "ec" : "rsa";
		name = sch_cipher_name(sch_suite_from_algs(ci.aiExch, ci.aiCipher, ci.dwCipherStrength,
		                                           ci.aiHash, kt));
	}
	snprintf(info.cipher, sizeof(info.cipher), "%s", name ? name : "");
	/* group and signature schemes: Schannel does not report them */
	snprintf(info.server_name, sizeof(info.server_name), "%s", t->sni);
	*out = info;
	return 0;
}
