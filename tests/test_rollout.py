"""Rollouts (host/rollout.py, `mpota rollout`): 12 simulated boards (tools/fleetsim.py)
on loopback take app versions in waves, a canary first, soaks of 1-2 s.

The tests share one fleet and run in order: each rolls out the next version
over what the one before left (1.1.0 good everywhere, 1.2.0 crashes on every
board, 1.3.0 crashes on chosen device ids, 1.4.0 interrupted then resumed,
1.5.0 aborted)."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import INTERRUPTIBLE, REPO
from fleetsim import Fleet

from mpota import images, rollout, targets
from mpota.errors import DeviceError, NotTaken, UsageError
from mpota.status import Status
from mpota.push import device_status, push

COUNT = 12
APP = '''import asyncio
import mpota

BAD = %r


async def main():
    dev = mpota.status()["device"]
    if dev in BAD or "*" in BAD:
        raise RuntimeError("version %s fails on " + dev)
    mpota.confirm()
    while True:
        await asyncio.sleep(1)
'''


# --- no board needed: the plan -----------------------------------------------------------

def test_waves_are_the_canary_then_cumulative_shares_or_counts():
    specs = ["b%d" % i for i in range(100)]
    w = rollout.plan_waves(specs, 1, "10%,50%,100%")
    assert [len(x) for x in w] == [1, 9, 40, 50]
    assert sum(w, []) == specs
    assert [len(x) for x in rollout.plan_waves(specs[:12], 2, "4,8")] == [2, 2, 4, 4]  # the last reaches all
    assert [len(x) for x in rollout.plan_waves(specs[:3], 5, "50%")] == [3]
    assert [len(x) for x in rollout.plan_waves(specs[:10], 0, "1,100%")] == [1, 9]
    with pytest.raises(UsageError):
        rollout.plan_waves(specs, 1, "0%")
    with pytest.raises(UsageError):
        rollout.plan_waves(specs, 1, "ten")


def test_failure_limits_and_durations():
    assert rollout.failure_limit("2", 50) == 2
    assert rollout.failure_limit("10%", 50) == 5 and rollout.failure_limit("10%", 9) == 0
    with pytest.raises(UsageError):
        rollout.failure_limit("-1", 5)
    assert rollout.parse_duration("60") == 60 and rollout.parse_duration("2m") == 120
    assert rollout.parse_duration("1.5s") == 1.5
    with pytest.raises(UsageError):
        rollout.parse_duration("soon")


# --- 12 boards -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("rollout")
    with Fleet(COUNT, d / "fleet") as f:
        lines = []
        for b in f.boards:
            lines.append('[targets.%s]\nhost = "127.0.0.1"\nport = %d\nkey_file = "%s"\ndevice_id = "%s"\n'
                         % (b.name, b.tcp_port, b.state / "device.key", b.device_id))
        lines.append("[groups]\nfleet = [%s]\n" % ", ".join('"%s"' % b.name for b in f.boards))
        (d / "targets.toml").write_text("\n".join(lines))
        f.dir = d
        f.targets = str(d / "targets.toml")
        f.names = [b.name for b in f.boards]
        yield f


def app(fleet, version, bad=()):
    folder = fleet.dir / ("app-" + version)
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(APP % (list(bad), version))
    (folder / "VERSION").write_text(version + "\n")
    return images.build_folder(folder, version)


def resolve(fleet):
    return lambda spec: targets.resolve(spec, fleet.targets, env={})


def engine(fleet, img, **kw):
    store = rollout.RolloutStore(fleet.dir / "rollouts")
    plan = rollout.new_plan(img, fleet.names, targets_file=fleet.targets, **kw)
    store.create(plan, img)
    events = []
    r = rollout.Rollout(plan, store, rollout.LanTransport(resolve(fleet), wait=30), image=img)
    return r, events, lambda name, **f: events.append(dict(f, event=name))


async def statuses(fleet):
    res = resolve(fleet)
    return await asyncio.gather(*(device_status(res(n)) for n in fleet.names))


def running_sha(st):
    return st.running_image.sha256 if st.running_image else None


def test_a_good_image_reaches_every_board_confirmed_and_a_board_running_it_is_skipped(fleet):
    img = app(fleet, "1.1.0")
    pre = asyncio.run(push(resolve(fleet)("sim-000"), img))  # this one runs it already
    assert pre.state == "confirmed"
    before = asyncio.run(device_status(resolve(fleet)("sim-000")))
    r, events, on = engine(fleet, img, canary=1, waves="4,8,100%", soak=1, parallel=4)
    assert asyncio.run(r.run(on)) == rollout.COMPLETE
    assert [len(w) for w in r.plan.waves] == [1, 3, 4, 4]
    assert r.plan.board("sim-000").state == rollout.SKIPPED
    assert r.plan.count(rollout.HEALTHY) == COUNT - 1
    after = asyncio.run(statuses(fleet))
    assert all(running_sha(st) == img.sha256 and st.running_image.state == "confirmed" for st in after)
    assert after[0].resets == before.resets and after[0].uptime_ms > before.uptime_ms  # no reboot
    done = [e for e in events if e["event"] == "wave_done"]
    assert [(e["wave"], e["healthy"] + e["skipped"], e["failed"]) for e in done] == [
        (1, 1, 0), (2, 3, 0), (3, 4, 0), (4, 4, 0)]
    saved = rollout.RolloutStore(fleet.dir / "rollouts").load(r.plan.id)
    assert saved.state == rollout.COMPLETE and saved.count(rollout.HEALTHY) == COUNT - 1


def test_a_version_that_crashes_is_stopped_by_the_canary_touching_no_other_board(fleet):
    good = asyncio.run(statuses(fleet))
    img = app(fleet, "1.2.0", bad=["*"])
    r, events, on = engine(fleet, img, canary=1, waves="50%,100%", soak=1, max_failures="3")
    assert asyncio.run(r.run(on)) == rollout.PAUSED
    assert r.plan.reason == "the canary failed"
    b = r.plan.board("sim-000")
    assert b.state == rollout.FAILED and "app crashed" in b.error and b.rolled_back.startswith("by the host")
    # its traceback, saved on the board when the app crashed and fetched before the rollback
    assert b.traceback.startswith("app crashed after ") and 'main.py", line 10, in main' in b.traceback
    assert b.traceback.rstrip().endswith("RuntimeError: version 1.2.0 fails on " + fleet.boards[0].device_id)
    failed = [e for e in events if e["event"] == "board" and e["state"] == "failed"]
    assert failed[-1]["traceback"] == b.traceback and r.plan.summary()["failed"]["sim-000"]["traceback"] == b.traceback
    assert r.plan.count(rollout.UNTOUCHED) == COUNT - 1
    after = asyncio.run(statuses(fleet))
    assert all(running_sha(st) == running_sha(good[0]) for st in after)  # the canary is back on 1.1.0
    assert [st.resets for st in after[1:]] == [st.resets for st in good[1:]]  # the others never reset
    assert [e["target"] for e in events if e["event"] == "board"] == ["sim-000"] * 3  # pushing, failed, rolled back


def test_a_version_failing_on_some_boards_pauses_at_the_wave_past_the_limit(fleet):
    # waves: [0] [1 2 3] [4 5 6 7] [8..11]; 1.3.0 fails on boards 2, 5 and 6; one failure allowed
    bad = [fleet.boards[i].device_id for i in (2, 5, 6)]
    img = app(fleet, "1.3.0", bad=bad)
    r, events, on = engine(fleet, img, canary=1, waves="4,8,100%", soak=1, max_failures="1", parallel=4)
    assert asyncio.run(r.run(on)) == rollout.PAUSED
    p = r.plan
    assert p.wave == 3 and "3 failed" in p.reason  # paused before the 4th wave
    assert sorted(s for s, b in p.boards.items() if b.state == rollout.FAILED) == ["sim-002", "sim-005", "sim-006"]
    assert all(p.board(s).state == rollout.UNTOUCHED for s in p.waves[3])
    assert [e["failed"] for e in events if e["event"] == "wave_done"] == [0, 1, 2]
    after = dict(zip(fleet.names, asyncio.run(statuses(fleet))))
    old = after["sim-011"].running_image.sha256
    for s in ("sim-002", "sim-005", "sim-006"):  # rolled back to 1.1.0, confirmed
        assert running_sha(after[s]) == old and after[s].running_image.state == "confirmed"
    for s in ("sim-000", "sim-001", "sim-003", "sim-004", "sim-007"):
        assert running_sha(after[s]) == img.sha256 and after[s].running_image.state == "confirmed"


def cli(fleet, *args, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["XDG_CONFIG_HOME"] = str(fleet.dir / "config")
    return subprocess.Popen([sys.executable, "-m", "mpota", "--targets", fleet.targets] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO), **kw)


def events_until(proc, stop, timeout=60):
    """Read proc's JSON events until stop(event) holds (bounded)."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if stop(seen[-1]):
            return seen
    raise AssertionError("no such event; seen %s; stderr %s" % (seen, proc.stderr.read() if proc.poll() else ""))


