/*
 * The HELLO message: build, parse, validate, negotiate.  See hello.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hello.h"

#define FAIL(code, cat, ...) tether_proto_fail(err, (code), (cat), __VA_ARGS__)
#define BAD(...) FAIL(TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT, __VA_ARGS__)
#define MISUSE(...) FAIL(TETHER_ERR_INVALID, TETHER_CAT_INTERNAL, __VA_ARGS__)

const char *
tether_role_name(int role)
{
	switch (role) {
	case TETHER_ROLE_AGENT: return "agent";
	case TETHER_ROLE_SERVER: return "server";
	default: return "peer";
	}
}

const char *
tether_mode_name(int mode)
{
	switch (mode) {
	case TETHER_MODE_LISTENING: return "listening";
	case TETHER_MODE_POLLING: return "polling";
	default: return "unknown";
	}
}

static const char *
role_with_article(int role)
{
	switch (role) {
	case TETHER_ROLE_AGENT: return "an agent";
	case TETHER_ROLE_SERVER: return "a server";
	default: return "a peer";
	}
}

static int
role_from_name(const char *s)
{
	if (strcmp(s, "agent") == 0)
		return TETHER_ROLE_AGENT;
	if (strcmp(s, "server") == 0)
		return TETHER_ROLE_SERVER;
	return TETHER_ROLE_UNKNOWN;
}

static int
mode_from_name(const char *s)
{
	if (strcmp(s, "listening") == 0)
		return TETHER_MODE_LISTENING;
	if (strcmp(s, "polling") == 0)
		return TETHER_MODE_POLLING;
	return TETHER_MODE_UNKNOWN;
}

static int
is_software_version(const char *s)
{
	size_t i;

	if (s == NULL || s[0] == '\0')
		return 0;
	for (i = 0; s[i] != '\0'; i++)
		if (i >= TETHER_HELLO_SOFTWARE_MAX || s[i] < 0x20 || s[i] > 0x7e)
			return 0;
	return 1;
}

static int
is_instance_id(const char *s)
{
	size_t i;

	if (s == NULL)
		return 0;
	for (i = 0; s[i] != '\0'; i++) {
		char c = s[i];
		if (i >= TETHER_HELLO_INSTANCE_ID_LEN)
			return 0;
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
		      (c >= 'A' && c <= 'F')))
			return 0;
	}
	return i == TETHER_HELLO_INSTANCE_ID_LEN;
}

static void
copy_lower(char *dst, const char *src, size_t cap)
{
	size_t i;

	for (i = 0; i + 1 < cap && src[i] != '\0'; i++)
		dst[i] = (src[i] >= 'A' && src[i] <= 'Z')
		         ? (char)(src[i] - 'A' + 'a') : src[i];
	dst[i] = '\0';
}

/* "MAJOR.MINOR", each 0..65535 in decimal without leading zeros. */
static int
parse_version(const char *s, uint16_t *major, uint16_t *minor)
{
	unsigned long v[2] = { 0, 0 };
	int part = 0;
	size_t digits = 0;

	for (;; s++) {
		if (*s >= '0' && *s <= '9') {
			if (digits > 0 && v[part] == 0)
				return 0;               /* leading zero */
			v[part] = v[part] * 10 + (unsigned long)(*s - '0');
			if (v[part] > 65535)
				return 0;
			digits++;
		} else if (*s == '.' && part == 0 && digits > 0) {
			part = 1;
			digits = 0;
		} else if (*s == '\0' && part == 1 && digits > 0) {
			break;
		} else {
			return 0;
		}
	}
	*major = (uint16_t)v[0];
	*minor = (uint16_t)v[1];
	return 1;
}

