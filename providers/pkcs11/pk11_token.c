/*
 * pk11_token.c: the PKCS#11 module (through p11-kit, managed), the token
 * named by the [pkcs11] token URI, this provider's session and login, and
 * the private OpenSSL library context in which pkcs11-provider does the
 * private-key operations.  See pk11_int.h for why both users share one
 * managed module.
 *
 * Teardown order (pk11_close): the OpenSSL contexts first (pkcs11-provider
 * closes its sessions; through the proxy its C_Finalize only drops its own
 * reference, directly it skips C_Finalize), then our session, then p11-kit
 * finalizes and releases the module.  Identities and TLS contexts must be
 * freed before (the core does, before deinit).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/conf.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/provider.h>

#include "pk11_int.h"

#ifndef P11KIT_PROXY_MODULE
#define P11KIT_PROXY_MODULE "p11-kit-proxy.so"
#endif

#define PIN_MAX 256
#define MAX_SLOTS 64

static void wipe_free(char *s)
{
	if (s != NULL) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

/* The first line of the PIN file.  Warns when others can read it. */
static int read_pin(tether_provider_ctx *p, const char *path, char **out,
                    tether_error *err)
{
	char buf[PIN_MAX + 2];
	struct stat st;
	ssize_t n;
	size_t l;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return pk11_err_set(err, TETHER_ERR_IO,
		                    errno == ENOENT ? TETHER_CAT_NOT_FOUND : TETHER_CAT_IO, CKR_OK,
		                    "cannot read the token PIN file %s: %s; create it (mode 0600) with "
		                    "the user PIN on its first line, or fix [pkcs11] pin-file",
		                    path, strerror(errno));
	if (fstat(fd, &st) == 0 && (st.st_mode & 0077))
		pk11_log(p, TETHER_LOG_WARN, NULL,
		         "the token PIN file %s can be read by other users (mode %03o): "
		         "chmod 600 it", path, (unsigned)(st.st_mode & 0777));
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0) {
		r = pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                 "cannot read the token PIN file %s: %s", path, strerror(errno));
		goto out;
	}
	buf[n] = '\0';
	l = strcspn(buf, "\r\n");
	if (l == (size_t)n && (size_t)n > PIN_MAX) {
		r = pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_PASSWORD, CKR_OK,
		                 "the PIN in %s is longer than %d bytes", path, PIN_MAX);
		goto out;
	}
	buf[l] = '\0';
	if (l == 0) {
		r = pk11_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD, CKR_OK,
		                 "the token PIN file %s is empty: put the user PIN on its first line",
		                 path);
		goto out;
	}
	*out = strdup(buf);
	r = *out ? 0 : pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
	                            "out of memory");
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	return r;
}

/* Resolve the configured module (a path, or the name of a module
 * registered with p11-kit) to a file, and learn whether p11-kit's proxy
 * offers it. */
static int resolve_module(tether_provider_ctx *p, const char *conf,
                          tether_error *err)
{
	CK_FUNCTION_LIST **mods;
	char *found = NULL, real_conf[4096];
	int i, is_path = strchr(conf, '/') != NULL;

	if (is_path) {
		if (access(conf, R_OK) != 0)
			return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_NOT_FOUND, CKR_OK,
			                    "the PKCS#11 module %s cannot be read: %s; fix [pkcs11] "
			                    "module (a module path, or the name of a module "
			                    "registered with p11-kit such as 'softhsm2')",
			                    conf, strerror(errno));
		if (realpath(conf, real_conf) == NULL)
			snprintf(real_conf, sizeof(real_conf), "%s", conf);
	}
	/* Registered modules (loaded, not initialized). */
	mods = p11_kit_modules_load(NULL, P11_KIT_MODULE_UNMANAGED);
	for (i = 0; mods != NULL && mods[i] != NULL && found == NULL; i++) {
		char *name = p11_kit_module_get_name(mods[i]);
		char *file = p11_kit_module_get_filename(mods[i]);
		char real_file[4096];

		if (file != NULL && realpath(file, real_file) == NULL)
			snprintf(real_file, sizeof(real_file), "%s", file);
		if (file != NULL &&
		    ((is_path && strcmp(real_file, real_conf) == 0) ||
		     (!is_path && name != NULL && strcmp(name, conf) == 0)))
			found = strdup(file);
		free(name);
		free(file);
	}
	if (mods != NULL)
		p11_kit_modules_release(mods);
	ERR_clear_error();
	if (found != NULL) {
		p->module_path = found;
		p->registered = 1;
		return 0;
	}
	if (!is_path)
		return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_NOT_FOUND, CKR_OK,
		                    "no PKCS#11 module named '%s' is registered with p11-kit "
		                    "(see 'p11-kit list-modules'): give its path in [pkcs11] "
		                    "module, or register it", conf);
	p->module_path = strdup(real_conf);
	if (p->module_path == NULL)
		return pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
		                    "out of memory");
	p->registered = 0;
	return 0;
}

