#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include "error.h"
#include "fsutil.h"
#include "secret.h"
#include "util.h"

#define SECRET_MAX 4096

int tether_secret_from_file(const char *path, char **out, tether_error *err)
{
	unsigned char *buf = NULL;
	size_t len;
	int r;

	r = tether_read_file(path, SECRET_MAX, &buf, &len, err);
	if (r < 0) {
		tether_err_prefix(err, "cannot read the password file");
		return r;
	}
	if (memchr(buf, '\0', len)) {
		tether_free_wiped(buf, len);
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "password file %s contains a NUL byte", path);
	}
	if (len && buf[len - 1] == '\n')
		buf[--len] = '\0';
	if (len && buf[len - 1] == '\r')
		buf[--len] = '\0';
	*out = (char *)buf;
	return 0;
}

#ifdef _WIN32
/* The console, without echo (CONIN$/CONOUT$). */
static int prompt_tty(const char *prompt, char **out, tether_error *err)
{
	char buf[SECRET_MAX];

	(void)err;
	if (tether_win_prompt_noecho(prompt, buf, sizeof(buf)) < 0)
		return TETHER_ERR_NOT_FOUND;
	*out = tether_strdup(buf);
	tether_wipe(buf, sizeof(buf));
	return 0;
}
#else
static int prompt_tty(const char *prompt, char **out, tether_error *err)
{
	struct termios old, noecho;
	char buf[SECRET_MAX];
	int fd, r = 0;
	size_t n = 0;

	fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return TETHER_ERR_NOT_FOUND;
	if (tcgetattr(fd, &old) < 0) {
		close(fd);
		return TETHER_ERR_NOT_FOUND;
	}
	noecho = old;
	noecho.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	noecho.c_lflag |= ICANON;
	if (write(fd, prompt, strlen(prompt)) < 0) { /* best effort */ }
	tcsetattr(fd, TCSAFLUSH, &noecho);
	for (;;) {
		char c;
		ssize_t rd = read(fd, &c, 1);
		if (rd < 0 && errno == EINTR)
			continue;
		if (rd <= 0 || c == '\n')
			break;
		if (n < sizeof(buf) - 1)
			buf[n++] = c;
	}
	buf[n] = '\0';
	tcsetattr(fd, TCSAFLUSH, &old);
	if (write(fd, "\n", 1) < 0) { /* best effort */ }
	close(fd);
	*out = tether_strdup(buf);
	tether_wipe(buf, sizeof(buf));
	(void)err;
	return r;
}
#endif

int tether_secret_get(const char *file, const char *envvar, const char *prompt,
                      int confirm, char **out, tether_error *err)
{
	const char *env;
	char *a = NULL, *b = NULL;
	int r;

	if (file)
		return tether_secret_from_file(file, out, err);
	env = envvar ? getenv(envvar) : NULL;
	if (env) {
		*out = tether_strdup(env);
		return 0;
	}
	r = prompt_tty(prompt, &a, err);
	if (r == TETHER_ERR_NOT_FOUND)
		return tether_err_set(err, TETHER_ERR_USAGE, TETHER_CAT_BAD_INPUT,
		                      "a password is needed: give --pfx-password-file FILE, set %s, "
		                      "or run on a terminal to be prompted", envvar ? envvar : "it");
	if (r < 0)
		return r;
	if (confirm) {
		r = prompt_tty("Repeat the password: ", &b, err);
		if (r < 0 || strcmp(a, b)) {
			tether_free_secret(a);
			tether_free_secret(b);
			return tether_err_set(err, TETHER_ERR_USAGE, TETHER_CAT_BAD_PASSWORD,
			                      "the two passwords differ: nothing was changed, try again");
		}
		tether_free_secret(b);
	}
	*out = a;
	return 0;
}
