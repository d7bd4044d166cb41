/*
 * RPC envelopes carried by REQUEST and RESPONSE frames (docs/protocol.md,
 * "Requests and responses"):
 *
 *   request   {"id": 7, "method": "health", "params": {...}}
 *   response  {"id": 7, "result": {...}}
 *          or {"id": 7, "error": {"code": "unknown_method",
 *                                 "message": "...", "category": "..."}}
 *
 * The id is also in the frame header and must match.  Methods and error
 * codes are [a-z0-9._-]{1,64}; messages at most 1024 bytes of UTF-8 with
 * no control characters; category (optional) [a-z0-9._-]{1,32}.
 */
#ifndef TETHER_RPC_H
#define TETHER_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tether/provider.h"
#include "frame.h"

#define TETHER_RPC_METHOD_MAX 64
#define TETHER_RPC_CATEGORY_MAX 32

/* Error codes every peer understands (others may be added; an unknown
 * code is shown as is). */
#define TETHER_RPC_ERR_UNKNOWN_METHOD "unknown_method"
#define TETHER_RPC_ERR_INVALID_PARAMS "invalid_params"
#define TETHER_RPC_ERR_FORBIDDEN      "forbidden"
#define TETHER_RPC_ERR_NOT_FOUND      "not_found"
#define TETHER_RPC_ERR_BUSY           "busy"
#define TETHER_RPC_ERR_CANCELLED      "cancelled"
#define TETHER_RPC_ERR_TIMEOUT        "timeout"
#define TETHER_RPC_ERR_TOO_LARGE      "too_large"
#define TETHER_RPC_ERR_SHUTTING_DOWN  "shutting_down"
#define TETHER_RPC_ERR_INTERNAL       "internal"

typedef struct tether_rpc_request {
	uint32_t id;
	char method[TETHER_RPC_METHOD_MAX + 1];
	json_t *params;                 /* an object (empty if absent); owned */
} tether_rpc_request;

typedef struct tether_rpc_response {
	uint32_t id;
	int is_error;
	json_t *result;                 /* an object when !is_error; owned */
	char code[TETHER_PROTO_CODE_MAX + 1];         /* when is_error */
	char message[TETHER_PROTO_MESSAGE_MAX + 1];   /* when is_error */
	char category[TETHER_RPC_CATEGORY_MAX + 1];   /* "" when absent */
} tether_rpc_response;

/* 1 if method is a valid method name. */
int tether_rpc_method_valid(const char *method);

/* Build complete REQUEST / RESPONSE frames; free(*out) after.
 * params / result: objects, borrowed (NULL params means {}).  max_json:
 * the JSON limit (0: the default 1 MiB); a result over it fails with
 * TETHER_ERR_INVALID, and the caller answers with an error
 * (TETHER_RPC_ERR_TOO_LARGE) instead. */
int tether_rpc_request_encode(uint32_t id, const char *method, json_t *params,
                              size_t max_json, unsigned char **out,
                              size_t *out_len, tether_error *err);
int tether_rpc_result_encode(uint32_t id, json_t *result, size_t max_json,
                             unsigned char **out, size_t *out_len,
                             tether_error *err);
/* The same RESPONSE frame from a result already serialised: json (len
 * bytes) must be a complete JSON object, e.g. a cached json_dumps output;
 * only its outer braces are checked.  For answers whose text is mostly
 * constant (health), without building and dumping a json_t per request. */
int tether_rpc_result_encode_raw(uint32_t id, const char *json, size_t len,
                                 size_t max_json, unsigned char **out,
                                 size_t *out_len, tether_error *err);
/* message is cut to 1024 bytes and cleaned of control characters;
 * category may be NULL. */
int tether_rpc_error_encode(uint32_t id, const char *code, const char *message,
                            const char *category, unsigned char **out,
                            size_t *out_len, tether_error *err);

/* Parse the payload of a REQUEST / RESPONSE frame whose header carried
 * frame_id.  On success the caller owns *out and calls *_clear. */
int tether_rpc_request_parse(uint32_t frame_id, const unsigned char *payload,
                             size_t len, tether_rpc_request *out,
                             tether_error *err);
int tether_rpc_response_parse(uint32_t frame_id, const unsigned char *payload,
                              size_t len, tether_rpc_response *out,
                              tether_error *err);
void tether_rpc_request_clear(tether_rpc_request *req);
void tether_rpc_response_clear(tether_rpc_response *resp);

#endif /* TETHER_RPC_H */
