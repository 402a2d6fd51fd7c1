"""The update flows as library functions: what `mpota push` and `mpota legacy` run.

    report = await push(target, image, confirm=True, on_event=print_event)
    report = legacy_push(target, image, on_event=print_event)

client.py speaks the protocol (as esptool's loader); the flows over it are
here (as esptool's cmds): `push_image` is the resumable upload (reconnects
and continues from the device's watermark), `begin_patiently` waits out a
`busy` device, `wait_for_device` polls until the device answers. `push`
uploads with push_image, commits, resets, waits for the device to boot the
new slot, reads its Status (status.py), checks the trial and confirms it. Nothing here
prints: every step is an event `on_event(name, **fields)` (the CLI shows them,
`--json` prints them as they are), and bytes go to `on_progress(done, total)`.
A new version that does not take raises NotTaken (OldSlotBooted or AppCrashed),
with the facts a caller needs to decide what to do next.

`target` is anything with host, port, udp_port and key (targets.Target);
`image` an images.Image (images.load() makes one from a file or a folder).
"""
from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


from .codec import mpota_lineproto as lineproto
from .codec import mpota_mcuboot as mcuboot
from .client import (CONNECT_TIMEOUT, IO_TIMEOUT, SECTOR, Client, ProgressCb, default_client_id,
                     expected_device, held_sectors, squeeze_sectors, within)
from .errors import (BusyError, ConnectionLost, CrashedTrial, CrcMismatch, DeviceError, DeviceTimeout,
                     MpotaError, NotTaken, Restarting, Unreachable, VerifyFailed, VersionClash, device_error)
from .images import Image
from .status import Status

log = logging.getLogger("mpota.push")

EventCb = Callable[..., None]


class OldSlotBooted(NotTaken):
    """After the reset the device runs another slot or version than the one pushed
    (it refused to boot the new image, or already rolled back)."""


class AppCrashed(NotTaken):
    """The new version booted on trial but its app crashed; it is not confirmed.
    `rollback_slot` is the confirmed slot a rollback returns to (None: there is none)."""

    default_hint = "fix the app and push again"

    def __init__(self, message: str, hint: Optional[str] = None, *, rollback_slot: Optional[str] = None,
                 max_trials: Any = None, app_error: Optional[str] = None):
        super().__init__(message, hint)
        self.rollback_slot = rollback_slot
        self.max_trials = max_trials
        self.app_error = app_error  # the app's own error text (status app.error)


@dataclass
class PushResult:
    slot: str
    size: int
    sha256: str
    resumed_from: int = 0        # watermark the device held when this push began
    bytes_sent: int = 0          # DATA payload bytes sent, all connections
    bytes_resent: int = 0        # of those, bytes sent more than once
    reconnects: int = 0
    rewinds: int = 0
    seconds: float = 0.0
    commit: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.size - self.resumed_from) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PushReport:
    """How a push ended. state: pending (not reset), trial, or confirmed."""

    version: str
    slot: str
    state: str
    upload: PushResult
    confirmed_by: Optional[str] = None       # "app" or "host"
    status: dict = field(default_factory=dict)  # the device's status after the boot
    unchanged: bool = False                  # the image already ran: nothing sent, no reset

    def summary(self) -> dict:
        return dict(ok=True, slot=self.slot, version=self.version, bytes=self.upload.size,
                    resent=self.upload.bytes_resent, seconds=round(self.upload.seconds, 3))


def _emit(on_event: Optional[EventCb], name: str, **fields) -> None:
    if on_event:
        on_event(name, **fields)


# --- the resumable upload ----------------------------------------------------------

# Sending only the changed sectors (reuse) comes in two kinds (docs/protocol.md):
# the sectors the target slot holds already are neither sent nor written (each
# sector is a file of its own: device/mpota_slotio.py), which always pays; the
# sectors only the running slot holds are copied from it, which saves link time
# but not flash time. That pays where the link, not the flash, is the limit, as
# deflating DATA does (it costs the board a little time per frame): the board's
# lwIP holds at most TCP_WND = 6400 bytes in flight per round trip, and
# littlefs writes a slot at about 55 KB/s (make bench: the flash's 80 KB/s
# ceiling less the filesystem's own blocks), so past 6400 B / 55 KB/s = 116 ms
# the window caps the push (make bench: deflate 0.94x at 100 ms, 1.56x at 200).
REUSE_RTT = 6400 / 55_000


