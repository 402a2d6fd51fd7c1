#!/usr/bin/env python3
"""Write tests/vectors/protocol.json: the test vectors both interpreters run.

Expected bytes are built here from first principles (struct, sums, zlib,
RFC values), never by calling the codec, so the vectors check the codec
instead of restating it. Run: .venv/bin/python tools/gen_vectors.py
"""
import hashlib
import hmac
import json
import struct
import sys
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "protocol.json"
if len(sys.argv) > 1:  # another destination (the staleness test compares without rewriting)
    OUT = Path(sys.argv[1])


def frame(op, body=b""):
    length = len(body) + 1
    hdr = bytes([0xE7, op, length >> 8, length & 0xFF, (0xE7 + op + (length & 0xFF) + (length >> 8)) & 0xFF])
    f = hdr + bytes(body)
    return f + bytes([sum(f) & 0xFF])


def crc32c_ref(data, crc=0):
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def h(b):
    return bytes(b).hex()


V = []


def add(kind, **kw):
    kw["kind"] = kind
    V.append(kw)


# --- checksums -----------------------------------------------------------------
iscsi = bytes.fromhex("01c00000000000000000000000000000"
                      "14000000000004000000001400000018"
                      "28000000000000000200000000000000")
rfc3720 = [  # RFC 3720 B.4 check values
    (bytes(32), 0x8A9136AA), (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E), (bytes(range(31, -1, -1)), 0x113FDB5C),
    (iscsi, 0xD9963A56), (b"123456789", 0xE3069283), (b"", 0),
]
for data, crc in rfc3720:
    assert crc32c_ref(data) == crc
    add("crc32c", data=h(data), crc=crc, split=len(data) // 3)
for n in (1, 7, 255, 1024, 4096):
    data = bytes((i * 131 + 7) & 0xFF for i in range(n))
    add("crc32c", data=h(data), crc=crc32c_ref(data), split=n // 2)
for data in (b"123456789", b"", bytes(range(256)) * 4):
    add("crc32", data=h(data), crc=zlib.crc32(data) & 0xFFFFFFFF)
for data in (b"", b"\xff\x02", bytes(range(256))):
    add("sum8", data=h(data), sum=sum(data) & 0xFF)

# --- reference messages: make() and extract() ------------------------------------
note = b"test string"
msgs = [
    ("VersionRequest", [], 0x01, b"", {}),
    ("VersionResponse", [1, 0, 0, 1, 0, h(note)], 0x02, bytes([1, 0, 0, 1, 0]) + note + bytes(128 - len(note)),
     {"api_major": 1, "api_minor": 0, "bootloader_major": 0, "bootloader_minor": 1, "bootloader_build": 0,
      "note": h(note + bytes(128 - len(note)))}),
    ("UpdateStartRequest", [131072], 0x03, struct.pack("!I", 131072), {"image_size": 131072}),
    ("UpdateStartRequest", [0xFFFFFFFF], 0x03, struct.pack("!I", 0xFFFFFFFF), {"image_size": 0xFFFFFFFF}),
    ("UpdateStartResponse", [], 0x04, b"", {}),
    ("UpdateStopRequest", [0xCBF43926], 0x05, struct.pack("!I", 0xCBF43926), {"crc": 0xCBF43926}),
    # The response carries the CRC signed: an unsigned value >= 2**31 goes out negative.
    ("UpdateStopResponse", [0xCBF43926], 0x06, struct.pack("!i", 0xCBF43926 - 2**32), {"crc": 0xCBF43926 - 2**32}),
    ("UpdateStopResponse", [12345], 0x06, struct.pack("!i", 12345), {"crc": 12345}),
    ("UpdateStopResponse", [-1], 0x06, struct.pack("!i", -1), {"crc": -1}),
    ("WriteResponse", [], 0x08, b"", {}),
    ("ResetRequest", [], 0x09, b"", {}),
    ("ResetResponse", [], 0x0A, b"", {}),
    ("ReadAddressRequest", [0x08000000, 256], 0x0B, struct.pack("!II", 0x08000000, 256),
     {"address": 0x08000000, "length_to_read": 256}),
    ("ErrorResponse", [0], 0xFF, b"\x00", {"error": 0}),
    ("ErrorResponse", [1], 0xFF, b"\x01", {"error": 1}),
    ("ErrorResponse", [2], 0xFF, b"\x02", {"error": 2}),
    ("ErrorResponse", [9], 0xFF, b"\x09", {"error": 9}),
]
for data in (b"\x00", b"hello", bytes(range(256)) * 2, bytes((i * 7) & 0xFF for i in range(1024))):
    crc = zlib.crc32(data) & 0xFFFFFFFF
    msgs.append(("WriteRequest", [h(data)], 0x07, data + struct.pack("!I", crc),
                 {"payload": h(data), "data_crc": crc}))
for data in (b"", b"abc", bytes(range(256)) * 4):
    msgs.append(("ReadAddressResponse", [0, len(data), h(data)], 0x0C, data, {"data": h(data)}))
for cls, args, op, body, fields in msgs:
    f = frame(op, body)
    full = {"sync": 0xE7, "op_code": op, "length": len(body) + 1, "header_checksum": f[4], "checksum": f[-1]}
    full.update(fields)
    add("message", cls=cls, args=args, frame=h(f), fields=full)
add("header", frame=h(frame(0x01)[:5]), fields={"sync": 0xE7, "op_code": 1, "length": 1, "header_checksum": 0xE9})

# --- malformed reference frames: extract() raises AssertionError naming the fault --
good = frame(0x03, struct.pack("!I", 1000))
def mut(b, i, v):
    b = bytearray(b); b[i] = v; return bytes(b)
bad = [
    ("UpdateStartRequest", good[:7], "truncated"),
    ("UpdateStartRequest", good[:3], "truncated"),
    ("UpdateStartRequest", mut(good, 0, 0xE6), "sync"),
    ("UpdateStartRequest", mut(good, 4, good[4] ^ 1), "header checksum"),
    ("UpdateStartRequest", mut(good, 6, good[6] ^ 0x10), "message checksum"),
    ("UpdateStartRequest", mut(good, len(good) - 1, (good[-1] + 1) & 0xFF), "message checksum"),
    ("UpdateStopRequest", good, "opcode"),
    ("UpdateStartRequest", frame(0x03, struct.pack("!IB", 1000, 0)), "length"),
    ("UpdateStartRequest", good + b"\x00", "length"),
    ("VersionRequest", frame(0x01, b"\x00"), "length"),
    ("WriteRequest", frame(0x07, b"\x00\x00\x00\x00"), "payload"),
    ("WriteRequest", frame(0x07, bytes(1025) + struct.pack("!I", zlib.crc32(bytes(1025)))), "payload"),
    ("ErrorResponse", frame(0xFF, b""), "length"),
    ("ReadAddressResponse", frame(0x0B, b"abc"), "opcode"),
]
for cls, f, err in bad:
    add("bad_message", cls=cls, frame=h(f), error=err)
add("bad_make", cls="WriteRequest", args=[h(bytes(1025))], error="payload")
add("bad_make", cls="WriteRequest", args=[""], error="payload")
add("bad_make", cls="ReadAddressResponse", args=[0, 4, h(b"abc")], error="length_to_read")

# --- native frames ------------------------------------------------------------------
for off, data in ((0, b"hello"), (4096, bytes(range(256)) * 16), (0xFFFFF000, b"\x00")):
    body = struct.pack("!II", off, crc32c_ref(data)) + data
    add("native", fn="data", args=[off, h(data)], frame=h(frame(0x21, body)), fields=[off, crc32c_ref(data), h(data)])
    add("native", fn="read_data", args=[off, h(data)], frame=h(frame(0x24, body)),
        fields=[off, crc32c_ref(data), h(data)])
for acked in (0, 4096, 0xFFFFFFFF):
    add("native", fn="ack", args=[acked], frame=h(frame(0x22, struct.pack("!I", acked))), fields=acked)
for slot, off, ln in ((0, 0, 4096), (1, 123456, 1)):
    add("native", fn="read", args=[slot, off, ln], frame=h(frame(0x23, struct.pack("!BIH", slot, off, ln))),
        fields=[slot, off, ln])
flags = {0x04: 0x00, 0x01: 0x40, 0x13: 0xC0, 0x10: 0x00}
for code, fl in flags.items():
    body = struct.pack("!BBBII", 0x21, code, fl, 8192, 12288)
    add("native", fn="nerror", args=[0x21, code, 8192, 12288], frame=h(frame(0x2F, body)),
        fields=[0x21, code, fl, 8192, 12288])
add("native_bad", fn="ack", frame=h(frame(0x22, b"\x00\x00")), error=3)
add("native_bad", fn="ack", frame=h(frame(0x21, b"\x00\x00\x00\x00")), error=3)
add("native_bad", fn="data", frame=h(frame(0x21, b"\x00" * 8)), error=3)
add("native_bad", fn="read", frame=h(frame(0x23, b"\x00" * 6)), error=3)
add("native_bad", fn="nerror", frame=h(frame(0x2F, b"\x00" * 10)), error=3)

# --- error table ----------------------------------------------------------------------
table = [("unsupported", 0x40), ("incorrect_state", 0x40), ("write_failed", 0), ("bad_frame", 0),
         ("crc_mismatch", 0), ("bad_request", 0x40), ("too_large", 0x40), ("out_of_range", 0x40),
         ("no_space", 0x40), ("busy", 0), ("auth_required", 0x40), ("auth_failed", 0x40),
         ("verify_failed", 0), ("bad_image", 0x40), ("signature_invalid", 0x40),
         ("version_refused", 0x40), ("out_of_order", 0), ("timeout", 0), ("internal", 0xC0),
         ("flash_fault", 0xC0), ("no_memory", 0)]
for num, (name, fl) in enumerate(table):
    add("error_code", num=num, name=name, flags=fl, retry=not fl & 0x40, fatal=bool(fl & 0x80))

# --- JSON lines -----------------------------------------------------------------------
add("json_reply", id=1, fields={"pong": True, "uptime_ms": 5}, expect={"id": 1, "ok": True, "pong": True, "uptime_ms": 5})
add("json_reply", id=None, fields={}, expect={"ok": True})
add("json_reply", id="abc", fields={"slot": "b", "offset": 4096}, expect={"id": "abc", "ok": True, "slot": "b", "offset": 4096})
add("json_error", id=7, code=9, message="an update session is open on another connection",
    expect={"id": 7, "ok": False, "error": {"code": "busy", "num": 9,
            "message": "an update session is open on another connection", "retry": True, "fatal": False}})
add("json_error", id=None, code=0x13, message="flash unusable",
    expect={"ok": False, "error": {"code": "flash_fault", "num": 0x13, "message": "flash unusable",
                                   "retry": False, "fatal": True}})
for line, expect in ((b'{"op":"ping","id":1}', {"op": "ping", "id": 1}),
                     (b'{"op": "status"}', {"op": "status"}),
                     (b'{"op":"begin","id":"x","size":10,"sha256":"00"}', {"op": "begin", "id": "x", "size": 10, "sha256": "00"})):
    add("json_request", line=h(line), expect=expect)
for line, code in ((b'{"op":', 5), (b'{"id":1}', 5), (b'{"op":5}', 5), (b'[1,2]', 5), (b'{"op":"x","id":[1]}', 5),
                   (b"{" + b" " * 1100 + b"}", 6), (b'{"op":"\xff"}', 5)):
    add("json_request_bad", line=h(line), error=code)

# --- versions --------------------------------------------------------------------------
for s, t in (("1.2.3+4", [1, 2, 3, 4]), ("1.2", [1, 2, 0, 0]), ("0.0.0+0", [0, 0, 0, 0]),
             ("255.255.65535+4294967295", [255, 255, 65535, 4294967295]), ("7", [7, 0, 0, 0])):
    add("version", text=s, tuple=t)
for s in ("", "1.2.3.4", "a.b", "1..2", "256.0.0", "1.2.3+", "1.2.3+x", "-1.0"):
    add("version_bad", text=s)

# --- HMAC-SHA256 (RFC 4231 cases 1, 2, 3, 4, 6) and the auth MACs -----------------------------------
rfc4231 = [
    (b"\x0b" * 20, b"Hi There"),
    (b"Jefe", b"what do ya want for nothing?"),
    (b"\xaa" * 20, b"\xdd" * 50),
    (bytes(range(1, 26)), b"\xcd" * 50),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),
]
for key, msg in rfc4231:
    add("hmac", key=h(key), msg=h(msg), mac=hmac.new(key, msg, hashlib.sha256).hexdigest())
key, dev, dn, hn = bytes(range(32)), "e6614c31a7", bytes(range(16)), bytes(range(16, 32))
for role in ("host", "device"):
    msg = b"mpota-auth-v1|" + role.encode() + b"|" + dev.encode() + b"|" + dn + hn
    add("auth_mac", role=role, key=h(key), device=dev, dev_nonce=h(dn), host_nonce=h(hn),
        mac=hmac.new(key, msg, hashlib.sha256).hexdigest())

# --- session MACs (protocol.md 2.6): keys, then sealed messages in order --------------------
def sess_key(role):
    return hmac.new(key, b"mpota-session-v1|" + role + b"|" + dev.encode() + b"|" + dn + hn, hashlib.sha256).digest()


def seal_frame(k, seq, plain):
    n = len(plain)
    ln = n - 5 + 16
    hdr = bytes([0xE7, plain[1], ln >> 8, ln & 0xFF, (0xE7 + plain[1] + (ln & 0xFF) + (ln >> 8)) & 0xFF])
    msg = hdr + plain[5:n - 1]
    tag = hmac.new(k, struct.pack(">I", seq) + msg, hashlib.sha256).digest()[:16]
    return msg + tag + bytes([sum(msg + tag) & 0xFF])


def seal_line(k, seq, text):
    return text + b" " + hmac.new(k, struct.pack(">I", seq) + text, hashlib.sha256).hexdigest()[:32].encode() + b"\n"


k_host, k_dev = sess_key(b"host"), sess_key(b"device")
# what the device sends after the auth request below and what the host sends next, in order
sealed = [("device", 0, b'{"id": 2, "ok": true}\n', seal_line(k_dev, 0, b'{"id": 2, "ok": true}')),
          ("host", 0, b'{"op":"status","id":3}\n', seal_line(k_host, 0, b'{"op":"status","id":3}')),
          ("host", 1, f_data_plain := frame(0x21, struct.pack("!II", 0, crc32c_ref(b"hello")) + b"hello"),
           seal_frame(k_host, 1, f_data_plain)),
          ("device", 1, frame(0x22, struct.pack("!I", 5)), seal_frame(k_dev, 1, frame(0x22, struct.pack("!I", 5))))]
add("session", key=h(key), device=dev, dev_nonce=h(dn), host_nonce=h(hn), k_host=h(k_host), k_device=h(k_dev),
    messages=[{"from": who, "seq": seq, "plain": h(p), "sealed": h(x)} for who, seq, p, x in sealed])

# --- decoder streams: bytes in arbitrary pieces -> frames, lines, errors ---------------------
f_ver = frame(0x01)
f_data = frame(0x21, struct.pack("!II", 0, crc32c_ref(b"hello")) + b"hello")
big = frame(0x21, struct.pack("!II", 0, 0) + bytes(4096))
ping = b'{"op":"ping","id":1}'
def stream(name, data, events, chunks=(1, 3, 7, 64, 100000), max_frame=4110, max_line=1024):
    add("decoder", name=name, input=h(data), chunks=list(chunks), max_frame=max_frame, max_line=max_line,
        events=events)
F = lambda b: ["frame", h(b)]
L = lambda b: ["line", h(b)]
E = lambda code: ["error", code]
stream("frame", f_ver, [F(f_ver)])
stream("line", ping + b"\n", [L(ping)])
stream("crlf line", ping + b"\r\n", [L(ping)])
stream("mixed", f_ver + ping + b"\n" + f_data + b'{"op":"status"}\n', [F(f_ver), L(ping), F(f_data), L(b'{"op":"status"}')])
stream("full sector frame", big + f_ver, [F(big), F(f_ver)])
stream("blank lines skipped", b"\n\r\n  " + ping + b"\n\n", [L(ping)])
stream("garbage then frame", b"hello world" + f_ver, [E(3), F(f_ver)])
stream("garbage then line", b"\x00\x01\x02" + ping + b"\n", [E(3), L(ping)])
stream("bad header checksum resyncs", mut(f_ver, 4, 0) + f_ver, [E(3), E(3), F(f_ver)])
stream("bad message checksum", mut(f_data, len(f_data) - 1, 0) + f_ver, [E(3), F(f_ver)])
stream("lying length", frame(0x21, b"")[:2] + bytes([0xFF, 0xF0, (0xE7 + 0x21 + 0xF0 + 0xFF) & 0xFF]) + b"xyz" + f_ver,
       [E(6), E(3), F(f_ver)])
stream("zero length", bytes([0xE7, 0x01, 0, 0, 0xE8]) + f_ver, [E(3), E(3), F(f_ver)])
stream("frame over a small limit", big + f_ver, [E(6), E(3), F(f_ver)], max_frame=1034)
stream("line too long", b"{" + b"x" * 2000 + b"\n" + ping + b"\n", [E(6), L(ping)])
stream("line exactly at limit", b"{" + b"x" * 1022 + b"}\n", [L(b"{" + b"x" * 1022 + b"}")])
stream("line one over limit", b"{" + b"x" * 1023 + b"}\n" + ping + b"\n", [E(6), L(ping)])
stream("truncated frame waits", f_data[:-1], [])
stream("truncated line waits", ping, [])
stream("frame bytes inside a line", b'{"op":"x","s":"\xe7\x01"}\n', [L(b'{"op":"x","s":"\xe7\x01"}')])

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps({"comment": "generated by tools/gen_vectors.py; run by tests/vectors/run_vectors.py "
                                      "under CPython and MicroPython", "vectors": V}, indent=1) + "\n")
print("wrote %d vectors to %s" % (len(V), OUT))
