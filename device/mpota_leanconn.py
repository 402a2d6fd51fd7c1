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
# authentication and session (conn.adopt); a JSON request it read and
# verified goes over parsed, so no message is opened twice. Which ops it
# serves is the op table's (dispatch._OPS, _LEAN). docs/memory.md, "Lean mode".
#
# The connection policy is conn.py's: a stranger gets a 512-byte buffer and
# auth_timeout seconds to authenticate, within its own quota (connpolicy.admit).
#
# Beside an app that holds most of the heap, what is free is mostly small
# holes and one run at the end. The heap is collected before the objects
# that outlive a request are made (the connection, its buffers, its
# session) and before each request: without it they are placed past the
# garbage of the last request, inside that run, and split it (measured by
# bench_headroom: 92 KiB updated in 3 of 5 heap layouts, in 5 of 5 with it).
import gc
import mpota_hal as hal
import mpota_connpolicy as connpolicy
import mpota_dispatch as dispatch
import mpota_lineproto as lineproto

_WS = b" \t\r\n"


class Lean(dispatch.Peer):
    # (sess: a linemac.Lines once authenticated; frames are handed over, so
    # Peer.nerror is never called)
    def __init__(self, dev, r, w):
        self.r = r
        self.w = w
        # a line and its "\r\n" (authenticated: with its tag, 33 bytes: linemac.LINE_TAG)
        if dev.auth_on:
            self.buf = bytearray(lineproto.MAX_LINE_PRE_AUTH + 2)
        else:
            self.authed = True
            self.buf = bytearray(lineproto.MAX_LINE + 33 + 2)
        self.n = 0  # bytes held in buf
        self.t0 = hal.ticks_ms()
        self.task = None

    def out(self, b):
        if not self.gone:
            try:
                self.w.write(b if self.sess is None else self.sess.seal_line(b))
            except (OSError, MemoryError):
                self.gone = True  # the peer reset, or the session could not seal: close

    def reply(self, rid, fields):
        dispatch.stream_reply(self, rid, fields)

    def secure(self, dev, nonce, host_nonce_hex):
        # after a successful auth (ops.op_auth): the authenticated line size,
        # the bytes held kept in place, and the session that seals every line
        gc.collect()
        buf = bytearray(lineproto.MAX_LINE + 33 + 2)
        buf[:self.n] = self.buf[:self.n]
        self.buf = buf
        import ubinascii as binascii
        import mpota_linemac as linemac
        self.sess = linemac.Lines(dev.key, dev.id, nonce, binascii.unhexlify(host_nonce_hex), True)


async def serve(ag, r, w):
    # (agent.Agent.serve closes the socket and handles what is raised here)
    dev = ag.dev
    gc.collect()  # (the heading: the connection low in the heap)
    c = Lean(dev, r, w)
    if not await connpolicy.admit(ag, c):
        return
    full = req = None
    try:
        h = await _loop(ag, c)
        if h is not None:  # messages for the full stack: it goes on with c
            import mpota_conn as conn
            full = conn.adopt(ag, c, h[1])
            req = h[0]
    finally:
        if c in ag.conns:
            ag.conns.remove(c)
        _done(dev)
    h = c = None  # the line buffer goes before the full stack runs
    if full is not None:
        await conn.run(ag, full, True, req)


async def _loop(ag, c):
    # -> None when the connection is done, or the handover (_lines)
    dev = ag.dev
    while c in ag.conns:
        if c.n == len(c.buf):  # full, and no line ended in it: conn.py answers it
            return None, memoryview(c.buf)[:c.n]
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
    # Serve every complete line held; -> the handover when a message is not
    # ours: (the request already read and verified, or None; a memoryview of
    # the bytes not handled after it), for conn.adopt and conn.run.
    # None: all served, or the connection failed.
    while not c.gone:
        buf = c.buf
        s = 0
        while s < c.n and buf[s] in _WS:  # whitespace between messages
            s += 1
        if s == c.n:
            c.n = 0
            return None
        if buf[s] != 0x7B:  # not "{": a binary frame (or garbage) for conn.py
            return None, memoryview(buf)[s:c.n]
        i = buf.find(b"\n", s, c.n)
        if i < 0:
            buf[:c.n - s] = buf[s:c.n]  # keep the partial line at the start
            c.n -= s
            return None
        j = i - 1 if buf[i - 1] == 0x0D else i
        req = _line(dev, c, memoryview(buf)[s:j])
        if req is not None:
            return req, memoryview(buf)[i + 1:c.n]
        buf = c.buf  # (auth replaced it, the bytes in place)
        buf[:c.n - i - 1] = buf[i + 1:c.n]
        c.n -= i + 1
    return None


def _done(dev):
    # after each request (on a lean connection the slot record lives for one
    # request, elsewhere for the connection: agent._LIFE)
    dev.end_request(True)


def _line(dev, c, ln):
    # -> None when served, else the request (parsed, its tag verified) to hand over whole
    sess = c.sess
    if sess is not None:
        ln = sess.open_line(ln)
        if ln is None:
            sess.fail(c)
            return None
    gc.collect()
    return dispatch.serve(dev, c, None, True, _done, ln)