def test_an_interrupted_rollout_pauses_saved_and_resumes_to_completion(fleet):
    folder = fleet.dir / "app-1.4.0"
    app(fleet, "1.4.0")
    p = cli(fleet, "-t", "@fleet", "--json", "rollout", folder, "--soak", "1", "--waves", "6,100%", "--parallel", "3",
            **INTERRUPTIBLE)
    seen = events_until(p, lambda e: e["event"] == "board" and e["wave"] == 2 and e["state"] == "pushing")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    rid = seen[0]["id"]
    *_, paused, error = [json.loads(ln) for ln in out.splitlines()]
    assert paused["event"] == "paused" and paused["reason"] == "interrupted" and paused["half_done"]
    assert error["event"] == "error" and "rollout resume" in error["hint"]
    r = cli(fleet, "rollout", "status", rid, "--json")
    st = json.loads(r.communicate(timeout=30)[0])
    assert st["state"] == "paused" and st["half_done"] == paused["half_done"]
    r = cli(fleet, "rollout", "resume")  # the newest: this one
    out, err = r.communicate(timeout=90)
    assert r.returncode == 0, out + err
    assert "done: rollout %s complete\n  12 healthy," % rid in out
    assert max(len(ln) for ln in out.splitlines()) <= 80
    img = images.load(str(fleet.dir / "config" / "mpota" / "rollouts" / (rid + ".img")))
    assert all(running_sha(s) == img.sha256 and s.running_image.state == "confirmed"
               for s in asyncio.run(statuses(fleet)))


