"""The device agent end to end: tools/sim.py on free loopback ports, spoken to
with raw sockets and the shared codec (and the reference UDP client).

The client (`DevConn`, `app_image`, `reset_and_wait`) lives in tools/devconn.py;
test_powercut.py and test_deploy.py import it from here or from there.
"""
import binascii
import hashlib
import json
import os
import socket
import time

import pytest

from mpota.codec import mpota_framing as framing
from mpota.codec import mpota_hostframes as hostframes
from mpota.codec import mpota_lineproto as lineproto
from mpota.codec import mpota_proto as proto
from conftest import I386, INTERPRETERS, interp_label
from devconn import DevConn, app_image, reset_and_wait  # noqa: F401  (re-exported)
from mpota.codec.mpota_framing import K_FRAME
from mpota.codec.mpota_hmac_sha256 import host_mac
from simproc import Sim

from mpota.codec import bootloader_messages as bm


# -- JSON, auth, malformed input --------------------------------------------------

def test_json_ping_status_auth_and_malformed_input(tmp_path):
    with Sim(state=tmp_path / "dev") as sim:
        c = DevConn(sim.tcp_port)
        r = c.ok("ping", id=1)
        assert r["id"] == 1 and r["pong"] is True and r["uptime_ms"] >= 0
        st = c.ok("status", id="s")
        assert st["id"] == "s" and st["platform"] == "sim" and st["impl"] == "micropython"
        assert st["agent"] == "0.5.0" and st["device"] == sim.device_id and st["running"] is None
        # a stranger learns only what discovery needs (docs/security.md)
        for k in ("app", "slots", "session", "boot_note", "mem_free", "active"):
            assert k not in st, k
        h = c.ok("hello")
        assert "window" not in h and "slot_size" not in h and h["auth"] == "hmac-sha256"
        c2 = DevConn(sim.tcp_port, sim.key)
        st = c2.ok("status")
        assert st["active"] is None and st["running"] is None and st["app"]["state"] == "none"
        assert st["slots"]["a"]["state"] == "empty" and st["boot_reason"] == "power_on"
        for k in ("mem_free", "mem_alloc", "mem_peak", "mem_base", "uptime_ms", "boot_note", "session",
                  "trial_count", "slot_size", "max_image", "mode"):
            assert k in st
        assert 0 < st["max_image"] <= st["slot_size"] and st["mode"] == "live"
        c2.close()
        # auth is on: protected ops are refused, JSON and binary alike
        c.err("begin", "auth_required", size=10, sha256="0" * 64)
        c.err("erase", "auth_required", slot="a")
        c.send(hostframes.encode_data(0, b"x"))
        assert hostframes.parse_nerror(c.frame())[:2] == (proto.OP_DATA, lineproto.E_AUTH_REQUIRED)
        c.send(bm.UpdateStartRequest.make(100))
        assert bm.ErrorResponse.extract(c.frame()).error == lineproto.E_AUTH_REQUIRED
        c.send(bm.VersionRequest.make())  # open to all
        v = bm.VersionResponse.extract(c.frame())
        assert (v.api_major, v.api_minor) == (1, 0)
        # malformed requests
        c.send(b'{"op": "ping"\n')
        assert c.line()["error"]["code"] == "bad_request"
        c.send(b'{"id": 3}\n')
        assert c.line()["error"]["code"] == "bad_request"
        c.err("frobnicate", "unsupported")
        c.err("read", "auth_required", slot="a", offset=0, length=1)
        c.send(b"{" + b"x" * 3000 + b"}\n")
        assert c.line()["error"]["code"] == "too_large"
        c.send(b"garbage\x00\x01\n")
        assert c.line()["error"]["code"] == "bad_frame"
        bad = bytearray(bm.VersionRequest.make())
        bad[-1] ^= 0xFF
        c.send(bytes(bad))
        assert bm.ErrorResponse.extract(c.frame()).error == lineproto.E_BAD_FRAME
        # a header announcing 60000 bytes must not make the device wait for them
        c.send(bytes([0xE7, 0x21, 0xEA, 0x60, framing.header_checksum(0x21, 0xEA60)]))
        kind, v = c.event()
        assert kind == K_FRAME and v[1] == 0xFF and v[5] == lineproto.E_TOO_LARGE
        assert c.line()["error"]["code"] == "bad_frame"  # the rest of that header, skipped
        c.send(bytes(hostframes.make_frame(0x42, b"")))  # an opcode nobody defined
        assert bm.ErrorResponse.extract(c.frame()).error == lineproto.E_UNSUPPORTED
        # wrong MAC, then a replayed nonce: both refused
        key = sim.key
        h = c.ok("hello")
        c.err("auth", "auth_failed", nonce="00" * 16, mac="00" * 32)
        hn = os.urandom(16)
        mac = host_mac(key, h["device"], bytes.fromhex(h["nonce"]), hn).hex()
        c.err("auth", "auth_failed", nonce=hn.hex(), mac=mac)  # nonce consumed by the failed try
        c.auth(key)
        c.ok("status")
        c.err("read", "out_of_range", slot="a", offset=0, length=16)
        c.err("read", "bad_request", slot="c", offset=0, length=16)
        c.err("read", "out_of_range", slot="a", offset=0, length=5000)
        c.err("confirm", "incorrect_state")
        c.err("rollback", "incorrect_state")
        c.err("commit", "incorrect_state")
        c.err("begin", "bad_request", size=10, sha256="xyz")
        c.err("begin", "no_space", size=10 ** 7, sha256="0" * 64)
        c.send(hostframes.encode_data(0, b"x"))
        assert hostframes.parse_nerror(c.frame())[:2] == (proto.OP_DATA, lineproto.E_INCORRECT_STATE)
        # still one healthy connection after all that
        assert c.ok("ping")["pong"] is True
        # the key never shows up in what the device says
        assert key.hex() not in sim.output
        c.close()


