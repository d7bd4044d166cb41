/* The admin socket (server/admin.c) with the target methods
 * (server/admin_targets.c) on a uv loop in a thread, driven by the CLI's
 * client (cli/admin_client.c) and by raw sockets: every method, errors,
 * out-of-order answers, oversized lines, concurrent clients, a second
 * daemon, a stale socket, the audit log, refused callers. */
#include "config.h"
#include "test.h"
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <uv.h>
#include "admin.h"
#include "admin_client.h"
#include "admin_targets.h"
#include "audit.h"
#include "fsutil.h"
#include "instance.h"
#include "registry.h"
#include "util.h"

#define TP_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define TP_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define TO 10000

typedef struct fixture {
	char *dir;
	tether_instance *inst;
	uv_loop_t loop;
	uv_async_t stop;
	pthread_t thread;
	admin_server *srv;
	registry *reg;
	tether_audit *audit;
	char *audit_path;
} fixture;

typedef struct slow {
	uv_timer_t timer;
	admin_call *call;
} slow;

static void on_slow_closed(uv_handle_t *h)
{
	free(h);
}

static void on_slow(uv_timer_t *t)
{
	slow *s = (slow *)t;
	admin_reply(s->call, json_pack("{s:b}", "slow", 1));
	uv_close((uv_handle_t *)t, on_slow_closed);
}

static void handler(void *arg, admin_call *call, const char *method, json_t *params)
{
	fixture *f = arg;

	if (admin_targets_dispatch(f->reg, f->audit, call, method, params))
		return;
	if (!strcmp(method, "test.slow")) {
		slow *s = calloc(1, sizeof(*s));
		s->call = call;
		uv_timer_init(&f->loop, &s->timer);
		uv_timer_start(&s->timer, on_slow, 300, 0);
		return;
	}
	if (!strcmp(method, "test.whoami")) {
		admin_reply(call, json_string(admin_call_user(call)));
		return;
	}
	admin_reply_error(call, "unknown admin method", "unknown_method");
}

static void on_stop(uv_async_t *a)
{
	fixture *f = a->data;
	admin_server_stop(f->srv);
	uv_close((uv_handle_t *)a, NULL);
}

static void *loop_thread(void *arg)
{
	fixture *f = arg;
	uv_run(&f->loop, UV_RUN_DEFAULT);
	return NULL;
}

static int start(fixture *f)
{
	tether_error err;

	memset(&err, 0, sizeof(err));
	uv_loop_init(&f->loop);
	uv_async_init(&f->loop, &f->stop, on_stop);
	f->stop.data = f;
	if (admin_server_start(&f->loop, f->inst->run_dir, NULL, handler, f, &f->srv, &err) < 0) {
		fprintf(stderr, "# %s\n", err.detail);
		return -1;
	}
	admin_server_set_audit(f->srv, f->audit);
	pthread_create(&f->thread, NULL, loop_thread, f);
	return 0;
}

static void stop(fixture *f)
{
	uv_async_send(&f->stop);
	pthread_join(f->thread, NULL);
	uv_loop_close(&f->loop);
}

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	tether_error err;
	char *db;

	f->dir = test_tmpdir();
	assert_int_equal(tether_instance_init("server", "t1", f->dir, &f->inst, &err), 0);
	assert_int_equal(tether_mkdirs(f->inst->state_dir, 0700, &err), 0);
	db = tether_asprintf("%s/registry.db", f->inst->state_dir);
	assert_int_equal(registry_open(db, &f->reg, &err), 0);
	free(db);
	f->audit_path = tether_asprintf("%s/audit.log", f->inst->state_dir);
	assert_int_equal(tether_audit_open(f->audit_path, &f->audit, &err), 0);
	*state = f;
	return start(f);
}

static int teardown(void **state)
{
	fixture *f = *state;

	stop(f);
	registry_close(f->reg);
	tether_audit_close(f->audit);
	tether_instance_free(f->inst);
	tether_rmtree(f->dir);
	free(f->audit_path);
	free(f->dir);
	free(f);
	return 0;
}

