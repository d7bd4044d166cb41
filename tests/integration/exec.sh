#!/bin/bash
# Remote execution end to end, in listening and in polling mode: a real
# agent and server daemon on loopback, tether-server exec / run-script /
# task against the agent's script service (agent/service_script.c).
. "$(dirname "$0")/lib.sh"
MARK="3599.$$$RANDOM"                 # a sleep of ours, to check it is gone
MODE=
# lib.sh's ok, with the mode in front of each description
ok() {
	_n=$((_n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $_n - ${MODE:+$MODE: }$2"; else echo "not ok $_n - ${MODE:+$MODE: }$2"; _failed=$((_failed + 1)); fi
}

X() { "$SERVER" exec "${A[@]}" web1 "$@"; }
last_task() { "$SERVER" task list "${A[@]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])'; }
task_field() { "$SERVER" task show "${A[@]}" "$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get(sys.argv[1], ""))' "$2"; }
start_server() {
	bg "$SERVER" run "${A[@]}" 2>>"$TMP/server-$MODE.log"
	SPID=$LAST_PID
	wait_for test -S "$H/server-default/run/admin.sock"
}
start_agent() {
	bg "$AGENT" run "${A[@]}" 2>>"$TMP/agent-$MODE.log"
	APID=$LAST_PID
}
# the agent can be reached: listening, its port answers; polling, it connected
agent_up() {
	if [ "$MODE" = listening ]; then
		wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
	else
		wait_for "$SERVER" health "${A[@]}" web1
	fi
}

suite() {
MODE=$1
H="$TMP/home-$MODE"
A=(--home "$H")
APORT=$(free_port)
SPORT=$(free_port)
echo "# --- $MODE mode ---"
"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" >/dev/null
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
printf '[polling]\naddress = 127.0.0.1:%s\nwait = 20\n' "$SPORT" >> "$H/server-default/server.ini"
if [ "$MODE" = listening ]; then
	run_ok "agent trusts the server" "$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT
else
	run_ok "agent trusts the server" "$AGENT" configure "${A[@]}" --trust "$ST" --mode polling --server 127.0.0.1:$SPORT
fi
start_agent
start_server
ok $? "server daemon started"
if [ "$MODE" = listening ]; then
	run_ok "target add" "$SERVER" target add "${A[@]}" web1 --listening 127.0.0.1:$APORT --thumbprint "$AT"
else
	run_ok "target add" "$SERVER" target add "${A[@]}" web1 --polling --thumbprint "$AT"
fi
agent_up
ok $? "the agent can be reached"

# --- exact stdout, stderr and exit code ---
X -- sh -c 'printf "out one\n"; printf "err one\n" >&2; printf "out two"; exit 7' >"$TMP/o" 2>"$TMP/e"
r=$?
is "$r" 7 "exec exits with the command's exit code"
is "$(od -c "$TMP/o")" "$(printf 'out one\nout two' | od -c)" "exact stdout"
is "$(od -c "$TMP/e")" "$(printf 'err one\n' | od -c)" "exact stderr"
X -- true >/dev/null 2>&1; is "$?" 0 "exit code 0"
X -- /nonexistent/program >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 127 "a missing program exits 127"
like "$TMP/e" "nonexistent/program" "and says which program"
X --env "GREETING=hello there" --cwd / -- sh -c 'echo "$GREETING"; pwd' >"$TMP/o" 2>&1
is "$(cat "$TMP/o")" "$(printf 'hello there\n/')" "--env and --cwd reach the command"
printf 'echo "from a file: $0" | sed "s|/.*||"\nexit 3\n' >"$TMP/s.sh"
"$SERVER" run-script "${A[@]}" web1 "$TMP/s.sh" >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 3 "run-script exits with the script's exit code"
like "$TMP/o" "^from a file: $" "run-script runs the file's text"
X --timeout 1 -- sleep 30 >/dev/null 2>&1; r=$?
is "$r" 124 "--timeout: exit 124"

# --- 100 000 lines, all of them, in order ---
X -- sh -c 'i=1; while [ $i -le 100000 ]; do echo "line $i"; i=$((i+1)); done' >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 0 "100 000 lines: exit 0"
seq 1 100000 | sed 's/^/line /' >"$TMP/want"
cmp -s "$TMP/o" "$TMP/want"; ok $? "100 000 lines: every line, in order ($(wc -l <"$TMP/o") lines)"
id=$(last_task)
"$SERVER" task logs "${A[@]}" "$id" >"$TMP/o2" 2>/dev/null
cmp -s "$TMP/o2" "$TMP/want"; ok $? "task logs gives the same 100 000 lines"

# --- cancel escalates: the command ignores SIGTERM ---
bg "$SERVER" exec "${A[@]}" web1 -- sh -c "trap '' TERM; echo started; sleep $MARK" >"$TMP/co" 2>"$TMP/ce"
XP=$LAST_PID
wait_for grep -q started "$TMP/co"
ok $? "the command started"
pgrep -f "sleep $MARK" >/dev/null; ok $? "its child runs on the agent"
t0=$(date +%s)
kill -TERM $XP
wait $XP; r=$?
t1=$(date +%s)
is "$r" 130 "exec interrupted exits 130"
id=$(last_task)
is "$(task_field "$id" state)" cancelled "the task is cancelled"
is "$(task_field "$id" exit_code)" 130 "with exit code 130"
pgrep -f "sleep $MARK" >/dev/null; r=$?
is "$r" 1 "the child that ignored SIGTERM is gone (killed after the grace, $((t1 - t0)) s)"

# --- isolation serializes two commands ---
F="$TMP/iso"
: >"$F"; rm -f "$F.go"
# the first holds the isolation lock until the test opens its gate (at most 30 s)
bg "$SERVER" exec "${A[@]}" web1 --isolation deploy -- sh -c "echo a1 >>$F; i=0; while [ ! -e $F.go ] && [ \$i -lt 300 ]; do sleep 0.1; i=\$((i+1)); done; echo a2 >>$F"
P1=$LAST_PID
wait_for grep -q a1 "$F"
first=$(last_task)
bg "$SERVER" exec "${A[@]}" web1 --isolation deploy -- sh -c "echo b >>$F"
P2=$LAST_PID
for i in $(seq 1 50); do id=$(last_task); [ "$id" != "$first" ] && break; sleep 0.1; done
# the server learns the state when script.start answers (it waits up to 1 s)
for i in $(seq 1 30); do s=$(task_field "$id" state); [ "$s" = pending ] || break; sleep 0.1; done
is "$s" queued "the second command waits (queued)"
touch "$F.go"
wait $P1; wait $P2
is "$(tr '\n' ' ' <"$F")" "a1 a2 b " "the second ran only after the first ended"

# --- the server is killed mid-script; after its restart the task completes ---
bg "$SERVER" exec "${A[@]}" web1 -- sh -c 'for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.5; done; echo done >&2; exit 5' >/dev/null 2>&1
XP=$LAST_PID
wait_for sh -c "'$SERVER' task list --home '$H' --json | grep -q '\"running\"'"
id=$(last_task)
kill -9 $SPID
wait $SPID 2>/dev/null
kill -9 $XP 2>/dev/null
wait $XP 2>/dev/null
sleep 4                                  # the script goes on and ends meanwhile
start_server
ok $? "server restarted"
for i in $(seq 1 300); do
	s=$(task_field "$id" state 2>/dev/null)
	[ "$s" = finished ] && break
	sleep 0.2
done
is "$s" finished "the task reattached and finished"
is "$(task_field "$id" exit_code)" 5 "with the script's exit code"
"$SERVER" task logs "${A[@]}" "$id" >"$TMP/o" 2>"$TMP/e"
is "$(cat "$TMP/o")" "$(printf 'tick %s\n' 1 2 3 4 5 6)" "task logs has every line written while the server was down"
is "$(cat "$TMP/e")" "done" "and the stderr"

# --- the agent's ticket directories are gone once tasks completed ---
for i in $(seq 1 50); do
	n=$(find "$H/agent-default" -path '*/scripts/*' -name meta.json 2>/dev/null | wc -l)
	[ "$n" -eq 0 ] && break
	sleep 0.2
done
is "$n" 0 "completed tickets leave no directory on the agent"

# --- [services] script = off ---
kill $APID; wait $APID 2>/dev/null
printf '\n[services]\nscript = off\n' >>"$H/agent-default/agent.ini"
start_agent
agent_up
X -- true >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 255 "script = off: exec fails with 255"
like "$TMP/e" "script = on" "and says how to turn it on"

kill $SPID $APID 2>/dev/null
wait $SPID $APID 2>/dev/null
}

suite listening
suite polling
for p in $(pgrep -f "sleep $MARK"); do kill -9 "$p"; done   # only if a test above failed
done_testing
