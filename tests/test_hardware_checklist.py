"""docs/hardware-test.md replayed against the simulator, command by command.

The checklist's ```console blocks are parsed in order: `$ ` lines are run (in
bash, from the repository's top, with the venv's `mpota` first on PATH),
the lines under a command are its documented output (each must match an
output line, in order; `...` is any text), `[exit N]` its exit status, and
`## ` lines are hand actions, each mapped here to what the simulator does
instead (a power cut kills the simulated device; the access point is the
simulator's --wifi file). A ```python block headed `# PATH` is the exact
file the checklist has you write. Only what cannot exist in a test is
substituted: /tmp/ -> a private folder, the board's serial port -> a
pseudo-terminal fed with the simulator's console (a fake `mpremote` on PATH
answers the board query, records what `cp` copies and `reset` starts the
simulator with those files), a target usb:SERIAL -> the simulator's own USB
console (tools/sim.py --usb), the board's address -> the simulator's (the
target's host in the targets file, IP:8472). Every command of the document
must be run: a step added to it is replayed, or the test fails."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

from conftest import REPO
from devconn import DevConn
from simproc import Sim

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DOC = REPO / "docs" / "hardware-test.md"
SERIAL = "/dev/ttyACM0"
DEVICE_ID = "51a1b2c3d4e5f607"

FAKE_MPREMOTE = """#!%s
# the board's USB side for `mpota provision`: answers the query, keeps what cp copies
import os, shutil, sys
drop = os.environ["FAKE_DROP"]
args = sys.argv[1:]
if args[2] == "exec" and "sys.implementation" in args[-1]:
    print(os.environ["FAKE_BOARD"])
    print("id=" + os.environ["FAKE_ID"])
elif args[2] == "cp":
    os.makedirs(drop, exist_ok=True)
    for p in args[3:-1]:
        shutil.copy(p, os.path.join(drop, os.path.basename(p)))
elif args[2] == "reset":
    open(os.path.join(drop, "reset"), "w").close()
""" % sys.executable


# --- the document --------------------------------------------------------------------

def steps(text):
    """The checklist as a list of ("run", cmd, expected, exit) / ("hand", what, expected)
    / ("write", path, content), in document order."""
    out = []
    for m in re.finditer(r"^```(console|python)\n(.*?)^```", text, re.S | re.M):
        kind, body = m.groups()
        if kind == "python":
            first, _, rest = body.partition("\n")
            assert first.startswith("# /"), "a python block must start with `# PATH`: %r" % first
            out.append(("write", first[2:].strip(), rest))
            continue
        body = body.replace("\\\n", " ")
        cur = None
        for line in body.splitlines():
            if line.startswith("$ "):
                cur = ["run", line[2:].strip(), [], 0]
                out.append(cur)
            elif line.startswith("## "):
                cur = ["hand", line[3:].strip(), [], 0]
                out.append(cur)
            elif re.fullmatch(r"\[exit \d+\]", line.strip()):
                cur[3] = int(line.strip()[6:-1])
            elif line.strip():
                assert cur is not None, "output before any command: %r" % line
                cur[2].append(line.strip())
    return [tuple(s) for s in out]


def commands_in_prose(text):
    """Every `mpota ...` code span outside the blocks: each must also be in a block."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`(mpota [^`]+)`", prose)


def check_output(out, expected, what):
    """Each expected line matches an output line, in order (`...` is any text)."""
    lines = [x.strip() for x in out.splitlines()]
    i = 0
    for want in expected:
        rx = re.compile(".*".join(re.escape(p) for p in want.split("...")))
        while i < len(lines) and not rx.fullmatch(lines[i]):
            i += 1
        assert i < len(lines), "%s: no line %r (in order) in its output:\n%s" % (what, want, out)
        i += 1


def test_the_parser_sees_the_whole_checklist():
    text = DOC.read_text()
    s = steps(text)
    runs = [x[1] for x in s if x[0] == "run"]
    assert len(runs) > 30 and any(r.startswith("mpota provision") for r in runs)
    # a command shown in the prose must be one the replay runs (the IP fallback)
    for c in commands_in_prose(text):
        assert c in runs, "%r is in the text but in no console block" % c
    # and no other kind of block hides a command
    assert not re.search(r"^```(sh|bash|shell)\b", text, re.M)


# --- the replay ----------------------------------------------------------------------

