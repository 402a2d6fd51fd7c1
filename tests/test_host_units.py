"""Host pieces that need no device: targets, keys, argv, local image checks, error mapping."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from mpota import cli, images, targets
from mpota.errors import (EXIT_AUTH, EXIT_BUSY, EXIT_REFUSED, EXIT_UNREACHABLE, AuthError, BadImage,
                    BusyError, DeviceTimeout, NoSpace, UsageError, VersionRefused, device_error)

KEY_HEX = "11" * 32


# --- targets -------------------------------------------------------------------

@pytest.mark.parametrize("spec,host,port", [
    ("10.0.0.7", "10.0.0.7", 8472),
    ("10.0.0.7:9000", "10.0.0.7", 9000),
    ("pico.local:1234", "pico.local", 1234),
    ("[::1]", "::1", 8472),
    ("[::1]:9001", "::1", 9001),
    ("fe80::1", "fe80::1", 8472),
])
def test_hostport_forms(spec, host, port):
    t = targets.resolve(spec, env={}, targets_file=None)
    assert (t.host, t.port) == (host, port)


def test_builtins_and_file_override(tmp_path):
    f = tmp_path / "t.toml"
    (tmp_path / "k.key").write_text(KEY_HEX + "\n")
    f.write_text('[targets.pico]\nhost = "192.168.9.9"\n\n'
                 '[targets.shed]\nhost = "shed.local"\nport = 9100\nudp_port = 9101\nkey_file = "k.key"\n')
    pico = targets.resolve("pico", str(f), env={})
    assert (pico.host, pico.port, pico.udp_port) == ("192.168.9.9", 8472, 8473)
    shed = targets.resolve("shed", str(f), env={})
    assert (shed.host, shed.port, shed.udp_port) == ("shed.local", 9100, 9101)
    assert shed.key == bytes.fromhex(KEY_HEX) and shed.key_source.startswith("key_file")
    sim = targets.resolve("sim", str(f), env={})
    assert (sim.host, sim.port, sim.udp_port) == ("127.0.0.1", 8472, 8473)


def test_default_pico_without_file(tmp_path):
    t = targets.resolve("pico", None, env={"MPOTA_TARGETS": str(tmp_path / "none.toml")})
    assert t.host == "PicoW.local" and t.port == 8472


def test_key_precedence_and_never_shown(tmp_path):
    kf = tmp_path / "a.key"
    kf.write_text("22" * 32)
    t = targets.resolve("127.0.0.1", key_file=str(kf), env={"MPOTA_KEY": KEY_HEX})
    assert t.key == bytes.fromhex("22" * 32) and t.key_source == "--key-file"
    t = targets.resolve("127.0.0.1", env={"MPOTA_KEY": KEY_HEX, "MPOTA_KEY_FILE": str(kf)})
    assert t.key == bytes.fromhex(KEY_HEX) and t.key_source == "MPOTA_KEY"
    t = targets.resolve("127.0.0.1", env={"MPOTA_KEY_FILE": str(kf)})
    assert t.key_source == "MPOTA_KEY_FILE"
    assert "22" * 8 not in repr(t) and "22" * 8 not in str(t.describe())


def test_bad_keys_and_files(tmp_path):
    with pytest.raises(UsageError):
        targets.resolve("127.0.0.1", env={"MPOTA_KEY": "abcd"})
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(UsageError):
        targets.resolve("127.0.0.1", key_file=str(bad), env={})
    f = tmp_path / "t.toml"
    f.write_text('[targets.x]\nhost = "h"\nkey = "%s"\n' % KEY_HEX)
    with pytest.raises(UsageError, match="not stored"):
        targets.resolve("x", str(f), env={})
    f.write_text("this is [not toml")
    with pytest.raises(UsageError):
        targets.resolve("x", str(f), env={})


def test_key_is_not_a_command_line_option(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--key", KEY_HEX, "status"])
    # A key passed where a key file belongs is refused without being echoed.
    with pytest.raises(UsageError) as ei:
        targets.resolve("127.0.0.1", key_file=KEY_HEX, env={})
    assert KEY_HEX not in str(ei.value)


# --- argv ----------------------------------------------------------------------

def test_default_command_is_push():
    a = cli.parse_args(["--target", "sim", "app.img"])
    assert a.command == "push" and a.image == "app.img" and a.target == "sim"
    a = cli.parse_args(["-t", "status", "status"])  # a target named like a command
    assert a.command == "status" and a.target == "status"
    a = cli.parse_args(["status", "--json", "-t", "sim"])
    assert a.command == "status" and a.json and a.target == "sim"
    a = cli.parse_args(["-vv", "push", "x.img", "--no-confirm", "--window", "4096"])
    assert a.verbose == 2 and a.no_confirm and a.window == 4096


def test_help_mentions_examples_and_fits_80_columns():
    env = dict(os.environ, COLUMNS="80")
    for cmd in ([], ["push"], ["legacy"], ["read"]):
        r = subprocess.run([sys.executable, str(REPO / "host" / "flash.py")] + cmd + ["--help"],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0
        assert max(len(line) for line in r.stdout.splitlines()) <= 80, cmd
    r = subprocess.run([sys.executable, str(REPO / "host" / "flash.py"), "--help"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert "examples:" in r.stdout and "exit codes" in r.stdout


# --- local image checks ------------------------------------------------------------

def _imgtool_image(tmp_path, version="1.2.3"):
    body = tmp_path / "body.bin"
    body.write_bytes(bytes(range(256)) * 40)
    out = tmp_path / "app.img"
    imgtool = os.path.join(os.path.dirname(sys.executable), "imgtool")
    subprocess.run([imgtool, "create", "--align", "4", "--version", version, "--header-size", "32",
                    "--pad-header", "--slot-size", "0x60000", str(body), str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


def test_check_image_accepts_imgtool_output_and_reads_version(tmp_path):
    p = _imgtool_image(tmp_path)
    img = images.load(str(p))
    assert img.version == "1.2.3+0" and img.size == p.stat().st_size


@pytest.mark.parametrize("damage", ["flip_body", "truncate", "magic", "empty"])
def test_check_image_rejects_damaged_files(tmp_path, damage):
    p = _imgtool_image(tmp_path)
    data = bytearray(p.read_bytes())
    if damage == "flip_body":
        data[100] ^= 0xFF
    elif damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "magic":
        data[0] ^= 1
    else:
        data = b""
    p.write_bytes(bytes(data))
    with pytest.raises(BadImage) as ei:
        images.load(str(p))
    assert ei.value.exit_code == EXIT_REFUSED


def test_folder_needs_main_and_version(tmp_path):
    (tmp_path / "lib.py").write_text("x = 1\n")
    with pytest.raises(UsageError, match="main.py"):
        images.load(str(tmp_path))
    (tmp_path / "main.py").write_text("def main():\n    pass\n")
    with pytest.raises(UsageError, match="version"):
        images.load(str(tmp_path))


# --- error mapping -----------------------------------------------------------------

@pytest.mark.parametrize("code,cls,exit_code", [
    ("auth_failed", AuthError, EXIT_AUTH),
    ("auth_required", AuthError, EXIT_AUTH),
    ("busy", BusyError, EXIT_BUSY),
    ("no_space", NoSpace, EXIT_REFUSED),
    ("version_refused", VersionRefused, EXIT_REFUSED),
    ("bad_image", BadImage, EXIT_REFUSED),
    ("timeout", DeviceTimeout, EXIT_UNREACHABLE),
])
def test_device_error_classes(code, cls, exit_code):
    e = device_error(code, "because", num=3, op="begin")
    assert isinstance(e, cls) and e.exit_code == exit_code
    assert e.hint  # every mapped error says what to do next


# --- the reference messenger uses the codec's error table ----------------------------

def test_messenger_names_every_codec_error():
    """An ErrorResponse raises the reference's RuntimeError text, named from the
    codec's table (no_memory, 20, included), and carries num and code."""
    import socket
    import threading

    from mpota.codec import mpota_lineproto as lineproto
    from mpota.codec.bootloader_messages import ErrorResponse
    from mpota.bootloader_messenger import BootloaderMessenger, LegacyError

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)

    def answer():
        for num in (lineproto.E_NO_MEMORY, lineproto.E_BUSY):
            _, addr = srv.recvfrom(2048)
            srv.sendto(ErrorResponse.make(num), addr)

    th = threading.Thread(target=answer, daemon=True)
    th.start()
    with BootloaderMessenger(("127.0.0.1", srv.getsockname()[1])) as m:
        m.sock.settimeout(5)
        for num, name in ((20, "no_memory"), (9, "busy")):
            with pytest.raises(LegacyError) as ei:
                m.get_version()
            assert isinstance(ei.value, RuntimeError)
            assert (ei.value.num, ei.value.code) == (num, name)
            assert str(ei.value) == "Bootloader returned error: %d (%s)" % (num, name)
    th.join(5)
    srv.close()


