"""Run tools/sim.py in the background: free loopback ports, a state dir, output capture.
Used by the tests, `make demo` and `make bench`.

    from simproc import Sim
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:   # waits for `sim: ready`
        s = socket.create_connection(("127.0.0.1", sim.tcp_port))
        ...
        mark = sim.mark()
        sim.wait_for_line("mpota: ready", timeout=30, since=mark)
        sim.power_cut()       # unplug and replug: the device is killed, boots again

`device_dir=` deploys another folder instead of device/ (tools/sim.py
--device-dir); `ready=False` skips the wait for the ready line.
`cut_during(base, state, n, action, errors)` runs `action(sim)` on a copy of a
device whose power is cut at flash operation n+1 and returns it restarted.
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sim import _pdeathsig  # one copy of the prctl dance (tools/sim.py)

REPO = Path(__file__).resolve().parent.parent
SIM = REPO / "tools" / "sim.py"
MICROPYTHON = os.environ.get("MPOTA_MICROPYTHON") or str(Path(sys.executable).parent / "micropython")


class SimError(AssertionError):
    """The simulator did not do what was awaited (it says what, with its output tail)."""


def free_port(kind=socket.SOCK_STREAM):
    """A port free on 127.0.0.1 for `kind` right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pace_bound():
    """(RATE, BURST) of the device's amplification limit (device/mpota_pace.py, read as text)."""
    import ast
    tree = ast.parse((REPO / "device" / "mpota_pace.py").read_text())
    v = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
         for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    return v["RATE"], v["BURST"]


def udp_flood(port, req, count, seconds=2.0):
    """One request and its reply, then (once the device's bucket has refilled)
    `count` copies of `req` to 127.0.0.1:`port` and every reply for `seconds`.
    -> (the first reply, the flood's replies, elapsed s, the most the replies
    may exceed their requests by: BURST + RATE x elapsed + one overdrawing reply)."""
    rate, burst = pace_bound()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        s.sendto(req, ("127.0.0.1", port))
        one = s.recv(2048)
        time.sleep(burst / rate + 0.1)  # the bucket refills
        t0 = time.monotonic()
        for _ in range(count):
            s.sendto(req, ("127.0.0.1", port))
        got = []
        while time.monotonic() - t0 < seconds:
            try:
                got.append(s.recv(2048))
            except socket.timeout:
                pass
        took = time.monotonic() - t0
    finally:
        s.close()
    return one, got, took, burst + rate * took + len(one)


def ready_or_stop(sim, timeout):
    """sim.wait_ready(timeout), and sim.stop() if that fails (Sim, fleetsim.Fleet)."""
    try:
        sim.wait_ready(timeout)
    except BaseException:
        sim.stop()
        raise


class DeviceFacts:
    """What a simulated device's state folder says (self.state; self.flags: its launcher's flags)."""

    @property
    def key(self):
        """The device's 32-byte HMAC key, or None (no auth)."""
        if "--no-auth" in self.flags:
            return None
        p = self.state / "device.key"
        return bytes.fromhex(p.read_text().strip()) if p.exists() else None

    @property
    def device_id(self):
        p = self.state / "device.id"
        return p.read_text().strip() if p.exists() else None


