#include "config.h"
#include "test.h"
#include "conf.h"
#include "fsutil.h"
#include "util.h"

static const tether_config_key schema[] = {
	{ "tether", "provider", NULL, 0, "openssl", "" },
	{ "listen", "address", tether_validate_hostport, 0, "0.0.0.0:10933", "" },
	{ "listen", "landing-page", tether_validate_bool, 0, "on", "" },
	{ "polling", "server", tether_validate_hostport, 1, NULL, "" },
	{ NULL, NULL, NULL, 0, NULL, NULL }
};

static const char *TEXT =
	"; a comment at the top\n"
	"[tether]\n"
	"provider = openssl ; inline\n"
	"\n"
	"# another comment\n"
	"[listen]\n"
	"address = 0.0.0.0:10933\n"
	"\n";

static void parse_and_get(void **s)
{
	tether_config *c;
	(void)s;
	assert_int_equal(tether_config_parse(TEXT, "t", schema, &c, NULL), 0);
	assert_string_equal(tether_config_get(c, "tether", "provider", NULL), "openssl");
	assert_string_equal(tether_config_get(c, "listen", "address", NULL), "0.0.0.0:10933");
	assert_string_equal(tether_config_get(c, "listen", "landing-page", "on"), "on");
	tether_config_free(c);
}

static void reject_unknown_and_invalid(void **s)
{
	tether_config *c = NULL;
	tether_error e;
	(void)s;
	assert_int_equal(tether_config_parse("[listen]\nadress = 1.2.3.4:5\n", "t", schema, &c, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "unknown key 'adress'"));
	assert_int_equal(tether_config_parse("[lisen]\naddress = 1.2.3.4:5\n", "t", schema, &c, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "unknown section [lisen]"));
	assert_int_equal(tether_config_parse("[listen]\naddress = nowhere\n", "t", schema, &c, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "HOST:PORT"));
	assert_int_equal(tether_config_parse("[listen]\naddress = a:1\naddress = b:2\n", "t", schema, &c, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "more than once"));
	assert_int_equal(tether_config_parse("[listen\n", "t", schema, &c, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "line 1"));
	assert_null(c);
}

static void edit_keeps_comments(void **s)
{
	char *out = NULL;
	tether_config_edit ed[] = {
		{ TETHER_CFG_SET, "listen", "address", "127.0.0.1:9" },
		{ TETHER_CFG_SET, "listen", "landing-page", "off" },
		{ TETHER_CFG_ADD, "polling", "server", "a:1" },
		{ TETHER_CFG_ADD, "polling", "server", "b:2" },
		{ TETHER_CFG_ADD, "polling", "server", "a:1" },
	};
	tether_config *c;
	const char *vals[4];
	(void)s;
	assert_int_equal(tether_config_edit_text(TEXT, ed, 5, &out, NULL), 0);
	assert_non_null(strstr(out, "; a comment at the top\n"));
	assert_non_null(strstr(out, "# another comment\n"));
	assert_non_null(strstr(out, "provider = openssl ; inline\n"));
	assert_non_null(strstr(out, "address = 127.0.0.1:9\nlanding-page = off\n"));
	assert_int_equal(tether_config_parse(out, "t", schema, &c, NULL), 0);
	assert_int_equal(tether_config_get_all(c, "polling", "server", vals, 4), 2);
	assert_string_equal(vals[0], "a:1");
	assert_string_equal(vals[1], "b:2");
	tether_config_free(c);
	/* remove one value */
	{
		char *out2 = NULL;
		tether_config_edit rm = { TETHER_CFG_REMOVE_VALUE, "polling", "server", "a:1" };
		assert_int_equal(tether_config_edit_text(out, &rm, 1, &out2, NULL), 0);
		assert_null(strstr(out2, "server = a:1"));
		assert_non_null(strstr(out2, "server = b:2"));
		free(out2);
	}
	free(out);
}

static void apply_refuses_invalid_and_keeps_file(void **s)
{
	char *d = test_tmpdir(), *p = tether_asprintf("%s/x.ini", d);
	unsigned char *before, *after;
	size_t lb, la;
	tether_error e;
	tether_config_edit bad = { TETHER_CFG_SET, "listen", "address", "not-an-address" };
	tether_config_edit good = { TETHER_CFG_SET, "listen", "address", "127.0.0.1:1234" };
	(void)s;
	assert_int_equal(tether_write_atomic(p, TEXT, strlen(TEXT), 0640, NULL), 0);
	assert_int_equal(tether_read_file(p, 1 << 20, &before, &lb, NULL), 0);
	assert_int_equal(tether_config_apply(p, schema, &bad, 1, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "left as it was"));
	assert_int_equal(tether_read_file(p, 1 << 20, &after, &la, NULL), 0);
	assert_int_equal(lb, la);
	assert_memory_equal(before, after, lb);
	free(after);
	assert_int_equal(tether_config_apply(p, schema, &good, 1, &e), 0);
	assert_int_equal(tether_read_file(p, 1 << 20, &after, &la, NULL), 0);
	assert_non_null(strstr((char *)after, "address = 127.0.0.1:1234"));
	free(before); free(after);
	tether_rmtree(d);
	free(p); free(d);
}

