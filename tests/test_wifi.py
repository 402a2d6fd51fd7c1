"""Wi-Fi as an asyncio task (device/mpota_wifi.py, issue 11 item 1): the link drops
and returns in the simulator (tools/sim.py --wifi, the control file
STATE/wifi), the app keeps running meanwhile, status reports the link,
and the device is updatable once it is back. The Link's loop also runs under
MicroPython against a scripted hal: it never blocks the event loop, backs
off, and feeds the watchdog only for a bounded time while the link is down."""
import json
import socket
import time

import pytest

from conftest import INTERPRETERS, REPO, interp_label
from devconn import DevConn, app_image, reset_and_wait
from simproc import Sim

TICKER = """NAME = "ticker"
import asyncio
async def main():
    n = 0
    while True:
        n += 1
        print("app: tick %d" % n)
        await asyncio.sleep_ms(200)
"""
V2 = """NAME = "v2"
def main():
    print("app: v2 up")
"""


def _refused(port, tries=20):
    """True once a connection is refused (the agent stopped listening)."""
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return True
        time.sleep(0.25)
    return False


def _ticks_after(sim, mark):
    return [ln for ln in sim.lines[mark:] if ln.startswith("app: tick")]


def test_link_loss_keeps_the_app_running_and_the_device_updatable_after(tmp_path, mp_build):
    cfg = tmp_path / "mpota.json"
    cfg.write_text(json.dumps({"wdt": 2000, "wifi": {"ssid": "sim", "password": "x"}}))
    img1 = app_image(tmp_path, "v1", TICKER, "1.0.0+0")
    img2 = app_image(tmp_path, "v2", V2, "2.0.0+0")
    ap = tmp_path / "dev" / "wifi"
    with Sim(state=tmp_path / "dev", flags=["--wifi", "--config", str(cfg), "--micropython", mp_build]) as sim:
        sim.wait_for_line("mpota: wifi up, ip 127.0.0.1")
        c = DevConn(sim.tcp_port, sim.key)
        st = c.ok("status")
        assert (st["link"], st["ip"], st["link_drops"], st["link_error"]) == ("up", "127.0.0.1", 0, None)
        assert c.ok("hello")["max_image"] == st["max_image"] > 0
        c.push(img1, "1.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        sim.wait_for_line("app: tick 3")
        c.close()

        # the access point goes away
        mark = sim.mark()
        ap.write_text("down\n")
        sim.wait_for_line("mpota: wifi down (link lost 1 times)", since=mark)
        assert _refused(sim.tcp_port), "the agent still listens with the link down"
        sim.wait_for_line("mpota: wifi: join failed (no_ap)", since=mark)
        during = sim.mark()
        sim.wait_for_line("mpota: wifi: join failed (no_ap), retrying in 2 s", since=mark, timeout=30)
        assert len(_ticks_after(sim, during)) >= 3, "the app stalled during the outage:\n" + sim.tail(40)

        # it comes back: the agent rejoins, listens again, and takes an update
        mark = sim.mark()
        ap.write_text("up\n")
        sim.wait_for_line("mpota: ready", since=mark, timeout=60)
        c = DevConn(sim.tcp_port, sim.key)
        st = c.ok("status")
        assert (st["link"], st["ip"], st["link_drops"], st["link_error"]) == ("up", "127.0.0.1", 1, None)
        assert st["link_joins"] >= 3 and st["app"]["state"] == "running"
        assert st["boot_reason"] == "reset", "the watchdog bit during the outage"
        c.ok("confirm")
        assert c.push(img2, "2.0.0+0")["state"] == "pending"
        mark = sim.mark()
        c = reset_and_wait(sim, c, sim.key)
        sim.wait_for_line("app: v2 up", since=mark)
        c.close()
        assert "watchdog" not in sim.output and "Traceback" not in sim.output, sim.output[-3000:]


# -- the Link's loop against a scripted hal, under MicroPython -------------------

FAKE_HAL = r"""
import sys
sys.path.insert(0, "%(dev)s")
import asyncio

class FakeClock:
    # the hal's clock and watchdog: time advances only by the sleeps below
    fake_ms = 0
    feeds = 0
    def ticks_ms(self):
        return self.fake_ms
    def ticks_diff(self, a, b):
        return a - b
    def wdt_feed(self):
        self.feeds += 1
    def wlan_rssi(self):  # status() asks while the link is up
        return -60

_sleep = asyncio.sleep_ms
async def sleep_ms(ms):  # fake time: every sleep advances the clock
    hal.fake_ms += ms
    await _sleep(0)
asyncio.sleep_ms = sleep_ms
"""

SCRIPT = FAKE_HAL + r"""
import time

class Hal(FakeClock):
    # the link: up after one join, lost at tick 8, the access point absent
    # until tick 40 (each hal.wlan_state() call is a tick)
    def __init__(self):
        self.ticks = 0
        self.joined = False
    def wlan_join(self, cfg):
        self.joined = not (8 <= self.ticks < 40)
    def wlan_state(self):
        self.ticks += 1
        if not self.joined:
            return "no_ap"
        if self.ticks == 8:
            self.joined = False
            return "down"
        return "up"
    def wlan_ip(self):
        return "10.0.0.7"
    def wlan_leave(self):
        self.joined = False

hal = Hal()
sys.modules["mpota_hal"] = hal
import mpota_wifi as wifi

spins = 0
async def other():  # another task: must keep running while the link is away
    global spins
    while True:
        spins += 1
        await _sleep(0)

async def main():
    asyncio.create_task(other())
    link = wifi.start({"ssid": "x", "down_reset_s": %(bound)d})
    closed = []
    link.on_down = lambda: closed.append(1)
    await link.up.wait()
    print("UP1", link.ip, link.drops)
    while link.drops == 0:
        await _sleep(0)
    print("DOWN", link.state, len(closed), link.ip)
    feeds0 = hal.feeds
    spins0 = spins
    await link.up.wait()
    print("UP2", link.ip, link.drops, link.joins, link.error)
    print("FEEDS", hal.feeds - feeds0, "SPINS", spins - spins0, "DOWN_MS", hal.fake_ms)

asyncio.run(main())
"""


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
@pytest.mark.parametrize("bound", [0, 3])
def test_link_task_rejoins_with_backoff_and_bounds_its_watchdog_feeds(tmp_path, mp, bound):
    import subprocess

    script = tmp_path / "link.py"
    script.write_text(SCRIPT % {"dev": REPO / "device", "bound": bound})
    r = subprocess.run([mp, str(script)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    out = dict((ln.split()[0], ln.split()[1:]) for ln in r.stdout.splitlines() if ln[:1].isupper())
    assert out["UP1"] == ["10.0.0.7", "0"]
    assert out["DOWN"][0] in ("down", "connecting") and out["DOWN"][1:3] == ["1", "None"]
    ip, drops, joins, err = out["UP2"]
    assert (ip, drops, err) == ("10.0.0.7", "1", "None")
    assert int(joins) >= 4  # failed joins, with backoff between them
    feeds = int(out["FEEDS"][0])
    down_ms = int(out["FEEDS"][4])
    assert int(out["FEEDS"][2]) > 10, "the loop was blocked"
    assert down_ms > 1000 + 2000 + 4000, "no backoff between joins"
    if bound == 0:
        assert feeds > down_ms // 1000  # fed all along (down_reset_s 0: always)
    else:
        assert feeds <= 3000 // 250 + 1  # fed only for the first 3 s of the outage


# -- hal's real network.WLAN calls, against a stand-in network module ----------

RP2_SEAM = r"""
import sys
sys.path.insert(0, "%(dev)s")
calls = []
class WLAN:
    IF_STA = 0
    PM_NONE = 0x10
    PM_PERFORMANCE = 0xa11140
    def __init__(self, i):
        calls.append("WLAN")
        self.st = 0
        self.up = False
    def active(self, on):
        calls.append("active")
    def connect(self, ssid, pw):
        calls.append("connect %%s %%s" %% (ssid, pw))
        self.st = 1
    def status(self):
        return self.st
    def isconnected(self):
        return self.st == 3
    def ifconfig(self):
        return ("10.1.2.3", "255.255.255.0", "10.1.2.1", "10.1.2.1")
    def disconnect(self):
        calls.append("disconnect")
        self.st = 0
    def config(self, **kw):
        calls.append("config pm=%%x" %% kw["pm"])
        if kw["pm"] == WLAN.PM_PERFORMANCE:
            raise OSError(1)  # a radio that refuses it: power save is a hint
class network:
    STA_IF = 0
    STAT_IDLE = 0
    STAT_CONNECTING = 1
    STAT_GOT_IP = 3
    STAT_CONNECT_FAIL = -1
    STAT_NO_AP_FOUND = -2
    STAT_WRONG_PASSWORD = -3
    WLAN = WLAN
    def country(c):
        calls.append("country " + c)
    def hostname(h):
        calls.append("hostname " + h)
sys.modules["network"] = network
import mpota_hal as hal
print(hal.wlan_state(), hal.wlan_ip())
try:
    hal.wlan_join({})
except ValueError as e:
    print("ValueError", e)
cfg = {"ssid": "home", "password": "pw", "country": "GB", "hostname": "picow-1"}
hal.wlan_join(cfg)
w = hal._wlan
seen = [hal.wlan_state()]
for st in (2, 3, -1, -2, -3, 0):
    w.st = st
    seen.append(hal.wlan_state())
print(" ".join(seen))
w.st = 3
print(hal.wlan_ip())
hal.wlan_power_save(False)
hal.wlan_power_save(True)
hal.wlan_leave()
hal.wlan_join(cfg)  # a rejoin: the interface is up already
print(" | ".join(calls))
"""


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_hal_maps_the_rp2_wlan_to_link_states(tmp_path, mp):
    import subprocess

    script = tmp_path / "seam.py"
    script.write_text(RP2_SEAM % {"dev": REPO / "device"})
    r = subprocess.run([mp, str(script)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "down None"  # nothing joined yet
    assert lines[1] == "ValueError wlan: no 'ssid' in the config"
    assert lines[2] == "joining joining up fail no_ap bad_auth down"
    assert lines[3] == "10.1.2.3"
    assert lines[4] == ("country GB | hostname picow-1 | WLAN | active | connect home pw | config pm=10 | "
                        "config pm=a11140 | disconnect | connect home pw")


# -- a radio that raises (issue 17 item 14) -------------------------------------

RAISING = FAKE_HAL + r"""
class Hal(FakeClock):
    # phase "error": every radio call raises OSError(1), as rp2's
    # wlan.active(True) does when the CYW43 does not start; "ok": joins;
    # "state": joined, but polling the link raises OSError(5)
    def __init__(self):
        self.phase = "error"
        self.joined = False
    def wlan_join(self, cfg):
        if self.phase == "error":
            raise OSError(1)
        self.joined = True
    def wlan_state(self):
        if self.phase == "error" or (self.phase == "state" and self.joined):
            raise OSError(5)
        return "up" if self.joined else "down"
    def wlan_ip(self):
        return "10.0.0.9"
    def wlan_leave(self):
        self.joined = False
        if self.phase == "error":
            raise OSError(1)

hal = Hal()
sys.modules["mpota_hal"] = hal
import mpota_wifi as wifi

async def until(cond):  # bounded: a dead task never meets it
    n = 0
    while not cond() and n < 200000:
        n += 1
        await _sleep(0)

def show(tag, link):
    s = link.status()
    print(tag, s["link"], s["link_joins"], s["link_drops"], hal.feeds, hal.fake_ms, s["link_error"])

async def main():
    link = wifi.start({"ssid": "x", "down_reset_s": %(bound)d})
    await until(lambda: hal.fake_ms >= 5000)
    show("ERROR", link)
    hal.phase = "ok"
    await until(lambda: link.up.is_set())
    show("UP", link)
    hal.phase = "state"
    await until(lambda: link.drops == 1 and link.state == "down")
    show("LOST", link)
    hal.phase = "ok"
    await until(lambda: link.up.is_set())
    show("UP2", link)

asyncio.run(main())
"""


def _rows(stdout):
    rows = {}
    for ln in stdout.splitlines():
        if ln[:1].isupper():
            tag, state, joins, drops, feeds, ms, err = ln.split(" ", 6)
            rows[tag] = (state, int(joins), int(drops), int(feeds), int(ms), err)
    return rows


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
@pytest.mark.parametrize("bound", [0, 3])
def test_link_task_survives_a_radio_that_raises(tmp_path, mp, bound):
    """Every radio call raising OSError (join, state, leave): the task goes on,
    backs off (joins at 0, 1, 3 s), says why in status, and feeds the watchdog
    as documented (down_reset_s); the link comes up once the radio works, and a
    state poll that raises while up is a lost link, rejoined."""
    import subprocess

    script = tmp_path / "raising.py"
    script.write_text(RAISING % {"dev": REPO / "device", "bound": bound})
    r = subprocess.run([mp, str(script)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _rows(r.stdout)
    state, joins, drops, feeds, ms, err = rows["ERROR"]
    assert ms >= 5000, "the link task died: " + r.stdout + r.stderr
    assert state in ("down", "connecting") and err == "OSError: [Errno 1] EPERM"
    assert 3 <= joins <= 4, joins  # 1 s, then 2 s of backoff: not a busy loop
    if bound == 0:
        assert feeds >= 5000 // 250 - 4, feeds  # fed all along
    else:
        assert 0 < feeds <= 3000 // 250 + 1, feeds  # fed for the first 3 s only
    assert rows["UP"][0] == "up" and rows["UP"][5] == "None"
    assert rows["LOST"][:3:2] == ("down", 1) and rows["LOST"][5].startswith("OSError: [Errno 5]")
    assert rows["UP2"][0] == "up" and rows["UP2"][2] == 1 and rows["UP2"][5] == "None"
    assert "Traceback" not in r.stdout + r.stderr


def _radio_back(sim, ap):
    """The radio works again: the agent listens; its status."""
    mark = sim.mark()
    ap.write_text("up\n")
    sim.wait_for_line("mpota: ready", since=mark, timeout=60)
    c = DevConn(sim.tcp_port, sim.key)
    try:
        return c.ok("status")
    finally:
        c.close()


def test_sim_radio_error_is_retried_and_the_watchdog_keeps_its_policy(tmp_path, mp_build):
    """--wifi with STATE/wifi "error": the simulated radio raises OSError EPERM
    on every call. The agent keeps retrying with backoff and feeding the
    watchdog (wdt 2 s, down_reset_s 900) instead of ending its link task;
    once the radio works it listens; a radio that fails while up is a lost
    link, rejoined."""
    cfg = tmp_path / "mpota.json"
    cfg.write_text(json.dumps({"wdt": 2000, "wifi": {"ssid": "sim", "password": "x"}}))
    state = tmp_path / "dev"
    state.mkdir()
    ap = state / "wifi"
    ap.write_text("error\n")
    with Sim(state=state, flags=["--wifi", "--config", str(cfg), "--micropython", mp_build], ready=False) as sim:
        sim.wait_for_line("mpota: wifi: join failed (OSError: [Errno 1] EPERM), retrying in 1 s", timeout=60)
        sim.wait_for_line("mpota: wifi: join failed (OSError: [Errno 1] EPERM), retrying in 4 s", timeout=30)
        st = _radio_back(sim, ap)
        assert (st["link"], st["link_drops"], st["link_error"]) == ("up", 0, None)
        assert st["link_joins"] >= 4 and st["boot_reason"] == "power_on", st

        mark = sim.mark()
        ap.write_text("error\n")
        sim.wait_for_line("mpota: wifi down (link lost 1 times)", since=mark)
        sim.wait_for_line("mpota: wifi: join failed (OSError: [Errno 1] EPERM)", since=mark)
        st = _radio_back(sim, ap)
        assert (st["link"], st["link_drops"], st["link_error"]) == ("up", 1, None)
        assert "watchdog" not in sim.output and "Traceback" not in sim.output, sim.output[-3000:]
        assert sim.output.count("sim: boot #") == 1, sim.output[-3000:]
