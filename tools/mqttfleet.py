"""A fleet behind one broker (issue 21): N simulated boards that bind nothing
(tools/sim.py --no-listen --mqtt), one private Mosquitto (tools/mosquitto.py), one
HTTP server of the release folder (host/httpserve.py, as `mpota serve`), a signing
key the boards trust, and the LAN's rollout engine through mqtt.MqttTransport. The
setup tools/bench_mqtt.py and tests/test_mqtt_fleet100.py share.

    from mqttfleet import MqttFleet
    with MqttFleet(100, work) as site:          # waits until every board is online on the broker
        site.ids, site.broker, site.sims        # device ids, the Broker, the fleetsim.Fleet
        site.ready_s, site.online_s             # seconds: every board's process ready; then all online
        img = site.app("2.0.0", crash=False)    # a signed app image of ~64 KiB, published (release.publish)
        r = site.rollout(img, parallel=25, soak=1)
        r.state, r.plan, r.seconds, r.events    # the engine's outcome, its time and events
        r.installed                             # the boards' "installed" events (their pull's rate)
        site.states()                           # every board's retained state, as the broker has it
    # boards, broker and server stopped
"""
import asyncio
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_fleet import app_image  # noqa: E402
from fleetsim import Fleet  # noqa: E402
from mosquitto import Broker  # noqa: E402

from host import keys, mqtt, release, rollout  # noqa: E402  (the package's folder, installed as mpota)
from host.httpserve import make_server  # noqa: E402


@dataclass
class Run:
    """One rollout through the broker."""
    state: str            # rollout.COMPLETE, PAUSED...
    plan: rollout.Plan
    seconds: float
    events: list          # the engine's events (dicts with "event")
    installed: list       # the boards' "installed" events (their "rate": the pull's bytes/s on the board)


class MqttFleet:
    def __init__(self, count: int, work, *, heap: Optional[str] = "board", micropython=None,
                 flash_timing: str = "none", on_request: Optional[Callable] = None, timeout: float = 300,
                 online: float = 120):
        """`work`: a folder of its own (key, releases, boards' state, rollouts); heap and
        micropython as fleetsim.Fleet; on_request as httpserve.make_server."""
        self.count, self.work = count, Path(work)
        self.fleet_kw = {"heap": heap, "micropython": micropython, "timeout": timeout}
        self.flash_timing, self.on_request, self.online_timeout = flash_timing, on_request, online
        self.server = self.broker = self.sims = None

    def __enter__(self) -> "MqttFleet":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.key_file = str(self.work / "signing.pem")
        keys.keygen(self.key_file)
        self.key = mqtt.signing_key(self.key_file)
        self.rel = self.work / "rel"
        self.rel.mkdir()
        self.server = make_server(self.rel, port=0, on_request=self.on_request)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = "http://127.0.0.1:%d" % self.server.server_port
        self.broker = Broker().start()
        flags = ["--mqtt", self.broker.hostport, "--no-listen", "--trust", self.key_file,
                 "--flash-timing", self.flash_timing]
        t0 = time.monotonic()
        self.sims = Fleet(self.count, self.work / "fleet", flags=flags, **self.fleet_kw)
        self.ready_s = time.monotonic() - t0
        self.ids = [b.device_id for b in self.sims.boards]
        t0 = time.monotonic()
        asyncio.run(self._online())
        self.online_s = time.monotonic() - t0

    async def _online(self) -> None:
        async with mqtt.Link(self.broker.url, timeout=30) as link:
            await link.wait_online(self.ids, self.online_timeout)

    def stop(self) -> None:
        if self.sims is not None:
            self.sims.stop()
            self.sims = None
        if self.broker is not None:
            self.broker.__exit__(None, None, None)  # stopped, its folder removed
            self.broker = None
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def app(self, version: str, crash: bool = False, size: int = 64 * 1024):
        """A signed app image of about `size` bytes (bench_fleet.app_image: it confirms itself,
        or raises at start when `crash`), published to the served folder."""
        img = app_image(self.work, version, size=size, crash=crash, key=self.key_file)
        release.publish(img, self.rel, self.key, self.base)
        return img

    def rollout(self, img, *, canary: int = 1, waves: str = "10%,50%,100%", soak: float = 1.0, parallel: int = 25,
                max_failures: str = "0", wait: float = 300.0) -> Run:
        """A rollout of `img` to every board through the broker, as `mpota rollout --via` runs it."""
        return asyncio.run(self._rollout(img, canary, waves, soak, parallel, max_failures, wait))

    async def _rollout(self, img, canary, waves, soak, parallel, max_failures, wait) -> Run:
        store = rollout.RolloutStore(self.work / "rollouts")
        plan = rollout.new_plan(img, self.ids, canary=canary, waves=waves, soak=soak, parallel=parallel,
                                max_failures=max_failures)
        store.create(plan, img)
        events: list = []
        async with mqtt.Link(self.broker.url, timeout=30) as link:
            t = mqtt.MqttTransport(link, lambda s: s, self.key, release.release_url(img, self.base), wait=wait)
            t0 = time.monotonic()
            state = await rollout.Rollout(plan, store, t, image=img).run(
                lambda name, **f: events.append(dict(f, event=name)))
            secs = time.monotonic() - t0
            installed = [e for q in link.events.values() for e in q if e.get("event") == "installed"]
        return Run(state, plan, secs, events, installed)

    def states(self) -> dict:
        """Every board's retained state (device id -> dict; None: the broker has none)."""
        async def read():
            async with mqtt.Link(self.broker.url, timeout=30) as link:
                return {i: link.state(i) for i in self.ids}
        return asyncio.run(read())
