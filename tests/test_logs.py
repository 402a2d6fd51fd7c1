"""Logs over the network (issue 19.5): the agent keeps the console's last bytes
in a ring (device/mpota_logring.py) and the last crash's traceback in a file
(device/mpota_logs.py); `mpota logs` reads them with the `logs` op.

The ring and the op's cursor arithmetic run under the unix-port MicroPython
alone; the rest against simulated boards (tools/sim.py) through the real CLI."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import INTERRUPTIBLE, REPO, run_device_script
from devconn import DevConn, app_image, reset_and_wait
from simproc import Sim

# prints, then crashes (the traceback names main.py and the line)
CRASHING = '''import asyncio


async def main():
    for i in range(3):
        print("tick %d" % i)
    await asyncio.sleep_ms(10)
    raise RuntimeError("sensor bus lost")
'''
STEADY = '''import asyncio
import mpota


async def main():
    mpota.confirm()
    print("steady up")
    i = 0
    while True:
        print("line %d" % i)
        i += 1
        await asyncio.sleep_ms(40)
'''
CHATTY = '''import mpota


def main():
    mpota.confirm()
    for i in range(40):
        print("chatty line %02d" % i)
'''


# --- the ring and the op, no simulator -----------------------------------------------

RING = r'''
import mpota_logring as lr, mpota_logs as logs
class D:
    log = None
    def uptime(self): return 7
d = D()
d.log = lr.Ring(64)
def get(**req): return logs.op_logs(d, None, req)
print("0123456789", file=d.log)            # 11 bytes
a = get()
assert a["data"] == "0123456789\n" and a["cursor"] == 11 and a["dropped"] == 0, a
assert get(since=11)["data"] == "" and get(since=11)["cursor"] == 11     # nothing new: nothing twice
for i in range(10):
    print("line %d" % i, file=d.log)       # 70 bytes: the ring (64) wraps
b = get(since=11)
assert b["cursor"] == 81 and b["dropped"] == 6 and b["data"] == "\nline 1\n" + "".join(
    "line %d\n" % i for i in range(2, 10)), b
c = get(since=0, max=10)                   # 81 after 0; the ring holds 64: 17 dropped, 10 sent
assert c["dropped"] == 17 and c["data"] == "\nline 1\nli" and c["more"] and c["cursor"] == 27, c
e = get(since=c["cursor"])
assert e["data"] == "ne 2\n" + "".join("line %d\n" % i for i in range(3, 10)) and not e["more"], e
assert get(since=500)["dropped"] == 81 - 64    # a cursor ahead: an earlier boot's, read from this boot's start
d.log.write(bytearray(b"x" * 100))         # longer than the ring: its tail
assert get()["data"] == "x" * 64
d.log = None
assert get() == {"size": 0, "cursor": 0, "dropped": 0, "data": "", "more": False, "traceback": None,
                 "uptime_ms": 7}
print("ring ok")
'''


def test_the_ring_keeps_the_last_bytes_and_the_cursor_shows_each_once(micropython):
    r = run_device_script(micropython, "ringcheck", RING)
    assert "ring ok" in r.stdout, r.stdout + r.stderr


# --- against simulated boards --------------------------------------------------------

def cli(sim, targets, *args, timeout=60, popen=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    cmd = [sys.executable, "-m", "mpota", "--targets", str(targets)] + [str(a) for a in args]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=str(REPO), **INTERRUPTIBLE)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=timeout)


def targets_file(tmp_path, sims):
    f = tmp_path / "targets.toml"
    f.write_text("".join('[targets.%s]\nhost = "127.0.0.1"\nport = %d\nkey_file = "%s"\n\n'
                         % (n, s.tcp_port, s.state / "device.key") for n, s in sims.items())
                 + "[groups]\nlab = [%s]\n" % ", ".join('"%s"' % n for n in sims))
    return f


def install(sim, tmp_path, name, src, version):
    c = DevConn(sim.tcp_port, sim.key)
    c.push(app_image(tmp_path, name, src, version), version + "+0")
    return reset_and_wait(sim, c, sim.key)


def logs_json(sim, targets, name="b"):
    r = cli(sim, targets, "-t", name, "--json", "logs")
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(ln) for ln in r.stdout.splitlines() if '"event": "logs"' in ln][0]


@pytest.mark.slow
def test_an_app_that_prints_then_crashes_is_read_over_the_network_and_its_traceback_survives_a_reset(tmp_path):
    with Sim(state=tmp_path / "dev") as sim:
        tf = targets_file(tmp_path, {"b": sim})
        install(sim, tmp_path, "v1", STEADY, "1.0.0").close()
        c = install(sim, tmp_path, "v2", CRASHING, "2.0.0")  # on trial
        sim.wait_for_line("RuntimeError: sensor bus lost", timeout=30)
        ev = logs_json(sim, tf)
        text = ev["text"]
        assert "tick 0\ntick 1\ntick 2\n" in text and "steady up" not in text and "mpota: app crashed:" in text, text
        assert "RuntimeError: sensor bus lost" in text and "mpota: ready" in text  # the agent's lines too
        tb = ev["traceback"]
        assert tb.startswith("app crashed after ") and " ms (2.0.0+0, slot " in tb.split("\n")[0], tb
        assert "RuntimeError: sensor bus lost" in tb, tb
        assert 'main.py", line 8, in main' in tb, tb
        st = c.ok("status")
        assert st["last_crash"].startswith("app crashed after ") and st["last_crash"].endswith(
            "RuntimeError: sensor bus lost"), st["last_crash"]
        # a stranger gets nothing
        s = DevConn(sim.tcp_port)
        r = s.err("logs", "auth_required")
        assert "data" not in r and "traceback" not in r
        s.close()
        # rolled back and reset: the ring starts again, the traceback stays
        c.ok("rollback")
        c = reset_and_wait(sim, c, sim.key)
        ev = logs_json(sim, tf)
        assert "steady up" in ev["text"] and "tick 0" not in ev["text"], ev["text"]
        assert ev["traceback"] == tb
        assert c.ok("status")["last_crash"] == st["last_crash"]
        r = cli(sim, tf, "-t", "b", "logs")  # as people see it
        assert r.returncode == 0, r.stderr
        st = cli(sim, tf, "-t", "b", "status")
        assert "\ncrash   app crashed after " in st.stdout and "(`logs` shows it)" in st.stdout, st.stdout
        assert "steady up\n" in r.stdout and "--- last crash (saved on the board, survives resets) ---\n" \
            "app crashed after " in r.stdout, r.stdout
        c.close()


@pytest.mark.slow
def test_follow_shows_each_line_once_and_a_group_prefixes_board_names(tmp_path):
    with Sim(state=tmp_path / "a") as a, Sim(state=tmp_path / "b", flags=["--config", cfg(tmp_path, 0)]) as b:
        tf = targets_file(tmp_path, {"pico-a": a, "pico-b": b})
        install(a, tmp_path, "va", STEADY, "2.0.0").close()
        install(b, tmp_path, "vb", STEADY, "2.0.0").close()
        a.wait_for_line("line 5", timeout=30)
        p = cli(a, tf, "-t", "pico-a", "logs", "--follow", "--interval", "0.3", popen=True)
        time.sleep(3)
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        got = [int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("line ")]
        assert len(got) > 40 and got == list(range(got[0], got[0] + len(got))), out  # once each, none missed
        assert "dropped" not in out
        # a group: each line prefixed by its board; log_size 0 keeps nothing
        r = cli(a, tf, "-t", "@lab", "logs")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert any(ln.startswith("pico-a| line ") for ln in lines), r.stdout
        assert [ln for ln in lines if ln.startswith("pico-b| ")] == [
            'pico-b| [the board keeps no log ("log_size": 0 in its /mpota.json)]'], r.stdout
        ev = [json.loads(ln) for ln in cli(a, tf, "-t", "pico-b", "--json", "logs").stdout.splitlines()]
        assert ev[0]["size"] == 0 and ev[0]["text"] == "" and ev[0]["cursor"] == 0, ev
        assert "line 3" in b.output  # the board printed all the same (on its console)


def cfg(tmp_path, size):
    f = tmp_path / ("cfg-%d.json" % size)
    f.write_text(json.dumps({"log_size": size}))
    return f


@pytest.mark.slow
def test_a_ring_that_wrapped_says_how_many_bytes_were_dropped(tmp_path):
    with Sim(state=tmp_path / "dev", flags=["--config", cfg(tmp_path, 256)]) as sim:
        tf = targets_file(tmp_path, {"b": sim})
        install(sim, tmp_path, "v", CHATTY, "1.0.0").close()
        sim.wait_for_line("chatty line 39", timeout=30)
        r = cli(sim, tf, "-t", "b", "logs")
        assert r.returncode == 0, r.stderr
        first, *rest = r.stdout.splitlines()
        n = int(first.split()[1])
        assert first == "[... %d bytes dropped: the board's 256-byte log ring wrapped before they were read ...]" % n
        assert n > 300 and rest[-1] == "chatty line 39" and "chatty line 00" not in r.stdout, r.stdout
        ev = logs_json(sim, tf)
        assert ev["dropped"] == n and len(ev["text"].encode()) == 256 and ev["size"] == 256


@pytest.mark.slow
def test_lean_mode_keeps_no_ring_but_serves_the_op(tmp_path):
    f = tmp_path / "lean.json"
    f.write_text(json.dumps({"mode": "lean"}))
    with Sim(state=tmp_path / "dev", flags=["--config", f]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        r = c.ok("logs")
        assert (r["size"], r["data"], r["cursor"], r["traceback"]) == (0, "", 0, None), r
        c.close()


class FakeBoard:
    """The logs op of a board that restarted: this boot logged `text`, uptime 500 ms."""

    def __init__(self, text, per_reply):
        self.text, self.per_reply, self.calls = text, per_reply, []

    async def logs(self, since=None, traceback=True, max_bytes=None):
        self.calls.append(since)
        since = 0 if since is None or since > len(self.text) else since
        part = self.text[since:since + self.per_reply]
        return {"data": part, "cursor": since + len(part), "dropped": 0, "more": since + len(part) < len(self.text),
                "uptime_ms": 500, "size": 2048, "traceback": "app crashed after 9 ms (1.0.0, slot a): E\n"
                if traceback else None}


def test_a_follower_notices_a_restart_and_reads_the_new_boot_from_its_start_in_as_many_replies_as_needed():
    import asyncio

    from mpota import logs

    board = FakeBoard("line %d\n" * 5 % tuple(range(5)), per_reply=10)
    c = asyncio.run(logs.read(board, cursor=300, uptime_ms=60000, traceback=False))  # the old boot's cursor
    assert c.reset and c.text == board.text and c.cursor == len(board.text) and c.traceback is None
    assert board.calls == [300, 0, 10, 20, 30]
    assert logs.chunk_text(c, first=False).startswith(
        "[... the board restarted (uptime 0.5 s): its new boot's log ...]\n")
    again = asyncio.run(logs.read(board, cursor=c.cursor, uptime_ms=c.uptime_ms))
    assert not again.reset and again.text == "" and again.traceback.startswith("app crashed")
    assert logs.crash_version(again.traceback) == "1.0.0" and logs.crash_version("E: x") is None
