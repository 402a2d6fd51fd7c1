# mqtt: the board's MQTT 3.1.1 client (docs/mqtt.md) -- resident, and only
# when "mqtt" is configured (agent._main starts it). It connects out to the
# broker with a last will ("offline", retained), subscribes to the board's
# and the fleet's command topics, publishes the board's state (retained) and
# events, keeps the connection alive (PINGREQ), and reconnects with a bounded, jittered
# backoff. Everything is an asyncio stream: nothing here blocks the app.
#
# Heap: one receive buffer of MAX_PACKET bytes made once; a packet longer
# than that is read through it and dropped, never allocated. A command
# (mpota_mqttcmd.py) and an install (mpota_pull.py) load their modules for
# their own time only (agent._LIFE).
import sys
import gc
import uos as os
import asyncio
from micropython import const

import mpota_hal as hal

MAX_PACKET = const(1280)  # a whole command (mpota_command.MAX_PAYLOAD) plus its topic and header
_BACKOFF_MIN = const(1000)
_BACKOFF_MAX = const(60000)
_STATE_EVERY = const(60000)  # the retained state is renewed this often (uptime), and at every change
_ACK_MS = const(10000)  # a QoS 1 publish not acknowledged by then: the connection is dropped
_REDO_MS = const(5000)  # after a command was dropped unverified: a signature check's token is back (mqttcmd)

CLIENT = None  # the running Client (mpota_mqttcmd, mpota_pull and mpota.py reach it here)


class Client:
    """One board's connection to its broker (cfg "mqtt": "HOST:PORT")."""
    max_data = 4096  # what a pull's begin (update.op_begin) answers, as a peer's: a pull sends no DATA frames

    def __init__(self, dev):
        cfg = dev.cfg
        h, _, p = cfg["mqtt"].rpartition(":")
        self.dev = dev
        self.host = h
        self.port = int(p)
        self.ka = cfg["mqtt_keepalive"]
        self.base = "mpota/%s/%s/" % (cfg["fleet"], dev.id)
        self.cmd = (self.base + "cmd").encode()
        self.all = ("mpota/%s/all/cmd" % cfg["fleet"]).encode()
        self.buf = bytearray(MAX_PACKET)  # every received packet lands here (readinto)
        self.mv = memoryview(self.buf)
        self.r = self.w = None
        self.pid = 0
        self.unacked = 0  # packet id of the QoS 1 publish awaiting its PUBACK, 0: none
        self.last = 0  # ... of the newest one, until its PUBACK (a reset waits for it: mqttcmd._reset)
        self.t_pub = 0
        self.t_rx = self.t_tx = 0
        self.dirty = True  # the state is republished at the next tick
        self.t_state = 0
        self.rep_seq = -1  # the last ignored command reported (mpota_mqttcmd.ignored)
        t = hal.ticks_ms()
        self.rep = [t, 6]  # token buckets (mpota_mqttcmd.token): [last refill, tokens] of the reports
        self.ver = [t, 3]  # ... and of the signature checks
        self.redo = 0  # when a command was dropped unverified (no token): reconnect later, get it again
        self.connects = 0
        self.up = False
        self.task = None  # the install's download (mpota_mqttcmd.install)

    # -- the wire --------------------------------------------------------------
    async def send(self, *parts):
        w = self.w
        if w is None:
            raise OSError("mqtt: not connected")
        for p in parts:  # no await between the parts: one packet is never interleaved with another
            w.write(p)
        self.t_tx = hal.ticks_ms()
        await w.drain()

    async def _fill(self, n):
        # exactly n bytes into buf[:n]
        got = 0
        mv = self.mv
        while got < n:
            k = await self.r.readinto(mv[got:n])
            if not k:
                raise OSError("mqtt: connection closed by the broker")
            got += k

    async def packet(self):
        """Read one packet: -> (first byte, length); its body is in buf[:length],
        or length -1 when it was longer than the buffer (read and dropped)."""
        await self._fill(1)
        b0 = self.buf[0]
        n = 0
        sh = 0
        while True:
            await self._fill(1)
            d = self.buf[0]
            n |= (d & 0x7F) << sh
            sh += 7
            if not d & 0x80:
                break
            if sh > 21:
                raise OSError("mqtt: bad remaining length")
        self.t_rx = hal.ticks_ms()
        if n > MAX_PACKET:
            while n:  # skipped through the buffer: a big packet is never allocated
                k = min(n, MAX_PACKET)
                await self._fill(k)
                n -= k
            return b0, -1
        await self._fill(n)
        return b0, n

    def close(self):
        w = self.w
        self.r = self.w = None
        self.up = False
        if w is not None:
            try:
                w.close()
            except OSError:
                pass

    # -- what arrives ----------------------------------------------------------
    async def _reader(self):
        try:
            await self._read()
        except Exception as e:  # the session's loop raises it (a task's lost error would be printed)
            self.rx_err = e

    async def _read(self):
        buf = self.buf
        while True:
            b0, n = await self.packet()
            t = b0 >> 4
            if t == 3 and n > 2:  # PUBLISH
                qos = (b0 >> 1) & 3
                tl = (buf[0] << 8) | buf[1]
                p = 2 + tl
                if qos:
                    pid = bytes(self.mv[p:p + 2])
                    p += 2
                    await self.send(b"\x40\x02", pid)  # PUBACK first: the seq, not the broker, stops a replay
                tp = bytes(self.mv[2:2 + tl])  # (a topic of a few dozen bytes)
                if tp == self.cmd or tp == self.all:
                    await self._command(self.mv[p:n], tp == self.all)
                tp = None
            elif t == 4 and n == 2:  # PUBACK
                i = (buf[0] << 8) | buf[1]
                if i == self.unacked:
                    self.unacked = 0
                if i == self.last:  # (the broker acknowledges in order: all before it are there too)
                    self.last = 0
            elif t == 9 and n >= 3:  # SUBACK
                for k in range(2, n):
                    if buf[k] & 0x80:
                        raise OSError("mqtt: the broker refused the subscription")
            # PINGRESP (13) and the rest: t_rx was updated

    async def _command(self, payload, on_all):
        try:
            import mpota_mqttcmd as mqttcmd  # released when no update session is open (agent._LIFE)
            await mqttcmd.handle(self.dev, self, payload, on_all)
        except MemoryError:
            mqttcmd = None
            self.dev.end_request()
            gc.collect()
            print("mpota: mqtt: out of memory handling a command (%d bytes free)" % gc.mem_free())
        finally:
            mqttcmd = None
            self.dev.end_request()

    async def _state(self):
        # the board's state, and whatever else the session's tick owes (mpota_mqttcmd.state)
        import mpota_mqttcmd as mqttcmd
        try:
            await mqttcmd.state(self.dev, self)
        finally:
            mqttcmd = None
            self.dev.end_request()

    # -- one connection, and the loop around them --------------------------------
    async def _session(self):
        import mpota_mqttcmd as mqttcmd  # the packets only a connect and a publish need (transient)
        await mqttcmd.connect(self)
        self.up = True
        self.connects += 1
        self.unacked = self.last = 0
        self.dirty = True  # the retained state, at every connect (a new broker may have none)
        self.rx_err = None
        print("mpota: mqtt connected to %s:%d as %s" % (self.host, self.port, self.base))
        t = asyncio.create_task(self._reader())
        try:
            await mqttcmd.resume(self.dev, self)  # an install cut by a drop or a reset; a trial's outcome
            mqttcmd = None
            self.dev.end_request()
            while not t.done():
                now = hal.ticks_ms()
                if hal.ticks_diff(now, self.t_rx) > self.ka * 1500:
                    raise OSError("mqtt: the broker is silent")
                if self.unacked and hal.ticks_diff(now, self.t_pub) > _ACK_MS:
                    raise OSError("mqtt: no PUBACK")
                if self.redo and hal.ticks_diff(now, self.redo) > _REDO_MS:
                    # commands went unverified in a flood: a new subscription gets the retained ones again
                    self.redo = 0
                    raise OSError("mqtt: reconnecting for the commands dropped in a flood")
                if self.dirty or hal.ticks_diff(now, self.t_state) >= _STATE_EVERY:
                    await self._state()
                elif hal.ticks_diff(now, self.t_tx) >= self.ka * 500:
                    await self.send(b"\xc0\x00")  # PINGREQ
                await asyncio.sleep_ms(250)
        finally:
            t.cancel()
            self.close()
        if self.rx_err is not None:
            raise self.rx_err


