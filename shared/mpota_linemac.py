# linemac: the per-message MACs of an authenticated session (docs/protocol.md
# 2.6) -- the session keys, one tag, and the JSON-line half of a session.
# session.py adds binary frames on top; the lean connection (leanconn.py),
# which speaks only JSON lines, uses this module alone.
#
# After a successful `auth`, every message in each direction carries a
# 16-byte tag: HMAC-SHA256 under that direction's session key, over an
# implicit sequence number (u32, counted per direction from 0) and the
# message. A JSON line ends with " " and the tag in hex.
#
# Heap: MicroPython's hashlib.sha256 has no copy() (rp2 v1.27 and the unix
# ports: update and digest only), so each tag hashes the 64-byte pad blocks
# afresh. Per message that is two hash objects and two 32-byte digests,
# nothing sized by the message: the pads and the sequence bytes are made
# once per session.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import uhashlib as hashlib
    import ustruct as struct
    import ubinascii as binascii
except ImportError:  # CPython
    import hashlib
    import struct
    import binascii

if "." in __name__:  # CPython: the package mpota.codec (the host never puts this folder on sys.path)
    from .mpota_hmac_sha256 import derive
    from .mpota_lineproto import error_line, E_AUTH_FAILED
else:  # flat: on the board, and where shared/ is on sys.path (tests, tools)
    from mpota_hmac_sha256 import derive
    from mpota_lineproto import error_line, E_AUTH_FAILED

TAG = 16  # bytes of HMAC-SHA256 kept
LINE_TAG = 1 + 2 * TAG  # " " + hex digits at the end of a line


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


class Lines:
    """Both directions of one session, JSON lines only. `device`: True on
    the device (it seals with the device key, opens with the host key)."""

    def __init__(self, key, device_id, dev_nonce, host_nonce, device):
        kh, kd = keys(key, device_id, dev_nonce, host_nonce)
        self.tx = _pads(kd if device else kh)
        self.rx = _pads(kh if device else kd)
        self.tseq = 0
        self.rseq = 0
        self.sb = bytearray(4)  # the sequence number, big-endian

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

    def open_line(self, v):
        """The line `v` (without its "\\n") less its tag, or None when the
        tag is missing or wrong."""
        t = len(v) - LINE_TAG
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

    def fail(self, c):
        """A message failed: one error (sealed: it is still this session's
        reply), then connection c closes (c.gone ends its loop)."""
        c.out(error_line(None, E_AUTH_FAILED, "message not authenticated by the session: closing"))
        c.gone = True

    def seal_line(self, b):
        """The sealed copy of one line ending in "\\n" (a bytearray: one
        allocation of the line's size, where slices and concatenations made
        four; beside an app that holds most of the heap a status line could
        not be sealed)."""
        n = len(b) - 1
        v = memoryview(b)[:n]
        out = bytearray(n + LINE_TAG + 1)  # (first: out of heap here, no sequence number is spent)
        h = self.seal_begin()
        h.update(v)
        out[:n] = v
        out[n:] = self.seal_end(h)
        return out

    def seal_begin(self):
        """A line sealed as it is written, in pieces (leanconn.Lean.reply):
        the hash each piece of the line (without its "\\n") goes into, in
        order; seal_end(h) then gives what ends the line."""
        struct.pack_into(">I", self.sb, 0, self.tseq)
        h = hashlib.sha256(self.tx[0])
        h.update(self.sb)
        return h

    def seal_end(self, h):
        """The end of the line whose pieces went into h (seal_begin): " ",
        its tag in hex, "\\n"; the next line takes the next sequence number."""
        d = h.digest()
        h = hashlib.sha256(self.tx[1])
        h.update(d)
        t = b" " + binascii.hexlify(h.digest()[:TAG]) + b"\n"
        self.tseq += 1  # (once nothing is left to allocate)
        return t
