#!/bin/bash
# The Windows build under Wine: tether-agent.exe with tether-schannel.dll
# (cross-built by scripts/build-windows), in a private WINEPREFIX, against
# the Linux build and real openssl peers.  Skips (77) without mingw-w64 or
# Wine.  What Wine cannot run is listed in docs/windows.md.
. "$(dirname "$0")/lib.sh"

# The Windows programs are cross-built without sanitizers: one run, in the
# plain build, covers them (a second run in the sanitizer build only doubled
# the time and the exposure to Wine's occasional GnuTLS signing failure,
# "Public key signing has failed", seen once in four runs).
if sanitized; then
	skip_all "the Windows programs are not built with sanitizers: windows.sh runs in the plain build"
fi

for t in x86_64-w64-mingw32-gcc wine wineboot cmake openssl; do
	command -v "$t" >/dev/null 2>&1 || { echo "1..0 # SKIP $t not installed (scripts/install-deps installs gcc-mingw-w64-x86-64, wine, cmake)"; exit 77; }
done
WBUILD=${TETHER_WINDOWS_BUILD:-$TOP_BUILDDIR/windows}
if ! "$TOP_SRCDIR/scripts/build-windows" "$WBUILD" >"$TMP/build.log" 2>&1; then
	fail "scripts/build-windows builds the Windows programs"
	sed 's/^/# /' "$TMP/build.log" | tail -30
	done_testing
fi
pass "scripts/build-windows builds tether-agent.exe, tether-ping.exe, tether-schannel.dll, sch_tls_probe.exe"
objdump_exports=$(x86_64-w64-mingw32-objdump -p "$WBUILD/tether-schannel.dll" | sed -n '/Ordinal\/Name Pointer/,/^$/p' | grep -cE '^[[:space:]]*\[ *[0-9]+\]')
is "$objdump_exports" 1 "tether-schannel.dll exports exactly one symbol"
x86_64-w64-mingw32-objdump -p "$WBUILD/tether-schannel.dll" | grep -q '\] tether_provider_init$'
ok $? "... and it is tether_provider_init"

export WINEPREFIX="$TMP/wineprefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
timeout 120 wineboot -i >"$TMP/wineboot.log" 2>&1
ok $? "wineboot -i prepares a private prefix"
winpath() { echo "Z:${1//\//\\}"; }
WAGENT() { timeout 60 wine "$WBUILD/tether-agent.exe" "$@"; }
WH=$(winpath "$TMP/win")
mkdir -p "$TMP/win"

run_ok "create-instance (schannel is the Windows default)" WAGENT create-instance --home "$WH"
like "$TMP/win/agent-default/agent.ini" '^provider = schannel' "the config names the schannel provider"
run_ok "new-certificate" WAGENT new-certificate --home "$WH"
cp "$TMP/err" "$TMP/newcert.err"
NEW=$(sed -n 's/^New thumbprint: //p' "$TMP/out" | tr -d '\r')
run_ok "show-thumbprint" WAGENT show-thumbprint --home "$WH"
SHOWN=$(head -n1 "$TMP/out" | tr -d '\r')
is "$SHOWN" "$NEW" "show-thumbprint prints the thumbprint new-certificate announced"
like "$TMP/out" 'sha256WithRSAEncryption' "the certificate is signed sha256RSA"
like "$TMP/win/agent-default/state/identity-schannel/current.key" '^(capi|cng)$' "the key reference names its store"
grep -q '^capi$' "$TMP/win/agent-default/state/identity-schannel/current.key"
ok $? "under Wine, CNG persisted keys are missing: the key went to a CryptoAPI container (detected at run time)"
like "$TMP/newcert.err" 'warning: CNG persisted keys are not usable on this system \(CertCreateSelfSignCertificate.*0x80070057.*TLS is capped at 1\.2' \
	"... said once at warning level, with Wine's reason (ERROR_INVALID_PARAMETER) and the TLS 1.2 cap"
is "$(grep -c 'CNG persisted keys are not usable' "$TMP/newcert.err")" 1 "... only once"
# The container is made as a machine keyset (a LocalSystem service can open
# it), but Wine's Schannel cannot use one (AcquireCredentialsHandle:
# SEC_E_UNKNOWN_CREDENTIALS): detected, and the key moved to a user keyset.
like "$TMP/newcert.err" "warning: this system's Schannel cannot use a key in a CryptoAPI machine key container \(AcquireCredentialsHandle: SEC_E_UNKNOWN_CREDENTIALS" \
	"... and that Wine's Schannel cannot use a machine keyset, so the key went to a user keyset"