def test_abort_from_another_shell_leaves_untouched_boards_untouched(fleet):
    before = asyncio.run(statuses(fleet))
    app(fleet, "1.5.0")
    p = cli(fleet, "-t", "@fleet", "--json", "rollout", fleet.dir / "app-1.5.0", "--soak", "30")
    seen = events_until(p, lambda e: e["event"] == "soak")
    t0 = time.monotonic()
    a = cli(fleet, "rollout", "abort", seen[0]["id"])
    out, err = a.communicate(timeout=30)
    assert a.returncode == 0, out + err
    assert time.monotonic() - t0 < 10  # not the 30 s soak
    assert "aborted; 11 boards untouched" in out
    p.communicate(timeout=30)
    assert p.returncode == 130
    after = asyncio.run(statuses(fleet))
    assert [running_sha(s) for s in after[1:]] == [running_sha(s) for s in before[1:]]
    assert [s.resets for s in after[1:]] == [s.resets for s in before[1:]]


# --- the engine over a fake transport (the interface an MQTT transport implements) -------

class FakeTransport(rollout.Transport):
    """Boards as dicts; push fails `fail_first` times with `error` after the image took."""

    def __init__(self, specs, sha, error=None, fail_first=0):
        self.runs = {s: "old" for s in specs}
        self.sha, self.error, self.fail_first, self.pushes = sha, error, fail_first, []
        self.crashes = set()  # boards whose app crashes after the push
        self.tb_version = "1.0.0"  # the version their saved traceback names

    def _status(self, spec, app="running"):
        new = self.runs[spec] == self.sha  # slot a: the new image, b: the old one
        return Status.of({"running": "a" if new else "b", "trial": False, "resets": 0,
                          "uptime_ms": 1000 + len(self.pushes), "app": {"state": app, "error": "E"},
                          "slots": {"a": {"state": "confirmed", "sha256": self.sha, "version": "2.0.0"},
                                    "b": {"state": "confirmed", "sha256": "old", "version": "1.0.0"}}})

    async def status(self, spec):
        new = self.runs[spec] == self.sha
        return self._status(spec, "crashed" if new and spec in self.crashes else "running")

    async def push(self, spec, image):
        self.pushes.append(spec)
        unchanged = self.runs[spec] == self.sha
        self.runs[spec] = self.sha
        if self.pushes.count(spec) <= self.fail_first:
            raise self.error
        return unchanged, self._status(spec)

    async def confirm(self, spec):
        pass

    async def rollback(self, spec):
        self.runs[spec] = "old"
        return self._status(spec)

    async def traceback(self, spec):
        if spec not in self.crashes:
            return None
        return ("app crashed after 1200 ms (%s, slot a): RuntimeError: sensor %s\nTraceback (most recent call "
                'last):\n  File "/app/main.py", line 9, in main\n  File "/app/sensor.py", line 31, in read\n'
                "RuntimeError: sensor %s\n" % (self.tb_version, spec, spec))


