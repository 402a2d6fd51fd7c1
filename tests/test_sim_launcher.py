"""tools/sim.py: deploy, ready line, reset / watchdog / power-cut restarts, SIGTERM.

The device here is a throwaway main.py (deployed with --device-dir, the
launcher's test-only deploy override) that follows a per-boot plan, so the
launcher is tested without the real agent.
"""
import os
import socket
import stat

import pytest
from conftest import REPO
from simproc import Sim

MAIN = r'''
import sys, os, time, socket
import mpota_hal as hal
import mpota_halboot as halboot
import simhal  # test device only: the real code never imports simhal
from plan import PLAN

ov = halboot.config_overrides()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(socket.getaddrinfo(ov["host"], ov["tcp_port"])[0][-1])
s.listen(1)
boot = simhal.boot_count()
action = PLAN[boot - 1] if boot <= len(PLAN) else "stay"
print("app: boot=%d cause=%s platform=%s auth=%s legacy=%s tcp=%d udp=%d ip=%s id=%s flash=%s files=%s"
      % (boot, halboot.reset_cause(), hal.PLATFORM, ov["auth"], ov["legacy_udp"], ov["tcp_port"],
         ov["udp_port"], ov["host"], halboot.unique_id(), halboot.flash_info()["block_count"],
         ",".join(sorted(os.listdir("/")))))
print("mpota: ready")
print("app: action=" + action)
if action == "reset":
    hal.reset()
elif action == "wdt":
    hal.wdt_start(100)
    time.sleep_ms(300)
    hal.wdt_feed()
elif action == "hang":
    hal.wdt_start(100)
    while True:  # never feeds again: only the launcher can tell
        pass
elif action == "write":
    blob = bytes(range(256)) * 32
    for i in range(40):
        with open("/f%d" % i, "wb") as f:
            f.write(blob)
    print("app: wrote everything")
elif action.startswith("exit"):
    sys.exit(int(action[4:]))
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 120000:
    time.sleep_ms(100)
'''


def make_device(folder, plan, main=MAIN):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(main)
    (folder / "plan.py").write_text("PLAN = %r\n" % (plan,))
    # a symlink, as the codec files are in device/: the deploy copies its target
    for name in ("mpota_hal.py", "mpota_halboot.py"):
        link = folder / name
        if not link.exists():
            link.symlink_to(REPO / "device" / name)
    return folder


def read_flash_file(state, name):
    from littlefs import LittleFS

    data = (state / "flash.bin").read_bytes()
    fs = LittleFS(block_size=4096, block_count=212, prog_size=256, mount=False)
    fs.context.buffer = bytearray(data)
    fs.mount()
    with fs.open(name, "rb") as f:
        return f.read()


def assert_port_free(port):
    # SO_REUSEADDR tolerates TIME_WAIT leftovers, not a live listener
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def app_line(sim, since=0):
    return sim.wait_for_line("app: boot=", 30, since)


def test_first_start_formats_deploys_and_says_ready(tmp_path):
    dev = make_device(tmp_path / "dev", ["stay"])
    with Sim(state=tmp_path / "st", device_dir=dev) as sim:
        line = app_line(sim)
        assert "boot=1 cause=power_on platform=sim auth=True legacy=False" in line
        assert "tcp=%d udp=%d ip=127.0.0.1" % (sim.tcp_port, sim.udp_port) in line
        assert "flash=212" in line
        assert "files=main.py,mpota_hal.py,mpota_halboot.py,mpota_key.bin,plan.py" in line
        assert "formatting littlefs2" in sim.output
        ready = [ln for ln in sim.lines if "ready" in ln and ln.startswith("sim:")]
        assert ready == ["sim: ready tcp=127.0.0.1:%d udp=127.0.0.1:%d" % (sim.tcp_port, sim.udp_port)]
        key = sim.key
        assert key is not None and len(key) == 32
        assert stat.S_IMODE(os.stat(sim.state / "device.key").st_mode) == 0o600
        # the flash holds /mpota_key.bin: the owner's alone (issue 8, smaller leaks)
        assert stat.S_IMODE(os.stat(sim.state / "flash.bin").st_mode) == 0o600
        assert key.hex() not in sim.output
        # the device listens where the launcher said
        socket.create_connection(("127.0.0.1", sim.tcp_port), timeout=5).close()
        assert sim.stop() == 0
    assert "sim: stopped" in sim.output
    # the device went down with the launcher: its port is free again
    assert_port_free(sim.tcp_port)
    assert read_flash_file(sim.state, "mpota_key.bin") == key
    assert read_flash_file(sim.state, "mpota_hal.py") == (REPO / "device" / "mpota_hal.py").read_bytes()


