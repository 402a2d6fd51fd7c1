"""Discovery (`mpota discover`, device/mpota_discover.py, agent housekeeping's
answer) and the fleet launcher (tools/fleetsim.py): 20 simulated boards on
loopback, each on its own ports, found within a few seconds."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO
from fleetsim import Fleet, free_range
from simproc import Sim

from mpota import discover

COUNT = 20


def cli(*args, targets=os.devnull, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = str(targets)
    return subprocess.run([sys.executable, "-m", "mpota"] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(REPO))


def ask(port, data, wait=1.0):
    """Send one datagram to the board's discovery port; -> the answers within `wait` s."""
    got = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, ("127.0.0.1", port))
        end = time.monotonic() + wait
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                got.append(s.recvfrom(2048)[0])
            except (socket.timeout, ConnectionRefusedError):
                pass
    return got


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with Fleet(COUNT, tmp_path_factory.mktemp("fleet")) as f:
        yield f


def test_discover_finds_every_board_of_a_fleet_within_seconds(fleet):
    t0 = time.monotonic()
    boards = discover.discover(fleet.addresses, wait=5)
    took = time.monotonic() - t0
    assert len(boards) == COUNT, [b.name for b in boards]
    assert took < 3, took
    want = {b.device_id: (b.name, b.tcp_port) for b in fleet.boards}
    assert {b.id: (b.name, b.port) for b in boards} == want
    assert all(b.host == "127.0.0.1" and b.version is None and b.agent is None for b in boards)


def test_cli_discover_prints_one_row_per_board_and_json(fleet):
    r = cli("discover", "--to", "127.0.0.1:" + fleet.ports, "--json")
    assert r.returncode == 0, r.stderr
    ev = [json.loads(ln) for ln in r.stdout.splitlines()]
    rows = [e for e in ev if e["event"] == "board"]
    assert sorted(e["name"] for e in rows) == ["sim-%03d" % i for i in range(COUNT)]
    assert ev[-1]["event"] == "discovered" and ev[-1]["count"] == COUNT
    r = cli("discover", "--to", "127.0.0.1:%d" % fleet.boards[0].tcp_port)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "ADDRESS", "VERSION", "TARGET"]
    assert lines[1].split()[:3] == ["sim-000", fleet.boards[0].device_id, "127.0.0.1:%d" % fleet.boards[0].tcp_port]
    assert lines[-1].startswith("1 board in ")


def test_an_answer_is_never_larger_than_its_probe_and_is_rate_limited(fleet):
    port = fleet.boards[1].tcp_port
    probe = discover.probe()
    [answer] = ask(port, probe)
    assert len(answer) <= len(probe)
    assert ask(port, probe[:len(answer) - 1]) == []  # shorter than the answer: no answer
    assert ask(port, b"x" * 256) == []  # not a probe
    # a burst of 20 probes: one answer per housekeeping tick (200 ms), 5 a second
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(20):
            s.sendto(probe, ("127.0.0.1", port))
        n = 0
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                s.recvfrom(2048)
                n += 1
            except socket.timeout:
                pass
    assert 1 <= n <= 7, n
    # the flood was dropped, not queued: the next probe is answered within a tick or two
    assert len(ask(port, probe, wait=0.5)) == 1


def test_add_records_new_boards_as_targets_needing_a_key(fleet, tmp_path):
    tfile = tmp_path / "targets.toml"
    tfile.write_text('[targets.kitchen]\nhost = "10.0.0.9"\n')
    spec = "127.0.0.1:%d-%d" % (fleet.base, fleet.base + 2)
    r = cli("discover", "--to", spec, "--add", targets=tfile)
    assert r.returncode == 0, r.stderr
    assert "3 new targets in %s" % tfile in r.stdout
    assert r.stdout.count("(needs key)") == 3
    import tomllib

    t = tomllib.loads(tfile.read_text())["targets"]
    assert t["kitchen"] == {"host": "10.0.0.9"}
    for b in fleet.boards[:3]:
        assert t[b.name] == {"host": "127.0.0.1", "port": b.tcp_port, "device_id": b.device_id}
    r = cli("discover", "--to", spec, "--add", "--json", targets=tfile)
    assert [json.loads(ln).get("added") for ln in r.stdout.splitlines()][:3] == ["known"] * 3
    assert tomllib.loads(tfile.read_text())["targets"].keys() == t.keys()


def test_version_only_where_the_config_allows_and_discovery_can_be_off(tmp_path):
    (tmp_path / "on.json").write_text('{"discover_version": true, "wifi": {"hostname": "bench"}}')
    (tmp_path / "off.json").write_text('{"discover": false}')
    with Sim(state=tmp_path / "a", flags=["--config", str(tmp_path / "on.json")]) as a, \
            Sim(state=tmp_path / "b", flags=["--config", str(tmp_path / "off.json")]) as b:
        [board] = discover.discover([("127.0.0.1", a.tcp_port)])
        assert (board.name, board.agent, board.version) == ("bench", "0.5.0", None)  # no app: no version
        assert ask(b.tcp_port, discover.probe()) == []
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
        env.update(MPOTA_TARGETS=os.devnull, MPOTA_KEY=a.key.hex())
        r = subprocess.run([sys.executable, "-m", "mpota", "-t", "127.0.0.1:%d" % a.tcp_port, "push",
                            str(REPO / "examples" / "hello"), "--version", "1.2.3"], capture_output=True,
                           text=True, timeout=120, env=env, cwd=str(REPO))
        assert r.returncode == 0, r.stdout + r.stderr
        [board] = discover.discover([("127.0.0.1", a.tcp_port)])
        assert board.version.startswith("1.2.3"), board


