"""What every part of the torture harness (tools/torture.py) shares: the
import path, the test images, the checks of a status reply and of the slots'
bytes, connecting to and rebooting the simulator, and the traceback
signatures of its output. The parts import this; it imports none of them."""
from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
for _sub in ("tools", "shared"):  # the host tool is the package `mpota` (make setup)
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from mpota.codec import mpota_hostframes as hostframes  # noqa: E402
from mpota.codec import mpota_lineproto as lineproto  # noqa: E402
from mpota.codec import mpota_proto as proto  # noqa: E402
from devconn import DevConn, app_image  # noqa: E402
from simproc import Sim, SimError  # noqa: E402


def say(msg: str) -> None:
    print(msg, flush=True)


# -- images and device checks ------------------------------------------------------

def _app_src(name: str) -> str:
    # never confirms itself: the harness decides every state change
    return "NAME = %r\ndef main():\n    print('app: %s up')\n" % (name, name)


@dataclass
class Image:
    name: str
    version: str
    data: bytes

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def make_image(work: Path, name: str, version: str, pad: int, rng: random.Random) -> Image:
    return Image(name, version, app_image(work / "img", name, _app_src(name), version, pad=pad, rng=rng))


def read_slot(c: DevConn, slot: str, size: int) -> bytes:
    """The first `size` bytes of a slot, read back with binary READ frames."""
    out = bytearray()
    while len(out) < size:
        n = min(lineproto.MAX_DATA, size - len(out))
        c.send(hostframes.encode_read(slot, len(out), n))
        f = c.frame()
        if f[1] != proto.OP_READ_DATA:
            raise AssertionError("READ of slot %s at %d refused: %r" % (slot, len(out), hostframes.parse_nerror(f)))
        off, _crc, data = hostframes.parse_read_data(f)
        assert off == len(out), (off, len(out))
        out += data
    return bytes(out)


GOOD = ("complete", "pending", "trial", "confirmed")
STATES = ("empty", "writing") + GOOD + ("bad",)


def record_violations(st: dict, c: Optional[DevConn], known: dict) -> list:
    """What is wrong with a status reply's record: pointers that disagree with
    slot states, trial counts out of range, and (with a connection) slots
    claimed good whose bytes do not hash to an image that was pushed."""
    bad = []
    slots = st["slots"]
    for name in ("a", "b"):
        s = slots[name]
        if s["state"] not in STATES:
            bad.append("slot %s: unknown state %r" % (name, s["state"]))
        if s["state"] == "empty" and (s["size"] or s["sha256"]):
            bad.append("slot %s: empty but size %s sha %s" % (name, s["size"], s["sha256"]))
        if s["state"] in GOOD:
            img = known.get(s["sha256"])
            if img is None:
                bad.append("slot %s is %s with sha256 %s: no image pushed has it"
                           % (name, s["state"], s["sha256"]))
            elif s["size"] != len(img.data) or (s["version"] not in (None, img.version)):
                bad.append("slot %s: size %s version %s, pushed %d %s"
                           % (name, s["size"], s["version"], len(img.data), img.version))
            elif c is not None:
                got = hashlib.sha256(read_slot(c, name, s["size"])).hexdigest()
                if got != s["sha256"]:
                    bad.append("slot %s is %s but its bytes hash to %s, not %s"
                               % (name, s["state"], got, s["sha256"]))
    for ptr, want in (("active", ("confirmed",)), ("pending", ("pending",))):
        v = st[ptr]
        if v is not None and slots[v]["state"] not in want:
            bad.append("%s=%s but that slot is %s" % (ptr, v, slots[v]["state"]))
    run = st["running"]
    if st["trial"]:
        if run is None or slots[run]["state"] != "trial":
            bad.append("trial, but the running slot %s is not on trial" % run)
        if not 1 <= st["trial_count"] <= st["max_trials"]:
            bad.append("trial_count %s outside 1..%s" % (st["trial_count"], st["max_trials"]))
    else:
        if st["trial_count"]:
            bad.append("no trial but trial_count %s" % st["trial_count"])
        if run is not None and run != st["active"]:
            bad.append("running %s is neither on trial nor the active slot %s" % (run, st["active"]))
    for name in ("a", "b"):
        if slots[name]["state"] == "trial" and not (st["trial"] and run == name):
            bad.append("slot %s is marked trial but is not the running trial" % name)
    if run is not None:
        img = known.get(slots[run]["sha256"])
        if img is not None and st["app"]["name"] != img.name:
            bad.append("slot %s runs app %r, its image is %r" % (run, st["app"]["name"], img.name))
        if st["app"]["state"] == "crashed":
            bad.append("the app crashed: %s" % st["app"]["error"])
    elif st["app"]["state"] != "none":
        bad.append("no slot runs but app state is %s" % st["app"]["state"])
    return bad


def wait_conn(sim: Sim, key: Optional[bytes] = None, tries: int = 50) -> DevConn:
    """A connection once the device listens (it may still be starting)."""
    last: Exception = OSError("no try")
    for _ in range(tries):
        try:
            return DevConn(sim.tcp_port, key, timeout=10)
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise SimError("device not reachable on port %d: %s\n%s" % (sim.tcp_port, last, sim.tail()))


def reboot(sim: Sim, c: DevConn, key: Optional[bytes] = None) -> DevConn:
    """`reset` now; a new connection once the device is ready again."""
    mark = sim.mark()
    c.ok("reset", delay_ms=0)
    c.close()
    sim.wait_for_line("mpota: ready", timeout=60, since=mark)
    return wait_conn(sim, key)


def install(sim: Sim, imgs, key: Optional[bytes] = None) -> DevConn:
    """Push, boot and confirm each image in turn; returns the open connection."""
    c = wait_conn(sim, key)
    for img in imgs:
        c.push(img.data, img.version)
        c = reboot(sim, c, key)
        c.ok("confirm")
    return c


def tracebacks(lines: list) -> list:
    """One signature per traceback in `lines`: its innermost frame and the exception line."""
    out = []
    for i, ln in enumerate(lines):
        if ln.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and lines[j].startswith("  "):
                j += 1
            where = lines[j - 1].strip() if j - 1 > i else "?"
            out.append("%s: %s" % (where, lines[j] if j < len(lines) else "?"))
    return out
