/*
 * tether frames: encoder, incremental decoder, flow-control arithmetic.
 * See frame.h and docs/protocol.md.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

/* A payload buffer larger than this is released once its frame has been
 * handed out, so one large request does not pin memory for the life of the
 * connection. */
#define DECODER_KEEP_BYTES (64u << 10)
/* First allocation for a payload that arrives in pieces. */
#define DECODER_MIN_BYTES (16u << 10)

static const char *const reason_names[TETHER_PROTO__COUNT] = {
	[TETHER_PROTO_OK] = "ok",
	[TETHER_PROTO_UNKNOWN_TYPE] = "unknown_frame_type",
	[TETHER_PROTO_RESERVED_BITS] = "reserved_bits",
	[TETHER_PROTO_FRAME_TOO_LARGE] = "frame_too_large",
	[TETHER_PROTO_BAD_LENGTH] = "bad_frame_length",
	[TETHER_PROTO_BAD_ID] = "bad_frame_id",
	[TETHER_PROTO_HELLO_EXPECTED] = "hello_expected",
	[TETHER_PROTO_UNEXPECTED_HELLO] = "unexpected_hello",
	[TETHER_PROTO_BAD_WINDOW] = "bad_window",
	[TETHER_PROTO_FLOW_CONTROL] = "flow_control",
	[TETHER_PROTO_BAD_JSON] = "bad_json",
	[TETHER_PROTO_BAD_FIELD] = "bad_field",
	[TETHER_PROTO_ID_MISMATCH] = "id_mismatch",
	[TETHER_PROTO_VERSION] = "protocol_version",
	[TETHER_PROTO_REFUSED] = "refused",
};

const char *
tether_proto_reason_name(int reason)
{
	if (reason < 0 || reason >= TETHER_PROTO__COUNT)
		return "unknown";
	return reason_names[reason];
}

const char *
tether_frame_type_name(int type)
{
	switch (type) {
	case TETHER_FRAME_HELLO: return "HELLO";
	case TETHER_FRAME_REQUEST: return "REQUEST";
	case TETHER_FRAME_RESPONSE: return "RESPONSE";
	case TETHER_FRAME_STREAM_DATA: return "STREAM_DATA";
	case TETHER_FRAME_STREAM_END: return "STREAM_END";
	case TETHER_FRAME_STREAM_WINDOW: return "STREAM_WINDOW";
	case TETHER_FRAME_STREAM_RESET: return "STREAM_RESET";
	case TETHER_FRAME_PING: return "PING";
	case TETHER_FRAME_PONG: return "PONG";
	case TETHER_FRAME_GOAWAY: return "GOAWAY";
	default: return NULL;
	}
}

int
tether_proto_fail(tether_error *err, int code, int category,
                  const char *fmt, ...)
{
	va_list ap;
	size_t i;

	if (err == NULL)
		return code;
	err->code = code;
	err->category = category;
	va_start(ap, fmt);
	vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
	va_end(ap);
	/* The detail is logged: never let peer bytes inject control
	 * characters (new lines, escapes) into the log. */
	for (i = 0; err->detail[i] != '\0'; i++) {
		unsigned char c = (unsigned char)err->detail[i];
		if (c < 0x20 || c == 0x7f)
			err->detail[i] = '?';
	}
	return code;
}

