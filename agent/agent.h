/* tether-agent: verbs and shared declarations. */
#ifndef TETHER_AGENT_H
#define TETHER_AGENT_H

#include "cli.h"

extern const tether_config_key agent_schema[];

int verb_configure(cli_ctx *c, int argc, char **argv);
int verb_list_trust(cli_ctx *c, int argc, char **argv);
int verb_run(cli_ctx *c, int argc, char **argv);
/* cli_register.c */
int verb_register_with(cli_ctx *c, int argc, char **argv);

#endif
