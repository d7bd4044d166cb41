#!/bin/bash
# Listening mode end to end: a real agent and server daemon on loopback,
# checked against openssl s_client, curl and Python's ssl module.
. "$(dirname "$0")/lib.sh"
PEER="python3 $TOP_SRCDIR/tests/integration/peer.py"
H="$TMP/home"
A=(--home "$H")
APORT=$(free_port)
printf 'pw\n' > "$TMP/pw"

"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" >/dev/null
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
"$SERVER" export-certificate "${A[@]}" --export-pfx "$TMP/srv.pfx" --pfx-password-file "$TMP/pw" >/dev/null
openssl pkcs12 -in "$TMP/srv.pfx" -passin pass:pw -nodes -out "$TMP/srv.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/other.key" -out "$TMP/other.crt" -subj /CN=other -days 2 2>/dev/null
run_ok "agent trusts the server" "$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT
printf '[timeouts]\nhandshake = 2\n' >> "$H/agent-default/agent.ini"
printf '[polling]\naddress = 127.0.0.1:%s\n' "$(free_port)" >> "$H/server-default/server.ini"

bg env TETHER_DEBUG=tls "$AGENT" run "${A[@]}" 2>"$TMP/agent.log"
APID=$LAST_PID
wait_for "$PEER" raw 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" 00 >/dev/null 2>&1
sleep 0.3
bg "$SERVER" run "${A[@]}" 2>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
ok $? "server daemon started (admin socket present)"

run_ok "target add" "$SERVER" target add "${A[@]}" web1 --listening 127.0.0.1:$APORT --thumbprint "$AT" --tag web
run_ok "health web1" "$SERVER" health "${A[@]}" web1
like "$TMP/out" "web1 +healthy" "health table says healthy"
run_ok "health --all --json" "$SERVER" health "${A[@]}" --all --json
cp "$TMP/out" "$TMP/h.json"
jq() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$TMP/h.json" "$1"; }
is "$(jq 'd[0]["state"]')" "healthy" "JSON state healthy"
is "$(jq 'd[0]["peer_sha256"]')" "$AT" "JSON peer_sha256 is the agent's thumbprint"
is "$(jq 'd[0]["cert_signature_algorithm"]')" "sha256WithRSAEncryption" "JSON cert_signature_algorithm"
is "$(jq 'd[0]["tls_version"]')" "TLSv1.3" "JSON tls_version TLSv1.3"
is "$(jq '"category" in d[0]')" "False" "no category when healthy"
is "$(jq 'isinstance(d[0]["rtt_ms"], int)')" "True" "rtt_ms is a number"
echo | openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" > "$TMP/sc" 2>&1
proto=$(sed -n 's/^New, \([^,]*\), Cipher is \(.*\)$/\1/p' "$TMP/sc" | head -1)
cipher=$(sed -n 's/^New, \([^,]*\), Cipher is \(.*\)$/\2/p' "$TMP/sc" | head -1)
is "$(jq 'd[0]["tls_version"]')" "$proto" "tls_version matches openssl s_client ($proto)"
is "$(jq 'd[0]["cipher"]')" "$cipher" "cipher matches openssl s_client ($cipher)"
run_ok "health --tag web" "$SERVER" health "${A[@]}" --tag web
run_ok "Python ssl peer: HELLO + health request" $PEER hello 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem"
like "$TMP/out" '^hello agent' "agent answers HELLO as agent"
like "$TMP/out" '"trusted_servers": 1' "health result counts trusted servers"
# health's answer is assembled from parts cached by the agent: a change of
# the trust set must show in the next answer, and go again when undone
X=$(printf '%064x' 7)
health_until() { # PATTERN: ask for health until the answer matches (at most 5 s)
	local i
	for i in $(seq 1 50); do
		$PEER call 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" health '{}' > "$TMP/out" 2>&1
		grep -q "$1" "$TMP/out" && return 0
		sleep 0.1
	done
	return 1
}
run_ok "agent trusts a second server" "$AGENT" configure "${A[@]}" --trust "$X"
health_until '"trusted_servers": 2'
like "$TMP/out" '"trusted_servers": 2' "health after a trust change counts the added server"
like "$TMP/out" "\"sha256\": \"$X\"" "health after a trust change lists the added server"
like "$TMP/out" "\"certificate\": {[^}]*\"sha256\": \"$AT\"" "health still names the agent's certificate"
like "$TMP/out" '"uptime_s": [0-9]+' "health has uptime_s"
run_ok "agent no longer trusts it" "$AGENT" configure "${A[@]}" --remove-trust "$X"
health_until '"trusted_servers": 1'
like "$TMP/out" '"trusted_servers": 1' "health after the removal counts one server again"
unlike "$TMP/out" "$X" "health after the removal no longer lists it"

