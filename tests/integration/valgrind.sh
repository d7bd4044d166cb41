#!/bin/bash
# Both daemons under valgrind (memcheck, full leak check) through the flows
# of listening.sh, polling.sh, exec.sh and transfer.sh: health, exec with
# exact output and exit code, run-script, task logs, upload and download
# with SHA-256, a malformed frame, an untrusted client, then SIGTERM; and
# one exec of the tether-server front.  Each daemon must exit 0 (valgrind
# exits 99 on any error or leak).
# Not in 'make check' (a few minutes); run it by hand on a plain build
# (not --enable-sanitizers), see docs/HARDENING.md:
#   cd build && TOP_BUILDDIR=$PWD TOP_SRCDIR=.. bash ../tests/integration/valgrind.sh
. "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || skip_all "valgrind is not installed (Debian package valgrind)"
sanitized && skip_all "a sanitizer build: valgrind needs the plain build"
PEER="python3 $TOP_SRCDIR/tests/integration/peer.py"
VG=("$TOP_BUILDDIR/libtool" --mode=execute valgrind --error-exitcode=99 --leak-check=full
    --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect
    --track-fds=no --num-callers=30)
H="$TMP/home"
A=(--home "$H")
APORT=$(free_port)
SPORT=$(free_port)
"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" --key-type ec-p256 >/dev/null
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" --key-type ec-p256 >/dev/null
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
echo pw >"$TMP/pw"
"$SERVER" export-certificate "${A[@]}" --export-pfx "$TMP/srv.pfx" --pfx-password-file "$TMP/pw" >/dev/null
openssl pkcs12 -in "$TMP/srv.pfx" -passin pass:pw -nodes -out "$TMP/srv.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/o.key" \
	-out "$TMP/o.crt" -subj /CN=other -days 2 2>/dev/null
printf '[polling]\naddress = 127.0.0.1:%s\nwait = 60\n' "$SPORT" >>"$H/server-default/server.ini"
"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
# a second agent, polling
H2="$TMP/home2"
"$AGENT" create-instance --home "$H2" >/dev/null
"$AGENT" new-certificate --home "$H2" --key-type ec-p256 >/dev/null
PT=$("$AGENT" show-thumbprint --home "$H2" | head -1)
"$AGENT" configure --home "$H2" --trust "$ST" --mode polling --server 127.0.0.1:$SPORT >/dev/null

bg "${VG[@]}" --log-file="$TMP/vg-agent.log" "$TOP_BUILDDIR/tether-agent" run "${A[@]}" 2>"$TMP/agent.log"
VA=$LAST_PID
bg "${VG[@]}" --log-file="$TMP/vg-agent2.log" "$TOP_BUILDDIR/tether-agent" run --home "$H2" 2>"$TMP/agent2.log"
VA2=$LAST_PID
# the whole program: the tether-server front would exec it, and valgrind
# does not follow an exec
bg "${VG[@]}" --log-file="$TMP/vg-server.log" "$TOP_BUILDDIR/server/tether-server" run "${A[@]}" 2>"$TMP/server.log"
VS=$LAST_PID
for i in $(seq 1 300); do [ -S "$H/server-default/run/admin.sock" ] && break; sleep 0.2; done
"$SERVER" target add "${A[@]}" web1 --listening 127.0.0.1:$APORT --thumbprint "$AT" >/dev/null
"$SERVER" target add "${A[@]}" pol1 --polling --thumbprint "$PT" >/dev/null
for i in $(seq 1 150); do "$SERVER" health "${A[@]}" web1 pol1 >/dev/null 2>&1 && break; sleep 0.4; done
run_ok "health of both targets (listening and polling)" "$SERVER" health "${A[@]}" web1 pol1
for t in web1 pol1; do
	"$SERVER" exec "${A[@]}" $t -- sh -c 'seq 1 2000; echo err >&2; exit 6' >"$TMP/o" 2>"$TMP/e"; r=$?
	is "$r" 6 "$t: exec exit code"
	seq 1 2000 | cmp -s - "$TMP/o"; ok $? "$t: exec output exact"
	printf 'echo script; exit 2\n' >"$TMP/s.sh"
	"$SERVER" run-script "${A[@]}" $t "$TMP/s.sh" >/dev/null 2>&1; is "$?" 2 "$t: run-script exit code"
	head -c 3000000 /dev/urandom >"$TMP/up.bin"
	run_ok "$t: upload 3 MB" "$SERVER" upload "${A[@]}" $t "$TMP/up.bin" vg.bin
	run_ok "$t: download it back" "$SERVER" download "${A[@]}" $t vg.bin "$TMP/down-$t.bin"
	cmp -s "$TMP/up.bin" "$TMP/down-$t.bin"; ok $? "$t: identical"
done
# the front's own verbs (exec, task) under valgrind too
"${VG[@]}" --log-file="$TMP/vg-front.log" "$SERVER" exec "${A[@]}" web1 -- sh -c 'echo out; exit 3' >"$TMP/o" 2>/dev/null
is "$?" 3 "exec under valgrind: the command's exit code, no valgrind error"
is "$(cat "$TMP/o")" "out" "exec under valgrind: its output"
id=$("$SERVER" task list "${A[@]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
run_ok "task logs" "$SERVER" task logs "${A[@]}" "$id"
$PEER raw 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" 0100000000000000ffffffff >/dev/null 2>&1
echo | timeout 20 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/o.crt" -key "$TMP/o.key" >/dev/null 2>&1
run_ok "health after a malformed frame and an untrusted client" "$SERVER" health "${A[@]}" web1
for p in $VS $VA $VA2; do kill -TERM $p; done
wait $VS; is "$?" 0 "server under valgrind: exit 0 (no error, no leak)"
wait $VA; is "$?" 0 "listening agent under valgrind: exit 0 (no error, no leak)"
wait $VA2; is "$?" 0 "polling agent under valgrind: exit 0 (no error, no leak)"
for f in vg-server vg-agent vg-agent2 vg-front; do
	echo "# $f: $(grep -E 'ERROR SUMMARY|definitely lost|indirectly lost' "$TMP/$f.log" | sed 's/==[0-9]*== //' | tr '\n' ' ')"
	# each error or loss record, with its frames in tether's own code
	grep -q "ERROR SUMMARY: 0 errors" "$TMP/$f.log" ||
		grep -E "definitely lost in|indirectly lost in|Invalid|uninitialised|by 0x[0-9A-F]+: [a-z_]+ \((core|agent|server|cli|providers)?/?[a-z_0-9]+\.c" "$TMP/$f.log" |
		grep -E "lost in|Invalid|uninit|\.c:" | sed 's/==[0-9]*== */#   /' | head -150
done
done_testing
