# Run by tests/test_lean.py under MicroPython with device/ on sys.path: an
# authenticated lean connection meets a request it does not serve (abort)
# and hands over to the full stack (mpota_conn.py). Every sealed message the
# device opens must be verified once, at its own sequence number: the handover
# passes the request already read, it does not rewind the session to open the
# same message again. Prints each reply, then the sequence numbers opened.
import json
import binascii
import asyncio


import boardstub  # noqa: E402,F401  (hal's board: tests/device/boardstub.py)

import mpota_agent as agent  # noqa: E402
import mpota_leanconn as leanconn  # noqa: E402
import mpota_linemac as linemac  # noqa: E402
import mpota_slots as slots  # noqa: E402
from mpota_hmac_sha256 import host_mac  # noqa: E402

KEY = bytes(range(32))
CFG = {"auth": True, "slot_size": 0, "max_trials": 3, "max_unauth": 2, "max_conn": 4, "timeout": 10,
       "auth_timeout": 10, "mode": "lean"}
slots.attach = lambda dev: None  # no slot record: the ops used here do not read it

HOST = []  # the host's Lines (its opens are not the device's)
OPENED = []  # (sequence number) of every message the device opened successfully
_open_line = linemac.Lines.open_line


def open_line(self, v):
    seq = self.rseq
    r = _open_line(self, v)
    if r is not None and self not in HOST:
        OPENED.append(seq)
    return r


linemac.Lines.open_line = open_line  # also mpota_session.Session's (a subclass)


class Reader:
    def __init__(self):
        self.q = []
        self.ev = asyncio.Event()

    def feed(self, b):
        self.q.append(b)
        self.ev.set()

    async def readinto(self, mv):
        while not self.q:
            self.ev.clear()
            await self.ev.wait()
        b = self.q[0]
        n = min(len(b), len(mv))
        mv[:n] = b[:n]
        if n < len(b):
            self.q[0] = b[n:]
        else:
            self.q.pop(0)
        return n


class Writer:
    def __init__(self):
        self.buf = b""

    def write(self, b):
        self.buf += bytes(b)

    async def drain(self):
        pass

    async def line(self):
        for _ in range(2000):  # bounded: 2 s
            i = self.buf.find(b"\n")
            if i >= 0:
                ln = self.buf[:i]
                self.buf = self.buf[i + 1:]
                return ln
            await asyncio.sleep_ms(1)
        raise OSError("no reply")


async def main():
    dev = agent.Device(CFG, key=KEY, id="e661-test")
    ag = agent.Agent(dev)
    r = Reader()
    w = Writer()
    task = asyncio.create_task(leanconn.serve(ag, r, w))
    r.feed(b'{"op": "hello"}\n')
    nonce = binascii.unhexlify(json.loads(await w.line())["nonce"])
    hn = b"\x02" * 16
    r.feed(json.dumps({"op": "auth", "nonce": binascii.hexlify(hn).decode(),
                       "mac": binascii.hexlify(host_mac(KEY, dev.id, nonce, hn)).decode()}).encode() + b"\n")
    hs = linemac.Lines(KEY, dev.id, nonce, hn, False)
    HOST.append(hs)

    async def reply():
        v = hs.open_line(await w.line())
        if v is None:
            return "reply not authenticated"
        d = json.loads(bytes(v))
        return "ok" if d["ok"] else d["error"]["code"]

    print("auth", await reply())
    msgs = [hs.seal_line(b'{"op": "ping"}\n'), hs.seal_line(b'{"op": "abort"}\n'), hs.seal_line(b'{"op": "ping"}\n')]
    msgs.append(msgs[1])
    for msg in msgs:
        r.feed(msg)  # ping (lean), abort (handed over), ping (full stack), abort replayed
        print(json.loads(bytes(msg[:msg.rfind(b" ")]))["op"], await reply())
    await asyncio.wait_for_ms(task, 2000)  # the replay closed the connection
    print("opened", OPENED, "device sent", hs.rseq, "connections", len(ag.conns))


asyncio.run(main())
