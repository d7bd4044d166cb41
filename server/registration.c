/*
 * Registration with approval: the pre-authentication role of the polling
 * listener, the registrations queue and one-time enrolment tokens.
 *
 * An agent whose certificate no target pins may connect to the polling
 * port and send exactly one method, "register" {name, tags,
 * public_address, token}.  Nothing else of the protocol is reachable from
 * that connection.  The agent proved in the handshake that it holds the key
 * of the certificate whose SHA-256 it registers.
 *
 *  - With a valid token (unused, unexpired, not revoked) and a name no
 *    target has, the token is consumed and the target created in ONE
 *    transaction: the answer is {state: "accepted", target}.
 *  - Otherwise the registration waits in a bounded queue for the operator
 *    ({state: "pending", id}); the same certificate asking again gets the
 *    same id.  A name that collides with an existing target always waits,
 *    even with a token, and accepting it never replaces the existing pin.
 *  - An invalid, used or expired token is refused (nothing is queued).
 *
 * Limits: the request's params at most REG_PARAMS_MAX bytes of JSON; a
 * token bucket per source address ([registration] rate per minute);
 * [registration] max-pending registrations waiting at once; at most
 * REG_REQS_PER_CONN requests and REG_CONN_LIFETIME_MS per connection.
 *
 * Tokens: tether1.<id>.<secret>.<server-sha256>; the id is 16 hex digits,
 * the secret 32 random bytes in hex; only SHA-256(secret) is stored, and it
 * is compared in constant time.  Every decision is audited.
 */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <jansson.h>
#include <uv.h>
#include "admin.h"
#include "audit.h"
#include "conf.h"
#include "conn.h"
#include "error.h"
#include "log.h"
#include "registry.h"
#include "srvapi.h"
#include "util.h"

#define REG_SCHEMA_VERSION 1
#define REG_PARAMS_MAX 4096          /* bytes of JSON in a register request's params */
#define REG_TOKEN_MAX 256            /* characters of a token */
#define REG_ADDRESS_MAX 300          /* characters of public_address */
#define REG_REQS_PER_CONN 8          /* requests on one pre-auth connection */
#define REG_CONN_LIFETIME_MS 60000   /* a pre-auth connection lives at most this long */
#define REG_RATE_SLOTS 1024          /* source addresses tracked by the rate limit */
#define REG_DEFAULT_MAX_PENDING 1000
#define REG_DEFAULT_RATE 30          /* register requests per minute per source address */
#define TOKEN_ID_BYTES 8
#define TOKEN_SECRET_BYTES 32
#define TOKEN_DEFAULT_EXPIRES (24 * 3600)
#define TOKEN_MAX_EXPIRES (366LL * 24 * 3600)
#define REG_LIST_MAX 10000

static const char schema_v1[] =
	"CREATE TABLE IF NOT EXISTS registrations ("
	" id INTEGER PRIMARY KEY,"
	" sha256 TEXT NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),"
	" name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),"
	" tags TEXT NOT NULL DEFAULT '[]',"
	" public_address TEXT,"
	" peer TEXT,"
	" created INTEGER NOT NULL,"
	" updated INTEGER NOT NULL,"
	" state TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected')),"
	" decided_by TEXT,"
	" decided_at INTEGER,"
	" target TEXT,"
	" token_id TEXT,"
	" note TEXT"
	");"
	"CREATE UNIQUE INDEX IF NOT EXISTS registrations_pending ON registrations (sha256)"
	" WHERE state = 'pending';"
	"CREATE INDEX IF NOT EXISTS registrations_sha256 ON registrations (sha256, id);"
	"CREATE TABLE IF NOT EXISTS tokens ("
	" id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 16 AND id NOT GLOB '*[^0-9a-f]*'),"
	" hash TEXT NOT NULL CHECK (length(hash) = 64 AND hash NOT GLOB '*[^0-9a-f]*'),"
	" tags TEXT NOT NULL DEFAULT '[]',"
	" created INTEGER NOT NULL,"
	" expires INTEGER NOT NULL,"
	" used_at INTEGER,"
	" used_by TEXT,"
	" revoked_at INTEGER,"
	" created_by TEXT NOT NULL"
	");"
	"CREATE TABLE IF NOT EXISTS registration_schema (version INTEGER NOT NULL);"
	"INSERT INTO registration_schema (version) SELECT 1 WHERE NOT EXISTS "
	"(SELECT 1 FROM registration_schema);";

#define REG_COLS "id, sha256, name, tags, public_address, peer, created, updated, state, " \
	"decided_by, decided_at, target, token_id, note"

typedef struct rate_slot {
	unsigned char addr[16];
	int family;
	double tokens;
	uint64_t last_ms;
} rate_slot;

/* A pre-auth connection we have seen a request on. */
typedef struct pconn {
	struct pconn *next;
	tether_conn *c;
	unsigned requests;
	uint64_t first_ms;
} pconn;

typedef struct reg_mod {
	srv *s;
	sqlite3 *db;
	int enabled;
	long max_pending;
	double rate_per_min;
	rate_slot *slots;
	size_t nslots;
	pconn *conns;
	uv_timer_t sweep;
	int sweep_on;
} reg_mod;

static reg_mod *g;

/* A registration row. */
typedef struct reg_row {
	int64_t id;
	char sha256[65];
	char name[REG_NAME_MAX + 1];
	json_t *tags;                    /* array */
	char *public_address;
	char *peer;
	int64_t created, updated, decided_at;
	char state[16];
	char *decided_by;
	char *target;
	char *token_id;
	char *note;
} reg_row;

static void reg_row_clear(reg_row *r)
{
	json_decref(r->tags);
	free(r->public_address);
	free(r->peer);
	free(r->decided_by);
	free(r->target);
	free(r->token_id);
	free(r->note);
	memset(r, 0, sizeof(*r));
}

/* ------------------------------------------------------------------ */
/* SQLite helpers                                                      */
/* ------------------------------------------------------------------ */

/* The registrations live in the registry's database: its messages apply. */
static int db_fail(int rc, tether_error *err, const char *what)
{
	return registry_db_fail(g ? g->db : NULL, rc, err, what);
}

static int exec_sql(const char *sql, tether_error *err, const char *what)
{
	int rc = sqlite3_exec(g->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : db_fail(rc, err, what);
}

static void rollback(void)
{
	if (!sqlite3_get_autocommit(g->db))
		sqlite3_exec(g->db, "ROLLBACK", NULL, NULL, NULL);
}

static int prepare(const char *sql, sqlite3_stmt **st, tether_error *err, const char *what)
{
	int rc = sqlite3_prepare_v2(g->db, sql, -1, st, NULL);
	return rc == SQLITE_OK ? 0 : db_fail(rc, err, what);
}

static char *col_dup(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	return s ? tether_strdup((const char *)s) : NULL;
}

static int64_t col_i64(sqlite3_stmt *st, int i)
{
	return sqlite3_column_type(st, i) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, i);
}

