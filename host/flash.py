#!/usr/bin/env python3
"""mpota host tool: push MicroPython applications to Pico W boards over Wi-Fi.

The front door: `python host/flash.py --target pico app.img` pushes an image
(or builds one from an app folder), commits it, resets the board, waits for
the new version to run on trial and confirms it. docs/cli.md is the reference.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
from pathlib import Path

# Flat imports, as on the device: the codec from shared/, our modules from host/.
_HERE = Path(__file__).resolve().parent
for _p in (_HERE.parent / "shared", _HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import proto  # noqa: E402
from client import Client, push_image, wait_for_device, within  # noqa: E402
from errors import (EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CrcMismatch,  # noqa: E402
                    DeviceError, DeviceTimeout, Interrupted, MpotaError, NotTaken, Unreachable,
                    UsageError, VerifyFailed, device_error)
from output import FleetOutput, Output  # noqa: E402
import imagefile  # noqa: E402
import targets as targets_mod  # noqa: E402

log = logging.getLogger("mpota")

COMMANDS = ("push", "build", "status", "ping", "read", "dump", "reset", "confirm", "rollback",
            "erase", "legacy", "targets")
# Global options that take a value (to find the first positional in argv).
_VALUE_OPTS = {"-t", "--target", "--targets", "--key-file", "--port", "--udp-port", "--timeout",
               "--connect-timeout", "--parallel"}
# Commands that run on several devices at once (-t a -t b, -t a,b, -t GROUP).
FLEET_COMMANDS = ("push", "status", "ping", "reset", "confirm")

EPILOG = """\
examples:
  flash.py --target pico app.img            push, reset, check, confirm
  flash.py -t sim examples/hello --version 1.2.0   build from a folder and push
  flash.py build examples/hello --version 1.2.0 -o hello.img
  flash.py -t 192.168.1.50 status
  flash.py -t [fe80::1%wlan0]:8472 ping
  flash.py -t pico push app.img --no-confirm   leave the new version on trial
  flash.py -t sim --json push app.img       one JSON object per event line
  flash.py -t sim legacy app.img            reference UDP flow with read-back
  flash.py -t greenhouse app.img            each device of a group, 4 at once
  flash.py -t pico1,pico2 -t 10.0.0.7 status   several devices, one summary

