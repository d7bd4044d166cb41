/* Common includes for cmocka unit tests. */
#ifndef TETHER_TEST_H
#define TETHER_TEST_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fresh temporary directory; removed by the caller with tether_rmtree. */
static inline char *test_tmpdir(void)
{
	char tmpl[] = "/tmp/tether-test-XXXXXX";
	char *d = mkdtemp(tmpl);
	assert_non_null(d);
	return strdup(d);
}
#endif
