"""The update flows as library functions: what `mpota push` and `mpota legacy` run.

    report = await push(target, image, confirm=True, on_event=print_event)
    report = legacy_push(target, image, on_event=print_event)

`push` uploads (resumable, see client.push_image), commits, resets, waits for
the device to boot the new slot, checks the trial and confirms it. Nothing here
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
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


from .codec import mpota_lineproto as lineproto
from .client import (CONNECT_TIMEOUT, IO_TIMEOUT, Client, EventCb, ProgressCb, PushResult, expected_device,
                     push_image, wait_for_device, within)
from .errors import (CrashedTrial, CrcMismatch, DeviceError, DeviceTimeout, NotTaken, Unreachable,
                     VerifyFailed, VersionClash, device_error)
from .images import Image

log = logging.getLogger("mpota.push")


class OldSlotBooted(NotTaken):
    """After the reset the device runs another slot or version than the one pushed
    (it refused to boot the new image, or already rolled back)."""


class AppCrashed(NotTaken):
    """The new version booted on trial but its app crashed; it is not confirmed.
    `rollback_slot` is the confirmed slot a rollback returns to (None: there is none)."""

    default_hint = "fix the app and push again"

    def __init__(self, message: str, hint: Optional[str] = None, *, rollback_slot: Optional[str] = None,
                 max_trials: Any = None):
        super().__init__(message, hint)
        self.rollback_slot = rollback_slot
        self.max_trials = max_trials


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


def same_version(a, b) -> bool:
    try:
        return lineproto.parse_version(a) == lineproto.parse_version(b)
    except (lineproto.ProtoError, TypeError):
        return a == b


def running_version(st: dict) -> str:
    r = st.get("running")
    return (st.get("slots", {}).get(r) or {}).get("version") or "no version" if r else "no app"


RUNNING_STATES = ("active", "trial", "confirmed")


def running_image(st: dict) -> Optional[tuple]:
    """(slot name, its status entry) of the image the device runs, or None."""
    name = st.get("running")
    s = (st.get("slots") or {}).get(name) if name else None
    return (name, s) if s and s.get("state") in RUNNING_STATES else None


def already_runs(st: dict, image: Image) -> Optional[str]:
    """The running slot when it holds exactly `image` (same SHA-256); VersionClash
    when it holds the same version number with other content; else None."""
    run = running_image(st)
    if run is None:
        return None
    slot, s = run
    sha = (s.get("sha256") or "").lower()
    if sha and sha == image.sha256:
        return slot
    if sha and s.get("version") and same_version(s.get("version"), image.version):
        raise VersionClash("version %s already runs in slot %s with other content (sha256 %s… on the "
                           "device, %s… in this image)" % (image.version, slot, sha[:12], image.sha256[:12]))
    return None


def trial_crash(st: dict) -> Optional[str]:
    """The app error of a version on trial whose app crashed, else None."""
    app = st.get("app") or {}
    if st.get("trial") and app.get("state") == "crashed":
        return app.get("error") or "no error text"
    return None


async def confirm_trial(c: Client, *, force: bool = False) -> dict:
    """Confirm the version on trial over the connected client `c`, unless its app
    crashed (CrashedTrial, nothing sent): `force` confirms it anyway. Returns the
    device's confirm reply."""
    if not force:
        st = await c.status()
        crash = trial_crash(st)
        if crash is not None:
            run = running_image(st) or (st.get("running"), {})
            raise CrashedTrial("not confirming slot %s (%s): it is on trial and its app crashed: %s" % (
                run[0], run[1].get("version") or "no version", crash))
    return await c.confirm()


async def device_status(target, *, connect_timeout: float = CONNECT_TIMEOUT,
                        timeout: float = IO_TIMEOUT) -> dict:
    """The device's full status (authenticated when the target has a key)."""
    async with Client(target.host, target.port, key=target.key, connect_timeout=connect_timeout,
                      timeout=timeout, expect_device=expected_device(target)) as c:
        return await c.status()


async def push(target, image: Image, *, confirm: bool = True, reset: bool = True,
               allow_downgrade: bool = False, force: bool = False, window: Optional[int] = None,
               retries: int = 5, wait: float = 60.0, connect_timeout: float = CONNECT_TIMEOUT,
               timeout: float = IO_TIMEOUT, on_event: Optional[EventCb] = None,
               on_progress: Optional[ProgressCb] = None) -> PushReport:
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
            s = before["slots"][slot]
            report = PushReport(version=image.version, slot=slot, state=s.get("state") or "active",
                                upload=PushResult(slot=slot, size=image.size, sha256=image.sha256),
                                status=before, unchanged=True)
            _emit(on_event, "unchanged", slot=slot, version=image.version, state=report.state,
                  sha256=image.sha256)
            _emit(on_event, "done", state=report.state, unchanged=True, **report.summary())
            return report
    try:
        res = await push_image(target.host, target.port, image.data, key=target.key, version=image.version,
                               allow_downgrade=allow_downgrade, force=force, window=window, retries=retries,
                               connect_timeout=connect_timeout, timeout=timeout,
                               on_progress=on_progress, on_event=on_event,
                               expect_device=expected_device(target))
    except DeviceError as e:
        if e.code == "incorrect_state" and e.op == "begin":
            e.trial_crash = trial_crash(before)  # type: ignore[attr-defined]  (the CLI's hint uses it)
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
    report.status = st
    s = st.get("slots", {}).get(slot, {})
    if st.get("running") != slot or not same_version(s.get("version"), image.version):
        raise OldSlotBooted("after reset the device runs slot %s (%s), not %s in slot %s: %s" % (
            st.get("running"), running_version(st), image.version, slot, st.get("boot_note") or "no boot note"))
    app = st.get("app") or {}
    if app.get("state") == "crashed":
        other = [n for n, o in (st.get("slots") or {}).items() if n != slot and o.get("state") == "confirmed"]
        raise AppCrashed("version %s booted but its app crashed: %s" % (image.version, app.get("error")),
                         rollback_slot=other[0] if other else None, max_trials=st.get("max_trials"))
    report.state = s.get("state") or "trial"
    _emit(on_event, "booted", slot=slot, version=s.get("version"), state=report.state, app=app.get("state"))
    if report.state == "confirmed":
        report.confirmed_by = "app"
    elif confirm:
        async with Client(target.host, target.port, key=target.key, connect_timeout=connect_timeout,
                          timeout=timeout, expect_device=expected_device(target)) as c:
            r = await c.confirm()
        report.state, report.confirmed_by = r.get("state", "confirmed"), "host"
    _emit(on_event, "done", state=report.state, confirmed_by=report.confirmed_by, **report.summary())
    return report


async def reset_and_wait(target, *, slot: Optional[str] = None, wait: float = 60.0,
                         connect_timeout: float = CONNECT_TIMEOUT, timeout: float = IO_TIMEOUT,
                         on_event: Optional[EventCb] = None) -> dict:
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

    def settled(st) -> bool:
        if slot is not None and st.get("pending") == slot:
            return False  # not rebooted yet
        app = (st.get("app") or {}).get("state")
        s = (st.get("slots", {}).get(st.get("running")) or {}).get("state")
        return app in ("running", "stopped", "crashed") or s == "confirmed" or st.get("running") != slot

    t0 = time.monotonic()
    st = await wait_for_device(target.host, target.port, key=target.key, deadline_s=wait,
                               connect_timeout=min(connect_timeout, 2.0), timeout=timeout, accept=settled,
                               expect_device=expected_device(target))
    _emit(on_event, "back", seconds=round(time.monotonic() - t0, 2), running=st.get("running"),
          boot_note=st.get("boot_note"))
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
