#!/bin/bash
# tether-ping listen and connect on loopback: handshake details, the trust
# verdict, echo round trips with --count and --size and their byte counts.
. "$(dirname "$0")/lib.sh"
[ -x "$PING" ] || skip_all "tether-ping not built (needs the openssl provider)"
PY=python3
jget() { $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

P=$(free_port)
bg "$PING" listen --port "$P" --address 127.0.0.1 > "$TMP/listen.out" 2>&1
LPID=$LAST_PID
wait_for grep -q '^thumbprint: ' "$TMP/listen.out"
ok $? "listener prints its thumbprint"
LT=$(sed -n 's/^thumbprint: //p' "$TMP/listen.out")
[ ${#LT} -eq 64 ]; ok $? "thumbprint is 64 hex digits ($LT)"
like "$TMP/listen.out" "listening on 127.0.0.1 port $P" "listener says where it listens"

run_ok "connect --count 5 --size 1000" "$PING" connect 127.0.0.1:$P --count 5 --size 1000
is "$(grep -c '^round [0-9]*: 1000 bytes sent, 1000 bytes echoed' "$TMP/out")" "5" "five rounds of 1000 bytes each way"
like "$TMP/out" "5 rounds of 1000 bytes: 5000 bytes sent, 5000 bytes received" "summary counts 5000 bytes each way"
like "$TMP/out" "min/median/max [0-9.]+/[0-9.]+/[0-9.]+ ms" "summary has min/median/max"
like "$TMP/out" "MB/s" "summary has the throughput"
like "$TMP/out" "^TLS: TLSv1.3, cipher TLS_[A-Z0-9_]+, group x25519, signature scheme rsa_pss_rsae_sha256" "negotiated TLS details"
like "$TMP/out" "^peer certificate: $LT" "peer thumbprint is the listener's"
like "$TMP/out" "signed with sha256WithRSAEncryption" "peer certificate signature algorithm"
like "$TMP/out" "^trust: not verified" "without --expect-thumbprint the trust is reported as not verified"
like "$TMP/out" "^peer: agent, protocol 1.0" "HELLO answered as an agent"

run_ok "connect --json, 3 rounds of 512 KiB" "$PING" connect 127.0.0.1:$P --count 3 --size 524288 --json
cp "$TMP/out" "$TMP/j"
is "$(jget "$TMP/j" 'd["ok"]')" "True" "JSON ok true"
is "$(jget "$TMP/j" 'd["bytes_sent"]')" "1572864" "JSON bytes_sent = 3 x 524288"
is "$(jget "$TMP/j" 'd["bytes_received"]')" "1572864" "JSON bytes_received = 3 x 524288"
is "$(jget "$TMP/j" 'len(d["rounds_ms"])')" "3" "three round times"
is "$(jget "$TMP/j" 'd["min_ms"] <= d["median_ms"] <= d["max_ms"]')" "True" "min <= median <= max"
is "$(jget "$TMP/j" 'd["tls_version"]')" "TLSv1.3" "JSON tls_version"
is "$(jget "$TMP/j" 'd["group"]')" "x25519" "JSON group"
is "$(jget "$TMP/j" 'd["sig_scheme"]')" "rsa_pss_rsae_sha256" "JSON sig_scheme"
is "$(jget "$TMP/j" 'd["peer_sha256"]')" "$LT" "JSON peer_sha256"
is "$(jget "$TMP/j" 'd["cert_signature_algorithm"]')" "sha256WithRSAEncryption" "JSON cert_signature_algorithm"
is "$(jget "$TMP/j" 'd["trust"]')" "not_verified" "JSON trust not_verified"
is "$(jget "$TMP/j" '"category" in d')" "False" "no category on success"
is "$(jget "$TMP/j" 'd["cipher"].startswith("TLS_")')" "True" "JSON cipher"

run_ok "connect --expect-thumbprint (right one, with colons and upper case)" "$PING" connect 127.0.0.1:$P \
	--count 1 --size 0 --expect-thumbprint "$(echo "$LT" | tr a-f A-F | sed 's/../&:/g; s/:$//')"
like "$TMP/out" "^trust: verified" "trust verified"
like "$TMP/out" "1 round of 0 bytes: 0 bytes sent, 0 bytes received" "zero-byte payload"
run_ok "--count 0: handshake and greeting only" "$PING" connect 127.0.0.1:$P --count 0
unlike "$TMP/out" "^round" "no rounds"
WRONG=$(printf '%064d' 0)
run_exit 1 "a wrong --expect-thumbprint fails" "$PING" connect 127.0.0.1:$P --expect-thumbprint "$WRONG" --json
cp "$TMP/out" "$TMP/j"
is "$(jget "$TMP/j" 'd["ok"]')" "False" "JSON ok false"
is "$(jget "$TMP/j" 'd["category"]')" "untrusted" "category untrusted"
is "$(jget "$TMP/j" 'd["trust"]')" "mismatch" "trust mismatch"
is "$(jget "$TMP/j" 'd["peer_sha256"]')" "$LT" "the presented thumbprint is still reported"
is "$(jget "$TMP/j" 'len(d["hint"]) > 20')" "True" "a hint is given"

run_exit 2 "--size above 512 KiB is a usage error" "$PING" connect 127.0.0.1:$P --size 524289
like "$TMP/err" "at most|from 0 to 524288" "the usage error names the limit"
run_exit 2 "connect without a target" "$PING" connect
run_exit 2 "a bad --expect-thumbprint" "$PING" connect 127.0.0.1:$P --expect-thumbprint xyz
run_exit 2 "unknown command" "$PING" bounce

# Two clients at once, then the listener stops cleanly.
"$PING" connect 127.0.0.1:$P --count 20 --size 4096 > "$TMP/c1" 2>&1 &
C1=$!
"$PING" connect 127.0.0.1:$P --count 20 --size 4096 > "$TMP/c2" 2>&1
r2=$?
wait $C1; r1=$?
[ $r1 -eq 0 ] && [ $r2 -eq 0 ]; ok $? "two concurrent clients succeed"
like "$TMP/c1" "81920 bytes sent, 81920 bytes received" "client 1 byte counts"
like "$TMP/c2" "81920 bytes sent, 81920 bytes received" "client 2 byte counts"
curl -sk "https://127.0.0.1:$P/" > "$TMP/curl"
is "$(cat "$TMP/curl")" "tether-ping is listening" "curl -k gets the landing page"
kill -TERM $LPID
wait $LPID; rl=$?
_pids=""
is "$rl" "0" "listener exits 0 on SIGTERM"
like "$TMP/listen.out" "stopping \(49 echo requests served\)" "listener counted every echo (5+3+1+20+20)"
like "$TMP/listen.out" "127.0.0.1:[0-9]+ connected: TLSv1.3" "listener logs each connection"
# the man page documents every option --help lists
"$PING" --help > "$TMP/help" 2>&1
missing=""
for o in $(grep -o -- '--[a-z][a-z-]*' "$TMP/help" | sort -u); do
	grep -q -- "$(printf '%s' "$o" | sed 's/-/\\\\-/g')" "$TOP_SRCDIR/docs/tether-ping.1" || missing="$missing $o"
done
is "$missing" "" "docs/tether-ping.1 documents every option of --help"
done_testing
