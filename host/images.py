"""Application images: a folder -> littlefs -> MCUboot image (imgtool), and back.

    load(path, version=None, sign_key=None) -> Image     an image file, or a folder built now
    build_folder(folder, version, sign_key=None) -> Image
    check_image(data, name) -> version string             the device's own checks, locally
    build_littlefs(folder, block_count=None) -> bytes
    build_app_image(folder_or_littlefs_bytes, version="0.0.0+0", header_size=32, key=None) -> bytes
    inspect_image(data, key=None) -> dict

The body of an application image is a littlefs image (block size 4096, prog
size 256) that the device mounts read-only at /app (device/appfs.py); the
image around it is made by MCUboot's own `imgtool create` so that imgtool,
mcumgr and MCUboot tooling all read it. Images are read back with the
codec's parser (shared/mcuboot.py), the one the device runs, so a truncated
or corrupted file fails here, before anything is sent.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mcuboot  # the codec's MCUboot parser (shared/), also run by the device

from .errors import BadImage, UsageError

BLOCK_SIZE = 4096
PROG_SIZE = 256
HEADROOM_BLOCKS = 2  # spare blocks beyond the smallest that fits

SIG_NAMES = {0x20: "RSA2048", 0x22: "ECDSASIG", 0x23: "RSA3072", 0x24: "ED25519"}
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


def build_app_image(source, version="0.0.0+0", header_size=32, key=None):
    """An MCUboot image whose body is `source` (a folder, built with build_littlefs,
    or littlefs image bytes). `key`: an imgtool private key file (ed25519) to sign."""
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
        _imgtool(*(args + [src, dst]))
        return dst.read_bytes()


def inspect_image(data, key=None):
    """Parse and check an MCUboot image with the codec's parser (shared/mcuboot.py,
    the one the device runs). Returns its dict with sha256 and keyhash as hex,
    plus sha256_ok, signature (name or None), lfs_block_count and, with `key`
    (a key file), signature_ok from imgtool's verify. AppImageError when bad."""
    try:
        info = mcuboot.verify(bytes(data))
    except mcuboot.ImageError as e:
        raise AppImageError(e.message) from None
    info.update(sha256=info["sha256"].hex(), sha256_ok=True, signature=SIG_NAMES.get(info["sig_type"]),
                keyhash=info["keyhash"].hex() if info["keyhash"] else None)
    size = info["img_size"]
    info["lfs_block_count"] = size // BLOCK_SIZE if info["body_is_littlefs"] and size % BLOCK_SIZE == 0 else None
    if key is not None:
        info["signature_ok"] = verify_signature(bytes(data)[:info["total_size"]], key)
    return info


def verify_signature(data, key):
    """imgtool's own verify of an image against a key file: True/False."""
    from imgtool import image, keys

    with tempfile.TemporaryDirectory(prefix="mpota-img-") as d:
        p = Path(d) / "image.bin"
        p.write_bytes(bytes(data))
        result, *_ = image.Image.verify(str(p), keys.load(str(key)))
    return result == image.VerifyResult.OK


# -- what the user pushes: an image file, or a folder built on the fly ---------------

@dataclass
class Image:
    data: bytes
    version: str            # "major.minor.revision+build"
    source: str             # file path or folder it was built from
    built: bool = False     # True when built from a folder just now

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def check_image(data: bytes, name: str = "image") -> str:
    """Validate MCUboot framing and the SHA-256 TLV with the codec's parser
    (shared/mcuboot.py, the one the device runs); return the version string."""
    try:
        return mcuboot.verify(data)["version_str"]
    except mcuboot.ImageError as e:
        raise BadImage("%s: %s" % (name, e.message)) from None


def folder_version(folder: Path) -> Optional[str]:
    """The version a folder declares in a VERSION file (first line), if any."""
    f = folder / "VERSION"
    if f.is_file():
        text = f.read_text(encoding="utf-8").strip().splitlines()
        return text[0].strip() if text else None
    return None


def build_folder(folder: Path, version: Optional[str], sign_key: Optional[str] = None) -> Image:
    """Build an application image from a folder of .py/.mpy files."""
    if not folder.is_dir():
        raise UsageError("%s is not a folder" % folder)
    if not (folder / "main.py").is_file() and not (folder / "main.mpy").is_file():
        raise UsageError("%s has no main.py" % folder, "the app's main.py must define main()")
    version = version or folder_version(folder)
    if not version:
        raise UsageError("no version for %s" % folder, "give --version X.Y.Z or put it in %s/VERSION" % folder)
    kwargs = {"version": version}
    if sign_key:
        kwargs["key"] = sign_key
    try:
        data = build_app_image(str(folder), **kwargs)
    except (ValueError, OSError) as e:
        raise UsageError("cannot build %s: %s" % (folder, e))
    return Image(data=bytes(data), version=check_image(data, str(folder)), source=str(folder), built=True)


def load(path: str, version: Optional[str] = None, sign_key: Optional[str] = None) -> Image:
    """An image from a file, or built from a folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        return build_folder(p, version, sign_key)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError("cannot read %s: %s" % (p, e.strerror or e),
                         "give an image file (.img) or an app folder")
    v = check_image(data, str(p))
    if version and version != v and version.split("+")[0] != v.split("+")[0]:
        raise UsageError("%s holds version %s, not %s" % (p, v, version),
                         "--version applies when building from a folder")
    return Image(data=data, version=v, source=str(p))