int
tether_hello_init(tether_hello *h, int role, int mode,
                  const char *software_version, const char *instance_id,
                  tether_error *err)
{
	tether_hello tmp;
	int r;

	if (h == NULL) {
		r = MISUSE("hello: no output");
		goto out;
	}
	memset(&tmp, 0, sizeof(tmp));
	tmp.major = TETHER_PROTOCOL_MAJOR;
	tmp.minor = TETHER_PROTOCOL_MINOR;
	tmp.role = role;
	tmp.mode = mode;
	if (!is_software_version(software_version)) {
		r = MISUSE("hello: the software version must be 1..%u printable "
		           "ASCII characters", TETHER_HELLO_SOFTWARE_MAX);
		goto out;
	}
	if (!is_instance_id(instance_id)) {
		r = MISUSE("hello: the instance id must be %u hex digits",
		           TETHER_HELLO_INSTANCE_ID_LEN);
		goto out;
	}
	snprintf(tmp.software_version, sizeof(tmp.software_version), "%s",
	         software_version);
	copy_lower(tmp.instance_id, instance_id, sizeof(tmp.instance_id));
	r = tether_hello_validate(&tmp, err);
	if (r < 0) {
		if (err != NULL)
			err->code = TETHER_ERR_INVALID;
		r = TETHER_ERR_INVALID;
		goto out;
	}
	*h = tmp;
out:
	return r;
}

int
tether_hello_has_capability(const tether_hello *h, const char *capability)
{
	size_t i;

	if (h == NULL || capability == NULL)
		return 0;
	for (i = 0; i < h->n_capabilities && i < TETHER_HELLO_CAPS_MAX; i++)
		if (strcmp(h->capabilities[i], capability) == 0)
			return 1;
	return 0;
}

int
tether_hello_add_capability(tether_hello *h, const char *capability,
                            tether_error *err)
{
	int r;

	if (h == NULL || !tether_proto_is_token(capability,
	                                        TETHER_HELLO_CAP_MAX)) {
		r = MISUSE("hello: a capability must be 1..%u characters "
		           "[a-z0-9._-]", TETHER_HELLO_CAP_MAX);
		goto out;
	}
	if (tether_hello_has_capability(h, capability)) {
		r = 0;
		goto out;
	}
	if (h->n_capabilities >= TETHER_HELLO_CAPS_MAX) {
		r = MISUSE("hello: more than %u capabilities",
		           TETHER_HELLO_CAPS_MAX);
		goto out;
	}
	snprintf(h->capabilities[h->n_capabilities],
	         sizeof(h->capabilities[0]), "%s", capability);
	h->n_capabilities++;
	r = 0;
out:
	return r;
}

int
tether_hello_validate(const tether_hello *h, tether_error *err)
{
	size_t i, j;
	int r;

	if (h == NULL) {
		r = MISUSE("hello: nothing to check");
		goto out;
	}
	if (h->role != TETHER_ROLE_AGENT && h->role != TETHER_ROLE_SERVER) {
		r = BAD("HELLO \"role\" must be \"agent\" or \"server\"");
		goto out;
	}
	if (h->mode != TETHER_MODE_LISTENING && h->mode != TETHER_MODE_POLLING) {
		r = BAD("HELLO \"mode\" must be \"listening\" or \"polling\"");
		goto out;
	}
	if (!is_software_version(h->software_version)) {
		r = BAD("HELLO \"software_version\" must be 1..%u printable "
		        "ASCII characters", TETHER_HELLO_SOFTWARE_MAX);
		goto out;
	}
	if (!is_instance_id(h->instance_id)) {
		r = BAD("HELLO \"instance_id\" must be %u hex digits",
		        TETHER_HELLO_INSTANCE_ID_LEN);
		goto out;
	}
	if (h->n_capabilities > TETHER_HELLO_CAPS_MAX) {
		r = BAD("HELLO lists %zu capabilities; at most %u are allowed",
		        h->n_capabilities, TETHER_HELLO_CAPS_MAX);
		goto out;
	}
	for (i = 0; i < h->n_capabilities; i++) {
		if (!tether_proto_is_token(h->capabilities[i],
		                           TETHER_HELLO_CAP_MAX)) {
			r = BAD("HELLO capability %zu must be 1..%u characters "
			        "[a-z0-9._-]", i, TETHER_HELLO_CAP_MAX);
			goto out;
		}
		for (j = 0; j < i; j++)
			if (strcmp(h->capabilities[i], h->capabilities[j]) == 0) {
				r = BAD("HELLO lists capability \"%s\" twice",
				        h->capabilities[i]);
				goto out;
			}
	}
	if (h->has_error &&
	    (!tether_proto_is_token(h->error_code, TETHER_PROTO_CODE_MAX) ||
	     !tether_proto_is_text(h->error_message,
	                           TETHER_PROTO_MESSAGE_MAX))) {
		r = BAD("HELLO \"error\" must have a \"code\" of 1..%u characters "
		        "[a-z0-9._-] and a \"message\" of at most %u bytes "
		        "without control characters", TETHER_PROTO_CODE_MAX,
		        TETHER_PROTO_MESSAGE_MAX);
		goto out;
	}
	r = 0;
out:
	return r;
}

