/* Admin methods on the target registry.  See admin_targets.h.
 *
 *   target.add  {"name", "address", "sha256", "tags"?: [...], "mode"?: "listening"}
 *               -> the target (reg_target_to_json)
 *   target.list {"tag"?} -> {"targets": [target...]}
 *   target.show {"name"} -> the target
 *   target.remove {"name"} -> the removed target
 *   target.set-thumbprint {"name", "sha256"} -> {"name", "old_sha256", "sha256"}
 */
#include "config.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "admin_targets.h"
#include "error.h"
#include "thumbprint.h"
#include "util.h"

typedef struct method {
	const char *name;
	void (*fn)(registry *reg, admin_call *call, json_t *params);
	const char *const *keys;      /* allowed parameters */
} method;

static void bad(admin_call *call, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bad(admin_call *call, const char *fmt, ...)
{
	char msg[TETHER_ERROR_DETAIL_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	admin_reply_error(call, msg, "bad_input");
}

/* A required (or optional) string parameter; replies and returns NULL on
 * error (*failed set). */
static const char *str_param(admin_call *call, const char *method_name, json_t *params,
                             const char *key, int required, int *failed)
{
	json_t *v = json_object_get(params, key);

	if (!v || json_is_null(v)) {
		if (required) {
			bad(call, "%s needs the parameter \"%s\"", method_name, key);
			*failed = 1;
		}
		return NULL;
	}
	if (!json_is_string(v)) {
		bad(call, "%s: parameter \"%s\" must be a string", method_name, key);
		*failed = 1;
		return NULL;
	}
	return json_string_value(v);
}

static int name_param(admin_call *call, const char *method_name, json_t *params,
                      const char **out)
{
	tether_error err;
	int failed = 0;
	const char *name = str_param(call, method_name, params, "name", 1, &failed);

	if (failed)
		return -1;
	memset(&err, 0, sizeof(err));
	if (registry_name_ok(name, "target name", &err) < 0) {
		admin_reply_tether_error(call, &err);
		return -1;
	}
	*out = name;
	return 0;
}

static int thumbprint_param(admin_call *call, const char *method_name, json_t *params,
                            char out[TETHER_THUMBPRINT_HEX])
{
	tether_thumbprint tp;
	tether_error err;
	int failed = 0;
	const char *s = str_param(call, method_name, params, "sha256", 1, &failed);

	if (failed)
		return -1;
	memset(&err, 0, sizeof(err));
	if (tether_thumbprint_parse(s, &tp, &err) < 0) {
		admin_reply_tether_error(call, &err);
		return -1;
	}
	tether_thumbprint_hex(&tp, out);
	return 0;
}

static void reply_target(registry *reg, admin_call *call, const char *name)
{
	reg_target t;
	tether_error err;

	memset(&err, 0, sizeof(err));
	if (registry_target_get(reg, name, &t, &err) < 0) {
		admin_reply_tether_error(call, &err);
		return;
	}
	admin_reply(call, reg_target_to_json(&t));
	reg_target_clear(&t);
}

static void m_add(registry *reg, admin_call *call, json_t *params)
{
	const char *M = "target.add";
	reg_target t;
	tether_error err;
	char sha[TETHER_THUMBPRINT_HEX];
	const char *name, *mode, *addr;
	json_t *tags, *v;
	size_t i;
	int failed = 0;

	memset(&t, 0, sizeof(t));
	memset(&err, 0, sizeof(err));
	if (name_param(call, M, params, &name) < 0)
		return;
	mode = str_param(call, M, params, "mode", 0, &failed);
	if (failed)
		return;
	if (mode && strcmp(mode, "listening") && strcmp(mode, "polling")) {
		bad(call, "%s: mode '%s' is not valid: use 'listening' or 'polling'", M, mode);
		return;
	}
	addr = str_param(call, M, params, "address", !(mode && !strcmp(mode, "polling")), &failed);
	if (failed)
		return;
	if (mode && !strcmp(mode, "polling") && addr) {
		bad(call, "%s: a polling target has no address: the agent connects to the server", M);
		return;
	}
	if (thumbprint_param(call, M, params, sha) < 0)
		return;
	tags = json_object_get(params, "tags");
	if (tags && !json_is_null(tags) && !json_is_array(tags)) {
		bad(call, "%s: parameter \"tags\" must be an array of strings", M);
		return;
	}
	if (json_array_size(tags) > REG_TAGS_MAX) {
		bad(call, "%s: %zu tags given, at most %d are allowed", M, json_array_size(tags), REG_TAGS_MAX);
		return;
	}
	if (addr && registry_parse_address(addr, &t.host, &t.port, &err) < 0) {
		admin_reply_tether_error(call, &err);
		return;
	}
	t.name = (char *)name;
	t.mode = (char *)(addr ? "listening" : "polling");
	t.sha256 = sha;
	t.tags = tether_xcalloc(json_array_size(tags) + 1, sizeof(char *));
	json_array_foreach(tags, i, v) {
		if (!json_is_string(v)) {
			bad(call, "%s: tag %zu is not a string", M, i + 1);
			goto out;
		}
		t.tags[t.n_tags++] = (char *)json_string_value(v);
	}
	if (registry_target_add(reg, &t, &err) < 0) {
		admin_reply_tether_error(call, &err);
		goto out;
	}
	reply_target(reg, call, name);
out:
	free(t.host);
	free(t.tags);
}

static void m_list(registry *reg, admin_call *call, json_t *params)
{
	reg_target *v = NULL;
	size_t n = 0, i;
	tether_error err;
	json_t *arr;
	int failed = 0;
	const char *tag = str_param(call, "target.list", params, "tag", 0, &failed);

	if (failed)
		return;
	memset(&err, 0, sizeof(err));
	if (registry_target_list(reg, tag, &v, &n, &err) < 0) {
		admin_reply_tether_error(call, &err);
		return;
	}
	arr = json_array();
	for (i = 0; i < n; i++)
		json_array_append_new(arr, reg_target_to_json(&v[i]));
	reg_target_list_free(v, n);
	admin_reply(call, json_pack("{s:o}", "targets", arr));
}

static void m_show(registry *reg, admin_call *call, json_t *params)
{
	const char *name;

	if (name_param(call, "target.show", params, &name) < 0)
		return;
	reply_target(reg, call, name);
}

static void m_remove(registry *reg, admin_call *call, json_t *params)
{
	reg_target t;
	tether_error err;
	const char *name;
	json_t *res;

	if (name_param(call, "target.remove", params, &name) < 0)
		return;
	memset(&err, 0, sizeof(err));
	if (registry_target_get(reg, name, &t, &err) < 0) {
		admin_reply_tether_error(call, &err);
		return;
	}
	res = reg_target_to_json(&t);
	reg_target_clear(&t);
	if (registry_target_remove(reg, name, &err) < 0) {
		json_decref(res);
		admin_reply_tether_error(call, &err);
		return;
	}
	admin_reply(call, res);
}

static void m_set_thumbprint(registry *reg, admin_call *call, json_t *params)
{
	tether_error err;
	char sha[TETHER_THUMBPRINT_HEX], old[65];
	const char *name;

	if (name_param(call, "target.set-thumbprint", params, &name) < 0)
		return;
	if (thumbprint_param(call, "target.set-thumbprint", params, sha) < 0)
		return;
	memset(&err, 0, sizeof(err));
	if (registry_target_set_thumbprint(reg, name, sha, old, &err) < 0) {
		admin_reply_tether_error(call, &err);
		return;
	}
	admin_reply(call, json_pack("{s:s, s:s, s:s}", "name", name, "old_sha256", old, "sha256", sha));
}

static const char *const k_add[] = { "name", "mode", "address", "sha256", "tags", NULL };
static const char *const k_list[] = { "tag", NULL };
static const char *const k_name[] = { "name", NULL };
static const char *const k_set[] = { "name", "sha256", NULL };

static const method methods[] = {
	{ "target.add", m_add, k_add },
	{ "target.list", m_list, k_list },
	{ "target.show", m_show, k_name },
	{ "target.remove", m_remove, k_name },
	{ "target.set-thumbprint", m_set_thumbprint, k_set },
	{ NULL, NULL, NULL }
};

int admin_targets_dispatch(registry *reg, tether_audit *a, admin_call *call,
                           const char *method_name, json_t *params)
{
	const method *m;
	const char *key;
	json_t *v;

	for (m = methods; m->name; m++)
		if (!strcmp(m->name, method_name))
			break;
	if (!m->name)
		return 0;
	admin_call_set_audit(call, a);
	json_object_foreach(params, key, v) {
		const char *const *k;
		for (k = m->keys; *k; k++)
			if (!strcmp(*k, key))
				break;
		if (!*k) {
			bad(call, "%s has no parameter \"%.64s\"", m->name, key);
			return 1;
		}
	}
	m->fn(reg, call, params);
	return 1;
}
