# mqtt: the board's MQTT 3.1.1 client (docs/mqtt.md) -- resident, and only
# when "mqtt" is configured (agent._main starts it). It connects out to the
# broker with a last will ("offline", retained), subscribes to the board's
# and the fleet's command topics, publishes the board's state (retained) and
# events, answers PINGREQ keep-alive, and reconnects with a bounded, jittered
# backoff. Everything is an asyncio stream: nothing here blocks the app.
#
# Heap: one receive buffer of MAX_PACKET bytes made once; a packet longer
# than that is read through it and dropped, never allocated. A command
# (mpota_mqttcmd.py) and an install (mpota_pull.py) load their modules for
# their own time only (agent._LIFE).
import sys
import gc
import uos as os
import ujson as json
import asyncio
from micropython import const

import mpota_hal as hal

MAX_PACKET = const(1280)  # a whole command (mpota_command.MAX_PAYLOAD) plus its topic and header
_T_CONNECT = const(10000)  # ms for the TCP connect and for CONNACK
_BACKOFF_MIN = const(1000)
_BACKOFF_MAX = const(60000)
_STATE_EVERY = const(60000)  # the retained state is renewed this often (uptime), and at every change
_ACK_MS = const(10000)  # a QoS 1 publish not acknowledged by then: the connection is dropped
_IGNORE_MS = const(5000)  # ignored commands: a burst of _IGNORE_BURST reports, then one per _IGNORE_MS
_IGNORE_BURST = const(6)  # (and never twice for one seq)

CLIENT = None  # the running Client (mpota_mqttcmd, mpota_pull and mpota.py reach it here)


def _rlen(n):
    # the remaining-length varint of a fixed header
    b = bytearray()
    while True:
        d = n & 0x7F
        n >>= 7
        b.append(d | 0x80 if n else d)
        if not n:
            return b


def _str(s):
    # an MQTT UTF-8 string: u16 length then the bytes
    if isinstance(s, str):
        s = s.encode()
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


