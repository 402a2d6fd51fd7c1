"""What each CLI command does and shows. The flows themselves are library
functions (push.py, client.py, images.py); a handler calls one, then turns its
events and result into lines for people or JSON events (output.py).

Every handler takes a cli.Context (options, output, and the target and
client, made once). This module is also the one place where hints name
commands and flags (`with_cli_hint`): the library's errors know nothing of them.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


from .codec import mpota_lineproto as lineproto
from . import images, mqtt as mqtt_mod, push as flows, targets as targets_mod, usb
from .errors import (EXIT_OK, AuthError, BadImage, BelowFloor, BoardNotReady, Code, CrashedTrial, DeviceError,
                     DeviceTimeout, LocalNameUnresolved, MpotaError, NoSpace, Unreachable, UsageError, VerifyFailed,
                     VersionClash, VersionRefused)
from .output import fmt_rate, fmt_size
from rich.markup import escape
from .status import Status


# --- hints that name commands and flags: one table ------------------------------------

@dataclass(frozen=True)
class Hint:
    """A row of HINTS: it applies to an error of class `cls` (or a subclass) whose
    DeviceError code is one of `codes` and whose op is `op` (when given), met by
    a command in `commands` (any when empty) and not in `not_commands`.
    `text(err, run)` is the new hint; None: the row does not apply after all."""

    cls: type
    text: Callable[[Any, "_Run"], Optional[str]]  # Any: an instance of cls
    codes: tuple = ()
    op: Optional[str] = None
    commands: tuple = ()
    not_commands: tuple = ()

    def applies(self, err: MpotaError, command: str) -> bool:
        return (isinstance(err, self.cls)
                and (not self.codes or getattr(err, "code", None) in self.codes)
                and (self.op is None or getattr(err, "op", None) == self.op)
                and (not self.commands or command in self.commands)
                and command not in self.not_commands)


@dataclass(frozen=True)
class _Run:
    """What a hint may name: `prog`, the command line that reaches this device
    (`run`: "mpota -t pico"), and the command's cli.Context."""

    ctx: Any

    @property
    def prog(self) -> str:
        return self.ctx.prog

    @property
    def run(self) -> str:
        return "%s -t %s" % (self.ctx.prog, self.ctx.spec) if self.ctx.spec else self.ctx.prog


def _key_file(err: LocalNameUnresolved, ctx: Any) -> str:
    """The key file to give with the board's IP: the target's, else the one provision makes."""
    kf = getattr(getattr(ctx, "_target", None), "key_file", None)
    return kf or str(targets_mod.config_dir() / "keys" / ("%s.key" % err.name))


def _app_crashed(err, r: _Run) -> str:
    if err.rollback_slot:
        return ("it stays on trial until the device resets: `%s rollback` then `%s reset` returns to slot %s "
                "now; otherwise the device rolls back by itself after %s unconfirmed resets"
                % (r.run, r.run, err.rollback_slot, err.max_trials or "a few"))
    return "there is no confirmed version to roll back to: fix the app and push again"


def _status_says_why(err, r: _Run) -> str:
    return "`%s status` shows why (its boot line)" % r.run


# First row that applies wins: the narrower rows come first.
HINTS = (
    Hint(LocalNameUnresolved, lambda e, r: "%s: `%s -t IP --key-file %s %s` (IP: the board's address)" % (
        e.hint, r.prog, _key_file(e, r.ctx), r.ctx.command)),
    Hint(mqtt_mod.BrokerUnreachable, lambda e, r: "%s (`%s serve --dir DIR --mqtt-broker` runs a small one to "
                                                  "try)" % (e.hint, r.prog)),
    Hint(Unreachable, lambda e, r: "%s; `%s ping` checks that it answers" % (e.hint, r.run),
         not_commands=("ping",)),
    Hint(DeviceTimeout, lambda e, r: "is the legacy UDP service on (tools/sim.py --legacy-udp) and --udp-port "
                                     "right?", commands=("legacy",)),
    Hint(DeviceError, lambda e, r: "%s (tools/sim.py --no-auth); the native protocol authenticates: "
                                   "`%s push IMAGE`" % (e.hint, r.run),
         codes=(Code.AUTH_REQUIRED,), commands=("legacy",)),
    Hint(AuthError, lambda e, r: e.hint, codes=(Code.AUTH_FAILED,)),  # the wrong key: no flag helps
    Hint(AuthError, lambda e, r: e.hint + ", or --key-file FILE"),
    Hint(NoSpace, lambda e, r: "%s; `%s status` shows the slot size and free space" % (e.hint, r.run)),
    # the anti-rollback floor: no flag lets a lower counter in (docs/security.md)
    Hint(BelowFloor, lambda e, r: "the device's anti-rollback floor refuses it whatever the flags "
                                  "(--allow-downgrade cannot help): build it from its folder with "
                                  "--security-counter N, N at least %s, and sign it"
                                  % (e.floor if e.floor is not None else "the device's floor")),
    Hint(VersionRefused, lambda e, r: "build it with a higher --version, or push it with --allow-downgrade"),
    Hint(VersionClash, lambda e, r: "build it with a new --version, or push it with --force to replace the "
                                    "running one anyway"),
    Hint(CrashedTrial, lambda e, r: "`%s rollback` then `%s reset` returns to the confirmed version; or fix "
                                    "the app and push again; `%s confirm --force` keeps the crashed one anyway"
                                    % (r.run, r.run, r.run)),
    Hint(BadImage, lambda e, r: "rebuild it: `%s build FOLDER --version X.Y.Z`" % r.prog),
    Hint(flows.AppCrashed, _app_crashed),
    # push() tells why begin found the device busy with a trial: its app crashed
    Hint(DeviceError, lambda e, r: None if not e.trial_crash else (
        "the version on trial crashed (%s): `%s rollback` then `%s reset` returns to the confirmed one; "
        "or fix the app and push it once that is done" % (e.trial_crash, r.run, r.run)),
        codes=(Code.INCORRECT_STATE,), op="begin"),
    Hint(DeviceError, lambda e, r: "`%s trust` lists the keys the device trusts and the last change's seq"
         % r.run, codes=(Code.INCORRECT_STATE, Code.SIGNATURE_INVALID, Code.BAD_REQUEST), commands=("trust",)),
    Hint(DeviceError, lambda e, r: "sign the image with a key the device trusts (--sign-key KEY.pem; `%s "
                                   "trust` lists them, `%s pubkey KEY.pem` shows a key's fingerprint)"
                                   % (r.run, r.prog), codes=(Code.SIGNATURE_INVALID,), op="begin"),
    Hint(DeviceError, lambda e, r: "a version is on trial: `%s confirm` keeps it; `%s rollback` then `%s "
                                   "reset` returns to the confirmed one" % (r.run, r.run, r.run),
         codes=(Code.INCORRECT_STATE,), op="begin"),
    Hint(flows.OldSlotBooted, _status_says_why),
    Hint(DeviceError, _status_says_why, codes=(Code.INCORRECT_STATE,)),
    Hint(DeviceError, lambda e, r: "`%s status` shows the slot sizes" % r.run, codes=(Code.OUT_OF_RANGE,)),
    Hint(DeviceError, lambda e, r: "%s: `%s reset`, then run the command again" % (e.hint.split(";")[0], r.run),
         codes=(Code.NO_MEMORY,)),
    Hint(DeviceError, lambda e, r: "unexpected device error: `%s status`, then `%s reset`, may help"
         % (r.run, r.run), codes=(Code.INTERNAL,)),
    Hint(BoardNotReady, lambda e, r: "%s: `%s -t %s ping`" % (e.hint, r.prog, r.ctx.args.name),
         commands=("provision",)),
    Hint(targets_mod.UnknownTarget, lambda e, r: "%s; `%s targets` lists them" % (e.hint, r.prog)),
)


