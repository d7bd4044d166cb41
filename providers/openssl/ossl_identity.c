/*
 * ossl_identity.c: identity slots of the openssl provider: generate,
 * promote, remove, exists, load.  The storage layout is described in
 * ossl_int.h.
 *
 * Crash safety.  A generation directory is written completely (key and
 * certificate each to a temporary name, fsync, rename; then the directory
 * is fsynced) before a slot link is made to point at it.  Promote is:
 *   1. previous := current's target   (rename of a fresh link; the old
 *                                      previous becomes unreferenced)
 *   2. current  := staged's target    (rename of a fresh link)
 *   3. unlink staged
 * then unreferenced generations are deleted.  A crash after 1 leaves
 * previous == current with staged still present; after 2, staged ==
 * current.  Neither state can arise otherwise (every generation has a
 * unique name), so the next slot change finishes the promotion
 * (recover()); readers meanwhile treat staged == current as "no staged".
 * There is a current identity at every instant.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ossl_int.h"

#define KEY_FILE   "key.pem"
#define CERT_FILE  "cert.pem"
#define LOCK_FILE  ".lock"
#define TMP_LINK   ".tmp-link"
#define GEN_PREFIX "id-"
#define GEN_NAME_LEN (sizeof(GEN_PREFIX) - 1 + 16)

#define DEFAULT_VALIDITY_DAYS 7300u      /* 20 years */
#define MAX_VALIDITY_DAYS     36500u     /* 100 years */
#define MAX_CN_LEN            64         /* ub-common-name */
#define MAX_PASSPHRASE_LEN    1023

static const char *const slot_names[TETHER_SLOT__COUNT] = {
	[TETHER_SLOT_CURRENT] = "current",
	[TETHER_SLOT_STAGED] = "staged",
	[TETHER_SLOT_PREVIOUS] = "previous",
};

const char *ossl_slot_name(int slot)
{
	if (slot < 0 || slot >= TETHER_SLOT__COUNT)
		return NULL;
	return slot_names[slot];
}

static int check_slot(tether_provider_ctx *p, int slot, tether_error *err)
{
	if (p == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "no provider context");
	if (ossl_slot_name(slot) == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "unknown identity slot %d", slot);
	if (p->identity_dir == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "this instance has no state directory to keep identities in");
	return 0;
}

/* ------------------------------------------------------------------ */
/* Passphrase policy                                                   */
/* ------------------------------------------------------------------ */

static void clear_free_str(char *s)
{
	if (s != NULL)
		OPENSSL_clear_free(s, strlen(s));
}

/* *out = the first line of the configured key-passphrase-file, or NULL
 * when none is configured.  The caller frees it with clear_free_str(). */
static int config_passphrase(tether_provider_ctx *p, char **out,
                             tether_error *err)
{
	const char *path = ossl_config(p, OSSL_CONF_KEY_PASSPHRASE_FILE);
	char buf[MAX_PASSPHRASE_LEN + 2];
	size_t used = 0, n;
	struct stat st;
	ssize_t k;
	int fd, r;
	char *s;

	*out = NULL;
	if (path == NULL || path[0] == '\0')
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return ossl_err_set(err, errno == ENOENT ? TETHER_ERR_NOT_FOUND : TETHER_ERR_IO,
		                    errno == ENOENT ? TETHER_CAT_NOT_FOUND : TETHER_CAT_IO,
		                    "cannot open key-passphrase-file %s: %s",
		                    path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "key-passphrase-file %s is not a regular file", path);
	}
	if (st.st_mode & 077)
		ossl_log(p, TETHER_LOG_WARN, NULL,
		         "key-passphrase-file %s is readable by others: chmod 600 it",
		         path);
	while (used < sizeof(buf) - 1) {
		k = read(fd, buf + used, sizeof(buf) - 1 - used);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
			                 "cannot read key-passphrase-file %s: %s",
			                 path, strerror(errno));
			close(fd);
			OPENSSL_cleanse(buf, sizeof(buf));
			return r;
		}
		if (k == 0)
			break;
		used += (size_t)k;
	}
	close(fd);
	buf[used] = '\0';
	n = strcspn(buf, "\r\n");
	if (n == used && used == sizeof(buf) - 1) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "key-passphrase-file %s: the passphrase is longer than %d bytes",
		                    path, MAX_PASSPHRASE_LEN);
	}
	if (n == 0) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "key-passphrase-file %s: the first line is empty", path);
	}
	s = OPENSSL_malloc(n + 1);
	if (s != NULL) {
		memcpy(s, buf, n);
		s[n] = '\0';
	}
	OPENSSL_cleanse(buf, sizeof(buf));
	if (s == NULL)
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	*out = s;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Directory, lock and link helpers                                    */
/* ------------------------------------------------------------------ */

