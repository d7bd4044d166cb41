/* The services this agent offers, by method prefix (agent/service.h). */
#include "config.h"
#include <stddef.h>
#include "service.h"

const agent_service *const agent_services[] = {
	&agent_service_script,
	&agent_service_file,
	NULL
};
