"""Shared pytest fixtures: where things are, the unix-port MicroPython, free loopback ports."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MICROPYTHON = os.environ.get("MPOTA_MICROPYTHON") or str(VENV_BIN / "micropython")


def interp_label(mp):
    """A test id for an entry of INTERPRETERS: "i386" or "venv"."""
    return "i386" if mp == str(I386) else "venv"

# CPython tests import the codec flat, as the device does; the host tool is the
# package `mpota` (host/, installed editable by `make setup`).
for sub in ("shared", "tools", "tests/vectors"):
    p = str(REPO / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

from simproc import free_port  # noqa: E402,F401  (tools/simproc.py: one definition for tests and tools)
import boardbuilds  # noqa: E402  (tools/)

# The board-faithful 32-bit v1.27 build, where this machine has it (../shared/tools,
# ../../shared/tools or MPOTA_BOARD_TOOLS; a fresh clone has none: whatever uses it
# also runs, and says so, without it). The device tests run on every entry.
I386 = Path(boardbuilds.i386() or REPO.parent / "shared" / "tools" / boardbuilds.I386)
INTERPRETERS = [MICROPYTHON] + ([str(I386)] if I386.exists() else [])

# The host package `mpota` before any test puts device/ on sys.path, where the
# board's API module device/mpota.py has the same name.
import mpota  # noqa: E402,F401
try:
    import smp  # noqa: E402,F401  (PyPI's, smpclient's)
except ImportError:  # pragma: no cover (a dev extra)
    pass


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Popen(..., **INTERRUPTIBLE) for a child a test stops with SIGINT (Ctrl-C): a
# suite started in the background of a shell inherits SIGINT ignored, and a
# Python child that starts so never raises KeyboardInterrupt.
INTERRUPTIBLE = {"preexec_fn": _sigint_default}


def until_uploading(p, targets=1, timeout=60):
    """The --json events `mpota` (Popen p) prints until `targets` uploads are
    under way (a progress event past 0 from each), within `timeout` s, or
    until it stops; -> the events read."""
    import json
    import time

    seen, moving = [], set()
    deadline = time.monotonic() + timeout
    while len(moving) < targets and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if seen[-1]["event"] == "progress" and seen[-1]["done"] > 0:
            moving.add(seen[-1].get("target"))
    return seen


def run_micropython(args, heap=None, cwd=None, timeout=120, env=None, mp=None):
    """Run the unix-port micropython (`mp`: another entry of INTERPRETERS);
    returns CompletedProcess (text)."""
    cmd = [mp or MICROPYTHON]
    if heap:
        cmd += ["-X", "heapsize=%s" % heap]
    cmd += list(args)
    return subprocess.run(cmd, cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def device_copy(dest, appends=None):
    """A copy of device/ in folder `dest` (the codec's symlinks followed: a
    tree `sim --device-dir` deploys), with `appends` ({file name: text})
    added at the end of those files; returns dest."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted((REPO / "device").glob("*.py")):
        shutil.copyfile(p.resolve(), dest / p.name)
    for name, text in (appends or {}).items():
        with open(dest / name, "a") as f:
            f.write(text)
    return dest


def run_device_script(mp, name, code=None):
    """Run tests/device/`name` (or the source `code`) under micropython `mp`
    with device/ and tests/device/ (boardstub.py) first on sys.path; returns
    CompletedProcess (text)."""
    code = code if code is not None else (REPO / "tests" / "device" / name).read_text()
    head = "import sys\nsys.path[:0] = [%r, %r]\n" % (str(REPO / "device"), str(REPO / "tests" / "device"))
    return subprocess.run([mp, "-c", head + code], capture_output=True, text=True, timeout=60, cwd=str(REPO))


@pytest.fixture(params=INTERPRETERS, ids=interp_label)
def mp_build(request):
    """Each MicroPython the device tests run on: the .venv build, and the 32-bit
    v1.27 release where this machine has it."""
    return request.param


@pytest.fixture(scope="session")
def micropython():
    if not os.path.exists(MICROPYTHON):
        pytest.fail("unix-port micropython not found at %s: run `make setup`" % MICROPYTHON)
    return MICROPYTHON


@pytest.fixture
def mosquitto():
    """A private Mosquitto broker on a free loopback port (tools/mosquitto.py Broker:
    .port, .hostport, .url, .restart()), stopped at the end. Missing broker: the test
    fails saying how to install it (`make setup` does)."""
    from mosquitto import Broker, MosquittoMissing

    try:
        b = Broker()
    except MosquittoMissing as e:
        pytest.fail(str(e))
    with b:
        yield b
