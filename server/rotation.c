/*
 * rotation.c: certificate lifecycle over the trusted channel.
 *
 *  rotate.certificate  the server's own identity, per target, no downtime:
 *                      trust.rotate (the old identity names its successor) ->
 *                      close -> fresh connection with the new identity ->
 *                      health -> trust.retire (the successor removes the old
 *                      pin).  Unreachable targets keep the previous identity
 *                      and continue on the next run; --finish drops it.
 *  rotate.agents       an agent's identity: identity.stage -> pin both ->
 *                      identity.promote -> fresh connection -> health on the
 *                      new thumbprint -> re-pin.
 *  rekey               everything, optionally with a recovery identity that
 *                      replaces every agent's whole trust set.
 *  certs.check         weak and expiring certificates.
 *
 * Everything runs on the daemon loop; one job at a time.
 */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <jansson.h>
#include "admin.h"
#include "audit.h"
#include "error.h"
#include "identity.h"
#include "log.h"
#include "pem.h"
#include "srvapi.h"
#include "util.h"

#define ROT_CONCURRENCY 16

typedef struct rot_job rot_job;

typedef struct rot_item {
	rot_job *job;
	char name[REG_NAME_MAX + 1];
	char mode[16];
	char old_pin[65];               /* agent rotation: the pin before (once rotated) */
	char pin_before[65];            /* agent rotation: the pin when the job started */
	int had_next;                   /* agent rotation: an earlier one was pending */
	char next_pin[65];
	int step;
	int done;
	int retire_pending;             /* server rotation: moved to the new identity, not yet retired */
	int prev_trusted;               /* server rotation: health says the agent trusts the previous one */
	char state[24];
	char error[TETHER_ERROR_DETAIL_MAX];
	char category[32];
} rot_item;

enum job_kind { JOB_SERVER, JOB_AGENTS, JOB_RECOVER };

struct rot_job {
	srv *s;
	admin_call *call;
	int kind;
	rot_item *items;
	size_t n, next, running, finished;
	int key_type;
	char who[128];
	char cur[65], prev[65];
	tether_identity *recovery;
	int recovery_published;         /* given to srv_set_recovery_identity */
	void (*then)(rot_job *j);       /* chained step of a rekey */
	json_t *report;                 /* accumulated for rekey */
};

static rot_job *g_job;              /* one at a time */

static void item_next(rot_item *it);

static void item_end(rot_item *it, const char *state, const tether_error *e, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void job_more(rot_job *j);

static void item_end(rot_item *it, const char *state, const tether_error *e, const char *fmt, ...)
{
	rot_job *j = it->job;
	va_list ap;

	if (it->done)
		return;
	it->done = 1;
	snprintf(it->state, sizeof(it->state), "%s", state);
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(it->error, sizeof(it->error), fmt, ap);
		va_end(ap);
	}
	if (e && e->category)
		snprintf(it->category, sizeof(it->category), "%s", tether_category_name(e->category));
	tether_audit_write(srv_audit(j->s), j->who,
	                   j->kind == JOB_SERVER ? "rotate-certificate" :
	                   j->kind == JOB_AGENTS ? "rotate-agent-certificate" : "rekey-recover",
	                   it->name, strcmp(state, "failed") && strcmp(state, "unreachable") ? "ok" : "error",
	                   it->category[0] ? it->category : NULL, it->error[0] ? it->error : NULL, NULL);
	log_info("%s: target %s %s%s%s", j->kind == JOB_SERVER ? "rotate-certificate" :
	         j->kind == JOB_AGENTS ? "rotate-agent-certificate" : "recovery", it->name, state,
	         it->error[0] ? ": " : "", it->error);
	j->running--;
	j->finished++;
	job_more(j);
}

static const char *unreach_state(const tether_error *e)
{
	switch (e ? e->category : 0) {
	case TETHER_CAT_CONNECTION_REFUSED:
	case TETHER_CAT_DNS_FAILURE:
	case TETHER_CAT_TIMEOUT:
	case TETHER_CAT_CONNECTION_RESET:
		return "unreachable";
	default:
		return "failed";
	}
}

/* ---- server identity rotation, per target ---- */

static void srv_step_reply(void *arg, const tether_rpc_response *resp, const tether_error *err)
{
	rot_item *it = arg;
	rot_job *j = it->job;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!resp || resp->is_error) {
		if (resp)
			tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE, "%s: %s", resp->code, resp->message);
		else
			e = *err;
		if (it->step >= 2) /* the fresh connection with the new identity failed: keep the old */
			srv_target_set_trusts(j->s, it->name, j->prev);
		item_end(it, it->step == 1 ? unreach_state(&e) : "failed", &e,
		         "step %d (%s) failed: %s; the agent keeps trusting the previous identity %.16s..., "
		         "run rotate-certificate again to continue", it->step,
		         it->step == 1 ? "trust.rotate" : it->step == 2 ? "health with the new identity" : "trust.retire",
		         e.detail, j->prev);
		return;
	}
	if (it->step == 2) {
		/* an agent that reports its trust set (health.trust) and no longer
		 * trusts the previous identity has nothing to retire */
		json_t *trust = json_object_get(resp->result, "trust"), *v;
		size_t k;
		it->prev_trusted = !json_is_array(trust);
		json_array_foreach(trust, k, v) {
			const char *t = json_string_value(json_object_get(v, "sha256"));
			if (t && !strcasecmp(t, j->prev))
				it->prev_trusted = 1;
		}
	}
	if (it->step == 3) {
		tether_error re;
		memset(&re, 0, sizeof(re));
		/* only now is the target done with the previous identity */
		if (registry_target_set_retire(srv_registry(j->s), it->name, NULL, &re) < 0)
			log_error("rotate-certificate: target %s retired the previous identity but that cannot be "
			          "recorded: %s (the next run retires it again)", it->name, re.detail);
	}
	it->step++;
	item_next(it);
}

