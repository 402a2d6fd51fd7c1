"""Client upload logic that the real simulator cannot provoke.

TCP never corrupts a chunk or reorders frames, so the NERROR rewind rules of
protocol.md §1.2 (re-send from the watermark, ignore NERRORs of frames sent
before the rewind) and the window discipline (ACKs withheld for several
frames, never a round trip per chunk) are exercised against a small
in-process fake that implements the DATA table of §1.2 and injects faults.
Everything else is tested against tools/sim.py (test_cli_e2e.py).
"""
import asyncio
import hashlib
import json

import pytest

from mpota.codec import mpota_hostframes as hostframes
from mpota.codec import mpota_lineproto as lineproto
from mpota.codec import mpota_proto as proto
from mpota.client import Client
from mpota.push import push_image
from mpota.errors import DeviceError, NoSpace
from mpota.codec.mpota_framing import K_FRAME, K_LINE

pytestmark = pytest.mark.timeout(60)


class FakeDevice:
    """Just enough of the agent: hello (auth none), begin, DATA/ACK/NERROR, commit."""

    def __init__(self, *, window=16384, max_data=4096, corrupt=(), ack_every=1, slot_size=1 << 20,
                 drop_conn_at=None, host="127.0.0.1"):
        self.window = window
        self.max_data = max_data
        self.corrupt = set(corrupt)   # offsets whose first DATA arrives "corrupted"
        self.ack_every = ack_every     # ACK only every N accepted frames (cumulative ACKs)
        self.slot_size = slot_size
        self.drop_conn_at = drop_conn_at  # close the first connection once acked passes this
        self.store = bytearray()
        self.size = 0
        self.sha = None
        self.acked = 0
        self.committed = False
        self.max_unacked = 0           # largest (bytes received past the last ACK sent)
        self.frames = 0
        self.nerrors = 0
        self.server = None
        self.port = 0
        self.host = host

    async def start(self):
        self.server = await asyncio.start_server(self._conn, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, r, w):
        dec = hostframes.Decoder(max_frame=lineproto.MAX_FRAME)
        last_ack_sent = self.acked
        pending_acks = 0
        received_end = self.acked
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                for kind, v in dec.decode(data):
                    if kind == K_LINE:
                        req = json.loads(bytes(v))
                        w.write(self._json(req))
                    elif kind == K_FRAME:
                        frame = bytes(v)
                        off, crc, body = hostframes.parse_data(frame)
                        self.frames += 1
                        received_end = max(received_end, off + len(body))
                        self.max_unacked = max(self.max_unacked, received_end - last_ack_sent)
                        if off in self.corrupt:
                            self.corrupt.discard(off)
                            self.nerrors += 1
                            w.write(hostframes.encode_nerror(proto.OP_DATA, lineproto.E_CRC_MISMATCH, self.acked, off))
                            received_end = self.acked
                            continue
                        if off > self.acked:
                            self.nerrors += 1
                            w.write(hostframes.encode_nerror(proto.OP_DATA, lineproto.E_OUT_OF_ORDER, self.acked, off))
                            continue
                        end = off + len(body)
                        if end > self.acked:
                            self.store[self.acked:end] = bytes(body[self.acked - off:])
                            self.acked = end
                        pending_acks += 1
                        if pending_acks >= self.ack_every or self.acked == self.size:
                            pending_acks = 0
                            last_ack_sent = self.acked
                            w.write(hostframes.encode_ack(self.acked))
                        if self.drop_conn_at is not None and self.acked >= self.drop_conn_at:
                            self.drop_conn_at = None
                            await w.drain()
                            w.transport.abort()
                            return
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    def _json(self, req):
        op, rid = req["op"], req.get("id")
        if op == "hello":
            return lineproto.reply_line(rid, {"proto": 1, "device": "fake", "auth": "none",
                                           "max_data": self.max_data, "window": self.window,
                                           "nonce": "00" * 16})
        if op == "begin":
            if req["size"] > self.slot_size:
                return lineproto.error_line(rid, lineproto.E_NO_SPACE, "image larger than a slot")
            if (req["size"], req["sha256"]) != (self.size, self.sha):
                self.size, self.sha, self.acked, self.store = req["size"], req["sha256"], 0, bytearray()
            return lineproto.reply_line(rid, {"slot": "b", "offset": self.acked, "max_data": self.max_data,
                                           "window": self.window})
        if op == "commit":
            ok = self.acked == self.size and hashlib.sha256(self.store).hexdigest() == self.sha
            if not ok:
                return lineproto.error_line(rid, lineproto.E_VERIFY_FAILED, "sha256 differs")
            self.committed = True
            return lineproto.reply_line(rid, {"slot": "b", "sha256": self.sha, "state": "pending"})
        return lineproto.error_line(rid, lineproto.E_UNSUPPORTED, "unknown op")


