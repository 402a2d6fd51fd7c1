#!/usr/bin/env python3
"""The torture harness: power cuts, a hostile link, live fuzzing and racing
operators against tools/sim.py on loopback. Bounded in time and count; prints
figures; exits 1 on any violation.

    python tools/torture.py                      # everything, full counts (make torture)
    python tools/torture.py --parts cuts --cuts 40 --seed 7
    python tools/torture.py --parts link --updates 5
    python tools/torture.py --parts fuzz --fuzz 20000
    python tools/torture.py --parts race --races 3

--seed replays a run: cut points, fuzz messages, link faults and images all
come from it (the seed is printed first). tests/test_torture.py runs a short
version of each part.

Parts:
  cuts  power cuts (tools/sim.py --power-cut-after) spread over every state
        transition: upload, commit, pending->trial at boot, trial count
        increments, confirm, rollback after failed trials, manual rollback,
        erase, the legacy update, provisioning (format + deploy + first boot
        of a fresh flash). After each cut the device boots and is checked:
        the right image runs, the state record is consistent, every slot
        claimed good hashes (read back) to an image that was pushed, and the
        next update (push, commit, reset, trial boot) succeeds.
  link  updates through a hostile tools/linkproxy.py (segment loss as 200 ms
        stalls, DATA frames duplicated and reordered, forced disconnects),
        each committed (the device checks SHA-256), against a clean link.
  fuzz  mutated binary frames and JSON lines, unauthenticated and
        authenticated, at a board-like heap; no crash, no hang, no state or
        flash change from unauthenticated input, ping answered after every batch.
  race  4 operators racing to push (one wins, the rest get busy then succeed),
        a push racing a rollback, a reset racing a commit.
"""
from __future__ import annotations

import argparse
import asyncio
import binascii
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
for _sub in ("tools", "shared"):  # the host tool is the package `mpota` (make setup)
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from mpota.codec import bootloader_messages as bm  # noqa: E402
from mpota.codec import mpota_hostframes as hostframes  # noqa: E402
from mpota.codec import mpota_lineproto as lineproto  # noqa: E402
from mpota.codec import mpota_proto as proto  # noqa: E402
from devconn import DevConn, app_image  # noqa: E402
from simproc import Sim, SimError  # noqa: E402

I386 = Path("/work/shared/tools/micropython-1.27-i386")
if not I386.exists():
    I386 = REPO.parent / "shared" / "tools" / "micropython-1.27-i386"


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


# -- part 1: power cuts ---------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    base: str                       # prepared state to start from ("" = a fresh flash)
    action: Callable                # action(conn) -> True when the final reply came back
    classify: Callable              # classify(st, imgs) -> "old" | "new" | violation text
    weight: int = 1
    from_power_on: bool = False
    lo: int = 0                     # flash ops measured: cut points are lo..hi-1
    hi: int = 0
    deployed_at: int = 0            # provisioning: ops at which main.py starts


def _legacy_push(c: DevConn, img: Image) -> bool:
    def xfer(frame):
        c.send(frame)
        return c.frame()
    bm.UpdateStartResponse.extract(xfer(bm.UpdateStartRequest.make(len(img.data))))
    for i in range(0, len(img.data), 1024):
        bm.WriteResponse.extract(xfer(bm.WriteRequest.make(img.data[i:i + 1024])))
    r = bm.UpdateStopResponse.extract(xfer(bm.UpdateStopRequest.make(binascii.crc32(img.data))))
    return r is not None