static void blank_strip(char *dst, const unsigned char *src, size_t len)
{
	memcpy(dst, src, len);
	dst[len] = '\0';
	while (len > 0 && dst[len - 1] == ' ')
		dst[--len] = '\0';
}

/* Find the one token the URI names. */
static int find_token(tether_provider_ctx *p, const char *uri_text,
                      tether_error *err)
{
	CK_SLOT_ID slots[MAX_SLOTS];
	CK_ULONG n = MAX_SLOTS, i;
	CK_TOKEN_INFO ti;
	char seen[256] = "", label[33];
	int matches = 0;
	CK_RV rv;

	rv = p->fl->C_GetSlotList(CK_TRUE, slots, &n);
	if (rv != CKR_OK)
		return pk11_err_set(err, TETHER_ERR_IO, -1, rv,
		                    "cannot list the tokens of the PKCS#11 module %s",
		                    p->module_path);
	for (i = 0; i < n; i++) {
		if (p->fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		blank_strip(label, ti.label, sizeof(ti.label));
		if (strlen(seen) + strlen(label) + 4 < sizeof(seen))
			snprintf(seen + strlen(seen), sizeof(seen) - strlen(seen),
			         "%s'%s'", seen[0] ? ", " : "", label);
		if (p11_kit_uri_match_token_info(p->uri, &ti)) {
			if (matches++ == 0) {
				p->slot = slots[i];
				memcpy(p->token_label, label, sizeof(label));
			}
		}
	}
	/* No token at all: it is absent (or the HSM unreachable), not named
	 * wrongly. */
	if (matches == 0)
		return pk11_err_set(err, TETHER_ERR_IO, seen[0] ? TETHER_CAT_NOT_FOUND :
		                    TETHER_CAT_TOKEN_UNAVAILABLE, CKR_OK,
		                    "no token matching %s in the PKCS#11 module %s (tokens "
		                    "present: %s): insert the token or fix [pkcs11] token",
		                    uri_text, p->module_path, seen[0] ? seen : "none");
	if (matches > 1)
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, CKR_OK,
		                    "%d tokens match %s (%s): name one, e.g. with "
		                    "token=<label> in [pkcs11] token", matches, uri_text, seen);
	return 0;
}

static int mechanisms(tether_provider_ctx *p)
{
	CK_MECHANISM_TYPE m[256];
	CK_ULONG n = 256, i;

	p->have_pss = 0;
	p->have_ec = 0;
	if (p->fl->C_GetMechanismList(p->slot, m, &n) != CKR_OK)
		return 0;
	for (i = 0; i < n; i++) {
		if (m[i] == CKM_RSA_PKCS_PSS)
			p->have_pss = 1;
		if (m[i] == CKM_EC_KEY_PAIR_GEN)
			p->have_ec = 1;
	}
	return 0;
}

/* Open a R/W session and log in.  p->lock held. */
static int session_open_locked(tether_provider_ctx *p, tether_error *err)
{
	CK_RV rv;

	rv = p->fl->C_OpenSession(p->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
	                          NULL, NULL, &p->sess);
	if (rv != CKR_OK) {
		p->sess = CK_INVALID_HANDLE;
		return pk11_err_set(err, TETHER_ERR_IO, -1, rv,
		                    "cannot open a session on token '%s'", p->token_label);
	}
	rv = p->fl->C_Login(p->sess, CKU_USER, (CK_UTF8CHAR_PTR)p->pin,
	                    (CK_ULONG)strlen(p->pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
		p->fl->C_CloseSession(p->sess);
		p->sess = CK_INVALID_HANDLE;
		if (rv == CKR_PIN_INCORRECT)
			return pk11_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD, rv,
			                    "wrong PIN for token '%s' (from %s): put the token's "
			                    "user PIN in that file (a few more wrong tries may "
			                    "lock the token)", p->token_label, p->pin_file);
		return pk11_err_set(err, rv == CKR_PIN_LOCKED ? TETHER_ERR_PASSWORD : TETHER_ERR_IO,
		                    -1, rv, "cannot log in to token '%s'%s", p->token_label,
		                    rv == CKR_PIN_LOCKED ? ": the PIN is locked; the token's "
		                    "security officer must unlock it" : "");
	}
	return 0;
}