static int
proto_fail(tether_error *err, int *reason_out, int reason,
           const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int
proto_fail(tether_error *err, int *reason_out, int reason,
           const char *fmt, ...)
{
	char buf[TETHER_ERROR_DETAIL_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (reason_out != NULL)
		*reason_out = reason;
	return tether_proto_fail(err, TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
	                         "%s", buf);
}

int
tether_proto_is_token(const char *s, size_t max)
{
	size_t i;

	if (s == NULL || s[0] == '\0')
		return 0;
	for (i = 0; s[i] != '\0'; i++) {
		char c = s[i];
		if (i >= max)
			return 0;
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

int
tether_proto_is_text(const char *s, size_t max)
{
	size_t i;

	if (s == NULL)
		return 0;
	for (i = 0; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];
		if (i >= max)
			return 0;
		if (c < 0x20 || c == 0x7f)
			return 0;
	}
	return 1;
}

/* ------------------------------------------------------------------ */
/* A fast path for the common JSON payload                             */
/* ------------------------------------------------------------------ */

/*
 * jansson's json_loadb reads its input one character at a time through a
 * stream of callbacks: about 13 us for a 600-byte health answer on the
 * machines of docs/BENCHMARKS.md, of which building the values (the
 * allocations and the hash tables) is about 2 us.  Every frame's JSON goes
 * through here, so this parses the common case directly into the same
 * jansson values: objects, arrays, integers of up to 18 digits, true,
 * false, null, and strings of printable ASCII with the two-character
 * escapes.  Anything else (a number with a fraction or an exponent, a
 * \uXXXX escape, a byte above 0x7f, nesting deeper than FAST_DEPTH, a
 * duplicate key, any syntax error) makes it give up, and the payload is
 * parsed again by json_loadb, which accepts or rejects it with its own
 * message.  So the fast path never accepts what json_loadb would refuse,
 * and what it accepts it builds exactly as json_loadb would
 * (frame_test checks both against json_loadb).
 */
#define FAST_DEPTH 32

typedef struct fastp {
	const unsigned char *p, *end;
	char scratch[256];              /* a key or an escaped string */
} fastp;

static json_t *fast_value(fastp *f, int depth);

static void
fast_ws(fastp *f)
{
	while (f->p < f->end && (*f->p == ' ' || *f->p == '\n' || *f->p == '\r' || *f->p == '\t'))
		f->p++;
}

/* 1 for the bytes a string may hold as they are: printable ASCII but '"'
 * and '\\' */
static const unsigned char fast_plain[256] = {
	[0x20] = 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,        /* 0x22 '"' */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                 /* 0x30 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                 /* 0x40 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,                 /* 0x5c '\\' */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                 /* 0x60 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,                 /* 0x7f */
};

/* At the opening quote.  The string's bytes (unescaped) in *s, *n: either
 * in the input or in f->scratch.  -1: give up. */
static int
fast_string(fastp *f, const char **s, size_t *n)
{
	const unsigned char *q = ++f->p;
	size_t k = 0;

	/* eight bytes at a time while none of them ends the plain run: a
	 * byte below 0x20 or above 0x7e, '"' or '\\' (the usual bit tricks:
	 * a byte's top bit in t says it is one of those) */
	while (f->end - q >= 8) {
		uint64_t x, t;
		memcpy(&x, q, 8);
		t = (x - 0x2020202020202020ULL) | x | (x + 0x0101010101010101ULL) |
		    ((x ^ 0x2222222222222222ULL) - 0x0101010101010101ULL) |
		    ((x ^ 0x5c5c5c5c5c5c5c5cULL) - 0x0101010101010101ULL);
		if (t & 0x8080808080808080ULL)
			break;
		q += 8;
	}
	while (q < f->end && fast_plain[*q])
		q++;
	if (q >= f->end || (*q != '"' && *q != '\\'))
		return -1;
	if (*q == '"') {
		*s = (const char *)f->p;
		*n = (size_t)(q - f->p);
		f->p = q + 1;
		return 0;
	}
	/* escapes: unescape into scratch */
	for (q = f->p; q < f->end && *q != '"'; q++) {
		unsigned char c = *q;
		if (c < 0x20 || c > 0x7e || k >= sizeof(f->scratch))
			return -1;
		if (c == '\\') {
			if (++q >= f->end)
				return -1;
			switch (*q) {
			case '"': c = '"'; break;
			case '\\': c = '\\'; break;
			case '/': c = '/'; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			default: return -1;     /* \u and bad escapes: jansson */
			}
		}
		f->scratch[k++] = (char)c;
	}
	if (q >= f->end)
		return -1;
	*s = f->scratch;
	*n = k;
	f->p = q + 1;
	return 0;
}

static json_t *
fast_number(fastp *f)
{
	const unsigned char *q = f->p;
	json_int_t v = 0;
	int neg = 0, nd = 0;

	if (*q == '-') {
		neg = 1;
		q++;
	}
	if (q >= f->end || *q < '0' || *q > '9')
		return NULL;
	if (*q == '0' && q + 1 < f->end && q[1] >= '0' && q[1] <= '9')
		return NULL;            /* a leading zero */
	while (q < f->end && *q >= '0' && *q <= '9') {
		if (++nd > 18)
			return NULL;
		v = v * 10 + (*q++ - '0');
	}
	if (q < f->end && (*q == '.' || *q == 'e' || *q == 'E'))
		return NULL;            /* a real: jansson's strtod */
	if (neg && v == 0)
		return NULL;            /* -0: as jansson decides */
	f->p = q;
	return json_integer(neg ? -v : v);
}

static int
fast_word(fastp *f, const char *w, size_t n)
{
	if ((size_t)(f->end - f->p) < n || memcmp(f->p, w, n))
		return -1;
	f->p += n;
	return 0;
}

static json_t *
fast_object(fastp *f, int depth)
{
	json_t *o = json_object(), *v;
	const char *s;
	size_t n, size;
	char key[sizeof(f->scratch) + 1];

	if (!o)
		return NULL;
	f->p++;
	fast_ws(f);
	if (f->p < f->end && *f->p == '}') {
		f->p++;
		return o;
	}
	for (;;) {
		if (f->p >= f->end || *f->p != '"' || fast_string(f, &s, &n) < 0 || n >= sizeof(key))
			goto fail;
		memcpy(key, s, n);
		key[n] = '\0';
		fast_ws(f);
		if (f->p >= f->end || *f->p != ':')
			goto fail;
		f->p++;
		fast_ws(f);
		v = fast_value(f, depth + 1);
		size = json_object_size(o);
		if (!v || json_object_set_new_nocheck(o, key, v) < 0)
			goto fail;
		/* a duplicate replaced the first value: jansson says so (one
		 * hash lookup per key instead of a json_object_get first) */
		if (json_object_size(o) == size)
			goto fail;
		fast_ws(f);
		if (f->p >= f->end)
			goto fail;
		if (*f->p == '}') {
			f->p++;
			return o;
		}
		if (*f->p != ',')
			goto fail;
		f->p++;
		fast_ws(f);
	}
fail:
	json_decref(o);
	return NULL;
}

static json_t *
fast_array(fastp *f, int depth)
{
	json_t *a = json_array(), *v;

	if (!a)
		return NULL;
	f->p++;
	fast_ws(f);
	if (f->p < f->end && *f->p == ']') {
		f->p++;
		return a;
	}
	for (;;) {
		v = fast_value(f, depth + 1);
		if (!v || json_array_append_new(a, v) < 0)
			goto fail;
		fast_ws(f);
		if (f->p >= f->end)
			goto fail;
		if (*f->p == ']') {
			f->p++;
			return a;
		}
		if (*f->p != ',')
			goto fail;
		f->p++;
		fast_ws(f);
	}
fail:
	json_decref(a);
	return NULL;
}

/* At the value's first byte (no white space). */
static json_t *
fast_value(fastp *f, int depth)
{
	const char *s;
	size_t n;

	if (f->p >= f->end || depth > FAST_DEPTH)
		return NULL;
	switch (*f->p) {
	case '{':
		return fast_object(f, depth);
	case '[':
		return fast_array(f, depth);
	case '"':
		return fast_string(f, &s, &n) < 0 ? NULL : json_stringn_nocheck(s, n);
	case 't':
		return fast_word(f, "true", 4) < 0 ? NULL : json_true();
	case 'f':
		return fast_word(f, "false", 5) < 0 ? NULL : json_false();
	case 'n':
		return fast_word(f, "null", 4) < 0 ? NULL : json_null();
	default:
		return fast_number(f);
	}
}

json_t *
tether_json_parse_fast(const unsigned char *buf, size_t len)
{
	fastp f;
	json_t *j;

	f.p = buf;
	f.end = buf + len;
	fast_ws(&f);
	if (f.p >= f.end || *f.p != '{')
		return NULL;
	j = fast_object(&f, 1);
	if (!j)
		return NULL;
	fast_ws(&f);
	if (f.p != f.end) {
		json_decref(j);
		return NULL;
	}
	/* a letter right after a literal or a number ("truex", "1x") has
	 * been refused above: every value must be followed by white space,
	 * ',', '}' or ']' */
	return j;
}

int
tether_json_parse_object(const unsigned char *buf, size_t len,
                         const char *what, json_t **out, tether_error *err)
{
	json_error_t jerr;
	json_t *j = NULL;
	int r;

	if (buf == NULL && len > 0) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "%s: no buffer", what);
		goto out;
	}
	if (buf && (*out = tether_json_parse_fast(buf, len)) != NULL)
		return 0;
	j = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (j == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
		                      "%s is not valid JSON (byte %d): %s",
		                      what, jerr.position, jerr.text);
		goto out;
	}
	if (!json_is_object(j)) {
		r = tether_proto_fail(err, TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
		                      "%s must be a JSON object", what);
		goto out;
	}
	*out = j;
	j = NULL;
	r = 0;
out:
	json_decref(j);
	return r;
}

