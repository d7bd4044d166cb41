#!/bin/bash
# service: the systemd unit of an instance (written into $TMP, never into
# /etc), systemctl driven through a stand-in, and life without systemd.
. "$(dirname "$0")/lib.sh"
H="$TMP/home"
export TETHER_SYSTEMD_DIR="$TMP/units"
AU="$TETHER_SYSTEMD_DIR/tether-agent-default.service"
SU="$TETHER_SYSTEMD_DIR/tether-server-web.service"
# No systemd, whatever the host runs: a systemctl that does not exist.
NOSC="$TMP/no/systemctl"

"$AGENT" create-instance --home "$H" >/dev/null
"$SERVER" create-instance --home "$H" --instance web >/dev/null

run_exit 2 "service without an action is a usage error" "$AGENT" service --home "$H"
like "$TMP/err" "give one of --install" "and lists the actions"
run_exit 2 "two actions are a usage error" "$AGENT" service --home "$H" --start --stop
run_exit 2 "a positional argument is a usage error" "$AGENT" service --home "$H" --install extra
run_exit 2 "an unknown option is a usage error" "$SERVER" service --home "$H" --enable
run_ok "service --help" "$AGENT" service --help
like "$TMP/out" "--uninstall" "help lists the actions"

run_exit 1 "--install of a missing instance fails" env TETHER_SYSTEMCTL="$NOSC" \
	"$AGENT" service --install --home "$H" --instance nope
like "$TMP/err" "create-instance --instance nope" "and says how to create it"
[ ! -e "$TETHER_SYSTEMD_DIR/tether-agent-nope.service" ]; ok $? "and writes no unit"

run_ok "agent --install without systemd" env TETHER_SYSTEMCTL="$NOSC" \
	"$AGENT" service --install --home "$H"
like "$TMP/out" "^Wrote $AU" "names the unit file"
like "$TMP/out" "systemctl was not run" "says systemctl was not run"
like "$TMP/out" "systemctl enable --now tether-agent-default.service" "and what to run"
[ -f "$AU" ]; ok $? "the unit file exists"
is "$(stat -c %a "$AU")" "644" "the unit file is mode 0644"
exec_line=$(grep '^ExecStart=' "$AU")
# The wrapper script in the build tree, or the binary itself.
is "$exec_line" "ExecStart=$(cd "$TOP_BUILDDIR" && pwd -P)/tether-agent run --instance default --home $(cd "$H" && pwd -P)" \
	"ExecStart names the binary, run, the instance and --home"
like "$AU" "^Restart=on-failure$" "restarts on failure"
like "$AU" "^TimeoutStopSec=30$" "stop timeout"
like "$AU" "^LimitNOFILE=65536$" "file limit"
unlike "$AU" "^ProtectSystem=" "the agent is not sandboxed (it runs admin scripts)"

run_ok "--install again is idempotent" env TETHER_SYSTEMCTL="$NOSC" \
	"$AGENT" service --install --home "$H"
mkdir -p "$TMP/h2" && cp -r "$H/agent-default" "$TMP/h2/"
snap=$(snapshot "$TETHER_SYSTEMD_DIR")
run_exit 1 "--install over another instance's unit is refused" env TETHER_SYSTEMCTL="$NOSC" \
	"$AGENT" service --install --home "$TMP/h2"
like "$TMP/err" "already exists and runs something else" "and says why"
is "$(snapshot "$TETHER_SYSTEMD_DIR")" "$snap" "and changes nothing"

run_ok "server --install (relative --home)" env TETHER_SYSTEMCTL="$NOSC" \
	sh -c 'cd "$1" && "$2" service --install --home home --instance web' sh "$TMP" "$SERVER"
like "$SU" "^ExecStart=/.*/tether-server run --instance web --home /" "server ExecStart, --home made absolute"
is "$(grep '^ExecStart=' "$SU" | cut -d' ' -f1)" "ExecStart=$(cd "$TOP_BUILDDIR" && pwd -P)/tether-server" \
	"server ExecStart names tether-server (the front), not the whole program it execs"
like "$SU" "^ProtectSystem=strict$" "the server is sandboxed"
like "$SU" "^NoNewPrivileges=yes$" "no new privileges"
like "$SU" "^ReadWritePaths=/.*/server-web$" "its instance directory stays writable"

run_exit 1 "--start without systemd fails" env TETHER_SYSTEMCTL="$NOSC" \
	"$AGENT" service --start --home "$H"
like "$TMP/err" "cannot start tether-agent-default.service: .*systemctl.*not found" "naming systemd/systemctl as absent"
run_exit 1 "--status without systemd fails" env TETHER_SYSTEMCTL="$NOSC" \
	"$AGENT" service --status --home "$H"
if [ ! -d /run/systemd/system ]; then
	run_exit 1 "--stop on a host without systemd fails" "$AGENT" service --stop --home "$H"
	like "$TMP/err" "systemd is not running on this machine" "says systemd is not running"
fi

# A stand-in systemctl records what it was asked.
FAKE="$TMP/systemctl"
printf '#!/bin/sh\necho "$*" >> "%s/sc.log"\n[ "$1" = status ] && exit "${FAKE_STATUS:-0}"\nexit 0\n' "$TMP" > "$FAKE"
chmod +x "$FAKE"
run_ok "--install with systemctl" env TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --install --home "$H"
like "$TMP/out" "Enabled tether-agent-default.service" "says it enabled the unit"
run_ok "--start" env TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --start --home "$H"
run_ok "--restart" env TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --restart --home "$H"
run_ok "--status of a running service" env TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --status --home "$H"
run_exit 1 "--status of a stopped service" env FAKE_STATUS=3 TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --status --home "$H"
like "$TMP/err" "is not running" "says it is not running"
run_ok "--stop" env TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --stop --home "$H"
run_ok "--uninstall with systemctl" env TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --uninstall --home "$H"
is "$(tr '\n' '|' < "$TMP/sc.log")" \
	"daemon-reload|enable tether-agent-default.service|start tether-agent-default.service|restart tether-agent-default.service|status --no-pager --full tether-agent-default.service|status --no-pager --full tether-agent-default.service|stop tether-agent-default.service|disable --now tether-agent-default.service|daemon-reload|" \
	"systemctl was run with these arguments, in order"
[ ! -e "$AU" ]; ok $? "--uninstall removed the unit"

run_ok "server --uninstall without systemd" env TETHER_SYSTEMCTL="$NOSC" "$SERVER" service --uninstall --home "$H" --instance web
[ ! -e "$SU" ]; ok $? "the server unit is gone"
run_exit 1 "--uninstall of a missing unit fails" env TETHER_SYSTEMCTL="$NOSC" "$SERVER" service --uninstall --home "$H" --instance web
like "$TMP/err" "nothing to uninstall" "and says so"
run_exit 1 "--start of a unit not installed" env TETHER_SYSTEMCTL="$FAKE" "$AGENT" service --start --home "$H"
like "$TMP/err" "service --install" "says to install it first"
done_testing