struct idir {
	int dfd;        /* the identity directory, or -1 if it does not exist */
	int lfd;        /* the lock file */
};

static void idir_close(struct idir *d)
{
	if (d->lfd >= 0) {
		flock(d->lfd, LOCK_UN);
		close(d->lfd);
	}
	if (d->dfd >= 0)
		close(d->dfd);
	d->dfd = d->lfd = -1;
}

/* Open the identity directory and lock it: LOCK_EX for changes (creates
 * the directory), LOCK_SH for reads (d->dfd == -1 if there is none). */
static int idir_open(tether_provider_ctx *p, int op, struct idir *d,
                     tether_error *err)
{
	const char *dir = p->identity_dir;

	d->dfd = d->lfd = -1;
	if (op == LOCK_EX && mkdir(dir, 0700) < 0 && errno != EEXIST)
		return ossl_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                    TETHER_CAT_IO, "cannot create %s: %s", dir,
		                    strerror(errno));
	d->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (d->dfd < 0) {
		if (errno == ENOENT && op != LOCK_EX)
			return 0;
		return ossl_err_set(err, errno == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                    TETHER_CAT_IO, "cannot open %s: %s", dir,
		                    strerror(errno));
	}
	d->lfd = openat(d->dfd, LOCK_FILE,
	                O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (d->lfd < 0 && op != LOCK_EX)
		d->lfd = openat(d->dfd, LOCK_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (d->lfd < 0) {
		int e = errno;

		idir_close(d);
		return ossl_err_set(err, e == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                    TETHER_CAT_IO, "cannot open %s/%s: %s", dir,
		                    LOCK_FILE, strerror(e));
	}
	while (flock(d->lfd, op) < 0) {
		int e = errno;

		if (e == EINTR)
			continue;
		idir_close(d);
		return ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                    "cannot lock %s/%s: %s", dir, LOCK_FILE,
		                    strerror(e));
	}
	return 0;
}

static int valid_gen_name(const char *s)
{
	size_t i;

	if (strlen(s) != GEN_NAME_LEN ||
	    strncmp(s, GEN_PREFIX, sizeof(GEN_PREFIX) - 1) != 0)
		return 0;
	for (i = sizeof(GEN_PREFIX) - 1; i < GEN_NAME_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

/* Read a slot's link: 1 and its generation name in buf (GEN_NAME_LEN+1),
 * 0 if the slot is empty, negative on error. */
static int link_get(tether_provider_ctx *p, int dfd, const char *name,
                    char *buf, tether_error *err)
{
	char tmp[GEN_NAME_LEN + 2];
	ssize_t n;

	if (dfd < 0)
		return 0;
	n = readlinkat(dfd, name, tmp, sizeof(tmp) - 1);
	if (n < 0) {
		if (errno == ENOENT)
			return 0;
		if (errno == EINVAL)
			return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                    "%s/%s is not a symbolic link: the identity "
			                    "directory was changed by hand", p->identity_dir, name);
		return ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                    "cannot read %s/%s: %s", p->identity_dir, name,
		                    strerror(errno));
	}
	tmp[n] = '\0';
	if (!valid_gen_name(tmp))
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "%s/%s points to '%s', not to an identity of this "
		                    "directory", p->identity_dir, name, tmp);
	memcpy(buf, tmp, (size_t)n + 1);
	return 1;
}

/* The three slots' targets ("" if empty). */
struct slots {
	char t[TETHER_SLOT__COUNT][GEN_NAME_LEN + 1];
};

