# Runs tests/vectors/cbor.json against shared/mpota_cbor.py, under CPython and under
# the unix-port MicroPython alike:
#   python tests/vectors/run_cbor_vectors.py      micropython tests/vectors/run_cbor_vectors.py
# Prints "<impl>: N cbor vectors passed, M failed" and exits 1 on any failure.
import json
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/../../shared")

import binascii  # noqa: E402

import mpota_cbor as cbor  # noqa: E402


def value(j):
    # JSON -> the value cbor.loads(views=False) gives ({"$b": hex} is bytes)
    if isinstance(j, dict):
        if len(j) == 1 and "$b" in j:
            return binascii.unhexlify(j["$b"])
        return {k: value(j[k]) for k in j}
    if isinstance(j, list):
        return [value(x) for x in j]
    return j


def same(a, b):
    # == that also holds on MicroPython for nested bytes/memoryview
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(a, dict):
        return isinstance(b, dict) and len(a) == len(b) and all(k in b and same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def v_cbor(v):
    want = value(v["value"])
    data = binascii.unhexlify(v["cbor"])
    buf = bytearray(len(data) + 8)
    n = cbor.put(buf, 0, want)
    expect(bytes(buf[:n]) == data, "put: %s != %s" % (binascii.hexlify(buf[:n])[:60], v["cbor"][:60]))
    expect(cbor.dumps(want) == data, "dumps")
    if len(data) > 1:  # too small a buffer: IndexError, never a silent short write
        try:
            cbor.put(bytearray(len(data) - 1), 0, want)
            raise AssertionError("no IndexError with a short buffer")
        except IndexError:
            pass
    v_cbor_decode(v)


def v_cbor_decode(v):
    want = value(v["value"])
    data = binascii.unhexlify(v["cbor"])
    expect(same(cbor.loads(data, False), want), "loads: %r" % (cbor.loads(data, False),))
    expect(same(cbor.loads(memoryview(bytearray(data)), True), want), "loads from a memoryview, views")


def v_cbor_bad(v):
    try:
        cbor.loads(binascii.unhexlify(v["cbor"]))
    except cbor.CBORError:
        return
    raise AssertionError("no CBORError (%s)" % v["why"])


RUNNERS = {"cbor": v_cbor, "cbor_decode": v_cbor_decode, "cbor_bad": v_cbor_bad}


def main(path=None):
    with open(path or (_here + "/cbor.json")) as f:
        vectors = json.load(f)["vectors"]
    passed = failed = 0
    for i, v in enumerate(vectors):
        try:
            RUNNERS[v["kind"]](v)
            passed += 1
        except Exception as e:  # report every failing vector
            failed += 1
            print("FAIL cbor vector %d (%s %s): %s: %s" % (i, v["kind"], v["cbor"][:24], type(e).__name__, e))
    print("%s: %d cbor vectors passed, %d failed" % (sys.implementation.name, passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1] if len(sys.argv) > 1 else None) else 0)
