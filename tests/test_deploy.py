"""Only the files matched by device/*.py (symlinks followed) are needed: copy
exactly those into a fresh folder, boot the simulator from it (the device
then sees nothing but its flash), update an app and run it."""

from simproc import Sim
from devconn import DevConn, app_image, reset_and_wait
from conftest import REPO, device_copy

APP = """NAME = "deployed"
import mpota
def main():
    mpota.confirm()
    print("app: deployed app confirmed")
"""


def test_device_files_alone_make_a_working_device(tmp_path):
    src = sorted((REPO / "device").glob("*.py"))
    dest = device_copy(tmp_path / "fresh")
    assert not any(p.is_symlink() for p in dest.iterdir())
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted(p.name for p in src)
    for must in ("main.py", "mpota_framing.py", "mpota_proto.py", "mpota_checksums.py", "mpota_hmac_sha256.py",
                 "mpota_slots.py", "mpota_agent.py", "mpota.py", "mpota_hal.py", "mpota_appfs.py", "mpota_mcuboot.py"):
        assert must in names
    img = app_image(tmp_path, "app", APP, "1.0.0+0")
    with Sim(state=tmp_path / "dev", device_dir=dest) as sim:
        assert "deployed %d files" % len(names) in sim.output
        key = sim.key
        c = DevConn(sim.tcp_port, key)
        assert c.push(img, "1.0.0+0")["state"] == "pending"
        mark = sim.mark()
        c = reset_and_wait(sim, c, key)
        sim.wait_for_line("app: deployed app confirmed", since=mark)
        st = c.ok("status")
        assert st["running"] == "a" and st["active"] == "a" and st["app"]["state"] == "stopped"
        c.close()
