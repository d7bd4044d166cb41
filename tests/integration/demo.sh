#!/bin/bash
# The README's main job (scripts/demo, run by scripts/quickstart) against
# this build: it must keep working at every commit.
. "$(dirname "$0")/lib.sh"
TETHER_BUILD=$TOP_BUILDDIR timeout 120 "$TOP_SRCDIR/scripts/demo" >"$TMP/demo" 2>&1
r=$?
is "$r" 0 "scripts/demo exits 0"
[ $r -eq 0 ] || sed 's/^/# /' "$TMP/demo" | tail -30
like "$TMP/demo" "^agent  thumbprint: [0-9a-f]{64}$" "it prints the agent's thumbprint"
like "$TMP/demo" "^server thumbprint: [0-9a-f]{64}$" "and the server's"
like "$TMP/demo" "demo-agent .*healthy" "the agent is healthy"
like "$TMP/demo" "^hello from " "the command's output comes back"
like "$TMP/demo" "exit code relayed: 3" "and its exit code"
like "$TMP/demo" "^round trip identical: [0-9a-f]{64}$" "the file goes there and back identical"
done_testing
