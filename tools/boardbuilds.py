"""The board-faithful MicroPython builds that live outside the project (../shared/tools,
see its README.md and docs/board.md), for benchmarks and the tests that can use them.

    i386() -> path or None          the 32-bit unix port (heap and word size of the RP2040)
    cortex_m0() -> path or None     the qemu microbit build (ARMv6-M, like the Cortex-M0+)
    run_m0(code, timeout=600) -> str   run `code` on the Cortex-M0 build in qemu with
                                   -icount shift=3 (8 ns per instruction: a 125 MHz,
                                   one-instruction-per-cycle clock) through the raw REPL,
                                   as mpremote does; returns what it printed.

A fresh clone has no ../shared: every caller must work (and say so) without them.
MPOTA_BOARD_TOOLS names the folder when it is elsewhere.
"""
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
I386 = "micropython-1.27-i386"
CORTEX_M0 = "micropython-1.27-cortex-m0.elf"


def _find(name):
    dirs = [os.environ.get("MPOTA_BOARD_TOOLS")]
    dirs += [str(REPO.parent / "shared" / "tools"), str(REPO.parent.parent / "shared" / "tools")]
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def i386():
    return _find(I386)


def cortex_m0():
    """The Cortex-M0 build, or None when it or qemu-system-arm is missing."""
    elf = _find(CORTEX_M0)
    return elf if elf and shutil.which("qemu-system-arm") else None


class QemuError(RuntimeError):
    pass


def _read_until(proc, token, timeout):
    buf = b""
    end = time.monotonic() + timeout
    while token not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise QemuError("qemu: no %r within %d s; got %r" % (token, timeout, buf[-200:]))
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            data = os.read(proc.stdout.fileno(), 4096)
            if not data:
                raise QemuError("qemu exited; got %r" % buf[-200:])
            buf += data
    return buf


def run_m0(code, timeout=600):
    elf = cortex_m0()
    if elf is None:
        raise QemuError("no Cortex-M0 build or no qemu-system-arm")
    cmd = ["qemu-system-arm", "-machine", "microbit", "-global", "nrf51-soc.flash-size=1048576",
           "-global", "nrf51-soc.sram-size=262144", "-bios", "none", "-nographic", "-monitor", "null",
           "-semihosting", "-serial", "stdio", "-icount", "shift=3", "-kernel", elf]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc.stdin.write(b"\r\x03\x03\x01")  # interrupt, then raw REPL (Ctrl-A)
        proc.stdin.flush()
        _read_until(proc, b"raw REPL; CTRL-B to exit\r\n>", 60)
        proc.stdin.write(code.encode() + b"\x04")
        proc.stdin.flush()
        out = _read_until(proc, b"\x04>", timeout)
    finally:
        proc.kill()
        proc.wait()
    # raw REPL reply: OK, stdout, \x04, stderr, \x04, >
    body = out.split(b"OK", 1)[-1]
    stdout, _, rest = body.partition(b"\x04")
    stderr = rest.partition(b"\x04")[0]
    if stderr.strip():
        raise QemuError("error on the Cortex-M0 build:\n%s" % stderr.decode("utf-8", "replace"))
    return stdout.decode("utf-8", "replace").replace("\r\n", "\n")
