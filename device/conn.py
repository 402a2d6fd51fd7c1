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
# quota of its own (max_unauth); when that quota is full, the OLDEST such
# connection is closed to make room, so idle or dripping sockets can never
# keep an operator out. Authenticated connections count against max_conn.
import gc
import sys
import asyncio

import hal
import proto
import framing
import service
from proto import error_line, E_BUSY, E_TIMEOUT

_ACK_LEN = framing.HEADER_SIZE + 5  # ACK frame: acked u32
_NERR_LEN = framing.HEADER_SIZE + 12  # NERROR frame: 11-byte body


class Conn:
    def __init__(self, dev, r, w):
        self.r = r
        self.w = w
        self.authed = not dev.auth_on
        if self.authed:
            self.dec = framing.StreamDecoder(proto.MAX_FRAME, proto.MAX_LINE)
        else:
            self.dec = framing.StreamDecoder(proto.MAX_LINE_PRE_AUTH, proto.MAX_LINE_PRE_AUTH)
        self.nonce = None
        self.ack_due = False
        self.ack_val = 0
        self.t0 = hal.ticks_ms()
        self.ackb = None  # the data path's replies, made once authenticated
        self.nerrb = None
        self.task = None  # the task serving it
        self.gone = False  # a write failed: the peer reset or closed
        self.sess = None  # session.Session once authenticated: seals and opens every message

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

    def ack(self, acked):
        if self.ackb is None:
            self.ackb = bytearray(_ACK_LEN)
        proto.ack_into(self.ackb, acked)
        self.out(self.ackb)

    def nerror(self, op, code, value=0, ref=0):
        if self.nerrb is None:
            self.nerrb = bytearray(_NERR_LEN)
        proto.nerror_into(self.nerrb, op, code, value, ref)
        self.out(self.nerrb)


def _admit(ag, c):
    # -> None when c may stay, else why not
    cfg = ag.dev.cfg
    unauth = [x for x in ag.conns if not x.authed]
    if not c.authed and len(unauth) >= cfg["max_unauth"]:
        # The oldest stranger makes room. Its own task is cancelled, so it
        # leaves the poller and closes its socket itself: closing a socket
        # that another task still waits on would leave a stale poll entry
        # whose file descriptor the next connection may get.
        unauth[0].task.cancel()
        ag.conns.remove(unauth[0])
    if len(ag.conns) - len(unauth) >= cfg["max_conn"]:
        return "too many connections"
    ag.conns.append(c)
    return None


async def serve(ag, r, w):
    dev = ag.dev
    c = None
    try:
        c = Conn(dev, r, w)
        c.task = asyncio.current_task()
        why = _admit(ag, c)
        if why:
            c = None
            w.write(error_line(None, E_BUSY, why))
            await w.drain()
            return
        service.attach(dev)
        await _loop(ag, c)
    except OSError:
        pass  # reset by peer, broken pipe: just close
    except asyncio.CancelledError:
        pass  # evicted to make room (_admit): end quietly
    except MemoryError:
        gc.collect()  # the slot is freed below; the peer may retry
    except Exception as e:
        sys.print_exception(e)
    finally:
        if c is not None:
            if c in ag.conns:
                ag.conns.remove(c)
            service.drop(dev, c)
        try:
            w.close()
            await w.wait_closed()
        except Exception:
            pass


async def _loop(ag, c):
    dev = ag.dev
    r = c.r
    w = c.w
    dec = c.dec
    timeout = dev.cfg["timeout"] * 1000
    auth_ms = dev.cfg["auth_timeout"] * 1000
    while c in ag.conns:
        if c.authed:
            left = timeout
        else:
            left = auth_ms - hal.ticks_diff(hal.ticks_ms(), c.t0)
            if left <= 0:
                w.write(error_line(None, E_TIMEOUT, "not authenticated within %d s: closing" % (auth_ms // 1000)))
                await w.drain()
                break
        try:
            n = await asyncio.wait_for_ms(r.readinto(dec.space()), left)
        except asyncio.TimeoutError:
            if not c.authed:
                continue  # the auth deadline above closes it
            c.out(error_line(None, E_TIMEOUT, "no data for %d s: closing" % (timeout // 1000)))
            await w.drain()
            break
        if not n:
            break
        dec.advance(n)
        service.dispatch(dev, c)
        if c.gone:
            break
        await w.drain()
        await service.after_reply(dev)
