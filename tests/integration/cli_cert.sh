#!/bin/bash
# Certificates: generate, show, export, import, staged rotation on the
# server; checked against OpenSSL itself; bad input changes nothing.
. "$(dirname "$0")/lib.sh"
H="$TMP/home"
A=(--home "$H")
printf 'correct horse\n' > "$TMP/pw"
printf 'wrong\n' > "$TMP/badpw"

run_ok "create agent" "$AGENT" create-instance "${A[@]}"
run_exit 1 "show-thumbprint before any certificate" "$AGENT" show-thumbprint "${A[@]}"
like "$TMP/err" "run 'tether-agent new-certificate --home $H'" "says to run new-certificate, with this --home"
run_ok "new-certificate (default rsa2048)" "$AGENT" new-certificate "${A[@]}"
like "$TMP/out" "New thumbprint: [0-9a-f]{64}" "prints the new thumbprint"
run_ok "show-thumbprint --json" "$AGENT" show-thumbprint "${A[@]}" --json
cp "$TMP/out" "$TMP/show.json"
j() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$TMP/show.json" "$1"; }
is "$(j 'd["cert_signature_algorithm"]')" "sha256WithRSAEncryption" "signature algorithm is sha256WithRSAEncryption"
is "$(j 'd["key_bits"]')" "2048" "key is 2048 bits by default"
is "$(j 'd["key_type"]')" "rsa" "key type rsa"
like "$TMP/show.json" '"not_after": "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z"' "not_after is ISO 8601 UTC"
SHA=$(j 'd["sha256"]')

# key files are 0600, nothing in state is world-readable
bad=$(find "$H/agent-default/state" -type f -perm /077 -name '*key*' | wc -l)
is "$bad" "0" "key files are mode 0600"

