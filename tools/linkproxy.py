#!/usr/bin/env python3
"""A TCP proxy that breaks the link on purpose, to test resume and timeouts.

    python tools/linkproxy.py --listen 127.0.0.1:9000 --to 127.0.0.1:8472 --cut-after 100000

Faults (per connection, counted on the host -> device direction):
  --cut-after N    close both sides after N bytes passed (only the first
                   `--cuts` connections are cut; later ones pass freely)
  --stall-after N  stop forwarding after N bytes but keep the sockets open
  --delay-ms D     add D ms one way in each direction (a round trip costs 2 D),
                   without serialising: a delay line, not a stop-and-wait
  --window W       the receiver's TCP window (bytes), both ways: at most W bytes
                   on the delay line unacknowledged (--window 6400 is the Pico
                   W's lwIP: TCP_WND = 8 x TCP_MSS 800), so a round trip of 2 D
                   carries at most W bytes (docs/board.md)

`LinkProxy` is the same thing for tests, inside their event loop.
`HostileLink` (tools/torture_link.py) adds, per connection and both ways:
segment "loss" as retransmission stalls, DATA frames duplicated and swapped
(what the proxy holds in its buffer), and forced disconnects at planned
byte counts of the host -> device stream.
"""
from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Optional


class TcpWindow:
    """A TCP receive window as the sender sees it: `size` bytes of credit,
    taken when bytes are sent and given back when their acknowledgement (with
    the window update) arrives."""

    def __init__(self, size: int):
        self.free = size
        self.opened = asyncio.Event()

    async def take(self, want: int) -> int:
        """Wait for credit; -> how many of `want` bytes may go now (at least 1)."""
        while self.free <= 0:
            self.opened.clear()
            await self.opened.wait()
        n = min(want, self.free)
        self.free -= n
        return n

    def give(self, n: int) -> None:
        self.free += n
        self.opened.set()


class LinkProxy:
    def __init__(self, target_host: str, target_port: int, *, cut_after: Optional[int] = None,
                 stall_after: Optional[int] = None, cuts: int = 1, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, delay: float = 0.0, window: Optional[int] = None):
        self.target = (target_host, target_port)
        self.cut_after = cut_after
        self.stall_after = stall_after
        self.cuts_left = cuts
        self.listen = (listen_host, listen_port)
        self.server: Optional[asyncio.AbstractServer] = None
        self.port = 0
        self.connections = 0
        self.cut_count = 0
        self.bytes_up = 0     # host -> device, all connections
        self.delay = delay    # seconds, one way
        self.window = window  # bytes in flight per direction (None: unlimited)
        self._tasks: set = set()

    async def start(self) -> "LinkProxy":
        self.server = await asyncio.start_server(self._handle, *self.listen)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    async def __aenter__(self) -> "LinkProxy":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        faulty = self.cuts_left > 0
        if faulty:
            self.cuts_left -= 1
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        done = asyncio.Event()

        def kill():
            for w in (cw, uw):
                w.transport.abort()  # RST-like: no graceful goodbye, like a dropped Wi-Fi link
            done.set()

        async def pump(coro):
            try:
                await coro
            except (OSError, ConnectionError):
                pass
            finally:
                if not done.is_set():
                    kill()

        tasks = [asyncio.ensure_future(pump(self._up(cr, uw, done, kill, faulty))),
                 asyncio.ensure_future(pump(self._down(ur, cw, done)))]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # stop() cancelled the pumps; the handler just ends
        finally:
            self._tasks.difference_update(tasks)

    def _send(self, w, data) -> None:
        # Same delay for every chunk, so timers fire in order: a delay line.
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, lambda: None if w.is_closing() else w.write(data))
        else:
            w.write(data)

    async def _forward(self, w, data, credit) -> None:
        """Send `data` down the delay line to `w` within the receiver's window:
        each byte holds `credit` (a TcpWindow, None: no window) from the moment
        it is sent until the receiver's window update is back, a round trip
        (2 x delay) later, as a TCP sender's unacknowledged bytes do."""
        if credit is None:
            self._send(w, data)
            return
        mv = memoryview(bytes(data))
        while mv:
            n = await credit.take(len(mv))
            self._send(w, mv[:n].tobytes())
            asyncio.get_running_loop().call_later(2 * self.delay, credit.give, n)
            mv = mv[n:]

    async def _cut(self, uw, data, keep, kill) -> None:
        # forward the first `keep` bytes of `data`, then drop the link
        if keep > 0:
            uw.write(data[:keep])
            self.bytes_up += keep
            await uw.drain()
        self.cut_count += 1
        kill()

    async def _up(self, cr, uw, done, kill, faulty) -> None:
        passed = 0
        up_credit = TcpWindow(self.window) if self.window else None
        while not done.is_set():
            data = await cr.read(4096)
            if not data:
                break
            if faulty and self.cut_after is not None and passed + len(data) >= self.cut_after:
                await self._cut(uw, data, self.cut_after - passed, kill)
                return
            if faulty and self.stall_after is not None and passed + len(data) >= self.stall_after:
                await done.wait()  # swallow everything from now on
                return
            await self._forward(uw, data, up_credit)
            passed += len(data)
            self.bytes_up += len(data)
            await uw.drain()
        await self._in_flight()

    async def _down(self, ur, cw, done) -> None:
        credit = TcpWindow(self.window) if self.window else None
        while not done.is_set():
            data = await ur.read(4096)
            if not data:
                break
            await self._forward(cw, data, credit)
            await cw.drain()
        await self._in_flight()

    async def _in_flight(self) -> None:
        # a closing side's last bytes are still on the delay line: they
        # arrive before the close does, as on a real link
        if self.delay:
            await asyncio.sleep(self.delay + 0.01)