/* ------------------------------------------------------------------ */
/* Header rules, shared by the decoder and the encoders                */
/* ------------------------------------------------------------------ */

/* Payload bounds of a type; 0 if the type is unknown. */
static int
type_bounds(int type, uint32_t max_json, uint32_t *min, uint32_t *max)
{
	switch (type) {
	case TETHER_FRAME_HELLO:
		*min = 2; *max = TETHER_FRAME_HELLO_MAX; return 1;
	case TETHER_FRAME_REQUEST:
	case TETHER_FRAME_RESPONSE:
		*min = 2; *max = max_json; return 1;
	case TETHER_FRAME_STREAM_DATA:
		*min = 1; *max = TETHER_FRAME_DATA_MAX; return 1;
	case TETHER_FRAME_STREAM_END:
		*min = TETHER_FRAME_SHA256_LEN;
		*max = TETHER_FRAME_SHA256_LEN + TETHER_FRAME_TRAILER_MAX;
		return 1;
	case TETHER_FRAME_STREAM_WINDOW:
		*min = *max = TETHER_FRAME_WINDOW_LEN; return 1;
	case TETHER_FRAME_STREAM_RESET:
		*min = 2; *max = TETHER_FRAME_REASON_MAX; return 1;
	case TETHER_FRAME_PING:
	case TETHER_FRAME_PONG:
		*min = *max = TETHER_FRAME_PING_LEN; return 1;
	case TETHER_FRAME_GOAWAY:
		*min = 4 + 2; *max = 4 + TETHER_FRAME_REASON_MAX; return 1;
	default:
		return 0;
	}
}

