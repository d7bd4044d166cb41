#!/usr/bin/env python3
"""A scriptable TLS peer for integration tests (Python's ssl module, a real
third-party TLS stack).  Subcommands:
  hello HOST PORT CERT KEY       mutual TLS, send a tether HELLO, print the
                                 answer's protocol/role, then a health request
  raw HOST PORT CERT KEY HEX     mutual TLS, send raw bytes, report whether
                                 the peer closed (prints 'closed' or 'open')
  hold HOST PORT CERT KEY SECS   mutual TLS + HELLO, then wait; prints
                                 'closed after N s' or 'still open'
  flood HOST PORT SRC N RATE     N TCP+TLS handshakes without a certificate
                                 from source address SRC at RATE per second
  call HOST PORT CERT KEY METHOD PARAMS [METHOD PARAMS]...
                                 mutual TLS + HELLO as a server, then each
                                 request in turn on that one connection; prints
                                 'result JSON' or 'error CODE MESSAGE' per
                                 request ('closed' if the connection ends)
  serve-call PORT CERT KEY SECS METHOD PARAMS [METHOD PARAMS]...
                                 the same as the TLS server of one polling
                                 agent that connects to 127.0.0.1:PORT within
                                 SECS seconds (answers its HELLO first)
"""
import json, os, socket, ssl, struct, sys, time

def ctx(cert=None, key=None):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    if cert:
        c.load_cert_chain(cert, key)
    return c

def connect(host, port, cert, key, src=None):
    s = socket.create_connection((host, int(port)), timeout=10, source_address=(src, 0) if src else None)
    t = ctx(cert, key).wrap_socket(s, server_hostname=None)
    return t

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

HELLO = {"protocol": "tether", "version": "1.0", "role": "server", "software_version": "test-peer",
         "capabilities": [], "instance_id": "0123456789abcdef0123456789abcdef", "mode": "listening"}

def hello(t):
    t.sendall(frame(1, 0, json.dumps(HELLO).encode()))
    return read_frame(t)

def requests(t, pairs):
    """Send each (method, params JSON) and print its answer, in order."""
    for i in range(0, len(pairs) - 1, 2):
        rid = i // 2 + 1
        body = {"id": rid, "method": pairs[i], "params": json.loads(pairs[i + 1])}
        t.sendall(frame(2, rid, json.dumps(body).encode()))
        while True:
            f = read_frame(t)
            if f is None or f[0] == 3 or f[0] == 10:
                break
        if f is None or f[0] != 3:
            print("closed"); sys.stdout.flush()
            return 1
        d = json.loads(f[2])
        if "error" in d:
            print("error", d["error"].get("code"), d["error"].get("message"))
        else:
            print("result", json.dumps(d.get("result"), sort_keys=True))
        sys.stdout.flush()
    return 0

def is_closed(t, wait=3.0):
    t.settimeout(wait)
    try:
        d = t.recv(65536)
        while d:
            d = t.recv(65536)
        return True
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False

def main():
    cmd = sys.argv[1]
    if cmd == "hello":
        t = connect(*sys.argv[2:6])
        f = hello(t)
        if f is None:
            print("closed"); return 1
        print("hello", json.loads(f[2]).get("role"), t.version(), t.cipher()[0])
        t.sendall(frame(2, 1, json.dumps({"id": 1, "method": "health", "params": {}}).encode()))
        f = read_frame(t)
        print("response", json.dumps(json.loads(f[2])) if f else "closed")
        return 0
    if cmd == "raw":
        t = connect(*sys.argv[2:6])
        if len(sys.argv) > 7 and sys.argv[7] == "after-hello":
            hello(t)
        t.sendall(bytes.fromhex(sys.argv[6]))
        print("closed" if is_closed(t) else "open")
        return 0
    if cmd == "hold":
        t = connect(*sys.argv[2:6])
        f = hello(t)
        if f is None:
            print("closed at once"); return 0
        sys.stdout.write("open\n"); sys.stdout.flush()
        start = time.time()
        if is_closed(t, float(sys.argv[6])):
            print("closed after %.1f s" % (time.time() - start))
        else:
            print("still open")
        return 0
    if cmd == "flood":
        host, port, src, n, rate = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
        ok = fail = 0
        start = time.time()
        for i in range(n):
            due = start + i / rate
            if due > time.time():
                time.sleep(due - time.time())
            try:
                t = connect(host, port, None, None, src)
                ok += 1
                t.close()
            except Exception:
                fail += 1
        print("handshakes %d refused %d in %.1f s" % (ok, fail, time.time() - start))
        return 0
    if cmd == "call":
        t = connect(*sys.argv[2:6])
        f = hello(t)
        if f is None or "error" in json.loads(f[2]):
            print("closed" if f is None else "refused " + f[2].decode()); return 1
        return requests(t, sys.argv[6:])
    if cmd == "serve-call":
        port, cert, key, secs = int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        c.load_cert_chain(cert, key)
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(4)
        ls.settimeout(secs)
        try:
            s, _ = ls.accept()
        except socket.timeout:
            print("no agent connected in %.0f s" % secs); return 1
        s.settimeout(10)
        try:
            t = c.wrap_socket(s, server_side=True)
            f = read_frame(t)
        except (ssl.SSLError, OSError) as e:
            print("closed", e); return 1
        if f is None or f[0] != 1:
            print("closed"); return 1
        ans = dict(HELLO, mode=json.loads(f[2]).get("mode", "polling"))
        t.sendall(frame(1, 0, json.dumps(ans).encode()))
        return requests(t, sys.argv[6:])
    return 2

if __name__ == "__main__":
    sys.exit(main())
