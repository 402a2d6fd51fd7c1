"""Part `cuts` of the torture harness (tools/torture.py): power cuts
(tools/sim.py --power-cut-after) spread over every state transition, each
followed by a boot, the checks of torture_common.record_violations and the
next update."""
from __future__ import annotations

import binascii
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from torture_common import Image, install, make_image, reboot, record_violations, say, wait_conn
from devconn import DevConn
from mpota.codec import bootloader_messages as bm
from simproc import Sim, SimError


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
