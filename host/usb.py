"""USB: the native protocol over a board's USB serial console (target `usb:PORT`).

A transport under client.py, not a second protocol: `Client("usb:/dev/ttyACM0")`
opens streams from open_streams() instead of a TCP connection, and every
line and frame it sends is served on the board by the agent's own dispatcher
(device/mpota_usb.py feeds them to a conn.Conn), so a push over USB runs the
same begin / DATA / commit, the same image checks and the same trial and
rollback as over Wi-Fi (push.py's flows, unchanged).

How the bytes travel (mpremote's SerialTransport and its raw REPL):
  1. the first Client of a port interrupts the board (Ctrl-C: the app and the
     agent's event loop stop, their state stays in RAM) and enters the raw REPL;
  2. each Client is a peer on the board: `_u.start()`; each drain() of its
     stream sends what it wrote as base64 snippets `_u.feed(b"...")` of at
     most CHUNK bytes (raw-paste mode's flow control paces them), and the
     replies come back in base64 on the console;
  3. the `reset` op resets the board (`_u.end()`): the next Client of the port
     reopens it, waits for the agent's ready line (BOOT_WAIT) and its app
     (SETTLE), then interrupts it again;
  4. release() (the CLI calls it at the end of a command) resets a board this
     process interrupted, so it goes back to its agent and app.

Every snippet feeds the board's watchdog (device/mpota_usb.py); the board
is never left interrupted for longer than a snippet's round trip while a
command runs. Over USB no key is needed: the cable authenticates the peer
(docs/security.md).
"""
from __future__ import annotations

import asyncio
import atexit
import binascii
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from .errors import BoardError, ConnectionLost, Unreachable, UsageError

log = logging.getLogger("mpota.usb")

PREFIX = "usb:"
CHUNK = 2048  # bytes per feed snippet: ~2.7 KB of base64 source, compiled on the board per snippet
BOOT_WAIT = 30.0  # after a reset: the agent's ready line within this long
SETTLE = 1.0  # ... then the app this long to start, before it is interrupted again
RELEASE_WAIT = 20.0  # the end of a command waits this long for the agent's ready line
OPEN_WAIT = 10.0  # a port that is gone (the board re-enumerates after a reset) may come back this long
EXEC_TIMEOUT = 130.0  # a snippet's reply (commit hashes and checks the whole slot)
_READY = b"mpota: ready"
_BANNER = b"raw REPL; CTRL-B to exit\r\n"
# USB vendor ids of MicroPython boards: Raspberry Pi (rp2), MicroPython's own (pyboard,
# and the default of other ports)
MICROPYTHON_VIDS = (0x2E8A, 0xF055)


def is_usb(host: str) -> bool:
    return host.startswith(PREFIX)


def port_of(host: str) -> str:
    return host[len(PREFIX):]


