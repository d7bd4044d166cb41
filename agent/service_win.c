/* tether-agent service (Windows): one Windows service per instance,
 * managed through the Service Control Manager.  Replaces
 * cli/cli_service.c (systemd) in the Windows build.
 *
 *   service --install    CreateService "tether-agent-INSTANCE", automatic
 *                        start, LocalSystem, restart on failure; its command
 *                        line is '"<exe>" service --run-service --instance
 *                        NAME --home DIR'
 *   --uninstall --start --stop --restart --status
 *   --run-service        what the SCM starts: StartServiceCtrlDispatcher,
 *                        then the agent's 'run' in the service thread.
 *
 * On stop the service reports SERVICE_STOPPED and ends the process: every
 * state file is written atomically (temporary file, flush, rename), so an
 * end at any moment leaves consistent state. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "agent.h"
#include "log.h"
#include "util.h"

enum { A_INSTALL = OPT__VERB_BASE, A_UNINSTALL, A_START, A_STOP, A_RESTART, A_STATUS, A_RUN };

static const cli_opt service_opts_spec[] = {
	{ "install", no_argument, A_INSTALL, NULL, "create the Windows service (automatic start, LocalSystem)" },
	{ "uninstall", no_argument, A_UNINSTALL, NULL, "stop and delete the service" },
	{ "start", no_argument, A_START, NULL, "start the service" },
	{ "stop", no_argument, A_STOP, NULL, "stop the service" },
	{ "restart", no_argument, A_RESTART, NULL, "stop, then start the service" },
	{ "status", no_argument, A_STATUS, NULL, "show the service's state; exit 1 if not running" },
	{ "run-service", no_argument, A_RUN, NULL, "(used by the Service Control Manager)" },
	{ NULL, 0, 0, NULL, NULL }
};

typedef struct service_opts {
	int action;
	int count;
} service_opts;

static int on_opt(cli_ctx *c, int id, const char *val, void *arg)
{
	service_opts *o = arg;
	(void)c;
	(void)val;
	o->action = id;
	o->count++;
	return 0;
}

static int win_fail(cli_ctx *c, const char *what, const char *todo)
{
	DWORD e = GetLastError();
	return tether_err_set(&c->err, e == ERROR_ACCESS_DENIED ? TETHER_ERR_PERMISSION : TETHER_ERR_IO,
	                      TETHER_CAT_IO, "%s: %s (Windows error %lu)%s%s", what,
	                      tether_win_strerror(e), (unsigned long)e, todo ? ": " : "", todo ? todo : "");
}

static wchar_t *wide(const char *s)
{
	int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
	wchar_t *w = tether_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(wchar_t));
	if (n <= 0 || MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n) <= 0)
		w[0] = 0;
	return w;
}

/* ---- the service itself ---------------------------------------------- */

static SERVICE_STATUS_HANDLE g_status;
static cli_ctx *g_ctx;
static char *g_argv[8];
static int g_argc;

static void report(DWORD state, DWORD exit_code)
{
	SERVICE_STATUS st;

	memset(&st, 0, sizeof(st));
	st.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
	st.dwCurrentState = state;
	st.dwControlsAccepted = state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN : 0;
	st.dwWin32ExitCode = exit_code ? ERROR_SERVICE_SPECIFIC_ERROR : NO_ERROR;
	st.dwServiceSpecificExitCode = exit_code;
	st.dwWaitHint = state == SERVICE_RUNNING || state == SERVICE_STOPPED ? 0 : 10000;
	SetServiceStatus(g_status, &st);
}

static DWORD WINAPI on_control(DWORD ctl, DWORD type, LPVOID data, LPVOID ctx)
{
	(void)type;
	(void)data;
	(void)ctx;
	if (ctl == SERVICE_CONTROL_STOP || ctl == SERVICE_CONTROL_SHUTDOWN) {
		report(SERVICE_STOP_PENDING, 0);
		log_info("service stop requested by the Service Control Manager");
		/* the daemon drains and returns; service_main then reports
		 * SERVICE_STOPPED.  Before its loop runs there is nothing to
		 * drain (all state is written atomically). */
		if (agent_request_stop() < 0) {
			report(SERVICE_STOPPED, 0);
			ExitProcess(0);
		}
		return NO_ERROR;
	}
	return ctl == SERVICE_CONTROL_INTERROGATE ? NO_ERROR : ERROR_CALL_NOT_IMPLEMENTED;
}

