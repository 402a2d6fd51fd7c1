#!/usr/bin/env python3
"""Rollout figures through an MQTT broker (issue 21): N simulated boards that bind
nothing (tools/sim.py --no-listen --mqtt), one private Mosquitto (tools/mosquitto.py),
one HTTP server of the release folder (host/httpserve.py, as `mpota serve`), and the
same rollout engine as on the LAN (host/rollout.py with mqtt.MqttTransport): the
time a 64 KiB image takes to reach every board (canary 1, waves 10%,50%,100%), each
board's download rate (its "installed" event's `rate`: the image's bytes over the
pull's time on the board, HTTP and flash writes together) against the flash's ~80 KB/s
write ceiling, and how many boards a crashing version touches past its canary.

    python tools/bench_mqtt.py [--count 100] [--parallel 25] [--soak 1] [--flash-timing w25q]
"""
import argparse
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mqttfleet import MqttFleet  # noqa: E402  (the setup tests/test_mqtt_fleet100.py shares)

from host import rollout  # noqa: E402  (the package's folder, installed as mpota)

FLASH_CEILING = 80_000  # B/s: 4 KiB erase + program in about 51 ms (docs: DESIGN's flash timing)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_mqtt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--heap", default=None, help="each board's heap (default: 160K on the board's 32-bit build "
                   "when MPOTA_BOARD_TOOLS has it, else 256K)")
    p.add_argument("--parallel", type=int, default=25, help="boards installing at once (default 25)")
    p.add_argument("--soak", type=float, default=1.0, help="each wave's soak (default 1 s)")
    p.add_argument("--flash-timing", default="w25q", choices=("none", "w25q"),
                   help="the boards' flash timing (default w25q: erase and program take a real chip's time, "
                        "so the download rate meets the flash ceiling)")
    p.add_argument("--wait", type=float, default=300.0, help="seconds a board may take to install (default 300)")
    a = p.parse_args(argv)
    import boardbuilds

    mp = boardbuilds.i386()
    a.heap = a.heap or ("160K" if mp else "256K")
    build = "v1.27 i386 (32-bit)" if mp else "unix (64-bit, no i386 build here)"
    gets: list = []
    lock = threading.Lock()

    def on_request(method, path, status, sent, seconds):
        if method == "GET" and sent:
            with lock:
                gets.append((path, status, sent, seconds))

    with tempfile.TemporaryDirectory(prefix="mpota-mqtt-bench-") as tmp:
        with MqttFleet(a.count, Path(tmp), heap=a.heap, micropython=mp, flash_timing=a.flash_timing,
                       on_request=on_request, timeout=600) as site:
            up = site.ready_s + site.online_s
            good = site.app("2.0.0")
            bad = site.app("2.0.1", crash=True)
            ok = site.rollout(good, parallel=a.parallel, soak=a.soak, wait=a.wait)
            pulls = list(gets)
            crash = site.rollout(bad, parallel=a.parallel, soak=a.soak, wait=a.wait).plan
    secs, plan, installed = ok.seconds, ok.plan, ok.installed
    n = a.count
    print("\nrollout through MQTT: %d simulated boards binding nothing (%s, heap %s, flash timing %s),"
          % (n, build, a.heap, a.flash_timing))
    print("one Mosquitto, one HTTP server (host/httpserve.py), the LAN's rollout engine (mqtt.MqttTransport)")
    print("  %-40s %7.1f s" % ("boards up and online on the broker", up))
    healthy = plan.count(rollout.HEALTHY)
    print("  %-40s %7.1f s (canary 1, waves 10%%,50%%,100%%, --parallel %d, soak %g s), %d/%d healthy"
          % ("rollout of a %.0f KiB image to all %d" % (good.size / 1024, n), secs, a.parallel, a.soak, healthy, n))
    for s, b in plan.boards.items():
        if b.state == rollout.FAILED:
            print("    %s failed: %s" % (s, b.error))
    rates = [e["rate"] for e in installed if e.get("rate")]
    if rates:
        mean = statistics.mean(rates)
        print("  %-40s mean %.1f KB/s, min %.1f, max %.1f (%d boards); flash ceiling %.0f KB/s: mean %.0f %% of it"
              % ("download per board (HTTP + flash)", mean / 1000, min(rates) / 1000, max(rates) / 1000, len(rates),
                 FLASH_CEILING / 1000, mean / FLASH_CEILING * 100))
    full = [g for g in pulls if g[1] in (200, 206)]
    print("  bytes served %.2f MiB in %d GETs for %d boards x %.0f KiB (%d resumed with Range)"
          % (sum(g[2] for g in full) / 2**20, len(full), n, good.size / 1024,
             sum(1 for g in full if g[1] == 206 and g[2] < good.size)))
    print("  crashing version: stopped by the canary: %d board(s) touched, %d others touched"
          % (crash.tried, crash.tried - 1))
    return 0 if healthy == n and crash.tried == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
