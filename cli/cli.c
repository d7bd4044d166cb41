#include "config.h"
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include "cli.h"
#include "fsutil.h"
#include "log.h"
#include "util.h"

static const cli_opt common_opts[] = {
	{ "instance", required_argument, OPT_INSTANCE, "NAME", "the instance to act on (default: \"default\")" },
	{ "home", required_argument, OPT_HOME, "DIR", "keep config and state under DIR instead of /etc/tether and /var/lib/tether (also $TETHER_HOME)" },
	{ "json", no_argument, OPT_JSON, NULL, "print data as JSON" },
	{ "provider", required_argument, OPT_PROVIDER, "NAME", "crypto provider to use (default: [tether] provider, else openssl)" },
	{ "help", no_argument, OPT_HELP, NULL, "show this help" },
	{ NULL, 0, 0, NULL, NULL }
};

int cli_usage_error(cli_ctx *c, const char *fmt, ...)
{
	char msg[TETHER_ERROR_DETAIL_MAX - 96];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return tether_err_set(&c->err, TETHER_ERR_USAGE, TETHER_CAT_BAD_INPUT,
	                      "%s (see '%s %s --help')", msg, c->prog->progname, c->verb);
}

static void print_opts(const cli_opt *o)
{
	for (; o && o->name; o++) {
		char left[64];
		snprintf(left, sizeof(left), "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
		printf("  %-30s %s\n", left, o->help);
	}
}

int cli_parse(cli_ctx *c, int argc, char **argv, const cli_opt *opts,
              const char *usage, const char *description,
              int (*on_opt)(cli_ctx *c, int id, const char *val, void *arg),
              void *arg, int *optind_out)
{
	struct option lo[64];
	size_t n = 0, i;
	int r = 0;

	for (i = 0; opts && opts[i].name && n < 60; i++, n++)
		lo[n] = (struct option){ opts[i].name, opts[i].has_arg, NULL, opts[i].id };
	for (i = 0; common_opts[i].name; i++, n++)
		lo[n] = (struct option){ common_opts[i].name, common_opts[i].has_arg, NULL, common_opts[i].id };
	lo[n] = (struct option){ NULL, 0, NULL, 0 };

	optind = 0; /* full re-initialisation (GNU) */
	opterr = 0;
	for (;;) {
		int li = -1, o = getopt_long(argc, argv, ":", lo, &li);
		if (o == -1)
			break;
		switch (o) {
		case OPT_INSTANCE: c->instance_name = optarg; break;
		case OPT_HOME: c->home = optarg; break;
		case OPT_JSON: c->json = 1; break;
		case OPT_PROVIDER: c->provider = optarg; break;
		case OPT_HELP:
			printf("Usage: %s %s %s\n\n%s\n\nOptions:\n", c->prog->progname, c->verb,
			       usage ? usage : "[OPTIONS]", description);
			print_opts(opts);
			print_opts(common_opts);
			return 1;
		case '?':
			return cli_usage_error(c, "unknown option '%s'", argv[optind - 1]);
		case ':':
			return cli_usage_error(c, "option '%s' needs a value", argv[optind - 1]);
		default:
			if (!on_opt)
				return cli_usage_error(c, "unexpected option '%s'", argv[optind - 1]);
			r = on_opt(c, o, optarg, arg);
			if (r < 0)
				return r;
		}
	}
	if (!c->home)
		c->home = getenv("TETHER_HOME");
	*optind_out = optind;
	return 0;
}

/* See cli.h. */
void cli_options_first(int argc, char **argv, const cli_opt *opts)
{
	static const char *const common_with_value[] = { "instance", "home", "provider", NULL };
	char **pos = tether_xcalloc((size_t)argc + 1, sizeof(char *));
	int i, o = 1, np = 0, k;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		size_t n;
		int takes = 0;

		if (!strcmp(a, "--")) {
			break;
		}
		if (strncmp(a, "--", 2)) {
			pos[np++] = argv[i];
			continue;
		}
		n = strcspn(a + 2, "=");
		for (k = 0; opts && opts[k].name; k++)
			if (strlen(opts[k].name) == n && !strncmp(opts[k].name, a + 2, n))
				takes = opts[k].has_arg == required_argument;
		for (k = 0; common_with_value[k]; k++)
			if (strlen(common_with_value[k]) == n && !strncmp(common_with_value[k], a + 2, n))
				takes = 1;
		argv[o++] = argv[i];
		if (takes && !a[2 + n] && i + 1 < argc)
			argv[o++] = argv[++i];
	}
	for (; i < argc; i++)           /* "--" and whatever follows it */
		pos[np++] = argv[i];
	for (k = 0; k < np; k++)
		argv[o++] = pos[k];
	free(pos);
}

