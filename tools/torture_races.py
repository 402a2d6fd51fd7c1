"""Part `race` of the torture harness (tools/torture.py): 4 operators racing
to push (one wins, the rest get busy then succeed), a push racing a rollback,
a reset racing a commit."""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from torture_common import Image, install, make_image, record_violations, reboot, say, wait_conn
from devconn import DevConn
from mpota.codec import mpota_hostframes as hostframes
from simproc import Sim


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


def settled(sim: Sim, key: bytes, known: dict) -> tuple:
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
            st, b = settled(sim, key, known)
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
            st, b = settled(sim, key, known)
            bad += ["reset racing commit %d: %s" % (r, x) for x in b]
    for b in bad:
        say("VIOLATION race: %s" % b)
    say("races: %d four-operator push races (one winner each, 3 busy then committed), %d push/rollback "
        "races (rollback first %d, refused busy %d), %d reset/commit races (commit answered first %d): "
        "violations %d (%.1f s)" % (figs["push"], a.races, figs["rollback_first"], figs["rollback_busy"], a.races,
                                    figs["reset_after_commit"], len(bad), time.monotonic() - t0))
    return not bad
