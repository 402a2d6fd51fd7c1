"""100 simulated boards (issue 19.6), in `make test`: discovery finds 100/100, a
good image reaches all 100 in waves, and a crashing version is stopped by its
canary with 0 other boards touched (and the canary's traceback in the plan).
One fleet (tools/fleetsim.py) for the module: it boots in about 10 s on this
2-core machine (~5 MiB PSS a board), the three tests take about 20 s more.

And the launchers' teardown is bounded (tools/sim.py Launcher.stop,
fleetsim.Fleet.stop): a device that ignores SIGTERM is killed, so a failed
test can never hang for minutes in its fixture's teardown."""
import asyncio
import os
import sys
import threading
import time

import pytest
from fleetsim import Fleet, app_folder

import sim
from mpota import discover, images, rollout
from mpota.targets import Target

pytestmark = pytest.mark.fleet100  # run alone, after the rest (Makefile: test)
COUNT = 100


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet100")
    t0 = time.monotonic()
    with Fleet(COUNT, d / "fleet", timeout=300) as f:
        print("\n%d boards up in %.1f s" % (COUNT, time.monotonic() - t0))
        f.dir = d
        by = {b.name: b for b in f.boards}
        f.transport = rollout.LanTransport(
            lambda s: Target(name=s, host="127.0.0.1", port=by[s].tcp_port, key=by[s].key), wait=120)
        yield f


def app(fleet, version, crash):
    return images.build_folder(app_folder(fleet.dir, version, crash), version)


def run(fleet, img, **kw):
    store = rollout.RolloutStore(fleet.dir / "rollouts")
    plan = rollout.new_plan(img, [b.name for b in fleet.boards], **kw)
    store.create(plan, img)
    events = []
    t0 = time.monotonic()
    state = asyncio.run(rollout.Rollout(plan, store, fleet.transport, image=img).run(
        lambda name, **f: events.append(dict(f, event=name))))
    return state, plan, events, time.monotonic() - t0


def statuses(fleet):
    async def all_of():
        return await asyncio.gather(*(fleet.transport.status(b.name) for b in fleet.boards))
    return asyncio.run(all_of())


@pytest.mark.slow
def test_discover_finds_all_100_boards(fleet):
    t0 = time.monotonic()
    found = discover.discover(fleet.addresses, wait=10)
    took = time.monotonic() - t0
    print("\ndiscovered %d/%d in %.2f s" % (len(found), COUNT, took))
    assert sorted(b.id for b in found) == sorted(b.device_id for b in fleet.boards)
    assert took < 5


@pytest.mark.slow
def test_a_good_image_reaches_all_100_boards_in_waves(fleet):
    img = app(fleet, "1.0.0", crash=False)
    state, plan, events, took = run(fleet, img, canary=1, waves="10%,50%,100%", soak=1, parallel=25)
    print("\n100-board rollout at --parallel 25: %.1f s" % took)
    assert state == rollout.COMPLETE and plan.count(rollout.HEALTHY) == COUNT
    assert [len(w) for w in plan.waves] == [1, 9, 40, 50]
    assert [e["healthy"] for e in events if e["event"] == "wave_done"] == [1, 9, 40, 50]
    after = statuses(fleet)
    assert all(st.running_image.sha256 == img.sha256 and st.running_image.state == "confirmed" for st in after)


@pytest.mark.slow
def test_a_crashing_version_is_stopped_by_the_canary_with_0_of_99_other_boards_touched(fleet):
    before = statuses(fleet)
    img = app(fleet, "1.1.0", crash=True)
    state, plan, events, took = run(fleet, img, canary=1, waves="10%,50%,100%", soak=1, parallel=25,
                                    max_failures="3")  # 3 allowed: the canary's own rule stops it
    assert state == rollout.PAUSED and plan.reason == "the canary failed"
    canary = plan.board("sim-000")
    assert canary.state == rollout.FAILED and canary.rolled_back.startswith("by the host")
    assert canary.traceback.rstrip().endswith("RuntimeError: version 1.1.0 is broken")
    assert plan.tried == 1 and plan.count(rollout.UNTOUCHED) == COUNT - 1
    assert {e["target"] for e in events if e["event"] == "board"} == {"sim-000"}
    after = statuses(fleet)
    touched = [b.name for b, x, y in zip(fleet.boards, before, after)
               if (x.resets, x.slots, x.running) != (y.resets, y.slots, y.running) or y.uptime_ms < x.uptime_ms]
    print("\ncrashing version: stopped by the canary in %.1f s; other boards touched: %d" % (
        took, len(touched) - (touched[:1] == ["sim-000"])))
    assert touched == ["sim-000"]  # the canary only: it took the image, crashed and was rolled back
    assert after[0].running_image.sha256 == before[0].running_image.sha256  # back on 1.0.0


# --- teardown is bounded --------------------------------------------------------------------

STUBBORN = '''#!%s
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a device that does not stop when asked
print("mpota: ready (a stub that ignores SIGTERM)", flush=True)
time.sleep(600)
'''


def stubborn(tmp_path):
    p = tmp_path / "stubborn-micropython"
    p.write_text(STUBBORN % sys.executable)
    p.chmod(0o700)
    return str(p)


def test_a_launcher_stops_a_device_that_ignores_sigterm(tmp_path):
    lines = []
    ln = sim.Launcher(sim.parse_args(["--state", str(tmp_path / "s"), "--micropython", stubborn(tmp_path),
                                      "--deploy", "py", "--tcp-port", "1", "--udp-port", "1"]), emit=lines.append)
    t = threading.Thread(target=ln.run, daemon=True)
    t.start()
    end = time.monotonic() + 20
    while not any(x.startswith("sim: ready") for x in lines) and time.monotonic() < end:
        time.sleep(0.05)
    assert any(x.startswith("sim: ready") for x in lines), lines
    t0 = time.monotonic()
    ln.stop(grace=0.5)
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 5, lines
    assert "sim: device still running after SIGTERM: killed" in lines


def test_a_fleet_stops_within_its_bound_whatever_its_devices_do(tmp_path):
    f = Fleet(3, tmp_path / "f", micropython=stubborn(tmp_path), flags=["--deploy", "py"], heap=None, timeout=30)
    pids = [b.pid for b in f.boards]
    t0 = time.monotonic()
    left = f.stop(grace=0.5, timeout=10)
    took = time.monotonic() - t0
    assert left == [] and took < 5, (left, took)  # together, not 3 x the grace
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or "zombie" in open("/proc/%d/status" % pid).read().lower()