static void row_read(sqlite3_stmt *st, reg_row *r)
{
	const unsigned char *s;

	memset(r, 0, sizeof(*r));
	r->id = sqlite3_column_int64(st, 0);
	s = sqlite3_column_text(st, 1);
	snprintf(r->sha256, sizeof(r->sha256), "%s", s ? (const char *)s : "");
	s = sqlite3_column_text(st, 2);
	snprintf(r->name, sizeof(r->name), "%s", s ? (const char *)s : "");
	s = sqlite3_column_text(st, 3);
	r->tags = s ? json_loads((const char *)s, 0, NULL) : NULL;
	if (!json_is_array(r->tags)) {
		json_decref(r->tags);
		r->tags = json_array();
	}
	r->public_address = col_dup(st, 4);
	r->peer = col_dup(st, 5);
	r->created = col_i64(st, 6);
	r->updated = col_i64(st, 7);
	s = sqlite3_column_text(st, 8);
	snprintf(r->state, sizeof(r->state), "%s", s ? (const char *)s : "");
	r->decided_by = col_dup(st, 9);
	r->decided_at = col_i64(st, 10);
	r->target = col_dup(st, 11);
	r->token_id = col_dup(st, 12);
	r->note = col_dup(st, 13);
}

/* One registration by id (found = 0 if absent) or by pending sha256. */
static int reg_get(int64_t id, const char *pending_sha, reg_row *out, int *found, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	int r, rc;

	*found = 0;
	r = prepare(pending_sha ? "SELECT " REG_COLS " FROM registrations WHERE sha256 = ?2 AND state = 'pending'"
	            : "SELECT " REG_COLS " FROM registrations WHERE id = ?1", &st, err, "read a registration");
	if (r < 0)
		return r;
	if (pending_sha)
		sqlite3_bind_text(st, 2, pending_sha, -1, SQLITE_STATIC);
	else
		sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		row_read(st, out);
		*found = 1;
	} else if (rc != SQLITE_DONE) {
		r = db_fail(rc, err, "read a registration");
	}
	sqlite3_finalize(st);
	return r;
}

/* The latest registration of a certificate in any state (found = 0 if none). */
static int reg_latest(const char *sha, reg_row *out, int *found, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	int r, rc;

	*found = 0;
	r = prepare("SELECT " REG_COLS " FROM registrations WHERE sha256 = ?1 ORDER BY id DESC LIMIT 1",
	            &st, err, "read a registration");
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		row_read(st, out);
		*found = 1;
	} else if (rc != SQLITE_DONE) {
		r = db_fail(rc, err, "read a registration");
	}
	sqlite3_finalize(st);
	return r;
}

static int count_pending(long *out, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	int r, rc;

	r = prepare("SELECT count(*) FROM registrations WHERE state = 'pending'", &st, err,
	            "count the pending registrations");
	if (r < 0)
		return r;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*out = (long)sqlite3_column_int64(st, 0);
	else
		r = db_fail(rc, err, "count the pending registrations");
	sqlite3_finalize(st);
	return r;
}

static json_t *row_json(const reg_row *r)
{
	char t1[40] = "", t2[40] = "", t3[40] = "";
	json_t *o;

	tether_iso8601(r->created, t1, sizeof(t1));
	tether_iso8601(r->updated, t2, sizeof(t2));
	if (r->decided_at)
		tether_iso8601(r->decided_at, t3, sizeof(t3));
	o = json_pack("{s:I, s:s, s:s, s:O, s:s?, s:s?, s:s, s:s, s:s, s:s?, s:s?, s:s?, s:s?, s:s?}",
	              "id", (json_int_t)r->id, "sha256", r->sha256, "name", r->name, "tags", r->tags,
	              "public_address", r->public_address, "peer", r->peer, "created", t1, "updated", t2,
	              "state", r->state, "decided_by", r->decided_by, "decided_at", r->decided_at ? t3 : NULL,
	              "target", r->target, "token", r->token_id, "note", r->note);
	json_object_set_new(o, "mode", json_string(r->public_address ? "listening" : "polling"));
	return o;
}

/* ------------------------------------------------------------------ */
/* Targets                                                             */
/* ------------------------------------------------------------------ */

/* Create the target a registration asks for (inside the caller's
 * transaction).  EXISTS if the name is taken. */
static int create_target(const char *name, const char *sha, json_t *tags, const char *public_address,
                         tether_error *err)
{
	reg_target t;
	char *tagv[REG_TAGS_MAX];
	size_t i;
	int r;

	memset(&t, 0, sizeof(t));
	t.name = (char *)name;
	t.sha256 = (char *)sha;
	if (public_address) {
		r = registry_parse_address(public_address, &t.host, &t.port, err);
		if (r < 0)
			return r;
		t.mode = "listening";
	} else {
		t.mode = "polling";
	}
	for (i = 0; i < json_array_size(tags) && i < REG_TAGS_MAX; i++)
		tagv[i] = (char *)json_string_value(json_array_get(tags, i));
	t.tags = tagv;
	t.n_tags = i;
	r = registry_target_add(srv_registry(g->s), &t, err);
	free(t.host);
	return r;
}

/* Does a target of that name exist?  1 yes (its pin in pin), 0 no. */
static int target_exists(const char *name, char pin[65], tether_error *err)
{
	reg_target t;
	tether_error e;
	int r;

	memset(&e, 0, sizeof(e));
	r = registry_target_get(srv_registry(g->s), name, &t, &e);
	if (r == TETHER_ERR_NOT_FOUND)
		return 0;
	if (r < 0) {
		if (err)
			*err = e;
		return r;
	}
	if (pin)
		snprintf(pin, 65, "%s", t.sha256);
	reg_target_clear(&t);
	return 1;
}

/* A target already pinned to this thumbprint, or 0. */
static int target_with_pin(const char *sha, char name[REG_NAME_MAX + 1], tether_error *err)
{
	reg_target *v = NULL;
	size_t n = 0, i;
	int r, found = 0;

	r = registry_target_list(srv_registry(g->s), NULL, &v, &n, err);
	if (r < 0)
		return r;
	for (i = 0; i < n; i++)
		if (!strcmp(v[i].sha256, sha)) {
			snprintf(name, REG_NAME_MAX + 1, "%s", v[i].name);
			found = 1;
			break;
		}
	reg_target_list_free(v, n);
	return found;
}

/* Union of two tag arrays, each tag once, at most REG_TAGS_MAX. */
static json_t *tags_union(json_t *a, json_t *b)
{
	json_t *out = json_array(), *v, *w;
	size_t i, j;
	json_t *src[2] = { a, b };
	int k;

	for (k = 0; k < 2; k++)
		json_array_foreach(src[k], i, v) {
			int dup = 0;
			json_array_foreach(out, j, w)
				if (json_equal(v, w))
					dup = 1;
			if (!dup && json_array_size(out) < REG_TAGS_MAX)
				json_array_append(out, v);
		}
	return out;
}

/* ------------------------------------------------------------------ */
/* Tokens                                                              */
/* ------------------------------------------------------------------ */

