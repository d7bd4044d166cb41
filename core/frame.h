/*
 * tether frames: the length-prefixed units every tether connection carries
 * after TLS is up.  Pure and transport-independent: the connection engine
 * feeds decrypted bytes in and writes the encoded bytes out.
 *
 * Wire form (docs/protocol.md, "Frames"), all integers big-endian:
 *
 *   0      1      2             4                  8                 12
 *   +------+------+-------------+------------------+-----------------+----
 *   | type | flags| reserved(0) |        id        |     length      | payload
 *   +------+------+-------------+------------------+-----------------+----
 *
 * flags and reserved must be zero in protocol 1.x.  id is 0 for
 * connection-level frames (HELLO, PING, PONG, GOAWAY) and a request id
 * (1..2^32-1) for the others; a stream is named by the request it belongs to.
 */
#ifndef TETHER_FRAME_H
#define TETHER_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tether/provider.h"

#define TETHER_FRAME_HEADER_LEN 12

enum tether_frame_type {
	TETHER_FRAME_HELLO = 0x01,        /* JSON, id 0, first frame only */
	TETHER_FRAME_REQUEST = 0x02,      /* JSON envelope, id = request id */
	TETHER_FRAME_RESPONSE = 0x03,     /* JSON envelope, id = request id */
	TETHER_FRAME_STREAM_DATA = 0x04,  /* raw bytes, 1..256 KiB */
	TETHER_FRAME_STREAM_END = 0x05,   /* 32-byte SHA-256 + optional JSON trailer */
	TETHER_FRAME_STREAM_WINDOW = 0x06,/* u32 credit increment */
	TETHER_FRAME_STREAM_RESET = 0x07, /* JSON reason */
	TETHER_FRAME_PING = 0x08,         /* 8 opaque bytes */
	TETHER_FRAME_PONG = 0x09,         /* the 8 bytes of the PING */
	TETHER_FRAME_GOAWAY = 0x0a,       /* u32 last id + JSON reason */
};

/* Bounds (bytes of payload). */
#define TETHER_FRAME_JSON_MAX_DEFAULT   (1u << 20)   /* REQUEST/RESPONSE, 1 MiB */
#define TETHER_FRAME_JSON_MAX_HARD      (16u << 20)  /* highest configurable */
#define TETHER_FRAME_DATA_MAX           (256u << 10) /* STREAM_DATA */
#define TETHER_FRAME_HELLO_MAX          (16u << 10)  /* HELLO JSON */
#define TETHER_FRAME_TRAILER_MAX        (64u << 10)  /* STREAM_END JSON trailer */
#define TETHER_FRAME_REASON_MAX         4096u        /* STREAM_RESET / GOAWAY JSON */
#define TETHER_FRAME_PING_LEN           8u
#define TETHER_FRAME_WINDOW_LEN         4u
#define TETHER_FRAME_SHA256_LEN         32u
#define TETHER_FRAME_WINDOW_MAX         0x7fffffffu  /* a window never exceeds this */
#define TETHER_STREAM_WINDOW_INITIAL    (1u << 20)   /* per stream, per direction */
/* What file transfers raise their receive window to at once: they consume
 * the data as it arrives, and on loopback 4 MiB moves about a third faster
 * than 1 MiB (docs/BENCHMARKS.md).  A receiver choice, not a protocol one. */
#define TETHER_STREAM_WINDOW_BULK       (4u << 20)

/* Codes and messages in error payloads (RPC errors, HELLO errors, reasons):
 * codes are [a-z0-9._-]{1,64}, messages at most 1024 bytes of UTF-8 with no
 * control characters. */
#define TETHER_PROTO_CODE_MAX 64
#define TETHER_PROTO_MESSAGE_MAX 1024

/* Why a peer's bytes were refused: a specific reason beside the return code
 * (which is TETHER_ERR_PROTOCOL).  Names (tether_proto_reason_name) are the
 * "code" of the GOAWAY the engine may send before closing. */
enum tether_proto_reason {
	TETHER_PROTO_OK = 0,
	TETHER_PROTO_UNKNOWN_TYPE,      /* "unknown_frame_type" */
	TETHER_PROTO_RESERVED_BITS,     /* "reserved_bits" */
	TETHER_PROTO_FRAME_TOO_LARGE,   /* "frame_too_large" */
	TETHER_PROTO_BAD_LENGTH,        /* "bad_frame_length" */
	TETHER_PROTO_BAD_ID,            /* "bad_frame_id" */
	TETHER_PROTO_HELLO_EXPECTED,    /* "hello_expected" */
	TETHER_PROTO_UNEXPECTED_HELLO,  /* "unexpected_hello" */
	TETHER_PROTO_BAD_WINDOW,        /* "bad_window" */
	TETHER_PROTO_FLOW_CONTROL,      /* "flow_control" */
	TETHER_PROTO_BAD_JSON,          /* "bad_json" */
	TETHER_PROTO_BAD_FIELD,         /* "bad_field" */
	TETHER_PROTO_ID_MISMATCH,       /* "id_mismatch" */
	TETHER_PROTO_VERSION,           /* "protocol_version" */
	TETHER_PROTO_REFUSED,           /* "refused" */
	TETHER_PROTO__COUNT
};

