"""Deflate on the wire (docs/protocol.md, begin "deflate"): each DATA frame
carries a raw deflate stream of at most one 4 KiB sector, which the device
inflates (mpota_upload.Session.inflate) before the usual checks. The slot
must end byte-identical, an upload must resume from the device's watermark,
an incompressible piece goes in smaller frames, and a frame that does not
inflate is refused with nothing written."""
import asyncio
import hashlib
import os

from devconn import DevConn
from simproc import Sim
from mpota import client, push
from mpota import images as appimage
from mpota.client import Client, squeeze
from mpota.codec import mpota_hostframes as hostframes
from mpota.codec import mpota_lineproto as lineproto
from mpota.codec import mpota_proto as proto
from mpota.push import compresses, push_image

SECTOR = 4096


def source_app(root, n=6):
    """An app folder of text that compresses as source does."""
    root.mkdir(parents=True)
    (root / "main.py").write_text("def main():\n    print('app: up')\n")
    for i in range(n):
        body = ("def f%d_%d(x):\n    return x * %d + %r\n" % (i, k, k, os.urandom(4).hex()) for k in range(300))
        (root / ("mod%d.py" % i)).write_text("".join(body))
    return root


async def _slot(port, slot, n):
    async with Client("127.0.0.1", port) as c:
        return await c.read(slot, 0, n)


def test_a_deflated_push_writes_the_same_slot_in_fewer_bytes(tmp_path, monkeypatch):
    img = appimage.build_app_image(source_app(tmp_path / "app"), version="1.0.0")
    assert compresses(img)
    # deflate chosen by itself (as where the link is the limit): each sector is
    # deflated once, to decide (push.compresses) and to send (Client.upload)
    monkeypatch.setattr(push, "reuse_pays", lambda rtt: True)
    calls = []
    squeeze_once = client.squeeze
    monkeypatch.setattr(client, "squeeze", lambda b: calls.append(len(b)) or squeeze_once(b))
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:
        events = {}
        r = asyncio.run(push_image("127.0.0.1", sim.tcp_port, img, reuse=False, commit=True,
                                   on_event=lambda name, **f: events.setdefault(name, f)))
        assert events["begin"]["deflate"] is True
        assert r.bytes_sent < len(img) // 2, (r.bytes_sent, len(img))
        assert asyncio.run(_slot(sim.tcp_port, r.slot, len(img))) == img
        assert r.commit["sha256"] == hashlib.sha256(img).hexdigest()
    assert len(calls) == -(-len(img) // SECTOR)


def test_incompressible_bytes_go_in_smaller_frames(tmp_path):
    app = tmp_path / "noise"
    app.mkdir()
    (app / "main.py").write_text("def main():\n    pass\n")
    (app / "blob.bin").write_bytes(os.urandom(30000))
    img = appimage.build_app_image(app, version="1.0.0")
    assert len(squeeze(os.urandom(SECTOR))) > SECTOR  # a whole sector does not fit a 4096-byte frame
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:
        r = asyncio.run(push_image("127.0.0.1", sim.tcp_port, img, deflate=True, reuse=False, commit=True))
        assert asyncio.run(_slot(sim.tcp_port, r.slot, len(img))) == img


def test_a_deflated_upload_resumes_and_a_bad_stream_is_refused(tmp_path):
    img = appimage.build_app_image(source_app(tmp_path / "app"), version="1.0.0")
    sha = hashlib.sha256(img).hexdigest()
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:
        c = DevConn(sim.tcp_port)
        b = c.ok("begin", size=len(img), sha256=sha, deflate=True)
        assert b["offset"] == 0
        # not a deflate stream: refused, with the watermark, and nothing written
        c.send(hostframes.encode_data(0, b"\xff" * 64))
        f = c.frame()
        assert f[1] == proto.OP_NERROR, f
        _, code, _, value, _ = hostframes.parse_nerror(f)
        assert (code, value) == (lineproto.E_BAD_FRAME, 0)
        # a stream that inflates past a sector: refused too
        c.send(hostframes.encode_data(0, squeeze(img[:SECTOR] + b"x")))
        assert hostframes.parse_nerror(c.frame())[1:4:2] == (lineproto.E_BAD_FRAME, 0)
        # three sectors, then the connection drops
        for k in range(3):
            c.send(hostframes.encode_data(k * SECTOR, squeeze(img[k * SECTOR:(k + 1) * SECTOR])))
            assert hostframes.parse_ack(c.frame()) == (k + 1) * SECTOR
        c.close()
        events = {}
        r = asyncio.run(push_image("127.0.0.1", sim.tcp_port, img, reuse=False, commit=True,
                                   on_event=lambda name, **f: events.setdefault(name, f)))
        assert events["begin"]["offset"] == 3 * SECTOR and events["begin"]["resumed"], events
        assert asyncio.run(_slot(sim.tcp_port, r.slot, len(img))) == img