def _is_data(unit: bytes) -> bool:
    return len(unit) > 1 and unit[0] == 0xE7 and unit[1] == 0x21  # a native DATA frame


def split_units(buf: bytearray) -> list:
    """Take whole messages off the front of `buf`: binary frames (0xE7 ...)
    and JSON lines; bytes that are neither pass as they are. What is left
    (an incomplete message) stays in buf."""
    units = []
    while buf:
        if buf[0] == 0xE7:
            if len(buf) < 5:
                break
            n = 5 + ((buf[2] << 8) | buf[3])
            if len(buf) < n:
                break
        elif buf[0] == 0x7B:  # '{'
            i = buf.find(b"\n")
            if i < 0:
                break
            n = i + 1
        else:
            i = min((j for j in (buf.find(b"\xe7"), buf.find(b"{")) if j > 0), default=len(buf))
            n = i
        units.append(bytes(buf[:n]))
        del buf[:n]
    return units


class HostileLink(LinkProxy):
    """A LinkProxy that mistreats every connection (see the module doc).

    loss: chance per `segment` bytes forwarded (either way) of a `stall` s
    wait, as a lost segment's retransmission costs; dup / swap: chance per
    DATA frame of sending it twice / after the frame behind it (only when
    both sit in the proxy's buffer); plan(points): host -> device byte counts
    (over all connections) at which the link is dropped. Counters: stalls,
    dups, swaps, cut_count."""

    def __init__(self, target_host: str, target_port: int, rng, *, loss: float = 0.05,
                 segment: int = 800, stall: float = 0.2, dup: float = 0.02, swap: float = 0.02, **kw):
        super().__init__(target_host, target_port, **kw)
        self.rng = rng
        self.loss, self.segment, self.stall = loss, segment, stall
        self.dup, self.swap = dup, swap
        self.points: list = []
        self.stalls = self.dups = self.swaps = 0

    def plan(self, points) -> None:
        """Drop the link when the host -> device stream passes each of `points`."""
        self.points = sorted(self.bytes_up + p for p in points)

    async def _lossy(self, w, data: bytes) -> None:
        for i in range(0, len(data), self.segment):
            if self.rng.random() < self.loss:
                self.stalls += 1
                await asyncio.sleep(self.stall)
            w.write(data[i:i + self.segment])
            await w.drain()

    async def _up(self, cr, uw, done, kill, faulty) -> None:
        buf = bytearray()
        while not done.is_set():
            data = await cr.read(65536)  # a whole window: frames to swap
            if not data:
                break
            buf += data
            for u in self._mistreat(split_units(buf)):
                if self.points and self.bytes_up + len(u) >= self.points[0]:
                    await self._cut(uw, u, self.points.pop(0) - self.bytes_up, kill)
                    return
                await self._lossy(uw, u)
                self.bytes_up += len(u)

    def _mistreat(self, units: list) -> list:
        out = []
        i = 0
        while i < len(units):
            u = units[i]
            if (_is_data(u) and i + 1 < len(units) and _is_data(units[i + 1])
                    and self.rng.random() < self.swap):
                out += [units[i + 1], u]
                self.swaps += 1
                i += 2
                continue
            out.append(u)
            if _is_data(u) and self.rng.random() < self.dup:
                out.append(u)
                self.dups += 1
            i += 1
        return out

    async def _down(self, ur, cw, done) -> None:
        while not done.is_set():
            data = await ur.read(4096)
            if not data:
                break
            await self._lossy(cw, data)