def _image(n):
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(n))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_pipelined_upload_with_withheld_acks_never_exceeds_window():
    # The fake ACKs only every 3rd frame: a client that waited for an ACK per
    # chunk would stall here (and time out).
    async def go():
        dev = await FakeDevice(window=8192, max_data=1024, ack_every=3).start()
        try:
            img = _image(50_000)
            res = await push_image("127.0.0.1", dev.port, img, timeout=5)
            assert dev.committed and bytes(dev.store) == img
            assert dev.max_unacked <= 8192
            assert res.bytes_resent == 0 and res.reconnects == 0
        finally:
            await dev.stop()
    run(go())


def test_crc_nerror_rewinds_once_and_ignores_stale_nerrors():
    # A corrupted chunk at 4096 makes the frames already in flight behind it
    # answer out_of_order; those are stale and must not cause more rewinds.
    async def go():
        dev = await FakeDevice(window=16384, max_data=1024, corrupt={4096}).start()
        try:
            img = _image(40_000)
            c = Client("127.0.0.1", dev.port, timeout=5)
            await c.connect()
            r = await c.begin(len(img), hashlib.sha256(img).hexdigest())
            await c.upload(img, r["offset"], begin_reply=r)
            await c.commit()
            await c.close()
            assert bytes(dev.store) == img
            assert c.rewinds == 1
            # Only the frames in flight behind the gap were sent twice.
            assert 0 < c.bytes_sent - len(img) <= 16384
        finally:
            await dev.stop()
    run(go())


def test_resume_after_drop_resends_at_most_a_window():
    async def go():
        dev = await FakeDevice(window=8192, max_data=2048, drop_conn_at=20_000).start()
        try:
            img = _image(60_000)
            events = []
            res = await push_image("127.0.0.1", dev.port, img, timeout=5,
                                   on_event=lambda n, **f: events.append(n))
            assert dev.committed and bytes(dev.store) == img
            assert res.reconnects == 1 and "resume" in events
            assert res.bytes_resent <= 8192
        finally:
            await dev.stop()
    run(go())


def test_device_error_maps_to_exception_class():
    async def go():
        dev = await FakeDevice(slot_size=1000).start()
        try:
            with pytest.raises(NoSpace) as ei:
                await push_image("127.0.0.1", dev.port, _image(5000), timeout=5)
            assert ei.value.code == "no_space" and ei.value.exit_code == 5
            assert isinstance(ei.value, DeviceError)
        finally:
            await dev.stop()
    run(go())


def _has_ipv6_loopback():
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_target_through_the_cli_resolver():
    from mpota import targets

    async def go():
        dev = await FakeDevice(host="::1").start()
        try:
            t = targets.resolve("[::1]:%d" % dev.port, env={})
            async with Client(t.host, t.port, timeout=5) as c:
                assert c.peer[0] == "::1" and c.info["device"] == "fake"
        finally:
            await dev.stop()
    run(go())