# -- legacy service -----------------------------------------------------------------

def test_legacy_udp_update_with_readback(tmp_path):
    from mpota.bootloader_messenger import BootloaderMessenger
    data = os.urandom(20000)
    with Sim(state=tmp_path / "dev", flags=["--legacy-udp", "--no-auth"]) as sim:
        m = BootloaderMessenger(("127.0.0.1", sim.udp_port))
        try:
            api, blv, note = m.get_version()
            assert api == (1, 0) and note.startswith(b"mpota")
            with pytest.raises(RuntimeError):  # no session yet: IncorrectState
                m.write(b"abc")
            assert m.start_update(len(data))
            for i in range(0, len(data), 512):
                assert m.write(data[i:i + 512])
            # a write with a wrong CRC: refused, nothing appended
            bad = bytearray(bm.WriteRequest.make(b"zzzz"))
            bad[9] ^= 1
            bad[-1] = sum(bad[:-1]) & 0xFF
            with pytest.raises(RuntimeError, match="4"):
                m.send_and_recv(bytes(bad))
            # a wrong CRC at stop: the device CRC comes back, no match
            assert m.stop_update(0x12345678) is False
            # the session ended: writes are out of state now
            with pytest.raises(RuntimeError):
                m.write(b"abc")
            # again, properly
            assert m.start_update(len(data))
            for i in range(0, len(data), 1024):
                assert m.write(data[i:i + 1024])
            assert m.stop_update(binascii.crc32(data) & 0xFFFFFFFF) is True
            back = b"".join(m.read_address(a, min(1024, len(data) - a)).data
                            for a in range(0, len(data), 1024))
            assert back == data
            with pytest.raises(RuntimeError):
                m.read_address(len(data) - 10, 100)  # past the image
            with pytest.raises(RuntimeError):  # unknown opcode: UnsupportedOperation
                m.send_and_recv(bytes(hostframes.make_frame(0x0D, b"")))
        finally:
            m.close()
        c = DevConn(sim.tcp_port)
        st = c.ok("status")
        # stored and CRC-checked, but not an MCUboot app image: complete, not pending
        assert st["slots"]["a"]["state"] == "complete" and st["pending"] is None
        assert st["slots"]["a"]["sha256"] == hashlib.sha256(data).hexdigest()
        c.close()


