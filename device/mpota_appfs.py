# appfs: mount the littlefs inside an image slot read-only at /app.
#
# The application's files are the body of its MCUboot image: a littlefs
# (block size 4096) stored at `offset` of the slot. A read-only block
# device over that region lets VfsLfs2 mount it in place -- nothing is
# copied or unpacked, and reads go straight to the slot's files with readinto.
import uos as os
import vfs

BLOCK = 4096
_EROFS = 30

_mounts = {}  # type: dict  # mountpoint -> the slot open to read (slotio)


class RegionBdev:
    """Read-only block device over `length` bytes at `offset` of an open file."""

    def __init__(self, f, offset, length, block_size=BLOCK):
        if length <= 0 or length % block_size:
            raise ValueError("appfs: region length %d is not a multiple of %d" % (length, block_size))
        self.f = f
        self.offset = offset
        self.length = length
        self.bs = block_size

    def readblocks(self, n, buf, off=0):
        pos = n * self.bs + off
        if pos < 0 or pos + len(buf) > self.length:
            raise OSError(5)  # EIO: outside the region
        self.f.seek(self.offset + pos)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        raise OSError(_EROFS)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.length // self.bs
        if op == 5:  # block size
            return self.bs
        if op == 6:  # erase
            return -_EROFS
        return 0  # init, deinit, sync


def mount(f, offset, length, mountpoint="/app", cache=256):
    """Mount the littlefs at `offset` (`length` bytes) of `f` (a slot open to
    read: slots.Slots.open) read-only at `mountpoint`; f is closed at umount
    (or now, when the mount fails). Returns the VfsLfs2. Raises OSError with
    a clear message. littlefs' caches (the mount's two and each open file's)
    are 4 x `cache` bytes: 32 suits a mount that only lists names (128-byte
    caches, where the app's mount has 1 KB ones; files of up to 512 bytes
    are stored in their directory, read through that cache)."""
    if mountpoint in _mounts:
        umount(mountpoint)
    try:
        fs = vfs.VfsLfs2(RegionBdev(f, offset, length), progsize=cache)
        vfs.mount(fs, mountpoint, readonly=True)
    except OSError as e:
        f.close()
        raise OSError("appfs: no mountable littlefs at %d (+%d bytes) of the slot: %r" % (offset, length, e))
    except Exception:
        f.close()
        raise
    _mounts[mountpoint] = f
    return fs


def rest():
    """Let go of each mount's open sector file (slotio.Reader.rest: the next
    read opens it again). Before a request beside the app (dispatch.serve):
    with the app holding the heap, that file object's 1,152 bytes are the
    hole the request's own file (the slot record) fits in."""
    for f in _mounts.values():
        r = getattr(f, "rest", None)  # (a slot in one file from agent 0.4 stays open)
        if r is not None:
            r()


def umount(mountpoint="/app"):
    f = _mounts.pop(mountpoint, None)
    try:
        vfs.umount(mountpoint)
    except OSError:
        pass  # not mounted
    if f is not None:
        f.close()


def mounted(mountpoint="/app"):
    return mountpoint in _mounts


def _stems(path):
    # module names a folder provides: foo.py, foo.mpy and package folders
    out = []
    for e in os.ilistdir(path):
        n = e[0]
        if e[1] == 0x4000:
            out.append(n)
        elif n.endswith(".py"):
            out.append(n[:-3])
        elif n.endswith(".mpy"):
            out.append(n[:-4])
    return out


def check_app(root="/app"):
    """Refuse (ValueError, naming the file) an app mounted at `root` that has no
    main.py, or a top-level module in the agent's namespace (mpota, mpota_*) or
    named like a file in / (which comes first on sys.path and would stand in
    for the app's): at commit (update.validate) and again at boot (bootmgr)."""
    mine = _stems("/")
    names = _stems(root)
    if "main" not in names:
        raise ValueError("the image has no main.py")
    for n in names:
        if n != "main" and (n in mine or n == "mpota" or n.startswith("mpota_")):
            raise ValueError("the image's %s is in the agent's namespace (main, mpota, mpota_*)" % n)