static int
type_is_connection_level(int type)
{
	return type == TETHER_FRAME_HELLO || type == TETHER_FRAME_PING ||
	       type == TETHER_FRAME_PONG || type == TETHER_FRAME_GOAWAY;
}

/* position: 0 first frame of the connection, 1 a later one, -1 unknown
 * (encoding).  first4: the first bytes received, for a friendlier message
 * when the peer is not speaking tether at all (may be NULL). */
static int
check_header(int type, unsigned flags, unsigned reserved, uint32_t id,
             uint32_t length, uint32_t max_json, int position,
             const unsigned char *first4, int *reason, tether_error *err)
{
	uint32_t min, max;
	const char *name = tether_frame_type_name(type);

	if (!type_bounds(type, max_json, &min, &max)) {
		if (position == 0 && first4 != NULL &&
		    first4[0] >= 'A' && first4[0] <= 'Z' &&
		    first4[1] >= 'A' && first4[1] <= 'Z' &&
		    first4[2] >= 'A' && first4[2] <= 'Z')
			return proto_fail(err, reason, TETHER_PROTO_UNKNOWN_TYPE,
			        "the peer does not speak the tether protocol: it "
			        "sent text starting \"%c%c%c\" (an HTTP client?)",
			        first4[0], first4[1], first4[2]);
		return proto_fail(err, reason, TETHER_PROTO_UNKNOWN_TYPE,
		        "unknown frame type 0x%02x%s", (unsigned)type & 0xffu,
		        position == 0 ? " in the first frame: the peer does not "
		                        "speak the tether protocol"
		                      : ": the peer speaks a protocol this "
		                        "version does not know");
	}
	if (flags != 0 || reserved != 0)
		return proto_fail(err, reason, TETHER_PROTO_RESERVED_BITS,
		        "%s frame has reserved bits set (flags 0x%02x, reserved "
		        "0x%04x); they must be zero in protocol 1.x",
		        name, flags, reserved);
	if (position == 0 && type != TETHER_FRAME_HELLO)
		return proto_fail(err, reason, TETHER_PROTO_HELLO_EXPECTED,
		        "the first frame is %s; a tether connection must begin "
		        "with HELLO", name);
	if (position == 1 && type == TETHER_FRAME_HELLO)
		return proto_fail(err, reason, TETHER_PROTO_UNEXPECTED_HELLO,
		        "HELLO received after the first frame; HELLO is allowed "
		        "only once, first");
	if (type_is_connection_level(type) && id != 0)
		return proto_fail(err, reason, TETHER_PROTO_BAD_ID,
		        "%s frame has id %u; it must be 0", name, id);
	if (!type_is_connection_level(type) && id == 0)
		return proto_fail(err, reason, TETHER_PROTO_BAD_ID,
		        "%s frame has id 0; it must name a request", name);
	if (length > max && min == max)
		return proto_fail(err, reason, TETHER_PROTO_BAD_LENGTH,
		        "%s frame length %u is wrong: it must be %u bytes",
		        name, length, max);
	if (length > max)
		return proto_fail(err, reason, TETHER_PROTO_FRAME_TOO_LARGE,
		        "frame length %u exceeds the limit of %u bytes for %s "
		        "frames", length, max, name);
	if (length < min)
		return proto_fail(err, reason, TETHER_PROTO_BAD_LENGTH,
		        "%s frame length %u is too short: at least %u bytes are "
		        "needed", name, length, min);
	return 0;
}

static uint32_t
get_u32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void
put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

/* Fill the type-specific views and check the fixed-layout payloads. */
static int
check_payload(tether_frame *f, int *reason, tether_error *err)
{
	f->value = 0;
	f->sha256 = NULL;
	f->opaque = NULL;
	f->body = f->payload;
	f->body_len = f->length;

	switch (f->type) {
	case TETHER_FRAME_STREAM_WINDOW:
		f->value = get_u32(f->payload);
		f->body = NULL;
		f->body_len = 0;
		if (f->value == 0 || f->value > TETHER_FRAME_WINDOW_MAX)
			return proto_fail(err, reason, TETHER_PROTO_BAD_WINDOW,
			        "STREAM_WINDOW for stream %u grants %u bytes; a "
			        "grant must be 1..2147483647", f->id, f->value);
		break;
	case TETHER_FRAME_GOAWAY:
		f->value = get_u32(f->payload);
		f->body = f->payload + 4;
		f->body_len = f->length - 4;
		break;
	case TETHER_FRAME_STREAM_END:
		f->sha256 = f->payload;
		f->body = f->length > TETHER_FRAME_SHA256_LEN
		          ? f->payload + TETHER_FRAME_SHA256_LEN : NULL;
		f->body_len = f->length - TETHER_FRAME_SHA256_LEN;
		break;
	case TETHER_FRAME_PING:
	case TETHER_FRAME_PONG:
		f->opaque = f->payload;
		f->body = NULL;
		f->body_len = 0;
		break;
	default:
		break;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Decoder                                                             */
/* ------------------------------------------------------------------ */

int
tether_frame_decoder_init(tether_frame_decoder *d, uint32_t max_json,
                          tether_error *err)
{
	int r;

	if (d == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "frame decoder: no decoder");
		goto out;
	}
	if (max_json == 0)
		max_json = TETHER_FRAME_JSON_MAX_DEFAULT;
	if (max_json > TETHER_FRAME_JSON_MAX_HARD || max_json < 1024) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		        "the JSON frame limit %u is out of range: it must be "
		        "1024..%u bytes", max_json, TETHER_FRAME_JSON_MAX_HARD);
		goto out;
	}
	memset(d, 0, sizeof(*d));
	d->max_json = max_json;
	r = 0;
