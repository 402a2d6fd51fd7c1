"""SMP (MCUmgr) over UDP, end to end: tools/sim.py --smp-port driven by the real
smpclient from PyPI (UDP transport), as smpmgr drives a board; the native
status op (DevConn) checks what the device did underneath."""
import asyncio
import hashlib
import socket
import subprocess
import sys

import cbor2
import pytest
from smpclient import SMPClient
from smpclient.exceptions import SMPUploadError
from smpclient.generics import error, success
from smpclient.requests.image_management import ImageErase, ImageStatesRead, ImageStatesWrite, ImageUploadWrite
from smpclient.requests.os_management import EchoWrite, MCUMgrParametersRead, ResetWrite

import boardbuilds
from mpota.codec import mpota_mcuboot as mcuboot
from bench_smp import SmpUdp, heap_figures
from devconn import DevConn, app_image, reset_and_wait
from simproc import Sim, free_port

IMG = 1  # image group
HASH_NOT_FOUND = 8
EACCESSDENIED = 11  # MGMT_ERR_EACCESSDENIED: with auth on, SMP only reads
NO_FREE_SLOT, BUSY, INVALID_OFFSET, OVERRUN, BAD_MAGIC, INVALID_HASH, NOT_NEWER, CONFIRM_DENIED = \
    9, 16, 20, 31, 23, 24, 27, 32

APP = """NAME = "smpdemo"
def main():
    print("app: %s up")
"""
BROKEN = "NAME = 'broken'\n"  # no main(): fails to start, rolled back at once


class Smp:
    """One smpclient session per call, run to completion (tests stay synchronous)."""

    def __init__(self, port):
        self.port = port

    def run(self, fn):
        async def go():
            async with SMPClient(SmpUdp(self.port), "127.0.0.1", timeout_s=10) as c:
                return await fn(c)
        return asyncio.run(go())

    def req(self, r):
        return self.run(lambda c: c.request(r))

    def ok(self, r):
        rsp = self.req(r)
        assert success(rsp), rsp
        return rsp

    def err(self, r, rc, group=IMG):
        rsp = self.req(r)
        assert error(rsp) and rsp.err.group == group and rsp.err.rc == rc, rsp
        return rsp

    def upload(self, image, stop_after=None, upgrade=False, slot=0):
        """smpclient.upload; the offsets it saw (stops early once past `stop_after`)."""
        async def go(c):
            seen = []
            async for off in c.upload(image, slot, upgrade=upgrade):
                seen.append(off)
                if stop_after is not None and off > stop_after:
                    break
            return seen
        return self.run(go)

    def chunks(self, image, sha, size=1024):
        """Upload by hand (any `sha`); the last response."""
        off = 0
        while True:
            first = {"image": 0, "len": len(image), "sha": sha} if off == 0 else {}
            rsp = self.req(ImageUploadWrite(off=off, data=image[off:off + size], **first))
            if not success(rsp) or rsp.off >= len(image):
                return rsp
            off = rsp.off

    def images(self):
        return {s.slot: s for s in self.ok(ImageStatesRead()).images}


def mcuboot_hash(tmp_path, img):
    """The image's MCUboot hash as imgtool prints it, checked against shared/mpota_mcuboot.py."""
    f = tmp_path / ("img-%s.bin" % hashlib.sha256(img).hexdigest()[:8])
    f.write_bytes(img)
    out = subprocess.run([sys.executable, "-m", "imgtool.main", "verify", str(f)], capture_output=True,
                         text=True).stdout
    digest = [ln.split(":")[1].strip() for ln in out.splitlines() if ln.startswith("Image digest")]
    h = mcuboot.verify(str(f))["sha256"]
    assert digest == [h.hex()], out
    return h


def smp_sim(tmp_path, flags=()):
    port = free_port(socket.SOCK_DGRAM)
    sim = Sim(state=tmp_path / "dev", flags=["--smp-port", str(port)] + list(flags))
    return sim, Smp(port), port


def reset(sim, smp, wait_for=None):
    mark = sim.mark()
    smp.ok(ResetWrite())  # answered first, then the device resets
    if wait_for:
        sim.wait_for_line(wait_for, timeout=60, since=mark)
    sim.wait_for_line("mpota: ready", timeout=60, since=mark)