class UsbLink:
    """One board on one serial port, for this process: the raw REPL session
    the Clients of that port share (a lock orders their snippets)."""

    def __init__(self, port: str):
        self.port = port
        self.t = None  # mpremote SerialTransport while open
        self.interrupted = False  # we stopped the board's program: release() resets it
        self.reset_at: Optional[float] = None  # the board was reset: wait for its agent
        self.device: Optional[str] = None
        self.lock = threading.Lock()
        self.ready_line: Optional[str] = None  # the last `mpota: ready` line seen

    # -- the serial port and the raw REPL --------------------------------------
    def _open_port(self, wait: float) -> None:
        from mpremote.transport_serial import SerialTransport, TransportError

        end = time.monotonic() + wait
        while True:
            try:
                self.t = SerialTransport(self.port, baudrate=115200, timeout=1)
                return
            except TransportError as e:
                if time.monotonic() >= end:
                    raise Unreachable("cannot open %s: %s" % (self.port, e),
                                      "is the board plugged in, and the port free (close other serial "
                                      "terminals, mpremote)?")
            time.sleep(0.2)

    def _wait_ready(self, limit: float, settle: float) -> bool:
        # after a reset: the agent's ready line (then `settle` s for the app to
        # start) within `limit` s of the reset; False when it did not come
        t = self.t
        end = (self.reset_at or time.monotonic()) + limit
        buf = b""
        while time.monotonic() < end:
            d = t.serial.read(t.serial.in_waiting or 1)
            if d:
                buf += d
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    self._console(ln)
                    if _READY in ln:
                        self.ready_line = ln.decode("utf-8", "replace").strip()
                        time.sleep(settle)
                        return True
        log.info("%s: no ready line within %.0f s of the reset", self.port, limit)
        return False

    def _console(self, ln: bytes) -> None:
        # the board's own output met on the way (its agent's and app's prints): -vv shows it
        log.debug("console: %s", ln.decode("utf-8", "replace").rstrip("\r"))

    def ensure(self, agent: bool = True) -> None:
        """Open the port, interrupt the board and enter the raw REPL (once);
        `agent`: import the agent's USB entry point (not for a repair: the
        agent may be what is broken)."""
        from mpremote.transport_serial import TransportError

        if self.t is not None and self.interrupted:
            return
        if self.t is None:
            self._open_port(OPEN_WAIT if self.reset_at is not None else 0)
        try:
            if self.reset_at is not None:
                self._wait_ready(BOOT_WAIT, SETTLE)  # else interrupted anyway: the agent may lack Wi-Fi
                self.reset_at = None
            self._enter_raw()
        except (TransportError, OSError) as e:
            self._drop()
            raise ConnectionLost("%s: cannot reach the raw REPL: %s" % (self.port, e))
        self.interrupted = True
        if agent:
            self.call("import mpota_usb as _u")

    def _enter_raw(self) -> None:
        # mpremote's enter_raw_repl(soft_reset=False), made patient: Ctrl-C
        # (which also aborts a raw-paste snippet that a pulled cable left half
        # sent: the firmware's pyexec ends the paste on it), then Ctrl-A only
        # once the friendly REPL's prompt is out (a REPL that starts reading
        # discards what came before: the unix port's does); three tries
        t = self.t
        for _ in range(3):
            t.serial.write(b"\r\x03")
            t.read_until(1, b">>> ", timeout=1, timeout_overall=2)
            t.serial.write(b"\r\x01")
            if t.read_until(1, _BANNER, timeout=1, timeout_overall=3).endswith(_BANNER):
                t.in_raw_repl = True
                return
        raise ConnectionLost("%s: the board does not enter its raw REPL" % self.port,
                             "is it a MicroPython board, and no other program holding the port?")

    def _drop(self) -> None:
        t, self.t = self.t, None
        if t is not None:
            try:
                t.close()
            except OSError:
                pass

    def call(self, code: str, timeout: float = EXEC_TIMEOUT) -> bytes:
        """Run `code` in the raw REPL; its stdout. ConnectionLost when the link
        fails (cable pulled); BoardError when the code raised on the board."""
        from mpremote.transport_serial import TransportError

        if self.t is None:
            raise ConnectionLost("%s: not connected" % self.port)
        try:
            out, err = self.t.exec_raw(code, timeout=timeout)
        except (TransportError, OSError) as e:
            self._drop()
            raise ConnectionLost("%s: USB link lost: %s" % (self.port, e))
        except Exception as e:  # pyserial's SerialException (an OSError subclass in most versions)
            self._drop()
            raise ConnectionLost("%s: USB link lost: %s" % (self.port, e))
        if err:
            msg = err.decode("utf-8", "replace").strip().splitlines()
            raise BoardError("%s: the board's agent failed over USB: %s" % (self.port, msg[-1] if msg else "?"),
                             "is the mpota agent installed and running? (its provisioning reinstalls it)")
        return out

    # -- the protocol's bytes -----------------------------------------------------
    def start_peer(self) -> str:
        """A new peer on the board (the last one's session closed, its bytes
        kept); -> the board's device id."""
        with self.lock:
            self.ensure()
            out = self.call("_u.start()")
            m = re.search(rb"mpota-usb (\S*)", out)
            self.device = m.group(1).decode() if m else ""
            return self.device

    def exchange(self, data: bytes) -> tuple:
        """Send `data` (lines and frames) to the board's peer; -> (its replies,
        reset due)."""
        with self.lock:
            out = bytearray()
            reset = False
            for i in range(0, len(data), CHUNK):
                b64 = binascii.b2a_base64(data[i:i + CHUNK], newline=False).decode()
                got = self.call('_u.feed(b"%s")' % b64)
                m = re.search(rb"<([A-Za-z0-9+/=]*)>(R?)", got)
                if m is None:
                    raise ConnectionLost("%s: the board's reply is not understood: %r" % (self.port, got[:80]))
                for ln in got[:m.start()].splitlines():
                    self._console(ln)
                out += binascii.a2b_base64(m.group(1))
                reset = reset or bool(m.group(2))
            return bytes(out), reset

    def close_peer(self) -> None:
        with self.lock:
            if self.t is not None and self.interrupted:
                try:
                    self.call("_u.close()")
                except (ConnectionLost, BoardError):
                    pass

    def reset(self) -> None:
        """Reset the board into its agent and app (`_u.end()`); the next
        ensure() waits for it."""
        with self.lock:
            if self.t is None or not self.interrupted:
                return
            try:
                self.t.exec_raw_no_follow("_u.end()")
            except Exception as e:  # the link went with the reset: it was due anyway
                log.info("%s: reset: %s", self.port, e)
            self._drop()
            self.interrupted = False
            self.reset_at = time.monotonic()

    # -- files, for `provision --repair` (the agent itself may be broken) ----------
    def prepare_files(self) -> None:
        """Before writing files: a watchdog that a broken agent started keeps
        running while the board sits in the REPL (the RP2040's cannot be
        stopped), so it is set to its longest timeout and fed by every
        write (_feed); none is started where none runs."""
        self.call("import ubinascii as _b\n_w = None\n"
                  "import sys\n"
                  "if sys.platform == 'rp2':\n"
                  "    import machine\n"
                  "    if machine.mem32[0x40058000] & 0x40000000:  # WATCHDOG CTRL.ENABLE\n"
                  "        _w = machine.WDT(timeout=8388)\n"
                  "def _feed():\n"
                  "    if _w is not None:\n"
                  "        _w.feed()\n")

    def write_file(self, name: str, data: bytes) -> None:
        """Write board file /`name` through the raw REPL (base64, CHUNK bytes
        a snippet, each feeding the watchdog: prepare_files)."""
        self.call("_feed()\n_o = open(%r, 'wb')" % ("/" + name))
        for i in range(0, len(data), CHUNK):
            b64 = binascii.b2a_base64(data[i:i + CHUNK], newline=False).decode()
            self.call('_o.write(_b.a2b_base64("%s"))\n_feed()' % b64)
        self.call("_o.close()\ndel _o")

    def remove_files(self, names) -> list:
        """Remove those of `names` that the board's / holds; -> the ones removed."""
        out = self.call("import os\n_l = os.listdir('/')\n_r = [n for n in %r if n in _l]\n"
                        "for n in _r:\n    os.remove('/' + n)\nprint(_r)" % (list(names),))
        return [n for n in re.findall(r"'([^']+)'", out.decode())]

    def reset_new_agent(self) -> bool:
        """Reset through the agent's own hal (just installed: the old one is
        dropped from sys.modules first), then wait for its ready line;
        -> whether it came within RELEASE_WAIT s."""
        with self.lock:
            try:
                self.t.exec_raw_no_follow("import sys\nsys.modules.pop('mpota_hal', None)\n"
                                          "import mpota_hal\nmpota_hal.reset()")
            except Exception as e:  # the link went with the reset
                log.info("%s: reset: %s", self.port, e)
            self._drop()
            self.interrupted = False
            self.reset_at = time.monotonic()
            try:
                self._open_port(OPEN_WAIT)
                return self._wait_ready(RELEASE_WAIT, 0)
            except (Unreachable, OSError) as e:
                log.info("%s: after the reset: %s", self.port, e)
                return False
            finally:
                self._drop()

    def close(self) -> None:
        """Close the port, leaving the board as it is (stopped, if we stopped it)."""
        self._drop()
        self.interrupted = False

    def release(self) -> None:
        """End of the command: a board we interrupted goes back to its agent
        and app (reset), and the command ends once its agent is ready (at
        most RELEASE_WAIT s: one without Wi-Fi never says so; not at all when
        its agent did not answer this session), so the next
        command, over USB or the network, finds it up; the port is closed."""
        if self.interrupted and self.t is not None:
            self.reset()
            if self.device is None:  # its agent never answered: no ready line will come
                return
            try:
                self._open_port(OPEN_WAIT)
                self._wait_ready(RELEASE_WAIT, 0)
            except (Unreachable, OSError) as e:
                log.info("%s: after the reset: %s", self.port, e)
        self._drop()


