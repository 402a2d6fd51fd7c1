#!/usr/bin/env python3
"""MQTT figures on the board side (issue 21), on simulated boards:

- the agent's idle heap with MQTT off and on (connected to a real Mosquitto),
  status mem_idle - mem_base, as docs/memory.md measures every feature;
- an install pulled over HTTP (host/httpserve.py) through the broker: its
  download rate, with the simulator's flash timing off and at the W25Q's
  typical erase/program times (the ~80 KB/s ceiling of docs/board.md), and the
  heap peak of the install (mem_peak - mem_base, from the "installed" event).

    python tools/bench_mqtt_board.py [--micropython PATH] [--heap 160K] [--size 65536]

Use the 32-bit v1.27 build (MPOTA_BOARD_TOOLS) for the board's object sizes.
Rig (a broker, an HTTP folder, a paho client that signs commands and collects
events) also serves tools/bench_headroom.py --via mqtt.
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


class Rig:
    """A broker, a folder served over HTTP with Range, and the host's half of the
    commands (signed with `key`) and events, for simulated boards in FLEET."""

    def __init__(self, work: Path, key: Path):
        import paho.mqtt.client as paho

        self.key = key
        self.www = work / "www"
        self.www.mkdir(exist_ok=True)
        self.broker = Broker().start()
        self.http = httpserve.make_server(self.www, port=0)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.got = []
        self.cond = threading.Condition()
        self.seq = int(time.time() * 1000)
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", self.broker.port)
        self.c.subscribe("mpota/%s/+/events" % FLEET, 1)
        self.c.subscribe("mpota/%s/+/state" % FLEET, 1)
        self.states = {}  # device id -> its last state
        self.c.loop_start()

    def flags(self):
        return ["--mqtt", self.broker.hostport, "--fleet", FLEET, "--trust", str(self.key)]

    def _on(self, c, u, m):
        with self.cond:
            d = json.loads(m.payload)
            if m.topic.endswith("/state"):
                self.states[m.topic.split("/")[2]] = d
            else:
                self.got.append(d)
            self.cond.notify_all()

    def state(self, dev: str, pred, timeout=60) -> dict:
        """The board's state once `pred` holds for it."""
        end = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < end:
                st = self.states.get(dev)
                if st and st.get("online") and pred(st):
                    return st
                self.cond.wait(1)
        raise TimeoutError("no matching state of %s in %d s: %s" % (dev, timeout, self.states.get(dev)))

    def command(self, dev: str, op: str, **fields) -> int:
        self.seq += 1
        d = {"seq": self.seq, "fleet": FLEET, "to": dev, "op": op}
        d.update(fields)
        body = command.body_bytes(d)
        p = command.pack(keys.load(self.key).sign_digest(command.signed_message(body)), body)
        self.c.publish("mpota/%s/%s/cmd" % (FLEET, dev), p, qos=1, retain=True).wait_for_publish(5)
        return self.seq

    def outcome(self, seq: int, names, timeout=120) -> dict:
        """The first event of `seq` named in `names` (or an error/rejected one)."""
        end = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < end:
                for e in self.got:
                    if e["seq"] == seq and e["event"] in tuple(names) + ("error", "rejected"):
                        return e
                self.cond.wait(1)
        raise TimeoutError("no %s for command %d in %d s" % ("/".join(names), seq, timeout))

    def install(self, dev: str, data: bytes, version: str, timeout=120) -> dict:
        sha = hashlib.sha256(data).hexdigest()
        (self.www / (sha + ".bin")).write_bytes(data)
        seq = self.command(dev, "install", sha256=sha, size=len(data), version=version,
                           url="http://127.0.0.1:%d/%s.bin" % (self.http.server_port, sha))
        return self.outcome(seq, ("installed",), timeout)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()
        self.http.shutdown()
        self.broker.stop()


async def _idle(port, key, settle=False):
    # one connection first when `settle`: its end settles the agent, which then
    # measures mem_idle with everything resident since boot (the MQTT client)
    if settle:
        await agent_idle(port, key)
        await asyncio.sleep(0.5)
    return await agent_idle(port, key)


def idle_memory(work, mp, heap, rig):
    """[(label, agent idle bytes)]: MQTT off, and on (connected)."""
    rows = []
    with Sim(state=work / "off", flags=["--heap", heap, "--micropython", mp]) as sim:
        rows.append(("MQTT off", asyncio.run(_idle(sim.tcp_port, sim.key))))
    with Sim(state=work / "on", flags=["--heap", heap, "--micropython", mp] + rig.flags()) as sim:
        sim.wait_for_line("mpota: mqtt connected", 30)
        time.sleep(1)
        rows.append(("MQTT on, connected", asyncio.run(_idle(sim.tcp_port, sim.key, settle=True))))
    return rows


def pull(work, mp, heap, rig, img, timing):
    """One install through the broker on a board that listens on nothing -> its "installed" event."""
    with Sim(state=work / ("i-" + timing), flags=["--heap", heap, "--micropython", mp, "--no-listen",
                                                 "--flash-timing", timing] + rig.flags()) as sim:
        sim.wait_for_line("mpota: mqtt connected", 30)
        time.sleep(0.5)
        e = rig.install(sim.device_id, img.data, img.version)
        if e["event"] != "installed":
            raise SystemExit("bench_mqtt_board: install failed: %s\n%s" % (e, sim.tail(20)))
        return e


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--micropython", default=boardbuilds.i386() or MICROPYTHON)
    ap.add_argument("--heap", default="160K")
    ap.add_argument("--size", type=int, default=64 * 1024)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpota-bench-mqtt-") as t:
        work = Path(t)
        key = work / "k.pem"
        keys.keygen(key)
        rig = Rig(work, key)
        try:
            print("board build: %s, heap %s" % (a.micropython, a.heap))
            for label, n in idle_memory(work, a.micropython, a.heap, rig):
                print("  agent idle, %-20s %7d B" % (label + ":", n))
            from host import images
            app_image(work, "1.0.0", a.size)
            img = images.build_folder(work / "app-1.0.0", "1.0.0", str(key))
            for timing in ("none", "w25q"):
                e = pull(work, a.micropython, a.heap, rig, img, timing)
                print("  pull %d B, flash timing %-4s: %6.1f KB/s (%d ms); install heap peak %d B"
                      % (len(img.data), timing, e["rate"] / 1000, e["ms"], e["mem_peak"] - e["mem_base"]))
        finally:
            rig.close()
    print("  (the physical ceiling through 4 KiB sectors is about 80 KB/s: docs/board.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
