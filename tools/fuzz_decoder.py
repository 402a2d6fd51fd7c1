# Decoder fuzzer that runs unchanged under CPython and MicroPython:
#   python tools/fuzz_decoder.py [COUNT] [SEED]
#   micropython -X heapsize=64K tools/fuzz_decoder.py [COUNT] [SEED]
# Feeds COUNT inputs (random bytes, and valid streams of frames and lines with
# random mutations: flipped bits, cut, duplicated and inserted bytes) in random
# piece sizes, drains every event and checks the decoder's invariants: no
# exception escapes, events are well formed, the buffer never grows, and the
# heap in use stays flat. Prints one summary line; exits 1 on a violation.
import gc
import random
import struct
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/../shared")

# One module at a time with a collection in between, as the device imports:
# compiling from source needs transient heap, and at -X heapsize=64K the
# leftovers of one compile must not crowd out the next.
for _m in ("mpota_checksums", "mpota_framing", "mpota_proto", "mpota_hostframes"):
    gc.collect()
    __import__(_m)
gc.collect()
import mpota_checksums as checksums  # noqa: E402
import mpota_framing as framing  # noqa: E402
import mpota_lineproto as lineproto  # noqa: E402
import mpota_hostframes as hostframes  # noqa: E402

# Preallocated right after the imports, as the agent does: one contiguous
# buffer while the heap is still unfragmented.
gc.collect()
DEC = framing.StreamDecoder(lineproto.MAX_FRAME, lineproto.MAX_LINE)


def rand_bytes(n):
    return bytes(random.getrandbits(8) for _ in range(n))


def valid_stream():
    parts = []
    for _ in range(random.randint(1, 4)):
        r = random.randint(0, 4)
        if r == 0:
            parts.append(hostframes.encode_data(random.getrandbits(16), rand_bytes(random.randint(1, 300))))
        elif r == 1:
            parts.append(b'{"op":"ping","id":%d}\n' % random.getrandbits(10))
        elif r == 2:
            d = rand_bytes(random.randint(1, 64))  # a reference WriteRequest: data, CRC-32
            parts.append(hostframes.make_frame(0x07, d + struct.pack("!I", checksums.crc32(d))))
        elif r == 3:
            parts.append(hostframes.encode_ack(random.getrandbits(20)))
        else:
            parts.append(hostframes.make_frame(0x01, b""))  # a reference VersionRequest
    return b"".join(bytes(p) for p in parts)


def mutate(data):
    b = bytearray(data)
    for _ in range(random.randint(1, 4)):
        if not b:
            break
        r = random.randint(0, 4)
        i = random.randint(0, len(b) - 1)
        if r == 0:
            b[i] ^= 1 << random.randint(0, 7)
        elif r == 1:
            b = b[:i]
        elif r == 2:
            b = b[:i] + bytes([random.choice((0xE7, 0x7B, 0x0A, 0xFF, 0x00))]) + b[i:]
        elif r == 3:
            b[i] = random.getrandbits(8)
        else:
            b = b[:i] + b[i:i + random.randint(1, 16)] + b[i:]
    return bytes(b)


def heap_used():
    if hasattr(gc, "mem_alloc"):
        return gc.mem_alloc()
    import tracemalloc
    return tracemalloc.get_traced_memory()[0]


def main(count=100000, seed=1):
    random.seed(seed)
    if not hasattr(gc, "mem_alloc"):
        import tracemalloc
        tracemalloc.start()
    dec = DEC
    dec.reset()
    size = len(dec.buf)
    events = [0, 0, 0, 0]
    nbytes = 0
    base = None
    peak = 0
    for n in range(count):
        kind = n % 3
        if kind == 0:
            data = rand_bytes(random.randint(0, 64))
        elif kind == 1:
            data = mutate(valid_stream())
        else:
            data = valid_stream()
        nbytes += len(data)
        i = 0
        while i < len(data):
            sp = dec.space()
            k = min(len(sp), random.randint(1, 97), len(data) - i)
            sp[:k] = data[i:i + k]
            dec.advance(k)
            i += k
            while True:
                ev = dec.next()
                if ev is None:
                    break
                t, v = ev
                events[t] += 1
                if t == framing.K_FRAME:
                    if framing.check_frame(v) is not None:
                        print("VIOLATION: invalid frame emitted: %s" % framing.check_frame(v))
                        return 1
                elif t == framing.K_LINE:
                    if len(v) > lineproto.MAX_LINE or v[0] != 0x7B:
                        print("VIOLATION: bad line emitted")
                        return 1
                elif not (isinstance(v[0], int) and isinstance(v[1], str)):
                    print("VIOLATION: malformed error event")
                    return 1
        if kind == 2 and dec.pending():
            # A valid stream must leave nothing behind... unless garbage from
            # a previous input left a partial message that swallowed it;
            # start clean so every valid stream is judged on its own.
            dec.reset()
        if len(dec.buf) != size:
            print("VIOLATION: decoder buffer grew to %d" % len(dec.buf))
            return 1
        if n % 5000 == 4999:
            gc.collect()
            used = heap_used()
            if base is None:
                base = used
            peak = max(peak, used)
    growth = peak - base if base is not None else 0
    print("%s: fuzzed %d inputs (%d bytes): %d frames, %d lines, %d errors; heap growth %d bytes" % (
        sys.implementation.name, count, nbytes, events[1], events[2], events[3], growth))
    if growth > 16384:
        print("VIOLATION: heap grew by %d bytes" % growth)
        return 1
    return 0


if __name__ == "__main__":
    c = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    s = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    sys.exit(main(c, s))
