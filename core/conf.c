#include "config.h"
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ini.h>
#include "error.h"
#include "fsutil.h"
#include "util.h"
#include "conf.h"

#define CONFIG_MAX_BYTES (1024 * 1024)

struct parse_state {
	tether_config *c;
	const tether_config_key *schema;
	tether_error *err;
	int failed;
	const char *name;
	int line;
};

static const tether_config_key *schema_find(const tether_config_key *schema,
                                            const char *section, const char *key)
{
	for (; schema && schema->section; schema++)
		if (!strcmp(schema->section, section) && !strcmp(schema->key, key))
			return schema;
	return NULL;
}

static int schema_has_section(const tether_config_key *schema, const char *section)
{
	for (; schema && schema->section; schema++)
		if (!strcmp(schema->section, section))
			return 1;
	return 0;
}

static void trim(char *s)
{
	char *e, *b = s;
	while (*b && isspace((unsigned char)*b))
		b++;
	if (b != s)
		memmove(s, b, strlen(b) + 1);
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
}

/* inih calls this for each name=value (line counted by our own reader). */
static int on_entry(void *user, const char *section, const char *name, const char *value)
{
	struct parse_state *st = user;
	tether_config *c = st->c;
	const tether_config_key *k;
	char sec[128];

	if (st->failed)
		return 0;
	/* inih keeps the blanks inside "[ log ]"; a person means [log], and
	 * the in-place editor below reads the header that way too. */
	snprintf(sec, sizeof(sec), "%s", section);
	trim(sec);
	section = sec;
	if (st->schema) {
		if (!schema_has_section(st->schema, section)) {
			tether_err_set(st->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			               "%s: unknown section [%s] (key '%s'): check the spelling; "
			               "'show-configuration' lists the known keys", st->name, section, name);
			st->failed = 1;
			return 0;
		}
		k = schema_find(st->schema, section, name);
		if (!k) {
			tether_err_set(st->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			               "%s: unknown key '%s' in [%s]: check the spelling; "
			               "'show-configuration' lists the known keys", st->name, name, section);
			st->failed = 1;
			return 0;
		}
		if (k->validate) {
			char why[256] = "";
			if (k->validate(value, why, sizeof(why)) < 0) {
				tether_err_set(st->err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
				               "%s: [%s] %s = '%s' is invalid: %s", st->name, section,
				               name, value, why);
				st->failed = 1;
				return 0;
			}
		}
	}
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->e = realloc(c->e, c->cap * sizeof(*c->e));
		if (!c->e)
			abort();
	}
	c->e[c->n].section = tether_strdup(section);
	c->e[c->n].key = tether_strdup(name);
	c->e[c->n].value = tether_strdup(value);
	c->e[c->n].line = 0;
	c->n++;
	return 1;
}

/* inih (Debian's build) reads at most INI_MAX_LINE - 1 = 199 bytes of a
 * line at a time, so a longer line is parsed as two, and it cuts a section
 * name to 49 bytes: the in-place editor below would see other lines and
 * sections than the loader.  Both refuse such a text instead, saying
 * where. */
#define CONF_LINE_MAX 199
#define CONF_SECTION_MAX 49

static int check_limits(const char *text, const char *name, tether_error *err)
{
	const char *p = text;
	int lineno = 1;

	while (*p) {
		const char *e = strchr(p, '\n'), *b = p, *rb;
		size_t len = e ? (size_t)(e - p) : strlen(p);

		if (len > CONF_LINE_MAX)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s: line %d is %zu characters long, more than the %d a "
			                      "line may have: shorten it (a long value can often be "
			                      "split over several keys or moved to a file)",
			                      name, lineno, len, CONF_LINE_MAX);
		while (b < p + len && isspace((unsigned char)*b))
			b++;
		if (b < p + len && *b == '[' &&
		    (rb = memchr(b, ']', len - (size_t)(b - p))) != NULL &&
		    (size_t)(rb - b - 1) > CONF_SECTION_MAX)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s: line %d: the section name is %zu characters long, more "
			                      "than %d: tether's sections are [tether], [listen], [log] ... "
			                      "('show-configuration' lists them)",
			                      name, lineno, (size_t)(rb - b - 1), CONF_SECTION_MAX);
		if (!e)
			break;
		p = e + 1;
		lineno++;
	}
	return 0;
}

