#!/usr/bin/env python3
"""Fleet figures (issue 19): N simulated boards on loopback (tools/fleetsim.py),
the time to bring them up, the time `mpota discover` takes to find them all,
what each board costs this machine (RSS, PSS, idle CPU), the time a rollout
(host/rollout.py) of a 64 KiB image to all of them takes at --parallel 1, 10
and 25 (boards per minute, host CPU per board), and how many boards a crashing
version touches past its canary.

    python tools/bench_fleet.py [--count 100] [--heap 160K] [--parallel 1,10,25] [--soak 1]
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleetsim import Fleet, own_rss  # noqa: E402

from host import discover  # noqa: E402  (the package's folder, installed as mpota)


DISCOVERY_CONFIGS = (("discover off", {"discover": False}), ("discover on (default)", {}),
                     ("on + discover_version + announce", {"discover_version": True, "announce": "127.0.0.1:9",
                                                           "wifi": {"hostname": "picow-greenhouse-1"}}))


async def agent_idle(port: int, key) -> int:
    """A simulated board's idle agent: status mem_idle - mem_base, over one connection."""
    from host.client import Client

    c = Client("127.0.0.1", port, key=key)
    await c.connect(authenticate=True)
    try:
        st = await c.status()
    finally:
        await c.close()
    return st["mem_idle"] - st["mem_base"]


def discovery_memory(work: Path, mp: str, heap: str) -> list:
    """[(label, agent idle bytes)] for each DISCOVERY_CONFIGS: status mem_idle - mem_base."""
    import asyncio
    import json

    from simproc import Sim

    idle = agent_idle
    rows = []
    for i, (label, cfg) in enumerate(DISCOVERY_CONFIGS):
        (work / ("d%d.json" % i)).write_text(json.dumps(cfg))
        with Sim(state=work / ("d%d" % i), flags=["--heap", heap, "--micropython", mp,
                                                   "--config", str(work / ("d%d.json" % i))]) as sim:
            rows.append((label, asyncio.run(idle(sim.tcp_port, sim.key))))
    return rows