keys: MPOTA_KEY (hex), MPOTA_KEY_FILE, --key-file FILE or key_file in the
targets file (~/.config/mpota/targets.toml). Never on the command line.
exit codes: 0 ok, 1 usage/input, 2 unreachable/timeout, 3 auth, 4 busy,
5 device refused (bad image, no space, version, verify, CRC), 6 new version
did not take, 130 interrupted; over several devices, the highest device's
code. See docs/cli.md.
"""


# --- argument parsing ------------------------------------------------------------

class _JoinTargets(argparse.Action):
    """-t may be repeated; the values are kept as one comma list ("a,b")."""

    def __call__(self, parser, ns, values, option_string=None):
        prev = getattr(ns, self.dest, None)
        setattr(ns, self.dest, "%s,%s" % (prev, values) if prev else values)


def _add_common(p: argparse.ArgumentParser, sub: bool) -> None:
    """Options every command takes, before or after the command name."""
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)
    g = p.add_argument_group("target and output")
    # The subparser fills a namespace of its own and copies it over the main one, so
    # -t after the command gets its own dest; parse_args() joins both.
    g.add_argument("-t", "--target", dest="sub_target" if sub else "target", action=_JoinTargets,
                   default=d(None), metavar="NAME|HOST[:PORT]",
                   help="device: a name from the targets file, pico, sim, or HOST[:PORT]; "
                        "repeat it, give a comma list or a group for several devices "
                        "(default: $MPOTA_TARGET or pico)")
    g.add_argument("--targets", default=d(None), metavar="FILE",
                   help="targets file (default ~/.config/mpota/targets.toml)")
    g.add_argument("--key-file", default=d(None), metavar="FILE", help="file holding the device key (hex)")
    g.add_argument("--port", type=int, default=d(None), help="TCP port (overrides the target's)")
    g.add_argument("--udp-port", type=int, default=d(None), help="legacy UDP port (overrides the target's)")
    g.add_argument("--timeout", type=float, default=d(10.0), metavar="S",
                   help="seconds to wait for any answer (default 10)")
    g.add_argument("--connect-timeout", type=float, default=d(5.0), metavar="S",
                   help="seconds to wait for a connection (default 5)")
    g.add_argument("--json", action="store_true", default=d(False),
                   help="one JSON object per event line on stdout, no progress bar")
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="print errors only")
    g.add_argument("-v", "--verbose", action="count", default=d(0),
                   help="-v: log steps, -vv: log every packet")
    g.add_argument("--parallel", type=int, default=d(4), metavar="N",
                   help="several devices: how many are served at once (default 4)")


def _add_push_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE|FOLDER", help="MCUboot image file, or an app folder to build")
    p.add_argument("--version", help="version when building from a folder (else FOLDER/VERSION)")
    p.add_argument("--sign-key", metavar="PEM", help="sign the built image with this Ed25519 key")
    p.add_argument("--no-reset", action="store_true", help="stop after commit (new image pending)")
    p.add_argument("--no-confirm", action="store_true", help="stop with the new version on trial")
    p.add_argument("--allow-downgrade", action="store_true", help="let an older version replace a newer one")
    p.add_argument("--window", type=int, metavar="BYTES", help="cap the bytes in flight (default: the device's)")
    p.add_argument("--retries", type=int, default=5, help="reconnects allowed during one upload (default 5)")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the device to come back after reset (default 60)")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; here 2 means unreachable, so usage is 1."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    # allow_abbrev=False: `--key HEX` must not pass as `--key-file HEX`.
    p = _Parser(prog="flash.py", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=fmt, allow_abbrev=False)
    _add_common(p, sub=False)
    sp = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def sub(name, help_, **kw):
        s = sp.add_parser(name, help=help_, description=help_, formatter_class=fmt,
                          allow_abbrev=False, **kw)
        _add_common(s, sub=True)
        return s

    s = sub("push", "upload an image (or app folder), commit, reset, check, confirm (the default)")
    _add_push_opts(s)

    s = sub("build", "build an application image from a folder of .py/.mpy files")
    s.add_argument("folder", metavar="FOLDER")
    s.add_argument("--version", help="image version X.Y.Z[+B] (default: FOLDER/VERSION)")
    s.add_argument("-o", "--output", metavar="FILE", help="output file (default FOLDER-VERSION.img)")
    s.add_argument("--sign-key", metavar="PEM", help="sign with this Ed25519 private key")

    sub("status", "show slots, versions, the running app and the boot note")
    sub("ping", "check the device answers; show round-trip time and uptime")

    s = sub("read", "read bytes of a slot (hex dump, or -o FILE)")
    s.add_argument("--slot", required=True, choices=proto.SLOT_NAMES)
    s.add_argument("--offset", type=lambda x: int(x, 0), default=0)
    s.add_argument("--length", type=lambda x: int(x, 0), default=256)
    s.add_argument("-o", "--output", metavar="FILE")

    s = sub("dump", "save the whole image stored in a slot to a file (checks its SHA-256)")
    s.add_argument("--slot", required=True, choices=proto.SLOT_NAMES)
    s.add_argument("-o", "--output", metavar="FILE", help="default slot-SLOT.img")

    s = sub("reset", "reset the device")
    s.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="then wait up to S seconds for it to answer again")
    sub("confirm", "confirm the version on trial (the app normally does this itself)")
    sub("rollback", "boot the last confirmed other slot at the next reset")
    s = sub("erase", "erase a slot that is not running")
    s.add_argument("--slot", required=True, choices=proto.SLOT_NAMES)

    s = sub("legacy", "push over the reference UDP protocol (stop-and-wait) with read-back verify")
    s.add_argument("image", metavar="IMAGE|FOLDER")
    s.add_argument("--version", help="version when building from a folder")
    s.add_argument("--chunk", type=int, default=1024, choices=(256, 512, 1024),
                   help="bytes per WriteRequest (default 1024)")
    s.add_argument("--no-verify", action="store_true", help="skip the read-back")
    s.add_argument("--no-reset", action="store_true", help="do not reset after the update")

    sub("targets", "list the known targets (no keys shown)")
    return p


def _insert_default_command(argv: list) -> list:
    """`flash.py [opts] IMAGE` means `flash.py push [opts] IMAGE`."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a.startswith("-"):
            if a in _VALUE_OPTS:
                i += 1
            i += 1
            continue
        if a in COMMANDS:
            return argv
        return ["push"] + argv
    return argv


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(_insert_default_command(argv))
    if not args.command:
        p.print_help(sys.stderr)
        raise SystemExit(1)
    given = [v for v in (args.target, vars(args).pop("sub_target", None)) if v]
    args.target = ",".join(given) or os.environ.get("MPOTA_TARGET", "pico")
    if args.parallel < 1:
        p.error("--parallel must be at least 1")
    return args


