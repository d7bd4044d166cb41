#!/bin/bash
# No secret in any log: a full run with a key passphrase, PFX passwords,
# proxy-style credentials and a registration token, every daemon at the most
# verbose debug level; then every log, audit log and config under the test's
# directory is searched for the secrets and for private key material.
. "$(dirname "$0")/lib.sh"
H="$TMP/home"
A=(--home "$H")
APORT=$(free_port)
SPORT=$(free_port)
PASS_PFX='pfx-Secret-7f3a9c'
PASS_KEY='key-Secret-51be20'

printf '%s\n' "$PASS_PFX" > "$TMP/pw"
printf '%s\n' "$PASS_KEY" > "$TMP/keypass"
chmod 600 "$TMP/pw" "$TMP/keypass"
"$AGENT" create-instance "${A[@]}" >/dev/null
printf '[openssl]\nkey-passphrase-file = %s\n' "$TMP/keypass" >> "$H/agent-default/agent.ini"
run_ok "agent certificate with an encrypted key" "$AGENT" new-certificate "${A[@]}"
like "$H/agent-default/state/identity/current/key.pem" "ENCRYPTED PRIVATE KEY" "the key file is encrypted with the passphrase"
"$SERVER" create-instance "${A[@]}" >/dev/null
printf '[polling]\naddress = 127.0.0.1:%s\n[registration]\nenabled = on\n' $SPORT >> "$H/server-default/server.ini"
"$SERVER" new-certificate "${A[@]}" >/dev/null
run_ok "export a PFX with a password" "$SERVER" export-certificate "${A[@]}" --export-pfx "$TMP/s.pfx" --pfx-password-file "$TMP/pw"
run_exit 1 "import with a wrong password (the error must not echo it)" "$AGENT" import-certificate "${A[@]}" --from-file "$TMP/s.pfx" --pfx-password-file "$TMP/keypass"
cp "$TMP/err" "$TMP/cli-err.log"
AT=$("$AGENT" show-thumbprint "${A[@]}" | head -1)
ST=$("$SERVER" show-thumbprint "${A[@]}" | head -1)
"$AGENT" configure "${A[@]}" --trust "$ST" --listen 127.0.0.1:$APORT >/dev/null
bg env TETHER_DEBUG=all "$AGENT" run "${A[@]}" 2>"$TMP/agent.log"
bg env TETHER_DEBUG=all "$SERVER" run "${A[@]}" 2>"$TMP/server.log"
wait_for test -S "$H/server-default/run/admin.sock"
wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
"$SERVER" target add "${A[@]}" a1 --listening 127.0.0.1:$APORT --thumbprint "$AT" >/dev/null
run_ok "health with the passphrase-protected key" "$SERVER" health "${A[@]}" a1
run_ok "exec" "$SERVER" exec "${A[@]}" a1 -- echo hello
run_ok "a token is created" "$SERVER" token create "${A[@]}" --expires 1h
TOKEN=$(grep -o 'tether1\.[0-9a-f.]*' "$TMP/out" | head -1)
SECRET=$(echo "$TOKEN" | cut -d. -f3)
[ ${#SECRET} -ge 32 ]; ok $? "the token has a secret part"
# a second agent registers with the token (its logs too are searched)
H2="$TMP/home2"
"$AGENT" create-instance --home "$H2" >/dev/null
"$AGENT" new-certificate --home "$H2" >/dev/null
printf '%s\n' "$TOKEN" > "$TMP/token"
TETHER_DEBUG=all "$AGENT" register-with --home "$H2" --server 127.0.0.1:$SPORT --name reg1 --token-file "$TMP/token" >"$TMP/register.out" 2>"$TMP/register.log"
ok $? "register-with a token"
"$SERVER" token list "${A[@]}" --json > "$TMP/tokens.json" 2>&1
kill $LAST_PID 2>/dev/null
for p in $_pids; do kill "$p" 2>/dev/null; done
for p in $_pids; do wait "$p" 2>/dev/null; done
_pids=""

# every log and state file that is not a key, a password file or the PFX
key_b64=$(sed -n '2p' "$H/agent-default/state/identity/current/key.pem")
files=$(find "$TMP" -type f \( -name '*.log' -o -name '*.json' -o -name '*.ini' -o -name '*.out' -o -name 'audit.log' \) )
n=$(echo "$files" | wc -l)
[ "$n" -ge 6 ]; ok $? "searching $n logs, audit logs, configs and outputs"
hits() { grep -lF -- "$1" $files 2>/dev/null | grep -v -e "$TMP/pw" -e "$TMP/keypass" -e "$TMP/token" || true; }
is "$(hits "$PASS_PFX")" "" "the PFX password is in no log"
is "$(hits "$PASS_KEY")" "" "the key passphrase is in no log"
is "$(hits "$SECRET")" "" "the token's secret is in no log (only its id and hash are kept)"
is "$(hits "$key_b64")" "" "no private key material in any log"
is "$(grep -l 'PRIVATE KEY' $files 2>/dev/null)" "" "no PEM private key block in any log"
like "$TMP/agent.log" "debug\(" "the agent really logged at debug level"
like "$TMP/server.log" "debug\(" "the server really logged at debug level"
done_testing
