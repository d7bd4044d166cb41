#!/bin/bash
# The token's user PIN never leaves its file: with debug logging on
# (TETHER_DEBUG=all, [log] level = debug, [log] file), the agent and the
# server, both with their keys on a SoftHSM2 token, go through
# new-certificate, health, exec, upload, download, doctor and a wrong PIN;
# then no log file, audit log, command output (stdout and stderr) or file
# in either state directory holds the PIN, as text or hex.  Tether never
# writes a PIN file itself (the operator makes it): it warns when the file
# can be read by others, and leaves the file as it was.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/p11lib.sh"
export TETHER_DEBUG=all
# A PIN of its own, long and distinctive enough that a match is a leak.
PIN="Pq7Zr$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')Kw"
PINHEX=$(printf '%s' "$PIN" | od -An -tx1 | tr -d ' \n')
BADPIN="Bx4Ng$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')Jm"
PLABEL="$LABEL-pin"
softhsm2-util --init-token --free --label "$PLABEL" --pin "$PIN" --so-pin 87654321 >/dev/null
ok $? "a second SoftHSM2 token with a distinctive PIN"
install -m 600 /dev/null "$TMP/the.pin"
printf '%s\n' "$PIN" > "$TMP/the.pin"
PP=(--provider pkcs11 --pkcs11-module softhsm2 --pkcs11-token "pkcs11:token=$PLABEL" --pkcs11-pin-file "$TMP/the.pin")
OUT="$TMP/outputs"
mkdir -p "$OUT"
n=0
# cmd DESC PROGRAM ARGS...: run, keep stdout and stderr, expect exit 0
cmd() {
	local d=$1 r
	shift
	n=$((n + 1))
	"$@" >"$OUT/$n.out" 2>"$OUT/$n.err"
	r=$?
	ok $r "$d"
	[ $r -eq 0 ] || sed 's/^/# /' "$OUT/$n.out" "$OUT/$n.err"
}

H="$TMP/home"
A=(--home "$H")
SPORT=$(free_port); APORT=$(free_port)
mkdir -p "$TMP/root"
cmd "server create-instance" "$SERVER" create-instance "${A[@]}"
cmd "agent create-instance" "$AGENT" create-instance "${A[@]}"
cmd "server configure for pkcs11" "$SERVER" configure "${A[@]}" "${PP[@]}"
cmd "agent configure for pkcs11" "$AGENT" configure "${A[@]}" "${PP[@]}"
for side in agent server; do
	printf '\n[log]\nlevel = debug\nfile = %s\n' "$H/$side-default/$side.log" >> "$H/$side-default/$side.ini"
