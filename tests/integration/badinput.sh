#!/bin/bash
# The bad-input matrix: a listening agent and a server's polling port fed
# garbage at every layer -- before TLS (random bytes, plain HTTP, an SSLv3
# ClientHello, TLS 1.0), half-open connections (slowloris), a pinned but
# expired certificate, and from a trusted peer after the handshake: frames
# truncated, mis-sized, of unknown type, with reserved bits, HELLO twice or
# of another major version, requests before HELLO, oversized and deeply
# nested JSON, invalid UTF-8, wrong field types, unknown methods, stream
# frames for unknown ids, window overflow, a stream longer than declared,
# an upload of the size announced whose SHA-256 at the end is a lie,
# ping floods and 10 000 requests whose answers are not read; a GOAWAY
# saying the agent broke the protocol; a listening agent whose RESPONSE is
# broken (tests/integration/bad_agent.py).
# Each: the expected answer, a clear log line (protocol violations with the
# category protocol_violation and advice: not a compatible tether peer, or
# misbehaving; compare versions, look at its log), and the daemon still
# serves a good peer.  (Untrusted and missing client certificates, TLS 1.1, unlisted
# suites and groups, and the handshake flood are in listening.sh.)
. "$(dirname "$0")/lib.sh"
PEER="python3 $TOP_SRCDIR/tests/integration/peer.py"
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
printf '[polling]\naddress = 127.0.0.1:%s\nwait = 10\n' "$SPORT" >>"$H/server-default/server.ini"
"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
bg "$AGENT" run "${A[@]}" 2>"$TMP/agent.log"
APID=$LAST_PID
bg "$SERVER" run "${A[@]}" 2>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
"$SERVER" target add "${A[@]}" web1 --listening 127.0.0.1:$APORT --thumbprint "$AT" >/dev/null
wait_for "$SERVER" health "${A[@]}" web1
ok $? "the agent is up and healthy"

# lines a daemon logged since mark_log
mark_log() { MARK=$(wc -l <"$1"); }
new_lines() { tail -n +$((MARK + 1)) "$1" >"$TMP/new"; }
healthy() { "$SERVER" health "${A[@]}" "$1" >/dev/null 2>&1; }

# abuse CASE OUTCOME-REGEX LOG-REGEX: one case against the agent
abuse() {
	local c=$1 want=$2 log=$3
	mark_log "$TMP/agent.log"
	timeout 60 $PEER abuse 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" "$c" >"$TMP/o" 2>&1
	like "$TMP/o" "$want" "agent, $c: answer"
	if [ -n "$log" ]; then
		for i in $(seq 1 30); do new_lines "$TMP/agent.log"; grep -qE -- "$log" "$TMP/new" && break; sleep 0.1; done
		like "$TMP/new" "$log" "agent, $c: log line"
	fi
	healthy web1; ok $? "agent, $c: still serves the server"
}

echo "# --- a trusted peer sends garbage after the handshake (agent) ---"
abuse truncated-frame '^open' ''
abuse short-length '^closed goaway:.*bad_request.*not valid JSON' 'closing connection .*not valid JSON'
abuse unknown-type '^closed goaway:.*unknown_frame_type' 'unknown frame type 0x42'
abuse reserved-flags '^closed goaway:.*reserved_bits' 'reserved bits set \(flags 0x80'
abuse reserved-field '^closed goaway:.*reserved_bits' 'reserved bits set .*reserved 0x1234'
abuse hello-twice '^closed goaway:.*unexpected_hello' 'HELLO is allowed only once'
abuse hello-major-2 '^closed 1:protocol_version:.*refused protocol 2\.0: upgrade' 'refusing .*speaks tether protocol 2\.0.*upgrade this agent'
abuse request-before-hello '^closed' 'the first frame is REQUEST; a tether connection must begin with HELLO'
# a protocol violation is one (the category protocol_violation, its own
# hint), not the hint for a corrupt certificate file that bad_input has
grep -A1 "failed (protocol_violation): .*the first frame is REQUEST" "$TMP/new" >"$TMP/hint"
like "$TMP/hint" "hint: the peer broke the tether protocol.*not a tether peer of a compatible version.*--version" \
	"agent, request-before-hello: logged as protocol_violation, with a hint that says why and what to do"
