"""The attack matrix of issue 8 against the simulator (loopback only): every
privileged JSON op and binary opcode, tried with no auth, a wrong key, a
replayed transcript of an earlier operator session, a relay that hijacks the
operator's connection after the operator leaves, injected messages (plain,
relayed from another connection, reflected) and reordered or replayed
messages inside a live session. Nothing may reach a privileged handler:
a reply counts as accepted unless it is a refusal (auth_required,
auth_failed, a sealed line unreadable as JSON) or the connection closed.
The closing note prints the counts.
"""
import asyncio
import hashlib
import json
import os
import socket
import threading

import pytest

from mpota.codec import bootloader_messages as bm
from mpota.codec import mpota_hostframes as hostframes
from mpota.codec import mpota_lineproto as lineproto
from mpota.codec import mpota_proto as proto
from mpota.codec import mpota_session as session
from devconn import DevConn
from mpota.codec.mpota_framing import K_ERROR, K_FRAME, K_LINE
from mpota.codec.mpota_hmac_sha256 import host_mac
from simproc import Sim
from conftest import INTERPRETERS, interp_label, run_device_script

# every op the device serves only after auth (service._OPEN are the others)
JSON_OPS = [("confirm", {}), ("rollback", {}), ("read", {"slot": "a", "offset": 0, "length": 16}),
            ("erase", {"slot": "b"}), ("reset", {"delay_ms": 10}),
            ("begin", {"size": 1000, "sha256": "00" * 32}), ("commit", {}), ("abort", {}),
            ("trust", {"provision": "00" * 32}), ("logs", {"since": 0})]
BIN_OPS = [("DATA", lambda: hostframes.encode_data(0, b"x" * 16)),
           ("READ", lambda: hostframes.encode_read("a", 0, 16)),
           ("UpdateStart", lambda: bm.UpdateStartRequest.make(100)),
           ("UpdateStop", lambda: bm.UpdateStopRequest.make(0)),
           ("Write", lambda: bm.WriteRequest.make(b"y" * 16)),
           ("Reset", lambda: bm.ResetRequest.make()),
           ("ReadAddress", lambda: bm.ReadAddressRequest.make(0, 16))]
REFUSED = ("auth_required", "auth_failed")
_REF_REFUSED = (lineproto.E_AUTH_REQUIRED, lineproto.E_AUTH_FAILED)


def messages():
    """(name, bytes) of every privileged request."""
    out = [(op, hostframes.request_line(op, 7, fields)) for op, fields in JSON_OPS]
    return out + [(name, bytes(make())) for name, make in BIN_OPS]


class Tally:
    def __init__(self):
        self.rows = {}

    def add(self, scenario, name, accepted):
        t = self.rows.setdefault(scenario, [0, 0, []])
        t[0] += 1
        if accepted:
            t[1] += 1
            t[2].append(name)

    def report(self):
        lines = ["attack matrix (privileged requests that reached a handler / tried):"]
        for k, (n, acc, names) in self.rows.items():
            lines.append("  %-34s %3d / %3d%s" % (k, acc, n, ("  " + ", ".join(names)) if names else ""))
        total = sum(v[0] for v in self.rows.values())
        acc = sum(v[1] for v in self.rows.values())
        lines.append("  %-34s %3d / %3d" % ("total", acc, total))
        return "\n".join(lines), acc, total


def accepted(kind, v):
    """Did this reply come from a privileged handler (anything but a refusal)?"""
    if kind == K_LINE:
        b = bytes(v)
        if not b.endswith(b"}"):  # sealed: the JSON before the tag is readable to anyone
            b = b[:-session.LINE_TAG]
        r = json.loads(b)
        if r.get("ok"):
            return True
        e = r.get("error") or {}
        if e.get("code") in REFUSED:
            return False
        # a sealed line sent to an unauthenticated peer does not parse: refused before any handler
        return not (e.get("code") == "bad_request" and "not valid JSON" in e.get("message", ""))
    if kind == K_FRAME:
        op = v[1]
        if op == proto.OP_NERROR:
            return hostframes.parse_nerror(v)[1] not in _REF_REFUSED
        if op == 0xFF:
            return v[5] not in _REF_REFUSED
        return True  # ACK, READ_DATA or a reference success response
    return False  # a decoder error: not an answer from a handler