int pk11_recover_locked(tether_provider_ctx *p, CK_RV rv, tether_error *err)
{
	int r, tries, gone;

	if (!pk11_rv_session_lost(rv))
		return 0;
	/* while the token is known to be gone (logged once), quietly */
	gone = __atomic_load_n(&p->token_gone, __ATOMIC_SEQ_CST);
	pk11_log(p, gone ? TETHER_LOG_DEBUG : TETHER_LOG_WARN, gone ? "prov" : NULL,
	         "token '%s' session lost (%s): reopening", p->token_label,
	         pk11_rv_name(rv));
	if (p->sess != CK_INVALID_HANDLE)
		p->fl->C_CloseSession(p->sess);
	p->sess = CK_INVALID_HANDLE;
	/* The token may have moved slots (reinserted): find it again. */
	for (tries = 0; tries < 2; tries++) {
		if (tries > 0) {
			r = find_token(p, "the configured URI", err);
			if (r < 0)
				return 0;
		}
		r = session_open_locked(p, err);
		if (r == 0) {
			pk11_log(p, TETHER_LOG_INFO, NULL,
			         "token '%s' session reopened", p->token_label);
			return 1;
		}
		if (err != NULL && err->code == TETHER_ERR_PASSWORD)
			return 0;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Token loss and recovery                                             */
/* ------------------------------------------------------------------ */

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Is our session still open and logged in? */
static int session_alive_locked(tether_provider_ctx *p)
{
	CK_SESSION_INFO si;

	if (p->sess == CK_INVALID_HANDLE ||
	    p->fl->C_GetSessionInfo(p->sess, &si) != CKR_OK)
		return 0;
	return si.state == CKS_RW_USER_FUNCTIONS || si.state == CKS_RO_USER_FUNCTIONS;
}

/* Bring the token back: our session (found again, maybe in another slot,
 * and logged in), then every live key reloaded.  Quiet: the caller logs.
 * recover_lock held, not lock. */
static int token_recover(tether_provider_ctx *p, tether_error *err)
{
	int r;

	pthread_mutex_lock(&p->lock);
	if (!p->opened) {
		pthread_mutex_unlock(&p->lock);
		return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                    "the token is not open");
	}
	if (!session_alive_locked(p)) {
		if (p->sess != CK_INVALID_HANDLE)
			p->fl->C_CloseSession(p->sess);
		p->sess = CK_INVALID_HANDLE;
		r = find_token(p, "the configured URI", err);
		if (r == 0)
			r = session_open_locked(p, err);
		if (r < 0) {
			pthread_mutex_unlock(&p->lock);
			return r;
		}
	}
	r = pk11_reload_keys_locked(p, err);
	pthread_mutex_unlock(&p->lock);
	return r;
}

/* One attempt while the token is gone.  recover_lock held. */
static void try_back(tether_provider_ctx *p, uint64_t now)
{
	tether_error e;
	int r;

	memset(&e, 0, sizeof(e));
	r = token_recover(p, &e);
	if (r >= 0) {
		__atomic_store_n(&p->token_gone, 0, __ATOMIC_SEQ_CST);
		p->last_recovery_ms = now;
		p->recoveries++;
		pk11_log(p, TETHER_LOG_INFO, NULL,
		         "token '%s' is back: identity reloaded (%d key%s, session "
		         "reopened and logged in)", p->token_label, r, r == 1 ? "" : "s");
		return;
	}
	if (e.code == TETHER_ERR_PASSWORD) {
		p->pin_refused = 1;
		pk11_log(p, TETHER_LOG_ERROR, NULL,
		         "token '%s' is back but refuses the PIN: not retrying by itself "
		         "(each wrong try brings the token closer to locking): fix the "
		         "PIN file, then send SIGHUP or restart: %s", p->token_label, e.detail);
		return;
	}
	p->next_try_ms = mono_ms() + PK11_RETRY_MS;
	pk11_log(p, TETHER_LOG_DEBUG, "prov", "token '%s' still gone: %s",
	         p->token_label, e.detail);
}

void pk11_token_failed(tether_provider_ctx *p, CK_RV rv, int stale)
{
	tether_error e;
	uint64_t now;
	int r;

	if (p == NULL || !pk11_rv_token_class(rv))
		return;
	pthread_mutex_lock(&p->recover_lock);
	now = mono_ms();
	if (__atomic_load_n(&p->token_gone, __ATOMIC_SEQ_CST)) {
		/* already reported: only a due retry */
		if (!p->pin_refused && now >= p->next_try_ms)
			try_back(p, now);
		goto out;
	}
	/* The session signed with a key another thread already reloaded:
	 * its failure says nothing about the token now. */
	if (stale)
		goto out;
	memset(&e, 0, sizeof(e));
	/* A recovery that "worked" a moment ago and failed again at once
	 * means the token is not really usable: count it as gone rather than
	 * recovering at every handshake. */
	r = p->recoveries > 0 && now - p->last_recovery_ms < PK11_RETRY_MS ?
	    pk11_err_set(&e, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
	                 "the key reloaded %llu ms ago failed too",
	                 (unsigned long long)(now - p->last_recovery_ms)) :
	    token_recover(p, &e);
	if (r >= 0) {
		p->last_recovery_ms = now;
		p->recoveries++;
		pk11_log(p, TETHER_LOG_WARN, NULL,
		         "token '%s' failed a signature (%s): session reopened, "
		         "identity reloaded (%d key%s)", p->token_label,
		         pk11_rv_name(rv), r, r == 1 ? "" : "s");
		goto out;
	}
	__atomic_store_n(&p->token_gone, 1, __ATOMIC_SEQ_CST);
	p->next_try_ms = mono_ms() + PK11_RETRY_MS;
	if (e.code == TETHER_ERR_PASSWORD) {
		p->pin_refused = 1;
		pk11_log(p, TETHER_LOG_ERROR, NULL,
		         "token '%s' failed a signature (%s) and now refuses the PIN: "
		         "not retrying by itself (each wrong try brings the token closer "
		         "to locking): fix the PIN file, then send SIGHUP or restart: %s",
		         p->token_label, pk11_rv_name(rv), e.detail);
		goto out;
	}
	pk11_log(p, TETHER_LOG_WARN, NULL,
	         "token '%s' is gone (%s): handshakes fail until it is back; "
	         "retrying every %d s (%s)", p->token_label, pk11_rv_name(rv),
	         PK11_RETRY_MS / 1000, e.detail);
out:
	pthread_mutex_unlock(&p->recover_lock);
}

void pk11_token_precheck(tether_provider_ctx *p)
{
	uint64_t now;

	if (p == NULL || !__atomic_load_n(&p->token_gone, __ATOMIC_SEQ_CST))
		return;
	pthread_mutex_lock(&p->recover_lock);
	now = mono_ms();
	if (__atomic_load_n(&p->token_gone, __ATOMIC_SEQ_CST) &&
	    !p->pin_refused && now >= p->next_try_ms)
		try_back(p, now);
	pthread_mutex_unlock(&p->recover_lock);
}

void pk11_token_seen(tether_provider_ctx *p)
{
	if (p == NULL || !__atomic_load_n(&p->token_gone, __ATOMIC_SEQ_CST))
		return;
	/* Not "back" yet: the keys in use are still the stale ones.  The
	 * next handshake tries at once, and reloads them. */
	pthread_mutex_lock(&p->recover_lock);
	p->next_try_ms = 0;
	p->pin_refused = 0;
	pthread_mutex_unlock(&p->recover_lock);
}

/* The private library context: OpenSSL's default provider for everything
 * but the token's keys, and pkcs11-provider for those. */
static int libctx_build(tether_provider_ctx *p, OSSL_LIB_CTX **out,
                        tether_error *err)
{
	OSSL_LIB_CTX *lc = NULL;
	CONF *conf = NULL;
	BIO *b = NULL;
	char *text = NULL;
	long eline = 0;
	int n, r;

	ERR_clear_error();
	/* The PIN reaches pkcs11-provider as a file reference, never inline.
	 * Only p11-kit may finalize the module: pkcs11-provider uses the
	 * proxy (a managed user of its own), or the no-deinit quirk. */
	n = asprintf(&text,
	             "openssl_conf = tether_pk11_init\n"
	             "[tether_pk11_init]\n"
	             "providers = tether_pk11_providers\n"
	             "[tether_pk11_providers]\n"
	             "default = tether_pk11_default\n"
	             "pkcs11 = tether_pk11_pkcs11\n"
	             "[tether_pk11_default]\n"
	             "activate = 1\n"
	             "[tether_pk11_pkcs11]\n"
	             "pkcs11-module-path = %s\n"
	             "pkcs11-module-token-pin = file:%s\n"
	             "pkcs11-module-load-behavior = early\n"
	             "%s"
	             "activate = 1\n",
	             p->registered ? P11KIT_PROXY_MODULE : p->module_path,
	             p->pin_file,
	             p->registered ? "" : "pkcs11-module-quirks = no-deinit\n");
	if (n < 0) {
		text = NULL;
		return pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
		                    "out of memory");
	}
	lc = OSSL_LIB_CTX_new();
	conf = lc ? NCONF_new_ex(lc, NULL) : NULL;
	b = BIO_new_mem_buf(text, n);
	if (lc == NULL || conf == NULL || b == NULL) {
		r = ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, "out of memory");
		goto out;
	}
	if (NCONF_load_bio(conf, b, &eline) <= 0 ||
	    CONF_modules_load(conf, NULL, 0) <= 0) {
		r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                 "cannot load OpenSSL's pkcs11-provider for token '%s' "
		                 "(install the Debian package 'pkcs11-provider', from "
		                 "bookworm-backports on Debian 12)", p->token_label);
		goto out;
	}
	if (!OSSL_PROVIDER_available(lc, "pkcs11") ||
	    !OSSL_PROVIDER_available(lc, "default")) {
		r = ossl_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                 "OpenSSL's pkcs11-provider did not start for token '%s' "
		                 "(install the Debian package 'pkcs11-provider', from "
		                 "bookworm-backports on Debian 12)", p->token_label);
		goto out;
	}
	/* Only the token's keys belong to pkcs11-provider: every other fetch
	 * (peer-signature verification, groups, digests) prefers default. */
	if (!EVP_set_default_properties(lc, "?provider=default")) {
		r = ossl_err_set(err, TETHER_ERR_INTERNAL, TETHER_CAT_INTERNAL,
		                 "cannot set the default properties of the token's "
		                 "OpenSSL context");
		goto out;
	}
	ERR_clear_error();
	*out = lc;
	lc = NULL;
	r = 0;
