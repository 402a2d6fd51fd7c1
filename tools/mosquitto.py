"""A private Mosquitto broker on a free loopback port, for the tests and the benches.

    from mosquitto import Broker
    with Broker() as b:                  # waits until it accepts connections
        b.port, b.hostport, b.url        # 41234, "127.0.0.1:41234", "mqtt://127.0.0.1:41234"
        b.restart()                      # stop, then start again on the same port
    # stopped, its temp folder removed

The broker is Debian's `mosquitto` (`make setup` installs it when missing). Its
config is written to a temp folder: one listener on 127.0.0.1 only, anonymous
clients allowed, no persistence (nothing is written to disk, so a restart loses
the retained messages, as a broker replaced by a new one does). Its log goes
to TMP/mosquitto.log (`tail()` reads it). A Broker never outlives its process
(PR_SET_PDEATHSIG), and stop() is bounded in time.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sim import _pdeathsig  # one copy of the prctl dance (tools/sim.py)
from simproc import free_port

START_TIMEOUT = 10.0  # seconds for the broker to accept its first connection
INSTALL_HINT = "run `make setup` (it installs it as root: apt-get update && apt-get install -y mosquitto)"


class MosquittoMissing(RuntimeError):
    """No `mosquitto` binary on this machine."""


class BrokerError(RuntimeError):
    """The broker did not start (its log's tail is in the message)."""


def mosquitto_path() -> str:
    """The broker binary: $MOSQUITTO, else `mosquitto` on PATH, else /usr/sbin/mosquitto
    (Debian's place, not on a user's PATH); MosquittoMissing when there is none."""
    for p in (os.environ.get("MOSQUITTO"), shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise MosquittoMissing("the Mosquitto MQTT broker is not installed: " + INSTALL_HINT)


def config_text(port: int) -> str:
    return ("listener %d 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 10000\n" % port)


class Broker:
    def __init__(self, port=None):
        self.exe = mosquitto_path()
        self.dir = Path(tempfile.mkdtemp(prefix="mpota-mosquitto-"))
        self.port = port
        self.proc = None
        self._log = None

    @property
    def hostport(self) -> str:
        return "127.0.0.1:%d" % self.port

    @property
    def url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.port

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.dir / "mosquitto.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> "Broker":
        """Start on self.port (a free one when None; a port taken meanwhile by
        someone else is replaced by another, twice at most)."""
        fixed = self.port is not None
        for attempt in range(3):
            if not fixed:
                self.port = free_port()
            try:
                self._start_once()
                return self
            except BrokerError:
                if fixed or attempt == 2:
                    raise
        return self

    def _start_once(self) -> None:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(config_text(self.port))
        self._log = open(self.dir / "mosquitto.log", "ab")
        # run as root, mosquitto drops to the user `mosquitto`: it reads its config
        # before that, and logs to the stdout it inherits, so no file must be its
        self.proc = subprocess.Popen([self.exe, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError("mosquitto did not start on 127.0.0.1:%d:\n%s" % (self.port, self.tail()))

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, down: float = 0.0) -> None:
        """Stop, stay down `down` seconds, start again on the same port (every client
        is disconnected; with no persistence, the retained messages are gone)."""
        self.stop()
        time.sleep(down)
        self._start_once()

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