def test_legacy_tcp_update_of_an_app_boots_on_trial(tmp_path):
    img = app_image(tmp_path, "app", "NAME = 'legacy'\ndef main():\n    print('app: legacy app up')\n", "1.0.0+0")
    with Sim(state=tmp_path / "dev") as sim:
        c = DevConn(sim.tcp_port, sim.key)  # legacy frames on an authenticated connection

        def xfer(frame):
            c.send(frame)
            return c.frame()

        assert bm.UpdateStartResponse.extract(xfer(bm.UpdateStartRequest.make(len(img))))
        for i in range(0, len(img), 1024):
            bm.WriteResponse.extract(xfer(bm.WriteRequest.make(img[i:i + 1024])))
        r = bm.UpdateStopResponse.extract(xfer(bm.UpdateStopRequest.make(binascii.crc32(img))))
        assert r.crc & 0xFFFFFFFF == binascii.crc32(img)
        head = bm.ReadAddressResponse.extract(xfer(bm.ReadAddressRequest.make(0, 64)))
        assert bytes(head.data) == img[:64]
        st = c.ok("status")
        assert st["pending"] == "a" and st["slots"]["a"]["state"] == "pending"
        assert st["slots"]["a"]["version"] == "1.0.0+0"
        mark = sim.mark()
        bm.ResetResponse.extract(xfer(bm.ResetRequest.make()))
        c.close()
        sim.wait_for_line("app: legacy app up", timeout=60, since=mark)
        sim.wait_for_line("mpota: ready", timeout=60, since=mark)
        c = DevConn(sim.tcp_port, sim.key)
        st = c.ok("status")
        assert st["running"] == "a" and st["trial"] is True and st["trial_count"] == 1
        assert st["app"]["name"] == "legacy" and st["app"]["state"] == "stopped"
        assert st["boot_reason"] == "reset"
        c.close()


# -- native updates, trial, confirm, rollback ------------------------------------------

APP1 = """NAME = "demo"
import asyncio
async def main():
    print("app: v1 up")
    while True:
        await asyncio.sleep(1)
"""
APP2 = """NAME = "demo"
import mpota
async def main():
    print("app: v2 up")
    mpota.confirm()
    print("app: v2 confirmed, active %s" % mpota.status()["active"])
"""
APP3 = """NAME = "demo"
def main():
    print("app: v3 up")
    raise RuntimeError("v3 is broken")
"""


def test_native_update_trial_confirm_and_rollback(tmp_path):
    img1 = app_image(tmp_path, "v1", APP1, "1.0.0+0")
    img2 = app_image(tmp_path, "v2", APP2, "2.0.0+0")
    img3 = app_image(tmp_path, "v3", APP3, "3.0.0+0")
    with Sim(state=tmp_path / "dev") as sim:
        key = sim.key
        c = DevConn(sim.tcp_port, key)
        r = c.push(img1, "1.0.0+0")
        assert r["slot"] == "a" and r["state"] == "pending" and r["version"] == "1.0.0+0"
        assert r["sha256"] == hashlib.sha256(img1).hexdigest()
        # read it back, binary READ and JSON read
        c.send(hostframes.encode_read("a", 100, 4000))
        off, crc, data = hostframes.parse_read_data(c.frame())
        assert off == 100 and bytes(data) == img1[100:4100]
        assert binascii.a2b_base64(c.ok("read", slot="a", offset=7, length=700)["data"]) == img1[7:707]
        mark = sim.mark()
        c = reset_and_wait(sim, c, key)
        sim.wait_for_line("app: v1 up", since=mark)
        st = c.ok("status")
        assert (st["running"], st["trial"], st["trial_count"], st["active"]) == ("a", True, 1, None)
        assert st["app"] == {"state": "running", "name": "demo", "error": None, "version": "1.0.0+0"}
        assert st["boot_note"] == "booted a (trial 1/3)"
        # an update during a trial is refused until the trial is settled
        c.err("begin", "incorrect_state", size=len(img2), sha256=hashlib.sha256(img2).hexdigest())
        assert c.ok("confirm") == {"ok": True, "slot": "a", "state": "confirmed"}
        st = c.ok("status")
        assert st["active"] == "a" and st["trial"] is False and st["slots"]["a"]["state"] == "confirmed"

        # v2 confirms itself through mpota.confirm()
        r = c.push(img2, "2.0.0+0")
        assert r["slot"] == "b" and r["state"] == "pending"
        mark = sim.mark()
        c = reset_and_wait(sim, c, key)
        sim.wait_for_line("app: v2 confirmed, active b", since=mark)
        st = c.ok("status")
        assert st["active"] == "b" and st["running"] == "b" and st["trial"] is False
        assert st["slots"]["b"] == {"state": "confirmed", "size": len(img2),
                                    "sha256": hashlib.sha256(img2).hexdigest(), "version": "2.0.0+0"}
        # downgrades need the allowance
        c.err("begin", "version_refused", size=len(img1), sha256=hashlib.sha256(img1).hexdigest(),
              version="1.0.0+0")

        # v3 crashes and never confirms: the agent stays up; 3 trials, then rollback
        r = c.push(img3, "3.0.0+0")
        assert r["slot"] == "a"
        for n in (1, 2, 3):
            mark = sim.mark()
            c = reset_and_wait(sim, c, key)
            sim.wait_for_line("app: v3 up", since=mark)
            st = c.ok("status")
            assert st["running"] == "a" and st["trial_count"] == n, st
            assert st["app"]["state"] == "crashed" and "v3 is broken" in st["app"]["error"]
        mark = sim.mark()
        c = reset_and_wait(sim, c, key)
        sim.wait_for_line("app: v2 up", since=mark)
        st = c.ok("status")
        assert st["boot_note"] == "rolled back a -> b after 3 unconfirmed trials"
        assert st["running"] == "b" and st["active"] == "b" and st["slots"]["a"]["state"] == "bad"
        c.err("erase", "incorrect_state", slot="b")  # running
        c.err("rollback", "incorrect_state")  # a is bad: nothing to roll back to
        assert c.ok("erase", slot="a")["state"] == "empty"
        c.close()