done
cmd "server new-certificate on the token" "$SERVER" new-certificate "${A[@]}"
cmd "agent new-certificate on the token" "$AGENT" new-certificate "${A[@]}"
AT=$("$AGENT" show-thumbprint "${A[@]}" 2>>"$OUT/thumb.err" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" 2>>"$OUT/thumb.err" | head -1)
cmd "agent export-certificate --export-pem" "$AGENT" export-certificate "${A[@]}" --export-pem "$TMP/agent.pem"
printf '\n[polling]\naddress = 127.0.0.1:%s\n' "$SPORT" >> "$H/server-default/server.ini"
printf '\n[files]\nroots = %s\n' "$TMP/root" >> "$H/agent-default/agent.ini"
cmd "agent trusts the server" "$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT

bg "$AGENT" run "${A[@]}" >"$OUT/agentd.out" 2>"$OUT/agentd.err"
APID=$LAST_PID
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
bg "$SERVER" run "${A[@]}" >"$OUT/serverd.out" 2>"$OUT/serverd.err"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
ok $? "both daemons (keys on the token, debug logging) started"
cmd "target add" "$SERVER" target add "${A[@]}" t1 --listening 127.0.0.1:$APORT --thumbprint "$AT"
cmd "health" "$SERVER" health "${A[@]}" t1 --json
is "$(p11_json "$OUT/$n.out" 'd[0]["state"]')" healthy "healthy (both keys on the token)"
cmd "exec" "$SERVER" exec "${A[@]}" t1 -- echo hello
like "$OUT/$n.out" "^hello$" "exec ran"
head -c 65536 /dev/urandom > "$TMP/blob"
cmd "upload" "$SERVER" upload "${A[@]}" t1 "$TMP/blob" blob
cmp -s "$TMP/blob" "$TMP/root/blob"; ok $? "uploaded file arrived intact"
cmd "download" "$SERVER" download "${A[@]}" t1 blob "$TMP/back"
cmd "server doctor" "$SERVER" doctor "${A[@]}"
"$AGENT" doctor "${A[@]}" >"$OUT/adoctor.out" 2>"$OUT/adoctor.err"
like "$OUT/adoctor.out" "identity" "agent doctor ran"
kill -TERM $APID $SPID
wait $APID; ra=$?
wait $SPID; rs=$?
is "$ra:$rs" "0:0" "both daemons exit 0 on SIGTERM"

# Debug logging was really on, and the daemons really used the token.
like "$OUT/agentd.err" "debug\(prov\): pkcs11 provider" "the agent logged at debug level (TETHER_DEBUG)"
like "$OUT/serverd.err" "debug\(tls\): " "the server logged TLS debug lines"
like "$H/agent-default/agent.log" "info: " "the agent wrote its [log] file (debug areas go to stderr only)"
like "$H/server-default/server.log" "info: " "the server wrote its [log] file"
like "$OUT/serverd.err" "token '$PLABEL'" "the server's log names the token"
[ -s "$H/server-default/state/audit.log" ]; ok $? "the server wrote its audit log"

# A wrong PIN: refused, naming the file, never echoing what it read.
install -m 600 /dev/null "$TMP/bad.pin"
printf '%s\n' "$BADPIN" > "$TMP/bad.pin"
cp -r "$H" "$TMP/hbad"
"$AGENT" configure --home "$TMP/hbad" --pkcs11-pin-file "$TMP/bad.pin" >"$OUT/bad0.out" 2>"$OUT/bad0.err"
"$AGENT" show-thumbprint --home "$TMP/hbad" >"$OUT/bad.out" 2>"$OUT/bad.err"
is "$?" 1 "a wrong PIN is refused"
like "$OUT/bad.err" "wrong PIN for token '$PLABEL' \(from $TMP/bad.pin\)" "the error names the token and the PIN file"

# A PIN file others can read: a warning, and tether leaves the file alone.
chmod 644 "$TMP/the.pin"
"$AGENT" show-thumbprint "${A[@]}" >"$OUT/loose.out" 2>"$OUT/loose.err"
like "$OUT/loose.err" "the token PIN file $TMP/the.pin can be read by other users \(mode 644\): chmod 600 it" \
	"a PIN file readable by others is warned about"
is "$(stat -c %a "$TMP/the.pin")" 644 "tether does not change the PIN file's mode"
is "$(cat "$TMP/the.pin")" "$PIN" "tether does not change the PIN file"
chmod 600 "$TMP/the.pin"

# Everything tether wrote or printed: logs, audit log, state, outputs.
find "$H" "$TMP/hbad" "$OUT" -type f > "$TMP/files"
nf=$(wc -l < "$TMP/files")
[ "$nf" -ge 30 ]; ok $? "$nf files to search (outputs, logs, audit log, state)"
like "$TMP/files" "/state/audit.log$" "the audit log is among them"
like "$TMP/files" "/agent.log$" "the agent's log file is among them"
like "$TMP/files" "/state/pkcs11-slots$" "the slot map is among them"
# A canary holding the PIN, to show the search finds it where it is.
printf 'x%sx\n' "$PIN" > "$TMP/canary"
echo "$TMP/canary" >> "$TMP/files"
tr '\n' '\0' < "$TMP/files" | xargs -0 grep -lF -- "$PIN" > "$TMP/leaks"
is "$(cat "$TMP/leaks")" "$TMP/canary" "the PIN appears in none of them (only in the canary)"
tr '\n' '\0' < "$TMP/files" | xargs -0 grep -liF -- "$PINHEX" > "$TMP/leaks"
is "$(cat "$TMP/leaks")" "" "nor its hex encoding"
tr '\n' '\0' < "$TMP/files" | xargs -0 grep -lF -- "$BADPIN" > "$TMP/leaks"
is "$(cat "$TMP/leaks")" "" "nor the wrong PIN"
done_testing
