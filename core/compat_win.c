/* Windows implementations of the POSIX calls the core uses (see
 * compat_win.h).  Built only by the mingw-w64 cross-build. */
#ifdef _WIN32
#include "config.h"
#include <errno.h>
#include <aclapi.h>
#include <sddl.h>
#include <conio.h>

/* The macros of compat_win.h would turn our own definitions into calls. */
#undef flock
#undef mkdir
#undef fchmod
#undef chmod
#undef rename
#undef fsync
#undef random
#undef memmem
#undef sysconf

long tether_win_sysconf(int name)
{
	SYSTEM_INFO si;

	if (name != _SC_NPROCESSORS_ONLN) {
		errno = EINVAL;
		return -1;
	}
	GetSystemInfo(&si);
	return (long)si.dwNumberOfProcessors;
}

static wchar_t *to_wide(const char *s)
{
	int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
	wchar_t *w;

	if (n <= 0)
		return NULL;
	w = malloc((size_t)n * sizeof(wchar_t));
	if (w && MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n) <= 0) {
		free(w);
		w = NULL;
	}
	return w;
}

static void set_errno_from(DWORD e)
{
	switch (e) {
	case ERROR_FILE_NOT_FOUND:
	case ERROR_PATH_NOT_FOUND: errno = ENOENT; break;
	case ERROR_ACCESS_DENIED:
	case ERROR_SHARING_VIOLATION: errno = EACCES; break;
	case ERROR_ALREADY_EXISTS:
	case ERROR_FILE_EXISTS: errno = EEXIST; break;
	case ERROR_NOT_ENOUGH_MEMORY: errno = ENOMEM; break;
	case ERROR_LOCK_VIOLATION: errno = EWOULDBLOCK; break;
	default: errno = EIO; break;
	}
}

const char *tether_win_strerror(unsigned long code)
{
	static __thread char buf[256];
	DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
	                         NULL, (DWORD)code, 0, buf, sizeof(buf), NULL);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == '.'))
		buf[--n] = '\0';
	if (n == 0)
		snprintf(buf, sizeof(buf), "Windows error %lu", code);
	return buf;
}

int tether_win_flock(int fd, int op)
{
	HANDLE h = (HANDLE)_get_osfhandle(fd);
	OVERLAPPED ov;

	if (h == INVALID_HANDLE_VALUE) {
		errno = EBADF;
		return -1;
	}
	memset(&ov, 0, sizeof(ov));
	if (op & LOCK_UN) {
		if (!UnlockFileEx(h, 0, MAXDWORD, MAXDWORD, &ov)) {
			set_errno_from(GetLastError());
			return -1;
		}
		return 0;
	}
	if (!LockFileEx(h, ((op & LOCK_EX) ? LOCKFILE_EXCLUSIVE_LOCK : 0) |
	                   ((op & LOCK_NB) ? LOCKFILE_FAIL_IMMEDIATELY : 0),
	                0, MAXDWORD, MAXDWORD, &ov)) {
		set_errno_from(GetLastError());
		return -1;
	}
	return 0;
}

/* A protected DACL: full control for the owner (the current user, or
 * SYSTEM for a service), SYSTEM and Administrators; nothing for others. */
static PSECURITY_DESCRIPTOR private_sd(void)
{
	PSECURITY_DESCRIPTOR sd = NULL;
	HANDLE tok = NULL;
	TOKEN_USER *tu = NULL;
	DWORD n = 0;
	LPWSTR user = NULL;
	wchar_t sddl[512];

	if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &tok))
		return NULL;
	GetTokenInformation(tok, TokenUser, NULL, 0, &n);
	tu = n ? malloc(n) : NULL;
	if (!tu || !GetTokenInformation(tok, TokenUser, tu, n, &n) ||
	    !ConvertSidToStringSidW(tu->User.Sid, &user))
		goto out;
	_snwprintf(sddl, sizeof(sddl) / sizeof(sddl[0]) - 1,
	           L"D:P(A;OICI;FA;;;%ls)(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)", user);
	sddl[sizeof(sddl) / sizeof(sddl[0]) - 1] = L'\0';
	if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, &sd, NULL))
		sd = NULL;
out:
	if (user)
		LocalFree(user);
	free(tu);
	CloseHandle(tok);
	return sd;
}

static int apply_private(HANDLE h, const wchar_t *path)
{
	PSECURITY_DESCRIPTOR sd = private_sd();
	PACL dacl = NULL;
	BOOL present = FALSE, defaulted = FALSE;
	DWORD e;

	if (!sd) {
		errno = EIO;
		return -1;
	}
	GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted);
	if (h) {
		e = SetSecurityInfo(h, SE_FILE_OBJECT,
		                    DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
		                    NULL, NULL, dacl, NULL);
		/* a descriptor from open() has no WRITE_DAC access: go by the
		 * file's path (the handle keeps it where it is) */
		if (e == ERROR_ACCESS_DENIED) {
			wchar_t fp[MAX_PATH + 8];
			DWORD n = GetFinalPathNameByHandleW(h, fp, MAX_PATH + 8, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS);
			if (n > 0 && n < MAX_PATH + 8)
				e = SetNamedSecurityInfoW(fp, SE_FILE_OBJECT,
				                          DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
				                          NULL, NULL, dacl, NULL);
		}
	} else
		e = SetNamedSecurityInfoW((LPWSTR)path, SE_FILE_OBJECT,
		                          DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
		                          NULL, NULL, dacl, NULL);
	LocalFree(sd);
	if (e != ERROR_SUCCESS) {
		set_errno_from(e);
		return -1;
	}
	return 0;
}

