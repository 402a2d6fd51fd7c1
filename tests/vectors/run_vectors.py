# Runs tests/vectors/protocol.json against the codec in shared/.
# The same file runs under CPython and under the unix-port MicroPython:
#   python tests/vectors/run_vectors.py        micropython tests/vectors/run_vectors.py
# Prints "<impl>: N vectors passed, M failed" and exits 1 on any failure.
import json
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_root = _here + "/../.."
sys.path.insert(0, _root + "/shared")

import binascii  # noqa: E402

import bootloader_messages as bm  # noqa: E402
import mpota_checksums as checksums  # noqa: E402
import mpota_hostframes as hostframes  # noqa: E402
import mpota_framing as framing  # noqa: E402
import mpota_hmac_sha256 as hmac_sha256  # noqa: E402
import mpota_lineproto as lineproto  # noqa: E402
import mpota_proto as proto  # noqa: E402
import mpota_session as session  # noqa: E402


def crc32c_ref(data, crc=0):
    """Bit-by-bit CRC-32C, the reference the fast bodies are checked against."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def unhex(s):
    return binascii.unhexlify(s)


def hx(b):
    return binascii.hexlify(bytes(b)).decode()


def arg(a):
    # Vectors carry bytes as hex strings, numbers as numbers.
    return unhex(a) if isinstance(a, str) else a


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def check_fields(t, fields):
    for k in fields:
        got = getattr(t, k)
        want = fields[k]
        if isinstance(got, (bytes, bytearray)):
            got = hx(got)
        expect(got == want, "field %s: got %r want %r" % (k, got, want))


def v_crc32c(v):
    data = unhex(v["data"])
    expect(checksums.crc32c(data) == v["crc"], "crc32c %x != %x" % (checksums.crc32c(data), v["crc"]))
    s = v["split"]
    inc = checksums.crc32c(data[s:], checksums.crc32c(data[:s]))
    expect(inc == v["crc"], "incremental crc32c")
    mv = memoryview(bytearray(b"xx" + data))[2:]
    expect(checksums.crc32c(mv) == v["crc"], "crc32c of a memoryview slice")
    if len(data) <= 256:
        expect(crc32c_ref(data) == v["crc"], "plain-Python crc32c")


def v_crc32(v):
    expect(checksums.crc32(unhex(v["data"])) == v["crc"], "crc32")


def v_sum8(v):
    expect(checksums.sum8(unhex(v["data"])) == v["sum"], "sum8")


def v_message(v):
    cls = getattr(bm, v["cls"])
    args = [arg(a) for a in v["args"]]
    made = cls.make(*args)
    expect(isinstance(made, bytearray), "make() returns bytearray")
    expect(hx(made) == v["frame"], "make: %s != %s" % (hx(made)[:80], v["frame"][:80]))
    check_fields(cls.extract(unhex(v["frame"])), v["fields"])
    check_fields(cls.extract(bytearray(unhex(v["frame"]))), v["fields"])
    expect(bm.MESSAGES[cls.OpCode] is cls, "MESSAGES table")
    expect(framing.check_frame(made) is None, "framing.check_frame agrees")


def v_header(v):
    check_fields(bm.Header.extract(unhex(v["frame"])), v["fields"])


def _raises(fn, substring):
    try:
        fn()
    except AssertionError as e:
        expect(substring in str(e), "error %r lacks %r" % (str(e), substring))
        return
    raise AssertionError("no AssertionError (wanted %r)" % substring)


def v_bad_message(v):
    cls = getattr(bm, v["cls"])
    _raises(lambda: cls.extract(unhex(v["frame"])), v["error"])


def v_bad_make(v):
    cls = getattr(bm, v["cls"])
    args = [arg(a) if not (isinstance(a, str) and a == "") else b"" for a in v["args"]]
    _raises(lambda: cls.make(*args), v["error"])


def v_native(v):
    fn = v["fn"]
    args = [arg(a) if i > 0 or fn in ("x",) else a for i, a in enumerate(v["args"])]
    made = getattr(hostframes, "encode_" + fn)(*args)
    expect(hx(made) == v["frame"], "encode_%s: %s != %s" % (fn, hx(made)[:60], v["frame"][:60]))
    got = getattr(hostframes, "parse_" + fn)(unhex(v["frame"]))
    want = v["fields"]
    if isinstance(want, list):
        got = [hx(x) if isinstance(x, memoryview) else x for x in got]
    expect(list(got) == want if isinstance(want, list) else got == want, "parse_%s: %r" % (fn, got))
    if fn == "ack":
        buf = bytearray(32)
        n = proto.ack_into(buf, args[0])
        expect(hx(buf[:n]) == v["frame"], "ack_into")
    if fn == "nerror":
        buf = bytearray(32)
        n = proto.nerror_into(buf, *args)
        expect(hx(buf[:n]) == v["frame"], "nerror_into")


def v_native_bad(v):
    try:
        getattr(hostframes, "parse_" + v["fn"])(unhex(v["frame"]))
    except lineproto.ProtoError as e:
        expect(e.code == v["error"], "code %d" % e.code)
        return
    raise AssertionError("no ProtoError")


def v_error_code(v):
    n = v["num"]
    expect(lineproto.error_name(n) == v["name"], "name")
    expect(lineproto.error_num(v["name"]) == n, "num")
    expect(lineproto.error_flags(n) == v["flags"], "flags")
    expect(lineproto.error_retry(n) == v["retry"], "retry")
    expect(lineproto.error_fatal(n) == v["fatal"], "fatal")


def v_json_reply(v):
    line = lineproto.reply_line(v["id"], v["fields"])
    expect(line.endswith(b"\n") and line.count(b"\n") == 1, "one line")
    expect(json.loads(line) == v["expect"], "reply %r" % line)


def v_json_error(v):
    line = lineproto.error_line(v["id"], v["code"], v["message"])
    expect(line.endswith(b"\n") and line.count(b"\n") == 1, "one line")
    expect(json.loads(line) == v["expect"], "error %r" % line)


def v_json_request(v):
    expect(lineproto.parse_request(unhex(v["line"])) == v["expect"], "request")
    expect(lineproto.parse_request(memoryview(unhex(v["line"]))) == v["expect"], "request from memoryview")


def v_json_request_bad(v):
    try:
        lineproto.parse_request(unhex(v["line"]))
    except lineproto.ProtoError as e:
        expect(e.code == v["error"], "code %d, want %d" % (e.code, v["error"]))
        return
    raise AssertionError("no ProtoError")


def v_version(v):
    expect(list(lineproto.parse_version(v["text"])) == v["tuple"], "parse")
    expect(lineproto.parse_version(lineproto.format_version(v["tuple"])) == tuple(v["tuple"]), "format")


def v_version_bad(v):
    try:
        lineproto.parse_version(v["text"])
    except lineproto.ProtoError as e:
        expect(e.code == lineproto.E_BAD_REQUEST, "code")
        return
    raise AssertionError("no ProtoError for %r" % v["text"])


def v_hmac(v):
    expect(hx(hmac_sha256.hmac_sha256(unhex(v["key"]), unhex(v["msg"]))) == v["mac"], "hmac")


def v_auth_mac(v):
    fn = hmac_sha256.host_mac if v["role"] == "host" else hmac_sha256.device_mac
    mac = fn(unhex(v["key"]), v["device"], unhex(v["dev_nonce"]), unhex(v["host_nonce"]))
    expect(hx(mac) == v["mac"], "auth mac")
    expect(hmac_sha256.compare_digest(mac, unhex(v["mac"])), "compare_digest equal")
    expect(not hmac_sha256.compare_digest(mac, bytes(32)), "compare_digest differs")


def v_session(v):
    args = (unhex(v["key"]), v["device"], unhex(v["dev_nonce"]), unhex(v["host_nonce"]))
    kh, kd = session.keys(*args)
    expect(hx(kh) == v["k_host"] and hx(kd) == v["k_device"], "session keys")
    sides = {"host": session.Session(*(args + (False,))), "device": session.Session(*(args + (True,)))}
    for m in v["messages"]:
        tx = sides[m["from"]]
        rx = sides["device" if m["from"] == "host" else "host"]
        expect(tx.tseq == m["seq"], "sequence")
        plain = unhex(m["plain"])
        expect(hx(tx.seal(plain)) == m["sealed"], "seal %s %d" % (m["from"], m["seq"]))
        sealed = bytearray(unhex(m["sealed"]))
        kind = framing.K_FRAME if sealed[0] == framing.SYNC else framing.K_LINE
        if kind == framing.K_LINE:
            sealed = sealed[:-1]  # the decoder hands lines out without "\n"
            plain = plain[:-1]
        expect(framing.check_frame(sealed) is None if kind == framing.K_FRAME else True, "sealed frame valid")
        wrong = bytearray(sealed)
        wrong[len(wrong) // 2] ^= 1
        expect(rx.open(kind, memoryview(wrong)) is None, "a changed byte fails")
        got = rx.open(kind, memoryview(sealed))
        expect(got is not None and bytes(got) == plain, "open %s %d" % (m["from"], m["seq"]))
        expect(rx.open(kind, memoryview(bytearray(unhex(m["sealed"])))) is None, "a replay fails")


def v_decoder(v):
    data = unhex(v["input"])
    for chunk in v["chunks"]:
        d = framing.StreamDecoder(v["max_frame"], v["max_line"])
        got = []
        i = 0
        while i < len(data):
            # The device path: readinto the free space, then advance.
            sp = d.space()
            k = min(chunk, len(sp), len(data) - i)
            sp[:k] = data[i:i + k]
            d.advance(k)
            i += k
            while True:
                ev = d.next()
                if ev is None:
                    break
                kind, val = ev
                if kind == framing.K_FRAME:
                    got.append(["frame", hx(val)])
                elif kind == framing.K_LINE:
                    got.append(["line", hx(val)])
                else:
                    expect(isinstance(val[1], str) and val[1], "error carries a message")
                    got.append(["error", val[0]])
        expect(got == v["events"], "%s chunk %d: %r" % (v["name"], chunk, [g[:1] + [str(g[1])[:20]] for g in got]))
        # The generator path gives the same events.
        d2 = hostframes.Decoder(v["max_frame"], v["max_line"])
        got2 = []
        for kind, _val in d2.decode(data):
            got2.append(kind)
        expect(len(got2) == len(v["events"]), "decode() event count")


RUNNERS = {
    "crc32c": v_crc32c, "crc32": v_crc32, "sum8": v_sum8, "message": v_message, "header": v_header,
    "bad_message": v_bad_message, "bad_make": v_bad_make, "native": v_native, "native_bad": v_native_bad,
    "error_code": v_error_code, "json_reply": v_json_reply, "json_error": v_json_error,
    "json_request": v_json_request, "json_request_bad": v_json_request_bad, "version": v_version,
    "version_bad": v_version_bad, "hmac": v_hmac, "auth_mac": v_auth_mac, "decoder": v_decoder,
    "session": v_session,
}


def main(path=None):
    with open(path or (_here + "/protocol.json")) as f:
        vectors = json.load(f)["vectors"]
    passed = 0
    failed = 0
    kinds = {}
    for i, v in enumerate(vectors):
        try:
            RUNNERS[v["kind"]](v)
            passed += 1
            kinds[v["kind"]] = kinds.get(v["kind"], 0) + 1
        except Exception as e:  # report every failing vector, not just the first
            failed += 1
            print("FAIL vector %d (%s): %s: %s" % (i, v["kind"], type(e).__name__, e))
    impl = sys.implementation.name
    print("%s: %d vectors passed, %d failed (%s)" % (
        impl, passed, failed, ", ".join("%s=%d" % (k, kinds[k]) for k in sorted(kinds))))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1] if len(sys.argv) > 1 else None) else 0)
