/* tether-server: the verb table. */
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
	{ NULL, NULL, NULL, 0, NULL, NULL }
};

static const char default_config[] =
	"; tether-server configuration.  Edit by hand or with 'tether-server configure'.\n"
	"; 'tether-server show-configuration' lists every key and its default.\n"
	"[tether]\n"
	"provider = openssl\n"
	"\n"
	"[polling]\n"
	"; address = 0.0.0.0:10943\n"
	"\n"
	"[log]\n"
	"; level = info\n";

static const cli_verb verbs[] = {
	{ "run", verb_server_run, "run the server daemon in the foreground" },
	{ "health", verb_health, "check targets' health (NAME..., --all or --tag TAG)" },
	{ "upload", verb_upload, "send a file to an agent (TARGET LOCAL REMOTE), SHA-256 checked" },
	{ "download", verb_download, "fetch a file from an agent (TARGET REMOTE LOCAL), SHA-256 checked" },
	{ "exec", verb_exec, "run a command on targets and stream its output (TARGET... -- COMMAND...)" },
	{ "run-script", verb_run_script, "run a script file on targets and stream its output (TARGET... FILE)" },
	{ "task", verb_task, "remote execution tasks: list, show, logs, cancel" },
	{ "create-instance", verb_create_instance, "create an instance (config and state directory)" },
	{ "delete-instance", verb_delete_instance, "delete an instance, its identity and state" },
	{ "list-instances", verb_list_instances, "list the instances on this machine" },
	{ "show-configuration", verb_show_configuration, "show paths and settings" },
	{ "configure", verb_server_configure, "change settings (--polling-listen, --polling-wait, --provider, --pkcs11-*)" },
	{ "new-certificate", verb_new_certificate, "generate a new STAGED certificate (the current one stays in use)" },
	{ "rotate-certificate", verb_rotate_certificate, "rotate the server's certificate on every target, no downtime" },
	{ "rotate-agent-certificate", verb_rotate_agent_certificate, "give agents new certificates over the trusted channel" },
	{ "rekey-all", verb_rekey_all, "re-key everything (optionally with a recovery identity)" },
	{ "check-certificates", verb_check_certificates, "flag weak (SHA-1, MD5, RSA < 2048) and expiring certificates" },
	{ "use-staged-certificate", verb_use_staged_certificate, "make the staged certificate current" },
	{ "show-thumbprint", verb_show_thumbprint, "show the certificate's thumbprints and details" },
	{ "export-certificate", verb_export_certificate, "export the certificate (PFX with key, or PEM)" },
	{ "import-certificate", verb_import_certificate, "replace the certificate from a PFX or PEM file" },
	{ "service", verb_service, "install, remove, start, stop or query the systemd service" },
	{ "doctor", verb_doctor, "check this instance and say how to fix what is wrong" },
	{ "registrations", verb_registrations, "agents asking to be registered: list, accept ID [--name NEW], reject ID" },
	{ "token", verb_token, "one-time registration tokens: create [--expires DURATION] [--tag T]..., list, revoke ID" },
	{ "target", verb_target, "manage the agents this server commands: add, list, show, remove, set-thumbprint" },
	{ "version", verb_version, "show the version" },
	{ NULL, NULL, NULL }
};

static const cli_program program = {
	"server", "tether-server", verbs, server_schema, default_config
};

int main(int argc, char **argv)
{
	return cli_main(&program, argc, argv);
}
