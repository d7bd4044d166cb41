/*
 * libFuzzer harness for the frame decoder (core/frame.c), and through it
 * the parsers of what frames carry (HELLO, RPC envelopes, reasons).
 *
 * The input is split into chunks whose sizes come from the input itself,
 * so byte-at-a-time and many-frames-per-chunk paths are both explored.
 * Oracle: every frame the decoder yields re-encodes to exactly the bytes
 * it was decoded from.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "hello.h"
#include "rpc.h"

static void
parse_payload(const tether_frame *f)
{
	tether_error err;
	tether_hello h;
	tether_rpc_request req;
	tether_rpc_response resp;
	tether_proto_reason_msg m;
	json_t *o = NULL;

	switch (f->type) {
	case TETHER_FRAME_HELLO:
		(void)tether_hello_parse(f->body, f->body_len, &h, &err);
		break;
	case TETHER_FRAME_REQUEST:
		if (tether_rpc_request_parse(f->id, f->body, f->body_len, &req,
		                             &err) == 0)
			tether_rpc_request_clear(&req);
		break;
	case TETHER_FRAME_RESPONSE:
		if (tether_rpc_response_parse(f->id, f->body, f->body_len, &resp,
		                              &err) == 0)
			tether_rpc_response_clear(&resp);
		break;
	case TETHER_FRAME_STREAM_RESET:
	case TETHER_FRAME_GOAWAY:
		(void)tether_frame_parse_reason(f->body, f->body_len, &m, &err);
		break;
	case TETHER_FRAME_STREAM_END:
		if (f->body_len > 0 &&
		    tether_json_parse_object(f->body, f->body_len, "trailer", &o,
		                             &err) == 0)
			json_decref(o);
		break;
	default:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tether_frame_decoder d;
	tether_frame f;
	tether_error err;
	unsigned char *re = NULL;
	size_t off, used, chunk, end, start, re_len;
	uint32_t max_json;
	int r;

	if (size < 2)
		return 0;
	/* byte 0: chunk size (0 = everything at once); byte 1: JSON limit */
	chunk = data[0] == 0 ? size : data[0];
	max_json = data[1] < 0x80 ? 0 : 1024u + data[1];
	data += 2;
	size -= 2;

	if (tether_frame_decoder_init(&d, max_json, &err) != 0)
		abort();
	off = 0;
	start = 0;
	while (off < size) {
		end = off + chunk < size ? off + chunk : size;
		while (off < end) {
			r = tether_frame_decode(&d, data + off, end - off, &used, &f,
			                        &err);
			if (r < 0) {
				if (err.detail[0] == '\0')
					abort();    /* every error has a message */
				goto done;
			}
			if (used > end - off)
				abort();
			off += used;
			if (r != TETHER_FRAME_READY)
				continue;
			/* Re-encode: must give back the same bytes. */
			if (tether_frame_encode(f.type, f.id, f.payload, f.length,
			                        NULL, 0, &re, &re_len, &err) != 0)
				abort();
			if (re_len != off - start ||
			    memcmp(re, data + start, re_len) != 0)
				abort();
			free(re);
			re = NULL;
			parse_payload(&f);
			start = off;
		}
	}
done:
	tether_frame_decoder_free(&d);
	return 0;
}
