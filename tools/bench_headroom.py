#!/usr/bin/env python3
"""The largest application heap that still updates (docs/memory.md).

An application that holds N KiB in 1 KiB objects is installed, then updated
with a 256 KiB image, then asked for `status`, all through the same
`mpota.push.push()` the CLI runs (auth on; lean mode follows the restart into
update mode by itself). The largest N for which every step answers, with no
`no_memory`, is found by bisection in 4 KiB steps.

The simulator's own objects (its flash model, the boot handoff) sit in the
same heap before main.py; they are not the board's, so the simulator runs
with the given heap PLUS its own share (`mem_base`, measured first): the app
and the agent together get the board's figure.

    python tools/bench_headroom.py [--micropython PATH] [--heap 160K] [--mode live|lean]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in ("shared", "tools"):
    sys.path.insert(0, str(REPO / _p))

from mpota.errors import MpotaError  # noqa: E402  (host/, installed editable by make setup)
from mpota.images import Image  # noqa: E402
from mpota.push import push  # noqa: E402
from mpota.targets import Target  # noqa: E402
from devconn import DevConn, app_image  # noqa: E402
from simproc import Sim  # noqa: E402
import boardbuilds  # noqa: E402

# The app takes its heap in main() (a sync main that returns: the objects stay
# in a module global), as an app that fills a buffer pool at start would.
APP = """NAME = "hog"
HOLD = []


def main():
    for _ in range(%d):
        HOLD.append(bytearray(1024))