out:
	BIO_free(b);
	NCONF_free(conf);
	OSSL_LIB_CTX_free(lc);
	free(text);
	return r;
}

int pk11_libctx_renew_locked(tether_provider_ctx *p, tether_error *err)
{
	OSSL_LIB_CTX *lc = NULL;
	int r;

	if (p->n_old >= PK11_MAX_OLD_LIBCTX)
		return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                    "the token's OpenSSL context was rebuilt %d times: "
		                    "restart the daemon", PK11_MAX_OLD_LIBCTX);
	r = libctx_build(p, &lc, err);
	if (r < 0)
		return r;
	/* Identities and TLS contexts made before may still use the old one
	 * (they do not tell the provider when they go): keep it until deinit. */
	p->old_libctx[p->n_old++] = p->libctx;
	p->libctx = lc;
	pk11_log(p, TETHER_LOG_INFO, "prov", "token '%s': OpenSSL context rebuilt",
	         p->token_label);
	return 0;
}

int pk11_open(tether_provider_ctx *p, tether_error *err)
{
	const char *module, *token, *pin_file;
	CK_RV rv;
	int r;

	pthread_mutex_lock(&p->lock);
	if (p->opened) {
		pthread_mutex_unlock(&p->lock);
		return 0;
	}
	module = pk11_config(p, PK11_CONF_MODULE);
	token = pk11_config(p, PK11_CONF_TOKEN);
	pin_file = pk11_config(p, PK11_CONF_PIN_FILE);
	if (module == NULL || token == NULL || pin_file == NULL) {
		r = pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_NOT_FOUND, CKR_OK,
		                 "the pkcs11 provider needs [pkcs11] %s: set it with "
		                 "'configure --provider pkcs11 --pkcs11-module PATH|NAME "
		                 "--pkcs11-token URI --pkcs11-pin-file FILE'",
		                 module == NULL ? "module" : token == NULL ? "token" : "pin-file");
		goto out;
	}
	p->uri = p11_kit_uri_new();
	if (p->uri == NULL) {
		r = pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK, "out of memory");
		goto out;
	}
	r = p11_kit_uri_parse(token, P11_KIT_URI_FOR_TOKEN, p->uri);
	if (r != P11_KIT_URI_OK) {
		r = pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, CKR_OK,
		                 "[pkcs11] token '%s' is not a PKCS#11 URI (%s): write it as "
		                 "in RFC 7512, e.g. pkcs11:token=MyToken", token,
		                 p11_kit_uri_message(r));
		goto out;
	}
	p->pin_file = strdup(pin_file);
	if (p->pin_file == NULL) {
		r = pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK, "out of memory");
		goto out;
	}
	r = resolve_module(p, module, err);
	if (r < 0)
		goto out;
	p->fl = p11_kit_module_load(p->module_path, 0);
	if (p->fl == NULL) {
		r = pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_NOT_FOUND, CKR_OK,
		                 "cannot load the PKCS#11 module %s: %s; check [pkcs11] module",
		                 p->module_path, p11_kit_message() ? p11_kit_message() : "unknown error");
		goto out;
	}
	rv = p11_kit_module_initialize(p->fl);
	/* SoftHSM2 runs on the same libcrypto and leaves errors behind. */
	ERR_clear_error();
	if (rv != CKR_OK) {
		r = pk11_err_set(err, TETHER_ERR_IO, -1, rv,
		                 "cannot initialize the PKCS#11 module %s", p->module_path);
		goto out;
	}
	p->initialized = 1;
	r = find_token(p, token, err);
	if (r < 0)
		goto out;
	r = read_pin(p, pin_file, &p->pin, err);
	if (r < 0)
		goto out;
	r = session_open_locked(p, err);
	if (r < 0)
		goto out;
	mechanisms(p);
	r = libctx_build(p, &p->libctx, err);
	if (r < 0)
		goto out;
	p->opened = 1;
	pk11_log(p, TETHER_LOG_DEBUG, "prov",
	         "token '%s' open (module %s%s); RSA-PSS %s, EC %s", p->token_label,
	         p->module_path, p->registered ? ", shared with OpenSSL through p11-kit-proxy" : "",
	         p->have_pss ? "yes" : "no", p->have_ec ? "yes" : "no");
	if (!p->have_pss)
		pk11_log(p, TETHER_LOG_WARN, NULL,
		         "token '%s' has no RSA-PSS (CKM_RSA_PKCS_PSS): an RSA identity on it "
		         "is limited to TLS 1.2", p->token_label);
	r = 0;