static int slots_get(tether_provider_ctx *p, int dfd, struct slots *s,
                     tether_error *err)
{
	int i, r;

	for (i = 0; i < TETHER_SLOT__COUNT; i++) {
		s->t[i][0] = '\0';
		r = link_get(p, dfd, slot_names[i], s->t[i], err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int fsync_dir(tether_provider_ctx *p, int dfd, tether_error *err)
{
	if (fsync(dfd) < 0 && errno != EINVAL)
		return ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                    "cannot sync %s: %s", p->identity_dir,
		                    strerror(errno));
	return 0;
}

/* Point link name at target, atomically replacing what is there. */
static int link_set(tether_provider_ctx *p, int dfd, const char *name,
                    const char *target, tether_error *err)
{
	unlinkat(dfd, TMP_LINK, 0);
	if (symlinkat(target, dfd, TMP_LINK) < 0 ||
	    renameat(dfd, TMP_LINK, dfd, name) < 0) {
		int e = errno;

		unlinkat(dfd, TMP_LINK, 0);
		return ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                    "cannot point %s/%s at %s: %s", p->identity_dir,
		                    name, target, strerror(e));
	}
	return 0;
}

static int link_del(tether_provider_ctx *p, int dfd, const char *name,
                    tether_error *err)
{
	if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
		return ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                    "cannot remove %s/%s: %s", p->identity_dir, name,
		                    strerror(errno));
	return 0;
}

/* Delete a generation directory and what it holds. */
static int gen_remove(tether_provider_ctx *p, int dfd, const char *gen)
{
	struct dirent *de;
	DIR *dir;
	int fd, r = 0;

	fd = openat(dfd, gen, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0) {
		dir = fdopendir(fd);
		if (dir == NULL) {
			close(fd);
			r = -1;
		} else {
			while ((de = readdir(dir)) != NULL) {
				if (strcmp(de->d_name, ".") == 0 ||
				    strcmp(de->d_name, "..") == 0)
					continue;
				if (unlinkat(fd, de->d_name, 0) < 0)
					r = -1;
			}
			closedir(dir);
		}
	}
	if (unlinkat(dfd, gen, AT_REMOVEDIR) < 0 && errno != ENOENT)
		r = -1;
	if (r < 0)
		ossl_log(p, TETHER_LOG_WARN, NULL,
		         "cannot delete the old identity %s/%s: %s; remove it by hand",
		         p->identity_dir, gen, strerror(errno));
	return r;
}

/* Delete generations no slot points at (left by a crash, a remove or a
 * promote).  Only called with the exclusive lock held. */
static void gen_collect(tether_provider_ctx *p, int dfd, const struct slots *s)
{
	struct dirent *de;
	DIR *dir;
	int fd, i, used;
	char names[64][GEN_NAME_LEN + 1];
	int n = 0;

	fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	dir = fdopendir(fd);
	if (dir == NULL) {
		close(fd);
		return;
	}
	while ((de = readdir(dir)) != NULL && n < 64) {
		if (!valid_gen_name(de->d_name))
			continue;
		used = 0;
		for (i = 0; i < TETHER_SLOT__COUNT; i++)
			if (strcmp(s->t[i], de->d_name) == 0)
				used = 1;
		if (!used)
			memcpy(names[n++], de->d_name, GEN_NAME_LEN + 1);
	}
	closedir(dir);
	for (i = 0; i < n; i++)
		gen_remove(p, dfd, names[i]);
}

/* Finish an interrupted promote, then collect garbage.  Exclusive lock
 * held.  Leaves the slots' state in s. */