static int is_hex(const char *s, size_t n)
{
	size_t i;
	for (i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[n] == '\0' || s[n] == '.';
}

static int unhex(const char *s, unsigned char *out, size_t n)
{
	size_t i;
	for (i = 0; i < n; i++) {
		unsigned v = 0;
		int k;
		for (k = 0; k < 2; k++) {
			char ch = s[2 * i + (size_t)k];
			v <<= 4;
			if (ch >= '0' && ch <= '9')
				v |= (unsigned)(ch - '0');
			else if (ch >= 'a' && ch <= 'f')
				v |= (unsigned)(ch - 'a' + 10);
			else
				return -1;
		}
		out[i] = (unsigned char)v;
	}
	return 0;
}

/* Split tether1.<id>.<secret>.<sha256> (all lower-case hex). */
static int token_split(const char *tok, char id[2 * TOKEN_ID_BYTES + 1],
                       unsigned char secret[TOKEN_SECRET_BYTES], char sha[65])
{
	const char *p = tok;

	if (strlen(tok) != 8 + 2 * TOKEN_ID_BYTES + 1 + 2 * TOKEN_SECRET_BYTES + 1 + 64 ||
	    strncmp(p, "tether1.", 8))
		return -1;
	p += 8;
	if (!is_hex(p, 2 * TOKEN_ID_BYTES) || p[2 * TOKEN_ID_BYTES] != '.')
		return -1;
	memcpy(id, p, 2 * TOKEN_ID_BYTES);
	id[2 * TOKEN_ID_BYTES] = '\0';
	p += 2 * TOKEN_ID_BYTES + 1;
	if (!is_hex(p, 2 * TOKEN_SECRET_BYTES) || p[2 * TOKEN_SECRET_BYTES] != '.' ||
	    unhex(p, secret, TOKEN_SECRET_BYTES) < 0)
		return -1;
	p += 2 * TOKEN_SECRET_BYTES + 1;
	if (!is_hex(p, 64))
		return -1;
	memcpy(sha, p, 64);
	sha[64] = '\0';
	return 0;
}

static int secret_hash(const unsigned char *secret, char out[65], tether_error *err)
{
	tether_prov *p = srv_prov(g->s);
	unsigned char d[TETHER_SHA256_LEN];
	size_t dl = sizeof(d);
	int r;

	r = p->t->digest(TETHER_DIGEST_SHA256, secret, TOKEN_SECRET_BYTES, d, &dl, err);
	if (r < 0)
		return r;
	tether_hex(d, sizeof(d), out);
	return 0;
}

/* Check a token (no change made).  0: valid (its tags in *tags);
 * otherwise a refusal with err saying why. */
enum { TOK_OK = 0, TOK_BAD = 1, TOK_USED, TOK_EXPIRED, TOK_REVOKED, TOK_OTHER_SERVER };

static int token_check(const char *tok, char id[2 * TOKEN_ID_BYTES + 1], json_t **tags, int *verdict,
                       tether_error *err)
{
	unsigned char secret[TOKEN_SECRET_BYTES];
	char sha[65], hash[65], stored[65];
	sqlite3_stmt *st = NULL;
	int r, rc;

	*verdict = TOK_BAD;
	if (token_split(tok, id, secret, sha) < 0)
		return 0;
	if (strcmp(sha, srv_sha256(g->s))) {
		tether_wipe(secret, sizeof(secret));
		*verdict = TOK_OTHER_SERVER;
		return 0;
	}
	r = secret_hash(secret, hash, err);
	tether_wipe(secret, sizeof(secret));
	if (r < 0)
		return r;
	r = prepare("SELECT hash, tags, expires, used_at, revoked_at FROM tokens WHERE id = ?1", &st, err,
	            "read a token");
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const unsigned char *h = sqlite3_column_text(st, 0);
		snprintf(stored, sizeof(stored), "%s", h ? (const char *)h : "");
		if (strlen(stored) == 64 && tether_ct_equal(stored, hash, 64)) {
			if (sqlite3_column_type(st, 4) != SQLITE_NULL)
				*verdict = TOK_REVOKED;
			else if (sqlite3_column_type(st, 3) != SQLITE_NULL)
				*verdict = TOK_USED;
			else if (sqlite3_column_int64(st, 2) <= (int64_t)time(NULL))
				*verdict = TOK_EXPIRED;
			else {
				const unsigned char *t = sqlite3_column_text(st, 1);
				json_t *j = t ? json_loads((const char *)t, 0, NULL) : NULL;
				if (!json_is_array(j)) {
					json_decref(j);
					j = json_array();
				}
				*tags = j;
				*verdict = TOK_OK;
			}
		}
	} else if (rc != SQLITE_DONE) {
		r = db_fail(rc, err, "read a token");
	}
	sqlite3_finalize(st);
	tether_wipe(hash, sizeof(hash));
	return r;
}

static const char *token_refusal(int verdict)
{
	switch (verdict) {
	case TOK_USED:
		return "the token was already used (tokens are one-time): ask the operator for a new one "
		       "('tether-server token create')";
	case TOK_EXPIRED:
		return "the token has expired: ask the operator for a new one ('tether-server token create "
		       "--expires DURATION')";
	case TOK_REVOKED:
		return "the token was revoked: ask the operator for a new one";
	case TOK_OTHER_SERVER:
		return "the token was made by another server (its thumbprint is not this server's): use a "
		       "token created on this server";
	default:
		return "the token is not valid here (unknown id or wrong secret): check the token file, or "
		       "ask the operator for a new token";
	}
}

/* ------------------------------------------------------------------ */
/* Pre-authentication: rate limit and connection bookkeeping           */
/* ------------------------------------------------------------------ */

static int rate_admit(const struct sockaddr_storage *sa)
{
	unsigned char key[16];
	int fam = sa->ss_family;
	uint64_t now = tether_now_ms();
	size_t i, oldest = 0;
	rate_slot *sl = NULL;
	double burst = g->rate_per_min < 1 ? 1 : g->rate_per_min;

	memset(key, 0, sizeof(key));
	if (fam == AF_INET)
		memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	else if (fam == AF_INET6)
		memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
	for (i = 0; i < g->nslots; i++) {
		if (g->slots[i].family == fam && !memcmp(g->slots[i].addr, key, 16)) {
			sl = &g->slots[i];
			break;
		}
		if (g->slots[i].last_ms < g->slots[oldest].last_ms)
			oldest = i;
	}
	if (!sl) {
		if (g->nslots < REG_RATE_SLOTS)
			sl = &g->slots[g->nslots++];
		else
			sl = &g->slots[oldest];
		memcpy(sl->addr, key, 16);
		sl->family = fam;
		sl->tokens = burst;
		sl->last_ms = now;
	}
	sl->tokens += (double)(now - sl->last_ms) * g->rate_per_min / 60000.0;
	if (sl->tokens > burst)
		sl->tokens = burst;
	sl->last_ms = now;
	if (sl->tokens < 1.0)
		return 0;
	sl->tokens -= 1.0;
	return 1;
}

static pconn *pconn_find(tether_conn *c, int create)
{
	pconn *p;

	for (p = g->conns; p; p = p->next)
		if (p->c == c)
			return p;
	if (!create)
		return NULL;
	p = tether_xcalloc(1, sizeof(*p));
	p->c = c;
	p->first_ms = tether_now_ms();
	p->next = g->conns;
	g->conns = p;
	return p;
}

