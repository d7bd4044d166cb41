/*
 * tether-server, the command users run: a small front.  The verbs that
 * only talk to the running daemon over its admin socket (exec,
 * run-script, task, health) run here, in a program that loads neither
 * libtether nor SQLite nor libuv (libsqlite3 and libuv alone make some
 * 1 900 symbol bindings at every start: `tether-server exec` used 0.6-1 ms
 * less CPU per command without them).
 * Those verbs are the same code (cli/cli.c, server/cli_exec.c,
 * server/cli_health.c) as in the whole program.  Every other verb, and
 * no verb, --help, --version or an unknown verb, is the whole program's:
 * this one execs it with the same arguments, so it is as if it had been
 * run itself (same process, output, exit status).  The whole program is
 * $(pkglibexecdir)/tether-server, or server/tether-server in the build
 * tree when this front runs from there (as the providers are found).
 */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "server.h"

static const cli_verb lean_verbs[] = {
	{ "health", verb_health, NULL },
	{ "exec", verb_exec, NULL },
	{ "run-script", verb_run_script, NULL },
	{ "task", verb_task, NULL },
	{ NULL, NULL, NULL }
};

/* cli_main only sees the verbs above (the whole program lists them all). */
static const cli_program program = {
	"server", "tether-server", lean_verbs, server_schema, NULL, NULL
};

int main(int argc, char **argv)
{
	const char *full = cli_running_from_build_tree() ? TETHER_BUILD_DIR "/server/tether-server"
	                                                 : TETHER_PKGLIBEXECDIR "/tether-server";
	const cli_verb *v;

	if (argc >= 2)
		for (v = lean_verbs; v->name; v++)
			if (!strcmp(argv[1], v->name))
				return cli_main(&program, argc, argv);
	execv(full, argv);
	fprintf(stderr, "tether-server: cannot run %s: %s: tether is not installed completely "
	        "(reinstall it)\n", full, strerror(errno));
	return 1;
}
