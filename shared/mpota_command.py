# command: the signed commands that reach a board through an MQTT broker
# (docs/mqtt.md), one source for the board and the host. Runs on
# MicroPython and CPython.
#
#   payload = b"mpota-cmd-v1 " + 128 hex digits (the Ed25519 signature) + b" " + body
#   signature = Ed25519 over b"mpota-cmd-v1\x00" + body (the body's bytes as sent: never re-serialised)
#   body = compact JSON: {"seq": N, "fleet": "...", "to": "<device id>" | "*", "op": "...", ...}
#
# parse() splits and decodes a payload, check() holds a verified body against
# a board (its id, fleet and last seq). The signature itself is checked by the
# caller with the keys it trusts (device: mpota_trust.verify_signature; host:
# cryptography), over signed_message(body bytes). Every refusal is a
# CommandError with a short reason the board reports on its events topic.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ubinascii as binascii
    import ujson as json
except ImportError:  # CPython
    import binascii
    import json

MAGIC = b"mpota-cmd-v1"
MAX_PAYLOAD = 1024  # the board's receive buffer holds a command whole (mpota_mqtt.MAX_PACKET)
OPS = ("install", "confirm", "rollback", "reset", "logs")
# reasons (CommandError.reason), as the events topic names them
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
OLD_SEQ = "old_seq"
WRONG_TARGET = "wrong_target"
WRONG_FLEET = "wrong_fleet"
UNKNOWN_OP = "unknown_op"
BAD_FIELD = "bad_field"
NO_KEY = "no_trusted_key"
_HEAD = 13  # len(MAGIC) + 1
_SIG_HEX = 128
_MAX_SEQ = 1 << 53  # JSON numbers stay exact in every decoder below this


class CommandError(ValueError):
    """A command the board does not act on: `reason` (one of the names
    above) and a message for people."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


def name_ok(s):
    """A fleet name: 1 to 32 of [A-Za-z0-9_-] (it is a topic level)."""
    if not isinstance(s, str) or not 0 < len(s) <= 32:
        return False
    for ch in s:
        if not (ch.isalpha() or ch.isdigit() or ch in "_-") or ord(ch) > 127:
            return False
    return True


def signed_message(body):
    """The bytes the signature covers."""
    return MAGIC + b"\x00" + bytes(body)


def pack(sig, body):
    """-> the payload for `body` (the exact bytes that were signed) and its
    64-byte signature."""
    if len(sig) != 64:
        raise ValueError("an Ed25519 signature is 64 bytes")
    p = MAGIC + b" " + binascii.hexlify(sig) + b" " + bytes(body)
    if len(p) > MAX_PAYLOAD:
        raise ValueError("command of %d bytes exceeds %d" % (len(p), MAX_PAYLOAD))
    return p


def body_bytes(fields):
    """Compact JSON of a body dict (host side: what gets signed)."""
    return json.dumps(fields, separators=(",", ":")).encode()


def unpack(payload):
    """-> (64-byte signature, body bytes); CommandError (a ValueError) with
    reason MALFORMED unless `payload` is one mpota-cmd-v1 frame."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise CommandError(MALFORMED, "command of %d bytes exceeds %d" % (n, MAX_PAYLOAD))
    mv = memoryview(payload)
    if n < _HEAD + _SIG_HEX + 3 or bytes(mv[:_HEAD]) != MAGIC + b" " or mv[_HEAD + _SIG_HEX] != 0x20:
        raise CommandError(MALFORMED, "not an mpota-cmd-v1 payload")
    try:
        sig = binascii.unhexlify(bytes(mv[_HEAD:_HEAD + _SIG_HEX]))
    except (ValueError, TypeError):
        raise CommandError(MALFORMED, "the signature is not hex")
    return sig, bytes(mv[_HEAD + _SIG_HEX + 1:])


