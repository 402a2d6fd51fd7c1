# session: the per-message MACs of an authenticated connection
# (docs/protocol.md 2.6), one source for the device and the host: the
# JSON-line half (keys, tags, lines) is linemac.py; this module adds binary
# frames.
#
# A frame carries the tag inside its body (length + 16, so the
# StreamDecoder parses it as any frame); a JSON line ends with " " and the
# tag in hex. Replayed, reordered, injected, reflected or relayed messages
# fail the tag: the receiver answers one error and closes.
#
# Heap: per message two hash objects and two 32-byte digests (linemac.py),
# nothing sized by the message: the pads, the sequence bytes and the reply
# buffer are made once per session.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ubinascii as binascii
except ImportError:  # CPython
    import binascii

if "." in __name__:  # CPython: the package mpota.codec (the host never puts this folder on sys.path)
    from .mpota_checksums import sum8
    from .mpota_framing import SYNC, HEADER_SIZE, K_FRAME, K_LINE, header_checksum
    from .mpota_linemac import Lines, keys, TAG, LINE_TAG  # noqa: F401 (keys, LINE_TAG: the session's API)
else:  # flat: on the board, and where shared/ is on sys.path (tests, tools)
    from mpota_checksums import sum8
    from mpota_framing import SYNC, HEADER_SIZE, K_FRAME, K_LINE, header_checksum
    from mpota_linemac import Lines, keys, TAG, LINE_TAG  # noqa: F401 (keys, LINE_TAG: the session's API)

_SMALL = 160  # device replies up to this size are sealed in one buffer, one write


class Session(Lines):
    """Both directions of one connection, frames and lines. `device`: True
    on the device (it seals with the device key, opens with the host key)."""
    hb = None  # sealed header and tag + checksum for large frames (device)
    ob = None  # small replies are sealed here (device)

    # -- receiving -----------------------------------------------------------
    def open(self, kind, v):
        """A decoder event's value without its tag, or None when the tag is
        wrong or the event is not a message (a decoder error: the stream is
        no longer one the peer sealed). Frames are restored in place to the
        plain frame (length, header checksum and final checksum fixed), so
        handlers see exactly what an unauthenticated connection would."""
        if kind == K_LINE:
            return self.open_line(v)
        if kind != K_FRAME:
            return None
        n = len(v)
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

    # -- sending -------------------------------------------------------------
    def seal(self, b):
        """The sealed copy of one message (a frame or a line ending in "\\n")."""
        n = len(b)
        if b[0] == SYNC:
            out = bytearray(n + TAG)
            self._seal_into(out, b, n)
            return out
        return self.seal_line(b)

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
    grown by TAG and LINE_TAG already: conn.Conn.secure.)"""
    c.sess = Session(dev.key, dev.id, dev_nonce, binascii.unhexlify(host_nonce_hex), True)


def adopt(lines):
    """Device: the Session that goes on with a lean connection's line session
    (leanconn.py hands a connection to conn.py): same keys, same counts."""
    s = object.__new__(Session)
    s.tx = lines.tx
    s.rx = lines.rx
    s.tseq = lines.tseq
    s.rseq = lines.rseq
    s.sb = lines.sb
    return s
