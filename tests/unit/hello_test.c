/* Unit tests for core/hello.c: build, parse, validate, negotiate. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* memmem */
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "frame.h"
#include "hello.h"

#define IID  "0123456789abcdef0123456789ABCDEF"
#define IID2 "fedcba9876543210fedcba9876543210"

static void
make(tether_hello *h, int role, int mode, const char *iid)
{
	tether_error err;
	assert_int_equal(tether_hello_init(h, role, mode, "0.1.0", iid, &err), 0);
	assert_int_equal(tether_hello_add_capability(h, "health", &err), 0);
}

/* Encode h and decode the frame; parse the payload into out. */
static int
roundtrip(const tether_hello *h, tether_hello *out, tether_error *err)
{
	tether_frame_decoder d;
	tether_frame f;
	unsigned char *buf = NULL;
	size_t n = 0, used;
	int r;

	r = tether_hello_encode(h, &buf, &n, err);
	if (r < 0)
		return r;
	assert_int_equal(tether_frame_decoder_init(&d, 0, err), 0);
	assert_int_equal(tether_frame_decode(&d, buf, n, &used, &f, err),
	                 TETHER_FRAME_READY);
	assert_int_equal(used, n);
	assert_int_equal(f.type, TETHER_FRAME_HELLO);
	r = tether_hello_parse(f.body, f.body_len, out, err);
	tether_frame_decoder_free(&d);
	free(buf);
	return r;
}

static int
parse_str(const char *json, tether_hello *out, tether_error *err)
{
	return tether_hello_parse((const unsigned char *)json, strlen(json), out,
	                          err);
}

static void
test_roundtrip(void **state)
{
	tether_hello h, p;
	tether_error err;

	(void)state;
	make(&h, TETHER_ROLE_AGENT, TETHER_MODE_POLLING, IID);
	assert_int_equal(tether_hello_add_capability(&h, "script", &err), 0);
	assert_int_equal(tether_hello_add_capability(&h, "health", &err), 0);
	assert_int_equal(h.n_capabilities, 2);
	assert_int_equal(roundtrip(&h, &p, &err), 0);
	assert_int_equal(p.major, 1);
	assert_int_equal(p.minor, 0);
	assert_int_equal(p.role, TETHER_ROLE_AGENT);
	assert_int_equal(p.mode, TETHER_MODE_POLLING);
	assert_string_equal(p.software_version, "0.1.0");
	/* normalised to lower case */
	assert_string_equal(p.instance_id, "0123456789abcdef0123456789abcdef");
	assert_int_equal(p.n_capabilities, 2);
	assert_true(tether_hello_has_capability(&p, "script"));
	assert_false(tether_hello_has_capability(&p, "file"));
	assert_false(p.has_error);
}

static void
test_exact_json(void **state)
{
	tether_hello h;
	tether_error err;
	json_t *o = NULL;
	char *s;

	(void)state;
	make(&h, TETHER_ROLE_SERVER, TETHER_MODE_LISTENING, IID2);
	assert_int_equal(tether_hello_to_json(&h, &o, &err), 0);
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(s, "{\"capabilities\":[\"health\"],"
	                       "\"instance_id\":\"" IID2 "\","
	                       "\"mode\":\"listening\",\"protocol\":\"tether\","
	                       "\"role\":\"server\",\"software_version\":\"0.1.0\","
	                       "\"version\":\"1.0\"}");
	free(s);
	json_decref(o);
}

