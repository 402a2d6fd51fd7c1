# PYTHON_ARGCOMPLETE_OK
"""The `mpota` command (and `python host/flash.py`, the same CLI).

One command table, COMMANDS: a command is a handler (commands.py), a factory
for its own options, and what it needs (a device, the legacy UDP port,
several devices at once). The shared options are added to each sub-command
only where they apply, so `mpota build --help` shows no network options. The
target and the client are made once, in the command's Context, and closed
by it. docs/cli.md is the reference.
"""
from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable, Optional


from . import __version__, commands, discover, targets, usb
from .codec import mpota_lineproto as lineproto
from .client import Client, expected_device
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, MpotaError, UsageError
from .fleet import run_fleet
from .output import FleetOutput, Output

PROG = "mpota"


# --- option types ----------------------------------------------------------------------

def _positive(kind):
    def convert(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a number" % text)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be more than 0, not %s" % text)
        return v
    convert.__name__ = "positive " + kind.__name__  # argparse names the type in its message
    return convert


def _non_negative(text):  # 4096, 0x1000
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number (decimal or 0x hex)" % text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, not %s" % text)
    return v


# --- the shared options, each added only where it applies ---------------------------------

class _JoinTargets(argparse.Action):
    """-t may be repeated; the values are kept as one comma list ("a,b")."""

    def __call__(self, parser, ns, values, option_string=None):
        prev = getattr(ns, self.dest, None)
        setattr(ns, self.dest, "%s,%s" % (prev, values) if prev else values)


# name -> (flags, argparse keywords). The main parser takes them all (before the command);
# a sub-command takes those its Command lists.
SHARED = {
    "target": (("-t", "--target"), dict(
        action=_JoinTargets, metavar="NAME|HOST[:PORT]|@GROUP",
        help="the device: a name from the targets file (or the built-ins pico and sim), or "
             "HOST[:PORT] ([IPv6]:PORT); repeat it, give a comma list or a group (@GROUP) for "
             "several devices (default: $MPOTA_TARGET, else pico)")),
    "targets": (("--targets",), dict(
        metavar="FILE", help="the targets file (default: $MPOTA_TARGETS, else "
                             "$XDG_CONFIG_HOME/mpota/targets.toml, XDG_CONFIG_HOME being ~/.config "
                             "unless set)")),
    "key_file": (("--key-file",), dict(
        metavar="FILE", help="file holding the device's key (64 hex characters); default: "
                             "$MPOTA_KEY, $MPOTA_KEY_FILE, or the target's key_file")),
    "port": (("--port",), dict(type=_positive(int), metavar="N",
                               help="TCP port of the agent (default: the target's, 8472); the USB "
                                    "serial port of `provision` is --serial")),
    "udp_port": (("--udp-port",), dict(type=_positive(int), metavar="N",
                                       help="UDP port of the legacy service (default: the target's, 8473)")),
    "timeout": (("--timeout",), dict(type=_positive(float), default=10.0, metavar="S",
                                     help="seconds to wait for any answer (default 10)")),
    "connect_timeout": (("--connect-timeout",), dict(type=_positive(float), default=5.0, metavar="S",
                                                     help="seconds to wait for a connection (default 5)")),
    "parallel": (("--parallel",), dict(type=_positive(int), default=4, metavar="N",
                                       help="several devices: how many are served at once (default 4)")),
    "json": (("--json",), dict(action="store_true", default=False,
                               help="one JSON object per event line on stdout; no bar, no colour")),
    "quiet": (("-q", "--quiet"), dict(action="store_true", default=False,
                                      help="print errors and the one-line answer only")),
    "verbose": (("-v", "--verbose"), dict(action="count", default=0,
                                          help="-v: log each step, -vv: log every packet (stderr)")),
}
OUTPUT = ("json", "quiet", "verbose")
DEVICE = ("target", "targets", "key_file", "port", "timeout", "connect_timeout") + OUTPUT
LEGACY = ("target", "targets", "udp_port", "timeout") + OUTPUT


def _add_shared(p: argparse.ArgumentParser, names, sub: bool) -> None:
    g = p.add_argument_group("target and output" if {"target", "targets", "key_file"} & set(names) else "output")
    for name in names:
        flags, kw = SHARED[name]
        kw = dict(kw, dest=name)
        if sub:
            # A sub-command fills a namespace of its own and copies it over the main one:
            # SUPPRESS keeps the main parser's value when the option is not repeated here;
            # -t after the command is joined with -t before it (parse_args).
            kw["default"] = argparse.SUPPRESS
            if name == "target":
                kw["dest"] = "sub_target"
        action = g.add_argument(*flags, **kw)
        if name == "target":
            action.completer = _complete_target  # type: ignore[attr-defined]


