#!/bin/bash
# The exec / run-script / task verbs' own behaviour (server/cli_exec.c and
# server/tasks.c), listening mode, with a real agent and server daemon on
# loopback: several targets (line prefixes, exit 1), tether failures (255
# and the category), Ctrl-C, 'task cancel' from elsewhere, exact binary
# output, exec following its task across a daemon killed with -9, an agent
# killed mid-script (exit 254), and the audit log.  tests/integration/
# exec.sh covers the script service itself in both modes.
. "$(dirname "$0")/lib.sh"
MARK="3598.$$$RANDOM"                 # a sleep of ours, to check it is gone
H="$TMP/home"
A=(--home "$H")
APORT=$(free_port)
DEAD=$(free_port)                     # nothing listens there
SPORT=$(free_port)                    # the server's polling listener (unused here)

last_task() { "$SERVER" task list "${A[@]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])'; }
task_field() { "$SERVER" task show "${A[@]}" "$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get(sys.argv[1], ""))' "$2"; }
start_server() {
	bg "$SERVER" run "${A[@]}" 2>>"$TMP/server.log"
	SPID=$LAST_PID
	wait_for test -S "$H/server-default/run/admin.sock"
}
start_agent() {
	bg "$AGENT" run "${A[@]}" 2>>"$TMP/agent.log"
	APID=$LAST_PID
	wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
}

"$AGENT" create-instance "${A[@]}" >/dev/null
"$AGENT" new-certificate "${A[@]}" >/dev/null
"$SERVER" create-instance "${A[@]}" >/dev/null
"$SERVER" new-certificate "${A[@]}" >/dev/null
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
printf '[polling]\naddress = 127.0.0.1:%s\n' "$SPORT" >> "$H/server-default/server.ini"
run_ok "agent trusts the server" "$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT
start_agent
ok $? "agent started"
start_server
ok $? "server daemon started"
# two names for the same agent, and one where nothing listens
"$SERVER" target add "${A[@]}" web1 --listening 127.0.0.1:$APORT --thumbprint "$AT" --tag grp >/dev/null &&
"$SERVER" target add "${A[@]}" web2 --listening 127.0.0.1:$APORT --thumbprint "$AT" --tag grp >/dev/null &&
"$SERVER" target add "${A[@]}" dead --listening 127.0.0.1:$DEAD --thumbprint "$AT" >/dev/null
ok $? "targets added"

# --- several targets: each line prefixed, exit 0 only if all succeeded ---
"$SERVER" exec "${A[@]}" web1 web2 -- sh -c 'echo a; printf "b"; echo e >&2' >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 0 "two targets, both exit 0: exit 0"
is "$(sort "$TMP/o" | tr '\n' '|')" "web1: a|web1: b|web2: a|web2: b|" "stdout lines prefixed by target, last partial line completed"
is "$(sort "$TMP/e" | tr '\n' '|')" "web1: e|web2: e|" "stderr lines prefixed by target"
"$SERVER" exec "${A[@]}" --tag grp -- sh -c 'exit 3' >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 1 "--tag, both exit 3: exit 1"
like "$TMP/e" "web1: exit code 3" "says which target exited non-zero"
"$SERVER" exec "${A[@]}" web1 dead -- true >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 1 "one target unreachable of two: exit 1"
like "$TMP/e" "dead: .*\(connection_refused\)" "the unreachable one's reason and category"

# --- tether failures: 255 with the category ---
t0=$(date +%s)
"$SERVER" exec "${A[@]}" dead -- true >"$TMP/o" 2>"$TMP/e"; r=$?
t1=$(date +%s)
is "$r" 255 "unreachable target: exit 255"
like "$TMP/e" "^tether-server exec: dead: .*connection refused.*\(connection_refused\)$" "reason and category on stderr"
[ $((t1 - t0)) -le 5 ]; ok $? "fails at once when nothing was sent (took $((t1 - t0)) s)"
is "$(task_field "$(last_task)" state)" failed "the task is stored as failed"
"$SERVER" exec "${A[@]}" nosuch -- true >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 255 "unknown target: exit 255"
like "$TMP/e" "nosuch.*\(not_found\)" "says the target is unknown (not_found)"
run_exit 2 "no command after --: usage error" "$SERVER" exec "${A[@]}" web1
run_exit 2 "no target: usage error" "$SERVER" exec "${A[@]}" -- true
"$SERVER" exec "${A[@]}" web1 --cwd relative/dir -- true >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 255 "the agent refuses a relative --cwd: exit 255"
like "$TMP/e" "cwd.*\(bad_input\)" "with the agent's reason"

# --- exact bytes that are not text ---
"$SERVER" exec "${A[@]}" web1 -- printf 'a\000b\377\n' >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 0 "binary output: exit 0"
is "$(od -An -c "$TMP/o" | tr -s ' ')" "$(printf 'a\000b\377\n' | od -An -c | tr -s ' ')" "binary stdout exact (NUL and 0xff)"
"$SERVER" task logs "${A[@]}" "$(last_task)" >"$TMP/o2"
cmp -s "$TMP/o" "$TMP/o2"; ok $? "task logs gives the same bytes"
printf 'printf "%%s\\n" "$1-$0"\n' >"$TMP/s.sh"
"$SERVER" run-script "${A[@]}" web1 --shell bash "$TMP/s.sh" >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 0 "run-script --shell bash: exit 0"
printf 'exit 4\n' | "$SERVER" run-script "${A[@]}" web1 - >/dev/null 2>&1
is "$?" 4 "run-script reads the script from stdin with '-'"

# --- task.create with wait_ms: created and followed in one admin call ---
# admin METHOD JSON: one call on the admin socket, the answer's line on stdout
admin() {
	python3 - "$H/server-default/run/admin.sock" "$1" "$2" <<'EOT'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1])
s.sendall((json.dumps({"id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}) + "\n").encode())
b = b""
while not b.endswith(b"\n"):
	d = s.recv(65536)
	if not d: break
	b += d
print(b.decode().strip())
EOT
}
# jq-like: the Python expression $2 over the answer's "result" (r) in $1
rget() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]).get("result"); print(eval(sys.argv[2]))' "$1" "$2"; }
ans=$(admin task.create '{"targets":["web1"],"argv":["sh","-c","echo hi; exit 3"],"wait_ms":20000}')
is "$(rget "$ans" 'r["poll"]["state"], r["poll"]["exit_code"], r["poll"]["output"][0]["text"]')" \
   "('finished', 3, 'hi\\n')" "a command that ends within wait_ms: its output, state and exit code in the task.create answer"
ans=$(admin task.create '{"targets":["web1"],"argv":["sleep","1.5"],"wait_ms":200}')
is "$(rget "$ans" 'r["poll"]["state"] in ("pending", "running"), r["poll"]["exit_code"], r["poll"]["output"], r["poll"]["next_seq"]')" \
   "(True, None, [], 0)" "one still running after wait_ms: answered after wait_ms, not ended, no output"
id=$(rget "$ans" 'r["tasks"][0]["id"]')
for i in $(seq 1 20); do   # a poll also answers when the state changes (pending -> running)
	ans=$(admin task.poll "{\"id\":$id,\"wait_ms\":20000}")
	[ "$(rget "$ans" 'r["state"] in ("pending", "running")')" = True ] || break
done
is "$(rget "$ans" 'r["state"], r["exit_code"]')" "('finished', 0)" "and task.poll follows it to its end"
ans=$(admin task.create '{"targets":["web1"],"argv":["true"]}')
is "$(rget "$ans" 'sorted(r)')" "['tasks']" "without wait_ms (older clients): the answer is the tasks only"
id=$(rget "$ans" 'r["tasks"][0]["id"]')
for i in $(seq 1 20); do
	ans=$(admin task.poll "{\"id\":$id,\"wait_ms\":20000}")
	[ "$(rget "$ans" 'r["state"] in ("pending", "running")')" = True ] || break
done
is "$(rget "$ans" 'r["state"], r["exit_code"]')" "('finished', 0)" "and task.poll gives its result as before"
ans=$(admin task.create '{"targets":["web1","web2"],"argv":["true"],"wait_ms":20000}')
is "$(rget "$ans" 'sorted(r), len(r["tasks"])')" "(['tasks'], 2)" "with several targets wait_ms is not used: the tasks only"
n0=$("$SERVER" task list "${A[@]}" --json --limit 1000 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
admin task.create '{"targets":["web1"],"argv":["true"],"wait_ms":60001}' >"$TMP/ans"
like "$TMP/ans" '"category": *"bad_input"' "wait_ms over 60000 is refused (bad_input)"
like "$TMP/ans" 'wait_ms.*from 0 to 60000' "and says the range"
is "$("$SERVER" task list "${A[@]}" --json --limit 1000 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" "$n0" "and creates no task"
# exec's own use of it: a silent command longer than the folded wait still ends right
"$SERVER" exec "${A[@]}" web1 -- sh -c 'sleep 1; echo late; exit 6' >"$TMP/o" 2>"$TMP/e"; r=$?
is "$r" 6 "exec of a silent command that outlasts task.create's wait: its exit code"
is "$(cat "$TMP/o")" "late" "and its output"

# --- Ctrl-C: cancel on the agent, exit 130 ---
bg "$SERVER" exec "${A[@]}" web1 -- sh -c "echo started; sleep $MARK" >"$TMP/co" 2>"$TMP/ce"
XP=$LAST_PID
wait_for grep -q started "$TMP/co"
kill -INT $XP
wait $XP; r=$?
is "$r" 130 "SIGINT: exec exits 130"
like "$TMP/ce" "interrupted: cancelling the command on 1 target" "says it cancels"
is "$(task_field "$(last_task)" state)" cancelled "the task is cancelled"
pgrep -f "^sleep $MARK" >/dev/null; is "$?" 1 "the remote command is gone"

# --- task cancel from another shell ---
bg "$SERVER" exec "${A[@]}" web1 -- sh -c "echo started; sleep $MARK" >"$TMP/co" 2>"$TMP/ce"
XP=$LAST_PID
wait_for grep -q started "$TMP/co"
id=$(last_task)
run_ok "task cancel" "$SERVER" task cancel "${A[@]}" "$id"
like "$TMP/out" "Cancelling task $id on web1" "task cancel says what it does"
wait $XP; r=$?
is "$r" 130 "the exec that followed it exits 130 (the cancelled code)"
like "$TMP/ce" "web1: the command was cancelled" "and says the command was cancelled"
run_ok "task cancel of an ended task" "$SERVER" task cancel "${A[@]}" "$id"
like "$TMP/out" "already ended \(cancelled\)" "says it had already ended"
run_exit 1 "task show of a missing task fails" "$SERVER" task show "${A[@]}" 999999
like "$TMP/err" "no task 999999" "and says so"

# --- exec follows its task across a daemon killed with -9 ---
bg "$SERVER" exec "${A[@]}" web1 -- sh -c 'for i in 1 2 3 4 5 6 7 8; do echo "tick $i"; sleep 0.5; done; echo done >&2; exit 5' >"$TMP/ko" 2>"$TMP/ke"
XP=$LAST_PID
wait_for grep -q "tick 2" "$TMP/ko"
kill -9 $SPID
wait $SPID 2>/dev/null
sleep 1
start_server
ok $? "server restarted"
wait $XP; r=$?
is "$r" 5 "exec still exits with the script's code"
is "$(cat "$TMP/ko")" "$(printf 'tick %s\n' 1 2 3 4 5 6 7 8)" "every line once, in order, across the restart"
like "$TMP/ke" "lost the daemon" "says it lost the daemon"
like "$TMP/ke" "the daemon is back" "and that it came back"
like "$TMP/ke" "^done$" "the script's stderr"

# --- the agent is killed mid-script: the result is unknown (254) ---
bg "$SERVER" exec "${A[@]}" web1 -- sh -c "echo started; sleep $MARK" >"$TMP/uo" 2>"$TMP/ue"
XP=$LAST_PID
wait_for grep -q started "$TMP/uo"
kill -9 $APID
wait $APID 2>/dev/null
for p in $(pgrep -f "^sleep $MARK"); do kill -9 "$p"; done
start_agent
ok $? "agent restarted"
for i in $(seq 1 300); do kill -0 $XP 2>/dev/null || break; sleep 0.1; done
wait $XP; r=$?
is "$r" 254 "exec exits 254 when the agent restarted during the command"
like "$TMP/ue" "result is unknown" "and says why"

# --- list, show, audit ---
"$SERVER" task list "${A[@]}" --target web2 --json >"$TMP/l.json"
is "$(python3 -c 'import json,sys; print(sorted({t["target"] for t in json.load(open(sys.argv[1]))}))' "$TMP/l.json")" "['web2']" "task list --target"
run_ok "task list table" "$SERVER" task list "${A[@]}"
like "$TMP/out" "^ID +TARGET +STATE +EXIT" "has a header"
like "$TMP/out" "failed +- " "shows failed tasks"
like "$H/server-default/state/audit.log" '"what":"task.create","target":"web1","result":"ok"' "task.create audited with the caller and target"
like "$H/server-default/state/audit.log" '"who":"uid=[0-9]+.*"what":"task.cancel","target":"web1","result":"ok"' "task.cancel audited"

kill $SPID $APID 2>/dev/null
wait $SPID $APID 2>/dev/null
for p in $(pgrep -f "^sleep $MARK"); do kill -9 "$p"; done   # only if a test above failed
done_testing