int
tether_hello_to_json(const tether_hello *h, json_t **out, tether_error *err)
{
	char version[16];
	json_t *o = NULL, *caps = NULL;
	size_t i;
	int r;

	if (out == NULL) {
		r = MISUSE("hello: no output");
		goto out;
	}
	r = tether_hello_validate(h, err);
	if (r < 0)
		goto out;
	caps = json_array();
	if (caps == NULL)
		goto nomem;
	for (i = 0; i < h->n_capabilities; i++)
		if (json_array_append_new(caps,
		                          json_string(h->capabilities[i])) < 0)
			goto nomem;
	snprintf(version, sizeof(version), "%u.%u", (unsigned)h->major,
	         (unsigned)h->minor);
	o = json_pack("{s:s, s:s, s:s, s:s, s:O, s:s, s:s}",
	              "protocol", TETHER_PROTOCOL_NAME,
	              "version", version,
	              "role", tether_role_name(h->role),
	              "software_version", h->software_version,
	              "capabilities", caps,
	              "instance_id", h->instance_id,
	              "mode", tether_mode_name(h->mode));
	if (o == NULL)
		goto nomem;
	if (h->has_error &&
	    json_object_set_new(o, "error",
	                        json_pack("{s:s, s:s}", "code", h->error_code,
	                                  "message", h->error_message)) < 0) {
		r = MISUSE("hello: the error message is not valid UTF-8");
		goto out;
	}
	*out = o;
	o = NULL;
	r = 0;
	goto out;
nomem:
	r = FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
	         "out of memory building HELLO");
out:
	json_decref(caps);
	json_decref(o);
	return r;
}

int
tether_hello_encode(const tether_hello *h, unsigned char **out,
                    size_t *out_len, tether_error *err)
{
	json_t *o = NULL;
	int r;

	r = tether_hello_to_json(h, &o, err);
	if (r < 0)
		goto out;
	r = tether_frame_encode_json(TETHER_FRAME_HELLO, 0, o, 0, out, out_len,
	                             err);
out:
	json_decref(o);
	return r;
}

int
tether_hello_answer_encode(const tether_hello *local, const char *error_code,
                           const char *error_message, unsigned char **out,
                           size_t *out_len, tether_error *err)
{
	tether_hello *h = NULL;
	size_t n, i;
	int r;

	if (local == NULL) {
		r = MISUSE("hello answer: no local HELLO");
		goto out;
	}
	h = malloc(sizeof(*h));
	if (h == NULL) {
		r = FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		         "out of memory building HELLO");
		goto out;
	}
	*h = *local;
	h->has_error = 0;
	h->error_code[0] = '\0';
	h->error_message[0] = '\0';
	if (error_code != NULL) {
		if (!tether_proto_is_token(error_code, TETHER_PROTO_CODE_MAX)) {
			r = MISUSE("hello answer: the error code must be 1..%u "
			           "characters [a-z0-9._-]", TETHER_PROTO_CODE_MAX);
			goto out;
		}
		h->has_error = 1;
		snprintf(h->error_code, sizeof(h->error_code), "%s", error_code);
		/* Cut at a UTF-8 boundary, control characters to spaces. */
		n = error_message == NULL ? 0 : strlen(error_message);
		if (n > TETHER_PROTO_MESSAGE_MAX) {
			n = TETHER_PROTO_MESSAGE_MAX;
			while (n > 0 &&
			       ((unsigned char)error_message[n] & 0xc0) == 0x80)
				n--;
		}
		for (i = 0; i < n; i++) {
			unsigned char c = (unsigned char)error_message[i];
			h->error_message[i] = (c < 0x20 || c == 0x7f)
			                      ? ' ' : (char)c;
		}
		h->error_message[n] = '\0';
	}
	r = tether_hello_encode(h, out, out_len, err);