out:
	return r;
}

void
tether_frame_decoder_free(tether_frame_decoder *d)
{
	if (d == NULL)
		return;
	free(d->buf);
	d->buf = NULL;
	d->buf_cap = 0;
	d->have = 0;
}

int
tether_frame_decoder_reason(const tether_frame_decoder *d)
{
	return d == NULL ? TETHER_PROTO_OK : d->reason;
}

void
tether_frame_decoder_keep(tether_frame_decoder *d, size_t bytes)
{
	if (d != NULL)
		d->keep = bytes > TETHER_FRAME_DATA_MAX ? TETHER_FRAME_DATA_MAX : bytes;
}

size_t
tether_frame_decoder_room(tether_frame_decoder *d, unsigned char **p)
{
	if (d == NULL || p == NULL || d->failure.code != 0 ||
	    d->hdr_have < TETHER_FRAME_HEADER_LEN || d->have + 1 >= d->length)
		return 0;
	if (d->buf_cap < d->length) {
		/* Only a stream's data, bounded and kept (see above): other
		 * buffers grow with what has arrived. */
		unsigned char *nb;
		if (d->type != TETHER_FRAME_STREAM_DATA || d->length > d->keep)
			return 0;
		nb = realloc(d->buf, d->length);
		if (nb == NULL)
			return 0; /* tether_frame_decode reports it */
		d->buf = nb;
		d->buf_cap = d->length;
	}
	*p = d->buf + d->have;
	return d->length - d->have - 1;
}

void
tether_frame_decoder_advance(tether_frame_decoder *d, size_t n)
{
	if (d != NULL && d->have + n < d->length)
		d->have += n;
}

int
tether_frame_decode(tether_frame_decoder *d, const void *data, size_t len,
                    size_t *consumed, tether_frame *out, tether_error *err)
{
	const unsigned char *p = data;
	const unsigned char *payload = NULL;
	tether_frame f;
	size_t used = 0, n;
	int r;

	if (d == NULL || consumed == NULL || out == NULL ||
	    (data == NULL && len > 0))
		return tether_proto_fail(err, TETHER_ERR_INVALID,
		                         TETHER_CAT_INTERNAL,
		                         "frame decoder: bad arguments");
	if (d->failure.code != 0) {
		if (err != NULL)
			*err = d->failure;
		return d->failure.code;
	}

	/* Between frames: drop a large buffer from the previous one. */
	if (d->hdr_have == 0 && d->buf_cap > DECODER_KEEP_BYTES && d->buf_cap > d->keep) {
		free(d->buf);
		d->buf = NULL;
		d->buf_cap = 0;
	}

	if (d->hdr_have < TETHER_FRAME_HEADER_LEN) {
		n = TETHER_FRAME_HEADER_LEN - d->hdr_have;
		if (n > len - used)
			n = len - used;
		if (n > 0)
			memcpy(d->hdr + d->hdr_have, p + used, n);
		d->hdr_have += n;
		used += n;
		if (d->hdr_have < TETHER_FRAME_HEADER_LEN) {
			*consumed = used;
			return TETHER_FRAME_NEED_MORE;
		}
		d->type = d->hdr[0];
		d->id = get_u32(d->hdr + 4);
		d->length = get_u32(d->hdr + 8);
		d->have = 0;
		r = check_header(d->type, d->hdr[1],
		                 ((unsigned)d->hdr[2] << 8) | d->hdr[3],
		                 d->id, d->length, d->max_json,
		                 d->frames == 0 ? 0 : 1, d->hdr, &d->reason,
		                 &d->failure);
		if (r < 0)
			goto fail;
	}

	if (d->length > 0) {
		if (d->have == 0 && len - used >= d->length) {
			/* The whole payload is in this chunk: no copy. */
			payload = p + used;
			used += d->length;
		} else {
			n = d->length - d->have;
			if (n > len - used)
				n = len - used;
			if (d->have + n > d->buf_cap) {
				/* Grow with what has arrived, never past the
				 * declared (bounded) length: a peer that
				 * announces 16 MiB and sends 1 byte costs
				 * 16 KiB, not 16 MiB. */
				size_t want = d->buf_cap * 2;
				unsigned char *nb;
				if (want < DECODER_MIN_BYTES)
					want = DECODER_MIN_BYTES;
				if (want < d->have + n)
					want = d->have + n;
				if (want > d->length)
					want = d->length;
				nb = realloc(d->buf, want);
				if (nb == NULL) {
					r = tether_proto_fail(&d->failure,
					        TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
					        "out of memory for a %u-byte %s frame",
					        d->length,
					        tether_frame_type_name(d->type));
					goto fail;
				}
				d->buf = nb;
				d->buf_cap = want;
			}
			if (n > 0)
				memcpy(d->buf + d->have, p + used, n);
			d->have += n;
			used += n;
			if (d->have < d->length) {
				*consumed = used;
				return TETHER_FRAME_NEED_MORE;
			}
			payload = d->buf;
		}
	}

	memset(&f, 0, sizeof(f));
	f.type = d->type;
	f.flags = 0;
	f.id = d->id;
	f.length = d->length;
	f.payload = payload;
	r = check_payload(&f, &d->reason, &d->failure);
	if (r < 0)
		goto fail;

	d->hdr_have = 0;
	d->have = 0;
	d->frames++;
	*out = f;
	*consumed = used;
	return TETHER_FRAME_READY;

fail:
	if (d->failure.code == 0)
		d->failure.code = r;
	if (err != NULL)
		*err = d->failure;
	return r;
}