/* Close pre-auth connections that lived too long (every few seconds). */
static void on_sweep(uv_timer_t *t)
{
	pconn *p;
	uint64_t now = tether_now_ms();
	(void)t;

	for (p = g->conns; p; p = p->next)
		if (now - p->first_ms > REG_CONN_LIFETIME_MS && tether_conn_is_open(p->c))
			tether_conn_close(p->c, "timeout", "registration connections are closed after 60 seconds");
}

static int reg_accept(srv *s, const char *sha256, const struct sockaddr_storage *peer)
{
	(void)s;
	(void)sha256;
	(void)peer;
	return g && g->enabled;
}

static void reg_closed(srv *s, tether_conn *c, const char *sha256)
{
	pconn **pp;
	(void)s;
	(void)sha256;

	if (!g)
		return;
	for (pp = &g->conns; *pp; pp = &(*pp)->next)
		if ((*pp)->c == c) {
			pconn *p = *pp;
			*pp = p->next;
			free(p);
			return;
		}
}

static void audit_agent(const char *sha, const char *what, const char *target, const char *result,
                        const char *category, const char *message)
{
	char who[80];

	snprintf(who, sizeof(who), "agent %s", sha);
	tether_audit_write(srv_audit(g->s), who, what, target, result, category, message, NULL);
}

/* ------------------------------------------------------------------ */
/* register                                                            */
/* ------------------------------------------------------------------ */

typedef struct reg_req {
	const char *name;
	json_t *tags;                    /* borrowed */
	const char *public_address;
	const char *token;
} reg_req;

static int parse_register(json_t *params, reg_req *q, tether_error *err)
{
	const char *key;
	json_t *v;
	size_t i;
	char *dump;
	size_t len;

	dump = json_dumps(params, JSON_COMPACT);
	len = dump ? strlen(dump) : 0;
	if (dump) {
		tether_wipe(dump, len);
		free(dump);
	}
	if (len > REG_PARAMS_MAX)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "the register request is too large (%zu bytes of parameters; at most %d)",
		                      len, REG_PARAMS_MAX);
	memset(q, 0, sizeof(*q));
	json_object_foreach(params, key, v) {
		if (!strcmp(key, "name") && json_is_string(v))
			q->name = json_string_value(v);
		else if (!strcmp(key, "tags") && json_is_array(v))
			q->tags = v;
		else if (!strcmp(key, "public_address") && (json_is_string(v) || json_is_null(v)))
			q->public_address = json_string_value(v);
		else if (!strcmp(key, "token") && (json_is_string(v) || json_is_null(v)))
			q->token = json_string_value(v);
		else
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "register: parameter '%.40s' is unknown or of the wrong type (expected "
			                      "name: string, tags: array of strings, public_address: string, token: "
			                      "string)", key);
	}
	if (registry_name_ok(q->name, "target name", err) < 0)
		return TETHER_ERR_INVALID;
	if (q->tags) {
		if (json_array_size(q->tags) > REG_TAGS_MAX)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "register: %zu tags; at most %d are allowed",
			                      json_array_size(q->tags), REG_TAGS_MAX);
		json_array_foreach(q->tags, i, v) {
			size_t j;
			if (registry_name_ok(json_string_value(v), "tag", err) < 0)
				return TETHER_ERR_INVALID;
			for (j = 0; j < i; j++)
				if (json_equal(v, json_array_get(q->tags, j)))
					return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
					                      "register: tag '%s' is given twice", json_string_value(v));
		}
	}
	if (q->public_address) {
		char *h = NULL;
		int port;
		if (strlen(q->public_address) > REG_ADDRESS_MAX ||
		    registry_parse_address(q->public_address, &h, &port, err) < 0)
			return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
			                      "register: public_address is not HOST:PORT: give where this server "
			                      "should connect to the listening agent, or leave it out for polling");
		free(h);
	}
	if (q->token && strlen(q->token) > REG_TOKEN_MAX)
		return tether_err_set(err, TETHER_ERR_INVALID, TETHER_CAT_BAD_INPUT,
		                      "register: the token is too long to be a tether token");
	return 0;
}

/* Store a pending registration (or refresh the same certificate's).  id out. */
static int store_pending(const char *sha, const reg_req *q, json_t *tags, const char *peer,
                         const char *token_id, const char *note, int64_t *id, int *is_new,
                         tether_error *err)
{
	sqlite3_stmt *st = NULL;
	char *tags_text = json_dumps(tags, JSON_COMPACT);
	int64_t now = (int64_t)time(NULL);
	reg_row row;
	int r, rc, found = 0;

	*is_new = 0;
	if ((r = exec_sql("BEGIN IMMEDIATE", err, "queue a registration")) < 0)
		goto out;
	r = reg_get(0, sha, &row, &found, err);
	if (r < 0)
		goto out;
	if (found) {
		*id = row.id;
		reg_row_clear(&row);
		r = prepare("UPDATE registrations SET name = ?2, tags = ?3, public_address = ?4, peer = ?5, "
		            "updated = ?6, token_id = ?7, note = ?8 WHERE id = ?1", &st, err, "update a registration");
		if (r < 0)
			goto out;
		sqlite3_bind_int64(st, 1, *id);
	} else {
		long n = 0;
		if ((r = count_pending(&n, err)) < 0)
			goto out;
		if (n >= g->max_pending) {
			r = tether_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
			                   "the server's registration queue is full (%ld pending, the limit is %ld): "
			                   "ask the operator to accept or reject pending registrations "
			                   "('tether-server registrations list'), then try again", n, g->max_pending);
			goto out;
		}
		r = prepare("INSERT INTO registrations (sha256, name, tags, public_address, peer, created, updated, "
		            "state, token_id, note) VALUES (?9, ?2, ?3, ?4, ?5, ?6, ?6, 'pending', ?7, ?8)",
		            &st, err, "queue a registration");
		if (r < 0)
			goto out;
		sqlite3_bind_text(st, 9, sha, -1, SQLITE_STATIC);
		*is_new = 1;
	}
	sqlite3_bind_text(st, 2, q->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, tags_text, -1, SQLITE_STATIC);
	if (q->public_address)
		sqlite3_bind_text(st, 4, q->public_address, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, peer, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, now);
	if (token_id)
		sqlite3_bind_text(st, 7, token_id, -1, SQLITE_STATIC);
	if (note)
		sqlite3_bind_text(st, 8, note, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE) {
		r = db_fail(rc, err, "queue a registration");
		goto out;
	}
	if (*is_new)
		*id = sqlite3_last_insert_rowid(g->db);
	r = exec_sql("COMMIT", err, "queue a registration");
out:
	sqlite3_finalize(st);
	free(tags_text);
	if (r < 0)
		rollback();
	return r;
}

/* With a valid token: consume it and create the target in one
 * transaction.  0 done; TETHER_ERR_UNTRUSTED if the token was taken in the
 * meantime; EXISTS if the name was taken. */