out:
	if (r < 0 && !p->opened) {
		pthread_mutex_unlock(&p->lock);
		pk11_close(p);
		return r;
	}
	pthread_mutex_unlock(&p->lock);
	return r;
}

void pk11_close(tether_provider_ctx *p)
{
	int i;

	pthread_mutex_lock(&p->lock);
	/* 1. pkcs11-provider and its sessions, after the keys it made. */
	pk11_live_free_locked(p);
	OSSL_LIB_CTX_free(p->libctx);
	p->libctx = NULL;
	for (i = 0; i < p->n_old; i++)
		OSSL_LIB_CTX_free(p->old_libctx[i]);
	p->n_old = 0;
	/* 2. Our session (no C_Logout: login state is shared by every
	 *    session of the application, and p11-kit finalizes anyway). */
	if (p->fl != NULL && p->sess != CK_INVALID_HANDLE)
		p->fl->C_CloseSession(p->sess);
	p->sess = CK_INVALID_HANDLE;
	/* 3. The module. */
	if (p->fl != NULL) {
		if (p->initialized)
			p11_kit_module_finalize(p->fl);
		p11_kit_module_release(p->fl);
	}
	p->fl = NULL;
	p->initialized = 0;
	ERR_clear_error();
	if (p->uri != NULL)
		p11_kit_uri_free(p->uri);
	p->uri = NULL;
	wipe_free(p->pin);
	p->pin = NULL;
	free(p->pin_file);
	p->pin_file = NULL;
	free(p->module_path);
	p->module_path = NULL;
	p->opened = 0;
	pthread_mutex_unlock(&p->lock);
}

/* pkcs11:token=<label>;id=<pct>;type=<type> */
char *pk11_object_uri(tether_provider_ctx *p, const unsigned char *id,
                      const char *type)
{
	char buf[512], *o = buf;
	const char *s;
	size_t i;

	o += snprintf(o, 64, "pkcs11:token=");
	for (s = p->token_label; *s && o < buf + 300; s++) {
		unsigned char ch = (unsigned char)*s;

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.')
			*o++ = (char)ch;
		else
			o += sprintf(o, "%%%02X", ch);
	}
	o += sprintf(o, ";id=");
	for (i = 0; i < PK11_ID_LEN; i++)
		o += sprintf(o, "%%%02X", id[i]);
	snprintf(o, sizeof(buf) - (size_t)(o - buf), ";type=%s", type);
	return strdup(buf);
}