def test_reset_restarts_with_flash_intact(tmp_path):
    dev = make_device(tmp_path / "dev", ["reset", "reset", "stay"])
    with Sim(state=tmp_path / "st", device_dir=dev, flags=["--no-auth", "--legacy-udp"]) as sim:
        assert "boot=1 cause=power_on" in app_line(sim)
        assert "auth=False legacy=True" in app_line(sim)
        m = sim.mark()
        sim.wait_for_line("boot=3 cause=reset", 30, since=m)
        assert "sim: boot #2 (reset)" in sim.output
        assert sim.output.count("formatting") == 1  # the flash was kept
        assert sim.key is None and not (sim.state / "device.key").exists()
        assert "mpota_key.bin" not in app_line(sim)
        assert sim.output.count("sim: ready") == 1
        assert sim.stop() == 0


def test_watchdog_late_feed_restarts_with_cause_watchdog(tmp_path):
    dev = make_device(tmp_path / "dev", ["wdt", "stay"])
    with Sim(state=tmp_path / "st", device_dir=dev, flags=["--no-auth"]) as sim:
        sim.wait_for_line("boot=2 cause=watchdog", 30)
        assert "sim: watchdog reset" in sim.output


def test_watchdog_catches_a_hang_that_never_feeds_again(tmp_path):
    dev = make_device(tmp_path / "dev", ["hang", "stay"])
    with Sim(state=tmp_path / "st", device_dir=dev, flags=["--no-auth"]) as sim:
        sim.wait_for_line("boot=2 cause=watchdog", 30)
        assert "sim: watchdog reset (hang: no feed for" in sim.output
        assert "power cut" not in sim.output
        assert (sim.state / "wdt").read_bytes() == b""  # this boot started no watchdog


def test_power_cut_tears_an_operation_and_reboots_disarmed(tmp_path):
    dev = make_device(tmp_path / "dev", ["write", "write", "stay"])
    with Sim(state=tmp_path / "st", device_dir=dev, flags=["--no-auth", "--power-cut-after", "30"]) as sim:
        sim.wait_for_line("simflash: POWER CUT", 30)
        sim.wait_for_line("sim: power cut", 30)
        line = sim.wait_for_line("boot=2 cause=power_on", 30)
        assert "main.py" in line  # littlefs survived the torn operation
        # the second boot is not armed: the same writes now complete
        sim.wait_for_line("app: wrote everything", 60)
        out = sim.output
        assert out.index("simflash: POWER CUT") < out.index("boot=2")
        assert "app: wrote everything" not in out[:out.index("boot=2")]
        assert "after 30 complete operations" in out
        assert sim.stop() == 0


def test_redeploy_copies_new_files_into_existing_flash(tmp_path):
    dev = make_device(tmp_path / "dev", ["stay"])
    state = tmp_path / "st"
    with Sim(state=state, device_dir=dev, flags=["--no-auth"]) as sim:
        app_line(sim)
    (dev / "extra.py").write_text("X = 1\n")
    with Sim(state=state, device_dir=dev, flags=["--no-auth"]) as sim:
        line = app_line(sim)
        assert "boot=2 cause=power_on" in line and "extra.py" not in line
    with Sim(state=state, device_dir=dev, flags=["--no-auth", "--redeploy"]) as sim:
        line = app_line(sim)
        assert "boot=3" in line and "extra.py" in line
        assert "formatting" not in sim.output


def test_missing_main_and_other_exit_status_end_the_launcher(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "boot_only.py").write_text("X = 1\n")
    sim = Sim(state=tmp_path / "st", device_dir=dev, flags=["--no-auth"], ready=False)
    try:
        assert sim.wait_exit(30) == 2
        assert "/main.py is missing" in sim.output
    finally:
        sim.stop()
    dev2 = make_device(tmp_path / "dev2", ["exit5"])
    sim = Sim(state=tmp_path / "st2", device_dir=dev2, flags=["--no-auth"], ready=False)
    try:
        assert sim.wait_exit(30) == 5
        assert "sim: device exited with status 5" in sim.output
    finally:
        sim.stop()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signals_stop_cleanly(tmp_path, sig):
    import signal

    dev = make_device(tmp_path / "dev", ["stay"])
    sim = Sim(state=tmp_path / "st", device_dir=dev, flags=["--no-auth"])
    try:
        sim.proc.send_signal(getattr(signal, sig))
        assert sim.wait_exit(20) == 0
    finally:
        sim.stop()
    assert_port_free(sim.tcp_port)


# the seam: mpota_hal.py (resident) and mpota_halboot.py (read once at boot, then dropped)
HAL_API = {"mpota_hal": ["reset", "ticks_ms", "ticks_diff", "wdt_start", "wdt_feed", "wlan_join", "wlan_state",
                   "wlan_ip", "wlan_rssi", "wlan_leave", "wlan_power_save", "mem_free", "mem_alloc", "status_extra",
                   "print_exception", "log_tee"],
           "mpota_halboot": ["reset_cause", "resets", "unique_id", "config_overrides", "flash_info"]}


