# slotboot: the boot-time half of slots.py -- read (and repair) the state
# record, decide which slot runs, count trials, roll back. Only the boot
# manager imports it, and drops it once the decision is committed: none of
# this code stays in the running device's heap.
import os
import json
import binascii

import slots as S
from slots import NAMES, BAD, TRIAL


def _read_record(path):
    # The record plus its CRC-32 line, or None when absent, torn or corrupt.
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    i = text.rfind("\n", 0, len(text) - 1)
    if i < 0:
        return None
    body = text[:i]
    try:
        if int(text[i + 1:].strip(), 16) != binascii.crc32(body.encode()):
            return None
        rec = json.loads(body)
        s = rec["s"]
        if len(s) != 2 or not isinstance(rec["seq"], int):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return rec


def open_slots(root=S.ROOT, slot_size=368640, max_trials=3):
    """Load the record under `root` into a slots.Slots, repairing what a cut
    can leave: a stale state.new, a record naming a file that is gone."""
    try:
        os.mkdir(root)
    except OSError:
        pass  # exists
    sl = S.Slots(None, root, slot_size, max_trials)
    rec = _read_record(sl.cur)
    if rec is None:
        rec = _read_record(sl.new)
        if rec is not None:
            sl._write_cur(rec)  # adopt the complete new record
    S._remove(sl.new)  # stale: an interrupted commit (the old one stands)
    if rec is None:
        rec = {"seq": 0, "active": None, "pending": None, "trial": None,
               "tc": 0, "lw": None, "s": [S._blank(), S._blank()]}
    sl.rec = rec
    # Repair: a record naming a file that is gone (cut between delete and
    # commit) describes an empty slot.
    changed = False
    for i in (0, 1):
        if rec["s"][i]["st"] != S.EMPTY and sl.file_size(i) < 0:
            sl._forget(i)
            changed = True
    if changed:
        sl.commit()
    return sl


def boot(sl):
    """Decide which slot runs this boot; count trials; roll back. Commits
    before the app runs, so a crash or cut during the app still counts."""
    rec = sl.rec
    s = rec["s"]
    t = rec["trial"]
    run = None
    if t is not None:
        if rec["tc"] >= sl.max_trials:
            s[t]["st"] = BAD
            rec["trial"] = None
            rec["tc"] = 0
            run = sl._confirmed(rec["active"])
            sl.note = "rolled back %s -> %s after %d unconfirmed trials" % (
                NAMES[t], NAMES[run] if run is not None else "none", sl.max_trials)
        else:
            rec["tc"] += 1
            run = t
            sl.note = "booted %s (trial %d/%d)" % (NAMES[t], rec["tc"], sl.max_trials)
        sl.commit()
    elif rec["pending"] is not None:
        p = rec["pending"]
        rec["pending"] = None
        rec["trial"] = p
        rec["tc"] = 1
        s[p]["st"] = TRIAL
        sl.commit()
        run = p
        sl.note = "booted %s (trial 1/%d)" % (NAMES[p], sl.max_trials)
    else:
        run = sl._confirmed(rec["active"])
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
        rec["s"][i]["st"] = BAD
        rec["trial"] = None
        rec["tc"] = 0
        nxt = sl._confirmed(rec["active"])
        sl.commit()
        sl.note = "%s failed to start (%s); rolled back %s -> %s" % (
            NAMES[i], why, NAMES[i], NAMES[nxt] if nxt is not None else "none")
    else:
        other = sl._confirmed(1 - i)
        if other is not None:
            rec["active"] = other
            rec["s"][i]["st"] = BAD
            sl.commit()
            nxt = other
            sl.note = "%s failed to start (%s); falling back to %s" % (NAMES[i], why, NAMES[other])
        else:
            sl.note = "%s failed to start (%s); no other application" % (NAMES[i], why)
    sl.running = nxt
    return nxt
