#!/bin/bash
# Certificate rotation under faults: the server killed (-9) or its answer lost
# between the steps of rotate-agent-certificate and rotate-certificate, then
# run again.  Listening agents are reached through a relay (relay.py below)
# that the test controls: it logs each connection it accepts, can hold (never
# forward) what the agent sends on connections accepted while a file exists,
# and can delay what the agent sends.
. "$(dirname "$0")/lib.sh"
printf 'pw\n' > "$TMP/pw"; chmod 600 "$TMP/pw"
declare -A AH APORT APID AMODE SH SPORT SPID RPORT RPID

cat > "$TMP/relay.py" <<'EOF'
# relay.py PORT UPSTREAM DELAY HOLDFILE LOG: 127.0.0.1:PORT -> 127.0.0.1:UPSTREAM.
# Agent-to-server bytes are delayed by DELAY seconds; on a connection accepted
# while HOLDFILE exists they are never forwarded.  Appends "conn N" to LOG.
import socket, sys, threading, time, os, collections
port, up, delay, hold, log = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(16)
def close(*ss):
    for s in ss:
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def pump(src, dst, d, black):
    q, cv, done = collections.deque(), threading.Condition(), [False]
    def writer():
        while True:
            with cv:
                while not q and not done[0]:
                    cv.wait()
                if not q:
                    break
                due, data = q[0]
            wait = due - time.time()    # the clock read once: a negative sleep raises
            if wait > 0:
                time.sleep(wait)
                continue
            with cv:
                q.popleft()
            try: dst.sendall(data)
            except OSError: break
        close(src, dst)
    threading.Thread(target=writer, daemon=True).start()
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if not black:
                with cv:
                    q.append((time.time() + d, data)); cv.notify()
    except OSError:
        pass
    with cv:
        done[0] = True; cv.notify()
n = 0
while True:
    c, _ = ls.accept()
    n += 1
    black = os.path.exists(hold)
    with open(log, "a") as f:
        f.write("conn %d%s\n" % (n, " held" if black else ""))
    try:
        u = socket.create_connection(("127.0.0.1", up))
    except OSError:
        c.close(); continue
    threading.Thread(target=pump, args=(c, u, 0, False), daemon=True).start()
    threading.Thread(target=pump, args=(u, c, delay, black), daemon=True).start()
EOF

