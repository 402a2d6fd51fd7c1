"""Loading what the user wants to push: an MCUboot image file, or a folder built on the fly.

Checks a file locally before anything is sent, with the parser the device
runs (shared/mcuboot.py: magic, sizes, the SHA-256 TLV), so a truncated or corrupted file fails here
with a clear message instead of after a full upload.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mcuboot
from errors import BadImage, UsageError


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