def fake_run(tmp_path, transport_of, specs=("x", "y"), soak=0, crashes=()):
    img = images.Image(data=b"image", version="1.0.0", source="test")
    store = rollout.RolloutStore(tmp_path)
    plan = rollout.new_plan(img, list(specs), soak=soak, waves="100%")
    store.create(plan, img)
    t = transport_of(img.sha256)
    t.crashes.update(crashes)
    events = []
    state = asyncio.run(rollout.Rollout(plan, store, t, image=img, poll=0.01, soak_poll=0.05).run(
        lambda name, **f: events.append(dict(f, event=name))))
    return state, plan, t, events


def test_a_transient_failure_is_retried_and_a_board_it_left_running_the_image_is_checked_not_skipped(
        tmp_path, monkeypatch):
    monkeypatch.setattr(rollout, "RETRY_DELAY", 0.01)
    oom = DeviceError("auth refused, no_memory: out of memory", code="no_memory", op="auth")
    state, plan, t, events = fake_run(tmp_path, lambda sha: FakeTransport(["x", "y"], sha, oom, fail_first=1))
    assert state == rollout.COMPLETE
    assert t.pushes == ["x", "x", "y", "y"]
    assert [plan.board(s).state for s in "xy"] == [rollout.HEALTHY, rollout.HEALTHY]  # not "skipped"
    assert [e["target"] for e in events if e["event"] == "retry"] == ["x", "y"]


def test_a_version_that_did_not_take_is_not_retried(tmp_path):
    state, plan, t, _ = fake_run(tmp_path, lambda sha: FakeTransport(
        ["x", "y"], sha, NotTaken("after reset the device runs slot b"), fail_first=9), specs=("x",))
    assert state == rollout.PAUSED and t.pushes == ["x"]
    assert plan.board("x").state == rollout.FAILED and plan.board("x").rolled_back == "by the host, to 1.0.0"


