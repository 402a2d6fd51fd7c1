# cbor: the subset of CBOR (RFC 8949) that SMP (MCUmgr) messages use, one
# source for MicroPython and CPython.
#
#   maps, arrays, text and byte strings, ints (negative too, up to 64 bits),
#   true/false/null (undefined decodes as None); tags are skipped (their
#   item is kept). Definite lengths are encoded; the decoder also takes
#   indefinite-length maps and arrays (0xBF/0x9F ... 0xFF). Floats and
#   indefinite-length strings are refused (CBORError): no SMP request
#   that mpota serves carries them.
#
# Encoding writes into a caller's bytearray (put(buf, pos, obj) -> new pos;
# IndexError when it does not fit) so a server builds every reply in one
# preallocated buffer; head() writes just a type+length head, for replies
# assembled item by item (no dict, no key list). Dict keys are written in
# canonical order (RFC 7049 section 3.9: shorter first, then bytewise), as
# cbor2's canonical=True does, which makes the output comparable byte for byte.
#
# loads(data, views=True) returns byte strings as memoryview slices of
# `data` (no copy: an upload chunk goes from the datagram to the flash
# writer as is); views=False returns bytes. Nesting is limited to MAX_DEPTH.
try:
    from micropython import const
except ImportError:  # CPython: a stand-in with a looser signature than the stubs
    def const(x):  # type: ignore[misc]
        return x

MAX_DEPTH = const(8)

_M_UINT = const(0)
_M_NINT = const(1)
_M_BYTES = const(2)
_M_TEXT = const(3)
_M_ARRAY = const(4)
_M_MAP = const(5)
_M_TAG = const(6)
_M_SIMPLE = const(7)
_INDEF = const(31)
_BREAK = const(0xFF)


class CBORError(ValueError):
    pass


# -- encoding -------------------------------------------------------------------

def head(buf, pos, major, n):
    """Write the head of an item of major type `major` with argument n (>= 0)."""
    m = major << 5
    if n < 24:
        buf[pos] = m | n
        return pos + 1
    ai = 24  # then 25, 26, 27: 1, 2, 4, 8 bytes of argument
    k = 1
    while n >> (8 * k):
        ai += 1
        k <<= 1
        if ai > 27:
            raise CBORError("integer out of range")
    buf[pos] = m | ai
    end = pos + 1 + k
    i = end - 1
    while i > pos:
        buf[i] = n & 0xFF
        n >>= 8
        i -= 1
    return end


def put_int(buf, pos, n):
    if n < 0:
        return head(buf, pos, _M_NINT, -1 - n)
    return head(buf, pos, _M_UINT, n)


def put_bytes(buf, pos, b, major=_M_BYTES):
    n = len(b)
    pos = head(buf, pos, major, n)
    if pos + n > len(buf):
        raise IndexError("CBOR output does not fit")
    if n <= 16:  # keys and short strings: a loop, where a slice would allocate
        for i in range(n):
            buf[pos + i] = b[i]
    else:
        buf[pos:pos + n] = b
    return pos + n


def put_text(buf, pos, s):
    """A text string; `s` is a str, or its UTF-8 bytes (constant keys, no encode())."""
    return put_bytes(buf, pos, s.encode() if isinstance(s, str) else s, _M_TEXT)


def put_bool(buf, pos, v):
    buf[pos] = 0xF5 if v else 0xF4
    return pos + 1


def _canonical(k):
    b = k.encode()
    return (len(b), b)