int tether_config_parse(const char *text, const char *name,
                        const tether_config_key *schema,
                        tether_config **out, tether_error *err)
{
	struct parse_state st = { 0 };
	tether_config *c;
	int r;

	if ((r = check_limits(text, name ? name : "config", err)) < 0)
		return r;
	ini_allow_multiline = false;
	c = tether_xcalloc(1, sizeof(*c));
	st.c = c;
	st.schema = schema;
	st.err = err;
	st.name = name ? name : "config";
	r = ini_parse_string(text, on_entry, &st);
	if (st.failed) {
		tether_config_free(c);
		return err ? err->code : TETHER_ERR_INVALID;
	}
	if (r != 0) {
		tether_config_free(c);
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s: line %d is not valid INI (expected '[section]', "
		                      "'key = value' or a comment starting with ';' or '#')",
		                      st.name, r);
	}
	/* defaults check for multi */
	if (schema) {
		size_t i, j;
		for (i = 0; i < c->n; i++) {
			const tether_config_key *k = schema_find(schema, c->e[i].section, c->e[i].key);
			if (!k || k->multi)
				continue;
			for (j = i + 1; j < c->n; j++)
				if (!strcmp(c->e[j].section, c->e[i].section) &&
				    !strcmp(c->e[j].key, c->e[i].key)) {
					r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
					                   "%s: [%s] %s is given more than once; keep one",
					                   st.name, c->e[i].section, c->e[i].key);
					tether_config_free(c);
					return r;
				}
		}
	}
	*out = c;
	return 0;
}

int tether_config_load(const char *path, const tether_config_key *schema,
                       tether_config **out, tether_error *err)
{
	unsigned char *text = NULL;
	size_t len;
	int r;

	r = tether_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
	if (r < 0)
		return r;
	if (memchr(text, '\0', len)) {
		free(text);
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s contains a NUL byte: it is not a text file", path);
	}
	r = tether_config_parse((char *)text, path, schema, out, err);
	free(text);
	if (r == 0)
		(*out)->path = tether_strdup(path);
	return r;
}

void tether_config_free(tether_config *c)
{
	size_t i;

	if (!c)
		return;
	for (i = 0; i < c->n; i++) {
		free(c->e[i].section);
		free(c->e[i].key);
		free(c->e[i].value);
	}
	free(c->e);
	free(c->path);
	free(c);
}

const char *tether_config_get(const tether_config *c, const char *section,
                              const char *key, const char *def)
{
	const char *v = def;
	size_t i;

	if (!c)
		return def;
	for (i = 0; i < c->n; i++)
		if (!strcmp(c->e[i].section, section) && !strcmp(c->e[i].key, key))
			v = c->e[i].value;
	return v;
}

size_t tether_config_get_all(const tether_config *c, const char *section,
                             const char *key, const char **out, size_t max)
{
	size_t i, n = 0;

	if (!c)
		return 0;
	for (i = 0; i < c->n; i++)
		if (!strcmp(c->e[i].section, section) && !strcmp(c->e[i].key, key)) {
			if (n < max)
				out[n] = c->e[i].value;
			n++;
		}
	return n;
}

