#include "config.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "error.h"

static const char *const cat_names[TETHER_CAT__COUNT] = {
	[TETHER_CAT_NONE] = "none",
	[TETHER_CAT_PROTOCOL_VERSION] = "protocol_version",
	[TETHER_CAT_NO_SHARED_CIPHER] = "no_shared_cipher",
	[TETHER_CAT_NO_SHARED_GROUP] = "no_shared_group",
	[TETHER_CAT_NO_SHARED_SIGALG] = "no_shared_sigalg",
	[TETHER_CAT_PEER_NO_CERTIFICATE] = "peer_no_certificate",
	[TETHER_CAT_UNTRUSTED] = "untrusted",
	[TETHER_CAT_NOT_TLS] = "not_tls",
	[TETHER_CAT_CONNECTION_REFUSED] = "connection_refused",
	[TETHER_CAT_CONNECTION_RESET] = "connection_reset",
	[TETHER_CAT_DNS_FAILURE] = "dns_failure",
	[TETHER_CAT_TIMEOUT] = "timeout",
	[TETHER_CAT_CLONED_IDENTITY] = "cloned_identity",
	[TETHER_CAT_SHA1_REJECTED] = "sha1_rejected",
	[TETHER_CAT_HANDSHAKE] = "handshake",
	[TETHER_CAT_BAD_PASSWORD] = "bad_password",
	[TETHER_CAT_KEY_NOT_EXPORTABLE] = "key_not_exportable",
	[TETHER_CAT_BAD_INPUT] = "bad_input",
	[TETHER_CAT_NOT_FOUND] = "not_found",
	[TETHER_CAT_IO] = "io",
	[TETHER_CAT_UNSUPPORTED] = "unsupported",
	[TETHER_CAT_INTERNAL] = "internal",
	[TETHER_CAT_PEER_PROTOCOL] = "protocol_violation",
	[TETHER_CAT_LOCKED] = "locked",
	[TETHER_CAT_TOKEN_UNAVAILABLE] = "token_unavailable",
};

#define TLS_REQ "tether requires TLS 1.2 or 1.3 with ECDHE and AES-GCM or ChaCha20-Poly1305 " \
	"(TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256; " \
	"ECDHE-RSA/ECDSA-AES128-GCM-SHA256, -AES256-GCM-SHA384, -CHACHA20-POLY1305)"
#define CNF "the [system_default_sect] of openssl.cnf ($OPENSSL_CONF, on Debian /etc/ssl/openssl.cnf)"

