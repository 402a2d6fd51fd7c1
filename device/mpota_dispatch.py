# dispatch: what every transport serves, in one place -- the peer interface
# (Peer: what a handler may use of a connection, which every transport
# implements) and the JSON op table (for each op: the module that serves it,
# whether a stranger may use it, which connection kinds serve it), with the
# request dispatch both connection kinds route through (serve). conn.py,
# leanconn.py and udp.py import it; loaded with a connection and released
# with it (agent._LIFE). The shared codec (lineproto.py) parses and formats
# lines; it never names a device handler.
import gc
import sys
import ujson as json
from micropython import const

import mpota_lineproto as lineproto


class Peer:
    """What a handler uses of a connection; every transport subclasses it:
    conn.Conn (TCP), leanconn.Lean (TCP in lean mode), udp.UdpPeer (legacy
    datagrams). The attributes below are class defaults (an instance holds
    only what it changed). The methods each transport implements:
      out(b): queue one complete reply (a frame, or a line ending in "\\n");
      nerror(op, code, value=0, ref=0): answer binary frame `op` with an
        error (Conn, UdpPeer; a Lean connection hands frames over);
      secure(dev, nonce, host_nonce_hex): after a successful auth
        (ops.op_auth), seal and open every later message (Conn, Lean;
        datagrams cannot authenticate).
    Declared here without bodies: a method stub costs every connection heap.
    reply() has a body: the line made whole and queued with out(); the
    stream transports write it in pieces where that does not fit
    (stream_reply)."""
    authed = False  # the peer authenticated (or auth is off)
    wired = False  # its transport authenticates it: the USB cable (usb.py; hello says auth none)
    nonce = None  # the challenge of its last hello (ops.op_hello)
    sess = None  # its session once authenticated: seals and opens every message
    gone = False  # a write failed: the transport closes after this batch
    ack_due = False  # a DATA frame was taken: the transport sends one ACK (ack_val) for the batch
    ack_val = 0
    max_data = lineproto.MAX_DATA  # DATA bytes a frame may carry (less when its buffer could not grow: conn.Conn.grow)

    def reply(self, rid, fields):
        """Queue the reply `fields` to request `rid` (serve)."""
        self.out(lineproto.reply_line(rid, fields))


_PIECE = const(128)  # bytes of a reply line written at a time (stream_reply)


def stream_reply(c, rid, fields):
    """Write the line lineproto.reply_line makes to stream peer c (its
    stream c.w, its line session c.sess) field by field, MACed as it goes
    (linemac.Lines.seal_begin): no allocation the line's size (a status line
    is over 1 KB; beside an app that fragmented the heap that was the piece
    that could not be had, twice: the text and its sealed copy), nor a copy
    of the fields. leanconn.Lean always replies so; conn.Conn where the
    whole line does not fit (its pieces may wait on Nagle). Out of heap
    before its first byte went, MemoryError (serve answers no_memory; no
    sequence number is spent); half way, the line is cut: the connection
    closes (gone), as out() does."""
    if c.gone:
        return
    s = c.sess
    p = None
    try:
        p = _Pieces(c.w, None if s is None else s.seal_begin())
        if rid is not None:
            p.put('{"id": ')
            p.put(json.dumps(rid))
            p.put(', "ok": true')
        else:
            p.put('{"ok": true')
        for k in fields or ():
            p.put(", ")
            p.put(json.dumps(k))
            p.put(": ")
            p.put(json.dumps(fields[k]))
        p.put("}")
        p.flush()
        c.w.write(b"\n" if s is None else s.seal_end(p.h))
    except MemoryError:
        if p is None or not p.sent:
            raise
        c.gone = True
    except OSError:
        c.gone = True


class _Pieces:
    # a reply line's pieces (stream_reply), gathered up to _PIECE bytes, then
    # hashed (h: the line's MAC, or None) and written to the connection's stream w
    def __init__(self, w, h):
        self.w = w
        self.h = h
        self.b = bytearray(_PIECE)
        self.n = 0
        self.sent = False  # a piece went out

    def put(self, t):
        b = t.encode()
        n = len(b)
        if self.n + n > _PIECE:
            self.flush()
            if n > _PIECE:  # a long field: as it is
                self._put(b)
                return
        self.b[self.n:self.n + n] = b
        self.n += n

    def flush(self):
        if self.n:
            self._put(memoryview(self.b)[:self.n])
            self.n = 0

    def _put(self, v):
        if self.h is not None:
            self.h.update(v)
        self.sent = True
        self.w.write(v)  # (asyncio's stream sends at once, or copies what it queues)