def with_cli_hint(err: MpotaError, ctx) -> MpotaError:
    """`err` with a hint that names the command or flag that helps, where one does:
    the first row of HINTS that applies. ctx: the command's cli.Context (prog,
    command and target spec)."""
    for h in HINTS:
        if h.applies(err, ctx.command):
            text = h.text(err, _Run(ctx))
            if text is not None:
                err.hint = text
                break
    return err


# --- push ----------------------------------------------------------------------------

def load_image(args, default_key: Optional[str] = None) -> images.Image:
    """The image to push: --sign-key, else `default_key` (the target's or the targets
    file's sign_key) signs a folder build; a default key never applies to an image file."""
    key = args.sign_key or (default_key if Path(args.image).expanduser().is_dir() else None)
    return images.load(args.image, args.version, key, args.mpy, args.security_counter)


def default_sign_key(args) -> Optional[str]:
    """The targets file's top-level sign_key (None when absent or the file has none)."""
    return targets_mod.load_config(targets_mod.targets_path(getattr(args, "targets", None)))["sign_key"]


def prepare_push(args) -> dict:
    """Done once before any device: build (or check) the image with the file's default key."""
    key = args.sign_key or default_sign_key(args)
    return {"images": {key: load_image(args, key)}}


def _push_image(ctx) -> images.Image:
    """This device's image: one build per signing key, shared by the devices of a fleet run."""
    key = ctx.args.sign_key or ctx.target.sign_key
    cache = ctx.shared.setdefault("images", {})
    if key not in cache:
        cache[key] = load_image(ctx.args, key)
    return cache[key]


def _target_line(t) -> str:
    return t.address if t.name == t.address else "%s (%s)" % (t.name, t.address)


def build_summary(img) -> str:
    """What a folder build put in the image and what it left out, for people ("" if not built)."""
    if not img.built or img.files is None:
        return ""
    n = len(img.files)
    text = "\n  %d file%s, %s, in an image of %s" % (n, "" if n == 1 else "s", fmt_size(img.file_bytes),
                                                   fmt_size(img.size))
    if img.excluded:
        text += "\n  excluded (junk): %s" % ", ".join(img.excluded)
    if img.signed_with:
        text += "\n  signed with %s" % img.signed_with
    return text


def build_fields(img) -> dict:
    """The JSON fields of a folder build: its files and what was excluded."""
    if not img.built or img.files is None:
        return {}
    return {"files": img.files, "file_bytes": img.file_bytes, "excluded": img.excluded or [],
            "signed_with": img.signed_with}


def _image_event(out, img) -> None:
    out.event("image", "image %s %s, %s, sha256 %s…%s" % (
        img.version, "built from " + Path(img.source).name + "/" if img.built else Path(img.source).name,
        fmt_size(img.size), img.sha256[:12], build_summary(img)),
        source=img.source, built=img.built, version=img.version, size=img.size, sha256=img.sha256,
        **build_fields(img))


def _push_text(ctx, name: str, f: dict):
    """The line people see for a push event (None: JSON only)."""
    run = "%s -t %s" % (ctx.prog, ctx.spec)
    if name == "unchanged":
        return "%s already runs; nothing to do (slot %s, %s; --force reinstalls it)" % (
            f["version"], f["slot"], f["state"])
    if name == "begin":
        if f.get("resumed"):
            return "resuming upload at %s of %s" % (fmt_size(f["offset"]), fmt_size(f["size"]))
        return "uploading to slot %s" % f["slot"]
    if name == "held":
        return "%d of %d sectors %s slot %s: not sent" % (
            f["sectors"], f["of"], "kept where they are in" if f["slot"] == f.get("target") else "copied from",
            f["slot"])
    if name == "update_mode":
        return "the device is in lean mode: it restarts into update mode to take the image; waiting"
    if name == "reconnect":
        return "link lost (%s); reconnecting (attempt %d)" % (f["reason"], f["attempt"])
    if name == "resume":
        return "resumed at %s" % fmt_size(f["offset"])
    if name == "uploaded":
        return "sent %s in %.1f s (%s)%s" % (
            fmt_size(f["bytes"]), f["seconds"], fmt_rate(f["rate"]),
            ", %s re-sent after %d reconnects" % (fmt_size(f["resent"]), f["reconnects"]) if f["reconnects"] else "")
    if name == "committed":
        return "committed: slot %s holds %s (%s)" % (f["slot"], f["version"], f["state"])
    if name == "reset":
        return "reset; waiting for the device to come back (up to %.0f s)" % f["wait"]
    if name == "booted":
        return "booted %s from slot %s (%s), app %s" % (f["version"], f["slot"], f["state"], f["app"])
    if name == "done":
        if f.get("unchanged"):
            return None  # the `unchanged` line said it all
        if f["state"] == "pending":
            return "[green]done[/]: %s pending in slot %s; `%s reset` boots it on trial" % (
                f["version"], f["slot"], run)
        if f["state"] == "confirmed":
            return "[green]done[/]: %s running and confirmed%s in slot %s" % (
                f["version"], " (by the app)" if f.get("confirmed_by") == "app" else "", f["slot"])
        return "[green]done[/]: %s running on trial in slot %s; `%s confirm` keeps it" % (
            f["version"], f["slot"], run)
    return None


