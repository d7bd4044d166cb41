#!/bin/bash
# Certificate and trust lifecycle end to end (issue 5), with real agents and
# servers on loopback, listening and polling, checking every agent's trust set
# (tether-agent list-trust --json) at every step:
#  1. the manual server procedure (export, new-certificate --export-pfx,
#     configure --trust, import-certificate or use-staged-certificate,
#     --remove-trust) and the manual agent procedure (new-certificate picked up
#     by the running agent, target set-thumbprint);
#  2. rotate-certificate with a stopped agent that comes back on the previous
#     identity, --finish refusing then dropping, --finish --force;
#  3. rotate-agent-certificate TARGET and --all, with a stopped agent;
#  4. the trust model with two trusted servers (a Python peer holding S1's key);
#  5. recovery: rekey-all --recovery-identity replaces the whole trust set;
#     a recovery identity can do nothing but trust.replace;
#  6. rekey-all without a recovery identity, one agent unreachable;
#  7. check-certificates: SHA-1, RSA-1024, expiring certificates.
. "$(dirname "$0")/lib.sh"
PEER="python3 $TOP_SRCDIR/tests/integration/peer.py"
printf 'pw\n' > "$TMP/pw"; chmod 600 "$TMP/pw"
declare -A AH APORT APID AMODE SH SPORT SPID AT0

# ---- helpers ----
# The trusted server thumbprints of an agent (list-trust --json), sorted.
tset() {
	"$AGENT" list-trust --home "${AH[$1]}" --json 2>/dev/null | python3 -c '
import json, sys
print(" ".join(sorted(t["sha256"] for t in json.load(sys.stdin)["trusted"])))'
}
# The pending successors SUCCESSOR<PREDECESSOR, sorted, as list-trust --json
# shows them (lsucc AGENT) and as the agent's trust.list method gives them
# over the wire to a trusted server holding PEM (wsucc AGENT PEM).
succ_py='
import json, sys
d = json.load(sys.stdin)
print(" ".join(sorted(t["sha256"] + "<" + t["successor_of"] for t in d["trusted"] if "successor_of" in t)))'
lsucc() { "$AGENT" list-trust --home "${AH[$1]}" --json 2>/dev/null | python3 -c "$succ_py"; }
wsucc() { $PEER call 127.0.0.1 ${APORT[$1]} "$2" "$2" trust.list '{}' 2>/dev/null | sed -n 's/^result //p' | python3 -c "$succ_py"; }
sorted_words() { printf '%s\n' "$@" | sort | tr '\n' ' ' | sed 's/ $//'; }
# expect_tset AGENT DESC THUMBPRINT...: the agent trusts exactly these servers
expect_tset() { local a=$1 d=$2; shift 2; is "$(tset "$a")" "$(sorted_words "$@")" "$a: trust set $d"; }
short() { echo "${1:0:12}"; }
thumb_of_pem() { openssl x509 -in "$1" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f; }

# mk_server NAME: an instance with a certificate and a polling port
mk_server() {
	local n=$1 h="$TMP/s-$1"
	SH[$n]=$h
	SPORT[$n]=$(free_port)
	"$SERVER" create-instance --home "$h" >/dev/null
	"$SERVER" new-certificate --home "$h" >/dev/null
	printf '[polling]\naddress = 127.0.0.1:%s\nwait = 6\n' "${SPORT[$n]}" >> "$h/server-default/server.ini"
}
sthumb() { "$SERVER" show-thumbprint --home "${SH[$1]}" | head -1; }
start_server() {
	local n=$1
	bg "$SERVER" run --home "${SH[$n]}" 2>>"$TMP/$n.log"
	SPID[$n]=$LAST_PID
	wait_for test -S "${SH[$n]}/server-default/run/admin.sock"
}
stop_server() { kill "${SPID[$1]}"; wait "${SPID[$1]}" 2>/dev/null; }
# mk_agent NAME listening|polling SERVER: an agent trusting SERVER's current identity
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
	printf '[timeouts]\nhandshake = 3\n' >> "$h/agent-default/agent.ini"
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
# add_target SERVER AGENT: register the agent with its current thumbprint
add_target() {
	if [ "${AMODE[$2]}" = listening ]; then
		"$SERVER" target add --home "${SH[$1]}" "$2" --listening 127.0.0.1:${APORT[$2]} --thumbprint "$(athumb "$2")" >/dev/null
	else
		"$SERVER" target add --home "${SH[$1]}" "$2" --polling --thumbprint "$(athumb "$2")" >/dev/null
	fi
}
# healthy SERVER DESC TARGET...: every target is healthy (JSON), each on the
# agent's current thumbprint
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
# health_state SERVER TARGET: the state in health --json
health_state() {
	"$SERVER" health --home "${SH[$1]}" "$2" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["state"])' 2>/dev/null
}
pin_of() { "$SERVER" target show --home "${SH[$1]}" "$2" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("thumbprint") or d.get("sha256"))'; }
pem_of_pfx() { openssl pkcs12 -in "$1" -passin file:"$TMP/pw" -nodes -out "$2" 2>/dev/null; }