static void item_next(rot_item *it)
{
	rot_job *j = it->job;
	srv *s = j->s;

	if (j->kind == JOB_SERVER) {
		switch (it->step) {
		case 1:
			/* over a connection that presents the old identity */
			srv_target_call(s, it->name, "trust.rotate", json_pack("{s:s}", "successor", j->cur), 0,
			                srv_step_reply, it);
			return;
		case 2: {
			tether_error e;
			memset(&e, 0, sizeof(e));
			/* recorded first: the target counts as rotated only once it
			 * retired the previous identity, whatever happens from here on
			 * (a kill, a failed step, a polling agent that reconnects
			 * asking for the new identity) */
			if (registry_target_set_retire(srv_registry(s), it->name, j->prev, &e) < 0) {
				item_end(it, "failed", &e, "cannot record the rotation's progress: %s; the agent keeps "
				         "trusting the previous identity %.16s..., run rotate-certificate again", e.detail,
				         j->prev);
				return;
			}
			/* never verify over a connection that still carries the old identity */
			srv_target_close(s, it->name);
			srv_target_set_trusts(s, it->name, j->cur);
			srv_target_call(s, it->name, "health", json_object(), 0, srv_step_reply, it);
			return;
		}
		case 3:
			if (!it->prev_trusted) {
				tether_error e;
				memset(&e, 0, sizeof(e));
				log_info("rotate-certificate: target %s no longer trusts the previous identity: nothing to "
				         "retire", it->name);
				if (registry_target_set_retire(srv_registry(s), it->name, NULL, &e) < 0) {
					item_end(it, "failed", &e, "cannot record the rotation's progress: %s", e.detail);
					return;
				}
				item_end(it, "rotated", NULL, NULL);
				return;
			}
			srv_target_call(s, it->name, "trust.retire", json_object(), 0, srv_step_reply, it);
			return;
		default:
			item_end(it, "rotated", NULL, NULL);
			return;
		}
	}
}

/* ---- agent identity rotation, per target ---- */

static void agent_step_reply(void *arg, const tether_rpc_response *resp, const tether_error *err);

static void agent_health_reply(void *arg, tether_conn *c, const tether_rpc_response *resp,
                               const tether_error *err)
{
	(void)c;
	agent_step_reply(arg, resp, err);
}

/* The fresh connection must authenticate the NEW certificate in its
 * handshake, not only report it in health. */
static void agent_fresh_conn(void *arg, tether_conn *c, const tether_error *err)
{
	rot_item *it = arg;
	tether_thumbprint tp;
	char hex[TETHER_THUMBPRINT_HEX];
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!c) {
		agent_step_reply(it, NULL, err);
		return;
	}
	if (tether_conn_peer_tp(c, &tp) < 0) {
		tether_err_set(&e, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED, "no peer certificate");
		agent_step_reply(it, NULL, &e);
		return;
	}
	tether_thumbprint_hex(&tp, hex);
	if (strcasecmp(hex, it->next_pin)) {
		tether_err_set(&e, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED,
		               "the fresh connection authenticated certificate %s, not the new %s", hex, it->next_pin);
		agent_step_reply(it, NULL, &e);
		return;
	}
	if (tether_conn_request(c, "health", json_object(), 0, agent_health_reply, it, &e) < 0)
		agent_step_reply(it, NULL, &e);
}

