"""Signed images end to end, short of the agent: keys made by host/keys.py, images
signed by imgtool (host/images.py), checked by device/mpota_trust.py and mpota_trustkeys.py (with
device/mpota_ed25519.py and shared/mpota_mcuboot.py's SEC_CNT) on CPython, the unix-port
MicroPython and, when present, the 32-bit build. Also key rotation statements
and the anti-rollback helpers."""
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

from mpota import images as appimage
import boardbuilds
import tamper
from mpota import keys
from conftest import MICROPYTHON, REPO

APP = {"main.py": "NAME = 'blinky'\ndef main():\n    pass\n"}


def _folder(tmp, files):
    d = tmp / "app"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def _tamper(image):
    """Change one body byte and recompute the SHA-256 TLV: only the signature can tell."""
    data = tamper.tamper(image)
    assert appimage.inspect_image(data)["sha256_ok"]
    return data


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    k1, k2, k3 = (tmp / "k1.pem", tmp / "k2.pem", tmp / "attacker.pem")
    for k in (k1, k2, k3):
        keys.keygen(k)
    app = _folder(tmp, APP)
    images = {
        "k1": appimage.build_app_image(app, "1.0.0+0", key=k1, security_counter=5),
        "k1_cnt2": appimage.build_app_image(app, "1.1.0+0", key=k1, security_counter=2),
        "k2": appimage.build_app_image(app, "1.2.0+0", key=k2),
        "attacker": appimage.build_app_image(app, "9.0.0+0", key=k3, security_counter=99),
        "unsigned": appimage.build_app_image(app, "1.0.0+0"),
    }
    images["tampered"] = _tamper(images["k1"])
    # --public-key-format full: a PUBKEY TLV instead of KEYHASH
    body = tmp / "body.bin"
    body.write_bytes(appimage.build_littlefs(app))
    full = tmp / "full.img"
    appimage._imgtool("create", "--pad-header", "-H", 32, "--align", "4", "-v", "1.0.1+0", "-S", 1 << 20,
                      "-k", k1, "--public-key-format", "full", body, full)
    images["k1_full"] = full.read_bytes()
    for name, data in images.items():
        (tmp / (name + ".img")).write_bytes(data)
    pub = {n: keys.public_raw(p).hex() for n, p in (("k1", k1), ("k2", k2), ("k3", k3))}
    st = [
        ("add_k2_by_k1", keys.key_change(k1, "add", k2, 1)),
        ("add_k3_by_k3", keys.key_change(k3, "add", k3, 2)),
        ("drop_k1_by_k2", keys.key_change(k2, "drop", k1, 2)),
        ("drop_k2_by_k2", keys.key_change(k2, "drop", k2, 3)),
    ]
    (tmp / "material.json").write_text(json.dumps({"pub": pub, "statements": st}))
    return {"dir": tmp, "keys": (k1, k2, k3), "images": images, "pub": pub}


# One script for every interpreter: prints "name: result" lines.
SCRIPT = r"""
import sys, json, os
sys.path.insert(0, %(device)r)
import mpota_mcuboot as mcuboot, mpota_trust as trust, mpota_trustkeys as trustkeys
from mpota_lineproto import ProtoError
D = %(dir)r
M = json.load(open(D + "/material.json"))
STORE = D + "/store-%(tag)s.json"
try:
    os.remove(STORE)
except OSError:
    pass
from binascii import unhexlify

def check(name, t, floor=0):
    info = mcuboot.verify(D + "/" + name + ".img")
    try:
        kid = trust.check_image(info, t)
        trust.check_counter(trust.counter(info), floor)
        print("%%s: ok %%s cnt=%%d" %% (name, "none" if kid is None else trust.hexstr(kid[:4]), trust.counter(info)))
    except ProtoError as e:
        print("%%s: refused %%d" %% (name, e.code))
        MESSAGES.append(e.message)

MESSAGES = []
names = ("k1", "k1_full", "k1_cnt2", "k2", "attacker", "unsigned", "tampered")
t = trust.load(STORE)
print("empty:", trust.enforced(t), trust.describe(t)["signed_images"])
for n in names:
    check(n, t)
t = trustkeys.provision(t, unhexlify(M["pub"]["k1"]), STORE)
t = trust.load(STORE)
print("provisioned:", trust.enforced(t), len(t["keys"]))
for n in names:
    check(n, t, floor=3)
try:
    trustkeys.provision(t, unhexlify(M["pub"]["k2"]), STORE)
    print("provision again: ok")
except ProtoError as e:
    print("provision again: refused", e.code)
st = dict(M["statements"])
for name in ("add_k3_by_k3", "add_k2_by_k1", "add_k2_by_k1", "drop_k1_by_k2", "drop_k2_by_k2"):
    try:
        t = trustkeys.apply(t, st[name], in_use=(), path=STORE)
        print("%%s: applied seq=%%d keys=%%d" %% (name, t["seq"], len(t["keys"])))
    except ProtoError as e:
        print("%%s: refused %%d" %% (name, e.code))
t = trust.load(STORE)
print("after rotation:", t["seq"], len(t["keys"]))
check("k1", t)
check("k2", t)
# the cached result at boot
info = mcuboot.verify(D + "/k2.img")
sha = trust.hexstr(info["sha256"])
signer = trust.hexstr(info["keyhash"])
for label, sg, sh in (("bound", signer, sha), ("other sha", signer, "00" * 32), ("unverified", None, sha),
                      ("dropped signer", trust.hexstr(trust.key_id(unhexlify(M["pub"]["k1"]))), sha)):
    try:
        trust.check_boot(t, sg, sh, info)
        print("boot %%s: ok" %% label)
    except ProtoError as e:
        print("boot %%s: refused %%d" %% (label, e.code))
open(STORE, "w").write("{not json")
t = trust.load(STORE)
print("corrupt store:", trust.enforced(t))
check("k2", t)
print("floor:", trust.raised_floor(3, 5), trust.raised_floor(7, 5), trust.raised_floor(0, None))
sys.stderr.write("\n".join(MESSAGES))
"""

