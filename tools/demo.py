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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from simproc import Sim, SimError, free_port  # noqa: E402
PY = sys.executable
FLASH = str(REPO / "host" / "flash.py")
STEP_TIMEOUT = 180  # seconds for any one command
READY_TIMEOUT = 90


WORK = [None]  # the scratch folder, once made (for echoing commands short)


def banner(text: str) -> None:
    print("\n\033[1m== %s\033[0m" % text if sys.stdout.isatty() else "\n== %s" % text, flush=True)


def show_app_lines(sim: Sim, shown: list) -> None:
    """Echo what the device's app printed since last time (shown[0]: lines already seen)."""
    new = sim.lines[shown[0]:]
    shown[0] += len(new)
    for ln in new:
        if ln.startswith("hello:") or "rolled back" in ln:
            print("   device | " + ln, flush=True)


def flash(env: dict, *args, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [PY, FLASH] + [str(a) for a in args]
    # Echo the command with the scratch folder as $DEMO, so it fits 80 columns.
    shown = " ".join(str(a).replace(str(WORK[0]), "$DEMO") for a in args)
    print("$ python host/flash.py " + shown, flush=True)
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
        WORK[0] = work
        banner("start a simulated Pico W on %s" % target)
        print("scratch folder: DEMO=%s" % work, flush=True)
        sim = Sim(state=state, tcp_port=tcp, udp_port=udp, ready=False)
        sim.wait_ready(READY_TIMEOUT)
        shown = [0]
        print("simulator ready (unix-port MicroPython, 848 KiB simulated flash);\n"
              "its key is in $DEMO/device/device.key and is never printed", flush=True)

        app = work / "hello"
        shutil.copytree(REPO / "examples" / "hello", app)
        banner("build version 1.0.0 of examples/hello and push it")
        img1 = work / "v1.img"
        flash(env, "build", app, "--version", "1.0.0", "-o", img1)
        flash(env, "-t", target, "push", img1)
        show_app_lines(sim, shown)

        banner("status with version 1.0.0")
        flash(env, "-t", target, "status")
        before = running(env, target)

        banner("push version 2.0.0 straight from the folder")
        (app / "VERSION").write_text("2.0.0\n")
        flash(env, "-t", target, "push", app)
        show_app_lines(sim, shown)

        banner("status with version 2.0.0")
        flash(env, "-t", target, "status")
        after = running(env, target)
        if after["version"] != "2.0.0+0" or after["state"] != "confirmed":
            raise RuntimeError("expected 2.0.0 running and confirmed, got %s" % after)
        sim.stop()
        print("\ndemo: the simulated Pico W went from %s (slot %s) to %s (slot %s),\nrunning and "
              "confirmed, in %.0f s." % (before["version"], before["slot"], after["version"], after["slot"],
                                        time.monotonic() - t0), flush=True)
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, SimError, subprocess.TimeoutExpired, OSError) as e:
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
