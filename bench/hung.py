#!/usr/bin/env python3
"""bench/hung.py PORT: a peer that hangs, for `bench/run outage`: on 127.0.0.1:PORT it accepts
TCP connections and reads whatever comes, and reads UDP datagrams, and never answers either.
Only for the hang: a real peer cannot hang on demand."""
import selectors
import socket
import sys

port = int(sys.argv[1])
sel = selectors.DefaultSelector()
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", port))
tcp.listen(1024)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", port))
sel.register(tcp, selectors.EVENT_READ, "accept")
sel.register(udp, selectors.EVENT_READ, "udp")
held = set()
while True:
    for key, _ in sel.select():
        if key.data == "accept":
            c, _ = tcp.accept()
            held.add(c)
            sel.register(c, selectors.EVENT_READ, "conn")
        elif key.data == "udp":
            udp.recv(65536)
        else:
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                held.discard(key.fileobj)
