# upload: the bytes of an update -- preparing the inactive slot (or resuming
# it), the update session with its streaming writer, the final record and the
# SHA-256 of what a slot holds. Loaded when a session begins and released
# when it ends (service.py), so an idle device holds none of this code.
# The ordering rules of slots.py hold: bytes are removed before the record
# stops claiming them, and a record claims an image only after its bytes
# are synced and verified.
import uhashlib as hashlib

import mpota_hal as hal
import mpota_slots as slots
from mpota_lineproto import ProtoError, E_NO_SPACE, E_OUT_OF_RANGE, E_WRITE_FAILED

SYNC_EVERY = 65536  # sync the slot file this often: the resume point after a power cut
NATIVE = "native"  # session kinds
LEGACY = "legacy"


def check_fits(sl, i, size):
    room = sl.space(i)
    if size < 1 or size > room:
        raise ProtoError(E_NO_SPACE, "%d bytes do not fit: slot %s can take %d bytes (max_image)"
                         % (size, slots.NAMES[i], room))


def prepare(sl, i, size, sha=None, ver=None, legacy=False):
    """Open slot i for an upload of `size` bytes; returns the resume offset.
    Same size and sha256 as a partial (or finished) upload: resume from the
    bytes held. Otherwise the slot is emptied first -- but only once the new
    image is known to fit, so a refused update never destroys a fallback."""
    rec = sl.rec
    s = rec["slots"][i]
    have = sl.file_size(i)
    if (sha and s["sha256"] == sha and s["size"] == size and 0 <= have <= size
            and s["state"] in (slots.WRITING, slots.COMPLETE, slots.PENDING)):
        if s["state"] != slots.WRITING or rec["pending"] == i:
            s["state"] = slots.WRITING
            if rec["pending"] == i:
                rec["pending"] = None
            sl.commit()
        return have
    check_fits(sl, i, size)
    slots.remove(sl.path(i))
    sl.forget(i)
    rec["slots"][i] = {"state": slots.WRITING, "size": size, "sha256": sha, "version": ver}
    if legacy:
        rec["legacy_slot"] = i  # ReadAddress reads the slot the legacy service wrote
    sl.commit()
    return 0


def finish(sl, i, sha, ver, pending, proof=None):
    """Record a verified image in slot i: `complete`, or `pending` (boots on
    trial at the next reset). Its bytes are synced already. `proof`: the
    signature check's result (signer, image_hash, sec_cnt) for boot."""
    rec = sl.rec
    s = rec["slots"][i]
    for k in ("signer", "image_hash", "sec_cnt"):
        s[k] = proof[k] if proof else None
    s["sha256"] = sha
    s["version"] = ver
    s["size"] = sl.file_size(i)
    if pending:
        s["state"] = slots.PENDING
        rec["pending"] = i
    else:
        s["state"] = slots.COMPLETE
        if rec["pending"] == i:
            rec["pending"] = None
    sl.commit()


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
