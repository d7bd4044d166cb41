#!/bin/bash
# The pkcs11 provider against tokens that misbehave, through the project's
# fault-injecting module (tests/pkcs11/faulty_module.c), which forwards to
# SoftHSM2 and can hide RSA-PSS or, while $TMP/fault exists, answer
# CKR_DEVICE_REMOVED (token calls: CKR_TOKEN_NOT_PRESENT) or
# CKR_SESSION_HANDLE_INVALID or CKR_USER_NOT_LOGGED_IN after closing every
# real session (so the login is really gone, as on a removal).
#  - a token without RSA-PSS: the RSA identity is capped at TLS 1.2 and
#    signs PKCS#1 v1.5; the log and doctor say so;
#  - the token goes away while the agent daemon runs: handshakes fail, the
#    log says why and that the token is gone; the daemon keeps running;
#    once the token is back the provider reopens its session, logs in and
#    reloads the key by itself (no SIGHUP, no restart): health turns
#    healthy again within a bounded wait and the log says the token is
#    back; a SIGHUP (identity reload) still works too; a token that stops
#    answering (the module's 'stall' window) does not stall the agent's
#    main loop while its periodic identity check waits for it; it exits
#    cleanly on SIGTERM;
#  - the same with the server's key on the token (the server signs as the
#    TLS client of a listening agent).
# pkcs11-provider 1.0 keeps the key's object handle in the EVP_PKEY, and
# SoftHSM2 (like a reinserted token) invalidates it: recovering means
# loading the key again from the token by its URI (docs/pkcs11.md).
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
start_agent() {
	bg "$AGENT" run "${A[@]}" 2>>"$1"
	APID=$LAST_PID
	wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
}
# The server's key on the token: a new agent process, so that the next
# health needs a new handshake, where the server signs as the TLS client.
restart_agent() {
	kill -TERM $APID; wait $APID 2>/dev/null
	start_agent "$TMP/agent2.log"
}
# Poll health (each after BOUNCE, so a new handshake) for up to 20 s: 0
# once healthy.
wait_healthy() {
	local i
	for i in $(seq 1 20); do
		$bounce
		health_json
		[ "$(state)" = healthy ] && return 0
		sleep 1
	done
	return 1
}

