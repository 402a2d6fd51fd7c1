"""Image-signing keys: Ed25519 in imgtool's format (PEM, PKCS#8), and what the
device needs of them (docs/security.md).

    keygen(path, password=None) -> imgtool key     a new key file, mode 0600, never overwritten
    load(path, password=None) -> imgtool key       private or public PEM (imgtool.keys.load)
    public_raw(key) -> 32 bytes                    the public half the device stores
    key_id(key) -> 32 bytes                        sha256 of the SPKI DER: imgtool's KEYHASH TLV
    fingerprint(key) -> str                        how people see it: key_id's first 8 bytes, hex
                                                   (the device's status "trust" shows the same)
    trust_file(keys, seq=0) -> bytes               a /mpota_trust.json trusting these keys
    key_change(signer, op, new_key, seq) -> dict   a statement the device applies ("add"/"drop"),
                                                   signed by a key it already trusts

`key` arguments take an imgtool key object or a key file path. Nothing here
prints or returns private key material.
"""
import hashlib
import json
import os
import struct
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from .errors import UsageError

# The device's constants (device/mpota_trust.py): the same bytes on both sides.
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
STATEMENT_MAGIC = b"mpota-trust-v1\x00"
OPS = {"add": "+", "drop": "-"}


class KeyFileError(UsageError):
    """A key file that cannot be used (missing, encrypted, not Ed25519, exists)."""


def _imgtool_keys():
    from imgtool import keys

    return keys


def keygen(path, password=None):
    """Make a new Ed25519 key file (as `imgtool keygen -t ed25519`) with mode 0600.
    Refuses to overwrite an existing file."""
    keys = _imgtool_keys()
    key = keys.Ed25519.generate()
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    pem = key.key.private_bytes(encoding=serialization.Encoding.PEM,
                                format=serialization.PrivateFormat.PKCS8, encryption_algorithm=enc)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError("%s exists: refusing to overwrite a key" % path) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load(path, password=None):
    """An imgtool Ed25519 key (private or public) from a PEM file."""
    keys = _imgtool_keys()
    if not Path(path).is_file():
        raise KeyFileError("no key file %s" % path)
    try:
        key = keys.load(str(path), password)
    except Exception as e:  # cryptography's and imgtool's errors alike
        raise KeyFileError("cannot load %s: %s" % (path, e)) from None
    if key is None:
        raise KeyFileError("%s is encrypted: give its password" % path)
    if not isinstance(key, keys.Ed25519Public):
        raise KeyFileError("%s is a %s key; mpota devices verify Ed25519 only" % (path, type(key).__name__))
    return key


def _key(key):
    return load(key) if isinstance(key, (str, os.PathLike)) else key


def public_raw(key):
    """The 32-byte public key (the device's trust store holds these)."""
    der = _key(key).get_public_bytes()  # SubjectPublicKeyInfo DER, as imgtool embeds it
    if len(der) != 44 or der[:12] != SPKI_PREFIX:
        raise KeyFileError("not an Ed25519 public key")
    return der[12:]


def key_id(key):
    """imgtool's KEYHASH of the key: what images signed by it name."""
    return hashlib.sha256(_key(key).get_public_bytes()).digest()


def fingerprint(key) -> str:
    """The key's fingerprint: the first 8 bytes of its key id in hex, as the
    device names its trusted keys (device/mpota_trust.py fingerprint()).
    `key`: a key, a key file, or a key id (32 bytes)."""
    kid = bytes(key) if isinstance(key, (bytes, bytearray)) else key_id(key)
    return kid[:8].hex()


def trust_file(keys, seq=0):
    """The content of /mpota_trust.json trusting `keys` (for USB provisioning)."""
    return (json.dumps({"seq": seq, "keys": [public_raw(k).hex() for k in keys]}) + "\n").encode()


def statement_bytes(op, key_raw, seq):
    return STATEMENT_MAGIC + OPS[op].encode() + struct.pack("<I", seq) + bytes(key_raw)


def key_change(signer, op, new_key, seq):
    """A key-change statement: `op` "add" (trust new_key) or "drop" (stop trusting
    it), signed by `signer` (a private key the device trusts). `seq` must exceed
    the device's last applied change (its store's seq): 1 for the first change."""
    if op not in OPS:
        raise ValueError("op must be 'add' or 'drop'")
    if not 0 < seq < 1 << 32:
        raise ValueError("seq must be in 1..2^32-1")
    signer = _key(signer)
    if not hasattr(signer, "sign_digest"):
        raise KeyFileError("the signer must be a private key")
    raw = public_raw(new_key) if not isinstance(new_key, (bytes, bytearray)) else bytes(new_key)
    if len(raw) != 32:
        raise ValueError("a raw Ed25519 public key is 32 bytes")
    sig = signer.sign_digest(statement_bytes(op, raw, seq))  # Ed25519 over the message itself
    return {"op": op, "key": raw.hex(), "seq": seq, "signer": key_id(signer).hex(), "sig": sig.hex()}
