#!/bin/bash
# Handshake failures that explain themselves: each category reproduced
# against a real misbehaving peer (openssl s_server restricted by options
# or by an OPENSSL_CONF, a plain HTTP server, a closed port, a name that
# does not resolve, a real agent), asserting the category and the hint of
# tether-ping, the agent's log and 'tether-server health'; then 'doctor' on
# a healthy instance and on one with a SHA-1 certificate.
. "$(dirname "$0")/lib.sh"
[ -x "$PING" ] || skip_all "tether-ping not built (needs the openssl provider)"
command -v openssl >/dev/null || skip_all "openssl command not installed"
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

cd "$TMP" || exit 1
openssl req -x509 -newkey rsa:2048 -nodes -keyout peer.key -out peer.pem -subj /CN=peer -days 2 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout sha1.key -out sha1.pem -subj /CN=sha1 -days 400 -sha1 2>/dev/null
cat sha1.pem sha1.key > sha1-both.pem
# a CA-issued certificate signed with SHA-1 (what OpenSSL refuses at its default level)
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -subj /CN=ca -days 2 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN=leaf 2>/dev/null
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha1 -out leaf.pem 2>/dev/null
cat leaf.pem leaf.key > leaf-sha1.pem
cnf() { # cnf FILE LINE...: an OPENSSL_CONF whose system_default section holds the lines
	local f=$1; shift
	printf 'openssl_conf = init\n[init]\nssl_conf = ssl_sect\n[ssl_sect]\nsystem_default = sys\n[sys]\n' > "$f"
	printf '%s\n' "$@" >> "$f"
}
cnf lax.cnf 'CipherString = DEFAULT:@SECLEVEL=0'
cnf hardened-peer.cnf 'MinProtocol = TLSv1.3' 'Ciphersuites = TLS_AES_128_CCM_SHA256'
cnf seclevel3.cnf 'CipherString = DEFAULT:@SECLEVEL=3'
cnf min13.cnf 'MinProtocol = TLSv1.3' 'CipherString = ECDHE+AESGCM:@SECLEVEL=2'

# s_server quits when its stdin ends: give it a FIFO held open.
mkfifo "$TMP/fifo"
exec 7<>"$TMP/fifo"
SPID=""
sserver() { # sserver PORT ARGS...: a misbehaving peer, waited for
	local port=$1; shift
	[ -n "$SPID" ] && { kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; }
	openssl s_server -accept "127.0.0.1:$port" "$@" <&7 > "$TMP/sserver.log" 2>&1 &
	SPID=$!
	_pids="$_pids $SPID"
	wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
}
# case NAME CATEGORY HINT-REGEX PING-ARGS...: tether-ping fails with the category and the hint
case_is() {
	local name=$1 cat=$2 hint=$3; shift 3
	"$PING" connect "$@" --count 1 --timeout 3 --json > "$TMP/$name.json" 2> "$TMP/$name.err"
	local r=$?
	[ $r -eq 1 ]; ok $? "$name: tether-ping exits 1 (exit $r)"
	is "$(jget "$TMP/$name.json" 'd["ok"]')" "False" "$name: ok false"
	is "$(jget "$TMP/$name.json" 'd["category"]')" "$cat" "$name: category $cat"
	like "$TMP/$name.json" "\"hint\": \".*$hint" "$name: hint mentions $hint"
}

# --- TLS 1.1 only ---
P=$(free_port)
sserver $P -cert peer.pem -key peer.key -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
case_is tls11 protocol_version "MinProtocol" 127.0.0.1:$P
is "$(jget tls11.json 'd["probes"]["category"]')" "protocol_version" "tls11: the probes agree"
like tls11.json "negotiated TLSv1.1" "tls11: the verdict names TLSv1.1"

