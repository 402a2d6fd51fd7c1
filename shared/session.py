# session: the per-message MACs of an authenticated connection
# (docs/protocol.md 2.6), one source for the device and the host.
#
# After a successful `auth`, every message in each direction carries a
# 16-byte tag: HMAC-SHA256 under that direction's session key, over an
# implicit sequence number (u32, counted per direction from 0) and the
# message. A frame carries the tag inside its body (length + 16, so the
# StreamDecoder parses it as any frame); a JSON line ends with " " and the
# tag in hex. Replayed, reordered, injected, reflected or relayed messages
# fail the tag: the receiver answers one error and closes.
#
# Heap: MicroPython's hashlib.sha256 has no copy() (rp2 v1.27 and the unix
# ports: update and digest only), so each tag hashes the 64-byte pad blocks
# afresh (2 of the ~66 compressions of a 4 KiB DATA frame). Per message that
# is two hash objects and two 32-byte digests, nothing sized by the message:
# pads, the sequence bytes and the reply buffer are made once per session.
import hashlib
import struct
import binascii

from checksums import sum8
from framing import SYNC, HEADER_SIZE, K_FRAME, K_LINE, header_checksum
from hmac_sha256 import derive
from proto import error_line, E_AUTH_FAILED

TAG = 16  # bytes of HMAC-SHA256 kept
LINE_TAG = 1 + 2 * TAG  # " " + hex digits at the end of a line
_SMALL = 160  # device replies up to this size are sealed in one buffer, one write


def keys(key, device_id, dev_nonce, host_nonce):
    """(host -> device key, device -> host key), each 32 bytes."""
    return (derive(b"mpota-session-v1", b"host", key, device_id, dev_nonce, host_nonce),
            derive(b"mpota-session-v1", b"device", key, device_id, dev_nonce, host_nonce))


def _pads(k):
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(32):
        ipad[i] = k[i] ^ 0x36
        opad[i] = k[i] ^ 0x5C
    for i in range(32, 64):
        ipad[i] = 0x36
        opad[i] = 0x5C
    return (ipad, opad)