# --- helpers ---------------------------------------------------------------------

def _target(args) -> targets_mod.Target:
    return targets_mod.resolve(args.target, args.targets, args.key_file, args.port, args.udp_port)


def _client(t, args, window=None) -> Client:
    return Client(t.host, t.port, key=t.key, connect_timeout=args.connect_timeout,
                  timeout=args.timeout, window=window)


def _same_version(a, b) -> bool:
    try:
        return proto.parse_version(a) == proto.parse_version(b)
    except (proto.ProtoError, TypeError):
        return a == b


def _fmt_size(n) -> str:
    if n is None:
        return "-"
    return "%d B" % n if n < 1024 else "%.1f KiB" % (n / 1024)


# --- commands --------------------------------------------------------------------

async def cmd_push(args, out: Output, img=None) -> int:
    img = img or imagefile.load(args.image, args.version, args.sign_key)
    t = _target(args)
    out.event("target", "target [bold]%s[/]" % (t.address if t.name == t.address
                                                else "%s (%s)" % (t.name, t.address)), **t.describe())
    _image_event(out, img)

    def on_event(name, **f):
        texts = {
            "begin": lambda: "resuming upload at %s of %s" % (_fmt_size(f["offset"]), _fmt_size(f["size"]))
            if f.get("resumed") else "uploading to slot %s" % f["slot"],
            "reconnect": lambda: "link lost (%s); reconnecting (attempt %d)" % (f["reason"], f["attempt"]),
            "resume": lambda: "resumed at %s" % _fmt_size(f["offset"]),
            "busy_wait": lambda: None,
            "uploaded": lambda: "sent %s in %.1f s (%.1f KiB/s)%s" % (
                _fmt_size(f["bytes"]), f["seconds"], f["rate"] / 1024,
                ", %s re-sent after %d reconnects" % (_fmt_size(f["resent"]), f["reconnects"])
                if f["reconnects"] else ""),
            "committed": lambda: "committed: slot %s holds %s (%s)" % (f["slot"], f["version"], f["state"]),
        }
        if name in ("uploaded", "committed"):
            out.progress_stop()
        out.event(name, texts.get(name, lambda: None)(), **f)
        if name == "begin":  # the bar only once the device has taken the upload
            out.progress_start("upload", img.size)

    try:
        res = await push_image(t.host, t.port, img.data, key=t.key, version=img.version,
                               allow_downgrade=args.allow_downgrade, window=args.window,
                               retries=args.retries, connect_timeout=args.connect_timeout,
                               timeout=args.timeout, on_progress=out.progress, on_event=on_event)
    finally:
        out.progress_stop()
    sent = res.size - res.resumed_from
    out.event("upload_stats", None, bytes=sent, seconds=round(res.seconds, 3), rate=round(res.rate),
              resent=res.bytes_resent, reconnects=res.reconnects, rewinds=res.rewinds,
              resumed_from=res.resumed_from)
    slot = res.commit.get("slot", res.slot)
    summary = dict(ok=True, slot=slot, version=img.version, bytes=res.size,
                   resent=res.bytes_resent, seconds=round(res.seconds, 3))
    if args.no_reset:
        out.event("done", "[green]done[/]: %s pending in slot %s; `flash.py reset` boots it on trial"
                  % (img.version, slot), state="pending", **summary)
        return EXIT_OK
    st = await reset_and_wait(t, args, out, slot)
    s = st.get("slots", {}).get(slot, {})
    if st.get("running") != slot or not _same_version(s.get("version"), img.version):
        raise NotTaken("after reset the device runs slot %s (%s), not %s in slot %s: %s" % (
            st.get("running"), _running_version(st), img.version, slot, st.get("boot_note") or "no boot note"))
    app = st.get("app") or {}
    if app.get("state") == "crashed":
        raise NotTaken("version %s booted but its app crashed: %s" % (img.version, app.get("error")),
                       "not confirmed: the device rolls back after %s unconfirmed resets; fix the app and "
                       "push again" % st.get("max_trials", "a few"))
    state = s.get("state")
    out.event("booted", "booted %s from slot %s (%s), app %s" % (img.version, slot, state, app.get("state")),
              slot=slot, version=s.get("version"), state=state, app=app.get("state"))
    if state == "confirmed":
        out.event("done", "[green]done[/]: %s running and confirmed (by the app) in slot %s"
                  % (img.version, slot), state="confirmed", confirmed_by="app", **summary)
        return EXIT_OK
    if args.no_confirm:
        out.event("done", "[green]done[/]: %s running on trial in slot %s; `flash.py confirm` keeps it"
                  % (img.version, slot), state=state, **summary)
        return EXIT_OK
    async with _client(t, args) as c:
        r = await c.confirm()
    out.event("done", "[green]done[/]: %s running and confirmed in slot %s" % (img.version, slot),
              state=r.get("state", "confirmed"), confirmed_by="host", **summary)
    return EXIT_OK


