/* tether-server: the verb table. */
#include "config.h"
#include "server.h"

const tether_config_key server_schema[] = {
	{ "tether", "provider", NULL, 0, "openssl", "crypto provider: openssl or pkcs11" },
	{ "polling", "address", tether_validate_hostport, 0, "0.0.0.0:10943", "where polling agents connect" },
	{ "admin", "group", NULL, 0, NULL, "group (besides root) allowed to use the admin socket" },
	{ "log", "level", tether_validate_log_level, 0, "info", "error, warning, info or debug" },
	{ "log", "file", NULL, 0, NULL, "also write the log to this file" },
	{ "timeouts", "connect", tether_validate_uint, 0, "10", "seconds to connect to a listening agent" },
	{ "timeouts", "handshake", tether_validate_uint, 0, "10", "seconds a TLS handshake may take" },
	{ "timeouts", "idle", tether_validate_uint, 0, "600", "seconds before an idle connection is closed" },
	{ "timeouts", "keepalive", tether_validate_uint, 0, "15", "seconds between keepalive pings on an idle connection" },
	{ "timeouts", "request", tether_validate_uint, 0, "3600", "seconds a request may run" },
	{ "openssl", "key-passphrase-file", NULL, 0, NULL, "file with the passphrase that encrypts the private key" },
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
	{ "create-instance", verb_create_instance, "create an instance (config and state directory)" },
	{ "delete-instance", verb_delete_instance, "delete an instance, its identity and state" },
	{ "list-instances", verb_list_instances, "list the instances on this machine" },
	{ "show-configuration", verb_show_configuration, "show paths and settings" },
	{ "new-certificate", verb_new_certificate, "generate a new STAGED certificate (the current one stays in use)" },
	{ "use-staged-certificate", verb_use_staged_certificate, "make the staged certificate current" },
	{ "show-thumbprint", verb_show_thumbprint, "show the certificate's thumbprints and details" },
	{ "export-certificate", verb_export_certificate, "export the certificate (PFX with key, or PEM)" },
	{ "import-certificate", verb_import_certificate, "replace the certificate from a PFX or PEM file" },
	{ "service", verb_service, "install, remove, start, stop or query the systemd service" },
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
