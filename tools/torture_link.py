"""Part `link` of the torture harness (tools/torture.py): updates through a
hostile tools/linkproxy.py (linkproxy.HostileLink), each committed, against a
clean link."""
from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from torture_common import Image, make_image, record_violations, say, tracebacks, wait_conn
from simproc import Sim


@dataclass
class LinkFigures:
    updates: int = 0
    intact: int = 0
    seconds: float = 0.0
    sent: int = 0          # DATA payload bytes sent, all connections
    payload: int = 0       # image bytes
    resumed: int = 0       # bytes a resume did not send again (sum of resume offsets)
    reconnects: int = 0
    failures: list = field(default_factory=list)


async def _push_until_done(port: int, image: bytes, key: bytes, figs: LinkFigures, max_tries: int = 200) -> None:
    """host/push.py's resumable push_image, restarted at once after every drop
    (its own backoff would make 10 drops an update cost half a minute)."""
    from mpota.client import Client
    from mpota.push import push_image
    from mpota.errors import BusyError, ConnectionProblem, MpotaError
    clients: list = []

    def factory(*args, **kw):
        c = Client(*args, **kw)
        clients.append(c)
        return c

    def on_event(name, **kw):
        if name == "begin" and kw.get("offset"):
            figs.resumed += kw["offset"]

    sha = hashlib.sha256(image).hexdigest()
    t0 = time.monotonic()
    tries = 0
    try:
        while True:
            tries += 1
            try:
                res = await push_image("127.0.0.1", port, image, key=key, retries=0, timeout=5.0,
                                       busy_wait=10.0, client_factory=factory, on_event=on_event)
            except MpotaError as e:
                if tries >= max_tries or not isinstance(e, (ConnectionProblem, BusyError)):
                    figs.failures.append("%s after %d tries" % (e, tries))
                    return
                figs.reconnects += 1
                await asyncio.sleep(0.02)
                continue
            if res.commit.get("sha256") == sha and res.commit.get("state") == "pending":
                figs.intact += 1
            else:
                figs.failures.append("commit answered %s" % res.commit)
            return
    finally:
        figs.updates += 1
        figs.payload += len(image)
        figs.sent += sum(c.bytes_sent for c in clients)
        figs.seconds += time.monotonic() - t0


def hostile_link(work: Path, rng: random.Random, a) -> bool:
    from linkproxy import HostileLink, LinkProxy
    t0 = time.monotonic()
    n = a.updates + a.clean
    imgs = [make_image(work, "l%d" % i, "1.0.%d+0" % i, a.link_size, rng).data for i in range(n)]
    clean, hostile = LinkFigures(), LinkFigures()
    with Sim(state=work / "dev", flags=["--flash-timing", "none"]) as sim:
        key = sim.key

        async def go():
            async with LinkProxy("127.0.0.1", sim.tcp_port, cuts=0) as px:
                for img in imgs[:a.clean]:
                    await _push_until_done(px.port, img, key, clean)
            hx = HostileLink("127.0.0.1", sim.tcp_port, rng)
            async with hx:
                for img in imgs[a.clean:]:
                    hx.plan(sorted(rng.randrange(64, len(img)) for _ in range(a.disconnects)))
                    await _push_until_done(hx.port, img, key, hostile)
            return hx

        hx = asyncio.run(go())
        c = wait_conn(sim, key)
        st = c.ok("status")
        bad = record_violations(st, c, {hashlib.sha256(i).hexdigest(): Image("", st["slots"]["a"]["version"], i)
                                        for i in imgs[-1:]})
        c.close()
        crashed = "Traceback" in sim.output or sim.output.count("sim: boot #") != 1
        tbs = tracebacks(sim.lines)
    for f in hostile.failures + clean.failures + bad:
        say("VIOLATION link: %s" % f)
    if crashed:
        say("VIOLATION link: the device restarted or printed a traceback: %s" % "; ".join(tbs))
    per = hostile.seconds / max(1, hostile.updates)
    per_clean = clean.seconds / max(1, clean.updates)
    say("  clean link:   %d/%d updates intact, %.2f s each, %d bytes sent for %d"
        % (clean.intact, clean.updates, per_clean, clean.sent, clean.payload))
    say("  hostile link: %d disconnects (%.1f per update), %d stalls of %d ms, %d DATA frames duplicated, "
        "%d swapped; %d resumes skipped %d bytes"
        % (hx.cut_count, hx.cut_count / max(1, hostile.updates), hx.stalls, hx.stall * 1000, hx.dups,
           hx.swaps, hostile.reconnects, hostile.resumed))
    resent = hostile.sent - hostile.payload
    say("hostile link: %d/%d updates intact (SHA-256 verified at commit), re-sent %d bytes (%.1f%% of %d), "
        "%.2f s per update vs %.2f s clean (x%.1f), violations %d (%.1f s)"
        % (hostile.intact, hostile.updates, resent, 100.0 * resent / max(1, hostile.payload), hostile.payload,
           per, per_clean, per / per_clean if per_clean else 0, len(hostile.failures) + len(bad) + crashed,
           time.monotonic() - t0))
    return (hostile.intact == hostile.updates == a.updates and clean.intact == clean.updates
            and not bad and not crashed)
