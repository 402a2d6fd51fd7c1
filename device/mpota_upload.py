# upload: the bytes of an update -- the update session with its streaming
# writer, and the SHA-256 of what a slot holds. The record's transitions
# (Slots.begin before the bytes, Slots.finish once they are synced and
# verified) live in slots.py. Loaded when a session begins and released when
# it ends (service.py), so an idle device holds none of this code.
import uhashlib as hashlib

import mpota_hal as hal
import mpota_slots as slots
from mpota_lineproto import ProtoError, E_NO_SPACE, E_OUT_OF_RANGE, E_WRITE_FAILED

SYNC_EVERY = 65536  # sync the slot file this often: the resume point after a power cut
NATIVE = "native"  # session kinds
LEGACY = "legacy"


def digest(sl, i, size, buf):
    """SHA-256 of the first `size` bytes of slot i, read through `buf`."""
    h = hashlib.sha256()
    mv = memoryview(buf)
    left = size
    with open(sl.path(i), "rb") as f:
        while left > 0:
            n = f.readinto(mv[:min(left, len(buf))])
            if not n:
                break
            h.update(mv[:n])
            left -= n
            hal.wdt_feed()  # ~0.5 s for a full slot on a board
    if left:
        raise ProtoError(E_OUT_OF_RANGE, "slot %s holds %d bytes fewer than %d" % (slots.NAMES[i], left, size))
    return h.digest()


class Writer:
    """Appends to a slot file; the contiguous byte count is the watermark."""

    def __init__(self, path, offset):
        try:
            self.f = open(path, "ab" if offset else "wb")
        except OSError as e:
            raise ProtoError(E_WRITE_FAILED, "cannot open %s: %s" % (path, e))
        self.pos = offset
        self.unsynced = 0

    def write(self, mv):
        try:
            n = self.f.write(mv)
        except OSError as e:
            # what was written stays; the watermark is re-read on resume
            raise ProtoError(E_NO_SPACE if e.args and e.args[0] == 28 else E_WRITE_FAILED,
                             "flash write failed: %s" % e)
        if n is None:
            n = 0
        self.pos += n
        self.unsynced += n
        if self.unsynced >= SYNC_EVERY:
            self.sync()
        return n

    def sync(self):
        if self.unsynced:
            self.f.flush()  # littlefs: lfs_file_sync, data and size committed
            self.unsynced = 0

    def close(self):
        f = self.f
        if f is not None:
            self.f = None
            try:
                f.close()
            except OSError:
                pass


class Session:
    """The one update in progress: its kind (NATIVE or LEGACY), the connection
    that owns it, the slot and its writer."""
    client = None  # native: the client id its begin named (update.may_update)

    def __init__(self, kind, owner, slot, size, sha, w, allow_down):
        self.kind = kind
        self.owner = owner
        self.slot = slot
        self.size = size
        self.sha = sha
        self.w = w
        self.allow_down = allow_down
        self.crc = 0  # legacy: CRC-32 of what was appended
        self.t = hal.ticks_ms()


def open_session(sl, kind, owner, slot, size, sha, offset, allow_down=False):
    return Session(kind, owner, slot, size, sha, Writer(sl.path(slot), offset), allow_down)