def test_commit_rejects_wrong_digest_and_non_images(tmp_path):
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:
        c = DevConn(sim.tcp_port)
        data = os.urandom(9000)
        c.ok("begin", size=len(data), sha256="ab" * 32)
        c.upload(data)
        c.err("commit", "verify_failed")
        assert c.ok("status")["slots"]["a"]["state"] == "empty"
        # right digest, but not an MCUboot image
        c.ok("begin", size=len(data), sha256=hashlib.sha256(data).hexdigest())
        c.upload(data)
        c.err("commit", "bad_image")
        st = c.ok("status")
        assert st["slots"]["a"]["state"] == "complete" and st["pending"] is None
        # a good image, but not the bytes begin named (its last, unprotected
        # TLV byte differs): the transfer's digest is checked before the image
        img = bytes(app_image(tmp_path, "app", "def main():\n    pass\n", "1.0.0"))
        other = img[:-1] + bytes([img[-1] ^ 1])
        for sent, named, code in ((img, other, "verify_failed"), (other, other, "bad_image")):
            c.ok("begin", size=len(sent), sha256=hashlib.sha256(named).hexdigest())
            c.upload(sent)
            c.err("commit", code)
        assert c.ok("status")["slots"]["a"]["state"] == "complete"  # (the last: sent as named, refused as an image)
        c.close()


def test_data_frame_rules(tmp_path):
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:
        c = DevConn(sim.tcp_port)
        data = os.urandom(10000)
        c.ok("begin", size=len(data), sha256=hashlib.sha256(data).hexdigest())
        c.send(hostframes.encode_data(0, data[:1000]))
        assert hostframes.parse_ack(c.frame()) == 1000
        c.send(hostframes.encode_data(2000, data[2000:3000]))  # a gap
        assert hostframes.parse_nerror(c.frame()) == (proto.OP_DATA, lineproto.E_OUT_OF_ORDER, 0, 1000, 2000)
        f = hostframes.encode_data(1000, data[1000:2000])
        f[20] ^= 0xFF
        f[-1] = sum(f[:-1]) & 0xFF  # frame intact, chunk CRC wrong
        c.send(bytes(f))
        assert hostframes.parse_nerror(c.frame())[1:] == (lineproto.E_CRC_MISMATCH, 0, 1000, 1000)
        c.send(hostframes.encode_data(500, data[500:1500]))  # overlaps: only the new part is written
        assert hostframes.parse_ack(c.frame()) == 1500
        c.send(hostframes.encode_data(0, data[:100]))  # duplicate
        assert hostframes.parse_ack(c.frame()) == 1500
        c.send(hostframes.encode_data(9990, b"y" * 20))  # past the announced size
        assert hostframes.parse_nerror(c.frame())[1] == lineproto.E_OUT_OF_RANGE
        c.upload(data, 1500, chunk=3000)
        c.err("commit", "bad_image")  # digest fine, not an image
        c.close()


