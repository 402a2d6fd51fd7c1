# Run by tests/test_lean.py under MicroPython with device/ on sys.path: a
# reply line on a stream connection goes out in pieces where the whole line
# does not fit (dispatch.stream_reply: leanconn.Lean always, conn.Conn once
# lineproto.reply_line or its sealed copy runs out of heap), so a
# status-sized sealed reply goes out of a heap whose free space is all in
# holes of about 512 bytes. For each transport, prints whether the whole
# line could be had, whether the reply went out and the host's side opens it
# and reads the same reply; then that a reply with no heap at all for its
# first piece raises MemoryError (dispatch.serve answers no_memory) with
# nothing written, no sequence number spent and the connection kept.
import gc
import json


import boardstub  # noqa: E402,F401  (hal's board: tests/device/boardstub.py)

import mpota_conn as conn  # noqa: E402
import mpota_leanconn as leanconn  # noqa: E402
import mpota_linemac as linemac  # noqa: E402
import mpota_lineproto as lineproto  # noqa: E402
import mpota_session as session  # noqa: E402

KEY = bytes(range(32))


class Dev:
    auth_on = True


class Writer:
    def __init__(self):
        self.parts = []

    def write(self, b):
        self.parts.append(bytes(b))


def lines(device, kind=linemac.Lines):
    return kind(KEY, "dev", b"1" * 16, b"2" * 16, device)


# a status-like reply: over 1 KB of JSON, no field over 256 bytes
f = {"k%02d" % i: "v" * 30 for i in range(30)}


def run(label, kind, sess):
    w = Writer()
    c = kind(Dev(), None, w)
    c.sess = lines(True, sess)
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
        print(label, "whole: sent")
    except MemoryError:
        print(label, "whole: out of memory")
    c.reply(7, f)
    sent = not c.gone
    held = None
    gc.collect()
    line = b"".join(w.parts)
    got = lines(False).open_line(memoryview(line)[:-1]) if line.endswith(b"\n") else None
    want = {"id": 7, "ok": True}
    want.update(f)
    same = got is not None and json.loads(bytes(got)) == want
    print(label, "pieces:", "sent" if sent else "out of memory", same, len(line))

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
    print(label, "no heap:", "MemoryError" if raised else "no error", len(w.parts),
          "gone" if c.gone else "kept", c.sess.tseq)


run("lean", leanconn.Lean, linemac.Lines)
run("conn", conn.Conn, session.Session)
