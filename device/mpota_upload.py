# upload: the bytes of an update -- the update session with its streaming
# writer, and the SHA-256 of what a slot holds. The record's transitions
# (Slots.begin before the bytes, Slots.finish once they are synced and
# verified) live in slots.py. Loaded when a session begins and released when
# it ends (service.py), so an idle device holds none of this code.
import sys
import asyncio
import uhashlib as hashlib

import mpota_hal as hal
import mpota_slots as slots
from mpota_lineproto import ProtoError, E_NO_SPACE, E_OUT_OF_RANGE, E_WRITE_FAILED

SYNC_EVERY = 65536  # sync the slot file this often: the resume point after a power cut
SECTOR = 4096  # the unit a reusing upload keeps or sends (a flash sector, a littlefs block)
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


def is_held(held, k):
    # sector k's bit in a held bitmap (bit k & 7 of byte k >> 3)
    return k >> 3 < len(held) and held[k >> 3] & (1 << (k & 7))


def open_slot(sl, i):
    """-> (an open file of slot i to read, whether to close it). The running
    slot's file is open already (appfs mounts the app from it; its _mounts
    holds the file, read here rather than through code added to a module that
    stays loaded while the app runs): that handle is shared (every read seeks
    first), since littlefs counts the blocks of an open file twice once a
    second handle of it is closed (statvfs, hence max_image, then falls short
    until the app is unmounted)."""
    m = sys.modules.get("mpota_appfs")
    f = m._mounts.get("/app") if m is not None and i == sl.running else None
    if f is not None:
        return f, False
    return open(sl.path(i), "rb"), True


def sector_hashes(sl, i, first, count, buf):
    """The first 8 bytes of the SHA-256 of each 4 KiB sector of slot i's file
    from sector `first` (at most `count`; fewer where the file ends; the last
    one may be short), read through `buf` (any size). -> (file size, bytes)."""
    size = sl.file_size(i)
    out = bytearray()
    mv = memoryview(buf)
    step = min(len(buf), SECTOR)
    pos = first * SECTOR
    if size > pos:
        f, own = open_slot(sl, i)
        try:
            f.seek(pos)
            while count > 0 and pos < size:
                h = hashlib.sha256()
                end = min(pos + SECTOR, size)
                while pos < end:
                    n = f.readinto(mv[:min(step, end - pos)])
                    if not n:
                        break
                    h.update(mv[:n])
                    pos += n
                out += h.digest()[:8]
                count -= 1
                hal.wdt_feed()
        finally:
            if own:
                f.close()
    return max(size, 0), out


class Writer:
    """Appends to a slot file; the contiguous byte count is the watermark.

    With `held` (a bitmap of the 4 KiB sectors of the new image, `size`
    bytes, that another slot's file holds at the same place; `src`: its
    open_slot() pair), each held sector the watermark reaches is copied from
    `src` through `buf` (any size), and the upload is otherwise a plain one (synced
    every SYNC_EVERY, resumed from its watermark).

    With `held` and no `src`, the held sectors are the slot file's own
    (slots.Slots.begin_reuse opened it): the file is written anew from
    offset 0 while the old bytes are still readable
    (littlefs frees them only at the sync that commits the new file), and each
    held sector the watermark reaches is copied from them through `buf`: only
    the other sectors cross the link. The old bytes are kept until no held
    sector is left ahead (no sync before: a sync would let littlefs reuse
    their blocks), so a cut before then leaves the old file as it was and the
    upload starts again from what its sectors hold."""

    def __init__(self, path, offset, held=None, size=0, buf=None, src=None):
        self.r = None
        self.rown = True  # close r when done (not a handle shared with the app's mount)
        self.held = held
        self.size = size
        self.buf = buf
        # the held sectors are this file's own old bytes (src None): no sync until they are copied
        self.keep = held is not None and src is None
        try:
            if held is not None:
                if src is None:
                    self.r = open(path, "rb")  # before the new file replaces it
                else:
                    self.r, self.rown = src
                self.r.seek(0, 2)
                self.rsize = self.r.tell()
                if self.keep:
                    offset = 0
            self.f = open(path, "ab" if offset else "wb")
        except OSError as e:
            self.close()
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
        if self.unsynced >= SYNC_EVERY and not (self.keep and self.r is not None):
            self.sync()
        return n

    async def copy_held(self, c, dev, s):
        """Copy the held sectors at the watermark one at a time, each
        acknowledged to connection c (the peer sends what follows them once the
        watermark passes them), yielding between them so the app runs: the
        connection loop (conn.py) calls this after each batch of messages
        while session s is c's."""
        while self.r is not None and dev.session is s and not c.gone and self.fill(1):
            c.ack(self.pos)
            await c.w.drain()
            await asyncio.sleep_ms(0)

    def fill(self, limit=-1):
        # copy up to `limit` (-1: all) held sectors at the watermark from the
        # source; -> how many. A sector the source lacks (it is shorter) is not
        # held after all: the peer sends it (its next DATA is out of order
        # and rewinds to it)
        held = self.held
        r = self.r
        buf = memoryview(self.buf)
        done = 0
        while done != limit and self.pos < self.size and not self.pos % SECTOR and is_held(held, self.pos // SECTOR):
            end = min(self.pos + SECTOR, self.size)
            k = self.pos // SECTOR
            if self.rsize < end:  # the old file ends before this sector does
                held[k >> 3] &= ~(1 << (k & 7))
                break
            r.seek(self.pos)
            while self.pos < end:
                n = r.readinto(buf[:min(len(buf), end - self.pos)])
                if not n:
                    raise ProtoError(E_WRITE_FAILED, "the slot's old bytes ended at %d" % self.pos)
                self.write(buf[:n])
            hal.wdt_feed()
            done += 1
        k = (self.pos + SECTOR - 1) // SECTOR
        while k < len(held) * 8 and not is_held(held, k):
            k += 1
        if k * SECTOR >= self.size:  # no held sector ahead: the old bytes may go
            self.r = None
            if self.rown:
                r.close()
        return done

    def sync(self):
        if self.unsynced:
            self.f.flush()  # littlefs: lfs_file_sync, data and size committed
            self.unsynced = 0

    def close(self):
        for f in (self.r if self.rown else None, getattr(self, "f", None)):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self.r = self.f = None


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


def open_session(sl, kind, owner, slot, size, sha, offset, allow_down=False, held=None, buf=None, src=None):
    """The session of an upload to `slot` from `offset`; with `held` (and a
    copy `buf`), one that copies the sectors slot `src` (None: `slot` itself)
    holds (Writer)."""
    return Session(kind, owner, slot, size, sha, Writer(sl.path(slot), offset, held, size, buf,
                                                        None if src is None else open_slot(sl, src)), allow_down)