def app_image(work: Path, version: str, size: int = 64 * 1024, crash: bool = False, key=None):
    """An app image of about `size` bytes (main.py and incompressible data); `crash`: its app raises;
    `key`: signed with that key file."""
    import os

    from host import images

    folder = work / ("app-" + version)
    folder.mkdir()
    (folder / "main.py").write_text("import asyncio\nimport mpota\n\n\nasync def main():\n%s"
                                    "    mpota.confirm()\n    while True:\n        await asyncio.sleep(1)\n"
                                    % ('    raise RuntimeError("crash")\n' if crash else ""))
    img = images.build_folder(folder, version, key)
    n = max(1, size - img.size)
    (folder / "data.bin").write_bytes(os.urandom(n))
    grew = images.build_folder(folder, version, key).size - img.size  # a file costs more than its bytes
    (folder / "data.bin").write_bytes(os.urandom(n * n // grew))
    return images.build_folder(folder, version, key)


def rollout_figures(sims, work: Path, parallels: list, soak: float) -> list:
    """[(label, seconds, healthy, touched)]: a rollout of a 64 KiB image to every board at each
    --parallel (waves 10%,50%,100% after a canary of 1), then a crashing version's."""
    import asyncio

    from host import rollout
    from host.targets import Target

    by_name = {b.name: b for b in sims.boards}
    names = list(by_name)
    transport = rollout.LanTransport(lambda s: Target(name=s, host="127.0.0.1", port=by_name[s].tcp_port,
                                                      key=by_name[s].key), wait=120)
    store = rollout.RolloutStore(work / "rollouts")
    rows = []
    for i, par in enumerate(parallels + [0]):
        img = app_image(work, "2.0.%d" % i, crash=par == 0)
        plan = rollout.new_plan(img, names, soak=soak, parallel=par or 10)
        store.create(plan, img)
        t0, c0 = time.monotonic(), _host_cpu()
        asyncio.run(rollout.Rollout(plan, store, transport, image=img).run())
        rows.append(("--parallel %d" % par if par else "crashing version", time.monotonic() - t0,
                     plan.count(rollout.HEALTHY), plan.tried, img.size, _host_cpu() - c0))
        for s, b in plan.boards.items():
            if b.state == rollout.FAILED and par:  # say why, the figure above is not a clean run
                print("  rollout at --parallel %d: %s failed: %s" % (par, s, b.error))
    return rows


def _host_cpu() -> float:
    """CPU seconds of the host side: this process (the rollout, and the
    launchers' reader threads) and the children that ended (imgtool)."""
    return _own_cpu() + sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), k) for k in ("ru_utime", "ru_stime"))


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # the launchers' threads (the devices are children)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_fleet.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--heap", default=None, help="each board's heap (default: 160K on the board's 32-bit build "
                   "when MPOTA_BOARD_TOOLS has it, else 256K: the 64-bit build's objects are larger, and 160K "
                   "there leaves a 64 KiB app's board without the memory to authenticate)")
    p.add_argument("--idle", type=float, default=5.0, help="seconds over which idle CPU is measured")
    p.add_argument("--parallel", default="1,10,25", help="the rollouts' --parallel values (default 1,10,25)")
    p.add_argument("--soak", type=float, default=1.0, help="each wave's soak in the rollouts (default 1 s)")
    a = p.parse_args(argv)
    import boardbuilds

    mp = boardbuilds.i386()
    a.heap = a.heap or ("160K" if mp else "256K")
    build = "v1.27 i386 (32-bit, the board's object sizes)" if mp else "unix (64-bit, no i386 build here)"
    with tempfile.TemporaryDirectory(prefix="mpota-fleet-") as tmp:
        t0 = time.monotonic()
        with Fleet(a.count, Path(tmp), heap=a.heap, micropython=mp, timeout=600) as sims:
            up = time.monotonic() - t0
            rss, pss = sims.rss(), sims.pss()
            c0, l0 = sims.cpu_seconds(), _own_cpu()
            time.sleep(a.idle)
            idle = (sims.cpu_seconds() - c0) / a.idle
            lidle = (_own_cpu() - l0) / a.idle
            t = time.monotonic()
            found = discover.discover(sims.addresses, wait=10)
            took = time.monotonic() - t
            launcher = own_rss()
            rolls = rollout_figures(sims, Path(tmp), [int(x) for x in a.parallel.split(",")], a.soak)
    n = a.count
    print("\nfleet of %d simulated boards (%s, heap %s, one launcher process, a micropython each)"
          % (n, build, a.heap))
    print("  first boot (format, deploy) of all    %7.1f s" % up)
    print("  discover (mpota discover --to ...)    %7.2f s, %d/%d found" % (took, len(found), n))
    print("  per board: device RSS %.1f MiB (PSS %.1f MiB), launcher %.0f KiB, idle CPU %.2f %% of a core"
          % (sum(rss) / len(rss) / 2**20, sum(pss) / len(pss) / 2**20, launcher / n / 1024, idle / n * 100))
    print("  all %d boards idle: %.1f %% of one core, their launcher %.1f %%" % (n, idle * 100, lidle * 100))
    print("\nrollout to all %d boards (canary 1, waves 10%%,50%%,100%%, soak %g s each):" % (n, a.soak))
    for label, secs, healthy, tried, size, cpu in rolls:
        if label == "crashing version":
            print("  %-20s stopped by the canary: %d board(s) touched, %d others touched"
                  % (label, tried, tried - 1))
        else:
            print("  %-20s %7.1f s for a %.0f KiB image, %d/%d healthy: %5.1f boards/min, host CPU %.2f s "
                  "a board (%.0f %% of a core)" % (label, secs, size / 1024, healthy, n, 60 * healthy / secs,
                                                   cpu / max(1, tried), 100 * cpu / secs))
    print("  (each wave soaks %g s; host CPU: the rollout's process, the launchers' threads included)" % a.soak)
    label = "v1.27 i386 (32-bit), 160K" if mp else "unix (64-bit, no i386 build here), 256K"
    with tempfile.TemporaryDirectory(prefix="mpota-disc-") as tmp:
        rows = discovery_memory(Path(tmp), mp or str(Path(sys.executable).parent / "micropython"),
                                "160K" if mp else "256K")
    print("\ndiscovery's heap cost, agent idle (status mem_idle - mem_base), %s:" % label)
    for name, b in rows:
        print("  %-36s %6d B  (%+d B)" % (name, b, b - rows[0][1]))
    ok = all(r[2] == n for r in rolls[:-1]) and rolls[-1][3] == 1
    return 0 if len(found) == n and ok else 1


if __name__ == "__main__":
    sys.exit(main())
