/* Unit tests for core/frame.c: encoder, incremental decoder, bounds. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "frame.h"

static void
raw_header(unsigned char *p, unsigned type, unsigned flags, unsigned reserved,
           uint32_t id, uint32_t len)
{
	p[0] = (unsigned char)type;
	p[1] = (unsigned char)flags;
	p[2] = (unsigned char)(reserved >> 8);
	p[3] = (unsigned char)reserved;
	p[4] = (unsigned char)(id >> 24);
	p[5] = (unsigned char)(id >> 16);
	p[6] = (unsigned char)(id >> 8);
	p[7] = (unsigned char)id;
	p[8] = (unsigned char)(len >> 24);
	p[9] = (unsigned char)(len >> 16);
	p[10] = (unsigned char)(len >> 8);
	p[11] = (unsigned char)len;
}

/* A growing byte buffer for building a connection's worth of frames. */
struct bytes {
	unsigned char *p;
	size_t n;
};

static void
append(struct bytes *b, const void *p, size_t n)
{
	b->p = realloc(b->p, b->n + n);
	assert_non_null(b->p);
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void
append_frame(struct bytes *b, unsigned char *frame, size_t n)
{
	append(b, frame, n);
	free(frame);
}

static const char hello_json[] = "{\"protocol\":\"tether\"}";

static void
append_hello(struct bytes *b)
{
	unsigned char *f = NULL;
	size_t n = 0;
	assert_int_equal(tether_frame_encode(TETHER_FRAME_HELLO, 0, hello_json,
	                                     strlen(hello_json), NULL, 0, &f, &n,
	                                     NULL), 0);
	append_frame(b, f, n);
}

struct seen {
	int type;
	uint32_t id;
	uint32_t value;
	size_t len;
	unsigned char payload[64];
	unsigned char sha[32];
	size_t body_len;
};

/* Feed buf in chunks of `chunk` bytes; record up to max frames.  Returns
 * the number of frames, or the negative error. */
static int
feed(tether_frame_decoder *d, const unsigned char *buf, size_t len,
     size_t chunk, struct seen *seen, int max, tether_error *err)
{
	size_t off = 0, end, used;
	tether_frame f;
	int r, count = 0;

	while (off < len) {
		end = off + chunk < len ? off + chunk : len;
		while (off < end) {
			r = tether_frame_decode(d, buf + off, end - off, &used, &f,
			                        err);
			if (r < 0)
				return r;
			assert_true(used <= end - off);
			off += used;
			if (r == TETHER_FRAME_READY) {
				assert_true(count < max);
				seen[count].type = f.type;
				seen[count].id = f.id;
				seen[count].value = f.value;
				seen[count].len = f.length;
				seen[count].body_len = f.body_len;
				if (f.length > 0)
					memcpy(seen[count].payload, f.payload,
					       f.length < 64 ? f.length : 64);
				if (f.sha256 != NULL)
					memcpy(seen[count].sha, f.sha256, 32);
				count++;
			} else {
				assert_int_equal(r, TETHER_FRAME_NEED_MORE);
				assert_int_equal(off, end);
			}
		}
	}
	return count;
}

/* One of every frame type, in a valid order. */
static void
build_session(struct bytes *b)
{
	unsigned char ping[TETHER_FRAME_PING_FRAME_LEN];
	unsigned char win[TETHER_FRAME_WINDOW_FRAME_LEN];
	unsigned char opaque[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	unsigned char sha[32];
	unsigned char *f = NULL;
	size_t n = 0;
	json_t *o;

	memset(sha, 0xab, sizeof(sha));
	append_hello(b);
	o = json_pack("{s:i, s:s}", "id", 5, "method", "health");
	assert_int_equal(tether_frame_encode_json(TETHER_FRAME_REQUEST, 5, o, 0,
	                                          &f, &n, NULL), 0);
	json_decref(o);
	append_frame(b, f, n);
	assert_int_equal(tether_frame_encode(TETHER_FRAME_STREAM_DATA, 5, "abc",
	                                     3, "de", 2, &f, &n, NULL), 0);
	append_frame(b, f, n);
	assert_int_equal(tether_frame_encode_window(5, 4096, win, NULL), 0);
	append(b, win, sizeof(win));
	o = json_pack("{s:i}", "size", 5);
	assert_int_equal(tether_frame_encode_stream_end(5, sha, o, &f, &n, NULL),
	                 0);
	json_decref(o);
	append_frame(b, f, n);
	assert_int_equal(tether_frame_encode_stream_end(6, sha, NULL, &f, &n,
	                                                NULL), 0);
	append_frame(b, f, n);
	assert_int_equal(tether_frame_encode_reset(7, "cancelled", "by user", &f,
	                                           &n, NULL), 0);
	append_frame(b, f, n);
	assert_int_equal(tether_frame_encode_ping(TETHER_FRAME_PING, opaque, ping,
	                                          NULL), 0);
	append(b, ping, sizeof(ping));
	assert_int_equal(tether_frame_encode_ping(TETHER_FRAME_PONG, opaque, ping,
	                                          NULL), 0);
	append(b, ping, sizeof(ping));
	o = json_pack("{s:i, s:o}", "id", 5, "result", json_object());
	assert_int_equal(tether_frame_encode_json(TETHER_FRAME_RESPONSE, 5, o, 0,
	                                          &f, &n, NULL), 0);
	json_decref(o);
	append_frame(b, f, n);
	assert_int_equal(tether_frame_encode_goaway(5, "shutting_down",
	                                            "bye", &f, &n, NULL), 0);
	append_frame(b, f, n);
}

static void
check_session(struct seen *s, int count)
{
	assert_int_equal(count, 11);
	assert_int_equal(s[0].type, TETHER_FRAME_HELLO);
	assert_int_equal(s[0].id, 0);
	assert_memory_equal(s[0].payload, hello_json, strlen(hello_json));
	assert_int_equal(s[1].type, TETHER_FRAME_REQUEST);
	assert_int_equal(s[1].id, 5);
	assert_int_equal(s[2].type, TETHER_FRAME_STREAM_DATA);
	assert_int_equal(s[2].len, 5);
	assert_memory_equal(s[2].payload, "abcde", 5);
	assert_int_equal(s[3].type, TETHER_FRAME_STREAM_WINDOW);
	assert_int_equal(s[3].value, 4096);
	assert_int_equal(s[4].type, TETHER_FRAME_STREAM_END);
	assert_int_equal(s[4].sha[0], 0xab);
	assert_int_equal(s[4].body_len, strlen("{\"size\":5}"));
	assert_int_equal(s[5].type, TETHER_FRAME_STREAM_END);
	assert_int_equal(s[5].len, 32);
	assert_int_equal(s[5].body_len, 0);
	assert_int_equal(s[6].type, TETHER_FRAME_STREAM_RESET);
	assert_int_equal(s[6].id, 7);
	assert_int_equal(s[7].type, TETHER_FRAME_PING);
	assert_memory_equal(s[7].payload, "\1\2\3\4\5\6\7\10", 8);
	assert_int_equal(s[8].type, TETHER_FRAME_PONG);
	assert_int_equal(s[9].type, TETHER_FRAME_RESPONSE);
	assert_int_equal(s[10].type, TETHER_FRAME_GOAWAY);
	assert_int_equal(s[10].value, 5);
}

static void
test_roundtrip_one_chunk(void **state)
{
	struct bytes b = { NULL, 0 };
	struct seen s[16];
	tether_frame_decoder d;
	tether_error err;
	int n;

	(void)state;
	build_session(&b);
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	n = feed(&d, b.p, b.n, b.n, s, 16, &err);
	check_session(s, n);
	/* Everything arrived whole: nothing was allocated. */
	assert_null(d.buf);
	tether_frame_decoder_free(&d);
	free(b.p);
}

static void
test_byte_at_a_time(void **state)
{
	struct bytes b = { NULL, 0 };
	struct seen s[16];
	tether_frame_decoder d;
	tether_error err;
	size_t chunk;
	int n;

	(void)state;
	build_session(&b);
	for (chunk = 1; chunk <= 13; chunk++) {
		assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
		n = feed(&d, b.p, b.n, chunk, s, 16, &err);
		check_session(s, n);
		tether_frame_decoder_free(&d);
	}
	free(b.p);
}

static void
test_many_frames_one_chunk(void **state)
{
	struct bytes b = { NULL, 0 };
	unsigned char ping[TETHER_FRAME_PING_FRAME_LEN];
	unsigned char opaque[8] = { 0 };
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	size_t off = 0, used;
	int i, count = 0, r;

	(void)state;
	append_hello(&b);
	for (i = 0; i < 1000; i++) {
		opaque[7] = (unsigned char)i;
		assert_int_equal(tether_frame_encode_ping(TETHER_FRAME_PING, opaque,
		                                          ping, NULL), 0);
		append(&b, ping, sizeof(ping));
	}
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	while (off < b.n) {
		r = tether_frame_decode(&d, b.p + off, b.n - off, &used, &f, &err);
		assert_int_equal(r, TETHER_FRAME_READY);
		if (count > 0) {
			assert_int_equal(f.type, TETHER_FRAME_PING);
			assert_int_equal(f.opaque[7], (unsigned char)(count - 1));
		}
		off += used;
		count++;
	}
	assert_int_equal(count, 1001);
	tether_frame_decoder_free(&d);
	free(b.p);
}

static void
test_truncated(void **state)
{
	struct bytes b = { NULL, 0 };
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	size_t used, cut;
	int r;

	(void)state;
	append_hello(&b);
	for (cut = 0; cut < b.n; cut++) {
		assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
		r = tether_frame_decode(&d, b.p, cut, &used, &f, &err);
		assert_int_equal(r, TETHER_FRAME_NEED_MORE);
		assert_int_equal(used, cut);
		/* The rest completes it. */
		r = tether_frame_decode(&d, b.p + cut, b.n - cut, &used, &f, &err);
		assert_int_equal(r, TETHER_FRAME_READY);
		assert_int_equal(used, b.n - cut);
		assert_int_equal(f.type, TETHER_FRAME_HELLO);
		tether_frame_decoder_free(&d);
	}
	free(b.p);
}

/* Feed a hello, then the given header (+ len payload bytes of zeros); return
 * the decode result of the second frame. */
static int
second_frame(tether_frame_decoder *d, uint32_t max_json, unsigned type,
             unsigned flags, unsigned reserved, uint32_t id, uint32_t len,
             size_t payload, tether_error *err)
{
	struct bytes b = { NULL, 0 };
	unsigned char h[TETHER_FRAME_HEADER_LEN];
	struct seen s[4];
	unsigned char *zeros;
	int r;

	append_hello(&b);
	raw_header(h, type, flags, reserved, id, len);
	append(&b, h, sizeof(h));
	zeros = calloc(1, payload + 1);
	assert_non_null(zeros);
	append(&b, zeros, payload);
	free(zeros);
	assert_int_equal(tether_frame_decoder_init(d, max_json, err), 0);
	r = feed(d, b.p, b.n, b.n, s, 4, err);
	free(b.p);
	return r;
}

static void
test_oversized(void **state)
{
	tether_frame_decoder d;
	tether_error err;
	int r;

	(void)state;
	r = second_frame(&d, 0, TETHER_FRAME_REQUEST, 0, 0, 1, 20000000, 0, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(err.code, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_FRAME_TOO_LARGE);
	assert_non_null(strstr(err.detail, "frame length 20000000 exceeds the "
	                                   "limit of 1048576 bytes"));
	assert_null(d.buf);              /* nothing allocated for it */
	assert_string_equal(tether_proto_reason_name(
	                        tether_frame_decoder_reason(&d)),
	                    "frame_too_large");
	tether_frame_decoder_free(&d);

	/* Just at the limit is fine (header accepted: needs more). */
	r = second_frame(&d, 0, TETHER_FRAME_REQUEST, 0, 0, 1, 1048576, 0, &err);
	assert_int_equal(r, 1);
	tether_frame_decoder_free(&d);

	/* Stream data above 256 KiB. */
	r = second_frame(&d, 0, TETHER_FRAME_STREAM_DATA, 0, 0, 1,
	                 256 * 1024 + 1, 0, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_FRAME_TOO_LARGE);
	tether_frame_decoder_free(&d);

	/* A configured lower limit applies. */
	r = second_frame(&d, 2048, TETHER_FRAME_RESPONSE, 0, 0, 1, 2049, 0, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_non_null(strstr(err.detail, "limit of 2048 bytes"));
	tether_frame_decoder_free(&d);

	/* Control frames have their own small bounds. */
	r = second_frame(&d, 0, TETHER_FRAME_STREAM_RESET, 0, 0, 1, 5000, 0,
	                 &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	tether_frame_decoder_free(&d);
}

static void
test_decoder_init_limits(void **state)
{
	tether_frame_decoder d;
	tether_error err;

	(void)state;
	assert_int_equal(tether_frame_decoder_init(&d, (16u << 20) + 1, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_decoder_init(&d, 10, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_decoder_init(&d, 16u << 20, &err), 0);
	assert_int_equal(d.max_json, 16u << 20);
	assert_int_equal(tether_frame_decoder_init(NULL, 0, &err),
	                 TETHER_ERR_INVALID);
}

static void
test_reserved_bits(void **state)
{
	tether_frame_decoder d;
	tether_error err;
	int r;

	(void)state;
	r = second_frame(&d, 0, TETHER_FRAME_PING, 0x01, 0, 0, 8, 8, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_RESERVED_BITS);
	assert_non_null(strstr(err.detail, "reserved"));
	tether_frame_decoder_free(&d);

	r = second_frame(&d, 0, TETHER_FRAME_PING, 0, 0x8000, 0, 8, 8, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_RESERVED_BITS);
	tether_frame_decoder_free(&d);
}

static void
test_unknown_type(void **state)
{
	static const unsigned types[] = { 0x00, 0x0b, 0x7f, 0xff };
	const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	size_t i, used;
	int r;

	(void)state;
	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		r = second_frame(&d, 0, types[i], 0, 0, 1, 2, 2, &err);
		assert_int_equal(r, TETHER_ERR_PROTOCOL);
		assert_int_equal(tether_frame_decoder_reason(&d),
		                 TETHER_PROTO_UNKNOWN_TYPE);
		assert_non_null(strstr(err.detail, "unknown frame type"));
		tether_frame_decoder_free(&d);
	}
	/* An HTTP client is told apart. */
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	r = tether_frame_decode(&d, http, strlen(http), &used, &f, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_non_null(strstr(err.detail, "does not speak the tether protocol"));
	assert_non_null(strstr(err.detail, "HTTP"));
	tether_frame_decoder_free(&d);
}

static void
test_hello_order(void **state)
{
	unsigned char ping[TETHER_FRAME_PING_FRAME_LEN];
	unsigned char opaque[8] = { 0 };
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	size_t used;
	int r;

	(void)state;
	/* First frame not a HELLO. */
	assert_int_equal(tether_frame_encode_ping(TETHER_FRAME_PING, opaque, ping,
	                                          NULL), 0);
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	r = tether_frame_decode(&d, ping, sizeof(ping), &used, &f, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_HELLO_EXPECTED);
	tether_frame_decoder_free(&d);

	/* A second HELLO. */
	r = second_frame(&d, 0, TETHER_FRAME_HELLO, 0, 0, 0, 2, 2, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_UNEXPECTED_HELLO);
	tether_frame_decoder_free(&d);
}

static void
test_bad_ids_and_lengths(void **state)
{
	tether_frame_decoder d;
	tether_error err;
	int r;

	(void)state;
	r = second_frame(&d, 0, TETHER_FRAME_PING, 0, 0, 3, 8, 8, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d), TETHER_PROTO_BAD_ID);
	tether_frame_decoder_free(&d);

	r = second_frame(&d, 0, TETHER_FRAME_REQUEST, 0, 0, 0, 2, 2, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d), TETHER_PROTO_BAD_ID);
	tether_frame_decoder_free(&d);

	r = second_frame(&d, 0, TETHER_FRAME_PING, 0, 0, 0, 7, 7, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_BAD_LENGTH);
	tether_frame_decoder_free(&d);

	r = second_frame(&d, 0, TETHER_FRAME_STREAM_WINDOW, 0, 0, 1, 5, 5, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_BAD_LENGTH);
	tether_frame_decoder_free(&d);

	r = second_frame(&d, 0, TETHER_FRAME_STREAM_END, 0, 0, 1, 31, 31, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_BAD_LENGTH);
	tether_frame_decoder_free(&d);

	r = second_frame(&d, 0, TETHER_FRAME_STREAM_DATA, 0, 0, 1, 0, 0, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_BAD_LENGTH);
	tether_frame_decoder_free(&d);

	/* A zero window grant (payload all zeros). */
	r = second_frame(&d, 0, TETHER_FRAME_STREAM_WINDOW, 0, 0, 1, 4, 4, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d),
	                 TETHER_PROTO_BAD_WINDOW);
	tether_frame_decoder_free(&d);
}

static void
test_window_too_big_on_wire(void **state)
{
	struct bytes b = { NULL, 0 };
	unsigned char h[TETHER_FRAME_HEADER_LEN + 4];
	struct seen s[4];
	tether_frame_decoder d;
	tether_error err;

	(void)state;
	append_hello(&b);
	raw_header(h, TETHER_FRAME_STREAM_WINDOW, 0, 0, 1, 4);
	h[12] = 0x80; h[13] = 0; h[14] = 0; h[15] = 0;
	append(&b, h, sizeof(h));
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	assert_int_equal(feed(&d, b.p, b.n, 3, s, 4, &err), TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_frame_decoder_reason(&d), TETHER_PROTO_BAD_WINDOW);
	tether_frame_decoder_free(&d);
	free(b.p);
}

static void
test_sticky_error(void **state)
{
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	size_t used;
	int r;

	(void)state;
	r = second_frame(&d, 0, 0x42, 0, 0, 1, 2, 2, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	memset(&err, 0, sizeof(err));
	r = tether_frame_decode(&d, "x", 1, &used, &f, &err);
	assert_int_equal(r, TETHER_ERR_PROTOCOL);
	assert_non_null(strstr(err.detail, "unknown frame type 0x42"));
	tether_frame_decoder_free(&d);
}

/* A stream's data written in place (conn.c decrypts into the frame): with
 * keep set, the whole payload's buffer is there once the header is in, all
 * but the last byte may be written at room, the last byte goes through
 * decode, which hands the frame out; the buffer is kept for the next one.
 * Without keep, or for another type, no room is given. */
static void
test_payload_in_place(void **state)
{
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	unsigned char *data, *fr = NULL, *p = NULL, *kept;
	size_t n = 0, used, room, k;
	int r, round;

	(void)state;
	data = malloc(100000);
	assert_non_null(data);
	for (n = 0; n < 100000; n++)
		data[n] = (unsigned char)(n * 13);
	assert_int_equal(tether_frame_encode(TETHER_FRAME_STREAM_DATA, 9, data, 100000, NULL, 0, &fr,
	                                     &n, &err), 0);
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	d.frames = 1; /* past the HELLO */
	/* no keep: a 100 000-byte payload gets no room */
	r = tether_frame_decode(&d, fr, TETHER_FRAME_HEADER_LEN, &used, &f, &err);
	assert_int_equal(r, TETHER_FRAME_NEED_MORE);
	assert_int_equal(tether_frame_decoder_room(&d, &p), 0);
	r = tether_frame_decode(&d, fr + used, n - used, &used, &f, &err);
	assert_int_equal(r, TETHER_FRAME_READY);
	tether_frame_decoder_keep(&d, TETHER_FRAME_DATA_MAX);
	kept = NULL;
	for (round = 0; round < 2; round++) {
		r = tether_frame_decode(&d, fr, TETHER_FRAME_HEADER_LEN, &used, &f, &err);
		assert_int_equal(r, TETHER_FRAME_NEED_MORE);
		for (k = 0; k < 100000 - 1; k += room) {
			room = tether_frame_decoder_room(&d, &p);
			assert_int_equal(room, 100000 - 1 - k);
			if (room > 16384)
				room = 16384;
			memcpy(p, data + k, room);
			tether_frame_decoder_advance(&d, room);
		}
		assert_int_equal(tether_frame_decoder_room(&d, &p), 0);
		r = tether_frame_decode(&d, fr + n - 1, 1, &used, &f, &err);
		assert_int_equal(r, TETHER_FRAME_READY);
		assert_int_equal(used, 1);
		assert_int_equal(f.type, TETHER_FRAME_STREAM_DATA);
		assert_int_equal(f.length, 100000);
		assert_memory_equal(f.payload, data, 100000);
		if (round == 0)
			kept = d.buf;
		else
			assert_ptr_equal(d.buf, kept); /* not released in between */
	}
	tether_frame_decoder_keep(&d, 0);
	free(fr);
	/* another type gets no room while its buffer must still grow */
	{
		static const char reason[] = "{\"code\":\"x\",\"message\":\"y\"}";
		assert_int_equal(tether_frame_encode(TETHER_FRAME_STREAM_RESET, 9, reason, sizeof(reason) - 1,
		                                     NULL, 0, &fr, &n, &err), 0);
	}
	tether_frame_decoder_free(&d);
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	d.frames = 1;
	tether_frame_decoder_keep(&d, TETHER_FRAME_DATA_MAX);
	r = tether_frame_decode(&d, fr, TETHER_FRAME_HEADER_LEN, &used, &f, &err);
	assert_int_equal(r, TETHER_FRAME_NEED_MORE);
	assert_int_equal(tether_frame_decoder_room(&d, &p), 0);
	tether_frame_decoder_free(&d);
	free(fr);
	free(data);
}

static void
test_large_frame_split_and_released(void **state)
{
	struct bytes b = { NULL, 0 };
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	unsigned char *data, *fr = NULL;
	size_t n = 0, used, off;
	unsigned char ping[TETHER_FRAME_PING_FRAME_LEN];
	unsigned char opaque[8] = { 0 };
	int r;

	(void)state;
	data = malloc(TETHER_FRAME_DATA_MAX);
	assert_non_null(data);
	for (n = 0; n < TETHER_FRAME_DATA_MAX; n++)
		data[n] = (unsigned char)(n * 7);
	append_hello(&b);
	assert_int_equal(tether_frame_encode(TETHER_FRAME_STREAM_DATA, 9, data,
	                                     TETHER_FRAME_DATA_MAX, NULL, 0, &fr,
	                                     &n, &err), 0);
	append_frame(&b, fr, n);
	assert_int_equal(tether_frame_encode_ping(TETHER_FRAME_PING, opaque, ping,
	                                          NULL), 0);
	append(&b, ping, sizeof(ping));

	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	/* hello whole */
	r = tether_frame_decode(&d, b.p, b.n, &used, &f, &err);
	assert_int_equal(r, TETHER_FRAME_READY);
	off = used;
	/* data frame split in two: the second part carries the ping too */
	r = tether_frame_decode(&d, b.p + off, 1000, &used, &f, &err);
	assert_int_equal(r, TETHER_FRAME_NEED_MORE);
	assert_int_equal(used, 1000);
	off += used;
	r = tether_frame_decode(&d, b.p + off, b.n - off, &used, &f, &err);
	assert_int_equal(r, TETHER_FRAME_READY);
	assert_int_equal(f.length, TETHER_FRAME_DATA_MAX);
	assert_memory_equal(f.payload, data, TETHER_FRAME_DATA_MAX);
	assert_int_equal(d.buf_cap, TETHER_FRAME_DATA_MAX);
	off += used;
	r = tether_frame_decode(&d, b.p + off, b.n - off, &used, &f, &err);
	assert_int_equal(r, TETHER_FRAME_READY);
	assert_int_equal(f.type, TETHER_FRAME_PING);
	/* the big buffer is gone */
	assert_null(d.buf);
	assert_int_equal(off + used, b.n);
	tether_frame_decoder_free(&d);
	free(data);
	free(b.p);
}

static void
test_memory_follows_bytes(void **state)
{
	tether_frame_decoder d;
	tether_error err;
	int r;

	(void)state;
	/* A 16 MiB request announced, 1 byte sent: little memory held. */
	r = second_frame(&d, 16u << 20, TETHER_FRAME_REQUEST, 0, 0, 1,
	                 16u << 20, 1, &err);
	assert_int_equal(r, 1);
	assert_non_null(d.buf);
	assert_true(d.buf_cap <= 16u << 10);
	tether_frame_decoder_free(&d);
}

static void
test_encoder_refuses(void **state)
{
	unsigned char hdr[TETHER_FRAME_HEADER_LEN];
	unsigned char win[TETHER_FRAME_WINDOW_FRAME_LEN];
	unsigned char *f = NULL;
	size_t n = 0;
	tether_error err;
	json_t *o;
	char *big;

	(void)state;
	assert_int_equal(tether_frame_header_write(0x33, 1, 0, hdr, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_header_write(TETHER_FRAME_PING, 1, 8, hdr,
	                                           &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_header_write(TETHER_FRAME_STREAM_DATA, 1,
	                                           TETHER_FRAME_DATA_MAX + 1, hdr,
	                                           &err), TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_header_write(TETHER_FRAME_STREAM_DATA, 1,
	                                           TETHER_FRAME_DATA_MAX, hdr,
	                                           &err), 0);
	assert_int_equal(hdr[0], TETHER_FRAME_STREAM_DATA);
	assert_int_equal(hdr[9], 0x04);   /* 0x00040000 */
	assert_int_equal(tether_frame_encode_window(1, 0, win, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_encode_window(1, 0x80000000u, win, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_encode_window(0, 1, win, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_encode(TETHER_FRAME_STREAM_WINDOW, 1,
	                                     "\0\0\0\0", 4, NULL, 0, &f, &n, &err),
	                 TETHER_ERR_INVALID);
	assert_int_equal(tether_frame_encode_reset(1, "Bad Code", "x", &f, &n,
	                                           &err), TETHER_ERR_INVALID);
	/* JSON over the limit. */
	big = malloc(2 << 20);
	assert_non_null(big);
	memset(big, 'a', (2 << 20) - 1);
	big[(2 << 20) - 1] = '\0';
	o = json_pack("{s:s}", "x", big);
	assert_int_equal(tether_frame_encode_json(TETHER_FRAME_REQUEST, 1, o, 0,
	                                          &f, &n, &err),
	                 TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "more than the limit of 1048576"));
	/* ... but fine when the caller raised the limit. */
	assert_int_equal(tether_frame_encode_json(TETHER_FRAME_REQUEST, 1, o,
	                                          4 << 20, &f, &n, &err), 0);
	free(f);
	json_decref(o);
	free(big);
	/* A non-object. */
	o = json_array();
	assert_int_equal(tether_frame_encode_json(TETHER_FRAME_REQUEST, 1, o, 0,
	                                          &f, &n, &err),
	                 TETHER_ERR_INVALID);
	json_decref(o);
}

static void
test_reason_roundtrip(void **state)
{
	tether_frame_decoder d;
	tether_proto_reason_msg m;
	struct bytes b = { NULL, 0 };
	unsigned char *f = NULL;
	tether_frame fr;
	tether_error err;
	size_t n = 0, used, off;
	char longmsg[3000];

	(void)state;
	memset(longmsg, 'x', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = '\0';
	longmsg[5] = '\n';
	append_hello(&b);
	assert_int_equal(tether_frame_encode_goaway(41, "shutting_down", longmsg,
	                                            &f, &n, &err), 0);
	append_frame(&b, f, n);
	assert_int_equal(tether_frame_decoder_init(&d, 0, &err), 0);
	assert_int_equal(tether_frame_decode(&d, b.p, b.n, &used, &fr, &err),
	                 TETHER_FRAME_READY);
	off = used;
	assert_int_equal(tether_frame_decode(&d, b.p + off, b.n - off, &used, &fr,
	                                     &err), TETHER_FRAME_READY);
	assert_int_equal(fr.type, TETHER_FRAME_GOAWAY);
	assert_int_equal(fr.value, 41);
	assert_int_equal(tether_frame_parse_reason(fr.body, fr.body_len, &m,
	                                           &err), 0);
	assert_string_equal(m.code, "shutting_down");
	assert_int_equal(strlen(m.message), TETHER_PROTO_MESSAGE_MAX);
	assert_int_equal(m.message[5], ' ');
	tether_frame_decoder_free(&d);
	free(b.p);

	/* Bad reasons. */
#define BADREASON(s) \
	assert_int_equal(tether_frame_parse_reason((const unsigned char *)(s), \
	                                           strlen(s), &m, &err), \
	                 TETHER_ERR_PROTOCOL)
	BADREASON("");
	BADREASON("{");
	BADREASON("[]");
	BADREASON("{\"code\":1,\"message\":\"x\"}");
	BADREASON("{\"code\":\"UPPER\",\"message\":\"x\"}");
	BADREASON("{\"code\":\"ok\",\"message\":\"a\\nb\"}");
	BADREASON("{\"code\":\"ok\"}");
	BADREASON("{\"code\":\"ok\",\"message\":\"x\",\"code\":\"y\"}");
	BADREASON("{\"code\":\"ok\",\"message\":\"x\"} trailing");
#undef BADREASON
}

static void
test_flow_control(void **state)
{
	uint32_t w = TETHER_STREAM_WINDOW_INITIAL;
	tether_error err;

	(void)state;
	assert_int_equal(tether_window_consume(&w, TETHER_FRAME_DATA_MAX, &err), 0);
	assert_int_equal(w, TETHER_STREAM_WINDOW_INITIAL - TETHER_FRAME_DATA_MAX);
	assert_int_equal(tether_window_consume(&w, w, &err), 0);
	assert_int_equal(w, 0);
	assert_int_equal(tether_window_consume(&w, 1, &err), TETHER_ERR_PROTOCOL);
	assert_non_null(strstr(err.detail, "flow-control"));
	assert_int_equal(w, 0);
	assert_int_equal(tether_window_grant(&w, 0, &err), TETHER_ERR_PROTOCOL);
	assert_int_equal(tether_window_grant(&w, 0x7fffffffu, &err), 0);
	assert_int_equal(tether_window_grant(&w, 1, &err), TETHER_ERR_PROTOCOL);
	assert_int_equal(w, 0x7fffffffu);
}

static void
test_names(void **state)
{
	(void)state;
	assert_string_equal(tether_frame_type_name(TETHER_FRAME_STREAM_END),
	                    "STREAM_END");
	assert_null(tether_frame_type_name(0));
	assert_string_equal(tether_proto_reason_name(TETHER_PROTO_VERSION),
	                    "protocol_version");
	assert_string_equal(tether_proto_reason_name(-1), "unknown");
	assert_true(tether_proto_is_token("file.get_v2-x", 64));
	assert_false(tether_proto_is_token("", 64));
	assert_false(tether_proto_is_token("a b", 64));
	assert_false(tether_proto_is_token("abc", 2));
}

/* tether_json_parse_object's fast path against json_loadb: what the fast
 * path accepts, json_loadb accepts and builds the same way (members in
 * the same order); what json_loadb refuses, the fast path refuses. */
static void
json_same(const char *in, size_t len, int want_fast)
{
	json_error_t je;
	json_t *ref = json_loadb(in, len, JSON_REJECT_DUPLICATES, &je);
	json_t *fast = tether_json_parse_fast((const unsigned char *)in, len), *got = NULL;
	tether_error e;
	int r;

	if (!json_is_object(ref)) {
		json_decref(ref);
		ref = NULL;
	}
	if (want_fast == 1)
		assert_non_null(fast);
	if (want_fast == 0)
		assert_null(fast);
	if (fast) {
		char *a, *b;
		assert_non_null(ref);
		a = json_dumps(ref, JSON_COMPACT | JSON_ENCODE_ANY);
		b = json_dumps(fast, JSON_COMPACT | JSON_ENCODE_ANY);
		assert_string_equal(a, b);
		assert_true(json_equal(ref, fast));
		free(a);
		free(b);
	}
	memset(&e, 0, sizeof(e));
	r = tether_json_parse_object((const unsigned char *)in, len, "test", &got, &e);
	assert_int_equal(r == 0, ref != NULL);
	if (r == 0) {
		assert_true(json_equal(ref, got));
		json_decref(got);
	}
	json_decref(ref);
	json_decref(fast);
}

static void
test_json_fast_path(void **state)
{
	static const char *const fast[] = {
		"{}", " {\n\t\"a\" : 1 }\r\n", "{\"id\":7,\"result\":{\"uptime_s\":3600,\"ok\":true,\"no\":false,\"n\":null}}",
		"{\"a\":[],\"b\":[1,-2,[3,{}]],\"c\":\"x\\\"y\\\\z\\/\\b\\f\\n\\r\\t\"}", "{\"\":\"\"}",
		"{\"k\\n\":0,\"big\":999999999999999999,\"neg\":-999999999999999999}",
		"{\"id\":1,\"method\":\"health\",\"params\":{}}",
		/* long strings: the scan goes eight bytes at a time */
		"{\"0123456789abcdefgh\":\"0123456789abcdef0123456789\\\"abcdef\\\\x\",\"b\":\"~ !#[]{}\"}",
		"{\"a\":\"0123456\\\"\",\"b\":\"01234567\\n\",\"c\":\"012345678\\\\\"}",
	};
	static const char *const slow_ok[] = {
		"{\"a\":1.5}", "{\"a\":1e3}", "{\"a\":-0}", "{\"a\":\"\\u00e9\"}", "{\"a\":\"\xc3\xa9\"}",
		"{\"a\":1234567890123456789}", "{\"a\":\"\x7f\"}",
		"{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
		"{\"a\":\"0123456789\x7f\"}", "{\"a\":\"01234567\xc3\xa9\"}", "{\"a\":\"0123456789abcdef\xe2\x82\xac\"}",
	};
	static const char *const bad[] = {
		"", " ", "[]", "1", "\"a\"", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{,}", "{\"a\":1 \"b\":2}",
		"{\"a\":1}x", "{\"a\":1}{}", "{\"a\":truex}", "{\"a\":tru}", "{\"a\":nul}", "{\"a\":1x}", "{\"a\":01}",
		"{\"a\":-}", "{\"a\":+1}", "{\"a\":.5}", "{\"a\":1.}", "{\"a\":[1,]}", "{\"a\":[,1]}", "{\"a\":[1 2]}",
		"{\"a\":1,\"a\":2}", "{\"a\":\"\\x\"}", "{\"a\":\"\x01\"}", "{\"a\":\"\xff\"}", "{\"a\":\"\\ud800\"}",
		"{\"a\":\"\\u0000\"}", "{\"a\":\"0123456789\x01\"}", "{\"a\":\"01234567\x1f" "0123\"}",
		"{\"a\":\"0123456789abcdef\xff\"}", "{\"a\":\"0123456789abcdef",
		"{'a':1}", "{a:1}", "{\"a\":\"b}", "{\"a\":99999999999999999999}", "{\"a\":1e999}",
	};
	char buf[512];
	size_t i, k, n;
	unsigned seed = 12345;
	(void)state;

	for (i = 0; i < sizeof(fast) / sizeof(fast[0]); i++)
		json_same(fast[i], strlen(fast[i]), 1);
	for (i = 0; i < sizeof(slow_ok) / sizeof(slow_ok[0]); i++)
		json_same(slow_ok[i], strlen(slow_ok[i]), 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		json_same(bad[i], strlen(bad[i]), 0);
	json_same("{\"a\":1}\0", 8, 0);
	json_same("{\"a\":\"x\0y\"}", 11, 0);
	/* mutations of a health answer: a byte replaced, dropped or doubled */
	{
		static const char base[] = "{\"id\":12,\"result\":{\"version\":\"0.1.0\",\"os\":\"Linux 6.1 x86_64\","
			"\"certificate\":{\"sha256\":\"9f86d081\",\"key_bits\":2048,\"not_after\":\"2045-06-01T12:00:00Z\"},"
			"\"uptime_s\":3600,\"trust\":[{\"sha256\":\"6030\"}],\"services\":{\"script\":true,\"file\":false},"
			"\"x\":null,\"e\":\"a\\tb\"}}";
		static const char alphabet[] = "{}[]\":,\\ 0123456789-+.eEtfnulrsa\x01\x7f\xc3";
		n = sizeof(base) - 1;
		json_same(base, n, 1);
		for (i = 0; i < 20000; i++) {
			size_t at, m = n;
			memcpy(buf, base, n);
			for (k = 0; k < 1 + (i % 3); k++) {
				seed = seed * 1103515245u + 12345u;
				at = (seed >> 8) % m;
				switch ((seed >> 4) % 3) {
				case 0:
					buf[at] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
					break;
				case 1:
					memmove(buf + at, buf + at + 1, m - at - 1);
					m--;
					break;
				default:
					if (m + 1 < sizeof(buf)) {
						memmove(buf + at + 1, buf + at, m - at);
						m++;
					}
				}
			}
			json_same(buf, m, -1);
		}
	}
}

/* jansson's blocks go through core/jalloc.c's per-thread cache: trees built
 * on one thread and freed on another, many at once (more than a class
 * keeps), threads that end with blocks cached, and what json_dumps returns
 * given to free(), as the engine does.  The threads count what they find
 * wrong (cmocka's checks belong to the main thread). */
#define JT_THREADS 4
#define JT_TREES 300

static const char jt_text[] = "a string long enough for another size class, and longer still";
static json_t *jt_trees[JT_THREADS][JT_TREES];
static int jt_wrong[JT_THREADS];

static void *
jt_build(void *arg)
{
	json_t **out = arg;
	char s[64];
	int i;

	for (i = 0; i < JT_TREES; i++) {
		snprintf(s, sizeof(s), "tree %d, %d", i, i * 7);
		out[i] = json_pack("{s:i, s:s, s:[s, {s:b}], s:s#}", "n", i, "s", s, "a", "x", "b", i & 1,
		                   "t", jt_text, i % 60);
	}
	return NULL;
}

static int
jt_check_free(json_t **in)
{
	char s[64], *d;
	int i, wrong = 0;

	for (i = 0; i < JT_TREES; i++) {
		snprintf(s, sizeof(s), "tree %d, %d", i, i * 7);
		wrong += !in[i] || json_integer_value(json_object_get(in[i], "n")) != i ||
		         strcmp(json_string_value(json_object_get(in[i], "s")), s) ||
		         json_string_length(json_object_get(in[i], "t")) != (size_t)(i % 60) ||
		         memcmp(json_string_value(json_object_get(in[i], "t")), jt_text, (size_t)(i % 60));
		d = json_dumps(in[i], JSON_COMPACT);
		wrong += !d;
		free(d);
		json_decref(in[i]);
	}
	/* and new trees from what this thread now holds */
	jt_build(in);
	for (i = 0; i < JT_TREES; i++) {
		wrong += json_integer_value(json_object_get(in[i], "n")) != i;
		json_decref(in[i]);
	}
	return wrong;
}

static void *
jt_check_thread(void *arg)
{
	int k = (int)(intptr_t)arg;
	jt_wrong[k] = jt_check_free(jt_trees[(k + 1) % JT_THREADS]);
	return NULL;
}

static void
test_json_blocks_across_threads(void **state)
{
	pthread_t t[JT_THREADS];
	int round, i;
	(void)state;

	for (round = 0; round < 3; round++) {
		for (i = 0; i < JT_THREADS; i++)
			assert_int_equal(pthread_create(&t[i], NULL, jt_build, jt_trees[i]), 0);
		for (i = 0; i < JT_THREADS; i++)
			assert_int_equal(pthread_join(t[i], NULL), 0);
		/* each thread frees another's trees */
		for (i = 0; i < JT_THREADS; i++)
			assert_int_equal(pthread_create(&t[i], NULL, jt_check_thread, (void *)(intptr_t)i), 0);
		for (i = 0; i < JT_THREADS; i++) {
			assert_int_equal(pthread_join(t[i], NULL), 0);
			assert_int_equal(jt_wrong[i], 0);
		}
	}
	/* and on this thread, which outlives them */
	jt_build(jt_trees[0]);
	assert_int_equal(jt_check_free(jt_trees[0]), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_one_chunk),
		cmocka_unit_test(test_byte_at_a_time),
		cmocka_unit_test(test_many_frames_one_chunk),
		cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_oversized),
		cmocka_unit_test(test_decoder_init_limits),
		cmocka_unit_test(test_reserved_bits),
		cmocka_unit_test(test_unknown_type),
		cmocka_unit_test(test_hello_order),
		cmocka_unit_test(test_bad_ids_and_lengths),
		cmocka_unit_test(test_window_too_big_on_wire),
		cmocka_unit_test(test_sticky_error),
		cmocka_unit_test(test_large_frame_split_and_released),
		cmocka_unit_test(test_payload_in_place),
		cmocka_unit_test(test_memory_follows_bytes),
		cmocka_unit_test(test_encoder_refuses),
		cmocka_unit_test(test_reason_roundtrip),
		cmocka_unit_test(test_flow_control),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_json_fast_path),
		cmocka_unit_test(test_json_blocks_across_threads),
	};
	return cmocka_run_group_tests_name("frame", tests, NULL, NULL);
}