def _complete_target(prefix, parsed_args=None, **_):
    """argcomplete: target names and @group names from the targets file (--targets, if given)."""
    return targets.complete(prefix, getattr(parsed_args, "targets", None))


# --- each command's own options ------------------------------------------------------------

def _image_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE|FOLDER",
                   help="an MCUboot image file (.img), or an app folder with a main.py to build now")
    p.add_argument("--version", metavar="X.Y.Z[+B]",
                   help="version of an image built from a folder (default: FOLDER/VERSION); "
                        "major and minor 0-255, revision 0-65535, build 0-4294967295")
    _mpy_opt(p)


def _mpy_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mpy", action="store_true",
                   help="ship the app's .py files compiled to .mpy (mpy-cross, RP2040): the device "
                        "skips its compiler and its heap peak (every .py is compiled to check it anyway)")


def _u32(text):
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    if not 0 <= v < 1 << 32:
        raise argparse.ArgumentTypeError("must be 0-4294967295, not %s" % text)
    return v


def _sign_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign-key", metavar="PEM", help="sign the built image with this Ed25519 private key "
                                                     "(`mpota keygen` makes one); default: the target's "
                                                     "sign_key, else the targets file's top-level one")
    p.add_argument("--security-counter", type=_u32, metavar="N",
                   help="put security counter N (0-4294967295) in the signed image: a device refuses "
                        "images whose counter is below the highest it has confirmed, whatever the flags")