is "$(sed -n 4p "$TMP/win/agent-default/state/identity-schannel/current.key" | tr -d '\r')" user \
	"the key reference says user keyset"
C1=$(sed -n 3p "$TMP/win/agent-default/state/identity-schannel/current.key" | tr -d '\r')
timeout 30 wine reg query 'HKCU\Software\Wine\Crypto\RSA' >"$TMP/reg" 2>&1
like "$TMP/reg" "RSA\\\\$C1" "... Wine keeps it under HKCU"
timeout 30 wine reg query 'HKLM\Software\Wine\Crypto\RSA' >"$TMP/reg" 2>&1
unlike "$TMP/reg" "RSA\\\\$C1" "... and the machine container was deleted"
run_ok "export-certificate --export-pem" WAGENT export-certificate --home "$WH" --export-pem "$(winpath "$TMP/win.pem")"
FP=$(openssl x509 -in "$TMP/win.pem" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d ':' | tr 'A-F' 'a-f')
is "$FP" "$NEW" "the thumbprint equals openssl x509 -fingerprint -sha256 of the exported certificate"
echo secret-pw >"$TMP/pw"
run_exit 1 "export-certificate --export-pfx fails under Wine" \
	WAGENT export-certificate --home "$WH" --export-pfx "$(winpath "$TMP/w.pfx")" --pfx-password-file "$(winpath "$TMP/pw")"
like "$TMP/err" 'PFXExportCertStoreEx.*(stub|cannot export)' "... and says that this system's PFXExportCertStoreEx cannot export"
[ ! -e "$TMP/w.pfx" ]
ok $? "... and writes no file"

# A PFX made by the Linux openssl provider, imported on "Windows".
if [ -x "$AGENT" ]; then
	run_ok "Linux: create-instance + new-certificate (openssl provider)" \
		sh -c "'$AGENT' create-instance --home '$TMP/lin' >/dev/null && '$AGENT' new-certificate --home '$TMP/lin'"
	LIN=$(sed -n 's/^New thumbprint: //p' "$TMP/out")
	run_ok "Linux: export-certificate --export-pfx" \
		"$AGENT" export-certificate --home "$TMP/lin" --export-pfx "$TMP/lin.pfx" --pfx-password-file "$TMP/pw"
	echo wrong >"$TMP/badpw"
	run_exit 1 "import-certificate with a wrong password fails" \
		WAGENT import-certificate --home "$WH" --from-file "$(winpath "$TMP/lin.pfx")" --pfx-password-file "$(winpath "$TMP/badpw")"
	like "$TMP/err" '[Pp]assword' "... and says the password is wrong"
	run_ok "import-certificate of the Linux PFX" \
		WAGENT import-certificate --home "$WH" --from-file "$(winpath "$TMP/lin.pfx")" --pfx-password-file "$(winpath "$TMP/pw")"
	cp "$TMP/err" "$TMP/import.err"
	run_ok "show-thumbprint after the import" WAGENT show-thumbprint --home "$WH"
	is "$(head -n1 "$TMP/out" | tr -d '\r')" "$LIN" "the imported identity has the Linux thumbprint"
	PREV=$(openssl x509 -inform DER -in "$TMP/win/agent-default/state/identity-schannel/previous.cer" \
		-noout -fingerprint -sha256 2>/dev/null | cut -d= -f2 | tr -d ':' | tr 'A-F' 'a-f')
	is "$PREV" "$NEW" "the replaced certificate is kept in the previous slot"
	A=$(sed -n 3p "$TMP/win/agent-default/state/identity-schannel/current.key" | tr -d '\r')
	B=$(sed -n 3p "$TMP/win/agent-default/state/identity-schannel/previous.key" | tr -d '\r')
	[ -n "$A" ] && [ -n "$B" ] && [ "$A" != "$B" ]
	ok $? "each identity has its own key container ($A, $B)"
	is "$(sed -n 4p "$TMP/win/agent-default/state/identity-schannel/current.key" | tr -d '\r')" user \
		"the imported key was copied into a CryptoAPI user keyset (Wine's Schannel cannot use a machine one)"
	timeout 30 wine reg query 'HKCU\Software\Wine\Crypto\RSA' >"$TMP/reg" 2>&1
	like "$TMP/reg" "RSA\\\\$A" "... under HKCU"
	like "$TMP/import.err" 'warning: CNG persisted keys are not usable on this system \(PFXImportCertStore with PKCS12_ALWAYS_CNG_KSP failed and gave no reason\)' \
		"the import's fallback to CryptoAPI is said at warning level, with Wine's reason"
