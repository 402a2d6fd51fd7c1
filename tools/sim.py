#!/usr/bin/env python3
"""Run a simulated Pico W: the unix-port MicroPython on a simulated NOR flash.

    python tools/sim.py --state .sim-state [--host 127.0.0.1] [--tcp-port 8472]
        [--udp-port 8473] [--legacy-udp] [--smp-port N] [--no-auth] [--flash-timing none|w25q]
        [--heap 96K] [--power-cut-after N [--cut-from main|power-on]] [--redeploy] [--micropython PATH]
        [--deploy mpy|py] [--config FILE] [--device-dir DIR] [--trust KEY.pem ...] [--wifi] [--usb]
        [--mqtt HOST:PORT] [--fleet NAME] [--no-listen]

The state directory is the device: flash.bin (212 x 4096 bytes, the Pico W
filesystem), device.id, device.key (32-byte HMAC key, hex, mode 0600, made on
first start unless --no-auth; never printed), boot.json (the handoff to
tools/sim_boot.py: reset cause, boot count, flags) and wdt (the simulated
watchdog's timeout, rewritten by each feed; see below). On first start (or with
--redeploy) device/*.py (symlinks followed) and the key (as /mpota_key.bin)
are copied into the flash, as `mpremote cp device/*.py :` does.

The device's stdout/stderr are relayed line by line. The launcher prints one
`sim: ready tcp=HOST:PORT udp=HOST:PORT` line the first time the device
prints a line starting with `mpota: ready`.

Device exit status 3 (hal.reset()) restarts it with reset cause 'reset',
status 4 (simulated watchdog: a feed later than the timeout) with
'watchdog'. A device that started the watchdog and then stops feeding it
altogether (a hang: no feed can come late) is killed by the launcher once
STATE/wdt, which every feed rewrites, is older than the timeout + 2 s
(HANG_GRACE_MS): `sim: watchdog reset (hang ...)`, and it restarts with
'watchdog' too. A power cut (SIGKILL, from
--power-cut-after) prints `sim: power cut` and restarts it with 'power_on'
and the power cut disarmed. Any other status ends the launcher with it.
SIGTERM/SIGINT stop the device and the launcher (exit 0).

--power-cut-after N: on the first device start only, N flash operations
(4 KiB erases and 256-byte page programs, counted from when main.py starts)
complete and the next one is torn half way, then the device dies.
--cut-from power-on counts them from power-on instead: the littlefs format
and the deploy of a fresh flash (provisioning) count too.

--trust KEY.pem (repeatable): on the launcher's first boot, the public half
of each imgtool Ed25519 key (private or public PEM) becomes the device's
trust store /mpota_trust.json (docs/security.md), replacing any store there
(a rotated one included): the device then accepts only images signed by
these keys. The trust file is also kept as STATE/trust.json.

--wifi simulates the Pico W's station link: the agent runs device/mpota_wifi.py
as on a board (join, watch, rejoin with backoff; status reports `link`).
The access point is "off" while the file STATE/wifi reads "down": write
"down" into it to drop the link (the agent stops listening, the app keeps
running), "up" to restore it (the agent rejoins and listens again), "error"
to make the radio raise OSError EPERM, as a CYW43 that does not start does on
a board: every join, and every other radio call once a join has started the
radio (tools/simwifi.py; the link task reports it and retries). Rewrite
it in place (`echo down > STATE/wifi`): the device holds it open. The
launcher makes it ("up") when absent. Without --wifi the agent listens at
once, with no link to manage.

--usb gives the device a console, as the Pico W's USB serial port: the
interpreter runs with a pseudo-terminal as its stdin/stdout and controlling
terminal (so Ctrl-C interrupts it, and after an uncaught exception, as after
Ctrl-C, it waits in its REPL, whose raw REPL mpremote speaks: MICROPYINSPECT,
which simhal's resets clear, so they still exit), and the
launcher bridges that terminal to a second one, whose path it prints once
(`sim: usb /dev/pts/N`) and writes into STATE/usb: the "cable" a host opens
(`mpota -t usb:/dev/pts/N ...`, mpremote's SerialTransport). The bridge
lives as long as the launcher, across device restarts, as a port the host
keeps open; the device's output is also relayed as without --usb.

--mqtt HOST:PORT makes the board call home through that MQTT broker (config
"mqtt"), in fleet --fleet NAME ("fleet"); --no-listen binds nothing ("listen":
false), so the host can reach it only through the broker (docs/mqtt.md).

--device-dir DIR deploys DIR/*.py instead of the repository's device/ (the
tests use it to boot a throwaway main.py; it changes nothing else).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
BLOCK_COUNT = 212  # RPI_PICO_W filesystem: 848 KiB

EXIT_RESET = 3
EXIT_WATCHDOG = 4
# A device that stops feeding its started watchdog is reset this long after
# the timeout: a feed that is merely late is the device's own (simhal), at once.
HANG_GRACE_MS = 2000
POWER_CUT = (-9, 137)  # SIGKILL seen directly, or through a shell
STOP_GRACE_S = 5.0  # stop(): a device still running this long after SIGTERM is killed


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="sim.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--state", required=True, help="state directory (the simulated device)")
    p.add_argument("--host", default="127.0.0.1", help="address the agent listens on")
    p.add_argument("--tcp-port", type=int, default=8472)
    p.add_argument("--udp-port", type=int, default=8473)
    p.add_argument("--legacy-udp", action="store_true", help="serve the legacy UDP service")
    p.add_argument("--smp-port", type=int, default=None, metavar="N",
                   help="serve SMP (MCUmgr) over UDP on port N (config smp_udp/smp_port)")
    p.add_argument("--no-auth", action="store_true", help="run without the HMAC session key")
    p.add_argument("--flash-timing", choices=("none", "w25q"), default="none",
                   help="w25q: sleep typical W25Q erase/program times")
    p.add_argument("--heap", default=None, help="MicroPython heap size, e.g. 96K (-X heapsize)")
    p.add_argument("--power-cut-after", type=int, default=None, metavar="N",
                   help="first boot only: tear flash operation N+1 and kill the device")
    p.add_argument("--cut-from", choices=("main", "power-on"), default="main",
                   help="count --power-cut-after operations from main.py (default) or from power-on")
    p.add_argument("--redeploy", action="store_true",
                   help="copy device/*.py into the existing flash before booting")
    p.add_argument("--micropython", default=str(Path(sys.executable).parent / "micropython"),
                   help="unix-port micropython (default: beside this Python)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="install FILE as the device config /mpota.json when deploying")
    p.add_argument("--deploy", choices=("mpy", "py"), default="mpy",
                   help="ship device code precompiled by mpy-cross (mpy, the default: no compile"
                        " peaks on the device) or as source (py, as `mpremote cp device/*.py :` does)")
    p.add_argument("--trust", action="append", default=[], metavar="KEY.pem",
                   help="trust this imgtool Ed25519 key's public half for signed images (repeatable)")
    p.add_argument("--device-dir", default=str(REPO / "device"),
                   help="folder whose *.py are deployed (default: device/; tests use a throwaway one)")
    p.add_argument("--wifi", action="store_true",
                   help="simulate the Wi-Fi link (device/mpota_wifi.py); 'down' in the file STATE/wifi"
                        " drops it, 'error' fails the radio")
    p.add_argument("--usb", action="store_true",
                   help="a USB-serial console on a pty (printed as `sim: usb PATH`, written into STATE/usb)")
    p.add_argument("--mqtt", default=None, metavar="HOST:PORT",
                   help="call home through this MQTT broker (config mqtt; docs/mqtt.md)")
    p.add_argument("--fleet", default=None, metavar="NAME", help="the board's fleet in MQTT topics (config fleet)")
    p.add_argument("--no-listen", action="store_true",
                   help="bind nothing (config listen: false): a board the host cannot reach, only through --mqtt")
    a = p.parse_args(argv)
    if a.power_cut_after is not None and a.power_cut_after < 0:
        p.error("--power-cut-after must be >= 0")
    return a


def device_key(state):
    """The per-device 32-byte key: made once from os.urandom, kept hex in device.key (0600)."""
    path = state / "device.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
    return path


def device_id(state):
    path = state / "device.id"
    if not path.exists():
        path.write_text("51" + os.urandom(7).hex() + "\n")
    return path.read_text().strip()


def trust_file(state, key_files):
    """STATE/trust.json: the trust store for the public halves of the keys (host/keys.py)."""
    sys.path.insert(0, str(REPO))
    from host import keys  # the package's folder (installed as mpota)

    try:
        data = keys.trust_file(key_files)
    except keys.KeyFileError as e:
        raise SystemExit("sim: --trust: %s" % e.message)
    path = state / "trust.json"
    path.write_bytes(data)
    return path


def _deploy_module():
    sys.path.insert(0, str(REPO))
    from host import deploy  # the one place that decides which device files a board gets

    return deploy


def deploy_list(device_dir):
    try:
        return [str(p) for p in _deploy_module().device_files(device_dir)]
    except FileNotFoundError:
        raise SystemExit("sim: no device folder %s" % device_dir)


def mpy_deploy(paths, micropython, cache):
    """The deploy as .mpy, the way a board should get it (host/deploy.py): every
    file but main.py precompiled by mpy-cross for the interpreter's .mpy version
    and native architecture, kept in `cache`, one folder per .mpy version."""
    deploy = _deploy_module()
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    r = subprocess.run([micropython, "-c", "import sys; print(sys.implementation._mpy)"],
                       capture_output=True, text=True, timeout=30)
    mpy = int(r.stdout.strip() or 0)
    arch = deploy.mpy_target(mpy)[2]
    if not mpy_cross.exists() or arch is None:
        out("sim: no mpy-cross for this interpreter: deploying .py")
        return paths
    return [str(p) for p in deploy.compile_files(paths, [str(mpy_cross)], arch, cache / str(mpy))]


def _load_prctl():
    # Loaded up front: the child must not import anything between fork and exec.
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None


_PRCTL = _load_prctl()


def _pdeathsig():
    # The device dies with the launcher, even if the launcher is SIGKILLed.
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class UsbConsole:
    """--usb: the device's console on pty A (its stdin/stdout, controlling
    terminal: Ctrl-C from the host is SIGINT, as the board's USB serial turns
    it into KeyboardInterrupt) bridged to pty B, the port a host opens. Both
    are raw (no CR/LF translation, no echo); A keeps ISIG."""

    def __init__(self, emit):
        import pty
        import tty
        import termios

        self.emit_line = emit
        self.ma, self.sa = pty.openpty()
        self.mb, self.sb = pty.openpty()  # sb held open: a host may come and go
        for fd in (self.sa, self.sb):
            tty.setraw(fd)
        attrs = termios.tcgetattr(self.sa)
        attrs[3] |= termios.ISIG
        termios.tcsetattr(self.sa, termios.TCSANOW, attrs)
        os.set_blocking(self.mb, False)  # nobody reading the port: output is dropped, as on a board (to_host)
        self.path = os.ttyname(self.sb)
        self.on_line = None  # each device output line, for the launcher's relay

    def preexec(self):
        # in the child (after setsid): pty A becomes its controlling terminal
        import fcntl
        import termios

        _pdeathsig()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def to_host(self, d):
        # As the board's USB serial: a host that reads is waited for (the
        # device's writes block meanwhile); output nobody reads for 1 s is dropped
        import select

        mv = memoryview(d)
        while mv:
            try:
                mv = mv[os.write(self.mb, mv):]
            except BlockingIOError:
                if not select.select([], [self.mb], [], 1.0)[1]:
                    return  # the host's side is full and nobody reads it
            except OSError:
                return

    def run(self):
        import select

        line = b""
        while True:
            r, _, _ = select.select([self.ma, self.mb], [], [])
            for fd in r:
                try:
                    d = os.read(fd, 4096)
                except OSError:
                    d = b""
                if not d:
                    continue
                if fd == self.mb:
                    os.write(self.ma, d)
                    continue
                self.to_host(d)
                line += d
                while b"\n" in line:
                    one, line = line.split(b"\n", 1)
                    self.on_line(one)
                if len(line) > 4096:
                    line = line[-4096:]


class Launcher:
    def __init__(self, args, emit=out, poll_s=0.1):
        self.a = args
        self.resets = 0  # resets since the last power-on, handed to simhal
        self.emit = emit  # each output line (tools/fleetsim.py keeps them per board)
        self.poll_s = poll_s  # the hang watchdog's period (fleetsim: slower, for 100 boards)
        self.state = Path(args.state).resolve()
        self.proc = None
        self.stopping = False
        self.grace = STOP_GRACE_S  # stop()'s, for a device that started while it stopped
        self.ready_said = False
        self.bitten = False  # the launcher's half of the watchdog reset this boot (watchdog())
        # guards self.proc's hand-over; never held across a blocking call (a Popen
        # may take seconds on a loaded machine), and re-entrant: stop() runs as a
        # signal handler in the very thread that may hold it
        self.lock = threading.RLock()
        self.usb = None  # UsbConsole with --usb

    def handoff(self, boot_count, cause, first, cut_after, fresh):
        a = self.a
        cfg = {
            "flash": str(self.state / "flash.bin"),
            "block_count": BLOCK_COUNT,
            "timing": a.flash_timing,
            "cut_after": cut_after,
            "cut_from": a.cut_from,
            "redeploy": bool(first and a.redeploy),
            "deploy": self.deploy() if (fresh or (first and a.redeploy)) else [],
            "key_file": None if a.no_auth else str(device_key(self.state)),
            "trust_file": str(trust_file(self.state, a.trust)) if (first and a.trust) else None,
            "reset_cause": cause,
            "boot_count": boot_count,
            "resets": self.resets,
            "device_id": device_id(self.state),
            "host": a.host,
            "tcp_port": a.tcp_port,
            "udp_port": a.udp_port,
            "legacy_udp": a.legacy_udp,
            "smp_port": a.smp_port,
            "auth": not a.no_auth,
            "wifi_file": self.wifi_file() if a.wifi else None,
            "wdt_file": str(self.wdt_file()),
            "mqtt": a.mqtt,
            "fleet": a.fleet,
            "listen": not a.no_listen,
        }
        path = self.state / "boot.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f, indent=1)
        os.replace(tmp, path)
        return path

    def wifi_file(self):
        # --wifi: the access point is off while STATE/wifi reads "down"
        path = self.state / "wifi"
        if not path.exists():
            path.write_text("up\n")
        return str(path)

    def wdt_file(self):
        # STATE/wdt: empty until the device starts its watchdog (simhal), then
        # the timeout in ms, rewritten by every feed; emptied for each boot
        path = self.state / "wdt"
        path.write_bytes(b"")
        return path

    def watchdog(self, proc, path):
        # the hang half of the simulated watchdog (simhal.wdt_start)
        while proc.poll() is None and not self.stopping:
            time.sleep(self.poll_s)
            try:
                mtime = os.stat(path).st_mtime
                timeout = int(path.read_bytes() or 0)
            except (OSError, ValueError):
                continue
            quiet = (time.time() - mtime) * 1000
            if timeout and quiet > timeout + HANG_GRACE_MS:
                self.bitten = True
                self.emit("sim: watchdog reset (hang: no feed for %d ms > %d ms)" % (quiet, timeout))
                proc.kill()
                return

    def deploy(self):
        paths = deploy_list(self.a.device_dir)
        if self.a.deploy == "mpy":
            paths = mpy_deploy(paths, self.a.micropython, REPO / "build" / "mpy")
        if self.a.config:
            cfg = self.state / "mpota.json"  # deployed under the name the device reads
            cfg.write_bytes(Path(self.a.config).read_bytes())
            paths.append(str(cfg))
        return paths

    def relay(self, proc):
        for raw in proc.stdout:
            self.relay_line(raw)

    def relay_line(self, raw):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        self.emit(line)
        if not self.ready_said and line.startswith("mpota: ready"):
            self.ready_said = True
            a = self.a
            self.emit("sim: ready tcp=%s:%d udp=%s:%d" % (a.host, a.tcp_port, a.host, a.udp_port))

    def start_usb(self):
        u = self.usb = UsbConsole(self.emit)
        u.on_line = self.relay_line
        (self.state / "usb").write_text(u.path + "\n")
        self.emit("sim: usb %s" % u.path)
        threading.Thread(target=u.run, daemon=True).start()

    def stop(self, signum=None, frame=None, grace=STOP_GRACE_S):
        """End the device (SIGTERM) and the run loop with it; a device still
        running `grace` s later is killed, so run() always returns (bounded:
        its output and watchdog threads are joined with timeouts too)."""
        self.stopping = True
        self.grace = grace
        with self.lock:
            p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            t = threading.Timer(grace, self.kill)
            t.daemon = True
            t.start()

    def kill(self):
        """SIGKILL the device (a stop it did not obey)."""
        self.stopping = True
        with self.lock:
            p = self.proc
        if p is not None and p.poll() is None:
            self.emit("sim: device still running after SIGTERM: killed")
            p.kill()

    def run(self):
        a = self.a
        self.state.mkdir(parents=True, exist_ok=True)
        if (self.state / "flash.bin").exists():  # made by an older launcher: world-readable
            os.chmod(self.state / "flash.bin", 0o600)
        mp = a.micropython
        if not os.path.exists(mp):
            self.emit("sim: no micropython at %s (run `make setup`)" % mp)
            return 2
        boot_file = self.state / "boot.json"
        try:
            boot_count = json.loads(boot_file.read_text()).get("boot_count", 0)
        except (OSError, ValueError):
            boot_count = 0
        cause = "power_on"
        first = True
        if a.usb:
            self.start_usb()
        while not self.stopping:
            boot_count += 1
            self.resets = 0 if cause == "power_on" else self.resets + 1  # since power-on (simhal.resets)
            fresh = not (self.state / "flash.bin").exists()
            cut = a.power_cut_after if first else None
            hp = self.handoff(boot_count, cause, first, cut, fresh)
            cmd = [mp]
            if a.heap:
                cmd += ["-X", "heapsize=%s" % a.heap]
            cmd += [str(TOOLS / "sim_boot.py"), str(hp)]
            self.emit("sim: boot #%d (%s)%s" % (boot_count, cause, " power cut armed" if cut is not None else ""))
            if self.stopping:
                break
            # umask 077: flash.bin holds the device key (/mpota_key.bin): owner only
            if self.usb is not None:  # the console: pty A (UsbConsole relays it)
                u = self.usb
                # MICROPYINSPECT: after Ctrl-C (an uncaught KeyboardInterrupt) the REPL, as on a
                # board; simhal unsets it for its resets, which exit
                env = dict(os.environ, MICROPYINSPECT="1")
                proc = subprocess.Popen(cmd, stdout=u.sa, stderr=u.sa, stdin=u.sa, cwd=str(REPO),
                                        env=env, umask=0o077, start_new_session=True,
                                        preexec_fn=u.preexec)  # noqa: PLW1509 (no locks taken)
            else:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=str(REPO), umask=0o077,
                                        start_new_session=True, preexec_fn=_pdeathsig)  # noqa: PLW1509 (no locks taken)
            with self.lock:
                self.proc = proc
            if self.stopping:  # stop() came while it started, and may have seen the last one: end it too
                self.stop(grace=self.grace)
            t = threading.Thread(target=self.relay if self.usb is None else lambda p: None, args=(self.proc,),
                                 daemon=True)
            t.start()
            self.bitten = False
            w = threading.Thread(target=self.watchdog, args=(self.proc, self.state / "wdt"), daemon=True)
            w.start()
            rc = self.proc.wait()
            t.join(5)
            w.join(5)
            first = False
            if self.stopping:
                break
            if rc == EXIT_RESET:
                cause = "reset"
            elif rc == EXIT_WATCHDOG or self.bitten:
                cause = "watchdog"
            elif rc in POWER_CUT:
                self.emit("sim: power cut (device killed); restarting")
                cause = "power_on"
            else:
                self.emit("sim: device exited with status %d" % rc)
                return rc if 0 <= rc < 256 else 1
        self.emit("sim: stopped")
        return 0


def main(argv=None):
    ln = Launcher(parse_args(argv))
    signal.signal(signal.SIGTERM, ln.stop)
    signal.signal(signal.SIGINT, ln.stop)
    return ln.run()


if __name__ == "__main__":
    sys.exit(main())
