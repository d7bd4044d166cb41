/*
 * pk11_identity.c: identity slots of the pkcs11 provider (layout in
 * pk11_int.h): generate a key pair on the token (never extractable) and a
 * self-signed certificate signed on the token, promote, remove, exists,
 * load (certificate read from the token, key operations through
 * pkcs11-provider in the private library context).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/store.h>
#include <openssl/x509.h>

#include "pk11_int.h"

#define DEFAULT_VALIDITY_DAYS 7300u      /* 20 years */
#define MAX_VALIDITY_DAYS     36500u
#define MAX_CN_LEN            64
#define MAX_OBJECTS           16
#define MAP_MAX               1024

static const char *const slot_names[TETHER_SLOT__COUNT] = {
	"current", "staged", "previous",
};

const char *pk11_slot_name(int slot)
{
	if (slot < 0 || slot >= TETHER_SLOT__COUNT)
		return NULL;
	return slot_names[slot];
}

void pk11_label(tether_provider_ctx *p, char *buf, size_t len)
{
	snprintf(buf, len, "tether-%s",
	         p->host.instance && p->host.instance[0] ? p->host.instance : "default");
}

/* ------------------------------------------------------------------ */
/* The slot map: <state_dir>/pkcs11-slots                              */
/* ------------------------------------------------------------------ */

struct slot_map {
	int used[TETHER_SLOT__COUNT];
	unsigned char id[TETHER_SLOT__COUNT][PK11_ID_LEN];
};

static int check_slot(tether_provider_ctx *p, int slot, tether_error *err)
{
	if (pk11_slot_name(slot) == NULL)
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, CKR_OK,
		                    "unknown identity slot %d", slot);
	if (p->map_path == NULL)
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, CKR_OK,
		                    "this instance has no state directory to keep its "
		                    "token slot map in");
	return 0;
}

static int lock_open(tether_provider_ctx *p, int op, tether_error *err)
{
	int fd = open(p->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

	if (fd < 0)
		return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                    "cannot open %s: %s", p->lock_path, strerror(errno));
	if (flock(fd, op) < 0) {
		int e = errno;

		close(fd);
		return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                    "cannot lock %s: %s", p->lock_path, strerror(e));
	}
	return fd;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static int map_read(tether_provider_ctx *p, struct slot_map *m, tether_error *err)
{
	char buf[MAP_MAX + 1], *line, *save = NULL;
	ssize_t n;
	int fd, s, i;

	memset(m, 0, sizeof(*m));
	fd = open(p->map_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                    "cannot read %s: %s", p->map_path, strerror(errno));
	}
	n = read(fd, buf, MAP_MAX);
	close(fd);
	if (n < 0)
		return pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                    "cannot read %s: %s", p->map_path, strerror(errno));
	buf[n] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char name[16], hex[2 * PK11_ID_LEN + 1];

		if (sscanf(line, "%15s %16s", name, hex) != 2 ||
		    strlen(hex) != 2 * PK11_ID_LEN)
			goto bad;
		for (s = 0; s < TETHER_SLOT__COUNT; s++)
			if (strcmp(name, slot_names[s]) == 0)
				break;
		if (s == TETHER_SLOT__COUNT)
			goto bad;
		for (i = 0; i < PK11_ID_LEN; i++) {
			int h = hexval(hex[2 * i]), l = hexval(hex[2 * i + 1]);

			if (h < 0 || l < 0)
				goto bad;
			m->id[s][i] = (unsigned char)(h << 4 | l);
		}
		m->used[s] = 1;
	}
	return 0;
bad:
	return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, CKR_OK,
	                    "%s is damaged (line '%.40s'): restore it from a backup; "
	                    "the identities are the objects labelled tether-<instance> "
	                    "on the token", p->map_path, line);
}