"""
IMAGE = 256 * 1024
# the filler: the images come to ~272 KB, two of which fit the 848 KiB filesystem beside the
# agent's files and the metadata of the slots' sector files (two of 288 KB no longer do)
PAD = IMAGE - 24 * 1024
VERBOSE = False  # --verbose: the device's output after a failed attempt
SIGN_KEY = None  # --signed: LAN images signed with this key file, which the board trusts (as MQTT's must be)


def _kib(s: str) -> int:
    return int(s[:-1]) * 1024 if s.upper().endswith("K") else int(s)


def sim_share(work: Path, mp: str, heap: str) -> int:
    """mem_base of an idle simulator: the heap in use before main.py."""
    with Sim(state=work / "base", flags=["--heap", heap, "--micropython", mp]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        try:
            return c.ok("status")["mem_base"]
        finally:
            c.close()


def attempt(work: Path, mp: str, heap: int, mode: str, kib: int, rig=None) -> str | None:
    """None when an app holding `kib` KiB installs, updates and answers status; else why not.
    `rig` (tools/bench_mqtt_board.Rig): the board listens on nothing and every step goes through
    the broker: install commands pulled over HTTP, confirm commands, the retained state."""
    d = work / ("%s-%d" % (mode, kib))
    d.mkdir(parents=True)
    cfg = d / "mpota.json"
    cfg.write_text('{"mode": "%s"}' % mode)
    images = []
    for n in (1, 2):
        img = app_image(d, "v%d" % n, APP % kib, "1.0.%d" % n, pad=PAD, key=rig.key if rig else SIGN_KEY)
        images.append(Image(data=bytes(img), version="1.0.%d" % n, source=str(d)))
    flags = ["--heap", str(heap), "--micropython", mp, "--config", str(cfg)]
    if SIGN_KEY and rig is None:
        flags += ["--trust", str(SIGN_KEY)]
    if rig is not None:
        with Sim(state=d / "dev", flags=flags + rig.flags() + ["--no-listen"]) as sim:
            try:
                why = _via_mqtt(rig, sim.device_id, images)
            except TimeoutError as e:
                why = str(e)
            if why and VERBOSE:
                print(sim.output[-3000:], file=sys.stderr)
            return why
    with Sim(state=d / "dev", flags=flags) as sim:
        t = Target(name="sim", host="127.0.0.1", port=sim.tcp_port, key=sim.key)
        try:
            for img in images:
                asyncio.run(push(t, img, wait=60))
            c = DevConn(sim.tcp_port, sim.key)
            try:
                st = c.req("status")
            finally:
                c.close()
        except (MpotaError, OSError, AssertionError, EOFError) as e:
            if VERBOSE:
                print(sim.output[-3000:], file=sys.stderr)
            return "%s: %s" % (type(e).__name__, e)
        if not st.get("ok"):
            return "status: %s" % st.get("error")
        if (st.get("app") or {}).get("state") not in ("running", "stopped"):  # main() returned: stopped
            return "app %s" % st.get("app")
        return None


def _via_mqtt(rig, dev: str, images: list) -> str | None:
    for img in images:
        e = rig.install(dev, img.data, img.version, timeout=60)
        if e["event"] != "installed":
            return "install: %s" % e
        rig.state(dev, lambda s, seq=e["seq"]: s.get("trial") and s.get("cmd_seq") == seq)  # rebooted: the trial
        e = rig.outcome(rig.command(dev, "confirm"), ("confirmed",), timeout=60)
        if e["event"] != "confirmed":
            return "confirm: %s" % e
    st = rig.state(dev, lambda s: s.get("cmd_result") == "confirmed", 30)
    if (st.get("app") or {}).get("state") not in ("running", "stopped"):
        return "app %s" % st.get("app")
    return None


def largest(work: Path, mp: str, heap: int, mode: str, lo: int = 32, hi: int = 160, rig=None) -> tuple:
    """(largest KiB that worked or None, why the next step up failed)."""
    r = attempt(work, mp, heap, mode, lo, rig)
    if r is not None:
        return None, r
    good, why = lo, "not tried"
    while hi - good > 4:
        mid = (good + hi) // 2 // 4 * 4
        r = attempt(work, mp, heap, mode, mid, rig)
        if r is None:
            good = mid
        else:
            hi, why = mid, r
    return good, why


def row(work: Path, mp: str, heap: str, mode: str, share: int, rig=None) -> str:
    """The bench line for one mode; `share` is sim_share() of this interpreter and heap."""
    kib, why = largest(work, mp, _kib(heap) + share, mode, rig=rig)
    return ("largest app heap that still updates (%s, %s%s, %s + the simulator's %d B): %s KiB of %s "
            "(budget 128 KiB)%s" % (Path(mp).name, mode, ", via MQTT" if rig else ", signed" if SIGN_KEY else "",
                                   heap, share, kib, heap,
                                   "" if kib is None or kib >= 128 else "; above it: " + why[:160]))


def mqtt_row(work: Path, mp: str, heap: str, share: int, mode: str = "live") -> str:
    """row() with MQTT on: a private broker, every update pulled through it (docs/mqtt.md)."""
    from bench_mqtt_board import Rig
    from mpota import keys

    work.mkdir(parents=True, exist_ok=True)
    keys.keygen(work / "key.pem")
    rig = Rig(work, work / "key.pem")
    try:
        return row(work / mode, mp, heap, mode, share, rig)
    finally:
        rig.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--micropython", default=boardbuilds.i386() or str(Path(sys.executable).parent / "micropython"))
    ap.add_argument("--heap", default="160K")
    ap.add_argument("--mode", choices=("live", "lean"), nargs="+", default=["lean", "live"])
    ap.add_argument("--signed", action="store_true", help="LAN: signed images, a board that trusts their key")
    ap.add_argument("--via", choices=("lan", "mqtt"), default="lan",
                    help="mqtt: the board runs MQTT, listens on nothing, and pulls each update (docs/mqtt.md)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpota-headroom-"))
    share = sim_share(work, a.micropython, a.heap)
    if a.signed:
        from mpota import keys

        global SIGN_KEY
        SIGN_KEY = work / "lan-key.pem"
        keys.keygen(SIGN_KEY)
    for mode in a.mode:
        if a.via == "mqtt":
            print(mqtt_row(work / ("mqtt-" + mode), a.micropython, a.heap, share, mode), flush=True)
        else:
            print(row(work / mode, a.micropython, a.heap, mode, share), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