static int accept_with_token(const char *sha, const reg_req *q, json_t *tags, const char *peer,
                             const char *token_id, int64_t *id, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	char *tags_text = json_dumps(tags, JSON_COMPACT);
	char by[64];
	int64_t now = (int64_t)time(NULL);
	reg_row row;
	int r, rc, found = 0;

	snprintf(by, sizeof(by), "token %s", token_id);
	if ((r = exec_sql("BEGIN IMMEDIATE", err, "accept a registration")) < 0)
		goto out;
	r = prepare("UPDATE tokens SET used_at = ?2, used_by = ?3 WHERE id = ?1 AND used_at IS NULL AND "
	            "revoked_at IS NULL AND expires > ?2", &st, err, "consume a token");
	if (r < 0)
		goto out;
	sqlite3_bind_text(st, 1, token_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_text(st, 3, sha, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	st = NULL;
	if (rc != SQLITE_DONE) {
		r = db_fail(rc, err, "consume a token");
		goto out;
	}
	if (sqlite3_changes(g->db) != 1) {
		r = tether_err_set(err, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED, "%s", token_refusal(TOK_USED));
		goto out;
	}
	r = create_target(q->name, sha, tags, q->public_address, err);
	if (r < 0)
		goto out;
	r = reg_get(0, sha, &row, &found, err);
	if (r < 0)
		goto out;
	if (found) {
		*id = row.id;
		reg_row_clear(&row);
		r = prepare("UPDATE registrations SET name = ?2, tags = ?3, public_address = ?4, peer = ?5, "
		            "updated = ?6, state = 'accepted', decided_by = ?7, decided_at = ?6, target = ?2, "
		            "token_id = ?8 WHERE id = ?1", &st, err, "record a registration");
		if (r < 0)
			goto out;
		sqlite3_bind_int64(st, 1, *id);
	} else {
		r = prepare("INSERT INTO registrations (sha256, name, tags, public_address, peer, created, updated, "
		            "state, decided_by, decided_at, target, token_id) VALUES (?9, ?2, ?3, ?4, ?5, ?6, ?6, "
		            "'accepted', ?7, ?6, ?2, ?8)", &st, err, "record a registration");
		if (r < 0)
			goto out;
		sqlite3_bind_text(st, 9, sha, -1, SQLITE_STATIC);
	}
	sqlite3_bind_text(st, 2, q->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, tags_text, -1, SQLITE_STATIC);
	if (q->public_address)
		sqlite3_bind_text(st, 4, q->public_address, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, peer, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, now);
	sqlite3_bind_text(st, 7, by, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 8, token_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE) {
		r = db_fail(rc, err, "record a registration");
		goto out;
	}
	if (!found)
		*id = sqlite3_last_insert_rowid(g->db);
	r = exec_sql("COMMIT", err, "accept a registration");
out:
	sqlite3_finalize(st);
	free(tags_text);
	if (r < 0)
		rollback();
	return r;
}

static void respond_err(tether_conn *c, uint32_t id, const char *code, const tether_error *e)
{
	tether_conn_respond(c, id, NULL, code, e->detail,
	                    tether_category_name(e->category ? e->category : TETHER_CAT_BAD_INPUT));
}

static void do_register(tether_conn *c, const char *sha, uint32_t rid, json_t *params)
{
	reg_req q;
	tether_error e;
	json_t *tok_tags = NULL, *tags = NULL;
	char tok_id[2 * TOKEN_ID_BYTES + 1] = "", pin[65] = "", other[REG_NAME_MAX + 1] = "";
	const char *peer = tether_conn_peer_addr(c);
	int verdict = TOK_BAD, r, collides, is_new = 0;
	int64_t id = 0;
	reg_row last;
	int found = 0;

	memset(&e, 0, sizeof(e));
	if (parse_register(params, &q, &e) < 0) {
		audit_agent(sha, "register", NULL, "error", "bad_input", e.detail);
		respond_err(c, rid, TETHER_RPC_ERR_INVALID_PARAMS, &e);
		return;
	}
	/* a certificate some target pins already: nothing to register */
	r = target_with_pin(sha, other, &e);
	if (r < 0)
		goto internal;
	if (r > 0) {
		tether_err_set(&e, TETHER_ERR_EXISTS, TETHER_CAT_BAD_INPUT,
		               "this certificate is already registered as target '%s': run 'tether-agent run'", other);
		audit_agent(sha, "register", q.name, "error", "exists", e.detail);
		respond_err(c, rid, "exists", &e);
		return;
	}
	/* a refused certificate stays refused until the operator accepts it */
	r = reg_latest(sha, &last, &found, &e);
	if (r < 0)
		goto internal;
	if (found && !strcmp(last.state, "rejected")) {
		tether_err_set(&e, TETHER_ERR_PERMISSION, TETHER_CAT_UNTRUSTED,
		               "the operator rejected registration %lld of this certificate: ask them to accept it "
		               "('tether-server registrations accept %lld')", (long long)last.id, (long long)last.id);
		reg_row_clear(&last);
		audit_agent(sha, "register", q.name, "error", "untrusted", e.detail);
		respond_err(c, rid, TETHER_RPC_ERR_FORBIDDEN, &e);
		return;
	}
	if (found)
		reg_row_clear(&last);
	if (q.token) {
		r = token_check(q.token, tok_id, &tok_tags, &verdict, &e);
		if (r < 0)
			goto internal;
		if (verdict != TOK_OK) {
			tether_err_set(&e, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED, "%s", token_refusal(verdict));
			{
				char msg[TETHER_ERROR_DETAIL_MAX];
				snprintf(msg, sizeof(msg), "token %s refused: %.400s", tok_id[0] ? tok_id : "(malformed)",
				         e.detail);
				audit_agent(sha, "register", q.name, "error", "untrusted", msg);
			}
			log_warn("refused the registration of %s from %s as '%s': %s", sha, peer, q.name, e.detail);
			respond_err(c, rid, TETHER_RPC_ERR_FORBIDDEN, &e);
			return;
		}
	}
	tags = tags_union(q.tags, tok_tags);
	collides = target_exists(q.name, pin, &e);
	if (collides < 0)
		goto internal;
	if (verdict == TOK_OK && !collides) {
		r = accept_with_token(sha, &q, tags, peer, tok_id, &id, &e);
		if (r == 0) {
			char msg[200];
			snprintf(msg, sizeof(msg), "accepted with token %s as %s target, from %s", tok_id,
			         q.public_address ? "listening" : "polling", peer);
			audit_agent(sha, "register", q.name, "ok", NULL, msg);
			log_info("registration %lld: agent %s from %s accepted with token %s as target '%s'",
			         (long long)id, sha, peer, tok_id, q.name);
			/* answer first: the daemon closes pre-auth connections when targets change */
			tether_conn_respond(c, rid, json_pack("{s:s, s:s, s:I}", "state", "accepted", "target", q.name,
			                                      "id", (json_int_t)id), NULL, NULL, NULL);
			srv_targets_changed(g->s, q.name);
			goto out;
		}
		if (r == TETHER_ERR_UNTRUSTED) {
			audit_agent(sha, "register", q.name, "error", "untrusted", e.detail);
			respond_err(c, rid, TETHER_RPC_ERR_FORBIDDEN, &e);
			goto out;
		}
		if (r != TETHER_ERR_EXISTS)
			goto internal;
		collides = 1;   /* taken between the check and the insert */
	}
	{
		char note[300] = "";
		if (collides)
			snprintf(note, sizeof(note), "the name collides with an existing target (pinned to %s): accept "
			         "it under another name with --name%s", pin[0] ? pin : "another certificate",
			         verdict == TOK_OK ? "; a valid token came with it (not consumed)" : "");
		r = store_pending(sha, &q, tags, peer, verdict == TOK_OK ? tok_id : NULL, note[0] ? note : NULL,
		                  &id, &is_new, &e);
		if (r == TETHER_ERR_UNSUPPORTED) {
			audit_agent(sha, "register", q.name, "error", "busy", e.detail);
			log_warn("refused the registration of %s from %s: %s", sha, peer, e.detail);
			tether_conn_respond(c, rid, NULL, TETHER_RPC_ERR_BUSY, e.detail, "busy");
			goto out;
		}
		if (r < 0)
			goto internal;
		{
			char msg[400];
			snprintf(msg, sizeof(msg), "registration %lld pending%s%s, from %s", (long long)id,
			         is_new ? "" : " (asked again)", collides ? ": the name collides with an existing target" : "",
			         peer);
			audit_agent(sha, "register", q.name, "ok", NULL, msg);
		}
		if (is_new)
			log_info("registration %lld: agent %s from %s asks to be target '%s'%s: run 'tether-server "
			         "registrations accept %lld' or 'reject %lld'", (long long)id, sha, peer, q.name,
			         collides ? " (the name is taken: accept it with --name NEW)" : "", (long long)id,
			         (long long)id);
		tether_conn_respond(c, rid, json_pack("{s:s, s:I, s:b}", "state", "pending", "id", (json_int_t)id,
		                                      "name_taken", collides), NULL, NULL, NULL);
	}
	goto out;
internal:
	log_error("registration of %s from %s failed: %s", sha, peer, e.detail);
	audit_agent(sha, "register", q.name, "error", tether_category_name(e.category ? e.category :
	            TETHER_CAT_INTERNAL), e.detail);
	tether_conn_respond(c, rid, NULL, TETHER_RPC_ERR_INTERNAL,
	                    "the server could not record the registration; try again later", "internal");
out:
	json_decref(tok_tags);
	json_decref(tags);
}

static void reg_request(srv *s, tether_conn *c, const char *sha256, uint32_t id, const char *method,
                        json_t *params)
{
	struct sockaddr_storage sa;
	pconn *p;
	(void)s;

	if (!g) {
		tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_SHUTTING_DOWN, "the server is stopping", NULL);
		return;
	}
	p = pconn_find(c, 1);
	if (++p->requests > REG_REQS_PER_CONN) {
		audit_agent(sha256, method, NULL, "error", "busy", "too many requests on one registration connection");
		tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_BUSY,
		                    "too many requests on one registration connection", "busy");
		tether_conn_close(c, "busy", "too many requests on one registration connection");
		return;
	}
	if (tether_conn_peer_sockaddr(c, &sa) == 0 && !rate_admit(&sa)) {
		audit_agent(sha256, method, NULL, "error", "busy", "registration rate limit of the source address");
		tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_BUSY,
		                    "too many registration requests from this address: wait a minute and try again",
		                    "busy");
		return;
	}
	if (strcmp(method, "register")) {
		char msg[200];
		snprintf(msg, sizeof(msg), "'%s' refused on a registration connection", method);
		audit_agent(sha256, method, NULL, "error", "forbidden", msg);
		tether_conn_respond(c, id, NULL, TETHER_RPC_ERR_FORBIDDEN,
		                    "this certificate is not registered with the server: the only method it may call "
		                    "is 'register' (see 'tether-agent register-with')", "untrusted");
		return;
	}
	do_register(c, sha256, id, params);
}