def test_announce_at_boot_and_each_time_the_link_comes_up(tmp_path):
    port = free_range(1)
    (tmp_path / "c.json").write_text(json.dumps({"announce": "127.0.0.1:%d" % port,
                                                 "wifi": {"ssid": "x", "hostname": "ann"}}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.settimeout(60)
        with Sim(state=tmp_path / "d", flags=["--wifi", "--config", str(tmp_path / "c.json")]) as sim:
            b = discover.parse_answer(*s.recvfrom(2048))
            assert (b.id, b.name, b.port) == (sim.device_id, "ann", sim.tcp_port)
            mark = sim.mark()
            (sim.state / "wifi").write_text("down\n")
            sim.wait_for_line("wifi down", 30, since=mark)
            (sim.state / "wifi").write_text("up\n")
            sim.wait_for_line("mpota: ready", 60, since=mark)
            b = discover.parse_answer(*s.recvfrom(2048))
            assert b.id == sim.device_id


def test_listen_collects_announces(tmp_path):
    port = free_range(1)
    (tmp_path / "c.json").write_text(json.dumps({"announce": "127.0.0.1:%d" % port}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = os.devnull
    p = subprocess.Popen([sys.executable, "-m", "mpota", "discover", "--listen", "8", "--bind",
                          "127.0.0.1:%d" % port, "--json"], stdout=subprocess.PIPE, text=True, cwd=str(REPO),
                         env=env)
    try:
        time.sleep(1.5)  # (the listener binds)
        with Sim(state=tmp_path / "d", flags=["--config", str(tmp_path / "c.json")]) as sim:
            sim.wait_for_line("mpota: announced to 127.0.0.1:%d" % port, 30)
            dev = sim.device_id
        out = p.communicate(timeout=30)[0]
    finally:
        p.kill()
    ev = [json.loads(ln) for ln in out.splitlines()]
    assert [(e["id"], e["via"]) for e in ev if e["event"] == "board"] == [(dev, "announce")], out
    assert ev[-1]["count"] == 1


def test_config_refuses_a_bad_announce(micropython):
    from conftest import run_micropython

    r = run_micropython(["-c", "import sys\nsys.path.insert(0, %r)\n" % str(REPO / "device") + """
import mpota_config as config
for v in ("10.0.0.1:9", "10.0.0.1", ":9", "h:0", "h:x"):
    cfg, errors = config.load(path="/nonexistent", overrides={"announce": v})
    print(repr(cfg["announce"]), len(errors))
"""])
    assert r.stdout.split("\n")[:5] == ["'10.0.0.1:9' 0", "'' 1", "'' 1", "'' 1", "'' 1"], r.stdout + r.stderr


class FakeSocket:
    """A UDP socket that records what is sent and answers every probe to (BROADCAST, 8472) once."""

    def __init__(self, answer):
        self.sent, self.opts, self.queue, self.answer = [], [], [], answer

    def setsockopt(self, *a):
        self.opts.append(a)

    def sendto(self, data, addr):
        self.sent.append((data, addr))
        if addr == (discover.BROADCAST, 8472) and len(self.sent) == 1:
            self.queue.append((self.answer, ("192.168.1.40", 8472)))

    def settimeout(self, t):
        self.t = t

    def recvfrom(self, n):
        if self.queue:
            return self.queue.pop(0)
        time.sleep(self.t)
        raise socket.timeout


def test_broadcast_probe_goes_to_the_lan_broadcast_address_and_waits_its_time():
    ans = b'{"mpota": "here", "id": "E6614C311B6A7A2F", "name": "picow-1", "port": 8472, "version": "1.2.0"}'
    s = FakeSocket(ans)
    t0 = time.monotonic()
    [b] = discover.discover((), broadcast_port=8472, wait=1.2, sock=s)
    assert time.monotonic() - t0 >= 1.2  # a broadcast cannot know who is missing: the whole wait
    assert (socket.SOL_SOCKET, socket.SO_BROADCAST, 1) in s.opts
    assert {a for _, a in s.sent} == {(discover.BROADCAST, 8472)} and len(s.sent) == 3  # at 0, 0.5, 1.0 s
    assert all(d == discover.probe() and len(d) == discover.PROBE_SIZE for d, _ in s.sent)
    assert (b.id, b.name, b.host, b.port, b.version) == ("e6614c311b6a7a2f", "picow-1", "192.168.1.40", 8472, "1.2.0")


@pytest.mark.parametrize("data", [b"not json", b'{"mpota": "discover"}', b'{"mpota": "here", "id": "zz", "name": "a", '
                                  b'"port": 1}', b'{"mpota": "here", "id": "ab", "name": "a", "port": 70000}',
                                  b'{"mpota": "here", "id": "ab", "name": 3, "port": 1}', b"[1]"])
def test_answers_that_are_not_a_board_are_ignored(data):
    assert discover.parse_answer(data, ("10.0.0.1", 1)) is None


def test_to_addresses_and_port_lists():
    assert discover.parse_to("127.0.0.1:9000-9002,9005") == [("127.0.0.1", p) for p in (9000, 9001, 9002, 9005)]
    assert discover.parse_to("10.0.0.7") == [("10.0.0.7", 8472)]
    for bad in ("h:x", "h:9-1", "h:0", ":9"):
        with pytest.raises(discover.UsageError):
            discover.parse_to(bad)