class PowerCuts:
    """Prepared states in `work`, scenarios measured once, then cut after cut."""

    def __init__(self, work: Path, rng: random.Random, verbose: bool = False):
        self.work = work
        self.rng = rng
        self.verbose = verbose
        self.v1 = make_image(work, "v1", "1.0.0+0", 0, rng)
        self.v2 = make_image(work, "v2", "2.0.0+0", 20000, rng)
        self.v3 = make_image(work, "v3", "3.0.0+0", 0, rng)
        self.known = {i.sha: i for i in (self.v1, self.v2, self.v3)}
        self.bases: dict = {}
        self.flags = ["--no-auth", "--flash-timing", "none"]
        self.counts = {"old": 0, "new": 0}
        self.per: dict = {}
        self.violations: list = []
        self.scenarios = self._scenarios()

    # -- prepared states -------------------------------------------------------
    def _sim(self, state: Path, extra=(), ready=True) -> Sim:
        return Sim(state=state, flags=self.flags + list(extra), ready=ready)

    def prepare(self) -> None:
        w = self.work / "bases"
        w.mkdir(parents=True, exist_ok=True)

        def snap(name, sim_state):
            shutil.copytree(sim_state, w / name)
            self.bases[name] = w / name

        st = w / "_build"
        with self._sim(st) as sim:
            install(sim, [self.v1]).close()
        snap("v1", st)                       # a: v1 confirmed, running
        with self._sim(st) as sim:
            c = wait_conn(sim)
            c.push(self.v2.data, self.v2.version)
            c.close()
        snap("v2pending", st)                # + b: v2 pending
        with self._sim(st) as sim:           # this power-on boots b: trial 1
            wait_conn(sim).close()
        snap("v2trial1", st)
        with self._sim(st) as sim:           # trial 2, then a reset: trial 3
            reboot(sim, wait_conn(sim)).close()
        snap("v2trial3", st)
        with self._sim(st) as sim:           # 3 unconfirmed trials: rolled back to a, b bad
            c = wait_conn(sim)
            assert c.ok("status")["slots"]["b"]["state"] == "bad"
            c.close()
        snap("v2bad", st)
        shutil.rmtree(st)
        shutil.copytree(self.bases["v2trial1"], st)
        with self._sim(st) as sim:           # b confirmed and running, a confirmed too
            c = wait_conn(sim)
            c.ok("confirm")
            c.close()
        snap("v2conf", st)
        shutil.rmtree(st)

    # -- scenarios -------------------------------------------------------------
    def _scenarios(self) -> list:
        v1, v2 = self.v1, self.v2

        def push_v2(c):
            return c.push(v2.data, v2.version)["state"] == "pending"

        def boot_only(c):
            return True

        def op(name, **kw):
            return lambda c: bool(c.ok(name, **kw))

        def upgrade(st, imgs):
            # old: v1 runs confirmed, v2 nowhere bootable; new: v2 pending or on trial
            sa, sb = st["slots"]["a"], st["slots"]["b"]
            if sa["sha256"] != v1.sha or sa["state"] != "confirmed" or st["active"] != "a":
                return "v1 is no longer the confirmed image in a"
            if sb["state"] in ("pending", "trial") and sb["sha256"] == v2.sha:
                return "new"
            if st["running"] == "a" and st["pending"] is None and sb["state"] in ("empty", "writing"):
                return "old"
            return "neither v1 alone nor v2 on its way"

        def on_trial(lo, hi):
            def cls(st, imgs):
                if st["running"] != "b" or not st["trial"] or st["slots"]["b"]["sha256"] != v2.sha:
                    return "v2 is not running on trial"
                if st["slots"]["a"]["state"] != "confirmed":
                    return "the fallback a is not confirmed"
                if not lo <= st["trial_count"] <= hi:
                    return "trial_count %d outside %d..%d" % (st["trial_count"], lo, hi)
                return "old" if st["trial_count"] == lo else "new"
            return cls

        def rolled_back(st, imgs):
            if st["running"] == "a" and st["active"] == "a" and st["slots"]["b"]["state"] == "bad":
                return "new"
            return "not rolled back to a"

        def confirm_cls(st, imgs):
            if st["running"] != "b":
                return "b does not run"
            if st["active"] == "b" and not st["trial"]:
                return "new"
            return "old" if st["trial"] and st["trial_count"] == 3 else "neither confirmed nor trial 3"

        def rollback_cls(from_trial):
            def cls(st, imgs):
                if st["running"] == "a" and st["active"] == "a" and st["slots"]["b"]["state"] == "bad":
                    return "new"
                if st["running"] == "b" and (st["trial"] if from_trial else st["active"] == "b"):
                    return "old"
                return "neither rolled back nor still on b"
            return cls

        def erase_cls(slot, before, run):
            def cls(st, imgs):
                if st["running"] != run:
                    return "slot %s does not run" % run
                s = st["slots"][slot]["state"]
                return "new" if s == "empty" else "old" if s == before else "slot %s is %s" % (slot, s)
            return cls

        def provision_cls(st, imgs):
            if st["running"] is None and st["active"] is None and st["pending"] is None:
                return "new"
            return "a fresh device claims an application"

        return [
            Scenario("upload", "v1", push_v2, upgrade, weight=5),
            Scenario("commit", "v1", push_v2, upgrade, weight=2),
            Scenario("legacy", "v1", lambda c: _legacy_push(c, v2), upgrade, weight=4),
            Scenario("pending->trial", "v2pending", boot_only, on_trial(1, 2)),
            Scenario("trial-count", "v2trial1", boot_only, on_trial(2, 3)),
            Scenario("confirm", "v2trial1", op("confirm"), confirm_cls),
            Scenario("rollback-trials", "v2trial3", boot_only, rolled_back),
            Scenario("rollback-op", "v2trial1", op("rollback"), rollback_cls(True)),
            Scenario("rollback-confirmed", "v2conf", op("rollback"), rollback_cls(False)),
            Scenario("erase-bad", "v2bad", op("erase", slot="b"), erase_cls("b", "bad", "a")),
            Scenario("erase-confirmed", "v2conf", op("erase", slot="a"), erase_cls("a", "confirmed", "b")),
            Scenario("provision", "", boot_only, provision_cls, weight=3, from_power_on=True),
            Scenario("first-boot", "", boot_only, provision_cls, from_power_on=True),
        ]

    def _state_from(self, sc: Scenario, name: str) -> Path:
        d = self.work / "cut" / name
        shutil.rmtree(d, ignore_errors=True)
        if sc.base:
            shutil.copytree(self.bases[sc.base], d)
        else:
            d.mkdir(parents=True)
        return d

    def measure(self) -> None:
        """Flash ops of each scenario's action: lo = after the boot, hi = after the action."""
        for sc in self.scenarios:
            if sc.name == "first-boot":
                continue  # the tail of provision's range
            d = self._state_from(sc, "measure-" + sc.name)
            extra = ["--power-cut-after", "1000000", "--cut-from", "power-on"] if sc.from_power_on else []
            with self._sim(d, extra) as sim:
                if sc.from_power_on:
                    line = sim.wait_for_line("main.py starts after", timeout=30)
                    sc.deployed_at = int(line.split("after ")[1].split()[0])
                c = wait_conn(sim)
                lo = c.ok("status")["sim_flash"]["ops"]
                assert sc.action(c), sc.name
                hi = c.ok("status")["sim_flash"]["ops"]
                c.close()
            shutil.rmtree(d)
            if sc.action.__name__ == "boot_only":
                lo, hi = 0, lo  # the boot itself is the transition
            sc.lo, sc.hi = lo, hi
        up = next(s for s in self.scenarios if s.name == "upload")
        cm = next(s for s in self.scenarios if s.name == "commit")
        # the commit: from the last DATA frame's write to the end (measured apart)
        d = self._state_from(up, "measure-commit")
        with self._sim(d) as sim:
            c = wait_conn(sim)
            b = c.ok("begin", size=len(self.v2.data), sha256=self.v2.sha, version=self.v2.version)
            c.upload(self.v2.data, b["offset"])
            mid = c.ok("status")["sim_flash"]["ops"]
            c.close()
        shutil.rmtree(d)
        cm.lo, cm.hi = mid, up.hi
        up.hi = mid
        # provisioning: format + deploy, then the first boot of main.py
        pv = next(s for s in self.scenarios if s.name == "provision")
        fb = next(s for s in self.scenarios if s.name == "first-boot")
        fb.deployed_at = pv.deployed_at
        fb.lo, fb.hi = pv.deployed_at, max(pv.hi, pv.deployed_at + 1)
        pv.hi = pv.deployed_at

    def plan(self, n: int) -> list:
        """n cut points over the scenarios: by weight, each range covered
        evenly (one random point per stratum), small ranges exhaustively first."""
        total_w = sum(s.weight for s in self.scenarios)
        quotas = [max(1, n * s.weight // total_w) for s in self.scenarios]
        i = 0
        while sum(quotas) < n:  # hand out the rounding rest
            quotas[i % len(quotas)] += 1
            i += 1
        while sum(quotas) > n:
            j = quotas.index(max(quotas))
            quotas[j] -= 1
        points = []
        for sc, q in zip(self.scenarios, quotas):
            span = sc.hi - sc.lo
            if span <= 0 or q <= 0:
                continue
            pts = []
            while len(pts) + span <= q:  # every op, as often as the quota allows
                pts += list(range(sc.lo, sc.hi))
            k = q - len(pts)
            for j in range(k):  # the rest: one random point per stratum
                a = sc.lo + span * j // k
                b = sc.lo + span * (j + 1) // k
                pts.append(self.rng.randrange(a, max(a + 1, b)))
            points += [(sc, p) for p in sorted(pts)]
        return points

    # -- one cut ---------------------------------------------------------------
    def cut(self, sc: Scenario, n: int, idx: int) -> Optional[str]:
        """Cut flash op n+1 of the scenario, reboot, check. Returns a violation or None."""
        d = self._state_from(sc, "c%d" % (idx % 4))
        extra = ["--power-cut-after", str(n)]
        if sc.from_power_on:
            extra += ["--cut-from", "power-on"]
        replied = False
        sim = self._sim(d, extra, ready=False)
        try:
            if sc.action.__name__ != "boot_only":
                try:
                    sim.wait_ready(30)
                    c = wait_conn(sim)
                    replied = sc.action(c)
                    c.close()
                except (OSError, EOFError, AssertionError, ValueError, RuntimeError):
                    pass  # the device died under us
            mark = 0
            try:
                line = sim.wait_for_line("sim: power cut (device killed)", timeout=30)
                mark = sim.lines.index(line)
            except SimError:
                return "no power cut happened (the action took fewer than %d flash ops)" % (n + 1)
            # A cut during the deploy itself is what `mpremote cp` reports as a
            # failed copy: the operator provisions again (the half-copied files
            # may even import: an empty mpota_update.py does).
            reprovisioned = sc.from_power_on and n < sc.deployed_at
            if not reprovisioned:
                try:
                    sim.wait_for_line("mpota: ready", timeout=30, since=mark)
                except SimError:
                    return "the device did not come back after the cut:\n" + sim.tail(15)
            else:
                sim.stop()
                sim = self._sim(d, ["--redeploy"])
            c = wait_conn(sim)
            st = c.ok("status")
            bad = record_violations(st, c, self.known)
            if bad:
                return "; ".join(bad)
            verdict = sc.classify(st, self.known)
            if verdict not in ("old", "new"):
                return verdict + " (status %s)" % json.dumps(st)
            if replied and verdict == "old" and sc.name not in ("trial-count",):
                return "the action's reply came back before the cut, but the old state stands"
            # the next update succeeds: settle a trial, push, commit, boot it on trial
            if st["trial"]:
                c.ok("confirm")
            r = c.push(self.v3.data, self.v3.version)
            if r["state"] != "pending":
                return "the next update ended %s" % r
            c = reboot(sim, c)
            st2 = c.ok("status")
            c.close()
            if st2["running"] != r["slot"] or not st2["trial"] or st2["app"]["name"] != "v3":
                return "the next update did not boot: %s" % json.dumps(st2)
            bad = record_violations(st2, None, self.known)
            if bad:
                return "after the next update: " + "; ".join(bad)
            self.counts[verdict] += 1
            p = self.per.setdefault(sc.name, {"old": 0, "new": 0, "reprovisioned": 0})
            p[verdict] += 1
            p["reprovisioned"] += reprovisioned
            if "Traceback" in sim.output:
                return "a traceback was printed:\n" + sim.tail(20)
            return None
        finally:
            sim.stop()

    def run(self, n: int) -> bool:
        t0 = time.monotonic()
        self.prepare()
        self.measure()
        if self.verbose:
            for sc in self.scenarios:
                say("  %-18s flash ops %d..%d" % (sc.name, sc.lo, sc.hi))
        points = self.plan(n)
        for idx, (sc, p) in enumerate(points):
            try:
                v = self.cut(sc, p, idx)
            except (SimError, OSError, EOFError, AssertionError) as e:
                v = "harness: %s: %s" % (type(e).__name__, e)
                if self.verbose:
                    import traceback
                    traceback.print_exc()
            if v is not None:
                self.violations.append((sc.name, p, v))
                say("VIOLATION %s cut after %d ops: %s" % (sc.name, p, v))
            elif self.verbose:
                say("  %s cut after %d: ok" % (sc.name, p))
        shutil.rmtree(self.work / "cut", ignore_errors=True)
        dt = time.monotonic() - t0
        ok = len(points) - len(self.violations)
        for sc in self.scenarios:
            p = self.per.get(sc.name, {"old": 0, "new": 0, "reprovisioned": 0})
            say("  %-18s ops %4d..%-4d old %3d new %3d%s" % (
                sc.name, sc.lo, sc.hi, p["old"], p["new"],
                (" (re-provisioned after a cut in the deploy: %d)" % p["reprovisioned"])
                if sc.from_power_on else ""))
        say("power cuts: %d/%d cuts: old %d, new %d, violations %d (%.1f s)"
            % (ok, len(points), self.counts["old"], self.counts["new"], len(self.violations), dt))
        return not self.violations and len(points) >= min(n, 1)


# -- part 2: a hostile link -----------------------------------------------------------

@dataclass
class LinkFigures:
    updates: int = 0
    intact: int = 0
    seconds: float = 0.0
    sent: int = 0          # DATA payload bytes sent, all connections
    payload: int = 0       # image bytes
    resumed: int = 0       # bytes a resume did not send again (sum of resume offsets)
    reconnects: int = 0
    failures: list = field(default_factory=list)


async def _push_until_done(port: int, image: bytes, key: bytes, figs: LinkFigures, max_tries: int = 200) -> None:
    """host/client.py's resumable push, restarted at once after every drop
    (its own backoff would make 10 drops an update cost half a minute)."""
    from mpota.client import Client, push_image
    from mpota.errors import BusyError, ConnectionProblem, MpotaError
    clients: list = []

    def factory(*args, **kw):
        c = Client(*args, **kw)
        clients.append(c)
        return c

    def on_event(name, **kw):
        if name == "begin" and kw.get("offset"):
            figs.resumed += kw["offset"]

    sha = hashlib.sha256(image).hexdigest()
    t0 = time.monotonic()
    tries = 0
    try:
        while True:
            tries += 1
            try:
                res = await push_image("127.0.0.1", port, image, key=key, retries=0, timeout=5.0,
                                       busy_wait=10.0, client_factory=factory, on_event=on_event)
            except MpotaError as e:
                if tries >= max_tries or not isinstance(e, (ConnectionProblem, BusyError)):
                    figs.failures.append("%s after %d tries" % (e, tries))
                    return
                figs.reconnects += 1
                await asyncio.sleep(0.02)
                continue
            if res.commit.get("sha256") == sha and res.commit.get("state") == "pending":
                figs.intact += 1
            else:
                figs.failures.append("commit answered %s" % res.commit)
            return
    finally:
        figs.updates += 1
        figs.payload += len(image)
        figs.sent += sum(c.bytes_sent for c in clients)
        figs.seconds += time.monotonic() - t0


def hostile_link(work: Path, rng: random.Random, a) -> bool:
    from linkproxy import HostileLink, LinkProxy
    t0 = time.monotonic()
    n = a.updates + a.clean
    imgs = [make_image(work, "l%d" % i, "1.0.%d+0" % i, a.link_size, rng).data for i in range(n)]
    clean, hostile = LinkFigures(), LinkFigures()
    with Sim(state=work / "dev", flags=["--flash-timing", "none"]) as sim:
        key = sim.key

        async def go():
            async with LinkProxy("127.0.0.1", sim.tcp_port, cuts=0) as px:
                for img in imgs[:a.clean]:
                    await _push_until_done(px.port, img, key, clean)
            hx = HostileLink("127.0.0.1", sim.tcp_port, rng)
            async with hx:
                for img in imgs[a.clean:]:
                    hx.plan(sorted(rng.randrange(64, len(img)) for _ in range(a.disconnects)))
                    await _push_until_done(hx.port, img, key, hostile)
            return hx

        hx = asyncio.run(go())
        c = wait_conn(sim, key)
        st = c.ok("status")
        bad = record_violations(st, c, {hashlib.sha256(i).hexdigest(): Image("", st["slots"]["a"]["version"], i)
                                        for i in imgs[-1:]})
        c.close()
        crashed = "Traceback" in sim.output or sim.output.count("sim: boot #") != 1
        tbs = _tracebacks(sim.lines)
    for f in hostile.failures + clean.failures + bad:
        say("VIOLATION link: %s" % f)
    if crashed:
        say("VIOLATION link: the device restarted or printed a traceback: %s" % "; ".join(tbs))
    per = hostile.seconds / max(1, hostile.updates)
    per_clean = clean.seconds / max(1, clean.updates)
    say("  clean link:   %d/%d updates intact, %.2f s each, %d bytes sent for %d"
        % (clean.intact, clean.updates, per_clean, clean.sent, clean.payload))
    say("  hostile link: %d disconnects (%.1f per update), %d stalls of %d ms, %d DATA frames duplicated, "
        "%d swapped; %d resumes skipped %d bytes"
        % (hx.cut_count, hx.cut_count / max(1, hostile.updates), hx.stalls, hx.stall * 1000, hx.dups,
           hx.swaps, hostile.reconnects, hostile.resumed))
    resent = hostile.sent - hostile.payload
    say("hostile link: %d/%d updates intact (SHA-256 verified at commit), re-sent %d bytes (%.1f%% of %d), "
        "%.2f s per update vs %.2f s clean (x%.1f), violations %d (%.1f s)"
        % (hostile.intact, hostile.updates, resent, 100.0 * resent / max(1, hostile.payload), hostile.payload,
           per, per_clean, per / per_clean if per_clean else 0, len(hostile.failures) + len(bad) + crashed,
           time.monotonic() - t0))
    return (hostile.intact == hostile.updates == a.updates and clean.intact == clean.updates
            and not bad and not crashed)


# -- part 3: live fuzzing ---------------------------------------------------------------

_OPS = ("hello", "auth", "ping", "status", "begin", "commit", "abort", "confirm", "rollback", "read",
        "erase", "reset", "frobnicate", "", "HELLO")
_FIELDS = ("id", "size", "sha256", "slot", "version", "offset", "length", "nonce", "mac", "delay_ms",
           "allow_downgrade", "op")


def _value(rng: random.Random):
    k = rng.randrange(14)
    if k == 0:
        return rng.choice([0, 1, -1, 2 ** 31, 2 ** 32 - 1, 2 ** 63, -2 ** 63, 10 ** 30, 4096, 368640])
    if k == 1:
        return rng.randrange(-5, 70000)
    if k == 2:
        return rng.choice(["a", "b", "c", "inactive", "", "A", "\u0000", "\u00e9", "0"])
    if k == 3:
        return rng.randbytes(rng.choice((16, 32, 8, 0))).hex()
    if k == 4:
        return rng.choice([True, False, None])
    if k == 5:
        return rng.random() * 10 ** rng.randrange(0, 20)
    if k == 6:
        return [_value(rng) for _ in range(rng.randrange(3))]
    if k == 7:
        return {"x": _value(rng)} if rng.random() < 0.8 else {}
    if k == 8:
        return "x" * rng.randrange(0, 1200)
    if k == 9:
        return rng.choice(["1.0.0+0", "255.255.65535+4294967295", "1.2", "1.2.3.4", "-1.0.0", "9" * 30])
    if k == 10:
        return "%d.%d.%d+%d" % tuple(rng.randrange(0, 70000) for _ in range(4))
    return rng.choice(["a", "b"]) if k == 11 else rng.randrange(0, 5000) if k == 12 else "0" * 64


def _json_seed(rng: random.Random) -> bytes:
    req: dict = {"op": rng.choice(_OPS)}
    for _ in range(rng.randrange(5)):
        req[rng.choice(_FIELDS)] = _value(rng)
    if rng.random() < 0.1:
        del req["op"]
    return json.dumps(req).encode() + b"\n"


def _frame_seed(rng: random.Random) -> bytes:
    k = rng.randrange(12)
    if k == 0:
        return bytes(bm.VersionRequest.make())
    if k == 1:
        return bytes(bm.UpdateStartRequest.make(rng.choice([0, 1, 100, 368640, 2 ** 32 - 1])))
    if k == 2:
        return bytes(bm.UpdateStopRequest.make(rng.randrange(2 ** 32)))
    if k == 3:
        d = rng.randbytes(rng.randrange(1, 1100))  # over 1024: too_large
        return bytes(hostframes.make_frame(0x07, d + binascii.crc32(d).to_bytes(4, "big")))
    if k == 4:
        return bytes(bm.ReadAddressRequest.make(rng.randrange(2 ** 32), rng.choice([0, 1, 1024, 1025, 2 ** 32 - 1])))
    if k == 5:
        return bytes(hostframes.encode_data(rng.choice([0, 1, 4096, 2 ** 32 - 1, rng.randrange(400000)]),
                                            rng.randbytes(rng.choice([1, 16, 4096, 4097]))))
    if k == 6:
        return bytes(hostframes.encode_read(rng.choice("ab"), rng.randrange(400000), rng.randrange(1, 5000)))
    if k == 7:
        return bytes(hostframes.encode_nerror(rng.randrange(256), rng.randrange(256), rng.randrange(2 ** 32), 0))
    if k == 8:
        return bytes(hostframes.encode_ack(rng.randrange(2 ** 32)))
    if k == 9:
        return bytes(hostframes.make_frame(rng.randrange(256), rng.randbytes(rng.randrange(0, 64))))
    if k == 10:
        return bytes(bm.ResetRequest.make())
    return bytes(hostframes.make_frame(rng.choice([0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0xFF, 0x20, 0x2E]),
                                       rng.randbytes(rng.randrange(0, 140))))


def _fix_checksums(b: bytearray) -> None:
    # keep a mutated frame well-formed so that it reaches the handlers
    if len(b) >= 6 and b[0] == 0xE7:
        n = (b[2] << 8) | b[3]
        b[4] = (0xE7 + b[1] + b[2] + b[3]) & 0xFF
        end = min(len(b), 5 + n) - 1
        if end >= 5:
            b[end] = sum(b[:end]) & 0xFF


def mutate(rng: random.Random, seed: bytes) -> bytes:
    b = bytearray(seed)
    for _ in range(rng.choice((0, 1, 1, 2, 3, 6))):
        k = rng.randrange(9)
        if k == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif k == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif k == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 9))
        elif k == 3 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 9)]
        elif k == 4 and len(b) > 1:
            del b[rng.randrange(1, len(b)):]  # truncated
        elif k == 5 and len(b) >= 4 and b[0] == 0xE7:
            n = rng.choice([0, 1, 2, 5, 4105, 4106, 4200, 0xFFFF, rng.randrange(0x10000)])
            b[2], b[3] = n >> 8, n & 0xFF
        elif k == 6 and len(b) >= 2 and b[0] == 0xE7:
            b[1] = rng.randrange(256)
        elif k == 7:
            b += rng.choice([b"\r\n", b"\n", b"{", b"\xe7", b"\x00", b"}\n"])
        else:
            b[:0] = rng.choice([b"", b"\n", b" ", b"\xe7\xe7", b"\xff"])
    if b and b[0] == 0xE7 and rng.random() < 0.7:
        _fix_checksums(b)
    return bytes(b)


