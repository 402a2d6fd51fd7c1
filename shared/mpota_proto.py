# The native mpota protocol's binary side (docs/protocol.md): the frames'
# opcodes and the replies the device builds in place. The limits, the error
# table and the JSON lines are lineproto.py (a JSON-only connection loads no
# frame code); host-side frame encoders and parsers are hostframes.py, so the
# device does not carry them in RAM. Runs on MicroPython and CPython.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ustruct as struct
except ImportError:  # CPython
    import struct

if "." in __name__:  # CPython: the package mpota.codec (the host never puts this folder on sys.path)
    from .mpota_framing import HEADER_SIZE, frame_into
    from .mpota_lineproto import error_flags, parse_version
else:  # flat: on the board, and where shared/ is on sys.path (tests, tools)
    from mpota_framing import HEADER_SIZE, frame_into
    from mpota_lineproto import error_flags, parse_version

OP_DATA = 0x21
OP_ACK = 0x22
OP_READ = 0x23
OP_READ_DATA = 0x24
OP_NERROR = 0x2F
# reference requests besides VersionRequest (0x01, open to all): UpdateStart,
# UpdateStop, Write, Reset, ReadAddress -- the ones that need an authenticated peer
REF_REQUESTS = (0x03, 0x05, 0x07, 0x09, 0x0B)


# --- replies the device builds in place (no allocation) -----------------------
# Frame layouts: docs/protocol.md 1.2; host-side encoders/parsers: hostframes.py.

def ack_into(buf, acked):
    """ACK: acked u32."""
    struct.pack_into("!I", buf, HEADER_SIZE, acked)
    return frame_into(buf, OP_ACK, 4)


def nerror_into(buf, req_op, code, value=0, ref=0):
    """NERROR: req_op u8, code u8, flags u8, value u32, ref u32."""
    struct.pack_into("!BBBII", buf, HEADER_SIZE, req_op, code, error_flags(code), value, ref)
    return frame_into(buf, OP_NERROR, 11)


def version_frame(version):
    """The reference VersionResponse: API 1.0, the agent version, a 128-byte
    note. Open to all (discovery), so it is built in 139 bytes of its own."""
    b = bytearray(139)
    b[5] = 1
    v = parse_version(version)
    b[7] = v[0]
    b[8] = v[1]
    b[9] = v[2] & 0xFF
    note = "mpota agent %s (reference protocol over UDP/TCP)" % version
    b[10:10 + len(note)] = note.encode()
    frame_into(b, 0x02, 133)
    return b
