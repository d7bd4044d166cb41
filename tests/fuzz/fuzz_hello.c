/*
 * libFuzzer harness for the HELLO parser and negotiation (core/hello.c).
 * Oracle: a HELLO of our major that parses re-encodes, and the encoding
 * parses back to the same fields.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "hello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tether_hello *h, *back, local;
	tether_hello_agreed ag;
	tether_error err;
	char code[TETHER_PROTO_CODE_MAX + 1];
	char msg[TETHER_PROTO_MESSAGE_MAX + 1];
	unsigned char *buf = NULL;
	size_t n = 0;

	h = malloc(sizeof(*h));
	back = malloc(sizeof(*back));
	if (h == NULL || back == NULL)
		abort();
	if (tether_hello_parse(data, size, h, &err) != 0)
		goto out;
	if (h->major == TETHER_PROTOCOL_MAJOR) {
		if (tether_hello_encode(h, &buf, &n, &err) != 0)
			abort();
		if (tether_hello_parse(buf + TETHER_FRAME_HEADER_LEN,
		                       n - TETHER_FRAME_HEADER_LEN, back,
		                       &err) != 0)
			abort();
		if (back->major != h->major || back->minor != h->minor ||
		    back->role != h->role || back->mode != h->mode ||
		    back->n_capabilities != h->n_capabilities ||
		    back->has_error != h->has_error ||
		    strcmp(back->software_version, h->software_version) != 0 ||
		    strcmp(back->instance_id, h->instance_id) != 0 ||
		    strcmp(back->error_message, h->error_message) != 0)
			abort();
		free(buf);
		buf = NULL;
	}
	if (tether_hello_init(&local, TETHER_ROLE_AGENT, TETHER_MODE_POLLING,
	                      "0.1.0", "00112233445566778899aabbccddeeff",
	                      &err) != 0)
		abort();
	if (tether_hello_negotiate(&local, h, &ag, code, msg, sizeof(msg),
	                           &err) != 0) {
		if (err.detail[0] == '\0')
			abort();
		/* The refusal must be sendable. */
		if (!h->has_error &&
		    tether_hello_answer_encode(&local, code, msg, &buf, &n,
		                               &err) != 0)
			abort();
	} else if (ag.minor > h->minor || ag.minor > local.minor) {
		abort();
	}
out:
	free(buf);
	free(h);
	free(back);
	return 0;
}
