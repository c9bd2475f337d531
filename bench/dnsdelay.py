#!/usr/bin/env python3
"""bench/dnsdelay.py LISTEN_PORT UPSTREAM_PORT DELAY_MS STATS_FILE -- a DNS round trip, on loopback.

Listens on 127.0.0.1:LISTEN_PORT (UDP and TCP) and passes every query to 127.0.0.1:UPSTREAM_PORT
(bench/run's unbound) DELAY_MS milliseconds after it arrived; the answer comes back at once. So
every query costs one round trip of DELAY_MS, as a resolver a few countries away would, while
nothing leaves loopback. (The kernel here has no netem qdisc, so `tc ... netem delay` on a veth
pair is not available.) Queries are handled concurrently: a query is never held up by another.

On SIGUSR1 writes "udp=N tcp=N answered=N ms=X" to STATS_FILE (queries passed on so far; of
them, answered; and the answered ones' summed turnaround, query in to answer out, in ms: the
round trip as this server gives it, DELAY_MS plus its own and unbound's time); on SIGTERM the
same, then exits.
Python standard library only.
"""
import asyncio
import signal
import sys
import time

HOST = "127.0.0.1"


class Stats:
    udp = 0
    tcp = 0
    answered = 0
    ms = 0.0

    @staticmethod
    def done(t0):
        Stats.answered += 1
        Stats.ms += 1000 * (time.monotonic() - t0)


class Back(asyncio.DatagramProtocol):
    """One query's socket to the upstream server: the answer goes back to the client."""

    def __init__(self, front, client, t0):
        self.front, self.client, self.transport, self.t0 = front, client, None, t0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.front.sendto(data, self.client)
        Stats.done(self.t0)
        self.transport.close()

    def error_received(self, exc):
        self.transport.close()


class Front(asyncio.DatagramProtocol):
    def __init__(self, upstream, delay):
        self.upstream, self.delay, self.transport = upstream, delay, None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        Stats.udp += 1
        t0 = time.monotonic()
        asyncio.get_running_loop().call_later(
            self.delay, lambda: asyncio.ensure_future(self.forward(data, addr, t0)))

    async def forward(self, data, client, t0):
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Back(self.transport, client, t0), remote_addr=self.upstream)
        transport.sendto(data)
        # A lost answer: the client retries; don't keep the socket forever.
        loop.call_later(10, transport.close)


async def tcp_client(reader, writer, upstream, delay):
    try:
        ur, uw = await asyncio.open_connection(*upstream)
    except OSError:
        writer.close()
        return
    try:
        while True:
            n = await reader.readexactly(2)
            q = await reader.readexactly(int.from_bytes(n, "big"))
            Stats.tcp += 1
            t0 = time.monotonic()
            await asyncio.sleep(delay)
            uw.write(n + q)
            await uw.drain()
            m = await ur.readexactly(2)
            a = await ur.readexactly(int.from_bytes(m, "big"))
            writer.write(m + a)
            await writer.drain()
            Stats.done(t0)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        uw.close()
        writer.close()


async def main():
    port, up_port, delay_ms, stats = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    upstream, delay = (HOST, up_port), delay_ms / 1000
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Front(upstream, delay), local_addr=(HOST, port))
    server = await asyncio.start_server(
        lambda r, w: tcp_client(r, w, upstream, delay), HOST, port)
    def dump():
        with open(stats, "w") as f:
            f.write(f"udp={Stats.udp} tcp={Stats.tcp} answered={Stats.answered} ms={Stats.ms:.1f}\n")

    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, dump)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    async with server:
        await done.wait()
    dump()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(main())