class Bench:
    """The simulated board and everything standing in for the USB link."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.state = tmp / "board"
        self.state.mkdir()
        (self.state / "device.id").write_text(DEVICE_ID + "\n")
        self.drop = tmp / "usb"
        self.sim = None
        self.tcp = self.udp = None
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "mpremote").write_text(FAKE_MPREMOTE)
        (bin_dir / "mpremote").chmod(0o755)
        venv_bin = Path(sys.executable).parent
        mp = os.environ.get("MPOTA_MICROPYTHON") or str(venv_bin / "micropython")
        impl = subprocess.run([mp, "-c", "import sys; print(sys.implementation)"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        board = re.sub(r"_machine='[^']*'", "_machine='Raspberry Pi Pico W with RP2040'", impl)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
        self.env.update(PATH="%s:%s:%s" % (bin_dir, venv_bin, self.env.get("PATH", "")), TMPDIR=str(tmp),
                        FAKE_DROP=str(self.drop), FAKE_BOARD=board, FAKE_ID=DEVICE_ID)
        self.env.pop("XDG_CONFIG_HOME", None)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.feeding = False
        self.trust = []

    # -- the board's console on the pseudo-terminal, while provision reads it
    def feed(self, since):
        i = since
        while self.feeding:
            with self.sim._cond:
                lines = self.sim.lines[i:]
                if not lines:
                    self.sim._cond.wait(0.2)
                    continue
            i += len(lines)
            for line in lines:
                if line.startswith("mpota:"):
                    os.write(self.master, (line + "\r\n").encode())

    def start(self, flags=()):
        self.sim = Sim(state=self.state, tcp_port=self.tcp, udp_port=self.udp, ready=False,
                       flags=["--wifi", "--usb"] + [f for k in self.trust for f in ("--trust", k)] + list(flags))
        self.tcp, self.udp = self.sim.tcp_port, self.sim.udp_port

    def key(self):
        return bytes.fromhex((self.state / "device.key").read_text().strip())

    def stop(self):
        if self.sim is not None:
            self.sim.stop()

    def provision(self, cmd, env):
        """Run `provision` with the fake mpremote: when it resets the board, the board
        (re)starts with the files copied, its console fed to the pseudo-terminal."""
        shutil.rmtree(self.drop, ignore_errors=True)
        p = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=str(REPO))
        feeder = None
        try:
            deadline = time.monotonic() + 60
            while not (self.drop / "reset").exists() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if (self.drop / "reset").exists():
                # the files mpremote copied: the key, the config, the trust store
                key = (self.drop / "mpota_key.bin").read_bytes()
                (self.state / "device.key").write_text(key.hex() + "\n")
                args = shlex.split(cmd)
                xdg = env["XDG_CONFIG_HOME"]
                self.trust = [args[i + 1].replace("$XDG_CONFIG_HOME", xdg) for i, a in enumerate(args)
                              if a == "--trust"]
                assert json.loads((self.drop / "mpota.json").read_text())["auth"] is True
                fresh = self.sim is None
                self.stop()
                self.start(flags=["--config", str(self.drop / "mpota.json")] + ([] if fresh else ["--redeploy"]))
                self.feeding = True
                feeder = threading.Thread(target=self.feed, args=(self.sim.mark(),), daemon=True)
                feeder.start()
            out, _ = p.communicate(timeout=120)
        finally:
            self.feeding = False
            if p.poll() is None:
                p.kill()
            if feeder is not None:
                feeder.join(5)
        if self.sim is not None:
            self.sim.wait_ready(60)
        return p.returncode, out

    def point_targets_here(self, xdg):
        """picow-t.local is the simulator: the target's host and port, as written by provision."""
        path = Path(xdg) / "mpota" / "targets.toml"
        text = path.read_text()
        assert 'host = "picow-t.local"' in text
        path.write_text(text.replace('host = "picow-t.local"', 'host = "127.0.0.1"\nport = %d' % self.tcp))

    # -- hand actions
    def hand(self, what):
        if what.startswith("unplug the board, plug it back in"):
            self.sim.power_cut()
        elif what.startswith("switch the access point off"):
            self.wifi("down")
            self.sim.wait_for_line("join failed", 60, since=self.mark)
        elif what.startswith("switch the access point on"):
            self.wifi("up")
            self.sim.wait_for_line("mpota: ready", 60, since=self.mark)
        elif what.startswith("during the next command: pull the cable at about half the upload"):
            return "half"
        elif what.startswith("during the next command: pull the cable right after `committed:`"):
            return "committed"
        else:
            raise AssertionError("the replay does not know the hand action %r" % what)

    def wifi(self, word):
        with open(self.state / "wifi", "r+") as f:  # in place: the device holds it open
            f.write(word + "\n")
            f.truncate()