static int call(fixture *f, const char *method, json_t *params, json_t **res, tether_error *err)
{
	int r;

	memset(err, 0, sizeof(*err));
	*res = NULL;
	r = admin_client_call(f->inst, method, params, TO, res, err);
	json_decref(params);
	return r;
}

static json_t *add_params(const char *name, const char *addr, const char *sha)
{
	return json_pack("{s:s, s:s, s:s, s:[s]}", "name", name, "address", addr, "sha256", sha,
	                 "tags", "web");
}

static void test_methods(void **state)
{
	fixture *f = *state;
	tether_error err;
	json_t *res;

	assert_int_equal(call(f, "target.add", add_params("web1", "https://10.0.0.5:4443/",
	                 "AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA"),
	                 &res, &err), 0);
	assert_string_equal(json_string_value(json_object_get(res, "sha256")), TP_A);
	assert_string_equal(json_string_value(json_object_get(res, "address")), "10.0.0.5:4443");
	assert_string_equal(json_string_value(json_object_get(res, "mode")), "listening");
	json_decref(res);
	assert_int_equal(call(f, "target.add", add_params("web2", "web2.example", TP_B), &res, &err), 0);
	assert_int_equal(json_integer_value(json_object_get(res, "port")), 10933);
	json_decref(res);
	assert_int_equal(call(f, "target.add", json_pack("{s:s, s:s, s:s}", "name", "db",
	                 "address", "db:1", "sha256", TP_B), &res, &err), 0);
	json_decref(res);

	assert_int_equal(call(f, "target.list", NULL, &res, &err), 0);
	assert_int_equal(json_array_size(json_object_get(res, "targets")), 3);
	json_decref(res);
	assert_int_equal(call(f, "target.list", json_pack("{s:s}", "tag", "web"), &res, &err), 0);
	assert_int_equal(json_array_size(json_object_get(res, "targets")), 2);
	json_decref(res);

	assert_int_equal(call(f, "target.show", json_pack("{s:s}", "name", "web2"), &res, &err), 0);
	assert_string_equal(json_string_value(json_object_get(res, "host")), "web2.example");
	assert_true(json_is_null(json_object_get(res, "state")));
	json_decref(res);

	assert_int_equal(call(f, "target.set-thumbprint", json_pack("{s:s, s:s}", "name", "web2",
	                 "sha256", TP_A), &res, &err), 0);
	assert_string_equal(json_string_value(json_object_get(res, "old_sha256")), TP_B);
	assert_string_equal(json_string_value(json_object_get(res, "sha256")), TP_A);
	json_decref(res);

	assert_int_equal(call(f, "target.remove", json_pack("{s:s}", "name", "web2"), &res, &err), 0);
	assert_string_equal(json_string_value(json_object_get(res, "name")), "web2");
	json_decref(res);
	assert_int_equal(call(f, "target.list", NULL, &res, &err), 0);
	assert_int_equal(json_array_size(json_object_get(res, "targets")), 2);
	json_decref(res);

	assert_int_equal(call(f, "test.whoami", NULL, &res, &err), 0);
	assert_non_null(strstr(json_string_value(res), "uid="));
	json_decref(res);
}

