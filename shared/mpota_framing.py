# Binary frames (the reference layout, used by legacy and native opcodes) and
# the streaming decoder for the TCP port, where binary frames (first byte
# 0xE7) and JSON lines (first byte "{") share one connection.
#
# The decoder owns one preallocated buffer: the device `readinto`s straight
# into `space()`, and events hand out memoryviews into that buffer, so the hot
# path allocates nothing and has no per-byte Python loop (searching is
# bytearray.find, summing is viper/C).
if "." in __name__:  # CPython: the package mpota.codec (the host never puts this folder on sys.path)
    from .mpota_checksums import sum8
else:  # flat: on the board, and where shared/ is on sys.path (tests, tools)
    from mpota_checksums import sum8

SYNC = 0xE7
HEADER_SIZE = 5
_LBRACE = 0x7B  # "{"
_NL = b"\n"

K_FRAME = 1
K_LINE = 2
K_ERROR = 3

# Native error numbers the decoder reports (the full table is in proto.py).
E_BAD_FRAME = 0x03
E_TOO_LARGE = 0x06

try:
    import sys
    _CPYTHON = sys.implementation.name == "cpython"
except (ImportError, AttributeError):  # pragma: no cover
    _CPYTHON = False


def header_checksum(op, length):
    return (SYNC + op + (length & 0xFF) + ((length >> 8) & 0xFF)) & 0xFF


def frame_into(buf, op, body_len):
    """Complete the frame whose body is already at buf[5:5+body_len]; return its size."""
    length = body_len + 1
    buf[0] = SYNC
    buf[1] = op
    buf[2] = (length >> 8) & 0xFF
    buf[3] = length & 0xFF
    buf[4] = header_checksum(op, length)
    end = HEADER_SIZE + body_len
    buf[end] = sum8(memoryview(buf)[:end])
    return end + 1


def check_frame(frame):
    """None when `frame` is exactly one valid frame, else a sentence saying why not."""
    n = len(frame)
    if n < HEADER_SIZE + 1:
        return "truncated frame: %d bytes" % n
    if frame[0] != SYNC:
        return "bad sync byte 0x%02X" % frame[0]
    length = (frame[2] << 8) | frame[3]
    if frame[4] != header_checksum(frame[1], length):
        return "bad header checksum"
    if length < 1:
        return "bad length 0"
    if n < HEADER_SIZE + length:
        return "truncated frame: length field says %d bytes after the header, got %d" % (length, n - HEADER_SIZE)
    if n > HEADER_SIZE + length:
        return "length field says %d bytes after the header, frame has %d" % (length, n - HEADER_SIZE)
    if frame[n - 1] != sum8(memoryview(frame)[:n - 1]):
        return "bad message checksum"
    return None