unlike "$TMP/new" "certificate/key|export it again" "agent, request-before-hello: not the corrupt-file hint"
abuse oversized-json '^closed' 'exceeds the limit of 1048576 bytes for REQUEST'
abuse oversized-length '^closed goaway:.*frame_too_large' 'frame length 2147483647 exceeds the limit.*; it is not a tether peer of a compatible version, or it is misbehaving: compare its version'
abuse nested-json '^closed goaway:.*bad_request' 'maximum parsing depth'
abuse invalid-json '^closed goaway:.*bad_request' 'not valid JSON.*; it is not a tether peer of a compatible version, or it is misbehaving: compare its version'
abuse invalid-utf8 '^closed goaway:.*bad_request' 'unable to decode byte 0xff'
abuse wrong-types '^closed goaway:.*bad_request' '"id" must be an integer'
abuse id-mismatch '^closed goaway:.*bad_request' 'request id 2 in the JSON does not match id 1'
abuse unknown-method '^open 3:unknown_method:' "asked for unknown method 'no.such.method'"
abuse stream-unknown-id '^closed goaway:.*bad_frame_id' 'STREAM_DATA for stream 4242, which is not open'
abuse stream-end-unknown-id '^closed goaway:.*bad_frame_id' 'STREAM_END for stream 4242, which is not open'
abuse window-overflow '^closed goaway:.*bad_window' 'grants 4294967295 bytes; a grant must be 1\.\.2147483647'
abuse window-zero '^closed goaway:.*bad_frame_id' 'STREAM_WINDOW frame has id 0'
abuse ping-wrong-size '^closed goaway:.*bad_frame_length' 'PING frame length 3 is too short'
abuse ping-flood '^open' ''
abuse response-unasked '^open' ''
abuse stream-overrun '^open (6 \| )?7 \| 3:too_large:' 'sent more than the 5 bytes it announced.*destination is unchanged'
ls -A "$H/agent-default/state/work" | grep -qE 'abuse|tether-upload'; ok $((1 - $?)) "agent: nothing left of the overrun upload"
# a lying upload: the size announced, the SHA-256 at the end not that of the data
W="$H/agent-default/state/work"
echo precious >"$W/abuse-lying.bin"
LSHA=$(sha256sum "$W/abuse-lying.bin" | cut -d' ' -f1)
XSHA=$(printf xxxxxxxxxx | sha256sum | cut -d' ' -f1)
YSHA=$(printf yyyyyyyyyy | sha256sum | cut -d' ' -f1)
abuse upload-lying-sha256 "^open (6 \| )?(7 \| )?3:sha256_mismatch:the data received has SHA-256 $XSHA but the server sent $YSHA; nothing was written" \
	"upload to $W/abuse-lying.bin from server .* failed after 10 of 10 bytes: the data received has SHA-256 $XSHA but the server sent $YSHA.*destination is unchanged"
is "$(sha256sum "$W/abuse-lying.bin" | cut -d' ' -f1)" "$LSHA" "agent, upload-lying-sha256: the destination is unchanged"
ls -A "$W" | grep -q '^\.tether-upload-'; ok $((1 - $?)) "agent, upload-lying-sha256: no .tether-upload- temporary file is left"
rm -f "$W/abuse-lying.bin"
# A server may raise a download's window as far as 2^31-1 (docs/protocol.md):
# the agent must then send in bounded bursts, not give up (its pump once
# failed with "the connection took more data than its window allows" when
# the socket took everything it was given).
head -c $((48 << 20)) /dev/urandom > "$W/bigwin.bin"
BSHA=$(sha256sum "$W/bigwin.bin" | cut -d' ' -f1)
timeout 120 $PEER download-window 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" bigwin.bin $((1 << 30)) >"$TMP/o" 2>&1
like "$TMP/o" "^result $((48 << 20)) $BSHA $BSHA\$" "agent, a download under a 1 GiB window arrives whole (48 MiB)"
healthy web1; ok $? "agent, after the 1 GiB window: still serves the server"
rm -f "$W/bigwin.bin"
abuse goaway '^closed' 'is closing the connection \(shutdown: bye\)'
# a GOAWAY saying the agent broke the protocol: the agent logs it as such
mark_log "$TMP/agent.log"
GA=$(python3 -c 'import json,struct,sys; b=struct.pack(">I",0)+json.dumps({"code":"bad_frame_id","message":"STREAM_RESET for stream 5, which is not open"}).encode(); sys.stdout.write((struct.pack(">BBHII",10,0,0,0,len(b))+b).hex())')
timeout 60 $PEER raw 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" "$GA" after-hello >"$TMP/o" 2>&1
for i in $(seq 1 30); do new_lines "$TMP/agent.log"; grep -q "it says this side broke the protocol" "$TMP/new" && break; sleep 0.1; done
like "$TMP/new" "is closing the connection: it says this side broke the protocol \(bad_frame_id: STREAM_RESET for stream 5" \
	"agent, a GOAWAY naming a protocol violation: logged as such"