static void agent_step_reply(void *arg, const tether_rpc_response *resp, const tether_error *err)
{
	rot_item *it = arg;
	rot_job *j = it->job;
	srv *s = j->s;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!resp || resp->is_error) {
		if (resp)
			tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE, "%s: %s", resp->code, resp->message);
		else
			e = *err;
		/* From identity.promote on, the agent may have switched even if
		 * the answer was lost: the new pin stays accepted beside the old
		 * one (in the registry), and the target is re-pinned when it
		 * connects with it. */
		if (it->step == 1)
			item_end(it, unreach_state(&e), &e, "step 1 (identity.stage) failed: %s; the old pin still works",
			         e.detail);
		else
			item_end(it, "failed", &e, "step %d (%s) failed: %s; the server accepts both the old pin %.16s... "
			         "and the new certificate %s, and re-pins the target when the agent connects with the "
			         "new one", it->step, it->step == 2 ? "identity.promote" : "health on the new identity",
			         e.detail, it->pin_before, it->next_pin);
		return;
	}
	if (it->step == 1) {
		const char *sha = json_string_value(json_object_get(resp->result, "sha256"));
		if (!sha || strlen(sha) != 64) {
			tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE, "no sha256 in the answer");
			item_end(it, "failed", &e, "identity.stage gave no thumbprint");
			return;
		}
		snprintf(it->next_pin, sizeof(it->next_pin), "%s", sha);
		if (srv_target_set_next_pin(s, it->name, sha, &e) < 0) {
			item_end(it, "failed", &e, "cannot record the new thumbprint %s before switching the agent: %s; "
			         "the agent was not switched, the old pin still works", sha, e.detail);
			return;
		}
		it->step = 2;
		srv_target_call(s, it->name, "identity.promote", json_pack("{s:s}", "sha256", sha), 0,
		                agent_step_reply, it);
		return;
	}
	if (it->step == 2) {
		it->step = 3;
		srv_target_close(s, it->name);
		srv_target_conn(s, it->name, agent_fresh_conn, it);
		return;
	}
	if (it->step == 3) {
		const char *got = json_string_value(json_object_get(json_object_get(resp->result, "certificate"), "sha256"));
		if (!got || strcasecmp(got, it->next_pin)) {
			tether_err_set(&e, TETHER_ERR_UNTRUSTED, TETHER_CAT_UNTRUSTED, "unexpected certificate");
			item_end(it, "failed", &e, "the agent answered with certificate %s, not the new %s",
			         got ? got : "?", it->next_pin);
			return;
		}
		/* usually done already when the fresh connection opened (the
		 * server re-pins a target that presents its next thumbprint) */
		if (registry_target_set_thumbprint(srv_registry(s), it->name, it->next_pin, NULL, &e) < 0 ||
		    srv_target_set_next_pin(s, it->name, NULL, &e) < 0) {
			item_end(it, "failed", &e, "cannot record the new pin: %s", e.detail);
			return;
		}
		srv_targets_changed(s, NULL);
		snprintf(it->old_pin, sizeof(it->old_pin), "%s", it->pin_before);
		item_end(it, "rotated", NULL, NULL);
	}
}

/* ---- recovery: replace every agent's trust set ---- */

static void recover_reply(void *arg, const tether_rpc_response *resp, const tether_error *err)
{
	rot_item *it = arg;
	rot_job *j = it->job;
	tether_error e;

	memset(&e, 0, sizeof(e));
	srv_target_set_oneoff_identity(j->s, NULL, NULL);
	if (!resp || resp->is_error) {
		if (resp)
			tether_err_set(&e, TETHER_ERR_PROTOCOL, TETHER_CAT_NONE, "%s: %s", resp->code, resp->message);
		else
			e = *err;
		item_end(it, unreach_state(&e), &e, "trust.replace failed: %s (is the recovery thumbprint pinned "
		         "on that agent? 'tether-agent configure --recovery-trust')", e.detail);
		return;
	}
	srv_target_set_trusts(j->s, it->name, j->cur);
	registry_target_set_retire(srv_registry(j->s), it->name, NULL, &e); /* the whole set was replaced */
	srv_target_close(j->s, it->name);
	item_end(it, "replaced", NULL, NULL);
}

static void job_start_item(rot_job *j, rot_item *it)
{
	j->running++;
	if (j->kind == JOB_SERVER) {
		char t[65];
		/* moved to the new identity already (an interrupted run, a polling
		 * agent that asked for it): verify there, then retire */
		srv_target_trusts(j->s, it->name, t);
		it->step = it->retire_pending && !strcmp(t, j->cur) ? 2 : 1;
		item_next(it);
	} else if (j->kind == JOB_AGENTS) {
		it->step = 1;
		/* an earlier rotation is pending (its answer was lost): a fresh
		 * connection first, so that an agent that did switch is re-pinned
		 * before it stages yet another identity */
		if (it->had_next)
			srv_target_close(j->s, it->name);
		srv_target_call(j->s, it->name, "identity.stage",
		                json_pack("{s:s}", "key_type", tether_key_type_names[j->key_type]), 0,
		                agent_step_reply, it);
	} else {
		/* one at a time for listening targets: the one-off identity is per target */
		if (!strcmp(it->mode, "listening"))
			srv_target_set_oneoff_identity(j->s, it->name, j->recovery);
		srv_target_close(j->s, it->name);
		srv_target_call(j->s, it->name, "trust.replace",
		                json_pack("{s:[s]}", "trusted", j->cur), 0, recover_reply, it);
	}
}

static json_t *job_results(rot_job *j)
{
	json_t *arr = json_array();
	size_t i;

	for (i = 0; i < j->n; i++) {
		rot_item *it = &j->items[i];
		json_t *o = json_pack("{s:s, s:s, s:s}", "target", it->name, "mode", it->mode, "state", it->state);
		if (it->error[0])
			json_object_set_new(o, "error", json_string(it->error));
		if (it->category[0])
			json_object_set_new(o, "category", json_string(it->category));
		if (it->next_pin[0] && !strcmp(it->state, "rotated"))
			json_object_set_new(o, "sha256", json_string(it->next_pin));
		if (it->old_pin[0])
			json_object_set_new(o, "old_sha256", json_string(it->old_pin));
		json_array_append_new(arr, o);
	}
	return arr;
}

static void job_free(rot_job *j)
{
	free(j->items);
	json_decref(j->report);
	/* once presented to polling agents, a handshake on a worker thread
	 * may still hold it (choose_by_hint): kept until the server exits */
	if (j->recovery && j->recovery_published)
		srv_retire_identity(j->s, j->recovery);
	else if (j->recovery)
		srv_prov(j->s)->t->identity_free(j->recovery);
	if (g_job == j)
		g_job = NULL;
	free(j);
}

