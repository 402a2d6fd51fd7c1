"""Application images: a folder -> littlefs -> MCUboot image (imgtool), and back.

    build_littlefs(folder, block_count=None) -> bytes
    build_app_image(folder_or_littlefs_bytes, version="0.0.0+0", header_size=32, key=None,
                    security_counter=None) -> bytes
    inspect_image(data, key=None) -> dict

The body of an application image is a littlefs image (block size 4096, prog
size 256) that the device mounts read-only at /app (device/appfs.py); the
image around it is made by MCUboot's own `imgtool create` so that imgtool,
mcumgr and MCUboot tooling all read it.
"""
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

BLOCK_SIZE = 4096
PROG_SIZE = 256
HEADROOM_BLOCKS = 2  # spare blocks beyond the smallest that fits

IMAGE_MAGIC = 0x96F3B83D
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
TLV_SHA256 = 0x10
TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_ED25519 = 0x24
SIG_TLVS = {0x20: "RSA2048", 0x22: "ECDSASIG", 0x23: "RSA3072", 0x24: "ED25519"}
APP_SUFFIXES = (".py", ".mpy")
LFS_MAGIC_OFFSET = 8  # "littlefs" in the superblock entry of block 0


class AppImageError(ValueError):
    """Bad input for building or inspecting an application image."""


# -- littlefs -------------------------------------------------------------------

