# Helpers for the pkcs11 provider's integration tests (source after lib.sh):
# skip when SoftHSM2 / pkcs11-provider / tether-pkcs11.so are missing, then
# make a private SoftHSM2 token ($LABEL, user PIN in $TMP/pin) and the
# configure options for it in P11 (module registered with p11-kit by name).
SOFTHSM_LIB=$(dpkg -L libsofthsm2 2>/dev/null | grep '/libsofthsm2\.so$' | head -1)
[ -n "$SOFTHSM_LIB" ] || SOFTHSM_LIB=$(find /usr/lib -name libsofthsm2.so 2>/dev/null | head -1)
command -v softhsm2-util >/dev/null && [ -n "$SOFTHSM_LIB" ] ||
	skip_all "softhsm2 is not installed (Debian package softhsm2)"
if type sanitized >/dev/null 2>&1 && sanitized; then
	skip_all "AddressSanitizer build: pkcs11-provider dlopens p11-kit-proxy with RTLD_DEEPBIND, which ASan refuses (google/sanitizers#611); this test runs in the plain build"
fi
OSSL_MODDIR=$(openssl version -m 2>/dev/null | sed -n 's/^MODULESDIR: "\(.*\)"/\1/p')
[ -r "$OSSL_MODDIR/pkcs11.so" ] ||
	skip_all "pkcs11-provider is not installed (Debian 12: pkcs11-provider from bookworm-backports)"
[ -e "$TOP_BUILDDIR/providers/pkcs11/.libs/tether-pkcs11.so" ] ||
	skip_all "tether-pkcs11.so was not built (configure found no p11-kit: install libp11-kit-dev)"
export TETHER_PROVIDER_PATH="$TOP_BUILDDIR/providers/openssl/.libs:$TOP_BUILDDIR/providers/pkcs11/.libs"

mkdir -p "$TMP/tokens"
export SOFTHSM2_CONF="$TMP/softhsm2.conf"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$TMP/tokens" > "$SOFTHSM2_CONF"
LABEL="tether-test-$$"
softhsm2-util --init-token --free --label "$LABEL" --pin 4321 --so-pin 87654321 >/dev/null
ok $? "SoftHSM2 token initialised"
printf '4321\n' > "$TMP/pin"; chmod 600 "$TMP/pin"
P11=(--provider pkcs11 --pkcs11-module softhsm2 --pkcs11-token "pkcs11:token=$LABEL" --pkcs11-pin-file "$TMP/pin")
# health's JSON answer: p11_json FILE PYTHON-EXPR-ON-d
p11_json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