def put(buf, pos, obj):
    """Encode obj (None, bool, int, str, bytes-like, list/tuple, dict) at pos."""
    if obj is None:
        buf[pos] = 0xF6
        return pos + 1
    if obj is True or obj is False:
        return put_bool(buf, pos, obj)
    if isinstance(obj, int):
        return put_int(buf, pos, obj)
    if isinstance(obj, str):
        return put_text(buf, pos, obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return put_bytes(buf, pos, obj)
    if isinstance(obj, (list, tuple)):
        pos = head(buf, pos, _M_ARRAY, len(obj))
        for v in obj:
            pos = put(buf, pos, v)
        return pos
    if isinstance(obj, dict):
        pos = head(buf, pos, _M_MAP, len(obj))
        keys = list(obj.keys())
        if len(keys) > 1:
            for k in keys:
                if not isinstance(k, str):
                    raise CBORError("map keys must be text")
            keys.sort(key=_canonical)
        for k in keys:
            pos = put(buf, pos, k)
            pos = put(buf, pos, obj[k])
        return pos
    raise CBORError("cannot encode %s" % type(obj).__name__)


def dumps(obj, size=256):
    """obj as bytes (grows its buffer as needed; a server uses put())."""
    while True:
        buf = bytearray(size)
        try:
            return bytes(buf[:put(buf, 0, obj)])
        except IndexError:
            size *= 4


# -- decoding ---------------------------------------------------------------------

class _Reader:
    def __init__(self, data, views):
        self.mv = memoryview(data)
        self.p = 0
        self.views = views

    def byte(self):
        p = self.p
        if p >= len(self.mv):
            raise CBORError("truncated CBOR")
        self.p = p + 1
        return self.mv[p]

    def arg(self, ai):
        # the argument of a head whose additional info is ai
        if ai < 24:
            return ai
        if ai > 27:
            raise CBORError("bad additional info %d" % ai)
        k = 1 << (ai - 24)
        p = self.p
        if p + k > len(self.mv):
            raise CBORError("truncated CBOR")
        n = 0
        mv = self.mv
        for i in range(p, p + k):
            n = (n << 8) | mv[i]
        self.p = p + k
        return n

    def take(self, n):
        p = self.p
        if n > len(self.mv) - p:
            raise CBORError("truncated CBOR")
        self.p = p + n
        return self.mv[p:p + n]

    def item(self, depth):
        ib = self.byte()
        major = ib >> 5
        ai = ib & 31
        if major == _M_SIMPLE:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22 or ai == 23:
                return None
            raise CBORError("unsupported simple/float item 0x%02x" % ib)
        if ai == _INDEF and major in (_M_ARRAY, _M_MAP):
            n = -1
        else:
            n = self.arg(ai)
        if major == _M_UINT:
            return n
        if major == _M_NINT:
            return -1 - n
        if major == _M_BYTES:
            b = self.take(n)
            return b if self.views else bytes(b)
        if major == _M_TEXT:
            try:
                return str(self.take(n), "utf-8")
            except UnicodeError:
                raise CBORError("text string is not UTF-8")
        if depth >= MAX_DEPTH:
            raise CBORError("CBOR nested deeper than %d" % MAX_DEPTH)
        if major == _M_TAG:
            return self.item(depth + 1)
        if major == _M_ARRAY:
            out = []
            while n != 0:
                if n < 0 and self._brk():
                    break
                out.append(self.item(depth + 1))
                n -= 1
            return out
        # _M_MAP
        out = {}
        while n != 0:
            if n < 0 and self._brk():
                break
            k = self.item(depth + 1)
            if isinstance(k, memoryview):
                k = bytes(k)  # hashable
            elif isinstance(k, (list, dict)):
                raise CBORError("unsupported map key")
            out[k] = self.item(depth + 1)
            n -= 1
        return out

    def _brk(self):
        # the break byte that ends an indefinite-length item?
        p = self.p
        if p >= len(self.mv):
            raise CBORError("truncated CBOR")
        if self.mv[p] == _BREAK:
            self.p = p + 1
            return True
        return False


def loads(data, views=True):
    """The one CBOR item that `data` holds (trailing bytes: CBORError)."""
    r = _Reader(data, views)
    obj = r.item(0)
    if r.p != len(r.mv):
        raise CBORError("%d bytes after the CBOR item" % (len(r.mv) - r.p))
    return obj
