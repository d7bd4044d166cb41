/* tether-server: the verb table. */
#include "config.h"
#include "server.h"

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

/* Installed in $(pkglibexecdir): users run the front, bin/tether-server
 * (server/front.c), which execs this for every verb it does not run. */
static const cli_program program = {
	"server", "tether-server", verbs, server_schema, default_config, "tether-server"
};

int main(int argc, char **argv)
{
	return cli_main(&program, argc, argv);
}
