# The native mpota protocol (docs/protocol.md): constants, the error table
# shared with the legacy ErrorResponse, JSON-line requests and replies, and
# the replies the device builds in place. Host-side frame encoders and
# parsers are in hostframes.py, so the device does not carry them in RAM.
# Runs on MicroPython and CPython.
import json
import struct

from framing import HEADER_SIZE, frame_into

PROTO = 1
TCP_PORT = 8472
UDP_PORT = 8473
MAX_DATA = 4096
MAX_FRAME = HEADER_SIZE + 8 + MAX_DATA + 1  # 4110: DATA with a full sector
MAX_LINE = 1024
MAX_LINE_PRE_AUTH = 512  # before auth: hello, auth, ping, status fit easily
WINDOW = 16384
READ_JSON_MAX = 768

OP_DATA = 0x21
OP_ACK = 0x22
OP_READ = 0x23
OP_READ_DATA = 0x24
OP_NERROR = 0x2F
# reference requests besides VersionRequest (0x01, open to all): UpdateStart,
# UpdateStop, Write, Reset, ReadAddress -- the ones that need an authenticated peer
REF_REQUESTS = (0x03, 0x05, 0x07, 0x09, 0x0B)

SLOT_NAMES = ("a", "b")

E_UNSUPPORTED = 0x00
E_INCORRECT_STATE = 0x01
E_WRITE_FAILED = 0x02
E_BAD_FRAME = 0x03
E_CRC_MISMATCH = 0x04
E_BAD_REQUEST = 0x05
E_TOO_LARGE = 0x06
E_OUT_OF_RANGE = 0x07
E_NO_SPACE = 0x08
E_BUSY = 0x09
E_AUTH_REQUIRED = 0x0A
E_AUTH_FAILED = 0x0B
E_VERIFY_FAILED = 0x0C
E_BAD_IMAGE = 0x0D
E_SIGNATURE_INVALID = 0x0E
E_VERSION_REFUSED = 0x0F
E_OUT_OF_ORDER = 0x10
E_TIMEOUT = 0x11
E_INTERNAL = 0x12
E_FLASH_FAULT = 0x13
E_NO_MEMORY = 0x14
E_RESTARTING = 0x15

F_FATAL = 0x80     # the device may be unusable (MoaTbus bit 7)
F_NO_RETRY = 0x40  # retrying the same request cannot help (MoaTbus bit 6)

# The error table, index = num: names in one string and flags in one bytes
# object, which cost the device far less heap than a tuple of tuples (errors
# are rare, so splitting the string when one happens is fine).
_NAMES = ("unsupported incorrect_state write_failed bad_frame crc_mismatch bad_request too_large "
          "out_of_range no_space busy auth_required auth_failed verify_failed bad_image "
          "signature_invalid version_refused out_of_order timeout internal flash_fault no_memory restarting")
_FLAGS = b"\x40\x40\x00\x00\x00\x40\x40\x40\x40\x00\x40\x40\x00\x40\x40\x40\x00\x00\xc0\xc0\x00\x00"


def error_name(num):
    names = _NAMES.split()
    return names[num] if 0 <= num < len(names) else "error_%d" % num


def error_num(name):
    names = _NAMES.split()
    if name in names:
        return names.index(name)
    raise KeyError(name)


def error_flags(num):
    return _FLAGS[num] if 0 <= num < len(_FLAGS) else F_NO_RETRY


def error_retry(num):
    return not (error_flags(num) & F_NO_RETRY)


def error_fatal(num):
    return bool(error_flags(num) & F_FATAL)


class ProtoError(Exception):
    """A request the peer got wrong: carries the native error number."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


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


# --- JSON lines ---------------------------------------------------------------

def parse_request(line):
    """Decode one JSON line into a dict with a string "op"; ProtoError otherwise."""
    if len(line) > MAX_LINE:
        raise ProtoError(E_TOO_LARGE, "line exceeds the %d-byte limit" % MAX_LINE)
    try:
        obj = json.loads(bytes(line))
    except (ValueError, UnicodeError) as e:
        raise ProtoError(E_BAD_REQUEST, "not valid JSON: %s" % e)
    if not isinstance(obj, dict):
        raise ProtoError(E_BAD_REQUEST, "a request must be a JSON object")
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtoError(E_BAD_REQUEST, "missing \"op\" (a string)")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, (int, str, float, bool)):
        raise ProtoError(E_BAD_REQUEST, "\"id\" must be a JSON scalar")
    return obj


def reply_line(req_id, fields=None):
    d = {}
    if req_id is not None:
        d["id"] = req_id
    d["ok"] = True
    if fields:
        for k in fields:
            d[k] = fields[k]
    return (json.dumps(d) + "\n").encode()


def error_obj(code, message):
    return {"code": error_name(code), "num": code, "message": message,
            "retry": error_retry(code), "fatal": error_fatal(code)}


def error_line(req_id, code, message):
    d = {}
    if req_id is not None:
        d["id"] = req_id
    d["ok"] = False
    d["error"] = error_obj(code, message)
    return (json.dumps(d) + "\n").encode()


# --- field helpers ------------------------------------------------------------

def parse_version(s):
    """"1.2.3+4" -> (1, 2, 3, 4); "1.2" and "1.2.3" allowed (missing parts 0)."""
    if not isinstance(s, str) or not s:
        raise ProtoError(E_BAD_REQUEST, "version must be a string like \"1.2.3+4\"")
    build = 0
    main = s
    if "+" in s:
        main, b = s.split("+", 1)
        build = _uint(b, s, 0xFFFFFFFF)
    parts = main.split(".")
    if len(parts) > 3:
        raise ProtoError(E_BAD_REQUEST, "bad version %r" % s)
    nums = [0, 0, 0]
    limits = (0xFF, 0xFF, 0xFFFF)
    for i in range(len(parts)):
        nums[i] = _uint(parts[i], s, limits[i])
    return (nums[0], nums[1], nums[2], build)


def _uint(t, whole, limit):
    if not t or not t.isdigit() or int(t) > limit:
        raise ProtoError(E_BAD_REQUEST, "bad version %r" % whole)
    return int(t)


def format_version(v):
    return "%d.%d.%d+%d" % (v[0], v[1], v[2], v[3])


def slot_index(name):
    if name == "a":
        return 0
    if name == "b":
        return 1
    raise ProtoError(E_BAD_REQUEST, "slot must be \"a\" or \"b\"")


def field(req, key, typ, default=None, required=False):
    """req[key] checked against `typ` (bool is not an int here); bad_request otherwise."""
    v = req.get(key, default)
    if v is None and not required:
        return default
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ProtoError(E_BAD_REQUEST, "field \"%s\" must be %s" % (key, typ.__name__))
    return v


def int_range(req, key, lo, hi, default=None):
    v = field(req, key, int, default, default is None)
    if not lo <= v <= hi:
        raise ProtoError(E_OUT_OF_RANGE, "\"%s\" must be in %d..%d" % (key, lo, hi))
    return v
