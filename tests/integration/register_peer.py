#!/usr/bin/env python3
"""An unregistered polling agent made with Python's ssl module, for the
registration tests: mutual TLS with CERT/KEY, a tether HELLO as a polling
agent, then requests on the pre-authentication connection.

  register_peer.py HOST PORT CERT KEY METHOD[:JSON-PARAMS]...

sends each request in turn and prints one line per answer:
  <method> result <json>  |  <method> error <code> <category> <message>
  |  <method> closed
and stops at the first close.
"""
import json, socket, ssl, struct, sys

def frame(ftype, fid, payload):
    return struct.pack(">BBHII", ftype, 0, 0, fid, len(payload)) + payload

def read_frame(t):
    hdr = b""
    while len(hdr) < 12:
        d = t.recv(12 - len(hdr))
        if not d:
            return None
        hdr += d
    ftype, flags, res, fid, ln = struct.unpack(">BBHII", hdr)
    body = b""
    while len(body) < ln:
        d = t.recv(ln - len(body))
        if not d:
            return None
        body += d
    return ftype, fid, body

HELLO = {"protocol": "tether", "version": "1.0", "role": "agent", "software_version": "test-peer",
         "capabilities": [], "instance_id": "fedcba9876543210fedcba9876543210", "mode": "polling"}

def main():
    host, port, cert, key = sys.argv[1:5]
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.load_cert_chain(cert, key)
    s = socket.create_connection((host, int(port)), timeout=10)
    t = c.wrap_socket(s, server_hostname=None)
    try:
        t.sendall(frame(1, 0, json.dumps(HELLO).encode()))
        f = read_frame(t)
    except (ssl.SSLError, OSError) as e:
        print("hello closed", e)
        return 0
    if f is None or f[0] != 1:
        print("hello closed")
        return 0
    rid = 0
    for arg in sys.argv[5:]:
        method, _, params = arg.partition(":")
        rid += 1
        body = {"id": rid, "method": method, "params": json.loads(params) if params else {}}
        try:
            t.sendall(frame(2, rid, json.dumps(body).encode()))
            while True:
                f = read_frame(t)
                if f is None or f[0] == 3 or f[0] == 0x0a:
                    break
                if f[0] == 8:  # ping: answer it
                    t.sendall(frame(9, f[1], f[2]))
        except (ssl.SSLError, OSError):
            f = None
        if f is None or f[0] != 3:
            print(method, "closed")
            return 0
        r = json.loads(f[2])
        if "error" in r:
            e = r["error"]
            print(method, "error", e.get("code"), e.get("category", "-"), e.get("message"))
        else:
            print(method, "result", json.dumps(r.get("result"), sort_keys=True))
        sys.stdout.flush()
    return 0

if __name__ == "__main__":
    sys.exit(main())
