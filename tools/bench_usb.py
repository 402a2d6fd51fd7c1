#!/usr/bin/env python3
"""The USB push rate (`make bench` prints it; tools/bench.py calls usb_row()).

A simulated board with a console on a pty (tools/sim.py --usb) and the
flash timing slept (--flash-timing w25q) takes an application image through
the USB transport (host/usb.py: mpremote's raw REPL, base64 snippets of
usb.CHUNK bytes, served by the agent's dispatcher); the row shows the rate
against the physical write ceiling. A pty has no USB framing: on a board
the full-speed CDC link (~1 MB/s raw, base64 costs a third) and the
compile of each snippet add to it. Figures only: nothing here asserts.

    python tools/bench_usb.py [--size BYTES] [--timing w25q|none]
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
sys.path.insert(0, str(REPO / "tools"))

from mpota import images as appimage  # noqa: E402
from mpota import usb  # noqa: E402
from mpota.push import push_image  # noqa: E402
from simproc import Sim  # noqa: E402

CEILING = 4096 / 0.051  # bytes/s: as tools/bench.py (a 4 KiB erase + program in ~51 ms)


def usb_rate(work: Path, data: bytes, timing: str = "w25q") -> float:
    """Bytes per second of one USB upload and commit of `data` (an image)."""
    sim = Sim(state=work / "usb-device", flags=["--usb", "--no-auth", "--flash-timing", timing], ready=False)
    try:
        sim.wait_ready(90)
        port = "usb:" + (sim.state / "usb").read_text().strip()
        t0 = time.monotonic()
        res = asyncio.run(push_image(port, 0, data, commit=True, timeout=60))
        secs = time.monotonic() - t0
        assert res.size == len(data)
        return len(data) / secs
    finally:
        usb.release_all()
        sim.stop()


def usb_row(work: Path, data: bytes, timing: str = "w25q") -> str:
    rate = usb_rate(work, data, timing)
    return "%-7s %-33s %7.2f %11s %7.0f%%" % ("usb", "USB raw REPL, %d B snippets" % usb.CHUNK, len(data) / rate,
                                             "%.1f KB/s" % (rate / 1000), 100 * rate / CEILING)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256 * 1024, help="application body bytes (default 256 KiB)")
    ap.add_argument("--timing", default="w25q", choices=("w25q", "none"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpota-bench-usb-"))
    try:
        (work / "app").mkdir()
        (work / "app" / "main.py").write_text("def main():\n    pass\n")
        (work / "app" / "blob.py").write_text("DATA = %r\n" % os.urandom(a.size // 2).hex())
        data = bytes(appimage.build_app_image(work / "app", version="1.0.0"))
        print("bench: %d-byte image over USB (sim --usb, --flash-timing %s); ceiling %.1f KB/s"
              % (len(data), a.timing, CEILING / 1000))
        print(usb_row(work, data, a.timing))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