int tether_win_mkdir(const char *path, int mode)
{
	wchar_t *w = to_wide(path);
	int r = 0;

	if (!w) {
		errno = EINVAL;
		return -1;
	}
	if (!CreateDirectoryW(w, NULL)) {
		DWORD e = GetLastError();
		/* "C:" and other roots answer ACCESS_DENIED: they exist. */
		DWORD attr = GetFileAttributesW(w);
		if (attr != INVALID_FILE_ATTRIBUTES && (attr & FILE_ATTRIBUTE_DIRECTORY))
			errno = EEXIST;
		else
			set_errno_from(e);
		r = -1;
	} else if (!(mode & 077)) {
		r = apply_private(NULL, w);
	}
	free(w);
	return r;
}

int tether_win_fchmod(int fd, int mode)
{
	HANDLE h = (HANDLE)_get_osfhandle(fd);

	if (h == INVALID_HANDLE_VALUE) {
		errno = EBADF;
		return -1;
	}
	if (mode & 077)
		return 0;       /* readable by others: the inherited ACL is that */
	return apply_private(h, NULL);
}

int tether_win_chmod(const char *path, int mode)
{
	wchar_t *w = to_wide(path);
	int r;

	if (!w) {
		errno = EINVAL;
		return -1;
	}
	r = (mode & 077) ? 0 : apply_private(NULL, w);
	free(w);
	return r;
}

