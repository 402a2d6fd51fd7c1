"""device/mpota_ed25519.py: Ed25519 verification against RFC 8032's vectors and the
`cryptography` package, on CPython (hashlib's SHA-512 and the module's own),
the unix-port MicroPython and, when present, the 32-bit build; and what it
must refuse: wrong signatures, S >= L, bad public-key encodings."""
import hashlib
import importlib
import json
import random
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conftest import REPO, run_micropython

sys.path.insert(0, str(REPO / "device"))
import mpota_ed25519 as ed25519  # noqa: E402  (device/mpota_ed25519.py)
import boardbuilds  # noqa: E402  (tools/)

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

# RFC 8032 section 7.1, TEST 1-3: secret key, public key, message, signature (hex)
RFC = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
     "d25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
     "387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
     "4a7c15e9716ed28dc027beceea1ec40a"),
]


def raw_pub(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def enc(y, sign=0):
    return (y | sign << 255).to_bytes(32, "little")


def cases(seed=8032, n_random=12):
    """[(pub hex, msg hex, sig hex, expected, what)]: the RFC vectors, random keys and
    messages (valid), and tampered or malformed ones (invalid)."""
    rnd = random.Random(seed)
    out = []
    for _sk, pk, msg, sig in RFC:
        out.append((pk, msg, sig, True, "RFC 8032"))
    key = None
    for i in range(n_random):
        key = Ed25519PrivateKey.from_private_bytes(rnd.randbytes(32))
        msg = rnd.randbytes(rnd.choice((0, 1, 32, 33, 100, 200)))
        out.append((raw_pub(key).hex(), msg.hex(), key.sign(msg).hex(), True, "random %d" % i))
    pub = raw_pub(key)
    msg = b"mpota image digest, 32 bytes...."
    sig = key.sign(msg)

    def bad(p, m, s, what):
        out.append((bytes(p).hex(), bytes(m).hex(), bytes(s).hex(), False, what))

    for pos in (0, 31, 32, 63):
        s = bytearray(sig)
        s[pos] ^= 0x01
        bad(pub, msg, s, "signature bit flip at byte %d" % pos)
    bad(pub, msg[:-1] + b"!", sig, "other message")
    bad(raw_pub(Ed25519PrivateKey.from_private_bytes(rnd.randbytes(32))), msg, sig, "other key")
    s_int = int.from_bytes(sig[32:], "little")
    bad(pub, msg, sig[:32] + (s_int + L).to_bytes(32, "little"), "S + L (non-canonical S)")
    bad(pub, msg, sig[:32] + (L).to_bytes(32, "little"), "S = L")
    bad(pub, msg, sig[:32] + b"\xff" * 32, "S = 2^256 - 1")
    # public keys that are not (canonical) points
    y = int.from_bytes(pub, "little") & ((1 << 255) - 1)
    if y + P < 1 << 255:
        bad(enc(y + P, pub[31] >> 7), msg, sig, "public key y + p (non-canonical)")
    bad(enc(P), msg, sig, "public key y = p")
    bad(enc(1, 1), msg, sig, "public key y = 1 (x = 0) with the sign bit")
    bad(enc(P - 1, 1), msg, sig, "public key y = -1 (x = 0) with the sign bit")
    off = next(v for v in range(2, 100) if not _on_curve(v))
    bad(enc(off), msg, sig, "public key y = %d: not on the curve" % off)
    # R not canonical: y_R + p encodes the same point, and must not verify
    ry = int.from_bytes(sig[:32], "little") & ((1 << 255) - 1)
    if ry + P < 1 << 255:
        bad(pub, msg, enc(ry + P, sig[31] >> 7) + sig[32:], "R with y + p")
    bad(pub, msg, sig[:31], "short signature")
    bad(pub[:31], msg, sig, "short public key")
    return out


def _on_curve(y):
    d = -121665 * pow(121666, P - 2, P) % P
    u = (y * y - 1) % P
    v = (d * y * y + 1) % P
    x2 = u * pow(v, P - 2, P) % P
    return x2 == 0 or pow(x2, (P - 1) // 2, P) == 1


def _crypto_verdict(pub, msg, sig):
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except Exception:  # InvalidSignature, or a key it cannot load
        return False


def test_rfc_vectors_are_what_cryptography_makes():
    for sk, pk, msg, sig in RFC:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk))
        assert raw_pub(key).hex() == pk
        assert key.sign(bytes.fromhex(msg)).hex() == sig


