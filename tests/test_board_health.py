"""What status tells about a board's health, for `mpota fleet` (issue 19 item 4):
resets since the last power-on (WATCHDOG SCRATCH1 on the board, the launcher's
count in the simulator), the anti-rollback floor, and the link's RSSI on Wi-Fi."""
import json

import pytest

from conftest import INTERPRETERS, interp_label, run_device_script
from devconn import DevConn, reset_and_wait
from simproc import Sim

# The rp2 side of halboot against a fake umachine: SCRATCH1 counts the resets
# since power-on, which clears it.
RP2_RESETS = r"""
class FakeMem:
    def __init__(self):
        self.m = {}
    def __getitem__(self, a):
        return self.m.get(a, 0)
    def __setitem__(self, a, v):
        self.m[a] = v & 0xFFFFFFFF
class umachine:
    PWRON_RESET = 1
    WDT_RESET = 3
    mem32 = FakeMem()
    cause = 1
    def reset_cause():
        return umachine.cause
sys.modules["umachine"] = umachine
import mpota_hal as hal
import mpota_halboot as hb
out = []
umachine.mem32[hb.SCRATCH1] = 77  # whatever RAM held at power-on
for cause, mark in ((1, 0), (3, 1), (3, 0), (3, 1), (1, 0), (3, 0)):
    umachine.cause = cause
    if mark:
        umachine.mem32[hal.SCRATCH0] = hal.RESET_MARK
    out.append("%s:%d" % (hb.reset_cause(), hb.resets()))
print(" ".join(out))
"""


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_rp2_counts_resets_since_power_on(mp):
    r = run_device_script(mp, None, RP2_RESETS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["power_on:0", "reset:1", "watchdog:2", "reset:3", "power_on:0", "watchdog:1"]


RP2_RSSI = r"""
class WLAN:
    def __init__(self):
        self.up = False
        self.fail = False
    def isconnected(self):
        return self.up
    def status(self, *a):
        if self.fail:
            raise OSError(5)
        return -61 if a == ("rssi",) else 3
import mpota_hal as hal
print(hal.wlan_rssi())
w = hal._wlan = WLAN()
print(hal.wlan_rssi())
w.up = True
print(hal.wlan_rssi())
w.fail = True
print(hal.wlan_rssi())
"""


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_rp2_rssi_only_while_connected(mp):
    r = run_device_script(mp, None, RP2_RSSI)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["None", "None", "-61", "None"]


@pytest.mark.timeout(180)
def test_status_reports_resets_floor_and_rssi(tmp_path):
    cfg = tmp_path / "mpota.json"
    cfg.write_text(json.dumps({"wifi": {"ssid": "sim", "password": "x"}}))
    with Sim(state=tmp_path / "dev", flags=["--wifi", "--config", str(cfg)]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        st = c.ok("status")
        assert (st["boot_reason"], st["resets"], st["floor"]) == ("power_on", 0, 0)
        assert (st["link"], st["rssi"]) == ("up", -58)  # tools/simwifi.py RSSI
        for n in (1, 2):
            c = reset_and_wait(sim, c, sim.key)
            st = c.ok("status")
            assert (st["boot_reason"], st["resets"]) == ("reset", n)
        c.close()
        sim.power_cut()
        c = DevConn(sim.tcp_port, sim.key)
        st = c.ok("status")
        assert (st["boot_reason"], st["resets"]) == ("power_on", 0)
        c.close()
    # without a station link there is no rssi at all
    with Sim(state=tmp_path / "wired") as sim:
        c = DevConn(sim.tcp_port, sim.key)
        st = c.ok("status")
        assert "rssi" not in st and st["resets"] == 0
        c.close()
