# The reference bootloader messages (bootloader-protocol-api-reference.md),
# byte for byte, for MicroPython and CPython alike. Where the reference
# contradicts itself, docs/protocol.md rules (section 1):
#   header checksum  = (0xE7 + opcode + length_low + length_high) & 0xFF
#   length           = bytes after the header, final checksum included
#   message checksum = sum of every preceding byte & 0xFF
# extract() checks sync, opcode, length and both checksums and raises
# AssertionError (what the reference documents) saying what was wrong.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ustruct as struct
except ImportError:  # CPython
    import struct

try:
    from collections import namedtuple
except ImportError:  # pragma: no cover - very small ports
    from ucollections import namedtuple

if "." in __name__:  # CPython: the package mpota.codec (the host never puts this folder on sys.path)
    from .mpota_checksums import crc32, sum8
    from .mpota_framing import check_frame, header_checksum  # one definition of the frame rules
else:  # flat: on the board, and where shared/ is on sys.path (tests, tools)
    from mpota_checksums import crc32, sum8
    from mpota_framing import check_frame, header_checksum  # one definition of the frame rules

MAX_WRITE_PAYLOAD_SIZE = 1024
HEADER_SIZE = 5
MAX_PACKET_SIZE = 1034
SYNC_CODE = 0xE7

_Struct = getattr(struct, "Struct", None)  # absent on MicroPython


class _MPStruct:
    # MicroPython has no struct.Struct and rejects spaces in formats; this is
    # the subset of struct.Struct the reference relies on.
    def __init__(self, fmt):
        self.format = fmt
        self._f = fmt.replace(" ", "")
        self.size = struct.calcsize(self._f)

    def pack(self, *args):
        return struct.pack(self._f, *args)

    def pack_into(self, buf, offset, *args):
        struct.pack_into(self._f, buf, offset, *args)

    def unpack(self, data):
        return struct.unpack(self._f, data)

    def unpack_from(self, data, offset=0):
        return struct.unpack_from(self._f, data, offset)


def Struct(fmt):
    """struct.Struct on CPython, an equivalent on MicroPython."""
    return _Struct(fmt) if _Struct is not None else _MPStruct(fmt)


def make_packet(fmt, op_code, length, *args):
    """Pack sync, opcode, length, header checksum, *args and the message checksum."""
    pkt = bytearray(fmt.pack(SYNC_CODE, op_code, length, header_checksum(op_code, length), *(args + (0,))))
    pkt[-1] = sum8(memoryview(pkt)[:-1])
    return pkt


def _check(msg, op_code, exact_length=None):
    """Validate a raw frame; returns its header length field. AssertionError on any fault."""
    why = check_frame(msg)  # sync, header checksum, length field, message checksum
    assert why is None, why
    assert msg[1] == op_code, "wrong opcode 0x%02X (expected 0x%02X)" % (msg[1], op_code)
    length = (msg[2] << 8) | msg[3]
    if exact_length is not None:
        assert length == exact_length, "bad length %d for opcode 0x%02X (expected %d)" % (
            length, op_code, exact_length)
    return length


class Header:
    Fmt = Struct("!2B H B")
    DataLength = 0
    Type = namedtuple("Header", "sync op_code length header_checksum")

    @classmethod
    def extract(cls, msg):
        assert len(msg) >= HEADER_SIZE, "truncated header: %d bytes, need 5" % len(msg)
        h = cls.Type(*cls.Fmt.unpack(bytes(msg[:HEADER_SIZE])))
        assert h.sync == SYNC_CODE, "bad sync byte 0x%02X (expected 0xE7)" % h.sync
        hc = header_checksum(h.op_code, h.length)
        assert h.header_checksum == hc, "bad header checksum 0x%02X (expected 0x%02X)" % (h.header_checksum, hc)
        return h


class _Fixed:
    # A message whose layout does not depend on its content. The classes are
    # made from a table by _msg() below: on the board, a table compiles in a
    # fraction of the heap that thirteen class bodies need.
    _params = ()

    @staticmethod
    def _prep(*args):
        return args

    @classmethod
    def make(cls, *args, **kw):
        """make(<the reference's parameters>), positional or by name."""
        if kw:
            args = list(args)
            for name in cls._params[len(args):]:
                if name not in kw:
                    raise TypeError("%s.make() missing %r" % (cls.__name__, name))
                args.append(kw.pop(name))
            if kw:
                raise TypeError("%s.make() got unexpected %s" % (cls.__name__, ", ".join(kw)))
        if len(args) != len(cls._params):
            raise TypeError("%s.make() takes (%s)" % (cls.__name__, ", ".join(cls._params)))
        return make_packet(cls.Fmt, cls.OpCode, cls.DataLength, *cls._prep(*args))

    @classmethod
    def extract(cls, msg):
        _check(msg, cls.OpCode, cls.DataLength)
        return cls.Type(*cls.Fmt.unpack(bytes(msg)))


