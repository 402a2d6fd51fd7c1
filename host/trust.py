"""The image-signing keys a device trusts, and changes to them over the network:
what `mpota trust` runs (docs/security.md, "Key lifecycle").

    st = await listing(client)                              {"keys": [fingerprint, ...], "seq": N, ...}
    st = await provision(client, key)                       the first key of a device that trusts none
    st = await change(client, "add", new_key, signed_by)    a statement signed by a trusted key
    st = await change(client, "drop", old_key, signed_by, seq=7)

`client` is an authenticated client.Client; keys are key files or imgtool keys
(keys.py). Every call returns the device's trust summary after it: "keys" (the
fingerprints, keys.fingerprint()), "seq" (the last change applied),
"signed_images" and "warning". The device checks everything (signature,
sequence number, last key); nothing here decides for it.
"""
from __future__ import annotations

from typing import Optional

from . import keys


async def listing(client) -> dict:
    return _summary(await client.request("trust"))


async def provision(client, key) -> dict:
    """Trust `key` (its public half) on a device that trusts no key yet."""
    return _summary(await client.request("trust", provision=keys.public_raw(key).hex()))


async def change(client, op: str, key, signed_by, seq: Optional[int] = None) -> dict:
    """Apply a key change ("add" or "drop" `key`) signed by the private key
    `signed_by`, which the device must trust. `seq`: the statement's sequence
    number (default: one above the device's last change); the device refuses
    one it has seen (replay)."""
    if seq is None:
        seq = int((await listing(client)).get("seq", 0)) + 1
    stmt = keys.key_change(signed_by, op, key, seq)
    return _summary(await client.request("trust", change=stmt))


def _summary(reply: dict) -> dict:
    return {k: v for k, v in reply.items() if k not in ("id", "ok")}
