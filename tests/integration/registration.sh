#!/bin/bash
# Registration with approval: tether-agent register-with against a real
# tether-server on loopback.  Pending until accepted (the agent gets
# nothing before), reject, one-time tokens (accepted at once; used, expired
# and other-server tokens refused, the last by the agent before it sends
# anything), a name collision never replacing a pin, the pre-authentication
# connection serving nothing but 'register' (a Python ssl client), the
# per-connection, per-address rate and queue bounds.
. "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null || skip_all "python3 is not installed"
command -v openssl >/dev/null || skip_all "openssl is not installed"
PEER="$TOP_SRCDIR/tests/integration/register_peer.py"
H="$TMP/home"
S=(--home "$H")
SPORT=$(free_port)
AUDIT="$H/server-default/state/audit.log"

"$SERVER" create-instance "${S[@]}" >/dev/null
"$SERVER" new-certificate "${S[@]}" --key-type ec-p256 >/dev/null
ST=$("$SERVER" show-thumbprint "${S[@]}" | head -1)
printf '[polling]\naddress = 127.0.0.1:%s\nwait = 3\n[registration]\nenabled = on\nrate = 600\n' $SPORT >> "$H/server-default/server.ini"
# agents, each with its own home and certificate
for a in a1 a2 a3 a4 a5 a6 a7; do
	"$AGENT" create-instance --home "$TMP/$a" >/dev/null
	"$AGENT" new-certificate --home "$TMP/$a" --key-type ec-p256 >/dev/null
	eval "T_$a=\$(\"\$AGENT\" show-thumbprint --home \"\$TMP/\$a\" | head -1)"
done
A1=(--home "$TMP/a1")

run_exit 1 "register-with while no server runs: a clear failure" \
	"$AGENT" register-with "${A1[@]}" --server 127.0.0.1:$SPORT --name web1 --server-thumbprint "$ST"
like "$TMP/err" "cannot register with 127.0.0.1:$SPORT" "says where it could not register"

bg "$SERVER" run "${S[@]}" 2>"$TMP/server.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"

# --- no thumbprint to check: print it and stop -------------------------------
run_exit 1 "without --server-thumbprint or a token: stops" \
	"$AGENT" register-with "${A1[@]}" --server 127.0.0.1:$SPORT --name web1
like "$TMP/out" "SHA-256 $ST" "prints the server's SHA-256 thumbprint"
like "$TMP/out" "SHA-1 +([0-9A-F]{2}:){19}[0-9A-F]{2} \(for reference only\)" "and its SHA-1 for reference"
like "$TMP/err" "run again with --server-thumbprint $ST \(or --yes" "says how to go on"
run_ok "registrations list" "$SERVER" registrations list "${S[@]}" --json
is "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$TMP/out")" 0 "nothing was registered"
run_exit 1 "a wrong --server-thumbprint is refused" \
	"$AGENT" register-with "${A1[@]}" --server 127.0.0.1:$SPORT --name web1 --server-thumbprint "$(printf '%064x' 9)"
like "$TMP/err" "presented certificate $ST, but --server-thumbprint names 0{63}9: nothing was sent" "names both thumbprints"

# --- pending until accepted ------------------------------------------------
run_ok "register-with --server-thumbprint: pending" \
	"$AGENT" register-with "${A1[@]}" --server 127.0.0.1:$SPORT --name web1 --tag lab --server-thumbprint "$ST"
like "$TMP/out" "Registration 1 is pending" "pending, id 1"
like "$TMP/out" "tether-server registrations accept 1" "says what to run on the server"
like "$TMP/out" "tether-agent run" "and on the agent"
run_ok "asking again" "$AGENT" register-with "${A1[@]}" --server 127.0.0.1:$SPORT --name web1 --tag lab --server-thumbprint "$ST" --json
is "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["state"], d["id"])' "$TMP/out")" "pending 1" "the same certificate gets the same pending id"
like "$TMP/a1/agent-default/agent.ini" "^mode = polling" "the agent is configured for polling"
like "$TMP/a1/agent-default/agent.ini" "^server = 127.0.0.1:$SPORT" "with this server"
is "$(grep -c "^server = " "$TMP/a1/agent-default/agent.ini")" 1 "listed once"
"$AGENT" list-trust "${A1[@]}" > "$TMP/trust"
like "$TMP/trust" "trusted +$ST" "the agent trusts the server"
run_ok "registrations list" "$SERVER" registrations list "${S[@]}"
like "$TMP/out" "^1 +pending +web1 +polling +$T_a1 +127.0.0.1:" "the list shows the pending registration and its thumbprint"

