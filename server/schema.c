/* tether-server's configuration keys: shared by the whole program
 * (server/main.c) and its front (server/front.c), which loads the
 * configuration as the verbs it runs always have. */
#include "config.h"
#include "server.h"
#include "cli_tls.h"

const tether_config_key server_schema[] = {
	{ "tether", "provider", NULL, 0, "openssl", "crypto provider: openssl or pkcs11" },
	{ "polling", "address", tether_validate_hostport_or_off, 0, "0.0.0.0:10943", "where polling agents connect (off: no polling listener)" },
	{ "polling", "wait", tether_validate_uint, 0, "30", "seconds a request waits for a polling agent that is not connected" },
	{ "registration", "enabled", tether_validate_bool, 0, "off", "on: agents whose certificate is not registered may ask to be (tether-agent register-with)" },
	{ "registration", "max-pending", tether_validate_uint, 0, "1000", "registrations waiting for approval at once" },
	{ "registration", "rate", tether_validate_uint, 0, "30", "register requests per minute per source address" },
	{ "admin", "group", NULL, 0, NULL, "group (besides root) allowed to use the admin socket" },
	{ "log", "level", tether_validate_log_level, 0, "info", "error, warning, info or debug" },
	{ "log", "file", NULL, 0, NULL, "also write the log to this file" },
	{ "timeouts", "connect", tether_validate_uint, 0, "10", "seconds to connect to a listening agent" },
	{ "timeouts", "handshake", tether_validate_uint, 0, "10", "seconds a TLS handshake may take" },
	{ "timeouts", "idle", tether_validate_uint, 0, "600", "seconds before an idle connection is closed" },
	{ "timeouts", "keepalive", tether_validate_uint, 0, "15", "seconds between keepalive pings on an idle connection" },
	{ "timeouts", "request", tether_validate_uint, 0, "3600", "seconds a request may run" },
	{ "openssl", "key-passphrase-file", NULL, 0, NULL, "file with the passphrase that encrypts the private key" },
	{ "pkcs11", "module", NULL, 0, NULL, "PKCS#11 module: a path, or the name of a module registered with p11-kit" },
	{ "pkcs11", "token", cli_validate_pkcs11_uri, 0, NULL, "the token, as an RFC 7512 URI (pkcs11:token=LABEL)" },
	{ "pkcs11", "pin-file", NULL, 0, NULL, "file whose first line is the token's user PIN (mode 0600)" },
	{ "tls", "policy", cli_validate_tls_policy, 0, "default", "default, or fips: only FIPS-approved algorithms" },
	{ "tls", "fips-module", cli_validate_fips_module, 0, "off", "required: refuse to start unless OpenSSL's FIPS module is active" },
	{ "tls", "max-version", cli_validate_tls_version, 0, "1.3", "highest TLS version: 1.3, or 1.2" },
	{ "tls", "resumption", cli_validate_resumption, 0, "auto", "session resumption: on, off, or auto (off with the pkcs11 provider)" },
	{ "tls", "ticket-lifetime", cli_validate_ticket_lifetime, 0, "43200", "seconds a session ticket this side issues lives; its key is renewed as often (10 to 604800)" },
	{ NULL, NULL, NULL, 0, NULL, NULL }
};