static const char *const cat_hints[TETHER_CAT__COUNT] = {
	[TETHER_CAT_NONE] = "no failure",
	[TETHER_CAT_PROTOCOL_VERSION] =
		"the two sides share no TLS version: " TLS_REQ "; look at the side that refused (its log names "
		"the version it wanted): on Linux MinProtocol/MaxProtocol in " CNF ", on Windows the Schannel "
		"protocol settings (SCHANNEL\\Protocols\\TLS 1.2); if the message names tether protocol versions "
		"instead (HELLO), the two sides speak different major versions of tether: upgrade the older one",
	[TETHER_CAT_NO_SHARED_CIPHER] =
		"the two sides share no cipher suite: " TLS_REQ "; look at the side that refused: on Linux "
		"CipherString (TLS 1.2) and Ciphersuites (TLS 1.3) in " CNF " (a @SECLEVEL of 3 or more also "
		"refuses RSA 2048 keys), on Windows the cipher suite order policy",
	[TETHER_CAT_NO_SHARED_GROUP] =
		"the two sides share no key-exchange group: tether offers x25519, secp256r1 and secp384r1 "
		"(secp256r1 and secp384r1 under FIPS); look at the side that refused: on Linux Groups (or "
		"Curves) in " CNF ", on Windows the ECC curve order policy",
	[TETHER_CAT_NO_SHARED_SIGALG] =
		"the two sides share no signature scheme: tether accepts rsa_pss_rsae_sha256/384, "
		"rsa_pkcs1_sha256/384, ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384 (never SHA-1); look at "
		"the side that refused: on Linux SignatureAlgorithms and ClientSignatureAlgorithms in " CNF
		", and that its certificate key is RSA or ECDSA P-256/P-384",
	[TETHER_CAT_PEER_NO_CERTIFICATE] =
		"the peer presented no certificate: the other side is not a tether peer, or has no identity "
		"yet (run 'new-certificate' there)",
	[TETHER_CAT_UNTRUSTED] =
		"the presented certificate's SHA-256 thumbprint is not pinned: if it is the expected peer, "
		"trust it (agent: 'tether-agent configure --trust THUMBPRINT'; server: 'tether-server target "
		"set-thumbprint NAME THUMBPRINT'), otherwise something else answers at that address",
	[TETHER_CAT_NOT_TLS] =
		"the peer does not speak TLS (plain HTTP or another protocol at that port): check the host and "
		"port, and that no proxy or load balancer terminates TLS in between",
	[TETHER_CAT_CONNECTION_REFUSED] =
		"nothing listens at that address: check the port, that the agent/server is running "
		"('tether-agent run'), and the firewall",
	[TETHER_CAT_CONNECTION_RESET] =
		"the peer closed the connection during the handshake: look at the other side's log for why "
		"(it usually names the refused thumbprint or TLS setting); a peer or middlebox that drops "
		"ClientHellos it dislikes looks the same: 'tether-ping connect HOST:PORT' probes it",
	[TETHER_CAT_DNS_FAILURE] =
		"the host name does not resolve: check its spelling and the DNS/hosts configuration",
	[TETHER_CAT_TIMEOUT] =
		"the peer did not answer in time: check the network path (firewall dropping packets, proxy), "
		"and that the peer is not overloaded",
	[TETHER_CAT_CLONED_IDENTITY] =
		"two agent processes present the same certificate (a cloned machine image): run "
		"'tether-agent new-certificate' on the clone and register its new thumbprint",
	[TETHER_CAT_SHA1_REJECTED] =
		"the peer refuses certificates signed with SHA-1 (OpenSSL at its default security level, "
		"Windows, FIPS): generate a new certificate, signed with SHA-256 ('tether-agent "
		"new-certificate'; 'tether-server new-certificate' then 'use-staged-certificate') and pin its "
		"thumbprint on the other side; 'doctor' finds such certificates",
	[TETHER_CAT_HANDSHAKE] =
		"the TLS handshake failed and the peer gave no reason (a bare handshake_failure alert usually "
		"means no shared cipher suite, group or signature scheme): run 'tether-ping connect HOST:PORT', "
		"whose probe handshakes name the parameter; " TLS_REQ,
	[TETHER_CAT_BAD_PASSWORD] =
		"the password is wrong: check the password file (no trailing spaces; one trailing newline is ignored)",
	[TETHER_CAT_KEY_NOT_EXPORTABLE] =
		"the private key cannot leave its store (HSM or non-exportable key): use 'new-certificate' "
		"and 'use-staged-certificate' instead of export/import",
	[TETHER_CAT_BAD_INPUT] =
		"the input was refused as not valid (the message says which and why): correct it; a certificate "
		"or key file refused this way is truncated or corrupt: export it again",
	[TETHER_CAT_NOT_FOUND] = "check the name or path",
	[TETHER_CAT_IO] =
		"check the permissions, the free space and the mount (read-only?) of the file or directory the "
		"message names",
	[TETHER_CAT_UNSUPPORTED] = "this provider cannot do that operation",
	[TETHER_CAT_INTERNAL] = "this is a bug in tether: please report it with the log",
	[TETHER_CAT_PEER_PROTOCOL] =
		"the peer broke the tether protocol (a frame too large or malformed, JSON that is not valid, a "
		"frame out of place): it is not a tether peer of a compatible version, or it is misbehaving; the "
		"connection was closed without acting on that frame; compare the two sides' versions "
		"('tether-agent --version', 'tether-server --version') and look at the peer's log",
	[TETHER_CAT_LOCKED] =
		"another process holds a lock on what the operation needs (the message names it, with the "
		"process ID when it is known): another tether-server on the same state directory, a backup "
		"tool or an sqlite3 shell; stop it or wait for it to finish, then retry",
	[TETHER_CAT_TOKEN_UNAVAILABLE] =
		"the private key is on a PKCS#11 token (HSM, smart card) that did not answer (the message names "
		"the token and the CKR_ code): check that the token is present in its slot and powered, that a "
		"network HSM is reachable and its client configured, and that nothing else reset or logged out "
		"its sessions; a running tether-agent or tether-server retries every 2 s and serves again by "
		"itself once the token answers (no SIGHUP, no restart); a command only needs to be run again; "
		"this is not a TLS setting problem",
};

const char *tether_category_name(int category)
{
	if (category < 0 || category >= TETHER_CAT__COUNT || !cat_names[category])
		return "internal";
	return cat_names[category];
}

const char *tether_category_hint(int category)
{
	if (category < 0 || category >= TETHER_CAT__COUNT || !cat_hints[category])
		return cat_hints[TETHER_CAT_INTERNAL];
	return cat_hints[category];
}

const char *tether_err_str(int code)
{
	switch (code) {
	case TETHER_OK: return "success";
	case TETHER_ERR_INTERNAL: return "internal error";
	case TETHER_ERR_NOMEM: return "out of memory";
	case TETHER_ERR_INVALID: return "invalid input";
	case TETHER_ERR_NOT_FOUND: return "not found";
	case TETHER_ERR_IO: return "I/O error";
	case TETHER_ERR_UNSUPPORTED: return "not supported";
	case TETHER_ERR_CRYPTO: return "cryptographic failure";
	case TETHER_ERR_TLS: return "TLS failure";
	case TETHER_ERR_CLOSED: return "connection closed";
	case TETHER_ERR_PASSWORD: return "wrong password";
	case TETHER_ERR_ABI: return "ABI mismatch";
	case TETHER_ERR_EXISTS: return "already exists";
	case TETHER_ERR_PERMISSION: return "permission denied";
	case TETHER_ERR_TIMEOUT: return "timed out";
	case TETHER_ERR_UNTRUSTED: return "peer not trusted";
	case TETHER_ERR_PROTOCOL: return "protocol error";
	case TETHER_ERR_USAGE: return "usage error";
	default: return "unknown error";
	}
}

int tether_err_set(tether_error *err, int code, int category, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return code;
	err->code = code;
	err->category = category;
	va_start(ap, fmt);
	vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
	va_end(ap);
	return code;
}

void tether_err_clear(tether_error *err)
{
	if (err)
		memset(err, 0, sizeof(*err));
}

void tether_err_prefix(tether_error *err, const char *fmt, ...)
{
	char pre[TETHER_ERROR_DETAIL_MAX], old[TETHER_ERROR_DETAIL_MAX];
	va_list ap;

	if (!err)
		return;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	memcpy(old, err->detail, sizeof(old));
	old[sizeof(old) - 1] = '\0';
	if (old[0])
		snprintf(err->detail, sizeof(err->detail), "%s: %s", pre, old);
	else
		snprintf(err->detail, sizeof(err->detail), "%s", pre);
}
