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
done_testing
