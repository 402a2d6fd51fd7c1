"""The agent owns its names (issues 17.1, 18.1): an app may ship any module name but
main, mpota and mpota_*, and nothing it ships changes what the agent's imports
resolve to. MicroPython searches the filesystem before its extensible built-ins
(hashlib, json, socket, ...), so the agent imports those by their u-names, which
always reach the firmware's module (tools/mpy_check.py enforces it), and its own
modules are all named mpota_*."""
import sys

import pytest

from conftest import REPO, run_micropython

sys.path.insert(0, str(REPO / "tools"))
import mpy_check  # noqa: E402

# micropython-lib packages frozen into the RPI_PICO_W firmware: found on sys.path
# ('.frozen', before /app), and asyncio is imported at boot, before the app's path.
FROZEN = {"asyncio", "ssl", "requests", "mip", "ntptime", "webrepl", "aioble", "onewire", "ds18x20", "dht",
          "neopixel", "uasyncio"}

PROBE = """
import sys
sys.path.insert(0, %r)
path = sys.path[:]
sys.path[:] = []
builtin = []
for n in %r:  # the built-ins of this interpreter (no filesystem to search)
    try:
        __import__(n)
        builtin.append(n)
    except ImportError:
        pass
sys.path[:] = path
out = []
for n in builtin:
    sys.modules.pop(n, None)
    m = __import__(n)
    if getattr(m, "SHADOW", 0):
        try:
            u = __import__("u" + n)
            ok = not getattr(u, "SHADOW", 0)
        except ImportError:
            ok = False
        out.append("%%s:%%s" %% (n, ok))
print(" ".join(out))
"""


def test_extensible_table_is_the_firmwares(tmp_path, mp_build):
    """Every rp2 built-in that a file can shadow on this MicroPython is in
    mpy_check.EXTENSIBLE, and its u-name gives the built-in whatever file exists."""
    names = sorted(mpy_check.RP2_MODULES - FROZEN)
    d = tmp_path / "app"
    d.mkdir()
    for n in names + ["u" + n for n in names]:
        (d / (n + ".py")).write_text("SHADOW = 1\n")
    r = run_micropython(["-c", PROBE % (str(d), names)], mp=mp_build, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    found = dict(x.split(":") for x in r.stdout.split())
    assert "hashlib" in found and "json" in found, found  # the probe works
    assert set(found) <= mpy_check.EXTENSIBLE, set(found) - mpy_check.EXTENSIBLE
    assert all(v == "True" for v in found.values()), found


def test_mpy_check_refuses_names_the_board_would_search_among_the_apps_files(tmp_path):
    """On MicroPython a name the firmware lacks is searched on sys.path, among the
    app's files: a device file may import one only in a CPython-only branch, and an
    extensible built-in only by its u-name (or as the CPython fallback of one)."""
    f = tmp_path / "mpota_x.py"
    f.write_text("import sys\n"
                 "try:\n    from crc32c import crc32c\nexcept ImportError:\n    crc32c = None\n"
                 "import json\n"
                 "try:\n    import uhashlib as hashlib\nexcept ImportError:\n    import hashlib\n"
                 "if sys.implementation.name != 'micropython':\n    import cbor2\n")
    bad = mpy_check.import_problems(f, {"mpota_x"}, (1, 23))
    assert len(bad) == 2, bad
    assert any(":3: imports 'crc32c', which is neither" in b and "sys.path" in b for b in bad), bad
    assert any(":6: imports 'json' by its plain name" in b for b in bad), bad


APP_MODULES = ("config", "session", "slots", "proto", "auth", "agent", "hal", "service", "update", "upload",
               "framing", "lineproto", "checksums", "conn", "ops")

MAIN = """import asyncio
import mpota
import config, session, slots, proto, auth
async def main():
    mine = [m.MINE for m in (config, session, slots, proto, auth)]
    print("app: %s up, own modules %s" % (VERSION, mine))
    mpota.confirm()
    while True:
        await asyncio.sleep(1)
"""


def _app(tmp_path, name, version):
    """An app that ships modules named like the agent's old modules (its own) and one
    for every extensible built-in and asyncio, each raising if anybody imports it."""
    from mpota.images import build_app_image
    d = tmp_path / name
    d.mkdir()
    (d / "main.py").write_text("VERSION = %r\n" % version + MAIN)
    for n in APP_MODULES:
        (d / (n + ".py")).write_text("MINE = %r\n" % n)
    # every extensible built-in, asyncio, and a CPython-only name the codec once tried
    # first on the board too (red-team run: an app's crc32c.py locked the operator out)
    for n in sorted(mpy_check.EXTENSIBLE) + ["asyncio", "crc32c"]:
        (d / (n + ".py")).write_text("raise RuntimeError('the app\\'s %s.py was imported')\n" % n)
    return build_app_image(d, version=version)


@pytest.mark.slow
def test_an_app_with_the_agents_old_names_and_builtin_shadows_installs_boots_and_updates(tmp_path):
    from simproc import Sim
    from devconn import DevConn, reset_and_wait

    v1, v2 = _app(tmp_path, "v1", "1.0.0"), _app(tmp_path, "v2", "2.0.0")
    with Sim(state=tmp_path / "dev", flags=["--legacy-udp"]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        c.push(v1, "1.0.0+0")
        mark = sim.mark()
        c = reset_and_wait(sim, c, sim.key)
        sim.wait_for_line("app: 1.0.0 up, own modules ['config', 'session', 'slots', 'proto', 'auth']",
                          since=mark)
        st = c.ok("status")
        assert st["slots"][st["running"]]["state"] == "confirmed", st
        c.close()
        # every agent path after the app is on sys.path: a new connection (auth, the
        # session MACs), an upload, commit with its checks, a reset and a new trial
        c = DevConn(sim.tcp_port, sim.key)
        assert c.ok("ping")["pong"] is True
        c.push(v2, "2.0.0+0")
        mark = sim.mark()
        c = reset_and_wait(sim, c, sim.key)
        sim.wait_for_line("app: 2.0.0 up", since=mark)
        st = c.ok("status")
        assert st["slots"][st["running"]]["version"] == "2.0.0+0", st
        c.close()
        assert "was imported" not in sim.output