def _image_event(out: Output, img) -> None:
    out.event("image", "image %s %s, %s, sha256 %s…" % (
        img.version, "built from " + Path(img.source).name + "/" if img.built else Path(img.source).name,
        _fmt_size(img.size), img.sha256[:12]),
        source=img.source, built=img.built, version=img.version, size=img.size, sha256=img.sha256)


def _running_version(st) -> str:
    r = st.get("running")
    return (st.get("slots", {}).get(r) or {}).get("version") or "no version" if r else "no app"


async def reset_and_wait(t, args, out: Output, slot=None) -> dict:
    """Reset, wait for the old connection to drop, then poll until the device has
    booted (the pending mark consumed) and its app has settled."""
    c = _client(t, args)
    await c.connect(authenticate=True)
    try:
        await c.reset()
        out.event("reset", "reset; waiting for the device to come back (up to %.0f s)" % args.wait)
        try:
            await within(c.closed.wait(), min(10.0, args.wait or 10.0))
        except asyncio.TimeoutError:
            log.info("the device kept the connection open after reset; polling anyway")
    finally:
        await c.close()

    def settled(st) -> bool:
        if slot is not None and st.get("pending") == slot:
            return False  # not rebooted yet
        app = (st.get("app") or {}).get("state")
        s = (st.get("slots", {}).get(st.get("running")) or {}).get("state")
        return app in ("running", "stopped", "crashed") or s == "confirmed" or st.get("running") != slot

    t0 = time.monotonic()
    st = await wait_for_device(t.host, t.port, key=t.key, deadline_s=args.wait,
                               connect_timeout=min(args.connect_timeout, 2.0), timeout=args.timeout,
                               accept=settled)
    out.event("back", None, seconds=round(time.monotonic() - t0, 2), running=st.get("running"),
              boot_note=st.get("boot_note"))
    return st


async def cmd_status(args, out: Output) -> int:
    t = _target(args)
    async with _client(t, args) as c:
        st = await c.status()
    st = {k: v for k, v in st.items() if k not in ("id", "ok")}
    out.event("status", target=t.name, **st)  # no text: people get print_status() instead
    if out.mode == "json":
        return EXIT_OK
    print_status(out, t, st)
    return EXIT_OK


