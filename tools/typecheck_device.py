#!/usr/bin/env python3
"""Type-check device code against the Pico W stubs (micropython-rp2-rpi_pico_w-stubs).

The stub package installs flat modules (machine.pyi, rp2/, network.pyi, ...)
into site-packages and a MicroPython typeshed (micropython-stdlib-stubs, the
`stdlib/` folder). mypy gets that typeshed and a folder of links to the board
stubs only, so CPython's stdlib cannot make device code look valid.
Usage: python tools/typecheck_device.py [FILES...]   (default: device/*.py)
"""
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = Path(sysconfig.get_paths()["purelib"])


def board_stub_names():
    names = set()
    for rec in SITE.glob("micropython_rp2_rpi_pico_w_stubs-*.dist-info/RECORD"):
        for line in rec.read_text().splitlines():
            top = line.split(",")[0].split("/")[0]
            if top.endswith(".pyi") or (SITE / top / "__init__.pyi").exists():
                names.add(top)
    names.add("_mpy_shed")
    return sorted(names)


def main(argv):
    files = argv or sorted(str(p) for p in (REPO / "device").glob("*.py"))
    if not (SITE / "stdlib" / "VERSIONS").exists() or not board_stub_names():
        print("typecheck: Pico W stubs missing; run `make setup`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for name in board_stub_names():
            if (SITE / name).exists():
                (Path(tmp) / name).symlink_to(SITE / name)
        # Errors inside the stub package itself are not ours to fix.
        stub_mods = []
        for name in board_stub_names():
            mod = name[:-4] if name.endswith(".pyi") else name
            stub_mods += [mod, mod + ".*"]
        ini = Path(tmp) / "mypy.ini"
        ini.write_text((REPO / "tools" / "mypy-device.ini").read_text()
                       + "\n[mypy-%s]\nignore_errors = True\n" % ",".join(stub_mods))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ini),
               "--custom-typeshed-dir", str(SITE), "--no-site-packages"] + files
        env = {"MYPYPATH": tmp + ":" + str(REPO / "device"), "PATH": "/usr/bin:/bin"}
        r = subprocess.run(cmd, cwd=REPO, env=env)
        return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
