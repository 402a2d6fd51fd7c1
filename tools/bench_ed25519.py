#!/usr/bin/env python3
"""Ed25519 verification on the device's interpreters: time and heap of one
device/ed25519.verify() (the image-signature check of docs/security.md).

    python tools/bench_ed25519.py [--runs N]

Prints, for each interpreter present (the board-faithful builds in
../shared/tools are skipped when absent, and qemu-system-arm is needed for
the Cortex-M0 one):
  - unix MicroPython (64-bit) and the 32-bit i386 build: time of one verify;
  - i386: heap kept by importing ed25519 / trust (gc.mem_alloc after a
    collection; proto and mcuboot, resident in the agent, loaded first),
    bytes allocated by one verify (gc disabled), and the peak: the smallest
    -X heapsize with which compiling, importing and one verify still run;
  - Cortex-M0 under qemu -icount shift=3 (one instruction = 8 ns): the time,
    i.e. instructions x 8 ns, and the RP2040 estimate at 125 MHz (Cortex-M0+,
    1.0-1.5 cycles per instruction with XIP cache misses).
Figures only, no assertions (a shared machine makes wall times noisy).
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import boardbuilds  # noqa: E402

UNIX_MP = str(Path(sys.executable).parent / "micropython")
DEVICE = str(REPO / "device")
# RFC 8032 TEST 2 (public key, message, signature): a valid one, the worst case
PUB = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
MSG = "72"
SIG = ("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
       "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")

TIMING = """
import time, gc
from binascii import unhexlify
pub = unhexlify("%s"); msg = unhexlify("%s"); sig = unhexlify("%s")
best = None
for _ in range(%d):
    gc.collect()
    t = time.ticks_us()
    ok = verify(pub, msg, sig)
    t = time.ticks_diff(time.ticks_us(), t)
    assert ok
    best = t if best is None else min(best, t)
print("VERIFY_US", best)
"""

HEAP = """
import sys, gc
sys.path.insert(0, %r)
import mpota_proto as proto, mpota_mcuboot as mcuboot  # resident in the agent already
gc.collect(); a0 = gc.mem_alloc()
import mpota_ed25519 as ed25519
gc.collect(); a1 = gc.mem_alloc()
import mpota_trust as trust
gc.collect(); a2 = gc.mem_alloc()
from binascii import unhexlify
pub = unhexlify("%s"); msg = unhexlify("%s"); sig = unhexlify("%s")
gc.collect(); gc.disable(); b0 = gc.mem_alloc()
assert ed25519.verify(pub, msg, sig)
b1 = gc.mem_alloc(); gc.enable()
print("IMPORT_ED25519", a1 - a0)
print("IMPORT_TRUST", a2 - a1)
print("VERIFY_ALLOCATED", b1 - b0)
"""

PEAK = """
import sys
sys.path.insert(0, %r)
import mpota_ed25519 as ed25519
from binascii import unhexlify
assert ed25519.verify(unhexlify("%s"), unhexlify("%s"), unhexlify("%s"))
print("OK")
"""


def _script(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    f.write(text)
    f.close()
    return f.name


def _run(mp, path, heap=None):
    cmd = [mp] + (["-X", "heapsize=%s" % heap] if heap else []) + [path]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _value(out, name):
    for line in out.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise RuntimeError("no %s in output:\n%s" % (name, out))


def time_unix(mp, runs):
    path = _script("import sys\nsys.path.insert(0, %r)\nfrom mpota_ed25519 import verify\n" % DEVICE
                   + TIMING % (PUB, MSG, SIG, runs))
    try:
        r = _run(mp, path, "160K")
        if r.returncode:
            raise RuntimeError(r.stdout + r.stderr)
        return _value(r.stdout, "VERIFY_US")
    finally:
        os.unlink(path)


def heap_i386(mp):
    path = _script(HEAP % (DEVICE, PUB, MSG, SIG))
    try:
        r = _run(mp, path, "16M")  # room for every byte a verify allocates with gc disabled
        if r.returncode:
            raise RuntimeError(r.stdout + r.stderr)
        figures = {n: _value(r.stdout, n) for n in ("IMPORT_ED25519", "IMPORT_TRUST", "VERIFY_ALLOCATED")}
    finally:
        os.unlink(path)
    # peak: the smallest heap (1 KB steps) with which compile + import + verify run
    path = _script(PEAK % (DEVICE, PUB, MSG, SIG))
    try:
        lo, hi = 4, 96  # KB: fails at lo (assumed), runs at hi
        if _run(mp, path, "%dK" % hi).stdout.strip() != "OK":
            figures["PEAK_HEAP_KB"] = None
            return figures
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _run(mp, path, "%dK" % mid).stdout.strip() == "OK":
                hi = mid
            else:
                lo = mid
        figures["PEAK_HEAP_KB"] = hi
    finally:
        os.unlink(path)
    return figures


def time_m0(runs):
    code = (REPO / "device" / "mpota_ed25519.py").read_text() + TIMING % (PUB, MSG, SIG, runs)
    return _value(boardbuilds.run_m0(code), "VERIFY_US")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="verifies per interpreter (the best is shown)")
    a = p.parse_args(argv)
    print("Ed25519 verify (device/mpota_ed25519.py), RFC 8032 test 2, best of %d" % a.runs)
    if os.path.exists(UNIX_MP):
        print("  unix MicroPython (64-bit):  %7.1f ms" % (time_unix(UNIX_MP, a.runs) / 1000))
    else:
        print("  unix MicroPython: absent (make setup)")
    i386 = boardbuilds.i386()
    if i386:
        print("  i386 MicroPython (32-bit):  %7.1f ms" % (time_unix(i386, a.runs) / 1000))
        h = heap_i386(i386)
        print("  i386 heap: import mpota_ed25519 %d B, import mpota_trust %d B, one verify allocates %d B (garbage),"
              " peak: runs in a %s KB heap" % (h["IMPORT_ED25519"], h["IMPORT_TRUST"], h["VERIFY_ALLOCATED"],
                                               h["PEAK_HEAP_KB"]))
    else:
        print("  i386 MicroPython: absent (../shared/tools/%s)" % boardbuilds.I386)
    if boardbuilds.cortex_m0():
        us = time_m0(1)
        print("  Cortex-M0 (qemu -icount shift=3): %7.1f ms = %.1f M instructions" % (us / 1000, us * 125 / 1e6))
        print("  RP2040 at 125 MHz (estimate, CPI 1.0-1.5): %.0f-%.0f ms" % (us / 1000, us * 1.5 / 1000))
    else:
        print("  Cortex-M0: absent (../shared/tools/%s and qemu-system-arm)" % boardbuilds.CORTEX_M0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