bg "$AGENT" run "${A1[@]}" 2>"$TMP/a1.log"
A1PID=$LAST_PID
sleep 1
run_exit 1 "before acceptance the agent is no target" "$SERVER" health "${S[@]}" web1
like "$TMP/err" "no target named 'web1'" "health: no such target"
unlike "$AUDIT" "\"who\":\"agent $T_a1\",\"what\":\"(health|script|file)" "the server sent the agent nothing"
run_ok "registrations accept 1" "$SERVER" registrations accept "${S[@]}" 1
like "$TMP/out" "Registration 1 accepted: polling target web1 pinned to $T_a1" "accepted, pinned to the registered thumbprint"
# the agent already running waits in the registration role; acceptance
# closes that connection and it comes back as the target
wait_for grep -q "polling agent web1 connected" "$TMP/server.log"
ok $? "the agent that was already running connects after acceptance"
run_ok "health web1" "$SERVER" health "${S[@]}" web1 --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))[0]; assert d["state"]=="healthy" and d["peer_sha256"]==sys.argv[2], d' "$TMP/out" "$T_a1"
ok $? "healthy, and it is the registered certificate"
run_ok "target show web1" "$SERVER" target show "${S[@]}" web1 --json
like "$TMP/out" "\"lab\"" "the target carries the tag asked for"
run_exit 1 "accepting twice" "$SERVER" registrations accept "${S[@]}" 1
like "$TMP/err" "already accepted" "says it was already accepted"
like "$AUDIT" "\"what\":\"registration.accept\",\"target\":\"web1\",\"result\":\"ok\"" "the decision is audited"
like "$AUDIT" "\"who\":\"agent $T_a1\",\"what\":\"register\",\"target\":\"web1\",\"result\":\"ok\"" "the request is audited"

# --- reject ------------------------------------------------------------------
run_ok "a2 registers" "$AGENT" register-with --home "$TMP/a2" --server 127.0.0.1:$SPORT --name web2 --server-thumbprint "$ST" --json
R2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$TMP/out")
run_ok "registrations reject $R2" "$SERVER" registrations reject "${S[@]}" "$R2"
like "$TMP/out" "Registration $R2 rejected \(certificate $T_a2\)" "rejected"
run_exit 1 "a rejected certificate asking again is refused" \
	"$AGENT" register-with --home "$TMP/a2" --server 127.0.0.1:$SPORT --name web2 --server-thumbprint "$ST"
like "$TMP/err" "rejected registration $R2" "says it was rejected"
run_exit 1 "health web2" "$SERVER" health "${S[@]}" web2
"$SERVER" registrations list "${S[@]}" --state rejected > "$TMP/rej"
like "$TMP/rej" "^$R2 +rejected +web2" "the list shows it rejected"

# --- tokens ------------------------------------------------------------------
run_ok "token create" "$SERVER" token create "${S[@]}" --expires 1h --tag auto
TOK=$(cat "$TMP/out")
[[ "$TOK" =~ ^tether1\.[0-9a-f]{16}\.[0-9a-f]{64}\.$ST$ ]]; ok $? "the token has the form tether1.<id>.<secret>.<server-sha256>"
TOKID=$(echo "$TOK" | cut -d. -f2)
SECRET=$(echo "$TOK" | cut -d. -f3)
unlike "$H/server-default/state/registry.db" "$SECRET" "the secret is not stored"
printf '%s\n' "$TOK" > "$TMP/tok"; chmod 600 "$TMP/tok"
run_ok "a3 registers with the token" "$AGENT" register-with --home "$TMP/a3" --server 127.0.0.1:$SPORT --name web3 --token-file "$TMP/tok"
like "$TMP/out" "Registered: the server accepted this agent as target web3" "accepted at once, no manual step"
bg "$AGENT" run --home "$TMP/a3" 2>"$TMP/a3.log"
wait_for grep -q "polling agent web3 connected" "$TMP/server.log"
run_ok "health web3" "$SERVER" health "${S[@]}" web3
run_ok "target show web3" "$SERVER" target show "${S[@]}" web3 --json
like "$TMP/out" "\"auto\"" "the target has the token's tag"
"$SERVER" token list "${S[@]}" > "$TMP/tl"
like "$TMP/tl" "^$TOKID +used .*$T_a3" "the token is used, by a3's certificate"
run_exit 1 "a used token is refused" "$AGENT" register-with --home "$TMP/a4" --server 127.0.0.1:$SPORT --name web4 --token-file "$TMP/tok"
like "$TMP/err" "already used" "says the token was used"
run_exit 1 "health web4" "$SERVER" health "${S[@]}" web4

