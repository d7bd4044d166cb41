/*
 * RPC request/response envelopes: build and parse.  See rpc.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

#define FAIL(code, cat, ...) tether_proto_fail(err, (code), (cat), __VA_ARGS__)
#define BAD(...) FAIL(TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT, __VA_ARGS__)
#define MISUSE(...) FAIL(TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, __VA_ARGS__)

/* The envelope's prefix is built per message: by hand, not with snprintf
 * (about 800 instructions each, BENCHMARKS.md session 4).  The callers'
 * buffers hold the longest prefix (a 10-digit id, a 64-byte method). */
static size_t
put_lit(char *buf, size_t at, const char *s)
{
	size_t n = strlen(s);

	memcpy(buf + at, s, n + 1);
	return at + n;
}

static size_t
put_u32(char *buf, size_t at, uint32_t v)
{
	char tmp[10];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		buf[at++] = tmp[--n];
	buf[at] = '\0';
	return at;
}

int
tether_rpc_method_valid(const char *method)
{
	return tether_proto_is_token(method, TETHER_RPC_METHOD_MAX);
}

static int
encode_envelope(int type, uint32_t id, json_t *o, size_t max_json,
                unsigned char **out, size_t *out_len, tether_error *err)
{
	if (o == NULL)
		return FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		            "out of memory building %s %u",
		            tether_frame_type_name(type), id);
	return tether_frame_encode_json(type, id, o, max_json, out, out_len,
	                                err);
}

int
tether_rpc_request_encode(uint32_t id, const char *method, json_t *params,
                          size_t max_json, unsigned char **out,
                          size_t *out_len, tether_error *err)
{
	char pre[TETHER_RPC_METHOD_MAX + 48], *ps = NULL;
	const char *p = "{}";
	size_t np, pl;
	int r;

	if (id == 0) {
		r = MISUSE("request id 0 is reserved");
		goto out;
	}
	if (!tether_rpc_method_valid(method)) {
		r = MISUSE("method name must be 1..%u characters [a-z0-9._-]",
		           TETHER_RPC_METHOD_MAX);
		goto out;
	}
	if (params != NULL && !json_is_object(params)) {
		r = MISUSE("request %u (%s): params must be a JSON object", id,
		           method);
		goto out;
	}
	/* The envelope by hand (the method is a plain token), the params
	 * dumped only when there are some: the same bytes as a json_t of the
	 * whole would give, without building one per request. */
	if (params != NULL && json_object_size(params) > 0) {
		ps = json_dumps(params, JSON_COMPACT);
		if (ps == NULL) {
			r = FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
			         "cannot serialise the params of request %u (%s)",
			         id, method);
			goto out;
		}
		p = ps;
	}
	pl = strlen(p);
	np = put_lit(pre, 0, "{\"id\":");
	np = put_u32(pre, np, id);
	np = put_lit(pre, np, ",\"method\":\"");
	np = put_lit(pre, np, method);
	np = put_lit(pre, np, "\",\"params\":");
	if (max_json == 0)
		max_json = TETHER_FRAME_JSON_MAX_DEFAULT;
	if (max_json > TETHER_FRAME_JSON_MAX_HARD)
		max_json = TETHER_FRAME_JSON_MAX_HARD;
	if (np + pl + 1 > max_json) {
		r = FAIL(TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		         "request is %zu bytes of JSON, more than the limit of "
		         "%zu bytes", np + pl + 1, max_json);
		goto out;
	}
	/* params with its NUL, whose place takes the closing brace */
	r = tether_frame_encode(TETHER_FRAME_REQUEST, id, pre, np, p, pl + 1,
	                        out, out_len, err);
	if (r == 0)
		(*out)[*out_len - 1] = '}';
out:
	free(ps);
	return r;
}

int
tether_rpc_result_encode(uint32_t id, json_t *result, size_t max_json,
                         unsigned char **out, size_t *out_len,
                         tether_error *err)
{
	json_t *o = NULL;
	int r;

	if (id == 0 || !json_is_object(result)) {
		r = MISUSE("response %u: the id must not be 0 and the result "
		           "must be a JSON object", id);
		goto out;
	}
	o = json_pack("{s:I, s:O}", "id", (json_int_t)id, "result", result);
	r = encode_envelope(TETHER_FRAME_RESPONSE, id, o, max_json, out,
	                    out_len, err);
out:
	json_decref(o);
	return r;
}

