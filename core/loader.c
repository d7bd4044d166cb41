#include "config.h"
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "error.h"
#include "fsutil.h"
#include "loader.h"
#include "log.h"
#include "util.h"

static const char *host_config_get(void *arg, const char *key)
{
	tether_prov *p = arg;

	if (!p->config_get)
		return NULL;
	return p->config_get(p->config_arg, p->name, key);
}

static int name_ok(const char *name)
{
	size_t i, n = strlen(name);
	if (n == 0 || n > 32)
		return 0;
	for (i = 0; i < n; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
		      name[i] == '_' || name[i] == '-'))
			return 0;
	return 1;
}

#ifdef _WIN32
/* Windows: providers are DLLs beside the .exe; PATH-like lists use ';'. */
#define DL_SUFFIX ".dll"
#define PATH_LIST_SEP ";"
#define IS_PATH(n) (strchr((n), '/') || strchr((n), '\\'))
static int running_from_build_tree(void)
{
	return 0;       /* the build directory holds the .exe and the DLLs together */
}
#else
#define DL_SUFFIX ".so"
#define PATH_LIST_SEP ":"
#define IS_PATH(n) (strchr((n), '/') != NULL)
/* Is the running program inside the build tree? */
static int running_from_build_tree(void)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	size_t bl = strlen(TETHER_BUILD_DIR);

	if (n <= 0)
		return 0;
	exe[n] = '\0';
	return strncmp(exe, TETHER_BUILD_DIR, bl) == 0 && exe[bl] == '/';
}
#endif

static void append(char *buf, size_t cap, const char *s)
{
	size_t l = strlen(buf);
	if (l < cap - 1)
		snprintf(buf + l, cap - l, "%s", s);
}

