"""USB as a transport: `mpota -t usb:PORT ...` against a simulated board whose
console is a pty (tools/sim.py --usb), through mpremote's SerialTransport and
raw REPL, served on the board by the agent's own dispatcher (device/mpota_usb.py).
The same image checks as over Wi-Fi (signed, unsigned, foreign, tampered), the
trial, confirm and rollback, a cable pull in the middle of an upload, and a
board whose watchdog runs."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, until_uploading
from simproc import Sim
from test_cli_e2e import FLASH, build, cli, ev, events, make_app

sys.path.insert(0, str(REPO / "tools"))
from tamper import tamper  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def usb_sim(tmp_path, flags=()):
    s = Sim(state=tmp_path / "dev", flags=["--usb"] + list(flags))
    s.usb = "usb:" + (s.state / "usb").read_text().strip()
    return s


def net_status(sim):
    r = cli("-t", "127.0.0.1:%d" % sim.tcp_port, "--json", "status", key=sim.key)
    assert r.returncode == 0, r.stderr
    return ev(events(r), "status")


def usb(sim, *args, timeout=120):
    """The CLI over USB, with no key at hand (the cable authenticates)."""
    mark = sim.mark()
    target = () if "-t" in args else ("-t", sim.usb)
    r = cli(*target, "--json", *args, timeout=timeout)
    # whatever the command did, it hands the board back to its agent (a reset)
    sim.wait_for_line("mpota: ready", 30, since=mark)
    return r


def test_usb_push_applies_the_same_image_checks_as_the_network(tmp_path):
    from mpota import keys
    from mpota.images import build_app_image

    mine, other = tmp_path / "mine.pem", tmp_path / "other.pem"
    keys.keygen(mine)
    keys.keygen(other)
    app = make_app(tmp_path / "app")
    good = tmp_path / "good.img"
    good.write_bytes(build_app_image(app, version="1.0.0+0", key=str(mine)))
    foreign = tmp_path / "foreign.img"
    foreign.write_bytes(build_app_image(app, version="1.0.0+0", key=str(other)))
    unsigned = tmp_path / "unsigned.img"
    unsigned.write_bytes(build_app_image(app, version="1.0.0+0"))
    tampered = tmp_path / "tampered.img"
    tampered.write_bytes(tamper(good.read_bytes()))
    sim = usb_sim(tmp_path, ["--trust", str(mine)])
    try:
        r = usb(sim, "status")
        assert r.returncode == 0, r.stdout + r.stderr
        st = ev(events(r), "status")
        assert st["device"] == sim.device_id and st["running"] is None
        for img, code in ((unsigned, "signature_invalid"), (foreign, "signature_invalid"),
                          (tampered, None)):
            r = usb(sim, "push", img)
            assert r.returncode == 5, (img.name, r.stdout, r.stderr)
            err = ev(events(r), "error")
            if code:
                assert code in json.dumps(err), err
        st = net_status(sim)
        assert st["running"] is None and st["pending"] is None, st  # nothing bootable was made
        r = usb(sim, "push", good)
        assert r.returncode == 0, r.stdout + r.stderr
        evs = events(r)
        assert ev(evs, "committed")["state"] == "pending"
        done = ev(evs, "done")
        assert done["state"] == "confirmed", done
        st = net_status(sim)  # the network sees what the USB push made
        assert st["running"] == done["slot"] and st["slots"][done["slot"]]["state"] == "confirmed", st
        assert st["slots"][done["slot"]]["version"] == "1.0.0+0"
    finally:
        sim.stop()


def test_usb_trial_confirm_and_rollback(tmp_path):
    sim = usb_sim(tmp_path)
    try:
        v1 = build(make_app(tmp_path / "v1"), "1.0.0", tmp_path / "v1.img")
        r = usb(sim, "push", v1)
        assert r.returncode == 0, r.stdout + r.stderr
        s1 = ev(events(r), "done")["slot"]
        v2 = build(make_app(tmp_path / "v2", confirm=False), "2.0.0", tmp_path / "v2.img")
        r = usb(sim, "push", v2, "--no-confirm")
        assert r.returncode == 0, r.stdout + r.stderr
        booted = ev(events(r), "booted")
        assert booted["state"] == "trial" and booted["slot"] != s1, booted
        s2 = booted["slot"]
        for _ in range(4):  # more USB commands than max_trials (3): each ends with a reset, none counts
            r = usb(sim, "status")
            assert r.returncode == 0, r.stdout + r.stderr
        st = net_status(sim)
        assert (st["running"], st["trial"], st["trial_count"]) == (s2, True, 1), st
        r = usb(sim, "confirm")
        assert r.returncode == 0, r.stdout + r.stderr
        assert ev(events(r), "confirmed")["slot"] == s2
        st = net_status(sim)
        assert st["running"] == s2 and st["slots"][s2]["state"] == "confirmed" and not st["trial"], st
        crash = build(make_app(tmp_path / "crash", confirm=False, crash=True), "3.0.0", tmp_path / "crash.img")
        r = usb(sim, "push", crash)
        assert r.returncode == 6, r.stdout + r.stderr  # the trial watched over USB: its app crashed
        assert "crashed" in ev(events(r), "error")["message"]
        r = usb(sim, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        st = net_status(sim)  # the end of the USB command reset the board: it runs v2 again
        assert st["running"] == s2 and st["slots"][s2]["state"] == "confirmed", st
        r = usb(sim, "dump", "--slot", s2, "-o", tmp_path / "back.img")  # READ frames, 4 KB replies
        assert r.returncode == 0, r.stdout + r.stderr
        assert (tmp_path / "back.img").read_bytes() == v2.read_bytes()
        # a targets file's usb target: its device_id is checked as over Wi-Fi
        tf = tmp_path / "targets.toml"
        tf.write_text('[targets.desk]\nhost = "%s"\ndevice_id = "0123456789abcdef"\n' % sim.usb)
        r = usb(sim, "--targets", tf, "-t", "desk", "ping")
        assert r.returncode == 3 and "0123456789abcdef" in r.stdout, r.stdout + r.stderr
    finally:
        sim.stop()


def test_usb_cable_pull_mid_upload_resumes(tmp_path):
    sim = usb_sim(tmp_path)
    try:
        img = build(make_app(tmp_path / "big", blob=160_000), "1.0.0", tmp_path / "big.img")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
        env["MPOTA_TARGETS"] = os.devnull
        p = subprocess.Popen([sys.executable, FLASH, "-t", sim.usb, "--json", "push", str(img)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            seen = until_uploading(p)
            assert any(e["event"] == "begin" for e in seen), seen
            p.kill()  # the cable goes: no goodbye, the port closes mid-exchange
            p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        assert not any(e["event"] == "committed" for e in seen)
        # and a host that goes while sending a snippet leaves the board reading it
        from mpota.usb import UsbLink

        ln = UsbLink(sim.usb[4:])
        ln.ensure()
        ln.t.read_until(1, b">")
        ln.t.serial.write(b"\x05A\x01")  # raw-paste mode (mpremote's exec_raw_no_follow)
        assert ln.t.serial.read(4)[:2] == b"R\x01"
        ln.t.serial.write(b"_u.feed(b\"AAAA")  # half a snippet, then the cable goes
        ln.close()
        # the board waits in its raw REPL (no watchdog here); the next push resumes
        r = usb(sim, "push", img)
        assert r.returncode == 0, r.stdout + r.stderr
        evs = events(r)
        begin = ev(evs, "begin")
        assert begin["resumed"] and 0 < begin["offset"] < img.stat().st_size, begin
        st = net_status(sim)
        assert st["slots"][st["running"]]["sha256"] == ev(evs, "image")["sha256"], st
        assert st["slots"][st["running"]]["state"] == "confirmed"
    finally:
        sim.stop()


def test_usb_feeds_the_watchdog_through_a_slow_push(tmp_path):
    cfg = tmp_path / "mpota.json"
    cfg.write_text(json.dumps({"wdt": 2000}))
    sim = usb_sim(tmp_path, ["--config", str(cfg), "--flash-timing", "w25q"])
    try:
        img = build(make_app(tmp_path / "big", blob=120_000), "1.0.0", tmp_path / "big.img")
        t0 = time.monotonic()
        r = usb(sim, "push", img)
        assert r.returncode == 0, r.stdout + r.stderr
        assert time.monotonic() - t0 > 2.5  # the board was interrupted for longer than its watchdog's 2 s
        assert "watchdog" not in sim.output, sim.tail(30)
        assert ev(events(r), "done")["state"] == "confirmed"
    finally:
        sim.stop()


def test_usb_logs_show_the_console_without_interrupting_the_app(tmp_path):
    app = tmp_path / "ticker"
    app.mkdir()
    (app / "main.py").write_text("import asyncio\nimport mpota\n\nasync def main():\n    mpota.confirm()\n"
                                 "    n = 0\n    while True:\n        n += 1\n        print('tick', n)\n"
                                 "        await asyncio.sleep(0.2)\n")
    sim = usb_sim(tmp_path)
    try:
        r = usb(sim, "push", build(app, "1.0.0", tmp_path / "ticker.img"))
        assert r.returncode == 0, r.stdout + r.stderr
        sim.wait_for_line("tick 3", 30)
        mark = sim.mark()
        r = cli("-t", sim.usb, "--json", "logs", "--seconds", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        ticks = [e["text"] for e in events(r) if e["event"] == "console" and e["text"].startswith("tick")]
        assert len(ticks) >= 5, events(r)
        nums = [int(t.split()[1]) for t in ticks]
        assert nums == list(range(nums[0], nums[0] + len(nums)))  # one run of the app, never restarted
        assert "sim: reset" not in "\n".join(sim.lines[mark:])
        r = cli("-t", "127.0.0.1:1", "--json", "logs")  # the same command over the network (the logs op)
        assert r.returncode == 2 and '"error": "Unreachable"' in r.stdout, r.stdout + r.stderr
    finally:
        sim.stop()


def test_usb_push_no_reset_is_refused_before_anything_is_sent(tmp_path):
    img = build(make_app(tmp_path / "app"), "1.0.0", tmp_path / "app.img")
    r = cli("-t", "usb:/dev/null-no-such-port", "--json", "push", img, "--no-reset")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "--no-reset cannot hold over USB" in r.stdout


def test_discover_usb_lists_micropython_boards_by_their_usb_serial_number():
    from serial.tools.list_ports_common import ListPortInfo

    from mpota import usb

    def port(dev, vid, pid, sn, man, prod):
        p = ListPortInfo(dev, skip_link_detection=True)
        p.vid, p.pid, p.serial_number, p.manufacturer, p.product = vid, pid, sn, man, prod
        return p

    ports = [port("/dev/ttyACM1", 0x2E8A, 0x0005, "E6614C311B6A7A2F", "MicroPython", "Board in FS mode"),
             port("/dev/ttyUSB0", 0x0403, 0x6001, "A50285BI", "FTDI", "FT232R USB UART"),
             port("/dev/ttyS0", None, None, None, None, None)]
    boards = usb.list_boards(ports)
    assert [b.fields() for b in boards] == [{
        "port": "/dev/ttyACM1", "device_id": "e6614c311b6a7a2f", "description": "MicroPython Board in FS mode",
        "vid_pid": "2e8a:0005", "target": "usb:/dev/ttyACM1"}]


def test_provision_repair_reinstalls_a_broken_agent_keeping_key_trust_slots_and_app(tmp_path):
    from mpota import keys
    from mpota.images import build_app_image
    from mpota.usb import UsbLink

    mine = tmp_path / "mine.pem"
    keys.keygen(mine)
    img = tmp_path / "app.img"
    img.write_bytes(build_app_image(make_app(tmp_path / "app"), version="1.0.0+0", key=str(mine)))
    sim = usb_sim(tmp_path, ["--trust", str(mine)])
    try:
        r = usb(sim, "push", img)
        assert r.returncode == 0, r.stdout + r.stderr
        before = net_status(sim)
        # break the agent: its resident module no longer imports, so main.py stops in the REPL
        ln = UsbLink(sim.usb[4:])
        ln.ensure(agent=False)
        ln.prepare_files()
        assert ln.remove_files(["mpota_agent.mpy", "mpota_agent.py"])
        ln.write_file("mpota_agent.py", b"this is not python\n")
        ln.close()
        mark = sim.mark()
        sim.power_cut(timeout=None)  # unplugged and plugged in
        sim.wait_for_line("NameError", 30, since=mark)
        r = cli("-t", sim.usb, "--json", "status")
        assert r.returncode == 2, r.stdout + r.stderr  # nothing answers over USB either
        mark = sim.mark()
        r = cli("--json", "provision", "--serial", sim.usb[4:], "--repair")
        assert r.returncode == 0, r.stdout + r.stderr
        done = ev(events(r), "done")
        assert done["ready"].startswith("mpota: ready") and done["files"][-1] == "main.py"
        assert {"mpota_agent.mpy", "mpota_agent.py"} & set(done["files"])
        if "mpota_agent.mpy" in done["files"]:  # the broken source would win the import: it went
            assert any("removed" in e["text"] and "mpota_agent.py" in e["text"] for e in events(r)
                       if e["event"] == "step")
        sim.wait_for_line("mpota: ready", 30, since=mark)
        after = net_status(sim)  # the device key it had still opens it
        run = after["running"]
        assert run == before["running"] and after["slots"][run] == before["slots"][run], after
        assert after["slots"][run]["state"] == "confirmed" and after["app"]["state"] == "running"
        assert after["trust"] == before["trust"] and after["trust"]["keys"], after["trust"]
        r = cli("--json", "provision", "--serial", sim.usb[4:], "--repair", "--name", "x")
        assert r.returncode == 1 and "--repair reinstalls the agent only" in r.stdout
    finally:
        sim.stop()
