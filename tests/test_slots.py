"""device/mpota_slots.py and mpota_bootslots.py under the unix-port MicroPython: the A/B state machine,
trial counting and rollback, resume, and the journal's atomicity under power
cuts at every flash operation of a state commit (littlefs on a RAM NOR flash).
"""
import json

from conftest import REPO, run_micropython

DEVICE = str(REPO / "device")

PRELUDE = """
import sys, os
sys.path.insert(0, %r)
import mpota_slots as S
import mpota_bootslots as B
import mpota_upload as IO
from mpota_lineproto import ProtoError
def sha(data):
    import hashlib, binascii
    return binascii.hexlify(hashlib.sha256(data).digest()).decode()
def upload(sl, i, data, ver="1.0.0+0", pending=True, chunk=1000, proof=None):
    h = sha(data)
    off = sl.begin(i, len(data), h, ver)
    w = IO.Writer(sl.path(i), off)
    mv = memoryview(data)
    while off < len(data):
        off += w.write(mv[off:off + chunk])
    w.close()
    buf = bytearray(512)
    assert IO.digest(sl, i, len(data), buf) == __import__("hashlib").sha256(data).digest()
    sl.finish(i, h, ver, pending, proof)
def reboot(root, max_trials=3):
    sl = B.open_slots(root=root, max_trials=max_trials, slot_size=65536)
    run = B.boot(sl)
    return sl, run
""" % DEVICE


def mp(tmp_path, build, body, heap=None):
    script = tmp_path / "t.py"
    script.write_text(PRELUDE + body)
    r = run_micropython([str(script)], heap=heap, cwd=str(tmp_path), timeout=120, mp=build)
    assert r.returncode == 0, "micropython failed:\n%s\n%s" % (r.stdout, r.stderr)
    return r.stdout


def test_state_machine_trial_confirm_and_rollback(tmp_path, mp_build):
    out = mp(tmp_path, mp_build, """
root = %r
sl, run = reboot(root)
assert run is None and sl.note == "no application installed", sl.note
assert sl.inactive() == 0
upload(sl, 0, b"A" * 5000, "1.0.0+0")
assert sl.state(0) == "pending" and sl.pending() == 0
# reset: the pending slot boots on trial 1
sl, run = reboot(root)
assert run == 0 and sl.on_trial() and sl.rec["trials"] == 1, sl.rec
assert sl.note == "booted a (trial 1/3)", sl.note
assert sl.confirm() == 0
assert sl.state(0) == "confirmed" and sl.active() == 0 and not sl.on_trial()
assert sl.confirm() == 0  # idempotent
sl, run = reboot(root)
assert run == 0 and sl.note == "booted a (confirmed)", sl.note
# an update goes to b; three unconfirmed trial boots, then rollback
assert sl.inactive() == 1
upload(sl, 1, b"B" * 7000, "1.1.0+0")
notes = []
for k in range(4):
    sl, run = reboot(root)
    notes.append((run, sl.note, sl.rec["trials"]))
print(json.dumps(notes))
assert sl.state(1) == "bad" and sl.active() == 0 and run == 0
# after the rollback a runs confirmed: confirm() is a no-op success
assert sl.confirm() == 0 and sl.state(1) == "bad"
# confirm with nothing running is refused
try:
    reboot(root + "2")[0].confirm(); raise SystemExit("confirm passed")
except ProtoError as e:
    assert e.code == 1
# the running slot cannot be erased; the other can
try:
    sl.erase(0); raise SystemExit("erased running")
except ProtoError as e:
    assert e.code == 1
sl.erase(1)
assert sl.state(1) == "empty" and sl.file_size(1) == -1
print("DONE")
""".replace("json.dumps", "__import__('json').dumps") % str(tmp_path / "slots"))
    lines = out.strip().splitlines()
    assert lines[-1] == "DONE"
    notes = json.loads(lines[-2])
    assert [n[0] for n in notes] == [1, 1, 1, 0]
    assert notes[0][1] == "booted b (trial 1/3)"
    assert notes[2][1] == "booted b (trial 3/3)"
    assert notes[3][1] == "rolled back b -> a after 3 unconfirmed trials"