static void job_more(rot_job *j)
{
	unsigned limit = j->kind == JOB_RECOVER ? 1 : ROT_CONCURRENCY;

	while (j->running < limit && j->next < j->n)
		job_start_item(j, &j->items[j->next++]);
	if (j->finished < j->n)
		return;
	if (j->kind == JOB_RECOVER) {
		size_t i;
		srv_set_recovery_identity(j->s, NULL);
		/* a polling agent that reconnected while the recovery still ran was
		 * given the recovery identity again (its connection can only call
		 * trust.replace): make it reconnect to the new identity */
		for (i = 0; i < j->n; i++)
			if (!strcmp(j->items[i].mode, "polling"))
				srv_target_close(j->s, j->items[i].name);
	}
	if (j->then) {
		void (*then)(rot_job *) = j->then;
		j->then = NULL;
		then(j);
		return;
	}
	{
		json_t *res = json_pack("{s:s, s:s, s:o}", "current", j->cur, "previous", j->prev,
		                        "targets", job_results(j));
		if (j->report) {
			json_object_set(res, "steps", j->report);
		}
		if (j->call)
			admin_reply(j->call, res);
		else
			json_decref(res); /* a rotation continued by itself: logged per target */
	}
	job_free(j);
}

/* Targets of the job: those named, or all (optionally only those that
 * still trust a given server identity). */
static int job_targets(rot_job *j, json_t *names, int all, const char *only_trusting, tether_error *e)
{
	reg_target *list = NULL;
	size_t n = 0, i;

	if (registry_target_list(srv_registry(j->s), NULL, &list, &n, e) < 0)
		return e->code;
	j->items = tether_xcalloc(n ? n : 1, sizeof(*j->items));
	for (i = 0; i < n; i++) {
		int want = all;
		if (!want && json_is_array(names)) {
			size_t k;
			json_t *v;
			json_array_foreach(names, k, v)
				if (json_is_string(v) && !strcmp(json_string_value(v), list[i].name))
					want = 1;
		}
		if (want && only_trusting) {
			char t[65];
			srv_target_trusts(j->s, list[i].name, t);
			j->items[j->n].retire_pending = list[i].retire_sha256 && !strcmp(list[i].retire_sha256, only_trusting);
			want = !strcmp(t, only_trusting) || j->items[j->n].retire_pending;
		}
		if (!want)
			continue;
		snprintf(j->items[j->n].name, sizeof(j->items[j->n].name), "%s", list[i].name);
		snprintf(j->items[j->n].mode, sizeof(j->items[j->n].mode), "%s", list[i].mode);
		snprintf(j->items[j->n].pin_before, sizeof(j->items[j->n].pin_before), "%s", list[i].sha256);
		j->items[j->n].had_next = list[i].next_sha256 != NULL;
		j->items[j->n].job = j;
		j->n++;
	}
	if (json_is_array(names)) {
		size_t k;
		json_t *v;
		json_array_foreach(names, k, v) {
			size_t m;
			int found = 0;
			for (m = 0; m < n; m++)
				if (json_is_string(v) && !strcmp(json_string_value(v), list[m].name))
					found = 1;
			if (!found) {
				reg_target_list_free(list, n);
				return tether_err_set(e, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
				                      "no target named '%s': see 'tether-server target list'",
				                      json_is_string(v) ? json_string_value(v) : "?");
			}
		}
	}
	reg_target_list_free(list, n);
	return 0;
}

static rot_job *job_new(srv *s, admin_call *call, int kind)
{
	rot_job *j = tether_xcalloc(1, sizeof(*j));
	j->s = s;
	j->call = call;
	j->kind = kind;
	snprintf(j->who, sizeof(j->who), "%s", call ? admin_call_user(call) : "server (rotation continued)");
	snprintf(j->cur, sizeof(j->cur), "%s", srv_sha256(s));
	snprintf(j->prev, sizeof(j->prev), "%s", srv_previous_sha256(s));
	return j;
}

/* Make a new server identity current (the old one becomes previous),
 * pinning every target to the old one first so nothing breaks. */
static int server_switch_identity(srv *s, int key_type, tether_error *e)
{
	tether_prov *p = srv_prov(s);
	reg_target *list = NULL;
	size_t n = 0, i;
	char old[65];
	int r;

	snprintf(old, sizeof(old), "%s", srv_sha256(s));
	r = p->t->identity_exists(p->ctx, TETHER_SLOT_STAGED, e);
	if (r < 0)
		return r;
	if (r == 0) {
		tether_keygen_params kp;
		memset(&kp, 0, sizeof(kp));
		kp.key_type = key_type;
		r = p->t->identity_generate(p->ctx, TETHER_SLOT_STAGED, &kp, e);
		if (r < 0)
			return r;
	}
	r = registry_target_list(srv_registry(s), NULL, &list, &n, e);
	if (r < 0)
		return r;
	for (i = 0; i < n; i++) {
		char t[65];
		srv_target_trusts(s, list[i].name, t);
		if (!strcmp(t, old))
			srv_target_set_trusts(s, list[i].name, old);
	}
	reg_target_list_free(list, n);
	r = p->t->identity_promote(p->ctx, e);
	if (r < 0)
		return r;
	r = srv_identities_reload(s, e);
	if (r == 0) {
		log_info("rotate-certificate: new identity %s is current; %s stays available as previous",
		         srv_sha256(s), old);
		tether_audit_write(srv_audit(s), "server", "identity.switch", NULL, "ok", NULL, srv_sha256(s), NULL);
	}
	return r;
}