static void WINAPI service_main(DWORD argc, LPWSTR *argv)
{
	int r;

	(void)argc;
	(void)argv;
	g_status = RegisterServiceCtrlHandlerExW(L"", on_control, NULL);
	if (!g_status)
		return;
	report(SERVICE_RUNNING, 0);
	r = verb_run(g_ctx, g_argc, g_argv);
	report(SERVICE_STOPPED, r < 0 ? (DWORD)-r : 0);
}

static int run_service(cli_ctx *c)
{
	SERVICE_TABLE_ENTRYW table[] = { { (LPWSTR)L"", service_main }, { NULL, NULL } };

	g_ctx = c;
	g_argc = 0;
	g_argv[g_argc++] = "run";
	if (c->instance_name) {
		g_argv[g_argc++] = "--instance";
		g_argv[g_argc++] = (char *)c->instance_name;
	}
	if (c->home) {
		g_argv[g_argc++] = "--home";
		g_argv[g_argc++] = (char *)c->home;
	}
	g_argv[g_argc] = NULL;
	if (!StartServiceCtrlDispatcherW(table))
		return win_fail(c, "cannot connect to the Service Control Manager",
		                "'service --run-service' is what the service runs; to run in a console use 'run'");
	return 0;
}

/* ---- management ------------------------------------------------------ */

static char *service_name(cli_ctx *c)
{
	return tether_asprintf("%s-%s", c->prog->progname,
	                       c->instance_name ? c->instance_name : TETHER_DEFAULT_INSTANCE);
}

static int install(cli_ctx *c, SC_HANDLE scm, const char *name)
{
	wchar_t exe[MAX_PATH];
	char exe8[MAX_PATH * 3], *cmd, *disp;
	wchar_t *wcmd, *wname, *wdisp;
	SC_HANDLE svc;
	SERVICE_FAILURE_ACTIONSW fa;
	SC_ACTION acts[3];
	SERVICE_DESCRIPTIONW desc;
	int r = 0;

	if (!GetModuleFileNameW(NULL, exe, MAX_PATH) ||
	    !WideCharToMultiByte(CP_UTF8, 0, exe, -1, exe8, sizeof(exe8), NULL, NULL))
		return win_fail(c, "cannot find this program's path", NULL);
	cmd = tether_asprintf("\"%s\" service --run-service --instance %s%s%s%s", exe8,
	                      c->inst->name, c->home ? " --home \"" : "", c->home ? c->home : "",
	                      c->home ? "\"" : "");
	disp = tether_asprintf("tether agent (%s)", c->inst->name);
	wcmd = wide(cmd);
	wname = wide(name);
	wdisp = wide(disp);
	svc = CreateServiceW(scm, wname, wdisp, SERVICE_ALL_ACCESS, SERVICE_WIN32_OWN_PROCESS,
	                     SERVICE_AUTO_START, SERVICE_ERROR_NORMAL, wcmd, NULL, NULL, NULL, NULL, NULL);
	if (!svc) {
		r = GetLastError() == ERROR_SERVICE_EXISTS ?
		    tether_err_set(&c->err, TETHER_ERR_EXISTS, TETHER_CAT_IO,
		                   "service %s already exists: 'service --uninstall' first to re-create it", name) :
		    win_fail(c, "cannot create the service", "run as an administrator");
		goto out;
	}
	desc.lpDescription = (LPWSTR)L"tether agent: answers servers whose certificate thumbprint is pinned";
	ChangeServiceConfig2W(svc, SERVICE_CONFIG_DESCRIPTION, &desc);
	acts[0].Type = acts[1].Type = acts[2].Type = SC_ACTION_RESTART;
	acts[0].Delay = 1000;
	acts[1].Delay = 5000;
	acts[2].Delay = 30000;
	memset(&fa, 0, sizeof(fa));
	fa.dwResetPeriod = 86400;
	fa.cActions = 3;
	fa.lpsaActions = acts;
	ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, &fa);
	CloseServiceHandle(svc);
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "service", json_string(name));
		json_object_set_new(j, "command", json_string(cmd));
		cli_print_json(j);
	} else {
		printf("installed service %s (automatic start): %s\nstart it with '%s service --start --instance %s'\n",
		       name, cmd, c->prog->progname, c->inst->name);
	}
out:
	free(cmd);
	free(disp);
	free(wcmd);
	free(wname);
	free(wdisp);
	return r;
}

static int wait_state(SC_HANDLE svc, DWORD want, DWORD ms)
{
	SERVICE_STATUS st;
	DWORD waited = 0;

	while (QueryServiceStatus(svc, &st) && st.dwCurrentState != want && waited < ms) {
		Sleep(200);
		waited += 200;
	}
	return QueryServiceStatus(svc, &st) && st.dwCurrentState == want ? 0 : -1;
}

