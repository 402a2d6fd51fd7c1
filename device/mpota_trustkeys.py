# trustkeys: changes to the device's trust store (trust.py): the first key
# (provisioning, by an authenticated operator or over USB) and key changes
# signed by a key the device already trusts (rotation). Loaded only when a
# key changes; docs/security.md.
#
# A statement signs
#   "mpota-trust-v1\0" + op ("+" add / "-" drop) + seq (u32 LE) + key (32 B)
# and seq must exceed the store's, so an old statement cannot be replayed.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ujson as json
    import uos as os
    import ustruct as struct
except ImportError:  # CPython (tests/test_trust.py, test_ed25519.py)
    import json
    import os
    import struct

from mpota_lineproto import ProtoError, E_SIGNATURE_INVALID, E_BAD_REQUEST, E_INCORRECT_STATE, E_AUTH_REQUIRED, field
from mpota_trust import TRUST_PATH, key_id, find_key, verify_signature, hexstr, unhex, load, summary

MAX_KEYS = 4
STATEMENT_MAGIC = b"mpota-trust-v1\x00"


def save(t, path=TRUST_PATH):
    """Write the store: a new file, closed (synced), then one atomic rename over
    the old one (littlefs and POSIX), as slots.write_record does: a power cut
    at any instant leaves the old store or the new one, never none. A torn
    .new file is never read (load() reads only `path`) and the next save
    truncates it."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump({"seq": t["seq"], "keys": [hexstr(k) for k in t["keys"]]}, f)
    os.rename(tmp, path)


def statement_bytes(op, key, seq):
    """What a key-change statement signs (the host builds the same bytes)."""
    return STATEMENT_MAGIC + op.encode() + struct.pack("<I", seq) + bytes(key)


def provision(t, key, path=TRUST_PATH):
    """Install the FIRST key (raw 32 bytes) into an empty store; later keys need
    a signed statement. The caller has authenticated the operator."""
    if t["keys"] or t["error"]:
        raise ProtoError(E_INCORRECT_STATE, "keys are already trusted: add one with a statement signed "
                         "by a trusted key")
    key = bytes(key)
    if len(key) != 32:
        raise ProtoError(E_BAD_REQUEST, "an Ed25519 public key is 32 bytes")
    t = {"seq": t["seq"], "keys": [key], "error": None}
    save(t, path)
    return t


def apply(t, stmt, in_use=(), path=TRUST_PATH):
    """Apply a key change {"op": "add"|"drop", "key": hex, "seq": int, "signer":
    hex key id, "sig": hex} signed by a trusted key. `in_use`: key ids (bytes)
    that sign the active confirmed image, which cannot be dropped. Returns the
    new store (saved)."""
    if t["error"] or not t["keys"]:
        raise ProtoError(E_INCORRECT_STATE, "no trusted key to sign a change: provision one first")
    op = {"add": "+", "drop": "-"}.get(stmt.get("op"))
    if op is None:
        raise ProtoError(E_BAD_REQUEST, "\"op\" must be \"add\" or \"drop\"")
    key = unhex(stmt.get("key"), 32, "\"key\"")
    seq = stmt.get("seq")
    if not isinstance(seq, int) or not t["seq"] < seq < 1 << 32:
        raise ProtoError(E_BAD_REQUEST, "\"seq\" must be an integer above %d (the last change)" % t["seq"])
    signer = find_key(t, unhex(stmt.get("signer"), 32, "\"signer\""))
    sig = unhex(stmt.get("sig"), 64, "\"sig\"")
    if signer is None or not verify_signature(signer, statement_bytes(op, key, seq), sig):
        raise ProtoError(E_SIGNATURE_INVALID, "the key change is not signed by a trusted key")
    keys = list(t["keys"])
    if op == "+":
        if key in keys:
            raise ProtoError(E_INCORRECT_STATE, "the key is already trusted")
        if len(keys) >= MAX_KEYS:
            raise ProtoError(E_INCORRECT_STATE, "%d keys are trusted already: drop one first" % MAX_KEYS)
        keys.append(key)
    else:
        if key not in keys:
            raise ProtoError(E_INCORRECT_STATE, "the key is not trusted")
        if len(keys) == 1:
            raise ProtoError(E_INCORRECT_STATE, "the last trusted key cannot be dropped")
        if key_id(key) in in_use:
            raise ProtoError(E_INCORRECT_STATE, "the running image is signed by this key: push an image "
                             "signed by another trusted key first")
        keys.remove(key)
    t = {"seq": seq, "keys": keys, "error": None}
    save(t, path)
    return t


def in_use(dev):
    """Key ids (bytes) that signed the active confirmed image and the running
    one (their slot records' "signer", cached at commit)."""
    import mpota_slots as slots
    slots.attach(dev)
    sl = dev.sl
    r = []
    for i in (sl.active(), dev.running):
        s = None if i is None else sl.slot(i).get("signer")
        if s:
            r.append(unhex(s, 32, "a slot's signer"))
    return r


def op_trust(dev, c, req):
    """The `trust` op: {"provision": "<64 hex>"} installs the first key of an
    empty store; {"change": statement} applies a signed add/drop (apply());
    with neither it only lists. Changes need an authenticated session (auth
    on: dispatch.route lets only authenticated peers here). -> trust.summary()."""
    pk = field(req, "provision", str)
    st = field(req, "change", dict)
    if pk is not None and st is not None:
        raise ProtoError(E_BAD_REQUEST, "give \"provision\" or \"change\", not both")
    t = load()
    if pk is not None or st is not None:
        if not dev.auth_on:
            raise ProtoError(E_AUTH_REQUIRED, "this device has auth off: trust changes need an "
                             "authenticated session (turn auth on, or change /mpota_trust.json over USB)")
        if pk is not None:
            t = provision(t, unhex(pk, 32, "\"provision\""))
        else:
            t = apply(t, st, in_use(dev))
        dev.trust = summary(t)  # status shows the new list
    return summary(t)
