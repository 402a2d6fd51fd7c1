"""`mpota provision`, keygen and pubkey, up to the mpremote boundary: a fake
`mpremote` on PATH answers the version query and logs every call; there is
no serial port and no board."""
import json
import re
import shlex
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from mpota import cli as mpota_cli, deploy, provision, targets

FLASH = str(REPO / "host" / "flash.py")
PICO = "_machine='Raspberry Pi Pico W with RP2040'"
BOARDS = {
    "1.22": "(name='micropython', version=(1, 22, 2), %s, _mpy=4614)" % PICO,
    "1.23": "(name='micropython', version=(1, 23, 0, ''), %s, _mpy=4870)" % PICO,
    "1.27": "(name='micropython', version=(1, 27, 0, ''), %s, _mpy=4870)" % PICO,
    "unknown": "Traceback (most recent call last): ImportError: no module named 'machine'",
}
DEVICE_ID = "e6614c311b6a7a2f"

FAKE = """#!%s
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "exec" in sys.argv and "sys.implementation" in sys.argv[-1]:
    print(os.environ["FAKE_BOARD"])
    if "machine" not in os.environ["FAKE_BOARD"]:
        sys.exit(0)
    print("id=%s")
""" % (sys.executable, DEVICE_ID)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake mpremote first on PATH, a private config folder; returns (env, log path)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mp = bin_dir / "mpremote"
    mp.write_text(FAKE)
    mp.chmod(0o755)
    log = tmp_path / "mpremote.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env.update(PATH="%s%s%s" % (bin_dir, os.pathsep, env.get("PATH", "")), FAKE_LOG=str(log),
               XDG_CONFIG_HOME=str(tmp_path / "config"), FAKE_BOARD=BOARDS["1.23"])
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("MPOTA_")]:
        monkeypatch.delenv(k)
    return env, log


def calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def cli(env, *args, board="1.23"):
    return subprocess.run([sys.executable, FLASH] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=120, env=dict(env, FAKE_BOARD=BOARDS[board]), cwd=str(REPO))


def dry_run(env, *extra, board="1.23"):
    return cli(env, "--json", "provision", "--port", "/dev/ttyFAKE0", "--ssid", "home", "--name", "picow-1",
               "--dry-run", *extra, board=board)


def events(r):
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("board", ["1.23", "1.27"])
def test_dry_run_shows_every_step_and_changes_nothing(fake, board):
    env, log = fake
    r = dry_run(env, board=board)
    assert r.returncode == 0, r.stderr
    done = events(r)[-1]
    assert done["event"] == "done" and done["dry_run"]
    # only the read-only version query reached mpremote
    assert [c[2] for c in calls(log)] == ["exec"] and "sys.implementation" in calls(log)[0][-1]
    cmds = done["commands"]
    assert [c[3] for c in cmds] == ["exec", "exec", "cp", "reset"]
    assert all(c[1:3] == ["connect", "/dev/ttyFAKE0"] for c in cmds)
    # the file set: every device file once (main.py as source, the rest as .mpy), config, key
    names = done["files"]
    wanted = {deploy.deployed_name(p, True) for p in deploy.device_files(REPO / "device")}
    assert set(names) == wanted | {"mpota.json", "mpota_key.bin"} and len(names) == len(set(names))
    assert "main.py" in names and "mpota_agent.mpy" in names and "mpota_trust.json" not in names
    assert cmds[2][-1] == ":" and len(cmds[2]) == 4 + len(names) + 1
    assert done["target"] == {"host": "picow-1.local", "key_file": "keys/picow-1.key", "device_id": DEVICE_ID}
    text = " ".join(e.get("text", "") for e in events(r))
    assert "MicroPython %s.0 on Raspberry Pi Pico W" % board in text
    assert '"hostname": "picow-1"' in text and "********" in text
    # nothing written on the host either: no key, no targets file
    assert not (Path(env["XDG_CONFIG_HOME"]) / "mpota").exists()


@pytest.mark.parametrize("board,words", [
    ("1.22", ["1.22.2", "1.23 or newer", "vfs"]),
    ("unknown", ["cannot tell which MicroPython", "ImportError"]),
])
def test_old_or_unknown_board_is_refused_before_anything_is_written(fake, board, words):
    env, log = fake
    r = dry_run(env, board=board)
    assert r.returncode == 1
    err = events(r)[-1]
    assert err["event"] == "error" and err["error"] == "UsageError"
    for w in words:
        assert w in err["message"]
    assert "micropython.org" in err["hint"]
    assert len(calls(log)) == 1  # the query only
    r = cli(env, "provision", "--port", "/dev/ttyFAKE0", "--ssid", "home", "--name", "picow-1",
            "--password-file", os.devnull, board=board)  # not a dry run: refused all the same
    assert r.returncode == 1 and len(calls(log)) == 2 and "hint:" in r.stderr


