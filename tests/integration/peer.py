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
  abuse HOST PORT CERT KEY CASE  mutual TLS, then one protocol-level abuse
                                 (see ABUSE below); prints one line: what
                                 the peer answered and whether it closed
  slowloris HOST PORT N SECS     N TCP connections that send 3 bytes of a TLS
                                 record and stall; prints how many the peer
                                 closed within SECS
  relay PORT UPSTREAM SECS        a TCP relay on 127.0.0.1:PORT to
                                 127.0.0.1:UPSTREAM that delays every byte by
                                 SECS each way (latency where the kernel has
                                 no netem)
  call HOST PORT CERT KEY METHOD PARAMS [METHOD PARAMS]...
                                 mutual TLS + HELLO as a server, then each
                                 request in turn on that one connection; prints
                                 'result JSON' or 'error CODE MESSAGE' per
                                 request ('closed' if the connection ends);
                                 the pair '@sleep SECS' pauses without reading
                                 (PINGs are never answered)
  pipeline HOST PORT CERT KEY N [STOP]
                                 mutual TLS + HELLO as a server, then N requests
                                 sent at once without waiting (odd ids
                                 'health', even ids 'probe.ID', unknown to the
                                 agent), reading the answers meanwhile; prints
                                 'answers A results R errors E'.  STOP: stop
                                 reading after STOP answers (the peer may be
                                 killed meanwhile)
  serve-call PORT CERT KEY SECS METHOD PARAMS [METHOD PARAMS]...
                                 the same as the TLS server of one polling
                                 agent that connects to 127.0.0.1:PORT within
                                 SECS seconds (answers its HELLO first)
