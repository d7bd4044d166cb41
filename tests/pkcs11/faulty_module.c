/*
 * faulty_module.c: a PKCS#11 module for tests only.  It stands in front of
 * a real module (SoftHSM2) and forwards every call to it, except while a
 * fault window is open, when it answers as a token that was pulled out or
 * whose sessions died.  SoftHSM2 cannot simulate token removal; this can.
 *
 * Environment (read at every call, so a test drives it while a daemon runs):
 *   TETHER_P11_FAULT_MODULE  the real module to forward to (required; the
 *                            test finds libsofthsm2.so with dpkg -L).
 *   TETHER_P11_FAULT_FILE    while this file exists the window is open.  Its
 *                            first word chooses the fault:
 *                              removed  CKR_DEVICE_REMOVED from session
 *                                       calls, CKR_TOKEN_NOT_PRESENT from
 *                                       token calls (C_OpenSession,
 *                                       C_GetTokenInfo, ...);
 *                              session  CKR_SESSION_HANDLE_INVALID from
 *                                       session calls, token calls work;
 *                              logout   CKR_USER_NOT_LOGGED_IN from session
 *                                       calls, token calls work;
 *                              stall    session calls do not return while
 *                                       the window is open (at most 60 s),
 *                                       then go through: a network HSM
 *                                       that stops answering.  Sessions
 *                                       are left alone.
 *                            On entering a removed, session or logout
 *                            window every session of the
 *                            real module is closed (C_CloseAllSessions on
 *                            each slot), which also logs the token out, as
 *                            a real removal would: after the window the
 *                            old session handles are really invalid, and
 *                            recovering means opening new sessions and
 *                            logging in again.
 *   TETHER_P11_FAULT_NO_PSS  set (to anything): the token has no RSA-PSS
 *                            (CKM_RSA_PKCS_PSS and CKM_SHA*_RSA_PKCS_PSS are
 *                            left out of C_GetMechanismList and are
 *                            CKR_MECHANISM_INVALID elsewhere), as on tokens
 *                            that only do PKCS#1 v1.5.
 *   TETHER_P11_FAULT_LOG     optional: one line appended per injected
 *                            fault ("C_SignInit CKR_DEVICE_REMOVED"), so a
 *                            test can check faults were really injected.
 *   TETHER_P11_SIGN_DELAY_MS every C_Sign or C_SignFinal that signs waits
 *                            this long (1 to 1000 ms) before it is
 *                            forwarded, as on a network HSM, and each new
 *                            high of signatures in flight at once is logged
 *                            ("C_Sign in-flight N") to TETHER_P11_FAULT_LOG.
 *
 * Only C_GetFunctionList is exported; the 2.40 function list is enough for
 * p11-kit and pkcs11-provider (which fall back to it without
 * C_GetInterface).
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_SLOTS 64

enum fault { F_NONE = 0, F_REMOVED, F_SESSION, F_LOGOUT, F_STALL };
#define STALL_MAX_MS 60000
enum kind { K_TOKEN, K_SESSION };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST *real;
static void *real_handle;
static int in_window;
static CK_FUNCTION_LIST faulty_list;

/* The window's fault, from the file's first word. */
static enum fault current_fault(void)
{
	const char *path = getenv("TETHER_P11_FAULT_FILE");
	char buf[32] = "";
	ssize_t n;
	int fd;

	if (path == NULL || path[0] == '\0')
		return F_NONE;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return F_NONE;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	if (strncmp(buf, "session", 7) == 0)
		return F_SESSION;
	if (strncmp(buf, "logout", 6) == 0)
		return F_LOGOUT;
	if (strncmp(buf, "stall", 5) == 0)
		return F_STALL;
	return F_REMOVED;
}

static void note(const char *fn, const char *rv)
{
	const char *path = getenv("TETHER_P11_FAULT_LOG");
	char line[128];
	int fd, n;

	if (path == NULL || path[0] == '\0')
		return;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	n = snprintf(line, sizeof(line), "%s %s\n", fn, rv);
	if (n > 0 && write(fd, line, (size_t)n) < 0)
		n = 0;
	close(fd);
}