async def run(dev, ready=None):
    """The resident MQTT task: connect, serve, reconnect with a backoff
    doubling from 1 s to 60 s with +-25 % jitter (reset by a connection that
    got its CONNACK)."""
    global CLIENT
    cl = CLIENT = Client(dev)
    if ready is not None:
        await ready.wait()  # the link is up (agent.run)
    delay = _BACKOFF_MIN
    while True:
        n = cl.connects
        try:
            await cl._session()
        except asyncio.CancelledError:
            cl.close()
            raise
        except Exception as e:  # the broker went, refused us, or a bug: never the app's problem
            if not isinstance(e, (OSError, asyncio.TimeoutError)):
                sys.print_exception(e)
            print("mpota: mqtt: %s" % (e,))
        cl.close()
        dev.end_request()  # what the session loaded goes (unless an install holds it) for the wait
        if cl.connects != n:
            delay = _BACKOFF_MIN
        j = os.urandom(1)[0]  # jitter: the whole fleet does not come back in one instant
        await asyncio.sleep_ms(delay * 3 // 4 + delay * j // 510)
        delay = min(delay * 2, _BACKOFF_MAX)


class NoListener:
    """"listen": false (a board behind NAT, managed through the broker): the
    agent binds nothing; its run() waits on this as on a listener until the
    link goes (mpota_agent.run). Here, not in the agent: only a board with
    "mqtt" may have it (mpota_config)."""

    def __init__(self):
        self.ev = asyncio.Event()

    def close(self):
        self.ev.set()

    async def wait_closed(self):
        await self.ev.wait()


def poke():
    """The state changed (mpota.confirm, an install's milestones): republish it soon."""
    if CLIENT is not None:
        CLIENT.dirty = True