static int recover(tether_provider_ctx *p, int dfd, struct slots *s,
                   tether_error *err)
{
	char *cur = s->t[TETHER_SLOT_CURRENT];
	char *stg = s->t[TETHER_SLOT_STAGED];
	char *prv = s->t[TETHER_SLOT_PREVIOUS];
	int r;

	r = slots_get(p, dfd, s, err);
	if (r < 0)
		return r;
	if (stg[0] && prv[0] && strcmp(prv, cur) == 0 && strcmp(stg, cur) != 0) {
		/* crashed after step 1 */
		ossl_log(p, TETHER_LOG_WARN, NULL,
		         "finishing an interrupted identity promotion in %s",
		         p->identity_dir);
		r = link_set(p, dfd, "current", stg, err);
		if (r < 0)
			return r;
		memcpy(cur, stg, GEN_NAME_LEN + 1);
	}
	if (stg[0] && strcmp(stg, cur) == 0) {
		/* crashed after step 2 */
		r = link_del(p, dfd, "staged", err);
		if (r < 0)
			return r;
		stg[0] = '\0';
		r = fsync_dir(p, dfd, err);
		if (r < 0)
			return r;
	}
	unlinkat(dfd, TMP_LINK, 0);
	gen_collect(p, dfd, s);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Writing a generation                                                */
/* ------------------------------------------------------------------ */

typedef int (*writer_fn)(BIO *b, void *arg);

/* Write name in directory gfd atomically: temporary name created
 * O_EXCL|O_NOFOLLOW with its final mode, fsync, rename. */
static int write_atomic(tether_provider_ctx *p, int gfd, const char *gen,
                        const char *name, mode_t mode, writer_fn fn,
                        void *arg, tether_error *err)
{
	char tmp[64];
	BIO *b = NULL;
	int fd, r;

	snprintf(tmp, sizeof(tmp), ".%s.tmp", name);
	fd = openat(gfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
	            O_CLOEXEC | O_NOCTTY, mode);
	if (fd < 0)
		return ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                    "cannot create %s/%s/%s: %s", p->identity_dir,
		                    gen, tmp, strerror(errno));
	b = BIO_new_fd(fd, BIO_NOCLOSE);
	if (b == NULL || !fn(b, arg) || BIO_flush(b) != 1) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot write %s/%s/%s", p->identity_dir, gen, name);
		goto fail;
	}
	BIO_free(b);
	b = NULL;
	if (fsync(fd) < 0) {
		r = ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                 "cannot sync %s/%s/%s: %s", p->identity_dir, gen,
		                 name, strerror(errno));
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                 "cannot write %s/%s/%s: %s", p->identity_dir, gen,
		                 name, strerror(errno));
		goto fail;
	}
	fd = -1;
	if (renameat(gfd, tmp, gfd, name) < 0) {
		r = ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                 "cannot rename %s/%s/%s: %s", p->identity_dir, gen,
		                 tmp, strerror(errno));
		goto fail;
	}
	return 0;
fail:
	BIO_free(b);
	if (fd >= 0)
		close(fd);
	unlinkat(gfd, tmp, 0);
	return r;
}

struct key_write {
	EVP_PKEY *key;
	const char *pass;
};

static int write_key(BIO *b, void *arg)
{
	struct key_write *kw = arg;

	if (kw->pass != NULL)
		return PEM_write_bio_PKCS8PrivateKey(b, kw->key, EVP_aes_256_cbc(),
		                                     kw->pass, (int)strlen(kw->pass),
		                                     NULL, NULL);
	return PEM_write_bio_PKCS8PrivateKey(b, kw->key, NULL, NULL, 0, NULL, NULL);
}

static int write_cert(BIO *b, void *arg)
{
	return PEM_write_bio_X509(b, arg);
}

/* Exclusive lock held, slot known empty. */
static int store_locked(tether_provider_ctx *p, int dfd, int slot, X509 *cert,
                        EVP_PKEY *key, const char *pass, tether_error *err)
{
	unsigned char rnd[8];
	char gen[GEN_NAME_LEN + 1];
	struct key_write kw;
	int gfd = -1, r, i;

	for (i = 0;; i++) {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
			                    "random generator failed");
		snprintf(gen, sizeof(gen), GEN_PREFIX "%02x%02x%02x%02x%02x%02x%02x%02x",
		         rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
		if (mkdirat(dfd, gen, 0700) == 0)
			break;
		if (errno != EEXIST || i > 3)
			return ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
			                    "cannot create %s/%s: %s", p->identity_dir,
			                    gen, strerror(errno));
	}
	gfd = openat(dfd, gen, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (gfd < 0) {
		r = ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                 "cannot open %s/%s: %s", p->identity_dir, gen,
		                 strerror(errno));
		goto fail;
	}
	kw.key = key;
	kw.pass = pass;
	r = write_atomic(p, gfd, gen, KEY_FILE, 0600, write_key, &kw, err);
	if (r < 0)
		goto fail;
	r = write_atomic(p, gfd, gen, CERT_FILE, 0644, write_cert, cert, err);
	if (r < 0)
		goto fail;
	if (fsync(gfd) < 0) {
		r = ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
		                 "cannot sync %s/%s: %s", p->identity_dir, gen,
		                 strerror(errno));
		goto fail;
	}
	close(gfd);
	gfd = -1;
	r = fsync_dir(p, dfd, err);
	if (r < 0)
		goto fail;
	/* symlink() never replaces: a slot filled meanwhile fails here. */
	if (symlinkat(gen, dfd, slot_names[slot]) < 0) {
		if (errno == EEXIST)
			r = ossl_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_NONE,
			                 "the %s identity slot is in use: remove or "
			                 "promote it first", slot_names[slot]);
		else
			r = ossl_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO,
			                 "cannot create %s/%s: %s", p->identity_dir,
			                 slot_names[slot], strerror(errno));
		goto fail;
	}
	r = fsync_dir(p, dfd, err);
	if (r < 0)
		return r;   /* linked; the slot is usable */
	return 0;
