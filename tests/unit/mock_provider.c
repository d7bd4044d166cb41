/* Mock providers for the loader's failure cases, built as real modules:
 * MOCK_GOOD (a minimal valid table), MOCK_BADABI (major 99), MOCK_NOSYM
 * (no entry symbol), MOCK_SHORT (a table truncated to its header). */
#include "config.h"
#include <stddef.h>
#include <string.h>
#include "tether/provider.h"

static int mock_random(void *buf, size_t len)
{
	memset(buf, 0x42, len);
	return 0;
}

static void mock_deinit(tether_provider_ctx *p) { (void)p; }

static tether_provider table = {
#ifdef MOCK_BADABI
	.abi_major = 99,
#else
	.abi_major = TETHER_PROVIDER_ABI_MAJOR,
#endif
	.abi_minor = TETHER_PROVIDER_ABI_MINOR,
#ifdef MOCK_SHORT
	.size = offsetof(tether_provider, deinit),
#else
	.size = sizeof(tether_provider),
#endif
	.name = "mock",
	.version = "mock 1",
	.deinit = mock_deinit,
	.random_bytes = mock_random,
};

#ifndef MOCK_NOSYM
int tether_provider_init(const tether_host *host, const tether_provider **t,
                         tether_provider_ctx **ctx, tether_error *err);
int tether_provider_init(const tether_host *host, const tether_provider **t,
                         tether_provider_ctx **ctx, tether_error *err)
{
	(void)err;
	if (host->abi_major != TETHER_PROVIDER_ABI_MAJOR)
		return TETHER_ERR_ABI;
	*t = &table;
	*ctx = NULL;
	return 0;
}
#else
int tether_provider_init_misspelled(void);
int tether_provider_init_misspelled(void) { return (int)table.size; }
#endif
