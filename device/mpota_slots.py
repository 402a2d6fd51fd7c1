# slots: the two application slots (A/B) as files inside the filesystem, and
# the journaled state record that says which one boots.
#
# Slots are files (/mpota-slots/a.0, a.1, ...: a file per 4 KiB sector,
# slotio.py says why) because a stock Pico W build has no raw flash outside
# the littlefs (docs/board.md). The state record
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
# AFTER the bytes were synced and verified. A reusing upload (begin_reuse)
# keeps the old bytes under its "writing" record, which claims nothing
# bootable: the sectors that changed are rewritten in place, the others are
# not touched. A record whose slot has lost its first sector file (a cut
# between delete and commit: remove() deletes it first) is repaired to
# "empty" at load.
#
# Every change of the record after boot is a Slots method here (begin,
# begin_reuse, finish, mark_pending, make_permanent, confirm, raise_floor,
# spare_trial, rollback, erase), each committed through commit(). This module is loaded while
# connections are served (attach). The other slot code is loaded only while it
# is needed: bootslots.py (read, repair, the boot decisions: boot only, then
# dropped) and upload.py (the bytes of an update: loaded with a session).
#
# The record: {"seq", "active", "pending", "trial", "trials" (boots of the
# trial slot so far), "legacy_slot" (the slot the reference service wrote:
# ReadAddress reads it), "slots": [{"state", "size", "sha256", "version"} x2]}.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import uos as os
    import ujson as json
    import ubinascii as binascii
except ImportError:  # CPython (tests/test_trust.py)
    import os
    import json
    import binascii

from mpota_lineproto import (ProtoError, E_INCORRECT_STATE, E_VERSION_REFUSED, E_NO_SPACE, E_RESTARTING,
                             SLOT_NAMES as NAMES)
from mpota_lineproto import slot_name as name  # noqa: F401 (slots.name: the handlers' name for it)
import mpota_slotio as slotio
EMPTY = "empty"
WRITING = "writing"
COMPLETE = "complete"
PENDING = "pending"
TRIAL = "trial"
CONFIRMED = "confirmed"
BAD = "bad"

# Not "/slots": "/" is on sys.path and MicroPython imports a directory as a
# namespace package, so `import mpota_slots as slots` would find the directory, not slots.py.
ROOT = "/mpota-slots"
RESERVE = 2  # blocks an upload leaves free for littlefs' copy-on-write metadata
META = 16  # sector files a metadata block is kept free for (Slots.space)


TRUST_PATH = "/mpota_trust.json"  # the trusted signing keys (trust.py reads them)
UPDATE_FLAG = "/mpota_update_mode"  # lean mode: the next boot serves an update (bootmgr; a flag())


# status's "trust" on a device with no trust store (trust.describe says the
# same): the boot manager uses it without loading trust.py
NO_KEY_WARNING = "no trusted key: UNSIGNED IMAGES ARE ACCEPTED (provision one: docs/security.md)"


def trusting():
    """Is there a trust store (trust.py decides what it says, even when
    corrupt)? Only then is the verifier loaded."""
    return file_size(TRUST_PATH) >= 0


# -- anti-rollback: the record's "sec_floor" and the images' security counters

def counter(info):
    """The image's security counter (0 when it has none)."""
    return info.get("security_counter") or 0


def check_counter(cnt, floor):
    """Refuse a counter below the floor, whatever the flags (at commit and
    boot with the image's own)."""
    if (cnt or 0) < floor:
        raise ProtoError(E_VERSION_REFUSED, "security counter %d is below this device's floor %d "
                         "(anti-rollback: no flag allows it)" % (cnt or 0, floor))


def raised_floor(floor, cnt):
    """The floor after an image with counter `cnt` is CONFIRMED (never at commit:
    the fallback must stay bootable until the new image has proved itself)."""
    return max(floor, cnt or 0)


def blank():
    return {"state": EMPTY, "size": 0, "sha256": None, "version": None}