out:
	free(h);
	return r;
}

/* A string member of at most max bytes (no embedded NUL), or NULL. */
static const char *
get_str(json_t *o, const char *key, size_t max)
{
	json_t *v = json_object_get(o, key);
	const char *s;

	if (!json_is_string(v))
		return NULL;
	s = json_string_value(v);
	if (json_string_length(v) > max || strlen(s) != json_string_length(v))
		return NULL;
	return s;
}

/* "error": {"code", "message"}: 1 if absent, 0 if malformed; fills h. */
static int
parse_error(json_t *o, tether_hello *h)
{
	json_t *v = json_object_get(o, "error");
	const char *code, *msg;

	if (v == NULL)
		return 1;
	if (!json_is_object(v))
		return 0;
	code = get_str(v, "code", TETHER_PROTO_CODE_MAX);
	msg = get_str(v, "message", TETHER_PROTO_MESSAGE_MAX);
	if (code == NULL || !tether_proto_is_token(code, TETHER_PROTO_CODE_MAX) ||
	    msg == NULL || !tether_proto_is_text(msg, TETHER_PROTO_MESSAGE_MAX))
		return 0;
	h->has_error = 1;
	snprintf(h->error_code, sizeof(h->error_code), "%s", code);
	snprintf(h->error_message, sizeof(h->error_message), "%s", msg);
	return 1;
}

/* Fields a peer of a different major may have reshaped: taken only when
 * well-formed, so the refusal can still name the peer. */
static void
parse_lenient(json_t *o, tether_hello *h)
{
	const char *s;

	s = get_str(o, "role", 16);
	if (s != NULL)
		h->role = role_from_name(s);
	s = get_str(o, "mode", 16);
	if (s != NULL)
		h->mode = mode_from_name(s);
	s = get_str(o, "software_version", TETHER_HELLO_SOFTWARE_MAX);
	if (s != NULL && is_software_version(s))
		snprintf(h->software_version, sizeof(h->software_version), "%s",
		         s);
	s = get_str(o, "instance_id", TETHER_HELLO_INSTANCE_ID_LEN);
	if (s != NULL && is_instance_id(s))
		copy_lower(h->instance_id, s, sizeof(h->instance_id));
	parse_error(o, h);
}

