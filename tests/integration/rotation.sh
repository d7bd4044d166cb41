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
# The trusted server thumbprints of an agent, sorted; a pending successor is
# written SUCCESSOR<PREDECESSOR.
tset() {
	"$AGENT" list-trust --home "${AH[$1]}" --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(sorted(t["sha256"] + ("<" + t["successor_of"] if "successor_of" in t else "") for t in d["trusted"])))'
}
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
	if [ $a = ml ]; then
		is "$(health_state m ml)" untrusted "ml: before set-thumbprint the server refuses the new certificate (untrusted)"
	fi
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
healthy r "rs back, on the previous identity" rs
expect_tset rs "back, still = {O}" "$O"
expect_tset rl "while rs is back = {N}" "$N"
expect_tset rp "while rs is back = {N}" "$N"
run_exit 1 "rotate-certificate --finish refuses while rs depends on the previous identity" "$SERVER" rotate-certificate --home "${SH[r]}" --finish
like "$TMP/out" "^  rs +on the agent: tether-agent configure --trust $N && tether-agent configure --remove-trust $O" "--finish lists rs with the exact manual command"
unlike "$TMP/out" "^  r[lp] " "--finish does not list the rotated targets"
"$SERVER" show-thumbprint --home "${SH[r]}" --json > "$TMP/st.json"
is "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("previous",{}).get("sha256"))' "$TMP/st.json")" "$O" "the previous identity is kept"
healthy r "after the refused --finish" rl rp rs
run_ok "rotate-certificate again: rs completes" "$SERVER" rotate-certificate --home "${SH[r]}"
like "$TMP/out" "^  rs +rotated" "rs rotated on the second run"
unlike "$TMP/out" "^  r[lp] " "the second run leaves the rotated targets alone"
is "$(sthumb r)" "$N" "the second run keeps the same new identity"
for a in rl rp rs; do expect_tset $a "after the second run = {N}" "$N"; done
healthy r "after the second run" rl rp rs
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

done_testing
