# The whole codec, compiled from source, on a board-sized heap:
#   micropython -X heapsize=64K tests/codec/heap_smoke.py
# Imports every shared/ module one at a time (as the device does), then
# exercises each: every reference message made and extracted, the stream
# decoder over a mixed stream, native frames, CRC-32C, HMAC, JSON replies.
# Prints one line with the count of checks and the heap; exits 1 on failure.
import gc
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/../../shared")
for _m in ("mpota_checksums", "mpota_framing", "mpota_lineproto", "mpota_proto", "mpota_hmac_sha256",
           "mpota_hostframes", "bootloader_messages"):
    gc.collect()
    __import__(_m)
gc.collect()

import bootloader_messages as bm  # noqa: E402
import mpota_checksums as checksums  # noqa: E402
import mpota_hostframes as hostframes  # noqa: E402
import mpota_framing as framing  # noqa: E402
import mpota_hmac_sha256 as hmac_sha256  # noqa: E402
import mpota_lineproto as lineproto  # noqa: E402
import mpota_proto as proto  # noqa: E402

# Preallocate the receive buffer first, as the agent does at start-up.
dec = framing.StreamDecoder(lineproto.MAX_FRAME, lineproto.MAX_LINE)
checks = 0


def ok(cond, what):
    global checks
    if not cond:
        print("FAIL: " + what)
        sys.exit(1)
    checks += 1


ok(checksums.crc32c(b"123456789") == 0xE3069283, "crc32c check value")
ok(checksums.crc32(b"123456789") == 0xCBF43926, "crc32 check value")
ok(hmac_sha256.hmac_sha256(b"Jefe", b"what do ya want for nothing?")[:4] == b"\x5b\xdc\xc1\x46", "hmac rfc4231")
made = [
    bm.VersionRequest.make(), bm.VersionResponse.make(1, 0, 0, 1, 0, b"note"),
    bm.UpdateStartRequest.make(image_size=4096), bm.UpdateStartResponse.make(),
    bm.UpdateStopRequest.make(crc=0xCBF43926), bm.UpdateStopResponse.make(0xCBF43926),
    bm.WriteRequest.make(b"x" * 1024), bm.WriteResponse.make(), bm.ResetRequest.make(),
    bm.ResetResponse.make(), bm.ReadAddressRequest.make(address=0, length_to_read=256),
    bm.ReadAddressResponse.make(0, 3, b"abc"), bm.ErrorResponse.make(bm.ErrorResponse.WriteFailed),
]
for f in made:
    cls = bm.MESSAGES[f[1]]
    t = cls.extract(f)
    ok(t.op_code == cls.OpCode and framing.check_frame(f) is None, "round trip 0x%02X" % f[1])
ok(bm.UpdateStopResponse.extract(made[5]).crc == 0xCBF43926 - 0x100000000, "signed crc")
stream = bytearray(b"junk")
for f in made:
    stream += f
stream += b'{"op":"ping","id":1}\n' + hostframes.encode_data(0, b"hello")
kinds = []
for i in range(0, len(stream), 97):  # arbitrary pieces, through the zero-copy path
    piece = stream[i:i + 97]
    sp = dec.space()
    sp[:len(piece)] = piece
    dec.advance(len(piece))
    while True:
        ev = dec.next()
        if ev is None:
            break
        kinds.append(ev[0])
ok(kinds == [framing.K_ERROR] + [framing.K_FRAME] * len(made) + [framing.K_LINE, framing.K_FRAME], "decoder events")
ok(lineproto.parse_request(b'{"op":"ping","id":1}')["op"] == "ping", "json request")
ok(b'"busy"' in lineproto.error_line(1, lineproto.E_BUSY, "x"), "json error")
buf = bytearray(32)
ok(hostframes.parse_ack(buf[:proto.ack_into(buf, 4096)]) == 4096, "ack_into")
gc.collect()
print("codec from source at this heap: %d checks passed, mem_alloc %d, mem_free %d"
      % (checks, gc.mem_alloc(), gc.mem_free()))