else
	echo "# SKIP Linux PFX import: $AGENT not built"
fi

# TLS client role (what a polling agent uses): the provider through the ABI
# against openssl s_server, requiring a client certificate.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/srv.key" -out "$TMP/srv.pem" -days 30 \
	-subj /CN=tether -sha256 >/dev/null 2>&1
SRVPIN=$(openssl x509 -in "$TMP/srv.pem" -noout -fingerprint -sha256 | cut -d= -f2)
CUR=$(WAGENT show-thumbprint --home "$WH" | head -n1 | tr -d '\r')
start_server() {
	PORT=$(free_port)
	mkfifo "$TMP/fifo.$PORT"
	bg sh -c "exec openssl s_server -accept 127.0.0.1:$PORT -cert '$TMP/srv.pem' -key '$TMP/srv.key' \
		-Verify 1 -tls1_2 -rev -naccept 1 <>'$TMP/fifo.$PORT' >'$TMP/srv.$PORT.log' 2>&1"
	wait_for sh -c "grep -q ACCEPT '$TMP/srv.$PORT.log'"
}
STATE=$(winpath "$TMP/win/agent-default/state")
start_server
run_ok "Schannel TLS client with a client certificate, pinned server" \
	timeout 60 wine "$WBUILD/sch_tls_probe.exe" "$STATE" 127.0.0.1 "$PORT" "$SRVPIN" p-0123456789abcdef.tether.invalid
like "$TMP/out" '^reply eborp-rehtet' "application data goes both ways (s_server -rev reversed the line)"
like "$TMP/out" '^tls_version TLSv1\.2' "TLS 1.2 (Wine has no TLS 1.3; CryptoAPI keys cap at 1.2 anyway)"
like "$TMP/out" '^cipher ECDHE-(RSA|ECDSA)-AES(128|256)-GCM-SHA(256|384)' "the cipher is reported with its OpenSSL name"
wait_for sh -c "grep -q 'CONNECTION CLOSED\|Peer certificate' '$TMP/srv.$PORT.log'"
openssl s_client -help >/dev/null 2>&1
SEEN=$(sed -n 's/^Peer certificate: //p' "$TMP/srv.$PORT.log")
[ -n "$SEEN" ]
ok $? "the server received the agent's client certificate ($SEEN)"

start_server
WRONG=0000000000000000000000000000000000000000000000000000000000000000
run_exit 3 "an untrusted server thumbprint is refused" \
	timeout 60 wine "$WBUILD/sch_tls_probe.exe" "$STATE" 127.0.0.1 "$PORT" "$WRONG" p-0000000000000000.tether.invalid
like "$TMP/err" 'not pinned.*untrusted' "... with the category untrusted"
unlike "$TMP/out" '^reply' "... and no application data was sent"

