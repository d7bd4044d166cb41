/* tether-ping's throw-away identity: generated through the provider (the
 * loader finds it as for the agent and server) into a temporary state
 * directory that is removed when tether-ping exits. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "error.h"
#include "fsutil.h"
#include "identity.h"
#include "ping.h"
#include "util.h"

#define PEM_MAX (1024 * 1024)

static char *make_temp_dir(tether_error *err)
{
	const char *bases[3];
	size_t i, n = 0;
	const char *t = getenv("TMPDIR");
#ifdef _WIN32 /* %TEMP%: the user's (or the service account's) */
	if (!t || !t[0])
		t = getenv("TEMP");
#endif

	/* in memory first: the key never reaches a disk there */
	if (tether_is_dir("/dev/shm") && access("/dev/shm", W_OK) == 0)
		bases[n++] = "/dev/shm";
	if (t && t[0])
		bases[n++] = t;
	bases[n++] = "/tmp";
	for (i = 0; i < n; i++) {
		char *d = tether_asprintf("%s/tether-ping-XXXXXX", bases[i]);
		if (mkdtemp(d)) {
			chmod(d, 0700);
			return d;
		}
		free(d);
	}
	tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
	               "cannot create a temporary directory for the throw-away identity in /dev/shm, "
	               "$TMPDIR or /tmp: check that one of them is writable");
	return NULL;
}

void ping_ident_cleanup_dir(ping_ident *pi)
{
	if (pi && pi->state_dir) {
		tether_rmtree(pi->state_dir);
		free(pi->state_dir);
		pi->state_dir = NULL;
	}
}

void ping_ident_free(ping_ident *pi)
{
	if (!pi)
		return;
	if (pi->id && pi->prov)
		pi->prov->t->identity_free(pi->id);
	tether_provider_unload(pi->prov);
	ping_ident_cleanup_dir(pi);
	free(pi);
}

int ping_ident_new(const char *provider, const char *pem_file, ping_ident **out,
                   tether_error *err)
{
	ping_ident *pi = tether_xcalloc(1, sizeof(*pi));
	tether_prov_opts po;
	tether_keygen_params kp;
	tether_id_summary s;
	const unsigned char *der;
	unsigned char *data = NULL;
	size_t len = 0, dlen;
	int r;

	pi->state_dir = make_temp_dir(err);
	if (!pi->state_dir) {
		r = TETHER_ERR_IO;
		goto fail;
	}
	memset(&po, 0, sizeof(po));
	po.state_dir = pi->state_dir;
	po.instance = "ping";
	po.program = "ping";
#ifdef _WIN32 /* Windows builds have the Schannel provider */
	r = tether_provider_load(provider ? provider : "schannel", &po, &pi->prov, err);
#else
	r = tether_provider_load(provider ? provider : "openssl", &po, &pi->prov, err);
#endif
	if (r < 0)
		goto fail;
	if (pem_file) {
		r = tether_read_file(pem_file, PEM_MAX, &data, &len, err);
		if (r < 0)
			goto fail;
		r = pi->prov->t->identity_import(pi->prov->ctx, TETHER_SLOT_CURRENT, data, len, NULL, err);
		tether_free_wiped(data, len);
		if (r < 0) {
			tether_err_prefix(err, "cannot use %s as tether-ping's identity", pem_file);
			goto fail;
		}
	} else {
		memset(&kp, 0, sizeof(kp));
		kp.key_type = TETHER_KEY_RSA2048;
		kp.validity_days = 30;
		kp.subject_cn = "tether-ping";
		r = pi->prov->t->identity_generate(pi->prov->ctx, TETHER_SLOT_CURRENT, &kp, err);
		if (r < 0) {
			tether_err_prefix(err, "cannot generate tether-ping's throw-away identity");
			goto fail;
		}
	}
	r = pi->prov->t->identity_load(pi->prov->ctx, TETHER_SLOT_CURRENT, &pi->id, err);
	if (r < 0)
		goto fail;
	r = pi->prov->t->identity_cert_der(pi->id, &der, &dlen);
	if (r < 0) {
		tether_err_set(err, r, TETHER_CAT_INTERNAL, "the provider gave no certificate for the identity");
		goto fail;
	}
	r = tether_cert_summary(pi->prov, der, dlen, &s, err);
	if (r < 0)
		goto fail;
	snprintf(pi->sha256, sizeof(pi->sha256), "%s", s.sha256);
	snprintf(pi->sig_alg, sizeof(pi->sig_alg), "%s", s.info.cert_signature_algorithm);
	/* The identity is in memory now: the key file need not outlive this. */
	ping_ident_cleanup_dir(pi);
	*out = pi;
	return 0;
fail:
	ping_ident_free(pi);
	return r;
}