static const srv_preauth reg_preauth = { reg_accept, reg_request, reg_closed };

/* ------------------------------------------------------------------ */
/* Admin methods                                                       */
/* ------------------------------------------------------------------ */

static void audit_admin(admin_call *call, const char *what, const char *target, const char *category,
                        const char *message)
{
	tether_audit_write(srv_audit(g->s), admin_call_user(call), what, target, category ? "error" : "ok",
	                   category, message, NULL);
}

static int id_param(admin_call *call, const char *method, json_t *params, int64_t *id)
{
	json_t *v = json_object_get(params, "id");

	if (!json_is_integer(v) || json_integer_value(v) < 1) {
		char msg[160];
		snprintf(msg, sizeof(msg), "%s needs the registration id (a positive number, from "
		         "'tether-server registrations list')", method);
		admin_reply_error(call, msg, "bad_input");
		return -1;
	}
	*id = (int64_t)json_integer_value(v);
	return 0;
}

static void m_reg_list(admin_call *call, json_t *params)
{
	const char *state = json_string_value(json_object_get(params, "state"));
	sqlite3_stmt *st = NULL;
	json_t *arr = json_array();
	tether_error e;
	size_t n = 0;
	int r, rc;

	memset(&e, 0, sizeof(e));
	r = prepare("SELECT " REG_COLS " FROM registrations WHERE ?1 IS NULL OR state = ?1 ORDER BY id", &st, &e,
	            "list the registrations");
	if (r < 0)
		goto fail;
	if (state)
		sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
	while (n < REG_LIST_MAX && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		reg_row row;
		row_read(st, &row);
		json_array_append_new(arr, row_json(&row));
		reg_row_clear(&row);
		n++;
	}
	sqlite3_finalize(st);
	admin_reply(call, arr);
	return;
fail:
	json_decref(arr);
	admin_reply_tether_error(call, &e);
}

static int set_state(int64_t id, const char *state, const char *by, const char *target, tether_error *err)
{
	sqlite3_stmt *st = NULL;
	int r, rc;
	int64_t now = (int64_t)time(NULL);

	r = prepare("UPDATE registrations SET state = ?2, decided_by = ?3, decided_at = ?4, updated = ?4, "
	            "target = ?5 WHERE id = ?1", &st, err, "record a decision");
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, by, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, now);
	if (target)
		sqlite3_bind_text(st, 5, target, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE)
		r = db_fail(rc, err, "record a decision");
	sqlite3_finalize(st);
	return r;
}

