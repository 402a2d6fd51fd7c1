#!/usr/bin/env python3
"""The torture harness: power cuts, a hostile link, live fuzzing and racing
operators against tools/sim.py on loopback. Bounded in time and count; prints
figures; exits 1 on any violation.

    python tools/torture.py                      # everything, full counts (make torture)
    python tools/torture.py --parts cuts --cuts 40 --seed 7
    python tools/torture.py --parts link --updates 5
    python tools/torture.py --parts fuzz --fuzz 20000
    python tools/torture.py --parts race --races 3

--seed replays a run: cut points, fuzz messages, link faults and images all
come from it (the seed is printed first). tests/test_torture.py runs a short
version of each part.

Parts:
  cuts  power cuts (tools/sim.py --power-cut-after) spread over every state
        transition: upload, commit, pending->trial at boot, trial count
        increments, confirm, rollback after failed trials, manual rollback,
        erase, the legacy update, provisioning (format + deploy + first boot
        of a fresh flash). After each cut the device boots and is checked:
        the right image runs, the state record is consistent, every slot
        claimed good hashes (read back) to an image that was pushed, and the
        next update (push, commit, reset, trial boot) succeeds.
  link  updates through a hostile tools/linkproxy.py (segment loss as 200 ms
        stalls, DATA frames duplicated and reordered, forced disconnects),
        each committed (the device checks SHA-256), against a clean link.
  fuzz  mutated binary frames and JSON lines, unauthenticated and
        authenticated, at a board-like heap; no crash, no hang, no state or
        flash change from unauthenticated input, ping answered after every batch.
  race  4 operators racing to push (one wins, the rest get busy then succeed),
        a push racing a rollback, a reset racing a commit.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

# One module per part, each importing only tools/torture_common.py (images,
# status checks, simulator connections); this runner imports the parts.
from torture_common import say
from torture_fuzz import fuzz
from torture_link import hostile_link
from torture_powercut import PowerCuts
from torture_races import races


PARTS = ("cuts", "link", "fuzz", "race")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="torture.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of %s" % ", ".join(PARTS))
    p.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed, printed)")
    p.add_argument("--cuts", type=int, default=500, help="power cuts")
    p.add_argument("--updates", type=int, default=50, help="hostile-link updates")
    p.add_argument("--clean", type=int, default=5, help="clean-link updates to compare against")
    p.add_argument("--link-size", type=int, default=96 * 1024, help="hostile-link image size (bytes)")
    p.add_argument("--disconnects", type=int, default=10, help="forced disconnects per update")
    p.add_argument("--fuzz", type=int, default=100000, help="fuzz messages")
    p.add_argument("--batch", type=int, default=250, help="fuzz messages per batch (ping after each)")
    p.add_argument("--races", type=int, default=10, help="rounds of each race")
    p.add_argument("--workdir", default=None, help="keep the scratch states here (default: a temp dir)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    for x in a.parts:
        if x not in PARTS:
            p.error("unknown part %r (choose from %s)" % (x, ", ".join(PARTS)))
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "big")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    say("torture: seed %d (replay: --seed %d), parts %s" % (a.seed, a.seed, ",".join(a.parts)))
    own = a.workdir is None
    work = Path(tempfile.mkdtemp(prefix="mpota-torture-")) if own else Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ok = True
    try:
        for part in a.parts:
            rng = random.Random("%d-%s" % (a.seed, part))
            pw = work / part
            t = time.monotonic()
            if part == "cuts":
                res = PowerCuts(pw, rng, a.verbose).run(a.cuts)
            elif part == "link":
                res = hostile_link(pw, rng, a)
            elif part == "fuzz":
                res = fuzz(pw, rng, a)
            else:
                res = races(pw, rng, a)
            say("torture: %s %s in %.1f s" % (part, "passed" if res else "FAILED", time.monotonic() - t))
            ok = ok and res
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    say("torture: %s, seed %d, %.1f s" % ("all passed" if ok else "FAILED", a.seed, time.monotonic() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
