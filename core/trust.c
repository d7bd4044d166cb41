#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include "error.h"
#include "fsutil.h"
#include "trust.h"
#include "util.h"

#define TRUST_FILE_MAX (1024 * 1024)

char *tether_trust_path(const char *state_dir)
{
	return tether_asprintf("%s/trust.json", state_dir);
}

static int parse_list(json_t *arr, tether_trust_entry *v, size_t *n, const char *path,
                      const char *what, tether_error *err)
{
	size_t i;
	json_t *e;

	*n = 0;
	if (!arr)
		return 0;
	if (!json_is_array(arr) || json_array_size(arr) > TETHER_TRUST_MAX)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "%s: '%s' must be an array of at most %d entries", path, what,
		                      TETHER_TRUST_MAX);
	json_array_foreach(arr, i, e) {
		const char *s = json_string_value(json_object_get(e, "sha256"));
		json_t *added = json_object_get(e, "added");
		const char *note = json_string_value(json_object_get(e, "note"));
		tether_error e2;
		if (!s || tether_thumbprint_parse(s, &v[*n].tp, &e2) < 0)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "%s: entry %zu of '%s' has no valid sha256", path, i, what);
		v[*n].added = json_is_integer(added) ? (int64_t)json_integer_value(added) : 0;
		snprintf(v[*n].note, sizeof(v[*n].note), "%s", note ? note : "");
		{
			const char *pre = json_string_value(json_object_get(e, "successor_of"));
			v[*n].has_predecessor = pre && tether_thumbprint_parse(pre, &v[*n].predecessor, NULL) == 0;
		}
		(*n)++;
	}
	return 0;
}

int tether_trust_load(const char *state_dir, tether_trust *out, tether_error *err)
{
	char *path = tether_trust_path(state_dir);
	unsigned char *text = NULL;
	size_t len;
	json_t *root = NULL;
	json_error_t je;
	int r;

	memset(out, 0, sizeof(*out));
	r = tether_read_file(path, TRUST_FILE_MAX, &text, &len, err);
	if (r == TETHER_ERR_NOT_FOUND) {
		tether_err_clear(err);
		r = 0;
		goto out;
	}
	if (r < 0)
		goto out;
	root = json_loadb((char *)text, len, 0, &je);
	if (!root || !json_is_object(root)) {
		r = tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                   "%s is damaged (line %d: %s): restore it from backup, or rebuild "
		                   "trust with 'tether-agent configure --reset-trust' and '--trust'",
		                   path, je.line, root ? "not an object" : je.text);
		goto out;
	}
	r = parse_list(json_object_get(root, "trusted"), out->trusted, &out->ntrusted, path,
	               "trusted", err);
	if (r < 0)
		goto out;
	r = parse_list(json_object_get(root, "recovery"), out->recovery, &out->nrecovery, path,
	               "recovery", err);
	if (r < 0)
		goto out;
	out->generation = (uint64_t)json_integer_value(json_object_get(root, "generation"));
out:
	json_decref(root);
	free(text);
	free(path);
	return r;
}

static json_t *list_json(const tether_trust_entry *v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < n; i++) {
		char hex[TETHER_THUMBPRINT_HEX];
		json_t *o;
		tether_thumbprint_hex(&v[i].tp, hex);
		o = json_pack("{s:s, s:I, s:s}", "sha256", hex, "added", (json_int_t)v[i].added, "note", v[i].note);
		if (v[i].has_predecessor) {
			char pre[TETHER_THUMBPRINT_HEX];
			tether_thumbprint_hex(&v[i].predecessor, pre);
			json_object_set_new(o, "successor_of", json_string(pre));
		}
		json_array_append_new(a, o);
	}
	return a;
}

static int trust_save(const char *state_dir, tether_trust *t, tether_error *err)
{
	char *path = tether_trust_path(state_dir), *text;
	json_t *root;
	int r;

	t->generation++;
	root = json_pack("{s:i, s:I, s:o, s:o}", "version", 1, "generation",
	                 (json_int_t)t->generation, "trusted", list_json(t->trusted, t->ntrusted),
	                 "recovery", list_json(t->recovery, t->nrecovery));
	text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(root);
	r = tether_write_atomic(path, text, strlen(text), 0600, err);
	free(text);
	free(path);
	return r;
}

int tether_trust_update(const char *state_dir, tether_trust_fn fn, void *arg,
                        tether_error *err)
{
	char *lockp = tether_asprintf("%s/trust.lock", state_dir);
	tether_trust *t = tether_xcalloc(1, sizeof(*t));
	int fd, r;

	r = tether_check_writable_dir(state_dir, err);
	if (r < 0)
		goto out_nolock;
	fd = tether_lock(lockp, err);
	if (fd < 0) {
		r = fd;
		goto out_nolock;
	}
	r = tether_trust_load(state_dir, t, err);
	if (r < 0)
		goto out;
	r = fn(t, arg, err);
	if (r > 0) {
		int w = trust_save(state_dir, t, err);
		if (w < 0)
			r = w;
	}
out:
	tether_unlock(fd);
out_nolock:
	free(t);
	free(lockp);
	return r;
}

int tether_trust_find(const tether_trust_entry *v, size_t n, const tether_thumbprint *tp)
{
	size_t i;
	int found = -1;

	/* scan all entries: no early exit */
	for (i = 0; i < n; i++)
		if (tether_thumbprint_equal(&v[i].tp, tp) && found < 0)
			found = (int)i;
	return found;
}

int tether_trust_add(tether_trust_entry *v, size_t *n, const tether_thumbprint *tp,
                     const char *note, tether_error *err)
{
	if (tether_trust_find(v, *n, tp) >= 0)
		return 0;
	if (*n >= TETHER_TRUST_MAX)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "cannot trust more than %d thumbprints: remove unused ones first",
		                      TETHER_TRUST_MAX);
	memset(&v[*n], 0, sizeof(v[*n]));
	v[*n].tp = *tp;
	v[*n].added = (int64_t)time(NULL);
	snprintf(v[*n].note, sizeof(v[*n].note), "%s", note ? note : "");
	(*n)++;
	return 1;
}

int tether_trust_remove(tether_trust_entry *v, size_t *n, const tether_thumbprint *tp)
{
	int i = tether_trust_find(v, *n, tp);

	if (i < 0)
		return 0;
	memmove(&v[i], &v[i + 1], (*n - (size_t)i - 1) * sizeof(*v));
	(*n)--;
	return 1;
}

int tether_trust_is_trusted(const tether_trust *t, const tether_thumbprint *tp)
{
	return tether_trust_find(t->trusted, t->ntrusted, tp) >= 0;
}