/* ------------------------------------------------------------------ */
/* Encoders                                                            */
/* ------------------------------------------------------------------ */

int
tether_frame_header_write(int type, uint32_t id, uint32_t length,
                          unsigned char out[TETHER_FRAME_HEADER_LEN],
                          tether_error *err)
{
	int r;

	if (out == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "frame header: no buffer");
		goto out;
	}
	r = check_header(type, 0, 0, id, length, TETHER_FRAME_JSON_MAX_HARD,
	                 -1, NULL, NULL, err);
	if (r < 0) {
		/* Our own bug, not the peer's: say so. */
		if (err != NULL) {
			err->code = TETHER_ERR_INVALID;
			err->category = TETHER_CAT_INTERNAL;
		}
		r = TETHER_ERR_INVALID;
		goto out;
	}
	out[0] = (unsigned char)type;
	out[1] = 0;
	out[2] = 0;
	out[3] = 0;
	put_u32(out + 4, id);
	put_u32(out + 8, length);
	r = 0;
out:
	return r;
}

int
tether_frame_encode(int type, uint32_t id, const void *part1, size_t len1,
                    const void *part2, size_t len2, unsigned char **out,
                    size_t *out_len, tether_error *err)
{
	unsigned char hdr[TETHER_FRAME_HEADER_LEN];
	unsigned char *buf = NULL;
	size_t total;
	int r;

	if (out == NULL || out_len == NULL || (part1 == NULL && len1 > 0) ||
	    (part2 == NULL && len2 > 0) || len1 > UINT32_MAX ||
	    len2 > UINT32_MAX - len1) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "frame encode: bad arguments");
		goto out;
	}
	r = tether_frame_header_write(type, id, (uint32_t)(len1 + len2), hdr,
	                              err);
	if (r < 0)
		goto out;
	/* Fixed payloads are checked here too (a zero window grant...). */
	if (type == TETHER_FRAME_STREAM_WINDOW) {
		unsigned char w[4];
		uint32_t v;
		if (len1 > 0)
			memcpy(w, part1, len1);
		if (len2 > 0)
			memcpy(w + len1, part2, len2);
		v = get_u32(w);
		if (v == 0 || v > TETHER_FRAME_WINDOW_MAX) {
			r = tether_proto_fail(err, TETHER_ERR_INVALID,
			        TETHER_CAT_INTERNAL, "window grant %u is out of "
			        "range 1..2147483647", v);
			goto out;
		}
	}
	total = TETHER_FRAME_HEADER_LEN + len1 + len2;
	buf = malloc(total);
	if (buf == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                      "out of memory for a %zu-byte frame", total);
		goto out;
	}
	memcpy(buf, hdr, TETHER_FRAME_HEADER_LEN);
	if (len1 > 0)
		memcpy(buf + TETHER_FRAME_HEADER_LEN, part1, len1);
	if (len2 > 0)
		memcpy(buf + TETHER_FRAME_HEADER_LEN + len1, part2, len2);
	*out = buf;
	*out_len = total;
	buf = NULL;
	r = 0;
out:
	free(buf);
	return r;
}

static size_t
default_json_max(int type)
{
	switch (type) {
	case TETHER_FRAME_HELLO: return TETHER_FRAME_HELLO_MAX;
	case TETHER_FRAME_REQUEST:
	case TETHER_FRAME_RESPONSE: return TETHER_FRAME_JSON_MAX_DEFAULT;
	case TETHER_FRAME_STREAM_RESET: return TETHER_FRAME_REASON_MAX;
	default: return 0;
	}
}

static size_t
hard_json_max(int type)
{
	if (type == TETHER_FRAME_REQUEST || type == TETHER_FRAME_RESPONSE)
		return TETHER_FRAME_JSON_MAX_HARD;
	return default_json_max(type);
}

