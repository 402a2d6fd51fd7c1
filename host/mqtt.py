"""The host's side of MQTT (docs/mqtt.md): signed commands out, retained states and events in.

    link = await Link.open("mqtt://127.0.0.1:1883", fleet="default")   # retained states read once open
    link.state(device_id) -> dict | None            the board's retained state (its `status` fields)
    seq = await link.command(device_id, key, {"op": "confirm"})         signed, QoS 1, retained
    await link.wait(lambda: ..., timeout)           until a predicate over states/events holds
    await link.close()

    rollout.Rollout(plan, store, MqttTransport(link, ids, key, url, wait=60)).run()

A board connects out to the broker; the host never reaches it. Each board keeps
its state retained on mpota/FLEET/ID/state (its last will replaces it with
{"online": false}) and its outcomes on mpota/FLEET/ID/events; the host
publishes commands, retained, on mpota/FLEET/ID/cmd: a board that is offline
acts on the newest one when it comes back. A command is the codec's signed
payload (shared/mpota_command.py): the board acts only on one signed by a key
it trusts whose seq is newer than the last it acted on, so the broker and
whoever else is on it are untrusted. seq is milliseconds since the Unix
epoch: no coordination between hosts is needed.

paho-mqtt runs its network loop in a thread of its own; every message is
handed to the asyncio loop (call_soon_threadsafe), where the states and the
events live, so nothing here is shared between threads. paho reconnects by
itself after a broker restart and on_connect subscribes again.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import time
from typing import Callable, Optional

from .codec import mpota_command as command
from .rollout import Transport
from .errors import ConnectionProblem, DeviceError, DeviceTimeout, MpotaError, NotTaken, Unreachable, UsageError
from .status import Status

log = logging.getLogger("mpota.mqtt")

DEFAULT_PORT = 1883
DEFAULT_FLEET = "default"
BROKER_SPEC = "@broker"   # -t @broker: every board with a retained state on the broker
EVENTS_KEPT = 64          # per board: the newest events (the waits look for their command's seq)
_ID = re.compile(r"^[0-9a-fA-F]{2,64}$")


class BrokerUnreachable(Unreachable):
    """No connection to the MQTT broker (refused, timed out, no route)."""

    reported_as = "Unreachable"
    default_hint = "is the broker running there, listening on that port?"


class CommandFailed(DeviceError):
    """The board answered a command with a refusal or an error on its events topic."""

    default_hint = "the board's events topic says why; its retained state shows what it runs"


# --- names --------------------------------------------------------------------------------

def parse_url(url: str) -> tuple:
    """'mqtt://HOST[:PORT]' -> (host, port) (PORT defaults to 1883)."""
    from .targets import parse_hostport

    if not isinstance(url, str) or not url.startswith("mqtt://"):
        raise UsageError("%r is not an mqtt:// URL" % url, "give the broker as mqtt://HOST[:PORT] (TLS, mqtts://, "
                                                          "is not supported yet)")
    rest = url[len("mqtt://"):].rstrip("/")
    if not rest or "/" in rest or "@" in rest:
        raise UsageError("%r: give only the broker's host and port (mqtt://HOST[:PORT])" % url)
    return parse_hostport(rest, DEFAULT_PORT)


def check_fleet(name: str) -> str:
    if not command.name_ok(name):
        raise UsageError("%r cannot name a fleet: 1 to 32 letters, digits, - and _" % name,
                         "it is a topic level: mpota/FLEET/ID/state")
    return name


def is_device_id(spec: str) -> bool:
    return bool(_ID.match(spec))


def topic(fleet: str, dev: str, kind: str) -> str:
    return "mpota/%s/%s/%s" % (fleet, dev, kind)


def expand_specs(spec: str, targets_file: Optional[str] = None) -> list:
    """The boards `-t` names over MQTT: target names and groups as on the LAN, bare
    device ids (hex), and @broker (kept as is: Link.expand replaces it by every board
    with a retained state)."""
    from . import targets

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    rest = ",".join(p for p in parts if p != BROKER_SPEC)
    got = targets.expand(rest, targets_file, also=is_device_id) if rest else []
    if BROKER_SPEC in parts:
        got.insert(min(parts.index(BROKER_SPEC), len(got)), BROKER_SPEC)
    return got


def device_id(spec: str, targets_file: Optional[str] = None) -> str:
    """The device id a spec names over MQTT: a target's device_id, or the spec itself
    when it is a device id (hex, as status "device" shows it)."""
    from . import targets

    table = targets.load_targets(targets.targets_path(targets_file))
    if spec in table:
        t = targets.resolve(spec, targets_file, env={})
        if not t.device_id:
            raise UsageError("target %s has no device_id: over MQTT a board is named by its device id" % spec,
                             "add device_id = \"...\" (its status \"device\" field; provision records it) "
                             "to [targets.%s]" % spec)
        return t.device_id
    if is_device_id(spec):
        return spec.lower()
    raise UsageError("%s is neither a device id nor a target with a device_id" % spec,
                     "over MQTT, name boards by device id, by targets with a device_id, or all at once: "
                     "-t @broker")


# --- signed commands ------------------------------------------------------------------------

class SeqClock:
    """Command seqs: milliseconds since the Unix epoch, strictly increasing in this process."""

    def __init__(self):
        self.last = 0

    def next(self) -> int:
        self.last = max(int(time.time() * 1000), self.last + 1)
        return self.last


SEQ = SeqClock()


def signing_key(path: Optional[str]):
    """The private Ed25519 key (imgtool's) that signs commands: the key that signs images."""
    from . import keys

    if not path:
        raise UsageError("commands over MQTT are signed: no signing key given",
                         "give --sign-key KEY.pem (a key the boards trust), or sign_key in the targets file")
    key = keys.load(path)
    if not hasattr(key, "sign_digest"):
        raise keys.KeyFileError("%s is a public key: signing commands needs the private key" % path)
    return key


def sign(key, fields: dict) -> bytes:
    """The payload of a command: `fields` as compact JSON, signed (Ed25519 over
    command.signed_message(body), the body's exact bytes)."""
    body = command.body_bytes(fields)
    return command.pack(key.sign_digest(command.signed_message(body)), body)


def verify(key, payload: bytes) -> dict:
    """The body of `payload` when `key` (private or public) signed it; UsageError otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from . import keys

    try:
        d, body, sig = command.parse(payload)
    except command.CommandError as e:
        raise UsageError("not a signed record: %s" % e.message) from None
    try:
        Ed25519PublicKey.from_public_bytes(keys.public_raw(key)).verify(sig, command.signed_message(body))
    except InvalidSignature:
        raise UsageError("the signature does not verify with %s" % keys.fingerprint(key)) from None
    return d


# --- the link to the broker ----------------------------------------------------------------

class Link:
    """One connection to the broker, subscribed to a fleet's states and events."""

    def __init__(self, url: str, fleet: str = DEFAULT_FLEET, *, timeout: float = 10.0):
        self.url = url
        self.host, self.port = parse_url(url)
        self.fleet = check_fleet(fleet)
        self.timeout = timeout
        self.states: dict = {}     # device id -> its retained state (dict), as last received
        self.events: dict = {}     # device id -> deque of its newest events (dicts)
        self._changed = asyncio.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._connected: Optional[asyncio.Future] = None
        self._sync_topic = "mpota-host/%s/sync-%d-%s" % (self.fleet, os.getpid(), os.urandom(4).hex())
        self._synced = asyncio.Event()
        self.client = None

    @classmethod
    async def open(cls, url: str, fleet: str = DEFAULT_FLEET, *, timeout: float = 10.0) -> "Link":
        link = cls(url, fleet, timeout=timeout)
        await link.connect()
        return link

    async def __aenter__(self) -> "Link":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, subscribe, and wait until the broker has sent every retained state
        (a message of our own, sent after the subscription, comes back after them)."""
        import paho.mqtt.client as paho

        self._loop = asyncio.get_running_loop()
        self._connected = self._loop.create_future()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="mpota-host-%d-%s" % (
            os.getpid(), os.urandom(3).hex()), protocol=paho.MQTTv311, clean_session=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 5)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        self.client = c
        try:
            await asyncio.wait_for(asyncio.to_thread(c.connect, self.host, self.port, 30), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise BrokerUnreachable("cannot reach the MQTT broker at %s:%d: %s" % (
                self.host, self.port, getattr(e, "strerror", None) or e or "timed out")) from None
        c.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), self.timeout)
            await self._sync()
        except BaseException:
            await self.close()
            raise

    async def _sync(self) -> None:
        self._synced.clear()
        self.client.publish(self._sync_topic, b"sync", qos=1)
        try:
            await asyncio.wait_for(self._synced.wait(), self.timeout)
        except asyncio.TimeoutError:
            raise DeviceTimeout("the MQTT broker at %s:%d did not echo our own message within %.0f s"
                                % (self.host, self.port, self.timeout),
                                "is it overloaded, or does its access control refuse topic mpota-host/#?") from None

    async def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            try:
                c.disconnect()
            finally:
                await asyncio.to_thread(c.loop_stop)

    # paho's thread: hand everything to the asyncio loop
    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            self._loop.call_soon_threadsafe(self._connect_failed, str(reason))
            return
        client.subscribe([(topic(self.fleet, "+", "state"), 1), (topic(self.fleet, "+", "events"), 1),
                          (self._sync_topic, 1)])
        self._loop.call_soon_threadsafe(self._connect_ok)

    def _on_message(self, client, userdata, msg):
        self._loop.call_soon_threadsafe(self._take, msg.topic, bytes(msg.payload))

    # the asyncio loop
    def _connect_ok(self) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(True)

    def _connect_failed(self, why: str) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(ConnectionProblem("the MQTT broker at %s:%d refused us: %s"
                                                            % (self.host, self.port, why)))

    def _take(self, t: str, payload: bytes) -> None:
        if t == self._sync_topic:
            self._synced.set()
            return
        parts = t.split("/")
        if len(parts) != 4 or parts[0] != "mpota" or parts[1] != self.fleet or not is_device_id(parts[2]):
            return
        dev, kind = parts[2], parts[3]
        if not payload:  # a retained message cleared
            if kind == "state":
                self.states.pop(dev, None)
            return
        try:
            d = json.loads(payload)
        except ValueError:
            log.info("%s: not JSON: %r", t, payload[:80])
            return
        if not isinstance(d, dict):
            return
        if kind == "state":
            self.states[dev] = d
        elif kind == "events":
            self.events.setdefault(dev, collections.deque(maxlen=EVENTS_KEPT)).append(d)
        else:
            return
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    # --- what the rest of the host uses ---

    def state(self, dev: str) -> Optional[dict]:
        return self.states.get(dev)

    def board_ids(self) -> list:
        """Every board with a retained state on the broker (online or not), sorted."""
        return sorted(self.states)

    def expand(self, specs: list) -> list:
        """`specs` with @broker replaced by every board the broker has a state of."""
        out: list = []
        for s in specs:
            for x in (self.board_ids() if s == BROKER_SPEC else [s]):
                if x not in out:
                    out.append(x)
        return out

    def status(self, dev: str) -> Status:
        """The board's retained state as a Status; Unreachable when it has none or is offline."""
        st = self.states.get(dev)
        if st is None:
            raise Unreachable("no state of board %s on the broker (fleet %s)" % (dev, self.fleet),
                              "a board publishes it once it connects with \"mqtt\" (and this \"fleet\") in its "
                              "mpota.json")
        if st.get("online") is False:
            raise Unreachable("board %s is offline (its last will on the broker)" % dev,
                              "it acts on the newest command when it connects again")
        return Status.of(st)

    def events_of(self, dev: str, seq: int) -> list:
        return [e for e in self.events.get(dev, ()) if e.get("seq") == seq]

    async def command(self, dev: str, key, fields: dict) -> int:
        """Sign and publish a command to board `dev` (retained, QoS 1, acknowledged by
        the broker); -> its seq."""
        seq = SEQ.next()
        body = {"seq": seq, "fleet": self.fleet, "to": dev}
        body.update(fields)
        await self._publish(topic(self.fleet, dev, "cmd"), sign(key, body), retain=True)
        log.info("%s: %s seq %d", dev, fields.get("op"), seq)
        return seq

    async def clear_command(self, dev: str) -> None:
        """Remove the board's retained command (a board that comes back later finds none)."""
        await self._publish(topic(self.fleet, dev, "cmd"), b"", retain=True)

    async def _publish(self, t: str, payload: bytes, retain: bool) -> None:
        """Publish (QoS 1) and wait for the broker's PUBACK; across a broker restart, once
        paho has reconnected (the same payload twice is harmless: the board acts on a seq once)."""
        end = time.monotonic() + self.timeout
        while True:
            if self.client is None:
                raise ConnectionProblem("the link to the MQTT broker is closed")
            if self.client.is_connected():
                info = self.client.publish(t, payload, qos=1, retain=retain)
                while True:
                    try:
                        if info.is_published():
                            return
                    except (RuntimeError, ValueError):  # the connection dropped: publish it again
                        break
                    if time.monotonic() > end:
                        break
                    await asyncio.sleep(0.01)
            if time.monotonic() > end:
                raise DeviceTimeout("the MQTT broker at %s:%d did not acknowledge a command within %.0f s"
                                    % (self.host, self.port, self.timeout),
                                    "is the broker still up? the command may still reach the board")
            await asyncio.sleep(0.05)

    def online(self, dev: str) -> bool:
        st = self.states.get(dev)
        return st is not None and st.get("online") is not False

    async def wait_online(self, ids: list, timeout: float) -> None:
        """Until every board of `ids` has an online state; DeviceTimeout naming the others."""
        try:
            await self.wait(lambda: True if all(self.online(i) for i in ids) else None, timeout)
        except TimeoutError:
            late = [i for i in ids if not self.online(i)]
            raise DeviceTimeout("%d board(s) not online on the broker after %.0f s: %s"
                                % (len(late), timeout, ", ".join(late[:10]))) from None

    async def wait(self, check: Callable, timeout: float):
        """Until check() returns something other than None (-> it), re-checked after each
        message; TimeoutError after `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            r = check()
            if r is not None:
                return r
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass


# --- the rollout's transport ------------------------------------------------------------------

def _failure(dev: str, seq: int, events: list, what: str) -> Optional[MpotaError]:
    """The error a board's events report for command `seq`, if any. An "error" event names
    the device's error code (mpota_lineproto's names: signature_invalid, no_memory...), so
    it becomes the exception a LAN push would raise (errors.device_error; no_memory is
    retried by the rollout). A command dropped unverified under a flood (rate_limited) is
    no failure: the board fetches the retained command again by itself."""
    from .errors import Code, device_error

    for e in events:
        kind = e.get("event")
        why = e.get("reason") or e.get("error") or e.get("message") or "no reason given"
        if kind == "rejected" and e.get("reason") != "rate_limited":
            return CommandFailed("board %s ignored the %s command: %s%s" % (
                dev, what, why, " (%s)" % e["message"] if e.get("message") else ""), code=e.get("reason"), op=what)
        if kind == "error":
            code = e.get("code") or e.get("error")
            if code in {c.value for c in Code}:
                return device_error(code, "board %s: %s" % (dev, e.get("message") or code), op=what)
            return CommandFailed("board %s: %s failed: %s" % (dev, what, why), op=what)
        if kind == "rolled_back" and what == "install":  # (for a rollback it is the outcome asked for)
            return NotTaken("board %s rolled back from the new image: %s" % (dev, why))
    return None


class MqttTransport(Transport):
    """host/rollout.py's Transport through a broker: status is the board's retained
    state; push publishes a signed "install" (the board pulls `url` over HTTP with
    Range) and waits for the board's state to show the image running; confirm
    and rollback publish those commands and wait for their outcome.
    ids(spec) -> the board's device id."""

    def __init__(self, link: Link, ids: Callable, key, url: str, *, wait: float = 60.0,
                 allow_downgrade: bool = False):
        self.link = link
        self.ids = ids
        self.key = key
        self.url = url
        self.wait = wait
        self.allow_downgrade = allow_downgrade

    async def status(self, spec: str) -> Status:
        return self.link.status(self.ids(spec))

    async def _run(self, spec: str, fields: dict, done: Callable, what: str) -> Status:
        """Publish a command, then wait for done(state) to hold on a state that has seen it
        (cmd_seq), or for an event saying it failed."""
        dev = self.ids(spec)
        seq = await self.link.command(dev, self.key, fields)

        def check():
            err = _failure(dev, seq, self.link.events_of(dev, seq), what)
            if err is not None:
                return err
            st = self.link.states.get(dev)
            if st and st.get("online") is not False and (st.get("cmd_seq") or 0) >= seq and done(st):
                return Status.of(st)
            return None

        try:
            r = await self.link.wait(check, self.wait)
        except TimeoutError:
            # a board that comes back later must not act on a command given up on
            await self.link.clear_command(dev)
            st = self.link.states.get(dev)
            where = "offline" if st is None or st.get("online") is False else "online, cmd_seq %s" % st.get("cmd_seq")
            raise DeviceTimeout("board %s: no outcome of %s (seq %d) within %.0f s (it is %s)"
                                % (dev, what, seq, self.wait, where),
                                "the board acts on commands when it is connected to the broker") from None
        if isinstance(r, MpotaError):
            raise r
        return r

    async def push(self, spec: str, image) -> tuple:
        dev = self.ids(spec)
        st = self.link.states.get(dev)
        if st and st.get("online") is not False:
            now = Status.of(st)
            if now.running_image is not None and now.running_image.sha256 == image.sha256:
                return True, now
        fields = {"op": "install", "url": self.url, "sha256": image.sha256, "size": image.size,
                  "version": image.version}
        if self.allow_downgrade:
            fields["allow_downgrade"] = True

        def running_it(s: dict) -> bool:
            run = Status.of(s).running_image
            return run is not None and run.sha256 == image.sha256

        return False, await self._run(spec, fields, running_it, "install")

    async def confirm(self, spec: str) -> None:
        def confirmed(s: dict) -> bool:
            run = Status.of(s).running_image
            return run is not None and run.state == "confirmed"

        await self._run(spec, {"op": "confirm"}, confirmed, "confirm")

    async def rollback(self, spec: str) -> Status:
        """`rollback` (the board resets at once): -> its state once it runs another slot."""
        before = self.link.status(self.ids(spec)).running
        return await self._run(spec, {"op": "rollback"}, lambda s: s.get("running") != before, "rollback")
