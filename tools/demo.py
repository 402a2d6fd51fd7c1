#!/usr/bin/env python3
"""`make demo`: the safety net of mpota on a simulated Pico W, signing on.

Makes an Ed25519 signing key, starts tools/sim.py on free loopback ports with a
throwaway state directory (a fresh device with its own key, trusting only that
signing key, watchdog on), then drives the `mpota` command exactly as a user
would:
  1. build version 1.0.0 signed, push it, show status;
  2. push version 2.0.0 straight from the folder (progress bar), show status;
  3. a signed image edited after signing (SHA-256 recomputed, tools/tamper.py)
     is refused by the device, and 2.0.0 keeps running;
  4. a version that hangs before it confirms is reset by the watchdog on each
     trial boot and rolled back by the device itself to 2.0.0;
  5. four more boards (tools/fleetsim.py, a group `fleet` in the targets file)
     get 1.0.0 by `mpota rollout` in waves; then a version that crashes at
     start fails on the canary: the rollout pauses by itself, the canary is
     rolled back to 1.0.0 and the other three boards are never touched.
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
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from fleetsim import Fleet  # noqa: E402
from simproc import Sim, SimError, free_port  # noqa: E402
from tamper import tamper  # noqa: E402

PY = sys.executable
MPOTA = [PY, "-m", "mpota"]  # the installed `mpota` command (make demo installs the package)
STEP_TIMEOUT = 180  # seconds for any one command
READY_TIMEOUT = 90
ROLLBACK_TIMEOUT = 90  # the hanging version's trial boots and the rollback
WDT_MS = 2000  # the watchdog while a trial runs (config `trial_wdt`, at its floor)

# Version 3 starts, never confirms, and hangs the event loop: the watchdog resets
# the board on every trial boot, and after max_trials the device rolls back.
HANGING_APP = """# hello 3.0.0: starts, then hangs before it could confirm
import asyncio
import time

NAME = "hello"


async def main():
    print("hello: version 3.0.0 started; it hangs before it confirms")
    await asyncio.sleep(2)
    time.sleep(%.1f)  # blocks the event loop: nothing feeds the watchdog
""" % (WDT_MS * 2.5 / 1000)

FLEET = 4  # boards of the rollout scene
SOAK = "1s"  # how long a wave's boards must keep running before they count as healthy
# Version 1.1.0 crashes as it starts, on every board: the canary fails.
CRASHING_APP = """# hello 1.1.0: crashes as it starts
NAME = "hello"


async def main():
    raise RuntimeError("sensor bus not found")
