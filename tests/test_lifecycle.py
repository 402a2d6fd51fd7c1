"""The board's lifecycle (issue 11): the watchdog's floor in the config and
its feeds inside long hashing loops, and the clear refusal of a MicroPython
older than the supported range (v1.22: no `vfs` module) at boot."""
import json
import shutil

from conftest import REPO, run_micropython
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