def _resets(msg: bytes) -> bool:
    """Would this message reset the device (frames: any embedded ResetRequest header; lines: op reset)?"""
    if b"\xe7\x09" in msg:
        return True
    for part in msg.split(b"\n"):
        try:
            req = json.loads(part.strip(b"\r\x00 \xe7\xff"))
        except ValueError:
            continue
        if isinstance(req, dict) and req.get("op") == "reset":
            return True
    return b"reset" in msg.lower() or b"\\u" in msg  # escapes could spell it


def fuzz_messages(rng: random.Random, n: int, authed: bool) -> list:
    out = []
    while len(out) < n:
        seed = _json_seed(rng) if rng.random() < 0.5 else _frame_seed(rng)
        m = mutate(rng, seed)
        if authed and _resets(m):
            continue  # an authenticated reset is allowed and would only cost time
        out.append(m)
    return out


_FLUSH = b"\n" * (lineproto.MAX_FRAME + 100)  # completes any half frame or line the batch left open


def _state(st: dict) -> dict:
    keep = ("active", "pending", "running", "trial", "trial_count", "slots", "session", "app", "boot_reason")
    d = {k: st[k] for k in keep}
    d["flash_ops"] = st.get("sim_flash", {}).get("ops")
    return d


def _answered(sim: Sim, op: str, key: Optional[bytes] = None, seconds: float = 20.0) -> dict:
    """`ping`, then `op`, on a fresh connection, retrying while the device is
    still reaping the batch's connection (it serves at most 4: `busy`)."""
    end = time.monotonic() + seconds
    while True:
        try:
            c = DevConn(sim.tcp_port, key, timeout=10)
            try:
                c.ok("ping")
                return c.ok(op)
            finally:
                c.close()
        except (OSError, EOFError, AssertionError) as e:
            if time.monotonic() > end or sim.returncode is not None:
                raise AssertionError("no answer to ping/%s for %.0f s: %s" % (op, seconds, e))
            time.sleep(0.1)


