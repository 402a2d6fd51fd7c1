"""`mpota serve --mqtt-broker`: a small MQTT broker in this process, to try the flow on one
machine without installing Mosquitto (docs/mqtt.md). It is amqtt's broker (PyPI `amqtt`,
the optional extra `mpota[broker]`), run on an asyncio loop in a thread of its own:

    b = EmbeddedBroker("127.0.0.1", 1883).start()    # UsageError when amqtt is missing
    b.url                                           # "mqtt://127.0.0.1:1883"
    b.stop()

It keeps retained messages and last wills in memory (lost when it stops), lets anyone
connect (no login) and listens only where it is told (default: this machine). A fleet
uses a real broker (Mosquitto, EMQX, a cloud one).
"""
from __future__ import annotations

import asyncio
import threading
from typing import Optional

from .errors import UsageError


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883):
        self.host, self.port = host, port
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._broker = None

    @property
    def url(self) -> str:
        return "mqtt://%s:%d" % (self.host, self.port)

    def start(self, timeout: float = 10.0) -> "EmbeddedBroker":
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise UsageError("--mqtt-broker needs the amqtt package",
                             "pip install 'mpota[broker]' (or run Mosquitto and give the boards its address)") from None
        cfg = {"listeners": {"default": {"type": "tcp", "bind": "%s:%d" % (self.host, self.port)}},
               "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        self._loop = asyncio.new_event_loop()
        started: dict = {}
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self._loop)

            async def up():
                self._broker = Broker(cfg, loop=self._loop)
                await self._broker.start()

            try:
                self._loop.run_until_complete(up())
            except BaseException as e:  # amqtt wraps a bind error in its own
                started["error"] = e
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="mqtt-broker", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or "error" in started:
            err = started.get("error")
            raise UsageError("cannot run the MQTT broker on %s:%d: %s" % (self.host, self.port, err or "timed out"),
                             "is a broker already listening there? then give the boards that one, or another "
                             "--mqtt-port")
        return self

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._broker = None
