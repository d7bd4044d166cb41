/*
 * The HELLO message: the first frame each side sends (the connecting side
 * first, the accepting side answers).  JSON, every field type-checked and
 * bounded; see docs/protocol.md, "HELLO".
 *
 *   {"protocol": "tether", "version": "1.0", "role": "agent",
 *    "software_version": "0.1.0", "capabilities": ["health"],
 *    "instance_id": "<32 hex digits>", "mode": "listening"}
 *
 * plus, only in an answer that refuses the connection,
 *   "error": {"code": "protocol_version", "message": "..."}
 */
#ifndef TETHER_HELLO_H
#define TETHER_HELLO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tether/provider.h"
#include "frame.h"

#define TETHER_PROTOCOL_NAME  "tether"
#define TETHER_PROTOCOL_MAJOR 1
#define TETHER_PROTOCOL_MINOR 0

/* Capability of a TLS client that keeps no TLS sessions (resumption off):
 * the TLS server issues it no session ticket (docs/protocol.md). */
#define TETHER_CAP_NO_TLS_TICKETS "no-tls-tickets"
#define TETHER_HELLO_SOFTWARE_MAX 64     /* printable ASCII */
#define TETHER_HELLO_CAPS_MAX 64         /* capabilities per HELLO */
#define TETHER_HELLO_CAP_MAX 64          /* bytes of one, [a-z0-9._-] */
#define TETHER_HELLO_INSTANCE_ID_LEN 32  /* hex digits (128 bits) */

enum tether_role {
	TETHER_ROLE_UNKNOWN = 0,
	TETHER_ROLE_AGENT = 1,
	TETHER_ROLE_SERVER = 2,
};

enum tether_mode {
	TETHER_MODE_UNKNOWN = 0,
	TETHER_MODE_LISTENING = 1,   /* the agent is the TLS server */
	TETHER_MODE_POLLING = 2,     /* the agent connects out */
};

/* A HELLO, both to send and as parsed.  No allocation inside: copy it,
 * keep it on the stack, nothing to free. */
typedef struct tether_hello {
	uint16_t major;
	uint16_t minor;
	int role;                       /* enum tether_role */
	int mode;                       /* enum tether_mode */
	char software_version[TETHER_HELLO_SOFTWARE_MAX + 1];
	char instance_id[TETHER_HELLO_INSTANCE_ID_LEN + 1]; /* lower-case hex */
	size_t n_capabilities;
	char capabilities[TETHER_HELLO_CAPS_MAX][TETHER_HELLO_CAP_MAX + 1];
	int has_error;                  /* an answer refusing the connection */
	char error_code[TETHER_PROTO_CODE_MAX + 1];
	char error_message[TETHER_PROTO_MESSAGE_MAX + 1];
} tether_hello;

/* What both sides agreed on. */
typedef struct tether_hello_agreed {
	uint16_t major;
	uint16_t minor;                 /* min of both sides' minor */
} tether_hello_agreed;

const char *tether_role_name(int role);   /* "agent", "server", "peer" */
const char *tether_mode_name(int mode);   /* "listening", "polling", "unknown" */

/* Our own HELLO at this build's protocol version (1.0).  instance_id: 32
 * hex digits, random per process (the caller generates it). */
int tether_hello_init(tether_hello *h, int role, int mode,
                      const char *software_version, const char *instance_id,
                      tether_error *err);
int tether_hello_add_capability(tether_hello *h, const char *capability,
                                tether_error *err);
/* 1 if h lists capability, else 0. */
int tether_hello_has_capability(const tether_hello *h, const char *capability);

/* Check every field as a peer would; the encoders call it. */
int tether_hello_validate(const tether_hello *h, tether_error *err);

/* The JSON object (a new reference). */
int tether_hello_to_json(const tether_hello *h, json_t **out,
                         tether_error *err);

/* A complete HELLO frame, ready to write; free(*out) after. */
int tether_hello_encode(const tether_hello *h, unsigned char **out,
                        size_t *out_len, tether_error *err);

/* The accepting side's answer: local's fields, plus, when error_code is not
 * NULL, "error": {"code": error_code, "message": error_message} telling the
 * peer why it is refused (the answering side then closes). */
int tether_hello_answer_encode(const tether_hello *local,
                               const char *error_code,
                               const char *error_message,
                               unsigned char **out, size_t *out_len,
                               tether_error *err);

/* Parse a HELLO frame's payload (tether_frame.body).  A peer of our major
 * version is checked strictly; a peer of another major only needs
 * "protocol" and "version" (its other fields are taken when well-formed),
 * so that negotiation can say clearly who should upgrade. */
int tether_hello_parse(const unsigned char *payload, size_t len,
                       tether_hello *out, tether_error *err);

/* Decide whether local and peer can talk: the peer did not refuse (an
 * "error" in its answer), the same major version (minor = min of both),
 * complementary roles, the same mode.  On refusal returns
 * TETHER_ERR_PROTOCOL with err->detail the message for this side's log
 * (category protocol_version for a version mismatch), and writes into
 * peer_msg (if not NULL) the message to send the peer in the answer
 * HELLO's error, with its code in peer_code (TETHER_PROTO_CODE_MAX + 1
 * bytes, if not NULL). */
int tether_hello_negotiate(const tether_hello *local, const tether_hello *peer,
                           tether_hello_agreed *out,
                           char *peer_code, char *peer_msg,
                           size_t peer_msg_size, tether_error *err);

#endif /* TETHER_HELLO_H */