# --- a suite tether does not offer (generic handshake_failure, probed) ---
P=$(free_port)
sserver $P -cert peer.pem -key peer.key -tls1_2 -cipher AES128-SHA
case_is cipher no_shared_cipher "CipherString" 127.0.0.1:$P
like cipher.json "alert received: handshake failure" "cipher: the peer only sent handshake_failure"
like cipher.json "the cipher suite made the difference.*AES128-SHA" "cipher: the verdict names the suite"
"$PING" connect 127.0.0.1:$P --count 1 --timeout 3 > cipher.txt 2>&1
like cipher.txt "^probes \(diagnostic handshakes only, never used for traffic\)" "cipher: probes are labelled as probes"
like cipher.txt "^hint: .*Ciphersuites" "cipher: one hint line in the text report"
run_exit 1 "cipher: --no-probe leaves the generic category" "$PING" connect 127.0.0.1:$P --no-probe --json
like "$TMP/out" '"category": "handshake"' "cipher: category handshake without probes"
like "$TMP/out" "tether-ping connect HOST:PORT" "cipher: the generic hint points to tether-ping"

# --- only ffdhe groups ---
P=$(free_port)
sserver $P -cert peer.pem -key peer.key -tls1_3 -groups ffdhe2048
case_is groups no_shared_group "Groups" 127.0.0.1:$P
like groups.json "group ffdhe2048" "groups: the verdict names ffdhe2048"

# --- only SHA-1 signature schemes ---
P=$(free_port)
sserver $P -cert peer.pem -key peer.key -sigalgs RSA+SHA1 -cipher 'DEFAULT:@SECLEVEL=0'
case_is sigalgs no_shared_sigalg "SignatureAlgorithms" 127.0.0.1:$P
like sigalgs.json "signed with rsa_pkcs1_sha1" "sigalgs: the verdict names rsa_pkcs1_sha1"

# --- a peer hardened by its OPENSSL_CONF (MinProtocol TLSv1.3, a CCM-only Ciphersuites) ---
P=$(free_port)
OPENSSL_CONF="$TMP/hardened-peer.cnf" sserver $P -cert peer.pem -key peer.key
case_is hardened no_shared_cipher "Ciphersuites" 127.0.0.1:$P
like hardened.json "TLS_AES_128_CCM_SHA256" "hardened: the verdict names the peer's only suite"

# --- the peer presents a SHA-1 signed certificate (tether accepts it, but warns) ---
P=$(free_port)
sserver $P -cert sha1.pem -key sha1.key
"$PING" connect 127.0.0.1:$P --count 1 --timeout 2 > sha1peer.txt 2>&1
like sha1peer.txt "signed with sha1WithRSAEncryption" "sha1 peer: the signature algorithm is shown"
like sha1peer.txt "warning: the certificate is signed with SHA-1" "sha1 peer: warned"
like sha1peer.txt "did not answer tether's greeting" "sha1 peer: a TLS-only peer is told apart from a tether peer"

# --- our SHA-1 (CA-issued) certificate refused by the peer ---
P=$(free_port)
sserver $P -cert peer.pem -key peer.key -Verify 1 -verify_return_error -CAfile ca.pem
OPENSSL_CONF="$TMP/lax.cnf" case_is sha1rejected sha1_rejected "new-certificate" 127.0.0.1:$P --identity "$TMP/leaf-sha1.pem"
like "$TMP/sserver.log" "digest algorithm too weak" "sha1rejected: the peer refused it for the digest"
[ -n "$SPID" ] && { kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; SPID=""; }

# --- our own OPENSSL_CONF asks for more than the identity meets ---
run_exit 1 "seclevel 3: tether-ping refuses to start" env OPENSSL_CONF="$TMP/seclevel3.cnf" "$PING" connect 127.0.0.1:1
like "$TMP/err" "hint: .*CipherString \(@SECLEVEL=N\)" "seclevel 3: the hint names CipherString and @SECLEVEL"

# --- not TLS at all: a plain HTTP server ---
P=$(free_port)
python3 -m http.server --bind 127.0.0.1 $P > /dev/null 2>&1 &
HPID=$!
_pids="$_pids $HPID"
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$P"
case_is http not_tls "does not speak TLS" 127.0.0.1:$P
kill $HPID; wait $HPID 2>/dev/null

