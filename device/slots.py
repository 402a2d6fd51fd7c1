# slots: the two application slots (A/B) as files inside the filesystem, and
# the journaled state record that says which one boots.
#
# Slots are files (/mpota-slots/a.img, b.img) because a stock Pico W build
# has no raw flash outside the littlefs (DESIGN.md). The state record
# state.json beside them is never modified in place:
#
#   1. the new record is written to state.new and closed; littlefs commits a
#      file's data and size only at close/sync, so until then state.new is
#      absent, empty or short (and its CRC line fails);
#   2. os.rename(state.new, state.json) replaces the old record in ONE
#      littlefs metadata commit (rename over an existing file is atomic in
#      littlefs; POSIX rename is atomic too).
#
# A power cut before step 2 leaves the old state.json (load() ignores and
# removes state.new); a cut after it leaves the new one. The CRC line guards
# the record on filesystems without those guarantees: an unreadable
# state.json falls back to a complete state.new, then to "no application".
#
# Slot data obeys one rule that keeps the record honest: bytes are removed
# BEFORE a record that no longer claims them is committed (delete, then
# commit "writing"), and a record claiming a complete image is committed only
# AFTER the bytes were synced and verified. A record that names a file that
# is missing (a cut between delete and commit) is repaired to "empty" at load.
#
# Reading, repairing and the boot decision are in slotboot.py: boot-only
# code, dropped after boot so that it costs the running device no heap.
import os
import json
import binascii

from proto import ProtoError, E_INCORRECT_STATE

NAMES = ("a", "b")
EMPTY = "empty"
WRITING = "writing"
COMPLETE = "complete"
PENDING = "pending"
TRIAL = "trial"
CONFIRMED = "confirmed"
BAD = "bad"

# Not "/slots": "/" is on sys.path and MicroPython imports a directory as a
# namespace package, so `import slots` would find the directory, not slots.py.
ROOT = "/mpota-slots"


def _blank():
    return {"st": EMPTY, "size": 0, "sha": None, "ver": None}


def _fsize(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class Slots:
    """The loaded record and every change to it after boot. slotboot.open()
    reads (and repairs) the record and makes one; slotboot decides the boot."""

    def __init__(self, rec, root=ROOT, slot_size=368640, max_trials=3):
        self.rec = rec
        self.root = root
        self.slot_size = slot_size
        self.max_trials = max_trials
        self.running = None  # slot whose app runs now (set at boot)
        self.note = ""
        self.cur = root + "/state.json"
        self.new = root + "/state.new"

    # -- the record ------------------------------------------------------------
    def _write_cur(self, rec):
        body = json.dumps(rec)
        with open(self.new, "w") as f:
            f.write(body)
            f.write("\n%08x\n" % binascii.crc32(body.encode()))
        # close() above synced the whole file; the rename is the commit point
        os.rename(self.new, self.cur)

    def commit(self):
        self.rec["seq"] += 1
        self._write_cur(self.rec)

    def _forget(self, i):
        # slot i holds nothing: drop every pointer to it (not committed)
        rec = self.rec
        rec["s"][i] = _blank()
        for k in ("active", "pending", "trial", "lw"):
            if rec[k] == i:
                rec[k] = None
        if rec["trial"] is None:
            rec["tc"] = 0

    # -- queries ---------------------------------------------------------------
    def path(self, i):
        return "%s/%s.img" % (self.root, NAMES[i])

    def slot(self, i):
        return self.rec["s"][i]

    def state(self, i):
        return self.rec["s"][i]["st"]

    def file_size(self, i):
        return _fsize(self.path(i))

    def active(self):
        return self.rec["active"]

    def pending(self):
        return self.rec["pending"]

    def on_trial(self):
        r = self.running
        return r is not None and self.rec["trial"] == r

    def inactive(self):
        # where an update goes: never the slot that runs (or would run)
        r = self.running
        if r is None:
            r = self.rec["active"]
        return 0 if r is None else 1 - r

    def info(self, i):
        s = self.rec["s"][i]
        return {"state": s["st"], "size": s["size"], "sha256": s["sha"], "version": s["ver"]}

    def _confirmed(self, i):
        if i is not None and self.rec["s"][i]["st"] == CONFIRMED:
            return i
        return None

    # -- operator / app state changes ------------------------------------------
    def confirm(self):
        r = self.running
        rec = self.rec
        if r is not None and rec["active"] == r and rec["trial"] is None:
            return r  # already confirmed: confirm() is idempotent
        if r is None or rec["trial"] != r:
            raise ProtoError(E_INCORRECT_STATE, "no slot is on trial")
        rec["s"][r]["st"] = CONFIRMED
        rec["active"] = r
        rec["trial"] = None
        rec["tc"] = 0
        self.commit()
        self.note = "%s confirmed" % NAMES[r]
        return r

    def rollback(self):
        rec = self.rec
        cur = self.running if self.running is not None else rec["active"]
        if cur is None:
            raise ProtoError(E_INCORRECT_STATE, "no application to roll back from")
        other = self._confirmed(1 - cur)
        if other is None:
            raise ProtoError(E_INCORRECT_STATE, "slot %s holds no confirmed image" % NAMES[1 - cur])
        rec["s"][cur]["st"] = BAD
        rec["active"] = other
        rec["trial"] = None
        rec["tc"] = 0
        if rec["pending"] == cur:
            rec["pending"] = None
        self.commit()
        return other

    def erase(self, i):
        if i == self.running:
            raise ProtoError(E_INCORRECT_STATE, "slot %s is running" % NAMES[i])
        _remove(self.path(i))  # bytes first, then the record (see top)
        self._forget(i)
        self.commit()

