"""Targets that explain themselves: unknown names fail fast (never a DNS query),
the config folder honours XDG_CONFIG_HOME, the file records device ids, and
`mpota targets` lists it all. Also the signing options of push and build."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from mpota import cli, images, targets
from mpota.errors import UsageError

FLASH = str(REPO / "host" / "flash.py")
FILE = '''# my devices
[targets.kitchen]   # by the window
host = "192.168.1.50"
device_id = "E6614C311B6A7A2F"

[targets.shed]
host = "shed.local"

[groups]
outside = ["shed"]
'''


def run(env, *args):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    e.update(env)
    return subprocess.run([sys.executable, FLASH] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=60, env=e, cwd=str(REPO))


@pytest.mark.parametrize("spec,host", [
    ("10.0.0.7", True), ("picow-1.local", True), ("pico:8472", True), ("[::1]", True), ("fe80::1", True),
    ("localhost", True), ("localhost:9000", True), ("picoo", False), ("picow-1", False), ("kitchen2", False),
])
def test_only_host_like_specs_are_hosts(spec, host):
    assert targets.looks_like_host(spec) is host


def test_unknown_name_lists_known_and_suggests(tmp_path, monkeypatch):
    f = tmp_path / "t.toml"
    f.write_text(FILE)

    def no_dns(*a, **k):
        raise AssertionError("a DNS query for %r" % (a,))

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(targets.UnknownTarget) as e:
        targets.resolve("kitchn", str(f), env={})
    assert e.value.message == "no target named 'kitchn'; known: pico, sim, kitchen, shed, outside"
    assert "did you mean kitchen?" in e.value.hint and e.value.exit_code == 1
    with pytest.raises(targets.UnknownTarget):
        targets.expand("shed,picoo", str(f), env={})  # a fleet fails before any device
    assert targets.expand("outside,kitchen", str(f), env={}) == ["shed", "kitchen"]


def test_cli_typo_exits_1_with_the_list_and_the_targets_command(tmp_path):
    r = run({"MPOTA_TARGETS": os.devnull}, "-t", "picoo", "--connect-timeout", "1", "status")
    assert r.returncode == 1
    assert "no target named 'picoo'; known: pico, sim" in r.stderr
    assert "did you mean pico?" in r.stderr and "`flash.py targets`" in r.stderr
    assert "resolve" not in r.stderr


def test_xdg_config_home_and_the_old_location(tmp_path):
    xdg, home = tmp_path / "xdg", tmp_path / "home"
    env = {"XDG_CONFIG_HOME": str(xdg), "HOME": str(home)}
    assert targets.config_dir(env) == xdg / "mpota"
    assert targets.targets_path(None, env) == xdg / "mpota" / "targets.toml"
    assert targets.targets_path("x.toml", env).name == "x.toml"
    assert targets.targets_path(None, dict(env, MPOTA_TARGETS="y.toml")).name == "y.toml"
    # A file only at the old place (~/.config/mpota) is still read.
    r = run(dict(env, HOME=str(home)), "targets")
    assert "%s (absent)" % (xdg / "mpota" / "targets.toml") in r.stdout
    old = home / ".config" / "mpota" / "targets.toml"
    old.parent.mkdir(parents=True)
    old.write_text(FILE)
    r = run(env, "--json", "targets")
    assert r.returncode == 0, r.stderr
    rows = {e["name"]: e for e in map(json.loads, r.stdout.splitlines()) if e.get("event") == "target"}
    assert rows["kitchen"]["device_id"] == "E6614C311B6A7A2F" and rows["pico"]["source"] == "built-in"
    (xdg / "mpota").mkdir(parents=True)
    (xdg / "mpota" / "targets.toml").write_text('[targets.new]\nhost = "n.local"\n')
    r = run(env, "targets")
    assert "new" in r.stdout and "kitchen" not in r.stdout and str(xdg) in r.stdout


def test_device_id_is_read_and_shown(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(FILE)
    t = targets.resolve("kitchen", str(f), env={})
    assert t.device_id == "e6614c311b6a7a2f" and t.describe()["device_id"] == t.device_id
    assert targets.resolve("shed", str(f), env={}).device_id is None
    r = run({}, "--targets", f, "targets")
    assert "device_id E6614C311B6A7A2F" in r.stdout and str(f) in r.stdout
    f.write_text('[targets.x]\nhost = "x.local"\ndevice_id = "not hex"\n')
    with pytest.raises(UsageError, match="device_id"):
        targets.resolve("x", str(f), env={})


def test_record_replaces_one_table_and_keeps_the_rest(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(FILE)
    targets.record(f, "kitchen", {"host": "kitchen.local", "key_file": "keys/kitchen.key", "device_id": "ab12"})
    targets.record(f, "new", {"host": "new.local", "device_id": None})
    text = f.read_text()
    assert text.startswith("# my devices\n") and text.count("[targets.kitchen]") == 1
    assert "192.168.1.50" not in text and 'host = "shed.local"' in text and "outside" in text
    assert targets.resolve("new", str(f), env={}).host == "new.local"
    k = targets.resolve("kitchen", str(f), env={"MPOTA_KEY": "11" * 32})
    assert (k.host, k.device_id, k.key_file) == ("kitchen.local", "ab12", str(tmp_path / "keys/kitchen.key"))
    with pytest.raises(UsageError):
        targets.record(f, "outside", {"host": "o.local"})  # a group's name
    with pytest.raises(UsageError):
        targets.record(f, "bad name", {"host": "o.local"})
    missing = tmp_path / "sub" / "new.toml"
    targets.record(missing, "a", {"host": "a.local"})
    assert targets.load_targets(missing) == {"a": {"host": "a.local"}}


def test_record_never_replaces_a_device_file(tmp_path):
    """MPOTA_TARGETS=/dev/null (as tests set it) must not turn /dev/null into a file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        targets.record(fifo, "a", {"host": "a.local"})
    assert fifo.is_fifo()


def test_push_and_build_take_the_security_counter(tmp_path):
    a = cli.parse_args(["push", "examples/hello", "--sign-key", "k.pem", "--security-counter", "7"])
    assert (a.sign_key, a.security_counter) == ("k.pem", 7)
    with pytest.raises(SystemExit):
        cli.parse_args(["build", "examples/hello", "--security-counter", "-1"])
    img = images.load(str(REPO / "examples" / "hello"), "1.0.0", security_counter=3)
    assert images.inspect_image(img.data)["security_counter"] == 3
    with pytest.raises(UsageError, match="already"):
        images.load(str(tmp_path / "x.img"), sign_key="k.pem")
