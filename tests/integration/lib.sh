# TAP helpers for integration tests.  Source it; call plan N or done_testing.
# Every test makes its own $TMP (removed at exit) and uses --home there.
set -u
TOP_BUILDDIR=${TOP_BUILDDIR:-$(cd "$(dirname "$0")/../../build" 2>/dev/null && pwd)}
TOP_SRCDIR=${TOP_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
AGENT="$TOP_BUILDDIR/tether-agent"
SERVER="$TOP_BUILDDIR/tether-server"
PING="$TOP_BUILDDIR/tether-ping"
export TETHER_PROVIDER_PATH="$TOP_BUILDDIR/providers/openssl/.libs"
TMP=$(mktemp -d /tmp/tether-it-XXXXXX)
_n=0
_failed=0
_pids=""
cleanup() {
	for p in $_pids; do kill "$p" 2>/dev/null; done
	for p in $_pids; do wait "$p" 2>/dev/null; done
	# a daemon that died under a sanitizer left its report in its log, which
	# goes with $TMP: show the first one (CI prints this test's log on failure)
	local f
	f=$(grep -l -E '^(==[0-9]+==ERROR: |SUMMARY: (Address|Undefined|Leak)Sanitizer|.*runtime error: )' -r "$TMP" 2>/dev/null | head -1)
	if [ -n "$f" ]; then
		echo "# sanitizer report in ${f#$TMP/}:"
		grep -E -A40 '^(==[0-9]+==ERROR: |.*runtime error: )' "$f" | head -60 | sed 's/^/#   /'
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT

ok() { # ok COND-EXIT-STATUS DESCRIPTION
	_n=$((_n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $_n - $2"; else echo "not ok $_n - $2"
		# a known bug marked "# TODO reason" is reported (XFAIL), not a failure
		case "$2" in *"# TODO"*) ;; *) _failed=$((_failed + 1)) ;; esac
	fi
}
pass() { ok 0 "$1"; }
fail() { ok 1 "$1"; }
# run_ok DESC CMD...: the command exits 0
run_ok() { local d=$1; shift; "$@" >"$TMP/out" 2>"$TMP/err"; local r=$?; ok $r "$d"; [ $r -eq 0 ] || { sed 's/^/# out: /' "$TMP/out"; sed 's/^/# err: /' "$TMP/err"; }; return $r; }
# run_exit CODE DESC CMD...: the command exits with CODE
run_exit() { local want=$1 d=$2; shift 2; "$@" >"$TMP/out" 2>"$TMP/err"; local r=$?; [ $r -eq "$want" ]; ok $? "$d (exit $r, want $want)"; [ $r -eq "$want" ] || { sed 's/^/# out: /' "$TMP/out"; sed 's/^/# err: /' "$TMP/err"; }; }
# is GOT WANT DESC
is() { [ "$1" = "$2" ]; ok $? "$3"; [ "$1" = "$2" ] || { echo "#   got:  '$1'"; echo "#   want: '$2'"; }; }
# like FILE REGEX DESC
like() { grep -qE -- "$2" "$1"; ok $? "$3"; grep -qE -- "$2" "$1" || { echo "# no match for /$2/ in:"; sed 's/^/#   /' "$1" | head -20; }; }
unlike() { ! grep -qE -- "$2" "$1"; ok $? "$3"; }
done_testing() { echo "1..$_n"; [ $_failed -eq 0 ]; exit $?; }
skip_all() { echo "1..0 # SKIP $1"; exit 0; }
# A digest of every file under a directory, and where each symbolic link
# points (identity slots are links), to check that failures change nothing.
snapshot() { (cd "$1" && find . -type f ! -name '*.lock' -print0 | sort -z | xargs -0 sha256sum; find . -type l -printf '%p -> %l\n' | sort) 2>/dev/null; }
# A free TCP port on 127.0.0.1 outside the ephemeral range.
free_port() {
	local p i
	for i in $(seq 1 50); do
		p=$(( (RANDOM % 20000) + 12000 ))
		if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo $p; return 0; fi
	done
	return 1
}
# wait_for CMD... : retry for up to 10 s
wait_for() { local i; for i in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
bg() { "$@" & _pids="$_pids $!"; LAST_PID=$!; }
# True in a build configured with --enable-sanitizers (ASan + UBSan): memory
# figures are then inflated by ASan's shadow and quarantine, and modules
# dlopen'ed with RTLD_DEEPBIND refuse to load.
sanitized() { grep -q '^SAN_CFLAGS = -fsanitize' "$TOP_BUILDDIR/Makefile" 2>/dev/null; }
