#!/bin/bash
# [tls] policy = fips sets OpenSSL's security level to 2 (112 bits: RSA >=
# 2048) itself, whatever OPENSSL_CONF says: with an OPENSSL_CONF whose
# ssl_conf sets CipherString = DEFAULT@SECLEVEL=1, a peer presenting a
# pinned RSA-1024 certificate is let in without the policy (this shows
# the OPENSSL_CONF takes effect) and refused under policy = fips, the
# failure classified and hinted in the agent's log.  With the openssl
# provider, then (when SoftHSM2 and pkcs11-provider are here) with the
# agent's key on a token: both share providers/common/ossl_tls.c.
. "$(dirname "$0")/lib.sh"
cat > "$TMP/seclevel1.cnf" <<'EOF'
openssl_conf = tether_test_init
[tether_test_init]
ssl_conf = tether_test_ssl
[tether_test_ssl]
system_default = tether_test_sys
[tether_test_sys]
CipherString = DEFAULT@SECLEVEL=1
EOF
export OPENSSL_CONF="$TMP/seclevel1.cnf"
# The weak peer: a self-signed RSA-1024 certificate (SHA-256), pinned.
openssl req -x509 -newkey rsa:1024 -nodes -keyout "$TMP/weak.key" -out "$TMP/weak.pem" \
	-subj /CN=weak -days 2 -sha256 2>/dev/null
ok $? "an RSA-1024 certificate for the peer"
WT=$(openssl x509 -in "$TMP/weak.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)

# check NAME HOME-ARGS...: agent in HOME (made and configured by the caller)
check() {
	local name=$1 H=$2 APORT APID log
	APORT=$(free_port)
	"$AGENT" configure --home "$H" --trust "$WT" --listen 127.0.0.1:$APORT >/dev/null
	ok $? "$name: the agent pins the RSA-1024 certificate"
	for pol in default fips; do
		sed -i '/^\[tls\]$/,$d' "$H/agent-default/agent.ini"
		[ $pol = fips ] && printf '[tls]\npolicy = fips\n' >> "$H/agent-default/agent.ini"
		log="$TMP/$name-$pol.log"
		bg "$AGENT" run --home "$H" 2>"$log"
		APID=$LAST_PID
		wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT"
		echo | timeout 10 openssl s_client -connect 127.0.0.1:$APORT -cert "$TMP/weak.pem" -key "$TMP/weak.key" \
			-cipher 'DEFAULT@SECLEVEL=0' -tls1_3 > "$TMP/sc" 2>&1
		sleep 0.5
		if [ $pol = default ]; then
			# the handshake completes (s_client then closes without tether's
			# greeting, which the agent logs as such, naming the peer)
			like "$TMP/sc" "^New, TLSv1\.3" "$name, SECLEVEL=1 in OPENSSL_CONF, no fips policy: the pinned RSA-1024 peer gets in (the conf is in effect)"
			unlike "$log" "key too weak|security level" "$name, no fips policy: no refusal for the key's size"
		else
			like "$log" "handshake with .* failed \(handshake\): .*peer certificate: EE certificate key too weak" \
				"$name, policy = fips: the pinned RSA-1024 peer is refused though OPENSSL_CONF says SECLEVEL=1"
			like "$log" "its key is too weak for this side's OpenSSL security level 2 \(\[tls\] policy = fips: no RSA keys under 2048 bits\): the peer needs a new certificate" \
				"$name, policy = fips: the detail says why (security level 2, RSA under 2048 bits) and what to do"
			like "$log" "hint: " "$name, policy = fips: the refusal has a hint line"
		fi
		kill -TERM $APID; wait $APID
	done
}

H="$TMP/ossl"
"$AGENT" create-instance --home "$H" >/dev/null
"$AGENT" new-certificate --home "$H" >/dev/null
check openssl "$H"

SOFTHSM_LIB=$(dpkg -L libsofthsm2 2>/dev/null | grep '/libsofthsm2\.so$' | head -1)
OSSL_MODDIR=$(OPENSSL_CONF=/dev/null openssl version -m 2>/dev/null | sed -n 's/^MODULESDIR: "\(.*\)"/\1/p')
if [ -n "$SOFTHSM_LIB" ] && command -v softhsm2-util >/dev/null && [ -r "$OSSL_MODDIR/pkcs11.so" ] &&
	[ -e "$TOP_BUILDDIR/providers/pkcs11/.libs/tether-pkcs11.so" ] && ! sanitized; then
	export TETHER_PROVIDER_PATH="$TOP_BUILDDIR/providers/openssl/.libs:$TOP_BUILDDIR/providers/pkcs11/.libs"
	mkdir -p "$TMP/tokens"
	export SOFTHSM2_CONF="$TMP/softhsm2.conf"
	printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$TMP/tokens" > "$SOFTHSM2_CONF"
	LABEL="tether-sec-$$"
	softhsm2-util --init-token --free --label "$LABEL" --pin 4321 --so-pin 87654321 >/dev/null
	printf '4321\n' > "$TMP/pin"; chmod 600 "$TMP/pin"
	H="$TMP/p11"
	"$AGENT" create-instance --home "$H" >/dev/null
	"$AGENT" configure --home "$H" --provider pkcs11 --pkcs11-module softhsm2 \
		--pkcs11-token "pkcs11:token=$LABEL" --pkcs11-pin-file "$TMP/pin" >/dev/null
	"$AGENT" new-certificate --home "$H" >/dev/null
	ok $? "pkcs11: the agent's identity on a SoftHSM2 token"
	check pkcs11 "$H"
else
	echo "# pkcs11 part skipped: SoftHSM2, pkcs11-provider or tether-pkcs11.so missing, or a sanitized build"
fi
done_testing