static void
test_init_refuses(void **state)
{
	tether_hello h;
	tether_error err;
	char longv[100];
	int i;

	(void)state;
	memset(longv, 'v', sizeof(longv) - 1);
	longv[sizeof(longv) - 1] = '\0';
	assert_int_equal(tether_hello_init(&h, 3, TETHER_MODE_POLLING, "1", IID,
	                                   &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_init(&h, TETHER_ROLE_AGENT, 0, "1", IID,
	                                   &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_init(&h, TETHER_ROLE_AGENT,
	                                   TETHER_MODE_POLLING, longv, IID, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_init(&h, TETHER_ROLE_AGENT,
	                                   TETHER_MODE_POLLING, "", IID, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_init(&h, TETHER_ROLE_AGENT,
	                                   TETHER_MODE_POLLING, "1\n", IID, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_init(&h, TETHER_ROLE_AGENT,
	                                   TETHER_MODE_POLLING, "1", "abc", &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_init(&h, TETHER_ROLE_AGENT,
	                                   TETHER_MODE_POLLING, "1",
	                                   IID "0", &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_init(&h, TETHER_ROLE_AGENT,
	                                   TETHER_MODE_POLLING, "1",
	                                   "0123456789abcdef0123456789abcdeg",
	                                   &err), TETHER_ERR_INVALID);

	make(&h, TETHER_ROLE_AGENT, TETHER_MODE_POLLING, IID);
	assert_int_equal(tether_hello_add_capability(&h, "Bad", &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_hello_add_capability(&h, longv, &err),
	                 TETHER_ERR_INVALID);
	for (i = 1; i < TETHER_HELLO_CAPS_MAX; i++) {
		char cap[16];
		snprintf(cap, sizeof(cap), "c%d", i);
		assert_int_equal(tether_hello_add_capability(&h, cap, &err), 0);
	}
	assert_int_equal(tether_hello_add_capability(&h, "onemore", &err),
	                 TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "more than 64"));
}

#define GOOD_REST ",\"role\":\"agent\",\"software_version\":\"1\"," \
	"\"capabilities\":[],\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}"

static void
test_parse_refuses(void **state)
{
	static const char *const bad[] = {
		"",
		"{",
		"[]",
		"\"tether\"",
		"{\"protocol\":\"tether\",\"version\":\"1.0\"" GOOD_REST " x",
		/* protocol */
		"{\"version\":\"1.0\"" GOOD_REST,
		"{\"protocol\":\"http\",\"version\":\"1.0\"" GOOD_REST,
		"{\"protocol\":1,\"version\":\"1.0\"" GOOD_REST,
		/* version */
		"{\"protocol\":\"tether\",\"version\":1.0" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\"1\"" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\"1.\"" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\".1\"" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\"1.0.0\"" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\"01.0\"" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\"1.65536\"" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\"-1.0\"" GOOD_REST,
		"{\"protocol\":\"tether\",\"version\":\"1.0 \"" GOOD_REST,
		/* duplicate key */
		"{\"protocol\":\"tether\",\"protocol\":\"tether\","
		"\"version\":\"1.0\"" GOOD_REST,
		/* role, mode */
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"admin\","
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":[\"agent\"],"
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"push\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\"}",
		/* software_version */
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":7,\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"a\\u0007b\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"\\u00e9\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		/* instance_id */
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":\"xyz\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":12,\"mode\":\"polling\"}",
		/* capabilities */
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":\"health\","
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[1],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[\"a\",\"a\"],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[\"\"],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
		/* error */
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\",\"error\":\"x\"}",
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"1\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\","
		"\"error\":{\"code\":\"x\"}}",
		/* invalid UTF-8 */
		"{\"protocol\":\"tether\",\"version\":\"1.0\",\"role\":\"agent\","
		"\"software_version\":\"\xff\",\"capabilities\":[],"
		"\"instance_id\":\"" IID2 "\",\"mode\":\"polling\"}",
	};
	tether_hello h;
	tether_error err;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&h, 0x5a, sizeof(h));
		if (parse_str(bad[i], &h, &err) != TETHER_ERR_PROTOCOL)
			fail_msg("case %zu accepted: %s", i, bad[i]);
		assert_int_equal(err.code, TETHER_ERR_PROTOCOL);
		assert_true(strlen(err.detail) > 0);
		/* out untouched on failure */
		assert_int_equal(h.major, 0x5a5a);
	}
	/* The reference is accepted (so the cases above fail for their one
	 * flaw); unknown fields are ignored. */
	assert_int_equal(parse_str("{\"protocol\":\"tether\",\"version\":\"1.7\","
	                           "\"future\":{\"x\":1}" GOOD_REST, &h, &err), 0);
	assert_int_equal(h.minor, 7);
}

static void
test_parse_bounds(void **state)
{
	tether_hello h;
	tether_error err;
	json_t *o, *caps;
	char *s, cap[80];
	int i;

	(void)state;
	/* 65 capabilities */
	caps = json_array();
	for (i = 0; i < 65; i++) {
		snprintf(cap, sizeof(cap), "c%d", i);
		json_array_append_new(caps, json_string(cap));
	}
	o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s}", "protocol", "tether",
	              "version", "1.0", "role", "agent", "software_version", "1",
	              "capabilities", caps, "instance_id", IID2, "mode",
	              "polling");
	s = json_dumps(o, 0);
	assert_int_equal(parse_str(s, &h, &err), TETHER_ERR_PROTOCOL);
	assert_non_null(strstr(err.detail, "65 capabilities"));
	free(s);
	/* 64 is fine */
	json_array_remove(caps, 0);
	s = json_dumps(o, 0);
	assert_int_equal(parse_str(s, &h, &err), 0);
	assert_int_equal(h.n_capabilities, 64);
	free(s);
	/* a 65-byte capability */
	memset(cap, 'a', 65);
	cap[65] = '\0';
	json_array_set_new(caps, 0, json_string(cap));
	s = json_dumps(o, 0);
	assert_int_equal(parse_str(s, &h, &err), TETHER_ERR_PROTOCOL);
	free(s);
	/* a 65-byte software version */
	json_array_set_new(caps, 0, json_string("x"));
	json_object_set_new(o, "software_version", json_string(cap));
	s = json_dumps(o, 0);
	assert_int_equal(parse_str(s, &h, &err), TETHER_ERR_PROTOCOL);
	free(s);
	json_decref(o);

	/* over the HELLO size bound */
	s = calloc(1, TETHER_FRAME_HELLO_MAX + 2);
	memset(s, ' ', TETHER_FRAME_HELLO_MAX + 1);
	assert_int_equal(parse_str(s, &h, &err), TETHER_ERR_PROTOCOL);
	free(s);
}

static void
test_negotiate_minor(void **state)
{
	tether_hello a, s;
	tether_hello_agreed ag;
	tether_error err;

	(void)state;
	make(&a, TETHER_ROLE_AGENT, TETHER_MODE_LISTENING, IID);
	make(&s, TETHER_ROLE_SERVER, TETHER_MODE_LISTENING, IID2);
	s.minor = 3;
	assert_int_equal(tether_hello_negotiate(&a, &s, &ag, NULL, NULL, 0, &err),
	                 0);
	assert_int_equal(ag.major, 1);
	assert_int_equal(ag.minor, 0);
	a.minor = 5;
	assert_int_equal(tether_hello_negotiate(&s, &a, &ag, NULL, NULL, 0, &err),
	                 0);
	assert_int_equal(ag.minor, 3);
}

static void
test_negotiate_major(void **state)
{
	tether_hello a, s, p;
	tether_hello_agreed ag = { 77, 77 };
	tether_error err;
	char code[TETHER_PROTO_CODE_MAX + 1];
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	unsigned char *buf = NULL;
	size_t n = 0;

	(void)state;
	make(&a, TETHER_ROLE_AGENT, TETHER_MODE_LISTENING, IID);
	/* A 2.0 server whose HELLO has a field this version doesn't know the
	 * shape of: still parsed enough to explain. */
	assert_int_equal(parse_str("{\"protocol\":\"tether\",\"version\":\"2.0\","
	                           "\"role\":\"server\",\"software_version\":"
	                           "\"2.1.0\",\"capabilities\":{\"new\":1}}",
	                           &s, &err), 0);
	assert_int_equal(s.major, 2);
	assert_int_equal(s.role, TETHER_ROLE_SERVER);
	assert_int_equal(tether_hello_negotiate(&a, &s, &ag, code, msg,
	                                        sizeof(msg), &err),
	                 TETHER_ERR_PROTOCOL);
	assert_int_equal(ag.major, 77);          /* untouched */
	assert_int_equal(err.category, TETHER_CAT_PROTOCOL_VERSION);
	assert_string_equal(err.detail,
	        "the server speaks tether protocol 2.0 (software 2.1.0); this "
	        "agent speaks 1.x: upgrade this agent to a release that speaks "
	        "protocol 2.x");
	assert_string_equal(code, "protocol_version");
	assert_string_equal(msg,
	        "the agent speaks tether protocol 1.0 (software 0.1.0) and "
	        "refused protocol 2.0: upgrade the agent to a release that "
	        "speaks protocol 2.x");

	/* The refusing agent answers with an error; the server reads it. */
	assert_int_equal(tether_hello_answer_encode(&a, code, msg, &buf, &n,
	                                            &err), 0);
	assert_int_equal(tether_hello_parse(buf + TETHER_FRAME_HEADER_LEN,
	                                    n - TETHER_FRAME_HEADER_LEN, &p,
	                                    &err), 0);
	free(buf);
	assert_true(p.has_error);
	assert_string_equal(p.error_code, "protocol_version");
	make(&s, TETHER_ROLE_SERVER, TETHER_MODE_LISTENING, IID2);
	assert_int_equal(tether_hello_negotiate(&s, &p, &ag, NULL, NULL, 0, &err),
	                 TETHER_ERR_PROTOCOL);
	assert_int_equal(err.category, TETHER_CAT_PROTOCOL_VERSION);
	assert_non_null(strstr(err.detail, "the agent refused the connection "
	                                   "(protocol_version): the agent speaks "
	                                   "tether protocol 1.0"));

	/* An older peer (0.9) talking to us: upgrade the peer. */
	assert_int_equal(parse_str("{\"protocol\":\"tether\",\"version\":\"0.9\","
	                           "\"role\":\"agent\"}", &p, &err), 0);
	assert_int_equal(tether_hello_negotiate(&s, &p, &ag, code, msg,
	                                        sizeof(msg), &err),
	                 TETHER_ERR_PROTOCOL);
	assert_string_equal(err.detail,
	        "the agent speaks tether protocol 0.9 (software unknown); this "
	        "server speaks 1.x: upgrade the agent to a release that speaks "
	        "protocol 1.x");
	assert_non_null(strstr(msg, "upgrade this agent"));
}

static void
test_negotiate_role_mode(void **state)
{
	tether_hello a, b;
	tether_hello_agreed ag;
	tether_error err;
	char code[TETHER_PROTO_CODE_MAX + 1];
	char msg[200];

	(void)state;
	make(&a, TETHER_ROLE_AGENT, TETHER_MODE_LISTENING, IID);
	make(&b, TETHER_ROLE_AGENT, TETHER_MODE_LISTENING, IID2);
	assert_int_equal(tether_hello_negotiate(&a, &b, &ag, code, msg,
	                                        sizeof(msg), &err),
	                 TETHER_ERR_PROTOCOL);
	assert_string_equal(code, "role");
	assert_non_null(strstr(err.detail, "the peer is also an agent"));

	make(&b, TETHER_ROLE_SERVER, TETHER_MODE_POLLING, IID2);
	assert_int_equal(tether_hello_negotiate(&a, &b, &ag, code, msg,
	                                        sizeof(msg), &err),
	                 TETHER_ERR_PROTOCOL);
	assert_string_equal(code, "mode");
	assert_string_equal(err.detail, "the server is in polling mode but this "
	                    "agent is in listening mode: configure both for the "
	                    "same mode");
}

static void
test_answer_error_bounds(void **state)
{
	tether_hello a, p;
	tether_error err;
	unsigned char *buf = NULL;
	size_t n = 0;
	char longmsg[2000];

	(void)state;
	make(&a, TETHER_ROLE_AGENT, TETHER_MODE_LISTENING, IID);
	memset(longmsg, 'm', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = '\0';
	longmsg[0] = '\t';
	assert_int_equal(tether_hello_answer_encode(&a, "busy", longmsg, &buf, &n,
	                                            &err), 0);
	assert_int_equal(tether_hello_parse(buf + TETHER_FRAME_HEADER_LEN,
	                                    n - TETHER_FRAME_HEADER_LEN, &p, &err),
	                 0);
	free(buf);
	assert_int_equal(strlen(p.error_message), TETHER_PROTO_MESSAGE_MAX);
	assert_int_equal(p.error_message[0], ' ');
	assert_int_equal(tether_hello_answer_encode(&a, "Not a code", "x", &buf,
	                                            &n, &err), TETHER_ERR_INVALID);
	/* no error: a plain answer */
	assert_int_equal(tether_hello_answer_encode(&a, NULL, NULL, &buf, &n,
	                                            &err), 0);
	assert_null(memmem(buf, n, "error", 5));
	free(buf);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_exact_json),
		cmocka_unit_test(test_init_refuses),
		cmocka_unit_test(test_parse_refuses),
		cmocka_unit_test(test_parse_bounds),
		cmocka_unit_test(test_negotiate_minor),
		cmocka_unit_test(test_negotiate_major),
		cmocka_unit_test(test_negotiate_role_mode),
		cmocka_unit_test(test_answer_error_bounds),
	};
	return cmocka_run_group_tests_name("hello", tests, NULL, NULL);
}
