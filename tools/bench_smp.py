#!/usr/bin/env python3
"""SMP (MCUmgr) figures: upload throughput through smpclient, and the agent's heap
with `smp_udp` on.

    python tools/bench_smp.py [--heap 160K] [--micropython PATH]

`smp_rate(port, image, rtt)` is what `make bench` (tools/bench.py) calls beside the
native and legacy pushes in the same simulator run: it pushes `image` to the SMP
port with smpclient's own upload (one request in flight, as smpclient always does)
and returns bytes/s. `heap_figures()` measures the agent's share of the heap with
smp_udp off and on: idle, after one request (the service released again), the
peak during an SMP upload and after it. Run alone, this prints those figures on
the 32-bit v1.27 build where it exists (../shared/tools, the board's object
sizes), else on the 64-bit unix port. Figures only: nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in ("shared", "host", "tools"):
    if str(REPO / _p) not in sys.path:
        sys.path.insert(0, str(REPO / _p))

from smpclient import SMPClient  # noqa: E402
from smpclient.requests.os_management import EchoWrite  # noqa: E402
from smpclient.transport.udp import SMPUDPTransport  # noqa: E402



class SmpUdp(SMPUDPTransport):
    """smpclient's UDP transport on any port (SMPClient.connect always asks for 1337)."""

    def __init__(self, port: int, mtu: int = 1500):
        super().__init__(mtu)
        self.port = port

    async def connect(self, address: str, timeout_s: float, port: int | None = None) -> None:
        await super().connect(address, timeout_s, self.port)


async def smp_push(port: int, image: bytes, rtt: float = 0.0, host: str = "127.0.0.1") -> float:
    """Seconds for one smpclient upload of `image` (through a UDP delay line when rtt > 0)."""
    from linkproxy import UdpDelay
    relay = None
    if rtt:
        relay = UdpDelay((host, port), rtt / 2, queue=4)  # the board's UDP queue (tools/bench.py UDP_QUEUE)
        port = await relay.start()
        host = "127.0.0.1"
    try:
        async with SMPClient(SmpUdp(port), host, timeout_s=10) as c:
            t0 = time.monotonic()
            async for _ in c.upload(image):
                pass
            return time.monotonic() - t0
    finally:
        if relay is not None:
            relay.close()


def smp_rate(port: int, image: bytes, rtt: float = 0.0) -> float:
    """Bytes/s of one SMP upload of `image` to the simulator's SMP port."""
    return len(image) / asyncio.run(smp_push(port, image, rtt))


def _status(port: int) -> dict:
    # the native status op over a plain TCP connection (the simulator runs --no-auth)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b'{"op": "status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            data = s.recv(65536)
            if not data:
                break
            buf += data
    return json.loads(buf)


def _agent_heap(port: int) -> tuple:
    # (the agent's heap when last quiet, its peak), less mem_base, the heap in
    # use before main.py (the firmware's and the simulator's share); mem_idle
    # is sampled before this status connection loaded its own modules
    st = _status(port)
    return st["mem_idle"] - st["mem_base"], st["mem_peak"] - st["mem_base"]


def _echo(port: int) -> None:
    async def go():
        async with SMPClient(SmpUdp(port), "127.0.0.1", timeout_s=10) as c:
            await c.request(EchoWrite(d="mpota"))
    asyncio.run(go())


def heap_figures(image: bytes, work: Path, heap: str = "160K", micropython: str | None = None) -> dict:
    """The agent's heap (mem_alloc less mem_base, no app, --no-auth) with smp_udp off and on:
    idle, after one request (mpota_smp.py and mpota_cbor.py released again), the peak over an SMP
    upload of `image` and after it; "line" says it in one sentence."""
    from simproc import Sim, free_port
    mp = ["--micropython", micropython] if micropython else []
    out = {}
    with Sim(state=work / "heap-off", flags=["--no-auth", "--heap", heap] + mp) as sim:
        out["idle_off"] = _agent_heap(sim.tcp_port)[0]
    port = free_port(socket.SOCK_DGRAM)
    with Sim(state=work / "heap-on", flags=["--no-auth", "--heap", heap, "--smp-port", str(port)] + mp) as sim:
        out["idle_on"] = _agent_heap(sim.tcp_port)[0]
        _echo(port)
        out["after_request"] = _agent_heap(sim.tcp_port)[0]
        _echo(port)
        out["after_request2"] = _agent_heap(sim.tcp_port)[0]
        # 10 ms per round trip: housekeeping ticks during the upload, as on a real link
        smp_rate(port, image, 0.01)
        out["after_upload"], out["peak_upload"] = _agent_heap(sim.tcp_port)
    out["line"] = ("SMP heap (%s, --heap %s, agent share): idle %d B with smp_udp off, %d B on (+%d B); "
                   "%d B after a request, %d B after another (service released; the first one interns "
                   "its names in the qstr pool for good); peak %d B during a %d-byte SMP upload, "
                   "%d B after" % (Path(micropython).name if micropython else "unix port, 64-bit", heap,
                                  out["idle_off"], out["idle_on"], out["idle_on"] - out["idle_off"],
                                  out["after_request"], out["after_request2"], out["peak_upload"], len(image),
                                  out["after_upload"]))
    return out


def main() -> int:
    import boardbuilds
    from mpota import images as appimage
    from bench import make_body

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heap", default="160K", help="device heap (default 160K, a Pico W with Wi-Fi up)")
    ap.add_argument("--micropython", default=boardbuilds.i386(),
                    help="MicroPython to measure (default: the 32-bit build when present)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpota-bench-smp-"))
    try:
        image = bytes(appimage.build_app_image(make_body(work), version="2.0.0"))
        print(heap_figures(image, work, a.heap, a.micropython)["line"])
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