healthy web1; ok $? "agent, GOAWAY with a protocol violation: still serves the server"

# A request id reused while the first request with that id is still running
# (an upload waiting for its data): it should be refused and the connection
# closed; today core/conn.c does not track the ids of requests in flight.
mark_log "$TMP/agent.log"
timeout 60 $PEER abuse 127.0.0.1 $APORT "$TMP/srv.pem" "$TMP/srv.pem" upload-id-reused >"$TMP/o" 2>&1
grep -qE '^closed' "$TMP/o"
ok $? "agent, upload-id-reused: connection closed"
healthy web1; ok $? "agent, upload-id-reused: still serves the server"

# Requests whose answers are not read: the agent gathers the answers in few
# buffers, stops reading the peer once 5 MiB of them wait in user space
# (core/conn.c READ_PAUSE_QUEUE; on loopback the kernel's socket buffers take
# a few MiB more), and answers every one once the peer reads (peer.py reads
# and sends the rest together).  10 000 answers are about 6.5 MiB, 40 000
# about 26 MiB: the growth must not follow the count.
# unread WHO PID PORT CERT N [VAR=VALUE...]: peak RSS (VmHWM, reset first
# where the kernel allows) against the RSS before, bound 10 MiB
mem() { awk -v k="$2" '$1 == k":" {print $2}' /proc/$1/status; }
unread() {
	local who=$1 pid=$2 port=$3 cert=$4 n=$5 r0 r1 g
	shift 5
	echo 5 >/proc/$pid/clear_refs 2>/dev/null
	r0=$(mem $pid VmRSS)
	env "$@" PEER_UNREAD_COUNT=$n PEER_UNREAD_WAIT=4 timeout 120 $PEER abuse 127.0.0.1 $port "$cert" "$cert" \
		requests-unread >"$TMP/o" 2>&1
	r1=$(mem $pid VmHWM)
	g=$((r1 - r0))
	like "$TMP/o" "^answers $n\$" "$who, $n unread requests: every answer arrives once read"
	echo "# $who RSS ${r0} kB before, peak ${r1} kB with $n answers unread ($(head -1 "$TMP/o"))"
	if sanitized; then
		pass "$who, $n unread requests: memory not judged in an AddressSanitizer build # SKIP sanitizers"
	else
		[ $g -lt 10240 ]
		ok $? "$who, $n unread requests: peak memory grew by $((g / 1024)) MiB (bound 10 MiB)"
	fi
}
unread agent $APID $APORT "$TMP/srv.pem" 10000
unread agent $APID $APORT "$TMP/srv.pem" 40000
healthy web1; ok $? "agent still serves the server after the unread flood"

echo "# --- garbage before and instead of TLS (agent) ---"
mark_log "$TMP/agent.log"
{ printf '\001'; head -c 600 /dev/urandom; } >"$TMP/rand"    # never a TLS record type
timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT; cat '$TMP/rand' >&3; cat <&3 >/dev/null"
ok $? "random bytes before TLS: the agent closes the connection"
healthy web1; ok $? "random bytes: still serves the server"
timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT; printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' >&3; cat <&3" >"$TMP/http" 2>/dev/null
unlike "$TMP/http" "tether|protocol" "plain HTTP (no TLS): nothing about tether is answered"
healthy web1; ok $? "plain HTTP: still serves the server"
for i in $(seq 1 30); do new_lines "$TMP/agent.log"; [ "$(grep -c 'failed (not_tls)' "$TMP/new")" -ge 2 ] && break; sleep 0.1; done
[ "$(grep -c 'failed (not_tls)' "$TMP/new")" -ge 2 ]
ok $? "agent log: random bytes and plain HTTP logged as not_tls"
mark_log "$TMP/agent.log"
# an SSLv3 ClientHello (OpenSSL 3 cannot send one: built here by hand)
python3 - 127.0.0.1 $APORT >"$TMP/ssl3" 2>&1 <<'EOT'
import socket, struct, sys, os
body = b"\x03\x00" + os.urandom(32) + b"\x00" + b"\x00\x04\x00\x2f\x00\x0a" + b"\x01\x00"
hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"\x16\x03\x00" + struct.pack(">H", len(hs)) + hs)
d = s.recv(4096)
print("alert" if d[:1] == b"\x15" else "closed" if not d else "answered %r" % d[:8])
EOT
like "$TMP/ssl3" "^(alert|closed)$" "SSLv3 ClientHello: refused with an alert or closed"
echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -tls1 -cipher 'DEFAULT:@SECLEVEL=0' >"$TMP/tls10" 2>&1
unlike "$TMP/tls10" "^New, TLSv1(\.0)?, Cipher is [A-Z]" "TLS 1.0 ClientHello: no session"
for i in $(seq 1 30); do new_lines "$TMP/agent.log"; [ "$(grep -c 'failed (protocol_version)' "$TMP/new")" -ge 2 ] && break; sleep 0.1; done
[ "$(grep -c 'failed (protocol_version)' "$TMP/new")" -ge 2 ]
ok $? "agent log: SSLv3 and TLS 1.0 logged as protocol_version"
healthy web1; ok $? "old protocols: still serves the server"