EXPECTED = """\
empty: False False
k1: ok none cnt=5
k1_full: ok none cnt=0
k1_cnt2: ok none cnt=2
k2: ok none cnt=0
attacker: ok none cnt=99
unsigned: ok none cnt=0
tampered: ok none cnt=5
provisioned: True 1
k1: ok {k1} cnt=5
k1_full: refused 15
k1_cnt2: refused 15
k2: refused 14
attacker: refused 14
unsigned: refused 14
tampered: refused 14
provision again: refused 1
add_k3_by_k3: refused 14
add_k2_by_k1: applied seq=1 keys=2
add_k2_by_k1: refused 5
drop_k1_by_k2: applied seq=2 keys=1
drop_k2_by_k2: refused 1
after rotation: 2 1
k1: refused 14
k2: ok {k2} cnt=0
boot bound: ok
boot other sha: refused 14
boot unverified: refused 14
boot dropped signer: refused 14
corrupt store: True
k2: refused 14
floor: 5 7 0
"""


def _expected(material):
    ids = {n: keys.key_id(material["keys"][i]).hex()[:8] for i, n in enumerate(("k1", "k2"))}
    return EXPECTED.format(**ids)


def _run(material, argv, tag):
    script = material["dir"] / ("check_%s.py" % tag)
    script.write_text(SCRIPT % {"device": str(REPO / "device"), "dir": str(material["dir"]), "tag": tag})
    r = subprocess.run(argv + [str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, r.stderr


def test_cpython(material):
    # on CPython the device modules import flat: device/ first (proto via its symlink)
    out, messages = _run(material, [sys.executable], "cpython")
    assert out == _expected(material)
    for words in ("below this device's floor 3", "which this device does not trust", "the image is not signed",
                  "altered after signing", "trust store unusable"):
        assert words in messages


def test_unix_micropython(material, micropython):
    assert _run(material, [MICROPYTHON, "-X", "heapsize=160K"], "unix")[0] == _expected(material)


@pytest.mark.skipif(boardbuilds.i386() is None, reason="no 32-bit MicroPython build (../shared/tools)")
def test_i386_micropython(material):
    assert _run(material, [boardbuilds.i386(), "-X", "heapsize=160K"], "i386")[0] == _expected(material)


def test_keyhash_is_what_imgtool_embeds(material):
    k1 = material["keys"][0]
    info = appimage.inspect_image(material["images"]["k1"])
    assert info["keyhash"] == keys.key_id(k1).hex()
    assert hashlib.sha256(keys.SPKI_PREFIX + keys.public_raw(k1)).hexdigest() == info["keyhash"]
    assert appimage.verify_signature(material["images"]["k1"], k1)
    assert not appimage.verify_signature(material["images"]["tampered"], k1)


def test_keygen_file_is_private_and_never_overwritten(tmp_path):
    p = tmp_path / "key.pem"
    k = keys.keygen(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert keys.public_raw(keys.load(p)) == keys.public_raw(k)
    with pytest.raises(keys.KeyFileError, match="exists"):
        keys.keygen(p)


def test_keygen_with_password_and_public_only_file(tmp_path):
    p = tmp_path / "key.pem"
    k = keys.keygen(p, password=b"correct horse")
    with pytest.raises(keys.KeyFileError, match="encrypted"):
        keys.load(p)
    assert keys.public_raw(keys.load(p, b"correct horse")) == keys.public_raw(k)
    pub = tmp_path / "pub.pem"
    k.export_public(str(pub))
    assert keys.key_id(pub) == keys.key_id(k)
    with pytest.raises(keys.KeyFileError, match="private"):
        keys.key_change(pub, "add", k, 1)


def test_other_key_types_are_refused(tmp_path):
    from imgtool import keys as imgkeys

    p = tmp_path / "ec.pem"
    imgkeys.ECDSA256P1.generate().export_private(str(p))
    with pytest.raises(keys.KeyFileError, match="Ed25519"):
        keys.load(p)
    with pytest.raises(keys.KeyFileError, match="no key file"):
        keys.load(tmp_path / "missing.pem")


def test_trust_file_matches_the_device_loader(tmp_path, material):
    sys.path.insert(0, str(REPO / "device"))
    try:
        import mpota_trust as trust
        import mpota_trustkeys as trustkeys
    finally:
        sys.path.remove(str(REPO / "device"))  # it would shadow PyPI's `smp` for later tests

    k1, k2, _ = material["keys"]
    path = tmp_path / "mpota_trust.json"
    path.write_bytes(keys.trust_file([k1, k2]))
    t = trust.load(str(path))
    assert t["error"] is None and t["keys"] == [keys.public_raw(k1), keys.public_raw(k2)]
    assert trust.key_id(t["keys"][0]) == keys.key_id(k1)
    assert keys.statement_bytes("add", b"\x01" * 32, 7) == trustkeys.statement_bytes("+", b"\x01" * 32, 7)
