/* The audit log: every command an operator issues and every request an
 * agent serves, one JSON object per line, appended to a 0600 file:
 *   {"time":"2026-01-02T03:04:05Z","who":"uid=0(root)","what":"target.add",
 *    "target":"web1","result":"ok"}
 * and, for a failure, "result":"error" with "category" and "error" (the
 * message; bytes that are not UTF-8 are written as U+FFFD).  Whole lines
 * are written with write(2) on an O_APPEND file, so several processes may
 * share a log without interleaving lines.  Deferred (the agent), lines wait
 * in memory for tether_audit_flush, which the agent calls before the
 * answers they record are handed to the socket, and at most 64 KiB of them;
 * tether_audit_close flushes. */
#ifndef TETHER_AUDIT_H
#define TETHER_AUDIT_H

#include "tether/provider.h"

typedef struct tether_audit tether_audit;

/* Open (create 0600 if absent) path for appending.  An existing file that
 * is readable by others is narrowed to 0600. */
int tether_audit_open(const char *path, tether_audit **out, tether_error *err);
void tether_audit_close(tether_audit *a);
const char *tether_audit_path(const tether_audit *a);

/* Append one record.  who: "uid=0(root)" or a peer thumbprint; what: the
 * method or command; target may be NULL; result: "ok" or "error"; for an
 * error, category and message (may be NULL).  a may be NULL (no log). */
int tether_audit_write(tether_audit *a, const char *who, const char *what,
                       const char *target, const char *result,
                       const char *category, const char *message,
                       tether_error *err);

/* on: tether_audit_write only buffers (thread-safe); off (the default):
 * every line is written at once.  Turning it off flushes. */
void tether_audit_set_deferred(tether_audit *a, int on);
/* Write out the buffered lines.  a may be NULL. */
int tether_audit_flush(tether_audit *a, tether_error *err);

#endif
