#!/usr/bin/env python3
"""Run many simulated Pico W boards at once, light enough for 100 on 2 cores.

    python tools/fleetsim.py --count 100 --state .fleet [--base-port 21000] [--heap SIZE]
        [--config FILE] [--micropython PATH] [--echo]

One CPython process runs one tools/sim.py Launcher per board (a thread each,
no launcher process per board); each board is one unix-port MicroPython
process with its own state folder STATE/board-NNN (flash, device.id,
device.key), its own TCP port (BASE+i; discovery answers on the same UDP
port number) and its own legacy UDP port number (not bound unless a board's
flags ask for it). Every board gets the device config FILE (default: none)
with "wifi": {"hostname": "sim-NNN"} added, so discovery reports a name.
Ready: `fleet: ready N boards tcp=127.0.0.1:FIRST-LAST`; then
`mpota discover --to 127.0.0.1:FIRST-LAST` finds them. SIGTERM/SIGINT stop
every board.

    from fleetsim import Fleet
    with Fleet(20, tmp_path / "fleet") as sims:       # waits until every board is ready
        sims.addresses                                  # [("127.0.0.1", port), ...]
        sims.boards[3].key, sims.boards[3].device_id, sims.boards[3].tail()
        sims.rss(), sims.pss(), sims.cpu_seconds()      # of the device processes
"""
import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim  # noqa: E402  (tools/sim.py: the launcher, one per board here)
from simproc import DeviceFacts, ready_or_stop  # noqa: E402

WATCHDOG_POLL_S = 0.5  # each board's hang watchdog (sim.Launcher.watchdog): 100 boards, 200 wakeups/s
TAIL = 200  # output lines kept per board


# The app the fleet tests roll out: it confirms itself and keeps running, or,
# told to, fails at start (a canary that must stop a rollout).
APP = '''import asyncio
import mpota


async def main():
    if %r:
        raise RuntimeError("version %s is broken")
    mpota.confirm()
    while True:
        await asyncio.sleep(1)
'''


def app_folder(root: Path, version: str, crash: bool = False) -> Path:
    """root/app-VERSION holding APP's main.py (made now)."""
    folder = root / ("app-" + version)
    folder.mkdir()
    (folder / "main.py").write_text(APP % (crash, version))
    return folder


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_range(count: int, start: Optional[int] = None, stop: int = 60000) -> int:
    """The first BASE >= start where BASE..BASE+count-1 are free for TCP and UDP on 127.0.0.1.
    Without `start`, the search begins at a random port in 21000..49999: two fleets
    started at once by different processes (two test runs on one machine) would
    otherwise both find the same free range before either board binds it."""
    # (os.urandom, not the random module: a test may have seeded that, and two
    # test runs would then pick the same "random" start)
    base = start if start is not None else 21000 + int.from_bytes(os.urandom(4), "big") % 29000
    while base + count < stop:
        bad = next((p for p in range(base, base + count) if not _free(p)), None)
        if bad is None:
            return base
        base = bad + 1
    raise RuntimeError("fleetsim: no %d free ports in %d..%d" % (count, start, stop))


class Board(DeviceFacts):
    """One simulated board: its launcher (a thread here), its ports and its output tail;
    key and device_id as simproc.Sim has them."""

    def __init__(self, index: int, state: Path, tcp_port: int, udp_port: int, argv: list, echo: bool):
        self.index = index
        self.flags = argv
        self.name = "sim-%03d" % index
        self.state = state
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.lines = collections.deque(maxlen=TAIL)
        self.ready = threading.Event()
        self.echo = echo
        self.launcher = sim.Launcher(sim.parse_args(argv), emit=self._line, poll_s=WATCHDOG_POLL_S)
        self.rc = None
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def _line(self, line: str) -> None:
        self.lines.append(line)
        if self.echo:
            sys.stdout.write("[%s] %s\n" % (self.name, line))
            sys.stdout.flush()
        if line.startswith("sim: ready"):
            self.ready.set()

    def _run(self) -> None:
        try:
            self.rc = self.launcher.run()
        except Exception as e:  # one board's launcher failing must not pass silently
            self._line("fleetsim: launcher failed: %r" % (e,))
            self.rc = 1

    def tail(self, n: int = 20) -> str:
        return "\n".join(list(self.lines)[-n:])

    @property
    def pid(self):
        p = self.launcher.proc
        return p.pid if p is not None and p.poll() is None else None


