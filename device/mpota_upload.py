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
import mpota_slotio as slotio
from mpota_lineproto import ProtoError, E_NO_SPACE, E_OUT_OF_RANGE, E_WRITE_FAILED, E_BAD_FRAME

ZBITS = 9  # the window (2 ** ZBITS bytes) of a DATA frame's deflate stream: 512 B to inflate it

SECTOR = slotio.CHUNK  # the unit a reusing upload keeps or sends: a flash sector, a littlefs block, a slot file
NATIVE = "native"  # session kinds
LEGACY = "legacy"


def digest(sl, i, size, buf):
    """SHA-256 of the first `size` bytes of slot i, read through `buf`."""
    h = hashlib.sha256()
    mv = memoryview(buf)
    left = size
    f, own = open_slot(sl, i)
    try:
        f.seek(0)
        while left > 0:
            n = f.readinto(mv[:min(left, len(buf))])
            if not n:
                break
            h.update(mv[:n])
            left -= n
            hal.wdt_feed()  # ~0.5 s for a full slot on a board
    finally:
        if own:
            f.close()
    if left:
        raise ProtoError(E_OUT_OF_RANGE, "slot %s holds %d bytes fewer than %d" % (slots.NAMES[i], left, size))
    return h.digest()


def is_held(held, k):
    # sector k's bit in a held bitmap (bit k & 7 of byte k >> 3)
    return k >> 3 < len(held) and held[k >> 3] & (1 << (k & 7))