def print_status(out: Output, t, st: dict) -> None:
    say = out.say
    where = t.address if t.name == t.address else "%s (%s)" % (t.name, t.address)
    say("[bold]%s[/]  device %s" % (where, st.get("device")))
    say("agent %s on %s %s, protocol %s, auth %s" % (st.get("agent"), st.get("impl", "?"),
                                                    st.get("mp_version", ""), st.get("proto"),
                                                    st.get("auth", "?")))
    trial = "trial %d/%s" % (st.get("trial_count", 0), st.get("max_trials", "?")) if st.get("trial") else "no trial"
    say("running [bold]%s[/]  active %s  pending %s  %s" % (
        st.get("running") or "-", st.get("active") or "-", st.get("pending") or "-", trial))
    for name, s in sorted((st.get("slots") or {}).items()):
        mark = "*" if name == st.get("running") else " "
        sha = (s.get("sha256") or "")[:12]
        say("%s slot %s  %-9s %-14s %-10s %s" % (mark, name, s.get("state"), s.get("version") or "-",
                                                  _fmt_size(s.get("size")), sha))
    app = st.get("app") or {}
    say("app     %s%s%s" % (app.get("state", "-"), " " + app["name"] if app.get("name") else "",
                            " error: %s" % app["error"] if app.get("error") else ""))
    sess = st.get("session")
    if sess:
        say("session %s upload to slot %s: %s of %s" % (sess.get("kind"), sess.get("slot"),
                                                        _fmt_size(sess.get("offset")), _fmt_size(sess.get("size"))))
    say("boot    %s: %s" % (st.get("boot_reason", "-"), st.get("boot_note") or "-"))
    if st.get("mem_free") is not None:
        say("memory  %s free, %s used; uptime %.1f s" % (_fmt_size(st.get("mem_free")),
                                                       _fmt_size(st.get("mem_alloc")),
                                                       (st.get("uptime_ms") or 0) / 1000))


async def cmd_ping(args, out: Output) -> int:
    t = _target(args)
    async with _client(t, args) as c:
        t0 = time.monotonic()
        r = await c.ping()
        rtt = (time.monotonic() - t0) * 1000
        info = c.info
    out.event("pong", "pong from %s (%s): %.1f ms, uptime %.1f s, agent %s, auth %s" % (
        t.address, info.get("device"), rtt, (r.get("uptime_ms") or 0) / 1000, info.get("agent"),
        info.get("auth")), rtt_ms=round(rtt, 2), uptime_ms=r.get("uptime_ms"),
        device=info.get("device"), agent=info.get("agent"), auth=info.get("auth"),
        features=info.get("features"))
    return EXIT_OK


def _hexdump(data: bytes, base: int) -> str:
    lines = []
    for i in range(0, len(data), 16):
        row = data[i:i + 16]
        hx = " ".join("%02x" % b for b in row)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append("%08x  %-47s  %s" % (base + i, hx, asc))
    return "\n".join(lines)


async def cmd_read(args, out: Output) -> int:
    if args.length <= 0 or args.offset < 0:
        raise UsageError("--offset must be >= 0 and --length > 0")
    t = _target(args)
    async with _client(t, args) as c:
        await _need_auth(c, t)
        data = await c.read(args.slot, args.offset, args.length)
    if args.output:
        Path(args.output).write_bytes(data)
        out.event("read", "wrote %s from slot %s at %d to %s" % (_fmt_size(len(data)), args.slot, args.offset,
                                                                 args.output),
                  slot=args.slot, offset=args.offset, length=len(data), output=args.output)
    elif out.mode == "json":
        out.event("read", slot=args.slot, offset=args.offset, length=len(data), hex=data.hex())
    else:
        out.say(_hexdump(data, args.offset))
    return EXIT_OK


async def cmd_dump(args, out: Output) -> int:
    import hashlib
    t = _target(args)
    async with _client(t, args) as c:
        await _need_auth(c, t)
        st = await c.status()
        s = (st.get("slots") or {}).get(args.slot) or {}
        size = s.get("size") or 0
        if not size:
            raise UsageError("slot %s holds nothing (state %s)" % (args.slot, s.get("state")))
        output = args.output or "slot-%s.img" % args.slot
        out.progress_start("dump %s" % args.slot, size)
        try:
            data = await c.read(args.slot, 0, size, on_progress=out.progress)
        finally:
            out.progress_stop()
    Path(output).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    if s.get("sha256") and s["sha256"] != digest:
        raise VerifyFailed("slot %s read back with SHA-256 %s…, the device says %s…" % (
            args.slot, digest[:12], s["sha256"][:12]), "read it again; if it persists the flash is failing")
    out.event("dump", "saved slot %s (%s, %s) to %s; sha256 %s" % (
        args.slot, s.get("version") or "no version", _fmt_size(size), output,
        "matches" if s.get("sha256") else digest[:12] + "…"),
        slot=args.slot, size=size, output=output, sha256=digest, version=s.get("version"))
    return EXIT_OK