/* Entering the window: every session of the real module dies. */
static void kill_sessions(void)
{
	CK_SLOT_ID slots[MAX_SLOTS];
	CK_ULONG n = MAX_SLOTS, i;

	if (real->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		return;
	for (i = 0; i < n && i < MAX_SLOTS; i++)
		real->C_CloseAllSessions(slots[i]);
}

/* CKR_OK to forward the call, else the fault to answer with. */
static CK_RV check(const char *fn, enum kind k)
{
	enum fault f = current_fault();
	CK_RV rv = CKR_OK;
	const char *name = NULL;
	int waited;

	if (f == F_STALL && k == K_SESSION) {
		note(fn, "stalled");
		for (waited = 0; waited < STALL_MAX_MS && current_fault() == F_STALL; waited += 50)
			usleep(50 * 1000);
		note(fn, "released");
		return CKR_OK;
	}
	if (f == F_STALL)
		return CKR_OK;
	pthread_mutex_lock(&lock);
	if (f != F_NONE && !in_window && real != NULL)
		kill_sessions();
	in_window = f != F_NONE;
	pthread_mutex_unlock(&lock);
	if (f == F_REMOVED && k == K_TOKEN) {
		rv = CKR_TOKEN_NOT_PRESENT;
		name = "CKR_TOKEN_NOT_PRESENT";
	} else if (f == F_REMOVED) {
		rv = CKR_DEVICE_REMOVED;
		name = "CKR_DEVICE_REMOVED";
	} else if (f == F_SESSION && k == K_SESSION) {
		rv = CKR_SESSION_HANDLE_INVALID;
		name = "CKR_SESSION_HANDLE_INVALID";
	} else if (f == F_LOGOUT && k == K_SESSION) {
		rv = CKR_USER_NOT_LOGGED_IN;
		name = "CKR_USER_NOT_LOGGED_IN";
	}
	if (name != NULL)
		note(fn, name);
	return rv;
}

static CK_RV load_real(void)
{
	const char *path = getenv("TETHER_P11_FAULT_MODULE");
	CK_C_GetFunctionList gfl;
	CK_RV rv;

	if (real != NULL)
		return CKR_OK;
	if (path == NULL || path[0] == '\0') {
		fprintf(stderr, "faulty_module: TETHER_P11_FAULT_MODULE is not set: "
		        "set it to the real PKCS#11 module (libsofthsm2.so)\n");
		return CKR_GENERAL_ERROR;
	}
	real_handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (real_handle == NULL) {
		fprintf(stderr, "faulty_module: cannot load %s: %s\n", path, dlerror());
		return CKR_GENERAL_ERROR;
	}
	gfl = (CK_C_GetFunctionList)dlsym(real_handle, "C_GetFunctionList");
	if (gfl == NULL) {
		fprintf(stderr, "faulty_module: %s has no C_GetFunctionList\n", path);
		return CKR_GENERAL_ERROR;
	}
	rv = gfl(&real);
	if (rv != CKR_OK)
		real = NULL;
	return rv;
}

/* Forwarded as is. */
#define PASS(name, params, args) \
	static CK_RV f_##name params { return real->name args; }
/* Faulted inside the window. */
#define FAULT(name, kind, params, args) \
	static CK_RV f_##name params \
	{ \
		CK_RV frv = check(#name, kind); \
		return frv != CKR_OK ? frv : real->name args; \
	}

static CK_RV f_C_Initialize(CK_VOID_PTR a)
{
	CK_RV rv;

	pthread_mutex_lock(&lock);
	rv = load_real();
	pthread_mutex_unlock(&lock);
	return rv != CKR_OK ? rv : real->C_Initialize(a);
}
PASS(C_Finalize, (CK_VOID_PTR a), (a))
PASS(C_GetInfo, (CK_INFO_PTR a), (a))
static CK_RV f_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	if (out == NULL)
		return CKR_ARGUMENTS_BAD;
	*out = &faulty_list;
	return CKR_OK;
}
PASS(C_GetSlotList, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c))
PASS(C_GetSlotInfo, (CK_SLOT_ID a, CK_SLOT_INFO_PTR b), (a, b))
FAULT(C_GetTokenInfo, K_TOKEN, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b))
static int is_pss(CK_MECHANISM_TYPE m)
{
	return getenv("TETHER_P11_FAULT_NO_PSS") != NULL &&
	       (m == CKM_RSA_PKCS_PSS || m == CKM_SHA1_RSA_PKCS_PSS ||
	        m == CKM_SHA224_RSA_PKCS_PSS || m == CKM_SHA256_RSA_PKCS_PSS ||
	        m == CKM_SHA384_RSA_PKCS_PSS || m == CKM_SHA512_RSA_PKCS_PSS);
}

