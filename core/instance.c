#include "config.h"
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include "error.h"
#include "fsutil.h"
#include "instance.h"
#include "util.h"

#define SYS_CONF "/etc/tether"
#define SYS_STATE "/var/lib/tether"
#define SYS_RUN "/run/tether"

int tether_instance_name_ok(const char *name, tether_error *err)
{
	size_t i, n = name ? strlen(name) : 0;

	if (n == 0 || n > 64 || name[0] == '.' || name[0] == '-')
		goto bad;
	for (i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
			goto bad;
	}
	return 0;
bad:
	return tether_err_set(err, TETHER_ERR_USAGE, TETHER_CAT_BAD_INPUT,
	                      "'%s' is not a valid instance name: use 1 to 64 letters, digits, "
	                      "'_', '-' or '.', not starting with '.' or '-'", name ? name : "");
}

int tether_instance_init(const char *program, const char *name,
                         const char *home, tether_instance **out,
                         tether_error *err)
{
	tether_instance *in;
	int r;

	if (!name)
		name = TETHER_DEFAULT_INSTANCE;
	r = tether_instance_name_ok(name, err);
	if (r < 0)
		return r;
	in = tether_xcalloc(1, sizeof(*in));
	in->program = tether_strdup(program);
	in->name = tether_strdup(name);
	if (home && *home) {
		in->home = tether_strdup(home);
		in->base_dir = tether_asprintf("%s/%s-%s", home, program, name);
		in->config_path = tether_asprintf("%s/%s.ini", in->base_dir, program);
		in->state_dir = tether_asprintf("%s/state", in->base_dir);
		in->run_dir = tether_asprintf("%s/run", in->base_dir);
	} else {
		in->config_path = tether_asprintf(SYS_CONF "/%s-%s.ini", program, name);
		in->state_dir = tether_asprintf(SYS_STATE "/%s-%s", program, name);
		in->run_dir = tether_asprintf(SYS_RUN "/%s-%s", program, name);
	}
	*out = in;
	return 0;
}

void tether_instance_free(tether_instance *in)
{
	if (!in)
		return;
	free(in->program);
	free(in->name);
	free(in->home);
	free(in->config_path);
	free(in->state_dir);
	free(in->run_dir);
	free(in->base_dir);
	free(in);
}

int tether_instance_exists(const tether_instance *in)
{
	return tether_path_exists(in->config_path);
}

const char *tether_instance_args(const char *name, const char *home, char *buf, size_t n)
{
	int other = name && strcmp(name, TETHER_DEFAULT_INSTANCE);

	snprintf(buf, n, "%s%s%s%s", other ? " --instance " : "", other ? name : "",
	         home && *home ? " --home " : "", home && *home ? home : "");
	return buf;
}

int tether_instance_missing(const tether_instance *in, tether_error *err)
{
	char args[600];

	return tether_err_set(err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
	                      "%s instance '%s' does not exist (no %s): create it with "
	                      "'tether-%s create-instance%s'", in->program, in->name,
	                      in->config_path, in->program,
	                      tether_instance_args(in->name, in->home, args, sizeof(args)));
}

int tether_instance_create(const tether_instance *in, const char *config_text,
                           tether_error *err)
{
	char *confdir = NULL, *slash;
	int r;

	if (tether_instance_exists(in))
		return tether_err_set(err, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT,
		                      "%s instance '%s' already exists (%s): use it, or delete it first "
		                      "with 'delete-instance'", in->program, in->name, in->config_path);
	if (in->base_dir) {
		r = tether_mkdirs(in->base_dir, 0750, err);
		if (r < 0)
			goto out;
	}
	confdir = tether_strdup(in->config_path);
	slash = strrchr(confdir, '/');
	if (slash)
		*slash = '\0';
	r = tether_mkdirs(confdir, 0755, err);
	if (r < 0)
		goto out;
	r = tether_mkdirs(in->state_dir, 0700, err);
	if (r < 0)
		goto out;
	chmod(in->state_dir, 0700);
	r = tether_write_atomic(in->config_path, config_text, strlen(config_text), 0640, err);
out:
	free(confdir);
	return r;
}

int tether_instance_delete(const tether_instance *in, tether_error *err)
{
	if (!tether_instance_exists(in))
		return tether_instance_missing(in, err);
	if (unlink(in->config_path) < 0)
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot remove %s: %s",
		                      in->config_path, strerror(errno));
	{
		char *lock = tether_asprintf("%s.lock", in->config_path);   /* tether_config_apply's */
		unlink(lock);
		free(lock);
	}
	tether_rmtree(in->state_dir);
	tether_rmtree(in->run_dir);
	if (in->base_dir)
		tether_rmtree(in->base_dir);
	return 0;
}

static int cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int tether_instance_list(const char *program, const char *home,
                         char ***names, tether_error *err)
{
	const char *dir = home && *home ? home : SYS_CONF;
	DIR *d;
	struct dirent *e;
	char **v = NULL;
	int n = 0;
	size_t plen = strlen(program);

	d = opendir(dir);
	if (!d) {
		if (errno == ENOENT) {
			*names = NULL;
			return 0;
		}
		return tether_err_set(err, TETHER_ERR_IO, TETHER_CAT_IO, "cannot read %s: %s",
		                      dir, strerror(errno));
	}
	while ((e = readdir(d))) {
		const char *nm = e->d_name;
		char *inst = NULL;
		if (strncmp(nm, program, plen) || nm[plen] != '-')
			continue;
		if (home && *home) {
			char *p = tether_asprintf("%s/%s/%s.ini", dir, nm, program);
			if (tether_path_exists(p))
				inst = tether_strdup(nm + plen + 1);
			free(p);
		} else {
			size_t l = strlen(nm);
			if (l > plen + 5 && !strcmp(nm + l - 4, ".ini")) {
				inst = tether_strdup(nm + plen + 1);
				inst[strlen(inst) - 4] = '\0';
			}
		}
		if (!inst)
			continue;
		v = realloc(v, (size_t)(n + 1) * sizeof(*v));
		if (!v)
			abort();
		v[n++] = inst;
	}
	closedir(d);
	if (n)
		qsort(v, (size_t)n, sizeof(*v), cmpstr);
	*names = v;
	return n;
}