static void do_finish(srv *s, admin_call *call, int force)
{
	tether_prov *p = srv_prov(s);
	reg_target *list = NULL;
	size_t n = 0, i;
	json_t *remaining = json_array();
	char prev[65];
	tether_error e;

	memset(&e, 0, sizeof(e));
	snprintf(prev, sizeof(prev), "%s", srv_previous_sha256(s));
	if (!prev[0]) {
		json_decref(remaining);
		admin_reply(call, json_pack("{s:s, s:b}", "current", srv_sha256(s), "dropped", 0));
		return;
	}
	if (registry_target_list(srv_registry(s), NULL, &list, &n, &e) < 0) {
		json_decref(remaining);
		admin_reply_tether_error(call, &e);
		return;
	}
	for (i = 0; i < n; i++) {
		char t[65], manual[400];
		srv_target_trusts(s, list[i].name, t);
		if (!strcmp(t, prev))
			snprintf(manual, sizeof(manual), "on the agent: tether-agent configure --trust %s, then "
			         "tether-agent configure --remove-trust %s", srv_sha256(s), prev);
		else if (list[i].retire_sha256 && !strcmp(list[i].retire_sha256, prev))
			/* moved to the new identity, but it has not retired the old one */
			snprintf(manual, sizeof(manual), "on the agent: tether-agent configure --remove-trust %s", prev);
		else
			continue;
		json_array_append_new(remaining, json_pack("{s:s, s:s, s:s}", "target", list[i].name, "mode",
		                                           list[i].mode, "manual", manual));
	}
	reg_target_list_free(list, n);
	if (json_array_size(remaining) && !force) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%zu target(s) still trust the previous identity %s: run "
		         "rotate-certificate again when they are reachable, or on each of them the command "
		         "listed; --force drops it anyway", json_array_size(remaining), prev);
		admin_reply(call, json_pack("{s:s, s:s, s:b, s:o, s:s}", "current", srv_sha256(s), "previous", prev,
		                            "dropped", 0, "remaining", remaining, "message", msg));
		return;
	}
	if (p->t->identity_remove(p->ctx, TETHER_SLOT_PREVIOUS, &e) < 0 || srv_identities_reload(s, &e) < 0) {
		json_decref(remaining);
		admin_reply_tether_error(call, &e);
		return;
	}
	/* with --force: a cached TLS session of a target that trusted only the
	 * dropped identity would still resume as that identity; drop it */
	{
		json_t *row;
		json_array_foreach(remaining, i, row)
			srv_target_close(s, json_string_value(json_object_get(row, "target")));
	}
	tether_audit_write(srv_audit(s), admin_call_user(call), "rotate-certificate --finish", NULL, "ok", NULL,
	                   force ? "previous identity dropped with --force" : "previous identity dropped", NULL);
	admin_reply(call, json_pack("{s:s, s:s, s:b, s:o}", "current", srv_sha256(s), "previous", prev,
	                            "dropped", 1, "remaining", remaining));
}

static int job_busy(admin_call *call)
{
	if (!g_job)
		return 0;
	admin_reply_error(call, "another rotation is running: wait for it to finish", "busy");
	return 1;
}

/* Does any target still depend on the previous identity (trusts it, or has
 * not retired it)? */
static int prev_has_dependents(srv *s)
{
	reg_target *list = NULL;
	size_t n = 0, i;
	int dep = 0;
	tether_error e;
	const char *prev = srv_previous_sha256(s);

	memset(&e, 0, sizeof(e));
	if (!prev[0])
		return 0;
	if (registry_target_list(srv_registry(s), NULL, &list, &n, &e) < 0)
		return 1; /* cannot tell: keep it */
	for (i = 0; i < n; i++) {
		char t[65];
		srv_target_trusts(s, list[i].name, t);
		dep |= !strcmp(t, prev) || (list[i].retire_sha256 && !strcmp(list[i].retire_sha256, prev));
	}
	reg_target_list_free(list, n);
	return dep;
}

/* fresh: REKEY_SWITCH makes a new identity even when a rotation is pending
 * (rekey, after it continued the pending one); REKEY_CONTINUE continues a
 * pending rotation first and then does that. */
enum { ROT_NORMAL, REKEY_CONTINUE, REKEY_SWITCH };

static void rekey_continued(rot_job *j);
static void rekey_after_server(rot_job *j);

