/* The parts of tasks_store.h that need no database: task_state_final and
 * the output records (clearing, their JSON form, base64, UTF-8).  The
 * tether-server front (server/front.c) links them without SQLite. */
#include "config.h"
#include <stdlib.h>
#include <string.h>
#include "error.h"
#include "tasks_store.h"
#include "util.h"

int task_state_final(const char *state)
{
	return state && (!strcmp(state, "finished") || !strcmp(state, "cancelled") ||
	                 !strcmp(state, "timed_out") || !strcmp(state, "unknown") ||
	                 !strcmp(state, "failed"));
}

void task_out_clear(task_out *o)
{
	if (!o)
		return;
	json_decref(o->time);
	free(o->data);
	memset(o, 0, sizeof(*o));
}

void task_out_free(task_out *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		task_out_clear(&v[i]);
	free(v);
}

/* ------------------------------------------------------------ records */

int task_utf8_ok(const unsigned char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		uint32_t cp;
		size_t k, need;

		if (c == 0)
			return 0;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		if (len - i <= need)
			return 0;
		for (k = 1; k <= need; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((need == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (need == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return 0;
		i += need + 1;
	}
	return 1;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *task_b64_encode(const unsigned char *in, size_t len)
{
	char *out = tether_xmalloc((len + 2) / 3 * 4 + 1), *p = out;
	size_t i;

	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*p++ = b64[v >> 18];
		*p++ = b64[(v >> 12) & 63];
		*p++ = b64[(v >> 6) & 63];
		*p++ = b64[v & 63];
	}
	if (i < len) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
		*p++ = b64[v >> 18];
		*p++ = b64[(v >> 12) & 63];
		*p++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
		*p++ = '=';
	}
	*p = '\0';
	return out;
}

static int b64_val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int task_b64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
	unsigned char *o;
	size_t i, n = 0, pad = 0;

	if (len % 4)
		return TETHER_ERR_INVALID;
	if (len && in[len - 1] == '=')
		pad++;
	if (len > 1 && in[len - 2] == '=')
		pad++;
	o = tether_xmalloc(len / 4 * 3 + 1);
	for (i = 0; i < len; i += 4) {
		int a = b64_val(in[i]), b = b64_val(in[i + 1]);
		int c = in[i + 2] == '=' ? 0 : b64_val(in[i + 2]);
		int d = in[i + 3] == '=' ? 0 : b64_val(in[i + 3]);
		int last = i + 4 == len;
		uint32_t v;

		if (a < 0 || b < 0 || c < 0 || d < 0 ||
		    (!last && (in[i + 2] == '=' || in[i + 3] == '=')) ||
		    (in[i + 2] == '=' && in[i + 3] != '=')) {
			free(o);
			return TETHER_ERR_INVALID;
		}
		v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
		o[n++] = (unsigned char)(v >> 16);
		o[n++] = (unsigned char)(v >> 8);
		o[n++] = (unsigned char)v;
	}
	*out = o;
	*out_len = n - pad;
	return 0;
}

json_t *task_out_to_json(const task_out *o)
{
	json_t *j = json_object();

	json_object_set_new(j, "seq", json_integer((json_int_t)o->seq));
	json_object_set_new(j, "stream", json_string(o->stream == TASK_STREAM_STDERR ? "stderr" : "stdout"));
	json_object_set(j, "time", o->time ? o->time : json_null());
	if (task_utf8_ok(o->data, o->len)) {
		json_object_set_new(j, "text", json_stringn((const char *)o->data, o->len));
	} else {
		char *b = task_b64_encode(o->data, o->len);
		json_object_set_new(j, "base64", json_string(b));
		free(b);
	}
	return j;
}

int task_out_from_json(json_t *j, task_out *out, tether_error *err)
{
	json_t *seq = json_object_get(j, "seq"), *time = json_object_get(j, "time");
	json_t *text = json_object_get(j, "text"), *b = json_object_get(j, "base64");
	const char *stream = json_string_value(json_object_get(j, "stream"));
	task_out o;

	memset(&o, 0, sizeof(o));
	if (!json_is_integer(seq) || !stream ||
	    (strcmp(stream, "stdout") && strcmp(stream, "stderr")) ||
	    (!json_is_string(text) && !json_is_string(b)))
		return tether_err_set(err, TETHER_ERR_PROTOCOL, TETHER_CAT_INTERNAL,
		                      "an output record is malformed (it needs an integer \"seq\", "
		                      "\"stream\" stdout or stderr, and \"text\" or \"base64\")");
	o.seq = (int64_t)json_integer_value(seq);
	o.stream = !strcmp(stream, "stderr") ? TASK_STREAM_STDERR : TASK_STREAM_STDOUT;
	if (json_is_string(text)) {
		o.len = json_string_length(text);
		o.data = tether_xmalloc(o.len ? o.len : 1);
		memcpy(o.data, json_string_value(text), o.len);
	} else if (task_b64_decode(json_string_value(b), json_string_length(b), &o.data, &o.len) < 0) {
		return tether_err_set(err, TETHER_ERR_PROTOCOL, TETHER_CAT_INTERNAL,
		                      "output record %lld has invalid base64 data", (long long)o.seq);
	}
	if (json_is_integer(time) || json_is_real(time) || json_is_string(time))
		o.time = json_incref(time);
	*out = o;
	return 0;
}
