# Native binary frames, host side (docs/protocol.md 1.2): encoders and
# parsers for DATA, ACK, READ, READ_DATA and NERROR, and JSON request lines.
# Shared so the host and the test vectors use one definition; the device
# parses DATA/READ in place and builds its replies with proto.ack_into /
# proto.nerror_into, so it does not import this module.
import json
import struct

if "." in __name__:  # CPython: the package mpota.codec (the host never puts this folder on sys.path)
    from .mpota_checksums import crc32c
    from .mpota_framing import HEADER_SIZE, StreamDecoder, frame_into
    from .mpota_proto import OP_ACK, OP_DATA, OP_NERROR, OP_READ, OP_READ_DATA, ack_into, nerror_into
    from .mpota_lineproto import E_BAD_FRAME, ProtoError, slot_index
else:  # flat: on the board, and where shared/ is on sys.path (tests, tools)
    from mpota_checksums import crc32c
    from mpota_framing import HEADER_SIZE, StreamDecoder, frame_into
    from mpota_proto import OP_ACK, OP_DATA, OP_NERROR, OP_READ, OP_READ_DATA, ack_into, nerror_into
    from mpota_lineproto import E_BAD_FRAME, ProtoError, slot_index


class Decoder(StreamDecoder):
    """StreamDecoder with the host's conveniences (copying in, a generator)."""

    def feed(self, data):
        n = len(data)
        if len(self.buf) - self.end < n:
            self._compact()
            if len(self.buf) - self.end < n:
                raise ValueError("feed of %d bytes does not fit; drain next() first" % n)
        self.buf[self.end:self.end + n] = data
        self.end += n

    def decode(self, data):
        """Generator: feed `data` piecewise and yield every event it completes."""
        mv = memoryview(data)
        i = 0
        n = len(mv)
        while True:
            if i < n:
                sp = self.space()
                k = min(len(sp), n - i)
                if k == 0:
                    # Unreachable by construction (next() always frees a full
                    # buffer), kept so a bug cannot spin forever.
                    raise RuntimeError("decoder stuck with a full buffer")
                sp[:k] = mv[i:i + k]
                self.end += k
                i += k
            while True:
                ev = self.next()
                if ev is None:
                    break
                yield ev
            if i >= n:
                return


def make_frame(op, body):
    """A complete frame (bytearray) carrying `body`."""
    n = len(body)
    if n > 0xFFFE:
        raise ValueError("frame body of %d bytes does not fit the u16 length" % n)
    buf = bytearray(HEADER_SIZE + n + 1)
    buf[HEADER_SIZE:HEADER_SIZE + n] = body
    frame_into(buf, op, n)
    return buf


def _body(frame, op, min_len, exact=True):
    # The frame has passed the decoder's checksum checks; verify it is the
    # expected opcode and has a body of the right size.
    if frame[1] != op:
        raise ProtoError(E_BAD_FRAME, "expected opcode 0x%02X, got 0x%02X" % (op, frame[1]))
    n = len(frame) - HEADER_SIZE - 1
    if n < min_len or (exact and n != min_len):
        raise ProtoError(E_BAD_FRAME, "frame 0x%02X has a %d-byte body" % (op, n))
    return n


# --- DATA / READ_DATA: offset u32, crc32c u32, data -------------------------

def _encode_chunk(op, offset, data):
    n = len(data)
    if n < 1 or n > 0xFFFE - 8:
        raise ValueError("chunk of %d bytes" % n)
    body = bytearray(8 + n)
    struct.pack_into("!II", body, 0, offset, crc32c(data))
    body[8:] = data
    return make_frame(op, body)


def _parse_chunk(frame, op):
    n = _body(frame, op, 9, False)
    offset, crc = struct.unpack_from("!II", frame, HEADER_SIZE)
    return offset, crc, memoryview(frame)[HEADER_SIZE + 8:HEADER_SIZE + n]


def encode_data(offset, data):
    return _encode_chunk(OP_DATA, offset, data)


def parse_data(frame):
    return _parse_chunk(frame, OP_DATA)


def encode_read_data(offset, data):
    return _encode_chunk(OP_READ_DATA, offset, data)


def parse_read_data(frame):
    return _parse_chunk(frame, OP_READ_DATA)


# --- ACK: acked u32 -----------------------------------------------------------

def encode_ack(acked):
    buf = bytearray(HEADER_SIZE + 5)
    ack_into(buf, acked)
    return buf


def parse_ack(frame):
    _body(frame, OP_ACK, 4)
    return struct.unpack_from("!I", frame, HEADER_SIZE)[0]


# --- READ: slot u8, offset u32, length u16 --------------------------------------

def encode_read(slot, offset, length):
    if isinstance(slot, str):
        slot = slot_index(slot)
    return make_frame(OP_READ, struct.pack("!BIH", slot, offset, length))


def parse_read(frame):
    _body(frame, OP_READ, 7)
    return struct.unpack_from("!BIH", frame, HEADER_SIZE)


# --- NERROR: req_op u8, code u8, flags u8, value u32, ref u32 ----------------

def encode_nerror(req_op, code, value=0, ref=0):
    buf = bytearray(HEADER_SIZE + 12)
    nerror_into(buf, req_op, code, value, ref)
    return buf


def parse_nerror(frame):
    _body(frame, OP_NERROR, 11)
    return struct.unpack_from("!BBBII", frame, HEADER_SIZE)



# --- JSON request lines ------------------------------------------------------

def request_line(op, req_id=None, fields=None):
    """Host side: one request line."""
    d = {"op": op}
    if req_id is not None:
        d["id"] = req_id
    if fields:
        for k in fields:
            d[k] = fields[k]
    return (json.dumps(d) + "\n").encode()