async def _need_auth(c: Client, t) -> None:
    if not c.authenticated:
        await c.auth()  # raises AuthError with the hint when no key is at hand


async def _simple(args, out: Output, op: str, **fields) -> dict:
    t = _target(args)
    async with _client(t, args) as c:
        await _need_auth(c, t)
        return await c.request(op, **fields)


async def cmd_reset(args, out: Output) -> int:
    t = _target(args)
    if args.wait:
        st = await reset_and_wait(t, args, out)
        out.event("done", "back: running %s, %s" % (st.get("running"), st.get("boot_note") or ""),
                  running=st.get("running"), boot_note=st.get("boot_note"))
    else:
        await _simple(args, out, "reset")
        out.event("reset", "reset sent to %s" % t.address)
    return EXIT_OK


async def cmd_confirm(args, out: Output) -> int:
    r = await _simple(args, out, "confirm")
    out.event("confirmed", "slot %s confirmed" % r.get("slot"), slot=r.get("slot"), state=r.get("state"))
    return EXIT_OK


async def cmd_rollback(args, out: Output) -> int:
    r = await _simple(args, out, "rollback")
    out.event("rollback", "slot %s boots at the next reset (`flash.py reset`)" % r.get("slot"),
              slot=r.get("slot"))
    return EXIT_OK


async def cmd_erase(args, out: Output) -> int:
    r = await _simple(args, out, "erase", slot=args.slot)
    out.event("erased", "slot %s erased" % r.get("slot", args.slot), slot=r.get("slot", args.slot),
              state=r.get("state"))
    return EXIT_OK


def cmd_build(args, out: Output) -> int:
    img = imagefile.build_folder(Path(args.folder), args.version, args.sign_key)
    output = args.output or "%s-%s.img" % (Path(args.folder).resolve().name, img.version.split("+")[0])
    Path(output).write_bytes(img.data)
    out.event("built", "built %s\n  version %s, %s, sha256 %s…" % (output, img.version, _fmt_size(img.size),
                                                                      img.sha256[:12]),
              output=output, version=img.version, size=img.size, sha256=img.sha256)
    return EXIT_OK


def cmd_targets(args, out: Output) -> int:
    path = targets_mod.targets_path(args.targets)
    table, groups = targets_mod.load_file(path, required=bool(args.targets))
    names = list(dict.fromkeys(list(targets_mod.BUILTINS) + list(table)))
    out.say("targets file: %s%s" % (path, "" if path.exists() else " (absent)"))
    for n in names:
        entry = dict(targets_mod.BUILTINS.get(n, {}))
        entry.update(table.get(n, {}))
        src = "file" if n in table else "built-in"
        out.event("target", "  %-12s %s:%s udp %s%s  (%s)" % (
            n, entry.get("host"), entry.get("port", proto.TCP_PORT), entry.get("udp_port", proto.UDP_PORT),
            "  key_file " + entry["key_file"] if entry.get("key_file") else "", src),
            name=n, host=entry.get("host"), port=entry.get("port", proto.TCP_PORT),
            udp_port=entry.get("udp_port", proto.UDP_PORT), key_file=entry.get("key_file"), source=src)
    for g, members in groups.items():
        out.event("group", "  %-12s group: %s" % (g, ", ".join(members)), name=g, members=members)
    return EXIT_OK


# --- legacy (reference UDP flow) --------------------------------------------------