def test_rollback_op_failed_start_and_resume(tmp_path, mp_build):
    out = mp(tmp_path, mp_build, """
root = %r
sl, run = reboot(root)
upload(sl, 0, b"A" * 3000)
sl, run = reboot(root); sl.confirm()
upload(sl, 1, b"B" * 3000, "2.0.0+0")
sl, run = reboot(root)
assert run == 1 and sl.on_trial()
# the operator rolls back: b is bad, a boots next
assert sl.rollback() == 0 and sl.state(1) == "bad"
sl, run = reboot(root)
assert run == 0 and sl.note == "booted a (confirmed)", sl.note
# a trial slot that fails to start is rolled back at once
upload(sl, 1, b"C" * 3000, "2.0.1+0")
sl, run = reboot(root)
assert run == 1
nxt = B.failed(sl, 1, "no main()")
assert nxt == 0 and sl.state(1) == "bad" and sl.running == 0, sl.note
assert sl.note == "b failed to start (no main()); rolled back b -> a", sl.note
# rollback with no confirmed other slot is refused
try:
    sl.rollback(); raise SystemExit("rollback passed")
except ProtoError as e:
    assert e.code == 1
# resume: same size+sha continues from the bytes held, a different sha restarts
data = bytes(range(256)) * 40
h = sha(data)
assert sl.begin(1, len(data), h) == 0
w = IO.Writer(sl.path(1), 0); w.write(memoryview(data)[:4000]); w.close()
assert sl.begin(1, len(data), h) == 4000
sl2 = B.open_slots(root=root, slot_size=65536)  # survives a reboot too
assert sl2.begin(1, len(data), h) == 4000 and sl2.state(1) == "writing"
assert sl2.begin(1, len(data), sha(b"other")) == 0 and sl2.file_size(1) <= 0
# too large for a slot
try:
    sl2.begin(1, 65537, h); raise SystemExit("oversize accepted")
except ProtoError as e:
    assert e.code == 8
print("DONE")
""" % str(tmp_path / "slots"))
    assert out.strip().splitlines()[-1] == "DONE"


def test_every_permanent_path_raises_the_floor_once(tmp_path, mp_build):
    """Issue 17.2: confirm() of an image that is already confirmed (made permanent
    over SMP, never on trial) used to return early, so the anti-rollback floor never
    rose. Every path raises it to the running image's counter, once, journaled; a
    permanent image does not raise it before it runs (the running slot stays its
    fallback)."""
    out = mp(tmp_path, mp_build, """
root = %r
def proof(cnt):
    return {"signer": None, "image_hash": None, "sec_cnt": cnt}
sl, run = reboot(root)
upload(sl, 0, b"A" * 3000, "1.0.0+0", proof=proof(3))
sl, run = reboot(root)
seq = sl.rec["seq"]
assert sl.confirm() == 0 and sl.floor() == 3 and sl.rec["seq"] == seq + 1  # trial end + floor: one commit
assert sl.confirm() == 0 and sl.rec["seq"] == seq + 1  # nothing to change: no commit
# SMP "permanent": b boots confirmed at the next reset; a stays the fallback
upload(sl, 1, b"B" * 3000, "2.0.0+0", pending=False, proof=proof(5))
sl.make_permanent(1)
assert sl.active() == 1 and sl.state(1) == "confirmed" and sl.pending() is None and sl.floor() == 3
sl, run = reboot(root)
assert run == 1 and sl.note == "booted b (confirmed)" and sl.floor() == 3, (sl.note, sl.rec)
seq = sl.rec["seq"]
assert sl.confirm() == 1 and sl.floor() == 5 and sl.rec["seq"] == seq + 1
assert sl.confirm() == 1 and sl.rec["seq"] == seq + 1
assert reboot(root)[0].floor() == 5  # journaled
# raise_floor (what boot calls once a confirmed image started) never lowers it
sl, run = reboot(root)
assert sl.raise_floor(0) == 5 and sl.rec["seq"] == seq + 1
print("DONE")
""" % str(tmp_path / "slots"))
    assert out.strip().splitlines()[-1] == "DONE"


def test_rollback_never_goes_below_the_floor(tmp_path, mp_build):
    """A rollback to a confirmed image whose security counter is below the floor is
    refused (version_refused) and changes nothing: boot would refuse that image, and
    the running slot would already be marked bad (red-team run: no app at all)."""
    out = mp(tmp_path, mp_build, """
root = %r
def proof(cnt):
    return {"signer": None, "image_hash": None, "sec_cnt": cnt}
sl, run = reboot(root)
upload(sl, 0, b"A" * 3000, "1.0.0+0", proof=proof(1))
sl, run = reboot(root)
sl.confirm()
upload(sl, 1, b"B" * 3000, "2.0.0+0", proof=proof(2))
sl, run = reboot(root)
assert run == 1 and sl.confirm() == 1 and sl.floor() == 2
seq = sl.rec["seq"]
try:
    sl.rollback()
    raise SystemExit("rollback below the floor passed")
except ProtoError as e:
    assert e.code == 0x0F and "below this device's floor 2" in str(e), e
assert sl.state(1) == "confirmed" and sl.active() == 1 and sl.rec["seq"] == seq
sl, run = reboot(root)
assert run == 1, sl.note
print("DONE")
""" % str(tmp_path / "slots"))
    assert out.strip().splitlines()[-1] == "DONE"


