# lineproto: the JSON-line half of the native protocol (docs/protocol.md
# sections 2 and 4): the limits, the error table (shared with the binary
# frames and the legacy ErrorResponse), ProtoError, requests, replies and
# field checks. It imports no framing, so a connection that speaks only JSON
# lines (leanconn.py) and the modules that only raise ProtoError (slots,
# upload, trust) load it without the frame code; proto.py adds the frames
# and re-exports all of this. Runs on MicroPython and CPython. It names no
# device handler: the device's request dispatch is dispatch.py's.
import gc
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ujson as json
except ImportError:  # CPython
    import json

PROTO = 1
TCP_PORT = 8472
UDP_PORT = 8473
MAX_DATA = 4096
MAX_FRAME = 5 + 8 + MAX_DATA + 1  # 4110: DATA with a full sector (header, offset, CRC, data, checksum)
MAX_LINE = 1024
MAX_LINE_PRE_AUTH = 512  # before auth: hello, auth, ping, status fit easily
WINDOW = 16384
READ_JSON_MAX = 768


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


def no_memory(c, rid):
    """Answer a request that ran out of heap (a retryable no_memory) on
    connection c, with nothing loaded that may be what failed to load."""
    sess = c.sess
    if sess is not None and sess.tseq == 0:
        # the heap ran out between the session's start and the auth reply: the
        # peer never saw a sealed message, so the auth did not happen (the
        # reply goes unsealed; the host reads it as a failed auth)
        c.sess = None
        c.authed = False
    c.out(error_line(rid, E_NO_MEMORY, "out of memory (%d bytes free): retry, or reset first" % gc.mem_free()))


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


def slot_name(i):
    """0 -> "a", 1 -> "b", None -> None."""
    return None if i is None else SLOT_NAMES[i]


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