static const char *prov_config_get(void *arg, const char *section, const char *key)
{
	cli_ctx *c = arg;
	return tether_config_get(c->conf, section, key, NULL);
}

int cli_open_instance(cli_ctx *c)
{
	int r;

	if (c->inst)
		return 0;
	r = tether_instance_init(c->prog->program, c->instance_name, c->home, &c->inst, &c->err);
	if (r < 0)
		return r;
	tether_instance_args(c->inst->name, c->inst->home, c->args, sizeof(c->args));
	c->args_fixed = 1;
	if (!tether_instance_exists(c->inst))
		return tether_instance_missing(c->inst, &c->err);
	r = tether_config_load(c->inst->config_path, c->prog->schema, &c->conf, &c->err);
	if (r < 0)
		return r;
	return 0;
}

const char *cli_args(cli_ctx *c)
{
	/* Once the instance is open the text is fixed (filled then, before a
	 * daemon starts threads that read it). */
	if (!c->args_fixed)
		tether_instance_args(c->inst ? c->inst->name : c->instance_name,
		                     c->inst ? c->inst->home : c->home, c->args, sizeof(c->args));
	return c->args;
}

int cli_open_provider(cli_ctx *c)
{
	tether_prov_opts po;
	const char *name;
	int r;

	r = cli_open_instance(c);
	if (r < 0 || c->prov)
		return r;
	name = c->provider ? c->provider : tether_config_get(c->conf, "tether", "provider", "openssl");
	memset(&po, 0, sizeof(po));
	po.state_dir = c->inst->state_dir;
	po.instance = c->inst->name;
	po.program = c->prog->program;
	po.config_get = prov_config_get;
	po.config_arg = c;
	r = tether_check_writable_dir(c->inst->state_dir, &c->err);
	if (r < 0)
		return r;
	return tether_provider_load(name, &po, &c->prov, &c->err);
}

void cli_print_json(json_t *v)
{
	char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
	if (s) {
		puts(s);
		free(s);
	}
	json_decref(v);
}

int cli_running_from_build_tree(void)
{
#ifdef _WIN32
	return 0;       /* the build directory holds the .exe and the DLLs together */
#else
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	size_t bl = strlen(TETHER_BUILD_DIR);

	if (n <= 0)
		return 0;
	exe[n] = '\0';
	return strncmp(exe, TETHER_BUILD_DIR, bl) == 0 && exe[bl] == '/';
#endif
}

static void print_verbs(const cli_program *prog, FILE *f)
{
	const cli_verb *v;
	fprintf(f, "Usage: %s VERB [OPTIONS]\n\nVerbs:\n", prog->progname);
	for (v = prog->verbs; v->name; v++)
		fprintf(f, "  %-26s %s\n", v->name, v->summary);
	fprintf(f, "\nEvery verb takes --help, --instance NAME and --home DIR.\n");
}

int cli_main(const cli_program *prog, int argc, char **argv)
{
	cli_ctx c;
	const cli_verb *v;
	int r;

	memset(&c, 0, sizeof(c));
	c.prog = prog;
	tether_log_init(prog->progname);
	if (argc < 2) {
		print_verbs(prog, stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		print_verbs(prog, stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version"))
		argv[1] = "version";
	for (v = prog->verbs; v->name; v++)
		if (!strcmp(v->name, argv[1]))
			break;
	if (!v->name) {
		fprintf(stderr, "%s: unknown verb '%s': run '%s --help' for the list\n",
		        prog->progname, argv[1], prog->progname);
		return EXIT_USAGE;
	}
	c.verb = v->name;
	r = v->fn(&c, argc - 1, argv + 1);
	if (r < 0) {
		fprintf(stderr, "%s %s: %s\n", prog->progname, c.verb,
		        c.err.detail[0] ? c.err.detail : tether_err_str(r));
		if (c.err.category == TETHER_CAT_PROTOCOL_VERSION ||
		    c.err.category == TETHER_CAT_NO_SHARED_CIPHER ||
		    c.err.category == TETHER_CAT_NO_SHARED_GROUP ||
		    c.err.category == TETHER_CAT_NO_SHARED_SIGALG ||
		    c.err.category == TETHER_CAT_BAD_PASSWORD ||
		    c.err.category == TETHER_CAT_KEY_NOT_EXPORTABLE ||
		    c.err.category == TETHER_CAT_PEER_PROTOCOL)
			fprintf(stderr, "hint: %s\n", tether_category_hint(c.err.category));
		r = r == TETHER_ERR_USAGE ? EXIT_USAGE : 1;
	}
	tether_provider_unload(c.prov);
	tether_config_free(c.conf);
	tether_instance_free(c.inst);
	return r;
}