# Record keys before agent 0.2 (still read, rewritten at the next commit).
_OLD = (("tc", "trials"), ("lw", "legacy_slot"), ("s", "slots"))
_OLD_SLOT = (("st", "state"), ("sha", "sha256"), ("ver", "version"))


def _rename(d, pairs):
    for old, new in pairs:
        if old in d:
            d[new] = d.pop(old)


def read_record(path):
    # The record plus its CRC-32 line, or None when absent, torn or corrupt.
    # One buffer of the file's size, made before the file object: beside an
    # app a lean status has a few KB in pieces, where reading the text, its
    # body and the body's bytes took three copies and a growing buffer.
    try:
        b = bytearray(os.stat(path)[6])
        with open(path, "rb") as f:
            n = f.readinto(b)
    except OSError:
        return None
    i = b.rfind(b"\n", 0, n - 1)
    if i < 0:
        return None
    try:
        if int(bytes(b[i + 1:n]), 16) != binascii.crc32(memoryview(b)[:i]):
            return None
        for k in range(i, len(b)):
            b[k] = 32  # the CRC line (and what a shrunk file left) as spaces: json reads the buffer in place
        rec = json.loads(b)
        _rename(rec, _OLD)
        s = rec["slots"]
        if len(s) != 2 or not isinstance(rec["seq"], int):
            return None
        for d in s:
            _rename(d, _OLD_SLOT)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return rec


def restart_for_update(dev):
    """Lean mode takes no image beside the app: a begin restarts the board
    into update mode (bootmgr), where the app does not start and the whole
    heap serves the transfer; the peer reconnects and begins again (the host
    tool does this by itself). Raises E_RESTARTING, or E_INCORRECT_STATE
    where the record refuses any update now (writable): a board on trial
    must not spend a trial boot on it. update.op_begin checks the rest first
    (dispatch.serve skips that where it ran out of heap beside the app:
    update mode checks the image anyway, and refused there, returns to the app)."""
    dev.sl.writable(dev.app["state"] == "crashed")
    flag(UPDATE_FLAG)
    dev.reset_ms = 300
    raise ProtoError(E_RESTARTING, "lean mode: restarting into update mode for this image; "
                     "reconnect in a few seconds and begin again")


def new_record():
    return {"seq": 0, "active": None, "pending": None, "trial": None,
            "trials": 0, "legacy_slot": None, "slots": [blank(), blank()]}


def flag(path):
    """Set flag `path`: an empty directory, which littlefs makes without
    the 1,152-byte file object an open() takes from the heap (a lean begin
    sets one beside an app holding nearly all of it); remove() clears it."""
    try:
        os.mkdir(path)
    except OSError as e:
        if e.args[0] != 17:  # EEXIST: already set
            raise


def file_size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def one_file(base):
    """The one file slot `base` is kept in when agent 0.4 wrote it
    (base.img: read, copied from, replaced at its next upload), else None."""
    p = base + ".img"
    return p if file_size(p) >= 0 else None


def slot_size(base):
    """Bytes slot `base` holds: its sector files' up to the first missing or
    short one (a slot of one file from before agent 0.5: its size); -1 when
    it has no first sector (nor that file)."""
    p = one_file(base)
    if p:
        return file_size(p)
    k = 0
    n = 0
    while True:
        s = file_size(slotio.chunk(base, k))
        if s < 0:
            return n if k else -1
        n += s
        if s < slotio.CHUNK:
            return n
        k += 1


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def drop(base, first=0):
    """Delete slot `base`'s sector files from sector `first` on (0: all of
    them, and a slot's one old file; the first sector's file first, so a cut
    part way leaves a slot that holds nothing rather than a truncated image)."""
    if not first:
        remove(base + ".img")  # a slot from before agent 0.5 (one_file)
        remove(slotio.chunk(base, 0))
        first = 1
    j = base.rindex("/")
    root = base[:j]
    pre = base[j + 1:] + "."
    for _ in range(4):  # again until a pass finds none (removing may skip entries of the listing)
        gone = 0
        for e in os.ilistdir(root):
            k = e[0][len(pre):]
            if e[0].startswith(pre) and k.isdigit() and int(k) >= first:
                remove(root + "/" + e[0])
                gone += 1
        if not gone:
            break


