/*
 * Confining paths that come from a remote peer to a set of root
 * directories ([files] roots on the agent).
 *
 * Two steps:
 *  1. tether_pathjail_resolve (pure text): picks the root and the path
 *     relative to it.  A relative path is under the first root; an absolute
 *     one must lie lexically inside one of the roots (the longest match
 *     wins).  ".." components, control characters, names over NAME_MAX and
 *     paths over TETHER_PATHJAIL_MAX bytes are refused.
 *  2. tether_pathjail_openat / _open_parent: check and open in ONE step,
 *     beneath the root's directory descriptor, so that a symbolic link
 *     swapped in by someone on the agent's machine cannot lead outside the
 *     root: openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, or on
 *     kernels without openat2 (ENOSYS) a component-by-component walk that
 *     emulates it: every component is opened O_PATH|O_NOFOLLOW relative to
 *     the directory descriptor held for the previous one, symbolic links
 *     are read from that descriptor (readlinkat "") and followed only while
 *     they stay inside the root (absolute targets and ".." above the root
 *     are refused, at most 40 links), ".." pops the walk's own stack of
 *     descriptors, never the kernel's "..".
 * Symbolic links that stay inside the root are followed either way.
 */
#ifndef TETHER_PATHJAIL_H
#define TETHER_PATHJAIL_H

#include <stddef.h>
#include <sys/types.h>
#include "tether/provider.h"

#define TETHER_PATHJAIL_MAX 4096

typedef struct tether_jailed_path {
	size_t root;                        /* index into the roots */
	char rel[TETHER_PATHJAIL_MAX];      /* "a/b/c": no "", ".", ".." components; "" = the root */
} tether_jailed_path;

/* Resolve path against roots (absolute directories, NULL-terminated).
 * Errors: INVALID (bad input, with the reason), PERMISSION (outside every
 * root; the message names the roots), NOT_FOUND (no roots). */
int tether_pathjail_resolve(const char *const *roots, const char *path,
                            tether_jailed_path *out, tether_error *err);

/* Open a root directory (O_RDONLY|O_DIRECTORY|O_CLOEXEC). */
int tether_pathjail_open_root(const char *root, int *out, tether_error *err);

/* Open rel (as from tether_pathjail_resolve) beneath rootfd with open(2)
 * flags and mode.  Errors: PERMISSION (the resolution would leave the
 * root), NOT_FOUND, EXISTS (O_EXCL), INVALID (not a directory on the way,
 * too many links, too long), IO. */
int tether_pathjail_openat(int rootfd, const char *rel, int flags, mode_t mode,
                           int *out, tether_error *err);

/* Open the directory holding rel's last component (O_RDONLY|O_DIRECTORY)
 * beneath rootfd; *base points to that last component inside rel.  rel must
 * not be "".  Work on the file with *at calls relative to *out (openat with
 * O_NOFOLLOW, renameat, unlinkat): they never resolve more than one name. */
int tether_pathjail_open_parent(int rootfd, const char *rel, int *out,
                                const char **base, tether_error *err);

#ifdef _WIN32
/* "X:\..." or "X:/...": a full path with a drive (core/pathjail_win.c). */
int tether_pathjail_is_absolute(const char *path);
#endif

/* For tests: 1 forces the component walk even where openat2 exists. */
void tether_pathjail_force_walk(int on);
/* For tests: called by the walk before each component is opened, so a
 * test can swap a directory for a symbolic link at that moment. */
void tether_pathjail_set_walk_hook(void (*hook)(void *arg, int dirfd, const char *name),
                                   void *arg);

#endif