def cmd_legacy(args, out: Output) -> int:
    import binascii
    from bootloader_messenger import BootloaderMessenger, LegacyError

    img = imagefile.load(args.image, args.version)
    t = _target(args)
    data = img.data
    out.event("target", "target [bold]%s[/] (%s, legacy UDP port %d)" % (t.name, t.host, t.udp_port),
              **t.describe())
    _image_event(out, img)
    try:
        m = BootloaderMessenger((t.host, t.udp_port))
    except socket.gaierror as e:
        raise Unreachable("cannot resolve %s: %s" % (t.host, e))
    step = "get_version"
    try:
        m.sock.settimeout(args.timeout)
        api, bl, note = m.get_version()
        note_s = bytes(note).rstrip(b"\0").decode("utf-8", "replace")
        out.event("version", "legacy API %d.%d, bootloader %d.%d.%d %s" % (api + bl + (note_s,)),
                  api=list(api), bootloader=list(bl), note=note_s)
        step = "start_update"
        if not m.start_update(len(data)):
            raise DeviceError("the device did not accept start_update")
        step = "write"
        out.progress_start("legacy upload", len(data))
        t0 = time.monotonic()
        try:
            for off in range(0, len(data), args.chunk):
                if not m.write(data[off:off + args.chunk]):
                    raise DeviceError("write at offset %d not acknowledged" % off)
                out.progress(min(off + args.chunk, len(data)), len(data))
        finally:
            out.progress_stop()
        secs = time.monotonic() - t0
        step = "stop_update"
        crc = binascii.crc32(data) & 0xFFFFFFFF
        if not m.stop_update(crc):
            raise CrcMismatch("the device's CRC-32 of the image differs from ours (0x%08X)" % crc,
                              "push again")
        out.event("uploaded", "sent %s in %.1f s (%.1f KiB/s), CRC-32 0x%08X matches" % (
            _fmt_size(len(data)), secs, len(data) / secs / 1024 if secs else 0, crc),
            bytes=len(data), seconds=round(secs, 3), crc32=crc)
        if not args.no_verify:
            step = "read_address"
            out.progress_start("read-back", len(data))
            try:
                for off in range(0, len(data), 1024):
                    want = data[off:off + 1024]
                    got = bytes(m.read_address(off, len(want)).data)
                    if got != want:
                        bad = next(i for i in range(len(want)) if i >= len(got) or got[i] != want[i])
                        raise VerifyFailed("read-back differs at offset %d" % (off + bad),
                                           "the stored image is corrupt; push again")
                    out.progress(off + len(want), len(data))
            finally:
                out.progress_stop()
            out.event("verified", "read-back matches all %s" % _fmt_size(len(data)), bytes=len(data))
        if not args.no_reset:
            step = "reset"
            m.reset()
            out.event("reset", "reset sent")
        out.event("done", "[green]done[/]: %s written over legacy UDP%s" % (
            img.version, "" if args.no_reset else "; the device boots it on trial (`flash.py status`)"),
            ok=True, version=img.version, bytes=len(data), seconds=round(secs, 3))
        return EXIT_OK
    except socket.timeout:
        raise DeviceTimeout("no answer to %s from %s UDP port %d within %.0f s" % (
            step, t.host, t.udp_port, args.timeout),
            "is the legacy UDP service on (sim: --legacy-udp) and the port right?")
    except LegacyError as e:
        code = e.code
        err = device_error(code, "legacy %s refused (%s)" % (step, e), num=e.num, op=step)
        if code == "auth_required":
            err.hint = ("the legacy UDP service has no authentication, so the device serves it only "
                        "with auth off (sim: --no-auth); use `push` instead")
        raise err
    except AssertionError as e:
        raise DeviceError("malformed answer to %s: %s" % (step, e), "is this an mpota device on that port?")
    except OSError as e:
        raise Unreachable("legacy %s to %s UDP port %d failed: %s" % (step, t.host, t.udp_port, e))
    finally:
        m.close()


# --- main --------------------------------------------------------------------------

ASYNC_COMMANDS = {"push": cmd_push, "status": cmd_status, "ping": cmd_ping, "read": cmd_read,
                  "dump": cmd_dump, "reset": cmd_reset, "confirm": cmd_confirm,
                  "rollback": cmd_rollback, "erase": cmd_erase}
SYNC_COMMANDS = {"build": cmd_build, "legacy": cmd_legacy, "targets": cmd_targets}


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    if verbose < 2:  # the packet log only at -vv
        logging.getLogger("bootloader_messenger").setLevel(max(level, logging.INFO))


# --- several devices at once -----------------------------------------------------------