echo "# --- 1000 half-open connections (slowloris) while the server keeps working ---"
timeout 120 $PEER slowloris 127.0.0.1 $APORT 1000 25 >"$TMP/slow" 2>&1 &
SL=$!
sleep 3
good=0
for i in 1 2 3 4 5; do healthy web1 && good=$((good + 1)); sleep 1; done
is "$good" 5 "health succeeds 5 times out of 5 while 1000 connections stall"
wait $SL
like "$TMP/slow" "closed by the peer (9[0-9][0-9]|1000) of" "the agent drops the stalled handshakes ($(tail -1 "$TMP/slow"))"
healthy web1; ok $? "still serves the server after the slowloris"

echo "# --- a pinned but expired certificate is accepted, with a warning ---"
mkdir -p "$TMP/ca"; : >"$TMP/ca/index.txt"; echo 01 >"$TMP/ca/serial"
cat >"$TMP/ca/ca.cnf" <<EOT
[ca]
default_ca = d
[d]
database = $TMP/ca/index.txt
new_certs_dir = $TMP/ca
serial = $TMP/ca/serial
default_md = sha256
policy = p
copy_extensions = none
[p]
commonName = supplied
EOT
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/ca/k.pem" \
	-subj /CN=expired -out "$TMP/ca/r.csr" 2>/dev/null
openssl ca -batch -config "$TMP/ca/ca.cnf" -selfsign -keyfile "$TMP/ca/k.pem" -in "$TMP/ca/r.csr" \
	-startdate 20200101000000Z -enddate 20200201000000Z -out "$TMP/ca/c.pem" >/dev/null 2>&1