/* Temporary file, fsync, rename, fsync of the directory. */
static int map_write(tether_provider_ctx *p, const struct slot_map *m,
                     tether_error *err)
{
	char tmp[4096], buf[MAP_MAX], dir[4096], *slash;
	size_t used = 0;
	int fd = -1, s, i, r;

	for (s = 0; s < TETHER_SLOT__COUNT; s++) {
		if (!m->used[s])
			continue;
		used += (size_t)snprintf(buf + used, sizeof(buf) - used, "%s ", slot_names[s]);
		for (i = 0; i < PK11_ID_LEN; i++)
			used += (size_t)snprintf(buf + used, sizeof(buf) - used, "%02x", m->id[s][i]);
		used += (size_t)snprintf(buf + used, sizeof(buf) - used, "\n");
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", p->map_path);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write(fd, buf, used) != (ssize_t)used || fsync(fd) != 0) {
		r = pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                 "cannot write %s: %s", tmp, strerror(errno));
		goto out;
	}
	close(fd);
	fd = -1;
	if (rename(tmp, p->map_path) != 0) {
		r = pk11_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, CKR_OK,
		                 "cannot rename %s to %s: %s", tmp, p->map_path, strerror(errno));
		goto out;
	}
	snprintf(dir, sizeof(dir), "%s", p->map_path);
	slash = strrchr(dir, '/');
	if (slash != NULL) {
		*slash = '\0';
		fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0)
			(void)fsync(fd);
	}
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	if (r < 0)
		unlink(tmp);
	return r;
}

/* ------------------------------------------------------------------ */
/* Objects                                                             */
/* ------------------------------------------------------------------ */

/* Find objects of class (or any class if cls == (CK_ULONG)-1) with id.
 * p->lock held; recovers a lost session once. */
static int find_locked(tether_provider_ctx *p, CK_OBJECT_CLASS cls,
                       const unsigned char *id, CK_OBJECT_HANDLE *h,
                       CK_ULONG max, CK_ULONG *n, tether_error *err)
{
	CK_ATTRIBUTE t[2];
	CK_ULONG nt = 0;
	CK_RV rv;
	int tries;

	t[nt].type = CKA_ID;
	t[nt].pValue = (void *)id;
	t[nt++].ulValueLen = PK11_ID_LEN;
	if (cls != (CK_OBJECT_CLASS)-1) {
		t[nt].type = CKA_CLASS;
		t[nt].pValue = &cls;
		t[nt++].ulValueLen = sizeof(cls);
	}
	for (tries = 0; tries < 2; tries++) {
		rv = p->fl->C_FindObjectsInit(p->sess, t, nt);
		if (rv == CKR_OK) {
			rv = p->fl->C_FindObjects(p->sess, h, max, n);
			p->fl->C_FindObjectsFinal(p->sess);
		}
		if (rv == CKR_OK)
			return 0;
		if (tries == 0 && pk11_recover_locked(p, rv, err))
			continue;
		break;
	}
	return pk11_err_set(err, TETHER_ERR_IO, -1, rv,
	                    "cannot search token '%s'", p->token_label);
}

void pk11_destroy_id_locked(tether_provider_ctx *p, const unsigned char *id)
{
	CK_OBJECT_HANDLE h[MAX_OBJECTS];
	CK_ULONG n = 0, i;
	tether_error e;

	if (find_locked(p, (CK_OBJECT_CLASS)-1, id, h, MAX_OBJECTS, &n, &e) < 0)
		return;
	for (i = 0; i < n; i++)
		p->fl->C_DestroyObject(p->sess, h[i]);
}

