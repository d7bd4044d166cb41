#!/bin/bash
# File transfer end to end (listening mode, and polling mode when the
# server has it): tether-server upload/download against a real agent on
# loopback, SHA-256 checked against sha256sum, bounded memory on a 1 GiB
# transfer, kill -9 of the agent mid-upload, paths escaping the roots,
# [services] file = off.
. "$(dirname "$0")/lib.sh"
# lib.sh's ok, with the mode in front of each description
ok() {
	local d="$2"
	[ -n "${MODE:-}" ] && d="$MODE: $d"
	_n=$((_n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $_n - $d"; else echo "not ok $_n - $d"; _failed=$((_failed + 1)); fi
}
H="$TMP/home"
A=(--home "$H")
SPORT=$(free_port)
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
printf '[polling]\naddress = 127.0.0.1:%s\nwait = 15\n' $SPORT >> "$H/server-default/server.ini"
bg "$SERVER" run "${A[@]}" 2>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
ok $? "server daemon started"
sha() { sha256sum "$1" | cut -d' ' -f1; }
hwm() { awk '/^VmHWM/ {print $2}' /proc/$1/status; } # peak RSS, KiB
printf 'hello tether\n' > "$TMP/small"
: > "$TMP/empty"

# An agent in MODE (listening or polling) with its own home and roots, and
# a target T for it.
setup_agent() {
	MODE=$1
	AH="$TMP/$MODE"; AA=(--home "$AH")
	R1="$TMP/$MODE-root1"; R2="$TMP/$MODE-root2"; OUT="$TMP/$MODE-outside"
	mkdir -p "$R1/sub" "$R2" "$OUT"
	"$AGENT" create-instance "${AA[@]}" >/dev/null
	"$AGENT" new-certificate "${AA[@]}" >/dev/null
	AT=$("$AGENT" show-thumbprint "${AA[@]}" | head -1)
	ALOG="$TMP/agent-$MODE.log"
	if [ "$MODE" = listening ]; then
		APORT=$(free_port)
		"$AGENT" configure "${AA[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
		T=lt
		run_ok "target add" "$SERVER" target add "${A[@]}" $T --listening 127.0.0.1:$APORT --thumbprint "$AT"
	else
		"$AGENT" configure "${AA[@]}" --mode polling --server 127.0.0.1:$SPORT --trust "$ST" >/dev/null
		T=pt
		run_ok "target add" "$SERVER" target add "${A[@]}" $T --polling --thumbprint "$AT"
	fi
	printf '\n[files]\nroots = %s, %s\n' "$R1" "$R2" >> "$AH/agent-default/agent.ini"
}
start_agent() {
	local before
	before=$(grep -c "polling agent $T connected" "$TMP/server.log")
	bg "$AGENT" run "${AA[@]}" 2>>"$ALOG"
	APID=$LAST_PID
	if [ "$MODE" = listening ]; then
		wait_for python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' $APORT
	else
		local i
		for i in $(seq 1 100); do
			[ "$(grep -c "polling agent $T connected" "$TMP/server.log")" -gt "$before" ] && break
			sleep 0.1
		done
	fi
}

checks() {

# --- small files, both ways ---
run_ok "upload a small file (relative path: under the first root)" "$SERVER" upload "${A[@]}" $T "$TMP/small" sub/small.txt
is "$(sha "$R1/sub/small.txt")" "$(sha "$TMP/small")" "the file arrived intact"
like "$TMP/out" "^sha256 $(sha "$TMP/small")$" "upload prints the SHA-256"
like "$TMP/out" "uploaded .* to $T:$R1/sub/small.txt" "upload names the absolute destination"
is "$(stat -c %a "$R1/sub/small.txt")" "644" "a new file gets mode 0644"
run_ok "upload with --mode to an absolute path in the second root" "$SERVER" upload "${A[@]}" $T "$TMP/small" "$R2/x.sh" --mode 0750
is "$(stat -c %a "$R2/x.sh")" "750" "--mode applies"
run_ok "download it back" "$SERVER" download "${A[@]}" $T sub/small.txt "$TMP/back"
is "$(sha "$TMP/back")" "$(sha "$TMP/small")" "downloaded file matches"
like "$TMP/out" "^sha256 $(sha "$TMP/small")$" "download prints the SHA-256"
mkdir -p "$TMP/dl"
run_ok "download into a directory keeps the name" "$SERVER" download "${A[@]}" $T "$R2/x.sh" "$TMP/dl"
test -f "$TMP/dl/x.sh"; ok $? "the file is LOCAL/basename"
run_ok "an empty file" "$SERVER" upload "${A[@]}" $T "$TMP/empty" empty
test -f "$R1/empty" && ! test -s "$R1/empty"; ok $? "empty file created"
run_exit 1 "--no-overwrite refuses an existing destination" "$SERVER" upload "${A[@]}" $T "$TMP/empty" sub/small.txt --no-overwrite
like "$TMP/err" "exists" "and says it exists"
is "$(sha "$R1/sub/small.txt")" "$(sha "$TMP/small")" "the destination is unchanged"
run_exit 1 "download of a missing file fails" "$SERVER" download "${A[@]}" $T nope "$TMP/nope"
like "$TMP/err" "does not exist" "and says so"
test ! -e "$TMP/nope"; ok $? "nothing was created locally"
ls -A "$TMP" | grep -q '^.tether-download-'; ok $((1 - $?)) "no temporary file left beside LOCAL"

# --- paths escaping the roots ---
ln -s "$OUT" "$R1/out"
ln -s /etc/passwd "$R1/passwd"
echo original > "$OUT/victim"
run_exit 1 "upload to ../ is refused" "$SERVER" upload "${A[@]}" $T "$TMP/small" ../outside/victim
like "$TMP/err" "contains '\.\.'" "the error names '..'"
run_exit 1 "upload to an absolute path outside the roots is refused" "$SERVER" upload "${A[@]}" $T "$TMP/small" "$OUT/victim"
like "$TMP/err" "outside the file roots of this agent \($R1, $R2\)" "the error names the roots"
run_exit 1 "upload through a symlink out of the root is refused" "$SERVER" upload "${A[@]}" $T "$TMP/small" out/victim
like "$TMP/err" "leads out of its file root" "the error says the path leads out of the root"
is "$(cat "$OUT/victim")" "original" "the file outside is untouched"
run_exit 1 "download through a symlink to /etc/passwd is refused" "$SERVER" download "${A[@]}" $T passwd "$TMP/pw"
like "$TMP/err" "leads out of its file root" "with a clear error"
test ! -e "$TMP/pw"; ok $? "nothing downloaded"
run_exit 1 "download of /etc/passwd is refused" "$SERVER" download "${A[@]}" $T /etc/passwd "$TMP/pw"
like "$TMP/err" "outside the file roots" "with a clear error"
ls -A "$OUT" | grep -q tether; ok $((1 - $?)) "no temporary file was made outside the roots"

# --- 1 GiB each way, bounded memory ---
need=$((3 * 1024 * 1024 + 65536)) # KiB: source, agent copy, download copy
avail=$(df -Pk "$TMP" | awk 'NR==2 {print $4}')
if [ "$avail" -lt "$need" ]; then
	for d in "1 GiB upload" "1 GiB download" "memory bounds"; do
		_n=$((_n + 1)); echo "ok $_n - $MODE: $d # SKIP $((avail / 1024)) MiB free in $TMP, $((need / 1024)) MiB needed"
	done
else
	head -c 1G /dev/urandom > "$TMP/big"
	BIGSHA=$(sha "$TMP/big")
	a0=$(hwm $APID); s0=$(hwm $SPID)
	t0=$(date +%s.%N)
	run_ok "upload 1 GiB" "$SERVER" upload "${A[@]}" $T "$TMP/big" big.bin
	t1=$(date +%s.%N)
	is "$(sha "$R1/big.bin")" "$BIGSHA" "1 GiB upload: sha256sum matches"
	like "$TMP/out" "^sha256 $BIGSHA$" "1 GiB upload: printed SHA-256 matches sha256sum"
	run_ok "download 1 GiB" "$SERVER" download "${A[@]}" $T big.bin "$TMP/big.back"
	t2=$(date +%s.%N)
	is "$(sha "$TMP/big.back")" "$BIGSHA" "1 GiB download: sha256sum matches"
	a1=$(hwm $APID); s1=$(hwm $SPID)
	rates=$(python3 -c "import sys; a,b,c=map(float,sys.argv[1:]); print('upload %.0f MB/s, download %.0f MB/s' % (1073.741824/(b-a), 1073.741824/(c-b)))" $t0 $t1 $t2)
	echo "# $MODE, 1 GiB: $rates; peak RSS (VmHWM) agent ${a0} -> ${a1} KiB, server ${s0} -> ${s1} KiB"
	if sanitized; then
		pass "peak RSS not judged: AddressSanitizer build (shadow memory and quarantine) # SKIP sanitizers"
	else
		[ "$a1" -lt 65536 ] && [ "$s1" -lt 65536 ]; ok $? "peak RSS stays under 64 MiB on both sides (agent ${a1} KiB, server ${s1} KiB)"
	fi
	rm -f "$TMP/big.back" "$R1/big.bin"
fi

# --- kill -9 of the agent in the middle of an upload ---
echo "precious" > "$R1/dest"
DSHA=$(sha "$R1/dest")
if [ ! -f "$TMP/big" ]; then head -c 256M /dev/urandom > "$TMP/big"; fi
"$SERVER" upload "${A[@]}" $T "$TMP/big" dest > "$TMP/kout" 2> "$TMP/kerr" &
UP=$!
found=1
for i in $(seq 1 100); do
	if ls -A "$R1" | grep -q '^\.tether-upload-'; then found=0; break; fi
	sleep 0.05
done
ok $found "a temporary .tether-upload- file appears beside the destination during the upload"
sleep 0.2
kill -9 $APID
wait $APID 2>/dev/null
wait $UP
ok $((1 - $?)) "the upload fails when the agent dies"
like "$TMP/kerr" "failed:" "the CLI says why"
is "$(sha "$R1/dest")" "$DSHA" "the destination is untouched"
start_agent
sleep 0.3
ls -A "$R1" | grep -q '^\.tether-upload-'; ok $((1 - $?)) "after the restart no .tether-upload- litter is left"
like "$ALOG" "removed .*\.tether-upload-.*partial upload of an earlier run" "the agent logs what it removed"
run_ok "uploads work again after the restart" "$SERVER" upload "${A[@]}" $T "$TMP/small" dest
is "$(sha "$R1/dest")" "$(sha "$TMP/small")" "and replace the destination"

# --- a refused download while an upload runs on the same connection ---
# (file.stat accepts a FIFO, file.download refuses it: the refusal comes as
# the RESPONSE, after which the server must not reset the stream, or the
# agent closes the connection and the upload with it)
mkfifo "$R1/fifo"
"$SERVER" upload "${A[@]}" $T "$TMP/big" big2.bin > "$TMP/uout" 2> "$TMP/uerr" &
UP=$!
for i in $(seq 1 100); do ls -A "$R1" | grep -q '^\.tether-upload-' && break; sleep 0.05; done
run_exit 1 "a download of a FIFO is refused while an upload runs" "$SERVER" download "${A[@]}" $T fifo "$TMP/fifo.out"
like "$TMP/err" "is not a regular file" "it says why"
wait $UP
r=$?; ok $r "the upload on the same connection completes all the same"
[ $r -eq 0 ] || sed 's/^/# upload: /' "$TMP/uerr"
is "$(sha "$R1/big2.bin")" "$(sha "$TMP/big")" "and arrives intact"
rm -f "$R1/fifo" "$R1/big2.bin"

# --- a full disk on the agent (a 2 MiB tmpfs as the second root, in a mount namespace) ---
if [ "$MODE" = listening ] && unshare -rm true 2>/dev/null; then
	kill $APID; wait $APID 2>/dev/null
	bg unshare -rm sh -c 'mount -t tmpfs -o size=2m tmpfs "$1" && shift && exec "$@"' sh "$R2" "$AGENT" run "${AA[@]}" 2>>"$ALOG"
	APID=$LAST_PID
	wait_for python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' $APORT
	head -c 4M /dev/urandom > "$TMP/4m"
	run_exit 1 "upload bigger than the agent's free space fails" "$SERVER" upload "${A[@]}" $T "$TMP/4m" "$R2/full.bin"
	like "$TMP/err" "not enough space on the agent|disk is full" "the error says the disk is full"
	ls -A /proc/$APID/root"$R2" > "$TMP/ls" 2>&1
	unlike "$TMP/ls" "full.bin|tether-upload" "no partial file and no temporary file on the full disk"
	run_ok "a small upload to the same disk still works" "$SERVER" upload "${A[@]}" $T "$TMP/small" "$R2/fits"
	kill $APID; wait $APID 2>/dev/null
	start_agent
else
	_n=$((_n + 1)); echo "ok $_n - $MODE: full disk # SKIP listening mode only, and needs unshare -rm (user and mount namespaces)"
fi

# --- [services] file = off ---
kill $APID; wait $APID 2>/dev/null
printf '\n[services]\nfile = off\n' >> "$AH/agent-default/agent.ini"
start_agent
sleep 0.3
run_exit 1 "upload to an agent with file = off is refused" "$SERVER" upload "${A[@]}" $T "$TMP/small" off.txt
like "$TMP/err" "file transfer is turned off on this agent.*file = on" "the error says how to enable it"
test ! -e "$R1/off.txt"; ok $? "nothing was written"
run_exit 1 "download from it is refused too" "$SERVER" download "${A[@]}" $T dest "$TMP/off"
like "$TMP/err" "turned off" "with the same reason"
kill -0 $APID; ok $? "$MODE: agent still running"
kill $APID; wait $APID 2>/dev/null
}

setup_agent listening
start_agent
checks
setup_agent polling
start_agent
checks
kill -0 $SPID; ok $? "server still running"
if [ $_failed -ne 0 ]; then
	tail -40 "$TMP/server.log" | sed 's/^/# server log: /'
	for m in listening polling; do tail -30 "$TMP/agent-$m.log" 2>/dev/null | sed "s/^/# $m agent log: /"; done
fi
done_testing