def _tracebacks(lines: list) -> list:
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


def _sealed(sess, msgs: list) -> bytes:
    """An authenticated batch: the session seals whole messages (protocol.md 2.6),
    so the mutated bytes are cut into what the device's decoder makes of them and
    each frame and line is sealed. Bytes that form neither cannot be sealed; on a
    session they end the connection (tests/test_attacks.py covers that)."""
    from mpota.codec.mpota_framing import K_FRAME, K_LINE
    dec = hostframes.Decoder(lineproto.MAX_FRAME, lineproto.MAX_LINE)
    out = []
    for m in msgs:
        for kind, v in dec.decode(m):
            if kind == K_FRAME:
                out.append(bytes(sess.seal(bytes(v))))
            elif kind == K_LINE:
                out.append(bytes(sess.seal(bytes(v) + b"\n")))
    return b"".join(out)


def fuzz_batch(sim: Sim, msgs: list, key: Optional[bytes], timeout: float = 20.0) -> dict:
    """Send a batch on one connection (authenticated when `key`), then the flush
    and a ping; read every reply until the ping's. -> reply counts by kind/code."""
    import threading
    c = DevConn(sim.tcp_port, key, timeout=timeout)
    counts: dict = {}
    try:
        sync = b'{"op":"ping","id":"sync-7f3a"}\n'
        if c.sess is None:
            blob = b"".join(msgs) + _FLUSH + sync
        else:
            blob = _sealed(c.sess, msgs) + bytes(c.sess.seal(sync))
        err: list = []

        def send():
            try:
                c.s.sendall(blob)
            except OSError as e:
                err.append(e)
        t = threading.Thread(target=send, daemon=True)
        t.start()
        from mpota.codec.mpota_framing import K_FRAME, K_LINE
        while True:
            kind, v = c.event()
            if kind == K_LINE:
                try:
                    r = json.loads(v)
                except ValueError:
                    counts["bad_json_reply"] = counts.get("bad_json_reply", 0) + 1
                    continue
                if r.get("id") == "sync-7f3a":
                    break
                code = "ok" if r.get("ok") else (r.get("error") or {}).get("code", "?")
            elif kind == K_FRAME:
                code = "frame 0x%02x" % v[1]
                if v[1] == 0xFF and len(v) > 5:
                    code += " " + lineproto.error_name(v[5])
                elif v[1] == proto.OP_NERROR:
                    code += " " + lineproto.error_name(v[6])
            else:
                code = "undecodable"
            counts[code] = counts.get(code, 0) + 1
        t.join(timeout)
    finally:
        c.close()
    return counts