class Session:
    """Both directions of one connection. `device`: True on the device
    (it seals with the device key, opens with the host key)."""

    def __init__(self, key, device_id, dev_nonce, host_nonce, device):
        kh, kd = keys(key, device_id, dev_nonce, host_nonce)
        self.tx = _pads(kd if device else kh)
        self.rx = _pads(kh if device else kd)
        self.tseq = 0
        self.rseq = 0
        self.sb = bytearray(4)  # the sequence number, big-endian
        self.hb = None  # sealed header and tag + checksum for large frames (device)
        self.ob = None  # small replies are sealed here (device)

    def _mac(self, pads, seq, a, b=None):
        # HMAC-SHA256(k, seq || a || b): the hashlib objects and digests are
        # the only allocations (see the heading)
        struct.pack_into(">I", self.sb, 0, seq)
        h = hashlib.sha256(pads[0])
        h.update(self.sb)
        h.update(a)
        if b is not None:
            h.update(b)
        d = h.digest()
        h = hashlib.sha256(pads[1])
        h.update(d)
        return h.digest()

    # -- receiving -----------------------------------------------------------
    def open(self, kind, v):
        """A decoder event's value without its tag, or None when the tag is
        wrong or the event is not a message (a decoder error: the stream is
        no longer one the peer sealed). Frames are restored in place to the
        plain frame (length, header checksum and final checksum fixed), so
        handlers see exactly what an unauthenticated connection would."""
        n = len(v)
        if kind == K_FRAME:
            t = n - 1 - TAG
            if t < HEADER_SIZE:
                return None
            d = self._mac(self.rx, self.rseq, v[:t])
            r = 0
            for i in range(TAG):
                r |= d[i] ^ v[t + i]
            if r:
                return None
            self.rseq += 1
            s = (v[n - 1] - v[2] - v[3] - v[4] - sum8(v[t:n - 1])) & 0xFF  # 0xE7 + op + body
            ln = t + 1 - HEADER_SIZE
            v[2] = ln >> 8
            v[3] = ln & 0xFF
            v[4] = header_checksum(v[1], ln)
            v[t] = (s + v[2] + v[3] + v[4]) & 0xFF
            return v[:t + 1]
        if kind == K_LINE:
            t = n - LINE_TAG
            if t < 1 or v[t] != 0x20:
                return None
            try:
                got = binascii.unhexlify(v[t + 1:])
            except ValueError:
                return None
            d = self._mac(self.rx, self.rseq, v[:t])
            r = 0
            for i in range(TAG):
                r |= d[i] ^ got[i]
            if r:
                return None
            self.rseq += 1
            return v[:t]
        return None

    def fail(self, c):
        """A message failed: one error (sealed: it is still this session's
        reply), then the connection closes (c.gone ends agent.Agent._loop)."""
        c.out(error_line(None, E_AUTH_FAILED, "message not authenticated by the session: closing"))
        c.gone = True

    # -- sending -------------------------------------------------------------
    def seal(self, b):
        """The sealed copy of one message (a frame or a line ending in "\\n")."""
        n = len(b)
        if b[0] == SYNC:
            out = bytearray(n + TAG)
            self._seal_into(out, b, n)
            return out
        d = self._mac(self.tx, self.tseq, b[:n - 1])
        self.tseq += 1
        return bytes(b[:n - 1]) + b" " + binascii.hexlify(d[:TAG]) + b"\n"

    def _seal_into(self, out, b, n):
        # out[:n + TAG] = b sealed; b is a complete plain frame of n bytes
        out[:n - 1] = b[:n - 1]
        self._header(out, b, n)
        d = self._mac(self.tx, self.tseq, memoryview(out)[:n - 1])
        self.tseq += 1
        for i in range(TAG):
            out[n - 1 + i] = d[i]
        out[n - 1 + TAG] = self._check(out, b, n, d)

    def _header(self, hb, b, n):
        ln = n - HEADER_SIZE + TAG
        hb[0] = SYNC
        hb[1] = b[1]
        hb[2] = ln >> 8
        hb[3] = ln & 0xFF
        hb[4] = header_checksum(b[1], ln)

    def _check(self, hb, b, n, d):
        # the sealed frame's final checksum from the plain one's: no second
        # pass over the body
        s = b[n - 1] - b[2] - b[3] - b[4] + hb[2] + hb[3] + hb[4]
        for i in range(TAG):
            s += d[i]
        return s & 0xFF

    def out(self, w, b):
        """Device: write message `b` sealed to stream writer `w`. Small
        frames are sealed in a buffer of the session's (one write: no Nagle
        wait between pieces); large ones (READ_DATA, ReadAddressResponse) go
        as header, the body as it lies and tag, so nothing is copied."""
        n = len(b)
        if b[0] != SYNC:
            return w.write(self.seal(b))
        if n + TAG <= _SMALL:
            if self.ob is None:
                self.ob = bytearray(_SMALL)
            self._seal_into(self.ob, b, n)
            return w.write(memoryview(self.ob)[:n + TAG])
        if self.hb is None:
            self.hb = bytearray(HEADER_SIZE + TAG + 1)
        hb = self.hb
        self._header(hb, b, n)
        body = memoryview(b)[HEADER_SIZE:n - 1]
        d = self._mac(self.tx, self.tseq, memoryview(hb)[:HEADER_SIZE], body)
        self.tseq += 1
        chk = self._check(hb, b, n, d)
        w.write(memoryview(hb)[:HEADER_SIZE])
        w.write(body)
        for i in range(TAG):
            hb[HEADER_SIZE + i] = d[i]
        hb[HEADER_SIZE + TAG] = chk
        w.write(memoryview(hb)[HEADER_SIZE:])


def start(dev, c, dev_nonce, host_nonce_hex):
    """Device, after a successful auth (ops.op_auth): seal and open every
    later message of connection c, the auth reply first. (Its decoder has
    grown by TAG and LINE_TAG already: ops.op_auth.)"""
    c.sess = Session(dev.key, dev.id, dev_nonce, binascii.unhexlify(host_nonce_hex), True)