int
tether_rpc_result_encode_raw(uint32_t id, const char *json, size_t len,
                             size_t max_json, unsigned char **out,
                             size_t *out_len, tether_error *err)
{
	char pre[40];
	unsigned char *buf;
	size_t np, body;
	int r;

	if (id == 0 || json == NULL || len < 2 || json[0] != '{' ||
	    json[len - 1] != '}')
		return MISUSE("response %u: the id must not be 0 and the result "
		              "must be a JSON object", id);
	if (max_json == 0)
		max_json = TETHER_FRAME_JSON_MAX_DEFAULT;
	if (max_json > TETHER_FRAME_JSON_MAX_HARD)
		max_json = TETHER_FRAME_JSON_MAX_HARD;
	np = put_lit(pre, 0, "{\"id\":");
	np = put_u32(pre, np, id);
	np = put_lit(pre, np, ",\"result\":");
	body = np + len + 1;
	if (len > max_json || body > max_json)
		return FAIL(TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		            "response is %zu bytes of JSON, more than the limit "
		            "of %zu bytes", body, max_json);
	buf = malloc(TETHER_FRAME_HEADER_LEN + body);
	if (buf == NULL)
		return FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		            "out of memory for response %u", id);
	r = tether_frame_header_write(TETHER_FRAME_RESPONSE, id, (uint32_t)body,
	                              buf, err);
	if (r < 0) {
		free(buf);
		return r;
	}
	memcpy(buf + TETHER_FRAME_HEADER_LEN, pre, np);
	memcpy(buf + TETHER_FRAME_HEADER_LEN + np, json, len);
	buf[TETHER_FRAME_HEADER_LEN + np + len] = '}';
	*out = buf;
	*out_len = TETHER_FRAME_HEADER_LEN + body;
	return 0;
}

int
tether_rpc_error_encode(uint32_t id, const char *code, const char *message,
                        const char *category, unsigned char **out,
                        size_t *out_len, tether_error *err)
{
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	json_t *o = NULL, *e = NULL;
	size_t n, i;
	int r;

	if (id == 0 || !tether_proto_is_token(code, TETHER_PROTO_CODE_MAX)) {
		r = MISUSE("response %u: the id must not be 0 and the error code "
		           "must be 1..%u characters [a-z0-9._-]", id,
		           TETHER_PROTO_CODE_MAX);
		goto out;
	}
	if (category != NULL &&
	    !tether_proto_is_token(category, TETHER_RPC_CATEGORY_MAX)) {
		r = MISUSE("response %u: the category must be 1..%u characters "
		           "[a-z0-9._-]", id, TETHER_RPC_CATEGORY_MAX);
		goto out;
	}
	/* Cut at a UTF-8 boundary, control characters to spaces. */
	n = message == NULL ? 0 : strlen(message);
	if (n > TETHER_PROTO_MESSAGE_MAX) {
		n = TETHER_PROTO_MESSAGE_MAX;
		while (n > 0 && ((unsigned char)message[n] & 0xc0) == 0x80)
			n--;
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)message[i];
		msg[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	msg[n] = '\0';

	e = json_pack("{s:s, s:s}", "code", code, "message", msg);
	if (e == NULL) {
		r = MISUSE("response %u: the error message is not valid UTF-8",
		           id);
		goto out;
	}
	if (category != NULL &&
	    json_object_set_new(e, "category", json_string(category)) < 0) {
		r = FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		         "out of memory building response %u", id);
		goto out;
	}
	o = json_pack("{s:I, s:O}", "id", (json_int_t)id, "error", e);
	r = encode_envelope(TETHER_FRAME_RESPONSE, id, o, 0, out, out_len, err);
out:
	json_decref(e);
	json_decref(o);
	return r;
}

/* "id": an integer 1..2^32-1 equal to the frame header's id. */
static int
check_id(json_t *o, uint32_t frame_id, const char *what, tether_error *err)
{
	json_t *v = json_object_get(o, "id");
	json_int_t id;

	if (!json_is_integer(v))
		return BAD("%s %u: \"id\" must be an integer", what, frame_id);
	id = json_integer_value(v);
	if (id < 1 || id > (json_int_t)UINT32_MAX)
		return BAD("%s %u: \"id\" %lld is out of range 1..4294967295",
		           what, frame_id, (long long)id);
	if ((uint32_t)id != frame_id)
		return BAD("%s id %lld in the JSON does not match id %u in the "
		           "frame header", what, (long long)id, frame_id);
	return 0;
}

/* A string member, no embedded NUL, or NULL. */
static const char *
str_member(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_string(v) ||
	    strlen(json_string_value(v)) != json_string_length(v))
		return NULL;
	return json_string_value(v);
}