run_ok "export PEM" "$AGENT" export-certificate "${A[@]}" --export-pem "$TMP/cert.pem"
fp=$(openssl x509 -in "$TMP/cert.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
is "$fp" "$SHA" "thumbprint equals openssl x509 -fingerprint -sha256"
subj=$(openssl x509 -in "$TMP/cert.pem" -noout -subject)
is "$subj" "subject=CN = tether" "generic subject, no host name"
openssl x509 -in "$TMP/cert.pem" -noout -text > "$TMP/text"
like "$TMP/text" "Version: 3" "X.509 v3"
like "$TMP/text" "TLS Web Server Authentication, TLS Web Client Authentication" "EKU server+client auth"

run_ok "export PFX" "$AGENT" export-certificate "${A[@]}" --export-pfx "$TMP/id.pfx" --pfx-password-file "$TMP/pw"
is "$(stat -c %a "$TMP/id.pfx")" "600" "PFX written 0600"
openssl pkcs12 -in "$TMP/id.pfx" -passin pass:'correct horse' -nokeys -clcerts 2>/dev/null | openssl x509 -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f > "$TMP/pfxfp"
is "$(cat "$TMP/pfxfp")" "$SHA" "openssl pkcs12 reads the PFX: same certificate"
openssl pkcs12 -in "$TMP/id.pfx" -passin pass:'correct horse' -nocerts -nodes 2>/dev/null | openssl pkey -pubout 2>/dev/null | sha256sum > "$TMP/k1"
openssl x509 -in "$TMP/cert.pem" -noout -pubkey | sha256sum > "$TMP/k2"
is "$(cat "$TMP/k1")" "$(cat "$TMP/k2")" "PFX key matches the certificate"
openssl pkcs12 -in "$TMP/id.pfx" -passin pass:'correct horse' -info -noout > "$TMP/info" 2>&1
like "$TMP/info" "AES-256-CBC" "PFX encrypted with AES-256-CBC"
like "$TMP/info" "PBKDF2|pbkdf2" "PFX key derivation PBKDF2"
run_exit 1 "export onto an existing file refused" "$AGENT" export-certificate "${A[@]}" --export-pem "$TMP/cert.pem"
run_ok "legacy PFX export" "$AGENT" export-certificate "${A[@]}" --export-pfx "$TMP/legacy.pfx" --pfx-password-file "$TMP/pw" --legacy-pfx
openssl pkcs12 -in "$TMP/legacy.pfx" -passin pass:'correct horse' -info -noout -legacy > "$TMP/info" 2>&1
like "$TMP/info" "3DES|des-ede3|pbeWithSHA1And3-KeyTripleDES" "legacy PFX uses 3DES"

# --- bad input changes nothing ---
S0=$(snapshot "$H")
run_exit 1 "import with the wrong password" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/id.pfx" --pfx-password-file "$TMP/badpw"
like "$TMP/err" "password" "says the password is wrong"
is "$(snapshot "$H")" "$S0" "wrong password: state byte-identical"
head -c 700 "$TMP/id.pfx" > "$TMP/trunc.pfx"
run_exit 1 "import a truncated PFX" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/trunc.pfx" --pfx-password-file "$TMP/pw"
is "$(snapshot "$H")" "$S0" "truncated PFX: state byte-identical"
head -c 300 "$TMP/cert.pem" > "$TMP/trunc.pem"
run_exit 1 "import a truncated PEM" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/trunc.pem"
is "$(snapshot "$H")" "$S0" "truncated PEM: state byte-identical"
run_exit 1 "import a PEM certificate without its key" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/cert.pem"
is "$(snapshot "$H")" "$S0" "cert without key: state byte-identical"
run_exit 1 "import a missing file" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/nope.pfx" --pfx-password-file "$TMP/pw"
like "$TMP/err" "nope.pfx" "names the missing file"
run_exit 2 "unknown key type" "$AGENT" new-certificate "${A[@]}" --key-type dsa1024
like "$TMP/err" "unknown key type 'dsa1024'" "names the bad key type"
is "$(snapshot "$H")" "$S0" "unknown key type: state byte-identical"
run_exit 1 "provider that cannot be loaded" "$AGENT" new-certificate "${A[@]}" --provider nosuch
like "$TMP/err" "provider 'nosuch' not found" "says the provider is not found and where it looked"
is "$(snapshot "$H")" "$S0" "bad provider: state byte-identical"
is "$(snapshot "$H")" "$S0" "state still byte-identical after all failures"

# --- an unwritable state directory: root ignores permissions, so as root
# (as in CI) the commands run as nobody on an instance root owns, its state
# directory 0755; otherwise the directory is made 0500 ---
RH="$TMP/rohome"
RA=(--home "$RH")
run_ok "create an agent for the unwritable case" "$AGENT" create-instance "${RA[@]}"
run_ok "give it a certificate" "$AGENT" new-certificate "${RA[@]}"
if [ "$(id -u)" = 0 ]; then
	command -v setpriv >/dev/null || { echo "setpriv (util-linux) is missing" >&2; exit 1; }
	as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
	chmod 711 "$TMP"
	chmod 755 "$RH" "$RH/agent-default" "$RH/agent-default/state"
	chmod 644 "$RH/agent-default/agent.ini"
	why="not writable by this user \(uid 65534\): Permission denied: run as the instance's owner \(root\), or fix the directory's permissions"
else
	as_user() { "$@"; }
	chmod 500 "$RH/agent-default/state"
	why="not writable: Permission denied: fix its permissions .* or run as that owner"
fi
R0=$(snapshot "$RH")
run_exit 1 "unwritable state directory: new-certificate" as_user "$AGENT" new-certificate "${RA[@]}"
like "$TMP/err" "state directory $RH/agent-default/state is $why" "says what failed, why, and what to do"
run_exit 1 "unwritable state directory: configure --trust" as_user "$AGENT" configure "${RA[@]}" --trust "$(printf 'ab%.0s' $(seq 32))"
like "$TMP/err" "state directory $RH/agent-default/state is $why" "configure says what failed, why, and what to do"
is "$(snapshot "$RH")" "$R0" "unwritable state directory: state byte-identical"
chmod 700 "$TMP" "$RH/agent-default/state"

# --- a failed new-certificate --export-pfx changes nothing (checked, and the
# password read, before the certificate is replaced) ---
touch "$TMP/taken.pfx"
export_failures() { # PROGRAM LABEL ARGS...: each way an export can fail up front
	local prog=$1 label=$2 s0; shift 2
	s0=$(snapshot "$H")
	run_exit 1 "$label: new-certificate --export-pfx onto an existing file" "$prog" new-certificate "$@" --export-pfx "$TMP/taken.pfx" --pfx-password-file "$TMP/pw"
	like "$TMP/err" "taken.pfx already exists: choose another file name or remove it first \(nothing was changed\)" "$label: says the file exists and what to do"
	is "$(snapshot "$H")" "$s0" "$label: existing destination: state byte-identical"
	run_exit 1 "$label: new-certificate --export-pfx into a missing folder" "$prog" new-certificate "$@" --export-pfx "$TMP/nodir/new.pfx" --pfx-password-file "$TMP/pw"
	like "$TMP/err" "cannot write .*/nodir/new.pfx: the folder .*/nodir does not exist: create it or choose another path \(nothing was changed\)" "$label: says the folder is missing and what to do"
	is "$(snapshot "$H")" "$s0" "$label: missing folder: state byte-identical"
	run_exit 1 "$label: new-certificate with a missing password file" "$prog" new-certificate "$@" --export-pfx "$TMP/new.pfx" --pfx-password-file "$TMP/nonexist"
	like "$TMP/err" "nothing was changed: cannot read the password file: cannot open .*/nonexist: No such file" "$label: says the password file cannot be read, and why"
	is "$(snapshot "$H")" "$s0" "$label: missing password file: state byte-identical"
	# no password at all (no file, no environment, no terminal to prompt on)
	env -u TETHER_PFX_PASSWORD setsid -w "$prog" new-certificate "$@" --export-pfx "$TMP/new.pfx" </dev/null >"$TMP/out" 2>"$TMP/err"
	is "$?" 2 "$label: new-certificate --export-pfx without any password is a usage error (exit 2)"
	like "$TMP/err" "nothing was changed: a password is needed: give --pfx-password-file FILE" "$label: no password: says what is missing and that nothing was changed"
	is "$(snapshot "$H")" "$s0" "$label: no password: state byte-identical"
	[ ! -e "$TMP/new.pfx" ] && [ ! -e "$TMP/nodir" ] && ! ls "$TMP" | grep -q '\.tmp\.'
	ok $? "$label: no PFX, folder or probe file left behind"
}
export_failures "$AGENT" agent "${A[@]}"

# --- key types ---
for kt in rsa3072 ec-p256 ec-p384; do
	run_ok "new-certificate --key-type $kt" "$AGENT" new-certificate "${A[@]}" --key-type $kt
	"$AGENT" show-thumbprint "${A[@]}" --json > "$TMP/show.json"
	case $kt in
		rsa3072) is "$(j 'd["key_bits"]')" 3072 "rsa3072 has 3072 bits" ;;
		ec-p256) is "$(j 'd["key_type"]+str(d["key_bits"])')" ec256 "ec-p256 is EC 256" ;;
		ec-p384) is "$(j 'd["key_type"]+str(d["key_bits"])')" ec384 "ec-p384 is EC 384" ;;
	esac
