#!/bin/bash
# The pkcs11 provider doing real work: health, exec (exact output and exit
# code) and upload/download (SHA-256 checked) with the agent's key on a
# SoftHSM2 token and the server on the openssl provider, then the other way
# round (the server's key on the token), each in listening and in polling
# mode, with TLS 1.3 and with TLS 1.2; then with ECDSA keys (P-256, P-384)
# on the token, either side, listening mode, TLS 1.3 and 1.2.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/p11lib.sh"
head -c 1048577 /dev/urandom > "$TMP/blob"        # 1 MiB + 1 byte
sha() { sha256sum "$1" | cut -d' ' -f1; }
BLOB_SHA=$(sha "$TMP/blob")
n_suite=0

# suite TOKEN-SIDE MODE VERSION [KEY-TYPE]: TOKEN-SIDE agent|server holds
# its key (rsa2048 unless KEY-TYPE) on the token
suite() {
	local side=$1 mode=$2 ver=$3 kt=${4:-rsa2048} d
	n_suite=$((n_suite + 1))
	d="$side on token ($kt), $mode, TLS $ver"
	echo "# --- $d ---"
	local H="$TMP/h$n_suite" A
	A=(--home "$H")
	local R="$TMP/root$n_suite" SPORT APORT AT ST T=t$n_suite SPID APID
	mkdir -p "$R"
	SPORT=$(free_port); APORT=$(free_port)
	"$SERVER" create-instance "${A[@]}" >/dev/null
	"$AGENT" create-instance "${A[@]}" >/dev/null
	if [ "$side" = agent ]; then
		"$AGENT" configure "${A[@]}" "${P11[@]}" >/dev/null
	else
		"$SERVER" configure "${A[@]}" "${P11[@]}" >/dev/null
	fi
	local KT=() KS=()
	[ "$side" = agent ] && KT=(--key-type "$kt") || KS=(--key-type "$kt")
	"$SERVER" new-certificate "${A[@]}" "${KS[@]}" >/dev/null &&
		"$AGENT" new-certificate "${A[@]}" "${KT[@]}" >/dev/null
	ok $? "$d: both identities made (one on the token)"
	if [ "$side" = agent ]; then
		"$AGENT" export-certificate "${A[@]}" --export-pem "$TMP/tok$n_suite.pem" >/dev/null
	else
		"$SERVER" export-certificate "${A[@]}" --export-pem "$TMP/tok$n_suite.pem" >/dev/null
	fi
	openssl x509 -in "$TMP/tok$n_suite.pem" -noout -text > "$TMP/tok$n_suite.txt" 2>&1
	case $kt in
	rsa2048) like "$TMP/tok$n_suite.txt" "Public-Key: \(2048 bit\)" "$d: the token's certificate has an RSA-2048 key" ;;
	ec-p256) like "$TMP/tok$n_suite.txt" "NIST CURVE: P-256" "$d: the token's certificate has a P-256 key" ;;
	ec-p384) like "$TMP/tok$n_suite.txt" "NIST CURVE: P-384" "$d: the token's certificate has a P-384 key" ;;
	esac
	like "$H/$side-default/$side.ini" "^provider = pkcs11" "$d: the $side's config names the pkcs11 provider"
	AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
	ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
	printf '\n[polling]\naddress = 127.0.0.1:%s\nwait = 15\n' "$SPORT" >> "$H/server-default/server.ini"
	if [ "$mode" = listening ]; then
		"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
	else
		"$AGENT" configure "${A[@]}" --trust "$ST" --mode polling --server 127.0.0.1:$SPORT >/dev/null
	fi
	printf '\n[files]\nroots = %s\n' "$R" >> "$H/agent-default/agent.ini"
	[ "$ver" = 1.2 ] && printf '\n[tls]\nmax-version = 1.2\n' >> "$H/$side-default/$side.ini"
	bg "$SERVER" run "${A[@]}" 2>"$TMP/server$n_suite.log"
	SPID=$LAST_PID
	wait_for test -S "$H/server-default/run/admin.sock"
	bg "$AGENT" run "${A[@]}" 2>"$TMP/agent$n_suite.log"
	APID=$LAST_PID
	if [ "$mode" = listening ]; then
		wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
		"$SERVER" target add "${A[@]}" $T --listening 127.0.0.1:$APORT --thumbprint "$AT" >/dev/null
	else
		"$SERVER" target add "${A[@]}" $T --polling --thumbprint "$AT" >/dev/null
		wait_for grep -q "polling agent $T connected" "$TMP/server$n_suite.log"
	fi
	ok $? "$d: target added and reachable"

	run_ok "$d: health" "$SERVER" health "${A[@]}" $T --json
	cp "$TMP/out" "$TMP/h.json"
	is "$(p11_json "$TMP/h.json" 'd[0]["state"]')" healthy "$d: healthy"
	is "$(p11_json "$TMP/h.json" 'd[0]["peer_sha256"]')" "$AT" "$d: peer_sha256 is the agent's thumbprint"
	is "$(p11_json "$TMP/h.json" 'd[0]["tls_version"]')" "TLSv$ver" "$d: TLSv$ver negotiated"
	if [ "$side" = agent ] && [ "$kt" != rsa2048 ]; then
		# The agent's certificate (signed on the token) and, at TLS 1.2,
		# the suite say ECDSA: the token's raw r||s became valid DER.
		like "$TMP/h.json" '"cert_signature_algorithm": *"ecdsa-with-SHA(256|384)"' "$d: the agent's certificate is ECDSA-signed (on the token)"
		[ "$ver" = 1.2 ] && like "$TMP/h.json" '"cipher": *"ECDHE-ECDSA-' "$d: TLS 1.2 suite ECDHE-ECDSA (the handshake signed on the token)"
	fi

	"$SERVER" exec "${A[@]}" $T -- sh -c 'printf "out one\n"; printf "err one\n" >&2; printf "out two"; exit 7' >"$TMP/o" 2>"$TMP/e"
	is "$?" 7 "$d: exec exits with the command's exit code"
	is "$(od -c "$TMP/o")" "$(printf 'out one\nout two' | od -c)" "$d: exec: exact stdout"
	is "$(od -c "$TMP/e")" "$(printf 'err one\n' | od -c)" "$d: exec: exact stderr"

	run_ok "$d: upload 1 MiB" "$SERVER" upload "${A[@]}" $T "$TMP/blob" blob
	is "$(sha "$R/blob")" "$BLOB_SHA" "$d: the uploaded file's SHA-256 matches"
	like "$TMP/out" "^sha256 $BLOB_SHA$" "$d: upload prints that SHA-256"
	rm -f "$TMP/back"
	run_ok "$d: download it back" "$SERVER" download "${A[@]}" $T blob "$TMP/back"
	is "$(sha "$TMP/back")" "$BLOB_SHA" "$d: the downloaded file's SHA-256 matches"

	kill -TERM $APID $SPID
	wait $APID; local ra=$?
	wait $SPID; local rs=$?
	is "$ra:$rs" "0:0" "$d: both daemons exit 0 on SIGTERM"
	cat "$TMP/agent$n_suite.log" "$TMP/server$n_suite.log" > "$TMP/logs"
	unlike "$TMP/logs" "Segmentation|Aborted|AddressSanitizer" "$d: no crash in teardown"
}

for side in agent server; do
	for mode in listening polling; do
		for ver in 1.3 1.2; do
			suite $side $mode $ver
		done
	done
done
# ECDSA keys on the token: the token signs raw r||s, which pkcs11-provider
# turns into the DER signature TLS carries; both roles, TLS 1.3 and 1.2.
for kt in ec-p256 ec-p384; do
	for side in agent server; do
		for ver in 1.3 1.2; do
			suite $side listening $ver $kt
		done
	done
done
done_testing