int pk11_store_cert_locked(tether_provider_ctx *p, const unsigned char *id,
                           X509 *cert, tether_error *err)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	unsigned char *der = NULL, *subj = NULL, *iss = NULL, *ser = NULL;
	int dl, sl, il, nl, r;
	char label[80];
	CK_OBJECT_HANDLE h;
	CK_RV rv;

	pk11_label(p, label, sizeof(label));
	dl = i2d_X509(cert, &der);
	sl = i2d_X509_NAME(X509_get_subject_name(cert), &subj);
	il = i2d_X509_NAME(X509_get_issuer_name(cert), &iss);
	nl = i2d_ASN1_INTEGER(X509_get_serialNumber(cert), &ser);
	if (dl <= 0 || sl <= 0 || il <= 0 || nl <= 0) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot encode the certificate for the token");
		goto out;
	}
	{
		CK_ATTRIBUTE t[] = {
			{ CKA_CLASS, &cls, sizeof(cls) },
			{ CKA_CERTIFICATE_TYPE, &ct, sizeof(ct) },
			{ CKA_TOKEN, &yes, sizeof(yes) },
			{ CKA_PRIVATE, &no, sizeof(no) },
			{ CKA_MODIFIABLE, &no, sizeof(no) },
			{ CKA_ID, (void *)id, PK11_ID_LEN },
			{ CKA_LABEL, label, strlen(label) },
			{ CKA_SUBJECT, subj, (CK_ULONG)sl },
			{ CKA_ISSUER, iss, (CK_ULONG)il },
			{ CKA_SERIAL_NUMBER, ser, (CK_ULONG)nl },
			{ CKA_VALUE, der, (CK_ULONG)dl },
		};

		rv = p->fl->C_CreateObject(p->sess, t, sizeof(t) / sizeof(t[0]), &h);
		if (rv != CKR_OK && pk11_recover_locked(p, rv, err))
			rv = p->fl->C_CreateObject(p->sess, t, sizeof(t) / sizeof(t[0]), &h);
	}
	if (rv != CKR_OK) {
		r = pk11_err_set(err, TETHER_ERR_IO, -1, rv,
		                 "cannot store the certificate on token '%s'", p->token_label);
		goto out;
	}
	r = 0;
out:
	OPENSSL_free(der);
	OPENSSL_free(subj);
	OPENSSL_free(iss);
	OPENSSL_free(ser);
	return r;
}

/* The private key of id, as an EVP_PKEY of the token's library context
 * (operations run on the token through pkcs11-provider). */
static int load_key_locked(tether_provider_ctx *p, const unsigned char *id,
                           EVP_PKEY **out, tether_error *err)
{
	OSSL_STORE_CTX *sc = NULL;
	OSSL_STORE_INFO *info;
	EVP_PKEY *key = NULL;
	char *uri;
	int i;

	uri = pk11_object_uri(p, id, "private");
	if (uri == NULL)
		return pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
		                    "out of memory");
	ERR_clear_error();
	sc = OSSL_STORE_open_ex(uri, p->libctx, NULL, NULL, NULL, NULL, NULL, NULL);
	if (sc != NULL) {
		OSSL_STORE_expect(sc, OSSL_STORE_INFO_PKEY);
		for (i = 0; i < MAX_OBJECTS && key == NULL && !OSSL_STORE_eof(sc); i++) {
			info = OSSL_STORE_load(sc);
			if (info == NULL)
				continue;
			if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
				key = OSSL_STORE_INFO_get1_PKEY(info);
			OSSL_STORE_INFO_free(info);
		}
		OSSL_STORE_close(sc);
	}
	if (key == NULL) {
		int r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_NOT_FOUND,
		                     "pkcs11-provider cannot use the private key %s (is "
		                     "the key still on the token, and the PIN right?)", uri);
		free(uri);
		return r;
	}
	free(uri);
	ERR_clear_error();
	*out = key;
	return 0;
}

static int read_cert_locked(tether_provider_ctx *p, const unsigned char *id,
                            X509 **out, tether_error *err)
{
	CK_OBJECT_HANDLE h;
	CK_ULONG n = 0;
	CK_ATTRIBUTE a = { CKA_VALUE, NULL, 0 };
	const unsigned char *q;
	unsigned char *buf = NULL;
	X509 *x;
	CK_RV rv;
	int r;

	r = find_locked(p, CKO_CERTIFICATE, id, &h, 1, &n, err);
	if (r < 0)
		return r;
	if (n == 0)
		return pk11_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, CKR_OK,
		                    "the identity's certificate is missing from token '%s' "
		                    "(someone deleted it?): make a new certificate", p->token_label);
	rv = p->fl->C_GetAttributeValue(p->sess, h, &a, 1);
	if (rv == CKR_OK && a.ulValueLen > 0 && a.ulValueLen < 65536) {
		buf = malloc(a.ulValueLen);
		a.pValue = buf;
		rv = buf ? p->fl->C_GetAttributeValue(p->sess, h, &a, 1) : CKR_HOST_MEMORY;
	}
	if (rv != CKR_OK || buf == NULL) {
		free(buf);
		return pk11_err_set(err, TETHER_ERR_IO, -1, rv,
		                    "cannot read the certificate from token '%s'", p->token_label);
	}
	q = buf;
	x = d2i_X509(NULL, &q, (long)a.ulValueLen);
	free(buf);
	if (x == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "the certificate object on token '%s' is not a valid "
		                    "X.509 certificate", p->token_label);
	*out = x;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Slot changes                                                        */