# fault_windows SIDE LOG: open each fault window in turn with SIDE's key
# on the token (LOG is that daemon's log), check the failure is reported
# and that it recovers by itself once the window closes.
fault_windows() {
	local side=$1 log=$2 fault rv text lines pid bounce
	[ "$side" = agent ] && bounce=restart_server || bounce=restart_agent
	for fault in removed session logout; do
		case $fault in
		removed) rv='CKR_(DEVICE_REMOVED|TOKEN_NOT_PRESENT)'; text="The token was not present in its slot|The device was removed" ;;
		session) rv=CKR_SESSION_HANDLE_INVALID; text="Invalid Session Handle" ;;
		logout) rv=CKR_USER_NOT_LOGGED_IN; text="not logged in" ;;
		esac
		echo "# --- $side on the token, fault window: $fault ---"
		: > "$TMP/faults.log"
		lines=$(wc -l < "$log")
		echo $fault > "$TMP/fault"
		$bounce
		health_json
		[ "$(state)" != healthy ]; ok $? "$side, $fault: health is not healthy while the token is gone ($(state))"
		grep -qE "$rv" "$TMP/faults.log"; ok $? "$side, $fault: the module really injected $rv"
		tail -n +$((lines + 1)) "$log" > "$TMP/window"
		if [ "$side" = agent ]; then
			like "$TMP/window" "handshake with .* failed.*($text)" "$side, $fault: the agent's log says the handshake failed on the token"
			like "$TMP/window" "handshake with .* failed \(token_unavailable\): .*the private key is on PKCS#11 token '$LABEL', which could not sign \($rv\)" \
				"$side, $fault: the agent's log classifies it token_unavailable, naming the token and the CKR_ code"
			like "$TMP/window" "hint: the private key is on a PKCS#11 token .*retries every 2 s" "$side, $fault: the agent's log gives the token hint"
			unlike "$TMP/window" "hint: .*(cipher|key-exchange group|signature scheme)" "$side, $fault: the agent's log gives no cipher/group hint"
			like "$TMP/h.json" "internal error.*the peer failed on its side, not over TLS parameters: its log says why" \
				"$side, $fault: the server's health says the agent failed on its side (internal_error), not over TLS parameters"
		else
			like "$TMP/h.json" "$text" "$side, $fault: health says the handshake failed on the token"
			is "$(p11_json "$TMP/h.json" 'd[0]["category"]')" token_unavailable "$side, $fault: health's category is token_unavailable"
			like "$TMP/h.json" "the private key is on PKCS#11 token '$LABEL', which could not sign \($rv\)" "$side, $fault: health's error names the token and the CKR_ code"
			"$SERVER" health "${A[@]}" hsm > "$TMP/h.txt" 2>&1
			like "$TMP/h.txt" "\(token_unavailable\)" "$side, $fault: 'health' prints the category"
			like "$TMP/h.txt" "hint: the private key is on a PKCS#11 token .*retries every 2 s" "$side, $fault: 'health' prints the token hint"
			unlike "$TMP/h.txt" "cipher|key-exchange group|signature scheme" "$side, $fault: 'health' gives no cipher/group hint"
			"$SERVER" doctor "${A[@]}" > "$TMP/doctor" 2>&1
			like "$TMP/doctor" "FAIL +target hsm +handshake_failed at the last check \(token_unavailable\)" "$side, $fault: doctor shows the target failed on the token"
			like "$TMP/doctor" "fix: the private key is on a PKCS#11 token" "$side, $fault: doctor's fix is the token hint"
			like "$TMP/doctor" "FAIL +identity +the identity cannot be loaded: .*(CKR_|tokens present: none)" "$side, $fault: doctor cannot load the identity from the token"
			unlike "$TMP/doctor" "fix: check the (name or path|permissions)" "$side, $fault: doctor's fixes do not blame names, paths or permissions"
			unlike "$TMP/doctor" "target hsm.*tether-ping|fix: .*tether-ping connect" "$side, $fault: doctor does not send to tether-ping for the token"
		fi
		like "$TMP/window" "token '$LABEL' is gone \($rv\): handshakes fail until it is back; retrying every [0-9]+ s" \
			"$side, $fault: the log says the token is gone, once"
		is "$(grep -c "token '$LABEL' is gone" "$TMP/window")" 1 "$side, $fault: 'gone' is logged once for the window"
		[ "$side" = agent ] && pid=$APID || pid=$SPID
		kill -0 $pid; ok $? "$side, $fault: the daemon is still running"
		rm -f "$TMP/fault"
		wait_healthy; ok $? "$side, $fault: healthy again within 20 s after the token is back, without SIGHUP or restart"
		tail -n +$((lines + 1)) "$log" > "$TMP/window"
		like "$TMP/window" "token '$LABEL' is back: identity reloaded" "$side, $fault: the log says the token is back and the identity reloaded"
		unlike "$TMP/window" "SIGHUP: reloading|reloading the identit" "$side, $fault: no reload was asked for"
	done
}

start_agent "$TMP/agent.log"
start_server
health_json; is "$(state)" healthy "healthy before any fault"

fault_windows agent "$TMP/agent.log"

# SIGHUP still reloads the identity (the key found again on the token),
# also right after a fault window closes.  The health check after it does
# not tell the reload from the automatic recovery (either serves again);
# the reload's own success is the log line.
echo removed > "$TMP/fault"
restart_server; health_json
rm -f "$TMP/fault"
kill -HUP $APID
wait_for grep -q "identity .* loaded; existing connections drain" "$TMP/agent.log"
ok $? "SIGHUP: the agent reloads its identity from the token"
sleep 0.5
restart_server
health_json
is "$(state)" healthy "SIGHUP after a fault window: the agent serves again"

# The agent's identity check (every 10 s: did new-certificate or
# use-staged-certificate change the current slot?) loads the identity from
# the token.  A token that stops answering (a network HSM) must not stall
# the main loop: signals and trust reloads go on meanwhile.
after() { tail -n +$((lines + 1)) "$TMP/agent.log" | grep -qE "$1"; }
: > "$TMP/faults.log"
lines=$(wc -l < "$TMP/agent.log")
echo stall > "$TMP/fault"
r=1
for i in $(seq 1 150); do grep -q stalled "$TMP/faults.log" && { r=0; break; }; sleep 0.1; done
ok $r "stall: the agent's periodic identity check reaches the token, which stops answering"
kill -HUP $APID
r=1
for i in $(seq 1 100); do after "trust loaded" && { r=0; break; }; sleep 0.1; done
ok $r "stall: SIGHUP is handled and the trust reloaded while the check waits for the token (it is not on the main loop)"
! grep -q released "$TMP/faults.log"; ok $? "stall: the token was still not answering then"
! after "identity .* loaded"; ok $? "stall: the SIGHUP's identity reload waits behind the check"
rm -f "$TMP/fault"
r=1
for i in $(seq 1 100); do after "identity .* loaded; existing connections drain" && { r=0; break; }; sleep 0.1; done
ok $r "stall: once the token answers, the SIGHUP's identity reload runs"
restart_server
health_json
is "$(state)" healthy "stall: the agent serves after the stall"

