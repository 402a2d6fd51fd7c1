# slotio: reading a slot's bytes. A slot is a run of chunk files, one per
# 4 KiB sector of its image: /mpota-slots/a.0, a.1, ... (the last may be
# short). littlefs rewrites a file from its first changed block to its end
# (each block points at the ones before), so an image kept in one file is
# rewritten whole whenever its first sector (the MCUboot header) changes: with
# a file per sector an update rewrites only the sectors that changed
# (upload.Writer). A 4096-byte file is one littlefs block, without pointers.
# slots.py holds the rest (sizes, deleting, a slot of one file from before
# agent 0.5).
#
# Resident: loaded at boot (slots.py imports it), and the app's mount keeps a
# Reader for as long as the app runs; so it holds only what that needs.
import gc

CHUNK = 4096  # (no const(): CPython imports this too, through slots.py: tests/test_trust.py)
_TIGHT = 16384  # free heap under which a sector's file object is made after a collection


def chunk(base, k):
    return "%s.%d" % (base, k)


class Reader:
    """A slot open for reading (seek from its start, readinto, close), one
    chunk file open at a time."""

    def __init__(self, base):
        self.base = base
        self.pos = 0
        self.k = -1
        self.f = None

    def seek(self, pos):
        self.pos = pos

    def readinto(self, buf):
        mv = memoryview(buf)
        n = 0
        while n < len(mv):
            k = self.pos // CHUNK
            if k != self.k:
                # the name first: made after close() it would take the start
                # of the hole the closed file's 1,152 bytes leave, and the
                # next file object, the same size, would need a new one
                p = chunk(self.base, k)
                self.close()
                if gc.mem_free() < _TIGHT:
                    # beside an app holding the heap: the closed file's block is
                    # free only after a collection, and made from here (not
                    # from inside open()'s allocation) it is reliably let go
                    gc.collect()
                try:
                    self.f = open(p, "rb")
                except OSError:
                    break  # past the last chunk
                self.k = k
            self.f.seek(self.pos - k * CHUNK)
            got = self.f.readinto(mv[n:n + CHUNK - self.pos % CHUNK])
            if not got:
                break
            n += got
            self.pos += got
        return n

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        self.k = -1

    rest = close  # (appfs.rest: the open file goes, the next read opens it again)
