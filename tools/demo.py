#!/usr/bin/env python3
"""`make demo`: update a simulated Pico W from version 1 to version 2 of the example app.

Starts tools/sim.py on free loopback ports with a throwaway state directory
(a fresh device with its own key), then drives host/flash.py exactly as a
user would: build v1, push and confirm it, show status, push v2 straight from
the folder (progress bar), show status again, stop the simulator.
Bounded in time, cleans up after itself, exits non-zero on any failure.
"""
from __future__ import annotations

import json
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

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
FLASH = str(REPO / "host" / "flash.py")
STEP_TIMEOUT = 180  # seconds for any one command
READY_TIMEOUT = 90


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banner(text: str) -> None:
    print("\n\033[1m== %s\033[0m" % text if sys.stdout.isatty() else "\n== %s" % text, flush=True)


class SimProcess:
    """tools/sim.py in the background; its output kept (app lines echoed)."""

    def __init__(self, state: Path, tcp: int, udp: int, extra=()):
        self.lines: list = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [PY, str(REPO / "tools" / "sim.py"), "--state", str(state), "--tcp-port", str(tcp),
             "--udp-port", str(udp)] + list(extra),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(REPO), start_new_session=True)
        self.shown = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        with self.cond:
            while not any(text in ln for ln in self.lines):
                if self.proc.poll() is not None:
                    raise RuntimeError("simulator exited (%s):\n%s" % (self.proc.returncode, self.tail()))
                left = end - time.monotonic()
                if left <= 0:
                    raise RuntimeError("simulator not ready after %d s:\n%s" % (timeout, self.tail()))
                self.cond.wait(min(left, 0.5))

    def show_app_lines(self) -> None:
        """Echo what the device's app printed since last time."""
        with self.cond:
            new = self.lines[self.shown:]
            self.shown = len(self.lines)
        for ln in new:
            if ln.startswith("hello:") or "rolled back" in ln:
                print("   device | " + ln, flush=True)

    def tail(self, n: int = 20) -> str:
        with self.cond:
            return "\n".join(self.lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def flash(env: dict, *args, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [PY, FLASH] + [str(a) for a in args]
    print("$ python host/flash.py " + " ".join(str(a) for a in args), flush=True)
    r = subprocess.run(cmd, env=env, cwd=str(REPO), timeout=STEP_TIMEOUT,
                       capture_output=capture, text=True)
    if r.returncode != 0:
        if capture:
            sys.stderr.write(r.stdout + r.stderr)
        raise RuntimeError("flash.py %s failed with exit code %d" % (args[-1], r.returncode))
    return r


def running(env: dict, target: str) -> dict:
    r = subprocess.run([PY, FLASH, "-t", target, "--json", "status"], env=env, cwd=str(REPO),
                       timeout=STEP_TIMEOUT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("status failed: %s" % r.stderr.strip())
    st = json.loads(r.stdout.splitlines()[-1])
    slot = st.get("running")
    s = (st.get("slots") or {}).get(slot) or {}
    return {"slot": slot, "version": s.get("version"), "state": s.get("state"), "trial": st.get("trial")}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mpota-demo-"))
    state = work / "device"
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    target = "127.0.0.1:%d" % tcp
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = os.devnull
    env["MPOTA_KEY_FILE"] = str(state / "device.key")  # the simulated device's own key
    sim = None
    t0 = time.monotonic()
    try:
        banner("start a simulated Pico W (unix-port MicroPython, 848 KiB flash) on %s" % target)
        sim = SimProcess(state, tcp, udp)
        sim.wait_for("sim: ready", READY_TIMEOUT)
        print("simulator ready; its key is in %s (never printed)" % env["MPOTA_KEY_FILE"], flush=True)

        app = work / "hello"
        shutil.copytree(REPO / "examples" / "hello", app)
        banner("build version 1.0.0 of examples/hello and push it")
        img1 = work / "hello-1.0.0.img"
        flash(env, "build", app, "--version", "1.0.0", "-o", img1)
        flash(env, "-t", target, "push", img1)
        sim.show_app_lines()

        banner("status with version 1.0.0")
        flash(env, "-t", target, "status")
        before = running(env, target)

        banner("push version 2.0.0 straight from the folder")
        (app / "VERSION").write_text("2.0.0\n")
        flash(env, "-t", target, "push", app)
        sim.show_app_lines()

        banner("status with version 2.0.0")
        flash(env, "-t", target, "status")
        after = running(env, target)
        if after["version"] != "2.0.0+0" or after["state"] != "confirmed":
            raise RuntimeError("expected 2.0.0 running and confirmed, got %s" % after)
        sim.stop()
        print("\ndemo: the simulated Pico W went from %s (slot %s) to %s (slot %s), running and "
              "confirmed, in %.0f s." % (before["version"], before["slot"], after["version"], after["slot"],
                                        time.monotonic() - t0), flush=True)
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        print("\ndemo: FAILED: %s" % e, file=sys.stderr)
        if sim is not None:
            print("simulator output (tail):\n" + sim.tail(), file=sys.stderr)
        return 1
    finally:
        if sim is not None:
            sim.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
