"""The board's lifecycle (issue 11): the watchdog's floor in the config and
its feeds inside long hashing loops, and the clear refusal of a MicroPython
older than the supported range (v1.22: no `vfs` module) at boot."""
import json
import shutil

from conftest import REPO, device_copy, run_micropython
from devconn import app_image
from simproc import Sim

DEVICE = str(REPO / "device")


def _mp(code, build, heap=None):
    r = run_micropython(["-c", "import sys\nsys.path.insert(0, %r)\n" % DEVICE + code], heap=heap, mp=build)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_wdt_has_a_floor_of_2_s(tmp_path, mp_build):
    out = _mp("""
import mpota_config as config, json
for v in (1, 1999, 0, 2000, 8388, 9000):
    cfg, errors = config.load(path="/nonexistent", overrides={"wdt": v})
    print(json.dumps([v, cfg["wdt"], errors]))
""", mp_build)
    rows = [json.loads(ln) for ln in out.splitlines()]
    for v, got, errors in rows:
        if v in (0, 2000, 8388):
            assert (got, errors) == (v, []), (v, errors)
        else:
            assert got == 0 and len(errors) == 1, (v, got, errors)  # refused: the watchdog stays off
    assert "'wdt' must be 0 (off) or 2000..8388 ms (shorter resets the board in a loop), got 1" in rows[0][2][0]
    assert "'wdt' must be in 0..8388, got 9000" in rows[-1][2][0]


def test_image_verify_feeds_the_watchdog_while_it_hashes(tmp_path, mp_build):
    img = app_image(tmp_path, "big", "def main():\n    pass\n", "1.0.0+0", pad=96 * 1024)
    p = tmp_path / "img.bin"
    p.write_bytes(img)
    out = _mp("""
import mpota_mcuboot as mcuboot
n = [0]
def feed():
    n[0] += 1
info = mcuboot.verify(%r, feed=feed)
print(info["img_size"], n[0])
mcuboot.verify(%r)  # no feed: the host's and the old callers' way
""" % (str(p), str(p)), mp_build)
    size, feeds = map(int, out.split())
    assert size > 96 * 1024 and len(img) // (16 * 1024) - 1 <= feeds <= len(img) // (16 * 1024)  # every 16 KiB


def test_version_floor_refuses_1_22_with_a_clear_message(mp_build):
    out = _mp("""
import mpota_bootmgr as bootmgr
print(bootmgr.MIN_VERSION, bootmgr.unsupported((1, 23, 0)), bootmgr.unsupported((1, 27, 0)))
print(bootmgr.unsupported())
print(bootmgr.unsupported((1, 22, 2)))
""", mp_build)
    lines = out.splitlines()
    assert lines[0] == "(1, 23, 0) None None"
    assert lines[1] == "None"  # both builds here are supported (1.27, 1.29 preview)
    assert lines[2] == ("MicroPython 1.22.2 is not supported: mpota needs 1.23 or newer (the app filesystem "
                        "needs the vfs module); flash a newer RPI_PICO_W firmware. The agent does not start.")


def test_a_board_below_the_floor_refuses_at_boot(tmp_path):
    # the real device files, with a floor above any release: the boot path a v1.22 board takes
    dev = tmp_path / "device"
    shutil.copytree(REPO / "device", dev, symlinks=False)
    bm = dev / "mpota_bootmgr.py"
    bm.write_text(bm.read_text().replace("MIN_VERSION = (1, 23, 0)", "MIN_VERSION = (99, 0, 0)"))
    sim = Sim(state=tmp_path / "dev", device_dir=dev, ready=False)
    try:
        line = sim.wait_for_line("is not supported", timeout=60)
        assert "mpota needs 99.0 or newer" in line and "The agent does not start." in line
        assert sim.wait_exit(30) == 0  # main.py returns: the board's REPL, no agent
        assert "mpota: ready" not in sim.output and "Traceback" not in sim.output, sim.output
    finally:
        sim.stop()
    assert json.loads((tmp_path / "dev" / "boot.json").read_text())["boot_count"] == 1


# The boot leaves no connection module behind (bootmgr._end): appended to a
# copy of the device tree, mpota_slots keeps a handle on itself in the
# resident mpota_hal, and main.py reports what boot left loaded.
_SEEN = """
import sys  # noqa: E402  (test: tests/test_lifecycle.py)
import mpota_hal  # noqa: E402
mpota_hal.SEEN = sys.modules[__name__]
"""
_REPORT = ('print("BOOT LEFT", [n for n in agent.mods(0xFF) if n in sys.modules], '
           'len(agent.hal.SEEN.__dict__))  # (test: tests/test_lifecycle.py)\n')


def test_boot_leaves_no_connection_module_and_empties_those_it_loaded(tmp_path):
    """bootmgr loads the slot record's modules (mpota_slots, the codec) and,
    beside an app, every module of a connection (_intern). A stale word on
    the C stack pointing at any of them kept all its code: 8-10 KB of
    mpota_slots and mpota_lineproto at agent 0.5.0's idle. Boot now drops
    them emptied, with an app and without one."""
    from devconn import DevConn, reset_and_wait
    dev = device_copy(tmp_path / "device", {"mpota_slots.py": _SEEN})
    start = "    agent.main(_dev, _app)\n"
    main = (dev / "main.py").read_text()
    assert start in main
    (dev / "main.py").write_text(main.replace(start, "    " + _REPORT + start))
    img = app_image(tmp_path, "app", "NAME = 'left'\n\ndef main():\n    pass\n", "1.0.0+0")
    with Sim(state=tmp_path / "st", device_dir=dev) as sim:
        assert "BOOT LEFT [] 0" in sim.output, sim.output[-1500:]  # no app
        c = DevConn(sim.tcp_port, sim.key)
        c.push(bytes(img), version="1.0.0+0")
        mark = sim.mark()
        c = reset_and_wait(sim, c, sim.key)
        c.close()
        out = sim.output[mark:]
        assert "booted a" in out and "BOOT LEFT [] 0" in out, out[-1500:]
        assert "Traceback" not in sim.output, sim.output[-2000:]
