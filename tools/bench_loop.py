#!/usr/bin/env python3
"""The loop a developer feels: `mpota push FOLDER` until "confirmed", per stage.

    python tools/bench_loop.py [--rtt MS]

One simulated board (--wifi, --flash-timing w25q, authenticated) behind a
delay line with the board's TCP window (tools/linkproxy.py) is pushed, with
the host library's own flow (images.load, push.push: what `mpota push` runs):
a 20 KiB app, a 256 KiB app, the 256 KiB app after a one-file change while the
target slot holds another app, and after one more change to the same file (the
target slot then holds the previous build: the steady state of an edit loop).
Each push is split into stages from the host's events and the times the
simulator printed its lines: build (the image from the folder), transfer
(status, sectors, begin, DATA), commit (hash and check on the device), reset
(until the simulator boots again), boot (until the Wi-Fi link task starts),
Wi-Fi join, trial (until the host sees the app settled on trial) and confirm.
Figures only: nothing here asserts on time. `make bench` prints the table
(tools/bench.py calls loop_table).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in ("shared", "tools"):
    if str(REPO / _p) not in sys.path:
        sys.path.insert(0, str(REPO / _p))

from mpota import images  # noqa: E402
from mpota.push import push  # noqa: E402
from mpota.targets import Target  # noqa: E402
from linkproxy import LinkProxy  # noqa: E402
from simproc import Sim  # noqa: E402

TCP_WINDOW = 6400  # the board's lwIP window (tools/bench.py)
STAGES = ("build", "transfer", "commit", "reset", "boot", "wifi join", "trial", "confirm")


def make_app(root: Path, kib: int) -> Path:
    """An app folder of about `kib` KiB: examples/hello plus modules of incompressible data."""
    shutil.copytree(REPO / "examples" / "hello", root)
    n = max(1, kib // 16 - 1)  # modules of 4 littlefs blocks each, beside hello and the metadata
    for i in range(n):
        (root / ("data%02d.py" % i)).write_text("D = %r\n" % os.urandom(min(8000, kib * 512 // (n + 1))).hex())
    return root


def edit(root: Path, k: int) -> None:
    """A one-file change: module data01 (or data00) edited in place, same length."""
    m = root / "data01.py" if (root / "data01.py").exists() else root / "data00.py"
    text = m.read_text()
    m.write_text("D = %r\n" % ("%04x" % k + text[9:-2]))


class Clock:
    """When each host event and each simulator line first came."""

    def __init__(self, sim: Sim):
        self.sim = sim
        self.events: dict = {}
        self.sent = 0

    def on_event(self, name: str, **f) -> None:
        self.events.setdefault(name, time.monotonic())

    def line(self, text: str, since: int) -> float:
        """Arrival time of the first simulator line from index `since` holding `text`."""
        self.sim.wait_for_line(text, 60, since)
        with self.sim._cond:
            for i in range(since, len(self.sim.lines)):
                if text in self.sim.lines[i]:
                    return self.sim.times[i]
        raise AssertionError(text)


def one_push(sim: Sim, port: int, folder: Path, version: str) -> tuple:
    """({stage: seconds}, bytes sent, image size) of `mpota push folder` to confirmed."""
    clock = Clock(sim)
    mark = sim.mark()
    t0 = time.monotonic()
    img = images.load(str(folder), version)
    t_build = time.monotonic()
    target = Target("bench", "127.0.0.1", port, key=sim.key)
    rep = asyncio.run(push(target, img, wait=60, on_event=clock.on_event))
    assert rep.state == "confirmed", rep
    ev = clock.events
    t_boot = clock.line("sim: boot #", mark)
    t_wifi0 = clock.line("mpota: wifi", mark)  # the link task's first word: the join starts
    t_wifi = clock.line("mpota: wifi up", mark)
    t = {"build": t_build - t0, "transfer": ev["uploaded"] - t_build, "commit": ev["committed"] - ev["uploaded"],
         "reset": t_boot - ev["committed"], "boot": t_wifi0 - t_boot, "wifi join": t_wifi - t_wifi0,
         "trial": ev["booted"] - t_wifi, "confirm": ev["done"] - ev["booted"]}
    return t, rep.upload.bytes_sent, img.size


async def _proxy(port: int, rtt: float):
    return await LinkProxy("127.0.0.1", port, delay=rtt / 2, window=TCP_WINDOW).start()


async def _upload(port: int, rtt: float, data: bytes, key: bytes, reuse: bool) -> tuple:
    """(seconds, DATA bytes sent) of one upload (no commit) through a delay line."""
    from mpota.push import push_image
    px = await _proxy(port, rtt) if rtt else None
    try:
        t0 = time.monotonic()
        r = await push_image("127.0.0.1", px.port if px else port, data, key=key, commit=False, reuse=reuse)
        return time.monotonic() - t0, r.bytes_sent
    finally:
        if px is not None:
            await px.stop()


def reuse_table(work: Path, rtts: list, micropython: str | None = None) -> list:
    """A one-file change of the 256 KiB app that runs, sent with reuse (only the
    sectors that differ from what the target slot holds: the full upload just
    made of the same files) against that full upload, at each round trip (ms)
    through the window-limited delay line.
    Prints the table; -> its rows (rtt, full s, reuse s, full bytes, sent bytes)."""
    flags = ["--wifi", "--flash-timing", "w25q"] + (["--micropython", micropython] if micropython else [])
    app = make_app(work / "reuseapp", 256)
    rows = []
    with Sim(state=work / "reusedev", flags=flags, timeout=90) as sim:
        one_push(sim, sim.tcp_port, app, "1.0.0")  # runs and is confirmed: the sectors to copy
        for n, rtt_ms in enumerate(rtts):
            edit(app, n + 1)
            img = images.load(str(app), "1.1.%d" % n).data
            full_s, full_b = asyncio.run(_upload(sim.tcp_port, rtt_ms / 1000, img, sim.key, False))
            img = images.load(str(app), "1.2.%d" % n).data  # the same files, a new sha: no resume
            reuse_s, sent = asyncio.run(_upload(sim.tcp_port, rtt_ms / 1000, img, sim.key, True))
            rows.append((rtt_ms, full_s, reuse_s, full_b, sent))
    print("send only what changed: a one-file change of a %d KiB app, vs a full upload of it (w25q flash)"
          % (len(img) // 1024))
    print("%-7s %10s %10s %14s %9s" % ("rtt", "full s", "reuse s", "sent", "time"))
    for rtt_ms, full_s, reuse_s, full_b, sent in rows:
        print("%-7s %10.2f %10.2f %6d/%-7d %8.0f%%" % ("%g ms" % rtt_ms, full_s, reuse_s, sent, full_b,
                                                    100 * reuse_s / full_s))
    print("(the target slot holds the full upload's build: only the sectors that differ are sent and\n"
          " written; the others stay in their files, one per 4 KiB sector: device/mpota_slotio.py)\n")
    return rows


def loop_table(work: Path, rtt_ms: float = 20.0, micropython: str | None = None) -> list:
    """Print the edit-to-confirmed table; -> its rows (name, {stage: s}, sent, size)."""
    flags = ["--wifi", "--flash-timing", "w25q"] + (["--micropython", micropython] if micropython else [])
    small = make_app(work / "app20", 20)
    big = make_app(work / "app256", 256)
    rows = []
    sim = Sim(state=work / "loopdev", flags=flags, ready=False)
    loop = asyncio.new_event_loop()
    px = None
    try:
        sim.wait_ready(90)
        port = sim.tcp_port
        if rtt_ms:
            import threading
            threading.Thread(target=loop.run_forever, daemon=True).start()
            px = asyncio.run_coroutine_threadsafe(_proxy(sim.tcp_port, rtt_ms / 1000), loop).result(10)
            port = px.port
        cases = (("20 KiB app", small, "1.0.0", None), ("256 KiB app", big, "2.0.0", None),
                 ("256 KiB, 1 file changed (slot: other app)", big, "2.0.1", 1),
                 ("256 KiB, 1 file changed (slot: last build)", big, "2.0.2", 2))
        for name, folder, version, k in cases:
            if k is not None:
                edit(folder, k)
            t, sent, size = one_push(sim, port, folder, version)
            rows.append((name, t, sent, size))
    finally:
        if px is not None:
            asyncio.run_coroutine_threadsafe(px.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        sim.stop()
    print("edit-to-confirmed: mpota push FOLDER on a simulated board (--wifi, w25q flash, auth), "
          "rtt %g ms, %d B TCP window" % (rtt_ms, TCP_WINDOW))
    print("%-42s %7s %9s  %s" % ("case", "seconds", "sent KiB", "  ".join("%9s" % s for s in STAGES)))
    for name, t, sent, size in rows:
        total = sum(t.values())
        print("%-42s %7.2f %4d/%-4d  %s" % (name, total, sent // 1024, size // 1024,
                                          "  ".join("%8.0f%%" % (100 * t[s] / total) for s in STAGES)))
    print("(stage shares of the total; sent = DATA bytes sent of the image's size)\n")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", type=float, default=20.0, help="round trip in ms through the delay line (default 20)")
    ap.add_argument("--micropython", help="the simulator's interpreter (default the .venv unix port)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpota-loop-"))
    try:
        loop_table(work, a.rtt, a.micropython)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