def test_two_clients_busy_and_resume_after_drop(tmp_path):
    img = app_image(tmp_path, "app", APP1, "1.0.0+0", pad=60000)
    sha = hashlib.sha256(img).hexdigest()
    with Sim(state=tmp_path / "dev") as sim:
        a = DevConn(sim.tcp_port, sim.key)
        b = DevConn(sim.tcp_port, sim.key)
        assert a.ok("begin", size=len(img), sha256=sha)["offset"] == 0
        held = a.upload(img, 0, stop_at=32768)
        assert held == 32768
        r = b.err("begin", "busy", size=len(img), sha256=sha)
        assert r["error"]["retry"] is True
        b.send(bm.UpdateStartRequest.make(100))  # legacy sessions are one session too
        assert bm.ErrorResponse.extract(b.frame()).error == lineproto.E_BUSY
        assert b.ok("status")["session"] == {"slot": "a", "size": len(img), "offset": 32768, "kind": "native"}
        # the owner drops without a word: the session closes, the bytes stay
        a.s.shutdown(socket.SHUT_RDWR)
        a.close()
        for _ in range(100):
            if b.ok("status")["session"] is None:
                break
        else:
            raise AssertionError("session still open after the owner dropped")
        r = b.ok("begin", size=len(img), sha256=sha)
        assert r["offset"] == 32768  # resume
        b.upload(img, r["offset"])
        assert b.ok("commit")["state"] == "pending"
        # a different image into the same slot starts from 0
        r = b.ok("begin", size=len(img), sha256="cd" * 32)
        assert r["offset"] == 0
        b.ok("abort")
        b.close()


# The board's heap (160K with Wi-Fi up) on the 32-bit build, whose object and
# bytecode sizes are the RP2040's; its 64-bit counterpart in .venv gets 256K
# (objects there are 1.6-2x larger). MPOTA_HEAP overrides the 64-bit figure.
HEAPS = {"i386": "160K", "venv": os.environ.get("MPOTA_HEAP", "256K")}
IDLE_BUDGET = 24 * 1024  # issue 7: resident agent, idle, 32-bit
# A regression guard, not the 40 KiB goal (docs/memory.md): the peak is ~61 KB,
# and it moves by several KB with the heap layout (a stale pointer on the C
# stack keeps a block alive; the layout shifts with the paths a run uses).
PEAK_GUARD = 72 * 1024


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
@pytest.mark.parametrize("auth", [False, True], ids=["no-auth", "auth"])
def test_heap_peak_during_256k_update(tmp_path, auth, mp, capsys):
    img = app_image(tmp_path, "big", APP1, "1.0.0+0", pad=256 * 1024 - 12 * 1024)
    assert 240 * 1024 <= len(img) <= 300 * 1024
    heap = HEAPS[interp_label(mp)]
    flags = ["--heap", heap, "--micropython", mp] + ([] if auth else ["--no-auth"])
    with Sim(state=tmp_path / "dev", flags=flags) as sim:
        key = sim.key if auth else None
        c = DevConn(sim.tcp_port, key)
        st0 = c.ok("status")
        r = c.push(img, "1.0.0+0")
        assert r["state"] == "pending"
        st = c.ok("status")
        base = st0["mem_base"]
        idle, peak = st0["mem_idle"] - base, st["mem_peak"] - base
        with capsys.disabled():  # the figure the closing note quotes, shown in every run
            print("\n%s heap %s, auth %s: image %d bytes; agent idle %d B, peak %d B; mem_free %d after"
                  % (interp_label(mp), heap, "on" if auth else "off", len(img), idle, peak, st["mem_free"]))
        assert 0 < idle < peak
        if mp == str(I386):  # budgets are for the board's word size, with margins of KiBs
            assert idle <= IDLE_BUDGET and peak <= PEAK_GUARD, (idle, peak)
        # the new image boots as the app beside the agent, in the same heap
        c = reset_and_wait(sim, c, key)
        st = c.ok("status")
        assert st["running"] == "a" and st["app"]["state"] == "running", st
        with capsys.disabled():
            print("app running: mem_alloc %d, mem_free %d" % (st["mem_alloc"], st["mem_free"]))
        c.close()