/* ------------------------------------------------------------------ */

int pk11_slot_create(tether_provider_ctx *p, int slot, pk11_store_fn fn,
                     void *arg, tether_error *err)
{
	unsigned char id[PK11_ID_LEN];
	struct slot_map m;
	int lfd, r, s, clash;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	r = pk11_open(p, err);
	if (r < 0)
		return r;
	lfd = lock_open(p, LOCK_EX, err);
	if (lfd < 0)
		return lfd;
	r = map_read(p, &m, err);
	if (r < 0)
		goto out;
	if (m.used[slot]) {
		r = pk11_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_NONE, CKR_OK,
		                 "the %s identity slot is in use: remove or promote it first",
		                 slot_names[slot]);
		goto out;
	}
	do {
		if (RAND_bytes(id, sizeof(id)) != 1) {
			r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
			                 "no random bytes for a CKA_ID");
			goto out;
		}
		for (clash = 0, s = 0; s < TETHER_SLOT__COUNT; s++)
			clash |= m.used[s] && memcmp(m.id[s], id, sizeof(id)) == 0;
	} while (clash);

	pthread_mutex_lock(&p->lock);
	r = fn(p, id, arg, err);
	if (r == 0) {
		memcpy(m.id[slot], id, sizeof(id));
		m.used[slot] = 1;
		r = map_write(p, &m, err);
	}
	if (r < 0)
		pk11_destroy_id_locked(p, id);
	pthread_mutex_unlock(&p->lock);
out:
	close(lfd);     /* releases the flock */
	return r;
}

struct gen_arg {
	const tether_keygen_params *params;
	const char *cn;
	uint32_t days;
};

static const CK_BYTE oid_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const CK_BYTE oid_p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };

static int gen_store(tether_provider_ctx *p, const unsigned char *id, void *varg,
                     tether_error *err)
{
	struct gen_arg *g = varg;
	int type = g->params->key_type;
	int is_rsa = type <= TETHER_KEY_RSA4096;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG bits = type == TETHER_KEY_RSA2048 ? 2048 : type == TETHER_KEY_RSA3072 ? 3072 : 4096;
	CK_BYTE e65537[] = { 0x01, 0x00, 0x01 };
	CK_MECHANISM mech = { is_rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_OBJECT_HANDLE hpub, hpriv;
	char label[80];
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	CK_RV rv;
	int r;

	pk11_label(p, label, sizeof(label));
	{
		CK_ATTRIBUTE pub[10], priv[] = {
			{ CKA_TOKEN, &yes, sizeof(yes) },
			{ CKA_PRIVATE, &yes, sizeof(yes) },
			{ CKA_SENSITIVE, &yes, sizeof(yes) },
			{ CKA_EXTRACTABLE, &no, sizeof(no) },
			{ CKA_SIGN, &yes, sizeof(yes) },
			{ CKA_DECRYPT, &no, sizeof(no) },
			{ CKA_UNWRAP, &no, sizeof(no) },
			{ CKA_ID, (void *)id, PK11_ID_LEN },
			{ CKA_LABEL, label, strlen(label) },
		};
		CK_ULONG np = 0;

		pub[np++] = (CK_ATTRIBUTE){ CKA_TOKEN, &yes, sizeof(yes) };
		pub[np++] = (CK_ATTRIBUTE){ CKA_PRIVATE, &no, sizeof(no) };
		pub[np++] = (CK_ATTRIBUTE){ CKA_VERIFY, &yes, sizeof(yes) };
		pub[np++] = (CK_ATTRIBUTE){ CKA_ENCRYPT, &no, sizeof(no) };
		pub[np++] = (CK_ATTRIBUTE){ CKA_WRAP, &no, sizeof(no) };
		pub[np++] = (CK_ATTRIBUTE){ CKA_ID, (void *)id, PK11_ID_LEN };
		pub[np++] = (CK_ATTRIBUTE){ CKA_LABEL, label, strlen(label) };
		if (is_rsa) {
			pub[np++] = (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &bits, sizeof(bits) };
			pub[np++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, e65537, sizeof(e65537) };
		} else if (type == TETHER_KEY_EC_P256) {
			pub[np++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)oid_p256, sizeof(oid_p256) };
		} else {
			pub[np++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)oid_p384, sizeof(oid_p384) };
		}
		rv = p->fl->C_GenerateKeyPair(p->sess, &mech, pub, np, priv,
		                              sizeof(priv) / sizeof(priv[0]), &hpub, &hpriv);
		if (rv != CKR_OK && pk11_recover_locked(p, rv, err))
			rv = p->fl->C_GenerateKeyPair(p->sess, &mech, pub, np, priv,
			                              sizeof(priv) / sizeof(priv[0]), &hpub, &hpriv);
	}
	if (rv != CKR_OK) {
		r = pk11_err_set(err, rv == CKR_MECHANISM_INVALID ? TETHER_ERR_UNSUPPORTED : TETHER_ERR_IO,
		                 -1, rv, "token '%s' cannot generate a %s key pair%s", p->token_label,
		                 ossl_key_type_name(type),
		                 rv == CKR_MECHANISM_INVALID ? ": choose another key type" : "");
		goto out;
	}
	r = load_key_locked(p, id, &key, err);
	if (r < 0)
		goto out;
	cert = ossl_make_cert(key, type, g->cn, g->days, p->libctx, NULL);
	if (cert == NULL) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot sign the self-signed certificate on token '%s'",
		                 p->token_label);
		goto out;
	}
	r = pk11_store_cert_locked(p, id, cert, err);
out:
	X509_free(cert);
	EVP_PKEY_free(key);
	return r;
}

int pk11_identity_generate(tether_provider_ctx *p, int slot,
                           const tether_keygen_params *params,
                           tether_error *err)
{
	static const tether_keygen_params defaults = { 0, 0, NULL, NULL };
	struct gen_arg g;
	int r;

	if (params == NULL)
		params = &defaults;
	if (params->key_type < 0 || params->key_type >= TETHER_KEY__COUNT)
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_UNSUPPORTED, CKR_OK,
		                    "unknown key type %d: use rsa2048, rsa3072, rsa4096, "
		                    "ec-p256 or ec-p384", params->key_type);
	if (params->key_passphrase != NULL)
		return pk11_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED, CKR_OK,
		                    "a key on a PKCS#11 token is protected by the token's PIN, "
		                    "not by a passphrase: leave the passphrase out");
	g.params = params;
	g.days = params->validity_days ? params->validity_days : DEFAULT_VALIDITY_DAYS;
	if (g.days > MAX_VALIDITY_DAYS)
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, CKR_OK,
		                    "validity of %u days is too long (at most %u)",
		                    (unsigned)g.days, MAX_VALIDITY_DAYS);
	g.cn = params->subject_cn ? params->subject_cn : "tether";
	if (g.cn[0] == '\0' || strlen(g.cn) > MAX_CN_LEN)
		return pk11_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT, CKR_OK,
		                    "the subject CN must be 1 to %d bytes long", MAX_CN_LEN);
	r = pk11_slot_create(p, slot, gen_store, &g, err);
	if (r == 0)
		pk11_log(p, TETHER_LOG_INFO, "prov",
		         "generated a %s identity on token '%s' in the %s slot "
		         "(key non-extractable)", ossl_key_type_name(params->key_type),
		         p->token_label, slot_names[slot]);
	return r;
}