# ---- helpers (as in rotation.sh) ----
tset() {
	"$AGENT" list-trust --home "${AH[$1]}" --json 2>/dev/null | python3 -c '
import json, sys
print(" ".join(sorted(t["sha256"] for t in json.load(sys.stdin)["trusted"])))'
}
sorted_words() { printf '%s\n' "$@" | sort | tr '\n' ' ' | sed 's/ $//'; }
# unbusy CMD...: run it again while a rotation the daemon continues by itself
# (a target that came back) is running; its output in $TMP/out, $TMP/err
unbusy() { local i r; for i in $(seq 1 30); do "$@" >"$TMP/out" 2>"$TMP/err"; r=$?; grep -q "another rotation is running" "$TMP/err" || return $r; sleep 0.5; done; return $r; }
ntrusted_is() { [ "$(tset "$1" | wc -w)" = "$2" ]; }
expect_tset() { local a=$1 d=$2; shift 2; is "$(tset "$a")" "$(sorted_words "$@")" "$a: trust set $d"; }
mk_server() {
	local n=$1 h="$TMP/s-$1"
	SH[$n]=$h
	SPORT[$n]=$(free_port)
	"$SERVER" create-instance --home "$h" >/dev/null
	"$SERVER" new-certificate --home "$h" --key-type ec-p256 >/dev/null
	printf '[polling]\naddress = 127.0.0.1:%s\nwait = 6\n[timeouts]\nhandshake = 20\n' "${SPORT[$n]}" \
		>> "$h/server-default/server.ini"
}
sthumb() { "$SERVER" show-thumbprint --home "${SH[$1]}" | head -1; }
start_server() {
	local n=$1
	bg "$SERVER" run --home "${SH[$n]}" 2>>"$TMP/$n.log"
	SPID[$n]=$LAST_PID
	wait_for test -S "${SH[$n]}/server-default/run/admin.sock"
}
stop_server() { kill "${SPID[$1]}"; wait "${SPID[$1]}" 2>/dev/null; }
kill9_server() { kill -9 "${SPID[$1]}"; wait "${SPID[$1]}" 2>/dev/null; rm -f "${SH[$1]}/server-default/run/admin.sock"; }
# mk_agent NAME listening|polling SERVER
mk_agent() {
	local n=$1 mode=$2 s=$3 h="$TMP/a-$1"
	AH[$n]=$h
	AMODE[$n]=$mode
	"$AGENT" create-instance --home "$h" >/dev/null
	"$AGENT" new-certificate --home "$h" --key-type ec-p256 >/dev/null
	if [ "$mode" = listening ]; then
		APORT[$n]=$(free_port)
		"$AGENT" configure --home "$h" --trust "$(sthumb "$s")" --listen 127.0.0.1:${APORT[$n]} >/dev/null
	else
		"$AGENT" configure --home "$h" --mode polling --server 127.0.0.1:${SPORT[$s]} --trust "$(sthumb "$s")" >/dev/null
	fi
	printf '[timeouts]\nhandshake = 20\n' >> "$h/agent-default/agent.ini"
}
athumb() { "$AGENT" show-thumbprint --home "${AH[$1]}" | head -1; }
start_agent() {
	local n=$1
	bg "$AGENT" run --home "${AH[$n]}" 2>>"$TMP/$n.log"
	APID[$n]=$LAST_PID
	if [ "${AMODE[$n]}" = listening ]; then
		wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/${APORT[$n]}"
	fi
}
stop_agent() { kill "${APID[$1]}"; wait "${APID[$1]}" 2>/dev/null; }
# start_relay AGENT DELAY: the agent's relay (port RPORT[AGENT]); hold file $TMP/hold-AGENT
start_relay() {
	local n=$1
	[ -n "${RPORT[$n]:-}" ] || RPORT[$n]=$(free_port)
	bg python3 "$TMP/relay.py" "${RPORT[$n]}" "${APORT[$n]}" "$2" "$TMP/hold-$n" "$TMP/relay-$n.log"
	RPID[$n]=$LAST_PID
	wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/${RPORT[$n]}"
}
kill_relay() { kill -9 "${RPID[$1]}"; wait "${RPID[$1]}" 2>/dev/null; }
relay_conns() { grep -c '^conn' "$TMP/relay-$1.log" 2>/dev/null || echo 0; }
conns_ge() { [ "$(relay_conns "$1")" -ge "$2" ]; }
# count_gt FILE REGEX N: more than N lines of FILE match
count_gt() { [ "$(grep -cE -- "$2" "$1")" -gt "$3" ]; }
# registry_col SERVER TARGET COLUMN: read the registry directly (the daemon may be down)
registry_col() { python3 -c 'import sqlite3,sys; r=sqlite3.connect(sys.argv[1]).execute("SELECT %s FROM targets WHERE name=?" % sys.argv[3], (sys.argv[2],)).fetchone(); print(r[0] if r else "missing")' "${SH[$1]}/server-default/state/registry.db" "$2" "$3"; }
# add_target SERVER AGENT: a listening agent through its relay, a polling one directly
add_target() {
	if [ "${AMODE[$2]}" = listening ]; then
		"$SERVER" target add --home "${SH[$1]}" "$2" --listening 127.0.0.1:${RPORT[$2]} --thumbprint "$(athumb "$2")" >/dev/null
	else
		"$SERVER" target add --home "${SH[$1]}" "$2" --polling --thumbprint "$(athumb "$2")" >/dev/null
	fi
}
# healthy SERVER DESC TARGET...: every target healthy, each on the agent's current thumbprint
healthy() {
	local s=$1 d=$2 t want=""
	shift 2
	for t in "$@"; do want="$want $t=$(athumb "$t")"; done
	"$SERVER" health --home "${SH[$s]}" "$@" --json >"$TMP/hout" 2>"$TMP/herr"
	python3 - "$TMP/hout" $want >"$TMP/hcheck" 2>&1 <<'EOF'
import json, sys
rows = {r["target"]: r for r in json.load(open(sys.argv[1]))}
bad = []
for w in sys.argv[2:]:
    n, t = w.split("=")
    r = rows.get(n)
    if not r or r.get("state") != "healthy" or r.get("peer_sha256") != t:
        bad.append("%s: %s" % (n, json.dumps(r)))
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
	ok $? "$d: health of $* healthy"
	grep -q . "$TMP/hcheck" && { sed 's/^/#   /' "$TMP/hcheck"; sed 's/^/# err: /' "$TMP/herr"; }
	return 0
}
pin_of() { "$SERVER" target show --home "${SH[$1]}" "$2" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("sha256"))'; }
# wait_until SECS CMD...: retry every 0.05 s
wait_until() { local i n=$(($1 * 20)); shift; for i in $(seq 1 $n); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }

###########################################################################
echo "# 1. rotate-agent-certificate: the server killed between identity.promote and the re-pin"
mk_server a
mk_agent al listening a
start_agent al
start_relay al 0
start_server a
add_target a al
healthy a "start" al
O=$(athumb al)
# identity.stage and .promote go over the connection health left open; the
# fresh connection after identity.promote never completes (the relay holds it)
: > "$TMP/relay-al.log"
touch "$TMP/hold-al"
bg "$SERVER" rotate-agent-certificate --home "${SH[a]}" al >"$TMP/cli.out" 2>&1
CLI=$LAST_PID
wait_until 60 conns_ge al 1
ok $? "the server made a fresh connection after identity.promote"
like "$TMP/al.log" "switched this agent to its new identity" "the agent switched to its new identity"
kill9_server a
wait $CLI 2>/dev/null
rm -f "$TMP/hold-al"
N=$(athumb al)
[ "$N" != "$O" ]; ok $? "the agent presents its new certificate now"
is "$(registry_col a al sha256)" "$O" "the registry still pins the old certificate (the server died before the re-pin)"
is "$(registry_col a al next_sha256)" "$N" "and holds the new one as the next thumbprint"
start_server a
healthy a "after a restart, without set-thumbprint" al
is "$(pin_of a al)" "$N" "the target is re-pinned to the agent's new certificate"
like "$TMP/a.log" "target al connected with its new certificate $N: re-pinned" "the server log says it re-pinned"
like "${SH[a]}/server-default/state/audit.log" '"rotate-agent-certificate".*"al"' "the re-pin is audited"

echo "# 1b. rotate-agent-certificate: the answer to identity.promote lost"
mk_agent bl listening a
start_agent bl
start_relay bl 5
add_target a bl
healthy a "start" bl
O=$(athumb bl)
bg "$SERVER" rotate-agent-certificate --home "${SH[a]}" bl --json >"$TMP/cli.out" 2>&1
CLI=$LAST_PID
wait_until 60 grep -q "switched this agent to its new identity" "$TMP/bl.log"
ok $? "the agent switched to its new identity"
# its answer is still in the relay (5 s, ample even on a loaded machine): cut the link
kill_relay bl
wait $CLI
r=$?
[ $r -ne 0 ]; ok $? "rotate-agent-certificate reports the failure (exit $r)"
like "$TMP/cli.out" "identity.promote" "it says which step failed"
N=$(athumb bl)
[ "$N" != "$O" ]; ok $? "the agent presents its new certificate"
start_relay bl 0
healthy a "the link is back: the new certificate is accepted" bl
is "$(pin_of a bl)" "$N" "and pinned"
run_ok "rotate-agent-certificate works again" "$SERVER" rotate-agent-certificate --home "${SH[a]}" bl
healthy a "after another rotation" al bl
is "$(pin_of a bl)" "$(athumb bl)" "pin = the agent's certificate"
for a in al bl; do stop_agent $a; kill_relay $a; done
stop_server a

###########################################################################
echo "# 2. rotate-certificate: the server killed between moving a target to the new identity and trust.retire"
mk_server r
mk_agent rl listening r
mk_agent rp polling r
start_agent rl
start_agent rp
start_relay rl 0
start_server r
add_target r rl
add_target r rp
wait_for grep -q "polling agent rp connected" "$TMP/r.log"
healthy r "start" rl rp
O=$(sthumb r)
# trust.rotate goes over the connection health left open; the fresh one with
# the new identity (step 2) never completes: the relay holds it
: > "$TMP/relay-rl.log"
touch "$TMP/hold-rl"
bg "$SERVER" rotate-certificate --home "${SH[r]}" >"$TMP/cli.out" 2>&1
CLI=$LAST_PID
wait_until 60 conns_ge rl 1
ok $? "the server connects to rl with its new identity"
N=$(sthumb r)
[ "$N" != "$O" ]; ok $? "the new identity is current"
kill9_server r
wait $CLI 2>/dev/null
rm -f "$TMP/hold-rl"
expect_tset rl "trusts the old identity and its named successor = {O,N}" "$O" "$N"
stop_agent rl
start_server r
run_exit 1 "--finish refuses: rl has not retired the old identity" unbusy "$SERVER" rotate-certificate --home "${SH[r]}" --finish
like "$TMP/out" "^  rl +on the agent: tether-agent configure --remove-trust $O" "--finish lists rl with the exact command"
start_agent rl
# run it again (a polling agent's rotation may be continuing by itself: retry while busy)
for i in 1 2 3 4 5 6 7 8 9 10; do
	"$SERVER" rotate-certificate --home "${SH[r]}" >"$TMP/rot2.out" 2>&1 && break
	grep -q "another rotation is running" "$TMP/rot2.out" || break
	sleep 1