def test_smp_update_test_reset_confirm_with_smpclient(tmp_path):
    img1 = app_image(tmp_path, "v1", APP % "v1", "1.0.0+0", pad=40000)
    img2 = app_image(tmp_path, "v2", APP % "v2", "2.0.0+0", pad=20000)
    h1, h2 = mcuboot_hash(tmp_path, img1), mcuboot_hash(tmp_path, img2)
    sim, smp, _ = smp_sim(tmp_path, ["--no-auth"])  # auth off: SMP manages everything
    with sim:
        key = sim.key
        assert smp.ok(EchoWrite(d="hello mpota")).r == "hello mpota"
        p = smp.ok(MCUMgrParametersRead())
        assert p.buf_size >= 1472 and p.buf_count >= 1
        assert smp.images() == {}

        # an interrupted upload, resumed by the same sha: no byte sent twice
        seen = smp.upload(img1, stop_after=len(img1) // 3)
        held = seen[-1]
        assert len(img1) // 3 < held < len(img1)
        c = DevConn(sim.tcp_port, key)
        st = c.ok("status")
        assert st["session"] == {"slot": "a", "size": len(img1), "offset": held, "kind": "smp"}
        # an SMP upload is an ordinary session: a native begin meanwhile is busy
        c.err("begin", "busy", size=len(img2), sha256=hashlib.sha256(img2).hexdigest())
        seen = smp.upload(img1)
        assert seen[0] == held and seen[-1] == len(img1)

        # state read: the MCUboot hash (imgtool's digest), not the file's SHA-256
        s = smp.images()[0]
        assert s.hash == h1 and s.hash != hashlib.sha256(img1).digest()
        assert (s.version, s.bootable, s.pending, s.confirmed, s.active, s.permanent) == \
            ("1.0.0", True, False, False, False, False)
        assert c.ok("status")["slots"]["a"]["state"] == "complete"
        c.close()

        # test -> pending; reset -> runs on trial; confirm
        rsp = smp.ok(ImageStatesWrite(hash=h1, confirm=False))
        assert [(i.slot, i.pending) for i in rsp.images] == [(0, True)]
        reset(sim, smp, "app: v1 up")
        s = smp.images()[0]
        assert (s.active, s.confirmed, s.pending, s.hash) == (True, False, False, h1)
        c = DevConn(sim.tcp_port, key)
        st = c.ok("status")
        assert (st["running"], st["trial"], st["trial_count"]) == ("a", True, 1)
        smp.err(ImageErase(slot=0), NO_FREE_SLOT)  # the running trial
        rsp = smp.ok(ImageStatesWrite(confirm=True))
        assert [(i.slot, i.active, i.confirmed) for i in rsp.images] == [(0, True, True)]
        st = c.ok("status")
        assert st["active"] == "a" and st["trial"] is False

        # upgrade: true refuses a version that is not newer
        with pytest.raises(SMPUploadError) as e:
            smp.upload(img1, upgrade=True)
        assert e.value.args[0].err.rc == NOT_NEWER
        # a native session open: an SMP upload is busy, until it ends
        c.ok("begin", size=len(img2), sha256=hashlib.sha256(img2).hexdigest())
        with pytest.raises(SMPUploadError) as e:
            smp.upload(img2)
        assert e.value.args[0].err.rc == BUSY
        c.ok("abort")
        c.close()

        # offsets past the image are answered with an error, never silence
        smp.ok(ImageUploadWrite(off=0, data=img2[:600], image=0, len=len(img2),
                                sha=hashlib.sha256(img2).digest()))
        smp.err(ImageUploadWrite(off=len(img2) + 100, data=b"x" * 10), INVALID_OFFSET)
        smp.err(ImageUploadWrite(off=len(img2) - 5, data=b"x" * 10), OVERRUN)
        rsp = smp.ok(ImageUploadWrite(off=100, data=img2[100:200]))  # not where we are: "continue from 600"
        assert rsp.off == 600
        assert smp.upload(img2)[0] == 600  # smpclient restarts at 0: resumed
        s = smp.images()[1]
        assert (s.hash, s.version, s.bootable, s.active) == (h2, "2.0.0", True, False)

        # erase: the inactive slot yes, the running one no
        smp.err(ImageErase(slot=0), NO_FREE_SLOT)
        smp.ok(ImageErase())  # default: the inactive slot
        assert sorted(smp.images()) == [0]

        # upload again (image 1, as `smpmgr upgrade --slot 1` asks: the same inactive
        # slot); hash + confirm: permanent -> boots confirmed, no trial
        smp.upload(img2, slot=1)
        rsp = smp.ok(ImageStatesWrite(hash=h2, confirm=True))
        s = {i.slot: i for i in rsp.images}[1]
        assert (s.pending, s.permanent, s.active) == (True, True, False)
        reset(sim, smp, "app: v2 up")
        imgs = smp.images()
        assert (imgs[1].active, imgs[1].confirmed, imgs[1].permanent) == (True, True, False)
        st = DevConn(sim.tcp_port, key).ok("status")
        assert (st["running"], st["active"], st["trial"]) == ("b", "b", False)


def test_smp_refuses_corrupt_images_and_failed_trials(tmp_path):
    img1 = app_image(tmp_path, "v1", APP % "v1", "1.0.0+0")
    bad = app_image(tmp_path, "bad", BROKEN, "3.0.0+0")
    h_bad = mcuboot_hash(tmp_path, bad)
    sim, smp, _ = smp_sim(tmp_path, ["--no-auth"])
    with sim:
        smp.upload(img1)
        smp.ok(ImageStatesWrite(hash=mcuboot_hash(tmp_path, img1), confirm=True))  # permanent
        reset(sim, smp, "app: v1 up")

        # not an MCUboot image: refused at the first chunk
        with pytest.raises(SMPUploadError) as e:
            smp.upload(b"\x00" * 5000)
        assert e.value.args[0].err.rc == BAD_MAGIC
        # corrupt body: the sha of the upload matches, the MCUboot hash does not
        corrupt = bytearray(img1)
        corrupt[len(corrupt) // 2] ^= 0xFF
        with pytest.raises(SMPUploadError) as e:
            smp.upload(bytes(corrupt))
        rsp = e.value.args[0]
        assert error(rsp) and rsp.err.rc == INVALID_HASH, rsp
        s = smp.images()[1]
        assert s.bootable is False and s.hash is None
        st = DevConn(sim.tcp_port).ok("status")
        assert st["pending"] is None and st["slots"]["b"]["state"] == "complete"
        # a wrong sha: match false (the bytes are dropped)
        rsp = smp.chunks(img1, bytes(32))
        assert success(rsp) and rsp.match is False and rsp.off == len(img1), rsp

        # an image that fails its trial is never confirmed afterwards (smpmgr#105)
        smp.upload(bad)
        smp.ok(ImageStatesWrite(hash=h_bad, confirm=False))
        reset(sim, smp, "rolled back b -> a")
        s = smp.images()[1]
        assert (s.hash, s.bootable, s.active) == (h_bad, False, False)
        smp.err(ImageStatesWrite(hash=h_bad, confirm=True), CONFIRM_DENIED)
        smp.err(ImageStatesWrite(hash=h_bad, confirm=False), CONFIRM_DENIED)
        smp.ok(ImageErase(slot=1))


def _raw(port, hdr, body):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(bytes(hdr[:2]) + len(body).to_bytes(2, "big") + bytes(hdr[2:]) + body, ("127.0.0.1", port))
        r = s.recv(4096)
    return r[:8], cbor2.loads(r[8:])


def test_smp_raw_datagrams_v1_errors_and_big_echo(tmp_path):
    sim, smp, port = smp_sim(tmp_path, ["--no-auth"])
    with sim:
        # v1 header (version bits 0): errors come as {"rc": MGMT_ERR}
        h, m = _raw(port, [0x02, 0, 0, 1, 7, 1], cbor2.dumps({"off": 5, "data": b"x"}))
        assert h[0] == 0x03 and h[6] == 7 and m == {"rc": 1}  # no upload (17): EUNKNOWN, as Zephyr translates
        h, m = _raw(port, [0x0A, 0, 0, 1, 8, 1], cbor2.dumps({"off": 5, "data": b"x"}))
        assert m == {"err": {"group": 1, "rc": 17}}  # v2: the image group's own code
        _, m = _raw(port, [0x0A, 0, 0, 42, 9, 0], cbor2.dumps({}))
        assert m == {"rc": 8}  # unknown group: ENOTSUP
        _, m = _raw(port, [0x0A, 0, 0, 0, 10, 0], b"\xa1\x61")
        assert m == {"rc": 3}  # bad CBOR: EINVAL
        big = "e" * 1458
        body = cbor2.dumps({"d": big})
        assert 8 + len(body) == 1472  # a full datagram at MTU 1500
        h, m = _raw(port, [0x0A, 0, 0, 0, 11, 0], body)
        assert m == {"r": big} and h[6] == 11


@pytest.mark.skipif(boardbuilds.i386() is None, reason="no ../shared/tools/micropython-1.27-i386 (fresh clone)")
def test_smp_heap_on_the_32bit_build(tmp_path, capsys):
    """docs/memory.md's SMP figures: idle with smp_udp off and on (only the poller),
    after a request (the service released again), and the peak over an SMP upload."""
    img = app_image(tmp_path, "big", APP % "big", "1.0.0+0", pad=120000)
    h = heap_figures(img, tmp_path, "160K", boardbuilds.i386())
    with capsys.disabled():
        print("\n" + h["line"])
    # generous margins: the poller is ~1.5 KB, mpota_smp.py + mpota_cbor.py ~11 KB loaded; what stays
    # after a request is the qstr pool (names interned once, never freed), never the modules
    assert h["idle_on"] - h["idle_off"] < 4096, h
    assert h["after_request2"] - h["after_request"] < 2048, h
    assert h["after_upload"] - h["after_request"] < 4096, h
    assert h["idle_on"] < h["peak_upload"] < 96 * 1024, h


def test_smp_keeps_the_native_security_rules(tmp_path):
    """With a trusted key only signed images become bootable over SMP too; after a
    rollback nothing is uploaded (or tested) until the reset, as for native begin."""
    from mpota import keys
    mine = tmp_path / "mine.pem"
    keys.keygen(mine)
    unsigned = app_image(tmp_path, "u", APP % "u", "1.0.0+0")
    app_image(tmp_path, "s", APP % "s", "1.0.0+0")  # the folder, signed below
    from mpota.images import build_app_image
    signed = build_app_image(tmp_path / "s", version="1.0.0+0", key=str(mine))
    newer = build_app_image(tmp_path / "s", version="1.1.0+0", key=str(mine))
    sim, smp, _ = smp_sim(tmp_path, ["--no-auth", "--trust", str(mine)])
    with sim:
        with pytest.raises(SMPUploadError) as e:
            smp.upload(unsigned)
        assert e.value.args[0].err.rc == INVALID_HASH  # signature_invalid at the end of the upload
        s = smp.images()[0]
        assert s.bootable is False and s.hash is None  # stored, never bootable: nothing to test
        smp.err(ImageStatesWrite(hash=mcuboot_hash(tmp_path, unsigned), confirm=False), HASH_NOT_FOUND)

        smp.upload(signed)
        assert smp.images()[0].bootable is True
        smp.ok(ImageStatesWrite(hash=mcuboot_hash(tmp_path, signed), confirm=True))  # permanent
        reset(sim, smp, "app: s up")
        smp.upload(newer)
        smp.ok(ImageStatesWrite(hash=mcuboot_hash(tmp_path, newer), confirm=False))
        reset(sim, smp, "app: s up")
        c = DevConn(sim.tcp_port, sim.key)
        assert c.ok("status")["trial"] is True
        c.ok("rollback")  # b is bad, a boots at the next reset
        with pytest.raises(SMPUploadError) as e:
            smp.upload(signed)
        assert e.value.args[0].err.rc == NO_FREE_SLOT  # not until the reset
        smp.err(ImageErase(slot=0), NO_FREE_SLOT)  # the rollback target
        c.close()


def test_smp_is_read_only_with_auth_on(tmp_path):
    """Issue 17.5: with auth on (the default) an unauthenticated SMP peer reads the
    image list, the MCUmgr parameters and echoes; every other request (upload,
    test, permanent, confirm, erase, reset) is refused with EACCESSDENIED and
    changes nothing, so it can never hold the session against the operator."""
    img1 = app_image(tmp_path, "v1", APP % "v1", "1.0.0+0")
    img2 = app_image(tmp_path, "v2", APP % "v2", "2.0.0+0")
    h1, h2 = mcuboot_hash(tmp_path, img1), mcuboot_hash(tmp_path, img2)
    sim, smp, port = smp_sim(tmp_path)
    with sim:
        sim.wait_for_line("(read-only: auth is on)", timeout=30)
        c = DevConn(sim.tcp_port, sim.key)
        c.push(img1, "1.0.0+0")  # pending: a trial at the next reset
        c = reset_and_wait(sim, c, sim.key)
        assert (c.ok("status")["trial"], c.ok("status")["running"]) == (True, "a")
        # what it may do: read
        assert smp.ok(EchoWrite(d="hi")).r == "hi"
        assert smp.ok(MCUMgrParametersRead()).buf_size >= 1472
        s = smp.images()[0]
        assert (s.hash, s.version, s.active, s.confirmed) == (h1, "1.0.0", True, False)

        def denied(r):
            # {"rc": 11}, as Zephyr answers a MGMT_ERR (smpclient reads it as an ErrorV1,
            # or as a response carrying rc where all of its fields are optional: upload)
            rsp = smp.req(r)
            assert rsp.rc == EACCESSDENIED, rsp
        # what it may not: hold the session (a first chunk), confirm the trial, reset,
        # erase, test or make permanent
        denied(ImageUploadWrite(off=0, data=img2[:512], image=0, len=len(img2),
                                sha=hashlib.sha256(img2).digest()))
        denied(ImageStatesWrite(confirm=True))
        denied(ImageStatesWrite(hash=h1, confirm=True))
        denied(ResetWrite())
        denied(ImageErase(slot=1))
        st = c.ok("status")
        assert st["session"] is None and (st["trial"], st["active"]) == (True, None), st
        # the operator is never busy: it confirms and pushes the next image at once
        c.ok("confirm")
        denied(ImageUploadWrite(off=0, data=img2[:512], image=0, len=len(img2),
                                sha=hashlib.sha256(img2).digest()))  # (auth off: it would hold the session)
        assert c.push(img2, "2.0.0+0")["state"] == "pending"
        denied(ImageStatesWrite(hash=h2, confirm=True))  # no permanent over the operator's pending image
        denied(ImageErase(slot=1))
        st = c.ok("status")
        assert (st["pending"], st["slots"]["b"]["state"]) == ("b", "pending"), st
        # v1 (original protocol) requests get the same code as {"rc"}
        _, m = _raw(port, [0x02, 0, 0, 0, 12, 5], cbor2.dumps({}))
        assert m == {"rc": EACCESSDENIED}
        c.close()


def test_smp_permanent_image_raises_the_floor(tmp_path):
    """Issue 17.2: an image made permanent over SMP (no trial) raises the
    anti-rollback floor once it has started at boot, so a lower security counter
    is refused afterwards, natively as over SMP (the confirm path: test_slots.py)."""
    from mpota import keys
    from mpota.images import build_app_image
    mine = tmp_path / "mine.pem"
    keys.keygen(mine)
    app_image(tmp_path, "s", APP % "s", "1.0.0+0")
    high = build_app_image(tmp_path / "s", version="1.0.0+0", key=str(mine), security_counter=5)
    low = build_app_image(tmp_path / "s", version="2.0.0+0", key=str(mine), security_counter=2)
    sim, smp, _ = smp_sim(tmp_path, ["--no-auth", "--trust", str(mine)])
    with sim:
        smp.upload(high)
        smp.ok(ImageStatesWrite(hash=mcuboot_hash(tmp_path, high), confirm=True))  # permanent
        reset(sim, smp, "app: s up")  # it started: boot raised the floor (no confirm needed)
        c = DevConn(sim.tcp_port)
        sha = hashlib.sha256(low).hexdigest()
        b = c.ok("begin", size=len(low), sha256=sha, version="2.0.0+0")
        c.upload(low, b["offset"])
        r = c.err("commit", "version_refused")
        assert "below this device's floor 5" in r["error"]["message"], r
        st = c.ok("status")
        assert st["pending"] is None and st["slots"]["b"]["state"] == "complete", st
        c.close()
        with pytest.raises(SMPUploadError) as e:
            smp.upload(low)
        assert e.value.args[0].err.rc == NOT_NEWER


def test_smp_answers_cannot_amplify_a_flood(tmp_path):
    """With auth on, a 9-byte image state-read is answered with up to ~260 bytes to any
    source (red-team run: 29-fold, unlimited): the bytes by which SMP replies exceed
    their requests draw on mpota_pace's token bucket (8 KB/s, 4 KB at most)."""
    from simproc import udp_flood
    img = app_image(tmp_path, "v1", APP % "v1", "1.0.0+0")
    sim, smp, port = smp_sim(tmp_path)
    with sim:
        sim.wait_for_line("(read-only: auth is on)", timeout=30)
        c = DevConn(sim.tcp_port, sim.key)
        c.push(img, "1.0.0+0")  # a slot with an image: a longer answer
        c.close()
        req = bytes([0, 0, 0, 1, 0, 1, 0, 0]) + b"\xa0"  # image state-read, empty map
        one, got, took, bound = udp_flood(port, req, 400)
    assert len(one) > 8 * len(req), len(one)  # the amplification being limited
    excess = sum(len(g) for g in got) - len(got) * len(req)
    print("\n%d state-reads answered of 400 in %.1f s: %d bytes over the requests" % (len(got), took, excess))
    assert got and excess <= bound