int pk11_identity_promote(tether_provider_ctx *p, tether_error *err)
{
	struct slot_map m, n;
	int lfd, r;

	r = check_slot(p, TETHER_SLOT_CURRENT, err);
	if (r < 0)
		return r;
	r = pk11_open(p, err);
	if (r < 0)
		return r;
	lfd = lock_open(p, LOCK_EX, err);
	if (lfd < 0)
		return lfd;
	r = map_read(p, &m, err);
	if (r < 0)
		goto out;
	if (!m.used[TETHER_SLOT_STAGED]) {
		r = pk11_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, CKR_OK,
		                 "no staged identity to promote");
		goto out;
	}
	memset(&n, 0, sizeof(n));
	n.used[TETHER_SLOT_CURRENT] = 1;
	memcpy(n.id[TETHER_SLOT_CURRENT], m.id[TETHER_SLOT_STAGED], PK11_ID_LEN);
	if (m.used[TETHER_SLOT_CURRENT]) {
		n.used[TETHER_SLOT_PREVIOUS] = 1;
		memcpy(n.id[TETHER_SLOT_PREVIOUS], m.id[TETHER_SLOT_CURRENT], PK11_ID_LEN);
	}
	r = map_write(p, &n, err);
	if (r < 0)
		goto out;
	/* The old previous is no longer referenced. */
	if (m.used[TETHER_SLOT_PREVIOUS]) {
		pthread_mutex_lock(&p->lock);
		pk11_destroy_id_locked(p, m.id[TETHER_SLOT_PREVIOUS]);
		pthread_mutex_unlock(&p->lock);
	}
	pk11_log(p, TETHER_LOG_INFO, "prov",
	         "staged identity promoted to current on token '%s'", p->token_label);
out:
	close(lfd);
	return r;
}

int pk11_identity_remove(tether_provider_ctx *p, int slot, tether_error *err)
{
	unsigned char id[PK11_ID_LEN];
	struct slot_map m;
	int lfd, r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	r = pk11_open(p, err);
	if (r < 0)
		return r;
	lfd = lock_open(p, LOCK_EX, err);
	if (lfd < 0)
		return lfd;
	r = map_read(p, &m, err);
	if (r < 0)
		goto out;
	if (!m.used[slot]) {
		r = pk11_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, CKR_OK,
		                 "the %s identity slot is empty", slot_names[slot]);
		goto out;
	}
	memcpy(id, m.id[slot], sizeof(id));
	m.used[slot] = 0;
	r = map_write(p, &m, err);
	if (r < 0)
		goto out;
	pthread_mutex_lock(&p->lock);
	pk11_destroy_id_locked(p, id);
	pthread_mutex_unlock(&p->lock);
out:
	close(lfd);
	return r;
}

int pk11_identity_exists(tether_provider_ctx *p, int slot, tether_error *err)
{
	struct slot_map m;
	int lfd, r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	lfd = lock_open(p, LOCK_SH, err);
	if (lfd < 0)
		return lfd;
	r = map_read(p, &m, err);
	close(lfd);
	if (r < 0)
		return r;
	return m.used[slot] ? 1 : 0;
}

static int live_add_locked(tether_provider_ctx *p, const unsigned char *id,
                           EVP_PKEY *key, ossl_keybox **out, tether_error *err);

int pk11_identity_load(tether_provider_ctx *p, int slot,
                       tether_identity **out, tether_error *err)
{
	struct slot_map m;
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	ossl_keybox *box = NULL;
	int lfd, r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	lfd = lock_open(p, LOCK_SH, err);
	if (lfd < 0)
		return lfd;
	r = map_read(p, &m, err);
	close(lfd);
	if (r < 0)
		return r;
	if (!m.used[slot])
		return pk11_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND, CKR_OK,
		                    "the %s identity slot is empty", slot_names[slot]);
	r = pk11_open(p, err);
	if (r < 0)
		return r;
	pthread_mutex_lock(&p->lock);
	r = read_cert_locked(p, m.id[slot], &cert, err);
	if (r == 0) {
		r = load_key_locked(p, m.id[slot], &key, err);
		/* pkcs11-provider may hold dead sessions after the token came
		 * back: rebuild its context once and try again. */
		if (r < 0 && pk11_libctx_renew_locked(p, err) == 0)
			r = load_key_locked(p, m.id[slot], &key, err);
	}
	if (r == 0 && X509_check_private_key(cert, key) != 1)
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "the key and certificate of the %s identity on token '%s' "
		                 "do not match", slot_names[slot], p->token_label);
	if (r == 0)
		r = live_add_locked(p, m.id[slot], key, &box, err);
	if (r == 0) {
		r = ossl_identity_wrap(cert, key, p->libctx, NULL, out, err);
		cert = NULL;
		key = NULL;
		if (r == 0)
			(*out)->box = box;      /* the identity's reference */
		else
			ossl_keybox_unref(box);
	}
	pthread_mutex_unlock(&p->lock);
	X509_free(cert);
	EVP_PKEY_free(key);
	if (r == 0)
		pk11_token_seen(p);
	return r;
}

