# bootslots: the boot-time half of slots.py -- read (and repair) the state
# record, decide which slot runs, count trials, roll back. Only the boot
# manager imports it, and drops it once the decision is committed: none of
# this code stays in the running device's heap.
import uos as os

import mpota_slots as slots
from mpota_slots import NAMES, BAD, TRIAL, read_record

def open_slots(root=slots.ROOT, slot_size=368640, max_trials=3):
    """Load the record under `root` into a slots.Slots, repairing what a cut
    can leave: a stale state.new, a record naming a file that is gone."""
    try:
        os.mkdir(root)
    except OSError:
        pass  # exists
    sl = slots.Slots(None, root, slot_size, max_trials)
    rec = read_record(sl.cur)
    if rec is None:
        rec = read_record(sl.new)
        if rec is not None:
            sl.write_record(rec)  # adopt the complete new record
    slots.remove(sl.new)  # stale: an interrupted commit (the old one stands)
    if rec is None:
        rec = slots.new_record()
    sl.rec = rec
    # Repair: a record naming a file that is gone (cut between delete and
    # commit) describes an empty slot.
    changed = False
    for i in (0, 1):
        if rec["slots"][i]["state"] != slots.EMPTY and sl.file_size(i) < 0:
            sl.forget(i)
            changed = True
    if changed:
        sl.commit()
    return sl


def boot(sl):
    """Decide which slot runs this boot; count trials; roll back. Commits
    before the app runs, so a crash or cut during the app still counts."""
    rec = sl.rec
    t = rec["trial"]
    run = None
    if t is not None:
        if rec["trials"] >= sl.max_trials:
            sl.end_trial(t, BAD)
            run = sl.confirmed(rec["active"])
            sl.note = "rolled back %s -> %s after %d unconfirmed trials" % (
                NAMES[t], slots.name(run) or "none", sl.max_trials)
        else:
            rec["trials"] += 1
            run = t
            sl.note = "booted %s (trial %d/%d)" % (NAMES[t], rec["trials"], sl.max_trials)
        sl.commit()
    elif rec["pending"] is not None:
        p = rec["pending"]
        rec["pending"] = None
        rec["trial"] = p
        rec["trials"] = 1
        rec["slots"][p]["state"] = TRIAL
        sl.commit()
        run = p
        sl.note = "booted %s (trial 1/%d)" % (NAMES[p], sl.max_trials)
    else:
        run = sl.confirmed(rec["active"])
        if run is not None:
            sl.note = "booted %s (confirmed)" % NAMES[run]
        else:
            sl.note = "no application installed"
    sl.running = run
    return run


def failed(sl, i, why):
    """Slot i could not start. A trial slot is marked bad at once and the
    confirmed slot runs instead; returns the next slot to try or None."""
    rec = sl.rec
    nxt = None
    if rec["trial"] == i:
        sl.end_trial(i, BAD)
        nxt = sl.confirmed(rec["active"])
        sl.commit()
        sl.note = "%s failed to start (%s); rolled back %s -> %s" % (
            NAMES[i], why, NAMES[i], slots.name(nxt) or "none")
    else:
        other = sl.confirmed(1 - i)
        if other is not None:
            rec["active"] = other
            rec["slots"][i]["state"] = BAD
            sl.commit()
            nxt = other
            sl.note = "%s failed to start (%s); falling back to %s" % (NAMES[i], why, NAMES[other])
        else:
            sl.note = "%s failed to start (%s); no other application" % (NAMES[i], why)
    sl.running = nxt
    return nxt