def test_record_recovery_on_posix(tmp_path, mp_build):
    # stale, torn and corrupt journal files, as a crash could leave them
    out = mp(tmp_path, mp_build, """
root = %r
sl, run = reboot(root)
upload(sl, 0, b"A" * 100)
seq = sl.rec["seq"]
# a torn state.new (crash while writing it): ignored and removed
with open(root + "/state.new", "w") as f:
    f.write('{"seq": 99, "slots": [')
sl = B.open_slots(root=root)
assert sl.rec["seq"] == seq and sl.state(0) == "pending"
assert "state.new" not in os.listdir(root)
# a complete state.new beside a valid state.json (crash before rename): old wins
sl.rec["trials"] = 7
sl.write_record(sl.rec)  # state.json now has trials 7
import json as J, binascii
rec = J.loads(J.dumps(sl.rec)); rec["trials"] = 8; rec["seq"] += 1
body = J.dumps(rec)
with open(root + "/state.new", "w") as f:
    f.write(body + "\\n%%08x\\n" %% binascii.crc32(body.encode()))
sl = B.open_slots(root=root)
assert sl.rec["trials"] == 7, sl.rec
# a corrupt state.json with a complete state.new: the new one is adopted
with open(root + "/state.new", "w") as f:
    f.write(body + "\\n%%08x\\n" %% binascii.crc32(body.encode()))
with open(root + "/state.json", "w") as f:
    f.write(body[:-5] + "XXXXX\\n00000000\\n")
sl = B.open_slots(root=root)
assert sl.rec["trials"] == 8, sl.rec
# both unusable: no application (the device still boots, agent only)
with open(root + "/state.json", "w") as f:
    f.write("garbage")
sl = B.open_slots(root=root)
assert sl.active() is None and sl.state(0) == "empty", sl.rec
# a record whose slot lost its first sector's file is repaired to empty
upload(sl, 1, b"B" * 100)
os.remove(sl.path(1) + ".0")
sl = B.open_slots(root=root)
assert sl.state(1) == "empty" and sl.pending() is None
print("DONE")
""" % str(tmp_path / "slots"))
    assert out.strip().splitlines()[-1] == "DONE"


# A NOR flash in RAM that can lose power in the middle of operation N:
# erases and 256-byte page programs are counted; the cut one is torn (half
# applied), then PowerCut unwinds littlefs as a dead CPU would stop it.
LFS = """
import vfs
BLOCK = 4096
class PowerCut(Exception):
    pass
class NOR:
    def __init__(self, data, cut=None):
        self.data = data
        self.ops = 0
        self.cut = cut
    def _op(self):
        if self.cut is not None and self.ops >= self.cut:
            return True
        self.ops += 1
        return False
    def readblocks(self, n, buf, off=0):
        a = n * BLOCK + off
        buf[:] = self.data[a:a + len(buf)]
    def erase(self, n):
        torn = self._op()
        a = n * BLOCK
        end = a + (BLOCK // 2 if torn else BLOCK)
        for i in range(a, end):
            self.data[i] = 0xFF
        if torn:
            raise PowerCut()
    def writeblocks(self, n, buf, off=None):
        if off is None:
            for k in range((len(buf) + BLOCK - 1) // BLOCK):
                self.erase(n + k)
            off = 0
        a = n * BLOCK + off
        for p in range(0, len(buf), 256):
            torn = self._op()
            m = min(256, len(buf) - p)
            if torn:
                m //= 2
            for i in range(m):
                self.data[a + p + i] &= buf[p + i]  # NOR: program clears bits
            if torn:
                raise PowerCut()
    def ioctl(self, op, arg):
        if op == 4: return len(self.data) // BLOCK
        if op == 5: return BLOCK
        if op == 6:
            self.erase(arg); return 0
        return 0
def mount(data, cut=None):
    bd = NOR(data, cut)
    fs = vfs.VfsLfs2(bd, progsize=256)
    vfs.mount(fs, "/f")
    return bd
def umount():
    try:
        vfs.umount("/f")
    except OSError:
        pass
"""