def run_cut(bench, cmd, env, when):
    """The command runs while the power is cut: at `committed:` (read from its output),
    or at about half the upload (when the board's flash has taken half the image's
    page programs since `uploading`)."""
    p = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=str(REPO))
    seen = []
    cut = None
    try:
        for line in p.stdout:
            seen.append(line)
            if cut is None and when == "committed" and line.startswith("committed:"):
                cut = bench.sim.mark()
                bench.sim.power_cut(timeout=None)
            if cut is None and when == "half" and line.startswith("uploading"):
                # about half: the board's flash has taken half the blob's page programs
                half = (bench.tmp / "big" / "blob.bin").stat().st_size // 256 // 2
                c = DevConn(bench.tcp, key=bench.key())
                try:
                    start = c.ok("status")["sim_flash"]["ops"]
                    deadline = time.monotonic() + 60
                    while c.ok("status")["sim_flash"]["ops"] < start + half and time.monotonic() < deadline:
                        time.sleep(0.02)
                finally:
                    c.close()
                cut = bench.sim.mark()
                bench.sim.power_cut(timeout=None)
        p.wait(120)
    finally:
        if p.poll() is None:
            p.kill()
    assert cut is not None, "%s: the power was never cut:\n%s" % (cmd, "".join(seen))
    bench.sim.wait_for_line("mpota: ready", 60, since=cut)  # plugged back in
    return p.returncode, "".join(seen)


def test_hardware_checklist_replays_on_the_simulator(tmp_path):
    text = DOC.read_text()
    bench = Bench(tmp_path)
    env = dict(bench.env)
    pending = None
    ran = []
    try:
        for step in steps(text):
            if step[0] == "write":
                path = Path(step[1].replace("/tmp/", str(tmp_path) + "/"))
                path.write_text(step[2])
                continue
            kind, what, expected, code = step
            if kind == "hand":
                bench.mark = bench.sim.mark()
                pending = bench.hand(what)
                if expected:  # the console's lines since the action
                    check_output("\n".join(bench.sim.lines[bench.mark:]), expected, what)
                continue
            cmd = what.replace("/tmp/", str(tmp_path) + "/")
            if bench.sim is not None:  # usb:SERIAL: the simulator's USB console
                cmd = cmd.replace("usb:" + SERIAL, "usb:" + (bench.state / "usb").read_text().strip())
            cmd = cmd.replace(SERIAL, bench.port)
            cmd = cmd.replace("IP:8472", "127.0.0.1:%d" % (bench.tcp or 0))
            if cmd.startswith("export "):
                name = cmd[7:].split("=", 1)[0]
                r = subprocess.run(["bash", "-c", cmd + '; printf %s "$' + name + '"'], capture_output=True,
                                   text=True, env=env, timeout=30)
                env[name] = r.stdout
                assert r.returncode == 0 and r.stdout.startswith(str(tmp_path)), r
                rc, out = r.returncode, ""
            elif cmd.startswith("mpota provision") and "--dry-run" not in cmd:
                rc, out = bench.provision(cmd, env)
                if rc == 0:
                    bench.point_targets_here(env["XDG_CONFIG_HOME"])
            elif pending:
                rc, out = run_cut(bench, cmd, env, pending)
                pending = None
                code = rc  # the cut command's own outcome is the next steps' to check
            else:
                r = subprocess.run(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=env, cwd=str(REPO), timeout=120)
                rc, out = r.returncode, r.stdout
            ran.append(what)
            here = "127.0.0.1:%d" % (bench.tcp or 0)
            expected = [e.replace("IP:8472", here).replace("picow-t.local:8472", here) for e in expected]
            assert rc == code, "%s: exit %d, the checklist says %d:\n%s" % (what, rc, code, out)
            check_output(out, expected, what)
    finally:
        bench.stop()
        os.close(bench.master)
        os.close(bench.slave)
    # every command of the document was run
    assert ran == [s[1] for s in steps(text) if s[0] == "run"] and len(ran) > 30
    assert not (tmp_path / "bad").exists()  # the clean-up ran too
