/* Windows build of tether-ping: the probe handshakes (tools/ping_probe.c)
 * drive OpenSSL directly with parameter sets no Schannel call can express
 * one by one, and there is no OpenSSL in the Windows build.  Here they say
 * so instead of running; 'connect' itself (through the Schannel provider)
 * works as on Linux. */
#ifdef _WIN32
#include "config.h"
#include <jansson.h>
#include "error.h"
#include "ping.h"

int ping_probe_run(const char *host, int port, unsigned timeout_ms,
                   ping_probe_report *out, tether_error *err)
{
	(void)host;
	(void)port;
	(void)timeout_ms;
	(void)out;
	return tether_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
	                      "the probe handshakes need OpenSSL, which the Windows build of tether-ping "
	                      "does not have; run 'tether-ping connect' from a Linux machine to find which "
	                      "TLS parameter the peer refuses");
}

/* Never reached: ping_probe_run never reports probes that ran. */
json_t *ping_probe_json(const ping_probe_report *rep)
{
	(void)rep;
	return json_null();
}

void ping_probe_print(const ping_probe_report *rep)
{
	(void)rep;
}
#endif /* _WIN32 */
