# conn: one TCP connection, served (agent.Agent.serve imports this module
# when a peer connects; agent.settle() releases it when the last one goes).
#
# Per connection one StreamDecoder (its buffer is the only receive buffer),
# `readinto` straight into decoder.space(), every read under wait_for so a
# silent peer is dropped. Binary frames and JSON lines share the connection
# (service.dispatch tells them apart).
#
# Connection policy: a peer that has not authenticated gets a small buffer,
# a few seconds in all to authenticate (bytes do not extend that) and a small
# quota of its own (max_unauth); when that quota is full, a newcomer pushes out
# the oldest stranger holding a challenge, else the oldest silent one
# (connpolicy.admit), so neither hello floods nor idle or dripping sockets
# keep an operator out. Authenticated connections count against max_conn.
import mpota_hal as hal
import mpota_connpolicy as connpolicy
import mpota_dispatch as dispatch
import mpota_lineproto as lineproto
import mpota_proto as proto
import mpota_framing as framing
import mpota_slots as slots
import mpota_service as service

SMALL_DATA = 1024  # DATA bytes a frame carries when 4 KB in one piece could not be had (Conn.grow)



class Conn(dispatch.Peer):
    # (sess: a session.Session once authenticated)
    def __init__(self, dev, r, w):
        self.r = r
        self.w = w
        if dev.auth_on:
            self.dec = framing.StreamDecoder(lineproto.MAX_LINE_PRE_AUTH, lineproto.MAX_LINE_PRE_AUTH)
        else:
            self.authed = True
            self.dec = framing.StreamDecoder(lineproto.MAX_FRAME, lineproto.MAX_LINE)
        self.t0 = hal.ticks_ms()
        self.ackb = None  # the data path's replies, made once authenticated
        self.nerrb = None
        self.task = None  # the task serving it

    def out(self, b):
        # A peer that is gone must not look like a handler's failure (which
        # would be answered with an internal error): note it, and the
        # connection loop closes after this batch.
        if not self.gone:
            try:
                if self.sess is None:
                    self.w.write(b)
                else:
                    self.sess.out(self.w, b)
            except OSError:
                self.gone = True
            except MemoryError:
                # out of heap while sealing or queueing: the message may be
                # half-written or its sequence number spent, so the stream
                # cannot go on; close it (the peer reconnects and resumes)
                self.gone = True

    def reply(self, rid, fields):
        # the line whole, sealed, in one write (no Nagle wait between pieces);
        # where the heap has no piece its size (beside an app), in pieces
        try:
            b = lineproto.reply_line(rid, fields)
            if self.sess is not None:
                b = self.sess.seal_line(b)  # (out of heap: no sequence number spent)
        except MemoryError:
            b = None
        if b is None:
            dispatch.stream_reply(self, rid, fields)
        elif not self.gone:
            try:
                self.w.write(b)
            except OSError:
                self.gone = True

    def grow(self):
        # an authenticated peer: full-size frames, with room for the session's
        # tag (16 bytes in a frame, 33 at the end of a line: linemac.py). Beside
        # an app that fragmented the heap, 4 KB in one piece may not exist with
        # tens of KB free: then DATA of SMALL_DATA bytes (limits and begin say
        # so, the host follows), slower but served (docs/memory.md)
        try:
            self.dec.grow(lineproto.MAX_FRAME + 16, lineproto.MAX_LINE + 33)
        except MemoryError:
            self.dec.grow(lineproto.MAX_FRAME - lineproto.MAX_DATA + SMALL_DATA + 16, lineproto.MAX_LINE + 33)
            self.max_data = SMALL_DATA

    def secure(self, dev, nonce, host_nonce_hex):
        # after a successful auth (ops.op_auth): the session seals every message
        self.grow()
        import mpota_session as session
        session.start(dev, self, nonce, host_nonce_hex)

    def ack(self, acked):
        if self.ackb is None:
            self.ackb = bytearray(framing.HEADER_SIZE + 5)  # ACK frame: acked u32
        proto.ack_into(self.ackb, acked)
        self.out(self.ackb)

    def nerror(self, op, code, value=0, ref=0):
        if self.nerrb is None:
            self.nerrb = bytearray(framing.HEADER_SIZE + 12)  # NERROR frame: 11-byte body
        proto.nerror_into(self.nerrb, op, code, value, ref)
        self.out(self.nerrb)


async def serve(ag, r, w):
    # (agent.Agent.serve closes the socket and handles what is raised here)
    c = Conn(ag.dev, r, w)
    if not await connpolicy.admit(ag, c):
        return
    await run(ag, c, False)


def adopt(ag, lc, pending):
    """The Conn that goes on with a lean connection (leanconn.py) which met a
    message it does not serve: the same socket, its authentication and
    session (its sequence numbers where the lean one left them), its place in
    ag.conns; `pending` holds the bytes it has not handled. Serve it with
    run(ag, c, True, req), `req` the request the lean connection read and
    verified but does not serve (None: the bytes start with the message)."""
    c = Conn(ag.dev, lc.r, lc.w)
    c.t0 = lc.t0
    c.task = lc.task
    c.nonce = lc.nonce
    if lc.authed and not c.authed:  # auth on: the peer authenticated on the lean connection
        c.grow()
        import mpota_session as session
        c.sess = session.adopt(lc.sess)
        c.authed = True
    n = len(pending)
    c.dec.space()[:n] = pending
    c.dec.advance(n)
    ag.conns[ag.conns.index(lc)] = c
    return c


async def run(ag, c, pending, req=None):
    """Serve admitted connection c until it closes; `pending`: its decoder
    already holds messages, after request `req` if any (adopt)."""
    dev = ag.dev
    try:
        slots.attach(dev)
        if pending:
            await _handle(dev, c, req)
            req = None
        if not c.gone:
            await _loop(ag, c)
    finally:
        if c in ag.conns:
            ag.conns.remove(c)
        service.drop(dev, c)


async def _handle(dev, c, req=None):
    # every complete message in c's decoder (after `req`: run): handled, answered, flushed
    service.dispatch(dev, c, req)
    if not c.gone:
        await c.w.drain()
        await dev.after_reply()
        s = dev.session
        if s is not None and s.owner is c and s.w.ahead:
            await s.w.copy_held(c, dev, s)  # sectors the device has already (upload.Writer)


async def _loop(ag, c):
    dev = ag.dev
    dec = c.dec
    while c in ag.conns:
        n = await connpolicy.receive(ag, c, dec.space())
        if not n:
            break
        dec.advance(n)
        await _handle(dev, c)
        if c.gone:
            break