# -- the op table --------------------------------------------------------------
# For each op in _OPS, one byte of flags in _FLAGS:
_FULL = const(1)  # conn.py serves it (every op)
_LEAN = const(2)  # leanconn.py serves it too; else it hands the connection over to conn.py
_OPEN = const(4)  # served before authentication
_RECORD = const(8)  # needs the slot record (leanconn attaches it per request; conn.py holds it)
# bits 4-6: the module serving it (handler())
_OPS_M = const(0x00)  # mpota_ops
_UPDATE_M = const(0x10)  # mpota_update
_RARE_M = const(0x20)  # mpota_rareops
_TRUST_M = const(0x30)  # mpota_trustkeys
_LOGS_M = const(0x40)  # mpota_logs

_OPS = ("hello", "auth", "ping", "status", "confirm", "reset", "begin", "commit", "abort",
       "rollback", "read", "erase", "trust", "logs", "sectors")
_FLAGS = bytes((
    _FULL | _LEAN | _OPEN | _RECORD,  # hello (the record for an authenticated peer: max_image)
    _FULL | _LEAN | _OPEN,  # auth
    _FULL | _LEAN | _OPEN,  # ping
    _FULL | _LEAN | _OPEN | _RECORD,  # status
    _FULL | _LEAN | _RECORD,  # confirm
    _FULL | _LEAN,  # reset
    _FULL | _LEAN | _RECORD | _UPDATE_M,  # begin (lean: answers restarting)
    _FULL | _UPDATE_M,  # commit
    _FULL | _UPDATE_M,  # abort
    _FULL | _RARE_M,  # rollback
    _FULL | _RARE_M,  # read
    _FULL | _RARE_M,  # erase
    _FULL | _TRUST_M,  # trust
    _FULL | _LEAN | _LOGS_M,  # logs
    _FULL | _UPDATE_M,  # sectors (what the target slot holds, for begin "held")
))


def route(dev, c, op, lean):
    """The module whose op_<op>(dev, c, req) serves op on connection c, by a
    real import (one the import graph test sees); None: lean connection c
    (`lean`) does not serve it (it hands over). ProtoError for an op the
    peer may not use; nothing is loaded on a stranger's behalf but the
    handlers of _OPEN ops. Each handler is released by its lifetime
    (agent._LIFE)."""
    f = _FLAGS[_OPS.index(op)] if op in _OPS else 0
    if f & (_LEAN if lean else _FULL):
        if c.authed or f & _OPEN:
            if lean and f & _RECORD and c.authed:
                import mpota_slots as slots
                slots.attach(dev)  # released after the request (leanconn._done)
            f &= 0x70
            if f == _OPS_M:
                import mpota_ops as m
            elif f == _UPDATE_M:
                import mpota_update as m
            elif f == _RARE_M:
                import mpota_rareops as m
            elif f == _LOGS_M:
                import mpota_logs as m
            else:
                import mpota_trustkeys as m
            return m
    elif not lean:
        raise lineproto.ProtoError(lineproto.E_UNSUPPORTED, "unknown op \"%s\"" % op)
    if not c.authed:
        raise lineproto.ProtoError(lineproto.E_AUTH_REQUIRED, "authenticate first (hello, auth)")
    return None


def serve(dev, c, req, lean, done, ln):
    """Serve request `req` of connection c (None: parse line `ln` first):
    route() it, run the handler and queue the reply or the error on c;
    `done(dev)` then releases what the request loaded. -> None, or the
    parsed request, with nothing queued, when c (a lean connection) does not
    serve it: the caller hands it over, already read and verified (conn.adopt)."""
    a = sys.modules.get("mpota_appfs")
    if a is not None:
        a.rest()  # (the app's open sector file: its 1,152 bytes are the hole this request's file fits)
    a = None
    rid = None
    m = None
    try:
        if req is None:
            req = lineproto.parse_request(ln)
        rid = req.get("id")
        op = req["op"]
        m = route(dev, c, op, lean)
        if m is None:
            return req
        r = getattr(m, "op_" + op)(dev, c, req)
        m = None
        c.reply(rid, r)
    except lineproto.ProtoError as e:
        c.out(lineproto.error_line(rid, e.code, e.message))
    except MemoryError:
        m = None
        gc.collect()
        try:
            if not (lean and c.authed and dev.sl is not None and req is not None and req.get("op") == "begin"):
                raise MemoryError
            # beside the app there was no heap to check the image: update mode
            # checks it (the slot record, attached, says whether one may come)
            import mpota_slots as slots
            slots.restart_for_update(dev)
        except lineproto.ProtoError as e:
            c.out(lineproto.error_line(rid, e.code, e.message))
        except MemoryError:
            done(dev)
            gc.collect()
            lineproto.no_memory(c, rid)
    done(dev)
    return None
