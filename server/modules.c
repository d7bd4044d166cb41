/* The daemon's modules (server/srvapi.h). */
#include "config.h"
#include <stddef.h>
#include "srvapi.h"

const srv_module *const srv_modules[] = {
	&srv_module_tasks,
	&srv_module_transfer,
	&srv_module_registration,
	&srv_module_rotation,
	NULL
};