static void start_server_rotation(srv *s, admin_call *call, int key_type, int fresh, void (*then)(rot_job *),
                                  json_t *report)
{
	rot_job *j;
	tether_error e;
	int in_progress = srv_previous_sha256(s)[0] != 0;

	memset(&e, 0, sizeof(e));
	if (in_progress) {
		/* a rotation that was interrupted: continue unless nothing depends on previous */
		reg_target *list = NULL;
		size_t n = 0, i;
		int dep = 0;
		if (registry_target_list(srv_registry(s), NULL, &list, &n, &e) == 0) {
			for (i = 0; i < n; i++) {
				char t[65];
				srv_target_trusts(s, list[i].name, t);
				dep |= !strcmp(t, srv_previous_sha256(s));
				dep |= list[i].retire_sha256 && !strcmp(list[i].retire_sha256, srv_previous_sha256(s));
			}
			reg_target_list_free(list, n);
		}
		in_progress = dep;
	}
	if (fresh == REKEY_SWITCH || (fresh == REKEY_CONTINUE && !in_progress)) {
		/* a re-key (compromise recovery) always makes a new key, of the
		 * key type asked for: a staged one may be as old as the compromise */
		tether_prov *p = srv_prov(s);
		int r = p->t->identity_exists(p->ctx, TETHER_SLOT_STAGED, &e);
		if (r == 1) {
			log_info("rekey: discarding the staged identity: a re-key makes a new one");
			r = p->t->identity_remove(p->ctx, TETHER_SLOT_STAGED, &e);
		}
		if (r < 0) {
			json_decref(report);
			admin_reply_tether_error(call, &e);
			return;
		}
		in_progress = 0;
	}
	if (!in_progress && server_switch_identity(s, key_type, &e) < 0) {
		json_decref(report);
		admin_reply_tether_error(call, &e);
		return;
	}
	j = job_new(s, call, JOB_SERVER);
	j->key_type = key_type;
	j->then = then;
	j->report = report;
	if (fresh == REKEY_CONTINUE) {
		/* the targets still on the previous identity move to the current
		 * one first: the new identity replaces the previous slot */
		if (in_progress)
			j->then = rekey_continued;
		else
			j->then = then; /* just switched: nothing was pending */
	}
	if (job_targets(j, NULL, 1, j->prev, &e) < 0) {
		admin_reply_tether_error(call, &e);
		job_free(j);
		return;
	}
	g_job = j;
	log_info("rotate-certificate: %zu target(s) to move from %s to %s", j->n, j->prev, j->cur);
	job_more(j);
}

static void start_agent_rotation(srv *s, admin_call *call, json_t *names, int all, int key_type,
                                 void (*then)(rot_job *), json_t *report)
{
	rot_job *j = job_new(s, call, JOB_AGENTS);
	tether_error e;

	memset(&e, 0, sizeof(e));
	j->key_type = key_type;
	j->then = then;
	j->report = report;
	if (job_targets(j, names, all, NULL, &e) < 0) {
		admin_reply_tether_error(call, &e);
		job_free(j);
		return;
	}
	g_job = j;
	job_more(j);
}

/* rekey: server rotation, then agents, then finish. */
static void rekey_after_agents(rot_job *j)
{
	srv *s = j->s;
	admin_call *call = j->call;
	json_t *report = json_incref(j->report);
	char prev[65];

	json_object_set_new(report, "agents", job_results(j));
	job_free(j);
	snprintf(prev, sizeof(prev), "%s", srv_previous_sha256(s));
	if (prev[0] && !prev_has_dependents(s)) {
		/* everything was reached: the finish step, so that the old
		 * (possibly stolen) key does not stay in the previous slot */
		tether_prov *p = srv_prov(s);
		tether_error e;
		memset(&e, 0, sizeof(e));
		if (p->t->identity_remove(p->ctx, TETHER_SLOT_PREVIOUS, &e) < 0 || srv_identities_reload(s, &e) < 0) {
			log_error("rekey: cannot drop the previous identity %s: %s; run 'tether-server "
			          "rotate-certificate --finish'", prev, e.detail);
		} else {
			log_info("rekey: every target was reached: the previous identity %s is dropped", prev);
			tether_audit_write(srv_audit(s), admin_call_user(call), "rekey", NULL, "ok", NULL,
			                   "previous identity dropped", NULL);
			json_object_set_new(report, "dropped", json_string(prev));
		}
	}
	/* otherwise finish without force: what still depends on it is reported,
	 * with what to run for each target not reached */
	{
		json_t *manual = json_array(), *agents = json_object_get(report, "agents"), *row;
		reg_target *list = NULL;
		size_t n = 0, i, k;
		tether_error e;
		memset(&e, 0, sizeof(e));
		if (registry_target_list(srv_registry(s), NULL, &list, &n, &e) == 0) {
			for (i = 0; i < n; i++) {
				char t[65];
				int rekeyed = 0;
				json_t *m = json_pack("{s:s}", "target", list[i].name);
				srv_target_trusts(s, list[i].name, t);
				if (strcmp(t, srv_sha256(s))) {
					json_object_set_new(m, "trust", json_string(srv_sha256(s)));
					json_object_set_new(m, "remove_trust", json_string(t));
				} else if (list[i].retire_sha256) {
					json_object_set_new(m, "remove_trust", json_string(list[i].retire_sha256));
				}
				json_array_foreach(agents, k, row)
					if (!strcmp(json_string_value(json_object_get(row, "target")), list[i].name) &&
					    !strcmp(json_string_value(json_object_get(row, "state")), "rotated"))
						rekeyed = 1;
				if (!rekeyed)
					json_object_set_new(m, "rekey_agent", json_true());
				if (json_object_size(m) > 1)
					json_array_append_new(manual, m);
				else
					json_decref(m);
			}
			reg_target_list_free(list, n);
		}
		json_object_set_new(report, "manual", manual);
	}
	json_object_set_new(report, "current", json_string(srv_sha256(s)));
	json_object_set_new(report, "previous", json_string(srv_previous_sha256(s)));
	admin_reply(call, report);
}

/* rekey: the pending rotation was continued; now the new identity. */
static void rekey_continued(rot_job *j)
{
	srv *s = j->s;
	admin_call *call = j->call;
	json_t *report = json_incref(j->report);
	int kt = j->key_type;

	json_object_set_new(report, "server_continued", job_results(j));
	job_free(j);
	start_server_rotation(s, call, kt, REKEY_SWITCH, rekey_after_server, report);
}