run_ok "token create --expires 1s" "$SERVER" token create "${S[@]}" --expires 1s
printf '%s\n' "$(cat "$TMP/out")" > "$TMP/tok1s"; chmod 600 "$TMP/tok1s"
sleep 2
run_exit 1 "an expired token is refused" "$AGENT" register-with --home "$TMP/a4" --server 127.0.0.1:$SPORT --name web4 --token-file "$TMP/tok1s"
like "$TMP/err" "expired" "says the token expired"
run_exit 2 "token create --expires nonsense" "$SERVER" token create "${S[@]}" --expires soon

run_ok "token create" "$SERVER" token create "${S[@]}"
GOOD=$(cat "$TMP/out")
printf '%s.%064x\n' "${GOOD%.*}" 5 > "$TMP/tokother"; chmod 600 "$TMP/tokother"
before=$(grep -c "agent $T_a4" "$AUDIT")
run_exit 1 "a token naming another server's thumbprint is refused by the agent" \
	"$AGENT" register-with --home "$TMP/a4" --server 127.0.0.1:$SPORT --name web4 --token-file "$TMP/tokother"
like "$TMP/err" "presented certificate $ST, but the token names 0{63}5: nothing was sent" "names both thumbprints"
is "$(grep -c "agent $T_a4" "$AUDIT")" "$before" "the server received no request from it"
run_exit 2 "--server-thumbprint and the token disagree" \
	"$AGENT" register-with --home "$TMP/a4" --server 127.0.0.1:$SPORT --name web4 --token-file "$TMP/tokother" --server-thumbprint "$ST"
printf '%s\n' "$GOOD" > "$TMP/tokgood"; chmod 600 "$TMP/tokgood"
run_ok "token revoke" "$SERVER" token revoke "${S[@]}" "$(echo "$GOOD" | cut -d. -f2)"
run_exit 1 "a revoked token is refused" "$AGENT" register-with --home "$TMP/a4" --server 127.0.0.1:$SPORT --name web4 --token-file "$TMP/tokgood"
like "$TMP/err" "revoked" "says it was revoked"

# --- a name that collides with a target waits, and never replaces its pin ---
run_ok "token create" "$SERVER" token create "${S[@]}"
printf '%s\n' "$(cat "$TMP/out")" > "$TMP/tok5"; chmod 600 "$TMP/tok5"
run_ok "a5 asks for the name web1, with a valid token" \
	"$AGENT" register-with --home "$TMP/a5" --server 127.0.0.1:$SPORT --name web1 --token-file "$TMP/tok5" --json
is "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' "$TMP/out")" pending "it waits for approval, token or not"
R5=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$TMP/out")
"$SERVER" target show "${S[@]}" web1 --json > "$TMP/t1"
like "$TMP/t1" "\"sha256\": \"$T_a1\"" "web1 is still pinned to a1"
run_exit 1 "accepting it under the taken name is refused" "$SERVER" registrations accept "${S[@]}" "$R5"
like "$TMP/err" "already exists .*never replaces its pin.*--name NEW" "says why, and what to do"
"$SERVER" target show "${S[@]}" web1 --json > "$TMP/t1"
like "$TMP/t1" "\"sha256\": \"$T_a1\"" "web1 is still pinned to a1"
run_ok "accept --name web5" "$SERVER" registrations accept "${S[@]}" "$R5" --name web5
"$SERVER" target show "${S[@]}" web5 --json > "$TMP/t5"
like "$TMP/t5" "\"sha256\": \"$T_a5\"" "web5 is pinned to a5"
run_ok "health web1 (still a1)" "$SERVER" health "${S[@]}" web1

# --- the pre-authentication connection serves only 'register' ---------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/py.key" -out "$TMP/py.crt" \
	-days 2 -subj /CN=py >/dev/null 2>&1
PT=$(openssl x509 -in "$TMP/py.crt" -outform DER | sha256sum | cut -c1-64)
python3 "$PEER" 127.0.0.1 $SPORT "$TMP/py.crt" "$TMP/py.key" health 'trust.rotate:{"sha256":"'"$(printf '%064x' 7)"'"}' \
	'script.start:{"argv":["id"]}' 'register:{"name":"py1"}' > "$TMP/py.out" 2>&1