# --- The agent daemon: a Windows polling agent under Wine against a Linux
# tether-server (openssl provider).  The agent's identity is the one imported
# from Linux above (or the one new-certificate made).
wlong() { local i; for i in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
if [ -x "$SERVER" ]; then
	SH="$TMP/srv"; SA=(--home "$SH")
	SPORT=$(free_port)
	"$SERVER" create-instance "${SA[@]}" >/dev/null && "$SERVER" new-certificate "${SA[@]}" >/dev/null
	ST=$("$SERVER" show-thumbprint "${SA[@]}" | head -n1)
	printf '[polling]\naddress = 127.0.0.1:%s\nwait = 10\n' "$SPORT" >>"$SH/server-default/server.ini"
	bg "$SERVER" run "${SA[@]}" 2>"$TMP/server.log"
	wait_for test -S "$SH/server-default/run/admin.sock"
	ok $? "Linux: tether-server runs (openssl provider, polling address 127.0.0.1:$SPORT)"
	run_ok "agent.exe configure --mode polling --server --trust (the trust exchange, agent side)" \
		WAGENT configure --home "$WH" --mode polling --server "127.0.0.1:$SPORT" --trust "$ST"
	like "$TMP/win/agent-default/agent.ini" '^mode = polling' "agent.ini says mode = polling"
	mkdir -p "$TMP/files" "$TMP/outside"
	printf '\n[files]\nroots = %s\n' "$(winpath "$TMP/files")" >>"$TMP/win/agent-default/agent.ini"
	WT=$(WAGENT show-thumbprint --home "$WH" | head -n1 | tr -d '\r')
	run_ok "tether-server target add --polling (the trust exchange, server side)" \
		"$SERVER" target add "${SA[@]}" win --polling --thumbprint "$WT"
	# [tls] fips-module = required: Wine's BCryptGetFipsAlgorithmMode (a
	# semi-stub) always reports FIPS mode off, so the agent must refuse to
	# start and name the Windows policy that turns it on.
	cp "$TMP/win/agent-default/agent.ini" "$TMP/agent.ini.keep"
	printf '\n[tls]\nfips-module = required\n' >>"$TMP/win/agent-default/agent.ini"
	run_exit 1 "agent.exe run with [tls] fips-module = required refuses to start (Wine: FIPS mode off)" \
		WAGENT run --home "$WH"
	like "$TMP/err" "fips-module = required, but Windows' FIPS mode is off" "... saying Windows' FIPS mode is off"
	like "$TMP/err" 'System cryptography: Use FIPS compliant algorithms' "... naming the security policy to enable"
	like "$TMP/err" 'HKLM\\System\\CurrentControlSet\\Control\\Lsa\\FipsAlgorithmPolicy\\Enabled' "... and its registry value"
	mv "$TMP/agent.ini.keep" "$TMP/win/agent-default/agent.ini"
	bg timeout 900 wine "$WBUILD/tether-agent.exe" run --home "$WH" 2>"$TMP/wagent.log"
	WPID=$LAST_PID
	wlong grep -q "polling agent win connected" "$TMP/server.log"
	ok $? "tether-agent.exe run (polling mode) connects to the Linux server"
	like "$TMP/wagent.log" "connected to server $ST at 127.0.0.1:$SPORT \(TLSv1\.2" "agent log: connected to the server it trusts, TLS 1.2"
	run_ok "health of the Windows target" "$SERVER" health "${SA[@]}" win --json
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))[0]; assert d["state"]=="healthy" and d["peer_sha256"]==sys.argv[2] and d["tls_version"]=="TLSv1.2", d' "$TMP/out" "$WT"
	ok $? "... healthy, TLSv1.2 (Wine caps Schannel there), peer_sha256 is the agent's thumbprint"

	run_ok "exec win -- cmd /c echo hello" "$SERVER" exec "${SA[@]}" win -- cmd /c echo hello
	printf 'hello\r\n' >"$TMP/want"
	cmp -s "$TMP/out" "$TMP/want"
	ok $? "... prints exactly 'hello' CR LF (cmd's line end)"
	run_exit 3 "exec win -- cmd /c exit 3 returns 3" "$SERVER" exec "${SA[@]}" win -- cmd /c exit 3
	printf '@echo off\r\necho from script\r\nexit /b 4\r\n' >"$TMP/s.cmd"
	run_exit 4 "run-script --shell cmd returns the script's exit code" \
		"$SERVER" run-script "${SA[@]}" win --shell cmd "$TMP/s.cmd"
	like "$TMP/out" '^from script' "... and its output"
	run_exit 4 "run-script without --shell uses the Windows agent's default shell (cmd)" \
		"$SERVER" run-script "${SA[@]}" win "$TMP/s.cmd"
	like "$TMP/out" '^from script' "... and its output"
	run_exit 255 "run-script --shell sh is refused by a Windows agent" \
		"$SERVER" run-script "${SA[@]}" win --shell sh "$TMP/s.cmd"
	like "$TMP/err" "not available on Windows agents.*--shell cmd" "... saying which shells it has"
	# a timeout ends the script's whole process tree (its job object): the
	# grandchild started with 'start /b' would write the marker after ~3 s
	MARK=$(winpath "$TMP/marker")
	printf '@echo off\r\nstart /b cmd /c "ping -n 4 127.0.0.1 >nul & echo survived> %s"\r\nping -n 30 127.0.0.1 >nul\r\n' "$MARK" >"$TMP/tree.cmd"
	run_exit 124 "run-script --timeout 1 of a script that starts a grandchild" \
		"$SERVER" run-script "${SA[@]}" win --shell cmd --timeout 1 "$TMP/tree.cmd"
	sleep 6
	[ ! -e "$TMP/marker" ]
	ok $? "... and the grandchild was ended with it (no marker after 6 s)"

	head -c 1500000 /dev/urandom >"$TMP/up.bin"
	UPSHA=$(sha256sum "$TMP/up.bin" | cut -d' ' -f1)
	mkdir -p "$TMP/files/sub"
	run_ok "upload 1.5 MB to the Windows agent" "$SERVER" upload "${SA[@]}" win "$TMP/up.bin" sub/up.bin
	like "$TMP/out" "^sha256 $UPSHA$" "... upload prints the SHA-256"
	is "$(sha256sum "$TMP/files/sub/up.bin" 2>/dev/null | cut -d' ' -f1)" "$UPSHA" "... sha256sum of the file the agent wrote matches"
	run_ok "download it back" "$SERVER" download "${SA[@]}" win 'sub\up.bin' "$TMP/back.bin"
	is "$(sha256sum "$TMP/back.bin" | cut -d' ' -f1)" "$UPSHA" "... sha256sum of the downloaded copy matches"
	run_ok "upload to an absolute path (drive letter) inside the root" \
		"$SERVER" upload "${SA[@]}" win "$TMP/s.cmd" "$(winpath "$TMP/files/abs.cmd")"
	cmp -s "$TMP/s.cmd" "$TMP/files/abs.cmd"
	ok $? "... written there"
	run_exit 1 "upload to ..\\ is refused" "$SERVER" upload "${SA[@]}" win "$TMP/s.cmd" '..\outside\x'
	run_exit 1 "upload to an absolute path outside the root is refused" \
		"$SERVER" upload "${SA[@]}" win "$TMP/s.cmd" "$(winpath "$TMP/outside/x")"
	like "$TMP/err" "outside the file roots" "... saying it is outside the file roots"
	run_exit 1 "upload to an alternate data stream name is refused" "$SERVER" upload "${SA[@]}" win "$TMP/s.cmd" 'a.txt:evil'
	[ -z "$(ls -A "$TMP/outside")" ] && ! ls -A "$TMP/files" | grep -q '^\.tether-upload-'
	ok $? "... nothing written outside the root, no temporary file left"

	# an untrusted server thumbprint is refused
	run_ok "agent.exe configure --remove-trust (while the agent runs)" WAGENT configure --home "$WH" --remove-trust "$ST"
	wlong grep -q "presented certificate $ST, which is not trusted here" "$TMP/wagent.log"
	ok $? "the agent drops the server and refuses it when it reconnects (agent log)"
	like "$TMP/wagent.log" "trust in $ST was removed" "... closing the live connection at once"
	run_exit 1 "health of the target now fails" "$SERVER" health "${SA[@]}" win
	kill "$WPID" 2>/dev/null
	wait "$WPID" 2>/dev/null