static const char *state_name(DWORD s)
{
	switch (s) {
	case SERVICE_STOPPED: return "stopped";
	case SERVICE_START_PENDING: return "starting";
	case SERVICE_STOP_PENDING: return "stopping";
	case SERVICE_RUNNING: return "running";
	default: return "other";
	}
}

int verb_service(cli_ctx *c, int argc, char **argv)
{
	service_opts o = { 0, 0 };
	SC_HANDLE scm = NULL, svc = NULL;
	SERVICE_STATUS st;
	char *name = NULL;
	wchar_t *wname = NULL;
	int oi, r;

	r = cli_parse(c, argc, argv, service_opts_spec,
	              "--install|--uninstall|--start|--stop|--restart|--status [--instance NAME]",
	              "Run this instance as a Windows service (tether-agent-INSTANCE), managed by the\n"
	              "Service Control Manager: automatic start as LocalSystem, restarted on failure.",
	              on_opt, &o, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	if (o.count != 1)
		return cli_usage_error(c, "give one of --install, --uninstall, --start, --stop, --restart, --status");
	if (o.action == A_RUN) {
		r = cli_open_instance(c);
		return r < 0 ? r : run_service(c);
	}
	if (o.action == A_INSTALL) {
		r = cli_open_instance(c);
		if (r < 0)
			return r;
	}
	name = service_name(c);
	wname = wide(name);
	scm = OpenSCManagerW(NULL, NULL, o.action == A_INSTALL ? SC_MANAGER_CREATE_SERVICE : SC_MANAGER_CONNECT);
	if (!scm) {
		r = win_fail(c, "cannot open the Service Control Manager", "run as an administrator");
		goto out;
	}
	if (o.action == A_INSTALL) {
		r = install(c, scm, name);
		goto out;
	}
	svc = OpenServiceW(scm, wname, SERVICE_ALL_ACCESS);
	if (!svc) {
		r = GetLastError() == ERROR_SERVICE_DOES_NOT_EXIST ?
		    tether_err_set(&c->err, TETHER_ERR_NOT_FOUND, TETHER_CAT_NOT_FOUND,
		                   "service %s is not installed: 'service --install' first", name) :
		    win_fail(c, "cannot open the service", "run as an administrator");
		goto out;
	}
	switch (o.action) {
	case A_UNINSTALL:
		if (ControlService(svc, SERVICE_CONTROL_STOP, &st))
			wait_state(svc, SERVICE_STOPPED, 15000);
		if (!DeleteService(svc))
			r = win_fail(c, "cannot delete the service", NULL);
		else if (!c->json)
			printf("removed service %s\n", name);
		break;
	case A_STOP:
	case A_RESTART:
		if (!ControlService(svc, SERVICE_CONTROL_STOP, &st) &&
		    GetLastError() != ERROR_SERVICE_NOT_ACTIVE) {
			r = win_fail(c, "cannot stop the service", NULL);
			break;
		}
		if (wait_state(svc, SERVICE_STOPPED, 15000) < 0) {
			r = tether_err_set(&c->err, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
			                   "service %s did not stop within 15 s", name);
			break;
		}
		if (o.action == A_STOP)
			break;
		/* fall through */
	case A_START:
		if (!StartServiceW(svc, 0, NULL) && GetLastError() != ERROR_SERVICE_ALREADY_RUNNING) {
			r = win_fail(c, "cannot start the service", "see the Windows event log and the agent's log file");
			break;
		}
		if (wait_state(svc, SERVICE_RUNNING, 15000) < 0)
			r = tether_err_set(&c->err, TETHER_ERR_TIMEOUT, TETHER_CAT_TIMEOUT,
			                   "service %s did not reach 'running' within 15 s: see its log", name);
		break;
	case A_STATUS:
		if (!QueryServiceStatus(svc, &st)) {
			r = win_fail(c, "cannot query the service", NULL);
			break;
		}
		if (c->json) {
			json_t *j = json_object();
			json_object_set_new(j, "service", json_string(name));
			json_object_set_new(j, "state", json_string(state_name(st.dwCurrentState)));
			cli_print_json(j);
		} else {
			printf("%s: %s\n", name, state_name(st.dwCurrentState));
		}
		if (st.dwCurrentState != SERVICE_RUNNING)
			r = 1;
		break;
	}
out:
	if (svc)
		CloseServiceHandle(svc);
	if (scm)
		CloseServiceHandle(scm);
	free(name);
	free(wname);
	return r;
}