fail:
	if (gfd >= 0)
		close(gfd);
	gen_remove(p, dfd, gen);
	return r;
}

static int slot_busy(const struct slots *s, int slot,
                     tether_error *err)
{
	if (s->t[slot][0] == '\0')
		return 0;
	return ossl_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_NONE,
	                    "the %s identity slot is in use: remove or promote it first",
	                    slot_names[slot]);
}

int ossl_slot_store(tether_provider_ctx *p, int slot, X509 *cert,
                    EVP_PKEY *key, const char *passphrase, tether_error *err)
{
	struct idir d;
	struct slots s;
	char *conf_pass = NULL;
	int r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	if (passphrase != NULL && passphrase[0] == '\0')
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "the key passphrase is empty");
	if (passphrase == NULL) {
		r = config_passphrase(p, &conf_pass, err);
		if (r < 0)
			return r;
		passphrase = conf_pass;
	}
	r = idir_open(p, LOCK_EX, &d, err);
	if (r < 0)
		goto out;
	r = recover(p, d.dfd, &s, err);
	if (r == 0)
		r = slot_busy(&s, slot, err);
	if (r == 0)
		r = store_locked(p, d.dfd, slot, cert, key, passphrase, err);
	idir_close(&d);
out:
	clear_free_str(conf_pass);
	return r;
}

/* ------------------------------------------------------------------ */
/* Generate                                                            */
/* ------------------------------------------------------------------ */

static EVP_PKEY *keygen(int type)
{
	switch (type) {
	case TETHER_KEY_RSA2048: return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	case TETHER_KEY_RSA3072: return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
	case TETHER_KEY_RSA4096: return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)4096);
	case TETHER_KEY_EC_P256: return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	case TETHER_KEY_EC_P384: return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	default: return NULL;
	}
}

int ossl_prov_identity_generate(tether_provider_ctx *p, int slot,
                                const tether_keygen_params *params,
                                tether_error *err)
{
	static const tether_keygen_params defaults = { 0, 0, NULL, NULL };
	const char *cn, *pass;
	char *conf_pass = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	struct idir d = { -1, -1 };
	struct slots s;
	uint32_t days;
	int r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	if (params == NULL)
		params = &defaults;
	if (params->key_type < 0 || params->key_type >= TETHER_KEY__COUNT)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_UNSUPPORTED,
		                    "unknown key type %d: use rsa2048, rsa3072, rsa4096, "
		                    "ec-p256 or ec-p384", params->key_type);
	days = params->validity_days ? params->validity_days : DEFAULT_VALIDITY_DAYS;
	if (days > MAX_VALIDITY_DAYS)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "validity of %u days is too long (at most %u)",
		                    (unsigned)days, MAX_VALIDITY_DAYS);
	cn = params->subject_cn ? params->subject_cn : "tether";
	if (cn[0] == '\0' || strlen(cn) > MAX_CN_LEN)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "the subject CN must be 1 to %d bytes long", MAX_CN_LEN);
	pass = params->key_passphrase;
	if (pass != NULL && pass[0] == '\0')
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                    "the key passphrase is empty");
	if (pass == NULL) {
		r = config_passphrase(p, &conf_pass, err);
		if (r < 0)
			return r;
		pass = conf_pass;
	}

	/* Fail early, before spending seconds on an RSA key. */
	r = idir_open(p, LOCK_EX, &d, err);
	if (r < 0)
		goto out;
	r = recover(p, d.dfd, &s, err);
	if (r < 0)
		goto out;
	r = slot_busy(&s, slot, err);
	if (r < 0)
		goto out;

	key = keygen(params->key_type);
	if (key == NULL) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot generate a %s key",
		                 ossl_key_type_name(params->key_type));
		goto out;
	}
	cert = ossl_make_cert(key, params->key_type, cn, days, NULL, NULL);
	if (cert == NULL) {
		r = ossl_err_set(err, TETHER_ERR_CRYPTO, TETHER_CAT_INTERNAL,
		                 "cannot make a self-signed certificate");
		goto out;
	}
	r = store_locked(p, d.dfd, slot, cert, key, pass, err);
	if (r == 0)
		ossl_log(p, TETHER_LOG_INFO, "prov",
		         "generated a %s identity in the %s slot%s",
		         ossl_key_type_name(params->key_type), slot_names[slot],
		         pass ? " (key encrypted)" : "");
