"""A slot is one file per 4 KiB sector (device/mpota_slotio.py). A board
updated from agent 0.4 holds its slots as one file each (a.img): the app in
it still boots, is read, serves as the source of a reusing update, and the
file is replaced by sector files at that slot's next upload."""
import asyncio
import hashlib

from devconn import DevConn, app_image, reset_and_wait
from simproc import Sim
from mpota.push import push_image

MAIN = "import mpota\ndef main():\n    mpota.confirm()\n    print('app: %s up')\n"


def flash_fs(state):
    from littlefs import LittleFS

    fs = LittleFS(block_size=4096, block_count=212, prog_size=256, mount=False)
    fs.context.buffer = bytearray((state / "flash.bin").read_bytes())
    fs.mount()
    return fs


def save(fs, state):
    fs.unmount()
    (state / "flash.bin").write_bytes(bytes(fs.context.buffer))


def to_one_file(state, slot):
    """Rewrite slot `slot`'s sector files as the one file agent 0.4 kept."""
    fs = flash_fs(state)
    names = sorted((n for n in fs.listdir("/mpota-slots") if n.startswith(slot + ".") and n[2:].isdigit()),
                   key=lambda n: int(n[2:]))
    data = b""
    for n in names:
        with fs.open("/mpota-slots/" + n, "rb") as f:
            data += f.read()
        fs.remove("/mpota-slots/" + n)
    with fs.open("/mpota-slots/%s.img" % slot, "wb") as f:
        f.write(data)
    save(fs, state)
    return data


def slot_files(state, slot):
    fs = flash_fs(state)
    try:
        return sorted(n for n in fs.listdir("/mpota-slots") if n.startswith(slot + "."))
    finally:
        fs.unmount()


def test_a_slot_of_one_file_boots_feeds_a_reusing_update_and_is_replaced(tmp_path):
    v1 = app_image(tmp_path, "v1", MAIN % "v1", "1.0.0", pad=20000)
    v2 = app_image(tmp_path, "v2", MAIN % "v2", "1.1.0", pad=20000)
    v3 = app_image(tmp_path, "v3", MAIN % "v3", "1.2.0", pad=20000)
    state = tmp_path / "dev"
    with Sim(state=state) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        c.push(v1, "1.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        run = c.ok("status")["running"]
        c.close()
    assert len(slot_files(state, run)) == -(-len(v1) // 4096)  # a file per sector
    assert to_one_file(state, run) == v1
    with Sim(state=state) as sim:
        sim.wait_for_line("app: v1 up", 30)
        c = DevConn(sim.tcp_port, sim.key)
        st = c.ok("status")
        s = st["slots"][run]
        assert (st["running"], s["state"], s["size"]) == (run, "confirmed", len(v1)), st
        h = c.ok("sectors", slot=run, count=64)
        assert h["size"] == len(v1) and len(h["hashes"]) == 16 * -(-len(v1) // 4096)
        assert bytes.fromhex(h["hashes"][:16]) == hashlib.sha256(v1[:4096]).digest()[:8]
        # v2 goes to the other slot, copying the sectors the one-file slot shares with it
        events = {}
        asyncio.run(push_image("127.0.0.1", sim.tcp_port, v2, key=sim.key, reuse=True,
                               on_event=lambda name, **f: events.setdefault(name, f)))
        assert events["held"]["slot"] == run and events["held"]["sectors"] > 0, events
        c = reset_and_wait(sim, c, sim.key)
        st = c.ok("status")
        assert st["running"] != run and st["slots"][st["running"]]["sha256"] == hashlib.sha256(v2).hexdigest()
        # v3 goes to the one-file slot: its file makes way for sector files
        c.push(v3, "1.2.0+0")
        c = reset_and_wait(sim, c, sim.key)
        st = c.ok("status")
        assert st["running"] == run and st["slots"][run]["sha256"] == hashlib.sha256(v3).hexdigest(), st
        sim.wait_for_line("app: v3 up", 30)
        c.close()
    files = slot_files(state, run)
    assert run + ".img" not in files and len(files) == -(-len(v3) // 4096), files