def attach(dev):
    """Load the slot record for the connections about to be served
    (agent.settle drops it again): status and every update need it, an
    idle device does not."""
    if dev.sl is None:
        cfg = dev.cfg
        dev.sl = Slots.load(slot_size=cfg["slot_size"], max_trials=cfg["max_trials"],
                            running=dev.running)


class Slots:
    """The loaded record and every change to it after boot. bootslots.open_slots()
    reads (and repairs) the record and makes one; bootslots decides the boot."""

    def __init__(self, rec, root=ROOT, slot_size=368640, max_trials=3):
        self.rec = rec
        self.root = root
        self.slot_size = slot_size
        self.max_trials = max_trials
        self.running = None  # slot whose app runs now (set at boot)
        self.note = ""
        self.cur = root + "/state.json"
        self.new = root + "/state.new"

    @classmethod
    def load(cls, slot_size=368640, max_trials=3, running=None, root=ROOT):
        """The record as the boot manager left it (bootslots repaired it), for
        the connections being served: read again after the device was quiet."""
        sl = cls(None, root, slot_size, max_trials)
        sl.rec = read_record(sl.cur) or read_record(sl.new) or new_record()
        sl.running = running
        return sl

    # -- the record ------------------------------------------------------------
    def write_record(self, rec):
        body = json.dumps(rec)
        with open(self.new, "w") as f:
            f.write(body)
            f.write("\n%08x\n" % binascii.crc32(body.encode()))
        # close() above synced the whole file; the rename is the commit point
        os.rename(self.new, self.cur)

    def commit(self):
        self.rec["seq"] += 1
        self.write_record(self.rec)

    def forget(self, i):
        # slot i holds nothing: drop every pointer to it (not committed)
        rec = self.rec
        rec["slots"][i] = blank()
        for k in ("active", "pending", "trial", "legacy_slot"):
            if rec[k] == i:
                rec[k] = None
        if rec["trial"] is None:
            rec["trials"] = 0

    # -- queries ---------------------------------------------------------------
    def path(self, i):
        # the slot's files' common name: its sectors are path.0, path.1, ... (slotio)
        return "%s/%s" % (self.root, NAMES[i])

    def open(self, i):
        """Slot i to read (seek, readinto, close): a slotio.Reader, or a slot's
        one file from before agent 0.5."""
        base = self.path(i)
        p = one_file(base)
        if p:
            return open(p, "rb")
        return slotio.Reader(base)

    def drop(self, i):
        """Delete slot i's files (bytes first, then the record: see top)."""
        drop(self.path(i))

    def slot(self, i):
        return self.rec["slots"][i]

    def state(self, i):
        return self.rec["slots"][i]["state"]

    def file_size(self, i):
        # what slot i holds from its start (-1: nothing, not even an empty first file)
        return slot_size(self.path(i))

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

    def space(self, i):
        """Bytes an image in slot i may take (max_image): what the filesystem
        has free plus what slot i's own files hold now (they are replaced),
        less littlefs' reserve and the metadata its sector files add (a block
        per META of them, where littlefs grows the directory: 8 blocks for 180
        files measured); never more than the configured slot size."""
        try:
            st = os.statvfs(self.root)
            bs = st[0]
            free = st[3]
        except (OSError, AttributeError):
            return self.slot_size
        have = self.file_size(i)
        if have > 0:
            free += (have + bs - 1) // bs
        free -= RESERVE
        return max(0, min((free - (free + META) // (META + 1)) * bs, self.slot_size))

    def info(self, i):
        s = self.rec["slots"][i]
        return {"state": s["state"], "size": s["size"], "sha256": s["sha256"], "version": s["version"]}

    def floor(self):
        # the lowest security counter an image may carry (records before 0.2 have none)
        return self.rec.get("sec_floor", 0)

    def confirmed(self, i):
        """i when slot i holds a confirmed image, else None."""
        if i is not None and self.rec["slots"][i]["state"] == CONFIRMED:
            return i
        return None

    def end_trial(self, i, state):
        # slot i leaves its trial as `state` (not committed)
        rec = self.rec
        rec["slots"][i]["state"] = state
        rec["trial"] = None
        rec["trials"] = 0

    def writable(self, crashed):
        """Raise unless the record lets an update write the inactive slot:
        not while the running slot is on trial (`crashed`: its app crashed),
        nor after a rollback until the reset that boots the other slot."""
        r = self.running
        if self.on_trial():
            if crashed:  # confirming would keep a broken app: say so
                raise ProtoError(E_INCORRECT_STATE, "slot %s is on trial and its app crashed: roll back first"
                                 % NAMES[r])
            raise ProtoError(E_INCORRECT_STATE, "slot %s is on trial: confirm or roll back first" % NAMES[r])
        a = self.active()
        if r is not None and a is not None and a != r:
            # after a rollback the only other slot is the one the next reset boots:
            # an update there would erase it, leaving nothing confirmed to boot
            raise ProtoError(E_INCORRECT_STATE, "slot %s boots at the next reset (rolled back): reset first"
                             % NAMES[a])

    # -- the transitions (each commits once) -----------------------------------
    def fits(self, i, size):
        room = self.space(i)
        if size < 1 or size > room:
            raise ProtoError(E_NO_SPACE, "%d bytes do not fit: slot %s can take %d bytes (max_image)"
                             % (size, NAMES[i], room))

    def resumable(self, i, size, sha):
        """Does slot i hold the first bytes (its file size: the watermark) of
        this image, from an upload that wrote it from the start? (A reusing
        upload, begin_reuse, is resumed by what its sectors hold instead.)"""
        s = self.rec["slots"][i]
        have = self.file_size(i)
        return bool(sha and s["sha256"] == sha and s["size"] == size and 0 <= have <= size
                    and s["state"] in (WRITING, COMPLETE, PENDING) and not s.get("reuse")
                    and not one_file(self.path(i)))  # (a slot in one file is written anew)

    def begin(self, i, size, sha=None, ver=None, legacy=False):
        """Open slot i for an upload of `size` bytes (writing); -> the resume
        offset. Same size and sha256 as a partial (or finished) upload: resume
        from the bytes held. Otherwise the slot is emptied first -- but only once
        the new image is known to fit, so a refused update never destroys a fallback."""
        rec = self.rec
        s = rec["slots"][i]
        have = self.file_size(i)
        if self.resumable(i, size, sha):
            if s["state"] != WRITING or rec["pending"] == i:
                self._next(i, WRITING)
                self.commit()
            return have
        self.fits(i, size)
        self.drop(i)  # bytes first, then the record (see top)
        self.forget(i)
        rec["slots"][i] = {"state": WRITING, "size": size, "sha256": sha, "version": ver}
        if legacy:
            rec["legacy_slot"] = i  # ReadAddress reads the slot the legacy service wrote
        self.commit()
        return 0

    def begin_reuse(self, i, size, sha, ver):
        """Open slot i for an upload that keeps the sectors its files hold:
        upload.Writer rewrites only the others. -> False (nothing changed) when
        the slot holds nothing to keep (or is one old file), or the filesystem
        lacks room for the sectors the new image adds: the caller begins a
        plain upload. The record stops claiming the old image (writing,
        "reuse") before any byte changes; a reuse upload of the same image is
        re-opened as it is (its sectors say what is held)."""
        s = self.rec["slots"][i]
        have = self.file_size(i)
        if have <= 0 or one_file(self.path(i)) or not 0 < size <= self.slot_size:
            return False
        if not (s["state"] == WRITING and s.get("reuse") and s["sha256"] == sha and s["size"] == size):
            try:
                st = os.statvfs(self.root)
                # the sectors the new image adds with their metadata (space), and a spare
                # (littlefs writes a new block before freeing the old)
                add = max(0, size - have + st[0] - 1) // st[0]
                if st[3] - RESERVE - 1 < add + (add + META - 1) // META:
                    return False
            except (OSError, AttributeError):
                return False
            self.forget(i)
            self.rec["slots"][i] = {"state": WRITING, "size": size, "sha256": sha, "version": ver, "reuse": True}
            self.commit()
        return True

    def finish(self, i, sha, ver, pending, proof=None):
        """Record a verified image in slot i: complete, or pending (boots on
        trial at the next reset). Its bytes are synced already. `proof`: the
        signature check's result (signer, image_hash, sec_cnt) for boot."""
        s = self.rec["slots"][i]
        for k in ("signer", "image_hash", "sec_cnt"):
            s[k] = proof[k] if proof else None
        s["sha256"] = sha
        s["version"] = ver
        s["size"] = self.file_size(i)
        s.pop("reuse", None)
        self._next(i, PENDING if pending else COMPLETE)
        self.commit()

    def mark_pending(self, i):
        """Slot i (a complete image) boots on trial at the next reset."""
        self._next(i, PENDING)
        self.commit()

    def make_permanent(self, i):
        """MCUboot's "permanent": slot i boots at the next reset as confirmed,
        without a trial. The running confirmed slot stays its fallback if it
        fails to start (bootslots.failed), so the floor rises only once i runs
        (bootmgr calls raise_floor after the app started; confirm does too)."""
        self._next(i, CONFIRMED)
        self.rec["active"] = i
        self.commit()

    def _next(self, i, state):
        # slot i becomes `state`; the pending pointer follows (not committed)
        rec = self.rec
        rec["slots"][i]["state"] = state
        if state == PENDING:
            rec["pending"] = i
        elif rec["pending"] == i:
            rec["pending"] = None

    def spare_trial(self):
        """The agent resets for no fault of the app on trial (the end of a USB
        command): the boot after it does not count against the trial (its
        count drops by one, committed; that boot adds it back)."""
        rec = self.rec
        if self.on_trial() and rec["trials"] > 0:
            rec["trials"] -= 1
            self.commit()

    def raise_floor(self, i, changed=False):
        """Anti-rollback: raise the floor to slot i's security counter (an image
        confirmed, or made permanent, that runs); commits once, only when the
        floor (or, with `changed`, the record) changed. -> the floor."""
        rec = self.rec
        f = raised_floor(self.floor(), rec["slots"][i].get("sec_cnt"))
        if f != self.floor():
            rec["sec_floor"] = f
            changed = True
        if changed:
            self.commit()
        return f

    def confirm(self):
        """End the running slot's trial; idempotent once it is confirmed. Either
        way the floor rises to its counter (an image made permanent never had a
        trial: its first confirm raises it)."""
        r = self.running
        rec = self.rec
        on_trial = r is not None and rec["trial"] == r
        if on_trial:
            self.end_trial(r, CONFIRMED)
            rec["active"] = r
            self.note = "%s confirmed" % NAMES[r]
        elif r is None or rec["active"] != r or rec["trial"] is not None:
            raise ProtoError(E_INCORRECT_STATE, "no slot is on trial")
        self.raise_floor(r, on_trial)
        return r

    def rollback(self):
        rec = self.rec
        cur = self.running if self.running is not None else rec["active"]
        if cur is None:
            raise ProtoError(E_INCORRECT_STATE, "no application to roll back from")
        other = self.confirmed(1 - cur)
        if other is None:
            raise ProtoError(E_INCORRECT_STATE, "slot %s holds no confirmed image" % NAMES[1 - cur])
        # boot would refuse it (mpota_bootmgr) with the running slot marked bad: no app at all
        check_counter(rec["slots"][other].get("sec_cnt"), self.floor())
        self.end_trial(cur, BAD)
        rec["active"] = other
        if rec["pending"] == cur:
            rec["pending"] = None
        self.commit()
        return other

    def erase(self, i):
        if i == self.running:
            raise ProtoError(E_INCORRECT_STATE, "slot %s is running" % NAMES[i])
        self.drop(i)  # bytes first, then the record (see top)
        self.forget(i)
        self.commit()