/* Serialise obj (an object) compactly; *out is malloc'd, NUL-terminated. */
static int
dump_json(const json_t *obj, size_t max, const char *what, char **out,
          size_t *out_len, tether_error *err)
{
	char *s = NULL;
	size_t n;
	int r;

	if (!json_is_object(obj)) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "%s must be a JSON object", what);
		goto out;
	}
	s = json_dumps(obj, JSON_COMPACT);
	if (s == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		                      "cannot serialise %s", what);
		goto out;
	}
	n = strlen(s);
	if (n > max) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		        "%s is %zu bytes of JSON, more than the limit of %zu "
		        "bytes", what, n, max);
		goto out;
	}
	*out = s;
	*out_len = n;
	s = NULL;
	r = 0;
out:
	free(s);
	return r;
}

int
tether_frame_encode_json(int type, uint32_t id, const json_t *obj,
                         size_t max_json, unsigned char **out,
                         size_t *out_len, tether_error *err)
{
	char *s = NULL;
	size_t n = 0, hard = hard_json_max(type);
	int r;

	if (hard == 0) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "frame type 0x%02x does not carry JSON "
		                      "alone", (unsigned)type & 0xffu);
		goto out;
	}
	if (max_json == 0)
		max_json = default_json_max(type);
	if (max_json > hard)
		max_json = hard;
	r = dump_json(obj, max_json, tether_frame_type_name(type), &s, &n, err);
	if (r < 0)
		goto out;
	r = tether_frame_encode(type, id, s, n, NULL, 0, out, out_len, err);
out:
	free(s);
	return r;
}

int
tether_frame_encode_window(uint32_t id, uint32_t increment,
                           unsigned char out[TETHER_FRAME_WINDOW_FRAME_LEN],
                           tether_error *err)
{
	int r;

	if (out == NULL || increment == 0 ||
	    increment > TETHER_FRAME_WINDOW_MAX) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "window grant %u is out of range "
		                      "1..2147483647", increment);
		goto out;
	}
	r = tether_frame_header_write(TETHER_FRAME_STREAM_WINDOW, id,
	                              TETHER_FRAME_WINDOW_LEN, out, err);
	if (r < 0)
		goto out;
	put_u32(out + TETHER_FRAME_HEADER_LEN, increment);
out:
	return r;
}

int
tether_frame_encode_ping(int type, const unsigned char opaque[8],
                         unsigned char out[TETHER_FRAME_PING_FRAME_LEN],
                         tether_error *err)
{
	int r;

	if (out == NULL || opaque == NULL ||
	    (type != TETHER_FRAME_PING && type != TETHER_FRAME_PONG)) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "ping encode: bad arguments");
		goto out;
	}
	r = tether_frame_header_write(type, 0, TETHER_FRAME_PING_LEN, out, err);
	if (r < 0)
		goto out;
	memcpy(out + TETHER_FRAME_HEADER_LEN, opaque, TETHER_FRAME_PING_LEN);
out:
	return r;
}

int
tether_frame_encode_stream_end(uint32_t id, const unsigned char sha256[32],
                               const json_t *trailer, unsigned char **out,
                               size_t *out_len, tether_error *err)
{
	char *s = NULL;
	size_t n = 0;
	int r;

	if (sha256 == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "STREAM_END needs the SHA-256 of the data");
		goto out;
	}
	if (trailer != NULL) {
		r = dump_json(trailer, TETHER_FRAME_TRAILER_MAX,
		              "STREAM_END trailer", &s, &n, err);
		if (r < 0)
			goto out;
	}
	r = tether_frame_encode(TETHER_FRAME_STREAM_END, id, sha256,
	                        TETHER_FRAME_SHA256_LEN, s, n, out, out_len, err);
out:
	free(s);
	return r;
}

/* Copy message into buf (cap bytes), cut at a UTF-8 boundary to at most
 * TETHER_PROTO_MESSAGE_MAX bytes, control characters turned into spaces. */
static void
clean_message(const char *message, char *buf, size_t cap)
{
	size_t i, n = message == NULL ? 0 : strlen(message);

	if (n > TETHER_PROTO_MESSAGE_MAX)
		n = TETHER_PROTO_MESSAGE_MAX;
	if (n > cap - 1)
		n = cap - 1;
	if (message != NULL && n < strlen(message))
		while (n > 0 && ((unsigned char)message[n] & 0xc0) == 0x80)
			n--;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)message[i];
		buf[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	buf[n] = '\0';
}