def _slot_opt(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--slot", required=True, choices=lineproto.SLOT_NAMES, help="the slot to %s: a or b" % what)


def _push_opts(p):
    _image_opts(p)
    _sign_opt(p)
    p.add_argument("--no-reset", action="store_true",
                   help="stop after the commit: the new image is pending and boots at the next reset")
    p.add_argument("--no-confirm", action="store_true",
                   help="stop with the new version running on trial (`confirm` keeps it)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="let an older version replace the confirmed one")
    p.add_argument("--force", action="store_true",
                   help="push even when this very image already runs (a no-op otherwise), or when the "
                        "running version has this version number with other content (refused otherwise)")
    p.add_argument("--window", type=_positive(int), metavar="BYTES",
                   help="at most this many bytes in flight (default: what the device offers)")
    p.add_argument("--retries", type=_non_negative, default=5, metavar="N",
                   help="reconnects allowed during one upload; each resumes where the device left off "
                        "(default 5)")
    p.add_argument("--wait", type=_positive(float), default=60.0, metavar="S",
                   help="seconds to wait for the device to come back after the reset (default 60)")
    p.add_argument("--reuse", choices=("auto", "on", "off"), default="auto",
                   help="send only the 4 KiB sectors the board does not hold already: on, off, or auto (the "
                        "default: the target slot's always, the running slot's when a round trip is over 116 ms, "
                        "where the link and not the flash is the limit)")
    p.add_argument("--deflate", choices=("auto", "on", "off"), default="auto",
                   help="deflate the image on the wire: on, off, or auto (the default: when a round trip is over "
                        "116 ms and the image deflates by a tenth at least)")


def _build_opts(p):
    p.add_argument("folder", metavar="FOLDER", help="the app folder: main.py (defining main()) and "
                                                    "any other files and subfolders (all go in, but junk: "
                                                    "__pycache__, dotfiles, *.pyc, editor backups)")
    p.add_argument("--version", metavar="X.Y.Z[+B]",
                   help="the image version (default: FOLDER/VERSION); major and minor 0-255, "
                        "revision 0-65535, build 0-4294967295")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the image (default FOLDER-X.Y.Z.img)")
    _mpy_opt(p)
    _sign_opt(p)


def _read_opts(p):
    _slot_opt(p, "read")
    p.add_argument("--offset", type=_non_negative, default=0, metavar="N",
                   help="first byte to read, from the start of the slot (decimal or 0x hex; default 0)")
    p.add_argument("--length", type=_non_negative, default=256, metavar="N",
                   help="how many bytes to read (default 256)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the bytes to FILE instead of a hex dump")


def _dump_opts(p):
    _slot_opt(p, "save")
    p.add_argument("-o", "--output", metavar="FILE", help="where to save the image (default slot-SLOT.img)")


def _fleet_opts(p):
    from .fleet import SORT_KEYS

    p.add_argument("--sort", choices=SORT_KEYS, metavar="KEY",
                   help="order the rows by KEY: %s (default: as the targets are given; boards that "
                        "did not answer last)" % ", ".join(SORT_KEYS))
    _via_opts(p, "read the boards' retained states from this MQTT broker instead of asking each board "
                 "(-t: device ids, targets with a device_id, groups; default @broker: every board there)")


def _via_opts(p, text: str) -> None:
    from .mqtt import DEFAULT_FLEET

    p.add_argument("--via", metavar="mqtt://HOST[:PORT]", help=text)
    p.add_argument("--fleet", default=DEFAULT_FLEET, metavar="NAME",
                   help="with --via: the fleet, the boards' topic level mpota/NAME/... (default %s)" % DEFAULT_FLEET)


def _publish_opts(p):
    _image_opts(p)
    _sign_opt(p)
    p.add_argument("--dir", required=True, metavar="DIR",
                   help="the folder a web server serves (`mpota serve --dir DIR`): gets DIR/SHA256.bin and its "
                        "signed record DIR/SHA256.json")
    p.add_argument("--base-url", metavar="URL",
                   help="where DIR is served, as the boards reach it (http://HOST[:PORT][/PATH]); it goes in "
                        "the record, so `rollout DIR/SHA256.bin --via` finds the image's URL")


def _serve_opts(p):
    p.add_argument("--dir", required=True, metavar="DIR", help="the folder to serve (only its files, no listing)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
                        "interface, for real boards)")
    p.add_argument("--port", dest="http_port", type=_non_negative, default=8080, metavar="N",
                   help="the HTTP port (default 8080; 0: a free one, shown)")
    p.add_argument("--mqtt-broker", action="store_true",
                   help="also run a small MQTT broker (amqtt: pip install 'mpota[broker]') on --host, to try "
                        "the flow without Mosquitto")
    p.add_argument("--mqtt-port", type=_positive(int), default=1883, metavar="N",
                   help="the embedded broker's port (default 1883)")


def _logs_opts(p):
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep showing what the board logs (polled; Ctrl-C stops)")
    p.add_argument("--interval", type=_positive(float), default=1.0, metavar="S",
                   help="seconds between two polls with --follow (default 1)")
    p.add_argument("--seconds", type=_positive(float), default=None, metavar="S",
                   help="usb:PORT: show the console for S seconds (default 2; with --follow: until Ctrl-C)")


def _confirm_opts(p):
    p.add_argument("--force", action="store_true",
                   help="confirm even a version whose app crashed (refused otherwise)")


def _reset_opts(p):
    p.add_argument("--wait", type=_positive(float), metavar="S",
                   help="then wait up to S seconds for the device to answer again")


def _legacy_opts(p):
    _image_opts(p)
    p.add_argument("--chunk", type=int, default=1024, choices=(256, 512, 1024),
                   help="bytes per WriteRequest (default 1024)")
    p.add_argument("--no-verify", action="store_true", help="skip reading the image back")
    p.add_argument("--no-reset", action="store_true", help="do not reset after the update")


CONFIG_DIR_TEXT = "$XDG_CONFIG_HOME/mpota (~/.config/mpota)"


def _keygen_opts(p):
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="where to write the private key (default: %s/signing-key.pem); never "
                        "overwritten, mode 0600" % CONFIG_DIR_TEXT)


def _pubkey_opts(p):
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="a signing key, private or public PEM (default: %s/signing-key.pem)" % CONFIG_DIR_TEXT)
    p.add_argument("-o", "--output", metavar="FILE", help="also write the public half to FILE (PEM)")


def _trust_opts(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--provision", metavar="KEY.pem",
                   help="trust this key on a device that trusts none yet (its public half is sent)")
    g.add_argument("--add", metavar="KEY.pem", help="trust this key too (needs --signed-by)")
    g.add_argument("--drop", metavar="KEY.pem", help="stop trusting this key (needs --signed-by)")
    p.add_argument("--signed-by", metavar="KEY.pem",
                   help="the private key, trusted by the device, that signs the change")
    p.add_argument("--seq", type=_u32, metavar="N",
                   help="the change's sequence number, above the device's last (default: its last + 1); "
                        "give the same N to every device of a fleet")


