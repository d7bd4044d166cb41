#!/bin/bash
# Polling mode: agents connect out to the server and hold the connection;
# unregistered and cloned identities are refused; the agent retries with
# backoff until the server is up; polling through a real HTTP CONNECT proxy
# (tinyproxy) started by the test on loopback.
. "$(dirname "$0")/lib.sh"
H="$TMP/home"
A=(--home "$H")
SPORT=$(free_port)

"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" --key-type ec-p256 >/dev/null
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
printf '[polling]\naddress = 127.0.0.1:%s\nwait = 8\n' $SPORT >> "$H/server-default/server.ini"
run_ok "agent: polling mode, trust the server" "$AGENT" configure "${A[@]}" --mode polling --server 127.0.0.1:$SPORT --trust "$ST"
like "$H/agent-default/agent.ini" "^mode = polling" "config says mode = polling"
like "$H/agent-default/agent.ini" "^server = 127.0.0.1:$SPORT" "config lists the server"
run_exit 2 "bad --mode" "$AGENT" configure "${A[@]}" --mode sideways

# a second agent whose server never answers logs each retry's delay
# (checked at the end: the delays grow, within 1 s to 60 s)
BH="$TMP/bo"
"$AGENT" create-instance --home "$BH" >/dev/null
"$AGENT" new-certificate --home "$BH" --key-type ec-p256 >/dev/null
DEAD=$(free_port)
"$AGENT" configure --home "$BH" --mode polling --server 127.0.0.1:$DEAD --trust "$ST" >/dev/null
bg env TETHER_DEBUG=tls "$AGENT" run --home "$BH" 2>"$TMP/bo.log"
BPID=$LAST_PID

# the server is down when the agent starts: it keeps retrying with growing delays
bg env TETHER_DEBUG=tls "$AGENT" run "${A[@]}" 2>"$TMP/agent.log"
APID=$LAST_PID
sleep 4
n=$(grep -c "cannot connect to 127.0.0.1:$SPORT" "$TMP/agent.log")
[ "$n" -ge 2 ] && [ "$n" -le 4 ]; ok $? "agent retried with backoff while the server was down ($n attempts in 4 s)"
bg "$SERVER" run "${A[@]}" 2>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
wait_for grep -q "refused a polling agent" "$TMP/server.log"
ok $? "an unregistered agent is refused"
like "$TMP/server.log" "its certificate $AT is not registered; if it is yours, run 'tether-server target add NAME --polling --thumbprint $AT'" "the server log names the thumbprint and the command"
run_ok "target add --polling" "$SERVER" target add "${A[@]}" pa --polling --thumbprint "$AT"
wait_for grep -q "polling agent pa connected" "$TMP/server.log"
ok $? "the agent connects once it is registered (within its backoff)"
run_ok "health of the polling target" "$SERVER" health "${A[@]}" pa --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))[0]; assert d["state"]=="healthy" and d["peer_sha256"]==sys.argv[2], d' "$TMP/out" "$AT"
ok $? "healthy, and peer_sha256 is the agent's thumbprint"
like "$TMP/agent.log" "connected to server $ST" "agent log: connected to the server it trusts"

# a clone of the agent (same identity, another process) is refused
cp -a "$H/agent-default" "$TMP/clone-home-agent"
mkdir -p "$TMP/clone"; mv "$TMP/clone-home-agent" "$TMP/clone/agent-default"
bg "$AGENT" run --home "$TMP/clone" 2>"$TMP/clone.log"
CPID=$LAST_PID
wait_for grep -q "cloned identity" "$TMP/server.log"
ok $? "a second process with the same certificate is reported as a cloned identity"
like "$TMP/server.log" "refused .*cloned identity: certificate $AT is used by two agent processes" "log names the certificate and both instances"
run_ok "the original agent still answers" "$SERVER" health "${A[@]}" pa
kill $CPID; wait $CPID 2>/dev/null

# the server restarts: the agent reconnects by itself
kill $SPID; wait $SPID 2>/dev/null
bg env TETHER_DEBUG=rpc "$SERVER" run "${A[@]}" 2>"$TMP/server2.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
run_ok "health after a server restart (the agent reconnects)" "$SERVER" health "${A[@]}" pa