static void test_errors(void **state)
{
	fixture *f = *state;
	tether_error err;
	json_t *res;

	assert_int_equal(call(f, "target.add", add_params("web1", "h", TP_A), &res, &err), 0);
	json_decref(res);
	assert_int_equal(call(f, "target.add", add_params("web1", "h", TP_B), &res, &err),
	                 TETHER_ERR_EXISTS);
	assert_null(res);
	assert_non_null(strstr(err.detail, "a target named 'web1' already exists"));
	assert_int_equal(call(f, "target.show", json_pack("{s:s}", "name", "nope"), &res, &err),
	                 TETHER_ERR_NOT_FOUND);
	assert_non_null(strstr(err.detail, "no target named 'nope'"));
	assert_int_equal(call(f, "target.remove", json_pack("{s:s}", "name", "nope"), &res, &err),
	                 TETHER_ERR_NOT_FOUND);
	assert_int_equal(call(f, "target.set-thumbprint", json_pack("{s:s, s:s}", "name", "nope",
	                 "sha256", TP_A), &res, &err), TETHER_ERR_NOT_FOUND);
	assert_int_equal(call(f, "target.add", add_params("x", "h", "abcd"), &res, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "'abcd' is not a SHA-256 thumbprint"));
	assert_int_equal(call(f, "target.add", add_params("x", "h:0", TP_A), &res, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "not a valid agent address"));
	assert_int_equal(call(f, "target.add", add_params("x y", "h", TP_A), &res, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "target name 'x y' is not valid"));
	assert_int_equal(call(f, "target.add", json_pack("{s:s, s:s, s:s, s:[s]}", "name", "x", "address",
	                 "h", "sha256", TP_A, "tags", "bad tag"), &res, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "tag 'bad tag'"));
	assert_int_equal(call(f, "target.add", json_pack("{s:s, s:s, s:s, s:i}", "name", "x", "address",
	                 "h", "sha256", TP_A, "colour", 3), &res, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "target.add has no parameter \"colour\""));
	assert_int_equal(call(f, "target.add", json_pack("{s:s, s:s}", "name", "x", "sha256", TP_A),
	                 &res, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "needs the parameter \"address\""));
	assert_int_equal(call(f, "target.show", json_pack("{s:i}", "name", 3), &res, &err), TETHER_ERR_INVALID);
	/* a polling target is known by its thumbprint: it has no address */
	assert_int_equal(call(f, "target.add", json_pack("{s:s, s:s, s:s, s:s}", "name", "p", "mode",
	                 "polling", "address", "h", "sha256", TP_A), &res, &err), TETHER_ERR_INVALID);
	assert_non_null(strstr(err.detail, "a polling target has no address"));
	assert_int_equal(call(f, "target.add", json_pack("{s:s, s:s, s:s}", "name", "p", "mode",
	                 "sideways", "sha256", TP_A), &res, &err), TETHER_ERR_INVALID);
	assert_int_equal(call(f, "no.such", NULL, &res, &err), TETHER_ERR_UNSUPPORTED);
	assert_non_null(strstr(err.detail, "unknown admin method"));
	/* nothing of that changed the registry */
	assert_int_equal(call(f, "target.list", NULL, &res, &err), 0);
	assert_int_equal(json_array_size(json_object_get(res, "targets")), 1);
	json_decref(res);
}

static void test_not_running(void **state)
{
	fixture *f = *state;
	tether_instance *other = NULL;
	tether_error err;
	json_t *res = NULL;

	assert_int_equal(tether_instance_init("server", "other", f->dir, &other, &err), 0);
	assert_int_equal(admin_client_call(other, "target.list", NULL, TO, &res, &err), TETHER_ERR_NOT_FOUND);
	assert_null(res);
	assert_int_equal(err.category, TETHER_CAT_NOT_FOUND);
	assert_non_null(strstr(err.detail, "the tether-server daemon for instance 'other' is not running (no "));
	/* the command names the instance and, outside the default home, the home */
	assert_non_null(strstr(err.detail, "'tether-server run --instance other --home "));
	assert_non_null(strstr(err.detail, f->dir));
	tether_instance_free(other);
}