def fleet_exit_code(codes) -> int:
    """0 if every device succeeded, else the highest device exit code: the codes
    grow with how far an update got before it failed (1 nothing sent ... 6 uploaded
    but did not take), and 130 (interrupted) tops them all."""
    return max(codes, default=EXIT_OK)


async def run_fleet(args, specs: list, out: FleetOutput) -> int:
    """Run the command on every device, --parallel at a time, each exactly as it
    runs alone; one device's failure does not stop the others."""
    img = None
    if args.command == "push":  # load (or build) the image once, before any device is touched
        img = imagefile.load(args.image, args.version, args.sign_key)
    gate = asyncio.Semaphore(args.parallel)
    rows: dict = {}

    async def one(spec: str) -> None:
        dout = out.device(spec)
        dargs = argparse.Namespace(**{**vars(args), "target": spec})
        t0 = time.monotonic()
        try:
            async with gate:
                t0 = time.monotonic()  # the device's own time, not its wait for a turn
                if args.command == "push":
                    code = await cmd_push(dargs, dout, img)
                else:
                    code = await ASYNC_COMMANDS[args.command](dargs, dout)
        except MpotaError as e:
            dout.error(e)
            code = e.exit_code
        except Exception as e:  # a bug met on one device must not take the others down
            log.debug("%s failed", spec, exc_info=True)
            dout.error(MpotaError("unexpected %s: %s" % (type(e).__name__, e), "run with -v and report it"))
            code = EXIT_USAGE
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels us; the connection closes
            code = EXIT_INTERRUPTED
            hint = None if args.command == "push" else ""  # None: the push hint (resume)
            if "committed" in dout.seen:
                hint = "its new image was committed before the interrupt and boots on trial at the next reset"
            dout.error(Interrupted("interrupted", hint))
        rows[spec] = _fleet_row(spec, dout, code, time.monotonic() - t0)

    out.start()
    tasks = [asyncio.create_task(one(s)) for s in specs]
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        # Ctrl-C: each device task has recorded itself as interrupted; wait for their
        # connections to close, then report instead of dying with a traceback.
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        out.stop()
    results = [rows.get(s) or _fleet_row(s, None, EXIT_INTERRUPTED, 0.0) for s in specs]
    code = fleet_exit_code(r["exit_code"] for r in results)
    out.summary(results, code)
    return code


def _fleet_row(spec: str, dout, code: int, seconds: float) -> dict:
    seen = dout.seen if dout else {}
    err = seen.get("error") or {}
    version = (seen.get("done") or {}).get("version")
    st = seen.get("status")
    if version is None and st:  # status: the running version
        version = ((st.get("slots") or {}).get(st.get("running")) or {}).get("version")
    result = "ok" if code == EXIT_OK else "%s (%d)" % (err.get("code") or err.get("error") or "failed", code)
    return {"target": spec, "ok": code == EXIT_OK, "result": result, "exit_code": code,
            "version": version, "seconds": round(seconds, 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    mode = "json" if args.json else "quiet" if args.quiet else "human"
    out = Output(mode)
    _setup_logging(args.verbose)
    try:
        if args.command in ("build", "targets"):
            return SYNC_COMMANDS[args.command](args, out)
        specs = targets_mod.expand(args.target, args.targets)
        if len(specs) > 1:
            if args.command not in FLEET_COMMANDS:
                raise UsageError("`%s` works on one device; %s names %d" % (args.command, args.target, len(specs)),
                                 "several devices at once: %s" % ", ".join(FLEET_COMMANDS))
            out = FleetOutput(mode, args.target)
            return asyncio.run(run_fleet(args, specs, out))
        args.target = specs[0]  # one device (perhaps a group of one): exactly the single-device run
        if args.command in SYNC_COMMANDS:
            return SYNC_COMMANDS[args.command](args, out)
        return asyncio.run(ASYNC_COMMANDS[args.command](args, out))
    except KeyboardInterrupt:
        out.progress_stop()
        hint = ("nothing was committed; the device keeps what it received: run the same push again to resume"
                if args.command in ("push", "legacy") else "")
        out.error(Interrupted("interrupted", hint))
        return EXIT_INTERRUPTED
    except MpotaError as e:
        out.progress_stop()
        out.error(e)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