class Sim(DeviceFacts):
    def __init__(self, flags=(), state=None, device_dir=None, tcp_port=None, udp_port=None,
                 ready=True, timeout=60, echo=False):
        self.tcp_port = tcp_port or free_port(socket.SOCK_STREAM)
        self.udp_port = udp_port or free_port(socket.SOCK_DGRAM)
        self._own_state = state is None
        self.state = Path(state) if state is not None else Path(tempfile.mkdtemp(prefix="mpota-sim-"))
        self.flags = list(flags)
        self.echo = echo
        self.lines = []
        self.times = []  # time.monotonic() when each line came (benchmarks time stages by them)
        self._cond = threading.Condition()
        cmd = [sys.executable, str(SIM), "--state", str(self.state),
               "--tcp-port", str(self.tcp_port), "--udp-port", str(self.udp_port),
               "--micropython", MICROPYTHON]
        if device_dir is not None:
            # a folder of its own is deployed as it is, like `mpremote cp DIR/*.py :`
            cmd += ["--device-dir", str(device_dir)]
            if "--deploy" not in flags:
                cmd += ["--deploy", "py"]
        cmd += self.flags
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(REPO),
                                     preexec_fn=_pdeathsig)  # noqa: PLW1509 (no locks taken)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if ready:
            ready_or_stop(self, timeout)

    # -- output ---------------------------------------------------------------
    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if self.echo:
                print("[sim] " + line, flush=True)
            with self._cond:
                self.lines.append(line)
                self.times.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def tail(self, n=20):
        with self._cond:
            return "\n".join(self.lines[-n:])

    @property
    def output(self):
        with self._cond:
            return "\n".join(self.lines)

    def mark(self):
        """Index of the next output line (for wait_for_line(..., since=mark))."""
        with self._cond:
            return len(self.lines)

    def wait_for_line(self, substring, timeout=30, since=0):
        """The first line from index `since` containing `substring`; AssertionError
        (with the output tail) after `timeout` s or when the launcher has ended."""
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            while True:
                while i < len(self.lines):
                    if substring in self.lines[i]:
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    why = "timed out after %ss" % timeout if left <= 0 else \
                        "launcher exited (%s)" % self.proc.returncode
                    tail = "\n".join(self.lines[-40:])
                    raise SimError("sim: no line with %r (%s); output tail:\n%s"
                                   % (substring, why, tail))
                self._cond.wait(min(left, 0.5))

    def wait_ready(self, timeout=60):
        return self.wait_for_line("sim: ready", timeout)

    @property
    def returncode(self):
        return self.proc.poll()

    # -- lifetime -------------------------------------------------------------
    def power_cut(self, timeout=60):
        """Cut the power: SIGKILL the device (the launcher's child, by its pid), as
        unplugging the board does; the launcher restarts it (reset cause power_on).
        Waits for the next `mpota: ready` line unless timeout is None."""
        mark = self.mark()
        pid = self._device_pid()
        os.kill(pid, signal.SIGKILL)
        if timeout is not None:
            self.wait_for_line("mpota: ready", timeout, since=mark)

    def _device_pid(self):
        # the launcher runs one device at a time: its only child
        path = "/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(path) as f:
                    pids = f.read().split()
            except OSError:
                raise SimError("sim: cannot see the device process (%s)" % path) from None
            if len(pids) == 1:
                return int(pids[0])
            time.sleep(0.1)  # between two boots
        raise SimError("sim: no single device process under the launcher")

    def stop(self, timeout=15):
        """SIGTERM the launcher (it stops the device); returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self._own_state:
            shutil.rmtree(self.state, ignore_errors=True)
        return self.proc.returncode

    def wait_exit(self, timeout=30):
        """Wait for the launcher to end by itself; returns its status."""
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


__all__ = ["DeviceFacts", "ready_or_stop", "Sim", "SimError", "free_port"]


@contextlib.contextmanager
def cut_during(base, state, n, action, errors, flags=("--no-auth",)):
    """Copy the device state `base` to `state`, start it with the power cut
    after flash operation n (tools/sim.py --power-cut-after), run
    `action(sim)` (the errors `errors` that the dying device causes are
    ignored), wait for the cut and the restart, and yield the Sim."""
    shutil.copytree(base, state)
    with Sim(state=state, flags=list(flags) + ["--power-cut-after", str(n)]) as sim:
        mark = sim.mark()
        try:
            action(sim)
        except errors:
            pass  # the connection died with the device
        sim.wait_for_line("sim: power cut", timeout=30, since=mark)
        sim.wait_for_line("mpota: ready", timeout=30, since=mark)
        yield sim