int tether_config_bool(const char *v)
{
	if (!v)
		return -1;
	if (!strcasecmp(v, "on") || !strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1"))
		return 1;
	if (!strcasecmp(v, "off") || !strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0"))
		return 0;
	return -1;
}

/* ---- in-place editing ---- */

typedef struct line {
	char *text;          /* without the newline */
	char section[128];   /* section this line belongs to */
	char key[128];       /* key if this is key=value, else "" */
	char value[1024];
} line;


static size_t split_lines(const char *text, line **out)
{
	size_t n = 0, cap = 0;
	line *ls = NULL;
	const char *p = text;
	char cur[128] = "";

	while (*p) {
		const char *e = strchr(p, '\n');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		char buf[2048];
		line *l;

		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			ls = realloc(ls, cap * sizeof(*ls));
			if (!ls)
				abort();
		}
		l = &ls[n++];
		memset(l, 0, sizeof(*l));
		l->text = tether_xmalloc(len + 1);
		memcpy(l->text, p, len);
		l->text[len] = '\0';
		if (len && l->text[len - 1] == '\r')
			l->text[len - 1] = '\0';
		/* inih skips a UTF-8 byte order mark at the start of the text */
		snprintf(buf, sizeof(buf), "%s",
		         (n == 1 && !strncmp(l->text, "\xEF\xBB\xBF", 3)) ? l->text + 3 : l->text);
		trim(buf);
		if (buf[0] == '[') {
			char *rb = strchr(buf, ']');
			if (rb) {
				*rb = '\0';
				snprintf(cur, sizeof(cur), "%s", buf + 1);
				trim(cur);
			}
		} else if (buf[0] && buf[0] != ';' && buf[0] != '#') {
			char *eq = strpbrk(buf, "=:");
			if (eq) {
				*eq = '\0';
				snprintf(l->key, sizeof(l->key), "%s", buf);
				trim(l->key);
				snprintf(l->value, sizeof(l->value), "%s", eq + 1);
				{ /* inline comment: ';' after a blank, as inih reads it */
					char *sc;
					for (sc = l->value; *sc; sc++)
						if (*sc == ';' && sc > l->value && isspace((unsigned char)sc[-1])) {
							*sc = '\0';
							break;
						}
				}
				trim(l->value);
			}
		}
		snprintf(l->section, sizeof(l->section), "%s", cur);
		if (!e)
			break;
		p = e + 1;
	}
	*out = ls;
	return n;
}

static void free_lines(line *ls, size_t n)
{
	size_t i;
	for (i = 0; i < n; i++)
		free(ls[i].text);
	free(ls);
}

static void insert_line(line **ls, size_t *n, size_t at, const char *text, const char *section)
{
	line *l;
	*ls = realloc(*ls, (*n + 1) * sizeof(**ls));
	if (!*ls)
		abort();
	memmove(&(*ls)[at + 1], &(*ls)[at], (*n - at) * sizeof(**ls));
	l = &(*ls)[at];
	memset(l, 0, sizeof(*l));
	l->text = tether_strdup(text);
	snprintf(l->section, sizeof(l->section), "%s", section);
	(*n)++;
}

static void remove_line(line *ls, size_t *n, size_t at)
{
	free(ls[at].text);
	memmove(&ls[at], &ls[at + 1], (*n - at - 1) * sizeof(*ls));
	(*n)--;
}

static int apply_one(line **ls, size_t *n, const tether_config_edit *ed, tether_error *err)
{
	size_t i, last_in_section = (size_t)-1, header = (size_t)-1;
	int found = 0;
	char *newtext;

	if (strpbrk(ed->key, "=:[]\n\r;#") || (ed->value && strpbrk(ed->value, "\n\r")))
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "value for [%s] %s may not contain a line break", ed->section, ed->key);
	for (i = 0; i < *n; i++) {
		line *l = &(*ls)[i];
		if (strcmp(l->section, ed->section))
			continue;
		if (header == (size_t)-1) {
			header = i;
		}
		if (l->key[0] || header != i)
			last_in_section = i;
	}
	/* trailing blank lines don't extend the section; nor do the lines of
	 * other sections before a repeated header of this one */
	while (last_in_section != (size_t)-1 && last_in_section > header &&
	       (!(*ls)[last_in_section].key[0] ||
	        strcmp((*ls)[last_in_section].section, ed->section)))
		last_in_section--;
	switch (ed->op) {
	case TETHER_CFG_SET:
		newtext = tether_asprintf("%s = %s", ed->key, ed->value);
		for (i = 0; i < *n; i++) {
			line *l = &(*ls)[i];
			if (!strcmp(l->section, ed->section) && !strcmp(l->key, ed->key)) {
				if (!found) {
					free(l->text);
					l->text = tether_strdup(newtext);
					snprintf(l->value, sizeof(l->value), "%s", ed->value);
					found = 1;
				} else {
					remove_line(*ls, n, i);
					i--;
				}
			}
		}
		if (!found)
			goto append;
		free(newtext);
		return 0;
	case TETHER_CFG_ADD:
		newtext = tether_asprintf("%s = %s", ed->key, ed->value);
		for (i = 0; i < *n; i++) {
			line *l = &(*ls)[i];
			if (!strcmp(l->section, ed->section) && !strcmp(l->key, ed->key) &&
			    !strcmp(l->value, ed->value)) {
				free(newtext);
				return 0; /* already there */
			}
		}
		goto append;
	case TETHER_CFG_REMOVE_VALUE:
	case TETHER_CFG_UNSET:
		for (i = 0; i < *n; i++) {
			line *l = &(*ls)[i];
			if (!strcmp(l->section, ed->section) && !strcmp(l->key, ed->key) &&
			    (ed->op == TETHER_CFG_UNSET || !strcmp(l->value, ed->value))) {
				remove_line(*ls, n, i);
				i--;
				found = 1;
			}
		}
		return 0;
	}
	return TETHER_ERR_INVALID;
append:
	if (header == (size_t)-1) {
		char *hdr = tether_asprintf("[%s]", ed->section);
		if (*n && (*ls)[*n - 1].text[0])
			insert_line(ls, n, *n, "", "");
		insert_line(ls, n, *n, hdr, ed->section);
		insert_line(ls, n, *n, newtext, ed->section);
		snprintf((*ls)[*n - 1].key, sizeof((*ls)[*n - 1].key), "%s", ed->key);
		snprintf((*ls)[*n - 1].value, sizeof((*ls)[*n - 1].value), "%s", ed->value);
		free(hdr);
	} else {
		size_t at = (last_in_section == (size_t)-1 ? header : last_in_section) + 1;
		insert_line(ls, n, at, newtext, ed->section);
		snprintf((*ls)[at].key, sizeof((*ls)[at].key), "%s", ed->key);
		snprintf((*ls)[at].value, sizeof((*ls)[at].value), "%s", ed->value);
	}
	free(newtext);
	return 0;
}