int tether_win_rename(const char *from, const char *to)
{
	wchar_t *wf = to_wide(from), *wt = to_wide(to);
	int r = 0;

	if (!wf || !wt) {
		errno = EINVAL;
		r = -1;
	} else if (!MoveFileExW(wf, wt, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) {
		set_errno_from(GetLastError());
		r = -1;
	}
	free(wf);
	free(wt);
	return r;
}

int tether_win_fsync(int fd)
{
	HANDLE h = (HANDLE)_get_osfhandle(fd);

	if (h == INVALID_HANDLE_VALUE) {
		errno = EBADF;
		return -1;
	}
	if (!FlushFileBuffers(h)) {
		DWORD e = GetLastError();
		/* directories and consoles cannot be flushed: nothing to do */
		if (e == ERROR_ACCESS_DENIED || e == ERROR_INVALID_HANDLE)
			return 0;
		set_errno_from(e);
		return -1;
	}
	return 0;
}

long tether_win_random(void)
{
	unsigned int v = 0;

	if (rand_s(&v) != 0)
		v = (unsigned int)GetTickCount() ^ (unsigned int)GetCurrentProcessId();
	return (long)(v & 0x7fffffff);
}

void *tether_win_memmem(const void *h, size_t hl, const void *n, size_t nl)
{
	const unsigned char *hp = h;
	size_t i;

	if (nl == 0)
		return (void *)h;
	if (hl < nl)
		return NULL;
	for (i = 0; i + nl <= hl; i++)
		if (hp[i] == *(const unsigned char *)n && memcmp(hp + i, n, nl) == 0)
			return (void *)(hp + i);
	return NULL;
}

static __thread char dl_err[512];
static __thread int dl_err_set;

static void dl_fail(const char *what, const char *name)
{
	DWORD e = GetLastError();
	snprintf(dl_err, sizeof(dl_err), "%s %s: %s (Windows error %lu)", what, name,
	         tether_win_strerror(e), (unsigned long)e);
	dl_err_set = 1;
}

void *tether_win_dlopen(const char *path, int flags)
{
	wchar_t *w = to_wide(path);
	HMODULE m;

	(void)flags;
	if (!w) {
		snprintf(dl_err, sizeof(dl_err), "bad path %s", path);
		dl_err_set = 1;
		return NULL;
	}
	/* Dependencies are searched beside the DLL and in System32 only. */
	m = LoadLibraryExW(w, NULL, LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR |
	                            LOAD_LIBRARY_SEARCH_DEFAULT_DIRS);
	if (!m && GetLastError() == ERROR_INVALID_PARAMETER)
		m = LoadLibraryW(w);     /* systems without the search flags */
	free(w);
	if (!m)
		dl_fail("LoadLibrary", path);
	return m;
}

void *tether_win_dlsym(void *h, const char *sym)
{
	FARPROC f = GetProcAddress((HMODULE)h, sym);
	void *p;

	if (!f) {
		dl_fail("GetProcAddress", sym);
		return NULL;
	}
	memcpy(&p, &f, sizeof(p));
	return p;
}

int tether_win_dlclose(void *h)
{
	return FreeLibrary((HMODULE)h) ? 0 : -1;
}

const char *tether_win_dlerror(void)
{
	if (!dl_err_set)
		return NULL;
	dl_err_set = 0;
	return dl_err;
}

const char *tether_win_exe_dir(void)
{
	static char dir[MAX_PATH * 3];
	wchar_t w[MAX_PATH];
	DWORD n = GetModuleFileNameW(NULL, w, MAX_PATH);
	char *s;

	if (n == 0 || n >= MAX_PATH ||
	    WideCharToMultiByte(CP_UTF8, 0, w, -1, dir, sizeof(dir), NULL, NULL) <= 0)
		return ".";
	s = strrchr(dir, '\\');
	if (s)
		*s = '\0';
	return dir;
}

const char *tether_win_default_home(void)
{
	static char home[MAX_PATH * 3];
	const char *pd = getenv("ProgramData");

	snprintf(home, sizeof(home), "%s\\tether", pd && *pd ? pd : "C:\\ProgramData");
	return home;
}

int tether_win_prompt_noecho(const char *prompt, char *buf, size_t cap)
{
	HANDLE in = CreateFileW(L"CONIN$", GENERIC_READ | GENERIC_WRITE,
	                        FILE_SHARE_READ | FILE_SHARE_WRITE, NULL, OPEN_EXISTING, 0, NULL);
	HANDLE out = CreateFileW(L"CONOUT$", GENERIC_WRITE, FILE_SHARE_WRITE, NULL,
	                         OPEN_EXISTING, 0, NULL);
	DWORD mode = 0, n;
	size_t len = 0;
	int r = 0;

	if (in == INVALID_HANDLE_VALUE || !GetConsoleMode(in, &mode)) {
		r = -1;
		goto out;
	}
	if (out != INVALID_HANDLE_VALUE)
		WriteConsoleA(out, prompt, (DWORD)strlen(prompt), &n, NULL);
	SetConsoleMode(in, (mode & ~(DWORD)ENABLE_ECHO_INPUT) | ENABLE_LINE_INPUT);
	/* bounded: at most cap - 1 characters are kept, input ends at a newline */
	for (;;) {
		char c;
		if (!ReadFile(in, &c, 1, &n, NULL) || n == 0 || c == '\n')
			break;
		if (c != '\r' && len < cap - 1)
			buf[len++] = c;
	}
	buf[len] = '\0';
	SetConsoleMode(in, mode);
	if (out != INVALID_HANDLE_VALUE)
		WriteConsoleA(out, "\r\n", 2, &n, NULL);
out:
	if (in != INVALID_HANDLE_VALUE)
		CloseHandle(in);
	if (out != INVALID_HANDLE_VALUE)
		CloseHandle(out);
	return r;
}
#endif /* _WIN32 */

#ifdef _WIN32
#include "sys/utsname.h"
int tether_win_uname(struct utsname *u)
{
	OSVERSIONINFOW v;
	SYSTEM_INFO si;
	DWORD n = sizeof(u->nodename);
	/* RtlGetVersion tells the truth; GetVersionEx is capped by manifests */
	typedef LONG (WINAPI *rtl_fn)(OSVERSIONINFOW *);
	HMODULE nt = GetModuleHandleW(L"ntdll.dll");
	FARPROC fp = nt ? GetProcAddress(nt, "RtlGetVersion") : NULL;
	rtl_fn rtl = NULL;

	memset(u, 0, sizeof(*u));
	memset(&v, 0, sizeof(v));
	v.dwOSVersionInfoSize = sizeof(v);
	if (fp)
		memcpy(&rtl, &fp, sizeof(rtl));
	if (rtl)
		rtl(&v);
	snprintf(u->sysname, sizeof(u->sysname), "Windows");
	if (!GetComputerNameA(u->nodename, &n))
		snprintf(u->nodename, sizeof(u->nodename), "unknown");
	snprintf(u->release, sizeof(u->release), "%lu.%lu.%lu", (unsigned long)v.dwMajorVersion,
	         (unsigned long)v.dwMinorVersion, (unsigned long)v.dwBuildNumber);
	snprintf(u->version, sizeof(u->version), "%lu", (unsigned long)v.dwBuildNumber);
	GetNativeSystemInfo(&si);
	snprintf(u->machine, sizeof(u->machine), "%s",
	         si.wProcessorArchitecture == PROCESSOR_ARCHITECTURE_AMD64 ? "x86_64" :
	         si.wProcessorArchitecture == PROCESSOR_ARCHITECTURE_ARM64 ? "aarch64" : "unknown");
	return 0;
}
#endif

#ifdef _WIN32
/* open() and fopen() in binary mode by default, as on POSIX: no CR/LF
 * translation, no end of file at ^Z. */
__attribute__((constructor)) static void tether_win_binmode(void)
{
	_fmode = _O_BINARY;
	_setmode(_fileno(stdin), _O_BINARY);
}
#endif
