"""Loading what the user wants to push: an MCUboot image file, or a folder built on the fly.

Checks a file locally before anything is sent (magic, sizes, the SHA-256 TLV
over header+body+protected TLVs), so a truncated or corrupted file fails here
with a clear message instead of after a full upload.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from errors import BadImage, UsageError

IMAGE_MAGIC = 0x96F3B83D
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
TLV_SHA256 = 0x10
HEADER_SIZE = 32


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
    """Validate MCUboot framing and the SHA-256 TLV; return the version string."""
    if len(data) < HEADER_SIZE:
        raise BadImage("%s is %d bytes, too short for an MCUboot image" % (name, len(data)))
    magic, _load, hdr_size, prot_size, img_size, _flags, major, minor, rev, build = struct.unpack_from(
        "<IIHHIIBBHI", data, 0)
    if magic != IMAGE_MAGIC:
        raise BadImage("%s is not an MCUboot image (magic 0x%08X)" % (name, magic))
    end = hdr_size + img_size
    if hdr_size < HEADER_SIZE or end + 4 > len(data):
        raise BadImage("%s is truncated: header says %d bytes of header+body, file has %d"
                       % (name, end, len(data)))
    pos = end
    hashed_end = end
    if prot_size:
        pmagic, ptot = struct.unpack_from("<HH", data, pos)
        if pmagic != TLV_PROT_INFO_MAGIC or ptot != prot_size:
            raise BadImage("%s has a damaged protected TLV area" % name)
        pos += prot_size
        hashed_end = pos
    if pos + 4 > len(data):
        raise BadImage("%s is truncated before its TLV area" % name)
    tmagic, ttot = struct.unpack_from("<HH", data, pos)
    if tmagic != TLV_INFO_MAGIC or pos + ttot > len(data):
        raise BadImage("%s has no valid TLV area (truncated or corrupted)" % name)
    digest = None
    p, stop = pos + 4, pos + ttot
    while p + 4 <= stop:
        ttype, tlen = struct.unpack_from("<HH", data, p)
        if ttype == TLV_SHA256:
            digest = bytes(data[p + 4:p + 4 + tlen])
        p += 4 + tlen
    if digest is None:
        raise BadImage("%s has no SHA-256 TLV" % name)
    if hashlib.sha256(data[:hashed_end]).digest() != digest:
        raise BadImage("%s is corrupted: its SHA-256 does not match the TLV" % name)
    return "%d.%d.%d+%d" % (major, minor, rev, build)


def folder_version(folder: Path) -> Optional[str]:
    """The version a folder declares in a VERSION file (first line), if any."""
    f = folder / "VERSION"
    if f.is_file():
        text = f.read_text(encoding="utf-8").strip().splitlines()
        return text[0].strip() if text else None
    return None


def build_folder(folder: Path, version: Optional[str], sign_key: Optional[str] = None) -> Image:
    """Build an application image from a folder of .py/.mpy files (host/appimage.py)."""
    if not folder.is_dir():
        raise UsageError("%s is not a folder" % folder)
    if not (folder / "main.py").is_file() and not (folder / "main.mpy").is_file():
        raise UsageError("%s has no main.py" % folder, "the app's main.py must define main()")
    version = version or folder_version(folder)
    if not version:
        raise UsageError("no version for %s" % folder, "give --version X.Y.Z or put it in %s/VERSION" % folder)
    try:
        import appimage
    except ImportError as e:
        raise UsageError("cannot build images: host/appimage.py is missing (%s)" % e)
    kwargs = {"version": version}
    if sign_key:
        kwargs["key"] = sign_key
    try:
        data = appimage.build_app_image(str(folder), **kwargs)
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
