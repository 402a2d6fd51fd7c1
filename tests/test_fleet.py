"""host/flash.py over several devices at once (-t GROUP, -t a -t b, -t a,b).

Two simulators on free loopback ports (one with auth and its own key file, one
--no-auth) and a target that nothing listens on, grouped in a temporary
targets file. Every run is the real CLI as a subprocess, checked by its exit
code and its --json events.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import INTERRUPTIBLE, REPO, free_port, until_uploading
from mpota import cli as mpota_cli, targets
from mpota.fleet import fleet_exit_code
from mpota.errors import UsageError
from simproc import Sim

FLASH = str(REPO / "host" / "flash.py")
HELLO = REPO / "examples" / "hello"
VERSION = "7.1.0"


# --- no device needed: expansion, argv, the exit-code rule ----------------------------

def test_expand_groups_lists_and_duplicates(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('[targets.a]\nhost = "10.0.0.1"\n\n'
                 '[groups]\ngh = ["a", "10.0.0.7:8472"]\nall = ["gh", "b.local", "a"]\n')
    assert targets.expand("gh", str(f), env={}) == ["a", "10.0.0.7:8472"]
    assert targets.expand("all,sim", str(f), env={}) == ["a", "10.0.0.7:8472", "b.local", "sim"]
    assert targets.expand("a", str(f), env={}) == ["a"]
    assert targets.expand("[fe80::1]:8472", None, env={"MPOTA_TARGETS": os.devnull}) == ["[fe80::1]:8472"]


@pytest.mark.parametrize("text", ['[targets.a]\nhost = "h"\n[groups]\na = ["x"]\n',  # name clash
                                  '[groups]\npico = ["x"]\n',                       # clash with a built-in
                                  '[groups]\ng = []\n',                             # empty
                                  '[groups]\ng = "a,b"\n',                          # not a list
                                  '[groups]\ng = ["h", "g"]\n'])                    # contains itself
def test_bad_groups_are_usage_errors(tmp_path, text):
    f = tmp_path / "t.toml"
    f.write_text(text)
    with pytest.raises(UsageError):
        targets.expand("g", str(f), env={})


def test_repeated_and_comma_targets_join():
    assert mpota_cli.parse_args(["-t", "a", "status", "-t", "b,c"]).target == "a,b,c"
    assert mpota_cli.parse_args(["-t", "a", "-t", "b", "x.img"]).target == "a,b"
    a = mpota_cli.parse_args(["--parallel", "2", "status"])
    assert a.parallel == 2 and a.target == os.environ.get("MPOTA_TARGET", "pico")


def test_targets_command_lists_groups(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('[targets.a]\nhost = "10.0.0.1"\n\n[groups]\ngh = ["a", "10.0.0.7"]\n')
    r = cli("--targets", f, "--json", "targets")
    assert r.returncode == 0, r.stderr
    evs = events(r)
    assert {"event": "group", "name": "gh", "members": ["a", "10.0.0.7"]} in evs
    assert any(e["event"] == "target" and e["name"] == "a" for e in evs)


def test_fleet_exit_code_is_the_highest():
    assert fleet_exit_code([0, 0]) == 0
    assert fleet_exit_code([0, 2, 6, 3]) == 6
    assert fleet_exit_code([2, 130, 5]) == 130


# --- against simulators -----------------------------------------------------------------


def cli(*args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, FLASH] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(REPO))


def events(r):
    return [json.loads(line) for line in r.stdout.splitlines()]


def by_target(evs, name):
    return {e["target"]: e for e in evs if e["event"] == name}


def targets_toml(port_a, port_b):
    """Target a: auth on, its own key file (next to the targets file); b: auth off."""
    return ('[targets.a]\nhost = "127.0.0.1"\nport = %d\nkey_file = "a.key"\n\n'
            '[targets.b]\nhost = "127.0.0.1"\nport = %d\n' % (port_a, port_b))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    # Start both, then wait: the two boots overlap.
    sims = [Sim(state=d / "a", ready=False), Sim(state=d / "b", flags=["--no-auth"], ready=False)]
    try:
        for s in sims:
            s.wait_ready(60)
        a, b = sims
        (d / "a.key").write_text(a.key.hex())
        dead = "127.0.0.1:%d" % free_port()  # nothing listens there
        tf = d / "targets.toml"
        tf.write_text(targets_toml(a.tcp_port, b.tcp_port) + '\n[groups]\nlab = ["a", "b", "%s"]\n' % dead)
        img = d / "hello.img"
        r = cli("build", HELLO, "--version", VERSION, "-o", img, "--json")
        assert r.returncode == 0, r.stderr
        yield {"a": a, "b": b, "dead": dead, "env": {"MPOTA_TARGETS": str(tf)}, "img": img, "dir": d}
    finally:
        for s in sims:
            s.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_push_to_a_group(fleet):
    dead = fleet["dead"]
    r = cli("-t", "lab", "--json", "--connect-timeout", "2", "push", fleet["img"], "--wait", "40",
            env_extra=fleet["env"])
    evs = events(r)
    assert all("target" in e for e in evs), [e for e in evs if "target" not in e]
    # The unreachable device fails on its own (exit 2) and the other two finish.
    err = by_target(evs, "error")
    assert set(err) == {dead} and err[dead]["exit_code"] == 2 and err[dead]["error"] == "Unreachable"
    done = by_target(evs, "done")
    assert set(done) == {"a", "b"}, r.stdout + r.stderr
    for name in ("a", "b"):
        assert done[name]["ok"] and done[name]["state"] == "confirmed"
        assert done[name]["version"] == VERSION + "+0"
    assert by_target(evs, "target")["a"]["key"].startswith("key_file")  # its own key file
    summary = evs[-1]
    assert summary["event"] == "summary" and summary["target"] == "lab"
    rows = {row["target"]: row for row in summary["results"]}
    assert [rows[n]["exit_code"] for n in ("a", "b", dead)] == [0, 0, 2]
    # 0 if all succeeded, else the highest device code.
    assert r.returncode == summary["exit_code"] == 2
    assert fleet["a"].key.hex() not in r.stdout + r.stderr

    # A concurrent status over the group: both live devices run the new version, confirmed.
    r = cli("-t", "lab", "--json", "--connect-timeout", "2", "status", env_extra=fleet["env"])
    assert r.returncode == 2, r.stdout + r.stderr
    st = by_target(events(r), "status")
    assert set(st) == {"a", "b"}
    for name in ("a", "b"):
        slot = st[name]["slots"][st[name]["running"]]
        assert slot["version"] == VERSION + "+0" and slot["state"] == "confirmed"
        assert not st[name]["trial"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_repeated_targets_all_reachable_exit_0(fleet):
    r = cli("-t", "a", "-t", "b", "--json", "ping", env_extra=fleet["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    evs = events(r)
    assert set(by_target(evs, "pong")) == {"a", "b"}
    assert evs[-1]["event"] == "summary" and evs[-1]["exit_code"] == 0
    # Human output: every line names its device, then the summary table.
    r = cli("-t", "a,b", "status", env_extra=fleet["env"])
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("a: ") for line in r.stdout.splitlines())
    assert "2 of 2 devices ok" in r.stdout
    # Commands that touch one device only refuse a list.
    r = cli("-t", "a,b", "read", "--slot", "a", env_extra=fleet["env"])
    assert r.returncode == 1 and "one device" in r.stderr


from linkproxy import ProxyThread  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_stops_all_commits_nothing_and_each_resumes(fleet, tmp_path):
    app = tmp_path / "big"
    app.mkdir()
    (app / "main.py").write_text("import asyncio\nimport mpota\n\nasync def main():\n    mpota.confirm()\n"
                                 "    while True:\n        await asyncio.sleep(1)\n")
    (app / "blob.py").write_text("DATA = %r\n" % os.urandom(60_000).hex())  # incompressible filler
    img = tmp_path / "big.img"
    r = cli("build", app, "--version", "8.0.0", "-o", img)
    assert r.returncode == 0, r.stderr
    # Both links stop forwarding after 50 kB: the two uploads hang mid-way.
    # two faulty connections each: push reads status first (its no-op check), far below 50 kB
    pxs = [ProxyThread(fleet[n].tcp_port, stall_after=50_000, cuts=2) for n in ("a", "b")]
    tf = fleet["dir"] / "slow.toml"
    tf.write_text(targets_toml(pxs[0].port, pxs[1].port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = str(tf)
    p = subprocess.Popen([sys.executable, FLASH, "-t", "a,b", "--json", "push", str(img), "--timeout", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **INTERRUPTIBLE)
    try:
        seen = until_uploading(p, targets=2)  # both uploads under way
        moving = {e["target"] for e in seen if e["event"] == "progress" and e["done"] > 0}
        assert moving == {"a", "b"}, seen
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        for px in pxs:
            px.close()
    assert p.returncode == 130, err
    evs = seen + [json.loads(line) for line in out.splitlines()]
    assert not any(e["event"] == "committed" for e in evs)
    errs = by_target(evs, "error")
    assert set(errs) == {"a", "b"} and all(e["exit_code"] == 130 for e in errs.values())
    assert evs[-1]["event"] == "summary" and evs[-1]["exit_code"] == 130
    # Each device kept its bytes: the same push, straight to them, resumes and completes.
    r = cli("-t", "a,b", "--json", "push", img, env_extra=fleet["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    evs = events(r)
    begin = by_target(evs, "begin")
    assert all(begin[n]["resumed"] and begin[n]["offset"] > 0 for n in ("a", "b")), begin
    assert all(d["state"] == "confirmed" for d in by_target(evs, "done").values())