static void newline_injection_refused(void **s)
{
	char *out = NULL;
	tether_error e;
	tether_config_edit ed = { TETHER_CFG_SET, "tether", "provider", "openssl\n[evil]\nx = 1" };
	(void)s;
	assert_int_equal(tether_config_edit_text(TEXT, &ed, 1, &out, &e), TETHER_ERR_INVALID);
	assert_null(out);
}

/* Found by tests/fuzz/fuzz_conf.c: with a section header repeated and
 * empty the second time, a new key went into the section before it. */
static void edit_repeated_empty_section(void **s)
{
	static const char text[] = "[listen]\n\n[log]\nlevel = info\n[listen]\n\n"
	                           "[log]\naudit = on\n";
	tether_config_edit ed = { TETHER_CFG_SET, "listen", "address", "127.0.0.1:1" };
	tether_config *c = NULL;
	char *out = NULL;
	(void)s;
	assert_int_equal(tether_config_edit_text(text, &ed, 1, &out, NULL), 0);
	assert_int_equal(tether_config_parse(out, "t", NULL, &c, NULL), 0);
	assert_string_equal(tether_config_get(c, "listen", "address", "-"), "127.0.0.1:1");
	assert_string_equal(tether_config_get(c, "log", "address", "-"), "-");
	tether_config_free(c);
	free(out);
}

/* Found by tests/fuzz/fuzz_conf.c in CI: inih keeps the blanks of
 * "[ log]", the editor trimmed them, so 'configure' added a second
 * [log] level under a section the loader then called " log". */
static void section_header_blanks(void **s)
{
	static const char text[] = "[ log ]\nlevel = info\n";
	tether_config_edit ed = { TETHER_CFG_SET, "log", "level", "debug" };
	tether_config *c = NULL;
	char *out = NULL;
	(void)s;
	assert_int_equal(tether_config_parse(text, "t", NULL, &c, NULL), 0);
	assert_string_equal(tether_config_get(c, "log", "level", "-"), "info");
	tether_config_free(c);
	c = NULL;
	assert_int_equal(tether_config_edit_text(text, &ed, 1, &out, NULL), 0);
	assert_string_equal(out, "[ log ]\nlevel = debug\n");
	assert_int_equal(tether_config_parse(out, "t", NULL, &c, NULL), 0);
	assert_string_equal(tether_config_get(c, "log", "level", "-"), "debug");
	tether_config_free(c);
	free(out);
}

/* Found by fuzz_conf in a CI smoke run: inih cuts a section name to 49
 * bytes and reads a line of more than 199 bytes as two, so the editor and
 * the loader saw different sections.  Both now refuse such a text, saying
 * where; a UTF-8 BOM before the first header is read as inih reads it. */
static void limits_and_bom(void **s)
{
	char text[400];
	tether_config_edit ed = { TETHER_CFG_SET, "log", "level", "debug" };
	tether_config *c = NULL;
	tether_error e;
	char *out = NULL;
	(void)s;
	memset(text, 0, sizeof(text));
	snprintf(text, sizeof(text), "[log]\nlevel = %0250d\n", 1);
	assert_int_equal(tether_config_parse(text, "t", NULL, &c, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "line 2 is"));
	assert_int_equal(tether_config_edit_text(text, &ed, 1, &out, &e), TETHER_ERR_INVALID);
	assert_null(out);
	snprintf(text, sizeof(text), "[%060d]\nlevel = info\n", 0);
	assert_int_equal(tether_config_parse(text, "t", NULL, &c, &e), TETHER_ERR_INVALID);
	assert_non_null(strstr(e.detail, "section name"));
	assert_int_equal(tether_config_edit_text(text, &ed, 1, &out, &e), TETHER_ERR_INVALID);
	/* BOM */
	assert_int_equal(tether_config_edit_text("\xEF\xBB\xBF[log]\nlevel = info\n", &ed, 1, &out, &e), 0);
	assert_int_equal(tether_config_parse(out, "t", NULL, &c, &e), 0);
	assert_string_equal(tether_config_get(c, "log", "level", "-"), "debug");
	assert_int_equal((int)c->n, 1);
	tether_config_free(c);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parse_and_get),
		cmocka_unit_test(reject_unknown_and_invalid),
		cmocka_unit_test(edit_keeps_comments),
		cmocka_unit_test(apply_refuses_invalid_and_keeps_file),
		cmocka_unit_test(newline_injection_refused),
		cmocka_unit_test(edit_repeated_empty_section),
		cmocka_unit_test(section_header_blanks),
		cmocka_unit_test(limits_and_bom),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