def board_heap(mp: str) -> str:
    """The heap that stands for the board's 160 KiB under interpreter `mp`: 160K on a
    32-bit build (the board's object sizes), 256K on a 64-bit one, whose objects take
    1.6-2x more (the agent idles at ~50 KB there, ~27 KB on 32 bits): at 160K a 64-bit
    board whose app crashed could be left without a block to authenticate in."""
    try:
        r = subprocess.run([mp, "-c", "import sys; print(sys.maxsize > 1 << 32)"], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "160K"
    return "256K" if r.stdout.strip() == "True" else "160K"


class Fleet:
    def __init__(self, count: int, state, base_port=None, heap: Optional[str] = "board", config=None, flags=(),
                 micropython=None, ready: bool = True, timeout: float = 180, echo: bool = False):
        """heap: each board's heap ("board": board_heap(micropython); None: the interpreter's default)."""
        self.state = Path(state).resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.base = base_port or free_range(2 * count)  # TCP (and discovery) ports, then legacy UDP ones
        mp = micropython or os.environ.get("MPOTA_MICROPYTHON") or str(Path(sys.executable).parent / "micropython")
        heap = board_heap(mp) if heap == "board" else heap
        base_cfg = json.loads(Path(config).read_text()) if config else {}
        self.boards = []
        for i in range(count):
            st = self.state / ("board-%03d" % i)
            st.mkdir(exist_ok=True)
            cfg = dict(base_cfg)
            cfg["wifi"] = dict(base_cfg.get("wifi") or {}, hostname="sim-%03d" % i)
            (st / "config.json").write_text(json.dumps(cfg))
            argv = ["--state", str(st), "--tcp-port", str(self.base + i), "--udp-port", str(self.base + count + i),
                    "--micropython", mp, "--config", str(st / "config.json")] + \
                (["--heap", heap] if heap else []) + list(flags)
            self.boards.append(Board(i, st, self.base + i, self.base + count + i, argv, echo))
        # the .mpy cache is filled once here: the launchers' threads then only read it
        a = self.boards[0].launcher.a if self.boards else None
        if a is not None and a.deploy == "mpy":
            sim.mpy_deploy(sim.deploy_list(a.device_dir), a.micropython, sim.REPO / "build" / "mpy")
        for b in self.boards:
            b.thread.start()
        if ready:
            ready_or_stop(self, timeout)

    @property
    def addresses(self) -> list:
        return [("127.0.0.1", b.tcp_port) for b in self.boards]

    @property
    def ports(self) -> str:
        """FIRST-LAST, for `mpota discover --to 127.0.0.1:FIRST-LAST`."""
        return "%d-%d" % (self.base, self.base + len(self.boards) - 1)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        for b in self.boards:
            if not b.ready.wait(max(0.0, deadline - time.monotonic())):
                why = "ended (%s)" % b.rc if not b.thread.is_alive() else "not ready after %ss" % timeout
                raise AssertionError("fleetsim: %s %s; output tail:\n%s" % (b.name, why, b.tail(30)))

    def _proc(self, name: str) -> list:
        # the text of /proc/PID/NAME of each running device process
        out = []
        for b in self.boards:
            pid = b.pid
            try:
                with open("/proc/%d/%s" % (pid, name)) as f:
                    out.append(f.read())
            except (OSError, TypeError):  # ended meanwhile, or not running (pid None)
                continue
        return out

    def rss(self) -> list:
        """Each running device process's resident set size, in bytes."""
        return [_kib(t, "VmRSS:") * 1024 for t in self._proc("status")]

    def pss(self) -> list:
        """Each running device process's proportional set size (shared pages divided), in bytes."""
        return [_kib(t, "Pss:") * 1024 for t in self._proc("smaps_rollup")]

    def cpu_seconds(self) -> float:
        """The CPU time (user + system) the device processes have used so far."""
        ticks = 0
        for t in self._proc("stat"):
            f = t.rsplit(")", 1)[1].split()
            ticks += int(f[11]) + int(f[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self, grace: float = sim.STOP_GRACE_S, timeout: float = 20.0) -> list:
        """Stop every board at once (SIGTERM, SIGKILL after `grace` s: sim.Launcher.stop)
        and wait `timeout` s for all of them in all, never per board; -> the names of
        boards whose launcher thread had not ended by then (their devices are killed)."""
        for b in self.boards:
            b.launcher.stop(grace=grace)
        deadline = time.monotonic() + timeout
        for b in self.boards:
            b.thread.join(max(0.0, deadline - time.monotonic()))
        left = [b for b in self.boards if b.thread.is_alive()]
        for b in left:
            b.launcher.kill()
        return [b.name for b in left]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _kib(text: str, field: str) -> int:
    return next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith(field)), 0)


def own_rss() -> int:
    """This process's resident set size, in bytes (the launchers' share)."""
    with open("/proc/self/status") as f:
        return _kib(f.read(), "VmRSS:") * 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fleetsim.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, required=True, help="how many boards")
    p.add_argument("--state", required=True, help="folder of the boards' state folders (board-NNN)")
    p.add_argument("--base-port", type=int, default=None, help="first TCP port (default: a free range from 21000)")
    p.add_argument("--heap", default="board", help="each board's MicroPython heap (default: the board's 160K, "
                   "256K on a 64-bit build, whose objects are larger)")
    p.add_argument("--config", default=None, metavar="FILE", help="device config every board gets")
    p.add_argument("--micropython", default=None, help="unix-port micropython (default: beside this Python)")
    p.add_argument("--echo", action="store_true", help="print every board's output, prefixed by its name")
    a = p.parse_args(argv)
    if not 0 < a.count <= 1000:
        p.error("--count must be 1..1000")
    stop = threading.Event()
    t0 = time.monotonic()
    fleet = Fleet(a.count, a.state, a.base_port, a.heap, a.config, micropython=a.micropython, ready=False,
                  echo=a.echo)
    try:
        fleet.wait_ready()  # (Ctrl-C meanwhile: KeyboardInterrupt, and the boards stop)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        rss = fleet.rss()
        print("fleet: ready %d boards tcp=127.0.0.1:%s in %.1f s; device RSS %.1f MiB each, launcher %.1f MiB"
              % (a.count, fleet.ports, time.monotonic() - t0, sum(rss) / len(rss) / 2**20 if rss else 0,
                 own_rss() / 2**20), flush=True)
        print("fleet: find them with `mpota discover --to 127.0.0.1:%s`" % fleet.ports, flush=True)
        while not stop.wait(1):
            pass
    finally:
        fleet.stop()
    print("fleet: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