def test_hal_delegates_every_function_to_simhal(mp_build):
    from conftest import run_micropython

    code = """
import sys, gc
sys.path.insert(0, %r)
sys.path.insert(0, %r)
import simhal
simhal.configure({"reset_cause": "reset", "device_id": "51abc", "tcp_port": 9, "host": "10.0.0.2"}, None)
gc.collect(); a = gc.mem_alloc()
import mpota_hal as hal
gc.collect(); cost = gc.mem_alloc() - a
import mpota_halboot as halboot
for m, names in sorted(%r.items()):
    mod = sys.modules[m]
    missing = [n for n in names if not hasattr(mod, n) or not hasattr(simhal, n)]
    wrong = [n for n in names if getattr(mod, n) is not getattr(simhal, n)]
    print(m, missing, wrong, sorted(mod._API) == sorted(names))
print(hal.PLATFORM, halboot.reset_cause(), halboot.unique_id(), hal.wlan_state(),
      halboot.config_overrides()["tcp_port"])
print("import cost", cost)
""" % (str(REPO / "device"), str(REPO / "tools"), HAL_API)
    r = run_micropython(["-c", code], heap="96K", mp=mp_build)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == "mpota_hal [] [] True"
    assert lines[1] == "mpota_halboot [] [] True"
    assert lines[2] == "sim reset 51abc None 9"  # None: no link to manage (no --wifi)
    print("\nhal: " + lines[3] + " bytes")


def test_hal_without_simhal_is_the_rp2_seam(mp_build):
    from conftest import run_micropython

    # only what the unix port can run of the rp2 paths (no network, no real registers)
    code = """
import sys
sys.path.insert(0, %r)
import mpota_hal as hal, mpota_halboot as halboot
t = hal.ticks_ms()
print(hal.PLATFORM, halboot.config_overrides(), hal.ticks_diff(hal.ticks_ms(), t) >= 0,
      hal.mem_free() > 0, sorted(halboot.flash_info()))
hal.wdt_feed()  # no watchdog started: nothing to feed
""" % str(REPO / "device")
    r = run_micropython(["-c", code], mp=mp_build)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "rp2 {} True True ['block_count', 'block_size']"


def test_trust_installs_the_public_half_of_an_imgtool_key(tmp_path):
    import json

    from mpota import keys

    k1, k2 = tmp_path / "k1.pem", tmp_path / "k2.pem"
    keys.keygen(k1)
    keys.keygen(k2)
    pub2 = tmp_path / "k2.pub.pem"
    keys.load(k2).export_public(str(pub2))  # a public-only PEM works as well
    dev = make_device(tmp_path / "dev", ["stay"])
    with Sim(state=tmp_path / "st", device_dir=dev, flags=["--trust", str(k1), "--trust", str(pub2)]) as sim:
        assert "mpota_trust.json" in app_line(sim)
        assert "trust store installed" in sim.output
        assert sim.stop() == 0
    store = json.loads(read_flash_file(sim.state, "mpota_trust.json"))
    assert store == {"seq": 0, "keys": [keys.public_raw(k1).hex(), keys.public_raw(k2).hex()]}
    assert b"PRIVATE" not in (sim.state / "flash.bin").read_bytes()
    # without --trust a later start leaves the store alone
    with Sim(state=tmp_path / "st", device_dir=dev) as sim:
        assert "mpota_trust.json" in app_line(sim)
        assert "trust store installed" not in sim.output
        assert sim.stop() == 0


def test_trust_with_a_key_that_is_not_ed25519_stops_the_launcher(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "sim.py"), "--state", str(tmp_path / "st"),
                        "--trust", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "sim: --trust: cannot load" in r.stderr


def test_stop_does_not_wait_for_a_device_that_is_starting(tmp_path, monkeypatch):
    """Launcher.stop while run() is inside Popen (which can take seconds on a
    loaded machine; or stop is the SIGTERM handler of the thread in it):
    stop returns at once, and the device that started meanwhile is ended
    (before, stop waited on a lock run() held across Popen)."""
    import subprocess
    import sys
    import threading
    import time

    import sim
    mp = str(REPO / ".venv" / "bin" / "micropython")
    entered = threading.Event()
    release = threading.Event()
    started = []
    real = subprocess.Popen

    def slow_popen(cmd, *a, **kw):
        if cmd[0] != mp:
            return real(cmd, *a, **kw)
        entered.set()
        release.wait(10)
        p = real([sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(p)
        return p

    monkeypatch.setattr(subprocess, "Popen", slow_popen)
    ln = sim.Launcher(sim.parse_args(["--state", str(tmp_path / "st"), "--micropython", mp, "--deploy", "py"]),
                      emit=lambda line: None)
    rc = []
    t = threading.Thread(target=lambda: rc.append(ln.run()), daemon=True)
    t.start()
    try:
        assert entered.wait(30), "run() never started the device"
        t0 = time.monotonic()
        ln.stop(grace=1)
        took = time.monotonic() - t0
    finally:
        release.set()
    t.join(15)
    assert took < 1, "stop waited %.1f s for a Popen" % took
    assert not t.is_alive() and rc == [0]
    assert started and started[0].wait(5) is not None  # ended by run() once it saw the stop