def test_journal_atomic_under_power_cuts(tmp_path, mp_build):
    """Cut the power at every flash operation of a state commit (pending ->
    trial at boot, and finish() after an upload): afterwards the record is
    always exactly the old or the new one, never anything else."""
    out = mp(tmp_path, mp_build, LFS + """
import json
data = bytearray(b"\\xff" * (24 * BLOCK))
vfs.VfsLfs2.mkfs(NOR(data), progsize=256)
mount(data)
sl = B.open_slots(root="/f/slots", slot_size=32768)
upload(sl, 0, b"A" * 9000, "1.0.0+0", pending=True)
sl, run = reboot("/f/slots")
sl.confirm()
# slot b: bytes uploaded and synced, the record still says "writing"
blob = bytes(range(256)) * 30
h = sha(blob)
off = sl.begin(1, len(blob), h, "1.1.0+0")
w = IO.Writer(sl.path(1), off); w.write(blob); w.close()
umount()
base = bytes(data)

def record():
    # what a rebooting device sees
    sl = B.open_slots(root="/f/slots", slot_size=32768)
    return sl.rec

def trial(step):
    if step == "finish":
        sl = B.open_slots(root="/f/slots", slot_size=32768)
        sl.finish(1, h, "1.1.0+0", True)
    else:
        sl = B.open_slots(root="/f/slots", slot_size=32768)
        B.boot(sl)

results = {}
for step in ("finish", "boot"):
    # the states before and after the step, and how many flash ops it takes
    d = bytearray(base)
    if step == "boot":
        mount(d); trial("finish"); umount()
    before_img = bytes(d)
    mount(d); old = record(); umount()
    bd = mount(d); trial(step); total = bd.ops; new = record(); umount()
    old.pop("seq"); new.pop("seq")
    assert old != new
    counts = {"old": 0, "new": 0}
    for cut in range(total + 1):
        d = bytearray(before_img)
        mount(d, cut)
        try:
            trial(step)
        except PowerCut:
            pass
        umount()
        mount(d)  # power back on: the same flash, a fresh mount
        rec = record()
        umount()
        rec.pop("seq")
        if rec == old:
            counts["old"] += 1
        elif rec == new:
            counts["new"] += 1
        else:
            raise SystemExit("cut %d of %s: neither old nor new: %r" % (cut, step, rec))
    results[step] = [total, counts["old"], counts["new"]]
print(json.dumps(results))
""", heap="4M")  # a RAM flash copied per cut: more than the 32-bit build's default heap
    res = json.loads(out.strip().splitlines()[-1])
    print("journal power cuts (ops, old, new):", res)
    for step, (total, old, new) in res.items():
        assert total >= 2, step  # the commit did touch the flash
        assert old + new == total + 1
        assert old >= 1 and new >= 1, (step, old, new)


def test_images_as_large_as_max_image_leave_room_for_the_record(tmp_path, mp_build):
    """A slot is a file per 4 KiB sector, and littlefs grows the directory's
    metadata as they are made (8 blocks for 180 files): space() (max_image)
    keeps room for it, so two slots filled to what it says still let every
    record commit (finish, boot, confirm) on a board-sized filesystem."""
    out = mp(tmp_path, mp_build, LFS + """
data = bytearray(b"\\xff" * (212 * BLOCK))
vfs.VfsLfs2.mkfs(NOR(data), progsize=256)
mount(data)
os.mkdir("/f/agent")
for k in range(40):  # the agent's own files take their blocks
    with open("/f/agent/m%d.py" % k, "wb") as f:
        f.write(b"#" * 2000)
sl = B.open_slots(root="/f/slots", slot_size=1 << 20)
for i, n in ((0, 300000), (1, None)):  # slot b: all that max_image says is left
    n = n or sl.space(i)
    assert n > 200000, (n, os.statvfs("/f"))
    upload(sl, i, bytes(range(256)) * (n // 256) + b"x" * (n % 256), "1.%d.0+0" % i, chunk=4096)
    sl = B.open_slots(root="/f/slots", slot_size=1 << 20)
    run = B.boot(sl)
    assert run == i, (run, sl.note)
    sl.confirm()
    sl.commit()  # and once more: the record always has room
print("DONE", os.statvfs("/f")[3])
""", heap="4M")
    assert out.strip().splitlines()[-1].startswith("DONE"), out
