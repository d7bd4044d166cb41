/* Command-line framework shared by tether-agent and tether-server: a table
 * of verbs, common options, opening the instance, config and provider. */
#ifndef TETHER_CLI_H
#define TETHER_CLI_H

#include <getopt.h>
#include <stdio.h>
#include "conf.h"
#include "error.h"
#include "instance.h"
#include "loader.h"

#define EXIT_USAGE 2

typedef struct cli_ctx cli_ctx;

typedef struct cli_verb {
	const char *name;
	int (*fn)(cli_ctx *c, int argc, char **argv);
	const char *summary;
} cli_verb;

typedef struct cli_program {
	const char *program;                 /* "agent" / "server" */
	const char *progname;                /* "tether-agent" */
	const cli_verb *verbs;
	const tether_config_key *schema;
	const char *default_config;          /* template for create-instance */
	/* The program users run when this one runs behind a front that execs
	 * it (tether-server, server/front.c): the service unit names the
	 * front.  NULL: this program is the one users run. */
	const char *front;
} cli_program;

struct cli_ctx {
	const cli_program *prog;
	const char *verb;
	const char *instance_name;           /* --instance */
	const char *home;                    /* --home or $TETHER_HOME */
	const char *provider;                /* --provider */
	int json;                            /* --json */
	tether_instance *inst;
	tether_config *conf;
	tether_prov *prov;
	tether_error err;
	char args[600];                      /* cli_args() */
	int args_fixed;
};

/* Options common to every verb; verbs append their own. */
enum { OPT_INSTANCE = 1000, OPT_HOME, OPT_JSON, OPT_PROVIDER, OPT_HELP, OPT__VERB_BASE = 1100 };

typedef struct cli_opt {
	const char *name;
	int has_arg;            /* no_argument / required_argument */
	int id;
	const char *arg;        /* argument name for help, e.g. "FILE" */
	const char *help;
} cli_opt;

/* Parse argv for verb with its options.  Calls on_opt(c, id, optarg, arg)
 * for each verb option; common options are handled here.  Returns 0,
 * 1 if --help was printed (the verb returns 0), or TETHER_ERR_USAGE
 * (message already in c->err).  Positional arguments are left in
 * argv[*optind_out..argc). */
int cli_parse(cli_ctx *c, int argc, char **argv, const cli_opt *opts,
              const char *usage, const char *description,
              int (*on_opt)(cli_ctx *c, int id, const char *val, void *arg),
              void *arg, int *optind_out);
/* Move positional arguments after the options in argv[1..argc), keeping
 * their order and leaving "--" and what follows it last, so that
 * "VERB NAME --opt V" parses as documented.  opts: the verb's options (to
 * know which take a value); the common ones are known here. */
void cli_options_first(int argc, char **argv, const cli_opt *opts);
int cli_usage_error(cli_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* " --instance NAME --home DIR" (the parts that are not the default), for
 * commands that messages tell the user to run on this instance. */
const char *cli_args(cli_ctx *c);

/* Open the instance (must exist) and its config. */
int cli_open_instance(cli_ctx *c);
/* ...and load the provider. */
int cli_open_provider(cli_ctx *c);

int cli_main(const cli_program *prog, int argc, char **argv);

/* Does this process run a program inside the build tree (TETHER_BUILD_DIR),
 * as the tests and benchmarks do?  Then the programs and providers it uses
 * are the build tree's too. */
int cli_running_from_build_tree(void);

/* Print a json value to stdout (then decref it). */
struct json_t;
void cli_print_json(struct json_t *v);

/* Shared verbs. */
int verb_create_instance(cli_ctx *c, int argc, char **argv);
int verb_delete_instance(cli_ctx *c, int argc, char **argv);
int verb_list_instances(cli_ctx *c, int argc, char **argv);
int verb_show_configuration(cli_ctx *c, int argc, char **argv);
int verb_version(cli_ctx *c, int argc, char **argv);
int verb_new_certificate(cli_ctx *c, int argc, char **argv);
int verb_show_thumbprint(cli_ctx *c, int argc, char **argv);
int verb_export_certificate(cli_ctx *c, int argc, char **argv);
int verb_import_certificate(cli_ctx *c, int argc, char **argv);
int verb_use_staged_certificate(cli_ctx *c, int argc, char **argv);
int verb_service(cli_ctx *c, int argc, char **argv);
int verb_doctor(cli_ctx *c, int argc, char **argv);

#endif