# --- nothing listens; the name does not resolve ---
case_is closed connection_refused "nothing listens" 127.0.0.1:$P
case_is dns dns_failure "does not resolve" host.invalid:10933

# --- a real agent: details and the verdict although it refuses us ---
H="$TMP/home"
A=(--home "$H")
APORT=$(free_port)
"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" >/dev/null
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
PPORT=$(free_port)
printf '\n[polling]\naddress = 127.0.0.1:%s\n[timeouts]\nhandshake = 2\n' "$PPORT" >> "$H/server-default/server.ini"
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
run_ok "doctor on a healthy stopped agent passes" "$AGENT" doctor "${A[@]}"
like "$TMP/out" "listen-port .* is free" "doctor: the port is free"
like "$TMP/out" "tls-tls13 .*negotiated with itself.*TLSv1.3" "doctor: TLS 1.3 negotiated with itself"
like "$TMP/out" "tls-tls12 .*TLSv1.2" "doctor: TLS 1.2 negotiated with itself"
like "$TMP/out" "0 failed" "doctor: nothing failed"
bg env TETHER_DEBUG= "$AGENT" run "${A[@]}" 2> "$TMP/agent.log"
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
run_ok "doctor --json on the running agent" "$AGENT" doctor "${A[@]}" --json
cp "$TMP/out" doctor.json
is "$(jget doctor.json 'd["ok"]')" "True" "doctor JSON ok"
is "$(jget doctor.json '[c["status"] for c in d["checks"] if c["check"]=="listen-port"][0]')" "pass" \
	"doctor: the port in use by this very agent passes"
like doctor.json "in use by this instance" "doctor: says the agent is running"

"$PING" connect 127.0.0.1:$APORT --json > agent.json 2>&1
is "$(jget agent.json 'd["ok"]')" "False" "real agent: not ok (it does not trust tether-ping)"
is "$(jget agent.json 'd["category"]')" "untrusted" "real agent: category untrusted"
is "$(jget agent.json 'd["peer_refused_us"]')" "True" "real agent: says the agent refused us"
is "$(jget agent.json 'd["peer_sha256"]')" "$AT" "real agent: shows the agent's thumbprint"
is "$(jget agent.json 'd["tls_version"]')" "TLSv1.3" "real agent: shows the TLS version"
is "$(jget agent.json 'd["cert_signature_algorithm"]')" "sha256WithRSAEncryption" "real agent: shows the signature algorithm"
is "$(jget agent.json 'd["trust"]')" "not_verified" "real agent: trust not verified without --expect-thumbprint"
"$PING" connect 127.0.0.1:$APORT --expect-thumbprint "$AT" --json > agent2.json 2>&1
is "$(jget agent2.json 'd["trust"]')" "verified" "real agent: trust verified with --expect-thumbprint"

# the agent logs each refused handshake with its category and a hint line
echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' > /dev/null 2>&1
echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -tls1_3 -groups ffdhe2048 > /dev/null 2>&1
sleep 0.5
grep -A1 "failed (protocol_version)" "$TMP/agent.log" > agentlog1
like agentlog1 "hint: the two sides share no TLS version.*MinProtocol" "agent log: protocol_version followed by its hint"
grep -A1 "failed (no_shared_group)" "$TMP/agent.log" > agentlog2
like agentlog2 "hint: the two sides share no key-exchange group.*Groups" "agent log: no_shared_group followed by its hint"