int
tether_hello_parse(const unsigned char *payload, size_t len,
                   tether_hello *out, tether_error *err)
{
	tether_hello *h = NULL;
	json_t *o = NULL, *v, *e;
	const char *s;
	size_t i;
	int r;

	if (out == NULL) {
		r = MISUSE("hello: no output");
		goto out;
	}
	if (len > TETHER_FRAME_HELLO_MAX) {
		r = BAD("HELLO is %zu bytes, more than the limit of %u", len,
		        TETHER_FRAME_HELLO_MAX);
		goto out;
	}
	h = calloc(1, sizeof(*h));
	if (h == NULL) {
		r = FAIL(TETHER_ERR_NOMEM, TETHER_CAT_INTERNAL,
		         "out of memory parsing HELLO");
		goto out;
	}
	r = tether_json_parse_object(payload, len, "HELLO", &o, err);
	if (r < 0)
		goto out;

	s = get_str(o, "protocol", 32);
	if (s == NULL || strcmp(s, TETHER_PROTOCOL_NAME) != 0) {
		r = BAD("the peer's HELLO does not name the tether protocol "
		        "(\"protocol\": \"tether\" missing): it does not speak "
		        "tether");
		goto out;
	}
	s = get_str(o, "version", 16);
	if (s == NULL || !parse_version(s, &h->major, &h->minor)) {
		r = BAD("HELLO \"version\" must be a string \"MAJOR.MINOR\" "
		        "(e.g. \"1.0\")");
		goto out;
	}

	if (h->major != TETHER_PROTOCOL_MAJOR) {
		parse_lenient(o, h);
		*out = *h;
		r = 0;
		goto out;
	}

	s = get_str(o, "role", 16);
	if (s == NULL || (h->role = role_from_name(s)) == TETHER_ROLE_UNKNOWN) {
		r = BAD("HELLO \"role\" must be \"agent\" or \"server\"");
		goto out;
	}
	s = get_str(o, "mode", 16);
	if (s == NULL || (h->mode = mode_from_name(s)) == TETHER_MODE_UNKNOWN) {
		r = BAD("HELLO \"mode\" must be \"listening\" or \"polling\"");
		goto out;
	}
	s = get_str(o, "software_version", TETHER_HELLO_SOFTWARE_MAX);
	if (s == NULL || !is_software_version(s)) {
		r = BAD("HELLO \"software_version\" must be a string of 1..%u "
		        "printable ASCII characters", TETHER_HELLO_SOFTWARE_MAX);
		goto out;
	}
	snprintf(h->software_version, sizeof(h->software_version), "%s", s);
	s = get_str(o, "instance_id", TETHER_HELLO_INSTANCE_ID_LEN);
	if (s == NULL || !is_instance_id(s)) {
		r = BAD("HELLO \"instance_id\" must be a string of %u hex digits",
		        TETHER_HELLO_INSTANCE_ID_LEN);
		goto out;
	}
	copy_lower(h->instance_id, s, sizeof(h->instance_id));

	v = json_object_get(o, "capabilities");
	if (!json_is_array(v)) {
		r = BAD("HELLO \"capabilities\" must be an array of strings");
		goto out;
	}
	if (json_array_size(v) > TETHER_HELLO_CAPS_MAX) {
		r = BAD("HELLO lists %zu capabilities; at most %u are allowed",
		        json_array_size(v), TETHER_HELLO_CAPS_MAX);
		goto out;
	}
	for (i = 0; i < json_array_size(v); i++) {
		e = json_array_get(v, i);
		if (!json_is_string(e) ||
		    json_string_length(e) > TETHER_HELLO_CAP_MAX ||
		    strlen(json_string_value(e)) != json_string_length(e) ||
		    !tether_proto_is_token(json_string_value(e),
		                           TETHER_HELLO_CAP_MAX)) {
			r = BAD("HELLO capability %zu must be a string of 1..%u "
			        "characters [a-z0-9._-]", i, TETHER_HELLO_CAP_MAX);
			goto out;
		}
		if (tether_hello_has_capability(h, json_string_value(e))) {
			r = BAD("HELLO lists capability \"%s\" twice",
			        json_string_value(e));
			goto out;
		}
		snprintf(h->capabilities[h->n_capabilities],
		         sizeof(h->capabilities[0]), "%s",
		         json_string_value(e));
		h->n_capabilities++;
	}

	if (!parse_error(o, h)) {
		r = BAD("HELLO \"error\" must be an object with a \"code\" of "
		        "1..%u characters [a-z0-9._-] and a \"message\" of at "
		        "most %u bytes without control characters",
		        TETHER_PROTO_CODE_MAX, TETHER_PROTO_MESSAGE_MAX);
		goto out;
	}
	*out = *h;
	r = 0;
out:
	json_decref(o);
	free(h);
	return r;
}