static void m_reg_decide(admin_call *call, json_t *params, int accept)
{
	const char *method = accept ? "registration.accept" : "registration.reject";
	const char *newname = json_string_value(json_object_get(params, "name"));
	tether_error e;
	reg_row row;
	int64_t id;
	int found = 0, r;
	char target[REG_NAME_MAX + 1] = "", pin[65] = "", other[REG_NAME_MAX + 1] = "", msg[600];

	memset(&e, 0, sizeof(e));
	memset(&row, 0, sizeof(row));
	if (id_param(call, method, params, &id) < 0)
		return;
	if (newname && registry_name_ok(newname, "target name", &e) < 0) {
		admin_reply_error(call, e.detail, "bad_input");
		return;
	}
	if ((r = reg_get(id, NULL, &row, &found, &e)) < 0)
		goto fail;
	if (!found) {
		snprintf(msg, sizeof(msg), "there is no registration %lld: 'tether-server registrations list' shows them",
		         (long long)id);
		admin_reply_error(call, msg, "not_found");
		return;
	}
	if (!strcmp(row.state, "accepted")) {
		snprintf(msg, sizeof(msg), "registration %lld was already accepted (target '%s')", (long long)id,
		         row.target ? row.target : row.name);
		admin_reply_error(call, msg, "exists");
		goto out;
	}
	if (!accept) {
		if ((r = set_state(id, "rejected", admin_call_user(call), NULL, &e)) < 0)
			goto fail;
		snprintf(msg, sizeof(msg), "registration %lld of %s rejected", (long long)id, row.sha256);
		audit_admin(call, method, row.name, NULL, msg);
		log_info("%s: %s", admin_call_user(call), msg);
		admin_reply(call, json_pack("{s:I, s:s, s:s}", "id", (json_int_t)id, "state", "rejected",
		                            "sha256", row.sha256));
		goto out;
	}
	snprintf(target, sizeof(target), "%s", newname ? newname : row.name);
	r = target_with_pin(row.sha256, other, &e);
	if (r < 0)
		goto fail;
	if (r > 0) {
		snprintf(msg, sizeof(msg), "certificate %s is already pinned by target '%s': nothing to accept; "
		         "reject registration %lld", row.sha256, other, (long long)id);
		admin_reply_error(call, msg, "exists");
		goto out;
	}
	if ((r = exec_sql("BEGIN IMMEDIATE", &e, "accept a registration")) < 0)
		goto fail;
	r = create_target(target, row.sha256, row.tags, row.public_address, &e);
	if (r == TETHER_ERR_EXISTS) {
		rollback();
		target_exists(target, pin, NULL);
		snprintf(msg, sizeof(msg), "a target named '%s' already exists (pinned to %s) and registration %lld "
		         "never replaces its pin: accept it under another name with 'tether-server registrations "
		         "accept %lld --name NEW', or reject it", target, pin[0] ? pin : "another certificate",
		         (long long)id, (long long)id);
		audit_admin(call, method, target, "exists", msg);
		admin_reply_error(call, msg, "exists");
		goto out;
	}
	if (r < 0 || (r = set_state(id, "accepted", admin_call_user(call), target, &e)) < 0 ||
	    (r = exec_sql("COMMIT", &e, "accept a registration")) < 0) {
		rollback();
		goto fail;
	}
	srv_targets_changed(g->s, target);
	snprintf(msg, sizeof(msg), "registration %lld accepted: target '%s' (%s) pinned to %s", (long long)id,
	         target, row.public_address ? "listening" : "polling", row.sha256);
	audit_admin(call, method, target, NULL, msg);
	log_info("%s: %s", admin_call_user(call), msg);
	admin_reply(call, json_pack("{s:I, s:s, s:s, s:s, s:s}", "id", (json_int_t)id, "state", "accepted",
	                            "target", target, "sha256", row.sha256, "mode",
	                            row.public_address ? "listening" : "polling"));
	goto out;
fail:
	audit_admin(call, method, row.name[0] ? row.name : NULL, tether_category_name(e.category), e.detail);
	admin_reply_tether_error(call, &e);
out:
	reg_row_clear(&row);
}

static void m_token_create(admin_call *call, json_t *params)
{
	tether_prov *p = srv_prov(g->s);
	json_t *tags = json_object_get(params, "tags"), *v;
	json_t *exp = json_object_get(params, "expires");
	int64_t expires_s = TOKEN_DEFAULT_EXPIRES, now = (int64_t)time(NULL);
	unsigned char idb[TOKEN_ID_BYTES], secret[TOKEN_SECRET_BYTES];
	char id[2 * TOKEN_ID_BYTES + 1], sec[2 * TOKEN_SECRET_BYTES + 1], hash[65], when[40];
	char *tags_text = NULL, *token = NULL;
	sqlite3_stmt *st = NULL;
	tether_error e;
	size_t i;
	int r, rc;

	memset(&e, 0, sizeof(e));
	if (exp && (!json_is_integer(exp) || json_integer_value(exp) < 1 ||
	            json_integer_value(exp) > TOKEN_MAX_EXPIRES)) {
		admin_reply_error(call, "token.create: expires must be a number of seconds from 1 to 366 days",
		                  "bad_input");
		return;
	}
	if (exp)
		expires_s = (int64_t)json_integer_value(exp);
	if (tags && (!json_is_array(tags) || json_array_size(tags) > REG_TAGS_MAX)) {
		admin_reply_error(call, "token.create: tags must be a list of at most 32 tags", "bad_input");
		return;
	}
	json_array_foreach(tags, i, v)
		if (registry_name_ok(json_string_value(v), "tag", &e) < 0) {
			admin_reply_error(call, e.detail, "bad_input");
			return;
		}
	if (p->t->random_bytes(idb, sizeof(idb)) < 0 || p->t->random_bytes(secret, sizeof(secret)) < 0) {
		admin_reply_error(call, "cannot make a token: the provider's random generator failed", "internal");
		return;
	}
	tether_hex(idb, sizeof(idb), id);
	r = secret_hash(secret, hash, &e);
	if (r < 0)
		goto fail;
	tags_text = tags ? json_dumps(tags, JSON_COMPACT) : tether_strdup("[]");
	r = prepare("INSERT INTO tokens (id, hash, tags, created, expires, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	            &st, &e, "store a token");
	if (r < 0)
		goto fail;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, hash, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, tags_text, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_int64(st, 5, now + expires_s);
	sqlite3_bind_text(st, 6, admin_call_user(call), -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		r = db_fail(rc, &e, "store a token");
		goto fail;
	}
	tether_hex(secret, sizeof(secret), sec);
	token = tether_asprintf("tether1.%s.%s.%s", id, sec, srv_sha256(g->s));
	tether_wipe(sec, sizeof(sec));
	tether_iso8601(now + expires_s, when, sizeof(when));
	{
		char msg[200];
		snprintf(msg, sizeof(msg), "token %s created, expires %s", id, when);
		audit_admin(call, "token.create", NULL, NULL, msg);
	}
	admin_reply(call, json_pack("{s:s, s:s, s:s, s:o, s:s}", "token", token, "id", id, "expires", when,
	                            "tags", tags ? json_incref(tags) : json_array(), "sha256", srv_sha256(g->s)));
	goto out;
fail:
	audit_admin(call, "token.create", NULL, tether_category_name(e.category), e.detail);
	admin_reply_tether_error(call, &e);
out:
	tether_wipe(secret, sizeof(secret));
	if (token)
		tether_free_secret(token);
	free(tags_text);
}

static void m_token_list(admin_call *call)
{
	sqlite3_stmt *st = NULL;
	json_t *arr = json_array();
	tether_error e;
	int64_t now = (int64_t)time(NULL);
	size_t n = 0;
	int r;

	memset(&e, 0, sizeof(e));
	r = prepare("SELECT id, tags, created, expires, used_at, used_by, revoked_at, created_by FROM tokens "
	            "ORDER BY created, id", &st, &e, "list the tokens");
	if (r < 0) {
		json_decref(arr);
		admin_reply_tether_error(call, &e);
		return;
	}
	while (n++ < REG_LIST_MAX && sqlite3_step(st) == SQLITE_ROW) {
		char c1[40], c2[40], c3[40] = "", c4[40] = "";
		const char *state;
		json_t *tags = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
		int64_t used = col_i64(st, 4), revoked = col_i64(st, 6), expires = col_i64(st, 3);
		tether_iso8601(col_i64(st, 2), c1, sizeof(c1));
		tether_iso8601(expires, c2, sizeof(c2));
		if (used)
			tether_iso8601(used, c3, sizeof(c3));
		if (revoked)
			tether_iso8601(revoked, c4, sizeof(c4));
		state = revoked ? "revoked" : used ? "used" : expires <= now ? "expired" : "valid";
		json_array_append_new(arr, json_pack("{s:s, s:s, s:o, s:s, s:s, s:s?, s:s?, s:s?, s:s?}",
		                                     "id", (const char *)sqlite3_column_text(st, 0), "state", state,
		                                     "tags", json_is_array(tags) ? tags : json_array(),
		                                     "created", c1, "expires", c2, "used_at", used ? c3 : NULL,
		                                     "used_by", (const char *)sqlite3_column_text(st, 5),
		                                     "revoked_at", revoked ? c4 : NULL,
		                                     "created_by", (const char *)sqlite3_column_text(st, 7)));
		if (!json_is_array(tags))
			json_decref(tags);
	}
	sqlite3_finalize(st);
	admin_reply(call, arr);
}

static void m_token_revoke(admin_call *call, json_t *params)
{
	const char *id = json_string_value(json_object_get(params, "id"));
	sqlite3_stmt *st = NULL;
	tether_error e;
	char msg[200];
	int r, rc;

	memset(&e, 0, sizeof(e));
	if (!id || strlen(id) != 2 * TOKEN_ID_BYTES || !is_hex(id, 2 * TOKEN_ID_BYTES)) {
		admin_reply_error(call, "token.revoke needs the token id (16 hex digits, from 'tether-server token list')",
		                  "bad_input");
		return;
	}
	r = prepare("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL AND used_at IS NULL",
	            &st, &e, "revoke a token");
	if (r < 0) {
		admin_reply_tether_error(call, &e);
		return;
	}
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (int64_t)time(NULL));
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		db_fail(rc, &e, "revoke a token");
		admin_reply_tether_error(call, &e);
		return;
	}
	if (sqlite3_changes(g->db) == 0) {
		snprintf(msg, sizeof(msg), "there is no unused, unrevoked token %s: 'tether-server token list' shows "
		         "the tokens and their state", id);
		admin_reply_error(call, msg, "not_found");
		return;
	}
	snprintf(msg, sizeof(msg), "token %s revoked", id);
	audit_admin(call, "token.revoke", NULL, NULL, msg);
	admin_reply(call, json_pack("{s:s, s:s}", "id", id, "state", "revoked"));
}