def fuzz(work: Path, rng: random.Random, a) -> bool:
    t0 = time.monotonic()
    if I386.exists():
        flags, where = ["--micropython", str(I386), "--heap", "160K"], "micropython-1.27-i386 at --heap 160K"
    else:
        flags, where = ["--heap", "256K"], ".venv micropython (64-bit) at --heap 256K"
    v1 = make_image(work, "v1", "1.0.0+0", 0, rng)
    v2 = make_image(work, "v2", "2.0.0+0", 0, rng)
    crashes = hangs = changes = pings = sent = 0
    totals: dict = {}
    failures: list = []
    with Sim(state=work / "dev", flags=flags + ["--flash-timing", "none"]) as sim:
        key = sim.key
        c = install(sim, [v1], key)
        c.push(v2.data, v2.version)  # something for hostile input to damage: a pending image
        c.close()
        batch_no = 0
        signatures: dict = {}
        dumps: list = []
        while sent < a.fuzz:
            authed = batch_no % 2 == 1
            n = min(a.batch, a.fuzz - sent)
            msgs = fuzz_messages(rng, n, authed)
            batch_no += 1
            mark = sim.mark()
            before = _state(_answered(sim, "status", key))
            try:
                counts = fuzz_batch(sim, msgs, key if authed else None)
                for k, v in counts.items():
                    totals[k] = totals.get(k, 0) + v
            except (OSError, EOFError, AssertionError) as e:
                hangs += 1
                failures.append("batch %d (%s): no answer to the sync ping: %s" % (
                    batch_no, "auth" if authed else "unauth", e))
            sent += n
            try:
                after = _state(_answered(sim, "status", key))
                pings += 1
            except (OSError, EOFError, AssertionError, SimError) as e:
                failures.append("batch %d: no ping answer after it: %s" % (batch_no, e))
                hangs += 1
                break
            if not authed and after != before:
                changes += 1
                failures.append("batch %d (unauthenticated) changed the state: %s -> %s"
                                % (batch_no, json.dumps(before), json.dumps(after)))
            new = sim.lines[mark:]
            restarted = any(ln.startswith("sim: boot #") for ln in new) or sim.returncode is not None
            tb = _tracebacks(new)
            if restarted or tb:
                crashes += 1
                for sig in tb:
                    signatures[sig] = signatures.get(sig, 0) + 1
                failures.append("batch %d (%s): the device %s" % (
                    batch_no, "auth" if authed else "unauth",
                    "restarted:\n" + "\n".join(new[-20:]) if restarted else "printed tracebacks: " + "; ".join(tb)))
            if failures and failures[-1].startswith("batch %d " % batch_no):
                if a.verbose:
                    say(failures[-1])
                dump = work / ("fuzz-fail-%d.json" % batch_no)
                dump.write_text(json.dumps({"auth": authed, "messages": [m.hex() for m in msgs]}))
                dumps.append(dump)
            if sim.returncode is not None:
                break
    shown = [f for f in failures if "printed tracebacks" not in f]  # hangs, restarts, state changes: all
    shown += [f for f in failures if "printed tracebacks" in f][:5]
    for f in shown:
        say("VIOLATION fuzz: %s" % f)
    for sig, k in sorted(signatures.items(), key=lambda kv: -kv[1]):
        say("  device traceback in %d batches: %s" % (k, sig))
    if dumps:
        keep = Path(tempfile.gettempdir()) / "mpota-fuzz-fail.json"
        shutil.copy(dumps[0], keep)
        say("  first failing batch (hex messages) kept in %s" % keep)
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:8]
    say("  replies: %s" % ", ".join("%s %d" % kv for kv in top))
    say("fuzz: %d messages (%d batches, unauthenticated and authenticated alternating) on %s: "
        "crashes %d, hangs %d, unauthenticated state changes %d, ping answered after %d/%d batches (%.1f s)"
        % (sent, batch_no, where, crashes, hangs, changes, pings, batch_no, time.monotonic() - t0))
    return not failures and sent >= a.fuzz


