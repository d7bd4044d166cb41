#!/bin/bash
# Keepalive (protocol.md, section 6): a peer that stops answering PINGs
# but keeps sending is alive; a peer that sends nothing at all for two
# keepalive intervals after a PING is cut.  A listening agent with
# [timeouts] keepalive = 2 and a test peer (peer.py) that never answers a
# PING: one that sends a request every 3.8 s, one that goes silent.
. "$(dirname "$0")/lib.sh"
PEER="python3 $TOP_SRCDIR/tests/integration/peer.py"
H="$TMP/home"
A=(--home "$H")
APORT=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=peer \
	-keyout "$TMP/peer.key" -out "$TMP/peer.crt" 2>/dev/null
PT=$(openssl x509 -in "$TMP/peer.crt" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" --key-type ec-p256 >/dev/null
"$AGENT" configure "${A[@]}" --trust "$PT" --listen 127.0.0.1:$APORT >/dev/null
printf '[timeouts]\nkeepalive = 2\n' >>"$H/agent-default/agent.ini"
bg "$AGENT" run "${A[@]}" 2>"$TMP/agent.log"
wait_for sh -c "$PEER call 127.0.0.1 $APORT '$TMP/peer.crt' '$TMP/peer.key' health '{}' | grep -q ^result"
ok $? "the agent listens (keepalive 2 s)"

# PINGs unanswered, a request every 3.8 s: without the rule "anything that
# arrives after a PING answers it" the agent would cut this peer about 4 s
# after its first PING (about 6-7 s in), before the third request
timeout 60 $PEER call 127.0.0.1 $APORT "$TMP/peer.crt" "$TMP/peer.key" \
	health '{}' @sleep 3.8 health '{}' @sleep 3.8 health '{}' @sleep 3.8 health '{}' >"$TMP/busy" 2>&1
is "$(grep -c '^result' "$TMP/busy")" 4 "a peer that sends but never answers PINGs keeps its connection (4 answers over 11 s)"
unlike "$TMP/busy" '^closed' "and is never cut"

# silent: no PONG and nothing else after the first answer
mark=$(wc -l <"$TMP/agent.log")
timeout 60 $PEER call 127.0.0.1 $APORT "$TMP/peer.crt" "$TMP/peer.key" \
	health '{}' @sleep 12 health '{}' >"$TMP/silent" 2>&1
is "$(sed -n 1p "$TMP/silent" | cut -c1-6)" result "a silent peer gets its first answer"
is "$(sed -n 2p "$TMP/silent")" closed "and is cut before it speaks again, 12 s later"
tail -n +$((mark + 1)) "$TMP/agent.log" >"$TMP/new"
like "$TMP/new" 'stopped answering keepalive pings \(nothing for [0-9]+ ms\)' "the agent logs why"
ms=$(sed -n 's/.*stopped answering keepalive pings (nothing for \([0-9]*\) ms).*/\1/p' "$TMP/new" | head -1)
[ -n "$ms" ] && [ "$ms" -ge 4000 ]; ok $? "after at least two keepalive intervals of silence (${ms:-?} ms)"

run_ok "the agent still serves a new connection" $PEER call 127.0.0.1 $APORT "$TMP/peer.crt" "$TMP/peer.key" health '{}'
like "$TMP/out" '^result' "and answers it"
done_testing
