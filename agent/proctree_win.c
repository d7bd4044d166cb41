/* Process trees of the script service on Windows: see proctree_win.h.
 *
 * The job is created right after uv_spawn returned, so a grandchild the
 * script starts in that first instant (before AssignProcessToJobObject)
 * is not in it; everything started later is (jobs are inherited).  The job
 * has JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: if the agent dies, Windows ends
 * the scripts' processes when it closes the agent's handles. */
#ifdef _WIN32
#include "config.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "error.h"
#include "proctree_win.h"

#define TREES_MAX 1024 /* more than the script service runs at once */

typedef struct tree {
	long pid;
	HANDLE job;
} tree;

static tree trees[TREES_MAX];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

int proctree_track(long pid, char *why, size_t cap)
{
	JOBOBJECT_EXTENDED_LIMIT_INFORMATION li;
	HANDLE job = NULL, proc = NULL;
	int i, r = 0;

	proc = OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE | SYNCHRONIZE, FALSE, (DWORD)pid);
	if (!proc) {
		snprintf(why, cap, "OpenProcess: %s", tether_win_strerror(GetLastError()));
		return TETHER_ERR_IO;
	}
	job = CreateJobObjectW(NULL, NULL);
	if (!job) {
		snprintf(why, cap, "CreateJobObject: %s", tether_win_strerror(GetLastError()));
		r = TETHER_ERR_IO;
		goto out;
	}
	memset(&li, 0, sizeof(li));
	li.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
	if (!SetInformationJobObject(job, JobObjectExtendedLimitInformation, &li, sizeof(li)) ||
	    !AssignProcessToJobObject(job, proc)) {
		snprintf(why, cap, "cannot put the process into a job object: %s",
		         tether_win_strerror(GetLastError()));
		r = TETHER_ERR_IO;
		goto out;
	}
	pthread_mutex_lock(&lock);
	for (i = 0; i < TREES_MAX; i++)
		if (!trees[i].job) {
			trees[i].pid = pid;
			trees[i].job = job;
			job = NULL;
			break;
		}
	pthread_mutex_unlock(&lock);
	if (job) {
		snprintf(why, cap, "more than %d scripts at once", TREES_MAX);
		r = TETHER_ERR_IO;
	}
out:
	if (job)
		CloseHandle(job);
	CloseHandle(proc);
	return r;
}

static HANDLE find_locked(long pid, int *idx)
{
	int i;
	for (i = 0; i < TREES_MAX; i++)
		if (trees[i].job && trees[i].pid == pid) {
			if (idx)
				*idx = i;
			return trees[i].job;
		}
	return NULL;
}

void proctree_kill(long pid)
{
	HANDLE job, proc;

	pthread_mutex_lock(&lock);
	job = find_locked(pid, NULL);
	if (job)
		TerminateJobObject(job, 1);
	pthread_mutex_unlock(&lock);
	if (job)
		return;
	proc = OpenProcess(PROCESS_TERMINATE, FALSE, (DWORD)pid);
	if (proc) {
		TerminateProcess(proc, 1);
		CloseHandle(proc);
	}
}

int proctree_alive(long pid)
{
	JOBOBJECT_BASIC_ACCOUNTING_INFORMATION ai;
	HANDLE job, proc;
	DWORD code = 0;
	int alive = 0;

	pthread_mutex_lock(&lock);
	job = find_locked(pid, NULL);
	if (job && QueryInformationJobObject(job, JobObjectBasicAccountingInformation, &ai, sizeof(ai), NULL))
		alive = ai.ActiveProcesses > 0;
	pthread_mutex_unlock(&lock);
	if (job)
		return alive;
	proc = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
	if (!proc)
		return 0;
	alive = GetExitCodeProcess(proc, &code) && code == STILL_ACTIVE;
	CloseHandle(proc);
	return alive;
}

void proctree_release(long pid)
{
	HANDLE job;
	int i = -1;

	pthread_mutex_lock(&lock);
	job = find_locked(pid, &i);
	if (job) {
		trees[i].job = NULL;
		trees[i].pid = 0;
	}
	pthread_mutex_unlock(&lock);
	if (job)
		CloseHandle(job); /* KILL_ON_JOB_CLOSE: what is left of the tree ends */
}
#endif /* _WIN32 */
