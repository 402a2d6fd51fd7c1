# slotio: the bytes of a slot -- upload preparation and resume, the
# streaming writer and hashing (reads are in slotops.py). Apart from slots.py (the record and
# its state machine) so that neither module is large to compile on a board.
# The ordering rules of slots.py hold: bytes are removed before the record
# stops claiming them, and a record claims an image only after its bytes
# are synced and verified.
import os
import hashlib

import slots as S
from proto import ProtoError, E_NO_SPACE, E_OUT_OF_RANGE, E_WRITE_FAILED

SYNC_EVERY = 65536  # sync the slot file this often: the resume point after a power cut


def prepare(sl, i, size, sha=None, ver=None, legacy=False):
    """Open slot i for an upload of `size` bytes; returns the resume offset.
    Same size and sha256 as a partial (or finished) upload: resume from the
    bytes held. Otherwise the slot is emptied first."""
    if size < 1 or size > sl.slot_size:
        raise ProtoError(E_NO_SPACE, "%d bytes do not fit a %d-byte slot" % (size, sl.slot_size))
    rec = sl.rec
    s = rec["s"][i]
    have = sl.file_size(i)
    if (sha and s["sha"] == sha and s["size"] == size and 0 <= have <= size
            and s["st"] in (S.WRITING, S.COMPLETE, S.PENDING)):
        if s["st"] != S.WRITING or rec["pending"] == i:
            s["st"] = S.WRITING
            if rec["pending"] == i:
                rec["pending"] = None
            sl.commit()
        return have
    S._remove(sl.path(i))
    sl._forget(i)
    try:
        st = os.statvfs(sl.root)
        free = st[0] * st[3]
    except (OSError, AttributeError):
        free = size + 16384
    # keep two blocks for littlefs' copy-on-write metadata
    if size + 8192 > free:
        sl.commit()
        raise ProtoError(E_NO_SPACE, "%d bytes needed, %d free on the filesystem" % (size, free))
    rec["s"][i] = {"st": S.WRITING, "size": size, "sha": sha, "ver": ver}
    if legacy:
        rec["lw"] = i  # ReadAddress reads the slot the legacy service wrote
    sl.commit()
    return 0


def finish(sl, i, sha, ver, pending):
    """Record a verified image in slot i: `complete`, or `pending` (boots on
    trial at the next reset). Its bytes are synced already."""
    rec = sl.rec
    s = rec["s"][i]
    s["sha"] = sha
    s["ver"] = ver
    s["size"] = sl.file_size(i)
    if pending:
        s["st"] = S.PENDING
        rec["pending"] = i
    else:
        s["st"] = S.COMPLETE
        if rec["pending"] == i:
            rec["pending"] = None
    sl.commit()


def digest(sl, i, size, buf, feed=None):
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
            if feed is not None:
                feed()
    if left:
        raise ProtoError(E_OUT_OF_RANGE, "slot %s holds %d bytes fewer than %d" % (S.NAMES[i], left, size))
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
