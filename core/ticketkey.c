#include "config.h"
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "fsutil.h"
#include "log.h"
#include "ticketkey.h"
#include "util.h"

#define ENTRY (TETHER_TICKET_KEY_LEN + 64)

int tether_ticket_key_expired(const char *state_dir, unsigned max_age_s)
{
	char *path = tether_asprintf("%s/ticket.key", state_dir);
	struct stat st;
	int r = stat(path, &st) != 0 || time(NULL) - st.st_mtime >= (time_t)max_age_s;

	free(path);
	return r;
}

int tether_ticket_keys(tether_prov *prov, const char *state_dir, const char *identity_sha256,
                       unsigned period_s, unsigned char keys[2 * TETHER_TICKET_KEY_LEN],
                       int *nkeys, tether_error *err)
{
	char *path = tether_asprintf("%s/ticket.key", state_dir);
	unsigned char *buf = NULL, out[2 * ENTRY];
	size_t len = 0, outlen = ENTRY;
	struct stat st;
	int r = 0, fresh = 0, same = 0;

	if (strlen(identity_sha256) != 64) {
		free(path);
		return TETHER_ERR_INVALID;
	}
	if (tether_read_file(path, 4096, &buf, &len, NULL) == 0 && (len == ENTRY || len == 2 * ENTRY) &&
	    stat(path, &st) == 0) {
		same = !memcmp(buf + TETHER_TICKET_KEY_LEN, identity_sha256, 64);
		fresh = same && time(NULL) - st.st_mtime < (time_t)period_s;
	}
	if (fresh) {
		memcpy(keys, buf, TETHER_TICKET_KEY_LEN);
		*nkeys = 1;
		if (len == 2 * ENTRY && !memcmp(buf + ENTRY + TETHER_TICKET_KEY_LEN, identity_sha256, 64)) {
			memcpy(keys + TETHER_TICKET_KEY_LEN, buf + ENTRY, TETHER_TICKET_KEY_LEN);
			*nkeys = 2;
		}
		goto out;
	}
	r = prov->t->random_bytes(keys, TETHER_TICKET_KEY_LEN);
	if (r < 0)
		goto out;
	memcpy(out, keys, TETHER_TICKET_KEY_LEN);
	memcpy(out + TETHER_TICKET_KEY_LEN, identity_sha256, 64);
	*nkeys = 1;
	if (same) {
		/* the key it replaces still decrypts the tickets it made */
		memcpy(out + ENTRY, buf, ENTRY);
		memcpy(keys + TETHER_TICKET_KEY_LEN, buf, TETHER_TICKET_KEY_LEN);
		outlen = 2 * ENTRY;
		*nkeys = 2;
	}
	r = tether_write_atomic(path, out, outlen, 0600, err);
	tether_wipe(out, sizeof(out));
	if (r == 0)
		tether_debug("tls", "new session ticket key%s", same ? " (the previous one kept to decrypt)" : "");
out:
	if (buf)
		tether_free_wiped(buf, len);
	free(path);
	return r;
}
