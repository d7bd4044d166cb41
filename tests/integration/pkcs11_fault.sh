#!/bin/bash
# The pkcs11 provider against tokens that misbehave, through the project's
# fault-injecting module (tests/pkcs11/faulty_module.c), which forwards to
# SoftHSM2 and can hide RSA-PSS or, while $TMP/fault exists, answer
# CKR_DEVICE_REMOVED (token calls: CKR_TOKEN_NOT_PRESENT) or
# CKR_SESSION_HANDLE_INVALID after closing every real session (so the
# login is really gone, as on a removal).
#  - a token without RSA-PSS: the RSA identity is capped at TLS 1.2 and
#    signs PKCS#1 v1.5; the log and doctor say so;
#  - the token goes away while the agent daemon runs: handshakes fail and
#    the log says why; the daemon keeps running; once the token is back a
#    SIGHUP (identity reload) makes it serve again without a restart; it
#    exits cleanly on SIGTERM.
# Not automatic yet: pkcs11-provider 1.0 keeps the key's object handle in
# the EVP_PKEY, and SoftHSM2 (like a reinserted token) invalidates it, so
# without the reload every later signature fails with
# CKR_OBJECT_HANDLE_INVALID; see docs/pkcs11.md.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/p11lib.sh"
FAULTY="$TOP_BUILDDIR/tests/pkcs11/.libs/faulty-pkcs11.so"
[ -e "$FAULTY" ] || { make -C "$TOP_BUILDDIR" tests/pkcs11/faulty-pkcs11.la >/dev/null 2>&1; }
[ -e "$FAULTY" ]; ok $? "the fault-injecting module is built ($FAULTY)"
export TETHER_P11_FAULT_MODULE="$SOFTHSM_LIB"
export TETHER_P11_FAULT_FILE="$TMP/fault"
export TETHER_P11_FAULT_LOG="$TMP/faults.log"

H="$TMP/home"
A=(--home "$H")
SPORT=$(free_port)
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
printf '\n[polling]\naddress = 127.0.0.1:%s\nwait = 10\n' "$SPORT" >> "$H/server-default/server.ini"
"$AGENT" create-instance "${A[@]}" >/dev/null
run_ok "agent on pkcs11 through the faulty module (a module path)" \
	"$AGENT" configure "${A[@]}" --provider pkcs11 --pkcs11-module "$FAULTY" \
	--pkcs11-token "pkcs11:token=$LABEL" --pkcs11-pin-file "$TMP/pin"
run_ok "new-certificate on the token, through the faulty module" "$AGENT" new-certificate "${A[@]}"
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
APORT=$(free_port)
"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null

# --- a token without RSA-PSS: the RSA identity is capped at TLS 1.2 ---
export TETHER_P11_FAULT_NO_PSS=1
bg "$AGENT" run "${A[@]}" 2>"$TMP/agent-nopss.log"
APID=$LAST_PID
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
like "$TMP/agent-nopss.log" "token '$LABEL' has no RSA-PSS.*limited to TLS 1.2" "no RSA-PSS: the agent's log says it is limited to TLS 1.2"
bg "$SERVER" run "${A[@]}" 2>>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
run_ok "target add" "$SERVER" target add "${A[@]}" hsm --listening 127.0.0.1:$APORT --thumbprint "$AT"
"$SERVER" health "${A[@]}" hsm --json > "$TMP/h.json"
is "$(p11_json "$TMP/h.json" 'd[0]["state"]')" healthy "no RSA-PSS: healthy"
is "$(p11_json "$TMP/h.json" 'd[0]["tls_version"]')" TLSv1.2 "no RSA-PSS: TLS 1.2 negotiated (PKCS#1 v1.5 on the token)"
"$AGENT" doctor "${A[@]}" > "$TMP/doctor" 2>&1
like "$TMP/doctor" "capped at TLS 1.2.*has no RSA-PSS" "no RSA-PSS: doctor says the identity is capped at TLS 1.2"
unlike "$TMP/doctor" "tls13.*FAIL|FAIL.*tls13" "no RSA-PSS: doctor warns, it does not fail the TLS 1.3 check"
kill -TERM $APID $SPID; wait $APID; wait $SPID
unset TETHER_P11_FAULT_NO_PSS

start_server() {
	bg "$SERVER" run "${A[@]}" 2>>"$TMP/server.log"
	SPID=$LAST_PID
	wait_for test -S "$H/server-default/run/admin.sock"
}
# A new server process, so that the next health needs a new handshake (the
# server keeps its connections to targets; resumption is off on pkcs11).
restart_server() {
	kill -TERM $SPID; wait $SPID 2>/dev/null
	start_server
}
health_json() { "$SERVER" health "${A[@]}" hsm --json > "$TMP/h.json" 2>"$TMP/h.err"; }
state() { p11_json "$TMP/h.json" 'd[0]["state"]' 2>/dev/null; }

bg "$AGENT" run "${A[@]}" 2>"$TMP/agent.log"
APID=$LAST_PID
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
start_server
health_json; is "$(state)" healthy "healthy before any fault"

for fault in removed session; do
	case $fault in
	removed) rv=CKR_DEVICE_REMOVED; text="The token was not present in its slot" ;;
	session) rv=CKR_SESSION_HANDLE_INVALID; text="Invalid Session Handle" ;;
	esac
	echo "# --- fault window: $rv ---"
	: > "$TMP/faults.log"
	lines=$(wc -l < "$TMP/agent.log")
	echo $fault > "$TMP/fault"
	restart_server
	health_json
	[ "$(state)" != healthy ]; ok $? "$rv: health is not healthy while the token is gone ($(state))"
	grep -q "$rv" "$TMP/faults.log"; ok $? "$rv: the module really injected it"
	tail -n +$((lines + 1)) "$TMP/agent.log" > "$TMP/agent.window"
	like "$TMP/agent.window" "handshake with .* failed.*$text" "$rv: the agent's log says the handshake failed on the token ($text)"
	kill -0 $APID; ok $? "$rv: the agent daemon is still running"
	rm -f "$TMP/fault"
	# the token is back, and the agent still answers TCP
	bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT" 2>/dev/null; ok $? "$rv: the agent still accepts connections after the window"
done

# SIGHUP reloads the identity (a new key object, found again on the token)
kill -HUP $APID
wait_for grep -q "reload" "$TMP/agent.log"
sleep 0.5
restart_server
health_json
is "$(state)" healthy "after the token is back, SIGHUP makes the agent serve again (no restart)"

kill -TERM $APID
for i in $(seq 1 100); do kill -0 $APID 2>/dev/null || break; sleep 0.1; done
wait $APID; is "$?" "0" "the agent exits 0 on SIGTERM after the faults"
unlike "$TMP/agent.log" "Segmentation|Aborted|AddressSanitizer" "no crash in teardown"
kill -TERM $SPID; wait $SPID
done_testing
