"""A small blocking client of the device agent (raw sockets and the shared
codec), an app-image builder and reset_and_wait: shared by the end-to-end
tests and the torture harness (tools/torture.py and its parts).

Why a second client beside host/client.py: tests must send what the real
client never sends (unsealed, replayed, swapped or truncated messages through
send_raw, chosen request ids, an upload stopped at any byte) and read each
reply in order with one blocking call, which the asyncio client, built to
recover from such faults and hide them, cannot give. It does not implement the
protocol twice: frames, lines, the session seal and the auth MACs all come
from the codec (mpota.codec) that host/client.py uses.

    c = DevConn(sim.tcp_port, key)      # hello + auth when a key is given
    c.push(app_image(tmp, "v2", SRC, "2.0.0+0"), "2.0.0+0")
"""
import collections
import hashlib
import json
import os
import socket
import time

from mpota.codec import mpota_hostframes as hostframes
from mpota.codec import mpota_lineproto as lineproto
from mpota.codec import mpota_proto as proto
from mpota.codec.mpota_framing import K_ERROR, K_FRAME, K_LINE
from mpota.codec.mpota_hmac_sha256 import compare_digest, device_mac, host_mac
from mpota.codec.mpota_session import Session


# -- a small blocking client ----------------------------------------------------

class DevConn:
    def __init__(self, port, key=None, timeout=20):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.dec = hostframes.Decoder(lineproto.MAX_FRAME + 64, 8192)
        self.ev = collections.deque()
        self.sess = None  # after auth: seals what send() sends, opens what event() returns
        if key is not None:
            self.auth(key)

    def close(self):
        self.s.close()

    def send(self, b):
        """Send one message (sealed once authenticated); send_raw sends bytes as they are."""
        self.s.sendall(self.sess.seal(b) if self.sess is not None else b)

    def send_raw(self, b):
        self.s.sendall(b)

    def event(self):
        while not self.ev:
            data = self.s.recv(65536)
            if not data:
                raise EOFError("device closed the connection")
            for kind, v in self.dec.decode(data):
                if self.sess is not None and self.sess.rseq == 0 and kind == K_LINE and bytes(v[-1:]) == b"}":
                    self.sess = None  # an unsealed answer to auth: it failed (as client.py reads it)
                elif self.sess is not None:
                    v = self.sess.open(kind, v)
                    if v is None:
                        raise AssertionError("a message from the device failed the session MAC")
                self.ev.append((kind, v if kind == K_ERROR else bytes(v)))
        return self.ev.popleft()

    def line(self):
        kind, v = self.event()
        assert kind == K_LINE, (kind, v)
        return json.loads(v)

    def frame(self):
        kind, v = self.event()
        assert kind == K_FRAME, (kind, v)
        return v

    def req(self, op, **fields):
        self.send(hostframes.request_line(op, fields.pop("id", None), fields))
        return self.line()

    def ok(self, op, **fields):
        r = self.req(op, **fields)
        assert r["ok"] is True, r
        return r

    def err(self, op, code, **fields):
        r = self.req(op, **fields)
        assert r["ok"] is False and r["error"]["code"] == code, r
        return r

    def auth(self, key):
        h = self.ok("hello")
        hn = os.urandom(16)
        dn = bytes.fromhex(h["nonce"])
        self.send(hostframes.request_line("auth", None, {"nonce": hn.hex(),
                                                          "mac": host_mac(key, h["device"], dn, hn).hex()}))
        self.sess = Session(key, h["device"], dn, hn, False)  # the reply is the first sealed message
        r = self.line()
        assert r["ok"] is True, r  # (e.g. a retryable no_memory: reset_and_wait retries it)
        assert compare_digest(bytes.fromhex(r["mac"]), device_mac(key, h["device"], dn, hn))

    def upload(self, data, start=0, chunk=4096, window=16384, stop_at=None):
        """Pipelined DATA frames (window bytes in flight); returns the watermark."""
        end = len(data) if stop_at is None else stop_at
        sent = acked = start
        while acked < end:
            while sent < end and sent - acked < window:
                c = data[sent:min(sent + chunk, end)]
                self.send(hostframes.encode_data(sent, c))
                sent += len(c)
            f = self.frame()
            if f[1] == proto.OP_ACK:
                acked = max(acked, hostframes.parse_ack(f))
            else:
                raise AssertionError("NERROR %r" % (hostframes.parse_nerror(f),))
        return acked

    def push(self, image, version=None, **begin):
        sha = hashlib.sha256(image).hexdigest()
        b = self.ok("begin", size=len(image), sha256=sha, version=version, **begin)
        self.upload(image, b["offset"], chunk=b["max_data"])  # (less than 4096 in a fragmented heap)
        return self.ok("commit")


def app_image(tmp_path, name, main_src, version, pad=0, rng=None, key=None):
    """An MCUboot image of a folder holding main.py (+ `pad` bytes of filler,
    from `rng` (a random.Random) when given, so that a seed replays it),
    signed with `key` (a key file) when given."""
    from mpota.images import build_app_image
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "main.py").write_text(main_src)
    if pad:
        rnd = (rng.randbytes(pad // 2) if rng else os.urandom(pad // 2)).hex()
        (d / "filler.py").write_text("# " + "\n# ".join(rnd[i:i + 76] for i in range(0, len(rnd), 76)) + "\n")
    return build_app_image(d, version=version, key=str(key) if key else None)


def reset_and_wait(sim, conn, key=None, tries=5):
    """Reset, wait for the ready line, connect again; a retryable answer to
    the auth (no_memory while the app settles in a small heap) is retried,
    as the host tool does."""
    mark = sim.mark()
    conn.ok("reset", delay_ms=10)
    conn.close()
    sim.wait_for_line("mpota: ready", timeout=60, since=mark)
    for n in range(tries):
        try:
            return DevConn(sim.tcp_port, key)
        except AssertionError as e:
            if "'retry': True" not in str(e) or n + 1 == tries:
                raise
            time.sleep(0.5)
