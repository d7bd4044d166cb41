/*
 * pk11_err.c: PKCS#11 return values as tether errors.  detail carries the
 * CKR_* name and p11-kit's text beside the message, never instead of it.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "pk11_int.h"

static const struct {
	CK_RV rv;
	const char *name;
} rv_names[] = {
#define N(x) { x, #x }
	N(CKR_OK), N(CKR_CANCEL), N(CKR_HOST_MEMORY), N(CKR_SLOT_ID_INVALID),
	N(CKR_GENERAL_ERROR), N(CKR_FUNCTION_FAILED), N(CKR_ARGUMENTS_BAD),
	N(CKR_ATTRIBUTE_READ_ONLY), N(CKR_ATTRIBUTE_SENSITIVE),
	N(CKR_ATTRIBUTE_TYPE_INVALID), N(CKR_ATTRIBUTE_VALUE_INVALID),
	N(CKR_DATA_INVALID), N(CKR_DATA_LEN_RANGE), N(CKR_DEVICE_ERROR),
	N(CKR_DEVICE_MEMORY), N(CKR_DEVICE_REMOVED), N(CKR_FUNCTION_CANCELED),
	N(CKR_FUNCTION_NOT_SUPPORTED), N(CKR_KEY_HANDLE_INVALID),
	N(CKR_KEY_SIZE_RANGE), N(CKR_KEY_TYPE_INCONSISTENT),
	N(CKR_KEY_FUNCTION_NOT_PERMITTED), N(CKR_KEY_UNEXTRACTABLE),
	N(CKR_MECHANISM_INVALID), N(CKR_MECHANISM_PARAM_INVALID),
	N(CKR_OBJECT_HANDLE_INVALID), N(CKR_OPERATION_ACTIVE),
	N(CKR_OPERATION_NOT_INITIALIZED), N(CKR_PIN_INCORRECT),
	N(CKR_PIN_INVALID), N(CKR_PIN_LEN_RANGE), N(CKR_PIN_EXPIRED),
	N(CKR_PIN_LOCKED), N(CKR_SESSION_CLOSED), N(CKR_SESSION_COUNT),
	N(CKR_SESSION_HANDLE_INVALID), N(CKR_SESSION_READ_ONLY),
	N(CKR_SESSION_EXISTS), N(CKR_SIGNATURE_INVALID),
	N(CKR_TEMPLATE_INCOMPLETE), N(CKR_TEMPLATE_INCONSISTENT),
	N(CKR_TOKEN_NOT_PRESENT), N(CKR_TOKEN_NOT_RECOGNIZED),
	N(CKR_TOKEN_WRITE_PROTECTED), N(CKR_USER_ALREADY_LOGGED_IN),
	N(CKR_USER_NOT_LOGGED_IN), N(CKR_USER_PIN_NOT_INITIALIZED),
	N(CKR_USER_TYPE_INVALID), N(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
	N(CKR_BUFFER_TOO_SMALL), N(CKR_CRYPTOKI_NOT_INITIALIZED),
	N(CKR_CRYPTOKI_ALREADY_INITIALIZED), N(CKR_DOMAIN_PARAMS_INVALID),
	N(CKR_CURVE_NOT_SUPPORTED),
#undef N
};

const char *pk11_rv_name(CK_RV rv)
{
	size_t i;

	for (i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++)
		if (rv_names[i].rv == rv)
			return rv_names[i].name;
	return "CKR_(other)";
}

int pk11_rv_session_lost(CK_RV rv)
{
	return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
	       rv == CKR_USER_NOT_LOGGED_IN || rv == CKR_DEVICE_REMOVED ||
	       rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR ||
	       rv == CKR_TOKEN_NOT_RECOGNIZED;
}

int pk11_rv_token_class(CK_RV rv)
{
	return pk11_rv_session_lost(rv) || rv == CKR_OBJECT_HANDLE_INVALID ||
	       rv == CKR_KEY_HANDLE_INVALID || rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

int pk11_rv_category(CK_RV rv)
{
	switch (rv) {
	case CKR_PIN_INCORRECT: case CKR_PIN_INVALID: case CKR_PIN_LEN_RANGE:
	case CKR_PIN_EXPIRED: case CKR_PIN_LOCKED:
	case CKR_USER_PIN_NOT_INITIALIZED:
		return TETHER_CAT_BAD_PASSWORD;
	case CKR_SLOT_ID_INVALID:
	case CKR_OBJECT_HANDLE_INVALID: case CKR_KEY_HANDLE_INVALID:
		return TETHER_CAT_NOT_FOUND;
	/* The token went away or stopped answering: not the files' I/O. */
	case CKR_TOKEN_NOT_PRESENT: case CKR_TOKEN_NOT_RECOGNIZED:
	case CKR_DEVICE_REMOVED: case CKR_DEVICE_ERROR:
	case CKR_SESSION_HANDLE_INVALID: case CKR_SESSION_CLOSED:
	case CKR_USER_NOT_LOGGED_IN:
		return TETHER_CAT_TOKEN_UNAVAILABLE;
	case CKR_DEVICE_MEMORY:
		return TETHER_CAT_IO;
	case CKR_MECHANISM_INVALID: case CKR_FUNCTION_NOT_SUPPORTED:
	case CKR_KEY_SIZE_RANGE: case CKR_CURVE_NOT_SUPPORTED:
	case CKR_ATTRIBUTE_TYPE_INVALID: case CKR_TEMPLATE_INCONSISTENT:
		return TETHER_CAT_UNSUPPORTED;
	case CKR_KEY_UNEXTRACTABLE: case CKR_ATTRIBUTE_SENSITIVE:
		return TETHER_CAT_KEY_NOT_EXPORTABLE;
	default:
		return TETHER_CAT_INTERNAL;
	}
}

int pk11_err_set(tether_error *err, int code, int category, CK_RV rv,
                 const char *fmt, ...)
{
	char msg[TETHER_ERROR_DETAIL_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		msg[0] = '\0';
	ERR_clear_error();      /* OpenSSL's queue is not part of this story */
	if (err != NULL) {
		err->code = code;
		err->category = category >= 0 ? category : pk11_rv_category(rv);
		if (rv != CKR_OK)
			snprintf(err->detail, sizeof(err->detail), "%s: %s (%s)", msg,
			         pk11_rv_name(rv), p11_kit_strerror(rv));
		else
			snprintf(err->detail, sizeof(err->detail), "%s", msg);
	}
	return code;
}
