"""Uploads that send only what changed (docs/protocol.md, `sectors` and
begin "held"): the host compares the 4 KiB sectors the target slot holds with
the new image's and sends only the others; the device copies the held ones
from the slot's old bytes. The slot must end byte-identical to a full push, a
sector the device corrupted must be sent again, and a power cut at any flash
operation of such an update must leave a bootable board whose update resumes."""
import asyncio
import hashlib
import os
import shutil
import time

import pytest

from simproc import Sim, cut_during
from mpota import images as appimage
from mpota.client import Client
from mpota.errors import MpotaError
from mpota.push import push_image

SECTOR = 4096
# The power-cut test cuts every CUT_STRIDE-th flash operation of the update and
# every one of the commit's last 12 (MPOTA_CUT_STRIDE=1: every operation; it
# takes ~70 s, the default ~20 s)
CUT_STRIDE = int(os.environ.get("MPOTA_CUT_STRIDE", "4"))


def make_app(root, n=4, size=9000):
    """An app folder: main.py and `n` modules of incompressible data."""
    root.mkdir(parents=True)
    (root / "main.py").write_text("def main():\n    print('app: up')\n")
    for i in range(n):
        (root / ("mod%d.py" % i)).write_text("DATA = %r\n" % os.urandom(size // 2).hex())
    return root


def two_images(tmp_path, **kw):
    """(v1, v2): v2 is v1 with one module edited (same length)."""
    app = make_app(tmp_path / "app", **kw)
    v1 = appimage.build_app_image(app, version="1.0.0")
    m = app / "mod1.py"
    m.write_text(m.read_text().replace("DATA", "DATB"))
    return v1, appimage.build_app_image(app, version="1.0.1")


def same_sectors(a, b):
    """The 4 KiB sectors that images a and b have in common (same place, same bytes)."""
    return [k for k in range(min(len(a), len(b)) // SECTOR)
            if a[k * SECTOR:(k + 1) * SECTOR] == b[k * SECTOR:(k + 1) * SECTOR]]


async def _status(port, key):
    async with Client("127.0.0.1", port, key=key) as c:
        return await c.status()


async def _slot_bytes(port, key, slot, n):
    async with Client("127.0.0.1", port, key=key) as c:
        return await c.read(slot, 0, n)


def push(sim, image, **kw):
    events = []
    kw.setdefault("reuse", True)  # (auto would find loopback too fast for it to pay: test_reuse_is_auto...)
    res = asyncio.run(push_image("127.0.0.1", sim.tcp_port, image, key=sim.key,
                                 on_event=lambda name, **f: events.append((name, f)), **kw))
    return res, dict(events)


def test_the_layout_keeps_unchanged_files_on_their_sectors(tmp_path):
    v1, v2 = two_images(tmp_path)
    assert len(v1) == len(v2)
    # the header sector, the littlefs metadata and the edited module's blocks change; the rest stays
    assert len(same_sectors(v1, v2)) >= len(v1) // SECTOR - 8
    # a module that grows by a block moves neither the others nor the image's size
    m = tmp_path / "app" / "mod1.py"
    m.write_text(m.read_text() + "#" * 4000 + "\n")
    v3 = appimage.build_app_image(tmp_path / "app", version="1.0.2")
    assert len(v3) == len(v2)
    assert len(same_sectors(v2, v3)) >= len(v2) // SECTOR - 8


def test_reuse_push_leaves_the_slot_as_a_full_push_would(tmp_path):
    v1, v2 = two_images(tmp_path)
    held = same_sectors(v1, v2)
    with Sim(state=tmp_path / "dev") as sim:
        r1, _ = push(sim, v1)
        assert r1.bytes_sent == len(v1)  # an empty slot holds nothing
        r2, ev = push(sim, v2)
        assert ev["held"] == {"sectors": len(held), "of": -(-len(v2) // SECTOR), "slot": "a", "target": "a"}
        assert r2.bytes_sent == len(v2) - sum(min(SECTOR, len(v2) - k * SECTOR) for k in held)
        assert r2.bytes_sent < len(v2) // 2
        st = asyncio.run(_status(sim.tcp_port, sim.key))
        a = st["slots"]["a"]
        assert (a["state"], a["size"], a["sha256"]) == ("pending", len(v2), hashlib.sha256(v2).hexdigest())
        assert asyncio.run(_slot_bytes(sim.tcp_port, sim.key, "a", len(v2))) == v2
        # the same image again with reuse off: a full push writes the very same bytes
        r3, _ = push(sim, v1, reuse=False)
        assert r3.bytes_sent == len(v1)
        assert asyncio.run(_slot_bytes(sim.tcp_port, sim.key, "a", len(v1))) == v1


def corrupt_slot_file(state, name, offset):
    from littlefs import LittleFS

    fs = LittleFS(block_size=4096, block_count=212, prog_size=256, mount=False)
    fs.context.buffer = bytearray((state / "flash.bin").read_bytes())
    fs.mount()
    with fs.open(name, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))
    fs.unmount()
    (state / "flash.bin").write_bytes(bytes(fs.context.buffer))


def test_a_corrupted_unchanged_sector_is_sent_again(tmp_path):
    v1, v2 = two_images(tmp_path)
    held = same_sectors(v1, v2)
    bad = held[len(held) // 2]
    state = tmp_path / "dev"
    with Sim(state=state) as sim:
        push(sim, v1, commit=False)  # slot a holds v1's bytes, not yet committed
        for _ in range(50):  # the device closes (syncs) the slot file when it sees the connection go
            if asyncio.run(_status(sim.tcp_port, sim.key))["session"] is None:
                break
            time.sleep(0.1)
    corrupt_slot_file(state, "/mpota-slots/a.%d" % bad, 100)  # the sector's own file (device/mpota_slotio.py)
    with Sim(state=state) as sim:
        r, ev = push(sim, v2)
        assert ev["held"]["sectors"] == len(held) - 1  # the corrupted one is not held
        assert r.bytes_sent == len(v2) - SECTOR * (len(held) - 1)
        assert asyncio.run(_slot_bytes(sim.tcp_port, sim.key, "a", len(v2))) == v2
        assert asyncio.run(_status(sim.tcp_port, sim.key))["slots"]["a"]["state"] == "pending"


def full_push(sim, data, version, key=None):
    """mpota push: upload, commit, reset, wait for the boot, confirm."""
    from mpota.images import Image
    from mpota.push import push as push_flow
    from mpota.targets import Target

    t = Target("sim", "127.0.0.1", sim.tcp_port, key=key)
    img = Image(data=data, version=version, source="test")
    return asyncio.run(push_flow(t, img, wait=60))


def test_hashing_the_running_slot_leaves_max_image_alone(tmp_path):
    """The sectors op reads the running slot, which the app's mount holds
    open: it shares that handle (upload.open_slot), since littlefs counts an
    open file's blocks twice once a second handle of it is closed (an app of
    ~170 KB: counted twice, the free space falls below a slot's size)."""
    v1, v2 = two_images(tmp_path, n=10, size=9000)
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:
        full_push(sim, v1, "1.0.0")
        before = asyncio.run(_status(sim.tcp_port, None))

        async def sectors():
            async with Client("127.0.0.1", sim.tcp_port) as c:
                return await c.sectors(64)

        slot, size, hashes = asyncio.run(sectors())
        assert (slot, size, len(hashes)) == (before["running"], len(v1), 8 * -(-len(v1) // SECTOR))
        after = asyncio.run(_status(sim.tcp_port, None))
        assert after["max_image"] == before["max_image"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["keep", "copy"])
def test_power_cut_at_every_flash_operation_of_a_reuse_update(tmp_path, kind):
    """v1 runs confirmed in slot b; slot a, its rollback copy, holds v0. The
    update to v2 (one module changed from v1) keeps the sectors slot a holds
    already ("keep": v0 is v1's files at another version, so only the header
    and the module are rewritten) or copies them from the running slot b
    ("copy": v0 is another app). It is cut at flash operations from its first
    to the commit's last (CUT_STRIDE). After each cut the board runs v1, and a
    second push completes the update to a slot identical to v2."""
    v1, v2 = two_images(tmp_path, n=2, size=5000)
    if kind == "keep":
        v0 = appimage.build_app_image(tmp_path / "app", version="0.9.0")
    else:
        v0 = appimage.build_app_image(make_app(tmp_path / "other", n=2, size=5000), version="0.9.0")
    sha1, sha2 = hashlib.sha256(v1).hexdigest(), hashlib.sha256(v2).hexdigest()
    base = tmp_path / "base"
    with Sim(state=base, flags=["--no-auth"]) as sim:
        full_push(sim, v0, "0.9.0")
        full_push(sim, v1, "1.0.0")
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    with Sim(state=probe, flags=["--no-auth"]) as sim:
        st = asyncio.run(_status(sim.tcp_port, None))
        assert (st["running"], st["slots"]["b"]["state"]) == ("b", "confirmed"), st
        start = st["sim_flash"]["ops"]
        r, ev = push(sim, v2)
        # kept in slot a, or copied from the running slot b (v0 or v1: one module and the header differ)
        assert ev["held"]["slot"] == ("a" if kind == "keep" else "b"), ev
        assert ev["held"]["sectors"] >= ev["held"]["of"] - 6, ev
        end = asyncio.run(_status(sim.tcp_port, None))["sim_flash"]["ops"]
    assert end - start > 20
    resent = news = 0
    points = sorted(set(range(start, end, CUT_STRIDE)) | set(range(end - 12, end)))
    for n in points:
        state = tmp_path / ("cut%d" % n)
        with cut_during(base, state, n, lambda sim: push(sim, v2, retries=0, timeout=10),
                        (MpotaError, OSError)) as sim:
            st = asyncio.run(_status(sim.tcp_port, None))
            run = st["slots"][st["running"]]
            assert st["app"]["state"] in ("running", "stopped"), (n, st)
            if st["running"] == "a":
                # the cut came after the commit point (the record said pending):
                # the restart booted v2 on trial, as a reset would
                assert (run["sha256"], run["state"]) == (sha2, "trial"), (n, st)
                news += 1
            else:
                # bootable: v1 runs from its confirmed slot, whatever the cut hit
                assert (st["running"], run["sha256"], run["state"]) == ("b", sha1, "confirmed"), (n, st)
                # and the update resumes to the end
                r, _ = push(sim, v2)
                resent += r.bytes_sent
                s = asyncio.run(_status(sim.tcp_port, None))["slots"]["a"]
                assert (s["state"], s["sha256"]) == ("pending", sha2), (n, s)
            assert asyncio.run(_slot_bytes(sim.tcp_port, None, "a", len(v2))) == v2
        shutil.rmtree(state)
    cuts = len(points)
    # (a cut at the record's commit, the update's last flash operation when
    # sectors are kept, leaves the old record: then no cut lands after it)
    assert news < cuts and (news > 0 or kind == "keep"), (news, cuts, points, start, end)
    print("reuse power cuts: %d of %d ops cut, %d after the commit point; the others resumed sending %d bytes "
          "on average (image %d)" % (cuts, end - start, news, resent // (cuts - news), len(v2)))


def test_reuse_is_automatic_where_the_link_is_the_limit(tmp_path):
    """reuse=None (the CLI's --reuse auto): the sectors the target slot holds
    are always kept (neither sent nor written); a ping's round trip decides
    whether sectors are copied from the running slot, which saves link time,
    not flash time. Loopback is far under REUSE_RTT; through a 160 ms delay
    line the window caps the push, and the running slot's sectors are used."""
    from linkproxy import LinkProxy
    from mpota.push import REUSE_RTT, reuse_pays

    assert reuse_pays(0.16) and not reuse_pays(0.1) and 0.1 < REUSE_RTT < 0.13
    v1, v2 = two_images(tmp_path)
    v3 = appimage.build_app_image(tmp_path / "app", version="1.0.2")  # v2's files
    m = tmp_path / "app" / "mod1.py"
    m.write_text(m.read_text().replace("DATB", "DATA"))
    v4 = appimage.build_app_image(tmp_path / "app", version="1.0.3")  # v1's files

    async def via(port, key, image, delay):
        px = await LinkProxy("127.0.0.1", port, delay=delay).start() if delay else None
        events = []
        try:
            r = await push_image("127.0.0.1", px.port if px else port, image, key=key, reuse=None,
                                 on_event=lambda name, **f: events.append((name, f)))
        finally:
            if px is not None:
                await px.stop()
        return r, dict(events)

    with Sim(state=tmp_path / "dev") as sim:
        full_push(sim, v1, "1.0.0", sim.key)  # runs, confirmed; the other slot is empty
        run = asyncio.run(_status(sim.tcp_port, sim.key))["running"]
        target = "a" if run == "b" else "b"
        r, ev = asyncio.run(via(sim.tcp_port, sim.key, v2, 0))
        assert ev["reuse"] == {"on": True, "copy": False} and "held" not in ev and r.bytes_sent == len(v2)
        assert ev["begin"]["deflate"] is False
        r, ev = asyncio.run(via(sim.tcp_port, sim.key, v3, 0))  # the target holds v2: all but the header kept
        assert ev["held"]["slot"] == target and ev["held"]["sectors"] >= ev["held"]["of"] - 2, ev
        assert r.bytes_sent <= 2 * SECTOR
        r, ev = asyncio.run(via(sim.tcp_port, sim.key, v4, 0.08))  # the running slot holds more of v4
        assert ev["reuse"] == {"on": True, "copy": True} and ev["held"]["slot"] == run, ev
        assert ev["begin"]["deflate"] is True  # (and the image, hex text, deflates: so DATA goes deflated)
        assert r.bytes_sent < len(v4) // 2
        assert asyncio.run(_slot_bytes(sim.tcp_port, sim.key, target, len(v4))) == v4


def test_an_unrelated_image_rewrites_the_target_in_place(tmp_path):
    """begin "held" with no sector held and "held_from" the target (what the
    host sends when the target holds another app, push._reuse_plan): its
    sector files are rewritten in place (littlefs: one commit each) rather
    than deleted and created again (three); the slot ends the same."""
    from devconn import DevConn

    v1, _ = two_images(tmp_path)
    other = appimage.build_app_image(make_app(tmp_path / "other", n=5), version="2.0.0")
    base = tmp_path / "base"
    with Sim(state=base, flags=["--no-auth"]) as sim:
        push(sim, v1, commit=False)  # the target slot a holds v1's bytes
    ops = {}
    for kind, begin in (("plain", {}), ("in place", {"held": "00" * -(-len(other) // 32768), "held_from": "a"})):
        state = tmp_path / kind.replace(" ", "-")
        shutil.copytree(base, state)
        with Sim(state=state, flags=["--no-auth"]) as sim:
            before = asyncio.run(_status(sim.tcp_port, None))["sim_flash"]
            c = DevConn(sim.tcp_port)
            assert c.push(other, "2.0.0+0", **begin)["slot"] == "a"
            c.close()
            after = asyncio.run(_status(sim.tcp_port, None))["sim_flash"]
            ops[kind] = {k: after[k] - before[k] for k in ("erases", "programs")}
            assert asyncio.run(_slot_bytes(sim.tcp_port, None, "a", len(other))) == other
    print("sector files rewritten in place vs deleted and created:", ops)
    assert ops["in place"]["erases"] < ops["plain"]["erases"], ops
    assert ops["in place"]["programs"] < ops["plain"]["programs"], ops
