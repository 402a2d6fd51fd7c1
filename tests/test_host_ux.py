"""Everyday host-tool traps (issue 17, items 6-9 and 11, and the key-file and
targets-file modes): each test fails on the code before its fix. Unit-level
where the host alone decides; against the simulator (loopback only) where the
device's answer matters."""
import asyncio
import json
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest


from conftest import REPO, free_port
from mpota import commands, deploy, errors, images, push as mpota_push, targets
from mpota.errors import device_error
from simproc import Sim

FLASH = str(REPO / "host" / "flash.py")


def run_cli(*args, env_extra=None, cwd=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = os.devnull
    env.update(env_extra or {})
    return subprocess.run([sys.executable, FLASH] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(cwd or REPO))


def _ctx(command="push", spec="s1"):
    return SimpleNamespace(prog="mpota", spec=spec, command=command, args=SimpleNamespace())


# --- 9. the anti-rollback refusal names --security-counter -----------------------------

def test_anti_rollback_hint_names_security_counter_not_allow_downgrade():
    err = device_error("version_refused", "security counter 1 is below this device's floor 3 "
                       "(anti-rollback: no flag allows it)", op="commit")
    hint = commands.with_cli_hint(err, _ctx()).hint
    assert "--security-counter N" in hint and "at least 3" in hint
    assert "push it with --allow-downgrade" not in hint
    # an older version (no counter involved) still gets the downgrade flag
    err = device_error("version_refused", "version 1.0.0 is older than the active 2.0.0", op="begin")
    assert "--allow-downgrade" in commands.with_cli_hint(err, _ctx()).hint


# --- 6. pushing the image that already runs is a no-op --------------------------------

@pytest.fixture
def sim(tmp_path):
    s = Sim(state=tmp_path / "dev")
    yield s
    s.stop()


def _status(sim):
    r = run_cli("-t", "127.0.0.1:%d" % sim.tcp_port, "--json", "status", env_extra={"MPOTA_KEY": sim.key.hex()})
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if '"status"' in line][-1]


