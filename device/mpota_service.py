# service: the routing of every message, apart from any socket, for the
# state in agent.Device (config, the slot record, the one update session,
# app and boot facts). Loaded with a connection (agent.py releases it when
# the device is quiet). The hot path (DATA frames) is here; the other
# handlers are modules this one imports on use: ops.py (everyday JSON ops),
# update.py and upload.py (while an update session is open), rareops.py
# (read, erase, rollback), trustkeys.py (the trust op: signing keys) and
# legacy.py (reference frames). The handlers
# import nothing above them (they get the Device), so any of them can be
# imported alone. What a request loaded and no longer needs is released
# after it (idle()).
#
# JSON lines go through dispatch.serve (the op table). Handlers are
# synchronous: they queue replies on the connection (c.out/ack/nerror) and
# the transport (conn.py, udp.py) flushes them. A "connection" is a
# dispatch.Peer (conn.Conn for TCP, udp.UdpPeer for datagrams).
import sys
import gc
from micropython import const

import mpota_hal as hal
import mpota_lineproto as lineproto
from mpota_dispatch import serve
import mpota_proto as proto
from mpota_proto import OP_DATA, OP_READ
from mpota_lineproto import ProtoError, error_line
from mpota_framing import K_FRAME, K_LINE, HEADER_SIZE, frame_into
from mpota_checksums import crc32c

_K_REQ = const(-1)  # dispatch(): a parsed request handed over (conn.adopt)


def idle(dev):
    # after each request: release what only a session or a request needed
    # (the everyday ops are small and rare enough to load for each request)
    dev.end_request()


def drop(dev, owner):
    # the owner went away: close its session, keep the bytes for resume
    s = dev.session
    if s is not None and s.owner is owner:
        dev.close_session()
    idle(dev)


def ref_error(c, code):
    """A reference ErrorResponse in 7 bytes of its own: no legacy.py needed."""
    b = bytearray(HEADER_SIZE + 2)
    b[HEADER_SIZE] = code
    frame_into(b, 0xFF, 1)
    c.out(b)


# -- dispatch ----------------------------------------------------------------
def dispatch(dev, c, req=None):
    """Handle every complete message in c.dec, after request `req` (one a
    lean connection read, verified and handed over: conn.adopt); replies
    are queued on c."""
    dec = c.dec
    while True:
        if req is not None:
            ev = None
            k = _K_REQ
            v = req
            req = None
        else:
            ev = dec.next()
            if ev is None:
                break
            k = ev[0]
            v = ev[1]
            if c.sess is not None:  # authenticated: every message must carry the session's tag
                v = c.sess.open(k, v)
                if v is None:
                    return c.sess.fail(c)
        try:
            if k == K_FRAME:
                frame(dev, c, v)
            elif k == K_LINE:
                serve(dev, c, None, False, idle, v)  # the op table's (dispatch.py)
            elif k == _K_REQ:
                serve(dev, c, v, False, idle, None)
            else:
                bad(dev, c, v[0], v[1])
        except MemoryError:
            idle(dev)
            gc.collect()
            no_memory(dev, c, ev)
        except Exception as e:  # a bug must not end the connection
            sys.print_exception(e)
            c.out(error_line(None, lineproto.E_INTERNAL, "internal error: %r" % e))
    if c.ack_due:
        c.ack_due = False
        c.ack(c.ack_val)


def no_memory(dev, c, ev):
    # Out of heap (loading a handler while the app holds the heap): answer
    # in the asker's own framing, built without the modules that may be
    # what failed to load.
    if ev is None or ev[0] != K_FRAME:
        return lineproto.no_memory(c, None)
    op = ev[1][1]
    if 0x20 <= op <= 0x2F:
        return c.nerror(op, lineproto.E_NO_MEMORY)
    ref_error(c, lineproto.E_NO_MEMORY)


def bad(dev, c, code, msg):
    s = dev.session
    if msg.startswith("line") or msg.startswith("skipped"):
        c.out(error_line(None, code, msg))
    elif s is not None and s.owner is c and s.kind == "native":
        # probably a mangled DATA frame: tell the host where to resume
        c.nerror(0, code, s.w.pos, 0)
    elif not c.authed:
        ref_error(c, code)  # strangers do not get legacy.py loaded for them
    else:
        import mpota_legacy as legacy
        legacy.error(dev, c, code)
        idle(dev)


def frame(dev, c, f):
    op = f[1]
    if op == OP_DATA:
        data(dev, c, f)
    elif op == OP_READ:
        import mpota_rareops as rareops
        rareops.read_frame(dev, c, f)
        idle(dev)
    elif 0x20 <= op <= 0x2F:
        c.nerror(op, lineproto.E_UNSUPPORTED)
    elif op == 0x01:  # VersionRequest: open to all
        if len(f) == 6:
            c.out(proto.version_frame(dev.VERSION))
        else:
            ref_error(c, lineproto.E_BAD_FRAME)
    elif op not in proto.REF_REQUESTS:
        ref_error(c, lineproto.E_UNSUPPORTED)  # reference responses and unknown opcodes
    elif not (c.authed or dev.legacy_udp):
        ref_error(c, lineproto.E_AUTH_REQUIRED)  # strangers do not get legacy.py loaded for them
    else:
        import mpota_legacy as legacy  # 0x01-0x0C, 0xFF and unknown opcodes
        legacy.handle(dev, c, f)
        idle(dev)

# -- native frames (the hot path: no allocation beyond a view or two) ---------
def data(dev, c, f):
    if not c.authed:
        return c.nerror(OP_DATA, lineproto.E_AUTH_REQUIRED)
    s = dev.session
    if s is None or s.owner is not c or s.kind != "native":
        return c.nerror(OP_DATA, lineproto.E_INCORRECT_STATE)
    n = len(f)
    w = s.w
    acked = w.pos
    if n < HEADER_SIZE + 10:
        return c.nerror(OP_DATA, lineproto.E_BAD_FRAME, acked)
    off = (f[5] << 24) | (f[6] << 16) | (f[7] << 8) | f[8]
    ln = n - 14
    if crc32c(f[13:n - 1]) != ((f[9] << 24) | (f[10] << 16) | (f[11] << 8) | f[12]):
        return c.nerror(OP_DATA, lineproto.E_CRC_MISMATCH, acked, off)
    b = f
    p = 13
    if s.z is not None:  # a deflate session (update.op_begin): the payload is a stream of the bytes at off
        try:
            ln = s.inflate(f[13:n - 1])
        except ProtoError as e:
            return c.nerror(OP_DATA, e.code, acked, off)
        b = memoryview(s.z)
        p = 0
    if off + ln > s.size:
        return c.nerror(OP_DATA, lineproto.E_OUT_OF_RANGE, acked, off)
    if off > acked and w.ahead:  # past held sectors not copied yet (upload.Writer.copy_held)
        w.fill((off - acked + 4095) >> 12)
        acked = w.pos
    if off > acked:
        return c.nerror(OP_DATA, lineproto.E_OUT_OF_ORDER, acked, off)
    if off + ln > acked:
        try:
            w.write(b[p + acked - off:p + ln])
        except ProtoError as e:
            return c.nerror(OP_DATA, e.code, w.pos, off)
    s.t = hal.ticks_ms()
    c.ack_due = True
    c.ack_val = w.pos
