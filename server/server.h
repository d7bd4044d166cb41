/* tether-server: verbs and shared declarations. */
#ifndef TETHER_SERVER_H
#define TETHER_SERVER_H

#include "cli.h"

extern const tether_config_key server_schema[];

#endif
