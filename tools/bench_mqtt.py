#!/usr/bin/env python3
"""MQTT figures on the board side (issue 21), on simulated boards:

- the agent's idle heap with MQTT off and on (connected to a real Mosquitto),
  status mem_idle - mem_base, as docs/memory.md measures every feature;
- an install pulled over HTTP (host/httpserve.py) through the broker: its
  download rate, with the simulator's flash timing off and at the W25Q's
  typical erase/program times (the ~80 KB/s ceiling of docs/board.md), and the
  heap peak of the install (mem_peak - mem_base, from the "installed" event).

    python tools/bench_mqtt.py [--micropython PATH] [--heap 160K] [--size 65536]

Use the 32-bit v1.27 build (MPOTA_BOARD_TOOLS) for the board's object sizes.
"""
import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import boardbuilds  # noqa: E402
from bench_fleet import agent_idle, app_image  # noqa: E402
from mosquitto import Broker  # noqa: E402
from simproc import MICROPYTHON, Sim  # noqa: E402

from host import httpserve, keys  # noqa: E402
from host.codec import mpota_command as command  # noqa: E402

FLEET = "bench"


async def _idle(port, key, settle=False):
    # one connection first when `settle`: its end settles the agent, which then
    # measures mem_idle with everything resident since boot (the MQTT client)
    if settle:
        await agent_idle(port, key)
        await asyncio.sleep(0.5)
    return await agent_idle(port, key)


def idle_memory(work, mp, heap, broker):
    """[(label, agent idle bytes)]: MQTT off, and on (connected)."""
    rows = []
    with Sim(state=work / "off", flags=["--heap", heap, "--micropython", mp]) as sim:
        rows.append(("MQTT off", asyncio.run(_idle(sim.tcp_port, sim.key))))
    with Sim(state=work / "on", flags=["--heap", heap, "--micropython", mp, "--mqtt", broker.hostport,
                                        "--fleet", FLEET]) as sim:
        sim.wait_for_line("mpota: mqtt connected", 30)
        time.sleep(1)
        rows.append(("MQTT on, connected", asyncio.run(_idle(sim.tcp_port, sim.key, settle=True))))
    return rows


def install(work, mp, heap, broker, img, key, timing):
    """One install through the broker -> the board's "installed" event."""
    import paho.mqtt.client as paho

    www = work / ("www-" + timing)
    www.mkdir()
    sha = hashlib.sha256(img.data).hexdigest()
    (www / (sha + ".bin")).write_bytes(img.data)
    srv = httpserve.make_server(www, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    got = []
    cond = threading.Condition()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)

    def on(c, u, m):
        with cond:
            got.append(json.loads(m.payload))
            cond.notify_all()

    c.on_message = on
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        with Sim(state=work / ("i-" + timing), flags=["--heap", heap, "--micropython", mp, "--mqtt",
                                                     broker.hostport, "--fleet", FLEET, "--no-listen",
                                                     "--trust", str(key), "--flash-timing", timing]) as sim:
            sim.wait_for_line("mpota: mqtt connected", 30)
            c.subscribe("mpota/%s/%s/events" % (FLEET, sim.device_id), 1)
            time.sleep(0.5)
            body = command.body_bytes({"seq": int(time.time() * 1000), "fleet": FLEET, "to": sim.device_id,
                                       "op": "install", "sha256": sha, "size": len(img.data),
                                       "version": img.version,
                                       "url": "http://127.0.0.1:%d/%s.bin" % (srv.server_port, sha)})
            p = command.pack(keys.load(key).sign_digest(command.signed_message(body)), body)
            c.publish("mpota/%s/%s/cmd" % (FLEET, sim.device_id), p, qos=1, retain=True).wait_for_publish(5)
            end = time.monotonic() + 120
            with cond:
                while time.monotonic() < end:
                    done = [e for e in got if e["event"] in ("installed", "error")]
                    if done:
                        return done[0]
                    cond.wait(1)
            raise SystemExit("bench_mqtt: no outcome in 120 s:\n" + sim.tail(20))
    finally:
        c.loop_stop()
        srv.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--micropython", default=boardbuilds.i386() or MICROPYTHON)
    ap.add_argument("--heap", default="160K")
    ap.add_argument("--size", type=int, default=64 * 1024)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpota-bench-mqtt-") as t, Broker() as broker:
        work = Path(t)
        print("board build: %s, heap %s" % (a.micropython, a.heap))
        for label, n in idle_memory(work, a.micropython, a.heap, broker):
            print("  agent idle, %-20s %7d B" % (label + ":", n))
        key = work / "k.pem"
        keys.keygen(key)
        from host import images
        img = app_image(work, "1.0.0", a.size)
        img = images.build_folder(work / "app-1.0.0", "1.0.0", str(key))
        for timing in ("none", "w25q"):
            e = install(work, a.micropython, a.heap, broker, img, key, timing)
            if e["event"] != "installed":
                raise SystemExit("bench_mqtt: install failed: %s" % e)
            print("  pull %d B, flash timing %-4s: %6.1f KB/s (%d ms); install heap peak %d B"
                  % (len(img.data), timing, e["rate"] / 1000, e["ms"], e["mem_peak"] - e["mem_base"]))
    print("  (the physical ceiling through 4 KiB sectors is about 80 KB/s: docs/board.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
