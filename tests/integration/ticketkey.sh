#!/bin/bash
# The server's polling port issues TLS session tickets; their key
# (<state>/ticket.key) is renewed every [tls] ticket-lifetime (12 h) while
# the server runs, not only when it starts, and fresh tickets reach
# long-lived connections.  (The listening agent's renewal is in listening.sh.)
. "$(dirname "$0")/lib.sh"
H="$TMP/home"
A=(--home "$H")
SPORT=$(free_port)
"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" --key-type ec-p256 >/dev/null
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" --key-type ec-p256 >/dev/null
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
printf '[polling]\naddress = 127.0.0.1:%s\n' $SPORT >>"$H/server-default/server.ini"
"$AGENT" configure "${A[@]}" --mode polling --server 127.0.0.1:$SPORT --trust "$ST" >/dev/null
bg "$SERVER" run "${A[@]}" 2>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
"$SERVER" target add "${A[@]}" pa --polling --thumbprint "$AT" >/dev/null
bg "$AGENT" run "${A[@]}" 2>"$TMP/agent.log"
AGPID=$LAST_PID
wait_for "$SERVER" health "${A[@]}" pa
ok $? "a polling agent is connected"
TK="$H/server-default/state/ticket.key"
[ -f "$TK" ]; ok $? "the server keeps a ticket key for its polling port"
is "$(stat -c %a "$TK" 2>/dev/null)" 600 "mode 0600"
k0=$(sha256sum <"$TK")
sleep 1
is "$(sha256sum <"$TK")" "$k0" "a fresh key is left alone"
touch -d '13 hours ago' "$TK"
mark=$(wc -l <"$TMP/server.log")
for i in $(seq 1 100); do [ "$(sha256sum <"$TK")" != "$k0" ] && break; sleep 0.25; done
[ "$(sha256sum <"$TK")" != "$k0" ]; ok $? "a key 13 h old is replaced while the server runs (checked every 10 s)"
is "$(stat -c %a "$TK")" 600 "the new key file is 0600"
wait_for sh -c "tail -n +$((mark + 1)) '$TMP/server.log' | grep -q 'session ticket key renewed'"
ok $? "the server logs the renewal"
run_ok "health after the renewal" "$SERVER" health "${A[@]}" pa
kill $SPID; wait $SPID
is "$?" 0 "the server stops cleanly on SIGTERM (the renewal timer does not hold it)"

# The ticket goes out with the server's HELLO answer, and not to a client
# whose HELLO says it keeps no sessions (no-tls-tickets, docs/protocol.md).
# A server restart: the agent comes back, resumed once it holds a ticket
# from the current key.
restart_server() { # LOG: start the server, wait for the agent's next connection
	local mark i
	bg env TETHER_DEBUG=tls "$SERVER" run "${A[@]}" 2>"$1"
	SPID=$LAST_PID
	for i in $(seq 1 200); do grep -q "polling agent pa connected" "$1" 2>/dev/null && return 0; sleep 0.1; done
	return 1
}
restart_server "$TMP/s1.log"; ok $? "the agent reconnects after a server restart"
kill $SPID; wait $SPID
restart_server "$TMP/s2.log"; ok $? "and after a second restart"
like "$TMP/s2.log" "polling agent pa connected from .*, resumed\)" "with the ticket it got with the server's answer, it resumes"
unlike "$TMP/s2.log" "no session ticket" "a ticket is issued to an agent that keeps sessions"
kill $SPID; wait $SPID
# A client that resumed with a young ticket gets no new one (it keeps using
# it: making a ticket parses the certificate again); it must still resume
# after the next restart with the ticket it already has.
restart_server "$TMP/s2b.log"; ok $? "and after a third restart"
like "$TMP/s2b.log" "polling agent pa connected from .*, resumed\)" "it resumes again with the ticket it kept"
kill $SPID; wait $SPID
# --- tickets over a long connection ([tls] ticket-lifetime) ---
# The ticket lifetime is the key's renewal period.  An agent connected
# longer than one lifetime, across a renewal of the key, still resumes
# after a restart: the server sends a fresh ticket (made with the current
# key) once the last is half its lifetime old, the agent keeps the newest,
# and the key before the current one still decrypts.
wait_long() { # SECONDS CMD...: poll CMD every 0.25 s for at most SECONDS
	local n=$(($1 * 4)) i; shift
	for i in $(seq 1 $n); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
	return 1
}
since() { tail -n +$(($2 + 1)) "$1" | grep -qE -- "$3"; } # FILE MARK REGEX
kill $AGPID; wait $AGPID 2>/dev/null
printf '\n[tls]\nticket-lifetime = 5\n' >>"$H/server-default/server.ini"
run_exit 1 "a ticket lifetime under 10 s is refused" "$SERVER" run "${A[@]}"
like "$TMP/err" "ticket-lifetime.*10 to 604800" "saying what is allowed"
sed -i 's/^ticket-lifetime = 5$/ticket-lifetime = 20/' "$H/server-default/server.ini"
bg env TETHER_DEBUG=tls "$SERVER" run "${A[@]}" 2>"$TMP/l1.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
bg env TETHER_DEBUG=tls "$AGENT" run "${A[@]}" 2>"$TMP/agent2.log"
AGPID=$LAST_PID
wait_long 10 grep -q "polling agent pa connected" "$TMP/l1.log"; ok $? "an agent connects to a server whose tickets live 20 s"
t0=$(date +%s)
unlike "$TMP/l1.log" "polling agent pa connected from .*, resumed\)" "with a full handshake (a new agent process holds no session)"
wait_long 45 grep -q "session ticket key renewed (older than 20 s)" "$TMP/l1.log"
ok $? "the ticket key is renewed after 20 s while the agent stays connected"
mark=$(grep -n "session ticket key renewed" "$TMP/l1.log" | head -1 | cut -d: -f1)
wait_long 25 since "$TMP/l1.log" "$mark" "fresh session ticket sent"
ok $? "then the server sends the long-lived connection a fresh ticket, made with the new key"
amark=$(wc -l <"$TMP/agent2.log")
wait_long 5 grep -q "kept the fresh TLS session" "$TMP/agent2.log"; ok $? "the agent keeps it"
while [ $(($(date +%s) - t0)) -le 22 ]; do sleep 0.5; done
ok 0 "the agent has been connected longer than one ticket lifetime ($(($(date +%s) - t0)) s)"
kill $SPID; wait $SPID
restart_server "$TMP/s4.log"; ok $? "after a server restart the agent reconnects"
like "$TMP/s4.log" "polling agent pa connected from .*, resumed\)" "resumed: its newest ticket is current and made with a key the server still has"
kill $SPID; wait $SPID
printf '\n[tls]\nresumption = off\n' >>"$H/agent-default/agent.ini"
kill $AGPID; wait $AGPID 2>/dev/null
bg "$AGENT" run "${A[@]}" 2>>"$TMP/agent.log"
AGPID=$LAST_PID
restart_server "$TMP/s3.log"; ok $? "an agent with resumption off connects"
like "$TMP/s3.log" "keeps no TLS sessions: no session ticket" "it gets no session ticket (its HELLO says no-tls-tickets)"
unlike "$TMP/s3.log" "resumed\)" "and resumes nothing"
run_ok "health without tickets" "$SERVER" health "${A[@]}" pa
# the connection outlives half a ticket's lifetime (20 s here) and the
# longest random delay: still no ticket, none is ever re-issued to it
sleep 16
unlike "$TMP/s3.log" "fresh session ticket sent" "and no fresh ticket later on its long-lived connection"
kill $SPID; wait $SPID
done_testing