# --- no certificate, wrong certificate, landing page ---
curl -sk https://127.0.0.1:$APORT/ > "$TMP/curl"
is "$(cat "$TMP/curl")" "tether-agent is listening" "curl -k gets the landing page"
unlike "$TMP/curl" "[0-9]+\.[0-9]+\.[0-9]+" "landing page has no version"
printf '\x00\x00\x00\x00' | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -ign_eof > "$TMP/sc" 2>&1
unlike "$TMP/sc" '"protocol"' "s_client without a certificate gets no application data"
echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/other.crt" -key "$TMP/other.key" > "$TMP/sc" 2>&1
sleep 0.3
echo "x" | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/other.crt" -key "$TMP/other.key" -tls1_2 > "$TMP/sc12" 2>&1
like "$TMP/sc12" "alert certificate unknown" "untrusted client certificate gets certificate_unknown (TLS 1.2)"
OT=$(openssl x509 -in "$TMP/other.crt" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
sleep 0.3

# --- wrong thumbprint either way ---
run_ok "target with a wrong pin" "$SERVER" target add "${A[@]}" wrongpin --listening 127.0.0.1:$APORT --thumbprint "$OT"
run_exit 1 "health of a wrong pin fails" "$SERVER" health "${A[@]}" wrongpin --json
cp "$TMP/out" "$TMP/h.json"
is "$(jq 'd[0]["state"]')" "untrusted" "state untrusted"
is "$(jq 'd[0]["category"]')" "untrusted" "category untrusted"
is "$(jq 'd[0]["peer_sha256"]')" "$AT" "reports the thumbprint the agent presented"
"$SERVER" health "${A[@]}" wrongpin > "$TMP/out" 2>&1
like "$TMP/out" "untrusted certificate: the agent presented $AT" "table explains the untrusted certificate"

# --- TLS policy: refused and classified ---
echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' > /dev/null 2>&1
echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -tls1_2 -cipher AES128-SHA > /dev/null 2>&1
echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -tls1_3 -groups ffdhe2048 > /dev/null 2>&1
sleep 0.5

# --- garbage, oversized frames, silence ---
run_ok "frame length over the bound" $PEER raw 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" 0100000000000000ffffffff
is "$(tail -1 "$TMP/out")" "closed" "oversized frame closes the connection"
run_ok "garbage after the handshake" $PEER raw 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" 474554202f20485454502f312e310d0a after-hello
is "$(tail -1 "$TMP/out")" "closed" "garbage closes the connection"
start=$(date +%s.%N)
python3 -c 'import socket,sys,time; s=socket.create_connection(("127.0.0.1",int(sys.argv[1]))); s.settimeout(8); print("closed" if s.recv(1)==b"" else "data")' $APORT > "$TMP/out" 2>&1
el=$(python3 -c "import sys; print(int(float(sys.argv[2]) - float(sys.argv[1])))" $start $(date +%s.%N))
is "$(cat "$TMP/out")" "closed" "a silent client is dropped"
[ "$el" -le 5 ]; ok $? "dropped at the handshake timeout (2 s configured, took ~${el} s)"
run_ok "health still fine after the abuse" "$SERVER" health "${A[@]}" web1

# --- the agent logged each refusal with its category ---
sleep 0.3
kill -0 $APID; ok $? "agent still running"
like "$TMP/agent.log" "refused 127.0.0.1:[0-9]+: certificate $OT is not trusted by this agent; if this is your server, run 'tether-agent configure --trust $OT" "agent log names the address, the thumbprint and what to run"
like "$TMP/agent.log" "failed \(protocol_version\)" "TLS 1.1-only client logged as protocol_version"
like "$TMP/agent.log" "failed \(no_shared_cipher\)" "client with an unlisted suite logged as no_shared_cipher"
like "$TMP/agent.log" "failed \(no_shared_group\)" "client with an unlisted group logged as no_shared_group"
like "$TMP/agent.log" "frame length 4294967295 exceeds" "oversized frame logged with its length"

# --- the agent does not trust the server ---
run_ok "agent stops trusting the server" "$AGENT" configure "${A[@]}" --remove-trust "$ST"
sleep 0.5
run_exit 1 "health after the agent removed trust" "$SERVER" health "${A[@]}" web1 --json
cp "$TMP/out" "$TMP/h.json"
is "$(jq 'd[0]["state"]')" "untrusted" "state untrusted when the agent refuses the server"
like "$TMP/h.json" "tether-agent configure --trust $ST" "says to trust the server on the agent"
like "$TMP/agent.log" "refused .*certificate $ST is not trusted" "agent logs the refused server thumbprint"

# --- trust changes apply without a restart ---
run_ok "trust again" "$AGENT" configure "${A[@]}" --trust "$ST"
sleep 0.5
run_ok "newly trusted server connects at once" "$SERVER" health "${A[@]}" web1
$PEER hold 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" 8 > "$TMP/hold" 2>&1 &
HP=$!
wait_for grep -q open "$TMP/hold"
"$AGENT" configure "${A[@]}" --remove-trust "$ST" >/dev/null
wait $HP
like "$TMP/hold" "closed after [0-3]\.[0-9] s" "a live connection closes at once when its thumbprint is removed"
like "$TMP/agent.log" "trust in $ST was removed: closing its connection" "agent logs why it closed it"

# --- resumption: a ticket does not outlive trust ---
"$AGENT" configure "${A[@]}" --trust "$ST" >/dev/null
sleep 0.5
printf 'x' | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" -sess_out "$TMP/sess" -ign_eof > "$TMP/sc1" 2>&1 &
sleep 2; kill $! 2>/dev/null; wait $! 2>/dev/null
printf 'x' | timeout 5 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" -sess_in "$TMP/sess" > "$TMP/sc2" 2>&1
like "$TMP/sc2" "^Reused, TLSv1.3" "a pinned client resumes its session"
"$AGENT" configure "${A[@]}" --remove-trust "$ST" >/dev/null
sleep 0.5
printf 'x' | timeout 5 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" -sess_in "$TMP/sess" -ign_eof > "$TMP/sc3" 2>&1
unlike "$TMP/sc3" "^Reused" "after its trust was removed the ticket is not honoured"
like "$TMP/sc3" "alert certificate unknown|alert number 46" "and the full handshake is refused"
"$AGENT" configure "${A[@]}" --trust "$ST" >/dev/null
sleep 0.5

# --- the ticket key is renewed while the agent runs (every [tls] ticket-lifetime, 12 h) ---
TK="$H/agent-default/state/ticket.key"
k0=$(sha256sum <"$TK")
printf 'x' | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" -sess_out "$TMP/sess4" -ign_eof > "$TMP/sc4" 2>&1 &
sleep 2; kill $! 2>/dev/null; wait $! 2>/dev/null
printf 'x' | timeout 5 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" -sess_in "$TMP/sess4" > "$TMP/sc5" 2>&1
like "$TMP/sc5" "^Reused, TLSv1.3" "a ticket from the current key resumes"
touch -d '13 hours ago' "$TK"
mark=$(wc -l <"$TMP/agent.log")
for i in $(seq 1 100); do [ "$(sha256sum <"$TK")" != "$k0" ] && break; sleep 0.25; done
[ "$(sha256sum <"$TK")" != "$k0" ]; ok $? "a ticket key 13 h old is replaced while the agent runs (checked every 10 s)"
is "$(stat -c %a "$TK")" 600 "the new key file is 0600"
wait_for sh -c "tail -n +$((mark + 1)) '$TMP/agent.log' | grep -q 'session ticket key renewed'"
ok $? "the agent logs the renewal"
printf 'x' | timeout 5 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" -sess_in "$TMP/sess4" > "$TMP/sc6" 2>&1
like "$TMP/sc6" "^Reused, TLSv1.3" "a ticket from the previous key still resumes (kept one more lifetime)"
k1=$(sha256sum <"$TK")
touch -d '13 hours ago' "$TK"
for i in $(seq 1 100); do [ "$(sha256sum <"$TK")" != "$k1" ] && break; sleep 0.25; done
[ "$(sha256sum <"$TK")" != "$k1" ]; ok $? "renewed a second time"
printf 'x' | timeout 5 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/srv.pem" -key "$TMP/srv.pem" -sess_in "$TMP/sess4" > "$TMP/sc7" 2>&1
unlike "$TMP/sc7" "^Reused" "a ticket from two keys ago is not honoured"
like "$TMP/sc7" "^New, TLSv1.3" "and a full handshake follows"
run_ok "health after the renewal" "$SERVER" health "${A[@]}" web1

# --- a flood of unauthenticated handshakes from one address ---
$PEER flood 127.0.0.1 $APORT 127.0.0.2 400 200 > "$TMP/flood" 2>&1 &
FP=$!
sleep 0.5
okc=0
for i in 1 2 3 4 5; do "$SERVER" health "${A[@]}" web1 >/dev/null 2>&1 && okc=$((okc+1)); sleep 0.2; done
wait $FP
is "$okc" "5" "health checks succeed during 200 handshakes/s from another address"
like "$TMP/flood" "refused [1-9]" "the flood was rate-limited ($(cat "$TMP/flood"))"

# --- the audit log: the agent buffers lines and writes them before the
# answers go out; many pipelined requests, then SIGTERM mid-pipeline ---
AUDIT="$H/agent-default/state/audit.log"
# audit_seq FROM N: the lines after byte FROM are whole JSON objects, and
# those of health and probe.ID are the requests 1, 2, ... in order (as
# many as the log has); prints their count, or what is wrong
audit_seq() {
	tail -c +$(($1 + 1)) "$AUDIT" | python3 -c '
import json, sys
n, seen = int(sys.argv[1]), []
for line in sys.stdin:
    d = json.loads(line)
    if d["what"] == "health" or d["what"].startswith("probe."):
        seen.append(d["what"])
want = ["health" if i % 2 else "probe.%d" % i for i in range(1, n + 1)]
print(len(seen) if seen == want[:len(seen)] else "out of order or missing: %s" % seen[:8])' "$2"
}
from=$(stat -c %s "$AUDIT")
run_ok "400 pipelined requests" $PEER pipeline 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" 400
like "$TMP/out" "answers 400 results 200 errors 200" "all 400 answered (200 health, 200 unknown methods)"
is "$(audit_seq $from 400)" "400" "the audit log has all 400 lines, in request order, once they are answered"
from=$(stat -c %s "$AUDIT")
$PEER pipeline 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" 3000 100 > "$TMP/pipe" 2>&1
kill -TERM $APID
wait $APID
is "$?" "0" "agent stops cleanly on SIGTERM amid pipelined requests"
got=$(audit_seq $from 3000)
like "$TMP/pipe" "answers 100 " "the client read 100 answers before the stop"
ok "$([ "$got" -ge 100 ] 2>/dev/null; echo $?)" "after SIGTERM the audit log has every answered request, in order, no gap ($got lines)"
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$AUDIT"
ok $? "every line of the audit log is whole JSON"
# each probe the agent served was logged (unknown method): none of their
# lines was left in the buffer at the stop
is "$(grep -c '"what":"probe\.' "$AUDIT")" "$(grep -c "unknown method 'probe\." "$TMP/agent.log")" \
	"the audit log has a line for every probe request the agent served, up to the stop"
done_testing
