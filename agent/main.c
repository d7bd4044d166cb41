/* tether-agent: the verb table. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include "agent.h"
#include "cli_tls.h"

static int validate_mode(const char *v, char *why, size_t n)
{
	if (strcmp(v, "listening") && strcmp(v, "polling")) {
		snprintf(why, n, "expected listening or polling");
		return -1;
	}
	return 0;
}

const tether_config_key agent_schema[] = {
#ifdef _WIN32
	{ "tether", "provider", NULL, 0, "schannel", "crypto provider: schannel" },
	{ "schannel", "key-storage", NULL, 0, "auto", "auto (CNG, else CryptoAPI), cng or capi" },
#else
	{ "tether", "provider", NULL, 0, "openssl", "crypto provider: openssl or pkcs11" },
#endif
	{ "tether", "mode", validate_mode, 0, "listening", "listening (servers connect here) or polling (connect out to [polling] server)" },
	{ "polling", "server", tether_validate_hostport, 1, NULL, "a server to connect to in polling mode (repeatable)" },
	{ "polling", "connections", tether_validate_uint, 0, "1", "connections held to each server" },
	{ "polling", "proxy", NULL, 0, NULL, "reach the servers through this HTTP CONNECT proxy (http://HOST:PORT)" },
	{ "polling", "proxy-credentials-file", NULL, 0, NULL, "file with USER:PASSWORD for the proxy" },
	{ "listen", "address", tether_validate_hostport, 0, "0.0.0.0:10933", "where a listening agent accepts servers" },
	{ "listen", "landing-page", tether_validate_bool, 0, "on", "answer plain HTTPS callers with a one-line page" },
	{ "log", "level", tether_validate_log_level, 0, "info", "error, warning, info or debug" },
	{ "log", "file", NULL, 0, NULL, "also write the log to this file" },
	{ "timeouts", "handshake", tether_validate_uint, 0, "10", "seconds a TLS handshake may take" },
	{ "timeouts", "idle", tether_validate_uint, 0, "600", "seconds before an idle connection is closed" },
	{ "timeouts", "keepalive", tether_validate_uint, 0, "15", "seconds between keepalive pings on an idle connection" },
	{ "timeouts", "request", tether_validate_uint, 0, "3600", "seconds a request may run" },
	{ "services", "script", tether_validate_bool, 0, "on", "serve script.* requests (run scripts)" },
	{ "services", "file", tether_validate_bool, 0, "on", "serve file.* requests (upload, download)" },
	{ "files", "roots", NULL, 0, NULL, "comma-separated directories files may be read and written in (default: the work directory)" },
	{ "scripts", "retention", tether_validate_uint, 0, "604800", "seconds an uncompleted script's work directory is kept" },
	{ "engine", "loops", tether_validate_uint, 0, "0", "event loops (threads); 0: one per CPU" },
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

static const char default_config[] =
	"; tether-agent configuration.  Edit by hand or with 'tether-agent configure'.\n"
	"; 'tether-agent show-configuration' lists every key and its default.\n"
	"[tether]\n"
#ifdef _WIN32
	"provider = schannel\n"
#else
	"provider = openssl\n"
#endif
	"\n"
	"[listen]\n"
	"; address = 0.0.0.0:10933\n"
	"; landing-page = on\n"
	"\n"
	"[log]\n"
	"; level = info\n";

static const cli_verb verbs[] = {
	{ "create-instance", verb_create_instance, "create an instance (config and state directory)" },
	{ "delete-instance", verb_delete_instance, "delete an instance, its identity and state" },
	{ "list-instances", verb_list_instances, "list the instances on this machine" },
	{ "show-configuration", verb_show_configuration, "show paths and settings" },
	{ "run", verb_run, "run the agent in the foreground (listening or polling mode)" },
	{ "register-with", verb_register_with, "ask a server to register this agent (--server HOST:PORT --name NAME ...)" },
	{ "configure", verb_configure, "change trust and settings (--trust, --remove-trust, --listen, ...)" },
	{ "list-trust", verb_list_trust, "list trusted server and recovery thumbprints" },
	{ "new-certificate", verb_new_certificate, "generate a new certificate (replaces the current one)" },
	{ "show-thumbprint", verb_show_thumbprint, "show the certificate's thumbprints and details" },
	{ "export-certificate", verb_export_certificate, "export the certificate (PFX with key, or PEM)" },
	{ "import-certificate", verb_import_certificate, "replace the certificate from a PFX or PEM file" },
	{ "service", verb_service, "install, remove, start, stop or query the systemd service" },
#ifndef TETHER_NO_DOCTOR /* Windows build: doctor is not ported (docs/windows.md) */
	{ "doctor", verb_doctor, "check this instance and say how to fix what is wrong" },
#endif
	{ "version", verb_version, "show the version" },
	{ NULL, NULL, NULL }
};

static const cli_program program = {
	"agent", "tether-agent", verbs, agent_schema, default_config, NULL
};

int main(int argc, char **argv)
{
	return cli_main(&program, argc, argv);
}
