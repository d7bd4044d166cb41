#include "config.h"
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "fsutil.h"
#include "log.h"
#include "ticketkey.h"
#include "util.h"

int tether_ticket_key_expired(const char *state_dir, unsigned max_age_s)
{
	char *path = tether_asprintf("%s/ticket.key", state_dir);
	struct stat st;
	int r = stat(path, &st) != 0 || time(NULL) - st.st_mtime >= (time_t)max_age_s;

	free(path);
	return r;
}

int tether_ticket_key(tether_prov *prov, const char *state_dir, const char *identity_sha256,
                      unsigned max_age_s, unsigned char key[TETHER_TICKET_KEY_LEN],
                      tether_error *err)
{
	char *path = tether_asprintf("%s/ticket.key", state_dir);
	unsigned char *buf = NULL, out[TETHER_TICKET_KEY_LEN + 64];
	size_t len = 0;
	struct stat st;
	int r = 0;

	if (strlen(identity_sha256) != 64) {
		free(path);
		return TETHER_ERR_INVALID;
	}
	if (tether_read_file(path, 4096, &buf, &len, NULL) == 0 && len == sizeof(out) &&
	    !memcmp(buf + TETHER_TICKET_KEY_LEN, identity_sha256, 64) && stat(path, &st) == 0 &&
	    time(NULL) - st.st_mtime < (time_t)max_age_s) {
		memcpy(key, buf, TETHER_TICKET_KEY_LEN);
		goto out;
	}
	r = prov->t->random_bytes(key, TETHER_TICKET_KEY_LEN);
	if (r < 0)
		goto out;
	memcpy(out, key, TETHER_TICKET_KEY_LEN);
	memcpy(out + TETHER_TICKET_KEY_LEN, identity_sha256, 64);
	r = tether_write_atomic(path, out, sizeof(out), 0600, err);
	tether_wipe(out, sizeof(out));
	if (r == 0)
		tether_debug("tls", "new session ticket key");
out:
	if (buf)
		tether_free_wiped(buf, len);
	free(path);
	return r;
}