# small heaps: the 32-bit build (the board's sizes) at 96K, its 64-bit counterpart at
# 160K (the 1.6-2x of docs/board.md). At 120-144K the 64-bit simulator's heap is so
# fragmented after boot that auth or begin finds no 2 KB in one piece with 35-60 KB
# free, and whether it does flips with any change to the resident modules (three empty
# functions added to mpota_hal.py and simhal.py turned 128K from pass to fail; main itself
# fails at 144K): a layout lottery, not a measure of the agent.
# The 32-bit build's heap, less the simulator's own ~12 KB: the agent's first
# authentication grows its receive buffer to 4,126 bytes in one piece, and in
# v0.4.0 at 96K, 100K and 112K the boot leaves no such hole with 25-30 KB free
# (no_memory, retryable; 104K, 108K, 120K, 128K have one): 120K keeps the test
# about rare ops, below the board's ~160K.
SMALL = {"i386": "120K", "venv": "160K"}


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_rare_ops_in_a_small_heap_answer_cleanly(tmp_path, mp):
    """Rare paths load on first use; with an app in a small heap that may not
    fit. Whatever happens, each request gets its own answer (the op's result,
    or a retryable no_memory in the asker's framing, with its id) and the
    agent keeps serving."""
    img = app_image(tmp_path, "app", APP1, "1.0.0+0")
    with Sim(state=tmp_path / "dev", flags=["--heap", SMALL[interp_label(mp)], "--micropython", mp]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        c.push(img, "1.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        assert c.ok("status")["app"]["state"] == "running"
        for i, req in enumerate(({"op": "read", "slot": "a", "offset": 0, "length": 16},
                                 {"op": "erase", "slot": "b"})):
            c.send(json.dumps(dict(req, id=100 + i)).encode() + b"\n")
            r = c.line()
            assert r["id"] == 100 + i, r
            assert r["ok"] or (r["error"]["code"] == "no_memory" and r["error"]["retry"]
                               and not r["error"]["fatal"]), r
        c.send(bytes(bm.VersionRequest.make()))
        f = c.frame()
        if f[1] == bm.ErrorResponse.OpCode:
            assert bm.ErrorResponse.extract(f).error == lineproto.E_NO_MEMORY
        else:
            assert bm.VersionResponse.extract(f).api_major == 1
        assert c.ok("status")["app"]["state"] == "running"
        c.close()


@pytest.mark.parametrize("auth", [True, False])
def test_legacy_udp_replies_cannot_amplify_a_flood(tmp_path, auth):
    """A 6-byte VersionRequest is answered with 139 bytes to any source: a
    spoofed flood would be reflected 23-fold. Replies larger than their
    request draw on a token bucket (mpota_pace.RATE bytes/s over the
    requests, mpota_pace.BURST at most): paced, never changed."""
    from simproc import pace_bound, udp_flood
    assert pace_bound() == (8192, 4096)
    req = bytes(hostframes.make_frame(0x01, b""))
    flags = ["--legacy-udp"] + ([] if auth else ["--no-auth"])
    with Sim(state=tmp_path / "dev", flags=flags) as sim:
        one, got, took, bound = udp_flood(sim.udp_port, req, 400)
    assert len(one) == 139 and one[1] == 0x02  # the reply, byte-exact
    assert got and all(g == one for g in got)
    excess = sum(len(g) for g in got) - len(got) * len(req)
    print("\n%d of 400 VersionRequests answered in %.1f s: %d bytes over the requests"
          % (len(got), took, excess))
    assert excess <= bound


IDLE_APP = """NAME = "idle"
import asyncio
import mpota
async def main():
    await asyncio.sleep_ms(300)
    mpota.status()  # the agent settles: mem_idle is measured
    await asyncio.sleep_ms(600)
    print("app: mem_idle %d" % mpota.status()["mem_idle"])
    while True:
        await asyncio.sleep_ms(1000)
"""
# the app's mem_idle and the network's may differ by what the app holds at
# each moment and by where a stale pointer on the C stack keeps a block: a
# few hundred bytes, not the KBs of a connection module kept alive
IDLE_TOLERANCE = 1024


def test_mem_idle_is_the_same_whoever_settles(tmp_path, mp_build):
    """mem_idle after the app's own mpota.status() equals the one after a
    status over the network: the settle measures the agent's idle heap, not
    the app's call (its frame, the reply, the modules it loaded)."""
    img = app_image(tmp_path, "idle", IDLE_APP, "1.0.0+0")
    with Sim(state=tmp_path / "dev", flags=["--heap", HEAPS[interp_label(mp_build)], "--micropython", mp_build]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        c.push(img, "1.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        c.close()
        by_app = int(sim.wait_for_line("app: mem_idle ", timeout=30).split()[-1])
        time.sleep(0.5)
        c = DevConn(sim.tcp_port, sim.key)
        c.ok("status")
        c.close()  # the agent settles after this connection: mem_idle measured
        time.sleep(0.5)
        c = DevConn(sim.tcp_port, sim.key)
        by_net = c.ok("status")["mem_idle"]
        c.close()
        print("mem_idle: by the app %d, by the network %d" % (by_app, by_net))
        assert abs(by_app - by_net) <= IDLE_TOLERANCE, (by_app, by_net)