_AUTO_ON_OFF = {"auto": None, "on": True, "off": False}  # --reuse, --deflate


async def cmd_push(ctx) -> int:
    args, out = ctx.args, ctx.out
    t = ctx.target
    if args.no_reset:
        usb.check_no_reset(t.host)
    img = _push_image(ctx)
    out.event("target", "target [bold]%s[/]" % _target_line(t), **t.describe())
    _image_event(out, img)

    def on_event(name, **f):
        if name in ("uploaded", "committed"):
            out.progress_stop()
        out.event(name, _push_text(ctx, name, f), **f)
        if name == "begin":  # the bar only once the device has taken the upload
            out.progress_start("upload", img.size)

    try:
        await flows.push(t, img, confirm=not args.no_confirm, reset=not args.no_reset,
                         allow_downgrade=args.allow_downgrade, force=args.force, window=args.window,
                         retries=args.retries,
                         wait=args.wait, connect_timeout=args.connect_timeout, timeout=args.timeout,
                         on_event=on_event, on_progress=out.progress,
                         reuse=_AUTO_ON_OFF[args.reuse], deflate=_AUTO_ON_OFF[args.deflate])
    finally:
        out.progress_stop()
    return EXIT_OK


def cmd_legacy(ctx) -> int:
    args, out = ctx.args, ctx.out
    img = images.load(args.image, args.version, mpy=args.mpy)
    t = ctx.target
    out.event("target", "target [bold]%s[/] (%s, legacy UDP port %d)" % (t.name, t.host, t.udp_port),
              **t.describe())
    _image_event(out, img)
    phase = []

    def on_progress(done, total, name):
        if phase[-1:] != [name]:
            out.progress_stop()
            out.progress_start("legacy upload" if name == "upload" else name, total)
            phase.append(name)
        out.progress(done, total)

    def on_event(name, **f):
        out.progress_stop()
        texts = {
            "version": lambda: "legacy API %d.%d, bootloader %d.%d.%d %s" % tuple(
                f["api"] + f["bootloader"] + [f["note"]]),
            "uploaded": lambda: "sent %s in %.1f s (%s), CRC-32 0x%08X matches" % (
                fmt_size(f["bytes"]), f["seconds"], fmt_rate(f["bytes"] / f["seconds"] if f["seconds"] else 0),
                f["crc32"]),
            "verified": lambda: "read-back matches all %s" % fmt_size(f["bytes"]),
            "reset": lambda: "reset sent",
        }
        out.event(name, texts[name]() if name in texts else None, **f)

    try:
        r = flows.legacy_push(t, img, chunk=args.chunk, verify=not args.no_verify, reset=not args.no_reset,
                              timeout=args.timeout, on_event=on_event, on_progress=on_progress)
    finally:
        out.progress_stop()
    out.event("done", "[green]done[/]: %s written over legacy UDP%s" % (
        img.version, "" if args.no_reset else "; the device boots it on trial (`%s -t %s status`)"
        % (ctx.prog, ctx.spec)), ok=True, version=img.version, bytes=r.bytes, seconds=round(r.seconds, 3))
    return EXIT_OK


# --- device queries and small operations ---------------------------------------------

async def cmd_status(ctx) -> int:
    c = await ctx.client(auth=False)
    st = await c.status()
    st = {k: v for k, v in st.items() if k not in ("id", "ok")}
    if "slot_size" not in st and c.info.get("slot_size"):
        st["slot_size"] = c.info["slot_size"]  # agents that report it in hello only
    t, out = ctx.target, ctx.out
    out.event("status", target=t.name, **st)  # no text: people get the lines below
    s = Status.of(st)
    rs = s.running_slot
    out.result("%s: %s" % (_target_line(t), "slot %s, %s, %s, app %s" % (
        s.running, s.running_version or "no version", rs.state, s.app_state or "-")
        if rs else "no app installed"))
    if out.mode == "human":
        print_status(out, st)
    return EXIT_OK


def print_status(out, st: dict) -> None:
    say, s = out.say, Status.of(st)
    say("device  %s, agent %s on %s %s" % (st.get("device"), st.get("agent"), st.get("impl", "?"),
                                            st.get("mp_version", "")))
    say("link    protocol %s, auth %s" % (st.get("proto"), st.get("auth", "?")))
    if st.get("trust") is not None:  # the signing keys it trusts (fingerprints: `mpota pubkey KEY.pem`)
        if s.trust_keys:
            say("keys    %s" % " ".join(s.trust_keys))  # 4 keys fit 80 columns; `trust` shows the seq
        elif s.signed_images:
            say("keys    [bold]trust store unusable[/]: every image is refused (status --json says why)")
        else:
            say("keys    none trusted: [bold]unsigned images are accepted[/] (`trust --provision`)")
    trial = "trial %d/%s" % (s.trial_count, s.max_trials or "?") if s.trial else "no trial"
    say("running [bold]%s[/]  active %s  pending %s  %s" % (s.running or "-", s.active or "-", s.pending or "-",
                                                           trial))
    space = ["slot size %s" % fmt_size(st["slot_size"])] if st.get("slot_size") else []
    if st.get("max_image") is not None:
        space.append("largest image %s" % fmt_size(st["max_image"]))
    if st.get("free") is not None:
        space.append("free %s" % fmt_size(st["free"]))
    if space:
        say("space   " + ", ".join(space))
    for name, slot in sorted(s.slots.items()):
        mark = "*" if name == s.running else " "
        say(("%s slot %s  %-9s %-14s %-10s %s" % (mark, name, slot.state, slot.version or "-",
                                                   fmt_size(slot.size), slot.sha256[:12])).rstrip())
    say("app     %s%s%s" % (s.app_state or "-", " " + s.app_name if s.app_name else "",
                            " error: %s" % s.app_error if s.app_error else ""))
    sess = st.get("session")
    if sess:
        say("session %s upload to slot %s: %s of %s" % (sess.get("kind"), sess.get("slot"),
                                                        fmt_size(sess.get("offset")), fmt_size(sess.get("size"))))
    say("boot    %s: %s" % (s.boot_reason or "-", s.boot_note or "-"))
    if s.last_crash:  # saved on the board, maybe by an earlier boot or version: it says which
        say("crash   %s (`logs` shows it)" % escape(s.last_crash))
    if st.get("mem_free") is not None:
        say("memory  %s free, %s used; uptime %.1f s" % (fmt_size(st.get("mem_free")),
                                                       fmt_size(st.get("mem_alloc")),
                                                       (st.get("uptime_ms") or 0) / 1000))


