#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include "log.h"

static char g_program[64] = "tether";
static char g_debug[256];
static int g_level = TETHER_LOG_INFO;
static int g_quiet;
static FILE *g_file;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

void tether_log_init(const char *program)
{
	const char *d = getenv("TETHER_DEBUG");

	snprintf(g_program, sizeof(g_program), "%s", program ? program : "tether");
	snprintf(g_debug, sizeof(g_debug), "%s", d ? d : "");
}

int tether_log_set_file(const char *path)
{
	FILE *f = NULL;

	if (path) {
		f = fopen(path, "ae");
		if (!f)
			return -1;
		setvbuf(f, NULL, _IOLBF, 0);
	}
	pthread_mutex_lock(&g_lock);
	if (g_file)
		fclose(g_file);
	g_file = f;
	pthread_mutex_unlock(&g_lock);
	return 0;
}

void tether_log_set_level(int level) { g_level = level; }
void tether_log_set_quiet(int quiet) { g_quiet = quiet; }

int tether_debug_enabled(const char *area)
{
	size_t n;
	const char *p;

	if (!g_debug[0] || !area)
		return 0;
	if (!strcmp(g_debug, "all") || !strcmp(g_debug, "1"))
		return 1;
	n = strlen(area);
	for (p = g_debug; *p;) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == n && !strncmp(p, area, n))
			return 1;
		if (!e)
			break;
		p = e + 1;
	}
	return 0;
}

static const char *level_name(int level)
{
	switch (level) {
	case TETHER_LOG_ERROR: return "error";
	case TETHER_LOG_WARN: return "warning";
	case TETHER_LOG_INFO: return "info";
	default: return "debug";
	}
}

void tether_logv(int level, const char *area, const char *fmt, va_list ap)
{
	char msg[2048], ts[32];
	struct timespec now;
	struct tm tm;

	if (area) {
		if (!tether_debug_enabled(area))
			return;
	} else if (level > g_level) {
		return;
	}
	vsnprintf(msg, sizeof(msg), fmt, ap);
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);

	pthread_mutex_lock(&g_lock);
	if (!g_quiet || level == TETHER_LOG_ERROR || area) {
		if (area)
			fprintf(stderr, "%s.%03ldZ %s[%d] debug(%s): %s\n", ts,
			        now.tv_nsec / 1000000, g_program, (int)getpid(), area, msg);
		else
			fprintf(stderr, "%s.%03ldZ %s[%d] %s: %s\n", ts,
			        now.tv_nsec / 1000000, g_program, (int)getpid(),
			        level_name(level), msg);
	}
	if (g_file && !area)
		fprintf(g_file, "%s.%03ldZ %s[%d] %s: %s\n", ts, now.tv_nsec / 1000000,
		        g_program, (int)getpid(), level_name(level), msg);
	pthread_mutex_unlock(&g_lock);
}

void tether_log(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	tether_logv(level, NULL, fmt, ap);
	va_end(ap);
}

void tether_debug(const char *area, const char *fmt, ...)
{
	va_list ap;
	if (!tether_debug_enabled(area))
		return;
	va_start(ap, fmt);
	tether_logv(TETHER_LOG_DEBUG, area, fmt, ap);
	va_end(ap);
}

void tether_log_host_cb(void *host_arg, int level, const char *area,
                        const char *fmt, va_list ap)
{
	(void)host_arg;
	tether_logv(level, area, fmt, ap);
}
