#!/bin/bash
# Agent trust: configure --trust/--remove-trust/--reset-trust/--recovery-trust,
# list-trust, validation; bad input changes nothing; config edits keep comments.
. "$(dirname "$0")/lib.sh"
H="$TMP/home"
A=(--home "$H")
T1=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
T2=BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB:BB
T2L=bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
R1=cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc

run_ok "create agent" "$AGENT" create-instance "${A[@]}"
run_ok "list-trust empty" "$AGENT" list-trust "${A[@]}"
like "$TMP/out" "No trusted servers" "says none are trusted and how to add"
like "$TMP/out" "'tether-agent configure --home $H --trust THUMBPRINT'" "the command it suggests acts on this --home"
run_ok "trust two (one upper case with colons)" "$AGENT" configure "${A[@]}" --trust $T1 --trust $T2
like "$TMP/out" "Trusted: $T2L" "normalised to lower-case hex"
run_ok "list-trust --json" "$AGENT" list-trust "${A[@]}" --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(e["sha256"] for e in d["trusted"]))' "$TMP/out" > "$TMP/l"
is "$(cat "$TMP/l")" "$T1 $T2L" "both trusted, in order"
is "$(stat -c %a "$H/agent-default/state/trust.json")" "600" "trust state file is 0600"
run_ok "trusting again is idempotent" "$AGENT" configure "${A[@]}" --trust $T1
like "$TMP/out" "Already trusted" "says already trusted"

S0=$(snapshot "$H")
run_exit 2 "thumbprint of the wrong length" "$AGENT" configure "${A[@]}" --trust abcd
like "$TMP/err" "'abcd' is not a SHA-256 thumbprint" "names the bad input"
run_exit 2 "non-hex thumbprint among good ones" "$AGENT" configure "${A[@]}" --trust $R1 --trust ${T1%a}g
like "$TMP/err" "not a hex digit" "says which character is wrong"
run_exit 2 "SHA-1 thumbprint refused" "$AGENT" configure "${A[@]}" --trust 0123456789abcdef0123456789abcdef01234567
like "$TMP/err" "SHA-1" "explains SHA-1 is never trusted"
run_exit 2 "configure with nothing to do" "$AGENT" configure "${A[@]}"
run_exit 2 "bad listen address" "$AGENT" configure "${A[@]}" --listen nowhere
is "$(snapshot "$H")" "$S0" "failed configure calls change nothing"

run_ok "remove-trust" "$AGENT" configure "${A[@]}" --remove-trust $T1
run_ok "list-trust" "$AGENT" list-trust "${A[@]}"
unlike "$TMP/out" "$T1" "removed thumbprint gone"
like "$TMP/out" "trusted  $T2L" "other one kept"
run_ok "recovery-trust" "$AGENT" configure "${A[@]}" --recovery-trust $R1
run_ok "reset-trust then trust" "$AGENT" configure "${A[@]}" --reset-trust --trust $T1
run_ok "list-trust" "$AGENT" list-trust "${A[@]}"
is "$(grep -c '^trusted' "$TMP/out")" "1" "reset removed the old set; one trusted"
like "$TMP/out" "recovery $R1" "recovery thumbprint kept across reset"

# config edits keep comments and order
printf '; my comment\n' >> "$H/agent-default/agent.ini"
run_ok "configure --listen" "$AGENT" configure "${A[@]}" --listen 127.0.0.1:12345
like "$H/agent-default/agent.ini" "^address = 127.0.0.1:12345" "address set in the file"
like "$H/agent-default/agent.ini" "^; my comment" "comment kept"
like "$H/agent-default/agent.ini" "^; tether-agent configuration" "header comment kept"
run_ok "show-configuration" "$AGENT" show-configuration "${A[@]}"
like "$TMP/out" "address = 127.0.0.1:12345" "new address shown"

# concurrent writers do not lose updates (file lock)
for i in $(seq 1 8); do
	tp=$(printf '%064x' $i)
	"$AGENT" configure "${A[@]}" --trust $tp >/dev/null 2>&1 &
done
wait
"$AGENT" list-trust "${A[@]}" --json > "$TMP/out"
n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["trusted"]))' "$TMP/out")
is "$n" "9" "8 concurrent --trust calls all landed (lock)"

# 20 concurrent configure calls, each changing the trust AND the INI (one
# [polling] server each): every change lands in both (the INI is edited
# under a lock too)
pids=""
for i in $(seq 1 20); do
	tp=$(printf 'c%063x' $i)
	timeout 60 "$AGENT" configure "${A[@]}" --trust $tp --add-server 127.0.0.1:$((20000 + i)) >"$TMP/cc.$i" 2>&1 &
	pids="$pids $!"
done
bad=0
for p in $pids; do wait $p || bad=$((bad + 1)); done
is "$bad" "0" "20 concurrent configure --trust --add-server all succeed"
"$AGENT" list-trust "${A[@]}" --json > "$TMP/out"
n=$(python3 -c 'import json,sys; print(sum(1 for t in json.load(open(sys.argv[1]))["trusted"] if t["sha256"].startswith("c")))' "$TMP/out")
is "$n" "20" "all 20 trusted thumbprints landed"
n=$(grep -cE '^server *= *127\.0\.0\.1:200[0-2][0-9]$' "$H/agent-default/agent.ini")
is "$n" "20" "all 20 [polling] servers landed in the INI"

# configure with INI and trust changes: a trust failure leaves the INI as it was
cp "$H/agent-default/state/trust.json" "$TMP/trust.good"
echo '{ broken' > "$H/agent-default/state/trust.json"
S0=$(snapshot "$H")
run_exit 1 "configure --trust --add-server with an unreadable trust file" "$AGENT" configure "${A[@]}" --trust "$(printf 'd%063x' 1)" --add-server 127.0.0.1:30000
is "$(snapshot "$H")" "$S0" "trust failed: the INI is unchanged too"
cp "$TMP/trust.good" "$H/agent-default/state/trust.json"

# a configure that waits too long on the INI lock says who holds it
L="$H/agent-default/agent.ini.lock"
( exec 9<>"$L"; flock 9; echo $BASHPID >"$L"; exec sleep 15 ) &
holder=$!
for i in $(seq 1 50); do [ "$(cat "$L" 2>/dev/null)" = "$holder" ] && break; sleep 0.1; done
run_exit 1 "configure while another process holds the INI lock" "$AGENT" configure "${A[@]}" --listen 127.0.0.1:12346
like "$TMP/err" "agent.ini.lock is held by another process \(pid $holder\) for more than 10 s: let it finish \(or stop it\) and try again" "names the lock, its holder and what to do"
kill $holder 2>/dev/null; wait $holder 2>/dev/null

# settings a running agent does not reload say so; trust changes do not
run_ok "configure --landing-page off" "$AGENT" configure "${A[@]}" --landing-page off
like "$TMP/out" "^Restart the agent to apply these settings" "a setting that needs a restart says so"
run_ok "configure --trust" "$AGENT" configure "${A[@]}" --trust "$(printf 'c%.0s' $(seq 64))"
unlike "$TMP/out" "Restart the agent" "a trust change (applied at once) does not ask for a restart"
done_testing
