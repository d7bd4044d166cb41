/* Process trees of the script service on Windows (agent/proctree_win.c).
 * Windows has no process groups: every process a script starts goes into
 * a job object made for it, and ending the script ends the job. */
#ifndef TETHER_PROCTREE_WIN_H
#define TETHER_PROCTREE_WIN_H
#ifdef _WIN32

/* Put process pid (just spawned) into a new job object that kills its
 * processes when closed.  0, or a negative TETHER_ERR_* (logged by the
 * caller; the script then runs without tree control). */
int proctree_track(long pid, char *why, size_t cap);
/* End every process of pid's job (or pid alone when it has none).
 * Windows has no SIGTERM for a process without a console: this is
 * immediate, whatever the signal asked for. */
void proctree_kill(long pid);
/* 1 while a process of pid's job (or pid) still runs. */
int proctree_alive(long pid);
/* Forget pid's job (its processes are ended if any remain). */
void proctree_release(long pid);

#endif
#endif