def raw_reply(s, dec, timeout=5.0):
    """(kind, value) of the device's next message on raw socket s, None when it closed."""
    s.settimeout(timeout)
    while True:
        if dec.pending_events:
            return dec.pending_events.pop(0)
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return None
        if not data:
            return None
        for kind, v in dec.decode(data):
            dec.pending_events.append((kind, v if kind == K_ERROR else bytes(v)))


def decoder():
    d = hostframes.Decoder(lineproto.MAX_FRAME + 64, 8192)
    d.pending_events = []
    return d


def sealed_reply(c):
    """The next message of authenticated DevConn c: (kind, value), None when the device closed."""
    try:
        return c.event()
    except (EOFError, ConnectionResetError, socket.timeout):
        return None


def closed(c):
    """True when the device has closed the connection (after at most one message)."""
    c.s.settimeout(5)
    try:
        while True:
            if not c.s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


# -- a relay on the path (spoofed PicoW.local) that keeps the device side ------------

class HijackRelay:
    """Forwards one operator connection to the device and records what the
    operator sent; when the operator leaves, keeps the device side open for
    the attacker (self.up)."""

    def __init__(self, port):
        self.port = port
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.listen_port = self.srv.getsockname()[1]
        self.sent = bytearray()
        self.left = threading.Event()
        self.up = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        self.srv.settimeout(20)
        down, _ = self.srv.accept()
        self.up = socket.create_connection(("127.0.0.1", self.port))
        stop = threading.Event()

        def device_to_operator():
            self.up.settimeout(0.2)
            while not stop.is_set():
                try:
                    data = self.up.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    down.sendall(data)
                except OSError:
                    return

        t = threading.Thread(target=device_to_operator, daemon=True)
        t.start()
        down.settimeout(20)
        while True:
            try:
                data = down.recv(65536)
            except OSError:
                break
            if not data:
                break
            self.sent += data
            self.up.sendall(data)
        stop.set()
        t.join(5)
        down.close()
        self.srv.close()
        self.left.set()


def operator_status(port, key, expect_device=None):
    """`flash.py status` of the operator: the host tool's Client, one status."""
    from mpota.client import Client

    async def run():
        async with Client("127.0.0.1", port, key=key, expect_device=expect_device) as c:
            return await c.status()
    return asyncio.run(run())


# -- the matrix -------------------------------------------------------------------