static int reg_admin(srv *s, admin_call *call, const char *method, json_t *params)
{
	(void)s;
	if (strncmp(method, "registration.", 13) && strncmp(method, "token.", 6))
		return 0;
	if (!g) {
		admin_reply_error(call, "registration is not available: its module did not start (see the daemon's "
		                  "log)", "unsupported");
		return 1;
	}
	if (!strcmp(method, "registration.list"))
		m_reg_list(call, params);
	else if (!strcmp(method, "registration.accept"))
		m_reg_decide(call, params, 1);
	else if (!strcmp(method, "registration.reject"))
		m_reg_decide(call, params, 0);
	else if (!strcmp(method, "token.create"))
		m_token_create(call, params);
	else if (!strcmp(method, "token.list"))
		m_token_list(call);
	else if (!strcmp(method, "token.revoke"))
		m_token_revoke(call, params);
	else
		admin_reply_error(call, "unknown registration method: use registration.list, registration.accept, "
		                  "registration.reject, token.create, token.list or token.revoke", "unknown_method");
	return 1;
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */
/* ------------------------------------------------------------------ */

static const char *conf(srv *s, const char *key)
{
	tether_prov *p = srv_prov(s);
	return p->config_get ? p->config_get(p->config_arg, "registration", key) : NULL;
}

static int read_version(int *version)
{
	sqlite3_stmt *st = NULL;
	int rc;

	*version = 0;
	if (sqlite3_prepare_v2(g->db, "SELECT version FROM registration_schema", -1, &st, NULL) != SQLITE_OK)
		return 0; /* no table yet */
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return 0;
}

static int reg_start(srv *s, tether_error *err)
{
	const char *v;
	int r, version = 0;

	g = tether_xcalloc(1, sizeof(*g));
	g->s = s;
	g->db = registry_db(srv_registry(s));
	v = conf(s, "enabled");
	g->enabled = v && tether_config_bool(v) == 1;
	v = conf(s, "max-pending");
	g->max_pending = v ? strtol(v, NULL, 10) : REG_DEFAULT_MAX_PENDING;
	if (g->max_pending < 0)
		g->max_pending = 0;
	v = conf(s, "rate");
	g->rate_per_min = v ? (double)strtol(v, NULL, 10) : REG_DEFAULT_RATE;
	if (g->rate_per_min < 1)
		g->rate_per_min = 1;
	g->slots = tether_xcalloc(REG_RATE_SLOTS, sizeof(*g->slots));
	read_version(&version);
	if (version > REG_SCHEMA_VERSION) {
		r = tether_err_set(err, TETHER_ERR_UNSUPPORTED, TETHER_CAT_UNSUPPORTED,
		                   "the registration tables have schema version %d, written by a newer tether-server "
		                   "(this one knows up to %d): upgrade tether-server", version, REG_SCHEMA_VERSION);
		goto fail;
	}
	if (version < REG_SCHEMA_VERSION) {
		if ((r = exec_sql("BEGIN IMMEDIATE", err, "create the registration tables")) < 0)
			goto fail;
		if ((r = exec_sql(schema_v1, err, "create the registration tables")) < 0 ||
		    (r = exec_sql("COMMIT", err, "create the registration tables")) < 0) {
			rollback();
			goto fail;
		}
	}
	uv_timer_init(srv_loop(s), &g->sweep);
	uv_timer_start(&g->sweep, on_sweep, 5000, 5000);
	uv_unref((uv_handle_t *)&g->sweep);
	g->sweep_on = 1;
	if (g->enabled)
		srv_set_preauth(s, &reg_preauth);
	return 0;
fail:
	free(g->slots);
	free(g);
	g = NULL;
	return r;
}

static void on_sweep_closed(uv_handle_t *h)
{
	reg_mod *m = h->data;
	while (m->conns) {
		pconn *p = m->conns;
		m->conns = p->next;
		free(p);
	}
	free(m->slots);
	free(m);
}

static void reg_stop(srv *s)
{
	reg_mod *m = g;

	if (!m)
		return;
	srv_set_preauth(s, NULL);
	g = NULL;
	if (m->sweep_on) {
		m->sweep.data = m;
		uv_timer_stop(&m->sweep);
		uv_close((uv_handle_t *)&m->sweep, on_sweep_closed);
		return;
	}
	free(m->slots);
	free(m);
}

const srv_module srv_module_registration = { "registration", reg_start, reg_admin, reg_stop };
