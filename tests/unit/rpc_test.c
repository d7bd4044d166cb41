/* Unit tests for core/rpc.c: request/response envelopes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "frame.h"
#include "rpc.h"

/* Decode one complete frame from buf (after a fake HELLO so the decoder
 * accepts it). */
static void
decode_one(const unsigned char *buf, size_t n, tether_frame_decoder *d,
           tether_frame *f)
{
	static const char hello[] = "\1\0\0\0\0\0\0\0\0\0\0\2{}";
	tether_error err;
	size_t used;

	assert_int_equal(tether_frame_decoder_init(d, 0, &err), 0);
	assert_int_equal(tether_frame_decode(d, hello, sizeof(hello) - 1, &used,
	                                     f, &err), TETHER_FRAME_READY);
	assert_int_equal(tether_frame_decode(d, buf, n, &used, f, &err),
	                 TETHER_FRAME_READY);
	assert_int_equal(used, n);
}

static void
test_request_roundtrip(void **state)
{
	tether_frame_decoder d;
	tether_frame f;
	tether_rpc_request req;
	tether_error err;
	unsigned char *buf = NULL;
	size_t n = 0;
	json_t *params;

	(void)state;
	params = json_pack("{s:s, s:i}", "path", "/tmp/x", "mode", 420);
	assert_int_equal(tether_rpc_request_encode(7, "file.get", params, 0, &buf,
	                                           &n, &err), 0);
	{
		/* the envelope is made by hand: the bytes a json_t would give */
		json_t *env = json_pack("{s:I, s:s, s:O}", "id", (json_int_t)7, "method", "file.get",
		                        "params", params);
		char *want = json_dumps(env, JSON_COMPACT);
		assert_int_equal(n - TETHER_FRAME_HEADER_LEN, strlen(want));
		assert_memory_equal(buf + TETHER_FRAME_HEADER_LEN, want, strlen(want));
		free(want);
		json_decref(env);
		/* over max_json: refused */
		unsigned char *big = NULL;
		size_t bn = 0;
		assert_int_equal(tether_rpc_request_encode(7, "file.get", params, n - TETHER_FRAME_HEADER_LEN - 1,
		                                           &big, &bn, &err), TETHER_ERR_INVALID);
		assert_null(big);
	}
	json_decref(params);
	decode_one(buf, n, &d, &f);
	assert_int_equal(f.type, TETHER_FRAME_REQUEST);
	assert_int_equal(f.id, 7);
	assert_int_equal(tether_rpc_request_parse(f.id, f.body, f.body_len, &req,
	                                          &err), 0);
	assert_int_equal(req.id, 7);
	assert_string_equal(req.method, "file.get");
	assert_string_equal(json_string_value(json_object_get(req.params, "path")),
	                    "/tmp/x");
	tether_rpc_request_clear(&req);
	assert_null(req.params);
	tether_frame_decoder_free(&d);
	free(buf);

	/* No params: {} on the wire and in the parsed request. */
	assert_int_equal(tether_rpc_request_encode(4294967295u, "health", NULL, 0,
	                                           &buf, &n, &err), 0);
	assert_memory_equal(buf + TETHER_FRAME_HEADER_LEN,
	                    "{\"id\":4294967295,\"method\":\"health\","
	                    "\"params\":{}}", n - TETHER_FRAME_HEADER_LEN);
	assert_int_equal(tether_rpc_request_parse(4294967295u,
	                                          buf + TETHER_FRAME_HEADER_LEN,
	                                          n - TETHER_FRAME_HEADER_LEN,
	                                          &req, &err), 0);
	assert_true(json_is_object(req.params));
	assert_int_equal(json_object_size(req.params), 0);
	tether_rpc_request_clear(&req);
	free(buf);

	/* params absent on the wire */
	assert_int_equal(tether_rpc_request_parse(3,
	        (const unsigned char *)"{\"id\":3,\"method\":\"health\"}", 26,
	        &req, &err), 0);
	assert_int_equal(json_object_size(req.params), 0);
	tether_rpc_request_clear(&req);
}

