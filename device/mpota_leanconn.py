# leanconn: one TCP connection in lean mode, while the app holds the heap
# (agent.py imports it instead of conn.py when the config says "mode": "lean").
#
# Lean mode leaves the app nearly all the heap, so what a connection loads
# beside it must be small. This module serves the everyday JSON lines --
# hello, auth, ping, status, confirm, reset (ops.py), and `begin`, which
# restarts the board into update mode (update.py) -- from one small line
# buffer, with the JSON-line protocol (lineproto.py) and line MACs
# (linemac.py): none of the framing, routing, session or update code. The
# first message it does not serve (a binary frame, `read`, an over-long
# line ...) hands the connection over to conn.py, the full stack, with its
# authentication and session (conn.adopt). docs/memory.md, "Lean mode".
#
# The connection policy is conn.py's: a stranger gets a 512-byte buffer and
# auth_timeout seconds to authenticate, within its own quota (connpolicy.admit).
import sys

import mpota_hal as hal
import mpota_connpolicy as connpolicy
import mpota_lineproto as lineproto
from mpota_lineproto import ProtoError, E_AUTH_REQUIRED

_SERVED = ("hello", "auth", "ping", "status", "confirm", "reset", "begin")  # begin: update.py
_OPEN = ("hello", "auth", "ping", "status")  # before authentication
_WS = b" \t\r\n"
_RECORD = ("hello", "status", "confirm", "begin")  # need the slot record (authenticated)


def _size(authed):
    # a line and its "\r\n"; authenticated, with its tag (33 bytes: linemac.LINE_TAG)
    if authed:
        return lineproto.MAX_LINE + 33 + 2
    return lineproto.MAX_LINE_PRE_AUTH + 2


class Lean:
    def __init__(self, dev, r, w):
        self.r = r
        self.w = w
        self.authed = not dev.auth_on
        self.buf = bytearray(_size(self.authed))
        self.n = 0  # bytes held in buf
        self.nonce = None
        self.sess = None  # linemac.Lines once authenticated
        self.t0 = hal.ticks_ms()
        self.task = None
        self.gone = False

    def out(self, b):
        if not self.gone:
            try:
                self.w.write(b if self.sess is None else self.sess.seal_line(b))
            except (OSError, MemoryError):
                self.gone = True  # the peer reset, or the session could not seal: close

    def secure(self, dev, nonce, host_nonce_hex):
        # after a successful auth (ops.op_auth): the authenticated line size,
        # the bytes held kept in place, and the session that seals every line
        buf = bytearray(_size(True))
        buf[:self.n] = self.buf[:self.n]
        self.buf = buf
        import ubinascii as binascii
        import mpota_linemac as linemac
        self.sess = linemac.Lines(dev.key, dev.id, nonce, binascii.unhexlify(host_nonce_hex), True)


async def serve(ag, r, w):
    # (agent.Agent.serve closes the socket and handles what is raised here)
    dev = ag.dev
    c = Lean(dev, r, w)
    if not await connpolicy.admit(ag, c):
        return
    full = None
    try:
        pending = await _loop(ag, c)
        if pending is not None:  # a message for the full stack: it goes on with c
            import mpota_conn as conn
            full = conn.adopt(ag, c, pending)
    finally:
        if c in ag.conns:
            ag.conns.remove(c)
        _done(dev)
    pending = c = None  # the line buffer goes before the full stack runs
    if full is not None:
        await conn.run(ag, full, True)


async def _loop(ag, c):
    # -> None when the connection is done, or a memoryview of the bytes from
    # the first message this module does not serve (for conn.adopt)
    dev = ag.dev
    while c in ag.conns:
        if c.n == len(c.buf):  # full, and no line ended in it: conn.py answers it
            return memoryview(c.buf)[:c.n]
        k = await connpolicy.receive(ag, c, memoryview(c.buf)[c.n:])
        if not k:
            return None
        c.n += k
        rest = _lines(dev, c)
        if rest is not None:
            return rest
        if c.gone:
            return None
        await c.w.drain()
        await dev.after_reply()
    return None


def _lines(dev, c):
    # Serve every complete line held; -> the bytes from the first message
    # that is not one of ours (None: all served, or the connection failed).
    while not c.gone:
        buf = c.buf
        s = 0
        while s < c.n and buf[s] in _WS:  # whitespace between messages
            s += 1
        if s == c.n:
            c.n = 0
            return None
        if buf[s] != 0x7B:  # not "{": a binary frame (or garbage) for conn.py
            return memoryview(buf)[s:c.n]
        i = buf.find(b"\n", s, c.n)
        if i < 0:
            buf[:c.n - s] = buf[s:c.n]  # keep the partial line at the start
            c.n -= s
            return None
        j = i - 1 if buf[i - 1] == 0x0D else i
        if not _line(dev, c, memoryview(buf)[s:j]):
            return memoryview(buf)[s:c.n]
        buf = c.buf  # (auth replaced it, the bytes in place)
        buf[:c.n - i - 1] = buf[i + 1:c.n]
        c.n -= i + 1
    return None


def _route(dev, c, op):
    # the module serving op here, or None: conn.py serves it (lineproto.serve_line)
    # Authenticate before loading anything on a peer's behalf.
    if not c.authed and op not in _OPEN:
        raise ProtoError(E_AUTH_REQUIRED, "authenticate first (hello, auth)")
    if op not in _SERVED:
        return None
    if c.authed and op in _RECORD:
        import mpota_slots as slots
        slots.attach(dev)  # released after the request: auth and ping never load it
    return "mpota_update" if op == "begin" else "mpota_ops"


def _done(dev):
    # after each request; the slot record and the update modules too unless
    # something else uses them (a session, the legacy UDP service, conn.py)
    dev.release("mpota_ops", "mpota_auth", "mpota_hmac_sha256")
    if dev.session is None and not dev.legacy_udp and "mpota_conn" not in sys.modules:
        dev.sl = None
        dev.release("mpota_update", "mpota_upload", "mpota_slots", "mpota_trust")


def _line(dev, c, ln):
    # -> False when the line is not ours to serve (it is handed over whole)
    sess = c.sess
    if sess is not None:
        ln = sess.open_line(ln)
        if ln is None:
            sess.fail(c)
            return True
    if lineproto.serve_line(dev, c, ln, _route, _done):
        return True
    if sess is not None:
        sess.rseq -= 1  # conn.py opens the same sealed line again
    return False