# --- build checks: versions and compiling every .py ---------------------------------------

@pytest.mark.parametrize("bad", ["abc", "99999.0.0", "1.256.0", "1.0.70000", "1.0.0+4294967296", "1.2.3.4", "-1.0.0"])
def test_bad_versions_say_what_is_allowed(bad):
    with pytest.raises(UsageError) as ei:
        images.load(str(REPO / "examples" / "hello"), bad)
    msg = ei.value.message
    assert repr(bad) in msg and "0-255" in msg and "0-65535" in msg and "0-4294967295" in msg
    assert "Usage:" not in msg and "struct" not in msg


@pytest.mark.parametrize("good,norm", [("1", "1.0.0+0"), ("255.255.65535+4294967295", "255.255.65535+4294967295"),
                                       (" 1.2.3 ", "1.2.3+0")])
def test_good_versions_normalised(good, norm):
    assert images.mcuboot_version(good) == norm


def test_a_syntax_error_fails_the_build_naming_file_and_line(tmp_path):
    (tmp_path / "main.py").write_text("def main():\n    pass\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("x = 1\n\ndef f(:\n    pass\n")
    with pytest.raises(UsageError, match=r"lib/util\.py, line 3: SyntaxError"):
        images.load(str(tmp_path), "1.0.0")
    (tmp_path / "lib" / "util.py").write_text("x = 1\n")
    (tmp_path / "main.py").write_text("def main(:\n")
    with pytest.raises(UsageError, match=r"main\.py, line 1: SyntaxError"):
        images.load(str(tmp_path), "1.0.0")


def test_mpy_ships_compiled_files(tmp_path):
    from littlefs import LittleFS

    (tmp_path / "main.py").write_text("def main():\n    pass\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("x = 1\n")
    for mpy, want in ((False, ["main.py", "util.py"]), (True, ["main.mpy", "util.mpy"])):
        body = images.build_littlefs(tmp_path, mpy=mpy)
        fs = LittleFS(block_size=4096, block_count=len(body) // 4096, prog_size=256, read_size=256, mount=False)
        fs.context.buffer[:] = body
        fs.mount()
        assert sorted(fs.listdir("/") + fs.listdir("/lib")) == sorted(want + ["lib"])
        if mpy:
            with fs.open("main.mpy", "rb") as f:
                assert f.read(1) == b"M"  # the .mpy magic


# --- the status reply, typed ----------------------------------------------------------

def _reply(**over):
    r = {"device": "d1", "running": "b", "active": "a", "pending": None, "trial": True, "trial_count": 1,
         "max_trials": 3, "slots": {"a": {"state": "confirmed", "size": 10, "sha256": "AB" * 32,
                                          "version": "1.0.0"},
                                    "b": {"state": "trial", "size": 12, "sha256": "cd" * 32, "version": "2.0.0"}},
         "app": {"state": "crashed", "name": "app", "error": "ValueError: x"},
         "trust": {"keys": ["0011223344556677"], "signed_images": True, "seq": 4, "warning": None}}
    r.update(over)
    return r


def test_status_reads_the_reply_once():
    from mpota.status import Status

    st = Status.of(_reply())
    assert st.running_version == "2.0.0" and st.describe_running() == "2.0.0"
    assert st.running_image.name == "b" and st.slot("a").sha256 == "ab" * 32
    assert st.trial_crash == "ValueError: x" and st.confirmed_other("b") == "a"
    assert st.trust_keys == ("0011223344556677",) and st.trust_seq == 4 and st.raw["device"] == "d1"
    none = Status.of({"device": "d1", "running": None})  # a stranger's status, or no app
    assert none.running_version is None and none.describe_running() == "no app" and none.slots == {}
    assert none.running_image is None and none.trial_crash is None and none.slot("a").state is None
    erased = Status.of(_reply(slots={"b": {"state": "empty", "sha256": None, "version": None}}))
    assert erased.running_image is None and erased.describe_running() == "no version"


def test_no_status_reply_is_read_through_get_chains():
    # the running version (and every other field) is read in one place: status.py
    for name in ("push.py", "commands.py", "fleet.py", "output.py"):
        text = (REPO / "host" / name).read_text()
        assert 'get("slots")' not in text and 'get("running")' not in text and 'get("app")' not in text, name