class UdpDelay(asyncio.DatagramProtocol):
    """A UDP relay adding `delay` seconds each way (for the legacy service and
    SMP). `queue`: how many datagrams the device's socket holds unread (4 on
    MicroPython 1.26+, 1 before: docs/board.md); a datagram that arrives while
    that many are still unanswered is dropped (counted in `dropped`), as lwIP
    drops what its queue cannot take. Both services answer each request with
    one datagram, so a reply is the sign that one was read (a datagram left
    unanswered for READ_S counts as read: the device dropped it itself)."""

    READ_S = 1.0

    def __init__(self, target: tuple, delay: float, queue: Optional[int] = None):
        self.target = target
        self.delay = delay
        self.queue = queue
        self.unread: list = []  # delivery times of datagrams not yet answered
        self.dropped = 0
        self.client = None
        self.transport = None
        self.upstream = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Up(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if relay.unread:
                    relay.unread.pop(0)
                if relay.client is not None:
                    loop.call_later(relay.delay, relay.transport.sendto, data, relay.client)

        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.upstream, _ = await loop.create_datagram_endpoint(Up, remote_addr=self.target)
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data, addr):
        self.client = addr
        asyncio.get_running_loop().call_later(self.delay, self._deliver, data)

    def _deliver(self, data) -> None:
        now = time.monotonic()
        while self.unread and now - self.unread[0] > self.READ_S:
            self.unread.pop(0)
        if self.queue is not None and len(self.unread) >= self.queue:
            self.dropped += 1
            return
        self.unread.append(now)
        self.upstream.sendto(data)

    def close(self) -> None:
        for t in (self.transport, self.upstream):
            if t is not None:
                t.close()


class ProxyThread:
    """A LinkProxy on its own event loop in a thread, for synchronous callers
    (tests that drive the CLI as a subprocess through it)."""

    def __init__(self, port: int, **kw):
        self.loop = asyncio.new_event_loop()
        self.px = LinkProxy("127.0.0.1", port, **kw)
        self.t = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.t.start()
        asyncio.run_coroutine_threadsafe(self.px.start(), self.loop).result(10)
        self.port = self.px.port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.px.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.t.join(10)


def _hostport(s: str):
    h, _, p = s.rpartition(":")
    return h.strip("[]") or "127.0.0.1", int(p)


async def _main(a) -> None:
    th, tp = _hostport(a.to)
    lh, lp = _hostport(a.listen)
    px = LinkProxy(th, tp, cut_after=a.cut_after, stall_after=a.stall_after, cuts=a.cuts,
                   listen_host=lh, listen_port=lp, delay=(a.delay_ms or 0) / 1000, window=a.window)
    await px.start()
    print("linkproxy: ready %s:%d -> %s:%d" % (lh, px.port, th, tp), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await px.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--to", required=True)
    ap.add_argument("--cut-after", type=int)
    ap.add_argument("--stall-after", type=int)
    ap.add_argument("--cuts", type=int, default=1)
    ap.add_argument("--delay-ms", type=float)
    ap.add_argument("--window", type=int, help="TCP window in bytes (6400: the Pico W's lwIP)")
    try:
        asyncio.run(_main(ap.parse_args()))
    except KeyboardInterrupt:
        pass
