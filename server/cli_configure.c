/* tether-server configure: change the server's settings in its config file
 * (edited in place, comments kept; a change that would leave it invalid is
 * refused).  Targets and their pins are managed with 'target'. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include "server.h"
#include "cli_tls.h"

enum { O_POLLING_LISTEN = OPT__VERB_BASE + 80, O_POLLING_WAIT };

typedef struct configure_opts {
	cli_pkcs11_opts pk11;
	const char *polling_listen;
	const char *polling_wait;
} configure_opts;

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	configure_opts *o = arg;

	if (id == O_POLLING_LISTEN) {
		char why[128];
		if (strcmp(val, "off") && tether_validate_hostport(val, why, sizeof(why)) < 0)
			return cli_usage_error(c, "--polling-listen '%s': %s (or off)", val, why);
		o->polling_listen = val;
		return 0;
	}
	if (id == O_POLLING_WAIT) {
		char why[128];
		if (tether_validate_uint(val, why, sizeof(why)) < 0)
			return cli_usage_error(c, "--polling-wait '%s': %s", val, why);
		o->polling_wait = val;
		return 0;
	}
	return cli_pkcs11_opt(c, id, val, &o->pk11);
}

static const cli_opt configure_opts_spec[] = {
	{ "polling-listen", required_argument, O_POLLING_LISTEN, "ADDR:PORT|off", "where polling agents connect ([polling] address)" },
	{ "polling-wait", required_argument, O_POLLING_WAIT, "SECONDS", "how long a request waits for a polling agent that is not connected" },
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
	              "[--polling-listen ADDR:PORT|off] [--polling-wait S] [--provider openssl|pkcs11] [--pkcs11-module PATH|NAME] [--pkcs11-token URI] "
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
	if (o.polling_listen)
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "polling", "address", o.polling_listen };
	if (o.polling_wait)
		edits[ne++] = (tether_config_edit){ TETHER_CFG_SET, "polling", "wait", o.polling_wait };
	r = cli_pkcs11_edits(c, &o.pk11, edits, &ne);
	if (r < 0)
		goto out;
	if (!ne) {
		r = cli_usage_error(c, "nothing to change: give --polling-listen, --polling-wait, --provider, "
		                       "--pkcs11-module, --pkcs11-token or --pkcs11-pin-file");
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
	if (o.polling_listen)
		printf("Polling agents connect to %s\n", o.polling_listen);
	if (o.polling_wait)
		printf("Requests wait %s s for a polling agent that is not connected\n", o.polling_wait);
	cli_pkcs11_print(&o.pk11);
	printf("Restart the server to apply.\n");
	return 0;
out:
	cli_pkcs11_print_discard(&o.pk11);
	return r;
}