# -- part 4: racing operators ---------------------------------------------------------------

def _begin_retrying_busy(c: DevConn, img: Image, deadline: float) -> tuple:
    """begin until it is not busy; -> (reply, how many busy answers came first)."""
    busy = 0
    while True:
        r = c.req("begin", size=len(img.data), sha256=img.sha, version=img.version)
        if r["ok"] or r["error"]["code"] != "busy" or time.monotonic() > deadline:
            return r, busy
        busy += 1
        time.sleep(0.02)


def _operator(port: int, key: bytes, img: Image, barrier, out: dict) -> None:
    try:
        for attempt in range(50):  # the device serves a few connections: a full one closes at once
            try:
                c = DevConn(port, key, timeout=30)
                break
            except (OSError, EOFError, AssertionError):
                if attempt == 49:
                    raise
                time.sleep(0.1)
        barrier.wait(10)
        r, busy = _begin_retrying_busy(c, img, time.monotonic() + 60)
        out["busy"] = busy
        if not r["ok"]:
            out["error"] = r["error"]["code"]
            return
        c.upload(img.data, r["offset"])
        out["commit"] = c.ok("commit")
        c.close()
    except (OSError, EOFError, AssertionError) as e:
        import traceback
        out["error"] = "%s: %s at %s" % (type(e).__name__, e, traceback.format_exc().splitlines()[-3].strip())


