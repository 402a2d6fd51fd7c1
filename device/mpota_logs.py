# logs: the logs op (docs/protocol.md, "logs") and the last traceback's file.
# Loaded per request and released after it (agent._LIFE); the agent loads it
# for a crash (agent._crashed); bootmgr._last_crash reads the summary at boot.
#
# The traceback file (TB_PATH) is written only when the app crashes or the
# agent fails, at most TB_WRITES times a boot, never per print; it holds one
# summary line and the traceback, at most TB_MAX bytes. It survives a reset.
import sys
import gc

import mpota_lineproto as lineproto

TB_PATH = "/mpota_tb.txt"
TB_MAX = 1024  # bytes of the traceback file
TB_WRITES = 4  # a bug a peer can trigger again and again must not wear the flash
MAX_DATA = 1024  # log bytes in one reply (the peer asks again: "more")


def save_tb(dev, what, e):
    """Write `what` and e's traceback to TB_PATH (bounded) and keep its
    summary line in dev.last_crash (status). Never raises: a full
    filesystem must not turn a crash report into a second crash."""
    if dev.tb_writes >= TB_WRITES:
        return
    dev.tb_writes += 1
    line = "%s after %d ms (%s): %s: %s" % (what, dev.uptime(), _running(dev), type(e).__name__, e)
    dev.last_crash = line[:120]
    gc.collect()
    t = ""
    try:
        import uio
        s = uio.StringIO()  # transient, this once: print_exception writes to a stream
        sys.print_exception(e, s)
        t = s.getvalue()
    except MemoryError:
        pass  # the summary line alone
    s = None
    try:
        with open(TB_PATH, "w") as f:
            f.write(dev.last_crash + "\n")
            f.write(t[-(TB_MAX - len(dev.last_crash) - 1):])  # the tail: where it was raised
    except Exception:
        pass  # a full or read-only filesystem: the summary is in status all the same


def _running(dev):
    # which app version ran: a traceback read later (another version may run by then) says it
    if dev.running is None:
        return "no app"
    v = dev.app.get("version")
    return "slot %s" % "ab"[dev.running] if v is None else "%s, slot %s" % (v, "ab"[dev.running])


def _traceback():
    try:
        with open(TB_PATH) as f:
            return f.read(TB_MAX)
    except OSError:
        return None


def _text(mv):
    try:
        return str(mv, "utf-8")
    except UnicodeError:  # a multi-byte character cut at the ring's edge, or binary output
        b = bytearray(mv)
        for i in range(len(b)):
            if b[i] > 0x7E or (b[i] < 0x20 and b[i] != 10 and b[i] != 9):
                b[i] = 0x3F  # "?"
        return str(b, "ascii")


def op_logs(dev, c, req):
    """{"op":"logs","since":CURSOR,"max":N} -> the log bytes after CURSOR
    (all that is kept without it), the new cursor, how many bytes after
    CURSOR the ring no longer holds ("dropped"), "more" when the reply
    stopped at `max`, and the saved traceback."""
    r = dev.log
    mx = lineproto.int_range(req, "max", 1, MAX_DATA, MAX_DATA)
    since = -1 if req.get("since") is None else lineproto.int_range(req, "since", 0, 0x1FFFFFFF)
    tb = req.get("traceback", True) is not False
    out = {"size": 0, "cursor": 0, "dropped": 0, "data": "", "more": False,
           "traceback": _traceback() if tb else None, "uptime_ms": dev.uptime()}
    if r is None:
        return out
    n = r.n
    z = len(r.buf)
    mask = 0x1FFFFFFF
    if since < 0:  # no cursor: all that is kept
        since = (n - r.kept) & mask
    elif since > n:  # a cursor ahead of this boot's: a previous boot's (the device reset since)
        since = 0
    d = (n - since) & mask
    dropped = 0
    if d > r.kept:
        dropped = d - r.kept
        d = r.kept
    m = d if d < mx else mx
    start = (r.p - d) % z
    b = bytearray(m)
    k = m if start + m <= z else z - start
    b[:k] = r.mv[start:start + k]
    if k < m:
        b[k:] = r.mv[:m - k]
    out.update(size=z, cursor=(n - d + m) & mask, dropped=dropped, data=_text(b), more=m < d)
    return out