static CK_RV f_C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list,
                                  CK_ULONG_PTR count)
{
	CK_MECHANISM_TYPE all[512];
	CK_ULONG n = 512, i, k = 0;
	CK_RV rv = check("C_GetMechanismList", K_TOKEN);

	if (rv != CKR_OK)
		return rv;
	if (count == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = real->C_GetMechanismList(slot, all, &n);
	if (rv != CKR_OK)
		return rv;
	for (i = 0; i < n; i++) {
		if (is_pss(all[i]))
			continue;
		if (list != NULL && k < *count)
			list[k] = all[i];
		k++;
	}
	rv = list != NULL && k > *count ? CKR_BUFFER_TOO_SMALL : CKR_OK;
	*count = k;
	return rv;
}

static CK_RV f_C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE m,
                                  CK_MECHANISM_INFO_PTR info)
{
	CK_RV rv = check("C_GetMechanismInfo", K_TOKEN);

	if (rv != CKR_OK)
		return rv;
	return is_pss(m) ? CKR_MECHANISM_INVALID : real->C_GetMechanismInfo(slot, m, info);
}
FAULT(C_InitToken, K_TOKEN, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d))
FAULT(C_InitPIN, K_SESSION, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_SetPIN, K_SESSION, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e), (a, b, c, d, e))
FAULT(C_OpenSession, K_TOKEN, (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e), (a, b, c, d, e))
PASS(C_CloseSession, (CK_SESSION_HANDLE a), (a))
PASS(C_CloseAllSessions, (CK_SLOT_ID a), (a))
FAULT(C_GetSessionInfo, K_SESSION, (CK_SESSION_HANDLE a, CK_SESSION_INFO_PTR b), (a, b))
FAULT(C_GetOperationState, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULT(C_SetOperationState, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e), (a, b, c, d, e))
FAULT(C_Login, K_SESSION, (CK_SESSION_HANDLE a, CK_USER_TYPE b, CK_UTF8CHAR_PTR c, CK_ULONG d), (a, b, c, d))
FAULT(C_Logout, K_SESSION, (CK_SESSION_HANDLE a), (a))
FAULT(C_CreateObject, K_SESSION, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d), (a, b, c, d))
FAULT(C_CopyObject, K_SESSION, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
FAULT(C_DestroyObject, K_SESSION, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
FAULT(C_GetObjectSize, K_SESSION, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c), (a, b, c))
FAULT(C_GetAttributeValue, K_SESSION, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
FAULT(C_SetAttributeValue, K_SESSION, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
FAULT(C_FindObjectsInit, K_SESSION, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_FindObjects, K_SESSION, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c, CK_ULONG_PTR d), (a, b, c, d))
FAULT(C_FindObjectsFinal, K_SESSION, (CK_SESSION_HANDLE a), (a))
FAULT(C_EncryptInit, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULT(C_Encrypt, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_EncryptUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_EncryptFinal, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULT(C_DecryptInit, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULT(C_Decrypt, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_DecryptUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_DecryptFinal, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULT(C_DigestInit, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b), (a, b))
FAULT(C_Digest, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_DigestUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_DigestKey, K_SESSION, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
FAULT(C_DigestFinal, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
static CK_RV f_C_SignInit(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c)
{
	CK_RV rv = check("C_SignInit", K_SESSION);

	if (rv != CKR_OK)
		return rv;
	if (b != NULL && is_pss(b->mechanism)) {
		note("C_SignInit", "CKR_MECHANISM_INVALID (no RSA-PSS)");
		return CKR_MECHANISM_INVALID;
	}
	return real->C_SignInit(a, b, c);
}
/* C_Sign and C_SignFinal (pkcs11-provider signs TLS handshakes in parts:
 * C_SignInit, C_SignUpdate, C_SignFinal), slowed down by
 * TETHER_P11_SIGN_DELAY_MS (a network HSM); each new high of signatures in
 * flight at once is noted ("C_Sign in-flight N"). */
static int sign_inflight, sign_max;

static long sign_enter(int really)
{
	const char *ds = getenv("TETHER_P11_SIGN_DELAY_MS");
	long ms = ds != NULL ? strtol(ds, NULL, 10) : 0;
	char what[32];
	int high = 0;

	/* Only a real signature, not a length query, waits. */
	if (ms <= 0 || ms > 1000 || !really)
		return 0;
	pthread_mutex_lock(&lock);
	if (++sign_inflight > sign_max)
		high = sign_max = sign_inflight;
	pthread_mutex_unlock(&lock);
	if (high) {
		snprintf(what, sizeof(what), "in-flight %d", high);
		note("C_Sign", what);
	}
	usleep((useconds_t)ms * 1000);
	return ms;
}

static void sign_leave(long ms)
{
	if (ms == 0)
		return;
	pthread_mutex_lock(&lock);
	sign_inflight--;
	pthread_mutex_unlock(&lock);
}

static CK_RV f_C_Sign(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
                      CK_ULONG_PTR e)
{
	CK_RV rv = check("C_Sign", K_SESSION);
	long ms;

	if (rv != CKR_OK)
		return rv;
	ms = sign_enter(d != NULL);
	rv = real->C_Sign(a, b, c, d, e);
	sign_leave(ms);
	return rv;
}

static CK_RV f_C_SignFinal(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c)
{
	CK_RV rv = check("C_SignFinal", K_SESSION);
	long ms;

	if (rv != CKR_OK)
		return rv;
	ms = sign_enter(b != NULL);
	rv = real->C_SignFinal(a, b, c);
	sign_leave(ms);
	return rv;
}
FAULT(C_SignUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_SignRecoverInit, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULT(C_SignRecover, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_VerifyInit, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULT(C_Verify, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e), (a, b, c, d, e))
FAULT(C_VerifyUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_VerifyFinal, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_VerifyRecoverInit, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
FAULT(C_VerifyRecover, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_DigestEncryptUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_DecryptDigestUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_SignEncryptUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_DecryptVerifyUpdate, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
FAULT(C_GenerateKey, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
FAULT(C_GenerateKeyPair, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))
FAULT(C_WrapKey, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f), (a, b, c, d, e, f))
FAULT(C_UnwrapKey, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))
FAULT(C_DeriveKey, K_SESSION, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f), (a, b, c, d, e, f))
FAULT(C_SeedRandom, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_GenerateRandom, K_SESSION, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULT(C_GetFunctionStatus, K_SESSION, (CK_SESSION_HANDLE a), (a))
FAULT(C_CancelFunction, K_SESSION, (CK_SESSION_HANDLE a), (a))
PASS(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))

static CK_FUNCTION_LIST faulty_list = {
	{ 2, 40 },
	f_C_Initialize, f_C_Finalize, f_C_GetInfo, f_C_GetFunctionList,
	f_C_GetSlotList, f_C_GetSlotInfo, f_C_GetTokenInfo, f_C_GetMechanismList,
	f_C_GetMechanismInfo, f_C_InitToken, f_C_InitPIN, f_C_SetPIN,
	f_C_OpenSession, f_C_CloseSession, f_C_CloseAllSessions, f_C_GetSessionInfo,
	f_C_GetOperationState, f_C_SetOperationState, f_C_Login, f_C_Logout,
	f_C_CreateObject, f_C_CopyObject, f_C_DestroyObject, f_C_GetObjectSize,
	f_C_GetAttributeValue, f_C_SetAttributeValue, f_C_FindObjectsInit,
	f_C_FindObjects, f_C_FindObjectsFinal, f_C_EncryptInit, f_C_Encrypt,
	f_C_EncryptUpdate, f_C_EncryptFinal, f_C_DecryptInit, f_C_Decrypt,
	f_C_DecryptUpdate, f_C_DecryptFinal, f_C_DigestInit, f_C_Digest,
	f_C_DigestUpdate, f_C_DigestKey, f_C_DigestFinal, f_C_SignInit, f_C_Sign,
	f_C_SignUpdate, f_C_SignFinal, f_C_SignRecoverInit, f_C_SignRecover,
	f_C_VerifyInit, f_C_Verify, f_C_VerifyUpdate, f_C_VerifyFinal,
	f_C_VerifyRecoverInit, f_C_VerifyRecover, f_C_DigestEncryptUpdate,
	f_C_DecryptDigestUpdate, f_C_SignEncryptUpdate, f_C_DecryptVerifyUpdate,
	f_C_GenerateKey, f_C_GenerateKeyPair, f_C_WrapKey, f_C_UnwrapKey,
	f_C_DeriveKey, f_C_SeedRandom, f_C_GenerateRandom, f_C_GetFunctionStatus,
	f_C_CancelFunction, f_C_WaitForSlotEvent,
};

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out);

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	CK_RV rv;

	if (out == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	rv = load_real();
	pthread_mutex_unlock(&lock);
	if (rv != CKR_OK)
		return rv;
	*out = &faulty_list;
	return CKR_OK;
}