static int raw_connect(fixture *f)
{
	struct sockaddr_un sa;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/admin.sock", f->inst->run_dir);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Read one line (NULL at EOF). */
static json_t *raw_read(int fd)
{
	char buf[65536];
	size_t n = 0;

	while (n < sizeof(buf) - 1) {
		ssize_t r = read(fd, buf + n, 1);
		if (r <= 0)
			return NULL;
		if (buf[n] == '\n')
			break;
		n++;
	}
	return json_loadb(buf, n, 0, NULL);
}

static void raw_write(int fd, const char *s)
{
	assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

static void test_out_of_order(void **state)
{
	fixture *f = *state;
	int fd = raw_connect(f);
	json_t *a, *b, *c;

	raw_write(fd, "{\"id\": 1, \"method\": \"test.slow\"}\n"
	              "{\"id\": \"two\", \"method\": \"target.list\", \"params\": {}}\n"
	              "this is not json\n"
	              "[1, 2]\n"
	              "{\"id\": 4}\n"
	              "\n");
	a = raw_read(fd);
	assert_string_equal(json_string_value(json_object_get(a, "id")), "two");
	assert_non_null(json_object_get(json_object_get(a, "result"), "targets"));
	b = raw_read(fd);
	assert_true(json_is_null(json_object_get(b, "id")));
	assert_non_null(strstr(json_string_value(json_object_get(json_object_get(b, "error"), "message")),
	                       "not valid JSON"));
	json_decref(b);
	b = raw_read(fd); /* [1, 2] */
	assert_string_equal(json_string_value(json_object_get(json_object_get(b, "error"), "category")),
	                    "bad_input");
	json_decref(b);
	b = raw_read(fd); /* no method */
	assert_int_equal(json_integer_value(json_object_get(b, "id")), 4);
	json_decref(b);
	c = raw_read(fd); /* the slow one, last */
	assert_int_equal(json_integer_value(json_object_get(c, "id")), 1);
	assert_true(json_is_true(json_object_get(json_object_get(c, "result"), "slow")));
	json_decref(a);
	json_decref(c);
	/* the connection is still usable */
	raw_write(fd, "{\"id\": 5, \"method\": \"target.list\"}\n");
	a = raw_read(fd);
	assert_int_equal(json_integer_value(json_object_get(a, "id")), 5);
	json_decref(a);
	close(fd);
}

static void test_oversized(void **state)
{
	fixture *f = *state;
	int fd = raw_connect(f);
	size_t n = ADMIN_LINE_MAX + 4096, off = 0;
	char *big = malloc(n);
	json_t *e;
	tether_error err;
	json_t *res;

	memset(big, 'x', n);
	while (off < n) {
		ssize_t w = send(fd, big + off, n - off, MSG_NOSIGNAL);
		if (w <= 0)
			break; /* the daemon may close before we finish */
		off += (size_t)w;
	}
	e = raw_read(fd);
	assert_non_null(e);
	assert_true(json_is_null(json_object_get(e, "id")));
	assert_non_null(strstr(json_string_value(json_object_get(json_object_get(e, "error"), "message")),
	                       "request line longer than"));
	json_decref(e);
	assert_null(raw_read(fd)); /* closed */
	close(fd);
	free(big);
	/* the server still serves others */
	assert_int_equal(call(f, "target.list", NULL, &res, &err), 0);
	json_decref(res);
}

typedef struct worker {
	fixture *f;
	int id;
	int failures;
} worker;

static void *client_thread(void *arg)
{
	worker *w = arg;
	int i;

	for (i = 0; i < 10; i++) {
		char name[32];
		tether_error err;
		json_t *res = NULL;
		snprintf(name, sizeof(name), "t%d-%d", w->id, i);
		if (call(w->f, "target.add", add_params(name, "h", TP_A), &res, &err) < 0)
			w->failures++;
		json_decref(res);
		if (call(w->f, "target.show", json_pack("{s:s}", "name", name), &res, &err) < 0)
			w->failures++;
		json_decref(res);
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	fixture *f = *state;
	pthread_t th[8];
	worker w[8];
	tether_error err;
	json_t *res;
	int i, slow_fd;

	slow_fd = raw_connect(f); /* one slow request in flight meanwhile */
	raw_write(slow_fd, "{\"id\": 1, \"method\": \"test.slow\"}\n");
	for (i = 0; i < 8; i++) {
		w[i] = (worker){ f, i, 0 };
		pthread_create(&th[i], NULL, client_thread, &w[i]);
	}
	for (i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].failures, 0);
	}
	assert_int_equal(call(f, "target.list", NULL, &res, &err), 0);
	assert_int_equal(json_array_size(json_object_get(res, "targets")), 80);
	json_decref(res);
	res = raw_read(slow_fd);
	assert_int_equal(json_integer_value(json_object_get(res, "id")), 1);
	json_decref(res);
	close(slow_fd);
}

static void test_second_daemon(void **state)
{
	fixture *f = *state;
	uv_loop_t loop;
	admin_server *s2 = NULL;
	tether_error err;
	json_t *res;

	uv_loop_init(&loop);
	memset(&err, 0, sizeof(err));
	assert_int_equal(admin_server_start(&loop, f->inst->run_dir, NULL, handler, f, &s2, &err),
	                 TETHER_ERR_EXISTS);
	assert_null(s2);
	assert_non_null(strstr(err.detail, "another tether-server daemon is already running"));
	assert_int_equal(uv_loop_close(&loop), 0);
	/* the first one is untouched */
	assert_int_equal(call(f, "target.list", NULL, &res, &err), 0);
	json_decref(res);
}

static void test_stale_socket_and_modes(void **state)
{
	fixture *f = *state;
	struct sockaddr_un sa;
	struct stat st;
	tether_error err;
	json_t *res;
	int fd;

	stop(f);
	/* a daemon that died without cleaning up leaves its socket behind */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/admin.sock", f->inst->run_dir);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	assert_int_equal(admin_client_call(f->inst, "target.list", NULL, TO, &res, &err), TETHER_ERR_NOT_FOUND);
	assert_int_equal(start(f), 0);
	assert_int_equal(call(f, "target.list", NULL, &res, &err), 0);
	json_decref(res);
	assert_int_equal(stat(f->inst->run_dir, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0750);
	assert_int_equal(stat(sa.sun_path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0660);
}

static void test_audit(void **state)
{
	fixture *f = *state;
	tether_error err;
	json_t *res;
	unsigned char *log = NULL;
	size_t len;
	struct stat st;

	assert_int_equal(call(f, "target.add", add_params("aud1", "h", TP_A), &res, &err), 0);
	json_decref(res);
	assert_int_equal(call(f, "target.add", add_params("aud1", "h", TP_A), &res, &err), TETHER_ERR_EXISTS);
	assert_int_equal(call(f, "target.remove", json_pack("{s:s}", "name", "aud1"), &res, &err), 0);
	json_decref(res);
	assert_int_equal(tether_read_file(f->audit_path, 1 << 20, &log, &len, &err), 0);
	assert_non_null(strstr((char *)log, "\"what\":\"target.add\",\"target\":\"aud1\",\"result\":\"ok\""));
	assert_non_null(strstr((char *)log, "\"result\":\"error\",\"category\":\"exists\""));
	assert_non_null(strstr((char *)log, "\"what\":\"target.remove\",\"target\":\"aud1\",\"result\":\"ok\""));
	assert_non_null(strstr((char *)log, "\"who\":\"uid="));
	free(log);
	assert_int_equal(stat(f->audit_path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

/* As nobody: first the 0750 directory keeps us out, then (opened up for
 * the test) SO_PEERCRED refuses us with a message. */
static void test_refused(void **state)
{
	fixture *f = *state;
	char *sock, *base;
	pid_t pid;
	int status;

	if (geteuid() != 0)
		skip(); /* needs root to act as another user */
	sock = tether_asprintf("%s/admin.sock", f->inst->run_dir);
	assert_int_equal(chmod(f->dir, 0755), 0);
	base = tether_asprintf("%s/server-t1", f->dir);
	assert_int_equal(chmod(base, 0755), 0);
	free(base);
	pid = fork();
	if (pid == 0) {
		tether_error err;
		json_t *res = NULL;
		int r;
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		r = admin_client_call(f->inst, "target.list", NULL, TO, &res, &err);
		if (r != TETHER_ERR_PERMISSION || !strstr(err.detail, "permission denied on")) {
			fprintf(stderr, "# dir: %d %s\n", r, err.detail);
			_exit(1);
		}
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 0);

	assert_int_equal(chmod(f->inst->run_dir, 0755), 0);
	assert_int_equal(chmod(sock, 0666), 0);
	pid = fork();
	if (pid == 0) {
		tether_error err;
		json_t *res = NULL;
		int r;
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		r = admin_client_call(f->inst, "target.list", NULL, TO, &res, &err);
		if (r != TETHER_ERR_PERMISSION || !strstr(err.detail, "permission denied: uid=65534") ||
		    !strstr(err.detail, "[admin] group")) {
			fprintf(stderr, "# peercred: %d %s\n", r, err.detail);
			_exit(2);
		}
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 0);
	free(sock);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_methods, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_running, setup, teardown),
		cmocka_unit_test_setup_teardown(test_out_of_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oversized, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_second_daemon, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_socket_and_modes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_audit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
