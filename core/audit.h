/* The audit log: every command an operator issues and every request an
 * agent serves, one JSON object per line, appended to a 0600 file:
 *   {"time":"2026-01-02T03:04:05Z","who":"uid=0(root)","what":"target.add",
 *    "target":"web1","result":"ok"}
 * and, for a failure, "result":"error" with "category" and "error" (the
 * message).  Each line is written with one write(2) on an O_APPEND file, so
 * several processes may share a log without interleaving lines. */
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

#endif
