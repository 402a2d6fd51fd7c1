"""The board checks in `make test` are real: they pass on device/ and fail on bad code."""
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import mpy_check  # noqa: E402


def _typecheck(*files):
    return subprocess.run([sys.executable, str(REPO / "tools" / "typecheck_device.py"), *map(str, files)],
                          capture_output=True, text=True, cwd=REPO)


def test_typecheck_rejects_misused_board_api(tmp_path):
    bad = tmp_path / "bad_board.py"
    bad.write_text("import machine\nmachine.Pin('LED').no_such_method()\nimport rp2\nrp2.Flash().ioctl('x', 0)\n")
    r = _typecheck(bad)
    assert r.returncode != 0
    assert "no_such_method" in r.stdout


def test_typecheck_rejects_cpython_only_stdlib(tmp_path):
    bad = tmp_path / "cpython_only.py"
    bad.write_text("import threading\nimport hmac\n")
    r = _typecheck(bad)
    assert r.returncode != 0 and "threading" in r.stdout


def test_typecheck_accepts_real_board_calls(tmp_path):
    good = tmp_path / "good_board.py"
    good.write_text("import machine, rp2, network\n"
                    "f = rp2.Flash()\nf.ioctl(6, 0)\nmachine.reset_cause()\n"
                    "w = network.WLAN(network.WLAN.IF_STA)\nw.config(pm=network.WLAN.PM_NONE)\n")
    r = _typecheck(good)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_check_flags_cpython_only_modules(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import sys\nimport threading\ntry:\n    import crc32c\nexcept ImportError:\n    import array\n"
                 "import umachine as machine\nif sys.implementation.name != 'micropython':\n    import cbor2\n")
    found = {(mod, kind) for _, mod, kind in mpy_check.imports_of(f)}
    assert found == {("sys", None), ("threading", None), ("crc32c", "optional"), ("array", "fallback"),
                     ("umachine", None), ("cbor2", "cpython")}
    assert "threading" not in mpy_check.RP2_MODULES and "machine" in mpy_check.RP2_MODULES
    bad = mpy_check.import_problems(f, set(), (1, 23))
    assert len(bad) == 2 and all(("'threading'" in b or "'crc32c'" in b) for b in bad), bad


def test_mpy_check_passes_on_the_tree():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "mpy_check.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 problems" in r.stdout


def test_mpy_check_is_version_aware():
    # vfs (the app filesystem) is new in 1.23: the floor the device, the check and provision share
    assert mpy_check.min_version() == (1, 23)
    from mpota import provision
    assert provision.MIN_VERSION == mpy_check.min_version()
    assert mpy_check.available("vfs", (1, 23)) and not mpy_check.available("vfs", (1, 22))
    assert mpy_check.available("os", (1, 20)) and not mpy_check.available("threading", (1, 27))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "mpy_check.py"), "--min-version", "1.22"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "device/mpota_appfs.py:" in r.stdout and "'vfs', which the rp2 build has only from 1.23" in r.stdout