like "$TMP/py.out" "^health error forbidden untrusted .*only method it may call is 'register'" "health is refused on the pre-auth connection"
like "$TMP/py.out" "^trust.rotate error forbidden" "trust.rotate is refused"
like "$TMP/py.out" "^script.start error forbidden" "script.start is refused"
like "$TMP/py.out" '^register result \{"id": [0-9]+, "name_taken": false, "state": "pending"\}' "register is answered on the same connection"
like "$AUDIT" "\"who\":\"agent $PT\",\"what\":\"trust.rotate\",.*\"result\":\"error\"" "the refused calls are audited"
python3 "$PEER" 127.0.0.1 $SPORT "$TMP/py.crt" "$TMP/py.key" 'register:{"name":"py1","extra":1}' \
	'register:{"name":"bad name"}' "register:{\"name\":\"py1\",\"tags\":[\"$(head -c 5000 /dev/zero | tr '\0' a)\"]}" > "$TMP/py.out" 2>&1
like "$TMP/py.out" "^register error invalid_params bad_input .*'extra' is unknown" "unknown parameters are refused"
is "$(grep -c '^register error invalid_params' "$TMP/py.out")" 3 "bad names and oversized requests are refused"
python3 "$PEER" 127.0.0.1 $SPORT "$TMP/py.crt" "$TMP/py.key" health health health health health health health health \
	health health > "$TMP/py.out" 2>&1
like "$TMP/py.out" "^health error busy busy too many requests on one registration connection" "at most 8 requests on one connection"
like "$TMP/py.out" "^health closed" "then the server closes it"

# --- queue bound and rate per source address --------------------------------
pending=$("$SERVER" registrations list "${S[@]}" --state pending --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
kill $SPID; wait $SPID 2>/dev/null
sed -i "s/^rate = 600$/rate = 600\nmax-pending = $((pending + 1))/" "$H/server-default/server.ini"
bg "$SERVER" run "${S[@]}" 2>"$TMP/server3.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
run_ok "one more pending registration fits ($pending pending, bound $((pending + 1)))" \
	"$AGENT" register-with --home "$TMP/a6" --server 127.0.0.1:$SPORT --name web6 --server-thumbprint "$ST"
run_exit 1 "the next one is refused: the queue is full" \
	"$AGENT" register-with --home "$TMP/a7" --server 127.0.0.1:$SPORT --name web7 --server-thumbprint "$ST"
like "$TMP/err" "registration queue is full \($((pending + 1)) pending, the limit is $((pending + 1))\)" "a clear message"
run_ok "a6 asking again still gets its id" \
	"$AGENT" register-with --home "$TMP/a6" --server 127.0.0.1:$SPORT --name web6 --server-thumbprint "$ST"
run_ok "reject the py1 registration" "$SERVER" registrations reject "${S[@]}" \
	"$("$SERVER" registrations list "${S[@]}" --state pending --json | python3 -c 'import json,sys; print([r["id"] for r in json.load(sys.stdin) if r["name"]=="py1"][0])')"
run_ok "with room again, a7 is queued" \
	"$AGENT" register-with --home "$TMP/a7" --server 127.0.0.1:$SPORT --name web7 --server-thumbprint "$ST"

kill $SPID; wait $SPID 2>/dev/null
sed -i 's/^rate = 600$/rate = 3/' "$H/server-default/server.ini"
bg "$SERVER" run "${S[@]}" 2>"$TMP/server4.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
python3 "$PEER" 127.0.0.1 $SPORT "$TMP/py.crt" "$TMP/py.key" register register register register register > "$TMP/py.out" 2>&1
is "$(grep -c '^register error busy busy too many registration requests from this address' "$TMP/py.out")" 2 \
	"[registration] rate = 3: the 4th and 5th requests in a minute from one address are refused"

# --- registration off (the default): unregistered certificates are refused ----
kill $SPID; wait $SPID 2>/dev/null
sed -i 's/^enabled = on$/enabled = off/' "$H/server-default/server.ini"
bg "$SERVER" run "${S[@]}" 2>"$TMP/server5.log"
SPID=$LAST_PID
wait_for test -S "$H/server-default/run/admin.sock"
run_exit 1 "registration off: register-with is refused" \
	"$AGENT" register-with --home "$TMP/a4" --server 127.0.0.1:$SPORT --name web4 --server-thumbprint "$ST"
like "$TMP/err" "registration is probably off there.*\[registration\] enabled = on" "the agent says why and what to do"
python3 "$PEER" 127.0.0.1 $SPORT "$TMP/py.crt" "$TMP/py.key" 'register:{"name":"py2"}' > "$TMP/py.out" 2>&1
unlike "$TMP/py.out" "^register (result|error)" "no request is served to an unregistered certificate"
done_testing