class StreamDecoder:
    """Split a byte stream into binary frames, JSON lines and error events.

    Feed it with `space()`/`advance(n)` (zero copy); drain it with `next()`
    until None. Views returned by `next()` stay valid until the next call on
    the decoder. (hostframes.Decoder adds feed() and decode() for the host.)
    """

    def __init__(self, max_frame=4110, max_line=1024):
        self.max_frame = max_frame
        self.max_line = max_line
        # A line needs room for its "\r\n" as well.
        self.buf = bytearray(max(max_frame, max_line + 2))
        self.mv = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self._discarding = False  # inside an oversized line, dropping up to "\n"
        self._garbage = False  # inside a run of garbage already reported

    def grow(self, max_frame, max_line):
        """Raise the limits (a bigger buffer, pending bytes kept). The device
        starts every connection small and grows it only once the peer has
        authenticated, so unauthenticated peers cannot make it hold
        full-size buffers. Out of heap (MemoryError) it changes nothing."""
        size = max(max_frame, max_line + 2)
        if size <= len(self.buf):
            self.max_line = max_line
            self.max_frame = max_frame
            return
        n = self.end - self.start
        buf = bytearray(size)
        self.max_line = max_line
        buf[0:n] = self.mv[self.start:self.end]
        self.buf = buf
        self.mv = memoryview(buf)
        self.start = 0
        self.end = n
        self.max_frame = max_frame

    def pending(self):
        """Bytes held that do not yet form a complete message."""
        return self.end - self.start

    def reset(self):
        self.start = self.end = 0
        self._discarding = False
        self._garbage = False

    def _compact(self):
        s, e = self.start, self.end
        n = e - s
        if s:
            if n:
                # MicroPython copies slices with memmove; CPython may not, so
                # it gets a private copy when the regions overlap.
                self.buf[0:n] = bytes(self.mv[s:e]) if (_CPYTHON and s < n) else self.mv[s:e]
            self.start = 0
            self.end = n

    def space(self):
        """A writable view of the free tail of the buffer (for readinto)."""
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf) or (self.start and len(self.buf) - self.end < 512):
            self._compact()
        return self.mv[self.end:]

    def advance(self, n):
        if n < 0 or self.end + n > len(self.buf):
            raise ValueError("advance(%d) beyond the buffer" % n)
        self.end += n

    def next(self):
        buf = self.buf
        while True:
            s = self.start
            e = self.end
            if s >= e:
                self.start = self.end = 0
                return None
            if self._discarding:
                i = buf.find(_NL, s, e)
                if i < 0:
                    self.start = self.end = 0
                    return None
                self.start = i + 1
                self._discarding = False
                continue
            b = buf[s]
            if b == SYNC:
                self._garbage = False
                return self._frame(s, e)
            if b == _LBRACE:
                self._garbage = False
                return self._line(s, e)
            if b in (0x0A, 0x0D, 0x20, 0x09) and not self._garbage:
                # Whitespace between messages (nc, telnet, pretty printers).
                self.start = s + 1
                continue
            # Garbage: skip to the next byte that can start a message. One
            # error per run of garbage, however the bytes were split up.
            j = buf.find(b"\xe7", s, e)
            k = buf.find(b"{", s, e)
            if j < 0 or (0 <= k < j):
                j = k
            if j < 0:
                j = e
            self.start = j
            if self._garbage:
                continue
            self._garbage = True
            return (K_ERROR, (E_BAD_FRAME, "skipped bytes that start no frame or JSON line"))

    def _frame(self, s, e):
        buf = self.buf
        if e - s < HEADER_SIZE:
            return None  # keep the partial message; space() compacts when the tail fills
        length = (buf[s + 2] << 8) | buf[s + 3]
        if buf[s + 4] != header_checksum(buf[s + 1], length):
            # Not a header after all (or corrupted): resynchronise one byte on.
            self.start = s + 1
            return (K_ERROR, (E_BAD_FRAME, "bad header checksum"))
        if length == 0:
            self.start = s + 1
            return (K_ERROR, (E_BAD_FRAME, "bad length 0"))
        total = HEADER_SIZE + length
        if total > self.max_frame:
            # A lying length must not make us buffer without bound.
            self.start = s + 1
            return (K_ERROR, (E_TOO_LARGE, "frame of %d bytes exceeds the %d-byte limit" % (total, self.max_frame)))
        if e - s < total:
            return None  # keep the partial message; space() compacts when the tail fills
        end = s + total
        self.start = end
        if buf[end - 1] != sum8(self.mv[s:end - 1]):
            return (K_ERROR, (E_BAD_FRAME, "bad message checksum in frame 0x%02X" % buf[s + 1]))
        return (K_FRAME, self.mv[s:end])

    def _line(self, s, e):
        buf = self.buf
        limit = s + self.max_line + 2
        i = buf.find(_NL, s, e if e < limit else limit)
        if i < 0:
            if e - s > self.max_line + 1:
                # Drop the line up to its "\n" (which may not have arrived yet).
                self._discarding = True
                self.start = limit if limit < e else e
                return (K_ERROR, (E_TOO_LARGE, "line exceeds the %d-byte limit" % self.max_line))
            return None  # keep the partial message; space() compacts when the tail fills
        self.start = i + 1
        j = i
        if j > s and buf[j - 1] == 0x0D:
            j -= 1
        if j - s > self.max_line:
            return (K_ERROR, (E_TOO_LARGE, "line exceeds the %d-byte limit" % self.max_line))
        return (K_LINE, self.mv[s:j])
