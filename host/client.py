"""asyncio client of the native mpota protocol (docs/protocol.md).

`Client` is one authenticated TCP connection: JSON-line requests with
`request()`, pipelined DATA writes with `upload()`, pipelined binary READs with
`read()`. This module is the protocol only (as esptool's loader); the flows
built on it (the resumable push_image, waiting for a device, the push and
its report) are push.py's (as esptool's cmds).

    async with Client("PicoW.local", key=key) as c:
        print((await c.status())["running"])

Nothing here prints; progress and events go to callbacks. The key is never
logged or put in an exception message.
"""
from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import logging
import os
import socket
import zlib
from typing import Any, Callable, Optional

from .codec import mpota_hostframes as hostframes  # the codec (shared/): see __init__.py
from .codec import mpota_lineproto as lineproto
from .codec import mpota_proto as proto
from .codec.mpota_checksums import crc32c
from .codec.mpota_framing import K_ERROR, K_FRAME, K_LINE
from .codec.mpota_hmac_sha256 import compare_digest, device_mac, host_mac
from .codec.mpota_session import Session

from .errors import (AuthError, BusyError, ConnectionLost, DeviceTimeout, LocalNameUnresolved, Unreachable,
                     device_error)

log = logging.getLogger("mpota.client")

CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 10.0
COMMIT_TIMEOUT = 120.0  # the device hashes and validates the whole slot
# connections the device may close before the auth is answered (a flood of
# strangers pushes them out; the challenge outlives them: protocol.md 2.2)
CHURN_RETRIES = 8
# NERROR-driven rewinds allowed on one connection before we give up on it.
MAX_REWINDS = 64

# Codes after which the host re-sends from the device's watermark (§1.2).
_REWIND_CODES = (lineproto.E_CRC_MISMATCH, lineproto.E_OUT_OF_ORDER, lineproto.E_BAD_FRAME,
                 lineproto.E_WRITE_FAILED)

ProgressCb = Callable[[int, int], None]


async def within(aw, seconds: float):
    """Await `aw` for at most `seconds` (asyncio.TimeoutError after).

    Python 3.11's wait_for() swallows a cancellation (Ctrl-C) that arrives
    just as the awaited thing completes; asyncio.timeout() does not.
    """
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)


def _hexdump_head(b: bytes, n: int = 48) -> str:
    return b[:n].hex() + ("..(%d bytes)" % len(b) if len(b) > n else "")


MDNS_HINT = ("a .local name is resolved by mDNS: this host must resolve .local names (Linux: avahi-daemon "
             "with nss-mdns, mdns4_minimal in /etc/nsswitch.conf; macOS: built in; Windows: Bonjour) and "
             "be on the board's network, where the board answers for %s.local once it has joined Wi-Fi; "
             "or reach it by its IP address (your router's client list, or the board's serial output)")


