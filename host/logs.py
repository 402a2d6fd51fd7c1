"""A board's console over the network: the `logs` op (docs/protocol.md, "logs").

The agent keeps the last `log_size` bytes of the console (the app's prints and
the agent's own lines) in a ring, and the last crash's traceback in a file that
survives a reset. `read()` fetches what came after a cursor, as many requests
as the board's per-reply limit needs; a follower keeps the cursor it returns,
so each byte is shown once. Bytes the ring overwrote before they were read are
counted (`Chunk.dropped`), and a board that restarted since the cursor was taken
is noticed by its uptime (`Chunk.reset`): its new boot is read from the start.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_MAX_REQUESTS = 32  # per read(): 32 KiB at the board's 1 KiB a reply, twice its largest ring


@dataclass(frozen=True)
class Chunk:
    text: str                   # the console bytes after the cursor (decoded by the board)
    cursor: int                 # pass it to the next read(): nothing is shown twice
    dropped: int                # bytes after the cursor the ring no longer held
    reset: bool                 # the board restarted since the previous read (its uptime went back)
    traceback: Optional[str]    # the saved traceback (None: no crash saved, or not asked for)
    uptime_ms: int
    size: int                   # the board's ring size (0: it keeps no log, "log_size" 0)

    def as_dict(self) -> dict:
        return {"text": self.text, "cursor": self.cursor, "dropped": self.dropped, "reset": self.reset,
                "traceback": self.traceback, "uptime_ms": self.uptime_ms, "size": self.size}


async def read(client, cursor: Optional[int] = None, uptime_ms: Optional[int] = None,
               traceback: bool = True) -> Chunk:
    """What the board logged after `cursor` (None: since its boot, so that what
    the ring lost is counted in `dropped`). `uptime_ms`: the previous Chunk's,
    so that a restart since then is noticed."""
    r = await client.logs(0 if cursor is None else cursor, traceback)
    reset = uptime_ms is not None and r.get("uptime_ms", 0) < uptime_ms
    if reset and cursor is not None:  # the cursor was the previous boot's: this boot from its start
        r = await client.logs(0, traceback)
    tb = r.get("traceback")
    parts = [r.get("data") or ""]
    dropped = r.get("dropped") or 0
    n = 1
    while r.get("more") and n < _MAX_REQUESTS:
        r = await client.logs(r["cursor"], traceback=False)
        parts.append(r.get("data") or "")
        dropped += r.get("dropped") or 0  # (the ring wrapped meanwhile)
        n += 1
    return Chunk("".join(parts), r.get("cursor", 0), dropped, reset, tb, r.get("uptime_ms", 0),
                 r.get("size", 0))


_SUMMARY = re.compile(r"^[\w ]+ after \d+ ms \((?P<version>[^,)]+), slot [ab]\): ")


def crash_version(traceback: Optional[str]) -> Optional[str]:
    """The app version a saved traceback's summary line names (the version that ran
    when it was written: mpota_logs.save_tb), or None."""
    m = _SUMMARY.match(traceback or "")
    return m.group("version") if m else None


def dropped_line(n: int, size: int) -> str:
    return "[... %d bytes dropped: the board's %d-byte log ring wrapped before they were read ...]\n" % (
        n, size)


def chunk_text(c: Chunk, first: bool) -> str:
    """The lines to show for one read, markers included; when `first`, the saved
    traceback comes first, then the console."""
    out = []
    if first and c.traceback:
        body = c.traceback if c.traceback.endswith("\n") else c.traceback + "\n"
        out.append("--- last crash (saved on the board, survives resets) ---\n" + body)
        if c.size:
            out.append("--- console (the last %d bytes the board printed) ---\n" % c.size)
    if c.reset:
        out.append("[... the board restarted (uptime %.1f s): its new boot's log ...]\n" % (c.uptime_ms / 1000))
    if first and c.size == 0:
        out.append("[the board keeps no log (\"log_size\": 0 in its /mpota.json)]\n")
    if c.dropped:
        out.append(dropped_line(c.dropped, c.size))
    out.append(c.text)
    return "".join(out)


def prefixed(name: str, text: str, partial: str = "") -> tuple:
    """`text` (after `partial`, the unfinished line of the last call) as whole
    lines prefixed by `name`; -> (the lines, the new unfinished line)."""
    text = partial + text
    *lines, rest = text.split("\n")
    return "".join("%s| %s\n" % (name, ln) for ln in lines), rest