async def read_status(ctx) -> Status:
    """The device's Status, as `status` reads it: the whole reply when a key is at
    hand (the client authenticates), else the part a stranger gets."""
    c = await ctx.client(auth=False)
    return Status.of(await c.status())


async def cmd_fleet(ctx) -> int:
    """One row per board (fleet.board_row), read `--parallel` at a time, in the
    order given or --sort's; a board that does not answer is a row saying why.
    --via: the rows come from the boards' retained states on the broker."""
    from .fleet import gather_rows

    args = ctx.args
    if args.via:
        return await _fleet_via(ctx)

    async def read(spec: str) -> Status:
        sub = ctx.for_device(spec)
        try:
            return await read_status(sub)
        finally:
            await sub.close()

    return _show_fleet(ctx, await gather_rows(ctx.specs, read, args.parallel))


async def _fleet_via(ctx) -> int:
    from . import mqtt
    from .fleet import board_row

    a = ctx.args
    async with mqtt.Link(a.via, a.fleet, timeout=a.timeout) as link:
        rows = []
        for spec in link.expand(ctx.specs):
            try:
                rows.append(board_row(spec, link.status(mqtt.device_id(spec, a.targets))))
            except MpotaError as e:
                rows.append(board_row(spec, None, e))
    if not rows:
        ctx.out.say("no board has a state on %s under fleet %s" % (a.via, a.fleet))
    return _show_fleet(ctx, rows)


def _show_fleet(ctx, rows: list) -> int:
    from .fleet import fleet_exit_code, sort_rows
    from .output import fleet_table

    out = ctx.out
    rows = sort_rows(rows, ctx.args.sort)
    code = fleet_exit_code(r["error"]["exit_code"] for r in rows if r["error"])
    for r in rows:
        out.event("board", **r)  # no text: people get the table
    if out.mode == "human" and rows:
        out.console.print(fleet_table(rows, min(out.console.width, 200)))
    ok = sum(1 for r in rows if r["ok"])
    out.event("fleet", boards=len(rows), answered=ok, exit_code=code)
    out.result("%d of %d boards answered" % (ok, len(rows)))
    return code


