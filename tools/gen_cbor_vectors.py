#!/usr/bin/env python3
"""Write tests/vectors/cbor.json: the CBOR vectors both interpreters run
against shared/mpota_cbor.py (tests/vectors/run_cbor_vectors.py).

Expected bytes come from cbor2 (canonical=True), an independent CBOR
implementation, from RFC 8949 Appendix A, and from the `smp` package's own
request encodings (what smpclient puts on the wire) -- never from the codec
under test. Values are JSON, with bytes written as {"$b": "hex"}.
Run: .venv/bin/python tools/gen_cbor_vectors.py [OUT]
"""
import hashlib
import json
import sys
from pathlib import Path

import cbor2

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "cbor.json"
if len(sys.argv) > 1:  # another destination (the staleness test compares without rewriting)
    OUT = Path(sys.argv[1])

V = []


def js(v):
    """A CBOR value as JSON (bytes tagged)."""
    if isinstance(v, (bytes, bytearray)):
        return {"$b": bytes(v).hex()}
    if isinstance(v, dict):
        return {k: js(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [js(x) for x in v]
    return v


def both(value):
    """Encode and decode: the codec must write exactly cbor2's canonical bytes."""
    V.append({"kind": "cbor", "value": js(value), "cbor": cbor2.dumps(value, canonical=True).hex()})


def decode(hexstr, value, tagged=False):
    """Decode only (forms the encoder never writes: indefinite, non-minimal, tagged)."""
    if not tagged:  # cbor2 turns tags into objects; the codec keeps the tagged item
        assert cbor2.loads(bytes.fromhex(hexstr)) == value, hexstr
    V.append({"kind": "cbor_decode", "cbor": hexstr, "value": js(value)})


def bad(hexstr, why):
    V.append({"kind": "cbor_bad", "cbor": hexstr, "why": why})


# --- scalars: every head size, both signs, the edges --------------------------------
for n in (0, 1, 10, 23, 24, 25, 100, 255, 256, 1000, 65535, 65536, 1000000, 2**32 - 1, 2**32,
          1000000000000, 2**64 - 1):
    both(n)
for n in (-1, -10, -24, -25, -100, -256, -257, -1000, -65536, -65537, -(2**32), -(2**32) - 1, -(2**64)):
    both(n)
for v in (True, False, None, "", "a", "IETF", "\"\\", "\u00fc", "\u6c34", "x" * 23, "y" * 24, "z" * 300,
          b"", b"\x01\x02\x03\x04", bytes(range(256)), b"\xaa" * 1500):
    both(v)

# --- containers ----------------------------------------------------------------------
both([])
both([1, [2, 3], [4, 5]])
both(list(range(1, 26)))
both({})
both({"a": 1, "b": [2, 3]})
both(["a", {"b": "c"}])
both({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"})
both({"off": 0, "len": 12345, "image": 0, "data": b"\x96\xf3\xb8\x3d" + bytes(28),
      "sha": hashlib.sha256(b"x").digest(), "upgrade": False})
both({"err": {"group": 1, "rc": 27}})
both({"images": [{"image": 0, "slot": 0, "version": "1.0.0", "hash": bytes(range(32)),
                  "bootable": True, "pending": False, "confirmed": True, "active": True,
                  "permanent": False},
                 {"image": 0, "slot": 1, "version": "2.0.0.7", "hash": bytes(range(32, 64)),
                  "bootable": True, "pending": True, "confirmed": False, "active": False,
                  "permanent": False}], "splitStatus": 0})
both({"buf_size": 1472, "buf_count": 1})
both({"r": "hello, mpota"})
both({"rc": 8})

# --- decode-only: RFC 8949 Appendix A forms the encoder never writes --------------------
decode("9fff", [])
decode("9f018202039f0405ffff", [1, [2, 3], [4, 5]])
decode("9f01820203820405ff", [1, [2, 3], [4, 5]])
decode("83018202039f0405ff", [1, [2, 3], [4, 5]])
decode("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]})
decode("826161bf61626163ff", ["a", {"b": "c"}])
decode("bf6346756ef563416d7421ff", {"Fun": True, "Amt": -2})
decode("1817", 23)  # non-minimal head
decode("1a00000017", 23)
decode("f7", None, True)  # undefined (cbor2: its own sentinel)
decode("c074323031332d30332d32315432303a30343a30305a", "2013-03-21T20:04:00Z", True)  # tag 0: item kept
decode("d82076687474703a2f2f7777772e6578616d706c652e636f6d", "http://www.example.com", True)
decode("a2616101616102", {"a": 2})  # a duplicate key: the last one wins

# --- what smpclient sends (the smp package's own encoder, indefinite maps included) ----
try:
    from smp import image_management as smpimg
    from smp import os_management as smpos

    img = bytes(range(256)) * 5
    reqs = [
        smpos.EchoWriteRequest(d="Hello, World!"),
        smpos.MCUMgrParametersReadRequest(),
        smpos.ResetWriteRequest(),
        smpimg.ImageStatesReadRequest(),
        smpimg.ImageStatesWriteRequest(hash=hashlib.sha256(b"img").digest(), confirm=False),
        smpimg.ImageStatesWriteRequest(confirm=True),
        smpimg.ImageUploadWriteRequest(off=0, data=img[:700], image=0, len=len(img),
                                       sha=hashlib.sha256(img).digest(), upgrade=False),
        smpimg.ImageUploadWriteRequest(off=700, data=img[700:]),
        smpimg.ImageEraseRequest(slot=1),
        smpimg.ImageEraseRequest(),
    ]
    for r in reqs:
        body = bytes(r)[8:]
        V.append({"kind": "cbor_decode", "cbor": body.hex(), "value": js(cbor2.loads(body)),
                  "note": type(r).__name__})
except ImportError:  # smp is pinned in requirements.txt; keep the vectors file stable without it
    raise SystemExit("gen_cbor_vectors: the smp package is needed (make setup)")

# --- malformed input: every one refused with CBORError ---------------------------------
bad("", "empty")
bad("18", "truncated argument")
bad("1a0000", "truncated argument")
bad("43010203ff", "trailing byte")
bad("4401", "truncated byte string")
bad("62c3", "truncated text")
bad("62c328", "invalid UTF-8")
bad("8301", "truncated array")
bad("a1", "truncated map")
bad("a16161", "map without value")
bad("9f01", "unterminated indefinite array")
bad("bf6161", "unterminated indefinite map")
bad("5f4101ff", "indefinite byte string (not supported)")
bad("f93c00", "half float (not supported)")
bad("fb3ff199999999999a", "double (not supported)")
bad("1c", "reserved additional info")
bad("ff", "lone break")
bad("81" * 9 + "00", "nested deeper than 8")
bad("a1800100", "array as a map key")

with open(OUT, "w") as f:
    json.dump({"comment": "generated by tools/gen_cbor_vectors.py; run by tests/vectors/run_cbor_vectors.py "
               "under CPython and MicroPython", "vectors": V}, f, indent=1)
    f.write("\n")
print("wrote %d vectors to %s" % (len(V), OUT))
