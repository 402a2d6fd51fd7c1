"""Rollouts: one image to many boards, a canary first, then waves that stop themselves.

    plan = new_plan(image, specs, canary=1, waves="10%,50%,100%", soak=60, max_failures="0")
    code = await Rollout(plan, store, LanTransport(resolve)).run(on_event)

A plan is a list of waves (the canary is wave 1). Each board of a wave is
pushed (`Transport.push`: upload, commit, reset, boot on trial; a board that
already runs this very image is `skipped`, never reset); after the wave's
last push the engine soaks `soak` seconds, then reads every booted board's
status once more: it is `healthy` only when it still runs the image (same
SHA-256), its app did not crash, it did not reset since it booted (the
`resets` counter and `uptime_ms`) and it is confirmed (by its app, else the
engine confirms it then). A board that fails is rolled back (`rollback` and
`reset`, unless it already returned to its confirmed slot by itself).
More failures than `max_failures` (a count, or a rate of the boards tried so
far), or any failure in the canary, pause the rollout before the next wave:
no other board is touched.

The plan lives in a file (RolloutStore: CONFIG/rollouts/ID.json, rewritten
atomically after every board step, beside ID.img, the image itself), so
`mpota rollout status | resume | abort` work from another shell. The engine
holds ID.lock (flock) while it runs; `abort` from another shell leaves
ID.abort, which the engine reads between boards and while soaking.
Ctrl-C (cancellation) pauses: the file names each board left mid-push.

The transport is the small interface `Transport` (LanTransport: host/push.py
over the LAN; mqtt.MqttTransport: signed commands through an MQTT broker, the
boards pulling the image over HTTP); the engine itself knows nothing of sockets.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import images
from .errors import Code, ConnectionProblem, DeviceError, MpotaError, UsageError
from .logs import crash_version
from .status import Status

# board states: untouched -> pushing -> booted -> healthy | failed [-> rolled_back]; skipped: ran it already
UNTOUCHED, PUSHING, BOOTED, HEALTHY, SKIPPED, FAILED = "untouched", "pushing", "booted", "healthy", "skipped", "failed"
DONE_STATES = (HEALTHY, SKIPPED)
# rollout states
RUNNING, PAUSED, ABORTED, COMPLETE = "running", "paused", "aborted", "complete"

EventCb = Callable[..., None]
PUSH_TRIES = 3     # a push that fails transiently (transient()) is tried again, this many times in all
RETRY_DELAY = 1.0  # seconds before the first retry (then 2x, ...)


def transient(e: MpotaError) -> bool:
    """A push failure worth another try: the link (unreachable, lost, timed out) or the
    device saying so (its error's retry flag, or no memory for now). A version that
    booted but did not take (NotTaken) is never retried."""
    return isinstance(e, ConnectionProblem) or (isinstance(e, DeviceError) and (e.retry or e.code == Code.NO_MEMORY))


# --- the plan ----------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """60, 60s, 2m, 1.5s -> seconds (UsageError when it is none of them)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise UsageError("%r is not a duration" % text, "give seconds (60, 60s), minutes (2m) or hours (1h)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def _share(text: str, total: int) -> int:
    """'10%' -> that share of `total` (at least 1), '5' -> 5."""
    t = text.strip()
    try:
        if t.endswith("%"):
            p = float(t[:-1])
            if not 0 < p <= 100:
                raise ValueError
            return max(1, -(-int(p * total) // 100))  # ceil
        n = int(t)
        if n <= 0:
            raise ValueError
        return n
    except ValueError:
        raise UsageError("%r is neither a share (10%%) nor a count of boards (5)" % text) from None


def plan_waves(specs: list, canary: int, waves: str) -> list:
    """The boards of each wave: the first `canary` boards, then waves up to each
    cumulative share or count of the fleet in `waves` ("10%,50%,100%" or "5,20,100");
    the last wave always reaches every board. Waves left empty are dropped."""
    n = len(specs)
    if canary < 0:
        raise UsageError("--canary must be 0 or more")
    out, done = [], 0
    if canary:
        out.append(specs[:min(canary, n)])
        done = len(out[0])
    marks = [_share(w, n) for w in waves.split(",") if w.strip()] if waves else []
    for mark in marks + [n]:
        mark = min(mark, n)
        if mark > done:
            out.append(specs[done:mark])
            done = mark
    return out


def failure_limit(max_failures: str, tried: int) -> int:
    """How many failures are allowed among `tried` boards: a count ("2"), or a rate ("10%")."""
    t = str(max_failures).strip()
    try:
        if t.endswith("%"):
            return int(float(t[:-1]) * tried / 100)
        v = int(t)
        if v < 0:
            raise ValueError
        return v
    except ValueError:
        raise UsageError("--max-failures %r is neither a count (2) nor a rate (10%%)" % max_failures) from None


@dataclass
class BoardRecord:
    wave: int
    state: str = UNTOUCHED
    error: Optional[str] = None
    rolled_back: Optional[str] = None   # "by itself", "by the host", or why not
    boot_resets: Optional[int] = None   # the status at boot: the soak compares against it
    boot_uptime_ms: Optional[int] = None
    confirmed_by: Optional[str] = None  # "app" or "host"
    traceback: Optional[str] = None     # a failed board's last saved crash (Transport.traceback)


@dataclass
class Plan:
    id: str
    image: str            # the image file kept beside the state
    source: str           # what the user gave
    version: str
    sha256: str
    size: int
    waves: list           # [[spec, ...], ...]
    soak: float
    max_failures: str
    parallel: int
    targets_file: Optional[str] = None
    allow_downgrade: bool = False
    via: Optional[dict] = None  # over MQTT: {"broker": URL, "fleet", "url": the image's, "sign_key"}
    state: str = RUNNING
    wave: int = 0         # the wave to run next (or the one running)
    accepted_failures: int = 0  # failures a `resume` accepted (not counted against the limit again)
    reason: Optional[str] = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    boards: dict = field(default_factory=dict)  # spec -> BoardRecord

    def board(self, spec: str) -> BoardRecord:
        return self.boards[spec]

    def count(self, *states) -> int:
        return sum(1 for b in self.boards.values() if b.state in states)

    @property
    def failures(self) -> int:
        return self.count(FAILED)

    @property
    def tried(self) -> int:
        return sum(1 for b in self.boards.values() if b.state != UNTOUCHED)

    def half_done(self) -> list:
        """Boards left mid-push (perhaps pending or on trial) or booted but not yet checked."""
        return [s for s, b in self.boards.items() if b.state in (PUSHING, BOOTED)]

    def to_json(self) -> dict:
        d = asdict(self)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        d = dict(d)
        d["boards"] = {s: BoardRecord(**b) for s, b in d.get("boards", {}).items()}
        return cls(**d)

    def summary(self) -> dict:
        waves = []
        for i, w in enumerate(self.waves):
            st = [self.boards[s].state for s in w]
            waves.append({"wave": i + 1, "boards": len(w), **{k: st.count(k) for k in
                                                                (HEALTHY, SKIPPED, FAILED, UNTOUCHED, PUSHING,
                                                                 BOOTED)}})
        return {"id": self.id, "state": self.state, "version": self.version, "sha256": self.sha256,
                "wave": self.wave + 1, "waves": waves, "failures": self.failures, "reason": self.reason,
                "failed": {s: {"error": b.error, "rolled_back": b.rolled_back, "traceback": b.traceback}
                           for s, b in self.boards.items() if b.state == FAILED},
                "half_done": self.half_done()}


def new_plan(image: images.Image, specs: list, *, canary: int = 1, waves: str = "10%,50%,100%",
             soak: float = 60.0, max_failures: str = "0", parallel: int = 4,
             targets_file: Optional[str] = None, rollout_id: Optional[str] = None,
             allow_downgrade: bool = False, via: Optional[dict] = None) -> Plan:
    if not specs:
        raise UsageError("a rollout needs at least one board")
    failure_limit(max_failures, 1)  # checks its form now
    w = plan_waves(list(dict.fromkeys(specs)), canary, waves)
    rid = rollout_id or "%s-%s" % (time.strftime("%Y%m%d-%H%M%S"), image.sha256[:6])
    p = Plan(id=rid, image="", source=image.source, version=image.version, sha256=image.sha256, size=image.size,
             waves=w, soak=soak, max_failures=str(max_failures), parallel=parallel, targets_file=targets_file,
             allow_downgrade=allow_downgrade, via=via)
    p.boards = {s: BoardRecord(wave=i) for i, wave in enumerate(w) for s in wave}
    return p


# --- where plans live ----------------------------------------------------------------------

class RolloutStore:
    """CONFIG/rollouts: ID.json (the plan, replaced atomically), ID.img (the image),
    ID.lock (held by the engine while it runs), ID.abort (an abort request)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, rid: str, ext: str) -> Path:
        return self.folder / ("%s.%s" % (rid, ext))

    def create(self, plan: Plan, image: images.Image) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        img = self.path(plan.id, "img")
        if img.exists() or self.path(plan.id, "json").exists():
            raise UsageError("rollout %s exists already" % plan.id)
        img.write_bytes(image.data)
        plan.image = str(img)
        self.save(plan)

    def save(self, plan: Plan) -> None:
        plan.updated = time.time()
        p = self.path(plan.id, "json")
        tmp = p.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(plan.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def load(self, rid: Optional[str] = None) -> Plan:
        """Plan `rid`, or the newest one."""
        if rid is None:
            ids = self.ids()
            if not ids:
                raise UsageError("no rollout in %s" % self.folder, "start one: mpota rollout IMAGE -t @GROUP")
            rid = ids[-1]
        p = self.path(rid, "json")
        try:
            return Plan.from_json(json.loads(p.read_text()))
        except FileNotFoundError:
            raise UsageError("no rollout %s in %s" % (rid, self.folder),
                             "`mpota rollout status` shows the newest; ids: %s" % (", ".join(self.ids()) or "none"))
        except (ValueError, TypeError) as e:
            raise UsageError("%s is not a rollout state file: %s" % (p, e)) from None

    def ids(self) -> list:
        """Every rollout's id, oldest first."""
        if not self.folder.is_dir():
            return []
        files = sorted(self.folder.glob("*.json"), key=lambda f: (f.stat().st_mtime, f.name))
        return [f.stem for f in files]

    def lock(self, rid: str):
        """The engine's lock (an open file holding flock), or None when another process holds it."""
        f = open(self.path(rid, "lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    def request_abort(self, rid: str) -> None:
        self.path(rid, "abort").write_text("abort\n")

    def abort_requested(self, rid: str) -> bool:
        return self.path(rid, "abort").exists()

    def clear_abort(self, rid: str) -> None:
        try:
            self.path(rid, "abort").unlink()
        except FileNotFoundError:
            pass


def default_store() -> RolloutStore:
    from .targets import config_dir

    return RolloutStore(config_dir() / "rollouts")


# --- the transport ---------------------------------------------------------------------------

class Transport:
    """What the engine needs of a board, by its target spec: LanTransport (host/push.py)
    and mqtt.MqttTransport implement the same four calls (and traceback, optional)."""

    async def status(self, spec: str) -> Status:
        raise NotImplementedError

    async def push(self, spec: str, image: images.Image) -> tuple:
        """Upload, commit, reset, boot on trial, never confirm. -> (unchanged, Status after the boot)."""
        raise NotImplementedError

    async def confirm(self, spec: str) -> None:
        raise NotImplementedError

    async def rollback(self, spec: str) -> Status:
        """`rollback` then `reset`; -> the status once the device is back."""
        raise NotImplementedError

    async def traceback(self, spec: str) -> Optional[str]:
        """The board's last saved crash (its summary line, then the traceback), or
        None: no crash saved, or the transport cannot tell (the default)."""
        return None


class LanTransport(Transport):
    """host/push.py over the LAN; resolve(spec) -> targets.Target."""

    def __init__(self, resolve: Callable, *, connect_timeout: float = 5.0, timeout: float = 10.0,
                 wait: float = 60.0, allow_downgrade: bool = False):
        self.resolve = resolve
        self.allow_downgrade = allow_downgrade
        self.kw = dict(connect_timeout=connect_timeout, timeout=timeout)
        self.wait = wait
        self._targets: dict = {}

    def target(self, spec: str):
        if spec not in self._targets:
            self._targets[spec] = self.resolve(spec)
        return self._targets[spec]

    async def status(self, spec: str) -> Status:
        from .push import device_status

        return await device_status(self.target(spec), **self.kw)

    async def push(self, spec: str, image: images.Image) -> tuple:
        from .push import push

        r = await push(self.target(spec), image, confirm=False, wait=self.wait, allow_downgrade=self.allow_downgrade,
                       **self.kw)
        return r.unchanged, Status.of(r.status)

    async def confirm(self, spec: str) -> None:
        from .client import Client, expected_device
        from .push import confirm_trial

        t = self.target(spec)
        async with Client(t.host, t.port, key=t.key, expect_device=expected_device(t), **self.kw) as c:
            await confirm_trial(c)

    async def rollback(self, spec: str) -> Status:
        from .client import Client, expected_device
        from .push import reset_and_wait

        t = self.target(spec)
        async with Client(t.host, t.port, key=t.key, expect_device=expected_device(t), **self.kw) as c:
            r = await c.rollback()
        return await reset_and_wait(t, slot=r.get("slot"), wait=self.wait, **self.kw)

    async def traceback(self, spec: str) -> Optional[str]:
        from .client import Client, expected_device

        t = self.target(spec)
        async with Client(t.host, t.port, key=t.key, expect_device=expected_device(t), **self.kw) as c:
            return (await c.logs(0, max_bytes=1)).get("traceback")  # (1 byte of log: only the traceback matters)


# --- the engine ---------------------------------------------------------------------------------

class Rollout:
    def __init__(self, plan: Plan, store: RolloutStore, transport: Transport, image: Optional[images.Image] = None,
                 poll: float = 0.25, soak_poll: float = 5.0):
        self.plan = plan
        self.store = store
        self.t = transport
        self.image = image or images.load(plan.image)
        if self.image.sha256 != plan.sha256:
            raise UsageError("%s no longer holds the rollout's image (sha256 %s…)" % (plan.image, plan.sha256[:12]))
        self.poll = poll            # how often the soak looks for an abort request
        self.soak_poll = soak_poll  # how often the soak reads the booted boards' status
        self.on_event: EventCb = lambda name, **f: None
        self._stop: Optional[str] = None  # why the run stops early: "abort"

    def emit(self, name: str, **f) -> None:
        self.on_event(name, id=self.plan.id, **f)

    def save(self) -> None:
        self.store.save(self.plan)

    def _set(self, spec: str, state: str, **f) -> None:
        b = self.plan.board(spec)
        b.state = state
        for k, v in f.items():
            setattr(b, k, v)
        self.save()
        self.emit("board", target=spec, wave=b.wave + 1, state=state, error=b.error, rolled_back=b.rolled_back,
                  traceback=b.traceback)

    def _check_abort(self) -> bool:
        if self._stop is None and self.store.abort_requested(self.plan.id):
            self._stop = "abort"
        return self._stop is not None

    async def run(self, on_event: Optional[EventCb] = None) -> str:
        """Run the plan from its current wave; -> its state when the run ends
        (complete, paused or aborted). Cancellation (Ctrl-C) pauses it."""
        if on_event:
            self.on_event = on_event
        p = self.plan
        lock = self.store.lock(p.id)
        if lock is None:
            raise UsageError("rollout %s is running in another process" % p.id,
                             "`mpota rollout status %s` follows it; `mpota rollout abort %s` stops it" % (p.id, p.id))
        try:
            if p.state == ABORTED or p.state == COMPLETE:
                raise UsageError("rollout %s is %s" % (p.id, p.state))
            if p.state == PAUSED:  # resume: the operator accepts the failures seen so far
                p.accepted_failures = p.failures
            p.state, p.reason = RUNNING, None
            self.store.clear_abort(p.id)
            self.save()
            self.emit("start", version=p.version, sha256=p.sha256, boards=len(p.boards), waves=len(p.waves),
                      wave=p.wave + 1, soak=p.soak, max_failures=p.max_failures, parallel=p.parallel,
                      sizes=[len(w) for w in p.waves])
            try:
                while p.wave < len(p.waves):
                    if self._check_abort():
                        break
                    why = await self.run_wave(p.wave)
                    if self._stop:
                        break
                    p.wave += 1
                    self.save()
                    if why:
                        return self._pause(why)
                if self._stop == "abort":
                    p.state, p.reason = ABORTED, "aborted"
                    self.save()
                    self.emit("aborted", **self._end_fields())
                    return ABORTED
                p.state = COMPLETE
                self.save()
                self.emit("complete", **self._end_fields())
                return COMPLETE
            except asyncio.CancelledError:
                self._pause("interrupted")
                raise
        finally:
            self.store.clear_abort(p.id)
            lock.close()

    def _pause(self, reason: str) -> str:
        p = self.plan
        p.state, p.reason = PAUSED, reason
        self.save()
        self.emit("paused", **self._end_fields())
        return PAUSED

    def _end_fields(self) -> dict:
        s = self.plan.summary()
        return {k: s[k] for k in ("state", "reason", "wave", "failures", "failed", "half_done")} | {
            "healthy": self.plan.count(HEALTHY), "skipped": self.plan.count(SKIPPED),
            "untouched": self.plan.count(UNTOUCHED), "boards": len(self.plan.boards)}

    def _limit(self) -> int:
        return failure_limit(self.plan.max_failures, self.plan.tried) + self.plan.accepted_failures

    async def run_wave(self, i: int) -> Optional[str]:
        """Push, soak and check wave `i`; -> why the rollout must pause (any
        failure in the canary, or failures past the limit), None to go on."""
        p = self.plan
        wave = p.waves[i]
        todo = [s for s in wave if p.board(s).state not in DONE_STATES + (FAILED,)]
        self.emit("wave", wave=i + 1, waves=len(p.waves), boards=len(wave), todo=len(todo))
        gate = asyncio.Semaphore(p.parallel)

        async def one(spec: str) -> None:
            async with gate:
                if self._check_abort():
                    return  # not started: it stays untouched
                await self._push_board(spec)

        async def gated(step, spec: str) -> None:
            async with gate:
                await step(spec)

        await asyncio.gather(*(one(s) for s in todo))
        booted = [s for s in wave if p.board(s).state == BOOTED]
        # a soak cut short (abort, or failures that pause anyway) judges nobody healthy:
        # the boards left booted stay so, named as half-done, and `resume` soaks them again
        if booted and not self._stop and await self._soak(booted, lambda s: gated(self._watch_board, s), i):
            booted = [s for s in booted if p.board(s).state == BOOTED]
            await asyncio.gather(*(gated(self._check_board, s) for s in booted))
        failed = [s for s in wave if p.board(s).state == FAILED and p.board(s).rolled_back is None]
        await asyncio.gather(*(gated(self._roll_back, s) for s in failed))
        st = [p.board(s).state for s in wave]
        self.emit("wave_done", wave=i + 1, waves=len(p.waves), boards=len(wave), healthy=st.count(HEALTHY),
                  skipped=st.count(SKIPPED), failed=st.count(FAILED), untouched=st.count(UNTOUCHED),
                  failures=p.failures, limit=self._limit(), soak=p.soak)
        return self._must_pause(i)

    def _must_pause(self, i: int) -> Optional[str]:
        """Why the failures so far pause the rollout after wave `i` (None: they do not)."""
        p = self.plan
        if p.failures > self._limit():
            return "%d failed, more than --max-failures %s" % (p.failures, p.max_failures)
        if i == 0 and len(p.waves) > 1 and p.accepted_failures == 0 and p.count(FAILED):
            return "the canary failed"
        return None

    async def _push_board(self, spec: str) -> None:
        b = self.plan.board(spec)
        # Only a board found running the image at its first look is skipped: one that runs it on
        # trial, after a retry or after an interrupted run runs it because of us, so it is checked.
        half = b.state in (PUSHING, BOOTED)  # left half-done by an interrupted run
        self._set(spec, PUSHING, error=None)
        for attempt in range(PUSH_TRIES):
            try:
                unchanged, st = await self.t.push(spec, self.image)
                break
            except MpotaError as e:
                if attempt + 1 == PUSH_TRIES or not transient(e):
                    crash = getattr(e, "app_error", None)  # push.AppCrashed: the app's own words
                    self._set(spec, FAILED, error="app crashed: %s" % crash if crash else e.message)
                    return
                self.emit("retry", target=spec, attempt=attempt + 1, error=e.message)
                await asyncio.sleep(RETRY_DELAY * (attempt + 1))
        if unchanged and attempt == 0 and not half and not st.trial:
            self._set(spec, SKIPPED)  # it ran this very image before the rollout: never reset
        elif st.app_state == "crashed":
            self._set(spec, FAILED, error="app crashed: %s" % st.app_error)
        else:
            self._set(spec, BOOTED, boot_resets=st.resets, boot_uptime_ms=st.uptime_ms)

    async def _soak(self, booted: list, watch: Callable, wave: int) -> bool:
        """Wait `soak` seconds, reading the booted boards' status every `soak_poll`
        seconds (watch(spec)); -> False when it ended early: on an abort request, or
        once the failures seen already pause the rollout."""
        end = time.monotonic() + self.plan.soak
        look = time.monotonic() + self.soak_poll
        self.emit("soak", wave=wave + 1, seconds=self.plan.soak)
        while time.monotonic() < end:
            if self._check_abort():
                return False
            if time.monotonic() >= look:
                await asyncio.gather(*(watch(s) for s in booted if self.plan.board(s).state == BOOTED))
                if self._must_pause(wave):
                    self.emit("soak_cut", wave=wave + 1, failures=self.plan.failures)
                    return False
                look = time.monotonic() + self.soak_poll
            await asyncio.sleep(min(self.poll, max(0.0, end - time.monotonic())))
        return True

    async def _watch_board(self, spec: str) -> None:
        """A look during the soak: a board already unhealthy fails now (a board that
        cannot be reached this once is only judged at the end)."""
        try:
            st = await self.t.status(spec)
        except MpotaError:
            return
        why = self._unhealthy(self.plan.board(spec), st, final=False)
        if why:
            self._set(spec, FAILED, error=why)

    def _unhealthy(self, b: BoardRecord, st: Status, final: bool = True) -> Optional[str]:
        """Why a board that booted the image is not healthy now (None: it is); not
        `final`: during the soak, when an app still starting is no failure yet."""
        run = st.running_image
        if run is None or run.sha256 != self.plan.sha256:
            return "runs slot %s (%s), not the new image: %s" % (st.running, st.describe_running(),
                                                                 st.boot_note or "no boot note")
        if st.app_state == "crashed":
            return "app crashed: %s" % (st.app_error or "no error text")
        if (b.boot_resets is not None and st.resets is not None and st.resets != b.boot_resets) or \
                (b.boot_uptime_ms is not None and st.uptime_ms is not None and st.uptime_ms < b.boot_uptime_ms):
            return "reset during the soak (%s)" % (st.boot_reason or "no reason given")
        if final and st.app_state not in ("running", "stopped"):
            return "app %s" % (st.app_state or "not running")
        return None

    async def _check_board(self, spec: str) -> None:
        b = self.plan.board(spec)
        try:
            st = await self.t.status(spec)
            why = self._unhealthy(b, st)
            if why:
                self._set(spec, FAILED, error=why)
                return
            by = "app"
            if st.running_image.state != "confirmed":
                await self.t.confirm(spec)
                by = "host"
            self._set(spec, HEALTHY, confirmed_by=by)
        except MpotaError as e:
            self._set(spec, FAILED, error=e.message)

    async def _roll_back(self, spec: str) -> None:
        """A failed board back on its confirmed version: by itself when it already
        left the new image, else `rollback` and `reset`. Its last saved crash is
        fetched first (it survives the reset: shown with the failure)."""
        b = self.plan.board(spec)
        for attempt in range(PUSH_TRIES):
            try:
                tb = await self.t.traceback(spec)
                if crash_version(tb) == self.plan.version:  # not one an earlier version left
                    b.traceback = tb
                break
            except MpotaError as e:  # (an agent without the logs op, unreachable: the failure says enough)
                if not transient(e):  # (no_memory just after the crash: again)
                    break
                await asyncio.sleep(RETRY_DELAY * (attempt + 1))
        try:
            st = await self.t.status(spec)
            run = st.running_image
            if run is None or run.sha256 != self.plan.sha256:
                b.rolled_back = "by itself"
            elif st.confirmed_other(st.running) is None:
                b.rolled_back = "no: no confirmed version to return to"
            else:
                back = await self.t.rollback(spec)
                ok = back.running_image is not None and back.running_image.sha256 != self.plan.sha256
                b.rolled_back = ("by the host, to %s" % back.describe_running()) if ok else \
                    "no: still runs slot %s after rollback and reset" % back.running
        except MpotaError as e:
            b.rolled_back = "no: %s" % e.message
        self._set(spec, FAILED)


def stop_running(store: RolloutStore, rid: str, timeout: float = 30.0) -> Plan:
    """`mpota rollout abort`: a paused rollout is marked aborted at once; a running
    one is asked to stop (ID.abort) and waited for. -> the plan as it ended."""
    plan = store.load(rid)
    if plan.state in (COMPLETE, ABORTED):
        return plan
    lock = store.lock(plan.id)
    if lock is not None:  # nobody runs it
        try:
            plan.state, plan.reason = ABORTED, "aborted"
            store.save(plan)
            return plan
        finally:
            lock.close()
    store.request_abort(plan.id)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lock = store.lock(plan.id)
        if lock is not None:
            lock.close()
            break
        time.sleep(0.1)
    return store.load(plan.id)