def _race_push(sim: Sim, imgs: list) -> list:
    import threading
    barrier = threading.Barrier(len(imgs))
    outs = [dict() for _ in imgs]
    ts = [threading.Thread(target=_operator, args=(sim.tcp_port, sim.key, img, barrier, o), daemon=True)
          for img, o in zip(imgs, outs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    bad = []
    winners = [o for o in outs if o.get("busy") == 0]
    if len(winners) != 1:
        bad.append("%d operators got the session at once (busy counts %s)"
                   % (len(winners), [o.get("busy") for o in outs]))
    for img, o in zip(imgs, outs):
        if "error" in o or o.get("commit", {}).get("sha256") != img.sha:
            bad.append("operator with %s: %s" % (img.name, o))
    return bad


def _settled(sim: Sim, key: bytes, known: dict) -> tuple:
    """Reset, boot, and check: -> (status, violations)."""
    c = reboot(sim, wait_conn(sim, key), key)
    st = c.ok("status")
    bad = record_violations(st, c, known)
    if st["running"] is None:
        bad.append("nothing runs: %s" % st["boot_note"])
    c.close()
    return st, bad


def _fresh_sim(base: Path, d: Path) -> Sim:
    """A simulator on a fresh copy of the device state in `base`."""
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base, d)
    return Sim(state=d, flags=["--flash-timing", "none"])


def races(work: Path, rng: random.Random, a) -> bool:
    import threading
    t0 = time.monotonic()
    v1 = make_image(work, "v1", "1.0.0+0", 0, rng)
    v2 = make_image(work, "v2", "2.0.0+0", 0, rng)
    known = {v1.sha: v1, v2.sha: v2}
    bad: list = []
    figs = {"push": 0, "rollback_first": 0, "push_first": 0, "rollback_busy": 0, "reset_before_commit": 0,
            "reset_after_commit": 0}
    base = work / "base"
    with Sim(state=base, flags=["--flash-timing", "none"]) as sim:
        install(sim, [v1, v2], sim.key).close()  # a: v1 confirmed, b: v2 confirmed and running
    base, pushes = work / "base-v2", base
    shutil.copytree(pushes, base)
    with Sim(state=pushes, flags=["--flash-timing", "none"]) as sim:
        key = sim.key
        # 1. four operators race to push: one wins, the rest get busy, then succeed
        for r in range(a.races):
            imgs = [make_image(work, "r%d-%d" % (r, k), "3.%d.%d+0" % (r, k), 30000, rng) for k in range(4)]
            known.update({i.sha: i for i in imgs})
            bad += ["push race %d: %s" % (r, b) for b in _race_push(sim, imgs)]
            c = wait_conn(sim, key)
            st = c.ok("status")
            bad += ["push race %d: %s" % (r, b) for b in record_violations(st, c, known)]
            c.close()
            figs["push"] += 1
    v3 = make_image(work, "v3", "4.0.0+0", 60000, rng)
    known[v3.sha] = v3
    # 2. a push racing a rollback (the push sometimes abandoned half way)
    for r in range(a.races):
        with _fresh_sim(base, work / "rb") as sim:
            key = sim.key
            abandon = r % 2 == 1
            res: dict = {}

            def rollback(delay, port, key, res):
                time.sleep(delay)
                res["rollback"] = DevConn(port, key).req("rollback")

            t = threading.Thread(target=rollback, args=(rng.random() * 0.03, sim.tcp_port, key, res), daemon=True)
            c = DevConn(sim.tcp_port, key)
            t.start()
            time.sleep(rng.random() * 0.03)
            br = c.req("begin", size=len(v3.data), sha256=v3.sha, version=v3.version)
            if br["ok"]:
                c.upload(v3.data, br["offset"], stop_at=len(v3.data) // 2 if abandon else None)
                if not abandon:
                    c.ok("commit")
            c.close()
            t.join(30)
            rb = res.get("rollback", {})
            if rb.get("ok"):
                figs["rollback_first" if not br["ok"] or rb.get("slot") else "push_first"] += 1
            elif (rb.get("error") or {}).get("code") == "busy":
                figs["rollback_busy"] += 1
            st, b = _settled(sim, key, known)
            bad += ["push%s racing rollback %d (rollback %s, begin %s): %s" % (
                " (abandoned)" if abandon else "", r, "ok" if rb.get("ok") else (rb.get("error") or {}).get("code"),
                "ok" if br["ok"] else br["error"]["code"], x) for x in b]
    # 3. a reset racing a commit
    for r in range(a.races):
        with _fresh_sim(base, work / "rc") as sim:
            key = sim.key
            c = DevConn(sim.tcp_port, key)
            br = c.ok("begin", size=len(v3.data), sha256=v3.sha, version=v3.version)
            c.upload(v3.data, br["offset"])
            other = DevConn(sim.tcp_port, key)
            mark = sim.mark()
            reset = hostframes.request_line("reset", 1, {"delay_ms": 0})
            t = threading.Timer(rng.random() * 0.02, other.send, (reset,))
            t.start()
            time.sleep(rng.random() * 0.02)
            try:
                cr = c.req("commit")
                figs["reset_after_commit" if cr.get("ok") else "reset_before_commit"] += 1
            except (OSError, EOFError):
                figs["reset_before_commit"] += 1
            t.join(5)
            for x in (c, other):
                x.close()
            sim.wait_for_line("mpota: ready", timeout=60, since=mark)
            st, b = _settled(sim, key, known)
            bad += ["reset racing commit %d: %s" % (r, x) for x in b]
    for b in bad:
        say("VIOLATION race: %s" % b)
    say("races: %d four-operator push races (one winner each, 3 busy then committed), %d push/rollback "
        "races (rollback first %d, refused busy %d), %d reset/commit races (commit answered first %d): "
        "violations %d (%.1f s)" % (figs["push"], a.races, figs["rollback_first"], figs["rollback_busy"], a.races,
                                    figs["reset_after_commit"], len(bad), time.monotonic() - t0))
    return not bad


# -- main -------------------------------------------------------------------------------

PARTS = ("cuts", "link", "fuzz", "race")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="torture.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of %s" % ", ".join(PARTS))
    p.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed, printed)")
    p.add_argument("--cuts", type=int, default=500, help="power cuts")
    p.add_argument("--updates", type=int, default=50, help="hostile-link updates")
    p.add_argument("--clean", type=int, default=5, help="clean-link updates to compare against")
    p.add_argument("--link-size", type=int, default=96 * 1024, help="hostile-link image size (bytes)")
    p.add_argument("--disconnects", type=int, default=10, help="forced disconnects per update")
    p.add_argument("--fuzz", type=int, default=100000, help="fuzz messages")
    p.add_argument("--batch", type=int, default=250, help="fuzz messages per batch (ping after each)")
    p.add_argument("--races", type=int, default=10, help="rounds of each race")
    p.add_argument("--workdir", default=None, help="keep the scratch states here (default: a temp dir)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    for x in a.parts:
        if x not in PARTS:
            p.error("unknown part %r (choose from %s)" % (x, ", ".join(PARTS)))
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "big")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    say("torture: seed %d (replay: --seed %d), parts %s" % (a.seed, a.seed, ",".join(a.parts)))
    own = a.workdir is None
    work = Path(tempfile.mkdtemp(prefix="mpota-torture-")) if own else Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ok = True
    try:
        for part in a.parts:
            rng = random.Random("%d-%s" % (a.seed, part))
            pw = work / part
            t = time.monotonic()
            if part == "cuts":
                res = PowerCuts(pw, rng, a.verbose).run(a.cuts)
            elif part == "link":
                res = hostile_link(pw, rng, a)
            elif part == "fuzz":
                res = fuzz(pw, rng, a)
            else:
                res = races(pw, rng, a)
            say("torture: %s %s in %.1f s" % (part, "passed" if res else "FAILED", time.monotonic() - t))
            ok = ok and res
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    say("torture: %s, seed %d, %.1f s" % ("all passed" if ok else "FAILED", a.seed, time.monotonic() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