"""

WORK = [None]  # the scratch folder, once made (for echoing commands short)
SHOWN = ("hello:", "rolled back", "watchdog", "trial", "refused", "failed to start")


def banner(text: str) -> None:
    print("\n\033[1m== %s\033[0m" % text if sys.stdout.isatty() else "\n== %s" % text, flush=True)


def short(text) -> str:
    return str(text).replace(str(WORK[0]), "$DEMO")


def show_device_lines(sim: Sim, shown: list) -> None:
    """Echo what the device printed since last time that tells the story
    (shown[0]: lines already seen)."""
    new = sim.lines[shown[0]:]
    shown[0] += len(new)
    for ln in new:
        if any(w in ln for w in SHOWN):
            print("   device | " + ln[:66], flush=True)


def echo(text: str, indent: str = "") -> None:
    """Print `text` with the scratch folder as $DEMO, each line wrapped at 80 columns."""
    for line in text.rstrip("\n").splitlines():
        print("\n".join(textwrap.wrap(indent + short(line), 80, subsequent_indent=indent + "    ",
                                       break_long_words=False, break_on_hyphens=False)) or "", flush=True)


def mpota(env: dict, *args, fails: bool = False, live: bool = False) -> subprocess.CompletedProcess:
    """Run `mpota ARGS` as a user would, echoed with the scratch folder as $DEMO so
    that it fits 80 columns; `live`: on a terminal, its own output goes straight
    there (the progress bar); `fails`: the command must fail (its error is shown)."""
    echo("$ mpota " + " ".join(str(a) for a in args))
    straight = live and sys.stdout.isatty()
    r = subprocess.run(MPOTA + [str(a) for a in args], env=env, cwd=str(REPO), timeout=STEP_TIMEOUT,
                       capture_output=not straight, text=True)
    if not straight:
        echo(r.stdout)
        echo(r.stderr, "   " if fails else "")
    if fails:
        if r.returncode == 0:
            raise RuntimeError("mpota %s was expected to fail, and succeeded" % args[-1])
        print("   (exit code %d, as expected)" % r.returncode, flush=True)
    elif r.returncode != 0:
        raise RuntimeError("mpota %s failed with exit code %d" % (args[-1], r.returncode))
    return r


def running(env: dict, target: str) -> dict:
    r = subprocess.run(MPOTA + ["-t", target, "--json", "status"], env=env, cwd=str(REPO),
                       timeout=STEP_TIMEOUT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("status failed: %s" % r.stderr.strip())
    st = json.loads(r.stdout.splitlines()[-1])
    slot = st.get("running")
    s = (st.get("slots") or {}).get(slot) or {}
    return {"slot": slot, "version": s.get("version"), "state": s.get("state"), "trial": st.get("trial"),
            "note": st.get("boot_note")}


def expect(now: dict, version: str, what: str) -> None:
    if now["version"] != version or now["state"] != "confirmed" or now["trial"]:
        raise RuntimeError("%s: expected %s running and confirmed, got %s" % (what, version, now))


def start_fleet(work: Path, key: Path) -> Fleet:
    """FLEET simulated boards trusting only `key`, named pico-1.. in the group
    `fleet` of $DEMO/targets.toml; stopped again if they do not all come up."""
    banner("four more boards: a group `fleet` in the targets file")
    # the unix port's default heap, as the demo's first board has (fleetsim's default 160K
    # heap is the board's; there a signed commit with hello running is refused, no_memory)
    fleet = Fleet(FLEET, work / "fleet", heap=None, flags=["--trust", str(key)], ready=False)
    try:
        fleet.wait_ready(READY_TIMEOUT)
    except BaseException:
        fleet.stop()
        raise
    names = ["pico-%d" % (b.index + 1) for b in fleet.boards]
    with open(work / "targets.toml", "a") as f:
        for name, b in zip(names, fleet.boards):
            f.write('\n[targets.%s]\nhost = "127.0.0.1"\nport = %d\nkey_file = "%s"\n'
                    % (name, b.tcp_port, b.state.relative_to(work) / "device.key"))
        f.write("\n[groups]\nfleet = [%s]\n" % ", ".join('"%s"' % n for n in names))
    print("%d more simulated boards (tools/fleetsim.py) on 127.0.0.1:%s, each with\n"
          "its own key, trusting only $DEMO/k.pem; $DEMO/targets.toml names them\n"
          "%s and groups them: [groups] fleet = [...]." % (FLEET, fleet.ports, ", ".join(names)), flush=True)
    return fleet


def fleet_rows(env: dict) -> dict:
    """`mpota -t @fleet --json fleet`: target -> its row."""
    r = subprocess.run(MPOTA + ["-t", "@fleet", "--json", "fleet"], env=env, cwd=str(REPO),
                       timeout=STEP_TIMEOUT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("fleet failed: %s" % r.stderr.strip())
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    return {row["target"]: row for row in rows if row.get("event") == "board"}


def rollout_scene(env: dict, work: Path, key: Path, good: Path) -> None:
    """Roll the signed 1.0.0 out to the fleet, then a 1.1.0 that crashes as it
    starts: the canary fails, the rollout pauses, the other boards stay untouched."""
    banner("roll 1.0.0 out to the fleet: a canary, then waves")
    mpota(env, "-t", "@fleet", "rollout", good, "--soak", SOAK, "--waves", "50%,100%")
    before = fleet_rows(env)
    if any(r["version"] != "1.0.0+0" or r["state"] != "confirmed" for r in before.values()):
        raise RuntimeError("after the good rollout: %s" % before)

    banner("roll out a version that crashes: the canary stops it")
    crash = work / "crash"
    crash.mkdir()
    (crash / "main.py").write_text(CRASHING_APP)
    (crash / "VERSION").write_text("1.1.0\n")
    mpota(env, "-t", "@fleet", "rollout", crash, "--sign-key", key, "--soak", SOAK, "--waves", "50%,100%",
          fails=True)
    mpota(env, "rollout", "status")
    banner("why the canary failed: its console and the traceback it saved")
    mpota(env, "-t", "pico-1", "logs")
    mpota(env, "-t", "@fleet", "fleet")
    after = fleet_rows(env)
    canary, others = sorted(after)[0], sorted(after)[1:]
    touched = [t for t in others if (after[t]["version"], after[t]["resets"]) !=
               (before[t]["version"], before[t]["resets"]) or after[t]["uptime_s"] < before[t]["uptime_s"]]
    if after[canary]["version"] != "1.0.0+0" or after[canary]["state"] != "confirmed" or touched:
        raise RuntimeError("after the crashing rollout: %s (touched: %s)" % (after, touched))
    print("the canary %s runs 1.0.0 again, confirmed; %d other boards touched\n"
          "(same version, no reset since before the rollout)." % (canary, len(touched)), flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mpota-demo-"))
    state = work / "device"
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    target = "demo"  # in $DEMO/targets.toml, with the simulated device's own key
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = str(work / "targets.toml")
    env["XDG_CONFIG_HOME"] = str(work / "config")  # nothing of the user's is read or written
    sim = fleet = None
    t0 = time.monotonic()
    try:
        WORK[0] = work
        banner("make a signing key; start a Pico W that trusts only it")
        print("scratch folder: DEMO=%s" % work, flush=True)
        key = work / "k.pem"
        mpota(env, "keygen", key)
        config = work / "device.json"
        config.write_text(json.dumps({"trial_wdt": WDT_MS}) + "\n")
        sim = Sim(state=state, tcp_port=tcp, udp_port=udp, ready=False,
                  flags=["--trust", str(key), "--config", str(config)])
        sim.wait_ready(READY_TIMEOUT)
        shown = [0]
        (work / "targets.toml").write_text('[targets.demo]\nhost = "127.0.0.1"\nport = %d\nudp_port = %d\n'
                                           'key_file = "device/device.key"\n' % (tcp, udp))
        print("simulator ready on 127.0.0.1:%d (unix-port MicroPython, 848 KiB of\n"
              "simulated flash, %d ms watchdog on trials); it boots only images signed by\n"
              "$DEMO/k.pem. $DEMO/targets.toml names it `demo`, with its own key\n"
              "($DEMO/device/device.key, never printed)." % (tcp, WDT_MS), flush=True)

        app = work / "hello"
        shutil.copytree(REPO / "examples" / "hello", app)
        banner("build version 1.0.0 of examples/hello, signed, and push it")
        img1 = work / "v1.img"
        mpota(env, "build", app, "--version", "1.0.0", "--sign-key", key, "-o", img1)
        mpota(env, "-t", target, "push", img1)
        show_device_lines(sim, shown)
        mpota(env, "-t", target, "status")
        before = running(env, target)
        expect(before, "1.0.0+0", "after the first push")

        banner("push version 2.0.0 straight from the folder")
        (app / "VERSION").write_text("2.0.0\n")
        mpota(env, "-t", target, "push", app, "--sign-key", key, live=True)
        show_device_lines(sim, shown)
        mpota(env, "-t", target, "status")
        after = running(env, target)
        expect(after, "2.0.0+0", "after the second push")

        banner("an image edited after signing is refused")
        img3 = work / "v3.img"
        mpota(env, "build", app, "--version", "3.0.0", "--sign-key", key, "-o", img3)
        bad = work / "v3-tampered.img"
        bad.write_bytes(tamper(img3.read_bytes()))
        print("$ python tools/tamper.py $DEMO/v3.img $DEMO/v3-tampered.img\n"
              "   one byte of the app changed, its SHA-256 recomputed: only the\n"
              "   signature can tell", flush=True)
        mpota(env, "-t", target, "push", bad, fails=True)
        show_device_lines(sim, shown)
        expect(running(env, target), "2.0.0+0", "after the tampered image")
        print("still running 2.0.0, confirmed", flush=True)

        banner("a version that hangs before it confirms rolls back by itself")
        hang = work / "hang"
        hang.mkdir()
        (hang / "main.py").write_text(HANGING_APP)
        (hang / "VERSION").write_text("3.0.0\n")
        mark = sim.mark()
        mpota(env, "-t", target, "push", hang, "--sign-key", key, "--no-confirm")
        print("(the watchdog resets each trial boot; after %s the device\n"
              " boots 2.0.0 again, with nobody's help)" % "3 unconfirmed trials", flush=True)
        sim.wait_for_line("rolled back", timeout=ROLLBACK_TIMEOUT, since=mark)
        sim.wait_for_line("mpota: ready", timeout=READY_TIMEOUT, since=sim.mark() - 1)
        show_device_lines(sim, shown)
        mpota(env, "-t", target, "status")
        last = running(env, target)
        expect(last, "2.0.0+0", "after the rollback")
        sim.stop()

        fleet = start_fleet(work, key)
        rollout_scene(env, work, key, img1)
        fleet.stop()
        print("\ndemo: the simulated Pico W went from %s (slot %s) to %s (slot %s);\n"
              "refused a tampered image and rolled a hanging %s back to %s,\n"
              "then rolled 1.0.0 out to %d boards and a crashing 1.1.0 to none but the\n"
              "canary, in %.0f s." % (before["version"], before["slot"], after["version"], after["slot"],
                                     "3.0.0", last["version"], FLEET, time.monotonic() - t0), flush=True)
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, SimError, AssertionError, subprocess.TimeoutExpired, OSError) as e:
        print("\ndemo: FAILED: %s" % e, file=sys.stderr)
        if sim is not None:
            print("simulator output (tail):\n" + sim.tail(), file=sys.stderr)
        for b in fleet.boards if fleet is not None else ():
            print("%s output (tail):\n%s" % (b.name, b.tail(10)), file=sys.stderr)
        return 1
    finally:
        if sim is not None:
            sim.stop()
        if fleet is not None:
            fleet.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