const char *tether_proto_reason_name(int reason);
const char *tether_frame_type_name(int type);

/* A decoded frame.  Pointers are borrowed: valid until the next call on the
 * decoder that produced it (or, for a frame that arrived whole in one chunk,
 * as long as the caller's chunk is). */
typedef struct tether_frame {
	uint8_t type;                   /* enum tether_frame_type */
	uint8_t flags;                  /* always 0 in 1.x */
	uint32_t id;
	uint32_t length;                /* of payload */
	const unsigned char *payload;   /* length bytes (NULL when 0) */

	/* Type-specific views of payload, checked by the decoder:
	 *  STREAM_WINDOW: value = increment (1..2^31-1)
	 *  GOAWAY:        value = last id processed; body = reason JSON
	 *  STREAM_END:    sha256 = the 32 bytes; body = JSON trailer (may be empty)
	 *  PING, PONG:    opaque = the 8 bytes
	 *  others:        body = payload */
	uint32_t value;
	const unsigned char *sha256;
	const unsigned char *opaque;
	const unsigned char *body;
	size_t body_len;
} tether_frame;

/* Incremental decoder.  Embed it anywhere; fields are private. */
typedef struct tether_frame_decoder {
	uint32_t max_json;
	uint64_t frames;                /* frames yielded so far */
	unsigned char hdr[TETHER_FRAME_HEADER_LEN];
	size_t hdr_have;
	uint8_t type;
	uint32_t id;
	uint32_t length;
	unsigned char *buf;             /* payload being assembled */
	size_t buf_cap;
	size_t have;
	int reason;                     /* enum tether_proto_reason, sticky */
	tether_error failure;           /* sticky copy of the first error */
	size_t keep;                    /* tether_frame_decoder_keep */
} tether_frame_decoder;

/* Decoder progress codes (>= 0). */
enum tether_frame_status {
	TETHER_FRAME_NEED_MORE = 0,     /* all input consumed, no frame yet */
	TETHER_FRAME_READY = 1,         /* *out holds a frame */
};

/* max_json: limit for REQUEST/RESPONSE payloads; 0 means the default
 * (1 MiB); more than TETHER_FRAME_JSON_MAX_HARD is refused. */
int tether_frame_decoder_init(tether_frame_decoder *d, uint32_t max_json,
                              tether_error *err);
void tether_frame_decoder_free(tether_frame_decoder *d);

/* Consume bytes from data[0..len) until one frame is complete or the input
 * is used up.  Returns TETHER_FRAME_READY (frame in *out), or
 * TETHER_FRAME_NEED_MORE, with *consumed bytes used in both cases; call again
 * with the rest.  On malformed input returns TETHER_ERR_PROTOCOL with
 * err->detail saying what was wrong ("frame length 20000000 exceeds the
 * limit of 1048576 bytes for REQUEST frames"); the specific reason is
 * tether_frame_decoder_reason().  Errors are sticky: the connection must be
 * closed.  TETHER_ERR_NOMEM if the payload buffer cannot be allocated. */
int tether_frame_decode(tether_frame_decoder *d, const void *data, size_t len,
                        size_t *consumed, tether_frame *out,
                        tether_error *err);

/* The reason of the decoder's failure (TETHER_PROTO_OK if none). */
int tether_frame_decoder_reason(const tether_frame_decoder *d);

/* While a stream's data arrives (conn.c), keep a payload buffer of up to
 * bytes (at most TETHER_FRAME_DATA_MAX) between frames instead of releasing
 * it after each large one, and give a STREAM_DATA payload that fits its
 * whole buffer as soon as its header is in; 0 restores the default (the
 * buffer is then released between frames as before). */
void tether_frame_decoder_keep(tether_frame_decoder *d, size_t bytes);

/* Writing a payload in place (conn.c decrypts a file's data straight into
 * its frame instead of into a buffer and then a copy): while a frame's
 * payload is being assembled in a buffer that already holds all of it,
 * *p is where its next bytes go and the result how many may be written
 * there: all that is missing but the last byte, which goes through
 * tether_frame_decode as usual (which then checks and hands out the frame).
 * 0 when there is no such room; feed tether_frame_decode then.  After
 * writing n bytes (n <= the room) at *p, call tether_frame_decoder_advance. */
size_t tether_frame_decoder_room(tether_frame_decoder *d, unsigned char **p);
void tether_frame_decoder_advance(tether_frame_decoder *d, size_t n);