# [polling] connections = 2: the agent holds two connections, and a request
# goes to the least busy one, so it does not queue behind a long upload
kill $APID; wait $APID 2>/dev/null
run_ok "configure --polling-connections 2" "$AGENT" configure "${A[@]}" --polling-connections 2
like "$H/agent-default/agent.ini" "^connections = 2" "config says connections = 2"
mkdir -p "$TMP/root"
printf '\n[files]\nroots = %s\n' "$TMP/root" >> "$H/agent-default/agent.ini"
before=$(grep -c "polling agent pa connected" "$TMP/server2.log")
bg env TETHER_DEBUG=tls "$AGENT" run "${A[@]}" 2>>"$TMP/agent.log"
APID=$LAST_PID
for i in $(seq 1 100); do
	[ "$(grep -c "polling agent pa connected" "$TMP/server2.log")" -ge $((before + 2)) ] && break
	sleep 0.1
done
is "$(grep -c "polling agent pa connected" "$TMP/server2.log")" "$((before + 2))" "the server logs two connections of the agent"
is "$(ss -Htn state established "dport = :$SPORT" | wc -l)" 2 "ss: two established connections to the polling port"
truncate -s 1G "$TMP/big"
"$SERVER" upload "${A[@]}" pa "$TMP/big" big.bin >"$TMP/uout" 2>"$TMP/uerr" &
UP=$!
found=1
for i in $(seq 1 200); do
	if ls -A "$TMP/root" | grep -q '^\.tether-upload-'; then found=0; break; fi
	sleep 0.05
done
ok $found "the 1 GiB upload is running (its temporary file appeared)"
mark=$(wc -l < "$TMP/server2.log")
run_ok "health during the upload" "$SERVER" health "${A[@]}" pa
run_ok "exec during the upload" "$SERVER" exec "${A[@]}" pa -- echo during
is "$(cat "$TMP/out")" "during" "exec output"
kill -0 $UP 2>/dev/null; ok $? "the upload was still running when health and exec had answered"
tail -n +$((mark + 1)) "$TMP/server2.log" | grep "polling target pa: request on the connection" > "$TMP/picks"
[ -s "$TMP/picks" ] && ! grep -qv "(0 in flight; 2 connections open)" "$TMP/picks"
ok $? "health and exec went to the idle connection, not the one carrying the upload"
[ -s "$TMP/picks" ] || sed 's/^/# server: /' "$TMP/server2.log" | tail -20
grep -v "(0 in flight" "$TMP/picks" | sed 's/^/# pick: /'
wait $UP
r=$?; ok $r "the upload completes"
[ $r -eq 0 ] || sed 's/^/# upload: /' "$TMP/uerr"
is "$(stat -c %s "$TMP/root/big.bin" 2>/dev/null)" "$(stat -c %s "$TMP/big")" "and arrives whole"
rm -f "$TMP/big" "$TMP/root/big.bin"

# a polling target that drops out: a request waits [polling] wait, then
# fails saying since when it is not connected (RFC 3339 UTC, as documented)
mark=$(wc -l < "$TMP/server2.log")
t0=$(date -u +%s)
kill $APID; wait $APID 2>/dev/null
for i in $(seq 1 100); do
	[ "$(tail -n +$((mark + 1)) "$TMP/server2.log" | grep -c "polling agent pa (.*) disconnected")" -ge 2 ] && break
	sleep 0.1
done
t1=$(date -u +%s)
is "$(tail -n +$((mark + 1)) "$TMP/server2.log" | grep -c "polling agent pa (.*) disconnected")" 2 "the server logs both connections of the stopped agent as disconnected"
run_exit 1 "health of a polling target that dropped out" "$SERVER" health "${A[@]}" pa
like "$TMP/out" "polling target pa is not connected since [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z: check that the agent runs in polling mode" "says since when it is not connected, in RFC 3339 UTC"
since=$(grep -oE "not connected since [^ ]+Z" "$TMP/out" | head -1 | awk '{print $4}')
ts=$(date -u -d "$since" +%s 2>/dev/null || echo 0)
[ "$ts" -ge "$t0" ] && [ "$ts" -le "$t1" ]; ok $? "that time is when the agent stopped ($since)"
unlike "$TMP/out" "never connected" "and not that it never connected"
bg env TETHER_DEBUG=tls "$AGENT" run "${A[@]}" 2>>"$TMP/agent.log"
APID=$LAST_PID
wait_for "$SERVER" health "${A[@]}" pa
ok $? "the agent connects again"

# a polling target that is not connected: clear failure after [polling] wait
"$SERVER" target add "${A[@]}" ghost --polling --thumbprint $(printf '%064x' 7) >/dev/null
run_exit 1 "health of a target that never connected" "$SERVER" health "${A[@]}" ghost
like "$TMP/out" "never connected" "says it has never connected"