int tether_config_edit_text(const char *text, const tether_config_edit *edits,
                            size_t n, char **out, tether_error *err)
{
	line *ls = NULL;
	size_t nl, i, total = 1;
	char *res, *p;
	int r = 0;

	*out = NULL;
	if ((r = check_limits(text ? text : "", "the configuration", err)) < 0)
		return r;
	nl = split_lines(text ? text : "", &ls);
	for (i = 0; i < n; i++) {
		r = apply_one(&ls, &nl, &edits[i], err);
		if (r < 0)
			goto out;
	}
	for (i = 0; i < nl; i++)
		total += strlen(ls[i].text) + 1;
	res = p = tether_xmalloc(total);
	for (i = 0; i < nl; i++) {
		size_t l = strlen(ls[i].text);
		memcpy(p, ls[i].text, l);
		p += l;
		*p++ = '\n';
	}
	*p = '\0';
	if ((r = check_limits(res, "the configuration as edited", err)) < 0) {
		free(res);
		goto out;
	}
	*out = res;
out:
	free_lines(ls, nl);
	return r;
}

#define CONFIG_LOCK_WAIT_MS 10000

/* Read, edit, check and (if write) replace the file, under a lock on
 * PATH.lock so that concurrent edits are applied one after the other
 * instead of one losing the other's. */
static int config_apply(const char *path, const tether_config_key *schema,
                        const tether_config_edit *edits, size_t n, int write,
                        tether_error *err)
{
	unsigned char *text = NULL;
	size_t len;
	char *newtext = NULL, *lockpath;
	tether_config *check = NULL;
	int r, lock = -1;

	if (write) {
		lockpath = tether_asprintf("%s.lock", path);
		lock = tether_lock_wait(lockpath, CONFIG_LOCK_WAIT_MS, err);
		free(lockpath);
		if (lock < 0) {
			tether_err_prefix(err, "cannot change %s (left as it was)", path);
			return lock;
		}
	}
	r = tether_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
	if (r < 0)
		goto out;
	r = tether_config_edit_text((char *)text, edits, n, &newtext, err);
	if (r < 0)
		goto out;
	r = tether_config_parse(newtext, path, schema, &check, err);
	if (r < 0) {
		tether_err_prefix(err, "change refused, %s left as it was", path);
		goto out;
	}
	if (write)
		r = tether_write_atomic(path, newtext, strlen(newtext), 0640, err);
out:
	tether_unlock(lock);
	tether_config_free(check);
	free(newtext);
	free(text);
	return r;
}

int tether_config_apply(const char *path, const tether_config_key *schema,
                        const tether_config_edit *edits, size_t n,
                        tether_error *err)
{
	return config_apply(path, schema, edits, n, 1, err);
}

int tether_config_check_edits(const char *path, const tether_config_key *schema,
                              const tether_config_edit *edits, size_t n,
                              tether_error *err)
{
	return config_apply(path, schema, edits, n, 0, err);
}

int tether_validate_hostport(const char *v, char *why, size_t n)
{
	char *h = NULL;
	int port;

	if (tether_parse_hostport(v, &h, &port, 0) < 0) {
		snprintf(why, n, "expected HOST:PORT (for example 0.0.0.0:10933 or [::]:10933)");
		return -1;
	}
	free(h);
	return 0;
}

int tether_validate_hostport_or_off(const char *v, char *why, size_t n)
{
	if (!strcmp(v, "off"))
		return 0;
	if (tether_validate_hostport(v, why, n) < 0) {
		snprintf(why, n, "expected HOST:PORT (for example 0.0.0.0:10943) or off");
		return -1;
	}
	return 0;
}

int tether_validate_bool(const char *v, char *why, size_t n)
{
	if (tether_config_bool(v) < 0) {
		snprintf(why, n, "expected on or off");
		return -1;
	}
	return 0;
}

int tether_validate_uint(const char *v, char *why, size_t n)
{
	char *end;
	unsigned long x;

	errno = 0;
	x = strtoul(v, &end, 10);
	if (errno || end == v || *end || v[0] == '-' || x > 100000000ul) {
		snprintf(why, n, "expected a whole number");
		return -1;
	}
	return 0;
}

int tether_validate_log_level(const char *v, char *why, size_t n)
{
	if (strcmp(v, "error") && strcmp(v, "warning") && strcmp(v, "info") && strcmp(v, "debug")) {
		snprintf(why, n, "expected error, warning, info or debug");
		return -1;
	}
	return 0;
}