def _app_files(folder):
    root = Path(folder)
    if not root.is_dir():
        raise AppImageError("not a folder: %s" % root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        for name in sorted(filenames):
            if name.endswith(APP_SUFFIXES):
                p = Path(dirpath) / name
                files.append(p.relative_to(root).as_posix())
    if "main.py" not in files and "main.mpy" not in files:
        raise AppImageError("%s has no main.py (the application entry point, defining main())" % root)
    return root, files


def _lfs_image(root, files, block_count):
    from littlefs import LittleFS

    fs = LittleFS(block_size=BLOCK_SIZE, block_count=block_count, prog_size=PROG_SIZE,
                  read_size=PROG_SIZE, mount=False)
    fs.format()
    fs.mount()
    made = set()
    for rel in files:
        parent = rel.rpartition("/")[0]
        if parent and parent not in made:
            fs.makedirs(parent, exist_ok=True)
            made.add(parent)
        with fs.open(rel, "wb") as f:
            f.write((root / rel).read_bytes())
    fs.unmount()
    return bytes(fs.context.buffer)


def build_littlefs(folder, block_count=None):
    """A littlefs image of the folder's .py/.mpy files (subfolders kept), with an
    exact block count: the smallest that fits plus HEADROOM_BLOCKS, unless given."""
    from littlefs import LittleFSError

    root, files = _app_files(folder)
    if block_count is not None:
        try:
            return _lfs_image(root, files, block_count)
        except LittleFSError as e:
            raise AppImageError("the files do not fit in %d blocks: %s" % (block_count, e)) from e
    # lower bound: superblock pair + per-file data blocks; grow until it fits
    size = sum((root / f).stat().st_size for f in files)
    n = 2 + size // BLOCK_SIZE
    for _ in range(4096):
        try:
            _lfs_image(root, files, n)
            break
        except LittleFSError:
            n += 1
    else:
        raise AppImageError("could not fit %s into a littlefs image" % root)
    return _lfs_image(root, files, n + HEADROOM_BLOCKS)


# -- MCUboot image ----------------------------------------------------------------

def _imgtool(*args):
    cmd = [sys.executable, "-m", "imgtool.main"] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise AppImageError("imgtool %s failed: %s" % (args[0], (r.stderr or r.stdout).strip()))
    return r


def build_app_image(source, version="0.0.0+0", header_size=32, key=None, security_counter=None):
    """An MCUboot image whose body is `source` (a folder, built with build_littlefs,
    or littlefs image bytes). `key`: an imgtool private key file (ed25519) to sign.
    `security_counter`: an int for the protected SEC_CNT TLV (anti-rollback)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        body = bytes(source)
        if len(body) == 0 or len(body) % BLOCK_SIZE or body[LFS_MAGIC_OFFSET:LFS_MAGIC_OFFSET + 8] != b"littlefs":
            raise AppImageError("the body is not a littlefs image (%d bytes)" % len(body))
    else:
        body = build_littlefs(source)
    if key is not None and not Path(key).is_file():
        raise AppImageError("no key file %s" % key)
    # slot size only bounds imgtool's trailer check: make it large enough
    slot = (len(body) + header_size + 16384 + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE
    with tempfile.TemporaryDirectory(prefix="mpota-img-") as d:
        src, dst = Path(d) / "body.bin", Path(d) / "image.bin"
        src.write_bytes(body)
        args = ["create", "--pad-header", "-H", header_size, "--align", "4",
                "-v", version, "-S", slot]
        if key is not None:
            args += ["-k", key]
        if security_counter is not None:
            args += ["-s", int(security_counter)]
        _imgtool(*(args + [src, dst]))
        return dst.read_bytes()


def inspect_image(data, key=None):
    """Parse and check an MCUboot image. Returns a dict: hdr_size, img_size,
    protect_tlv_size, flags, version (tuple), version_str, load_addr, tlv_off,
    total_size, sha256 (hex, from the TLV), sha256_ok, tlvs [(type, len)],
    has_signature, signature (name or None), keyhash (hex or None), body_is_littlefs,
    lfs_block_count, and with `key` (a key file) signature_ok from imgtool's verify."""
    data = bytes(data)
    if len(data) < 32:
        raise AppImageError("not an MCUboot image: %d bytes" % len(data))
    magic, load_addr, hdr_size, ptlv, img_size, flags, vmaj, vmin, vrev, vbuild = \
        struct.unpack_from("<IIHHIIBBHI", data, 0)
    if magic != IMAGE_MAGIC:
        raise AppImageError("not an MCUboot image: magic 0x%08x, expected 0x%08x" % (magic, IMAGE_MAGIC))
    if hdr_size < 32 or hdr_size + img_size + 4 > len(data):
        raise AppImageError("truncated image: header says %d + %d bytes, have %d"
                            % (hdr_size, img_size, len(data)))
    off = hdr_size + img_size
    tlvs = []
    prot_end = off
    m, tot = struct.unpack_from("<HH", data, off)
    if m == TLV_PROT_INFO_MAGIC:
        if tot != ptlv:
            raise AppImageError("protected TLV size %d differs from the header's %d" % (tot, ptlv))
        p = off + 4
        while p < off + tot:
            t, ln = struct.unpack_from("<BxH", data, p)
            tlvs.append((t, ln))
            p += 4 + ln
        prot_end = off + tot
        m, tot = struct.unpack_from("<HH", data, prot_end)
    if m != TLV_INFO_MAGIC:
        raise AppImageError("no TLV info (magic 0x%04x at %d, expected 0x%04x)" % (m, prot_end, TLV_INFO_MAGIC))
    if prot_end + tot > len(data):
        raise AppImageError("truncated TLV area")
    sha = keyhash = sig = None
    p = prot_end + 4
    while p < prot_end + tot:
        t, ln = struct.unpack_from("<BxH", data, p)
        v = data[p + 4:p + 4 + ln]
        tlvs.append((t, ln))
        if t == TLV_SHA256:
            sha = v
        elif t == TLV_KEYHASH:
            keyhash = v
        elif t in SIG_TLVS:
            sig = SIG_TLVS[t]
        p += 4 + ln
    if sha is None:
        raise AppImageError("no SHA256 TLV (0x10) in the image")
    body = data[hdr_size:hdr_size + img_size]
    is_lfs = body[LFS_MAGIC_OFFSET:LFS_MAGIC_OFFSET + 8] == b"littlefs"
    info = {
        "hdr_size": hdr_size, "img_size": img_size, "protect_tlv_size": ptlv, "flags": flags,
        "load_addr": load_addr, "version": (vmaj, vmin, vrev, vbuild),
        "version_str": "%d.%d.%d+%d" % (vmaj, vmin, vrev, vbuild),
        "tlv_off": off, "total_size": prot_end + tot,
        "sha256": sha.hex(), "sha256_ok": hashlib.sha256(data[:prot_end]).digest() == sha,
        "tlvs": tlvs, "has_signature": sig is not None, "signature": sig,
        "keyhash": keyhash.hex() if keyhash else None,
        "body_is_littlefs": is_lfs,
        "lfs_block_count": img_size // BLOCK_SIZE if is_lfs and img_size % BLOCK_SIZE == 0 else None,
    }
    if key is not None:
        info["signature_ok"] = verify_signature(data[:info["total_size"]], key)
    return info


def verify_signature(data, key):
    """imgtool's own verify of an image against a key file: True/False."""
    from imgtool import image, keys

    with tempfile.TemporaryDirectory(prefix="mpota-img-") as d:
        p = Path(d) / "image.bin"
        p.write_bytes(bytes(data))
        result, *_ = image.Image.verify(str(p), keys.load(str(key)))
    return result == image.VerifyResult.OK