def test_a_crash_seen_while_soaking_fails_the_board_and_ends_the_soak_early(tmp_path):
    t0 = time.monotonic()
    state, plan, t, events = fake_run(tmp_path, lambda sha: FakeTransport(["x", "y"], sha), soak=30,
                                      crashes=["x"])
    assert time.monotonic() - t0 < 5  # not the 30 s soak
    assert state == rollout.PAUSED and plan.reason == "1 failed, more than --max-failures 0"
    assert plan.board("x").state == rollout.FAILED and plan.board("x").error == "app crashed: E"
    assert plan.board("x").rolled_back.startswith("by the host") and t.runs["x"] == "old"
    assert plan.board("x").traceback.startswith("app crashed after 1200 ms (1.0.0, slot a): RuntimeError: sensor x\n")
    assert plan.board("y").state == rollout.UNTOUCHED and t.pushes == ["x"]
    assert [e["event"] for e in events if e["event"].startswith("soak")] == ["soak", "soak_cut"]


def test_a_traceback_an_earlier_version_left_is_not_shown_as_the_failure(tmp_path):
    def stale(sha):
        t = FakeTransport(["x", "y"], sha)
        t.tb_version = "0.9.0"
        return t
    state, plan, t, events = fake_run(tmp_path, stale, soak=30, crashes=["x"])
    assert plan.board("x").state == rollout.FAILED and plan.board("x").traceback is None


def test_the_view_of_100_boards_fits_80_columns_a_line_per_wave_and_the_failing_boards(tmp_path):
    from mpota import commands

    specs = ["greenhouse-north-wall-%03d" % i for i in range(100)]
    state, plan, t, events = fake_run(tmp_path, lambda sha: FakeTransport(specs, sha), specs=specs, crashes=[])
    assert state == rollout.COMPLETE
    img = images.Image(data=b"image2", version="1.0.1", source="test")
    p = rollout.new_plan(img, specs, max_failures="5%")
    for s in specs[:10]:
        p.board(s).state = rollout.HEALTHY
    for s in specs[10:13]:
        p.board(s).state, p.board(s).error = rollout.FAILED, "app crashed: " + "RuntimeError: x" * 20
        p.board(s).rolled_back = "by the host, to 1.0.0+0"
    p.board(specs[12]).traceback = "app crashed after 9 ms: E: %s\nTraceback (most recent call last):\n%s%sE: %s\n" % (
        "y" * 90, '  File "/app/main.py", line 3, in main\n' * 30, '  File "mpota_agent", line 389, in _run_app\n',
        "y" * 90)  # (the agent's frame, last here, is left out of the view)
    text = commands.rollout_status_text("mpota", p.summary())
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    # header, a line per wave, two per failing board, and the last crash of the one that saved one:
    # where to read it whole and the traceback's last 3 lines
    assert len(lines) == 2 + 4 + 2 * 3 + 1 + 3, text
    assert lines[-4] == "    its traceback (`mpota -t greenhouse-north-wall-012 logs`):"
    assert lines[-3] == lines[-2] == '      File "/app/main.py", line 3, in main'
    assert lines[-1].startswith("      E: yyy")
    view = [commands._rollout_text("mpota", e["event"], e) for e in events]
    lines = "\n".join(v for v in view if v).splitlines()
    assert max(len(ln) for ln in lines) <= 80 and len(lines) == 2 + 2 * 2 + 2, lines  # start, 2 waves, done
    # a failing board in the live view: its last crash too
    state, plan, t, events = fake_run(tmp_path / "2", lambda sha: FakeTransport(specs, sha), specs=specs,
                                      crashes=[specs[0]])
    view = "\n".join(v for v in (commands._rollout_text("mpota", e["event"], e) for e in events) if v)
    assert "  FAILED greenhouse-north-wall-000, rolled back by the host, to 1.0.0\n    app crashed: E\n" \
        "    its traceback (`mpota -t greenhouse-north-wall-000 logs`):\n" \
        '      File "/app/main.py", line 9, in main\n      File "/app/sensor.py", line 31, in read\n' \
        "      RuntimeError: sensor greenhouse-north-wall-000\n" in view, view
    assert max(len(ln) for ln in view.splitlines()) <= 80