"""
import hashlib, json, os, socket, ssl, struct, sys, time

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

if os.environ.get("PEER_ROLE") == "agent":      # talk to a server's polling port
    HELLO = dict(HELLO, role="agent", mode="polling")

def hello(t):
    t.sendall(frame(1, 0, json.dumps(HELLO).encode()))
    return read_frame(t)

def requests(t, pairs):
    """Send each (method, params JSON) and print its answer, in order."""
    for i in range(0, len(pairs) - 1, 2):
        if pairs[i] == "@sleep":        # pause without reading (no PONG either)
            time.sleep(float(pairs[i + 1]))
            continue
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


def outcome(t, wait=5.0):
    """Read what the peer sends for up to `wait` s: 'closed' or 'open',
    after the types (and error codes/messages) of the frames it sent."""
    t.settimeout(wait)
    buf, seen, closed = b"", [], False
    end = time.time() + wait
    try:
        while time.time() < end:
            d = t.recv(65536)
            if not d:
                closed = True
                break
            buf += d
            while len(buf) >= 12:
                ftype, _, _, fid, ln = struct.unpack(">BBHII", buf[:12])
                if len(buf) < 12 + ln:
                    break
                body, buf = buf[12:12 + ln], buf[12 + ln:]
                if ftype in (1, 3, 7):
                    try:
                        o = json.loads(body)
                        e = o.get("error") if isinstance(o, dict) else None
                        if isinstance(e, dict):
                            seen.append("%d:%s:%s" % (ftype, e.get("code"), e.get("message")))
                            continue
                    except ValueError:
                        pass
                    seen.append("%d" % ftype)
                elif ftype == 10:
                    seen.append("goaway:" + body[4:].decode("utf-8", "replace"))
                elif ftype != 9:
                    seen.append("%d" % ftype)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        closed = True
    except socket.timeout:
        pass
    return ("closed" if closed else "open") + " " + " | ".join(seen)

def req(rid, method, params, raw=None):
    return frame(2, rid, raw if raw is not None else json.dumps({"id": rid, "method": method, "params": params}).encode())

# ABUSE cases: name -> (send HELLO first?, bytes to send after it)
def abuse_cases():
    ping = frame(8, 0, b"12345678")
    nested = b'{"id": 1, "method": "health", "params": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    return {
        "truncated-frame": (True, req(1, "health", {})[:20]),
        "short-length": (True, struct.pack(">BBHII", 2, 0, 0, 1, 10) + b'{"id": 1, "method": "health", "params": {}}'),
        "unknown-type": (True, frame(0x42, 1, b"{}")),
        "reserved-flags": (True, struct.pack(">BBHII", 2, 0x80, 0, 1, 2) + b"{}"),
        "reserved-field": (True, struct.pack(">BBHII", 2, 0, 0x1234, 1, 2) + b"{}"),
        "hello-twice": (True, frame(1, 0, json.dumps(HELLO).encode())),
        "hello-major-2": (False, frame(1, 0, json.dumps(dict(HELLO, version="2.0")).encode())),
        "request-before-hello": (False, req(1, "health", {})),
        "oversized-json": (True, req(1, "health", {"pad": "x" * (2 << 20)})),
        "oversized-length": (True, struct.pack(">BBHII", 2, 0, 0, 1, 0x7fffffff) + b"{"),
        "nested-json": (True, frame(2, 1, nested)),
        "invalid-json": (True, req(1, None, None, b'{"id": 1, "method": "health", "params": {')),
        "invalid-utf8": (True, req(1, None, None, b'{"id": 1, "method": "he\xff\xfelth", "params": {}}')),
        "wrong-types": (True, req(1, None, None, b'{"id": "one", "method": 5, "params": []}')),
        "id-mismatch": (True, req(1, None, None, b'{"id": 2, "method": "health", "params": {}}')),
        "unknown-method": (True, req(1, "no.such.method", {})),
        "id-reused": (True, req(1, "health", {}) + req(1, "health", {})),
        "stream-unknown-id": (True, frame(4, 4242, b"data")),
        "stream-end-unknown-id": (True, frame(5, 4242, b"\0" * 32)),
        "window-overflow": (True, frame(6, 4242, struct.pack(">I", 0xffffffff))),
        "window-zero": (True, frame(6, 0, struct.pack(">I", 0))),
        "ping-wrong-size": (True, frame(8, 0, b"123")),
        "ping-flood": (True, ping * 20000),
        "response-unasked": (True, frame(3, 77, json.dumps({"id": 77, "result": {}}).encode())),
        "upload-id-reused": (True, req(1, "file.upload", {"path": "abuse-reused.bin", "size": 100}) +
                             frame(4, 1, b"x" * 10) +
                             req(1, "file.upload", {"path": "abuse-reused2.bin", "size": 5})),
        "stream-overrun": (True, req(1, "file.upload", {"path": "abuse-overrun.bin", "size": 5}) +
                           frame(4, 1, b"x" * 10) + frame(5, 1, b"\0" * 32 + b'{"size": 10}')),
        # right size, wrong SHA-256 in STREAM_END (that of 10 'y's)
        "upload-lying-sha256": (True, req(1, "file.upload", {"path": "abuse-lying.bin", "size": 10}) +
                                frame(4, 1, b"x" * 10) +
                                frame(5, 1, hashlib.sha256(b"y" * 10).digest() + b'{"size": 10}')),
        "requests-unread": (True, b"".join(req(i, "health", {}) for i in range(1, UNREAD_COUNT + 1))),
        "goaway": (True, frame(10, 0, struct.pack(">I", 0) + json.dumps({"code": "shutdown", "message": "bye"}).encode())),
    }

# requests-unread: how many requests (PEER_UNREAD_COUNT, default 10 000)
UNREAD_COUNT = int(os.environ.get("PEER_UNREAD_COUNT", "10000"))

def unread(t, data):
    """Send UNREAD_COUNT requests without reading (the peer must stop
    reading us or queue a bounded amount) until the peer takes no more for
    2 s, report, wait PEER_UNREAD_WAIT s, then read every answer while
    sending the rest: a peer that paused reading must resume once its
    answers are read."""
    import select
    t.settimeout(2)
    sent = 0
    try:
        while sent < len(data):
            sent += t.send(data[sent:sent + 65536])
    except socket.timeout:
        pass
    print("sent %d of %d bytes before the peer stopped reading" % (sent, len(data)))
    sys.stdout.flush()
    time.sleep(float(os.environ.get("PEER_UNREAD_WAIT", "3")))
    print("reading"); sys.stdout.flush()
    # one thread, non-blocking: read the answers and send the rest of the
    # requests as the peer takes them
    t.setblocking(False)
    rest, n, buf = data[sent:], 0, b""
    end = time.time() + 60
    try:
        while n < UNREAD_COUNT and time.time() < end:
            r, w, _ = select.select([t], [t] if rest else [], [], 1.0)
            if r or t.pending():
                try:
                    d = t.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    d = None
                if d == b"":
                    break
                if d:
                    buf += d
                    while len(buf) >= 12:
                        ln = struct.unpack(">I", buf[8:12])[0]
                        if len(buf) < 12 + ln:
                            break
                        if buf[0] == 3:
                            n += 1
                        buf = buf[12 + ln:]
            if w and rest:
                try:
                    k = t.send(rest[:16384])
                    rest = rest[k:]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
    except (ssl.SSLError, OSError):
        pass
    print("answers %d" % n)
    return 0

def relay(port, upstream, delay):
    import asyncio

    async def pump(r, w):
        q = asyncio.Queue()

        async def rd():
            while True:
                try:
                    d = await r.read(65536)
                except OSError:
                    d = b""
                await q.put((time.monotonic() + delay, d))
                if not d:
                    return

        async def wr():
            while True:
                due, d = await q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not d:
                    w.close()
                    return
                w.write(d)
                await w.drain()
        await asyncio.gather(rd(), wr(), return_exceptions=True)

    def like_tether(w):
        # the relay stands in for the network: it retransmits as tether's
        # own sockets would (core/conn.c caps TCP's retransmission backoff
        # at a third of the default 15 s keepalive where the kernel can)
        try:
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, 44, 5000)  # TCP_RTO_MAX_MS
        except OSError:
            pass

    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            cw.close()
            return
        like_tether(cw)
        like_tether(uw)
        await asyncio.gather(pump(cr, uw), pump(ur, cw), return_exceptions=True)

    async def serve():
        s = await asyncio.start_server(handle, "127.0.0.1", port)
        print("relaying", flush=True)
        async with s:
            await s.serve_forever()
    asyncio.run(serve())

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
            wait = due - time.time()    # read the clock once: it may pass due meanwhile
            if wait > 0:
                time.sleep(wait)
            try:
                t = connect(host, port, None, None, src)
                ok += 1
                t.close()
            except Exception:
                fail += 1
        print("handshakes %d refused %d in %.1f s" % (ok, fail, time.time() - start))
        return 0
    if cmd == "abuse":
        first, data = abuse_cases()[sys.argv[6]]
        try:
            t = connect(*sys.argv[2:6])
            if first:
                f = hello(t)
                if f is None:
                    print("closed at HELLO"); return 1
            if sys.argv[6] == "requests-unread":
                return unread(t, data)
            t.sendall(data)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            print("closed while sending (%s)" % e.__class__.__name__); return 0
        print(outcome(t))
        return 0
    if cmd == "slowloris":
        import resource, select
        host, port, n, secs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < n + 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
        socks, refused = [], 0
        for i in range(n):
            try:
                s = socket.create_connection((host, port), timeout=5)
                s.sendall(b"\x16\x03\x01")
                socks.append(s)
            except OSError:
                refused += 1
        print("opened %d refused %d" % (len(socks), refused)); sys.stdout.flush()
        closed, end = set(), time.time() + secs
        while time.time() < end and len(closed) < len(socks):
            live = [s for s in socks if s.fileno() not in closed]
            r, _, _ = select.select(live[:1000], [], [], 0.5)
            for s in r:
                try:
                    d = s.recv(4096)
                except OSError:
                    d = b""
                if not d:
                    closed.add(s.fileno())
        print("closed by the peer %d of %d within %.0f s" % (len(closed), len(socks), secs))
        for s in socks:
            s.close()
        return 0
    if cmd == "relay":
        relay(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return 0
    if cmd == "call":
        t = connect(*sys.argv[2:6])
        f = hello(t)
        if f is None or "error" in json.loads(f[2]):
            print("closed" if f is None else "refused " + f[2].decode()); return 1
        return requests(t, sys.argv[6:])
    if cmd == "download-window":
        # file.download PATH, and once its first data arrives, raise the
        # window by WINDOW bytes at once (legal up to 2^31-1): the agent
        # must keep sending in bounded bursts, not fail its pump.  Prints
        # "result SIZE SHA256" (of the data received) or the error.
        # A 64 MiB receive buffer (SO_RCVBUFFORCE needs root) and a pause
        # after the grant let the agent's socket take all it is given.
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        s.settimeout(30)
        s.connect((sys.argv[2], int(sys.argv[3])))
        t = ctx(sys.argv[4], sys.argv[5]).wrap_socket(s, server_hostname=None)
        f = hello(t)
        if f is None or "error" in json.loads(f[2]):
            print("closed"); return 1
        path, extra = sys.argv[6], int(sys.argv[7])
        t.sendall(req(1, "file.download", {"path": path}))
        h, n, granted = hashlib.sha256(), 0, False
        while True:
            f = read_frame(t)
            if f is None or f[0] == 10:
                print("closed"); return 1
            if f[0] == 4 and f[1] == 1:
                h.update(f[2]); n += len(f[2])
                if not granted:
                    t.sendall(frame(6, 1, struct.pack(">I", extra))); granted = True
                    time.sleep(0.5)
            elif f[0] == 3 and f[1] == 1:
                d = json.loads(f[2])
                if "error" in d:
                    print("error", d["error"].get("code"), d["error"].get("message")); return 1
                print("result", n, h.hexdigest(), d["result"].get("sha256")); return 0
    if cmd == "pipeline":
        # One thread writes and reads (an SSL object must not be used by
        # two threads at once): send while the socket takes data, read
        # whatever answers arrive meanwhile, so neither side blocks.
        import select
        t = connect(*sys.argv[2:6])
        n = int(sys.argv[6])
        stop = int(sys.argv[7]) if len(sys.argv) > 7 else n
        f = hello(t)
        if f is None or "error" in json.loads(f[2]):
            print("closed" if f is None else "refused " + f[2].decode()); return 1
        data = b"".join(req(i, "health" if i % 2 else "probe.%d" % i, {}) for i in range(1, n + 1))
        t.setblocking(False)
        sent, buf, res, err, closed = 0, b"", 0, 0, False
        end = time.time() + 120
        while res + err < stop and not closed and time.time() < end:
            wl = [t] if sent < len(data) else []
            if t.pending() == 0:
                select.select([t], wl, [], 1.0)
            try:
                d = t.recv(65536)
                if not d:
                    closed = True
                buf += d
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (ssl.SSLError, OSError):
                closed = True
            # one TLS record may hold many answers: count no more than STOP
            while len(buf) >= 12 and res + err < stop:
                ftype, _, _, _, ln = struct.unpack(">BBHII", buf[:12])
                if len(buf) < 12 + ln:
                    break
                body, buf = buf[12:12 + ln], buf[12 + ln:]
                if ftype != 3:
                    continue
                if "error" in json.loads(body):
                    err += 1
                else:
                    res += 1
            if sent < len(data) and not closed:
                try:
                    sent += t.send(data[sent:sent + 16384])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except (ssl.SSLError, OSError):
                    closed = True
        print("answers %d results %d errors %d" % (res + err, res, err))
        return 0
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
