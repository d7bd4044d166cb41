#!/usr/bin/env python3
"""A listening agent that breaks the protocol, for integration tests
(Python's ssl module; frames from peer.py).

  bad_agent.py PORT CERT KEY SECS CASE
      listen on 127.0.0.1:PORT with CERT/KEY (PEM), take one connection
      within SECS seconds, answer the server's HELLO as a listening agent,
      then answer its first request with a broken RESPONSE and print what
      the server did then (peer.py's outcome: 'closed ...' or 'open ...').
      CASE: bad-json   a RESPONSE whose JSON is cut short
            too-large  a RESPONSE frame header announcing 2^31-1 bytes
"""
import json, os, socket, ssl, struct, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer import HELLO, frame, read_frame, outcome  # noqa: E402


def main():
    port, cert, key, secs, case = (int(sys.argv[1]), sys.argv[2], sys.argv[3],
                                   float(sys.argv[4]), sys.argv[5])
    if case not in ("bad-json", "too-large"):
        print("unknown case %s" % case)
        return 2
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(cert, key)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4)
    print("listening", flush=True)
    ls.settimeout(secs)
    try:
        s, _ = ls.accept()
    except socket.timeout:
        print("no server connected in %.0f s" % secs)
        return 1
    s.settimeout(10)
    try:
        t = c.wrap_socket(s, server_side=True)
        f = read_frame(t)
        if f is None or f[0] != 1:
            print("closed before HELLO")
            return 1
        t.sendall(frame(1, 0, json.dumps(dict(HELLO, role="agent", mode="listening",
                                              capabilities=["health"])).encode()))
        while True:
            f = read_frame(t)
            if f is None:
                print("closed before a request")
                return 1
            if f[0] == 2:
                break
        rid = f[1]
        if case == "bad-json":
            t.sendall(frame(3, rid, b'{"id": %d, "result": {' % rid))
        else:
            t.sendall(struct.pack(">BBHII", 3, 0, 0, rid, 0x7fffffff) + b"{")
    except (ssl.SSLError, OSError) as e:
        print("closed", e)
        return 1
    print(outcome(t), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
