#!/bin/bash
# Concurrent signing on the token: 20 handshakes at once, each signed on a
# SoftHSM2 token through pkcs11-provider.  The server has 20 targets that
# all point at one listening agent; 'health' of all of them opens the 20
# connections concurrently (the server checks many targets at once), so
# the side whose key is on the token signs 20 handshakes at the same time
# (its handshakes run on the thread pool: the provider may block).  First
# with the agent's key on the token (it signs as the TLS server), then
# with the server's (it signs its client certificate's CertificateVerify).
# Every handshake must succeed, twice (a new server process for the second
# round, so 20 new handshakes), and the daemon stays healthy: running, no
# failed signature in its log, healthy afterwards, exit 0 on SIGTERM.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/p11lib.sh"
N=20
# The token through the project's test module in front of SoftHSM2, each
# signature slowed to 50 ms (a network HSM), so that signatures really
# overlap; the module notes the most in flight at once.
FAULTY="$TOP_BUILDDIR/tests/pkcs11/.libs/faulty-pkcs11.so"
[ -e "$FAULTY" ] || make -C "$TOP_BUILDDIR" tests/pkcs11/faulty-pkcs11.la >/dev/null 2>&1
[ -e "$FAULTY" ]; ok $? "the test module is built ($FAULTY)"
export TETHER_P11_FAULT_MODULE="$SOFTHSM_LIB"
export TETHER_P11_FAULT_FILE="$TMP/nofault"
export TETHER_P11_FAULT_LOG="$TMP/faults.log"
export TETHER_P11_SIGN_DELAY_MS=50
P11=(--provider pkcs11 --pkcs11-module "$FAULTY" --pkcs11-token "pkcs11:token=$LABEL" --pkcs11-pin-file "$TMP/pin")

round() { # round DESC: health of all targets, all must be healthy
	local d=$1 lines
	lines=$(grep -c "connected from" "$TMP/agent.log")
	"$SERVER" health "${A[@]}" --all --json > "$TMP/h.json" 2>"$TMP/h.err"
	is "$(p11_json "$TMP/h.json" 'len(d)')" $N "$d: health answers for $N targets"
	is "$(p11_json "$TMP/h.json" 'sum(1 for r in d if r["state"] == "healthy")')" $N "$d: all $N healthy"
	is "$(p11_json "$TMP/h.json" 'sorted(set(r["tls_version"] for r in d))')" "['TLSv1.3']" "$d: all TLS 1.3 (RSA-PSS on the token)"
	[ "$(p11_json "$TMP/h.json" 'sum(1 for r in d if r["state"] != "healthy")')" = 0 ] ||
		p11_json "$TMP/h.json" '[(r["target"], r["state"], r.get("error")) for r in d if r["state"] != "healthy"]' | sed 's/^/# /'
	is "$(( $(grep -c "connected from" "$TMP/agent.log") - lines ))" $N "$d: the agent saw $N new full connections"
}

for side in agent server; do
	echo "# --- $side's key on the token ---"
	H="$TMP/h-$side"
	A=(--home "$H")
	"$SERVER" create-instance "${A[@]}" >/dev/null
	"$AGENT" create-instance "${A[@]}" >/dev/null
	if [ "$side" = agent ]; then
		"$AGENT" configure "${A[@]}" "${P11[@]}" >/dev/null
	else
		"$SERVER" configure "${A[@]}" "${P11[@]}" >/dev/null
	fi
	"$SERVER" new-certificate "${A[@]}" >/dev/null && "$AGENT" new-certificate "${A[@]}" >/dev/null
	ok $? "$side: identities made (the $side's on the token)"
	AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
	ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
	APORT=$(free_port)
	printf '\n[polling]\naddress = 127.0.0.1:%s\n' "$(free_port)" >> "$H/server-default/server.ini"
	"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
	: > "$TMP/agent.log"; : > "$TMP/server.log"; : > "$TMP/faults.log"
	bg "$AGENT" run "${A[@]}" 2>>"$TMP/agent.log"
	APID=$LAST_PID
	wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
	bg "$SERVER" run "${A[@]}" 2>>"$TMP/server.log"
	SPID=$LAST_PID
	wait_for test -S "$H/server-default/run/admin.sock"
	ok $? "$side: both daemons started"
	r=0
	for i in $(seq 1 $N); do
		"$SERVER" target add "${A[@]}" c$i --listening 127.0.0.1:$APORT --thumbprint "$AT" >/dev/null || r=1
	done
	ok $r "$side: $N targets, all the same listening agent"

	round "$side, first round"
	# A new server process: its 20 connections are new, so 20 more
	# concurrent handshakes signed on the token.
	kill -TERM $SPID; wait $SPID
	bg "$SERVER" run "${A[@]}" 2>>"$TMP/server.log"
	SPID=$LAST_PID
	wait_for test -S "$H/server-default/run/admin.sock"
	round "$side, second round (new server process)"

	[ "$side" = agent ] && log="$TMP/agent.log" pid=$APID || log="$TMP/server.log" pid=$SPID
	kill -0 $pid; ok $? "$side: the daemon with the key on the token is still running"
	inflight=$(sed -n 's/^C_Sign in-flight \([0-9]*\)$/\1/p' "$TMP/faults.log" | sort -n | tail -1)
	echo "# $side: at most ${inflight:-0} signatures in flight on the token at once"
	[ "${inflight:-0}" -ge 2 ]; ok $? "$side: signatures really ran concurrently on the token (at most ${inflight:-0} at once)"
	unlike "$TMP/faults.log" "CKR_" "$side: the test module injected no fault"
	unlike "$log" "could not sign|token '.*' (is gone|failed a signature)|CKR_" "$side: no signature failed on the token"
	unlike "$TMP/agent.log" "handshake with .* failed" "$side: the agent logged no failed handshake"
	"$SERVER" health "${A[@]}" c7 --json > "$TMP/h.json"
	is "$(p11_json "$TMP/h.json" 'd[0]["state"]')" healthy "$side: healthy after the burst"
	kill -TERM $APID $SPID
	wait $APID; ra=$?
	wait $SPID; rs=$?
	is "$ra:$rs" "0:0" "$side: both daemons exit 0 on SIGTERM"
	cat "$TMP/agent.log" "$TMP/server.log" > "$TMP/logs"
	unlike "$TMP/logs" "Segmentation|Aborted|AddressSanitizer" "$side: no crash"
done
done_testing
