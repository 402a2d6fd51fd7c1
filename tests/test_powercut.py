"""Power cuts during an update + commit: the simulator tears flash operation
N+1 (an erase or a page program) and kills the device, for N spread over the
whole update -- slot erases, page programs, the state commit. After each the
device must boot and report either the old image (running, confirmed) or the
new one recorded as pending -- never neither."""
import hashlib
import shutil

import pytest

from simproc import Sim, cut_during
from devconn import DevConn, app_image, reset_and_wait

V1 = "NAME = 'v1'\ndef main():\n    print('app: v1 up')\n"
V2 = "NAME = 'v2'\ndef main():\n    print('app: v2 up')\n"


@pytest.mark.slow
def test_power_cut_anywhere_during_update_and_commit(tmp_path, capsys):
    img1 = app_image(tmp_path, "v1", V1, "1.0.0+0")
    img2 = app_image(tmp_path, "v2", V2, "2.0.0+0", pad=20000)
    sha1 = hashlib.sha256(img1).hexdigest()
    sha2 = hashlib.sha256(img2).hexdigest()
    base = tmp_path / "base"
    # the old state: v1 confirmed in slot a
    with Sim(state=base, flags=["--no-auth"]) as sim:
        c = DevConn(sim.tcp_port)
        c.push(img1, "1.0.0+0")
        c = reset_and_wait(sim, c)
        c.ok("confirm")
        c.close()
    # how many flash operations the update + commit take (counted from boot)
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    with Sim(state=probe, flags=["--no-auth"]) as sim:
        c = DevConn(sim.tcp_port)
        start = c.ok("status")["sim_flash"]["ops"]
        assert c.push(img2, "2.0.0+0")["state"] == "pending"
        end = c.ok("status")["sim_flash"]["ops"]
        c.close()
    # the first boot of the new image commits pending -> trial: its flash ops
    after = tmp_path / "after"
    shutil.copytree(probe, after)
    with Sim(state=after, flags=["--no-auth"]) as sim:
        c = DevConn(sim.tcp_port)
        st = c.ok("status")
        boot_ops = st["sim_flash"]["ops"]
        assert st["running"] == "b" and st["trial_count"] == 1
        c.close()
    total = end - start
    assert total > 60, total
    # 44 points spread over the whole update, then every op of the commit tail
    cuts = sorted(set([start + total * k // 44 for k in range(44)] + list(range(end - 14, end))))
    assert len(cuts) >= 50
    counts = {"old": 0, "new": 0}
    for n in cuts:
        state = tmp_path / ("cut%d" % n)
        with cut_during(base, state, n, lambda sim: DevConn(sim.tcp_port, timeout=10).push(img2, "2.0.0+0"),
                        (OSError, EOFError, AssertionError)) as sim:
            c = DevConn(sim.tcp_port)
            st = c.ok("status")
            c.close()
        a, b = st["slots"]["a"], st["slots"]["b"]
        # slot a is never touched: it stays the confirmed fallback
        assert st["active"] == "a" and a["state"] == "confirmed" and a["sha256"] == sha1, (n, st)
        if st["running"] == "b":
            # the cut came after the commit point (the record said pending):
            # the restart booted the new image on trial, as a reset would
            assert st["trial"] and b["state"] == "trial" and b["sha256"] == sha2, (n, st)
            assert st["app"]["name"] == "v2", (n, st)
            counts["new"] += 1
            shutil.rmtree(state)
            continue
        assert st["running"] == "a", (n, st)
        assert st["app"]["name"] == "v1" and st["app"]["state"] == "stopped", (n, st)
        if st["pending"] == "b":
            assert b["state"] == "pending" and b["sha256"] == sha2 and b["version"] == "2.0.0+0", (n, st)
            counts["new"] += 1
        else:
            assert st["pending"] is None and b["state"] in ("empty", "writing"), (n, st)
            counts["old"] += 1
        shutil.rmtree(state)
    # cuts during the trial boot's state commit: the new image, on trial
    for n in range(boot_ops):
        state = tmp_path / ("boot%d" % n)
        shutil.copytree(probe, state)
        with Sim(state=state, flags=["--no-auth", "--power-cut-after", str(n)], ready=False) as sim:
            sim.wait_for_line("sim: power cut", timeout=30)
            mark = sim.mark()
            sim.wait_for_line("mpota: ready", timeout=30, since=mark)
            c = DevConn(sim.tcp_port)
            st = c.ok("status")
            c.close()
        assert st["running"] == "b" and st["trial"] is True and st["trial_count"] in (1, 2), (n, st)
        assert st["slots"]["b"]["sha256"] == sha2 and st["slots"]["a"]["state"] == "confirmed", (n, st)
        assert st["app"]["name"] == "v2", (n, st)
        counts["new"] += 1
        shutil.rmtree(state)
    with capsys.disabled():  # the counts the closing note quotes, shown in every run
        print("\npower cuts: %d points over the %d flash ops of update+commit, %d in the trial-boot "
              "commit: old %d, new %d, neither 0" % (len(cuts), total, boot_ops, counts["old"], counts["new"]))
    assert counts["old"] + counts["new"] == len(cuts) + boot_ops
    assert counts["old"] >= 40 and counts["new"] >= 2