static void
set_peer(char *peer_code, char *peer_msg, size_t peer_msg_size,
         const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void
set_peer(char *peer_code, char *peer_msg, size_t peer_msg_size,
         const char *code, const char *fmt, ...)
{
	va_list ap;

	if (peer_code != NULL)
		snprintf(peer_code, TETHER_PROTO_CODE_MAX + 1, "%s", code);
	if (peer_msg == NULL || peer_msg_size == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(peer_msg, peer_msg_size, fmt, ap);
	va_end(ap);
}

int
tether_hello_negotiate(const tether_hello *local, const tether_hello *peer,
                       tether_hello_agreed *out, char *peer_code,
                       char *peer_msg, size_t peer_msg_size,
                       tether_error *err)
{
	const char *lrole, *prole, *psoft;
	unsigned high;
	int r;

	if (local == NULL || peer == NULL || out == NULL) {
		r = MISUSE("hello negotiate: bad arguments");
		goto out;
	}
	lrole = tether_role_name(local->role);
	prole = tether_role_name(peer->role);
	psoft = peer->software_version[0] != '\0' ? peer->software_version
	                                          : "unknown";

	if (peer->has_error) {
		r = FAIL(TETHER_ERR_PROTOCOL,
		         strcmp(peer->error_code, "protocol_version") == 0
		         ? TETHER_CAT_PROTOCOL_VERSION : TETHER_CAT_BAD_INPUT,
		         "the %s refused the connection (%s): %s", prole,
		         peer->error_code, peer->error_message);
		set_peer(peer_code, peer_msg, peer_msg_size, "refused", "%s",
		         "");
		goto out;
	}

	if (peer->major != local->major) {
		high = peer->major > local->major ? peer->major : local->major;
		if (peer->major > local->major) {
			r = FAIL(TETHER_ERR_PROTOCOL, TETHER_CAT_PROTOCOL_VERSION,
			         "the %s speaks tether protocol %u.%u (software "
			         "%s); this %s speaks %u.x: upgrade this %s to a "
			         "release that speaks protocol %u.x",
			         prole, peer->major, peer->minor, psoft, lrole,
			         local->major, lrole, high);
			set_peer(peer_code, peer_msg, peer_msg_size,
			         "protocol_version",
			         "the %s speaks tether protocol %u.%u (software "
			         "%s) and refused protocol %u.%u: upgrade the %s "
			         "to a release that speaks protocol %u.x",
			         lrole, local->major, local->minor,
			         local->software_version, peer->major,
			         peer->minor, lrole, high);
		} else {
			r = FAIL(TETHER_ERR_PROTOCOL, TETHER_CAT_PROTOCOL_VERSION,
			         "the %s speaks tether protocol %u.%u (software "
			         "%s); this %s speaks %u.x: upgrade the %s to a "
			         "release that speaks protocol %u.x",
			         prole, peer->major, peer->minor, psoft, lrole,
			         local->major, prole, high);
			set_peer(peer_code, peer_msg, peer_msg_size,
			         "protocol_version",
			         "the %s speaks tether protocol %u.%u (software "
			         "%s) and refused protocol %u.%u: upgrade this %s "
			         "to a release that speaks protocol %u.x",
			         lrole, local->major, local->minor,
			         local->software_version, peer->major,
			         peer->minor, prole, high);
		}
		goto out;
	}

	if (peer->role == local->role) {
		const char *other = local->role == TETHER_ROLE_AGENT
		                    ? "a server" : "an agent";
		r = FAIL(TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
		         "the peer is also %s: %s talks only to %s; check the "
		         "address and port", role_with_article(local->role),
		         role_with_article(local->role), other);
		set_peer(peer_code, peer_msg, peer_msg_size, "role",
		         "the peer is also %s: %s talks only to %s; check the "
		         "address and port", role_with_article(local->role),
		         role_with_article(local->role), other);
		goto out;
	}

	if (peer->mode != local->mode) {
		r = FAIL(TETHER_ERR_PROTOCOL, TETHER_CAT_BAD_INPUT,
		         "the %s is in %s mode but this %s is in %s mode: "
		         "configure both for the same mode", prole,
		         tether_mode_name(peer->mode), lrole,
		         tether_mode_name(local->mode));
		set_peer(peer_code, peer_msg, peer_msg_size, "mode",
		         "the %s is in %s mode but this %s is in %s mode: "
		         "configure both for the same mode", lrole,
		         tether_mode_name(local->mode), prole,
		         tether_mode_name(peer->mode));
		goto out;
	}

	out->major = local->major;
	out->minor = peer->minor < local->minor ? peer->minor : local->minor;
	r = 0;
out:
	return r;
}