# --- tether-server health prints the hint under a failed target ---
P=$(free_port)
sserver $P -cert peer.pem -key peer.key -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
bg "$SERVER" run "${A[@]}" 2> "$TMP/server.log"
wait_for test -S "$H/server-default/run/admin.sock"
"$SERVER" target add "${A[@]}" web1 --listening 127.0.0.1:$APORT --thumbprint "$AT" >/dev/null
"$SERVER" target add "${A[@]}" old --listening 127.0.0.1:$P --thumbprint "$AT" >/dev/null
run_exit 1 "health of a TLS 1.1-only target fails" "$SERVER" health "${A[@]}" old
like "$TMP/out" "\(protocol_version\)" "health: the category is printed"
like "$TMP/out" "^    hint: the two sides share no TLS version" "health: one hint line follows"
run_ok "health of the real agent" "$SERVER" health "${A[@]}" web1

# --- the server pins the wrong agent thumbprint: both sides log it, with a hint ---
WT=$(printf '%064x' 5)
"$SERVER" target add "${A[@]}" wrongpin --listening 127.0.0.1:$APORT --thumbprint "$WT" >/dev/null
run_exit 1 "health with a wrong pin fails" "$SERVER" health "${A[@]}" wrongpin
run_exit 1 "and again" "$SERVER" health "${A[@]}" wrongpin
sleep 0.3
grep -A1 "health check of target wrongpin " "$TMP/server.log" > srvlog1
like srvlog1 "warning: health check of target wrongpin \(listening agent at 127.0.0.1:$APORT\) failed \(untrusted\): .*the agent presented $AT but $WT is pinned.*set-thumbprint wrongpin $AT" \
	"server log: the failed health check with target, category and detail"
like srvlog1 "warning: hint: the presented certificate's SHA-256 thumbprint is not pinned" "server log: followed by its hint"
is "$(grep -c "health check of target wrongpin " "$TMP/server.log")" "1" "server log: the repeated failure is logged once"
grep -A1 "closed the connection right after the TLS handshake" "$TMP/agent.log" > agentlog3
like agentlog3 "warning: handshake with 127.0.0.1:[0-9]+ failed \(untrusted\): server $ST closed .*certificate $AT it does not pin" \
	"agent log: the server refused this agent's certificate, with its thumbprint"
like agentlog3 "hint: .*run 'tether-server target set-thumbprint NAME $AT' there" "agent log: followed by what to run on the server"
# a client that checks the pin inside the handshake answers with an alert
"$PING" connect 127.0.0.1:$APORT --expect-thumbprint "$WT" --count 1 --timeout 3 > /dev/null 2>&1
sleep 0.3
like "$TMP/agent.log" "failed \(untrusted\): the peer refused this agent's certificate $AT: .*alert received: (certificate unknown|bad certificate)" \
	"agent log: a refusing alert names this agent's certificate"
"$SERVER" target set-thumbprint "${A[@]}" wrongpin "$AT" >/dev/null
run_ok "health once the pin is right" "$SERVER" health "${A[@]}" wrongpin
like "$TMP/server.log" "info: target wrongpin is healthy again" "server log: the recovery is logged"
"$SERVER" target remove "${A[@]}" wrongpin >/dev/null
# the polling port's failures carry the hint too
echo | timeout 10 openssl s_client -connect 127.0.0.1:$PPORT -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' > /dev/null 2>&1
sleep 0.3
grep -A1 "polling connection from .* failed (protocol_version)" "$TMP/server.log" > srvlog2
like srvlog2 "hint: the two sides share no TLS version.*MinProtocol" "server log: a polling-port failure is followed by its hint"

# --- misbehaving peers: one that resets mid-handshake, one that says nothing ---
# (each exits after 60 s without a connection)
cat > "$TMP/bad.py" <<'PYEOF'
import socket, ssl, struct, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "nocert":  # a TLS client without a certificate: print how it ended
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    s.sendall(b"\x00\x00\x00\x00")
    try:
        print("closed" if s.recv(100) == b"" else "data")
    except (ssl.SSLError, OSError) as e:
        print("closed:", e)
    sys.exit(0)
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(16)
ls.settimeout(60)
held = []
while True:
    try:
        c, _ = ls.accept()
    except socket.timeout:
        break
    if mode == "reset":  # read the ClientHello, then RST
        c.settimeout(5)
        try:
            c.recv(1)
        except OSError:
            pass
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    else:  # silent: accept and never answer
        held.append(c)