def _app(folder, text="hello"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text("import mpota\nMSG = %r\n\ndef main():\n    mpota.confirm()\n" % text)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_pushing_the_running_image_again_changes_nothing_and_keeps_the_rollback_copy(sim, tmp_path):
    key = {"MPOTA_KEY": sim.key.hex()}
    t = ["-t", "127.0.0.1:%d" % sim.tcp_port]
    imgs = {}
    for v in ("1.0.0", "2.0.0"):
        imgs[v] = tmp_path / ("v%s.img" % v)
        r = run_cli("build", _app(tmp_path / "app", "v" + v), "--version", v, "-o", imgs[v])
        assert r.returncode == 0, r.stderr
        r = run_cli(*t, "push", imgs[v], env_extra=key)
        assert r.returncode == 0, r.stdout + r.stderr
    before = _status(sim)
    run = before["running"]
    other = "a" if run == "b" else "b"
    assert before["slots"][other]["version"] == "1.0.0+0"

    r = run_cli(*t, "push", imgs["2.0.0"], env_extra=key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2.0.0+0 already runs; nothing to do" in r.stdout
    assert "uploading" not in r.stdout and "reset" not in r.stdout.replace("--force reinstalls", "")
    after = _status(sim)
    assert after["slots"] == before["slots"]          # the rollback copy (1.0.0) is still there
    assert after["uptime_ms"] > before["uptime_ms"]   # and the device was not reset

    # the same version number with other content: refused, naming both hashes
    r = run_cli("build", _app(tmp_path / "app", "other"), "--version", "2.0.0", "-o", tmp_path / "x.img")
    assert r.returncode == 0, r.stderr
    r = run_cli(*t, "push", tmp_path / "x.img", env_extra=key)
    assert r.returncode == 5, r.stdout + r.stderr
    dev_sha = before["slots"][run]["sha256"][:12]
    assert "already runs" in r.stderr and dev_sha in r.stderr and "--force" in r.stderr
    assert _status(sim)["slots"] == before["slots"]

    # --force reinstalls
    r = run_cli(*t, "--json", "push", tmp_path / "x.img", "--force", env_extra=key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"event": "begin"' in r.stdout and _status(sim)["slots"][other]["version"] == "2.0.0+0"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_library_push_is_a_no_op_for_the_running_image_unless_forced(sim, tmp_path):
    tgt = targets.Target(name="sim", host="127.0.0.1", port=sim.tcp_port, key=sim.key)
    img = images.load(str(_app(tmp_path / "app")), "1.0.0")
    events = []
    first = asyncio.run(mpota_push.push(tgt, img))
    assert not first.unchanged and first.state == "confirmed"
    again = asyncio.run(mpota_push.push(tgt, img, on_event=lambda name, **f: events.append(name)))
    assert again.unchanged and again.slot == first.slot and events == ["unchanged", "done"]
    forced = asyncio.run(mpota_push.push(tgt, img, force=True))
    assert not forced.unchanged and forced.slot != first.slot
    other = images.load(str(_app(tmp_path / "app2", "changed")), "1.0.0")
    with pytest.raises(errors.VersionClash) as e:
        asyncio.run(mpota_push.push(tgt, other))
    assert other.sha256[:12] in e.value.message


# --- 8. confirm refuses a crashed trial without --force ---------------------------------

@pytest.mark.slow
@pytest.mark.timeout(240)
def test_confirm_refuses_a_crashed_trial_unless_forced(sim, tmp_path):
    key = {"MPOTA_KEY": sim.key.hex()}
    t = ["-t", "127.0.0.1:%d" % sim.tcp_port]
    assert run_cli(*t, "push", _app(tmp_path / "good"), "--version", "1.0.0", env_extra=key).returncode == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "main.py").write_text("def main():\n    raise ValueError('broken on purpose')\n")
    r = run_cli(*t, "push", bad, "--version", "2.0.0", env_extra=key)
    assert r.returncode == 6, r.stdout + r.stderr
    st = _status(sim)
    assert st["trial"] and st["app"]["state"] == "crashed"

    r = run_cli(*t, "confirm", env_extra=key)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "crashed" in r.stderr and "broken on purpose" in r.stderr and "--force" in r.stderr
    assert _status(sim)["slots"][st["running"]]["state"] == "trial"   # nothing confirmed

    # a push meanwhile is refused by the device; its hint must not recommend confirming
    r = run_cli(*t, "push", _app(tmp_path / "good3", "v3"), "--version", "3.0.0", env_extra=key)
    assert r.returncode == 5 and "incorrect_state" in r.stderr, r.stdout + r.stderr
    hint = r.stderr.split("hint:", 1)[1]
    assert "crashed" in hint and "rollback" in hint and "confirm`" not in hint, hint

    r = run_cli(*t, "confirm", "--force", env_extra=key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _status(sim)["slots"][st["running"]]["state"] == "confirmed"


# --- 7. every file of the app folder goes into the image; junk is named --------------

def _image_files(data: bytes) -> list:
    from mpota.codec.mpota_mcuboot import verify

    info = verify(data)
    return sorted(images.littlefs_files(data[info["hdr_size"]:info["hdr_size"] + info["img_size"]]))


def test_data_files_and_subfolders_go_into_the_image_and_junk_is_reported(tmp_path):
    app = tmp_path / "app"
    for rel, data in {"main.py": b"def main():\n    pass\n", "settings.json": b'{"a": 1}\n',
                      "blob.bin": os.urandom(250_000), "lib/util.py": b"X = 1\n", "lib/fonts/f.bin": b"\0" * 10,
                      "config.json": b"{}\n",   # a data file named like an agent module imports nothing
                      "VERSION": b"1.0.0\n", ".git/HEAD": b"ref\n", "__pycache__/main.cpython-311.pyc": b"x",
                      "lib/__pycache__/u.pyc": b"x", ".DS_Store": b"x", "main.py~": b"x", "#main.py#": b"x",
                      ".main.py.swp": b"x", "old.pyc": b"x"}.items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_bytes(data)
    img = images.load(str(app))
    want = ["VERSION", "blob.bin", "config.json", "lib/fonts/f.bin", "lib/util.py", "main.py", "settings.json"]
    assert _image_files(img.data) == want
    assert sorted(img.files) == want
    assert sorted(img.excluded) == sorted([".git/", "__pycache__/", "lib/__pycache__/", ".DS_Store",
                                           "main.py~", "#main.py#", ".main.py.swp", "old.pyc"])

    r = run_cli("build", app, "-o", tmp_path / "a.img")
    assert r.returncode == 0, r.stderr
    assert "7 files" in r.stdout and "in an image of" in r.stdout
    assert "excluded (junk): " in r.stdout and ".git/" in r.stdout and "main.py~" in r.stdout
    r = run_cli("--json", "build", app, "-o", tmp_path / "a.img")
    built = json.loads(r.stdout.splitlines()[-1])
    assert sorted(built["files"]) == want
    assert "old.pyc" in built["excluded"] and built["file_bytes"] > 250_000


def test_a_module_named_like_the_agent_is_still_refused_with_data_files_beside_it(tmp_path):
    name = sorted(deploy.agent_modules() - {"main"})[0]  # whatever the device files are called
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("def main():\n    pass\n")
    (app / (name + ".txt")).write_text("data\n")
    images.load(str(app), "1.0.0")        # a data file: fine
    (app / (name + ".py")).write_text("X = 1\n")
    with pytest.raises(errors.UsageError, match=name):
        images.load(str(app), "1.0.0")


# --- the targets file is private; an exposed key file is warned about -------------------

def test_targets_file_is_written_0600_in_a_0700_folder(tmp_path):
    path = tmp_path / "cfg" / "mpota" / "targets.toml"
    targets.record(path, "s1", {"host": "127.0.0.1", "port": 8472})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)  # an older file, rewritten: private too
    targets.record(path, "s2", {"host": "127.0.0.2"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(targets.load_targets(path)) == {"s1", "s2"}


def test_a_key_file_readable_by_others_is_warned_about_once(tmp_path, capsys):
    key = tmp_path / "dev.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    targets.read_key_file(str(key))
    assert capsys.readouterr().err == ""
    key.chmod(0o644)
    targets.read_key_file(str(key))
    targets.read_key_file(str(key))
    err = capsys.readouterr().err
    assert err == "WARNING: key file %s is readable by others (mode 0644); chmod 600 %s\n" % (key, key)
    # the CLI: on stderr, and the key is still used (the command goes on to connect)
    r = run_cli("-t", "127.0.0.1:%d" % free_port(), "--key-file", key, "--connect-timeout", "1", "ping")
    assert r.returncode == 2 and r.stderr.count("WARNING: key file") == 1, r.stderr


# --- 11a. a typo in the targets file is an error with a suggestion ------------------------

@pytest.mark.parametrize("line, bad, good", [('keyfile = "k.key"', "keyfile", "key_file"),
                                             ("prot = 9000", "prot", "port")])
def test_unknown_key_in_a_target_is_an_error_naming_line_and_suggestion(tmp_path, line, bad, good):
    f = tmp_path / "targets.toml"
    f.write_text('# mine\n[targets.x]\nhost = "127.0.0.1"\n%s\n' % line)
    r = run_cli("-t", "x", "ping", env_extra={"MPOTA_TARGETS": str(f)})
    assert r.returncode == 1, r.stderr
    assert "unknown key %r in target 'x' (%s line 4): did you mean %r?" % (bad, f, good) in r.stderr
    f.write_text('sign_kee = "a.pem"\n[targets.x]\nhost = "127.0.0.1"\n')
    r = run_cli("-t", "x", "ping", env_extra={"MPOTA_TARGETS": str(f)})
    assert r.returncode == 1 and "unknown key 'sign_kee'" in r.stderr and "'sign_key'" in r.stderr, r.stderr


# --- 11e. a default signing key: the target's sign_key, the file's, --sign-key over both ----

def test_sign_key_from_the_targets_file_signs_folder_builds(tmp_path):
    for name in ("default.pem", "s1.pem", "cli.pem"):
        assert run_cli("keygen", tmp_path / name).returncode == 0
    f = tmp_path / "targets.toml"
    f.write_text('sign_key = "default.pem"\n\n[targets.s1]\nhost = "127.0.0.1"\nport = %d\nsign_key = "s1.pem"\n\n'
                 '[targets.s2]\nhost = "127.0.0.1"\nport = %d\n' % (free_port(), free_port()))
    assert targets.resolve("s1", str(f)).sign_key == str(tmp_path / "s1.pem")
    assert targets.resolve("s2", str(f)).sign_key == str(tmp_path / "default.pem")
    assert targets.resolve("127.0.0.3", str(f)).sign_key == str(tmp_path / "default.pem")
    env = {"MPOTA_TARGETS": str(f)}
    app = _app(tmp_path / "app")

    r = run_cli("--json", "build", app, "--version", "1.0.0", "-o", tmp_path / "a.img", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["signed_with"] == str(tmp_path / "default.pem")
    assert images.inspect_image((tmp_path / "a.img").read_bytes(), tmp_path / "default.pem")["signature_ok"]
    r = run_cli("build", app, "--version", "1.0.0", "-o", tmp_path / "b.img", "--sign-key", tmp_path / "cli.pem",
                env_extra=env)
    assert r.returncode == 0 and "signed with %s" % (tmp_path / "cli.pem") in r.stdout, r.stdout + r.stderr

    # push picks the target's key (nothing listens there: the image line comes first)
    for spec, key in (("s1", "s1.pem"), ("s2", "default.pem")):
        r = run_cli("-t", spec, "--json", "--connect-timeout", "1", "push", app, "--version", "1.0.0",
                    env_extra=env)
        image = [json.loads(x) for x in r.stdout.splitlines() if '"image"' in x][0]
        assert image["signed_with"] == str(tmp_path / key), r.stdout
    # a prebuilt image file is pushed as it is: the default key does not apply to it
    r = run_cli("-t", "s1", "--json", "--connect-timeout", "1", "push", tmp_path / "a.img", env_extra=env)
    assert r.returncode == 2 and "signing" not in r.stderr, r.stdout + r.stderr


# --- 11b. a mistyped command is not a file to push ------------------------------------------

def test_a_mistyped_command_is_named_not_pushed(tmp_path):
    r = run_cli("-t", "127.0.0.1:1", "statsu", cwd=tmp_path)
    assert r.returncode == 1
    assert "unknown command 'statsu'; did you mean status?" in r.stderr, r.stderr
    assert "cannot read" not in r.stderr
    # an existing path of that spelling is still pushed (here: refused as a folder without main.py)
    (tmp_path / "statsu").mkdir()
    r = run_cli("-t", "127.0.0.1:1", "statsu", cwd=tmp_path)
    assert r.returncode == 1 and "main.py" in r.stderr and "unknown command" not in r.stderr, r.stderr


# --- 11c. provision --dry-run without a board; 11f. --serial, not --port ----------------------

@pytest.fixture
def no_board(tmp_path):
    """A fake mpremote that finds no board, a private config folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mp = bin_dir / "mpremote"
    mp.write_text("#!%s\nimport sys\nprint('mpremote: failed to access /dev/ttyACM0 (it may be in use "
                  "by another program)', file=sys.stderr)\nsys.exit(1)\n" % sys.executable)
    mp.chmod(0o755)
    return {"PATH": "%s%s%s" % (bin_dir, os.pathsep, os.environ["PATH"]),
            "XDG_CONFIG_HOME": str(tmp_path / "config"), "MPOTA_TARGETS": str(tmp_path / "t.toml")}


@pytest.mark.parametrize("serial", [[], ["--serial", "/dev/ttyACM0"]])
def test_provision_dry_run_works_without_a_board(tmp_path, no_board, serial):
    r = run_cli("provision", *serial, "--ssid", "home", "--name", "picow-1", "--dry-run", env_extra=no_board)
    assert r.returncode == 0, r.stdout + r.stderr
    for step in ("1. ask the board", "2. stage the files", "3. remove the other form", "4. record the target",
                 "mpremote", "cp", "dry run: nothing was changed"):
        assert step in r.stdout, (step, r.stdout)
    assert "not run (no board)" in r.stdout and "1.23 or newer" in r.stdout
    assert not (tmp_path / "config").exists() and not (tmp_path / "t.toml").exists()


def test_provision_takes_serial_and_the_old_port_spelling_with_a_deprecation(tmp_path, no_board):
    r = run_cli("provision", "--serial", "/dev/ttyACM0", "--ssid", "home", "--name", "picow-1",
                "--password-file", os.devnull, env_extra=no_board)
    assert r.returncode == 2 and "failed to access" in r.stderr, r.stderr   # --serial reached mpremote
    r = run_cli("provision", "--port", "/dev/ttyACM0", "--ssid", "home", "--name", "picow-1", "--dry-run",
                env_extra=no_board)
    assert r.returncode == 0 and "deprecated: use --serial" in r.stderr, r.stderr
    assert "connect /dev/ttyACM0" in r.stdout
    r = run_cli("provision", "--ssid", "home", "--name", "picow-1", "--password-file", os.devnull,
                env_extra=no_board)
    assert r.returncode == 1 and "--serial" in r.stderr, r.stderr
    help_text = run_cli("provision", "--help").stdout
    assert "--serial SERIAL" in help_text and "--port" not in help_text


# --- 11d. an unresolved .local name: what mDNS needs, and the IP with --key-file --------------

def test_unresolved_local_name_explains_mdns_and_the_ip_fallback(monkeypatch):
    import socket

    from mpota.client import Client

    def no_mdns(*a, **k):  # no lookup leaves this machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_mdns)
    with pytest.raises(errors.Unreachable) as e:
        asyncio.run(Client("picow-1.local", 8472).connect())
    err = e.value
    assert "mDNS" in err.hint and "avahi" in err.hint and "Bonjour" in err.hint
    assert "answers for picow-1.local" in err.hint and "--" not in err.hint  # the library names no flag
    ctx = _ctx(command="status", spec="picow-1")
    ctx._target = SimpleNamespace(key_file="/home/me/.config/mpota/keys/picow-1.key")
    hint = commands.with_cli_hint(err, ctx).hint
    assert "`mpota -t IP --key-file /home/me/.config/mpota/keys/picow-1.key status`" in hint
    # without a recorded key file: the one provision makes
    with pytest.raises(errors.Unreachable) as e:
        asyncio.run(Client("picow-2.local", 8472).connect())
    hint = commands.with_cli_hint(e.value, _ctx(command="ping", spec="picow-2.local")).hint
    assert "--key-file %s" % (targets.config_dir() / "keys" / "picow-2.key") in hint
