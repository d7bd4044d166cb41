/* tether-agent: verbs and shared declarations. */
#ifndef TETHER_AGENT_H
#define TETHER_AGENT_H

#include "cli.h"

extern const tether_config_key agent_schema[];

int verb_configure(cli_ctx *c, int argc, char **argv);
int verb_list_trust(cli_ctx *c, int argc, char **argv);
int verb_run(cli_ctx *c, int argc, char **argv);
#ifdef _WIN32
/* Start the drain SIGTERM starts, from any thread (the service's stop).
 * TETHER_ERR_NOT_FOUND when no daemon loop runs (yet, or any more). */
int agent_request_stop(void);
#endif
/* cli_register.c */
int verb_register_with(cli_ctx *c, int argc, char **argv);

#endif