/* ------------------------------------------------------------------ */
/* Live keys: reloaded from the token after it came back               */
/* ------------------------------------------------------------------ */

/* Entries whose box only the registry still holds (their identities and
 * TLS contexts are gone): dropped.  p->lock held. */
static void live_prune_locked(tether_provider_ctx *p)
{
	struct pk11_live **pp = &p->live, *l;

	while ((l = *pp) != NULL) {
		if (ossl_keybox_refs(l->box) <= 1) {
			*pp = l->next;
			ossl_keybox_unref(l->box);
			free(l);
		} else {
			pp = &l->next;
		}
	}
}

/* A box for key (of the object with id), registered; *out gets a
 * reference of its own.  p->lock held. */
static int live_add_locked(tether_provider_ctx *p, const unsigned char *id,
                           EVP_PKEY *key, ossl_keybox **out, tether_error *err)
{
	struct pk11_live *l = calloc(1, sizeof(*l));

	live_prune_locked(p);
	if (l == NULL || (l->box = ossl_keybox_new(key)) == NULL) {
		free(l);
		return pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
		                    "out of memory");
	}
	memcpy(l->id, id, PK11_ID_LEN);
	l->next = p->live;
	p->live = l;
	*out = ossl_keybox_ref(l->box);
	pk11_log(p, TETHER_LOG_DEBUG, "prov",
	         "key %02x%02x%02x%02x... of token '%s' in use (reloaded if the token "
	         "comes back)", id[0], id[1], id[2], id[3], p->token_label);
	return 0;
}

void pk11_live_free_locked(tether_provider_ctx *p)
{
	struct pk11_live *l;

	while ((l = p->live) != NULL) {
		p->live = l->next;
		ossl_keybox_unref(l->box);
		free(l);
	}
}

/* Load a key for every live entry into keys[] (same order). */
static int load_all_locked(tether_provider_ctx *p, EVP_PKEY **keys, int n,
                           tether_error *err)
{
	struct pk11_live *l;
	int i, r;

	for (i = 0, l = p->live; l != NULL && i < n; l = l->next, i++) {
		r = load_key_locked(p, l->id, &keys[i], err);
		if (r < 0) {
			while (i-- > 0) {
				EVP_PKEY_free(keys[i]);
				keys[i] = NULL;
			}
			return r;
		}
	}
	return 0;
}

int pk11_reload_keys_locked(tether_provider_ctx *p, tether_error *err)
{
	struct pk11_live *l;
	EVP_PKEY **keys;
	int n = 0, i, r;

	live_prune_locked(p);
	for (l = p->live; l != NULL; l = l->next)
		n++;
	if (n == 0)
		return 0;
	keys = calloc((size_t)n, sizeof(*keys));
	if (keys == NULL)
		return pk11_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL, CKR_OK,
		                    "out of memory");
	r = load_all_locked(p, keys, n, err);
	/* pkcs11-provider keeps its slot list and sessions from before: if
	 * it cannot find the keys again, a new context will. */
	if (r < 0 && pk11_libctx_renew_locked(p, err) == 0)
		r = load_all_locked(p, keys, n, err);
	if (r == 0) {
		/* all or nothing: every box gets its fresh key */
		for (i = 0, l = p->live; l != NULL && i < n; l = l->next, i++)
			ossl_keybox_set(l->box, keys[i]);
		r = n;
	}
	for (i = 0; i < n; i++)
		EVP_PKEY_free(keys[i]);
	free(keys);
	return r;
}