def _msg(name, op, fmt, length, fields="", params=None, prep=None):
    d = {"Fmt": Struct(fmt), "DataLength": length, "OpCode": op,
         "Type": namedtuple(name, "sync op_code length header_checksum " + fields + (" " if fields else "")
                            + "checksum"),
         "_params": tuple(fields.split()) if params is None else params}
    if prep is not None:
        d["_prep"] = staticmethod(prep)
    return type(name, (_Fixed,), d)


def _note(api_major, api_minor, bootloader_major, bootloader_minor, bootloader_build, note):
    if isinstance(note, str):
        note = note.encode()
    assert len(note) <= 128, "note is %d bytes, at most 128" % len(note)
    return (api_major, api_minor, bootloader_major, bootloader_minor, bootloader_build,
            bytes(note) + bytes(128 - len(note)))


def _signed(crc):
    crc &= 0xFFFFFFFF  # accept binascii's unsigned value; it travels as i32
    return (crc - 0x100000000 if crc & 0x80000000 else crc,)


VersionRequest = _msg("VersionRequest", 0x01, "!2B H B B", 1)
VersionResponse = _msg("VersionResponse", 0x02, "!2B H B 2B 3B 128s B", 134,
                       "api_major api_minor bootloader_major bootloader_minor bootloader_build note",
                       prep=_note)
UpdateStartRequest = _msg("UpdateStartRequest", 0x03, "!2B H B I B", 5, "image_size")
UpdateStartResponse = _msg("UpdateStartResponse", 0x04, "!2B H B B", 1)
UpdateStopRequest = _msg("UpdateStopRequest", 0x05, "!2B H B I B", 5, "crc",
                         prep=lambda crc: (crc & 0xFFFFFFFF,))
# The device's CRC travels signed (i32).
UpdateStopResponse = _msg("UpdateStopResponse", 0x06, "!2B H B i B", 5, "crc", prep=_signed)
WriteResponse = _msg("WriteResponse", 0x08, "!2B H B B", 1)
ResetRequest = _msg("ResetRequest", 0x09, "!2B H B B", 1)
ResetResponse = _msg("ResetResponse", 0x0A, "!2B H B B", 1)
ReadAddressRequest = _msg("ReadAddressRequest", 0x0B, "!2B H B 2I B", 9, "address length_to_read")
ErrorResponse = _msg("ErrorResponse", 0xFF, "!2B H B 2B", 2, "error", params=("error_code",))
ErrorResponse.UnsupportedOperation = 0x00
ErrorResponse.IncorrectState = 0x01
ErrorResponse.WriteFailed = 0x02


class WriteRequest:
    OpCode = 0x07
    Type = namedtuple("WriteRequest", "sync op_code length header_checksum payload data_crc checksum")

    @staticmethod
    def _fmt(n):
        return Struct("!2B H B %ds I B" % n)

    @classmethod
    def make(cls, data):
        n = len(data)
        assert 1 <= n <= MAX_WRITE_PAYLOAD_SIZE, "write payload is %d bytes, must be 1..%d" % (
            n, MAX_WRITE_PAYLOAD_SIZE)
        return make_packet(cls._fmt(n), cls.OpCode, n + 5, bytes(data), crc32(data))

    @classmethod
    def extract(cls, msg):
        length = _check(msg, cls.OpCode)
        n = length - 5
        assert 1 <= n <= MAX_WRITE_PAYLOAD_SIZE, "write payload is %d bytes, must be 1..%d" % (
            n, MAX_WRITE_PAYLOAD_SIZE)
        return cls.Type(*cls._fmt(n).unpack(bytes(msg)))

    @staticmethod
    def crc_ok(t):
        """True when the data CRC-32 carried by an extracted WriteRequest matches its payload."""
        return crc32(t.payload) == t.data_crc


class ReadAddressResponse:
    OpCode = 0x0C
    Type = namedtuple("ReadAddressResponse", "sync op_code length header_checksum data checksum")
    MaxData = 0xFFFF - 1  # the u16 length field also counts the checksum byte

    @staticmethod
    def _fmt(n):
        return Struct("!2B H B %ds B" % n)

    @classmethod
    def make(cls, address, length_to_read, data):
        # address is not on the wire (the Type has no such field); it is kept
        # for the reference's signature.
        assert len(data) == length_to_read, "data is %d bytes, length_to_read says %d" % (
            len(data), length_to_read)
        assert length_to_read <= cls.MaxData, "read of %d bytes does not fit a frame" % length_to_read
        return make_packet(cls._fmt(length_to_read), cls.OpCode, length_to_read + 1, bytes(data))

    @classmethod
    def extract(cls, msg):
        length = _check(msg, cls.OpCode)
        return cls.Type(*cls._fmt(length - 1).unpack(bytes(msg)))


# Every message class by opcode, for dispatchers and test vectors.
MESSAGES = {}
for _cls in (VersionRequest, VersionResponse, UpdateStartRequest, UpdateStartResponse,
             UpdateStopRequest, UpdateStopResponse, WriteRequest, WriteResponse,
             ResetRequest, ResetResponse, ReadAddressRequest, ReadAddressResponse,
             ErrorResponse):
    MESSAGES[_cls.OpCode] = _cls
del _cls
