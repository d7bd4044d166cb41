/* Logging: one-line operator messages, and debug tracing switched on per
 * area with TETHER_DEBUG=tls,rpc,prov (or "all").  Never log a secret. */
#ifndef TETHER_LOG_H
#define TETHER_LOG_H

#include <stdarg.h>
#include "tether/provider.h"

/* program: "tether-agent"...  Reads TETHER_DEBUG. */
void tether_log_init(const char *program);
/* Also append operator messages to this file (NULL: stderr only). */
int tether_log_set_file(const char *path);
/* Minimum level printed for operator messages (default INFO). */
void tether_log_set_level(int level);
/* Quiet: only errors to stderr (CLI verbs). */
void tether_log_set_quiet(int quiet);
int tether_debug_enabled(const char *area);

void tether_logv(int level, const char *area, const char *fmt, va_list ap);
void tether_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tether_debug(const char *area, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) tether_log(TETHER_LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  tether_log(TETHER_LOG_WARN, __VA_ARGS__)
#define log_info(...)  tether_log(TETHER_LOG_INFO, __VA_ARGS__)

/* The logging callback handed to providers. */
void tether_log_host_cb(void *host_arg, int level, const char *area,
                        const char *fmt, va_list ap);

#endif
