/* [tls] settings of both daemons, and validators for [tls] and [pkcs11]. */
#include "config.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <string.h>
#include "cli_tls.h"
#include "log.h"
#include "tether/provider.h"
#include "ticketkey.h"

static int one_of(const char *v, char *why, size_t n, const char *a, const char *b,
                  const char *c)
{
	if (strcmp(v, a) == 0 || strcmp(v, b) == 0 || (c && strcmp(v, c) == 0))
		return 0;
	if (c)
		snprintf(why, n, "expected %s, %s or %s", a, b, c);
	else
		snprintf(why, n, "expected %s or %s", a, b);
	return -1;
}

int cli_validate_tls_policy(const char *v, char *why, size_t n)
{
	return one_of(v, why, n, "default", "fips", NULL);
}

int cli_validate_fips_module(const char *v, char *why, size_t n)
{
	return one_of(v, why, n, "off", "required", NULL);
}

int cli_validate_tls_version(const char *v, char *why, size_t n)
{
	return one_of(v, why, n, "1.3", "1.2", NULL);
}

int cli_validate_resumption(const char *v, char *why, size_t n)
{
	return one_of(v, why, n, "auto", "on", "off");
}

int cli_validate_ticket_lifetime(const char *v, char *why, size_t n)
{
	char *end;
	unsigned long l;

	l = (*v >= '0' && *v <= '9') ? strtoul(v, &end, 10) : 0;
	if (*v < '0' || *v > '9' || *end != '\0' || l < TETHER_TICKET_LIFETIME_MIN ||
	    l > TETHER_TICKET_LIFETIME_MAX) {
		snprintf(why, n, "expected seconds from %d to %d (7 days)", TETHER_TICKET_LIFETIME_MIN,
		         TETHER_TICKET_LIFETIME_MAX);
		return -1;
	}
	return 0;
}

unsigned cli_ticket_lifetime(cli_ctx *c)
{
	const char *v = tether_config_get(c->conf, "tls", "ticket-lifetime", NULL);
	char why[80];

	if (!v || cli_validate_ticket_lifetime(v, why, sizeof(why)) < 0)
		return TETHER_TICKET_LIFETIME_DEFAULT;
	return (unsigned)strtoul(v, NULL, 10);
}

int cli_validate_pkcs11_uri(const char *v, char *why, size_t n)
{
	if (strncmp(v, "pkcs11:", 7) != 0) {
		snprintf(why, n, "expected an RFC 7512 URI such as pkcs11:token=MyToken");
		return -1;
	}
	return 0;
}

unsigned cli_tls_policy(cli_ctx *c)
{
	const char *res = tether_config_get(c->conf, "tls", "resumption", "auto");
	unsigned pflags = c->prov && c->prov->t ? c->prov->t->flags : 0;
	unsigned policy = 0;

	if (strcmp(tether_config_get(c->conf, "tls", "policy", "default"), "fips") == 0)
		policy |= TETHER_TLS_POLICY_FIPS;
	if (strcmp(tether_config_get(c->conf, "tls", "fips-module", "off"), "required") == 0)
		policy |= TETHER_TLS_POLICY_FIPS_MODULE;
	if (strcmp(tether_config_get(c->conf, "tls", "max-version", "1.3"), "1.2") == 0)
		policy |= TETHER_TLS_POLICY_TLS12_ONLY;
	if (strcmp(res, "on") == 0) {
		policy |= TETHER_TLS_POLICY_RESUMPTION;
		if (pflags & TETHER_PROVIDER_NO_KEY_EXPORT)
			tether_log(TETHER_LOG_WARN, "[tls] resumption = on with the %s provider: the "
			           "session-ticket key is kept on disk in the state directory, a "
			           "secret outside the token, and a resumed handshake (this side "
			           "as TLS server or as client) does not use the token's key",
			           c->prov->t->name ? c->prov->t->name : "current");
	} else if (strcmp(res, "auto") == 0 && !(pflags & TETHER_PROVIDER_NO_KEY_EXPORT)) {
		policy |= TETHER_TLS_POLICY_RESUMPTION;
	}
	return policy;
}

int cli_pkcs11_opt(cli_ctx *c, int id, const char *val, cli_pkcs11_opts *o)
{
	if (id < CLI_OPT_PKCS11_MODULE || id > CLI_OPT_PKCS11_PIN_FILE)
		return 0;
	o->v[id - CLI_OPT_PKCS11_MODULE] = val;
	(void)c;
	return 0;
}

static const char *const pk11_keys[3] = { "module", "token", "pin-file" };

int cli_pkcs11_edits(cli_ctx *c, cli_pkcs11_opts *o, tether_config_edit *edits, size_t *ne)
{
	char why[128], buf[PATH_MAX];
	struct stat st;
	int i;

	if (o->v[1] && cli_validate_pkcs11_uri(o->v[1], why, sizeof(why)) < 0)
		return cli_usage_error(c, "--pkcs11-token '%s': %s", o->v[1], why);
	if (o->v[0] && strchr(o->v[0], '/')) {
		if (!realpath(o->v[0], buf))
			return cli_usage_error(c, "--pkcs11-module '%s': no such file (give the module's "
			                          "path, or the name of a module registered with p11-kit)",
			                       o->v[0]);
		o->abs[0] = strdup(buf);
	}
	if (o->v[2]) {
		if (!realpath(o->v[2], buf) || stat(buf, &st) != 0)
			return cli_usage_error(c, "--pkcs11-pin-file '%s': no such file (create it with the "
			                          "token's user PIN on its first line, mode 0600)", o->v[2]);
		if (st.st_mode & 0077)
			fprintf(stderr, "warning: the PIN file %s can be read by other users: chmod 600 it\n", buf);
		o->abs[2] = strdup(buf);
	}
	for (i = 0; i < 3; i++)
		if (o->v[i])
			edits[(*ne)++] = (tether_config_edit){ TETHER_CFG_SET, "pkcs11", pk11_keys[i],
			                                       o->abs[i] ? o->abs[i] : o->v[i] };
	return 0;
}

void cli_pkcs11_print(cli_pkcs11_opts *o)
{
	int i;

	for (i = 0; i < 3; i++) {
		if (o->v[i])
			printf("[pkcs11] %s set to %s\n", pk11_keys[i], o->abs[i] ? o->abs[i] : o->v[i]);
		free(o->abs[i]);
		o->abs[i] = NULL;
	}
}

void cli_pkcs11_print_discard(cli_pkcs11_opts *o)
{
	int i;

	for (i = 0; i < 3; i++) {
		free(o->abs[i]);
		o->abs[i] = NULL;
	}
}