###########################################################################
echo "# 1. the manual procedures"
mk_server m
mk_agent ml listening m
mk_agent mp polling m
OLD=$(sthumb m)
start_agent ml
start_agent mp
start_server m
add_target m ml
add_target m mp
wait_for grep -q "polling agent mp connected" "$TMP/m.log"
healthy m "start" ml mp
expect_tset ml "at start = {OLD}" "$OLD"
expect_tset mp "at start = {OLD}" "$OLD"

run_ok "export-certificate (backup)" "$SERVER" export-certificate --home "${SH[m]}" --export-pfx "$TMP/m-backup.pfx" --pfx-password-file "$TMP/pw"
pem_of_pfx "$TMP/m-backup.pfx" "$TMP/m-backup.pem"
is "$(thumb_of_pem "$TMP/m-backup.pem")" "$OLD" "the backup holds the current certificate"
run_ok "new-certificate --export-pfx (staged)" "$SERVER" new-certificate --home "${SH[m]}" --export-pfx "$TMP/m-new.pfx" --pfx-password-file "$TMP/pw"
like "$TMP/out" "^Current certificate \(in use\): $OLD" "new-certificate prints the current thumbprint"
NEW=$(sed -n 's/^New certificate (staged): *\([0-9a-f]\{64\}\).*/\1/p' "$TMP/out")
[ ${#NEW} -eq 64 ] && [ "$NEW" != "$OLD" ]; ok $? "new-certificate prints the new (staged) thumbprint"
is "$(sthumb m)" "$OLD" "the certificate in use is still the old one"
healthy m "after new-certificate" ml mp
expect_tset ml "after new-certificate = {OLD}" "$OLD"
expect_tset mp "after new-certificate = {OLD}" "$OLD"
run_ok "ml: configure --trust NEW" "$AGENT" configure --home "${AH[ml]}" --trust "$NEW"
expect_tset ml "after --trust NEW on ml = {OLD,NEW}" "$OLD" "$NEW"
expect_tset mp "after --trust NEW on ml = {OLD}" "$OLD"
healthy m "after --trust NEW on ml" ml mp
run_ok "mp: configure --trust NEW" "$AGENT" configure --home "${AH[mp]}" --trust "$NEW"
expect_tset ml "after --trust NEW on mp = {OLD,NEW}" "$OLD" "$NEW"
expect_tset mp "after --trust NEW on mp = {OLD,NEW}" "$OLD" "$NEW"
healthy m "after --trust NEW on mp" ml mp
run_ok "import-certificate --from-file the new PFX" "$SERVER" import-certificate --home "${SH[m]}" --from-file "$TMP/m-new.pfx" --pfx-password-file "$TMP/pw"
like "$TMP/out" "^Old thumbprint: $OLD" "import prints the old thumbprint"
like "$TMP/out" "^New thumbprint: $NEW" "import prints the new thumbprint"
like "$TMP/out" "running tether-server daemon now uses it" "import says the running daemon reloaded"
like "$TMP/m.log" "identities loaded: current $NEW, previous $OLD" "the daemon log: new current, old previous"
is "$(sthumb m)" "$NEW" "show-thumbprint: the new certificate is current"
healthy m "after import-certificate" ml mp
expect_tset ml "after import = {OLD,NEW}" "$OLD" "$NEW"
expect_tset mp "after import = {OLD,NEW}" "$OLD" "$NEW"
run_ok "ml: configure --remove-trust OLD" "$AGENT" configure --home "${AH[ml]}" --remove-trust "$OLD"
expect_tset ml "after --remove-trust OLD on ml = {NEW}" "$NEW"
expect_tset mp "after --remove-trust OLD on ml = {OLD,NEW}" "$OLD" "$NEW"
healthy m "after --remove-trust OLD on ml" ml mp
run_ok "mp: configure --remove-trust OLD" "$AGENT" configure --home "${AH[mp]}" --remove-trust "$OLD"
expect_tset ml "after --remove-trust OLD on mp = {NEW}" "$NEW"
expect_tset mp "after --remove-trust OLD on mp = {NEW}" "$NEW"
healthy m "after --remove-trust OLD on mp" ml mp
expect_tset ml "after the manual rotation = {NEW}" "$NEW"
expect_tset mp "after the manual rotation = {NEW}" "$NEW"
like "$TMP/mp.log" "connected to server $NEW" "the polling agent reconnected to the new identity"

echo "# 1b. use-staged-certificate (the HSM path)"
run_ok "new-certificate (staged, no export)" "$SERVER" new-certificate --home "${SH[m]}"
NEW2=$(sed -n 's/^New certificate (staged): *\([0-9a-f]\{64\}\).*/\1/p' "$TMP/out")
[ ${#NEW2} -eq 64 ]; ok $? "staged thumbprint printed"
for a in ml mp; do "$AGENT" configure --home "${AH[$a]}" --trust "$NEW2" >/dev/null; done
expect_tset ml "after --trust NEW2 = {NEW,NEW2}" "$NEW" "$NEW2"
expect_tset mp "after --trust NEW2 = {NEW,NEW2}" "$NEW" "$NEW2"
healthy m "before use-staged-certificate" ml mp
run_ok "use-staged-certificate" "$SERVER" use-staged-certificate --home "${SH[m]}"
like "$TMP/out" "running tether-server daemon now uses it" "use-staged-certificate: the running daemon reloaded"
is "$(sthumb m)" "$NEW2" "the staged certificate is current"
healthy m "after use-staged-certificate" ml mp
for a in ml mp; do "$AGENT" configure --home "${AH[$a]}" --remove-trust "$NEW" >/dev/null; done
expect_tset ml "after --remove-trust NEW = {NEW2}" "$NEW2"
expect_tset mp "after --remove-trust NEW = {NEW2}" "$NEW2"
healthy m "after the HSM-path rotation" ml mp

echo "# 1c. the manual agent procedure"
for a in ml mp; do
	OLDA=$(athumb $a)
	run_ok "$a: new-certificate on the agent" "$AGENT" new-certificate --home "${AH[$a]}" --key-type ec-p256
	NEWA=$(athumb $a)
	[ "$NEWA" != "$OLDA" ]; ok $? "$a: show-thumbprint changed"
	wait_for grep -q "identity $NEWA loaded" "$TMP/$a.log" || wait_for grep -q "identity $NEWA loaded" "$TMP/$a.log"
	ok $? "$a: the running agent picked up its new identity by itself"
	expect_tset $a "unchanged by the agent's new certificate" "$NEW2"
	run_ok "$a: target set-thumbprint NEW" "$SERVER" target set-thumbprint --home "${SH[m]}" $a "$NEWA"
	healthy m "after set-thumbprint of $a" $a
	is "$(pin_of m $a)" "$NEWA" "$a: target pin is the new thumbprint"
done
healthy m "after the manual agent procedure" ml mp
stop_agent ml; stop_agent mp; stop_server m

###########################################################################
echo "# 2. rotate-certificate: one listening, one polling, one listening agent stopped"
mk_server r
mk_agent rl listening r
mk_agent rp polling r
mk_agent rs listening r
O=$(sthumb r)
for a in rl rp rs; do start_agent $a; done
start_server r
for a in rl rp rs; do add_target r $a; done
wait_for grep -q "polling agent rp connected" "$TMP/r.log"
healthy r "before the rotation" rl rp rs
stop_agent rs
for a in rl rp rs; do expect_tset $a "before the rotation = {O}" "$O"; done
run_exit 1 "rotate-certificate with rs stopped (not every target rotated)" "$SERVER" rotate-certificate --home "${SH[r]}"
cp "$TMP/out" "$TMP/rot1.out"
N=$(sed -n 's/^Current identity: *\([0-9a-f]\{64\}\).*/\1/p' "$TMP/rot1.out")
[ ${#N} -eq 64 ] && [ "$N" != "$O" ]; ok $? "rotate-certificate prints the new current identity"
like "$TMP/rot1.out" "^Previous identity: $O" "and the previous one"
like "$TMP/rot1.out" "^  rl +rotated" "rl rotated"
like "$TMP/rot1.out" "^  rp +rotated" "rp rotated"
like "$TMP/rot1.out" "^  rs +unreachable" "rs unreachable"
like "$TMP/rot1.out" "run rotate-certificate again|Run 'tether-server rotate-certificate' again" "says to run it again"
is "$(sthumb r)" "$N" "the server's current identity is the new one"
expect_tset rl "after the rotation = {N}" "$N"
expect_tset rp "after the rotation = {N}" "$N"
expect_tset rs "after the rotation (stopped) = {O}" "$O"
like "$TMP/rl.log" "trust.retire: retired $O" "rl log: the new identity retired the old pin"
like "$TMP/rp.log" "trust.retire: retired $O" "rp log: the new identity retired the old pin"
healthy r "after the rotation" rl rp
start_agent rs
healthy r "rs back (it still trusts only the previous identity)" rs
# its rotation continues by itself now that it is back
for i in $(seq 1 100); do
	[ "$(tset rs)" = "$(sorted_words "$N")" ] && break
	sleep 0.2
done
expect_tset rs "its rotation continued by itself once it was back = {N}" "$N"
like "$TMP/r.log" "target rs is back and still trusts the previous identity: continuing its rotation" "the server log says the rotation continued by itself"
expect_tset rl "while rs is back = {N}" "$N"
expect_tset rp "while rs is back = {N}" "$N"
healthy r "after rs's rotation continued" rl rp rs
run_ok "rotate-certificate --finish drops the previous identity" "$SERVER" rotate-certificate --home "${SH[r]}" --finish
like "$TMP/out" "Previous identity $O dropped; current is $N" "--finish says what it dropped"
"$SERVER" show-thumbprint --home "${SH[r]}" --json > "$TMP/st.json"
is "$(python3 -c 'import json,sys; print("previous" in json.load(open(sys.argv[1])))' "$TMP/st.json")" "False" "no previous identity any more"
healthy r "after --finish" rl rp rs
for a in rl rp rs; do expect_tset $a "after --finish = {N}" "$N"; done

echo "# 2b. --finish --force"
stop_agent rs
run_exit 1 "rotate-certificate with rs stopped again" "$SERVER" rotate-certificate --home "${SH[r]}"
N2=$(sed -n 's/^Current identity: *\([0-9a-f]\{64\}\).*/\1/p' "$TMP/out")
[ ${#N2} -eq 64 ] && [ "$N2" != "$N" ]; ok $? "a third identity N2"
expect_tset rl "= {N2}" "$N2"
expect_tset rp "= {N2}" "$N2"
expect_tset rs "(stopped) = {N}" "$N"
run_exit 1 "--finish refuses" "$SERVER" rotate-certificate --home "${SH[r]}" --finish
run_ok "--finish --force drops it anyway" "$SERVER" rotate-certificate --home "${SH[r]}" --finish --force
like "$TMP/out" "Previous identity $N dropped" "--force dropped the previous identity"
start_agent rs
st=$(health_state r rs)
[ "$st" != healthy ]; ok $? "rs, left on the dropped identity, is no longer healthy ($st)"
expect_tset rs "still = {N} (forced out)" "$N"
run_ok "rs: the manual command: --trust N2" "$AGENT" configure --home "${AH[rs]}" --trust "$N2"
run_ok "rs: --remove-trust N" "$AGENT" configure --home "${AH[rs]}" --remove-trust "$N"
expect_tset rs "after the manual commands = {N2}" "$N2"
healthy r "after --force and the manual commands" rl rp rs
expect_tset rl "= {N2}" "$N2"
expect_tset rp "= {N2}" "$N2"

###########################################################################
echo "# 3. rotate-agent-certificate"
for a in rl rp rs; do AT0[$a]=$(athumb $a); done
run_ok "rotate-agent-certificate rl" "$SERVER" rotate-agent-certificate --home "${SH[r]}" rl
like "$TMP/out" "^  rl +rotated" "rl rotated"
[ "$(athumb rl)" != "${AT0[rl]}" ]; ok $? "rl: show-thumbprint changed"
is "$(pin_of r rl)" "$(athumb rl)" "rl: the target's pin is the agent's new thumbprint"
is "$(athumb rp)" "${AT0[rp]}" "rp untouched"
healthy r "after rotating rl" rl rp rs
run_ok "rotate-agent-certificate rp (polling)" "$SERVER" rotate-agent-certificate --home "${SH[r]}" rp
[ "$(athumb rp)" != "${AT0[rp]}" ]; ok $? "rp: show-thumbprint changed"
is "$(pin_of r rp)" "$(athumb rp)" "rp: the target's pin is the agent's new thumbprint"
healthy r "after rotating rp" rl rp rs
for a in rl rp rs; do AT0[$a]=$(athumb $a); done
run_ok "rotate-agent-certificate --all" "$SERVER" rotate-agent-certificate --home "${SH[r]}" --all
for a in rl rp rs; do
	[ "$(athumb $a)" != "${AT0[$a]}" ]; ok $? "$a: --all changed its thumbprint"
	is "$(pin_of r $a)" "$(athumb $a)" "$a: pin = show-thumbprint"
	expect_tset $a "unchanged by the agent rotation = {N2}" "$N2"
done
healthy r "after --all" rl rp rs
stop_agent rs
stop_agent rp
for a in rl rp rs; do AT0[$a]=$(athumb $a); done
run_exit 1 "rotate-agent-certificate --all with rs and rp stopped" "$SERVER" rotate-agent-certificate --home "${SH[r]}" --all
like "$TMP/out" "^  rl +rotated" "rl rotated"
like "$TMP/out" "^  rs +(unreachable|failed)" "rs reported not rotated"
like "$TMP/out" "^  rp +(unreachable|failed)" "rp reported not rotated"
[ "$(athumb rl)" != "${AT0[rl]}" ]; ok $? "rl: new thumbprint"
for a in rs rp; do
	is "$(athumb $a)" "${AT0[$a]}" "$a: stopped, its certificate is unchanged"
	is "$(pin_of r $a)" "${AT0[$a]}" "$a: its old pin is kept"
done
start_agent rs
start_agent rp
wait_for grep -q "polling agent rp connected" "$TMP/r.log"
healthy r "rs and rp back on their old pins" rl rp rs
for a in rl rp rs; do expect_tset $a "= {N2}" "$N2"; done
for a in rl rp rs; do stop_agent $a; done
stop_server r

###########################################################################
echo "# 4. the trust model with two trusted servers"
mk_server t1
mk_server t2
S1=$(sthumb t1)
S2=$(sthumb t2)
for n in t1 t2; do
	"$SERVER" export-certificate --home "${SH[$n]}" --export-pfx "$TMP/$n.pfx" --pfx-password-file "$TMP/pw" >/dev/null
	pem_of_pfx "$TMP/$n.pfx" "$TMP/$n.pem"
done
mk_agent tw listening t1
"$AGENT" configure --home "${AH[tw]}" --trust "$S2" >/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/y.pem" -out "$TMP/y.crt" -subj /CN=y -days 30 2>/dev/null
cat "$TMP/y.crt" >> "$TMP/y.pem"
X=$(printf '%064x' 42)
Y=$(thumb_of_pem "$TMP/y.crt")
Z=$(printf '%064x' 43)
start_agent tw
start_server t2
add_target t2 tw
healthy t2 "S2 reaches the agent" tw
expect_tset tw "= {S1,S2}" "$S1" "$S2"
call() { local pem=$1; shift; $PEER call 127.0.0.1 ${APORT[tw]} "$pem" "$pem" "$@" >"$TMP/out" 2>"$TMP/err"; }
call "$TMP/t1.pem" trust.rotate "{\"successor\": \"$X\"}"
like "$TMP/out" '^result .*"pending": true' "S1: trust.rotate naming X is accepted (pending)"
expect_tset tw "after S1 names X = {S1,S2,X}" "$S1" "$S2" "$X"
is "$(wsucc tw "$TMP/t2.pem")" "$X<$S1" "tw: X is the pending successor of S1 (trust.list)"
is "$(lsucc tw)" "$X<$S1" "tw: list-trust --json shows X as successor_of S1"
call "$TMP/t1.pem" trust.rotate "{\"successor\": \"$Y\"}"
like "$TMP/out" '^result ' "S1: trust.rotate naming Y is accepted"
expect_tset tw "after S1 names Y: X replaced, at most one pending successor = {S1,S2,Y}" "$S1" "$S2" "$Y"
is "$(wsucc tw "$TMP/t2.pem")" "$Y<$S1" "tw: Y is now the only pending successor of S1"
call "$TMP/t2.pem" trust.rotate "{\"successor\": \"$Z\"}"
expect_tset tw "S2 names its own successor Z = {S1,S2,Y,Z}" "$S1" "$S2" "$Y" "$Z"
is "$(wsucc tw "$TMP/t2.pem")" "$(sorted_words "$Y<$S1" "$Z<$S2")" "tw: one pending successor per server (Y<S1, Z<S2)"
call "$TMP/t1.pem" trust.retire '{}'
like "$TMP/out" '^error not_found' "S1: trust.retire without a predecessor fails (not_found)"
expect_tset tw "unchanged by S1's trust.retire" "$S1" "$S2" "$Y" "$Z"
call "$TMP/t1.pem" trust.replace "{\"trusted\": [\"$S1\"]}"
like "$TMP/out" '^error forbidden' "S1: trust.replace is forbidden (not a recovery identity)"
expect_tset tw "unchanged by S1's trust.replace" "$S1" "$S2" "$Y" "$Z"
is "$(wsucc tw "$TMP/t2.pem")" "$(sorted_words "$Y<$S1" "$Z<$S2")" "tw: successors unchanged by S1's refused calls"
call "$TMP/t1.pem" trust.remove "{\"sha256\": \"$S2\"}"
like "$TMP/out" '^error (unknown_method|forbidden)' "S1: there is no method to remove another pin"
call "$TMP/t1.pem" trust.rotate "{\"successor\": \"$S2\"}"
"$AGENT" list-trust --home "${AH[tw]}" --json > "$TMP/lt.json"
is "$(python3 -c 'import json,sys; print([t.get("successor_of") for t in json.load(open(sys.argv[1]))["trusted"] if t["sha256"]==sys.argv[2]])' "$TMP/lt.json" "$S2")" "[None]" \
	"S1 naming S2 as its successor does not make S2's pin depend on S1"
call "$TMP/t1.pem" trust.rotate "{\"successor\": \"$Y\"}"
expect_tset tw "S1 names Y again = {S1,S2,Y,Z}" "$S1" "$S2" "$Y" "$Z"
is "$(wsucc tw "$TMP/t2.pem")" "$(sorted_words "$Y<$S1" "$Z<$S2")" "tw: Y<S1 and Z<S2 pending"
healthy t2 "S2's pin still works" tw
call "$TMP/y.pem" trust.retire '{}'
like "$TMP/out" "^result .*\"retired\": \"$S1\"" "Y (S1's successor) retires S1"
expect_tset tw "after Y retires S1 = {S2,Y,Z}" "$S2" "$Y" "$Z"
is "$(wsucc tw "$TMP/t2.pem")" "$Z<$S2" "tw: Y is no longer pending; Z<S2 still is"
call "$TMP/y.pem" trust.replace "{\"trusted\": [\"$Y\"]}"
like "$TMP/out" '^error forbidden' "Y: trust.replace is forbidden"
call "$TMP/y.pem" trust.retire '{}'
like "$TMP/out" '^error not_found' "Y: nothing more to retire (it cannot retire S2)"
expect_tset tw "S2 survives everything S1 and its successor did" "$S2" "$Y" "$Z"
call "$TMP/t1.pem" health '{}'
unlike "$TMP/out" '^result' "S1, retired, is refused"
healthy t2 "at the end of the two-server test" tw
stop_agent tw; stop_server t2

###########################################################################
echo "# 5. recovery: rekey-all --recovery-identity"
mk_server v
mk_server rc
"$SERVER" export-certificate --home "${SH[rc]}" --export-pfx "$TMP/R.pfx" --pfx-password-file "$TMP/pw" >/dev/null
pem_of_pfx "$TMP/R.pfx" "$TMP/R.pem"
R=$(sthumb rc)
V=$(sthumb v)
E=$Y   # a key the "thief" holds (from section 4), planted as trusted
"$SERVER" export-certificate --home "${SH[v]}" --export-pfx "$TMP/v-old.pfx" --pfx-password-file "$TMP/pw" >/dev/null
pem_of_pfx "$TMP/v-old.pfx" "$TMP/v-old.pem"
PYPORT=$(free_port)
mk_agent vl listening v
mk_agent vp polling v
for a in vl vp; do
	run_ok "$a: configure --recovery-trust R" "$AGENT" configure --home "${AH[$a]}" --recovery-trust "$R"
	run_ok "$a: an extra thumbprint planted with --trust" "$AGENT" configure --home "${AH[$a]}" --trust "$E"
	expect_tset $a "before recovery = {V,E}" "$V" "$E"
done
# a recovery identity can do nothing but trust.replace: listening ...
start_agent vl
$PEER call 127.0.0.1 ${APORT[vl]} "$TMP/R.pem" "$TMP/R.pem" health '{}' trust.rotate "{\"successor\": \"$E\"}" trust.retire '{}' trust.list '{}' >"$TMP/out" 2>&1
is "$(grep -c '^error forbidden' "$TMP/out")" 4 "vl: with the recovery identity health, trust.rotate, trust.retire, trust.list are forbidden"
like "$TMP/vl.log" "recovery identity $R may only call trust.replace, not 'health'" "vl log says why"
expect_tset vl "unchanged by the recovery identity's refused calls" "$V" "$E"
$PEER call 127.0.0.1 ${APORT[vl]} "$TMP/y.pem" "$TMP/y.pem" health '{}' >"$TMP/out" 2>&1
like "$TMP/out" '^result' "before recovery the planted key is trusted by vl"
# ... and polling (the Python peer is the server the agent polls)
"$AGENT" configure --home "${AH[vp]}" --add-server 127.0.0.1:$PYPORT >/dev/null
$PEER serve-call $PYPORT "$TMP/R.pem" "$TMP/R.pem" 20 health '{}' trust.rotate "{\"successor\": \"$E\"}" >"$TMP/py.out" 2>&1 &
PYPID=$!
start_agent vp
wait $PYPID
is "$(grep -c '^error forbidden' "$TMP/py.out")" 2 "vp (polling): with the recovery identity health and trust.rotate are forbidden"
[ "$(grep -c '^error forbidden' "$TMP/py.out")" = 2 ] || sed 's/^/# /' "$TMP/py.out"
expect_tset vp "unchanged by the recovery identity's refused calls" "$V" "$E"
stop_agent vp
"$AGENT" configure --home "${AH[vp]}" --remove-server 127.0.0.1:$PYPORT >/dev/null
start_agent vp
start_server v
add_target v vl
add_target v vp
wait_for grep -q "polling agent vp connected" "$TMP/v.log"
healthy v "before recovery" vl vp
for a in vl vp; do AT0[$a]=$(athumb $a); done
run_ok "rekey-all --recovery-identity R.pfx" "$SERVER" rekey-all --home "${SH[v]}" --recovery-identity "$TMP/R.pfx" --pfx-password-file "$TMP/pw"
cp "$TMP/out" "$TMP/rekey.out"
V2=$(sed -n 's/^Server identity now \([0-9a-f]\{64\}\).*/\1/p' "$TMP/rekey.out")
[ ${#V2} -eq 64 ] && [ "$V2" != "$V" ]; ok $? "a new server identity V2"
is "$(sthumb v)" "$V2" "show-thumbprint: V2 is current"
like "$TMP/rekey.out" "^  vl +replaced" "vl: trust set replaced"
like "$TMP/rekey.out" "^  vp +replaced" "vp: trust set replaced"
for a in vl vp; do
	expect_tset $a "after recovery = {V2} only (V and the planted E are gone)" "$V2"
	is "$("$AGENT" list-trust --home "${AH[$a]}" --json | python3 -c 'import json,sys; print(" ".join(r["sha256"] for r in json.load(sys.stdin)["recovery"]))')" "$R" "$a: the recovery thumbprint stays pinned"
	[ "$(athumb $a)" != "${AT0[$a]}" ]; ok $? "$a: re-keyed"
	is "$(pin_of v $a)" "$(athumb $a)" "$a: pinned to its new certificate"
done
"$SERVER" show-thumbprint --home "${SH[v]}" --json > "$TMP/st.json"
is "$(python3 -c 'import json,sys; print("previous" in json.load(open(sys.argv[1])))' "$TMP/st.json")" "False" "the old server identity is not kept"
healthy v "after recovery" vl vp
$PEER call 127.0.0.1 ${APORT[vl]} "$TMP/R.pem" "$TMP/R.pem" health '{}' >"$TMP/out" 2>&1
like "$TMP/out" '^error forbidden' "after recovery the recovery identity still can do nothing else"
for who in v-old y; do
	$PEER call 127.0.0.1 ${APORT[vl]} "$TMP/$who.pem" "$TMP/$who.pem" health '{}' >"$TMP/out" 2>&1
	unlike "$TMP/out" '^result' "after recovery the old server key ($who) is refused"
done
for a in vl vp; do stop_agent $a; done
stop_server v

###########################################################################
echo "# 6. rekey-all without a recovery identity, one agent unreachable"
mk_server k
mk_agent kl listening k
mk_agent kp polling k
mk_agent ks listening k
K=$(sthumb k)
for a in kl kp ks; do start_agent $a; done
start_server k
for a in kl kp ks; do add_target k $a; done
wait_for grep -q "polling agent kp connected" "$TMP/k.log"
healthy k "before rekey-all" kl kp ks
for a in kl kp ks; do AT0[$a]=$(athumb $a); expect_tset $a "before rekey-all = {K}" "$K"; done
stop_agent ks
run_exit 1 "rekey-all with ks stopped" "$SERVER" rekey-all --home "${SH[k]}"
cp "$TMP/out" "$TMP/rekey2.out"
K2=$(sed -n 's/^Server identity now \([0-9a-f]\{64\}\).*/\1/p' "$TMP/rekey2.out")
[ ${#K2} -eq 64 ] && [ "$K2" != "$K" ]; ok $? "a new server identity K2"
like "$TMP/rekey2.out" "^  ks +unreachable" "ks reported unreachable"
like "$TMP/rekey2.out" "^  ks +on the agent: tether-agent configure --trust $K2\$" "the report gives the manual commands: trust the new identity"
like "$TMP/rekey2.out" "^  ks +on the agent: tether-agent configure --remove-trust $K\$" "remove the old one (its real thumbprint)"
like "$TMP/rekey2.out" "^  ks +then here: tether-server rotate-agent-certificate --home ${SH[k]} ks\$" "re-key the agent (its real name)"
unlike "$TMP/rekey2.out" "^  (kl|kp) +(on the agent|then here)" "reached targets get no manual commands"
for a in kl kp; do
	expect_tset $a "after rekey-all = {K2} (old server thumbprint removed)" "$K2"
	[ "$(athumb $a)" != "${AT0[$a]}" ]; ok $? "$a: re-keyed"
	is "$(pin_of k $a)" "$(athumb $a)" "$a: pinned to its new certificate"
done
expect_tset ks "(stopped) = {K}" "$K"
is "$(pin_of k ks)" "${AT0[ks]}" "ks keeps its old pin"
healthy k "after rekey-all" kl kp
start_agent ks
healthy k "ks back, on the previous identity" ks
run_ok "ks: the manual command --trust K2" "$AGENT" configure --home "${AH[ks]}" --trust "$K2"
run_ok "ks: --remove-trust K" "$AGENT" configure --home "${AH[ks]}" --remove-trust "$K"
run_ok "rotate-agent-certificate ks" "$SERVER" rotate-agent-certificate --home "${SH[k]}" ks
expect_tset ks "after the manual commands = {K2}" "$K2"
[ "$(athumb ks)" != "${AT0[ks]}" ]; ok $? "ks: re-keyed"
run_ok "rotate-certificate --finish: nothing depends on K any more" "$SERVER" rotate-certificate --home "${SH[k]}" --finish
healthy k "at the end of rekey-all" kl kp ks
for a in kl kp ks; do expect_tset $a "at the end = {K2}" "$K2"; done
for a in kl kp ks; do stop_agent $a; done
stop_server k

###########################################################################
echo "# 7. check-certificates"
mk_server c
mk_agent cok listening c
mk_agent csha1 listening c
mk_agent cexp listening c
mk_agent crsa1k listening c
openssl req -x509 -sha1 -newkey rsa:2048 -nodes -keyout "$TMP/sha1.pem" -out "$TMP/sha1.crt" -subj /CN=sha1 -days 365 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/exp.pem" -out "$TMP/exp.crt" -subj /CN=exp -days 10 2>/dev/null
openssl req -x509 -newkey rsa:1024 -nodes -keyout "$TMP/r1k.pem" -out "$TMP/r1k.crt" -subj /CN=r1k -days 365 2>/dev/null
cat "$TMP/sha1.crt" >> "$TMP/sha1.pem"; cat "$TMP/exp.crt" >> "$TMP/exp.pem"; cat "$TMP/r1k.crt" >> "$TMP/r1k.pem"
run_ok "import a SHA-1-signed certificate" "$AGENT" import-certificate --home "${AH[csha1]}" --from-file "$TMP/sha1.pem"
is "$(athumb csha1)" "$(thumb_of_pem "$TMP/sha1.crt")" "csha1 uses it"
run_ok "import a certificate expiring in 10 days" "$AGENT" import-certificate --home "${AH[cexp]}" --from-file "$TMP/exp.pem"
"$AGENT" import-certificate --home "${AH[crsa1k]}" --from-file "$TMP/r1k.pem" >"$TMP/r1k.out" 2>&1
R1K=$?
if [ $R1K -ne 0 ]; then
	echo "# RSA-1024 import refused: $(head -3 "$TMP/r1k.out" | tr '\n' ' ')"
	like "$TMP/r1k.out" "1024|2048|weak|small|security" "the refusal says the key is too small"
else
	echo "# RSA-1024 import accepted (it must be flagged)"
fi
for a in cok csha1 cexp; do start_agent $a; done
[ $R1K -eq 0 ] && start_agent crsa1k
start_server c
add_target c cok
run_ok "check-certificates with nothing weak: exit 0" "$SERVER" check-certificates --home "${SH[c]}"
for a in csha1 cexp; do add_target c $a; done
[ $R1K -eq 0 ] && add_target c crsa1k
healthy c "a pinned SHA-1-signed agent still connects" csha1
healthy c "the others" cok cexp
run_exit 1 "check-certificates --json flags them (exit 1)" "$SERVER" check-certificates --home "${SH[c]}" --json
cp "$TMP/out" "$TMP/cc.json"
flags() { python3 -c 'import json,sys; r=[x for x in json.load(open(sys.argv[1])) if x.get("target")==sys.argv[2]]; print(",".join(r[0].get("flags",[])) if r else "missing")' "$TMP/cc.json" "$1"; }
is "$(flags cok)" "" "cok: no flags"
is "$(flags csha1)" "sha1_signature" "csha1: sha1_signature"
is "$(flags cexp)" "expires_within_30_days" "cexp: expires_within_30_days"
[ $R1K -eq 0 ] && is "$(flags crsa1k)" "rsa_key_too_small" "crsa1k: rsa_key_too_small"
is "$(python3 -c 'import json,sys; print(sorted(set(x["slot"] for x in json.load(open(sys.argv[1])) if x["who"]=="server")))' "$TMP/cc.json")" "['current']" "the server's own certificate is listed"
run_exit 1 "check-certificates (table) exit 1" "$SERVER" check-certificates --home "${SH[c]}"
like "$TMP/out" "^csha1 .*sha1WithRSAEncryption.*sha1_signature" "the table flags csha1"
like "$TMP/out" "tether never generates SHA-1 certificates" "and says how to fix it"
"$SERVER" health --home "${SH[c]}" csha1 > "$TMP/out" 2>&1
like "$TMP/out" "SHA-1.*regenerat|regenerat.*SHA-1" "health of csha1 says its SHA-1-signed certificate should be regenerated"
like "$TMP/c.log" "csha1.*SHA-1|SHA-1.*csha1" "the server's log line for csha1 says it is SHA-1-signed"
"$AGENT" show-thumbprint --home "${AH[csha1]}" > "$TMP/out" 2>&1
like "$TMP/out" "SHA-1.*regenerat|regenerat.*SHA-1|sha1_signature" "the agent's show-thumbprint flags its SHA-1 signature"
for a in cok csha1 cexp; do stop_agent $a; done
[ $R1K -eq 0 ] && stop_agent crsa1k
stop_server c

done_testing