done
run_ok "--if-blank leaves an existing certificate" "$AGENT" new-certificate "${A[@]}" --if-blank
like "$TMP/out" "nothing changed" "says nothing changed"

# --- import: back to the exported identity, old -> new printed ---
run_ok "import the exported PFX" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/id.pfx" --pfx-password-file "$TMP/pw"
like "$TMP/out" "New thumbprint: $SHA" "prints the new (imported) thumbprint"
like "$TMP/out" "Old thumbprint: [0-9a-f]{64}" "prints the old thumbprint"
"$AGENT" show-thumbprint "${A[@]}" --json > "$TMP/show.json"
is "$(j 'd["sha256"]')" "$SHA" "the imported identity is current"
TETHER_PFX_PASSWORD='correct horse' "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/id.pfx" > "$TMP/out" 2>&1
like "$TMP/out" "already the current certificate" "password from the environment; re-import is a no-op"

# legacy RC2 PFX as older Windows writes it
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/k.pem" -out "$TMP/c.pem" -subj /CN=legacy -days 30 2>/dev/null
openssl pkcs12 -export -legacy -inkey "$TMP/k.pem" -in "$TMP/c.pem" -out "$TMP/rc2.pfx" -passout pass:'correct horse' 2>/dev/null
openssl pkcs12 -in "$TMP/rc2.pfx" -info -noout -passin pass:'correct horse' -legacy > "$TMP/info" 2>&1
like "$TMP/info" "RC2" "test PFX is really RC2-encrypted"
run_ok "import an RC2/3DES legacy PFX" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/rc2.pfx" --pfx-password-file "$TMP/pw"
lfp=$(openssl x509 -in "$TMP/c.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
like "$TMP/out" "New thumbprint: $lfp" "legacy PFX identity imported"
# PEM cert+key import
cat "$TMP/c.pem" "$TMP/k.pem" > "$TMP/both.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/k2.pem" -out "$TMP/c2.pem" -subj /CN=pem -days 30 2>/dev/null
cat "$TMP/k2.pem" "$TMP/c2.pem" > "$TMP/both2.pem"
run_ok "import PEM (key first, then cert)" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/both2.pem"
pfp=$(openssl x509 -in "$TMP/c2.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
like "$TMP/out" "New thumbprint: $pfp" "PEM identity imported"
# mismatched key and cert
cat "$TMP/c.pem" "$TMP/k2.pem" > "$TMP/mismatch.pem"
S1=$(snapshot "$H")
run_exit 1 "import PEM whose key does not match" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/mismatch.pem"
is "$(snapshot "$H")" "$S1" "mismatched key: state byte-identical"

# --- server: new-certificate stages, use-staged-certificate promotes ---
S=(--home "$H")
run_ok "create server" "$SERVER" create-instance "${S[@]}"
run_ok "server first certificate" "$SERVER" new-certificate "${S[@]}"
"$SERVER" show-thumbprint "${S[@]}" --json > "$TMP/show.json"
OLD=$(j 'd["sha256"]')
run_ok "server new-certificate stages" "$SERVER" new-certificate "${S[@]}" --export-pfx "$TMP/srv-new.pfx" --pfx-password-file "$TMP/pw"
like "$TMP/out" "Current certificate \(in use\): $OLD" "prints the current thumbprint"
NEW=$(sed -n 's/^New certificate (staged): *//p' "$TMP/out")
like "$TMP/out" "New certificate \(staged\): +[0-9a-f]{64}" "prints the staged thumbprint"
"$SERVER" show-thumbprint "${S[@]}" --json > "$TMP/show.json"
is "$(j 'd["sha256"]')" "$OLD" "current certificate unchanged after new-certificate"
is "$(j 'd["staged"]["sha256"]')" "$NEW" "staged slot holds the new certificate"
run_ok "import the staged PFX (Octopus procedure)" "$SERVER" import-certificate "${S[@]}" --from-file "$TMP/srv-new.pfx" --pfx-password-file "$TMP/pw"
like "$TMP/out" "Old thumbprint: $OLD" "old thumbprint printed"
like "$TMP/out" "New thumbprint: $NEW" "new thumbprint printed"
"$SERVER" show-thumbprint "${S[@]}" --json > "$TMP/show.json"
is "$(j 'd["previous"]["sha256"]')" "$OLD" "old certificate kept in the previous slot"
run_ok "stage another" "$SERVER" new-certificate "${S[@]}"
NEW2=$(sed -n 's/^New certificate (staged): *//p' "$TMP/out")
run_ok "use-staged-certificate" "$SERVER" use-staged-certificate "${S[@]}"
like "$TMP/out" "New thumbprint: $NEW2" "staged certificate is now current"
run_exit 1 "use-staged with nothing staged" "$SERVER" use-staged-certificate "${S[@]}"
like "$TMP/err" "no certificate is staged: run 'tether-server new-certificate --home $H' first" "says nothing is staged and what to run, with this --home"
run_exit 1 "use-staged-certificate on a missing instance" "$SERVER" use-staged-certificate --home "$H" --instance nosuch
like "$TMP/err" "create-instance --instance nosuch --home $H'" "a missing instance: the command it suggests names the instance and --home"
run_exit 1 "a verb that needs the daemon when it is not running" "$SERVER" task list "${S[@]}"
like "$TMP/err" "start it with 'tether-server run --home $H'" "says to start the daemon of this --home"
# --- the server: a failed export keeps the current AND the staged certificate ---
run_ok "stage a certificate agents may already trust" "$SERVER" new-certificate "${S[@]}"
STAGED=$(sed -n 's/^New certificate (staged): *//p' "$TMP/out")
"$SERVER" show-thumbprint "${S[@]}" --json > "$TMP/show.json"
CUR=$(j 'd["sha256"]')
export_failures "$SERVER" server "${S[@]}"
# A failure after the new certificate was made (the PFX write fails: file
# size limit) puts the old staged certificate back.
( trap '' XFSZ; ulimit -f 2; exec "$SERVER" new-certificate "${S[@]}" --export-pfx "$TMP/big.pfx" --pfx-password-file "$TMP/pw" ) >"$TMP/out" 2>"$TMP/err"
is "$?" 1 "server: new-certificate whose PFX cannot be written exits 1"
like "$TMP/err" "the new certificate was discarded; the certificate in use and the staged one $STAGED are kept" "server: says the new certificate was discarded and the old ones kept"
"$SERVER" show-thumbprint "${S[@]}" --json > "$TMP/show.json"
is "$(j 'd["sha256"]')" "$CUR" "server: certificate in use unchanged"
is "$(j 'd["staged"]["sha256"]')" "$STAGED" "server: the staged certificate is still there"
[ ! -e "$TMP/big.pfx" ]; ok $? "server: no PFX left behind"
run_ok "server: new-certificate --export-pfx succeeds after the failures" "$SERVER" new-certificate "${S[@]}" --export-pfx "$TMP/new.pfx" --pfx-password-file "$TMP/pw"
like "$TMP/out" "Discarded the previously staged certificate $STAGED" "server: the old staged certificate is replaced only on success"
done_testing