# a server the agent does not trust
"$AGENT" configure "${A[@]}" --remove-trust "$ST" >/dev/null
wait_for grep -q "trust in $ST was removed" "$TMP/agent.log"
ok $? "removing trust closes the polling connection at once"
sleep 1.5
like "$TMP/agent.log" "is not trusted here" "the agent refuses a server it no longer trusts"
"$AGENT" configure "${A[@]}" --trust "$ST" >/dev/null
kill $APID; wait $APID 2>/dev/null

# backoff: the base doubles from 1 s, each delay within +-25 % of it and
# within 1 s to 60 s; with the jitter the 4th delay is still above the 1st
for i in $(seq 1 150); do
	[ "$(grep -c "server 127.0.0.1:$DEAD: next attempt in" "$TMP/bo.log")" -ge 4 ] && break
	sleep 0.1
done
kill $BPID; wait $BPID 2>/dev/null
grep -oE "server 127.0.0.1:$DEAD: next attempt in [0-9]+ ms \(backoff [0-9]+ ms" "$TMP/bo.log" |
	awk '{print $6, $9}' > "$TMP/delays"
sed 's/^/# delay, base (ms): /' "$TMP/delays"
[ "$(wc -l < "$TMP/delays")" -ge 4 ]; ok $? "the agent logs each retry's delay ($(wc -l < "$TMP/delays") retries)"
awk 'NR <= 4 && $2 != 1000 * 2 ^ (NR - 1) { bad = 1 } END { exit bad || NR < 4 }' "$TMP/delays"
ok $? "the backoff base doubles: 1 s, 2 s, 4 s, 8 s"
awk '$1 < 1000 || $1 > 60000 || $1 < $2 * 0.75 || $1 > $2 * 1.25 { bad = 1 } END { exit bad || NR < 1 }' "$TMP/delays"
ok $? "every delay is within 25 % of its base and within 1 s to 60 s"
[ "$(sed -n 4p "$TMP/delays" | cut -d' ' -f1)" -gt "$(sed -n 1p "$TMP/delays" | cut -d' ' -f1)" ]
ok $? "the 4th delay is longer than the 1st"

# through an HTTP CONNECT proxy with basic auth
if command -v tinyproxy >/dev/null; then
	PPORT=$(free_port)
	cat > "$TMP/tinyproxy.conf" <<EOT
Port $PPORT
Listen 127.0.0.1
Timeout 600
MaxClients 20
LogFile "$TMP/tinyproxy.log"
LogLevel Connect
PidFile "$TMP/tinyproxy.pid"
Allow 127.0.0.1
ConnectPort $SPORT
BasicAuth tether s3cret
EOT
	bg tinyproxy -d -c "$TMP/tinyproxy.conf"
	wait_for grep -q "" "$TMP/tinyproxy.log"
	printf 'tether:s3cret\n' > "$TMP/proxy.cred"; chmod 600 "$TMP/proxy.cred"
	run_ok "configure --proxy" "$AGENT" configure "${A[@]}" --proxy http://127.0.0.1:$PPORT --proxy-credentials-file "$TMP/proxy.cred"
	bg "$AGENT" run "${A[@]}" 2>"$TMP/agent2.log"
	APID=$LAST_PID
	wait_for grep -q "polling agent pa connected" "$TMP/server2.log"
	run_ok "health through the proxy" "$SERVER" health "${A[@]}" pa
	like "$TMP/tinyproxy.log" "CONNECT.*127.0.0.1:$SPORT|127.0.0.1:$SPORT" "the proxy carried the connection"
	unlike "$TMP/tinyproxy.log" '"method"|health' "the proxy saw no plaintext"
	kill $APID; wait $APID 2>/dev/null
	printf 'tether:wrong\n' > "$TMP/proxy.cred"
	bg "$AGENT" run "${A[@]}" 2>"$TMP/agent3.log"
	APID=$LAST_PID
	wait_for grep -q "refused CONNECT" "$TMP/agent3.log"
	like "$TMP/agent3.log" "refused CONNECT to 127.0.0.1:$SPORT: HTTP/1.[01] 40[17].*proxy-credentials-file" "wrong proxy credentials: a clear message naming the credentials file"
	kill $APID; wait $APID 2>/dev/null
else
	pass "proxy test skipped: tinyproxy is not installed # SKIP"
fi
done_testing
