"""`mpota fleet` and `status` over several boards (issue 19 item 4): one row per
board from its status, in the order given (or --sort's), never the order the
boards answered in; a board that does not answer is a row saying why; the view
fits 80 columns. End to end against three simulators (one on simulated Wi-Fi)
and a loopback port nothing listens on."""
import asyncio
import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from conftest import REPO, free_port
from mpota.errors import Unreachable
from mpota.fleet import board_row, gather_rows, sort_rows
from mpota.output import fleet_table, fmt_uptime
from mpota.status import Status
from simproc import Sim

FLASH = str(REPO / "host" / "flash.py")


def reply(i, **kw):
    r = {"device": "e6%014x" % i, "agent": "0.4.0", "running": "a", "trial": False, "trial_count": 0,
         "max_trials": 3, "slots": {"a": {"state": "confirmed", "version": "1.%d.0+0" % i}, "b": {"state": "empty"}},
         "app": {"state": "running", "error": None}, "uptime_ms": 1000 * (100 - i), "boot_reason": "power_on",
         "resets": 0, "floor": 0, "link": "up", "rssi": -40 - i}
    r.update(kw)
    return r


def render(rows, width=80):
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(fleet_table(rows, width))
    return buf.getvalue().splitlines()


def test_ten_boards_fit_80_columns():
    rows = [board_row("greenhouse-%02d" % i, Status.of(reply(i))) for i in range(8)]
    rows.append(board_row("greenhouse-08", Status.of(reply(
        8, trial=True, trial_count=1, running="b", uptime_ms=86400_000 * 3 + 3600_000 * 4,
        boot_reason="watchdog", resets=2,
        slots={"a": {"state": "confirmed"}, "b": {"state": "trial", "version": "2.0.0+0"}},
        app={"state": "crashed", "error": "ValueError: sensor 0x48 did not answer on I2C bus 1"}))))
    rows.append(board_row("10.0.0.7:8472", None, Unreachable("cannot connect to 10.0.0.7:8472: refused")))
    lines = render(rows)
    assert len(lines) == 11 and all(len(ln) <= 80 for ln in lines), "\n".join(lines)
    assert lines[0].split() == ["board", "version", "slots", "state", "up", "reset", "link", "agent", "app"]
    trial = lines[9].split()
    assert trial[:8] == ["greenhouse-08", "2.0.0+0", "a:C", "b:T*", "trial", "1/3", "3d04h", "wdog"]
    assert "ValueError" in lines[9] and lines[9].endswith("…")  # the error, cut to what is left
    assert lines[10].startswith("10.0.0.7:8472") and "no answer" in lines[10] and "cannot" in lines[10]
    assert lines[1].split()[:7] == ["greenhouse-00", "1.0.0+0", "a:C*", "b:-", "confirmed", "1m40s", "power"]
    assert "-40dBm" in lines[1]


def test_uptime_fits_six_characters():
    assert [fmt_uptime(s) for s in (None, 42, 1023, 18720, 273600, 99 * 86400 + 7200, 400 * 86400)] == \
        ["-", "42s", "17m03s", "5h12m", "3d04h", "99d02h", "400d"]


def test_sort_keys_keep_unanswered_boards_last():
    rows = [board_row("c", Status.of(reply(2, uptime_ms=5000))), board_row("x", None, Unreachable("down")),
            board_row("a", Status.of(reply(10, uptime_ms=9000, rssi=-70))),
            board_row("b", Status.of(reply(9, uptime_ms=1000)))]
    names = lambda rs: [r["target"] for r in rs]  # noqa: E731
    assert names(sort_rows(rows, None)) == ["c", "x", "a", "b"]     # as given
    assert names(sort_rows(rows, "name")) == ["a", "b", "c", "x"]
    assert names(sort_rows(rows, "version")) == ["c", "b", "a", "x"]  # 1.2 < 1.9 < 1.10: numbers, not text
    assert names(sort_rows(rows, "uptime")) == ["b", "c", "a", "x"]
    assert names(sort_rows(rows, "rssi")) == ["c", "b", "a", "x"]     # the strongest first


def test_rows_come_in_the_order_given_not_the_order_of_answers():
    async def read(spec):
        await asyncio.sleep({"a": 0.06, "b": 0.0, "c": 0.03}[spec])  # c answers before a
        if spec == "b":
            raise Unreachable("no route")
        return Status.of(reply(ord(spec)))

    rows = asyncio.run(gather_rows(["a", "b", "c"], read, parallel=3))
    assert [(r["target"], r["ok"]) for r in rows] == [("a", True), ("b", False), ("c", True)]
    assert rows[1]["error"]["error"] == "Unreachable" and rows[1]["version"] is None


# --- against simulators -----------------------------------------------------------------