def _provision_opts(p):
    p.add_argument("--serial", dest="serial_port", metavar="SERIAL",
                   help="the board's USB serial port (/dev/ttyACM0, /dev/cu.usbmodem101, COM3); "
                        "required unless --dry-run")
    # the old spelling: --port is the agent's TCP port everywhere else (deprecated here)
    p.add_argument("--port", dest="serial_port_deprecated", metavar="SERIAL", help=argparse.SUPPRESS)
    p.add_argument("--name", metavar="NAME",
                   help="the device's name: its target name and Wi-Fi hostname (reached as NAME.local); "
                        "required unless --repair")
    p.add_argument("--ssid", metavar="SSID", help="the Wi-Fi network to join; required unless --repair")
    p.add_argument("--repair", action="store_true",
                   help="only reinstall the agent (a broken one) over --serial, keeping the board's config, "
                        "device key, trust store, slots and app; nothing else is asked or recorded")
    p.add_argument("--password-file", metavar="FILE",
                   help="a file whose first line is the Wi-Fi password (default: asked for; "
                        "empty for an open network); never taken from the command line")
    p.add_argument("--country", metavar="CC", help="Wi-Fi country code (GB, US, DE, ...)")
    p.add_argument("--trust", action="append", default=[], metavar="KEY.pem",
                   help="trust this signing key's public half (repeatable): the device then boots only "
                        "images signed by it")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--mpy", dest="mpy", action="store_true", default=True,
                      help="install the agent as .mpy compiled for the board's .mpy version, or as .py "
                           "where no matching mpy-cross is installed (the default)")
    form.add_argument("--py", dest="mpy", action="store_false", help="install the agent as .py source")
    p.add_argument("--dry-run", action="store_true",
                   help="ask the board its version (read-only; marked not run when there is no board or "
                        "no --serial), then show every step and mpremote command without changing anything")
    p.add_argument("--wait", type=_positive(float), default=60.0, metavar="S",
                   help="seconds to wait for the agent's ready line after the reset (default 60)")
    p.add_argument("--device-dir", metavar="DIR",
                   help="the agent's files (default: the ones installed with mpota, or device/ of a clone)")


def _discover_opts(p):
    p.add_argument("--to", action="append", default=[], metavar="HOST[:PORTS]",
                   help="probe this address (repeatable); PORTS: N, N,M or FIRST-LAST, e.g. "
                        "127.0.0.1:9000-9099 for simulated boards (default: broadcast only)")
    p.add_argument("--broadcast", action="store_true",
                   help="broadcast the probe too when --to is given (it is the default without --to)")
    p.add_argument("--port", dest="probe_port", type=_positive(int), default=lineproto.TCP_PORT, metavar="N",
                   help="the agents' port, for the broadcast and a --to without one (default 8472)")
    p.add_argument("--wait", type=_positive(float), default=2.0, metavar="S",
                   help="seconds to collect answers (default 2; ends early once every --to address answered)")
    p.add_argument("--listen", type=_positive(float), nargs="?", const=30.0, default=None, metavar="SECONDS",
                   help="collect the boards' announces (config \"announce\") instead of probing "
                        "(default 30 s)")
    p.add_argument("--bind", default="0.0.0.0:%d" % lineproto.TCP_PORT, metavar="HOST:PORT",
                   help="where --listen receives (default 0.0.0.0:8472)")
    p.add_argument("--add", action="store_true",
                   help="record new boards in the targets file (host, port, device_id; the key comes "
                        "from provisioning)")
    p.add_argument("--usb", action="store_true",
                   help="list the MicroPython boards on this machine's USB ports instead (port, device id; "
                        "reach one as -t usb:PORT); nothing is sent to them")