def open_slot(sl, i):
    """-> (slot i open to read, whether to close it). The running slot is
    open already (appfs mounts the app from it; its _mounts holds the reader,
    read here rather than through code added to a module that stays loaded
    while the app runs): that reader is shared (every read seeks first), since
    littlefs counts the blocks of an open file twice once a second handle of
    it is closed (statvfs, hence max_image, then falls short until the app is
    unmounted)."""
    m = sys.modules.get("mpota_appfs")
    f = m._mounts.get("/app") if m is not None and i == sl.running else None
    if f is not None:
        return f, False
    return sl.open(i), True


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
    """Writes an image into slot `base`'s sector files (slotio) from the
    watermark `offset`: the contiguous byte count, the resume point. Each
    sector file is closed as it fills, which commits it (littlefs), so a cut
    loses at most the sector being written.

    With `held` (a bitmap of the 4 KiB sectors of the new image, `size`
    bytes, that a slot holds at the same place) and `src` (another slot, the
    running one: its open_slot() pair), each held sector the watermark reaches
    is copied from `src` through `buf`.

    With `held` and no `src`, the held sectors are the slot's own
    (slots.Slots.begin_reuse opened it): the watermark passes them without a
    byte written, and only the other sectors' files are rewritten, from
    offset 0. A cut leaves a mix of old and new sector files under a "writing"
    record; the peer asks which sectors the slot holds and begins again."""

    def __init__(self, base, offset, held=None, size=0, buf=None, src=None):
        self.base = base
        self.held = held
        self.size = size
        self.buf = buf
        self.r, self.rown = src or (None, True)  # the slot copied from (its reader; close it when done)
        self.keep = held is not None and src is None  # the held sectors are this slot's own
        # held sectors left ahead of the watermark (conn.py then calls copy_held)
        self.ahead = held is not None
        self.pos = 0 if self.keep else offset
        self.f = None  # the sector file being written

    def write(self, mv):
        n = 0
        while n < len(mv):
            pos = self.pos
            try:
                if self.f is None:
                    self.f = open(slotio.chunk(self.base, pos // SECTOR), "ab" if pos % SECTOR else "wb")
                got = self.f.write(mv[n:n + SECTOR - pos % SECTOR]) or 0
            except OSError as e:
                # what was written stays; the watermark is re-read on resume
                raise ProtoError(E_NO_SPACE if e.args and e.args[0] == 28 else E_WRITE_FAILED,
                                 "flash write failed: %s" % e)
            if not got:
                break
            n += got
            self.pos += got
            if not self.pos % SECTOR or self.pos == self.size:
                self.sync(True)
        return n

    async def copy_held(self, c, dev, s):
        """Pass the held sectors at the watermark, copying those from another
        slot one at a time, each acknowledged to connection c (the peer sends
        what follows them once the watermark passes them), yielding between
        them so the app runs: the connection loop (conn.py) calls this after
        each batch of messages while session s is c's."""
        while self.ahead and dev.session is s and not c.gone and self.fill(8 if self.keep else 1):
            c.ack(self.pos)
            await c.w.drain()
            await asyncio.sleep_ms(0)

    def fill(self, limit=-1):
        # pass up to `limit` (-1: all) held sectors at the watermark, copying
        # them from `src`; -> how many. A sector the slot lacks after all is
        # not held: the peer sends it (its next DATA is out of order and
        # rewinds to it)
        held = self.held
        done = 0
        while done != limit and self.pos < self.size and not self.pos % SECTOR and is_held(held, self.pos // SECTOR):
            k = self.pos // SECTOR
            n = min(SECTOR, self.size - self.pos)
            if self.keep:
                ok = slots.file_size(slotio.chunk(self.base, k)) == n
                if ok:
                    self.pos += n
            else:
                ok = self._copy(n)
            if not ok:
                held[k >> 3] &= ~(1 << (k & 7))
                break
            done += 1
        k = (self.pos + SECTOR - 1) // SECTOR
        while k < len(held) * 8 and not is_held(held, k):
            k += 1
        if k * SECTOR >= self.size:  # no held sector ahead
            self.ahead = False
            self._drop_src()
            if self.keep and self.pos >= self.size:
                self.close()
        return done

    def _copy(self, n):
        # copy the sector at the watermark (n bytes) from src; False when src ends before it does
        r = self.r
        buf = memoryview(self.buf)
        r.seek(self.pos)
        if r.readinto(buf[:min(len(buf), n)]) != min(len(buf), n):
            return False
        end = self.pos + n
        while True:
            self.write(buf[:min(len(buf), end - self.pos)])
            hal.wdt_feed()
            if self.pos >= end:
                return True
            if not r.readinto(buf[:min(len(buf), end - self.pos)]):
                raise ProtoError(E_WRITE_FAILED, "the slot's old bytes ended at %d" % self.pos)

    def _drop_src(self):
        r, self.r = self.r, None
        if r is not None and self.rown:
            r.close()

    def sync(self, end=False):
        # commit the sector being written (littlefs: lfs_file_sync); `end`: it is full, close it
        f = self.f
        if f is not None:
            if end:
                self.f = None
                f.close()
                if self.keep and self.pos >= self.size:
                    self.close()
            else:
                f.flush()

    def close(self):
        self._drop_src()
        f, self.f = self.f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        if self.keep and self.pos >= self.size:
            # a reusing upload that ended: the sectors past the new image's end go
            self.keep = False
            slots.drop(self.base, (self.size + SECTOR - 1) // SECTOR)


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
        self.z = None  # with "deflate" (update.op_begin): the buffer a DATA frame inflates into

    def inflate(self, mv):
        """The image bytes of a DATA frame's payload `mv` in a deflate session
        (a raw deflate stream, ZBITS window, of at most 4096 bytes), inflated
        into self.z; -> how many."""
        import deflate
        import uio as io
        try:
            d = deflate.DeflateIO(io.BytesIO(mv), deflate.RAW, ZBITS)
            n = d.readinto(self.z)
            more = d.read(1)
        except Exception as e:  # a stream that is not deflate (the frame's CRC held: the sender's fault)
            raise ProtoError(E_BAD_FRAME, "DATA is not a deflate stream: %r" % e)
        if more:
            raise ProtoError(E_BAD_FRAME, "DATA inflates past %d bytes" % len(self.z))
        return n


def open_session(sl, kind, owner, slot, size, sha, offset, allow_down=False, held=None, buf=None, src=None):
    """The session of an upload to `slot` from `offset`; with `held` (and a
    copy `buf`), one that copies the sectors slot `src` (None: `slot` itself)
    holds (Writer)."""
    return Session(kind, owner, slot, size, sha, Writer(sl.path(slot), offset, held, size, buf,
                                                        None if src is None else open_slot(sl, src)), allow_down)