kill -TERM $APID
for i in $(seq 1 100); do kill -0 $APID 2>/dev/null || break; sleep 0.1; done
wait $APID; is "$?" "0" "the agent exits 0 on SIGTERM after the faults"
unlike "$TMP/agent.log" "Segmentation|Aborted|AddressSanitizer" "no crash in teardown"
kill -TERM $SPID; wait $SPID

# --- the server's key on the token: the server is the TLS client that
# signs (CertificateVerify of its client certificate) ---
H="$TMP/home2"
A=(--home "$H")
"$SERVER" create-instance "${A[@]}" >/dev/null
run_ok "server on pkcs11 through the faulty module" \
	"$SERVER" configure "${A[@]}" --provider pkcs11 --pkcs11-module "$FAULTY" \
	--pkcs11-token "pkcs11:token=$LABEL" --pkcs11-pin-file "$TMP/pin"
run_ok "the server's new-certificate on the token" "$SERVER" new-certificate "${A[@]}"
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
printf '\n[polling]\naddress = 127.0.0.1:%s\nwait = 10\n' "$(free_port)" >> "$H/server-default/server.ini"
"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" >/dev/null
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
APORT=$(free_port)
"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
# The agent issues session tickets (openssl provider, [tls] resumption auto
# is on): the server on the token, whose auto is off, resumes none of them
# as a TLS client either, so every handshake below signs on the token.
start_agent "$TMP/agent2.log"
: > "$TMP/server.log"
start_server
run_ok "target add (server on the token)" "$SERVER" target add "${A[@]}" hsm --listening 127.0.0.1:$APORT --thumbprint "$AT"
health_json; is "$(state)" healthy "server on the token: healthy before any fault"

fault_windows server "$TMP/server.log"

# Every handshake of the server with the agent was a full one (the agent
# logs ", resumed" for a resumed one): resumption auto is off with pkcs11,
# as the TLS client too.
n=$(grep -c "server [0-9a-f]* connected from" "$TMP/agent2.log")
[ "$n" -ge 4 ]; ok $? "server on the token: the agent saw $n full connections from it (at least one per window and the first)"
unlike "$TMP/agent2.log" "server [0-9a-f]* connected from .*, resumed\)" \
	"server on the token, resumption auto: no handshake was resumed (each signed on the token), though the agent issues tickets"
# [tls] resumption = on: the server warns, and then resumes as a client.
printf '\n[tls]\nresumption = on\n' >> "$H/server-default/server.ini"
lines=$(wc -l < "$TMP/server.log")
restart_server
tail -n +$((lines + 1)) "$TMP/server.log" > "$TMP/window"
like "$TMP/window" "resumption = on with the pkcs11 provider: .*a resumed handshake \(this side as TLS server or as client\) does not use the token's key" \
	"resumption = on: the server warns that resumed handshakes do not use the token"
health_json; is "$(state)" healthy "resumption = on: healthy (full handshake, a ticket kept)"
restart_agent
health_json; is "$(state)" healthy "resumption = on: healthy again after the agent restarted"
grep "connected from" "$TMP/agent2.log" | tail -n 1 > "$TMP/last"
like "$TMP/last" ", resumed\)" "resumption = on: the server resumed its session with the agent (no signature on the token)"

kill -TERM $SPID
for i in $(seq 1 100); do kill -0 $SPID 2>/dev/null || break; sleep 0.1; done
wait $SPID; is "$?" "0" "the server exits 0 on SIGTERM after the faults"
unlike "$TMP/server.log" "Segmentation|Aborted|AddressSanitizer" "no crash in the server's teardown"
kill -TERM $APID; wait $APID
done_testing