@pytest.mark.parametrize("own_sha512", [False, True], ids=["hashlib-sha512", "own-sha512"])
def test_cpython_matches_expectations_and_cryptography(monkeypatch, own_sha512):
    if own_sha512:
        monkeypatch.setattr(ed25519, "_hashlib_sha512", None)
    agree = 0
    for pub, msg, sig, expected, what in cases():
        p, m, s = bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)
        assert ed25519.verify(p, m, s) is expected, what
        if len(p) == 32 and len(s) == 64 and "non-canonical" not in what:
            assert _crypto_verdict(p, m, s) is expected, what
            agree += 1
    assert agree > 20


def test_own_sha512_matches_hashlib():
    rnd = random.Random(512)
    for n in list(range(0, 260, 7)) + [111, 112, 127, 128, 239, 240, 1000]:
        data = rnd.randbytes(n)
        assert ed25519._sha512(data) == hashlib.sha512(data).digest(), n
    assert ed25519._sha512(b"abc").hex().startswith("ddaf35a193617aba")


def test_without_hashlib_sha512_the_module_still_imports(monkeypatch):
    # MicroPython's hashlib has no sha512: the import must fall back, not fail
    import hashlib as real

    class NoSha512:
        sha256 = real.sha256

    monkeypatch.setitem(sys.modules, "hashlib", NoSha512)
    mod = importlib.reload(ed25519)
    try:
        assert mod._hashlib_sha512 is None
        pub, msg, sig = RFC[1][1], RFC[1][2], RFC[1][3]
        assert mod.verify(bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig))
    finally:
        monkeypatch.undo()
        importlib.reload(ed25519)


MP_SCRIPT = """
import sys, json
sys.path.insert(0, %r)
from binascii import unhexlify as u
import hashlib
assert not hasattr(hashlib, "sha512")  # the module's own SHA-512 is what runs
import mpota_ed25519 as ed25519
for pub, msg, sig, expected, what in json.load(open(%r)):
    got = ed25519.verify(u(pub), u(msg), u(sig))
    print("%%s %%s" %% ("ok" if got is expected else "WRONG", what))
"""


def _run_cases(tmp_path, interpreter=None):
    vec = tmp_path / "cases.json"
    vec.write_text(json.dumps(cases()))
    script = tmp_path / "t.py"
    script.write_text(MP_SCRIPT % (str(REPO / "device"), str(vec)))
    if interpreter is None:
        r = run_micropython([str(script)], heap="160K", timeout=300)
    else:
        import subprocess

        r = subprocess.run([interpreter, "-X", "heapsize=160K", str(script)], capture_output=True,
                           text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(cases()), r.stdout
    assert all(line.startswith("ok ") for line in lines), r.stdout


def test_unix_micropython(tmp_path, micropython):
    _run_cases(tmp_path)


@pytest.mark.skipif(boardbuilds.i386() is None, reason="no 32-bit MicroPython build (../shared/tools)")
def test_i386_micropython(tmp_path):
    _run_cases(tmp_path, boardbuilds.i386())



def test_bench_prints_its_figures(capsys):
    import bench_ed25519

    assert bench_ed25519.main(["--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "unix MicroPython (64-bit):" in out
    assert ("i386 heap: import mpota_ed25519 as ed25519" in out) == (boardbuilds.i386() is not None)
    assert ("RP2040 at 125 MHz" in out) == (boardbuilds.cortex_m0() is not None)