else
	echo "# SKIP the Windows polling agent: $SERVER not built"
fi

# --- tether-ping.exe connect against a Linux tether-ping listen
if [ -x "$PING" ]; then
	PP=$(free_port)
	bg "$PING" listen --port "$PP" --address 127.0.0.1 >"$TMP/plisten.out" 2>&1
	wait_for grep -q '^thumbprint: ' "$TMP/plisten.out"
	LT=$(sed -n 's/^thumbprint: //p' "$TMP/plisten.out")
	run_ok "tether-ping.exe connect --count 3 --size 1000 --expect-thumbprint (Schannel, under Wine)" \
		timeout 60 wine "$WBUILD/tether-ping.exe" connect "127.0.0.1:$PP" --count 3 --size 1000 --expect-thumbprint "$LT"
	is "$(grep -c '^round [0-9]*: 1000 bytes sent, 1000 bytes echoed' "$TMP/out")" 3 "three rounds of 1000 bytes each way"
	like "$TMP/out" '^TLS: TLSv1\.2, cipher ECDHE-' "TLS 1.2 with an ECDHE cipher"
	like "$TMP/out" "^peer certificate: $LT" "the peer thumbprint is the listener's"
	like "$TMP/out" '^peer: agent, protocol 1\.0' "HELLO answered"
	run_exit 1 "tether-ping.exe with a wrong --expect-thumbprint fails" \
		timeout 60 wine "$WBUILD/tether-ping.exe" connect "127.0.0.1:$PP" --count 1 --expect-thumbprint "$WRONG"
else
	echo "# SKIP tether-ping.exe: $PING not built"
fi
timeout 30 wineserver -k 2>/dev/null

echo "# not run under Wine (docs/windows.md): a listening agent (server role, AcceptSecurityContext),"
echo "# PFX export, TLS 1.3 and CNG keys need real Windows; so does the service under the SCM;"
echo "# tether-ping.exe has no probe handshakes (they use libssl); doctor is not ported."
done_testing
