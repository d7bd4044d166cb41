/* tether-server: verbs and shared declarations. */
#ifndef TETHER_SERVER_H
#define TETHER_SERVER_H

#include "cli.h"

extern const tether_config_key server_schema[];

/* cli_target.c: target add | list | show | remove | set-thumbprint */
int verb_target(cli_ctx *c, int argc, char **argv);
/* daemon.c */
int verb_server_run(cli_ctx *c, int argc, char **argv);
/* cli_rotate.c */
int verb_rotate_certificate(cli_ctx *c, int argc, char **argv);
int verb_rotate_agent_certificate(cli_ctx *c, int argc, char **argv);
int verb_rekey_all(cli_ctx *c, int argc, char **argv);
int verb_check_certificates(cli_ctx *c, int argc, char **argv);
/* cli_health.c */
int verb_health(cli_ctx *c, int argc, char **argv);
/* cli_file.c */
int verb_upload(cli_ctx *c, int argc, char **argv);
int verb_download(cli_ctx *c, int argc, char **argv);
/* cli_exec.c: exec, run-script, task list | show | logs | cancel */
int verb_exec(cli_ctx *c, int argc, char **argv);
int verb_run_script(cli_ctx *c, int argc, char **argv);
int verb_task(cli_ctx *c, int argc, char **argv);
/* cli_registration.c: registrations list | accept | reject, token create | list | revoke */
int verb_registrations(cli_ctx *c, int argc, char **argv);
int verb_token(cli_ctx *c, int argc, char **argv);
/* cli_configure.c */
int verb_server_configure(cli_ctx *c, int argc, char **argv);

#endif
