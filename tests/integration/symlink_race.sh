#!/bin/bash
# Symbolic links swapped in while files move (docs/HARDENING.md, issue 10):
# a real tether-server and a listening tether-agent on loopback with one
# file root; while uploads and downloads run, a racing script swaps, with
# renameat2(RENAME_EXCHANGE), a directory on the way and the files at the
# end for symbolic links to a directory outside the root, thousands of
# times a second.  Nothing may be written to or read from outside: every
# transfer either works inside the root or fails with a clear error, and
# the agent keeps serving.  Run twice: with openat2(RESOLVE_BENEATH) and
# with the component walk that older kernels get (openat2 answered ENOSYS
# by the no_openat2 shim, LD_PRELOADed into the agent).
. "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null || skip_all "python3 is needed for the racing script"
python3 -c 'import ctypes; ctypes.CDLL(None).renameat2' 2>/dev/null ||
	skip_all "the C library has no renameat2 (glibc >= 2.28 does)"
ok() {
	local d="$2"
	[ -n "${MODE:-}" ] && d="$MODE: $d"
	_n=$((_n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $_n - $d"; else echo "not ok $_n - $d"; _failed=$((_failed + 1)); fi
}
N=${RACE_TRANSFERS:-24}          # uploads, and as many downloads, per mode
SHIM="$TOP_BUILDDIR/tests/integration/.libs/no-openat2.so"
[ -e "$SHIM" ] || make -C "$TOP_BUILDDIR" tests/integration/no-openat2.la >/dev/null 2>&1

H="$TMP/home"; A=(--home "$H")
AH="$TMP/agent"; AA=(--home "$AH")
R="$TMP/root"; OUT="$TMP/outside"
mkdir -p "$R/d" "$OUT"
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
bg "$SERVER" run "${A[@]}" 2>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
ok $? "server daemon started"
"$AGENT" create-instance "${AA[@]}" >/dev/null
"$AGENT" new-certificate "${AA[@]}" >/dev/null
AT=$("$AGENT" show-thumbprint "${AA[@]}" | head -1)
APORT=$(free_port)
"$AGENT" configure "${AA[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
printf '\n[files]\nroots = %s\n' "$R" >> "$AH/agent-default/agent.ini"
run_ok "target add" "$SERVER" target add "${A[@]}" t --listening 127.0.0.1:$APORT --thumbprint "$AT"
ALOG="$TMP/agent.log"
start_agent() { # start_agent [ENV=VALUE...]
	bg env "$@" "$AGENT" run "${AA[@]}" 2>>"$ALOG"
	APID=$LAST_PID
	wait_for python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' $APORT
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

# Inside the root: d/big.bin and f.bin to download, g.bin to upload over.
# Outside: a file of the same name as each, which must never be read or
# written.  The links: d.swap -> outside (a directory on the way),
# f.swap -> outside/secret.bin and g.swap -> outside/victim.bin (the
# last name), one absolute and one relative.
head -c 4M /dev/urandom > "$R/d/big.bin"
head -c 1M /dev/urandom > "$R/f.bin"
echo "inside g" > "$R/g.bin"
head -c 4M /dev/urandom > "$TMP/payload"
{ echo "SECRET outside the root"; head -c 1M /dev/urandom; } > "$OUT/big.bin"
{ echo "SECRET outside the root, too"; head -c 1M /dev/urandom; } > "$OUT/secret.bin"
echo "outside: never to be overwritten" > "$OUT/victim.bin"
ln -s "$OUT" "$R/d.swap"
ln -s ../outside/secret.bin "$R/f.swap"
ln -s "$OUT/victim.bin" "$R/g.swap"
BIGSHA=$(sha "$R/d/big.bin"); FSHA=$(sha "$R/f.bin"); PSHA=$(sha "$TMP/payload")
SECRETS="$(sha "$OUT/big.bin")|$(sha "$OUT/secret.bin")|$(sha "$OUT/victim.bin")"
OUTSNAP=$(snapshot "$OUT"); OUTLIST=$(ls -lA --time-style=+ "$OUT")

# The racer: swaps each pair of names with renameat2(RENAME_EXCHANGE) (so
# every name always exists, as either the real thing or the link) until
# SIGTERM, MAX swaps or SECONDS seconds, then swaps once more if that puts
# the real things back, and writes its count to COUNTFILE.
RACER='
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
max_n, max_s, countfile = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
pairs = [(a.encode(), b.encode()) for a, b in zip(sys.argv[4::2], sys.argv[5::2])]
def swap():
    for a, b in pairs:
        if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
            sys.exit("racer: renameat2 %s %s: %s" % (a, b, os.strerror(ctypes.get_errno())))
n, t0 = 0, time.monotonic()
open(countfile + ".started", "w").close()
while not stop and n < max_n and (n % 256 or time.monotonic() - t0 < max_s):
    swap()
    n += 1
if n % 2:
    swap()
    n += 1
with open(countfile, "w") as f:
    f.write("%d\n" % n)
'
CLEAR='leads out of its file root|changed while it was being opened'

race() {
	local W="$TMP/w-$MODE" i n rc bad up_ok=0 up_no=0 dl_ok=0 dl_no=0 got
	mkdir -p "$W"
	bg python3 -c "$RACER" 5000000 120 "$W/count" \
		"$R/d" "$R/d.swap" "$R/f.bin" "$R/f.swap" "$R/g.bin" "$R/g.swap"
	RPID=$LAST_PID
	wait_for test -e "$W/count.started"
	# Uploads: odd ones into d/ (a directory on the way), even ones over
	# g.bin (the last name); downloads: odd ones of d/big.bin, even ones
	# of f.bin.  Both loops at once, every command bounded by timeout.
	(for i in $(seq 1 $N); do
		if [ $((i % 2)) = 1 ]; then dst=d/up-$i.bin; else dst=g.bin; fi
		timeout 60 "$SERVER" upload "${A[@]}" t "$TMP/payload" $dst >"$W/up-$i.out" 2>"$W/up-$i.err"
		echo $? > "$W/up-$i.rc"
	done) &
	local UPL=$!
	(for i in $(seq 1 $N); do
		if [ $((i % 2)) = 1 ]; then src=d/big.bin; else src=f.bin; fi
		timeout 60 "$SERVER" download "${A[@]}" t $src "$W/dl-$i" >"$W/dl-$i.out" 2>"$W/dl-$i.err"
		echo $? > "$W/dl-$i.rc"
	done) &
	local DNL=$!
	wait $UPL $DNL
	kill -TERM $RPID 2>/dev/null
	wait $RPID
	ok $? "the racing script ran and stopped cleanly"
	n=$(cat "$W/count" 2>/dev/null || echo 0)
	[ "$n" -ge 1000 ]; ok $? "it swapped the links in and out $n times during the transfers"
	test -d "$R/d" && ! test -L "$R/d" && test -L "$R/d.swap" && test -f "$R/f.bin" && ! test -L "$R/f.bin"
	ok $? "the racer put the real directory and files back"

	# Nothing outside was written: same files, same contents, no new names.
	is "$(snapshot "$OUT")" "$OUTSNAP" "the files outside the root are unchanged"
	is "$(ls -lA --time-style=+ "$OUT")" "$OUTLIST" "no file appeared outside the root (no upload, no temporary file)"

	# Nothing outside was read: every download is the inside file, or a
	# clear refusal.
	bad=0
	for i in $(seq 1 $N); do
		rc=$(cat "$W/dl-$i.rc")
		if [ "$rc" = 0 ]; then
			got=$(sha "$W/dl-$i")
			if [ $((i % 2)) = 1 ]; then want=$BIGSHA; else want=$FSHA; fi
			if [ "$got" = "$want" ]; then dl_ok=$((dl_ok + 1)); else
				bad=1; echo "# download $i: sha256 $got, want $want"; fi
		elif grep -qE "$CLEAR" "$W/dl-$i.err"; then
			dl_no=$((dl_no + 1)); test ! -e "$W/dl-$i" || { bad=1; echo "# download $i refused but wrote $W/dl-$i"; }
		else
			bad=1; echo "# download $i: exit $rc without a clear reason:"; sed 's/^/#   /' "$W/dl-$i.err"
		fi
	done
	ok $bad "each download got the file inside the root or a clear refusal ($dl_ok got it, $dl_no refused)"
	cat "$W"/dl-* 2>/dev/null | grep -q "SECRET outside the root"
	ok $((1 - $?)) "no download returned a byte of the files outside the root"

	# Every upload landed inside the root (in the real d/, or as g.bin or
	# g.swap) or was refused clearly.
	bad=0
	for i in $(seq 1 $N); do
		rc=$(cat "$W/up-$i.rc")
		if [ "$rc" = 0 ]; then
			up_ok=$((up_ok + 1))
			if [ $((i % 2)) = 1 ]; then
				[ "$(sha "$R/d/up-$i.bin" 2>/dev/null)" = "$PSHA" ] || {
					bad=1; echo "# upload $i succeeded but $R/d/up-$i.bin is not the payload"; }
			fi
		elif grep -qE "$CLEAR" "$W/up-$i.err"; then
			up_no=$((up_no + 1))
			[ $((i % 2)) = 0 ] || test ! -e "$R/d/up-$i.bin" || { bad=1; echo "# upload $i refused but written"; }
		else
			bad=1; echo "# upload $i: exit $rc without a clear reason:"; sed 's/^/#   /' "$W/up-$i.err"
		fi
	done
	ok $bad "each upload landed inside the root or was refused clearly ($up_ok landed, $up_no refused)"
	[ "$(sha "$R/g.bin")" = "$PSHA" ] || [ "$(sha "$R/g.swap")" = "$PSHA" ]
	ok $? "an upload over g.bin replaced the link or the file by the name, inside the root"
	find "$R" "$OUT" -name '.tether-upload-*' | grep -q .
	ok $((1 - $?)) "no temporary upload file is left anywhere"
	grep -q "SECRET" "$R"/d/up-*.bin 2>/dev/null
	ok $((1 - $?)) "nothing from outside ended up in the uploads"

	# The agent keeps serving.
	kill -0 $APID; ok $? "the agent is still running"
	run_ok "an upload afterwards works" "$SERVER" upload "${A[@]}" t "$TMP/payload" d/after.bin
	is "$(sha "$R/d/after.bin")" "$PSHA" "and arrives intact"
	run_ok "a download afterwards works" "$SERVER" download "${A[@]}" t d/big.bin "$W/after"
	is "$(sha "$W/after")" "$BIGSHA" "and is the file inside the root"
	# Leave the links as they were (the upload over g.bin replaced one).
	rm -f "$R"/d/up-*.bin "$R/d/after.bin" "$R/g.bin" "$R/g.swap"
	echo "inside g" > "$R/g.bin"; ln -s "$OUT/victim.bin" "$R/g.swap"
}

MODE=openat2
if python3 -c 'import ctypes,os,sys; l=ctypes.CDLL(None, use_errno=True); how=(ctypes.c_uint64*3)(os.O_RDONLY,0,0x08); r=l.syscall(437, -100, b".", how, 24); sys.exit(0 if r >= 0 else 1)'; then
	start_agent
	race
	kill $APID; wait $APID 2>/dev/null
else
	_n=$((_n + 1)); echo "ok $_n - openat2: the race # SKIP openat2 with RESOLVE_BENEATH is not available here (kernel < 5.6 or a seccomp filter); the walk below is what the agent uses"
fi

MODE=walk
if [ -e "$SHIM" ]; then
	asan=${ASAN_OPTIONS:-}
	sanitized && asan="${asan:+$asan:}verify_asan_link_order=0"
	start_agent LD_PRELOAD="$SHIM" TETHER_NO_OPENAT2_MARK="$TMP/openat2-refused" ${asan:+ASAN_OPTIONS=$asan}
	race
	test -e "$TMP/openat2-refused"; ok $? "openat2 was answered ENOSYS, so the agent used its walk"
	kill $APID; wait $APID 2>/dev/null
else
	_n=$((_n + 1)); echo "ok $_n - walk: the race # SKIP $SHIM was not built (make check builds it)"
fi
MODE=
kill -0 $SPID; ok $? "server still running"
if [ $_failed -ne 0 ]; then
	tail -30 "$TMP/server.log" | sed 's/^/# server log: /'
	tail -30 "$ALOG" | sed 's/^/# agent log: /'
fi
done_testing