def parse(payload):
    """-> (body dict, body bytes, 64-byte signature); CommandError(MALFORMED)
    for anything but a well-formed payload (its signature is not checked here)."""
    sig, body = unpack(payload)
    try:
        d = json.loads(body)
    except (ValueError, UnicodeError):
        raise CommandError(MALFORMED, "the body is not JSON")
    if not isinstance(d, dict):
        raise CommandError(MALFORMED, "the body must be a JSON object")
    return d, body, sig


def _str(d, k, lo=1, hi=64):
    v = d.get(k)
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise CommandError(BAD_FIELD, "\"%s\" must be a string of %d to %d characters" % (k, lo, hi))
    return v


def _int(d, k, lo, hi):
    v = d.get(k)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CommandError(BAD_FIELD, "\"%s\" must be an integer in %d..%d" % (k, lo, hi))
    return v


def split_url(url):
    """"http://HOST[:PORT]/PATH" -> (host, port, path); CommandError(BAD_FIELD)
    for anything else (no https, no user info, no fragment)."""
    if not isinstance(url, str) or len(url) > 256 or not url.startswith("http://"):
        raise CommandError(BAD_FIELD, "\"url\" must be an http:// URL of at most 256 characters")
    rest = url[7:]
    i = rest.find("/")
    if i <= 0:
        raise CommandError(BAD_FIELD, "\"url\" needs a host and a path")
    hp = rest[:i]
    path = rest[i:]
    port = 80
    if ":" in hp:
        hp, p = hp.rsplit(":", 1)
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise CommandError(BAD_FIELD, "bad port in \"url\"")
        port = int(p)
    for ch in path:
        if ord(ch) <= 32 or ord(ch) >= 127 or ch == "#":
            raise CommandError(BAD_FIELD, "\"url\" has a character that needs escaping")
    if not hp or "@" in hp or "[" in hp:
        raise CommandError(BAD_FIELD, "bad host in \"url\"")
    return hp, port, path


def _show(v):
    # a field of a body not verified yet, for a refusal's message: a JSON array or
    # object by its kind only (repr recurses: a few hundred levels, which 1 KB of
    # payload holds, overflow a board's C stack: RuntimeError instead of a refusal)
    return "a JSON array" if isinstance(v, list) else "a JSON object" if isinstance(v, dict) else repr(v)


def check(d, dev_id, fleet, last_seq, on_all=False):
    """Hold body `d` against a board: its fleet, its id (`on_all`: it came on
    the fleet's all topic, where only "to": "*" is accepted), a seq newer
    than `last_seq`, a known op with valid fields. -> the op; CommandError."""
    seq = _int(d, "seq", 1, _MAX_SEQ)
    if d.get("fleet") != fleet:
        raise CommandError(WRONG_FLEET, "for fleet %s, this board is in %r" % (_show(d.get("fleet")), fleet))
    to = d.get("to")
    if to != ("*" if on_all else dev_id):
        raise CommandError(WRONG_TARGET, "for %s on the %s topic, this board is %r"
                           % (_show(to), "all" if on_all else "board's", dev_id))
    if seq <= last_seq:
        raise CommandError(OLD_SEQ, "seq %d is not newer than %d (replayed or stale)" % (seq, last_seq))
    op = d.get("op")
    if op not in OPS:
        raise CommandError(UNKNOWN_OP, "unknown op %s" % _show(op))
    if op == "install":
        split_url(d.get("url"))
        sha = _str(d, "sha256", 64, 64)
        try:
            binascii.unhexlify(sha)
        except ValueError:
            raise CommandError(BAD_FIELD, "\"sha256\" must be 64 hex digits")
        _int(d, "size", 1, 0x7FFFFFFF)
        _str(d, "version", 1, 32)
        v = d.get("allow_downgrade")
        if v is not None and not isinstance(v, bool):
            raise CommandError(BAD_FIELD, "\"allow_downgrade\" must be true or false")
    return op