int tether_provider_load(const char *name, const tether_prov_opts *opts,
                         tether_prov **out, tether_error *err)
{
	char searched[1024] = "", dlerr[512] = "";
	char *cands[16];
	size_t nc = 0, i;
	void *dl = NULL;
	char *path = NULL;
	tether_provider_init_fn init;
	const tether_provider *t = NULL;
	tether_prov *p = NULL;
	int r;

	if (!name || !*name)
		name = "openssl";
	if (IS_PATH(name)) {
		cands[nc++] = tether_strdup(name);
	} else {
		const char *env = getenv("TETHER_PROVIDER_PATH");
		if (!name_ok(name))
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "'%s' is not a provider name (expected e.g. openssl or pkcs11)", name);
		if (env && *env) {
			char *e = tether_strdup(env), *save = NULL, *dir;
			for (dir = strtok_r(e, PATH_LIST_SEP, &save); dir && nc < 12;
			     dir = strtok_r(NULL, PATH_LIST_SEP, &save))
				cands[nc++] = tether_asprintf("%s/tether-%s" DL_SUFFIX, dir, name);
			free(e);
		}
		if (running_from_build_tree())
			cands[nc++] = tether_asprintf("%s/providers/%s/.libs/tether-%s.so",
			                              TETHER_BUILD_DIR, name, name);
#ifdef _WIN32
		cands[nc++] = tether_asprintf("%s\\tether-%s" DL_SUFFIX, tether_win_exe_dir(), name);
#else
		cands[nc++] = tether_asprintf("%s/tether-%s.so", TETHER_PROVIDER_DIR, name);
#endif
	}
	for (i = 0; i < nc && !dl; i++) {
		if (searched[0])
			append(searched, sizeof(searched), ", ");
		append(searched, sizeof(searched), cands[i]);
		if (!tether_path_exists(cands[i]))
			continue;
		dl = dlopen(cands[i], RTLD_NOW | RTLD_LOCAL);
		if (!dl) {
			const char *de = dlerror();
			snprintf(dlerr, sizeof(dlerr), "%s", de ? de : "unknown dlopen error");
			r = tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
			                   "cannot load provider '%s' from %s: %s", name, cands[i], dlerr);
			goto out;
		}
		path = tether_strdup(cands[i]);
	}
	if (!dl) {
		r = tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                   "provider '%s' not found (searched: %s): install it, or set "
		                   "TETHER_PROVIDER_PATH to the directory that holds tether-%s" DL_SUFFIX,
		                   name, searched, name);
		goto out;
	}
	dlerror();
	init = (tether_provider_init_fn)dlsym(dl, TETHER_PROVIDER_ENTRY);
	if (!init) {
		const char *de = dlerror();
		r = tether_err_set(err, TETHER_ERR_ABI, TETHER_CAT_UNSUPPORTED,
		                   "%s is not a tether provider: symbol %s missing (%s)", path,
		                   TETHER_PROVIDER_ENTRY, de ? de : "no detail");
		goto out;
	}
	p = tether_xcalloc(1, sizeof(*p));
	p->dl = dl;
	p->path = path;
	path = NULL;
	p->name = tether_strdup(IS_PATH(name) ? "provider" : name);
	p->state_dir = tether_strdup(opts && opts->state_dir ? opts->state_dir : ".");
	p->instance = tether_strdup(opts && opts->instance ? opts->instance : "default");
	p->program = tether_strdup(opts && opts->program ? opts->program : "tether");
	p->config_get = opts ? opts->config_get : NULL;
	p->config_arg = opts ? opts->config_arg : NULL;
	p->host.abi_major = TETHER_PROVIDER_ABI_MAJOR;
	p->host.abi_minor = TETHER_PROVIDER_ABI_MINOR;
	p->host.size = sizeof(tether_host);
	p->host.host_arg = p;
	p->host.log = tether_log_host_cb;
	p->host.config_get = host_config_get;
	p->host.state_dir = p->state_dir;
	p->host.instance = p->instance;
	p->host.program = p->program;

	tether_err_clear(err);
	r = init(&p->host, &t, &p->ctx, err);
	if (r < 0) {
		tether_err_prefix(err, "provider %s failed to start", p->path);
		goto out;
	}
	if (!t) {
		r = tether_err_set(err, TETHER_ERR_ABI, TETHER_CAT_INTERNAL,
		                   "provider %s returned no operation table", p->path);
		goto out;
	}
	if (t->abi_major != TETHER_PROVIDER_ABI_MAJOR) {
		r = tether_err_set(err, TETHER_ERR_ABI, TETHER_CAT_UNSUPPORTED,
		                   "provider %s speaks ABI %u.%u, this tether needs %u.x: install the "
		                   "provider that came with this tether version", p->path,
		                   t->abi_major, t->abi_minor, TETHER_PROVIDER_ABI_MAJOR);
		goto fail_deinit;
	}
	if (t->size < offsetof(tether_provider, identity_generate)) {
		r = tether_err_set(err, TETHER_ERR_ABI, TETHER_CAT_UNSUPPORTED,
		                   "provider %s has a truncated operation table (%u bytes, at least %zu "
		                   "expected): it is damaged or was built against another header",
		                   p->path, t->size, offsetof(tether_provider, identity_generate));
		goto fail_deinit;
	}
	p->t = t;
	tether_debug("prov", "loaded provider %s (%s) from %s, ABI %u.%u, table %u bytes",
	             t->name, t->version ? t->version : "?", p->path, t->abi_major,
	             t->abi_minor, t->size);
	*out = p;
	p = NULL;
	dl = NULL;
	r = 0;
	goto out;
fail_deinit:
	if (t->size >= offsetof(tether_provider, deinit) + sizeof(t->deinit) && t->deinit)
		t->deinit(p->ctx);
	p->ctx = NULL;
out:
	if (p) {
		free(p->path);
		free(p->name);
		free(p->state_dir);
		free(p->instance);
		free(p->program);
		free(p);
	}
	if (dl)
		dlclose(dl);
	free(path);
	for (i = 0; i < nc; i++)
		free(cands[i]);
	return r;
}

void tether_provider_unload(tether_prov *p)
{
	if (!p)
		return;
	if (p->t && p->t->deinit)
		p->t->deinit(p->ctx);
	/* Providers built on OpenSSL register atexit handlers; unloading the
	 * code under them would crash at exit.  Keep the mapping. */
	free(p->path);
	free(p->name);
	free(p->state_dir);
	free(p->instance);
	free(p->program);
	free(p);
}
