#!/usr/bin/env python3
"""`make bench`: native pipelined upload vs the legacy stop-and-wait UDP flow and SMP.

The parts (--parts): rtt (the three flows at each round trip through a delay
line holding the board's TCP window and UDP queue, against the bound
min(flash ceiling, window / rtt)), reuse (a one-file change sent as only the
sectors that changed vs a full upload, tools/bench_loop.py), loop (edit to
confirmed per stage, tools/bench_loop.py), usb, mac, memory.

One simulator run with `--flash-timing w25q` (typical W25Q erase/program
times slept on every flash operation) serves both: a 256 KiB application
image is pushed natively (TCP, pipelined DATA, cumulative ACKs) and then
through the reference `BootloaderMessenger` (UDP, one WriteRequest per round
trip), then with smpclient over SMP (UDP, one chunk per round trip, as
smpclient always does; tools/bench_smp.py), then over USB (tools/bench_usb.py:
the raw REPL on a simulator's pty console). Loopback has no latency, so the
flows are repeated through delay lines
(tools/linkproxy.py) that add a Wi-Fi-like round trip (--rtt). Prints the
throughputs, their ratio, and each against the physical write ceiling of
about 80 KB/s through 4 KiB sectors (docs/board.md). Figures only: nothing here
asserts on time.
"""
from __future__ import annotations

import argparse
import asyncio
import binascii
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in ("shared", "tools"):
    sys.path.insert(0, str(REPO / _p))

from mpota import images as appimage  # noqa: E402  (host/, installed editable by make setup)
from mpota.bootloader_messenger import BootloaderMessenger  # noqa: E402
from mpota.push import REUSE_RTT, push_image, reuse_pays  # noqa: E402
from simproc import Sim, free_port  # noqa: E402
from linkproxy import LinkProxy, UdpDelay  # noqa: E402
import bench_smp  # noqa: E402
import bench_loop  # noqa: E402
import bench_headroom  # noqa: E402
import bench_usb  # noqa: E402
import boardbuilds  # noqa: E402

CEILING = 4096 / 0.051  # bytes/s: a 4 KiB sector erase (45 ms) + 16 page programs (~6 ms)
IMAGE_SIZE = 256 * 1024
# The Pico W's lwIP (MicroPython extmod/lwip-include/lwipopts_common.h): TCP_MSS 800,
# TCP_WND = 8 x TCP_MSS: at most this many bytes in flight per round trip.
TCP_WINDOW = 6400
UDP_QUEUE = 4  # datagrams a socket holds unread (MicroPython 1.26+)


PARTS = ("rtt", "usb", "reuse", "loop", "mac", "memory")


def bound(rtt: float) -> float:
    """The fastest any protocol can write at round trip `rtt` (s): the flash
    ceiling, or the lwIP window per round trip when that is lower."""
    return CEILING if rtt <= 0 else min(CEILING, TCP_WINDOW / rtt)


