#!/bin/bash
# Instances: create, list, show-configuration, delete; usage errors.
. "$(dirname "$0")/lib.sh"
H="$TMP/home"

run_ok "agent create-instance" "$AGENT" create-instance --home "$H"
like "$TMP/out" "Created agent instance 'default'" "says what it created"
run_exit 1 "create-instance twice fails" "$AGENT" create-instance --home "$H"
like "$TMP/err" "already exists" "and says it already exists"
run_ok "second named instance" "$AGENT" create-instance --home "$H" --instance web-01
run_ok "list-instances" "$AGENT" list-instances --home "$H"
is "$(tr '\n' ' ' < "$TMP/out")" "default web-01 " "lists both instances, sorted"
run_ok "list-instances --json" "$AGENT" list-instances --home "$H" --json
like "$TMP/out" '"instance": "web-01"' "JSON names the instance"
run_ok "show-configuration" "$AGENT" show-configuration --home "$H"
like "$TMP/out" "address = 0.0.0.0:10933" "shows the default listen address"
run_ok "show-configuration --json" "$AGENT" show-configuration --home "$H" --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["settings"]["listen"]["address"]=="0.0.0.0:10933"' "$TMP/out"
ok $? "JSON settings parse and hold the default"
run_exit 2 "bad instance name is a usage error" "$AGENT" create-instance --home "$H" --instance "../x"
like "$TMP/err" "not a valid instance name" "and names the rule"
run_exit 1 "verb on a missing instance" "$AGENT" show-thumbprint --home "$H" --instance nope
like "$TMP/err" "create-instance --instance nope" "says how to create it"
run_exit 2 "unknown verb" "$AGENT" frobnicate
run_exit 2 "unknown option" "$AGENT" list-instances --frob
like "$TMP/err" "unknown option '--frob'" "names the unknown option"
run_ok "verb --help" "$AGENT" new-certificate --help
like "$TMP/out" "--key-type" "help lists the options"
run_ok "version" "$AGENT" version
like "$TMP/out" "^tether-agent [0-9]+\.[0-9]+" "prints the version"
run_ok "server create-instance" "$SERVER" create-instance --home "$H"
run_ok "server show-configuration" "$SERVER" show-configuration --home "$H"
like "$TMP/out" "address = 0.0.0.0:10943" "server polling default"
run_ok "delete-instance" "$AGENT" delete-instance --home "$H" --instance web-01
run_ok "list after delete" "$AGENT" list-instances --home "$H"
is "$(tr '\n' ' ' < "$TMP/out")" "default " "only default remains"
run_exit 1 "delete missing instance" "$AGENT" delete-instance --home "$H" --instance web-01
# a hand-edited config with a typo is refused with the key named
printf '[listen]\nadress = 1.2.3.4:5\n' >> "$H/agent-default/agent.ini"
run_exit 1 "config typo refused" "$AGENT" show-configuration --home "$H"
like "$TMP/err" "unknown key 'adress'" "names the bad key"
done_testing
