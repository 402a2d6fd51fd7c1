# trust: which image-signing keys the device trusts, and the checks that use
# them: an image's Ed25519 signature (imgtool's), its security counter
# against the anti-rollback floor, and signed changes of the key set
# (rotation). Loaded when an image is committed or booted, or a key changes;
# the verifier (ed25519.py) only for the signature itself. docs/security.md.
#
# The trust store /mpota_trust.json: {"seq": N, "keys": ["<64 hex>", ...]},
# raw 32-byte Ed25519 public keys. No file (or no key in it): the device keeps the
# old behaviour (unsigned images boot) and says so. A file that cannot be
# read fails closed: every image is refused until it is repaired over USB.
#
# imgtool (non-pure mode) signs the SHA-256 of header + body + protected TLVs,
# the digest that mcuboot.verify() has checked against the image, and names
# the key by KEYHASH = sha256(the key's SubjectPublicKeyInfo DER). The
# protected TLVs (the security counter among them) are inside that digest.
#
# Changes to the store (provisioning, signed rotation) are in trustkeys.py,
# loaded only when a key changes.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ubinascii as binascii
    import uhashlib as hashlib
    import ujson as json
except ImportError:  # CPython (tests/test_trust.py, test_ed25519.py)
    import binascii
    import hashlib
    import json
import sys

from mpota_lineproto import ProtoError, E_SIGNATURE_INVALID, E_BAD_REQUEST

# The anti-rollback rules live with the record's floor in slots.py (resident:
# commit and boot check them without loading this module); named here too.
from mpota_slots import TRUST_PATH, NO_KEY_WARNING, counter, check_counter, raised_floor  # noqa: F401

TLV_ED25519 = 0x24
SPKI_PREFIX = b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00"  # DER SubjectPublicKeyInfo, Ed25519


def key_id(pub):
    """imgtool's KEYHASH of a raw public key: sha256 of its SPKI DER (32 bytes)."""
    return hashlib.sha256(SPKI_PREFIX + bytes(pub)).digest()


def hexstr(b):
    return binascii.hexlify(b).decode()


def unhex(s, n, what):
    try:
        b = binascii.unhexlify(s)
    except (TypeError, ValueError):
        b = b""
    if len(b) != n:
        raise ProtoError(E_BAD_REQUEST, "%s must be %d hex digits" % (what, 2 * n))
    return b


def load(path=TRUST_PATH):
    """The store: {"seq": int, "keys": [32-byte keys], "error": None or why it is unusable}."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except OSError:
        return {"seq": 0, "keys": [], "error": None}
    except ValueError as e:
        return {"seq": 0, "keys": [], "error": "%s is not JSON (%s)" % (path, e)}
    try:
        keys = [unhex(k, 32, "a key") for k in rec["keys"]]
        seq = int(rec.get("seq", 0))
    except (KeyError, TypeError, ValueError, ProtoError) as e:
        return {"seq": 0, "keys": [], "error": "%s is malformed (%s)" % (path, getattr(e, "message", e))}
    return {"seq": seq, "keys": keys, "error": None}


def enforced(t):
    """True when images must be signed (a key is trusted, or the store is unusable)."""
    return bool(t["keys"]) or t["error"] is not None


def describe(t):
    """For an authenticated status: how images are checked."""
    if t["error"]:
        return {"signed_images": True, "keys": [], "warning": "trust store unusable: %s; every image is refused"
                % t["error"]}
    if not t["keys"]:
        return {"signed_images": False, "keys": [], "warning": NO_KEY_WARNING}
    return {"signed_images": True, "keys": fingerprints(t), "warning": None}


def fingerprint(kid):
    """How a key is named to people: the first 8 bytes of its key id (imgtool's
    KEYHASH), in hex; host/keys.py's fingerprint() is the same."""
    return hexstr(kid[:8])


def fingerprints(t):
    return [fingerprint(key_id(k)) for k in t["keys"]]


def summary(t):
    """The status op's "trust": describe() and the sequence number of the last
    key change (the next statement needs a higher one)."""
    r = describe(t)
    r["seq"] = t["seq"]
    return r


def _not_trusted(t, kid):
    return ProtoError(E_SIGNATURE_INVALID, "the image is signed by key %s, which this device does not trust "
                      "(it trusts %s)" % (fingerprint(kid) if kid else "(no key hash TLV)",
                                          ", ".join(fingerprints(t)) or "no key"))


def _unsigned():
    return ProtoError(E_SIGNATURE_INVALID, "the image is not signed: this device accepts only images "
                      "signed by a trusted Ed25519 key (imgtool sign -k KEY)")


def check_signer(t, kid):
    """At `begin`, before any byte is sent: the host names the image's key id
    (32 bytes; empty: the image is unsigned). Raises ProtoError
    (signature_invalid) for an image commit would refuse for its key alone;
    commit still checks the signature itself."""
    if not enforced(t):
        return
    if t["error"]:
        raise ProtoError(E_SIGNATURE_INVALID, "trust store unusable: %s" % t["error"])
    if not kid:
        raise _unsigned()
    if find_key(t, kid) is None:
        raise _not_trusted(t, kid)


def verify_signature(pub, msg, sig):
    # the verifier is loaded for this call only (about 6 KB of heap on a 32-bit build)
    import mpota_ed25519 as ed25519

    try:
        return ed25519.verify(pub, msg, sig)
    finally:
        sys.modules.pop("mpota_ed25519", None)


def find_key(t, kid):
    for k in t["keys"]:
        if key_id(k) == kid:
            return k
    return None


def check_image(info, t):
    """After mcuboot.verify(): -> the signer's key id (32 bytes), or None when
    no key is trusted (the caller reports that loudly). Raises ProtoError
    (signature_invalid) for an unsigned image, another signature type, an
    unknown key or a signature that does not verify."""
    if not enforced(t):
        return None
    if t["error"]:
        raise ProtoError(E_SIGNATURE_INVALID, "trust store unusable: %s" % t["error"])
    if info.get("sig_type") is None:
        raise _unsigned()
    if info["sig_type"] != TLV_ED25519:
        raise ProtoError(E_SIGNATURE_INVALID, "the image is signed with TLV 0x%02x; only Ed25519 (0x24) is "
                         "accepted" % info["sig_type"])
    kid = info.get("keyhash")
    pub = find_key(t, kid) if kid else None
    if pub is None:
        raise _not_trusted(t, kid)
    if not verify_signature(pub, info["sha256"], info["signature"]):
        raise ProtoError(E_SIGNATURE_INVALID, "the Ed25519 signature does not match the image: it was "
                         "altered after signing")
    return kid


def check_boot(t, signer_hex, rec_sha_hex, info):
    """At boot, from the cached result: the slot record's sha256 (verified at
    commit) must be the image's (mcuboot.verify recomputed it) and its signer
    must still be trusted. Raises ProtoError; no signature math."""
    if not enforced(t):
        return
    if t["error"]:
        raise ProtoError(E_SIGNATURE_INVALID, "trust store unusable: %s" % t["error"])
    if not signer_hex or rec_sha_hex != hexstr(info["sha256"]):
        raise ProtoError(E_SIGNATURE_INVALID, "the image's signature was not verified at commit")
    if find_key(t, binascii.unhexlify(signer_hex)) is None:
        raise ProtoError(E_SIGNATURE_INVALID, "the image was signed by key %s, which is no longer trusted"
                         % signer_hex[:16])