def cli(*args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, FLASH] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(REPO))


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    d = tmp_path_factory.mktemp("boards")
    cfg = d / "wifi.json"
    cfg.write_text(json.dumps({"wifi": {"ssid": "sim", "password": "x"}}))
    sims = [Sim(state=d / "p1", ready=False), Sim(state=d / "p2", flags=["--no-auth"], ready=False),
            Sim(state=d / "p3", flags=["--wifi", "--config", str(cfg)], ready=False)]
    try:
        for s in sims:
            s.wait_ready(60)
        dead = "127.0.0.1:%d" % free_port()  # nothing listens there
        toml = []
        for n, s in zip(("pico-1", "pico-2", "pico-3"), sims):
            toml.append('[targets.%s]\nhost = "127.0.0.1"\nport = %d\n' % (n, s.tcp_port))
            if "--no-auth" not in s.flags:
                (d / ("%s.key" % n)).write_text(s.key.hex())
                toml.append('key_file = "%s.key"\n' % n)
        toml.append('[groups]\nlab = ["pico-3", "%s", "pico-1", "pico-2"]\n' % dead)
        tf = d / "targets.toml"
        tf.write_text("".join(toml))
        env = {"MPOTA_TARGETS": str(tf)}
        img = d / "hello.img"
        assert cli("build", REPO / "examples" / "hello", "--version", "1.4.0", "-o", img).returncode == 0
        r = cli("-t", "pico-2", "--json", "push", img, "--wait", "40", env_extra=env)
        assert r.returncode == 0, r.stdout + r.stderr
        yield {"env": env, "dead": dead}
    finally:
        for s in sims:
            s.stop()


@pytest.mark.timeout(240)
def test_fleet_json_one_object_per_board(boards):
    r = cli("-t", "@lab", "--json", "--connect-timeout", "2", "fleet", env_extra=boards["env"])
    assert r.returncode == 2, r.stdout + r.stderr  # the unreachable board's code
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    rows = [e for e in evs if e["event"] == "board"]
    dead = boards["dead"]
    assert [b["target"] for b in rows] == ["pico-3", dead, "pico-1", "pico-2"]  # as the group lists them
    by = {b["target"]: b for b in rows}
    assert not by[dead]["ok"] and by[dead]["error"]["error"] == "Unreachable" and by[dead]["version"] is None
    p2 = by["pico-2"]
    assert (p2["version"], p2["state"], p2["trial"], p2["app_state"]) == ("1.4.0+0", "confirmed", False, "running")
    assert p2["boot_reason"] == "reset" and p2["resets"] == 1 and p2["agent"] and p2["floor"] == 0
    assert p2["slots"][p2["running"]] == "confirmed" and p2["uptime_s"] >= 0
    p3 = by["pico-3"]
    assert (p3["link"], p3["rssi"], p3["state"], p3["resets"]) == ("up", -58, "no app", 0)
    assert by["pico-1"]["rssi"] is None and by["pico-1"]["device"]
    assert evs[-1] == {"event": "fleet", "boards": 4, "answered": 3, "exit_code": 2}

    r = cli("-t", "@lab", "--json", "--connect-timeout", "2", "fleet", "--sort", "version", env_extra=boards["env"])
    order = [e["target"] for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "board"]
    assert order == ["pico-3", "pico-1", "pico-2", dead]  # no version first, the unanswered last


@pytest.mark.timeout(240)
def test_fleet_and_status_views_fit_80_columns(boards):
    env = dict(boards["env"], COLUMNS="80")
    r = cli("-t", "pico-1,@lab", "--connect-timeout", "2", "fleet", "--sort", "name", env_extra=env)
    lines = r.stdout.splitlines()
    assert r.returncode == 2 and all(len(ln) <= 80 for ln in lines), r.stdout
    assert [ln.split()[0] for ln in lines[1:5]] == [boards["dead"], "pico-1", "pico-2", "pico-3"]
    assert "no answer" in lines[1] and "-58dBm" in lines[4] and lines[-1] == "3 of 4 boards answered"
    # status over the group: each board's lines, then the same view, then the summary
    r = cli("-t", "@lab", "--connect-timeout", "2", "status", env_extra=env)
    assert r.returncode == 2
    head = next(i for i, ln in enumerate(r.stdout.splitlines()) if ln.split()[:2] == ["board", "version"])
    view = r.stdout.splitlines()[head:head + 5]
    assert [ln.split()[0] for ln in view[1:]] == ["pico-3", boards["dead"], "pico-1", "pico-2"], r.stdout
    assert "1.4.0+0" in view[4] and "confirmed" in view[4] and all(len(ln) <= 80 for ln in view)


def test_the_longest_cells_still_fit_80_columns():
    long = reply(1, agent="0.4.0-dev+g1234567", link="connecting", rssi=None, boot_reason="unknown-cause",
                 resets=65535, trial=True, trial_count=12, max_trials=15,
                 slots={"a": {"state": "confirmed", "version": "255.255.65535+4294967295"}, "b": {"state": "bad"}},
                 app={"state": "crashed", "error": "x" * 200}, uptime_ms=999 * 86400_000)
    rows = [board_row("a-very-long-board-name-indeed:8472", Status.of(long))]
    lines = render(rows)
    assert all(len(ln) <= 80 for ln in lines), "\n".join(lines)
    assert lines[1].startswith("a-very-lo") and lines[1].rstrip().endswith("…")