def test_attack_matrix(tmp_path, capsys):
    tally = Tally()
    with Sim(state=tmp_path / "dev") as sim:
        key, port = sim.key, sim.tcp_port
        wrong = bytes(b ^ 0x5A for b in key)
        msgs = messages()

        # 1. no auth: one connection, every request plain
        s = socket.create_connection(("127.0.0.1", port))
        d = decoder()
        for name, m in msgs:
            s.sendall(m)
            r = raw_reply(s, d)
            tally.add("no auth", name, r is not None and accepted(*r))
        s.close()

        # 2. wrong key: auth fails; then the request plain and sealed under the wrong key
        for name, m in msgs:
            for how in ("plain", "sealed"):
                s = socket.create_connection(("127.0.0.1", port))
                d = decoder()
                s.sendall(hostframes.request_line("hello", 1))
                h = json.loads(raw_reply(s, d)[1])
                hn = os.urandom(16)
                dn = bytes.fromhex(h["nonce"])
                s.sendall(hostframes.request_line("auth", 2, {"nonce": hn.hex(),
                                                              "mac": host_mac(wrong, h["device"], dn, hn).hex()}))
                r = raw_reply(s, d)
                assert r is not None and not accepted(*r) and b"auth_failed" in r[1]
                fake = session.Session(wrong, h["device"], dn, hn, False)
                s.sendall(m if how == "plain" else bytes(fake.seal(m)))
                r = raw_reply(s, d)
                tally.add("wrong key", name, r is not None and accepted(*r))
                s.close()

        # 3. injected into a live session: plain, relayed from another connection, reflected
        for name, m in msgs:
            c = DevConn(port, key)
            c.send_raw(m)  # an on-path injection: no tag
            r = sealed_reply(c)
            tally.add("injected (plain)", name, r is not None and accepted(*r))
            assert closed(c), "the device kept a connection that failed a MAC"
            a, b = DevConn(port, key), DevConn(port, key)
            b.send_raw(bytes(a.sess.seal(m)))  # valid on a, relayed into b
            r = sealed_reply(b)
            tally.add("relayed to another connection", name, r is not None and accepted(*r))
            a.close()
            b.close()
        c = DevConn(port, key)
        c.send(hostframes.request_line("ping", 1))
        raw = c.s.recv(65536)  # the device's sealed pong, bytes as they came
        c.sess.rseq += 1
        c.send_raw(raw)  # reflected back at the device
        r = sealed_reply(c)
        tally.add("reflected", "pong", r is not None and accepted(*r))

        # 4. reordered and replayed inside a live session
        for name, m in msgs:
            c = DevConn(port, key)
            first = bytes(c.sess.seal(hostframes.request_line("ping", 1)))
            second = bytes(c.sess.seal(m))
            c.send_raw(second + first)  # swapped
            r = sealed_reply(c)
            tally.add("reordered", name, r is not None and accepted(*r))
            c.close()
            if name in ("reset", "Reset"):
                continue  # the operator's own reset would run (the transcript below replays one)
            c = DevConn(port, key)
            sm = bytes(c.sess.seal(m))
            c.send_raw(sm)
            legit = sealed_reply(c)  # the operator's own request reaches its handler: what "accepted" detects
            assert legit is not None and accepted(*legit), (name, legit)
            c.send_raw(sm)  # and replayed
            r = sealed_reply(c)
            tally.add("replayed in the session", name, r is not None and accepted(*r))
            c.close()
        # reordered DATA frames of a live upload
        c = DevConn(port, key)
        data = os.urandom(8192)
        c.ok("begin", size=len(data), sha256=hashlib.sha256(data).hexdigest())
        f1 = bytes(c.sess.seal(hostframes.encode_data(0, data[:4096])))
        f2 = bytes(c.sess.seal(hostframes.encode_data(4096, data[4096:])))
        c.send_raw(f2 + f1)
        r = sealed_reply(c)
        tally.add("reordered", "DATA pair", r is not None and accepted(*r))
        c.close()

        # 5. a relay that hijacks the connection after the operator's status
        for name, m in msgs:
            relay = HijackRelay(port)
            st = operator_status(relay.listen_port, key, expect_device=sim.device_id)
            assert st["device"] == sim.device_id
            assert relay.left.wait(10)
            up, d = relay.up, decoder()
            up.sendall(m)
            r = raw_reply(up, d)
            tally.add("relay hijack (plain)", name, r is not None and accepted(*r))
            up.close()
        # ... and resending the operator's own sealed bytes after it left
        relay = HijackRelay(port)
        operator_status(relay.listen_port, key)
        assert relay.left.wait(10)
        tail = bytes(relay.sent[-200:])
        i = tail.rfind(b"{")
        relay.up.sendall(tail[i:])  # the operator's sealed status request, again
        r = raw_reply(relay.up, decoder())
        tally.add("relay hijack (replayed sealed)", "status", r is not None and accepted(*r))
        relay.up.close()

        # 6. a replayed transcript: a whole earlier operator session (every privileged
        # request, sealed under its session), replayed on a new connection
        relay = HijackRelay(port)
        c = DevConn(relay.listen_port, key)
        for name, m in msgs:
            if name not in ("reset", "Reset"):
                c.send(m)
                sealed_reply(c)
        mark = sim.mark()
        c.send(hostframes.request_line("reset", 8, {"delay_ms": 10}))  # the operator ends with a reset
        sealed_reply(c)
        c.close()
        assert relay.left.wait(10)
        transcript = bytes(relay.sent)
        sim.wait_for_line("mpota: ready", timeout=60, since=mark)
        c = DevConn(port, key)
        base = c.ok("status")
        c.close()
        s = socket.create_connection(("127.0.0.1", port))
        d = decoder()
        s.sendall(transcript)
        replies = []
        while True:
            r = raw_reply(s, d, timeout=3)
            if r is None:
                break
            replies.append(r)
        s.close()
        # hello, auth (refused), then one reply per replayed request
        assert replies[0][0] == K_LINE and b'"ok": true' in replies[0][1]
        assert b"auth_failed" in replies[1][1]
        for r in replies[2:]:
            tally.add("replayed transcript", "request", accepted(*r))
        assert len(replies) - 2 == len(msgs) - 1  # every replayed request answered, each refused

        # nothing changed: no reset, no erase, no session, slots as they were
        c = DevConn(port, key)
        after = c.ok("status")
        c.close()
        assert after["slots"] == base["slots"]
        assert after["session"] is None and after["uptime_ms"] > base["uptime_ms"]

    note, acc, total = tally.report()
    with capsys.disabled():
        print("\n" + note)
    assert total >= 6 * len(msgs)
    assert acc == 0, note