class Client:
    """One connection to a device agent.

    After `auth` every message both ways is sealed with the session's MAC
    (protocol.md 2.6): a message that fails it ends the connection with
    AuthError. `expect_device`: the device id the targets file records; a
    peer that says another id is refused before we sign anything for it.
    """

    def __init__(self, host: str, port: int = lineproto.TCP_PORT, *, key: Optional[bytes] = None,
                 connect_timeout: float = CONNECT_TIMEOUT, timeout: float = IO_TIMEOUT,
                 window: Optional[int] = None, expect_device: Optional[str] = None):
        self.host = host
        self.port = port
        self._key = key
        self.expect_device = expect_device
        self._sess: Optional[Session] = None      # sealing and opening, once authenticated
        self._sess_next: Optional[Session] = None  # armed by auth(): opens the auth reply
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.user_window = window
        self.info: dict = {}            # the hello reply
        self.authenticated = False
        self.peer: Any = None
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._rx_task: Optional[asyncio.Task] = None
        self._pending: dict = {}        # request id -> Future
        self._frames: asyncio.Queue = asyncio.Queue()
        self._next_id = 1
        self._closed_exc: Optional[BaseException] = None
        self.closed = asyncio.Event()
        # Upload accounting (see upload()).
        self.bytes_sent = 0
        self.sectors_target: Optional[str] = None  # the slot an upload goes to, as the last sectors reply said
        self.bytes_resent = 0
        self.rewinds = 0

    def __repr__(self) -> str:  # never shows the key
        return "Client(%s:%s)" % (self.host, self.port)

    # --- connection ---------------------------------------------------------

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self, authenticate: Optional[bool] = None) -> dict:
        """Open the TCP connection, say hello and (if needed) authenticate.

        authenticate: True = fail without a key when the device wants auth;
        None = authenticate when a key is at hand; False = never.
        """
        reuse = False  # answer the last hello's challenge on a new connection
        info: dict = self.info
        for attempt in range(CHURN_RETRIES + 1):
            await self._open()
            try:
                if not reuse:
                    info = await self.hello()
                    if info.get("auth", "none") == "none":
                        self.authenticated = True
                        return info
                    if authenticate is False or (self._key is None and not authenticate):
                        return info
                # the device tells its limits (window, max_data...) only once authenticated
                info.update(await self.auth(reuse) or {})
                return info
            except ConnectionLost:
                # A device under a flood of strangers closes the oldest that
                # are not yet authenticated: its challenge is still good (once).
                if attempt == CHURN_RETRIES:
                    raise
                reuse = bool(self.info.get("nonce"))
            except AuthError:
                if not reuse or attempt == CHURN_RETRIES:
                    raise
                reuse = False  # the challenge expired meanwhile: a new hello
            except BusyError:
                # every stranger's slot holds a connection too young to push out
                if attempt == CHURN_RETRIES:
                    raise
                await asyncio.sleep(0.2)
            log.info("%s closed the connection before the auth: again (%d)", self.host, attempt + 1)
            await self.close()
            self._reset_link()
        raise AssertionError("unreachable")

    def _reset_link(self) -> None:
        # after close(): a new connection starts with no session and no waiters
        self._sess = self._sess_next = None
        self._closed_exc = None
        self.closed = asyncio.Event()
        self._frames = asyncio.Queue()
        self.authenticated = False

    async def _open(self) -> None:
        if self.host.startswith("usb:"):  # the USB transport (usb.py): same protocol, other streams
            return await self._open_usb()
        loop = asyncio.get_running_loop()
        try:
            infos = await within(
                loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM),
                self.connect_timeout)
        except (socket.gaierror, asyncio.TimeoutError) as e:
            if self.host.rstrip(".").lower().endswith(".local"):
                name = self.host.rstrip(".")[:-len(".local")]
                raise LocalNameUnresolved("cannot resolve %s: %s" % (self.host, e or "timed out"),
                                          MDNS_HINT % name, name=name)
            raise Unreachable("cannot resolve %s: %s" % (self.host, e or "timed out"))
        errors = []
        for family, _type, _proto, _, sockaddr in infos:
            try:
                r, w = await within(
                    asyncio.open_connection(sockaddr[0], sockaddr[1], family=family),
                    self.connect_timeout)
            except asyncio.TimeoutError:
                errors.append("%s: timed out after %.0f s" % (sockaddr[0], self.connect_timeout))
                continue
            except OSError as e:
                errors.append("%s: %s" % (sockaddr[0], os.strerror(e.errno) if e.errno else e))
                continue
            self._reader, self._writer = r, w
            self.peer = sockaddr
            sock = w.get_extra_info("socket")
            if sock is not None:
                try:  # small control lines must not wait for Nagle
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            self._rx_task = asyncio.ensure_future(self._rx_loop())
            log.info("connected to %s port %s", sockaddr[0], sockaddr[1])
            return
        raise Unreachable("cannot connect to %s port %s: %s" % (self.host, self.port, "; ".join(errors)))

    async def _open_usb(self) -> None:
        from . import usb

        self._reader, self._writer, device = await usb.open_streams(self.host, self.connect_timeout)
        if self.expect_device is not None and device != self.expect_device:
            await self.close()
            raise AuthError("%s is device %r, the targets file expects %r: refused"
                            % (self.host, device, self.expect_device), "another board is on that port")
        self.peer = (self.host, device)
        self._rx_task = asyncio.ensure_future(self._rx_loop())
        log.info("connected to %s (device %s)", self.host, device)

    async def close(self) -> None:
        w, self._writer = self._writer, None
        if w is not None:
            w.close()
            try:
                await within(w.wait_closed(), 2.0)
            except (OSError, asyncio.TimeoutError):
                pass
        t, self._rx_task = self._rx_task, None
        if t is not None:
            t.cancel()
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_all(ConnectionLost("connection closed"))

    def abort_link(self) -> None:
        """Drop the connection at once (tests, Ctrl-C): no goodbye."""
        if self._writer is not None:
            self._writer.transport.abort()

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed_exc is None:
            self._closed_exc = exc
        self.closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
                # Marked as retrieved: a waiter still gets it, but a request that gave
                # up first (timeout, Ctrl-C) leaves no "Future exception was never
                # retrieved" on stderr after the run.
                fut.exception()
        self._pending.clear()
        self._frames.put_nowait(None)  # wakes a waiting upload/read

    async def _rx_loop(self) -> None:
        dec = hostframes.Decoder(max_frame=lineproto.MAX_FRAME + 64, max_line=64 * 1024)
        reader = self._reader
        assert reader is not None
        exc: BaseException = ConnectionLost("the device closed the connection")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for kind, value in dec.decode(data):
                    if self._sess is not None or self._sess_next is not None:
                        value = self._unseal(kind, value)
                        if value is None:
                            continue  # a plain error reply to the auth request
                    if kind == K_FRAME:
                        frame = bytes(value)
                        if log.isEnabledFor(logging.DEBUG):
                            log.debug("RX frame %s", _hexdump_head(frame))
                        self._frames.put_nowait(frame)
                    elif kind == K_LINE:
                        self._on_line(bytes(value))
                    elif kind == K_ERROR:
                        log.warning("undecodable bytes from device: %s", value[1])
        except (OSError, ConnectionError) as e:
            exc = ConnectionLost("connection to %s lost: %s" % (self.host, e))
        except AuthError as e:
            exc = e
            if self._writer is not None:
                self._writer.transport.abort()
        except asyncio.CancelledError:
            exc = ConnectionLost("connection closed")
            raise
        finally:
            self._fail_all(exc)

    def _unseal(self, kind: int, value):
        """The event's value with its session tag checked and removed; None for
        a plain line that answers the auth request (its error); AuthError when
        a message fails (the connection is then dropped)."""
        sess = self._sess
        if sess is None:  # auth is under way: its reply is sealed when it succeeded
            sess = self._sess_next
            if kind == K_LINE and len(value) and value[-1] == 0x7D:  # ends with "}": not sealed
                self._sess_next = None
                self._on_line(bytes(value))
                return None
        opened = sess.open(kind, value)
        if opened is None:
            what = value[1] if kind == K_ERROR else "a message"
            raise AuthError("%s sent %s that the session does not authenticate: connection dropped"
                            % (self.host, what),
                            "someone may be injecting or replaying traffic between you and the device")
        if sess is not self._sess:
            self._sess, self._sess_next = sess, None  # the device sealed the auth reply: both ways from now
        return opened

    def _send(self, w: asyncio.StreamWriter, b) -> None:
        w.write(self._sess.seal(b) if self._sess is not None else b)

    def _on_line(self, line: bytes) -> None:
        log.debug("RX %s", line.decode("utf-8", "replace"))
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("device sent a line that is not JSON: %r", line[:80])
            return
        if not isinstance(msg, dict):
            return
        fut = self._pending.pop(msg.get("id"), None)
        if fut is None and msg.get("id") is None and len(self._pending) == 1:
            # An error reply without id (e.g. an over-long line) answers the only request.
            fut = self._pending.pop(next(iter(self._pending)))
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _check_open(self) -> asyncio.StreamWriter:
        if self._writer is None or self.closed.is_set():
            raise self._closed_exc or ConnectionLost("not connected")
        return self._writer

    async def _drain(self) -> None:
        w = self._check_open()
        try:
            await within(w.drain(), self.timeout)
        except asyncio.TimeoutError:
            raise DeviceTimeout("%s stopped reading for %.0f s" % (self.host, self.timeout))
        except (OSError, ConnectionError) as e:
            raise ConnectionLost("connection to %s lost: %s" % (self.host, e))

    # --- JSON requests ------------------------------------------------------

    async def request(self, op: str, timeout: Optional[float] = None, **fields) -> dict:
        """Send one JSON request; return the reply, or raise the mapped error."""
        w = self._check_open()
        rid = self._next_id
        self._next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        line = hostframes.request_line(op, rid, fields)
        log.debug("TX %s", line.decode().rstrip())
        self._send(w, line)
        try:
            await self._drain()
            reply = await within(fut, timeout or self.timeout)
        except asyncio.TimeoutError:
            raise DeviceTimeout("no answer to %s from %s within %.0f s" % (op, self.host, timeout or self.timeout))
        finally:
            self._pending.pop(rid, None)  # answered, or given up on: nobody waits for it now
        if not reply.get("ok"):
            err = reply.get("error") or {}
            if err.get("code") == "auth_failed" and self._sess is not None and op != "auth":
                # sealed by the device, so genuinely its answer: one of OUR messages failed its
                # session MAC (mangled or duplicated on the way) and it closes; the link, not the
                # key, is at fault, and a new connection resumes
                raise ConnectionLost("%s could not authenticate a message of this session (the link "
                                     "mangled it) and closed the connection" % self.host)
            raise device_error(err.get("code"), err.get("message", "refused"), num=err.get("num"),
                               retry=bool(err.get("retry")), fatal=bool(err.get("fatal")), op=op)
        return reply

    async def hello(self) -> dict:
        self.info = await self.request("hello")
        return self.info

    async def auth(self, other_connection: bool = False) -> dict:
        """Mutual HMAC-SHA256 challenge-response (protocol.md §2.2); returns
        the device's limits that come with a successful auth.
        other_connection: the challenge (self.info's nonce) came on a former
        connection; this one answers it as its first message."""
        if self._key is None:
            raise AuthError("%s requires authentication and no key was given" % self.host)
        device = str(self.info.get("device", ""))
        if self.expect_device is not None and device != self.expect_device:
            raise AuthError("%s says it is device %r, the targets file expects %r: refused"
                            % (self.host, device, self.expect_device),
                            "another device answers at this address (or someone impersonates it)")
        try:
            dev_nonce = bytes.fromhex(self.info["nonce"])
        except (KeyError, TypeError, ValueError):
            raise AuthError("%s sent no usable auth nonce in hello" % self.host,
                            "the agent is broken or not an mpota agent")
        host_nonce = os.urandom(16)
        mac = host_mac(self._key, device, dev_nonce, host_nonce)
        # the device seals its reply under the new session: arm it before asking
        self._sess_next = Session(self._key, device, dev_nonce, host_nonce, False)
        more = {"challenge": dev_nonce.hex()} if other_connection else {}
        reply = await self.request("auth", nonce=host_nonce.hex(), mac=mac.hex(), **more)
        if self._sess is None:
            raise AuthError("%s accepted the auth but did not seal its reply" % self.host,
                            "the agent is too old for this host tool, or not an mpota agent")
        want = device_mac(self._key, device, dev_nonce, host_nonce)
        try:
            got = bytes.fromhex(reply.get("mac", ""))
        except ValueError:
            got = b""
        if not compare_digest(got, want):
            raise AuthError("%s accepted our key but could not prove it holds it" % self.host,
                            "this is not the device you think it is (wrong address?)")
        self.authenticated = True
        log.info("authenticated to %s (%s)", self.host, device)
        return {k: v for k, v in reply.items() if k not in ("mac", "ok", "id")}

    async def ping(self) -> dict:
        return await self.request("ping")

    async def status(self) -> dict:
        return await self.request("status")

    async def confirm(self) -> dict:
        return await self.request("confirm")

    async def rollback(self) -> dict:
        return await self.request("rollback")

    async def erase(self, slot: str) -> dict:
        return await self.request("erase", slot=slot)

    async def logs(self, since: Optional[int] = None, traceback: bool = True,
                   max_bytes: Optional[int] = None) -> dict:
        """One `logs` reply: the console bytes after cursor `since` (None: all
        the board keeps), at most `max_bytes` and its per-reply limit ("more":
        ask again), and the saved traceback unless not `traceback`."""
        f: dict = {} if since is None else {"since": since}
        if not traceback:
            f["traceback"] = False
        if max_bytes is not None:
            f["max"] = max_bytes
        return await self.request("logs", **f)

    async def reset(self, delay_ms: int = 100) -> dict:
        return await self.request("reset", delay_ms=delay_ms)

    async def abort(self) -> dict:
        return await self.request("abort")

    async def begin(self, size: int, sha256: str, version: Optional[str] = None,
                    slot: str = "inactive", allow_downgrade: bool = False,
                    key_id: Optional[str] = None, client: Optional[str] = None, force: bool = False,
                    held: Optional[bytes] = None, held_from: Optional[str] = None, deflate: bool = False) -> dict:
        """key_id: the image's signing key id (hex; "" unsigned): a device that
        trusts keys refuses an image it would refuse at commit for its key now,
        before any byte is sent. client: this operator's client id
        (default_client_id()): a session it left open on another connection is
        taken over at once. deflate: DATA frames carry deflate streams
        (upload(deflate=True))."""
        fields: dict = {"size": size, "sha256": sha256, "slot": slot}
        if client is not None:
            fields["client"] = client
        if version is not None:
            fields["version"] = version
        if key_id is not None:
            fields["key_id"] = key_id
        if allow_downgrade:
            fields["allow_downgrade"] = True
        if force:  # the running image again (the device refuses it otherwise: it would replace the rollback copy)
            fields["force"] = True
        if held is not None:  # the sectors slot held_from holds already (held_sectors): the device copies them
            fields["held"] = held.hex()
            if held_from is not None:
                fields["held_from"] = held_from
        if deflate:
            fields["deflate"] = True
        return await self.request("begin", **fields)

    async def sectors(self, count: int, slot: Optional[str] = None) -> tuple:
        """What a slot holds (`slot`, else the device's choice: the one that
        runs): (the slot, its size, the 8-byte digests of its first `count`
        4 KiB sectors, fewer where it ends), from as many `sectors` requests as
        that takes, sent at once. `self.sectors_target`: the slot an upload
        would go to (None from a device that does not say)."""
        extra = {} if slot is None else {"slot": slot}
        replies = await asyncio.gather(*(self.request("sectors", first=f, count=min(64, count - f), **extra)
                                         for f in range(0, max(count, 1), 64)))
        out = b"".join(bytes.fromhex(r.get("hashes", "")) for r in replies)  # (none past the slot's end)
        last = replies[-1]
        self.sectors_target = last.get("target")
        return last.get("slot"), int(last.get("size", 0)), bytes(out[:8 * count])

    async def commit(self) -> dict:
        return await self.request("commit", timeout=max(self.timeout, COMMIT_TIMEOUT))

    # --- binary frames ------------------------------------------------------

    async def _next_frame(self, what: str) -> bytes:
        try:
            frame = await within(self._frames.get(), self.timeout)
        except asyncio.TimeoutError:
            raise DeviceTimeout("%s: no reply from %s for %.0f s" % (what, self.host, self.timeout))
        if frame is None:
            self._frames.put_nowait(None)  # stays closed for later readers
            raise self._closed_exc or ConnectionLost("connection lost")
        return frame

    def _window(self, reply: Optional[dict] = None) -> tuple:
        max_data = int((reply or {}).get("max_data") or self.info.get("max_data") or lineproto.MAX_DATA)
        window = int((reply or {}).get("window") or self.info.get("window") or lineproto.WINDOW)
        if self.user_window:
            window = min(window, self.user_window)
        max_data = max(1, min(max_data, window))
        return max_data, window

    async def upload(self, image, start: int, *, begin_reply: Optional[dict] = None,
                     high_sent: int = 0, on_progress: Optional[ProgressCb] = None,
                     skip: Optional[set] = None, deflate: bool = False,
                     squeezed: Optional[dict] = None) -> int:
        """Send image[start:] as pipelined DATA frames; return when all is ACKed.

        Keeps at most `window` bytes unacknowledged (never a round trip per
        chunk). After an NERROR carrying watermark W it re-sends from W and
        ignores the NERRORs of frames sent before that rewind (§1.2).
        `high_sent` is the highest offset sent by earlier connections, so bytes
        below it count as re-sent. `skip`: the 4 KiB sectors the device keeps
        (begin "held"): never sent, unless the device rewinds into one (it
        lacked it after all). `deflate` (a begin that said so): each frame
        carries a raw deflate stream (squeeze) of at most one sector, and the
        window counts the bytes on the wire; `squeezed` ({(offset, length):
        stream}, as squeeze_sectors fills it) keeps each piece deflated once,
        across resends and connections. Returns the new high_sent.
        """
        w = self._check_open()
        mv = memoryview(image)
        size = len(mv)
        max_data, window = self._window(begin_reply)
        acked = nxt = start
        last_rewind: Optional[int] = None
        rewinds = 0
        skip = set(skip or ())
        flight: list = []  # deflate: (end offset, bytes on the wire) of each frame not yet acknowledged
        zs = {} if squeezed is None else squeezed
        while acked < size:
            while nxt < size:
                if skip and nxt % SECTOR == 0 and nxt // SECTOR in skip:
                    nxt = min(size, nxt + SECTOR)  # the device copies it
                    continue
                n = min(max_data, size - nxt)
                if skip:
                    n = min(n, SECTOR - nxt % SECTOR)  # a frame never reaches into a kept sector
                    if _kept(skip, acked, nxt, size) > SECTOR:
                        # the device copies kept sectors first (a sector a round trip, about): what
                        # follows goes when one is left, so it lands as the copy ends
                        break
                if deflate:
                    n = min(size - nxt, SECTOR - nxt % SECTOR)
                    payload = _squeezed(zs, mv, nxt, n)
                    while len(payload) > max_data and n > 64:  # (an incompressible piece: a smaller one)
                        n //= 2
                        payload = _squeezed(zs, mv, nxt, n)
                    if flight and sum(x for _, x in flight) + len(payload) > window:
                        break
                    flight.append((nxt + n, len(payload)))
                else:
                    if nxt + n - acked > window:
                        break
                    payload = mv[nxt:nxt + n]
                frame = hostframes.encode_data(nxt, payload)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("TX DATA offset=%d len=%d (%d on the wire)", nxt, n, len(payload))
                self._send(w, frame)
                if nxt < high_sent:
                    self.bytes_resent += min(len(payload), high_sent - nxt)
                self.bytes_sent += len(payload)
                nxt += n
                high_sent = max(high_sent, nxt)
            await self._drain()
            frame = await self._next_frame("upload at offset %d" % acked)
            op = frame[1]
            if op == proto.OP_ACK:
                a = hostframes.parse_ack(frame)
                if a > acked:
                    acked = min(a, size)
                    nxt = max(nxt, acked)
                    flight = [f for f in flight if f[0] > acked]
                    if on_progress:
                        on_progress(acked, size)
            elif op == proto.OP_NERROR:
                req_op, code, flags, value, ref = hostframes.parse_nerror(frame)
                name = lineproto.error_name(code)
                if code not in _REWIND_CODES:
                    raise device_error(name, "device refused data at offset %d (watermark %d)" % (ref, value),
                                       num=code, retry=not flags & lineproto.F_NO_RETRY,
                                       fatal=bool(flags & lineproto.F_FATAL), op="write")
                if last_rewind is not None and value == last_rewind and ref != value:
                    continue  # answer to a frame sent before the rewind
                rewinds += 1
                self.rewinds += 1
                if rewinds > MAX_REWINDS:
                    raise device_error(name, "too many re-sends (%d) at offset %d" % (rewinds, value),
                                       num=code, retry=True, op="write")
                log.info("device says %s at %d, watermark %d: re-sending from %d", name, ref, value, value)
                skip.discard(value // SECTOR)  # a sector it was to keep but lacks
                if value > acked:
                    acked = value
                    if on_progress:
                        on_progress(acked, size)
                nxt = last_rewind = max(value, acked)
                flight = []
            else:
                log.warning("unexpected frame 0x%02X during upload ignored", op)
        return high_sent

    async def read(self, slot: str, offset: int, length: int,
                   on_progress: Optional[ProgressCb] = None) -> bytes:
        """Read `length` bytes of `slot` from `offset` with pipelined binary READs."""
        w = self._check_open()
        max_data, window = self._window()
        max_data = min(max_data, 0xFFFF)
        out = bytearray(length)
        outstanding: dict = {}  # offset -> length requested
        inflight = 0
        nxt = offset
        end = offset + length
        done = 0
        retries = 0
        while done < length:
            while nxt < end and inflight < window:
                n = min(max_data, end - nxt)
                self._send(w, hostframes.encode_read(slot, nxt, n))
                outstanding[nxt] = n
                inflight += n
                nxt += n
            await self._drain()
            frame = await self._next_frame("read of slot %s at %d" % (slot, offset + done))
            op = frame[1]
            if op == proto.OP_READ_DATA:
                off, crc, data = hostframes.parse_read_data(frame)
                want = outstanding.pop(off, None)
                if want is None:
                    log.warning("unrequested READ_DATA at %d ignored", off)
                    continue
                inflight -= want
                if crc32c(data) != crc or len(data) == 0 or len(data) > want:
                    retries += 1
                    if retries > 8:
                        raise device_error("crc_mismatch", "read data keeps arriving corrupted", op="read")
                    self._send(w, hostframes.encode_read(slot, off, want))  # reads are idempotent
                    outstanding[off] = want
                    inflight += want
                    continue
                out[off - offset:off - offset + len(data)] = data
                done += len(data)
                if len(data) < want:  # short read: ask for the rest
                    rest = off + len(data)
                    self._send(w, hostframes.encode_read(slot, rest, want - len(data)))
                    outstanding[rest] = want - len(data)
                    inflight += want - len(data)
                if on_progress:
                    on_progress(done, length)
            elif op == proto.OP_NERROR:
                req_op, code, flags, value, ref = hostframes.parse_nerror(frame)
                raise device_error(lineproto.error_name(code), "read of slot %s at %d refused" % (slot, ref),
                                   num=code, retry=not flags & lineproto.F_NO_RETRY,
                                   fatal=bool(flags & lineproto.F_FATAL), op="read")
            else:
                log.warning("unexpected frame 0x%02X during read ignored", op)
        return bytes(out)


SECTOR = 4096  # the unit a device keeps or is sent (device/mpota_upload.py SECTOR)
ZBITS = 9  # a deflate DATA frame's window: the device inflates with 2 ** ZBITS bytes (mpota_upload.ZBITS)


def squeeze(data) -> bytes:
    """`data` as the raw deflate stream a deflate session's DATA frame carries."""
    z = zlib.compressobj(9, zlib.DEFLATED, -ZBITS, 9)
    return z.compress(data) + z.flush()


def _squeezed(zs: dict, mv, off: int, n: int) -> bytes:
    """squeeze(image[off:off + n]), deflated once: kept in `zs`."""
    z = zs.get((off, n))
    if z is None:
        z = zs[(off, n)] = squeeze(mv[off:off + n])
    return z


def squeeze_sectors(image, zs: dict) -> int:
    """Bytes on the wire of `image` sent deflated a sector a frame (upload's
    pieces, each kept in `zs` for it)."""
    mv = memoryview(image)
    return sum(len(_squeezed(zs, mv, i, min(SECTOR, len(mv) - i))) for i in range(0, len(mv), SECTOR))


def _kept(skip: set, a: int, b: int, size: int) -> int:
    """Bytes of image[a:b] in the kept sectors `skip`."""
    return sum(max(0, min(b, (k + 1) * SECTOR, size) - max(a, k * SECTOR)) for k in skip) if skip else 0


def sector_digests(image) -> bytes:
    """The 8-byte digest of each 4 KiB sector of `image`, as the sectors op gives them."""
    mv = memoryview(image)
    return b"".join(hashlib.sha256(mv[i:i + SECTOR]).digest()[:8] for i in range(0, len(mv), SECTOR))


def held_sectors(image, have: bytes) -> bytes:
    """begin's "held" bitmap: the sectors of `image` whose digest the slot's
    (`have`, from Client.sectors) matches."""
    mine = sector_digests(image)
    n = len(mine) // 8
    out = bytearray((n + 7) // 8)
    for k in range(min(n, len(have) // 8)):
        if have[8 * k:8 * k + 8] == mine[8 * k:8 * k + 8]:
            out[k >> 3] |= 1 << (k & 7)
    return bytes(out)


def expected_device(target) -> Optional[str]:
    """The device id a Target (host/targets.py) records for itself, if any: a
    connection to it refuses a peer that says it is another device."""
    return getattr(target, "device_id", None) or None


def default_client_id() -> str:
    """Who "the same operator" is for `begin` (protocol.md 2.3): every operator
    of a device holds its one key, so the device tells them apart by this id,
    MPOTA_CLIENT_ID or else derived from this account and machine. The
    operator's own session, stranded on a connection a relay froze, is
    taken over at once; another operator's waits for its timeout."""
    env = os.environ.get("MPOTA_CLIENT_ID")
    if env:
        return env[:64]
    who = "%s@%s" % (getpass.getuser(), socket.gethostname())
    return hashlib.sha256(who.encode()).hexdigest()[:16]