class Client:
    """One board's connection to its broker (cfg "mqtt": "HOST:PORT")."""

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
        self.t_pub = 0
        self.t_rx = self.t_tx = 0
        self.dirty = True  # the state is republished at the next tick
        self.t_state = 0
        self.rep_seq = -1  # the last ignored command reported
        self.rep_t = 0  # the report bucket: when it was last refilled, and its tokens
        self.rep_n = _IGNORE_BURST
        self.connects = 0
        self.up = False
        self.task = None  # the install's download (mpota_mqttcmd.install)

    # -- the wire --------------------------------------------------------------
    async def _send(self, *parts):
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

    async def _packet(self):
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

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    async def publish(self, topic, msg, retain=False, qos=0):
        """Publish `msg` (bytes or str) on `topic` (str or bytes); at QoS 1 the
        PUBACK is awaited by the connection's tick (a missing one drops it)."""
        if isinstance(topic, str):
            topic = topic.encode()
        if isinstance(msg, str):
            msg = msg.encode()
        t = _str(topic)
        pid = b""
        if qos:
            i = self._next_pid()
            pid = bytes((i >> 8, i & 0xFF))
            if not self.unacked:
                self.unacked = i
                self.t_pub = hal.ticks_ms()
        hdr = bytes((0x30 | (qos << 1) | (1 if retain else 0),)) + _rlen(len(t) + len(pid) + len(msg))
        await self._send(hdr, t, pid, msg)

    async def _connect(self):
        dev = self.dev
        will = json.dumps({"id": dev.id, "online": False})
        vh = b"\x00\x04MQTT\x04" + bytes((0x02 | 0x04 | 0x08 | 0x20, self.ka >> 8, self.ka & 0xFF))
        # clean session; will: QoS 1, retained
        body = vh + _str("mpota-" + dev.id) + _str(self.base + "state") + _str(will)
        self.r, self.w = await asyncio.wait_for_ms(asyncio.open_connection(self.host, self.port), _T_CONNECT)
        await self._send(b"\x10" + _rlen(len(body)), body)
        b0, n = await asyncio.wait_for_ms(self._packet(), _T_CONNECT)
        if b0 != 0x20 or n != 2:
            raise OSError("mqtt: no CONNACK")
        if self.buf[1]:
            raise OSError("mqtt: the broker refused the connection (code %d)" % self.buf[1])
        i = self._next_pid()
        sub = bytes((i >> 8, i & 0xFF)) + _str(self.cmd) + b"\x01" + _str(self.all) + b"\x01"
        await self._send(b"\x82" + _rlen(len(sub)), sub)

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
            b0, n = await self._packet()
            t = b0 >> 4
            if t == 3 and n > 2:  # PUBLISH
                qos = (b0 >> 1) & 3
                tl = (buf[0] << 8) | buf[1]
                p = 2 + tl
                if qos:
                    pid = bytes(self.mv[p:p + 2])
                    p += 2
                    await self._send(b"\x40\x02", pid)  # PUBACK first: the seq, not the broker, stops a replay
                tp = bytes(self.mv[2:2 + tl])  # (a topic of a few dozen bytes)
                if tp == self.cmd or tp == self.all:
                    await self._command(self.mv[p:n], tp == self.all)
                tp = None
            elif t == 4 and n == 2:  # PUBACK
                if ((buf[0] << 8) | buf[1]) == self.unacked:
                    self.unacked = 0
            elif t == 9 and n >= 3:  # SUBACK
                for k in range(2, n):
                    if buf[k] & 0x80:
                        raise OSError("mqtt: the broker refused the subscription")
            # PINGRESP (13) and the rest: t_rx was updated

    async def _command(self, payload, on_all):
        import mpota_mqttcmd as mqttcmd  # released when no update session is open (agent._LIFE)
        try:
            await mqttcmd.handle(self.dev, self, payload, on_all)
        except MemoryError:
            gc.collect()
            await self.event(0, "error", error="out of memory handling a command")
        finally:
            mqttcmd = None
            self.dev.end_request()

    # -- what the board says ---------------------------------------------------
    async def event(self, seq, name, **kw):
        """Publish one event (docs/mqtt.md) on .../events; False when not connected."""
        if not self.up:
            return False
        d = {"seq": seq, "event": name}
        d.update(kw)
        await self.publish(self.base + "events", json.dumps(d), False, 1)
        return True

    async def ignored(self, seq, reason, message):
        """Report a command the board did not act on: never twice for one seq,
        and from a bucket of _IGNORE_BURST reports refilled one per _IGNORE_MS
        (a flood of forged commands cannot make the board talk more)."""
        now = hal.ticks_ms()
        k = hal.ticks_diff(now, self.rep_t) // _IGNORE_MS
        if k:
            self.rep_n = min(_IGNORE_BURST, self.rep_n + k)
            self.rep_t = now
        if seq == self.rep_seq or not self.rep_n:
            return
        print("mpota: mqtt: command %d ignored (%s): %s" % (seq, reason, message))
        self.rep_n -= 1
        self.rep_seq = seq
        await self.event(seq, "rejected", reason=reason, message=message)

    async def state(self):
        """Publish the board's state, retained: the status op's fields (ops.status),
        its id, the last command acted on, online."""
        dev = self.dev
        import mpota_slots as slots
        import mpota_ops as ops
        import mpota_mqttcmd as mqttcmd
        slots.attach(dev)
        try:
            rec = mqttcmd.load()
            if rec.get("phase") == "trial":
                await mqttcmd.outcome(dev, self, rec)  # the app's own confirm ended the trial?
            st = ops.status(dev)
            st["id"] = dev.id
            st["online"] = True
            st["cmd_seq"] = rec["seq"]
            st["cmd_result"] = rec.get("result")
            msg = json.dumps(st)
        finally:
            st = rec = ops = mqttcmd = slots = None
            if dev.ag is not None:
                dev.ag.settle(False)  # the record and the modules go again once the device is quiet
        self.dirty = False
        self.t_state = hal.ticks_ms()
        await self.publish(self.base + "state", msg, True, 1)

    # -- one connection, and the loop around them --------------------------------
    async def _session(self):
        await self._connect()
        self.up = True
        self.connects += 1
        self.unacked = 0
        self.dirty = True  # the retained state, at every connect (a new broker may have none)
        self.rx_err = None
        print("mpota: mqtt connected to %s:%d as %s" % (self.host, self.port, self.base))
        t = asyncio.create_task(self._reader())
        try:
            import mpota_mqttcmd as mqttcmd
            await mqttcmd.resume(self.dev, self)  # an install cut by a drop or a reset; a trial's outcome
            mqttcmd = None
            self.dev.end_request()
            while not t.done():
                now = hal.ticks_ms()
                if hal.ticks_diff(now, self.t_rx) > self.ka * 1500:
                    raise OSError("mqtt: the broker is silent")
                if self.unacked and hal.ticks_diff(now, self.t_pub) > _ACK_MS:
                    raise OSError("mqtt: no PUBACK")
                if self.dirty or hal.ticks_diff(now, self.t_state) >= _STATE_EVERY:
                    await self.state()
                elif hal.ticks_diff(now, self.t_tx) >= self.ka * 500:
                    await self._send(b"\xc0\x00")  # PINGREQ
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
        if cl.connects != n:
            delay = _BACKOFF_MIN
        j = os.urandom(1)[0]  # jitter: the whole fleet does not come back in one instant
        await asyncio.sleep_ms(delay * 3 // 4 + delay * j // 510)
        delay = min(delay * 2, _BACKOFF_MAX)


def poke():
    """The state changed (mpota.confirm, an install's milestones): republish it soon."""
    if CLIENT is not None:
        CLIENT.dirty = True