done
like "$TMP/rot2.out" "^  rl +rotated" "run again, rl's rotation continues"
is "$(sthumb r)" "$N" "no third identity: the same rotation continued"
like "$TMP/rl.log" "trust.retire: retired $O" "rl retired the old identity"
wait_until 20 ntrusted_is rp 1 # its rotation may still be finishing by itself
for a in rl rp; do expect_tset $a "at the end = {N}" "$N"; done
run_ok "--finish: nothing depends on the old identity" unbusy "$SERVER" rotate-certificate --home "${SH[r]}" --finish
healthy r "after --finish" rl rp
for a in rl rp; do expect_tset $a "after --finish = {N}" "$N"; done
for a in rl rp; do stop_agent $a; done
kill_relay rl
stop_server r

###########################################################################
echo "# 3. the compromise indicator: a trusted thumbprint that is none of the server's identities"
mk_server u
mk_agent up polling u
start_agent up
start_server u
add_target u up
wait_for grep -q "polling agent up connected" "$TMP/u.log"
unknown() { python3 -c 'import json,sys; print(" ".join(sorted(u["sha256"] for u in json.load(open(sys.argv[1]))[0].get("unknown_trust", ["missing"]))))' "$1"; }
run_ok "health --json" "$SERVER" health --home "${SH[u]}" up --json
is "$(unknown "$TMP/out")" "" "nothing unknown while it trusts only the server"
X=$(openssl rand -hex 32)
run_ok "the agent is told to trust a random thumbprint X" "$AGENT" configure --home "${AH[up]}" --trust "$X"
"$SERVER" new-certificate --home "${SH[u]}" >"$TMP/nc.out"
STG=$(sed -n 's/^New certificate (staged): *\([0-9a-f]\{64\}\).*/\1/p' "$TMP/nc.out")
is "${#STG}" 64 "the server has a staged identity"
run_ok "and the server's staged identity" "$AGENT" configure --home "${AH[up]}" --trust "$STG"
for i in 1 2; do
	run_ok "health --json ($i)" "$SERVER" health --home "${SH[u]}" up --json
	is "$(unknown "$TMP/out")" "$X" "unknown_trust lists X, not the staged identity ($i)"
	is "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["state"])' "$TMP/out")" healthy "the target stays healthy ($i)"
done
run_ok "health (table)" "$SERVER" health --home "${SH[u]}" up
like "$TMP/out" "warning: the agent trusts $X, none of this server's identities" "the table warns about X"
is "$(grep -c "target up trusts server thumbprint $X, which is none of this server's identities" "$TMP/u.log")" 1 \
	"the server logs it once, as a warning"
like "$TMP/u.log" "warning: target up trusts server thumbprint $X" "at warning level"
unlike "$TMP/u.log" "trusts server thumbprint $STG" "the staged identity is not flagged"
stop_agent up
stop_server u

###########################################################################
echo "# 4. rekey-all while a rotation is pending: a new identity all the same"
mk_server w
mk_agent wa polling w
mk_agent wb polling w
for a in wa wb; do start_agent $a; done
start_server w
for a in wa wb; do add_target w $a; done
wait_for grep -q "polling agent wb connected" "$TMP/w.log"
W0=$(sthumb w)
stop_agent wb
run_exit 1 "rotate-certificate with wb stopped: a rotation stays pending" "$SERVER" rotate-certificate --home "${SH[w]}"
W1=$(sthumb w)
[ "$W1" != "$W0" ]; ok $? "W1 is current, W0 previous"
start_agent wb
wait_until 20 ntrusted_is wb 1
run_ok "rekey-all --key-type ec-p384" unbusy "$SERVER" rekey-all --home "${SH[w]}" --key-type ec-p384
cp "$TMP/out" "$TMP/rekey.out"
W2=$(sed -n 's/^Server identity now \([0-9a-f]\{64\}\).*/\1/p' "$TMP/rekey.out")
[ ${#W2} -eq 64 ] && [ "$W2" != "$W1" ] && [ "$W2" != "$W0" ]; ok $? "a new server identity W2 (not the pending W1)"
is "$(sthumb w)" "$W2" "show-thumbprint: W2 is current"
"$SERVER" show-thumbprint --home "${SH[w]}" --json > "$TMP/st.json"
like "$TMP/st.json" "P-384|ec-p384|secp384r1" "of the key type asked for"
is "$(python3 -c 'import json,sys; print("previous" in json.load(open(sys.argv[1])))' "$TMP/st.json")" "False" \
	"every target was reached: the previous identity (W1) is dropped"
like "$TMP/rekey.out" "the previous identity $W1 is dropped" "the report says so"
for a in wa wb; do expect_tset $a "after rekey-all = {W2}" "$W2"; done
healthy w "after rekey-all" wa wb
for a in wa wb; do stop_agent $a; done
stop_server w

done_testing
