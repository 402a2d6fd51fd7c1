# Run by tests/test_lean.py under MicroPython with device/ on sys.path: a
# lean connection's reply line is written in pieces (leanconn.Lean.reply),
# so a status-sized sealed reply goes out of a heap whose free space is all
# in holes of about 512 bytes, where the whole line (lineproto.reply_line)
# and its sealed copy (linemac.Lines.seal_line) cannot be had. Prints
# whether each way answered, and whether the host's side opens the line and
# reads the same reply; then that a reply with no heap at all for its first
# piece raises MemoryError (dispatch.serve answers no_memory) with nothing
# written and the connection kept.
import gc
import json


import boardstub  # noqa: E402,F401  (hal's board: tests/device/boardstub.py)

import mpota_leanconn as leanconn  # noqa: E402
import mpota_linemac as linemac  # noqa: E402
import mpota_lineproto as lineproto  # noqa: E402

KEY = bytes(range(32))


class Dev:
    auth_on = True


class Writer:
    def __init__(self):
        self.parts = []

    def write(self, b):
        self.parts.append(bytes(b))


def lines(device):
    return linemac.Lines(KEY, "dev", b"1" * 16, b"2" * 16, device)


# a status-like reply: over 1 KB of JSON, no field over 256 bytes
f = {"k%02d" % i: "v" * 30 for i in range(30)}
w = Writer()
c = leanconn.Lean(Dev(), None, w)
c.sess = lines(True)
old = lines(True)
# the sieve: the heap filled with 500-byte blocks in a chain of small
# nodes (no array that grows), then every other block freed
gc.collect()
held = None
try:
    while True:
        held = [held, bytearray(500)]
except MemoryError:
    pass
n = held
while n is not None and n[0] is not None:
    n[1] = None
    n = n[0][0]
n = None
gc.collect()
try:
    old.seal_line(lineproto.reply_line(7, f))
    print("whole: sent")
except MemoryError:
    print("whole: out of memory")
c.reply(7, f)
sent = not c.gone
held = None
gc.collect()
line = b"".join(w.parts)
got = lines(False).open_line(memoryview(line)[:-1]) if line.endswith(b"\n") else None
want = {"id": 7, "ok": True}
want.update(f)
print("pieces:", "sent" if sent else "out of memory", got is not None and json.loads(bytes(got)) == want, len(line))

w.parts = []
raised = False
gc.collect()
held = None
try:
    while True:
        held = [held]
except MemoryError:
    pass
try:
    c.reply(8, f)
except MemoryError:
    raised = True
held = None
gc.collect()
print("no heap:", "MemoryError" if raised else "no error", len(w.parts), "gone" if c.gone else "kept")