_LINKS: Dict[str, UsbLink] = {}


def link(port: str) -> UsbLink:
    ln = _LINKS.get(port)
    if ln is None:
        ln = _LINKS[port] = UsbLink(port)
    return ln


def release(host: str) -> None:
    """The board at `usb:PORT` back to its agent and app, if this process interrupted it."""
    ln = _LINKS.pop(port_of(host), None)
    if ln is not None:
        ln.release()


def release_all() -> None:
    """Give every board this process interrupted back to its agent and app."""
    for ln in list(_LINKS.values()):
        try:
            ln.release()
        except Exception as e:  # at exit: never mask the command's own result
            log.warning("%s: release: %s", ln.port, e)
    _LINKS.clear()


atexit.register(release_all)


# -- the streams a Client reads and writes -------------------------------------------

class _Writer:
    """The StreamWriter face of a USB peer: write() collects, drain() sends."""

    def __init__(self, ln: UsbLink, reader: asyncio.StreamReader):
        self.ln = ln
        self.reader = reader
        self.buf = bytearray()
        self.closed = False
        self.peer_open = True  # the board's peer, until wait_closed() drops it
        self.transport = self  # abort() is the transport's in asyncio

    def write(self, b) -> None:
        if self.closed:
            raise ConnectionLost("%s: USB peer closed" % self.ln.port)
        self.buf += b

    async def drain(self) -> None:
        if not self.buf:
            return
        data, self.buf = bytes(self.buf), bytearray()
        loop = asyncio.get_running_loop()
        try:
            out, reset = await loop.run_in_executor(None, self.ln.exchange, data)
        except ConnectionLost:
            self._eof()
            raise
        if out:
            self.reader.feed_data(out)
        if reset:  # the reset op's reply is in: the board resets now, the peer ends
            await loop.run_in_executor(None, self.ln.reset)
            self._eof()

    def _eof(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.feed_eof()

    def abort(self) -> None:
        self._eof()

    def close(self) -> None:
        self._eof()

    async def wait_closed(self) -> None:
        if self.peer_open:  # as a TCP close: the board closes the peer's session, keeps its bytes
            self.peer_open = False
            await asyncio.get_running_loop().run_in_executor(None, self.ln.close_peer)

    def get_extra_info(self, name, default=None):
        return default


async def open_streams(host: str, connect_timeout: float) -> tuple:
    """(reader, writer, device id) for a new peer on the board at `usb:PORT`."""
    ln = link(port_of(host))
    loop = asyncio.get_running_loop()
    dev = await loop.run_in_executor(None, ln.start_peer)
    reader = asyncio.StreamReader()
    return reader, _Writer(ln, reader), dev


# -- what needs no interruption: the console and the board list --------------------------

def check_no_reset(host: str) -> None:
    """push --no-reset cannot hold over USB: the board leaves the REPL only by a reset."""
    if is_usb(host):
        raise UsageError("--no-reset cannot hold over USB: every USB command ends with a reset that gives the "
                         "board back to its agent and app, which boots a pending image",
                         "push without --no-reset (the image boots on trial, as after a reset)")


def follow_console(port: str, on_line: Callable[[str], None], seconds: Optional[float]) -> int:
    """Show the board's console (its USB serial output) line by line, without
    interrupting it, for `seconds` (None: until Ctrl-C); the port may go and
    come back (the board resets). -> lines shown."""
    import serial  # pyserial, mpremote's

    end = None if seconds is None else time.monotonic() + seconds
    n = 0
    buf = b""
    while end is None or time.monotonic() < end:
        try:
            with serial.Serial(port, 115200, timeout=0.2) as s:
                while end is None or time.monotonic() < end:
                    buf += s.read(s.in_waiting or 1)
                    *lines, buf = buf.split(b"\n")
                    for ln in lines:
                        on_line(ln.decode("utf-8", "replace").rstrip("\r"))
                        n += 1
        except (OSError, serial.SerialException) as e:
            log.info("%s: %s: opening it again", port, e)
            time.sleep(0.3)
    if buf:
        on_line(buf.decode("utf-8", "replace").rstrip("\r"))
        n += 1
    return n


@dataclass
class UsbBoard:
    port: str
    device_id: Optional[str]  # the board's unique id: its USB serial number, the id the agent reports
    description: str
    vid_pid: str

    def fields(self) -> dict:
        return {"port": self.port, "device_id": self.device_id, "description": self.description,
                "vid_pid": self.vid_pid, "target": PREFIX + self.port}


def list_boards(ports=None) -> list:
    """The USB serial ports that are MicroPython boards, as mpremote's
    `connect list` sees them (pyserial's comports()), without opening any: on
    rp2 the USB serial number is the board's unique id in hex, which is the
    device id the agent reports. `ports`: comports()' result (tests)."""
    if ports is None:
        from serial.tools import list_ports

        ports = list_ports.comports()
    out = []
    for p in sorted(ports, key=lambda p: p.device):
        if p.vid is None:
            continue  # not a USB device (a built-in UART)
        desc = " ".join(x for x in (p.manufacturer, p.product) if x) or (p.description or "")
        if p.vid not in MICROPYTHON_VIDS and "micropython" not in desc.lower():
            continue
        sn = (p.serial_number or "").lower()
        out.append(UsbBoard(p.device, sn if re.fullmatch(r"[0-9a-f]{16}", sn) else None, desc,
                            "%04x:%04x" % (p.vid, p.pid or 0)))
    return out


def cmd_discover_usb(ctx) -> int:
    """`mpota discover --usb`: the boards on this machine's USB ports."""
    out = ctx.out
    boards = list_boards()
    out.say("%-22s %-16s %-9s %s" % ("TARGET", "ID", "VID:PID", "DESCRIPTION"))
    for b in boards:
        out.event("board", "%-22s %-16s %-9s %s" % (PREFIX + b.port, b.device_id or "-", b.vid_pid, b.description),
                  **b.fields())
    out.event("discovered", "%d board%s on USB" % (len(boards), "" if len(boards) == 1 else "s"),
              count=len(boards), usb=True)
    return 0


def cmd_logs(ctx) -> int:
    """`mpota -t usb:PORT logs [--follow] [--seconds S]`: the board's console."""
    t, a, out = ctx.target, ctx.args, ctx.out
    if not is_usb(t.host):
        raise UsageError("logs reads a board's console over USB: name it as usb:PORT (%s is not)" % ctx.spec,
                         "discover --usb lists the boards plugged in here")
    seconds = a.seconds if a.seconds is not None else (None if a.follow else 2.0)
    n = follow_console(port_of(t.host), lambda line: out.event("console", escape(line), text=line), seconds)
    out.event("logs", "%d line%s" % (n, "" if n == 1 else "s"), lines=n)
    return 0


def escape(text: str) -> str:
    from rich.markup import escape as esc

    return esc(text)