PYEOF
RP=$(free_port); bg python3 "$TMP/bad.py" reset $RP
SP=$(free_port); bg python3 "$TMP/bad.py" silent $SP
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$SP"
case_is reset connection_reset "look at the other side's log" 127.0.0.1:$RP
case_is silent timeout "did not answer in time" 127.0.0.1:$SP
like silent.json "did not complete the TLS handshake within" "silent: the error says the handshake timed out"
"$SERVER" target add "${A[@]}" resetter --listening 127.0.0.1:$RP --thumbprint "$AT" >/dev/null
"$SERVER" target add "${A[@]}" mute --listening 127.0.0.1:$SP --thumbprint "$AT" >/dev/null
run_exit 1 "health of a peer that resets and one that is silent" "$SERVER" health "${A[@]}" resetter mute --json
cp "$TMP/out" bad.json
is "$(jget bad.json '[r["category"] for r in d if r["target"]=="resetter"][0]')" "connection_reset" "health --json: category connection_reset"
is "$(jget bad.json '[r["state"] for r in d if r["target"]=="resetter"][0]')" "unreachable" "health --json: a reset is unreachable"
is "$(jget bad.json '[r["category"] for r in d if r["target"]=="mute"][0]')" "timeout" "health --json: category timeout"
is "$(jget bad.json '[r["state"] for r in d if r["target"]=="mute"][0]')" "timeout" "health --json: state timeout"
"$SERVER" health "${A[@]}" resetter mute > bad.txt 2>&1
grep -A2 "^resetter " bad.txt > bad1.txt
like bad1.txt "^    hint: the peer closed the connection during the handshake" "health table: the reset's hint"
grep -A2 "^mute " bad.txt > bad2.txt
like bad2.txt "^    hint: the peer did not answer in time" "health table: the timeout's hint"
sleep 0.3
grep -A1 "health check of target resetter " "$TMP/server.log" > srvlog3
like srvlog3 "failed \(connection_reset\)" "server log: the reset with its category"
like srvlog3 "hint: the peer closed the connection during the handshake" "server log: and its hint"
grep -A1 "health check of target mute " "$TMP/server.log" > srvlog4
like srvlog4 "failed \(timeout\): .*within" "server log: the timeout with its category"
like srvlog4 "hint: the peer did not answer in time" "server log: and its hint"
"$SERVER" target remove "${A[@]}" resetter >/dev/null
"$SERVER" target remove "${A[@]}" mute >/dev/null

# --- a TLS client without a certificate, at the agent and at the polling port ---
run_ok "a TLS client without a certificate (agent)" python3 "$TMP/bad.py" nocert $APORT
like "$TMP/out" "^closed" "agent: the certless client is closed"
run_ok "a TLS client without a certificate (polling port)" python3 "$TMP/bad.py" nocert $PPORT
like "$TMP/out" "^closed" "polling port: the certless client is closed"
curl -sk https://127.0.0.1:$APORT/ > /dev/null
sleep 0.3
grep -A1 "failed (peer_no_certificate)" "$TMP/agent.log" > agentlog4
like agentlog4 "info: handshake with 127.0.0.1:[0-9]+ failed \(peer_no_certificate\): .*presented no certificate" \
	"agent log: peer_no_certificate with its category"
like agentlog4 "hint: the peer presented no certificate" "agent log: and its hint"
is "$(grep -c "failed (peer_no_certificate)" "$TMP/agent.log")" "1" "agent log: the landing page served to curl is not a failure"
grep -A1 "polling connection from .* failed (peer_no_certificate)" "$TMP/server.log" > srvlog5
like srvlog5 "hint: the peer presented no certificate" "server log: a certless client at the polling port, with its hint"