def make_body(work: Path, kib: int = IMAGE_SIZE // 1024, tag: str = "") -> bytes:
    """The littlefs body of a `kib` KiB application image: hello plus incompressible filler."""
    app = work / ("benchapp%d%s" % (kib, tag))
    shutil.copytree(REPO / "examples" / "hello", app)
    (app / "blob.py").write_text("DATA = %r\n" % os.urandom(max(0, kib * 717 - 8192) // 2).hex())
    return appimage.build_littlefs(str(app), block_count=kib * 1024 // 4096)


def legacy_push(host: str, port: int, data: bytes, chunk: int) -> float:
    m = BootloaderMessenger((host, port))
    try:
        t0 = time.monotonic()
        assert m.start_update(len(data))
        for off in range(0, len(data), chunk):
            assert m.write(data[off:off + chunk])
        assert m.stop_update(binascii.crc32(data) & 0xFFFFFFFF)
        return time.monotonic() - t0
    finally:
        m.close()


ERASE_S, PAGE_S = 0.045, 0.0006  # the simulator's w25q timing (tools/simflash.py TIMINGS)


async def sim_flash(port: int) -> dict:
    """The simulator's flash counters (status sim_flash; the bench's simulators run --no-auth)."""
    from mpota.client import Client
    async with Client("127.0.0.1", port) as c:
        return (await c.status()).get("sim_flash") or {}


def flash_seconds(before: dict, after: dict) -> float:
    """Time the simulated flash spent erasing and programming between two counters."""
    return ((after.get("erases", 0) - before.get("erases", 0)) * ERASE_S
            + (after.get("programs", 0) - before.get("programs", 0)) * PAGE_S)


async def native_push(port: int, data: bytes, rtt: float, deflate: bool = False) -> tuple:
    """(seconds, window, flash busy s, bytes on the wire) of one pipelined
    upload of all of `data` (no sector kept: the table measures the
    protocol, the reuse table what keeping sectors saves), DATA deflated or
    not, through a delay line with the board's TCP window when rtt > 0."""
    seen: dict = {}
    px = None
    f0 = await sim_flash(port)
    if rtt:
        px = await LinkProxy("127.0.0.1", port, delay=rtt / 2, window=TCP_WINDOW).start()
        port = px.port
    try:
        t0 = time.monotonic()
        r = await push_image("127.0.0.1", port, data, commit=False, timeout=30, reuse=False, deflate=deflate,
                             on_event=lambda name, **f: seen.setdefault(name, f))
        secs = time.monotonic() - t0
        busy = flash_seconds(f0, await sim_flash(port if px is None else px.target[1]))
        return secs, seen.get("begin", {}).get("window", 0), busy, r.bytes_sent
    finally:
        if px is not None:
            await px.stop()


async def heap_during_push(port: int, key: bytes, data: bytes) -> tuple:
    """(idle mem_alloc, mem_peak, mem_free after) around one authenticated push and commit."""
    from mpota.client import Client

    async def status() -> dict:
        c = Client("127.0.0.1", port, key=key)
        await c.connect(authenticate=True)
        try:
            return await c.status()
        finally:
            await c.close()

    before = await status()
    await push_image("127.0.0.1", port, data, key=key, commit=True, timeout=60)
    after = await status()
    base = before.get("mem_base", 0)  # the firmware's and the simulator's share, not the agent's
    # mem_idle: sampled when the device was last quiet, before this connection loaded its modules
    return before["mem_idle"] - base, after["mem_peak"] - base, after["mem_free"]


# Where the memory figures come from: the board-faithful 32-bit v1.27 build at
# the board's 160K when this machine has it (CI does; a fresh clone may not),
# and the .venv 64-bit build at 256K, its counterpart (objects ~1.6x larger).
I386 = Path(boardbuilds.i386() or "/nonexistent/micropython-1.27-i386")
LIVE_IDLE, LIVE_PEAK, LEAN_IDLE = 24 * 1024, 40 * 1024, 8 * 1024  # issue 7 budgets, 32-bit


def memory_rows(work, body, heap):
    rows = [("unix 1.29 (64-bit)", str(Path(sys.executable).parent / "micropython"), "256K")]
    if I386.exists():
        rows.append(("v1.27 i386 (32-bit)", str(I386), heap))
    else:
        print("memory: no %s here: 64-bit figures only" % I386)
    print("\n%-26s %6s %14s %14s %14s" % ("memory (auth on)", "heap", "agent idle", "agent peak",
                                           "free after"))
    lean = work / "lean.json"
    lean.write_text('{"mode": "lean"}')
    for n, (label, mp, h) in enumerate(rows):
        for mode in ("live", "lean"):
            flags = ["--heap", h, "--micropython", mp] + (["--config", str(lean)] if mode == "lean" else [])
            sim = Sim(state=work / ("heap%d%s" % (n, mode)), ready=False, flags=flags)
            try:
                sim.wait_ready(90)
                idle, peak, free = asyncio.run(heap_during_push(sim.tcp_port, sim.key, bytes(
                    appimage.build_app_image(body, version="2.0.%d" % n))))
            finally:
                sim.stop()
            b32 = mp == str(I386)
            print("%-26s %6s %7d B%s %7d B%s %12d B" % (
                "%s, %s" % (label, mode), h,
                idle, " /%dK" % ((LIVE_IDLE if mode == "live" else LEAN_IDLE) // 1024) if b32 else "",
                peak, " /%dK" % (LIVE_PEAK // 1024) if b32 and mode == "live" else "", free))
    print("(lean: the peak is in update mode, where no app runs; the whole heap serves the transfer)")
    print("(agent = mem_alloc less mem_base, the heap in use before main.py; budgets are for 32-bit)")


def mac_cost(work, body, runs=3):
    """The session MACs' cost on the data path: the best of `runs` native pushes
    to a simulator without flash timing (so the agent's CPU time shows), auth
    off vs on, on every interpreter present."""
    rows = [("unix 1.29 (64-bit)", str(Path(sys.executable).parent / "micropython"))]
    if I386.exists():
        rows.append(("v1.27 i386 (32-bit)", str(I386)))
    print("\n%-20s %-10s %12s %12s %8s" % ("MAC cost (no flash", "timing)", "auth off", "auth on", "on/off"))
    n = 0
    for label, mp in rows:
        rates = []
        for flags in (["--no-auth"], []):
            sim = Sim(state=work / ("mac%d" % n), ready=False,
                      flags=flags + ["--flash-timing", "none", "--micropython", mp])
            try:
                sim.wait_ready(90)
                best = 0.0
                for _ in range(runs):
                    n += 1
                    data = bytes(appimage.build_app_image(body, version="3.0.%d" % n))
                    t0 = time.monotonic()
                    asyncio.run(push_image("127.0.0.1", sim.tcp_port, data, key=sim.key, commit=False,
                                           timeout=60))
                    best = max(best, len(data) / (time.monotonic() - t0))
                rates.append(best)
            finally:
                sim.stop()
        print("%-31s %12s %12s %7.0f%%" % (label, kbs(rates[0]), kbs(rates[1]), 100 * rates[1] / rates[0]))
    print("(best of %d pushes of the 256 KiB image each; auth on = authenticated session)" % runs)


async def legacy_via(port: int, data: bytes, chunk: int, rtt: float) -> float:
    relay = None
    if rtt:
        relay = UdpDelay(("127.0.0.1", port), rtt / 2, queue=UDP_QUEUE)
        port = await relay.start()
    try:
        return await asyncio.to_thread(legacy_push, "127.0.0.1", port, data, chunk)
    finally:
        if relay is not None:
            relay.close()


def kbs(rate: float) -> str:
    return "%.1f KB/s" % (rate / 1000)


def rtt_table(a, work: Path, body: bytes, tcp: int, udp: int, smp: int) -> None:
    """The three flows at each round trip, through delay lines with the board's
    TCP window (native) and UDP queue (legacy, SMP), against bound(rtt). The
    stop-and-wait flows move one chunk per round trip whatever the size, so they
    push a smaller image (--slow-kib) to keep the run short."""
    slow_body = body if a.slow_kib * 1024 == IMAGE_SIZE else make_body(work, a.slow_kib)
    print("%-7s %-38s %7s %11s %11s %9s" % ("rtt", "flow", "seconds", "throughput", "bound", "of bound"))
    n = 0
    for rtt_ms in a.rtt:
        rtt = rtt_ms / 1000
        lim = bound(rtt)
        n += 1
        data = bytes(appimage.build_app_image(make_body(work, tag="-%d" % n), version="1.0.%d" % n))
        native_s, window, busy, _ = asyncio.run(native_push(tcp, data, rtt))
        native = len(data) / native_s
        n += 1
        data = bytes(appimage.build_app_image(make_body(work, tag="-%d" % n), version="1.0.%d" % n))
        zip_s, _, zbusy, wire = asyncio.run(native_push(tcp, data, rtt, deflate=True))
        n += 1
        slow = bytes(appimage.build_app_image(slow_body, version="1.0.%d" % n))
        legacy = len(slow) / asyncio.run(legacy_via(udp, slow, a.chunk, rtt))
        n += 1
        slow = bytes(appimage.build_app_image(slow_body, version="1.0.%d" % n))
        smp_rate = bench_smp.smp_rate(smp, slow, rtt)
        rows = (("native TCP, %d B window (flash %.0f%%)" % (window, 100 * busy / native_s), native_s, native),
                ("  + deflate, %.0f%% on the wire (flash %.0f%%)%s" % (
                    100 * wire / len(data), 100 * zbusy / zip_s, " (auto: on)" if reuse_pays(rtt) else ""),
                 zip_s, len(data) / zip_s),
                ("legacy UDP, %d B stop-and-wait" % a.chunk, len(slow) / legacy, legacy),
                ("SMP UDP, smpclient", len(slow) / smp_rate, smp_rate))
        for i, (flow, secs, rate) in enumerate(rows):
            print("%-7s %-38s %7.2f %11s %11s %8.0f%%" % ("%g ms" % rtt_ms if i == 0 else "", flow, secs,
                                                          kbs(rate), kbs(lim) if i == 0 else "",
                                                          100 * rate / lim))
        print("%-7s %-38s %7s %10.1fx %10.1fx %8.2fx\n" % ("", "native / legacy, native / SMP, deflate", "",
                                                            native / legacy, native / smp_rate, native_s / zip_s))
    print("(bound = min(flash ceiling, %d B lwIP window / rtt); native pushes the %d KiB image, legacy and\n"
          " SMP a %d KiB one; the delay lines hold the board's %d B TCP window and %d-datagram UDP queue;\n"
          " flash = the share of the push the simulated flash spent erasing and programming: its timing\n"
          " (45 ms erase, 0.6 ms page) and littlefs' own blocks make ~70 KB/s the most the flash allows;\n"
          " + deflate: each sector deflated on the wire (client.squeeze); this image is random hex text,\n"
          " source code deflates to ~30%%; `mpota push` turns it on by itself above %.0f ms, where the\n"
          " window and not the flash is the limit, for an image that deflates by a tenth at least)\n"
          % (TCP_WINDOW, IMAGE_SIZE // 1024, a.slow_kib, TCP_WINDOW, UDP_QUEUE, 1000 * REUSE_RTT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk", type=int, default=1024, choices=(512, 1024),
                    help="legacy WriteRequest size (default 1024, the reference maximum)")
    ap.add_argument("--timing", default="w25q", choices=("w25q", "none"))
    ap.add_argument("--rtt", type=float, nargs="+", default=[0.0, 20.0, 50.0, 100.0, 200.0], metavar="MS",
                    help="round-trip times to add through delay lines (default 0 20 50 100 200; "
                         "Wi-Fi with power saving off is a few ms, with it ~200)")
    ap.add_argument("--slow-kib", type=int, default=64,
                    help="image size for the stop-and-wait flows (legacy, SMP; default 64 KiB)")
    ap.add_argument("--heap", default="160K",
                    help="heap of the 32-bit device for the memory figures (default 160K, a Pico W with Wi-Fi up)")
    ap.add_argument("--no-mac", dest="mac", action="store_false",
                    help="skip the auth off/on comparison of the data path")
    ap.add_argument("--parts", type=lambda v: v.split(","), default=PARTS,
                    help="comma-separated parts to run (default all: %s)" % ",".join(PARTS))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpota-bench-"))
    tcp, udp, smp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    sim = None
    try:
        body = make_body(work)
        sim = Sim(state=work / "device", tcp_port=tcp, udp_port=udp, ready=False,
                  flags=["--legacy-udp", "--smp-port", str(smp), "--no-auth", "--flash-timing", a.timing])
        sim.wait_ready(90)
        size = len(appimage.build_app_image(body, version="1.0.0"))
        print("bench: %d-byte (256 KiB body) application image; simulator with --flash-timing %s;"
              % (size, a.timing))
        print("       physical write ceiling %s (4 KiB erase + program in ~51 ms)\n" % kbs(CEILING))
        if "rtt" in a.parts:
            rtt_table(a, work, body, tcp, udp, smp)
        sim.stop()
        sim = None
        if "usb" in a.parts:  # USB (host/usb.py) on a simulator of its own with a pty console
            print(bench_usb.usb_row(work, bytes(appimage.build_app_image(body, version="1.9.0")), a.timing) + "\n")
        if "reuse" in a.parts:
            bench_loop.reuse_table(work, a.rtt)
        if "loop" in a.parts:
            bench_loop.loop_table(work)
        if "mac" in a.parts and a.mac:
            mac_cost(work, body)
        if "memory" not in a.parts:
            return 0
        memory_rows(work, body, a.heap)
        if I386.exists():
            share = bench_headroom.sim_share(work / "headroom", str(I386), a.heap)
            for mode in ("live", "lean"):
                print(bench_headroom.row(work / "headroom" / mode, str(I386), a.heap, mode, share), flush=True)
            print(bench_headroom.mqtt_row(work / "headroom" / "mqtt", str(I386), a.heap, share), flush=True)
        else:
            print("headroom: no 32-bit build here: the largest app heap is measured only there")
        smp_image = bytes(appimage.build_app_image(body, version="3.0.0"))
        i386 = boardbuilds.i386()
        for mp, heap in ((str(Path(sys.executable).parent / "micropython"), "256K"),) + (
                ((i386, a.heap),) if i386 else ()):
            print(bench_smp.heap_figures(smp_image, work / ("smp-" + heap), heap, mp)["line"])
        return 0
    except Exception as e:
        print("bench: FAILED: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        if sim is not None:
            print(sim.tail(), file=sys.stderr)
        return 1
    finally:
        if sim is not None:
            sim.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