/* {"code": code, "message": message}, serialised. */
static int
reason_json(const char *code, const char *message, char **out,
            size_t *out_len, tether_error *err)
{
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	json_t *o = NULL;
	int r;

	if (!tether_proto_is_token(code, TETHER_PROTO_CODE_MAX)) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "reason code is not a token "
		                      "([a-z0-9._-]{1,64})");
		goto out;
	}
	clean_message(message, msg, sizeof(msg));
	o = json_pack("{s:s, s:s}", "code", code, "message", msg);
	if (o == NULL) {
		/* Invalid UTF-8 in the message: send the code alone. */
		o = json_pack("{s:s, s:s}", "code", code, "message", "");
		if (o == NULL) {
			r = tether_proto_fail(err, TETHER_ERR_NOMEM,
			                      TETHER_CAT_INTERNAL,
			                      "cannot build a reason");
			goto out;
		}
	}
	r = dump_json(o, TETHER_FRAME_REASON_MAX, "reason", out, out_len, err);
out:
	json_decref(o);
	return r;
}

int
tether_frame_encode_reset(uint32_t id, const char *code, const char *message,
                          unsigned char **out, size_t *out_len,
                          tether_error *err)
{
	char *s = NULL;
	size_t n = 0;
	int r;

	r = reason_json(code, message, &s, &n, err);
	if (r < 0)
		goto out;
	r = tether_frame_encode(TETHER_FRAME_STREAM_RESET, id, s, n, NULL, 0,
	                        out, out_len, err);
out:
	free(s);
	return r;
}

int
tether_frame_encode_goaway(uint32_t last_id, const char *code,
                           const char *message, unsigned char **out,
                           size_t *out_len, tether_error *err)
{
	unsigned char be[4];
	char *s = NULL;
	size_t n = 0;
	int r;

	r = reason_json(code, message, &s, &n, err);
	if (r < 0)
		goto out;
	put_u32(be, last_id);
	r = tether_frame_encode(TETHER_FRAME_GOAWAY, 0, be, 4, s, n, out,
	                        out_len, err);
out:
	free(s);
	return r;
}

int
tether_frame_parse_reason(const unsigned char *body, size_t len,
                          tether_proto_reason_msg *out, tether_error *err)
{
	json_t *o = NULL, *code, *message;
	int r;

	if (out == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "reason parse: no output");
		goto out;
	}
	if (len > TETHER_FRAME_REASON_MAX) {
		r = tether_proto_fail(err, TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
		        "reason is %zu bytes, more than the limit of %u",
		        len, TETHER_FRAME_REASON_MAX);
		goto out;
	}
	r = tether_json_parse_object(body, len, "reason", &o, err);
	if (r < 0)
		goto out;
	code = json_object_get(o, "code");
	message = json_object_get(o, "message");
	if (!json_is_string(code) ||
	    !tether_proto_is_token(json_string_value(code),
	                           TETHER_PROTO_CODE_MAX) ||
	    strlen(json_string_value(code)) != json_string_length(code)) {
		r = tether_proto_fail(err, TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
		        "reason \"code\" must be a string of 1..64 characters "
		        "[a-z0-9._-]");
		goto out;
	}
	if (!json_is_string(message) ||
	    json_string_length(message) > TETHER_PROTO_MESSAGE_MAX ||
	    !tether_proto_is_text(json_string_value(message),
	                          TETHER_PROTO_MESSAGE_MAX)) {
		r = tether_proto_fail(err, TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
		        "reason \"message\" must be a string of at most %u bytes "
		        "without control characters", TETHER_PROTO_MESSAGE_MAX);
		goto out;
	}
	snprintf(out->code, sizeof(out->code), "%s", json_string_value(code));
	snprintf(out->message, sizeof(out->message), "%s",
	         json_string_value(message));
	r = 0;
out:
	json_decref(o);
	return r;
}

/* ------------------------------------------------------------------ */
/* Flow control                                                        */
/* ------------------------------------------------------------------ */

int
tether_window_consume(uint32_t *window, uint32_t n, tether_error *err)
{
	int r;

	if (window == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "window: no window");
		goto out;
	}
	if (n > *window) {
		r = proto_fail(err, NULL, TETHER_PROTO_FLOW_CONTROL,
		        "the peer sent %u bytes on a stream with only %u bytes "
		        "of window left (flow-control violation)", n, *window);
		goto out;
	}
	*window -= n;
	r = 0;
out:
	return r;
}

int
tether_window_grant(uint32_t *window, uint32_t increment, tether_error *err)
{
	int r;

	if (window == NULL) {
		r = tether_proto_fail(err, TETHER_ERR_INVALID, TETHER_CAT_INTERNAL,
		                      "window: no window");
		goto out;
	}
	if (increment == 0 || increment > TETHER_FRAME_WINDOW_MAX) {
		r = proto_fail(err, NULL, TETHER_PROTO_BAD_WINDOW,
		        "window grant %u is out of range 1..2147483647",
		        increment);
		goto out;
	}
	if ((uint64_t)*window + increment > TETHER_FRAME_WINDOW_MAX) {
		r = proto_fail(err, NULL, TETHER_PROTO_FLOW_CONTROL,
		        "window grant of %u bytes would raise the window to "
		        "%llu bytes, beyond 2147483647", increment,
		        (unsigned long long)*window + increment);
		goto out;
	}
	*window += increment;
	r = 0;
out:
	return r;
}