def test_py_form_and_trust_store(fake, tmp_path):
    env, log = fake
    key = tmp_path / "sign.pem"
    r = cli(env, "keygen", key)
    assert r.returncode == 0, r.stderr
    r = dry_run(env, "--py", "--trust", key)
    assert r.returncode == 0, r.stderr
    done = events(r)[-1]
    assert "mpota_trust.json" in done["files"] and "mpota_agent.py" in done["files"]
    assert not any(n.endswith(".mpy") for n in done["files"])
    # .py deploy removes stale .mpy twins, and the agent's names before 0.4.0
    assert "mpota_agent.mpy" in done["commands"][1][-1]
    assert all('"%s.py"' % n in done["commands"][1][-1] and '"%s.mpy"' % n in done["commands"][1][-1]
               for n in ("agent", "config", "slots", "session", "proto"))


def test_unmatched_mpy_version_falls_back_to_py(fake):
    env, _ = fake
    old = BOARDS["1.23"].replace("_mpy=4870", "_mpy=%d" % (6 | 1 << 8 | 4 << 10))  # .mpy 6.1
    r = subprocess.run([sys.executable, FLASH, "--json", "provision", "--port", "/dev/ttyFAKE0", "--ssid", "h",
                        "--name", "p1", "--dry-run"], capture_output=True, text=True, timeout=120,
                       env=dict(env, FAKE_BOARD=old.replace("(1, 23, 0", "(1, 24, 0")), cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    assert "mpota_agent.py" in events(r)[-1]["files"] and "installing the agent as .py" in r.stdout


def test_bad_name_is_refused(fake):
    env, log = fake
    r = cli(env, "provision", "--port", "/dev/ttyFAKE0", "--ssid", "h", "--name", "pico w", "--dry-run")
    assert r.returncode == 1 and "hostname" in r.stderr and not calls(log)


def test_provision_writes_stages_and_records(fake, tmp_path):
    """The whole flow with the fake mpremote and no serial port: the key is made once
    (0600) and reused, the staged files hold what the device reads, the target is
    recorded with its device id; running it again changes nothing but the files."""
    env, log = fake
    seen = {}

    def waiter(port, seconds, say):
        # the staging folder is gone by now: the cp call names what was copied
        return "mpota: ready tcp=192.168.1.77:8472 udp=off auth=on"

    real_run = provision.Runner.run

    def run(self, *args, **kw):
        if args[0] == "cp":
            for p in args[1:-1]:
                seen[Path(p).name] = Path(p).read_bytes()
        return real_run(self, *args, **kw)

    provision.Runner.run = run
    try:
        o = provision.Options(port="/dev/ttyFAKE0", name="picow-1", ssid="home", password="s3cret",
                              country="gb")
        r = provision.provision(o, lambda line: None, waiter=waiter)
        r2 = provision.provision(o, lambda line: None, waiter=waiter)
    finally:
        provision.Runner.run = real_run
    key = Path(env["XDG_CONFIG_HOME"]) / "mpota" / "keys" / "picow-1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert seen["mpota_key.bin"] == bytes.fromhex(key.read_text().strip())
    cfg = json.loads(seen["mpota.json"])
    assert cfg["wifi"] == {"ssid": "home", "password": "s3cret", "hostname": "picow-1", "country": "GB"}
    assert cfg["auth"] is True
    assert seen["mpota_agent.mpy"][:1] == b"M" and seen["main.py"] == (REPO / "device" / "main.py").read_bytes()
    assert [c[2] for c in calls(log)] == ["exec", "exec", "cp", "reset"] * 2
    assert r.ready.startswith("mpota: ready") and r.target == r2.target
    t = targets.resolve("picow-1")
    assert (t.host, t.device_id, t.key) == ("picow-1.local", DEVICE_ID, seen["mpota_key.bin"])
    assert r.targets_file.read_text().count("[targets.picow-1]") == 1


def test_keygen_and_pubkey_never_show_the_private_key(fake, tmp_path):
    env, _ = fake
    r = cli(env, "--json", "keygen")
    assert r.returncode == 0, r.stderr
    path = Path(env["XDG_CONFIG_HOME"]) / "mpota" / "signing-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    made = events(r)[0]
    assert made["file"] == str(path) and len(made["key_id"]) == 64
    assert "PRIVATE" not in r.stdout + r.stderr
    assert cli(env, "keygen").returncode == 1  # never overwritten
    r = cli(env, "pubkey", "-o", tmp_path / "pub.pem")
    assert r.returncode == 0 and made["key_id"] in r.stdout and "PRIVATE" not in r.stdout
    assert "PUBLIC KEY" in (tmp_path / "pub.pem").read_text()
    r = cli(env, "--json", "pubkey", tmp_path / "pub.pem")  # the public half gives the same id
    assert events(r)[0]["key_id"] == made["key_id"]


def _readme_commands():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("mpota "):
                    yield part


def test_every_mpota_command_of_the_readme_parses(capsys):
    found = list(_readme_commands())
    assert any(c.startswith("mpota provision") for c in found) and any("--sign-key" in c for c in found)
    for line in found:
        argv = shlex.split(line)[1:]
        try:
            args = mpota_cli.parse_args(argv)
        except SystemExit as e:  # --version, --help
            assert e.code == 0, line
            continue
        assert args.command in mpota_cli.BY_NAME, line
