/*
 * libFuzzer harness for the config loader and editor (core/conf.c): INI
 * text people write by hand, read with inih, edited in place by the
 * 'configure' verbs.
 * Input: byte 0 picks the edit (set, add, remove a value, unset) and
 * byte 1 the schema (none, or a small one with validators and a repeatable
 * key); the rest is the file's text (no NUL, as tether_config_load refuses
 * one).
 * Oracles: every failure has a message; a parsed config holds no NULL
 * strings; for a text that parses without a schema, a 'set' of a plain
 * key to a plain value gives a text that parses and yields that value.
 * Built and run by 'make fuzz-smoke' (tests/fuzz/Makefile.am).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const tether_config_key schema[] = {
	{ "listen", "address", tether_validate_hostport, 0, "0.0.0.0:10933", "" },
	{ "log", "level", tether_validate_log_level, 0, "info", "" },
	{ "log", "audit", tether_validate_bool, 0, "on", "" },
	{ "timeouts", "keepalive", tether_validate_uint, 0, "30", "" },
	{ "trust", "pin", NULL, 1, NULL, "" },
	{ NULL, NULL, NULL, 0, NULL, NULL },
};

static const char *const sections[] = { "listen", "log", "trust", "fz" };
static const char *const keys[] = { "address", "level", "pin", "k" };
static const char *const values[] = { "127.0.0.1:1", "debug", "x y", "" };

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tether_config *c = NULL, *c2 = NULL;
	tether_config_edit ed;
	tether_error err;
	char *text = NULL, *edited = NULL;
	const char *v;
	size_t i;
	int plain, r;

	if (size < 2 || size > 64 * 1024)
		return 0;
	if (memchr(data + 2, '\0', size - 2) != NULL)
		return 0;
	text = malloc(size - 1);
	if (text == NULL)
		abort();
	memcpy(text, data + 2, size - 2);
	text[size - 2] = '\0';

	memset(&err, 0, sizeof(err));
	r = tether_config_parse(text, "fuzz.conf", (data[1] & 1) ? schema : NULL,
	                        &c, &err);
	if (r != 0) {
		if (err.detail[0] == '\0')
			abort();
	} else {
		for (i = 0; i < c->n; i++)
			if (!c->e[i].section || !c->e[i].key || !c->e[i].value)
				abort();
		(void)tether_config_get(c, "listen", "address", NULL);
		tether_config_free(c);
		c = NULL;
	}

	ed.op = (tether_cfg_op)(data[0] & 3);
	ed.section = sections[(data[0] >> 2) & 3];
	ed.key = keys[(data[0] >> 4) & 3];
	ed.value = values[(data[0] >> 6) & 3];
	if (ed.op == TETHER_CFG_UNSET)
		ed.value = NULL;
	memset(&err, 0, sizeof(err));
	r = tether_config_edit_text(text, &ed, 1, &edited, &err);
	if (r != 0) {
		if (err.detail[0] == '\0')
			abort();
		goto out;
	}
	/* The oracle: a plain 'set' on a text inih accepts. */
	plain = ed.op == TETHER_CFG_SET && ed.value[0] != '\0' &&
	        strchr(ed.value, ' ') == NULL;
	if (plain && tether_config_parse(text, "fuzz.conf", NULL, &c, &err) == 0) {
		if (tether_config_parse(edited, "fuzz.conf", NULL, &c2, &err) != 0)
			abort();
		v = tether_config_get(c2, ed.section, ed.key, NULL);
		if (v == NULL || strcmp(v, ed.value) != 0)
			abort();
	}
out:
	tether_config_free(c);
	tether_config_free(c2);
	free(edited);
	free(text);
	return 0;
}