static void rekey_after_server(rot_job *j)
{
	srv *s = j->s;
	admin_call *call = j->call;
	json_t *report = json_incref(j->report);
	int kt = j->key_type;

	json_object_set_new(report, "server", job_results(j));
	job_free(j);
	start_agent_rotation(s, call, NULL, 1, kt, rekey_after_agents, report);
}

static void recover_done(rot_job *j)
{
	srv *s = j->s;
	admin_call *call = j->call;
	json_t *report = json_incref(j->report);
	tether_error e;
	int kt = j->key_type;

	memset(&e, 0, sizeof(e));
	json_object_set_new(report, "recovery", job_results(j));
	job_free(j);
	/* the old (stolen) identity must not stay available */
	if (srv_previous_sha256(s)[0]) {
		tether_prov *p = srv_prov(s);
		if (p->t->identity_remove(p->ctx, TETHER_SLOT_PREVIOUS, &e) == 0)
			srv_identities_reload(s, &e);
	}
	start_agent_rotation(s, call, NULL, 1, kt, rekey_after_agents, report);
}

static void start_recovery(srv *s, admin_call *call, json_t *params, int key_type)
{
	const char *b64 = json_string_value(json_object_get(params, "recovery_pfx"));
	const char *pw = json_string_value(json_object_get(params, "password"));
	tether_prov *p = srv_prov(s);
	tether_identity *rid = NULL;
	unsigned char *data = NULL;
	size_t len = 0;
	rot_job *j;
	tether_error e;

	memset(&e, 0, sizeof(e));
	if (!p->t->identity_load_data) {
		admin_reply_error(call, "this provider cannot load a recovery identity from a file", "unsupported");
		return;
	}
	if (!b64 || tether_base64_decode(b64, &data, &len) < 0) {
		admin_reply_error(call, "rekey: recovery_pfx must be the PFX in base64", "bad_input");
		return;
	}
	if (p->t->identity_load_data(p->ctx, data, len, pw ? pw : "", &rid, &e) < 0) {
		tether_free_wiped(data, len);
		admin_reply_tether_error(call, &e);
		return;
	}
	tether_free_wiped(data, len);
	if (server_switch_identity(s, key_type, &e) < 0) {
		p->t->identity_free(rid);
		admin_reply_tether_error(call, &e);
		return;
	}
	j = job_new(s, call, JOB_RECOVER);
	j->recovery = rid;
	j->key_type = key_type;
	j->then = recover_done;
	j->report = json_object();
	if (job_targets(j, NULL, 1, NULL, &e) < 0) {
		admin_reply_tether_error(call, &e);
		job_free(j);
		return;
	}
	g_job = j;
	srv_set_recovery_identity(s, rid);
	j->recovery_published = 1;
	log_warn("recovery: replacing the trust set of %zu agent(s) with the new identity %s", j->n, j->cur);
	job_more(j);
}

/* ---- weak and expiring certificates ---- */

typedef struct check_job {
	srv *s;
	admin_call *call;
	json_t *rows;
	size_t pending;
} check_job;

static void check_reply(void *arg, const tether_rpc_response *resp, const tether_error *err);

typedef struct check_item {
	check_job *j;
	json_t *row;
} check_item;

static int64_t parse_iso(const char *s)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	if (!s || !strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm))
		return 0;
	return (int64_t)timegm(&tm);
}

static void check_finish(check_job *j)
{
	admin_reply(j->call, json_pack("{s:o}", "certificates", j->rows));
	free(j);
}

static void check_reply(void *arg, const tether_rpc_response *resp, const tether_error *err)
{
	check_item *ci = arg;
	check_job *j = ci->j;

	if (resp && !resp->is_error) {
		json_t *c = json_object_get(resp->result, "certificate");
		const char *alg = json_string_value(json_object_get(c, "cert_signature_algorithm"));
		const char *kt = json_string_value(json_object_get(c, "key_type"));
		int bits = (int)json_integer_value(json_object_get(c, "key_bits"));
		const char *na = json_string_value(json_object_get(c, "not_after"));
		json_object_set_new(ci->row, "sha256", json_string(json_string_value(json_object_get(c, "sha256"))));
		json_object_set_new(ci->row, "cert_signature_algorithm", json_string(alg ? alg : ""));
		json_object_set_new(ci->row, "key_type", json_string(kt ? kt : ""));
		json_object_set_new(ci->row, "key_bits", json_integer(bits));
		json_object_set_new(ci->row, "not_after", json_string(na ? na : ""));
		json_object_set_new(ci->row, "flags", tether_cert_flags(alg, kt, bits, parse_iso(na)));
		json_object_set_new(ci->row, "source", json_string("handshake"));
	} else {
		json_object_set_new(ci->row, "source", json_string("registry (unreachable now)"));
		json_object_set_new(ci->row, "error", json_string(resp ? resp->message : err->detail));
		if (!json_object_get(ci->row, "flags"))
			json_object_set_new(ci->row, "flags", json_array());
	}
	json_array_append_new(j->rows, ci->row);
	free(ci);
	if (--j->pending == 0)
		check_finish(j);
}

