/* tether-server configure: change the server's settings in its config file
 * (edited in place, comments kept; a change that would leave it invalid is
 * refused).  Targets and their pins are managed with 'target'. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include "server.h"
#include "cli_tls.h"

typedef struct configure_opts {
	cli_pkcs11_opts pk11;
} configure_opts;

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	configure_opts *o = arg;

	return cli_pkcs11_opt(c, id, val, &o->pk11);
}

static const cli_opt configure_opts_spec[] = {
	CLI_PKCS11_OPTS,
	{ NULL, 0, 0, NULL, NULL }
};

int verb_server_configure(cli_ctx *c, int argc, char **argv)
{
	tether_config_edit edits[8];
	configure_opts o;
	size_t ne = 0;
	int oi, r;

	memset(&o, 0, sizeof(o));
	r = cli_parse(c, argc, argv, configure_opts_spec,
	              "[--provider openssl|pkcs11] [--pkcs11-module PATH|NAME] [--pkcs11-token URI] "
	              "[--pkcs11-pin-file FILE]",
	              "Change the server's settings. The config file is edited in place (comments kept);\n"
	              "a change that would leave it invalid is refused. Restart the server to apply.",
	              on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (c->provider)
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "tether", "provider", c->provider };
	r = cli_pkcs11_edits(c, &o.pk11, edits, &ne);
	if (r < 0)
		goto out;
	if (!ne) {
		r = cli_usage_error(c, "nothing to change: give --provider, --pkcs11-module, "
		                       "--pkcs11-token or --pkcs11-pin-file");
		goto out;
	}
	r = cli_open_instance(c);
	if (r < 0)
		goto out;
	r = tether_config_apply(c->inst->config_path, server_schema, edits, ne, &c->err);
	if (r < 0)
		goto out;
	if (c->provider)
		printf("Provider set to %s\n", c->provider);
	cli_pkcs11_print(&o.pk11);
	printf("Restart the server to apply.\n");
	return 0;
out:
	cli_pkcs11_print_discard(&o.pk11);
	return r;
}
