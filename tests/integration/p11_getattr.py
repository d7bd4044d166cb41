#!/usr/bin/env python3
"""Try to read a secret attribute of a private key straight from a PKCS#11
module (the module's own C_* exports, through ctypes; no tether code).

usage: p11_getattr.py MODULE TOKEN_LABEL PIN_FILE ID_HEX
Prints one line per attribute: NAME rv=0x.. len=N (len -1 = unavailable),
and exits 0 if every secret attribute was refused, 1 if any was readable,
2 on a setup failure."""
import ctypes as C
import sys

CKU_USER = 1
CKF_SERIAL_SESSION = 4
CKA_CLASS, CKA_ID, CKA_VALUE, CKA_PRIVATE_EXPONENT, CKA_PRIME_1 = 0x0, 0x102, 0x11, 0x123, 0x124
CKO_PRIVATE_KEY = 3
UNAVAILABLE = C.c_ulong(-1).value


class Attr(C.Structure):
    _fields_ = [("type", C.c_ulong), ("pValue", C.c_void_p), ("ulValueLen", C.c_ulong)]


class TokenInfo(C.Structure):
    _fields_ = [("label", C.c_char * 32), ("rest", C.c_ubyte * 512)]


def main():
    mod, label, pin_file, id_hex = sys.argv[1:5]
    lib = C.CDLL(mod)
    pin = open(pin_file, "rb").read().split(b"\n")[0]
    ident = bytes.fromhex(id_hex)
    if lib.C_Initialize(None) != 0:
        return 2
    slots = (C.c_ulong * 64)()
    n = C.c_ulong(64)
    lib.C_GetSlotList(1, slots, C.byref(n))
    slot = None
    for i in range(n.value):
        ti = TokenInfo()
        if lib.C_GetTokenInfo(C.c_ulong(slots[i]), C.byref(ti)) == 0 and \
                ti.label.decode().rstrip() == label:
            slot = slots[i]
    if slot is None:
        print("token not found")
        return 2
    sess = C.c_ulong()
    lib.C_OpenSession(C.c_ulong(slot), C.c_ulong(CKF_SERIAL_SESSION), None, None, C.byref(sess))
    lib.C_Login(sess, C.c_ulong(CKU_USER), pin, C.c_ulong(len(pin)))
    cls = C.c_ulong(CKO_PRIVATE_KEY)
    idbuf = C.create_string_buffer(ident, len(ident))
    tmpl = (Attr * 2)(Attr(CKA_CLASS, C.cast(C.byref(cls), C.c_void_p), 8),
                      Attr(CKA_ID, C.cast(idbuf, C.c_void_p), len(ident)))
    lib.C_FindObjectsInit(sess, tmpl, C.c_ulong(2))
    h = C.c_ulong()
    cnt = C.c_ulong()
    lib.C_FindObjects(sess, C.byref(h), C.c_ulong(1), C.byref(cnt))
    lib.C_FindObjectsFinal(sess)
    if cnt.value != 1:
        print("private key not found")
        return 2
    leaked = False
    for name, t in (("CKA_VALUE", CKA_VALUE), ("CKA_PRIVATE_EXPONENT", CKA_PRIVATE_EXPONENT),
                    ("CKA_PRIME_1", CKA_PRIME_1)):
        buf = C.create_string_buffer(1024)
        a = Attr(t, C.cast(buf, C.c_void_p), 1024)
        rv = lib.C_GetAttributeValue(sess, h, C.byref(a), C.c_ulong(1))
        length = -1 if a.ulValueLen == UNAVAILABLE else a.ulValueLen
        print("%s rv=0x%x len=%d" % (name, rv, length))
        if rv == 0 and length > 0:
            leaked = True
    lib.C_Logout(sess)
    lib.C_CloseSession(sess)
    lib.C_Finalize(None)
    return 1 if leaked else 0


sys.exit(main())