static void do_check(srv *s, admin_call *call)
{
	check_job *j = tether_xcalloc(1, sizeof(*j));
	tether_prov *p = srv_prov(s);
	reg_target *list = NULL;
	size_t n = 0, i, slot;
	tether_error e;

	memset(&e, 0, sizeof(e));
	j->s = s;
	j->call = call;
	j->rows = json_array();
	for (slot = 0; slot < TETHER_SLOT__COUNT; slot++) {
		tether_id_summary sum;
		json_t *row;
		if (tether_slot_summary(p, (int)slot, &sum, &e) < 0 || !sum.present)
			continue;
		row = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:o}", "who", "server", "slot", tether_slot_names[slot],
		                "sha256", sum.sha256, "cert_signature_algorithm", sum.info.cert_signature_algorithm,
		                "key_type", sum.info.key_type, "key_bits", sum.info.key_bits, "not_after", sum.not_after,
		                "flags", tether_cert_flags(sum.info.cert_signature_algorithm, sum.info.key_type,
		                                           sum.info.key_bits, sum.info.not_after));
		json_array_append_new(j->rows, row);
	}
	if (registry_target_list(srv_registry(s), NULL, &list, &n, &e) < 0) {
		json_decref(j->rows);
		free(j);
		admin_reply_tether_error(call, &e);
		return;
	}
	j->pending = n + 1;
	for (i = 0; i < n; i++) {
		check_item *ci = tether_xcalloc(1, sizeof(*ci));
		const char *alg = list[i].last_cert_signature_algorithm;
		ci->j = j;
		ci->row = json_pack("{s:s, s:s}", "who", "agent", "target", list[i].name);
		if (alg) {
			json_object_set_new(ci->row, "cert_signature_algorithm", json_string(alg));
			json_object_set_new(ci->row, "flags", tether_cert_flags(alg, NULL, 0, 0));
		}
		srv_target_call(s, list[i].name, "health", json_object(), 15000, check_reply, ci);
	}
	reg_target_list_free(list, n);
	if (--j->pending == 0)
		check_finish(j);
}

/* ---- admin ---- */

static int key_type_param(admin_call *call, json_t *params, int *out)
{
	const char *kt = json_string_value(json_object_get(params, "key_type"));
	*out = TETHER_KEY_RSA2048;
	if (kt && (*out = tether_key_type_parse(kt)) < 0) {
		admin_reply_error(call, "unknown key_type: use rsa2048, rsa3072, rsa4096, ec-p256 or ec-p384", "bad_input");
		return -1;
	}
	return 0;
}

static int rot_admin(srv *s, struct admin_call *call, const char *method, json_t *params)
{
	int kt;

	if (!strcmp(method, "certs.check")) {
		do_check(s, call);
		return 1;
	}
	if (strcmp(method, "rotate.certificate") && strcmp(method, "rotate.agents") && strcmp(method, "rekey"))
		return 0;
	if (job_busy(call))
		return 1;
	if (key_type_param(call, params, &kt) < 0)
		return 1;
	if (!strcmp(method, "rotate.certificate")) {
		if (json_is_true(json_object_get(params, "finish")))
			do_finish(s, call, json_is_true(json_object_get(params, "force")));
		else
			start_server_rotation(s, call, kt, ROT_NORMAL, NULL, NULL);
		return 1;
	}
	if (!strcmp(method, "rotate.agents")) {
		json_t *names = json_object_get(params, "targets");
		int all = json_is_true(json_object_get(params, "all"));
		if (!all && (!json_is_array(names) || !json_array_size(names))) {
			admin_reply_error(call, "name the targets or give --all", "bad_input");
			return 1;
		}
		start_agent_rotation(s, call, names, all, kt, NULL, NULL);
		return 1;
	}
	/* rekey */
	if (json_object_get(params, "recovery_pfx")) {
		start_recovery(s, call, params, kt);
		return 1;
	}
	{
		json_t *report = json_object();
		start_server_rotation(s, call, kt, REKEY_CONTINUE, rekey_after_server, report);
	}
	return 1;
}

void srv_rotation_target_back(srv *s, const char *target)
{
	rot_job *j;
	char t[65];
	reg_target rt;
	tether_error e;
	int retire;

	if (g_job || !srv_previous_sha256(s)[0])
		return;
	memset(&e, 0, sizeof(e));
	srv_target_trusts(s, target, t);
	if (registry_target_get(srv_registry(s), target, &rt, &e) < 0)
		return;
	retire = rt.retire_sha256 && !strcmp(rt.retire_sha256, srv_previous_sha256(s));
	if (strcmp(t, srv_previous_sha256(s)) && !retire) {
		reg_target_clear(&rt);
		return;
	}
	j = job_new(s, NULL, JOB_SERVER);
	j->items = tether_xcalloc(1, sizeof(*j->items));
	snprintf(j->items[0].name, sizeof(j->items[0].name), "%s", target);
	snprintf(j->items[0].mode, sizeof(j->items[0].mode), "%s", rt.mode);
	reg_target_clear(&rt);
	j->items[0].retire_pending = retire;
	j->items[0].job = j;
	j->n = 1;
	g_job = j;
	log_info("rotate-certificate: target %s is back and %s: continuing its rotation", target,
	         retire && strcmp(t, srv_previous_sha256(s)) ? "has not retired the previous identity yet"
	                                                     : "still trusts the previous identity");
	job_more(j);
}

static void rot_stop(srv *s)
{
	(void)s;
	if (g_job)
		srv_set_recovery_identity(g_job->s, NULL);
}

const srv_module srv_module_rotation = { "rotation", NULL, rot_admin, rot_stop };