int
tether_rpc_request_parse(uint32_t frame_id, const unsigned char *payload,
                         size_t len, tether_rpc_request *out,
                         tether_error *err)
{
	json_t *o = NULL, *params;
	const char *method;
	int r;

	if (out == NULL) {
		r = MISUSE("request parse: no output");
		goto out;
	}
	if (frame_id == 0) {
		r = BAD("a request must not have id 0");
		goto out;
	}
	if (len > TETHER_FRAME_JSON_MAX_HARD) {
		r = BAD("request %u is %zu bytes, more than the limit of %u",
		        frame_id, len, TETHER_FRAME_JSON_MAX_HARD);
		goto out;
	}
	r = tether_json_parse_object(payload, len, "request", &o, err);
	if (r < 0)
		goto out;
	r = check_id(o, frame_id, "request", err);
	if (r < 0)
		goto out;
	method = str_member(o, "method");
	if (method == NULL || !tether_rpc_method_valid(method)) {
		r = BAD("request %u: \"method\" must be a string of 1..%u "
		        "characters [a-z0-9._-]", frame_id,
		        TETHER_RPC_METHOD_MAX);
		goto out;
	}
	params = json_object_get(o, "params");
	if (params != NULL && !json_is_object(params)) {
		r = BAD("request %u (%s): \"params\" must be a JSON object",
		        frame_id, method);
		goto out;
	}
	if (params != NULL)
		json_incref(params);
	else
		params = json_object();
	if (params == NULL) {
		r = FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		         "out of memory parsing request %u", frame_id);
		goto out;
	}
	memset(out, 0, sizeof(*out));
	out->id = frame_id;
	/* a valid method is a token of at most TETHER_RPC_METHOD_MAX bytes */
	memcpy(out->method, method, strlen(method) + 1);
	out->params = params;
	r = 0;
out:
	json_decref(o);
	return r;
}

int
tether_rpc_response_parse(uint32_t frame_id, const unsigned char *payload,
                          size_t len, tether_rpc_response *out,
                          tether_error *err)
{
	tether_rpc_response *tmp = NULL;
	json_t *o = NULL, *result, *e;
	const char *code, *message, *category;
	int r;

	if (out == NULL) {
		r = MISUSE("response parse: no output");
		goto out;
	}
	if (frame_id == 0) {
		r = BAD("a response must not have id 0");
		goto out;
	}
	if (len > TETHER_FRAME_JSON_MAX_HARD) {
		r = BAD("response %u is %zu bytes, more than the limit of %u",
		        frame_id, len, TETHER_FRAME_JSON_MAX_HARD);
		goto out;
	}
	tmp = calloc(1, sizeof(*tmp));
	if (tmp == NULL) {
		r = FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		         "out of memory parsing response %u", frame_id);
		goto out;
	}
	r = tether_json_parse_object(payload, len, "response", &o, err);
	if (r < 0)
		goto out;
	r = check_id(o, frame_id, "response", err);
	if (r < 0)
		goto out;
	result = json_object_get(o, "result");
	e = json_object_get(o, "error");
	if ((result == NULL) == (e == NULL)) {
		r = BAD("response %u must have exactly one of \"result\" and "
		        "\"error\"", frame_id);
		goto out;
	}
	tmp->id = frame_id;
	if (result != NULL) {
		if (!json_is_object(result)) {
			r = BAD("response %u: \"result\" must be a JSON object",
			        frame_id);
			goto out;
		}
		tmp->result = json_incref(result);
	} else {
		if (!json_is_object(e)) {
			r = BAD("response %u: \"error\" must be a JSON object",
			        frame_id);
			goto out;
		}
		code = str_member(e, "code");
		if (code == NULL ||
		    !tether_proto_is_token(code, TETHER_PROTO_CODE_MAX)) {
			r = BAD("response %u: error \"code\" must be a string of "
			        "1..%u characters [a-z0-9._-]", frame_id,
			        TETHER_PROTO_CODE_MAX);
			goto out;
		}
		message = str_member(e, "message");
		if (message == NULL ||
		    !tether_proto_is_text(message, TETHER_PROTO_MESSAGE_MAX)) {
			r = BAD("response %u: error \"message\" must be a string "
			        "of at most %u bytes without control characters",
			        frame_id, TETHER_PROTO_MESSAGE_MAX);
			goto out;
		}
		category = NULL;
		if (json_object_get(e, "category") != NULL) {
			category = str_member(e, "category");
			if (category == NULL ||
			    !tether_proto_is_token(category,
			                           TETHER_RPC_CATEGORY_MAX)) {
				r = BAD("response %u: error \"category\" must be a "
				        "string of 1..%u characters [a-z0-9._-]",
				        frame_id, TETHER_RPC_CATEGORY_MAX);
				goto out;
			}
		}
		tmp->is_error = 1;
		snprintf(tmp->code, sizeof(tmp->code), "%s", code);
		snprintf(tmp->message, sizeof(tmp->message), "%s", message);
		if (category != NULL)
			snprintf(tmp->category, sizeof(tmp->category), "%s",
			         category);
	}
	*out = *tmp;
	r = 0;
out:
	json_decref(o);
	free(tmp);
	return r;
}

void
tether_rpc_request_clear(tether_rpc_request *req)
{
	if (req == NULL)
		return;
	json_decref(req->params);
	memset(req, 0, sizeof(*req));
}

void
tether_rpc_response_clear(tether_rpc_response *resp)
{
	if (resp == NULL)
		return;
	json_decref(resp->result);
	memset(resp, 0, sizeof(*resp));
}