async def cmd_ping(ctx) -> int:
    c = await ctx.client(auth=False)
    t0 = time.monotonic()
    r = await c.ping()
    rtt = (time.monotonic() - t0) * 1000
    info = c.info
    ctx.out.event("pong", "pong from %s (%s): %.1f ms, uptime %.1f s, agent %s, auth %s" % (
        ctx.target.address, info.get("device"), rtt, (r.get("uptime_ms") or 0) / 1000, info.get("agent"),
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


async def cmd_read(ctx) -> int:
    args, out = ctx.args, ctx.out
    if args.length <= 0 or args.offset < 0:
        raise UsageError("--offset must be >= 0 and --length > 0")
    c = await ctx.client()
    data = await c.read(args.slot, args.offset, args.length)
    if args.output:
        Path(args.output).write_bytes(data)
        out.event("read", "wrote %s from slot %s at %d to %s" % (fmt_size(len(data)), args.slot, args.offset,
                                                                 args.output),
                  slot=args.slot, offset=args.offset, length=len(data), output=args.output)
    elif out.mode == "json":
        out.event("read", slot=args.slot, offset=args.offset, length=len(data), hex=data.hex())
    else:
        out.say(_hexdump(data, args.offset))
    return EXIT_OK


async def cmd_dump(ctx) -> int:
    args, out = ctx.args, ctx.out
    c = await ctx.client()
    s = Status.of(await c.status()).slot(args.slot)
    size = s.size or 0
    if not size:
        raise UsageError("slot %s holds nothing (state %s)" % (args.slot, s.state))
    output = args.output or "slot-%s.img" % args.slot
    out.progress_start("dump %s" % args.slot, size)
    try:
        data = await c.read(args.slot, 0, size, on_progress=out.progress)
    finally:
        out.progress_stop()
    Path(output).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    if s.sha256 and s.sha256 != digest:
        raise VerifyFailed("slot %s read back with SHA-256 %s…, the device says %s…" % (
            args.slot, digest[:12], s.sha256[:12]), "read it again; if it persists the flash is failing")
    out.event("dump", "saved slot %s (%s, %s) to %s; sha256 %s" % (
        args.slot, s.version or "no version", fmt_size(size), output,
        "matches" if s.sha256 else digest[:12] + "…"),
        slot=args.slot, size=size, output=output, sha256=digest, version=s.version)
    return EXIT_OK


async def cmd_reset(ctx) -> int:
    args, out, t = ctx.args, ctx.out, ctx.target
    if args.wait:
        st = await flows.reset_and_wait(t, wait=args.wait, connect_timeout=args.connect_timeout,
                                        timeout=args.timeout,
                                        on_event=lambda name, **f: out.event(name, _push_text(ctx, name, f), **f))
        out.event("done", "back: running %s, %s" % (st.running, st.boot_note or ""),
                  running=st.running, boot_note=st.boot_note)
    else:
        await (await ctx.client()).reset()
        out.event("reset", "reset sent to %s" % t.address)
    return EXIT_OK


async def cmd_confirm(ctx) -> int:
    r = await flows.confirm_trial(await ctx.client(), force=ctx.args.force)
    ctx.out.event("confirmed", "slot %s confirmed" % r.get("slot"), slot=r.get("slot"), state=r.get("state"))
    return EXIT_OK


async def cmd_rollback(ctx) -> int:
    r = await (await ctx.client()).rollback()
    ctx.out.event("rollback", "slot %s boots at the next reset (`%s -t %s reset`)" % (
        r.get("slot"), ctx.prog, ctx.spec), slot=r.get("slot"))
    return EXIT_OK


async def cmd_erase(ctx) -> int:
    slot = ctx.args.slot
    r = await (await ctx.client()).erase(slot)
    ctx.out.event("erased", "slot %s erased" % r.get("slot", slot), slot=r.get("slot", slot), state=r.get("state"))
    return EXIT_OK


# --- local commands ------------------------------------------------------------------

def cmd_build(ctx) -> int:
    args, out = ctx.args, ctx.out
    img = images.build_folder(Path(args.folder), args.version, args.sign_key or default_sign_key(args), args.mpy,
                              args.security_counter)
    output = args.output or "%s-%s.img" % (Path(args.folder).resolve().name, img.version.split("+")[0])
    Path(output).write_bytes(img.data)
    out.event("built", "built %s\n  version %s, %s, sha256 %s…%s" % (
        output, img.version, fmt_size(img.size), img.sha256[:12], build_summary(img)),
        output=output, version=img.version, size=img.size, sha256=img.sha256, **build_fields(img))
    return EXIT_OK


def cmd_targets(ctx) -> int:
    args, out = ctx.args, ctx.out
    path = targets_mod.targets_path(args.targets)
    table, groups = targets_mod.load_file(path, required=bool(args.targets))
    names = list(dict.fromkeys(list(targets_mod.BUILTINS) + list(table)))
    out.event("targets_file", "targets file: %s%s" % (path, "" if path.exists() else " (absent)"),
              path=str(path), exists=path.exists())
    for n in names:
        entry = dict(targets_mod.BUILTINS.get(n, {}))
        entry.update(table.get(n, {}))
        src = "file" if n in table else "built-in"
        extra = "".join("  %s %s" % (k, entry[k]) for k in ("device_id", "key_file", "sign_key") if entry.get(k))
        out.event("target", "  %-12s %s:%s udp %s%s  (%s)" % (
            n, entry.get("host"), entry.get("port", lineproto.TCP_PORT), entry.get("udp_port", lineproto.UDP_PORT),
            extra, src),
            name=n, host=entry.get("host"), port=entry.get("port", lineproto.TCP_PORT),
            udp_port=entry.get("udp_port", lineproto.UDP_PORT), key_file=entry.get("key_file"),
            device_id=entry.get("device_id"), source=src)
    for g, members in groups.items():
        if isinstance(members, list):
            out.event("group", "  %-12s group: %s" % ("@" + g, ", ".join(members)), name=g, members=members)
            continue
        try:  # a pattern: the targets it matches now
            got = targets_mod.group_members(g, groups, table, path)
        except UsageError:
            got = []
        out.event("group", "  %-12s group: %s (%s)" % ("@" + g, members, ", ".join(got) or "matches nothing"),
                  name=g, members=got, pattern=members)
    return EXIT_OK


# --- keys and provisioning -------------------------------------------------------------

def signing_key_path(given) -> Path:
    return Path(given).expanduser() if given else targets_mod.config_dir() / "signing-key.pem"


def _key_event(out, name: str, verb: str, path: Path, key) -> None:
    from . import keys

    kid, pub, fp = keys.key_id(key).hex(), keys.public_raw(key).hex(), keys.fingerprint(key)
    out.event(name, "%s %s\n  fingerprint %s (as `mpota trust` and status show it)\n  key id %s\n  public %s"
              % (verb, path, fp, kid, pub), file=str(path), fingerprint=fp, key_id=kid, public=pub)


def cmd_keygen(ctx) -> int:
    from . import keys

    path = signing_key_path(ctx.args.file)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = keys.keygen(str(path))
    _key_event(ctx.out, "keygen", "wrote the Ed25519 signing key (mode 0600, keep it secret)", path, key)
    ctx.out.say("next: `%s provision ... --trust %s` makes a board trust it; `%s push FOLDER --sign-key %s` "
                "signs" % (ctx.prog, path, ctx.prog, path))
    return EXIT_OK


def cmd_pubkey(ctx) -> int:
    from . import keys

    path = signing_key_path(ctx.args.file)
    key = keys.load(str(path))
    _key_event(ctx.out, "pubkey", "signing key", path, key)
    pem = key.get_public_pem().decode() if hasattr(key, "get_public_pem") else None
    if ctx.args.output:
        Path(ctx.args.output).write_text(pem or "")
        ctx.out.say("public half written to %s" % ctx.args.output)
    elif pem and ctx.out.mode == "human":
        ctx.out.say(pem.rstrip())
    return EXIT_OK


async def cmd_trust(ctx) -> int:
    from . import keys, trust

    a = ctx.args
    if (a.add or a.drop) and not a.signed_by:
        raise UsageError("--%s needs --signed-by KEY.pem: a private key the device trusts signs the change"
                         % ("add" if a.add else "drop"))
    if a.signed_by and not (a.add or a.drop):
        raise UsageError("--signed-by goes with --add or --drop")
    if a.seq is not None and not (a.add or a.drop):
        raise UsageError("--seq goes with --add or --drop")
    c = await ctx.client()
    if a.provision:
        st, did = await trust.provision(c, a.provision), "provisioned %s" % a.provision
    elif a.add or a.drop:
        op, key = ("add", a.add) if a.add else ("drop", a.drop)
        st = await trust.change(c, op, key, a.signed_by, a.seq)
        did = "%s %s (%s), signed by %s, seq %s" % ("added" if a.add else "dropped", key,
                                                   keys.fingerprint(key), a.signed_by, st.get("seq"))
    else:
        st, did = await trust.listing(c), None
    fps = st.get("keys") or []
    text = "%s: trusts %s; last change seq %s" % (_target_line(ctx.target), ", ".join(fps) or "no key",
                                                 st.get("seq"))
    ctx.out.event("trust", ((did + "\n") if did else "") + text, target=ctx.target.name, **st)
    if st.get("warning"):
        ctx.out.say("warning: %s" % st["warning"])
    return EXIT_OK


def _wifi_password(args):
    """The password from --password-file (first line) or asked for; None in a dry run."""
    if args.password_file:
        try:
            lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise UsageError("cannot read %s: %s" % (args.password_file, e.strerror or e))
        return lines[0] if lines else ""
    if args.dry_run:
        return None
    import getpass
    import sys

    if not sys.stdin.isatty():
        raise UsageError("no Wi-Fi password: give it with --password-file FILE (it is asked for on a terminal)")
    return getpass.getpass("Wi-Fi password for %s (empty: open network): " % args.ssid)


def cmd_provision(ctx) -> int:
    from . import provision

    a, out = ctx.args, ctx.out
    if a.serial_port_deprecated:
        import sys

        print("mpota: `provision --port SERIAL` is deprecated: use --serial SERIAL (--port is the agent's "
              "TCP port everywhere else)", file=sys.stderr)
        if a.serial_port and a.serial_port != a.serial_port_deprecated:
            raise UsageError("--serial %s and --port %s name two serial ports" % (
                a.serial_port, a.serial_port_deprecated), "give only --serial")
        a.serial_port = a.serial_port_deprecated
    if not a.serial_port and not a.dry_run:
        raise UsageError("no serial port: give the board's with --serial (/dev/ttyACM0, COM3)",
                         "with --dry-run, provision shows every step without a board")
    if a.repair:
        return _repair(ctx)
    missing = [f for f, v in (("--name", a.name), ("--ssid", a.ssid)) if not v]
    if missing:
        raise UsageError("provision needs %s" % " and ".join(missing),
                         "name the device and its Wi-Fi network (or --repair: only reinstall a broken agent)")
    o = provision.Options(port=a.serial_port, name=a.name, ssid=a.ssid, password=_wifi_password(a),
                          country=a.country, trust=a.trust, mpy=a.mpy, dry_run=a.dry_run, wait=a.wait,
                          key_file=a.key_file, targets_file=a.targets, device_dir=a.device_dir)
    r = provision.provision(o, lambda line: out.event("step", line, text=line))
    if a.dry_run:
        out.event("done", "dry run: nothing was changed", ok=True, dry_run=True, files=r.files,
                  commands=r.commands, target=r.target)
    else:
        out.event("done", "[green]done[/]: %s is provisioned (%s); `%s -t %s ping` reaches it over Wi-Fi" % (
            a.name, r.ready, ctx.prog, a.name), ok=True, files=r.files, target=r.target, ready=r.ready)
    return EXIT_OK


def _repair(ctx) -> int:
    from . import provision

    a, out = ctx.args, ctx.out
    if a.dry_run or a.trust or a.name or a.ssid or a.country or a.password_file:
        raise UsageError("--repair reinstalls the agent only, keeping the board's config, key and trust store",
                         "give only --serial (and --py or --device-dir); provision without --repair to change "
                         "the rest")
    r = provision.repair(a.serial_port, lambda line: out.event("step", line, text=line), a.device_dir, a.mpy)
    out.event("done", "[green]done[/]: the agent on %s is reinstalled (%s)" % (a.serial_port, r.ready), ok=True,
              files=r.files, ready=r.ready, device_id=r.board.device_id if r.board else None)
    return EXIT_OK


# --- rollout ------------------------------------------------------------------------

def _fit(text: str, width: int = 80) -> str:
    """One line of the rollout view within `width` columns (the JSON keeps it whole)."""
    return text if len(text) <= width else text[:width - 1] + "…"


def _wave_line(w: dict, waves: int) -> str:
    parts = ["%d %s" % (w[k], k) for k in ("healthy", "skipped", "failed", "untouched", "pushing", "booted")
             if w.get(k)]
    return "wave %d/%d %-6s %3d board%s  %s" % (w["wave"], waves, "canary" if w["wave"] == 1 and waves > 1 else "",
                                              w["boards"], " " if w["boards"] == 1 else "s", ", ".join(parts) or "-")


TRACEBACK_LINES = 3  # of a failed board's saved traceback in the view: where it was raised
# the agent's frame (it runs the app): "mpota_agent" since deploy.compile_files names a .mpy's
# source by its module, "mpota_agent.py" from a .py deploy or an agent compiled before
_AGENT_FRAME = ('File "mpota_agent"', 'File "mpota_agent.py"')


def _failed_line(prog: str, spec: str, f: dict) -> str:
    """A failing board in two lines: which and whether it is back on its old version, then why;
    then the last lines of the traceback it saved when this version crashed, if it did (where
    it was raised; the agent's own frame left out): `logs` shows it whole."""
    rb = f.get("rolled_back")
    text = "  FAILED %s%s\n%s" % (spec, ", rolled back %s" % rb if rb else "", _fit("    " + (f.get("error") or "?")))
    tb = [ln.strip() for ln in (f.get("traceback") or "").rstrip("\n").split("\n")[2:]  # (summary, "Traceback")
          if not ln.lstrip().startswith(_AGENT_FRAME)]
    if tb:
        text += "\n" + _fit("    its traceback (`%s -t %s logs`):" % (prog, spec))
        text += "".join("\n" + _fit("      " + ln) for ln in tb[-TRACEBACK_LINES:])
    return text


def _rollout_end_text(prog: str, f: dict) -> str:
    rid, state = f["id"], f["state"]
    counts = "  %d healthy, %d skipped (ran it already), %d failed, %d untouched" % (
        f["healthy"], f["skipped"], f["failures"], f["untouched"])
    if state == "complete":
        text = "[green]done[/]: rollout %s complete\n%s" % (rid, counts)
    elif state == "aborted":
        text = "aborted: rollout %s\n%s" % (rid, counts)
    else:
        where = "in wave %d" % f["wave"] if f["reason"] == "interrupted" else "after wave %d" % (f["wave"] - 1)
        text = ("[bold]paused[/] %s: %s\n%s\n  `%s rollout resume %s`: go on (these failures accepted)\n"
                "  `%s rollout abort %s` ends it" % (where, f["reason"], counts, prog, rid, prog, rid))
    if f.get("half_done"):
        text += "\n  left half-done (mid-push, or booted but not checked): %s" % ", ".join(f["half_done"])
    return text


def _rollout_text(prog: str, name: str, f: dict) -> Optional[str]:
    """The line people see for a rollout event (None: JSON only): a line per wave
    and one per failing board, so 100 boards fit an 80-column terminal."""
    if name == "start":
        return ("rollout %s: %s (sha256 %s…) to %d boards\n"
                "  %d wave%s of %s, soak %gs, max failures %s, %d at a time") % (
            f["id"], f["version"], f["sha256"][:8], f["boards"], f["waves"], "" if f["waves"] == 1 else "s",
            ", ".join(str(n) for n in f["sizes"]), f["soak"], f["max_failures"], f["parallel"])
    if name == "wave":
        return "wave %d/%d: pushing %d board%s%s" % (f["wave"], f["waves"], f["todo"], "" if f["todo"] == 1 else "s",
                                                   " (the canary)" if f["wave"] == 1 and f["waves"] > 1 else "")
    if name == "wave_done":
        return _wave_line(f, f["waves"])
    if name == "board" and f["state"] == "failed" and f.get("rolled_back"):
        return _failed_line(prog, f["target"], f)
    if name in ("complete", "paused", "aborted"):
        return _rollout_end_text(prog, f)
    return None


def rollout_status_text(prog: str, s: dict) -> str:
    """`mpota rollout status`: the plan's state, a line per wave, the failing boards."""
    waves = s["waves"]
    done = min(s["wave"] - (s["state"] != "running"), len(waves))
    lines = ["rollout %s: %s%s" % (s["id"], s["state"], " after wave %d/%d" % (done, len(waves)) if done else ""),
             "  version %s (sha256 %s…)%s" % (s["version"], s["sha256"][:8],
                                             ": " + s["reason"] if s["reason"] and s["state"] != "complete" else "")]
    lines += [_wave_line(w, len(waves)) for w in waves]
    lines = [_fit(x) for x in lines] + [_failed_line(prog, spec, f) for spec, f in s["failed"].items()]
    if s["half_done"]:
        lines.append(_fit("  left half-done: %s" % ", ".join(s["half_done"])))
    return "\n".join(lines)


def _rollout_transport(ctx, plan, link=None):
    from .rollout import LanTransport

    a = ctx.args
    allow = plan.allow_downgrade or a.allow_downgrade
    if plan.via:
        from functools import cache

        from . import mqtt

        ids = cache(lambda spec: mqtt.device_id(spec, a.targets or plan.targets_file))
        return mqtt.MqttTransport(link, ids, mqtt.signing_key(plan.via["sign_key"]), plan.via["url"],
                                  wait=a.wait, allow_downgrade=allow)

    def resolve(spec):
        return targets_mod.resolve(spec, a.targets or plan.targets_file, a.key_file, None, None)

    return LanTransport(resolve, connect_timeout=a.connect_timeout, timeout=a.timeout, wait=a.wait,
                        allow_downgrade=allow)


def image_and_key(a) -> tuple:
    """(the image, the signing key's path): --sign-key, else the targets file's sign_key,
    signs a folder build and, over MQTT, the commands and release records."""
    key = a.sign_key or default_sign_key(a)
    folder = Path(a.image).expanduser().is_dir()
    return images.load(a.image, a.version, key if folder else None, a.mpy, a.security_counter), key


async def _mqtt_plan_setup(ctx, img, key_path: Optional[str]) -> tuple:
    """A new rollout --via: the link, the boards (@broker expanded, each one's device id
    checked), and the plan's `via` (broker, fleet, the image's URL, checked with a HEAD
    request, and the key that signs the commands)."""
    from . import mqtt, release

    a = ctx.args
    mqtt.parse_url(a.via)  # each refused now, before any board is touched
    mqtt.check_fleet(a.fleet)
    mqtt.signing_key(key_path)
    url = release.release_url(img, a.base_url)
    release.check_url(url, img.size, timeout=a.timeout)
    link = await mqtt.Link.open(a.via, a.fleet, timeout=a.timeout)
    try:
        specs = link.expand(ctx.specs)
        for spec in specs:
            mqtt.device_id(spec, a.targets)
        if not specs:
            raise UsageError("no board has a state on %s under fleet %s" % (a.via, a.fleet),
                             "a board publishes one once it connects with \"mqtt\" in its mpota.json")
    except BaseException:
        await link.close()
        raise
    via = {"broker": a.via, "fleet": a.fleet, "url": url, "sign_key": str(Path(key_path).expanduser().resolve())}
    return link, specs, via


async def cmd_rollout(ctx) -> int:
    """`rollout IMAGE` starts a rollout over ctx.specs; `rollout status|resume|abort [ID]`
    read or drive one saved in CONFIG/rollouts (rollout.RolloutStore). --via: through an
    MQTT broker (mqtt.MqttTransport), the same engine."""
    from . import rollout
    from .errors import EXIT_INTERRUPTED, EXIT_NOT_TAKEN

    a, out = ctx.args, ctx.out
    store = rollout.RolloutStore(Path(a.state_dir)) if a.state_dir else rollout.default_store()
    what = a.image
    if what == "status":
        s = store.load(a.rollout_id).summary()
        out.event("rollout", rollout_status_text(ctx.prog, s), **s)
        return EXIT_OK
    if what == "abort":
        plan = rollout.stop_running(store, store.load(a.rollout_id).id)
        s = plan.summary()
        out.event("rollout", "%s\n  %s; %d boards untouched" % (rollout_status_text(ctx.prog, s), plan.state,
                                                                  plan.count(rollout.UNTOUCHED)), **s)
        return EXIT_OK if plan.state == rollout.ABORTED else EXIT_INTERRUPTED
    link = None
    try:
        if what == "resume":
            plan = store.load(a.rollout_id)
            if plan.via:
                from . import mqtt

                link = await mqtt.Link.open(plan.via["broker"], plan.via["fleet"], timeout=a.timeout)
        else:
            if a.rollout_id:
                raise UsageError("`rollout IMAGE` takes no id (%s)" % a.rollout_id,
                                 "the id goes with status, resume and abort")
            # over MQTT --sign-key also signs the commands, so it may come with an image file
            img, key = image_and_key(a) if a.via else (load_image(a, a.sign_key or default_sign_key(a)), None)
            specs, via = ctx.specs, None
            if a.via:
                link, specs, via = await _mqtt_plan_setup(ctx, img, key)
            tfile = str(targets_mod.targets_path(a.targets))
            plan = rollout.new_plan(img, specs, canary=a.canary, waves=a.waves,
                                    soak=rollout.parse_duration(a.soak), max_failures=a.max_failures,
                                    parallel=a.parallel, targets_file=tfile, allow_downgrade=a.allow_downgrade,
                                    via=via)
            store.create(plan, img)
        engine = rollout.Rollout(plan, store, _rollout_transport(ctx, plan, link))

        def on_event(name, **f):
            out.event(name, _rollout_text(ctx.prog, name, f), **f)

        # Ctrl-C cancels run(): the engine saves the plan as paused and names the boards left half-done
        state = await engine.run(on_event)
    finally:
        if link is not None:
            await link.close()
    return {rollout.COMPLETE: EXIT_OK, rollout.ABORTED: EXIT_INTERRUPTED}.get(state, EXIT_NOT_TAKEN)


# --- releases over HTTP ------------------------------------------------------------

def cmd_publish(ctx) -> int:
    from . import keys, mqtt, release

    a, out = ctx.args, ctx.out
    img, key_path = image_and_key(a)
    key = mqtt.signing_key(key_path)
    r = release.publish(img, Path(a.dir), key, a.base_url)
    out.event("published", "published %s, %s, sha256 %s…\n  %s\n  %s (signed by %s)\n  url %s%s" % (
        img.version, fmt_size(img.size), img.sha256[:12], r.bin, r.record, keys.fingerprint(key), r.url,
        "" if a.base_url else " (relative: give --base-url to the rollout)"),
        version=img.version, size=img.size, sha256=img.sha256, bin=str(r.bin), record=str(r.record), url=r.url,
        signer=r.signer)
    return EXIT_OK


def cmd_serve(ctx) -> int:
    from .httpserve import make_server

    a, out = ctx.args, ctx.out
    folder = Path(a.dir)
    if not folder.is_dir():
        raise UsageError("%s is not a folder" % folder, "`mpota publish IMAGE --dir %s` makes it" % folder)

    def on_request(method, path, status, sent, seconds):
        out.event("request", "%s %s %d %s in %.2f s" % (method, path, status, fmt_size(sent), seconds),
                  method=method, path=path, status=status, bytes=sent, seconds=round(seconds, 3))

    try:
        server = make_server(folder, a.host, a.http_port, on_request)
    except OSError as e:
        raise UsageError("cannot serve on %s:%d: %s" % (a.host, a.http_port, e.strerror or e),
                         "give another --port") from None
    broker = None
    try:
        if a.mqtt_broker:
            from .broker import EmbeddedBroker

            broker = EmbeddedBroker(a.host, a.mqtt_port).start()
            out.event("broker", "MQTT broker (amqtt) at %s: boards get \"mqtt\": \"%s:%d\", the host --via %s"
                      % (broker.url, a.host, a.mqtt_port, broker.url), url=broker.url)
        host, port = server.server_address[:2]
        out.event("serving", "serving %s at http://%s:%d/ (Ctrl-C stops)" % (folder, host, port),
                  dir=str(folder), host=host, port=port)
        server.serve_forever()
    except KeyboardInterrupt:
        out.event("stopped", "stopped")
    finally:
        server.server_close()
        if broker is not None:
            broker.stop()
    return EXIT_OK


async def cmd_logs(ctx) -> int:
    """The console of one board or several (ctx.specs, `--parallel` at a time):
    what each keeps and its last saved traceback; with --follow, what comes
    next, polled every --interval s from the cursor of the last read (each byte
    once). Several boards' lines are prefixed by their names; a board that does
    not answer is reported (and, when following, tried again each round)."""
    import asyncio

    from . import logs
    from .errors import MpotaError
    from .fleet import fleet_exit_code

    args, out = ctx.args, ctx.out
    specs = ctx.specs
    if len(specs) == 1 and usb.is_usb(ctx.for_device(specs[0]).target.host):  # the console on the cable
        ctx.spec = specs[0]
        return usb.cmd_logs(ctx)
    many = len(specs) > 1
    subs = {s: ctx.for_device(s) for s in specs}
    seen: dict = {s: {"cursor": None, "uptime": None, "partial": "", "first": True, "error": None} for s in specs}
    gate = asyncio.Semaphore(args.parallel)

    async def one(spec: str):
        st = seen[spec]
        async with gate:
            try:
                c = await subs[spec].client()
                return await logs.read(c, st["cursor"], st["uptime"], traceback=st["first"])
            except MpotaError as e:
                await subs[spec].close()  # a new connection next round (the board may have restarted)
                return e

    def show(spec: str, ch: "logs.Chunk") -> None:
        st = seen[spec]
        out.event("logs", target=spec, **ch.as_dict())  # no text: the lines below
        text = logs.chunk_text(ch, st["first"])
        st.update(cursor=ch.cursor, uptime=ch.uptime_ms, first=False, error=None)
        if many:
            text, st["partial"] = logs.prefixed(spec, text, st["partial"])
        if out.mode != "json" and text:
            out.stdout.write(text)  # as it is: no markup (a log may hold brackets)
            out.stdout.flush()

    codes = {}
    try:
        while True:
            for spec, r in zip(specs, await asyncio.gather(*(one(s) for s in specs))):
                if isinstance(r, MpotaError):
                    codes[spec] = r.exit_code
                    if seen[spec]["error"] != r.message:  # once per kind of failure while following
                        seen[spec]["error"] = r.message
                        out.error(r, spec if many else "")
                else:
                    codes[spec] = EXIT_OK
                    show(spec, r)
            if not args.follow:
                break
            await asyncio.sleep(args.interval)
    finally:
        for spec in specs:
            if seen[spec]["partial"] and out.mode != "json":
                out.stdout.write("%s| %s\n" % (spec, seen[spec]["partial"]))
            await subs[spec].close()
    return fleet_exit_code(codes.values())
