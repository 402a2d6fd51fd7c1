#!/usr/bin/env python3
"""Tamper with a signed image as an attacker would: change one byte of its body and
recompute the SHA-256 TLV, so that the image is intact by its hash and only the
signature can tell (issue 8's first attack). For tests and `make demo`.

    python tools/tamper.py IN.img OUT.img [OFFSET]    OFFSET: into the body (default 100)
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "shared") not in sys.path:
    sys.path.insert(0, str(REPO / "shared"))
from mpota.codec import mpota_mcuboot as mcuboot  # noqa: E402  (the codec's parser, the one the device runs)


def tamper(image: bytes, offset: int = 100) -> bytes:
    """`image` with body byte `offset` flipped and its SHA-256 TLV made to match."""
    info = mcuboot.verify(bytes(image))
    data = bytearray(image)
    data[info["hdr_size"] + offset] ^= 0xFF
    hashed_end = info["tlv_off"] + info["protect_tlv_size"]  # header, body, protected TLVs
    at = bytes(data).index(info["sha256"], hashed_end)
    data[at:at + 32] = hashlib.sha256(bytes(data[:hashed_end])).digest()
    mcuboot.verify(bytes(data))  # the hash holds: only a signature check can refuse it
    return bytes(data)


def main(argv) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 1
    src, dst = Path(argv[0]), Path(argv[1])
    dst.write_bytes(tamper(src.read_bytes(), int(argv[2]) if len(argv) == 3 else 100))
    print("tamper: %s -> %s (one body byte changed, SHA-256 TLV recomputed)" % (src, dst))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
