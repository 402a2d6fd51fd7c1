"""host/flash.py end to end against the simulator (tools/sim.py), loopback only.

Every test drives the real CLI as a subprocess (as a user would) and checks
its exit code, its --json events and the device's own status afterwards.
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import INTERPRETERS, INTERRUPTIBLE, REPO, free_port, interp_label, until_uploading
from simproc import Sim

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FLASH = str(REPO / "host" / "flash.py")
HELLO = REPO / "examples" / "hello"


# --- helpers -----------------------------------------------------------------------

def cli(*args, key=None, timeout=120, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = os.devnull  # never the developer's own targets file
    if key is not None:
        env["MPOTA_KEY"] = key.hex()
    env.update(env_extra or {})
    return subprocess.run([sys.executable, FLASH] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(REPO))


def events(r):
    """The --json events of a run; every stdout line must be one JSON object."""
    out = []
    for line in r.stdout.splitlines():
        out.append(json.loads(line))
    return out


def ev(evs, name):
    found = [e for e in evs if e["event"] == name]
    assert found, "no %r event in %s" % (name, [e["event"] for e in evs])
    return found[-1]


def status(sim, key=None):
    # with the key: a stranger's status says only who the device is
    r = cli("-t", "127.0.0.1:%d" % sim.tcp_port, "--json", "status", key=key or sim.key)
    assert r.returncode == 0, r.stderr
    return ev(events(r), "status")


def make_app(folder: Path, confirm=True, blob=0, crash=False):
    """An app folder: optionally one that never confirms, crashes, or carries `blob` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    body = ["import asyncio", "import mpota", "NAME = 'testapp'", "", "async def main():"]
    if crash:
        body.append("    raise ValueError('broken on purpose')")
    if confirm:
        body.append("    mpota.confirm()")
    body += ["    while True:", "        await asyncio.sleep(1)", ""]
    (folder / "main.py").write_text("\n".join(body))
    if blob:
        # Incompressible filler so the image is big enough to cut mid-upload.
        (folder / "blob.py").write_text("DATA = %r\n" % os.urandom(blob // 2).hex())
    return folder


def build(folder, version, out):
    r = cli("build", folder, "--version", version, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    assert ev(events(r), "built")["version"].startswith(version)
    return Path(out)


@pytest.fixture
def sim(tmp_path):
    s = Sim(state=tmp_path / "dev", flags=["--legacy-udp"])
    yield s
    s.stop()


def target(sim):
    return ["-t", "127.0.0.1:%d" % sim.tcp_port]


# --- the full update flow ------------------------------------------------------------

def test_build_push_reset_trial_confirm(sim, tmp_path):
    img1 = build(HELLO, "1.0.0", tmp_path / "v1.img")
    r = cli(*target(sim), "--json", img1, key=sim.key)       # default command: push
    assert r.returncode == 0, r.stdout + r.stderr
    evs = events(r)
    begin, done = ev(evs, "begin"), ev(evs, "done")
    assert begin["offset"] == 0 and not begin["resumed"]
    assert ev(evs, "committed")["state"] == "pending"
    prog = [e for e in evs if e["event"] == "progress"]
    assert prog and prog[-1]["done"] == prog[-1]["total"] == img1.stat().st_size
    assert ev(evs, "booted")["version"] == "1.0.0+0"
    assert done["ok"] and done["state"] == "confirmed" and done["version"] == "1.0.0+0"
    st = status(sim)
    assert st["running"] == done["slot"] and not st["trial"]
    assert st["slots"][done["slot"]]["state"] == "confirmed"
    assert st["slots"][done["slot"]]["version"] == "1.0.0+0"

    # v2 from a folder built on the fly, by an app that does NOT confirm itself:
    # the host sees it on trial and confirms it.
    app2 = make_app(tmp_path / "app2", confirm=False)
    r = cli(*target(sim), "--json", "push", app2, "--version", "2.0.0", key=sim.key)
    assert r.returncode == 0, r.stdout + r.stderr
    evs = events(r)
    assert ev(evs, "booted")["state"] == "trial"
    done2 = ev(evs, "done")
    assert done2["state"] == "confirmed" and done2["confirmed_by"] == "host"
    assert done2["slot"] != done["slot"]
    st = status(sim)
    assert st["running"] == done2["slot"] and st["slots"][done2["slot"]]["version"] == "2.0.0+0"

    # --no-confirm leaves v3 on trial; an older version is refused.
    r = cli(*target(sim), "--json", "push", app2, "--version", "3.0.0", "--no-confirm", key=sim.key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ev(events(r), "done")["state"] == "trial"
    st = status(sim)
    assert st["trial"] and st["slots"][st["running"]]["version"] == "3.0.0+0"
    r = cli(*target(sim), "confirm", key=sim.key)
    assert r.returncode == 0, r.stderr
    r = cli(*target(sim), "--json", "push", img1, "--no-reset", key=sim.key)
    assert r.returncode == 5
    err = ev(events(r), "error")
    assert err["code"] == "version_refused" and err["hint"]


def test_crashing_app_is_not_confirmed(sim, tmp_path):
    app = make_app(tmp_path / "bad", confirm=False, crash=True)
    r = cli(*target(sim), "--json", "push", app, "--version", "1.0.0", key=sim.key)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "crashed" in ev(events(r), "error")["message"]
    st = status(sim)
    assert st["app"]["state"] == "crashed" and st["slots"][st["running"]]["state"] != "confirmed"


def test_status_read_dump_and_human_output(sim, tmp_path):
    img = build(HELLO, "1.1.0", tmp_path / "v.img")
    r = cli(*target(sim), "push", img, "--no-reset", key=sim.key)
    assert r.returncode == 0, r.stderr
    assert "pending" in r.stdout
    st = status(sim)
    slot = st["pending"]
    r = cli(*target(sim), "dump", "--slot", slot, "-o", tmp_path / "back.img", key=sim.key)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.img").read_bytes() == img.read_bytes()
    r = cli(*target(sim), "--json", "read", "--slot", slot, "--offset", "0", "--length", "32", key=sim.key)
    assert r.returncode == 0, r.stderr
    assert bytes.fromhex(ev(events(r), "read")["hex"]) == img.read_bytes()[:32]
    r = cli(*target(sim), "status", key=sim.key)
    assert r.returncode == 0 and "slot %s" % slot in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "slot size" in r.stdout  # what the no_space hint points at
    r = cli(*target(sim), "-q", "status")  # the one-line answer
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and r.stdout.startswith("127.0.0.1:")
    r = cli(*target(sim), "--json", "ping")
    assert r.returncode == 0 and ev(events(r), "pong")["auth"] == "hmac-sha256"
    r = cli(*target(sim), "--json", "erase", "--slot", slot, key=sim.key)
    assert r.returncode == 0, r.stderr
    assert status(sim)["slots"][slot]["state"] == "empty"
    r = cli(*target(sim), "--json", "rollback", key=sim.key)  # nothing to roll back to
    assert r.returncode == 5 and ev(events(r), "error")["code"] == "incorrect_state"


def test_key_never_appears_in_output(sim, tmp_path):
    img = build(HELLO, "1.0.0", tmp_path / "v.img")
    r = cli(*target(sim), "-vv", "push", img, "--no-reset", key=sim.key)
    assert r.returncode == 0, r.stderr
    assert "TX" in r.stderr  # -vv logs packets
    k = sim.key.hex()
    assert k not in r.stdout + r.stderr and k.upper() not in r.stdout + r.stderr


# --- resume ------------------------------------------------------------------------------

from linkproxy import ProxyThread  # noqa: E402


def test_resume_after_link_cut_resends_at_most_a_window(sim, tmp_path):
    app = make_app(tmp_path / "big", blob=160_000)
    img = build(app, "1.0.0", tmp_path / "big.img")
    size = img.stat().st_size
    assert size > 120_000
    # two faulty connections: push reads status first (its no-op check), far below 60 kB
    px = ProxyThread(sim.tcp_port, cut_after=60_000, cuts=2)
    try:
        r = cli("-t", "127.0.0.1:%d" % px.port, "--json", "push", img, "--no-reset", key=sim.key)
    finally:
        px.close()
    assert r.returncode == 0, r.stdout + r.stderr
    evs = events(r)
    assert px.px.cut_count == 1
    assert ev(evs, "reconnect")["attempt"] == 1
    resumed = ev(evs, "resume")["offset"]
    assert 0 < resumed < size
    stats = ev(evs, "upload_stats")
    window = ev(evs, "begin")["window"]
    assert stats["reconnects"] == 1
    assert 0 <= stats["resent"] <= window
    st = status(sim)
    assert st["slots"][st["pending"]]["sha256"] == ev(evs, "image")["sha256"]


def test_interrupt_commits_nothing_and_push_resumes(sim, tmp_path):
    app = make_app(tmp_path / "big", blob=160_000)
    img = build(app, "1.0.0", tmp_path / "big.img")
    # The proxy swallows everything after 50 kB: the push hangs mid-upload.
    # two faulty connections: push reads status first (its no-op check), far below 50 kB
    px = ProxyThread(sim.tcp_port, stall_after=50_000, cuts=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env.update(MPOTA_TARGETS=os.devnull, MPOTA_KEY=sim.key.hex())
    p = subprocess.Popen([sys.executable, FLASH, "-t", "127.0.0.1:%d" % px.port, "--json", "push",
                          str(img), "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, **INTERRUPTIBLE)
    try:
        seen = until_uploading(p)
        assert any(e["event"] == "begin" for e in seen), seen
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        px.close()
    assert p.returncode == 130, err
    rest = [json.loads(line) for line in out.splitlines()]
    assert ev(rest, "error")["exit_code"] == 130
    assert not any(e["event"] == "committed" for e in seen + rest)
    st = status(sim)
    assert st["pending"] is None  # nothing committed
    r = cli(*target(sim), "--json", "push", img, "--no-reset", key=sim.key)
    assert r.returncode == 0, r.stdout + r.stderr
    begin = ev(events(r), "begin")
    assert begin["resumed"] and begin["offset"] > 0


# --- legacy --------------------------------------------------------------------------------

def test_legacy_push_with_readback(tmp_path):
    img = build(HELLO, "1.0.0", tmp_path / "v.img")
    # The legacy service has no authentication: the device serves it only with auth off.
    with Sim(state=tmp_path / "dev", flags=["--legacy-udp", "--no-auth"]) as sim:
        r = cli(*target(sim), "--udp-port", sim.udp_port, "--json", "legacy", img, "--chunk", "512",
                "--no-reset")
        assert r.returncode == 0, r.stdout + r.stderr
        evs = events(r)
        assert ev(evs, "verified")["bytes"] == img.stat().st_size
        assert ev(evs, "done")["ok"]
        st = status(sim)
        assert st["pending"] and st["slots"][st["pending"]]["state"] == "pending"
        assert st["slots"][st["pending"]]["sha256"] == ev(evs, "image")["sha256"]


def test_legacy_refused_while_auth_is_on_exit_3(sim, tmp_path):
    img = build(HELLO, "1.0.0", tmp_path / "v.img")
    r = cli(*target(sim), "--udp-port", sim.udp_port, "--json", "legacy", img)
    assert r.returncode == 3
    e = ev(events(r), "error")
    assert e["code"] == "auth_required" and "--no-auth" in e["hint"]


# --- every error class and its exit code -----------------------------------------------------

@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory):
    s = Sim(state=tmp_path_factory.mktemp("errdev"), flags=["--legacy-udp"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hello_img(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    return build(HELLO, "1.0.0", d / "hello.img")


def test_unreachable_host_and_wrong_port_exit_2(hello_img):
    port = free_port()  # nothing listens there
    r = cli("-t", "127.0.0.1:%d" % port, "--json", "--connect-timeout", "2", "push", hello_img)
    assert r.returncode == 2
    e = ev(events(r), "error")
    assert e["error"] == "Unreachable" and e["hint"]
    r = cli("-t", "no-such-host.invalid", "--connect-timeout", "2", "status")
    assert r.returncode == 2 and "hint:" in r.stderr


def test_legacy_wrong_udp_port_times_out_exit_2(hello_img):
    r = cli("-t", "127.0.0.1", "--udp-port", free_port(__import__("socket").SOCK_DGRAM), "--timeout", "1",
            "--json", "legacy", hello_img)
    assert r.returncode == 2
    assert ev(events(r), "error")["error"] == "DeviceTimeout"


def test_image_too_big_exit_5(shared_sim, tmp_path):
    slot_size = _hello(shared_sim)["slot_size"]
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(slot_size + 4096))
    out = tmp_path / "big.img"
    imgtool = os.path.join(os.path.dirname(sys.executable), "imgtool")
    subprocess.run([imgtool, "create", "--align", "4", "--version", "9.0.0", "--header-size", "32",
                    "--pad-header", "--slot-size", str(2 * slot_size + 65536), str(big), str(out)],
                   check=True, capture_output=True, timeout=60)
    r = cli(*target(shared_sim), "--json", "push", out, key=shared_sim.key)
    assert r.returncode == 5
    assert ev(events(r), "error")["code"] == "no_space"


def _hello(sim):
    from mpota import client  # the library's own hello, for slot_size

    async def go():
        async with client.Client("127.0.0.1", sim.tcp_port, key=sim.key) as c:
            return c.info
    return asyncio.run(go())


def test_corrupted_image_file_exit_5_and_nothing_sent(shared_sim, hello_img, tmp_path):
    bad = tmp_path / "bad.img"
    data = bytearray(hello_img.read_bytes())
    data[200] ^= 0x55
    bad.write_bytes(bytes(data))
    before = status(shared_sim)
    r = cli(*target(shared_sim), "--json", "push", bad, key=shared_sim.key)
    assert r.returncode == 5
    e = ev(events(r), "error")
    assert e["error"] == "BadImage" and "corrupted" in e["message"]
    assert not any(x["event"] == "begin" for x in events(r))
    assert status(shared_sim)["slots"] == before["slots"]


def test_wrong_key_exit_3_and_no_key_exit_3(shared_sim, hello_img):
    r = cli(*target(shared_sim), "--json", "push", hello_img, key=bytes(32))
    assert r.returncode == 3
    assert ev(events(r), "error")["code"] == "auth_failed"
    r = cli(*target(shared_sim), "--json", "push", hello_img)  # no key at all
    assert r.returncode == 3
    assert ev(events(r), "error")["error"] == "AuthError"
    r = cli(*target(shared_sim), "status")  # status needs no key
    assert r.returncode == 0


def test_busy_exit_4(shared_sim, hello_img):
    from mpota import client

    async def go():
        c = client.Client("127.0.0.1", shared_sim.tcp_port, key=shared_sim.key)
        await c.connect()
        await c.begin(4096, "00" * 32)  # hold a session open on this connection
        try:
            r = await asyncio.to_thread(cli, *target(shared_sim), "--json", "push", hello_img,
                                        key=shared_sim.key)
        finally:
            await c.close()
        return r
    r = asyncio.run(go())
    assert r.returncode == 4
    assert ev(events(r), "error")["code"] == "busy"


def test_usage_errors_exit_1(tmp_path):
    r = cli("-t", "127.0.0.1", "push", tmp_path / "missing.img")
    assert r.returncode == 1 and "hint:" in r.stderr
    r = cli("-t", "127.0.0.1", "build", tmp_path)  # no main.py
    assert r.returncode == 1


def test_push_mpy_app_runs(sim, tmp_path):
    """--mpy ships the app compiled (armv6m .mpy without native code loads anywhere)."""
    r = cli(*target(sim), "--json", "push", HELLO, "--version", "1.0.0", "--mpy", key=sim.key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ev(events(r), "done")["state"] == "confirmed"
    assert status(sim)["app"]["state"] == "running"


# --- lean mode --------------------------------------------------------------------------

@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_lean_mode_push_restarts_into_update_mode_without_extra_flags(tmp_path, mp):
    """A lean device takes no image beside its app: `begin` restarts it into
    update mode (no app, the heap for the transfer); push follows it there,
    uploads, commits, and the new version boots on trial and is confirmed."""
    cfg = tmp_path / "mpota.json"
    cfg.write_text(json.dumps({"mode": "lean"}))
    img1 = build(HELLO, "1.0.0", tmp_path / "v1.img")
    img2 = build(HELLO, "2.0.0", tmp_path / "v2.img")
    s = Sim(state=tmp_path / "dev", flags=["--config", str(cfg), "--micropython", mp])
    try:
        for img, version in ((img1, "1.0.0+0"), (img2, "2.0.0+0")):
            r = cli(*target(s), "--json", "push", img, key=s.key)
            assert r.returncode == 0, r.stdout + r.stderr
            evs = events(r)
            ev(evs, "update_mode")
            assert ev(evs, "done")["state"] == "confirmed" and ev(evs, "done")["version"] == version
        st = status(s)
        assert st["mode"] == "lean" and st["app"]["state"] == "running"
        assert st["slots"][st["running"]]["version"] == "2.0.0+0"
        assert "update mode (lean)" in s.output and "Traceback" not in s.output
    finally:
        s.stop()


def test_lean_update_mode_refusing_the_begin_goes_back_to_the_app(tmp_path):
    """A lean begin restarts the board into update mode; a begin refused there
    (an older version than the one running) sends the board back to its app at
    once, not after update mode's two idle minutes."""
    from devconn import DevConn
    cfg = tmp_path / "mpota.json"
    cfg.write_text(json.dumps({"mode": "lean"}))
    img = build(HELLO, "2.0.0", tmp_path / "v2.img")
    s = Sim(state=tmp_path / "dev", flags=["--config", str(cfg)])

    def begin(version, code, then):
        # a begin answered `code`, then the ready line of the mode the board restarts into
        c = DevConn(s.tcp_port, s.key)
        mark = s.mark()
        try:
            c.err("begin", code, size=1000, sha256="cd" * 32, version=version)
        finally:
            c.close()
        s.wait_for_line("mode=" + then, 30, since=mark)

    try:
        r = cli(*target(s), "--json", "push", img, key=s.key)
        assert r.returncode == 0, r.stdout + r.stderr
        begin("3.0.0", "restarting", "update")
        begin("1.0.0", "version_refused", "lean")  # back to the app: a reset at once
        st = status(s)
        assert st["mode"] == "lean" and st["app"]["state"] == "running", st
        assert "Traceback" not in s.output
    finally:
        s.stop()