cat "$TMP/ca/c.pem" "$TMP/ca/k.pem" >"$TMP/expired.pem"
ET=$(openssl x509 -in "$TMP/ca/c.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
run_ok "pin the expired certificate" "$AGENT" configure "${A[@]}" --trust "$ET"
mark_log "$TMP/agent.log"
sleep 1
run_ok "an expired pinned server connects" $PEER hello 127.0.0.1 $APORT "$TMP/expired.pem" "$TMP/expired.pem"
like "$TMP/out" '^hello agent' "and is answered"
for i in $(seq 1 30); do new_lines "$TMP/agent.log"; grep -qi "expired" "$TMP/new" && break; sleep 0.1; done
like "$TMP/new" "presented certificate $ET, which expired on 2020-02-01.*accepted because its thumbprint is pinned" "agent log warns that the server's certificate has expired"
"$AGENT" configure "${A[@]}" --remove-trust "$ET" >/dev/null

echo "# --- the server's polling port: a registered agent sends garbage ---"
H2="$TMP/peerhome"
"$AGENT" create-instance --home "$H2" >/dev/null
"$AGENT" new-certificate --home "$H2" --key-type ec-p256 >/dev/null
PT=$("$AGENT" show-thumbprint --home "$H2" | head -1)
"$AGENT" export-certificate --home "$H2" --export-pfx "$TMP/agt.pfx" --pfx-password-file "$TMP/pw" >/dev/null
openssl pkcs12 -in "$TMP/agt.pfx" -passin pass:pw -nodes -out "$TMP/agt.pem" 2>/dev/null
"$SERVER" target add "${A[@]}" rogue --polling --thumbprint "$PT" >/dev/null
# a good polling agent beside it
H3="$TMP/goodhome"
"$AGENT" create-instance --home "$H3" >/dev/null
"$AGENT" new-certificate --home "$H3" --key-type ec-p256 >/dev/null
GT=$("$AGENT" show-thumbprint --home "$H3" | head -1)
"$AGENT" configure --home "$H3" --trust "$ST" --mode polling --server 127.0.0.1:$SPORT >/dev/null
"$SERVER" target add "${A[@]}" good --polling --thumbprint "$GT" >/dev/null
bg "$AGENT" run --home "$H3" 2>"$TMP/good.log"
wait_for "$SERVER" health "${A[@]}" good
ok $? "a good polling agent is connected"
sabuse() {
	local c=$1 want=$2 log=$3
	mark_log "$TMP/server.log"
	PEER_ROLE=agent timeout 60 $PEER abuse 127.0.0.1 $SPORT "$TMP/agt.pem" "$TMP/agt.pem" "$c" >"$TMP/o" 2>&1
	like "$TMP/o" "$want" "server, $c: answer"
	for i in $(seq 1 30); do new_lines "$TMP/server.log"; grep -qE -- "$log" "$TMP/new" && break; sleep 0.1; done
	like "$TMP/new" "$log" "server, $c: log line"
	healthy good; ok $? "server, $c: still commands the good agent"
	kill -0 $SPID; ok $? "server, $c: still running"
}
sabuse unknown-type '^closed' 'unknown frame type 0x42'
sabuse reserved-flags '^closed' 'reserved bits set'
sabuse hello-twice '^closed' 'HELLO is allowed only once'
sabuse hello-major-2 '^closed 1:protocol_version:.*2\.0' 'protocol 2\.0'
sabuse oversized-length '^closed' 'frame length 2147483647 exceeds.*; it is not a tether peer of a compatible version, or it is misbehaving: compare its version'
sabuse nested-json '^closed' 'maximum parsing depth|not valid JSON'
sabuse invalid-utf8 '^closed' 'unable to decode byte 0xff|not valid JSON'
sabuse stream-unknown-id '^closed' 'STREAM_DATA for stream 4242, which is not open'
sabuse window-overflow '^closed' 'grants 4294967295 bytes'
sabuse response-unasked '^(open|closed)' 'rogue|127\.0\.0\.1'

echo "# --- a listening agent that answers health with a broken RESPONSE ---"
H4="$TMP/badagent"
"$AGENT" create-instance --home "$H4" >/dev/null
"$AGENT" new-certificate --home "$H4" --key-type ec-p256 >/dev/null
BT=$("$AGENT" show-thumbprint --home "$H4" | head -1)
"$AGENT" export-certificate --home "$H4" --export-pfx "$TMP/bad.pfx" --pfx-password-file "$TMP/pw" >/dev/null
openssl pkcs12 -in "$TMP/bad.pfx" -passin pass:pw -nodes -out "$TMP/bad.pem" 2>/dev/null
for case in bad-json too-large; do
	BPORT=$(free_port)
	"$SERVER" target remove "${A[@]}" badagent >/dev/null 2>&1
	"$SERVER" target add "${A[@]}" badagent --listening 127.0.0.1:$BPORT --thumbprint "$BT" >/dev/null
	: >"$TMP/ba"
	timeout 60 python3 "$TOP_SRCDIR/tests/integration/bad_agent.py" $BPORT "$TMP/bad.pem" "$TMP/bad.pem" 20 $case >"$TMP/ba" 2>&1 &
	BA=$!
	wait_for grep -q listening "$TMP/ba"
	mark_log "$TMP/server.log"
	run_exit 1 "health of an agent sending a $case RESPONSE fails" "$SERVER" health "${A[@]}" badagent
	wait $BA
	like "$TMP/ba" "^closed goaway:" "$case: the server sends GOAWAY and closes"
	like "$TMP/out" "\(protocol_violation\)$" "$case: health names the category protocol_violation"
	like "$TMP/out" "^    hint: the peer broke the tether protocol.*not a tether peer of a compatible version.*look at the peer's log" \
		"$case: and prints the hint for it"
	unlike "$TMP/out" "certificate/key|export it again" "$case: not the corrupt-file hint"
	new_lines "$TMP/server.log"
	like "$TMP/new" "closing connection with 127\.0\.0\.1:$BPORT: .*; it is not a tether peer of a compatible version, or it is misbehaving: compare its version" "$case: the server's log says why and what to do"
done
healthy good; ok $? "server still commands the good agent after the broken agent"
mark_log "$TMP/server.log"
timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SPORT; cat '$TMP/rand' >&3; cat <&3 >/dev/null"
ok $? "server polling port, random bytes: closed"
healthy good; ok $? "server polling port, random bytes: still commands the good agent"
# the same engine on the server's side: a polling agent that sends requests
# (each answered unknown_method) and reads nothing
unread server $SPID $SPORT "$TMP/agt.pem" 40000 PEER_ROLE=agent
healthy good; ok $? "server still commands the good agent after the unread flood"

echo "# --- the server's polling port: refused handshakes, a flood, half-open connections ---"
# The polling port is the server's public face in polling mode: the same
# refusals as the agent's listening port (listening.sh, above), and the
# good agent keeps being served throughout.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=stranger \
	-keyout "$TMP/stranger.key" -out "$TMP/stranger.crt" 2>/dev/null
XT=$(openssl x509 -in "$TMP/stranger.crt" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
mark_log "$TMP/server.log"
printf '\x00\x00\x00\x00' | timeout 10 openssl s_client -connect 127.0.0.1:$SPORT -ign_eof >"$TMP/pnc" 2>&1
unlike "$TMP/pnc" '"protocol"' "polling port, no client certificate: no application data"
printf '\x00\x00\x00\x00' | timeout 10 openssl s_client -connect 127.0.0.1:$SPORT -cert "$TMP/stranger.crt" \
	-key "$TMP/stranger.key" -ign_eof >"$TMP/pun" 2>&1
# the pin is checked after the handshake there (it runs on the pool):
# a refusing HELLO and nothing else (protocol.md, section 1)
like "$TMP/pun" '"error":\{"code":"untrusted","message":"certificate '"$XT"' is not trusted' \
	"polling port, an unregistered certificate: a refusing HELLO that names it"
unlike "$TMP/pun" '"(id|method|result)":' "polling port, an unregistered certificate: no request, no answer"
echo | timeout 10 openssl s_client -connect 127.0.0.1:$SPORT -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' >"$TMP/p11" 2>&1
unlike "$TMP/p11" "^New, TLSv1\.1, Cipher is [A-Z]" "polling port, TLS 1.1 ClientHello: no session"
echo | timeout 10 openssl s_client -connect 127.0.0.1:$SPORT -tls1 -cipher 'DEFAULT:@SECLEVEL=0' >"$TMP/p10" 2>&1
unlike "$TMP/p10" "^New, TLSv1(\.0)?, Cipher is [A-Z]" "polling port, TLS 1.0 ClientHello: no session"
for i in $(seq 1 30); do
	new_lines "$TMP/server.log"
	grep -q "$XT" "$TMP/new" && [ "$(grep -c 'failed (protocol_version)' "$TMP/new")" -ge 2 ] && break
	sleep 0.1
done
like "$TMP/new" "$XT is not registered; if it is yours, run 'tether-server target add NAME --polling --thumbprint $XT'" \
	"server log: the unregistered certificate, its thumbprint and the command"
[ "$(grep -c 'failed (protocol_version)' "$TMP/new")" -ge 2 ]
ok $? "server log: TLS 1.1 and TLS 1.0 logged as protocol_version"
healthy good; ok $? "polling port, refused handshakes: still commands the good agent"

$PEER flood 127.0.0.1 $SPORT 127.0.0.2 400 200 >"$TMP/pflood" 2>&1 &
FP=$!
sleep 0.5
good=0
for i in 1 2 3 4 5; do healthy good && good=$((good + 1)); sleep 0.2; done
wait $FP
is "$good" 5 "polling port: health of the good agent succeeds 5 times out of 5 during 200 handshakes/s from another address"
like "$TMP/pflood" "refused [1-9]" "polling port: the flood was rate-limited ($(cat "$TMP/pflood"))"

timeout 120 $PEER slowloris 127.0.0.1 $SPORT 1000 25 >"$TMP/pslow" 2>&1 &
SL=$!
sleep 3
good=0
for i in 1 2 3 4 5; do healthy good && good=$((good + 1)); sleep 1; done
is "$good" 5 "polling port: health of the good agent succeeds 5 times out of 5 while 1000 connections stall"
wait $SL
like "$TMP/pslow" "closed by the peer (9[0-9][0-9]|1000) of" "polling port: the server drops the stalled handshakes ($(tail -1 "$TMP/pslow"))"
healthy good; ok $? "polling port: still commands the good agent after the slowloris"
kill -0 $SPID; ok $? "polling port: the server is still running"

kill $SPID $APID 2>/dev/null
wait $SPID $APID 2>/dev/null
done_testing