# --- tether-ping --as-agent against the server's polling port ---
"$PING" connect 127.0.0.1:$PPORT --as-agent --count 1 --timeout 3 --json > asagent.json 2>&1
is "$(jget asagent.json 'd["ok"]')" "False" "--as-agent: refused by the server"
is "$(jget asagent.json 'd["category"]')" "untrusted" "--as-agent: category untrusted"
is "$(jget asagent.json 'd["peer_refused_us"]')" "True" "--as-agent: the server refused us"
is "$(jget asagent.json 'd["peer_sha256"]')" "$ST" "--as-agent: shows the server's thumbprint"
like asagent.json '"hint": ".*not pinned' "--as-agent: with the hint"
sleep 0.3
like "$TMP/server.log" "refused a polling agent from 127.0.0.1:[0-9]+: its certificate [0-9a-f]{64} is not registered" \
	"server log: the unregistered polling agent"
run_exit 1 "server doctor with a failing target" "$SERVER" doctor "${A[@]}"
like "$TMP/out" "target web1 +healthy" "server doctor: the healthy target passes"
like "$TMP/out" "polling-port .*in use by this instance" "server doctor: the polling port is the running server's"
like "$TMP/out" "FAIL +target old +handshake_failed at the last check \(protocol_version\)" "server doctor: the failed target fails"
like "$TMP/out" "fix: the two sides share no TLS version" "server doctor: with the hint as the fix"
"$SERVER" target remove "${A[@]}" old >/dev/null
run_ok "server doctor passes once the target is gone" "$SERVER" doctor "${A[@]}"

# --- doctor on an agent with a SHA-1 certificate ---
H2="$TMP/home2"
"$AGENT" create-instance --home "$H2" >/dev/null
run_ok "import-certificate accepts a SHA-1 signed PEM" "$AGENT" import-certificate --home "$H2" --from-file "$TMP/sha1-both.pem"
"$AGENT" configure --home "$H2" --trust "$ST" --listen 127.0.0.1:$(free_port) >/dev/null
run_exit 1 "doctor fails on the SHA-1 certificate" "$AGENT" doctor --home "$H2"
like "$TMP/out" "FAIL +signature-algorithm +the certificate is signed with sha1WithRSAEncryption" "doctor names SHA-1"
like "$TMP/out" "fix: regenerate it .*tether-agent new-certificate --home $H2" "doctor gives the regeneration command"
"$AGENT" doctor --home "$H2" --json > d2.json
is "$(jget d2.json 'd["ok"]')" "False" "doctor JSON ok false"
is "$(jget d2.json '[c["status"] for c in d["checks"] if c["check"]=="signature-algorithm"][0]')" "fail" "doctor JSON: signature-algorithm fail"
# a CA-issued SHA-1 certificate is imported too, but OpenSSL will not use it for TLS
H3="$TMP/home3"
"$AGENT" create-instance --home "$H3" >/dev/null
"$AGENT" import-certificate --home "$H3" --from-file "$TMP/leaf-sha1.pem" >/dev/null 2>&1
run_exit 1 "doctor on a CA-issued SHA-1 certificate" "$AGENT" doctor --home "$H3"
like "$TMP/out" "FAIL +tls-tls13 .*ca md too weak" "doctor: TLS cannot use it"
# the OpenSSL configuration in effect is what doctor tests
run_exit 1 "doctor under CipherString @SECLEVEL=3" env OPENSSL_CONF="$TMP/seclevel3.cnf" "$AGENT" doctor "${A[@]}"
like "$TMP/out" "FAIL +tls-tls13" "seclevel 3: TLS 1.3 check fails"
like "$TMP/out" "fix: the security level set by CipherString \(@SECLEVEL=N\) in OPENSSL_CONF=$TMP/seclevel3.cnf" "seclevel 3: the fix names CipherString and the file"
run_ok "doctor under MinProtocol = TLSv1.3 (tether sets its own versions)" env OPENSSL_CONF="$TMP/min13.cnf" "$AGENT" doctor "${A[@]}"
done_testing