out:
	idir_close(&d);
	X509_free(cert);
	EVP_PKEY_free(key);
	clear_free_str(conf_pass);
	return r;
}

/* ------------------------------------------------------------------ */
/* Promote, remove, exists                                             */
/* ------------------------------------------------------------------ */

int ossl_prov_identity_promote(tether_provider_ctx *p, tether_error *err)
{
	char old_prev[GEN_NAME_LEN + 1];
	struct idir d;
	struct slots s;
	int r;

	r = check_slot(p, TETHER_SLOT_STAGED, err);
	if (r < 0)
		return r;
	r = idir_open(p, LOCK_EX, &d, err);
	if (r < 0)
		return r;
	r = recover(p, d.dfd, &s, err);
	if (r < 0)
		goto out;
	if (s.t[TETHER_SLOT_STAGED][0] == '\0') {
		r = ossl_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                 "no staged identity to promote: generate or import "
		                 "one into the staged slot first");
		goto out;
	}
	memcpy(old_prev, s.t[TETHER_SLOT_PREVIOUS], sizeof(old_prev));
	/* 1. previous := current (if there is none, previous stays). */
	if (s.t[TETHER_SLOT_CURRENT][0] != '\0') {
		r = link_set(p, d.dfd, "previous", s.t[TETHER_SLOT_CURRENT], err);
		if (r < 0)
			goto out;
		memcpy(s.t[TETHER_SLOT_PREVIOUS], s.t[TETHER_SLOT_CURRENT],
		       GEN_NAME_LEN + 1);
	}
	/* 2. current := staged */
	r = link_set(p, d.dfd, "current", s.t[TETHER_SLOT_STAGED], err);
	if (r < 0)
		goto out;
	memcpy(s.t[TETHER_SLOT_CURRENT], s.t[TETHER_SLOT_STAGED], GEN_NAME_LEN + 1);
	/* 3. no staged */
	r = link_del(p, d.dfd, "staged", err);
	if (r < 0)
		goto out;
	s.t[TETHER_SLOT_STAGED][0] = '\0';
	r = fsync_dir(p, d.dfd, err);
	if (r < 0)
		goto out;
	gen_collect(p, d.dfd, &s);
	ossl_log(p, TETHER_LOG_INFO, "prov",
	         "promoted the staged identity to current%s",
	         old_prev[0] ? "; the old previous identity was deleted" : "");
out:
	idir_close(&d);
	return r;
}

int ossl_prov_identity_remove(tether_provider_ctx *p, int slot,
                              tether_error *err)
{
	struct idir d;
	struct slots s;
	int r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	r = idir_open(p, LOCK_EX, &d, err);
	if (r < 0)
		return r;
	r = recover(p, d.dfd, &s, err);
	if (r < 0)
		goto out;
	if (s.t[slot][0] == '\0') {
		r = ossl_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                 "the %s identity slot is empty", slot_names[slot]);
		goto out;
	}
	r = link_del(p, d.dfd, slot_names[slot], err);
	if (r < 0)
		goto out;
	s.t[slot][0] = '\0';
	r = fsync_dir(p, d.dfd, err);
	if (r < 0)
		goto out;
	gen_collect(p, d.dfd, &s);
out:
	idir_close(&d);
	return r;
}

/* Resolve a slot for reading, with the shared lock held.  1 + target,
 * 0 empty, negative error.  A staged link equal to current (an
 * interrupted promote) counts as empty. */
static int slot_resolve(tether_provider_ctx *p, int dfd, int slot, char *gen,
                        tether_error *err)
{
	char cur[GEN_NAME_LEN + 1];
	int r;

	r = link_get(p, dfd, slot_names[slot], gen, err);
	if (r <= 0 || slot != TETHER_SLOT_STAGED)
		return r;
	r = link_get(p, dfd, slot_names[TETHER_SLOT_CURRENT], cur, err);
	if (r < 0)
		return r;
	return r == 1 && strcmp(cur, gen) == 0 ? 0 : 1;
}