/* A result serialised by the caller: the same frame as from a json_t. */
static void
test_result_raw(void **state)
{
	static const char res[] = "{\"version\":\"0.1.0\",\"uptime_s\":12}";
	tether_frame_decoder d;
	tether_frame f;
	tether_rpc_response resp;
	tether_error err;
	unsigned char *buf = NULL, *ref = NULL;
	size_t n = 0, rn = 0;
	json_t *result;

	(void)state;
	assert_int_equal(tether_rpc_result_encode_raw(4294967295u, res, strlen(res), 0, &buf, &n, &err), 0);
	result = json_pack("{s:s, s:i}", "version", "0.1.0", "uptime_s", 12);
	assert_int_equal(tether_rpc_result_encode(4294967295u, result, 0, &ref, &rn, &err), 0);
	json_decref(result);
	assert_int_equal(n, rn);
	assert_memory_equal(buf, ref, n);
	free(ref);
	decode_one(buf, n, &d, &f);
	assert_int_equal(f.type, TETHER_FRAME_RESPONSE);
	assert_int_equal(f.id, 4294967295u);
	assert_int_equal(tether_rpc_response_parse(f.id, f.body, f.body_len, &resp, &err), 0);
	assert_false(resp.is_error);
	assert_int_equal(json_integer_value(json_object_get(resp.result, "uptime_s")), 12);
	tether_rpc_response_clear(&resp);
	tether_frame_decoder_free(&d);
	free(buf);

	/* not an object, id 0, over the limit: refused, nothing made */
	buf = NULL;
	assert_int_equal(tether_rpc_result_encode_raw(1, "[1]", 3, 0, &buf, &n, &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_result_encode_raw(1, "{", 1, 0, &buf, &n, &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_result_encode_raw(0, res, strlen(res), 0, &buf, &n, &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_result_encode_raw(1, res, strlen(res), 20, &buf, &n, &err), TETHER_ERR_INVALID);
	assert_null(buf);
}

static void
test_response_roundtrip(void **state)
{
	tether_frame_decoder d;
	tether_frame f;
	tether_rpc_response resp;
	tether_error err;
	unsigned char *buf = NULL;
	size_t n = 0;
	json_t *result;

	(void)state;
	result = json_pack("{s:s, s:i}", "version", "0.1.0", "uptime_s", 12);
	assert_int_equal(tether_rpc_result_encode(9, result, 0, &buf, &n, &err),
	                 0);
	json_decref(result);
	decode_one(buf, n, &d, &f);
	assert_int_equal(f.type, TETHER_FRAME_RESPONSE);
	assert_int_equal(tether_rpc_response_parse(f.id, f.body, f.body_len,
	                                           &resp, &err), 0);
	assert_false(resp.is_error);
	assert_int_equal(json_integer_value(json_object_get(resp.result,
	                                                    "uptime_s")), 12);
	tether_rpc_response_clear(&resp);
	tether_frame_decoder_free(&d);
	free(buf);

	assert_int_equal(tether_rpc_error_encode(9, "unknown_method",
	                                         "no method \"x\"\n here",
	                                         "untrusted", &buf, &n, &err), 0);
	decode_one(buf, n, &d, &f);
	assert_int_equal(tether_rpc_response_parse(f.id, f.body, f.body_len,
	                                           &resp, &err), 0);
	assert_true(resp.is_error);
	assert_null(resp.result);
	assert_string_equal(resp.code, "unknown_method");
	assert_string_equal(resp.message, "no method \"x\"  here");
	assert_string_equal(resp.category, "untrusted");
	tether_rpc_response_clear(&resp);
	tether_frame_decoder_free(&d);
	free(buf);

	/* category is optional */
	assert_int_equal(tether_rpc_error_encode(2, "busy", "later", NULL, &buf,
	                                         &n, &err), 0);
	assert_int_equal(tether_rpc_response_parse(2,
	                                           buf + TETHER_FRAME_HEADER_LEN,
	                                           n - TETHER_FRAME_HEADER_LEN,
	                                           &resp, &err), 0);
	assert_string_equal(resp.category, "");
	tether_rpc_response_clear(&resp);
	free(buf);
}

static void
test_encode_refuses(void **state)
{
	tether_error err;
	unsigned char *buf = NULL;
	size_t n = 0;
	json_t *arr = json_array(), *obj = json_object();
	char method[80], msg[3000];

	(void)state;
	memset(method, 'm', 65);
	method[65] = '\0';
	assert_int_equal(tether_rpc_request_encode(0, "health", NULL, 0, &buf, &n,
	                                           &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_request_encode(1, "Health", NULL, 0, &buf, &n,
	                                           &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_request_encode(1, "", NULL, 0, &buf, &n,
	                                           &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_request_encode(1, method, NULL, 0, &buf, &n,
	                                           &err), TETHER_ERR_INVALID);
	method[64] = '\0';
	assert_int_equal(tether_rpc_request_encode(1, method, NULL, 0, &buf, &n,
	                                           &err), 0);
	free(buf);
	assert_int_equal(tether_rpc_request_encode(1, "health", arr, 0, &buf, &n,
	                                           &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_result_encode(1, arr, 0, &buf, &n, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_result_encode(0, obj, 0, &buf, &n, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_error_encode(1, "Bad", "x", NULL, &buf, &n,
	                                         &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_rpc_error_encode(1, "bad", "x", "Not ok", &buf,
	                                         &n, &err), TETHER_ERR_INVALID);
	/* a too-long message is cut, at a UTF-8 boundary */
	memset(msg, 'a', sizeof(msg) - 1);
	msg[sizeof(msg) - 1] = '\0';
	msg[1022] = (char)0xc3;
	msg[1023] = (char)0xa9;           /* "é" straddling... */
	msg[1024] = (char)0xc3;
	msg[1025] = (char)0xa9;           /* ... and beyond 1024 */
	assert_int_equal(tether_rpc_error_encode(1, "internal", msg, NULL, &buf,
	                                         &n, &err), 0);
	{
		tether_rpc_response resp;
		assert_int_equal(tether_rpc_response_parse(1,
		        buf + TETHER_FRAME_HEADER_LEN, n - TETHER_FRAME_HEADER_LEN,
		        &resp, &err), 0);
		assert_int_equal(strlen(resp.message), 1024);
		tether_rpc_response_clear(&resp);
	}
	free(buf);
	/* a result over the limit */
	{
		char *big = malloc(4096);
		json_t *r;
		memset(big, 'b', 4095);
		big[4095] = '\0';
		r = json_pack("{s:s}", "x", big);
		assert_int_equal(tether_rpc_result_encode(1, r, 2048, &buf, &n,
		                                          &err), TETHER_ERR_INVALID);
		json_decref(r);
		free(big);
	}
	json_decref(arr);
	json_decref(obj);
}

static void
test_request_parse_refuses(void **state)
{
	static const char *const bad[] = {
		"",
		"{",
		"null",
		"[1]",
		"{\"id\":5,\"method\":\"health\"} {}",
		"{\"method\":\"health\"}",
		"{\"id\":\"5\",\"method\":\"health\"}",
		"{\"id\":5.0,\"method\":\"health\"}",
		"{\"id\":0,\"method\":\"health\"}",
		"{\"id\":-5,\"method\":\"health\"}",
		"{\"id\":4294967301,\"method\":\"health\"}",  /* 5 + 2^32 */
		"{\"id\":99999999999999999999,\"method\":\"health\"}",
		"{\"id\":6,\"method\":\"health\"}",          /* mismatch */
		"{\"id\":5}",
		"{\"id\":5,\"method\":7}",
		"{\"id\":5,\"method\":\"\"}",
		"{\"id\":5,\"method\":\"Health\"}",
		"{\"id\":5,\"method\":\"he alth\"}",
		"{\"id\":5,\"method\":\"h\\u0000x\"}",
		"{\"id\":5,\"method\":\"x/y\"}",
		"{\"id\":5,\"method\":\"mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm"
		"mmmmmmmmmmmmmmmmmmmmm\"}",                    /* 65 */
		"{\"id\":5,\"method\":\"health\",\"params\":[]}",
		"{\"id\":5,\"method\":\"health\",\"params\":null}",
		"{\"id\":5,\"method\":\"health\",\"params\":\"x\"}",
		"{\"id\":5,\"id\":5,\"method\":\"health\"}",
		"{\"id\":5,\"method\":\"health\xff\"}",
	};
	tether_rpc_request req;
	tether_error err;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&req, 0x5a, sizeof(req));
		if (tether_rpc_request_parse(5, (const unsigned char *)bad[i],
		                             strlen(bad[i]), &req, &err) !=
		    TETHER_ERR_PROTOCOL)
			fail_msg("case %zu accepted: %s", i, bad[i]);
		assert_true(strlen(err.detail) > 0);
		assert_int_equal(req.id, 0x5a5a5a5a);     /* untouched */
	}
	/* frame id 0 */
	assert_int_equal(tether_rpc_request_parse(0,
	        (const unsigned char *)"{\"id\":0,\"method\":\"x\"}", 21, &req,
	        &err), TETHER_ERR_PROTOCOL);
	/* the mismatch message */
	assert_int_equal(tether_rpc_request_parse(5,
	        (const unsigned char *)"{\"id\":6,\"method\":\"x\"}", 21, &req,
	        &err), TETHER_ERR_PROTOCOL);
	assert_string_equal(err.detail, "request id 6 in the JSON does not match "
	                    "id 5 in the frame header");
	/* the 64-character method is fine; unknown members are ignored */
	{
		static const char ok64[] = "{\"id\":5,\"method\":\""
		        "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm"
		        "\",\"x\":1}";
		assert_int_equal(tether_rpc_request_parse(5,
		        (const unsigned char *)ok64, strlen(ok64), &req, &err), 0);
	}
	assert_int_equal(strlen(req.method), 64);
	tether_rpc_request_clear(&req);
}

static void
test_response_parse_refuses(void **state)
{
	static const char *const bad[] = {
		"",
		"{}",
		"{\"id\":5}",
		"{\"id\":5,\"result\":{},\"error\":{\"code\":\"x\",\"message\":\"\"}}",
		"{\"id\":5,\"result\":[]}",
		"{\"id\":5,\"result\":null}",
		"{\"id\":5,\"result\":\"ok\"}",
		"{\"id\":4,\"result\":{}}",
		"{\"id\":\"5\",\"result\":{}}",
		"{\"id\":5,\"error\":\"boom\"}",
		"{\"id\":5,\"error\":{}}",
		"{\"id\":5,\"error\":{\"code\":\"x\"}}",
		"{\"id\":5,\"error\":{\"message\":\"x\"}}",
		"{\"id\":5,\"error\":{\"code\":1,\"message\":\"x\"}}",
		"{\"id\":5,\"error\":{\"code\":\"Bad Code\",\"message\":\"x\"}}",
		"{\"id\":5,\"error\":{\"code\":\"x\",\"message\":7}}",
		"{\"id\":5,\"error\":{\"code\":\"x\",\"message\":\"a\\u001bb\"}}",
		"{\"id\":5,\"error\":{\"code\":\"x\",\"message\":\"a\\rb\"}}",
		"{\"id\":5,\"error\":{\"code\":\"x\",\"message\":\"\","
		"\"category\":5}}",
		"{\"id\":5,\"error\":{\"code\":\"x\",\"message\":\"\","
		"\"category\":\"\"}}",
		"{\"id\":5,\"error\":{\"code\":\"x\",\"message\":\"\","
		"\"category\":\"ccccccccccccccccccccccccccccccccc\"}}",   /* 33 */
		"{\"id\":5,\"error\":{\"code\":\"x\",\"message\":\"\","
		"\"category\":null}}",
	};
	tether_rpc_response resp;
	tether_error err;
	size_t i;
	char *longmsg;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&resp, 0x5a, sizeof(resp));
		if (tether_rpc_response_parse(5, (const unsigned char *)bad[i],
		                              strlen(bad[i]), &resp, &err) !=
		    TETHER_ERR_PROTOCOL)
			fail_msg("case %zu accepted: %s", i, bad[i]);
		assert_int_equal(resp.id, 0x5a5a5a5a);
	}
	/* a 1025-byte message */
	longmsg = malloc(1200);
	snprintf(longmsg, 1200, "{\"id\":5,\"error\":{\"code\":\"x\","
	         "\"message\":\"%01025d\"}}", 0);
	assert_int_equal(tether_rpc_response_parse(5,
	                 (const unsigned char *)longmsg, strlen(longmsg), &resp,
	                 &err), TETHER_ERR_PROTOCOL);
	snprintf(longmsg, 1200, "{\"id\":5,\"error\":{\"code\":\"x\","
	         "\"message\":\"%01024d\"}}", 0);
	assert_int_equal(tether_rpc_response_parse(5,
	                 (const unsigned char *)longmsg, strlen(longmsg), &resp,
	                 &err), 0);
	tether_rpc_response_clear(&resp);
	free(longmsg);
}

static void
test_deep_json(void **state)
{
	tether_rpc_request req;
	tether_error err;
	char *s;
	size_t i, n = 100000;

	(void)state;
	/* Deeply nested params are refused by the JSON parser's depth limit,
	 * not by running out of stack. */
	s = malloc(n + 64);
	assert_non_null(s);
	strcpy(s, "{\"id\":5,\"method\":\"x\",\"params\":{\"a\":");
	i = strlen(s);
	memset(s + i, '[', n);
	s[i + n] = '\0';
	assert_int_equal(tether_rpc_request_parse(5, (const unsigned char *)s,
	                                          strlen(s), &req, &err),
	                 TETHER_ERR_PROTOCOL);
	free(s);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_roundtrip),
		cmocka_unit_test(test_response_roundtrip),
		cmocka_unit_test(test_result_raw),
		cmocka_unit_test(test_encode_refuses),
		cmocka_unit_test(test_request_parse_refuses),
		cmocka_unit_test(test_response_parse_refuses),
		cmocka_unit_test(test_deep_json),
	};
	return cmocka_run_group_tests_name("rpc", tests, NULL, NULL);
}