def test_host_refuses_a_peer_with_another_device_id(tmp_path):
    from mpota.client import Client
    from mpota.errors import AuthError

    async def run(port, key, expect):
        async with Client("127.0.0.1", port, key=key, expect_device=expect) as c:
            return await c.status()

    with Sim(state=tmp_path / "dev") as sim:
        assert asyncio.run(run(sim.tcp_port, sim.key, sim.device_id))["device"] == sim.device_id
        with pytest.raises(AuthError, match="expects"):
            asyncio.run(run(sim.tcp_port, sim.key, "0000000000"))
        # no expectation recorded: any device id
        assert asyncio.run(run(sim.tcp_port, sim.key, None))["device"] == sim.device_id


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_out_of_heap_inside_auth_leaves_the_peer_a_stranger(mp):
    """The heap runs out after the MAC was checked (growing the decoder, starting
    the session): no session, not authenticated, one unsealed retryable no_memory
    (an authenticated connection without session MACs would accept forged messages)."""
    r = run_device_script(mp, "auth_out_of_heap.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split("\n")[:2] == ["grow False True 1 no_memory True",
                                        "session False True 1 no_memory True"], r.stdout


def test_a_message_the_link_mangled_after_auth_is_a_lost_connection_not_a_wrong_key(tmp_path):
    """The device answers a message that fails its session MAC with a sealed
    auth_failed and closes: the host reads that as a lost link (resumable), not as a
    wrong key (which would stop a push that a reconnect would finish)."""
    from mpota.client import Client
    from mpota.errors import ConnectionLost

    async def go(port, key):
        c = Client("127.0.0.1", port, key=key)
        await c.connect(authenticate=True)
        try:
            c._sess.tseq += 1  # as if a message of ours was lost or duplicated on the way
            with pytest.raises(ConnectionLost, match="could not authenticate a message"):
                await c.status()
        finally:
            await c.close()

    with Sim(state=tmp_path / "dev") as sim:
        asyncio.run(go(sim.tcp_port, sim.key))


def test_a_challenge_is_answered_once_on_any_connection_and_never_made_up(tmp_path):
    """A hello's challenge outlives its connection (a flood may push that out
    before the auth: docs/security.md), but it is good for one auth attempt,
    only if the device issued it, and only among the last auth.WINDOW (128)."""
    def line(s, dec, op, **f):
        s.sendall(json.dumps(dict(op=op, id=1, **f)).encode() + b"\n")
        ev = raw_reply(s, dec)
        assert ev is not None and ev[0] == K_LINE, ev
        return json.loads(ev[1].split(b" ")[0] if not ev[1].startswith(b"{") else ev[1].rsplit(b"}", 1)[0] + b"}")

    def auth_fields(key, dev, dn, hn=b"\x07" * 16):
        return dict(nonce=hn.hex(), mac=host_mac(key, dev, bytes.fromhex(dn), hn).hex(), challenge=dn)

    with Sim(state=tmp_path / "dev") as sim:
        conns = []

        def conn():
            s = socket.create_connection(("127.0.0.1", sim.tcp_port))
            conns.append(s)
            return s, decoder()
        try:
            s, d = conn()
            hello = line(s, d, "hello")
            dn, dev = hello["nonce"], hello["device"]
            s.close()  # the connection that asked is gone
            s, d = conn()
            ok = line(s, d, "auth", **auth_fields(sim.key, dev, dn))  # answered on another one: in
            assert ok["ok"] and "mac" in ok, ok
            s, d = conn()
            again = line(s, d, "auth", **auth_fields(sim.key, dev, dn))  # the same challenge: spent
            assert again["error"]["code"] == "auth_failed", again
            s.close()  # (strangers have a quota of 2)
            s, d = conn()
            made_up = "00000001" + "ab" * 12  # never issued: refused without a MAC check
            r = line(s, d, "auth", **auth_fields(sim.key, dev, made_up))
            assert r["error"]["code"] == "auth_failed", r
            s.close()
            s, d = conn()
            old = line(s, d, "hello")["nonce"]
            for _ in range(128):  # 128 newer challenges: the old one expired
                line(s, d, "hello")
            s2, d2 = conn()
            r = line(s2, d2, "auth", **auth_fields(sim.key, dev, old))
            assert r["error"]["code"] == "auth_failed", r
        finally:
            for c in conns:
                c.close()
