"""The device's status reply, typed: `Status.of(reply)` reads it once.

The agent's `status` op (device/mpota_ops.py `status()`) answers with a JSON
object; a stranger (not authenticated) gets only who the device is and what it
runs. Every field the host reads is here, with the lookups the flows and the
CLI share (the running slot and version, the trial's crash), so nothing reads
the reply through `.get()` chains. `raw` is the reply itself, as `--json` prints it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# the states of an image the device runs (device/mpota_slots.py)
RUNNING_STATES = ("active", "trial", "confirmed")


@dataclass(frozen=True)
class SlotStatus:
    """One slot's entry in the reply (device/mpota_slots.py `Slots.info`)."""

    name: str
    state: Optional[str] = None
    size: Optional[int] = None
    sha256: str = ""            # lower-case hex; "" when the slot holds nothing
    version: Optional[str] = None

    @classmethod
    def of(cls, name: str, d: Optional[dict]) -> "SlotStatus":
        d = d or {}
        return cls(name, d.get("state"), d.get("size"), (d.get("sha256") or "").lower(), d.get("version"))


@dataclass(frozen=True)
class Status:
    raw: dict
    device: Optional[str] = None
    agent: Optional[str] = None
    mode: Optional[str] = None            # "live", "lean" or "update"
    auth: Optional[str] = None
    running: Optional[str] = None         # the slot the device booted ("a", "b"; None: no app)
    active: Optional[str] = None
    pending: Optional[str] = None         # the slot that boots on trial at the next reset
    trial: bool = False                   # the running version is on trial
    trial_count: int = 0
    max_trials: Optional[int] = None
    slots: dict[str, SlotStatus] = field(default_factory=dict)
    app_state: Optional[str] = None       # none, loaded, running, stopped, crashed
    app_name: Optional[str] = None
    app_error: Optional[str] = None
    trust_keys: tuple = ()                # fingerprints of the trusted signing keys
    signed_images: Optional[bool] = None  # None: not reported (a stranger's status)
    trust_seq: Optional[int] = None
    trust_warning: Optional[str] = None
    boot_reason: Optional[str] = None
    boot_note: Optional[str] = None
    slot_size: Optional[int] = None
    link: Optional[str] = None            # the Wi-Fi station link: up, down, connecting (mpota_wifi.py)
    rssi: Optional[int] = None            # the link's signal, dBm (None: not on Wi-Fi, or not reported)
    uptime_ms: Optional[int] = None
    resets: Optional[int] = None          # resets since the last power-on (None: an older agent)
    floor: Optional[int] = None           # the anti-rollback floor (Slots.floor)
    last_crash: Optional[str] = None      # the saved traceback's summary line (survives resets; `logs`)

    @classmethod
    def of(cls, reply: dict) -> "Status":
        app = reply.get("app") or {}
        trust = reply.get("trust") or {}
        return cls(
            raw=reply, device=reply.get("device"), agent=reply.get("agent"), mode=reply.get("mode"),
            auth=reply.get("auth"), running=reply.get("running"), active=reply.get("active"),
            pending=reply.get("pending"), trial=bool(reply.get("trial")),
            trial_count=reply.get("trial_count") or 0, max_trials=reply.get("max_trials"),
            slots={n: SlotStatus.of(n, s) for n, s in (reply.get("slots") or {}).items()},
            app_state=app.get("state"), app_name=app.get("name"), app_error=app.get("error"),
            trust_keys=tuple(trust.get("keys") or ()), signed_images=trust.get("signed_images"),
            trust_seq=trust.get("seq"), trust_warning=trust.get("warning"),
            boot_reason=reply.get("boot_reason"), boot_note=reply.get("boot_note"),
            slot_size=reply.get("slot_size"), link=reply.get("link"), rssi=reply.get("rssi"),
            uptime_ms=reply.get("uptime_ms"), resets=reply.get("resets"), floor=reply.get("floor"),
            last_crash=reply.get("last_crash"))

    @property
    def full(self) -> bool:
        """The whole reply (an authenticated peer's), not only a stranger's part."""
        return "slots" in self.raw

    @property
    def state(self) -> str:
        """What the device runs, in a word: "trial N/M", the running slot's state,
        or "no app" (a stranger's status: "?", the slots are not shown to it)."""
        if not self.full:
            return "?" if self.running else "no app"
        if self.trial:
            return "trial %d/%s" % (self.trial_count, self.max_trials or "?")
        rs = self.running_slot
        return rs.state or "?" if rs else "no app"

    def slot(self, name: Optional[str]) -> SlotStatus:
        """The entry of slot `name` (an empty one when the reply has none)."""
        return self.slots.get(name) or SlotStatus(name or "-")

    @property
    def running_slot(self) -> Optional[SlotStatus]:
        """The entry of the slot the device booted, None when it runs no app."""
        return self.slot(self.running) if self.running else None

    @property
    def running_version(self) -> Optional[str]:
        """The version the device runs (None: no app, or an image without one)."""
        s = self.running_slot
        return s.version if s else None

    def describe_running(self) -> str:
        """The running version for a message: its number, "no version" or "no app"."""
        return (self.running_version or "no version") if self.running else "no app"

    @property
    def running_image(self) -> Optional[SlotStatus]:
        """The running slot's entry when it holds a bootable image (RUNNING_STATES)."""
        s = self.running_slot
        return s if s is not None and s.state in RUNNING_STATES else None

    @property
    def trial_crash(self) -> Optional[str]:
        """The app error of a version on trial whose app crashed, else None."""
        if self.trial and self.app_state == "crashed":
            return self.app_error or "no error text"
        return None

    def confirmed_other(self, slot: str) -> Optional[str]:
        """A slot other than `slot` holding a confirmed image (a rollback's target)."""
        return next((n for n, s in sorted(self.slots.items()) if n != slot and s.state == "confirmed"), None)