/* --- encoding --- */

/* Write a 12-byte header after checking it as the decoder would (type
 * known, id rule, length bounds with the hard JSON maximum).  For sending
 * STREAM_DATA without copying: header, then the payload. */
int tether_frame_header_write(int type, uint32_t id, uint32_t length,
                              unsigned char out[TETHER_FRAME_HEADER_LEN],
                              tether_error *err);

/* A whole frame in one malloc'd buffer: header, then part1, then part2
 * (either part may be empty).  *out is freed by the caller with free(). */
int tether_frame_encode(int type, uint32_t id,
                        const void *part1, size_t len1,
                        const void *part2, size_t len2,
                        unsigned char **out, size_t *out_len,
                        tether_error *err);

/* A frame whose payload is obj serialised compactly (HELLO, REQUEST,
 * RESPONSE, STREAM_RESET).  Fails if the JSON exceeds max_json (0: the
 * type's default bound). */
int tether_frame_encode_json(int type, uint32_t id, const json_t *obj,
                             size_t max_json, unsigned char **out,
                             size_t *out_len, tether_error *err);

/* Fixed-size control frames into caller storage. */
#define TETHER_FRAME_WINDOW_FRAME_LEN (TETHER_FRAME_HEADER_LEN + TETHER_FRAME_WINDOW_LEN)
#define TETHER_FRAME_PING_FRAME_LEN   (TETHER_FRAME_HEADER_LEN + TETHER_FRAME_PING_LEN)
int tether_frame_encode_window(uint32_t id, uint32_t increment,
                               unsigned char out[TETHER_FRAME_WINDOW_FRAME_LEN],
                               tether_error *err);
/* type: TETHER_FRAME_PING or TETHER_FRAME_PONG. */
int tether_frame_encode_ping(int type, const unsigned char opaque[8],
                             unsigned char out[TETHER_FRAME_PING_FRAME_LEN],
                             tether_error *err);

/* STREAM_END: sha256 of all the data of the stream, trailer may be NULL. */
int tether_frame_encode_stream_end(uint32_t id, const unsigned char sha256[32],
                                   const json_t *trailer, unsigned char **out,
                                   size_t *out_len, tether_error *err);

/* STREAM_RESET {"code", "message"} and GOAWAY last_id + {"code", "message"}.
 * code is a token ([a-z0-9._-]{1,64}); message is cut to fit the bounds. */
int tether_frame_encode_reset(uint32_t id, const char *code,
                              const char *message, unsigned char **out,
                              size_t *out_len, tether_error *err);
int tether_frame_encode_goaway(uint32_t last_id, const char *code,
                               const char *message, unsigned char **out,
                               size_t *out_len, tether_error *err);

/* Parse the {"code", "message"} reason of a STREAM_RESET or GOAWAY body
 * (tether_frame.body).  Both buffers receive NUL-terminated text. */
typedef struct tether_proto_reason_msg {
	char code[TETHER_PROTO_CODE_MAX + 1];
	char message[TETHER_PROTO_MESSAGE_MAX + 1];
} tether_proto_reason_msg;
int tether_frame_parse_reason(const unsigned char *body, size_t len,
                              tether_proto_reason_msg *out, tether_error *err);

/* --- flow control --- */

/* The receiver of a stream counts down as data arrives: fails with
 * TETHER_ERR_PROTOCOL (flow_control) if the sender overran the window. */
int tether_window_consume(uint32_t *window, uint32_t n, tether_error *err);
/* The sender adds the credit of a STREAM_WINDOW: fails if the window would
 * exceed 2^31-1. */
int tether_window_grant(uint32_t *window, uint32_t increment,
                        tether_error *err);

/* --- helpers shared by hello.c and rpc.c --- */

/* Fill err (when not NULL): code, category and a formatted detail.
 * Returns code, so callers can write r = tether_proto_fail(...). */
int tether_proto_fail(tether_error *err, int code, int category,
                      const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Parse exactly one JSON object from buf (no trailing bytes, no duplicate
 * keys, no NUL in strings).  *out is a new reference. */
int tether_json_parse_object(const unsigned char *buf, size_t len,
                             const char *what, json_t **out,
                             tether_error *err);
/* Its fast path alone (frame.c says what it covers): the object json_loadb
 * would make from buf, or NULL when the input is outside what it covers
 * (or invalid).  For tests. */
json_t *tether_json_parse_fast(const unsigned char *buf, size_t len);

/* 1 if s is a token: [a-z0-9._-]{1,max}. */
int tether_proto_is_token(const char *s, size_t max);
/* 1 if s is at most max bytes and has no control characters (jansson has
 * already checked it is UTF-8). */
int tether_proto_is_text(const char *s, size_t max);

#endif /* TETHER_FRAME_H */
