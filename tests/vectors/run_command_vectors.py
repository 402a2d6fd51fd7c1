# Runs the signed-command vectors (a JSON file, argv[1], written by
# tests/test_mqtt_command.py) against shared/mpota_command.py, and the
# signature ones through device/mpota_trust.verify_signature (the board's
# pure-Python Ed25519). The same file runs under CPython and MicroPython:
#   python tests/vectors/run_command_vectors.py V.json    micropython ... V.json
# Prints "<impl>: N vectors passed, M failed" and the ms one verify took.
import sys
import time

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:0] = [_here + "/../../shared", _here + "/../../device"]

import binascii  # noqa: E402
import json  # noqa: E402

import mpota_command as command  # noqa: E402


def _ms():
    try:
        return time.ticks_ms()
    except AttributeError:
        return int(time.monotonic() * 1000)


_MS = [-1]  # the last verify's duration


def run(v):
    k = v["kind"]
    a = v["in"]
    try:
        if k == "parse":
            d, body, sig = command.parse(binascii.unhexlify(a))
            return {"body": d, "body_hex": binascii.hexlify(body).decode(), "sig": binascii.hexlify(sig).decode()}
        if k == "check":
            return {"op": command.check(a["body"], a["dev"], a["fleet"], a["last"], a["all"])}
        if k == "url":
            return {"url": list(command.split_url(a))}
        if k == "name":
            return {"ok": command.name_ok(a)}
        if k == "signed":
            return {"hex": binascii.hexlify(command.signed_message(binascii.unhexlify(a))).decode()}
        if k == "verify":
            import mpota_trust as trust
            d, body, sig = command.parse(binascii.unhexlify(a["payload"]))
            t0 = _ms()
            ok = trust.verify_signature(binascii.unhexlify(a["pub"]), command.signed_message(body), sig)
            _MS[0] = _ms() - t0
            return {"valid": ok}
    except command.CommandError as e:
        return {"error": e.reason}
    raise ValueError("unknown kind %s" % k)


def main(path):
    with open(path) as f:
        vs = json.load(f)
    bad = 0
    for v in vs:
        got = run(v)
        if got != v["want"]:
            bad += 1
            print("FAIL %s %s: got %s, want %s" % (v["kind"], v.get("name", ""), got, v["want"]))
    print("%s: %d vectors passed, %d failed" % (sys.implementation.name, len(vs) - bad, bad))
    print("verify_ms %d" % _MS[0])
    return bad


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1]) else 0)