def _rollout_opts(p):
    p.add_argument("image", metavar="IMAGE|FOLDER|status|resume|abort",
                   help="the image (or app folder) to roll out; or status, resume, abort of a saved rollout")
    p.add_argument("rollout_id", nargs="?", metavar="ID",
                   help="status, resume, abort: the rollout (default: the newest)")
    p.add_argument("--version", metavar="X.Y.Z[+B]", help="version of an image built from a folder")
    _mpy_opt(p)
    _sign_opt(p)
    p.add_argument("--canary", type=_non_negative, default=1, metavar="N",
                   help="boards in the first wave, the canary: any failure there pauses (default 1)")
    p.add_argument("--waves", default="10%,50%,100%", metavar="LIST",
                   help="after the canary, waves up to these cumulative shares (10%%) or counts of boards; "
                        "the last always reaches every board (default 10%%,50%%,100%%)")
    p.add_argument("--soak", default="60s", metavar="TIME",
                   help="how long a wave's boards must keep running the new image before they count as "
                        "healthy (60, 60s, 2m; default 60s)")
    p.add_argument("--max-failures", default="0", metavar="K|RATE",
                   help="failures allowed before the rollout pauses: a count (2) or a rate of the boards "
                        "tried so far (10%%); default 0")
    p.add_argument("--wait", type=_positive(float), default=60.0, metavar="S",
                   help="seconds to wait for a board to come back after its reset (default 60)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="let an older version replace the confirmed one (a board refuses it otherwise)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where rollouts are saved (default: %s/rollouts)" % CONFIG_DIR_TEXT)
    _via_opts(p, "roll out through this MQTT broker: signed commands, the boards pull the image over HTTP "
                 "(-t: device ids, targets with a device_id, groups, @broker: every board there)")
    p.add_argument("--base-url", metavar="URL",
                   help="with --via: where the published image is served (BASE/SHA256.bin); default: the url "
                        "in the record beside IMAGE (`mpota publish` writes it)")


# --- the command table -------------------------------------------------------------------

@dataclass
class Command:
    name: str
    handler: Callable           # handler(ctx) -> exit code (or a coroutine of one)
    help: str
    options: Optional[Callable[[argparse.ArgumentParser], None]] = None  # adds its own options
    shared: tuple = DEVICE      # which SHARED options apply
    fleet: bool = False         # may run on several devices at once
    many: bool = False          # the handler serves every device itself (ctx.specs)
    examples: tuple = ()
    # prepare(args) -> fields every device's Context shares (done once, before any device)
    prepare: Optional[Callable] = None
    device: bool = field(init=False)

    def __post_init__(self):
        self.device = "target" in self.shared


COMMANDS = [
    Command("push", commands.cmd_push, "upload an image (or app folder), commit, reset, check, confirm "
            "(the default command)", _push_opts, DEVICE + ("parallel",), fleet=True,
            prepare=commands.prepare_push,
            examples=("-t pico push app.img", "-t sim push examples/hello --version 1.2.0",
                      "-t pico push app.img --no-confirm", "-t @lab push app.img --parallel 8")),
    Command("rollout", commands.cmd_rollout, "roll an image out to a group in waves: a canary first, a "
            "soak per wave, pausing by itself on failures; status, resume, abort from any shell",
            _rollout_opts, DEVICE + ("parallel",), many=True,
            examples=("-t @fleet rollout app.img", "-t @fleet rollout app.img --canary 2 --waves 25%,100% "
                      "--soak 2m --max-failures 5%", "rollout status", "rollout resume", "rollout abort",
                      "-t @broker rollout releases/SHA256.bin --via mqtt://broker.lan:1883")),
    Command("publish", commands.cmd_publish, "put an image where boards pull it over HTTP: DIR/SHA256.bin "
            "and its signed release record DIR/SHA256.json", _publish_opts, ("targets",) + OUTPUT,
            examples=("publish app.img --dir releases --base-url http://192.168.1.10:8080",
                      "publish examples/hello --version 1.2.0 --sign-key release.pem --dir releases")),
    Command("serve", commands.cmd_serve, "serve a folder over HTTP/1.1 with Range (resumable pulls) for "
            "boards that update through a broker", _serve_opts, OUTPUT,
            examples=("serve --dir releases", "serve --dir releases --host 0.0.0.0 --port 8080",
                      "serve --dir releases --mqtt-broker")),
    Command("build", commands.cmd_build, "build an application image from an app folder (every file but junk)",
            _build_opts, OUTPUT, examples=("build examples/hello --version 1.2.0 -o hello.img",
                                           "build examples/hello --mpy")),
    Command("status", commands.cmd_status, "show slots, versions, space, the running app and the boot note",
            None, DEVICE + ("parallel",), fleet=True, examples=("-t pico status", "-t pico -q status")),
    Command("fleet", commands.cmd_fleet, "one row per board: version, slots, trial or confirmed, uptime, "
            "last reset, link, agent, last app error", _fleet_opts, DEVICE + ("parallel",), many=True,
            examples=("-t @lab fleet", "-t @lab fleet --sort uptime", "-t pico-1,@lab --json fleet",
                      "fleet --via mqtt://broker.lan:1883")),
    Command("logs", commands.cmd_logs, "the board's console over the network: the last few KiB of the app's "
            "and the agent's output, and the last crash's traceback (it survives resets); over USB "
            "(-t usb:PORT), the console as it runs, without interrupting it", _logs_opts,
            DEVICE + ("parallel",), many=True,
            examples=("-t pico logs", "-t pico logs --follow", "-t @lab logs", "-t pico --json logs",
                      "-t usb:/dev/ttyACM0 logs --follow")),
    Command("ping", commands.cmd_ping, "check that the device answers; show round-trip time and uptime",
            None, DEVICE + ("parallel",), fleet=True, examples=("-t 192.168.1.40:8472 ping",)),
    Command("read", commands.cmd_read, "read bytes of a slot (a hex dump, or -o FILE)", _read_opts,
            examples=("-t pico read --slot a --offset 0x20 --length 64",)),
    Command("dump", commands.cmd_dump, "save the whole image stored in a slot (its SHA-256 checked)",
            _dump_opts, examples=("-t pico dump --slot a -o a.img",)),
    Command("reset", commands.cmd_reset, "reset the device", _reset_opts, DEVICE + ("parallel",), fleet=True,
            examples=("-t pico reset --wait 30",)),
    Command("confirm", commands.cmd_confirm, "confirm the version on trial (the app normally does it itself); "
            "refused when its app crashed, unless --force",
            _confirm_opts, DEVICE + ("parallel",), fleet=True, examples=("-t pico confirm",)),
    Command("rollback", commands.cmd_rollback, "boot the last confirmed other slot at the next reset",
            examples=("-t pico rollback && mpota -t pico reset",)),
    Command("erase", commands.cmd_erase, "erase a slot that is not running", lambda p: _slot_opt(p, "erase"),
            examples=("-t pico erase --slot b",)),
    Command("legacy", commands.cmd_legacy, "push over the reference UDP protocol (stop-and-wait), "
            "read back and check", _legacy_opts, LEGACY, examples=("-t sim legacy app.img --chunk 512",)),
    Command("targets", commands.cmd_targets, "list the known targets and groups, and the file they come "
            "from (no keys shown)", None, ("targets",) + OUTPUT, examples=("targets",)),
    Command("keygen", commands.cmd_keygen, "make an Ed25519 image-signing key (imgtool's format); "
            "shows its key id, never the private key", _keygen_opts, OUTPUT,
            examples=("keygen", "keygen release.pem")),
    Command("pubkey", commands.cmd_pubkey, "show the public half and key id of a signing key", _pubkey_opts,
            OUTPUT, examples=("pubkey", "pubkey release.pem -o release.pub.pem")),
    Command("trust", commands.cmd_trust, "list the image-signing keys the device trusts; provision the "
            "first, or add/drop one with a change signed by a trusted key", _trust_opts,
            examples=("-t pico trust", "-t pico trust --provision signing.pem",
                      "-t pico trust --add new.pem --signed-by old.pem",
                      "-t pico trust --drop old.pem --signed-by new.pem")),
    Command("discover", discover.cmd_discover, "find the agents on the local network (a UDP probe, or "
            "--listen for their announces): one row per board; --add records new ones as targets",
            _discover_opts, ("targets",) + OUTPUT,
            examples=("discover", "discover --add", "discover --to 127.0.0.1:9000-9019 --json",
                      "discover --listen 60 --bind 0.0.0.0:8472", "discover --usb")),
    Command("provision", commands.cmd_provision, "set up a board over USB: device config (Wi-Fi, name), "
            "device key, trusted signing key, the agent; reset it, wait for it, record it as a target",
            _provision_opts, ("targets", "key_file") + OUTPUT,
            examples=("provision --serial /dev/ttyACM0 --ssid home --name picow-1 --trust KEY.pem",
                      "provision --ssid home --name picow-1 --dry-run", "provision --serial /dev/ttyACM0 --repair")),
]
BY_NAME = {c.name: c for c in COMMANDS}

EPILOG = """\
examples:
  %(prog)s --target pico app.img           push, reset, check, confirm
  %(prog)s -t sim examples/hello --version 1.2.0   build from a folder, push
  %(prog)s build examples/hello --version 1.2.0 -o hello.img
  %(prog)s -t pico status                  slots, versions, space
  %(prog)s -t 192.168.1.50 ping
  %(prog)s -t sim --json push app.img      one JSON object per event line
  %(prog)s -t @lab app.img                 each device of a group, 4 at once
  %(prog)s COMMAND --help                  a command's own options

keys: MPOTA_KEY (hex), MPOTA_KEY_FILE, --key-file FILE or key_file in the
targets file. Never on the command line.
exit codes: 0 ok, 1 usage/input, 2 unreachable/timeout, 3 auth, 4 busy,
5 device refused (bad image, no space, version, verify, CRC), 6 new version
did not take, 130 interrupted; over several devices, the highest device's
code. See docs/cli.md.
"""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; here 2 means unreachable, so usage is 1."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))


def version_text() -> str:
    return "mpota %s (protocol %d)" % (__version__, lineproto.PROTO)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    # allow_abbrev=False: `--key HEX` must not pass as `--key-file HEX`.
    p = _Parser(prog=prog, description="Push MicroPython apps to Pico W boards over Wi-Fi.",
                epilog=EPILOG, formatter_class=fmt, allow_abbrev=False)
    p.add_argument("--version", action="version", version=version_text(),
                   help="show the tool's version and its protocol version")
    _add_shared(p, tuple(SHARED), sub=False)
    sp = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for c in COMMANDS:
        epilog = "examples:\n" + "\n".join("  %s %s" % (prog, e) for e in c.examples) if c.examples else None
        s = sp.add_parser(c.name, help=c.help, description=textwrap.fill(c.help, 78), epilog=epilog,
                          formatter_class=fmt,
                          allow_abbrev=False)
        if c.options:
            c.options(s)
        _add_shared(s, c.shared, sub=True)
    return p


def _value_options(p: argparse.ArgumentParser) -> set:
    """The main parser's options that take a value (to find the first positional)."""
    return {s for a in p._actions for s in a.option_strings if a.nargs != 0}


def _insert_default_command(argv: list, value_opts: set) -> list:
    """`mpota [opts] IMAGE` means `mpota push [opts] IMAGE`."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a.startswith("-"):
            if a in value_opts:
                i += 1
            i += 1
            continue
        if a in BY_NAME:
            return argv
        close = difflib.get_close_matches(a, list(BY_NAME), n=1, cutoff=0.6)
        if close and not os.path.exists(os.path.expanduser(a)):
            # not a file to push but a typo of a command (`statsu`)
            raise UsageError("unknown command %r; did you mean %s?" % (a, close[0]),
                             "the commands are %s; a bare IMAGE or FOLDER (an existing path) is pushed"
                             % ", ".join(BY_NAME))
        return ["push"] + argv
    return argv


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser(prog)
    try:
        import argcomplete  # shell completion (docs/cli.md); a no-op unless the shell asks
    except ImportError:
        pass
    else:
        argcomplete.autocomplete(p)
    try:
        argv = _insert_default_command(argv, _value_options(p))
    except UsageError as e:
        p.print_usage(sys.stderr)
        p.exit(EXIT_USAGE, "%s: error: %s\nhint: %s\n" % (p.prog, e.message, e.hint))
    args = p.parse_args(argv)
    if not args.command:
        p.print_help(sys.stderr)
        raise SystemExit(EXIT_USAGE)
    given = [v for v in (args.target, vars(args).pop("sub_target", None)) if v]
    args.target_given = bool(given or os.environ.get("MPOTA_TARGET"))
    args.target = ",".join(given) or os.environ.get("MPOTA_TARGET", "pico")
    return args


# --- running a command -----------------------------------------------------------------------

class Context:
    """What a command runs with: its options, its output, and the target and client,
    each made once (on first use) and closed when the command ends."""

    def __init__(self, command: Command, args, out: Output, spec: Optional[str], prog: str,
                 shared: Optional[dict] = None):
        self.command = command.name
        self._cmd = command
        self.args = args
        self.out = out
        self.spec = spec if command.device else None
        self.specs: list = [spec] if self.spec else []  # every device of the run (Command.many)
        self.prog = prog
        self.shared = shared or {}
        self._target = None
        self._client: Optional[Client] = None
        out.hinter = lambda err: commands.with_cli_hint(err, self)

    @property
    def target(self) -> targets.Target:
        if self._target is None:
            a = self.args
            self._target = targets.resolve(self.spec, a.targets, a.key_file, a.port, a.udp_port)
        return self._target

    async def client(self, auth: bool = True) -> Client:
        """The connection to the device, opened once; `auth`: authenticate too
        (AuthError, with the hint, when no key is at hand)."""
        if self._client is None:
            t, a = self.target, self.args
            c = Client(t.host, t.port, key=t.key, connect_timeout=a.connect_timeout, timeout=a.timeout,
                       expect_device=expected_device(t))
            self._client = c
            await c.connect()
        if auth and not self._client.authenticated:
            await self._client.auth()
        return self._client

    def for_device(self, spec: str, out: Optional[Output] = None) -> "Context":
        """A Context of its own for one device of the run (same options)."""
        return Context(self._cmd, self.args, out or Output("quiet"), spec, self.prog, self.shared)

    async def close(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            await c.close()
        if self._target is not None and usb.is_usb(self._target.host):  # the board back to its agent and app
            await asyncio.get_running_loop().run_in_executor(None, usb.release, self._target.host)

    async def run(self) -> int:
        try:
            r = self._cmd.handler(self)
            return await r if asyncio.iscoroutine(r) else r
        finally:
            await self.close()

    def run_sync(self) -> int:
        if asyncio.iscoroutinefunction(self._cmd.handler):
            return asyncio.run(self.run())
        return self._cmd.handler(self)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    if verbose < 2:  # the packet log only at -vv
        logging.getLogger("bootloader_messenger").setLevel(max(level, logging.INFO))


def _interrupt_hint(command: str, seen: dict) -> Optional[str]:
    if "committed" in seen:
        return "its new image was committed before the interrupt and boots on trial at the next reset"
    if command == "rollout":
        return ("the rollout is paused and saved: `mpota rollout status` names any board left mid-push, "
                "`mpota rollout resume` goes on")
    if command in ("push", "legacy"):
        return "nothing was committed; the device keeps what it received: run the same push again to resume"
    return ""


def _expand(cmd: Command, args) -> list:
    """The single-device specs of -t; with --via (MQTT), device ids and @broker too."""
    if not cmd.device:
        return [None]
    if getattr(args, "via", None):
        from . import mqtt

        if not args.target_given:
            if cmd.name != "fleet":
                raise UsageError("name the boards to reach through the broker: -t ID, -t @GROUP or -t %s (every "
                                 "board with a state on the broker)" % mqtt.BROKER_SPEC)
            return [mqtt.BROKER_SPEC]
        return mqtt.expand_specs(args.target, args.targets)
    return targets.expand(args.target, args.targets)


def main(argv=None, prog: str = PROG) -> int:
    args = parse_args(argv, prog)
    mode = "json" if args.json else "quiet" if args.quiet else "human"
    cmd = BY_NAME[args.command]
    out = Output(mode)
    ctx = Context(cmd, args, out, args.target, prog)
    _setup_logging(args.verbose)
    try:
        specs = _expand(cmd, args)
        if cmd.many:
            ctx.specs = specs
        elif len(specs) > 1:
            if not cmd.fleet:
                raise UsageError("`%s` works on one device; %s names %d" % (cmd.name, args.target, len(specs)),
                                 "several devices at once: %s" % ", ".join(c.name for c in COMMANDS
                                                                           if c.fleet or c.many))
            fout = FleetOutput(mode, args.target, board_view=cmd.name == "status")
            fout.hinter = out.hinter
            shared = cmd.prepare(args) if cmd.prepare else {}

            def make_context(spec, dout):
                return Context(cmd, args, dout, spec, prog, shared)

            return asyncio.run(run_fleet(specs, fout, make_context, args.parallel,
                                         lambda dout: _interrupt_hint(cmd.name, dout.seen)))
        ctx.spec = specs[0]  # one device (perhaps a group of one): exactly the single-device run
        # (fleet: every device, ctx.specs)
        return ctx.run_sync()
    except KeyboardInterrupt:
        out.progress_stop()
        out.error(Interrupted("interrupted", _interrupt_hint(cmd.name, {})))
        return EXIT_INTERRUPTED
    except MpotaError as e:
        out.progress_stop()
        out.error(e)
        return e.exit_code
