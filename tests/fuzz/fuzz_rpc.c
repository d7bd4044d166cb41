/*
 * libFuzzer harness for the RPC envelope parsers (core/rpc.c).
 * Input: byte 0 selects request (even) or response (odd), bytes 1..4 the
 * frame id, the rest the JSON payload.  Oracle: what parses re-encodes and
 * parses back the same; and the JSON parser's fast path
 * (tether_json_parse_fast) accepts only what json_loadb accepts, and
 * builds the same values.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "rpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tether_rpc_request req, req2;
	tether_rpc_response resp, resp2;
	tether_error err;
	unsigned char *buf = NULL;
	size_t n = 0;
	uint32_t id;
	int r;

	if (size < 5)
		return 0;
	{
		json_error_t je;
		json_t *fast = tether_json_parse_fast(data + 5, size - 5), *ref;
		if (fast) {
			ref = json_loadb((const char *)data + 5, size - 5, JSON_REJECT_DUPLICATES, &je);
			if (!ref || !json_equal(ref, fast))
				abort();
			json_decref(ref);
			json_decref(fast);
		}
	}
	id = ((uint32_t)data[1] << 24) | ((uint32_t)data[2] << 16) |
	     ((uint32_t)data[3] << 8) | data[4];
	if ((data[0] & 1) == 0) {
		if (tether_rpc_request_parse(id, data + 5, size - 5, &req,
		                             &err) != 0)
			return 0;
		/* Re-encoding may only fail on size (params re-serialised). */
		r = tether_rpc_request_encode(id, req.method, req.params,
		                              TETHER_FRAME_JSON_MAX_HARD, &buf, &n,
		                              &err);
		if (r != 0)
			abort();
		if (tether_rpc_request_parse(id, buf + TETHER_FRAME_HEADER_LEN,
		                             n - TETHER_FRAME_HEADER_LEN, &req2,
		                             &err) != 0)
			abort();
		if (strcmp(req.method, req2.method) != 0 ||
		    !json_equal(req.params, req2.params))
			abort();
		tether_rpc_request_clear(&req2);
		tether_rpc_request_clear(&req);
	} else {
		if (tether_rpc_response_parse(id, data + 5, size - 5, &resp,
		                              &err) != 0)
			return 0;
		if (resp.is_error)
			r = tether_rpc_error_encode(id, resp.code, resp.message,
			                            resp.category[0] ? resp.category
			                                             : NULL,
			                            &buf, &n, &err);
		else
			r = tether_rpc_result_encode(id, resp.result,
			                             TETHER_FRAME_JSON_MAX_HARD, &buf,
			                             &n, &err);
		if (r != 0)
			abort();
		if (tether_rpc_response_parse(id, buf + TETHER_FRAME_HEADER_LEN,
		                              n - TETHER_FRAME_HEADER_LEN, &resp2,
		                              &err) != 0)
			abort();
		if (resp.is_error != resp2.is_error ||
		    strcmp(resp.message, resp2.message) != 0 ||
		    strcmp(resp.code, resp2.code) != 0 ||
		    strcmp(resp.category, resp2.category) != 0 ||
		    (!resp.is_error && !json_equal(resp.result, resp2.result)))
			abort();
		tether_rpc_response_clear(&resp2);
		tether_rpc_response_clear(&resp);
	}
	free(buf);
	return 0;
}