int ossl_prov_identity_exists(tether_provider_ctx *p, int slot,
                              tether_error *err)
{
	char gen[GEN_NAME_LEN + 1];
	struct idir d;
	int r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	r = idir_open(p, LOCK_SH, &d, err);
	if (r < 0)
		return r;
	r = slot_resolve(p, d.dfd, slot, gen, err);
	idir_close(&d);
	return r;
}

/* ------------------------------------------------------------------ */
/* Load                                                                */
/* ------------------------------------------------------------------ */

static int open_in_gen(tether_provider_ctx *p, int dfd, const char *gen,
                       const char *file, int warn_mode, BIO **out,
                       tether_error *err)
{
	char path[GEN_NAME_LEN + 32];
	struct stat st;
	BIO *b;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", gen, file);
	fd = openat(dfd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		int e = errno;

		return ossl_err_set(err, e == ENOENT ? TETHER_ERR_NOT_FOUND :
		                    e == EACCES ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
		                    e == ENOENT ? TETHER_CAT_NOT_FOUND : TETHER_CAT_IO,
		                    "cannot open %s/%s: %s", p->identity_dir, path,
		                    strerror(e));
	}
	if (warn_mode && fstat(fd, &st) == 0 && (st.st_mode & 077))
		ossl_log(p, TETHER_LOG_WARN, NULL,
		         "private key %s/%s is accessible to others: chmod 600 it",
		         p->identity_dir, path);
	b = BIO_new_fd(fd, BIO_CLOSE);
	if (b == NULL) {
		close(fd);
		return ossl_err_set(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                    "out of memory");
	}
	*out = b;
	return 0;
}

int ossl_slot_read(tether_provider_ctx *p, int slot, X509 **cert_out,
                   EVP_PKEY **key_out, tether_error *err)
{
	char gen[GEN_NAME_LEN + 1];
	struct ossl_pw pw = { NULL, 0, 0 };
	char *pass = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	BIO *b = NULL;
	struct idir d;
	int r;

	r = check_slot(p, slot, err);
	if (r < 0)
		return r;
	r = idir_open(p, LOCK_SH, &d, err);
	if (r < 0)
		return r;
	r = slot_resolve(p, d.dfd, slot, gen, err);
	if (r == 0)
		r = ossl_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                 "the %s identity slot is empty", slot_names[slot]);
	if (r < 0)
		goto out;

	r = open_in_gen(p, d.dfd, gen, CERT_FILE, 0, &b, err);
	if (r < 0)
		goto out;
	cert = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	if (cert == NULL) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "%s/%s/%s is not a PEM certificate", p->identity_dir,
		                 gen, CERT_FILE);
		goto out;
	}

	r = config_passphrase(p, &pass, err);
	if (r < 0)
		goto out;
	pw.pw = pass;
	r = open_in_gen(p, d.dfd, gen, KEY_FILE, 1, &b, err);
	if (r < 0)
		goto out;
	key = PEM_read_bio_PrivateKey(b, NULL, ossl_pw_cb, &pw);
	BIO_free(b);
	if (key == NULL) {
		if (pw.asked && pass == NULL)
			r = ossl_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
			                 "the private key of the %s identity is encrypted: "
			                 "set key-passphrase-file in the [openssl] section",
			                 slot_names[slot]);
		else if (pw.asked)
			r = ossl_err_set(err, TETHER_ERR_PASSWORD, TETHER_CAT_BAD_PASSWORD,
			                 "cannot decrypt the private key of the %s identity: "
			                 "wrong passphrase in key-passphrase-file",
			                 slot_names[slot]);
		else
			r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                 "%s/%s/%s is not a PEM private key", p->identity_dir,
			                 gen, KEY_FILE);
		goto out;
	}
	if (X509_check_private_key(cert, key) != 1) {
		r = ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                 "%s/%s: the private key does not match the certificate",
		                 p->identity_dir, gen);
		goto out;
	}
	*cert_out = cert;
	*key_out = key;
	cert = NULL;
	key = NULL;
	r = 0;
out:
	idir_close(&d);
	clear_free_str(pass);
	X509_free(cert);
	EVP_PKEY_free(key);
	return r;
}

int ossl_prov_identity_load(tether_provider_ctx *p, int slot,
                            tether_identity **out, tether_error *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	int r;

	if (out == NULL)
		return ossl_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                    "identity_load: missing argument");
	r = ossl_slot_read(p, slot, &cert, &key, err);
	if (r < 0)
		return r;
	return ossl_identity_wrap(cert, key, NULL, NULL, out, err);
}
