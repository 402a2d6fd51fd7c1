"""The signed-command codec (shared/mpota_command.py) on both interpreters: one set of
vectors (made here, with a real imgtool Ed25519 key) run by tests/vectors/run_command_vectors.py
under CPython and each MicroPython build, the signature checked by the board's verifier."""
import binascii
import json
import runpy

import pytest
from conftest import REPO, run_micropython

from mpota import keys
from mpota.codec import mpota_command as command

RUNNER = REPO / "tests" / "vectors" / "run_command_vectors.py"
DEV = "51b830786d0057ab"
BODY = {"seq": 1700000000123, "fleet": "site-7", "to": DEV, "op": "install",
        "url": "http://127.0.0.1:8080/ab.bin", "sha256": "ab" * 32, "size": 4096, "version": "1.2.0"}


def _payload(key, body):
    b = command.body_bytes(body)
    return command.pack(keys.load(key).sign_digest(command.signed_message(b)), b)


def _vectors(tmp_path):
    key, other = tmp_path / "k.pem", tmp_path / "o.pem"
    keys.keygen(key)
    keys.keygen(other)
    pub = keys.public_raw(key).hex()
    good = _payload(key, BODY)
    b = command.body_bytes(BODY)
    sig = good[13:141].decode()
    v = []

    def add(kind, inp, want, name=""):
        v.append({"kind": kind, "in": inp, "want": want, "name": name})

    add("parse", good.hex(), {"body": BODY, "body_hex": b.hex(), "sig": sig}, "a signed install")
    for name, p in [
        ("empty", b""), ("short", b"mpota-cmd-v1 00"),
        ("another magic", b"mpota-cmd-v2 " + good[13:]),
        ("no space after the signature", good[:141] + b"x" + good[142:]),
        ("signature not hex", good[:13] + b"zz" + good[15:]),
        ("body not JSON", good[:142] + b"{seq"),
        ("body not an object", good[:142] + b"[1,2]"),
        ("too long", good[:142] + b'{"a":"' + b"x" * 1000 + b'"}'),
    ]:
        add("parse", p.hex(), {"error": "malformed"}, name)
    add("signed", b.hex(), {"hex": (b"mpota-cmd-v1\x00" + b).hex()})

    def chk(name, want, last=0, on_all=False, **kw):
        d = dict(BODY)
        d.update(kw)
        for k in [k for k in d if d[k] is None]:
            del d[k]
        add("check", {"body": d, "dev": DEV, "fleet": "site-7", "last": last, "all": on_all}, want, name)

    chk("install", {"op": "install"})
    chk("to all on the all topic", {"op": "confirm"}, on_all=True, to="*", op="confirm")
    chk("to all on the board's topic", {"error": "wrong_target"}, to="*")
    chk("to the board on the all topic", {"error": "wrong_target"}, on_all=True)
    chk("another board", {"error": "wrong_target"}, to="51" + "00" * 7)
    chk("another fleet", {"error": "wrong_fleet"}, fleet="other")
    chk("replayed", {"error": "old_seq"}, last=BODY["seq"])
    chk("stale", {"error": "old_seq"}, last=BODY["seq"] + 1)
    chk("seq not an int", {"error": "bad_field"}, seq="5")
    chk("seq a bool", {"error": "bad_field"}, seq=True)
    chk("seq zero", {"error": "bad_field"}, seq=0)
    chk("unknown op", {"error": "unknown_op"}, op="format")
    chk("https", {"error": "bad_field"}, url="https://127.0.0.1/x.bin")
    chk("no url", {"error": "bad_field"}, url=None)
    chk("sha256 short", {"error": "bad_field"}, sha256="ab" * 31)
    chk("sha256 not hex", {"error": "bad_field"}, sha256="zz" * 32)
    chk("size zero", {"error": "bad_field"}, size=0)
    chk("no version", {"error": "bad_field"}, version=None)
    chk("allow_downgrade not a bool", {"error": "bad_field"}, allow_downgrade=1)
    chk("confirm needs no install fields", {"op": "confirm"}, op="confirm", url=None, sha256=None, size=None,
        version=None)
    for url, want in [("http://h:8080/a/b.bin", {"url": ["h", 8080, "/a/b.bin"]}),
                      ("http://10.0.0.2/x", {"url": ["10.0.0.2", 80, "/x"]}),
                      ("http://h:0/x", {"error": "bad_field"}), ("http://h:99999/x", {"error": "bad_field"}),
                      ("http://h", {"error": "bad_field"}), ("http:///x", {"error": "bad_field"}),
                      ("http://u@h/x", {"error": "bad_field"}), ("http://h/a b", {"error": "bad_field"}),
                      ("ftp://h/x", {"error": "bad_field"})]:
        add("url", url, want, url)
    for name, ok in [("default", True), ("site-7_B", True), ("", False), ("a/b", False), ("+", False),
                     ("#", False), ("x" * 33, False), ("é", False)]:
        add("name", name, {"ok": ok}, name)
    add("verify", {"payload": good.hex(), "pub": pub}, {"valid": True}, "signed by the key")
    flipped = good.replace(b'"op":"install"', b'"op":"installs"')
    add("verify", {"payload": flipped.hex(), "pub": pub}, {"valid": False}, "a changed body")
    add("verify", {"payload": _payload(other, BODY).hex(), "pub": pub}, {"valid": False}, "another key")
    p = tmp_path / "command.json"
    p.write_text(json.dumps(v))
    return p, len(v)


def test_command_vectors_cpython(tmp_path, capsys):
    path, n = _vectors(tmp_path)
    mod = runpy.run_path(str(RUNNER))
    assert mod["main"](str(path)) == 0
    assert "cpython: %d vectors passed, 0 failed" % n in capsys.readouterr().out


def test_command_vectors_micropython(tmp_path, mp_build, capsys):
    path, n = _vectors(tmp_path)
    r = run_micropython([str(RUNNER), str(path)], mp=mp_build)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "micropython: %d vectors passed, 0 failed" % n in r.stdout
    with capsys.disabled():  # the board's verify time (pure Python Ed25519) on this build
        print("\n%s: one command verify %s ms" % (mp_build.rsplit("/", 1)[-1], r.stdout.split("verify_ms ")[1].strip()))


def test_pack_refuses_what_the_board_would_drop():
    with pytest.raises(ValueError):
        command.pack(bytes(63), b"{}")
    with pytest.raises(ValueError):
        command.pack(bytes(64), b'{"a":"' + b"x" * 1000 + b'"}')
    sig, body = command.unpack(command.pack(bytes(range(64)), b'{"op":"x"}'))
    assert sig == bytes(range(64)) and body == b'{"op":"x"}'
    assert binascii.hexlify(sig).decode() in command.pack(sig, body).decode()
