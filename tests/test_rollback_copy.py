"""A re-push never costs the rollback copy (issue 17.6, device side): the device itself
refuses a `begin` of the image that already runs unless `force`, whichever client
sends it; and during a trial whose app crashed, `begin` says to roll back, never to
confirm (17.8)."""
import hashlib

import pytest

from devconn import DevConn, app_image, reset_and_wait
from simproc import Sim

V1 = "import mpota\ndef main():\n    mpota.confirm()\n"
CRASH = "def main():\n    raise RuntimeError('v2 is broken')\n"


@pytest.mark.slow
def test_the_running_image_is_refused_at_begin_unless_forced(tmp_path):
    v1 = app_image(tmp_path, "v1", V1, "1.0.0")
    sha = hashlib.sha256(v1).hexdigest()
    with Sim(state=tmp_path / "dev") as sim:
        c = DevConn(sim.tcp_port, sim.key)
        c.push(v1, "1.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        st = c.ok("status")
        assert st["slots"][st["running"]]["sha256"] == sha, st
        e = c.err("begin", "incorrect_state", size=len(v1), sha256=sha, version="1.0.0+0")["error"]["message"]
        assert "already runs" in e and "force" in e, e
        assert c.ok("status")["session"] is None
        b = c.ok("begin", size=len(v1), sha256=sha, version="1.0.0+0", force=True)
        assert b["slot"] != st["running"]
        c.ok("abort")
        c.close()


@pytest.mark.slow
def test_a_crashed_trial_says_roll_back(tmp_path):
    v1, v2 = app_image(tmp_path, "v1", V1, "1.0.0"), app_image(tmp_path, "v2", CRASH, "2.0.0")
    v3 = app_image(tmp_path, "v3", V1, "3.0.0")
    with Sim(state=tmp_path / "dev") as sim:
        c = DevConn(sim.tcp_port, sim.key)
        c.push(v1, "1.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        c.push(v2, "2.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        st = c.ok("status")
        assert st["trial"] and st["app"]["state"] == "crashed", st
        e = c.err("begin", "incorrect_state", size=len(v3), sha256=hashlib.sha256(v3).hexdigest(),
                  version="3.0.0+0")["error"]["message"]
        assert "app crashed: roll back" in e and "confirm" not in e, e
        c.close()