def reuse_pays(rtt: float) -> bool:
    """Auto reuse: does a link with this round trip (seconds) cap the push below the flash?"""
    return rtt > REUSE_RTT


def compresses(image: bytes, squeezed: Optional[dict] = None) -> bool:
    """Does deflating each 4 KiB sector (client.squeeze) save a tenth of the
    bytes at least? `squeezed`: where the deflated sectors are kept, for the
    upload that sends them (Client.upload)."""
    return squeeze_sectors(image, {} if squeezed is None else squeezed) < 0.9 * len(image)


def _count(bitmap: bytes) -> int:
    return sum(bin(b).count("1") for b in bitmap)


async def _reuse_plan(c: Client, image: bytes, copy: bool) -> tuple:
    """(begin's "held", "held_from"), or (None, None): the sectors of `image`
    the target slot holds (kept where they are); with `copy`, the running
    slot's too, when it holds more (copied from it)."""
    n = -(-len(image) // SECTOR)
    try:
        if copy:
            both = await asyncio.gather(c.sectors(n, "a"), c.sectors(n, "b"))  # in one round trip
        else:  # (the running slot is read through the app's mount: asked only where it may pay)
            both = [await c.sectors(n, "target")]
    except DeviceError as e:
        if e.code == "bad_request" and not copy:  # a device from before agent 0.5: no "target"
            return None, None
        if e.code != "no_memory":
            raise
        # beside an app that holds most of its heap the board may not hash its slots: a plain
        # upload needs less (its modules load for begin anyway, the hashing's buffers do not)
        return None, None
    target = c.sectors_target
    if target is None:  # a device from before agent 0.5: it copies from the slot it chooses (the running one)
        both = [await c.sectors(n)] if copy else []
    # the target's own first: it wins a tie (what it keeps is neither sent nor written)
    plans = sorted(((held_sectors(image, have), s) for s, _, have in both), key=lambda p: p[1] != target)
    best = max(((h, s) for h, s in plans if copy or s == target), key=lambda p: _count(p[0]), default=None)
    if best is not None and _count(best[0]):
        return best
    if any(s == target and size > 0 for s, size, _ in both):
        # nothing to keep, but rewriting the target's sector files in place
        # costs littlefs one commit each, deleting and creating them three
        return best if best is not None and best[1] == target else (bytes(-(-len(image) // (8 * SECTOR))), target)
    return None, None


async def _round_trip(c: Client) -> float:
    """A ping's round trip (s); 0 from a board out of heap beside its app: then
    nothing optional (copying, deflate) is asked of it."""
    t = time.monotonic()
    try:
        await c.ping()
    except DeviceError as e:
        if e.code != "no_memory":
            raise
        return 0.0
    return time.monotonic() - t

async def push_image(host: str, port: int, image: bytes, *, key: Optional[bytes] = None,
                     version: Optional[str] = None, allow_downgrade: bool = False,
                     commit: bool = True, retries: int = 5, window: Optional[int] = None,
                     connect_timeout: float = CONNECT_TIMEOUT, timeout: float = IO_TIMEOUT,
                     busy_wait: float = 3.0, on_progress: Optional[ProgressCb] = None,
                     on_event: Optional[EventCb] = None, expect_device: Optional[str] = None,
                     client_factory: Callable[..., Client] = Client,
                     client_id: Optional[str] = None, force: bool = False, reuse: Optional[bool] = None,
                     deflate: Optional[bool] = None) -> PushResult:
    """Upload `image` to the inactive slot and (unless commit=False) commit it.

    A dropped connection or a stalled device costs a reconnect (up to
    `retries`, with backoff); `begin` then returns the device's watermark and
    the upload continues from there. Only idempotent steps are retried.

    With `reuse` (None, auto: when a ping's round trip says the link is the
    limit, reuse_pays(); and a device that has the `sectors` op), the 4 KiB sectors
    of `image` that the device holds already at the same place (same digest)
    in the slot it chooses (the running one; else the target slot) are not
    sent: the device copies them (begin "held"; event `held` with their count
    and that slot). Commit still checks the SHA-256 of the whole image.

    With `deflate` (None, auto: where the link is the limit, as above, and the
    image compresses, compresses(); and a device that has "deflate"), DATA
    frames carry each sector deflated (client.squeeze).
    """
    sha = hashlib.sha256(image).hexdigest()
    kid = image_key_id(image)
    cid = client_id or default_client_id()
    res = PushResult(slot="?", size=len(image), sha256=sha)
    t0 = time.monotonic()
    high_sent = 0
    attempt = 0
    first = True
    restarted = False
    squeezed: dict = {}  # each piece deflated once, for every connection of this push (Client.upload)
    pays = None  # does the link cap the push below the flash (a ping, once)?
    while True:
        c = client_factory(host, port, key=key, connect_timeout=connect_timeout,
                           timeout=timeout, window=window, expect_device=expect_device)
        try:
            await c.connect(authenticate=True)
            held = src = None
            features = c.info.get("features") or ()
            # (not in lean mode, where the app runs: `begin` restarts the board into update mode, where
            # the heap is free to hash its slots; not over USB: device/mpota_usb.py runs no loop to
            # copy held sectors in)
            sectors = "sectors" in features and not host.startswith("usb:") and c.info.get("mode") != "lean"
            zips = "deflate" in features and not host.startswith("usb:")
            if pays is None and ((reuse is None and sectors) or (deflate is None and zips)):
                pays = reuse_pays(await _round_trip(c))
                if reuse is None and sectors:
                    _emit(on_event, "reuse", on=True, copy=pays)
            copy = pays if reuse is None else bool(reuse)
            if reuse is not False and sectors:
                held, src = await _reuse_plan(c, image, copy)
            zipped = zips and (deflate if deflate is not None else bool(pays) and compresses(image, squeezed))
            try:
                reply = await begin_patiently(c, len(image), sha, version, allow_downgrade,
                                              busy_wait if first else max(busy_wait, 35.0), on_event, kid,
                                              cid, force, held, src, zipped)
            except Restarting:
                # A lean-mode device takes images only in its update mode (the
                # app stopped, the heap free): it restarts into it; follow it.
                if restarted:
                    raise
                restarted = True
                await c.close()
                _emit(on_event, "update_mode")
                await wait_for_device(host, port, key=key, deadline_s=60.0, timeout=timeout,
                                      connect_timeout=min(connect_timeout, 2.0),
                                      accept=lambda st: st.mode == "update")
                continue
            res.slot = reply.get("slot", res.slot)
            offset = int(reply.get("offset", 0))
            kept = bytes.fromhex(reply.get("held") or "")
            skip = {k for k in range(8 * len(kept)) if kept[k >> 3] & (1 << (k & 7))}
            if skip:
                _emit(on_event, "held", sectors=len(skip), of=-(-len(image) // SECTOR), slot=src,
                      target=reply.get("slot"))
            if first:
                res.resumed_from = offset
                _emit(on_event, "begin", slot=res.slot, size=len(image), offset=offset,
                      resumed=offset > 0, window=c._window(reply)[1], deflate=zipped)
            else:
                _emit(on_event, "resume", offset=offset, attempt=attempt)
            first = False
            if on_progress:
                on_progress(offset, len(image))
            try:
                high_sent = await c.upload(image, offset, begin_reply=reply, high_sent=high_sent,
                                           on_progress=on_progress, skip=skip, deflate=zipped,
                                           squeezed=squeezed)
            finally:
                res.bytes_sent += c.bytes_sent
                res.bytes_resent += c.bytes_resent
                res.rewinds += c.rewinds
            res.seconds = time.monotonic() - t0
            _emit(on_event, "uploaded", bytes=len(image) - res.resumed_from, seconds=round(res.seconds, 3),
                  rate=round(res.rate), resent=res.bytes_resent, reconnects=res.reconnects)
            if commit:
                res.commit = await c.commit()
                _emit(on_event, "committed", slot=res.commit.get("slot"),
                      version=res.commit.get("version"), state=res.commit.get("state"))
            return res
        except (ConnectionLost, DeviceTimeout) as e:
            # Idempotent from here: begin resumes, DATA is offset-addressed.
            if first or attempt >= retries:
                raise
            attempt += 1
            res.reconnects += 1
            delay = min(0.25 * 2 ** (attempt - 1), 4.0)
            _emit(on_event, "reconnect", attempt=attempt, reason=str(e.message), delay=delay)
            await asyncio.sleep(delay)
        finally:
            await c.close()


def image_key_id(image: bytes) -> Optional[str]:
    """The key id (hex) an MCUboot image names for its signature, "" for an
    unsigned image, None when `image` is not an MCUboot image (the device
    then judges it at commit). The codec's parser, as the device's."""
    try:
        info = mcuboot.verify(bytes(image))
    except mcuboot.ImageError:
        return None
    if info["sig_type"] is None:
        return ""
    return info["keyhash"].hex() if info["keyhash"] else None  # no key named: commit judges it


async def begin_patiently(c: Client, size: int, sha: str, version: Optional[str],
                          allow_downgrade: bool, busy_wait: float,
                          on_event: Optional[EventCb], key_id: Optional[str] = None,
                          client: Optional[str] = None, force: bool = False,
                          held: Optional[bytes] = None, held_from: Optional[str] = None,
                          deflate: bool = False) -> dict:
    """`begin`, retrying `busy` for up to busy_wait seconds: after a dropped
    link the device may not yet have noticed that our old session is gone."""
    deadline = time.monotonic() + busy_wait
    delay = 0.2
    while True:
        try:
            return await c.begin(size, sha, version, allow_downgrade=allow_downgrade, key_id=key_id,
                                 client=client, force=force, held=held, held_from=held_from, deflate=deflate)
        except BusyError:
            if time.monotonic() + delay > deadline:
                raise
            _emit(on_event, "busy_wait", delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def wait_for_device(host: str, port: int, *, key: Optional[bytes] = None,
                          deadline_s: float = 30.0, poll: float = 0.3,
                          connect_timeout: float = 2.0, timeout: float = IO_TIMEOUT,
                          accept: Optional[Callable[[Status], bool]] = None,
                          expect_device: Optional[str] = None) -> Status:
    """Poll until the device answers `status` (and `accept(status)` holds); return it."""
    end = time.monotonic() + deadline_s
    last: Optional[BaseException] = None
    while True:
        c = Client(host, port, key=key, connect_timeout=connect_timeout, timeout=timeout,
                   expect_device=expect_device)
        try:
            await c.connect()  # with the key: a stranger's status says only who it is
            st = Status.of(await c.status())
            if accept is None or accept(st):
                return st
            last = None
        except (Unreachable, ConnectionLost, DeviceTimeout) as e:
            last = e
        finally:
            await c.close()
        if time.monotonic() + poll > end:
            raise DeviceTimeout("%s did not come back within %.0f s%s" % (
                host, deadline_s, (" (last: %s)" % last.message) if isinstance(last, MpotaError) else ""),
                "check the device's power and Wi-Fi")
        await asyncio.sleep(poll)


# --- the push ----------------------------------------------------------------------


def same_version(a, b) -> bool:
    try:
        return lineproto.parse_version(a) == lineproto.parse_version(b)
    except (lineproto.ProtoError, TypeError):
        return a == b


def already_runs(st: Status, image: Image) -> Optional[str]:
    """The running slot when it holds exactly `image` (same SHA-256); VersionClash
    when it holds the same version number with other content; else None."""
    s = st.running_image
    if s is None or not s.sha256:
        return None
    if s.sha256 == image.sha256:
        return s.name
    if s.version and same_version(s.version, image.version):
        raise VersionClash("version %s already runs in slot %s with other content (sha256 %s… on the "
                           "device, %s… in this image)" % (image.version, s.name, s.sha256[:12],
                                                          image.sha256[:12]))
    return None


async def confirm_trial(c: Client, *, force: bool = False) -> dict:
    """Confirm the version on trial over the connected client `c`, unless its app
    crashed (CrashedTrial, nothing sent): `force` confirms it anyway. Returns the
    device's confirm reply."""
    if not force:
        st = Status.of(await c.status())
        if st.trial_crash is not None:
            raise CrashedTrial("not confirming slot %s (%s): it is on trial and its app crashed: %s" % (
                st.running, st.running_version or "no version", st.trial_crash))
    return await c.confirm()


async def device_status(target, *, connect_timeout: float = CONNECT_TIMEOUT,
                        timeout: float = IO_TIMEOUT) -> Status:
    """The device's full status (authenticated when the target has a key)."""
    async with Client(target.host, target.port, key=target.key, connect_timeout=connect_timeout,
                      timeout=timeout, expect_device=expected_device(target)) as c:
        return Status.of(await c.status())


async def push(target, image: Image, *, confirm: bool = True, reset: bool = True,
               allow_downgrade: bool = False, force: bool = False, window: Optional[int] = None,
               retries: int = 5, wait: float = 60.0, connect_timeout: float = CONNECT_TIMEOUT,
               timeout: float = IO_TIMEOUT, on_event: Optional[EventCb] = None,
               on_progress: Optional[ProgressCb] = None, reuse: Optional[bool] = None,
               deflate: Optional[bool] = None) -> PushReport:
    """Push `image` to `target`: upload, commit, then (unless reset=False) reset, wait
    up to `wait` seconds for the device, check the trial and (unless confirm=False)
    confirm it. Events: begin, reconnect, resume, busy_wait, uploaded, committed,
    upload_stats, reset, back, booted, done.

    First the device's status is read: when the running image is this very image
    (same SHA-256) nothing is sent and nothing reset (event `unchanged`, then
    `done` with unchanged=True); the same version number with other content
    raises VersionClash. `force` skips both checks and reinstalls."""
    before = await device_status(target, connect_timeout=connect_timeout, timeout=timeout)
    if not force:
        slot = already_runs(before, image)
        if slot is not None:
            report = PushReport(version=image.version, slot=slot, state=before.slot(slot).state or "active",
                                upload=PushResult(slot=slot, size=image.size, sha256=image.sha256),
                                status=before.raw, unchanged=True)
            _emit(on_event, "unchanged", slot=slot, version=image.version, state=report.state,
                  sha256=image.sha256)
            _emit(on_event, "done", state=report.state, unchanged=True, **report.summary())
            return report
    try:
        res = await push_image(target.host, target.port, image.data, key=target.key, version=image.version,
                               allow_downgrade=allow_downgrade, force=force, window=window, retries=retries,
                               connect_timeout=connect_timeout, timeout=timeout,
                               on_progress=on_progress, on_event=on_event,
                               expect_device=expected_device(target), reuse=reuse, deflate=deflate)
    except DeviceError as e:
        if e.code == "incorrect_state" and e.op == "begin":
            e.trial_crash = before.trial_crash  # the CLI's hint names the way out
        raise
    _emit(on_event, "upload_stats", bytes=res.size - res.resumed_from, seconds=round(res.seconds, 3),
          rate=round(res.rate), resent=res.bytes_resent, reconnects=res.reconnects, rewinds=res.rewinds,
          resumed_from=res.resumed_from)
    slot = res.commit.get("slot", res.slot)
    report = PushReport(version=image.version, slot=slot, state="pending", upload=res)
    if not reset:
        _emit(on_event, "done", state="pending", **report.summary())
        return report
    st = await reset_and_wait(target, slot=slot, wait=wait, connect_timeout=connect_timeout,
                              timeout=timeout, on_event=on_event)
    report.status = st.raw
    s = st.slot(slot)
    if st.running != slot or not same_version(s.version, image.version):
        raise OldSlotBooted("after reset the device runs slot %s (%s), not %s in slot %s: %s" % (
            st.running, st.describe_running(), image.version, slot, st.boot_note or "no boot note"))
    if st.app_state == "crashed":
        raise AppCrashed("version %s booted but its app crashed: %s" % (image.version, st.app_error),
                         rollback_slot=st.confirmed_other(slot), max_trials=st.max_trials,
                         app_error=st.app_error)
    report.state = s.state or "trial"
    _emit(on_event, "booted", slot=slot, version=s.version, state=report.state, app=st.app_state)
    if report.state == "confirmed":
        report.confirmed_by = "app"
    elif confirm:
        async with Client(target.host, target.port, key=target.key, connect_timeout=connect_timeout,
                          timeout=timeout, expect_device=expected_device(target)) as c:
            r = await c.confirm()
        report.state, report.confirmed_by = r.get("state", "confirmed"), "host"
    _emit(on_event, "done", state=report.state, confirmed_by=report.confirmed_by, **report.summary())
    return report


# How often reset_and_wait asks a rebooting device for its status: the push's
# "trial" stage is this poll's granularity (tools/bench_loop.py: 0.3 s made it
# 15% of a 20 KiB app's 2 s edit-to-confirmed loop).
BOOT_POLL = 0.1


async def reset_and_wait(target, *, slot: Optional[str] = None, wait: float = 60.0,
                         connect_timeout: float = CONNECT_TIMEOUT, timeout: float = IO_TIMEOUT,
                         on_event: Optional[EventCb] = None) -> Status:
    """Reset, wait for the old connection to drop, then poll until the device has
    booted (the pending mark of `slot` consumed) and its app has settled; return
    its status. Events: reset, back."""
    c = Client(target.host, target.port, key=target.key, connect_timeout=connect_timeout, timeout=timeout,
               expect_device=expected_device(target))
    await c.connect(authenticate=True)
    try:
        await c.reset()
        _emit(on_event, "reset", wait=wait)
        try:
            await within(c.closed.wait(), min(10.0, wait or 10.0))
        except asyncio.TimeoutError:
            log.info("the device kept the connection open after reset; polling anyway")
    finally:
        await c.close()

    def settled(st: Status) -> bool:
        if slot is not None and st.pending == slot:
            return False  # not rebooted yet
        run = st.running_slot
        return (st.app_state in ("running", "stopped", "crashed") or (run is not None and run.state == "confirmed")
                or st.running != slot)

    t0 = time.monotonic()
    st = await wait_for_device(target.host, target.port, key=target.key, deadline_s=wait, poll=BOOT_POLL,
                               connect_timeout=min(connect_timeout, 2.0), timeout=timeout, accept=settled,
                               expect_device=expected_device(target))
    _emit(on_event, "back", seconds=round(time.monotonic() - t0, 2), running=st.running,
          boot_note=st.boot_note)
    return st


# --- the reference's stop-and-wait UDP flow ------------------------------------------

@dataclass
class LegacyReport:
    version: str
    bytes: int
    seconds: float
    crc32: int
    verified: bool
    reset: bool


def legacy_push(target, image: Image, *, chunk: int = 1024, verify: bool = True, reset: bool = True,
                timeout: float = IO_TIMEOUT, on_event: Optional[EventCb] = None,
                on_progress: Optional[Callable[[int, int, str], None]] = None) -> LegacyReport:
    """Push over the reference UDP protocol (BootloaderMessenger): version, start,
    stop-and-wait writes, stop with CRC-32, read-back, reset. Blocking.
    Events: version, uploaded, verified, reset. on_progress(done, total, phase)
    with phase "upload" or "read-back"."""
    from .bootloader_messenger import BootloaderMessenger, LegacyError

    data = image.data
    try:
        m = BootloaderMessenger((target.host, target.udp_port))
    except socket.gaierror as e:
        raise Unreachable("cannot resolve %s: %s" % (target.host, e))
    step = "get_version"
    try:
        m.sock.settimeout(timeout)
        api, bl, note = m.get_version()
        note_s = bytes(note).rstrip(b"\0").decode("utf-8", "replace")
        _emit(on_event, "version", api=list(api), bootloader=list(bl), note=note_s)
        step = "start_update"
        if not m.start_update(len(data)):
            raise DeviceError("the device did not accept start_update")
        step = "write"
        t0 = time.monotonic()
        for off in range(0, len(data), chunk):
            if not m.write(data[off:off + chunk]):
                raise DeviceError("write at offset %d not acknowledged" % off)
            if on_progress:
                on_progress(min(off + chunk, len(data)), len(data), "upload")
        secs = time.monotonic() - t0
        step = "stop_update"
        crc = binascii.crc32(data) & 0xFFFFFFFF
        if not m.stop_update(crc):
            raise CrcMismatch("the device's CRC-32 of the image differs from ours (0x%08X)" % crc,
                              "push again")
        _emit(on_event, "uploaded", bytes=len(data), seconds=round(secs, 3), crc32=crc)
        if verify:
            step = "read_address"
            for off in range(0, len(data), 1024):
                want = data[off:off + 1024]
                got = bytes(m.read_address(off, len(want)).data)
                if got != want:
                    bad = next(i for i in range(len(want)) if i >= len(got) or got[i] != want[i])
                    raise VerifyFailed("read-back differs at offset %d" % (off + bad),
                                       "the stored image is corrupt; push again")
                if on_progress:
                    on_progress(off + len(want), len(data), "read-back")
            _emit(on_event, "verified", bytes=len(data))
        if reset:
            step = "reset"
            m.reset()
            _emit(on_event, "reset")
        return LegacyReport(version=image.version, bytes=len(data), seconds=secs, crc32=crc,
                            verified=verify, reset=reset)
    except socket.timeout:
        raise DeviceTimeout("no answer to %s from %s UDP port %d within %.0f s" % (
            step, target.host, target.udp_port, timeout),
            "is the legacy UDP service on and the UDP port right?")
    except LegacyError as e:
        err = device_error(e.code, "legacy %s refused (%s)" % (step, e), num=e.num, op=step)
        if e.code == "auth_required":
            err.hint = ("the legacy UDP service has no authentication, so the device serves it "
                        "only with auth off")
        raise err
    except AssertionError as e:
        raise DeviceError("malformed answer to %s: %s" % (step, e), "is this an mpota device on that port?")
    except OSError as e:
        raise Unreachable("legacy %s to %s UDP port %d failed: %s" % (step, target.host, target.udp_port, e))
    finally:
        m.close()
