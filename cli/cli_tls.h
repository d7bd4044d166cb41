/* The [tls] settings shared by both daemons (policy, fips-module,
 * max-version, resumption) and the validators of the [tls] and [pkcs11]
 * keys in both programs' schemas. */
#ifndef TETHER_CLI_TLS_H
#define TETHER_CLI_TLS_H
#include <stddef.h>
#include "cli.h"

int cli_validate_tls_policy(const char *v, char *why, size_t n);
int cli_validate_fips_module(const char *v, char *why, size_t n);
int cli_validate_tls_version(const char *v, char *why, size_t n);
int cli_validate_resumption(const char *v, char *why, size_t n);
int cli_validate_pkcs11_uri(const char *v, char *why, size_t n);
int cli_validate_ticket_lifetime(const char *v, char *why, size_t n);

/* [tls] ticket-lifetime, in seconds (validated when the config is
 * loaded): how long a session ticket issued by this side lives, and how
 * often its ticket key is renewed. */
unsigned cli_ticket_lifetime(cli_ctx *c);

/* The TETHER_TLS_POLICY_* flags the config asks for, for a context of the
 * loaded provider (c->prov): FIPS, FIPS_MODULE, TLS12_ONLY, and
 * RESUMPTION (on; or auto unless the provider keeps keys out of reach
 * (NO_KEY_EXPORT), where a ticket key on disk would be the one secret
 * outside the token: turning it on anyway logs that warning). */
unsigned cli_tls_policy(cli_ctx *c);

/* configure --pkcs11-module/--pkcs11-token/--pkcs11-pin-file, for both
 * programs' configure verbs: put CLI_PKCS11_OPTS in the verb's option
 * table, pass unknown ids to cli_pkcs11_opt, then cli_pkcs11_edits adds
 * the config edits (paths made absolute, checked) and cli_pkcs11_print
 * says what changed. */
typedef struct cli_pkcs11_opts {
	const char *v[3];               /* module, token, pin-file */
	char *abs[3];                   /* absolute paths, malloc'd */
} cli_pkcs11_opts;
enum { CLI_OPT_PKCS11_MODULE = OPT__VERB_BASE + 90, CLI_OPT_PKCS11_TOKEN, CLI_OPT_PKCS11_PIN_FILE };
#define CLI_PKCS11_OPTS \
	{ "pkcs11-module", required_argument, CLI_OPT_PKCS11_MODULE, "PATH|NAME", "PKCS#11 module of the pkcs11 provider: a path or a p11-kit module name ([pkcs11] module)" }, \
	{ "pkcs11-token", required_argument, CLI_OPT_PKCS11_TOKEN, "URI", "its token, an RFC 7512 URI such as pkcs11:token=LABEL ([pkcs11] token)" }, \
	{ "pkcs11-pin-file", required_argument, CLI_OPT_PKCS11_PIN_FILE, "FILE", "file whose first line is the token's user PIN, mode 0600 ([pkcs11] pin-file)" }
int cli_pkcs11_opt(cli_ctx *c, int id, const char *val, cli_pkcs11_opts *o);
/* Appends up to 3 edits at edits[*ne]. */
int cli_pkcs11_edits(cli_ctx *c, cli_pkcs11_opts *o, tether_config_edit *edits, size_t *ne);
void cli_pkcs11_print(cli_pkcs11_opts *o);
/* Free without printing (on failure). */
void cli_pkcs11_print_discard(cli_pkcs11_opts *o);
#endif
