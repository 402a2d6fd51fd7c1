"""Discovery: find the agents on the local network, or collect their announces.

A probe is one UDP datagram, PROBE padded with spaces to PROBE_SIZE bytes,
sent to the agent's port (its TCP port's number, 8472): broadcast on the LAN
(255.255.255.255) and/or to each address given. Each agent with discovery
on (device config "discover", the default) answers with one JSON datagram
(device/mpota_agent.py _hello) that is never longer than the probe:

    {"mpota": "here", "id": "e6614c311b6a7a2f", "name": "picow-1", "port": 8472}

plus "version" (the running app's) and "agent" when its config has
"discover_version": true. A board whose config has "announce": "HOST:PORT"
sends the same datagram there each time its listener starts (boot, link up):
listen() collects them. docs/protocol.md ("Discovery") is the reference and
docs/security.md says what it reveals.
"""
from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from . import targets as targets_mod
from .codec import mpota_lineproto as lineproto
from .errors import UsageError

PROBE = b'{"mpota":"discover"}'
PROBE_SIZE = 256  # >= any answer: the device answers only probes at least as long as its answer
RETRY_S = 0.5  # the probe is sent again to the addresses that have not answered
BROADCAST = "255.255.255.255"


@dataclass
class Board:
    id: str
    name: str
    host: str          # the address the answer came from
    port: int          # the agent's TCP port
    version: Optional[str] = None   # the running app's, only if the board tells it
    agent: Optional[str] = None
    via: str = "probe"  # probe | announce
    target: Optional[str] = None    # its name in the targets file, when known there
    key: Optional[bool] = None      # whether that target has a key_file (None: not a target)

    def fields(self) -> dict:
        return asdict(self)


def probe() -> bytes:
    return PROBE + b" " * (PROBE_SIZE - len(PROBE))


def parse_answer(data: bytes, addr) -> Optional[Board]:
    """A board from an answer or announce datagram; None for anything else."""
    try:
        d = json.loads(data)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("mpota") != "here":
        return None
    dev, name, port = d.get("id"), d.get("name"), d.get("port")
    if not isinstance(dev, str) or not re.fullmatch(r"[0-9a-fA-F]{2,64}", dev) or not isinstance(name, str) \
            or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    ver, agent = d.get("version"), d.get("agent")
    return Board(id=dev.lower(), name=name, host=addr[0], port=port,
                 version=ver if isinstance(ver, str) else None, agent=agent if isinstance(agent, str) else None)


def parse_ports(text: str) -> list:
    """'8472', '8472,9000' or '9000-9099' (mixed) -> the ports, in order, each once."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UsageError("cannot read ports %r" % text, "use N, N,M or N-M")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if not 0 < lo <= hi < 65536 or hi - lo > 4096:
            raise UsageError("port range %r out of bounds (1..65535, at most 4097 ports)" % part.strip())
        out.extend(range(lo, hi + 1))
    return list(dict.fromkeys(out))


def parse_to(spec: str, default_port: int = lineproto.TCP_PORT) -> list:
    """--to HOST[:PORTS] -> [(host, port), ...]: '127.0.0.1:9000-9099', '192.168.1.40'."""
    host, sep, ports = spec.rpartition(":")
    if not sep or spec.count(":") > 1 and not spec.startswith("["):
        host, ports = spec, ""
    host = host.strip("[]")
    if not host:
        raise UsageError("cannot read --to %r" % spec, "use HOST, HOST:PORT or HOST:FIRST-LAST")
    return [(host, p) for p in (parse_ports(ports) if ports else [default_port])]


def discover(addresses: Iterable = (), broadcast_port: Optional[int] = None, wait: float = 2.0,
             sock: Optional[socket.socket] = None) -> list:
    """Probe `addresses` ((host, port) pairs) and, with broadcast_port, the
    LAN's broadcast address; -> the boards that answered within `wait`
    seconds, in answer order, each once (by id). The probe is sent again every
    RETRY_S to the addresses not yet answered. Without broadcast it returns as
    soon as every address has answered."""
    addrs = list(dict.fromkeys((_ip(h), p) for h, p in addresses))
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    found: dict = {}
    answered: set = set()
    msg = probe()
    try:
        if broadcast_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        t0 = time.monotonic()
        next_send = t0
        while True:
            now = time.monotonic()
            if now >= next_send:
                _send_all(s, msg, [a for a in addrs if a not in answered] +
                          ([(BROADCAST, broadcast_port)] if broadcast_port else []))
                next_send = now + RETRY_S
            if addrs and not broadcast_port and len(answered) >= len(addrs):
                break
            left = min(t0 + wait, next_send) - now
            if now >= t0 + wait:
                break
            s.settimeout(max(left, 0.001))
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                continue  # ICMP port unreachable of a port with no board (Linux reports it here)
            b = parse_answer(data, addr)
            if b is None:
                continue
            answered.add((addr[0], b.port))
            answered.add(addr[:2])
            found.setdefault(b.id, b)
    finally:
        if sock is None:
            s.close()
    return list(found.values())


def _ip(host: str) -> str:
    try:
        return socket.gethostbyname(host)  # answers come from the address, not the name
    except OSError as e:
        raise UsageError("cannot resolve %s (%s)" % (host, e))


def _send_all(s, msg, addrs) -> None:
    for a in addrs:
        try:
            s.sendto(msg, a)
        except OSError:
            pass  # no route (no LAN for a broadcast), a refused port: nobody answers there


def listen(bind: tuple, seconds: float) -> list:
    """Collect announces on `bind` (host, port) for `seconds`; -> the boards, each once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    found: dict = {}
    try:
        s.bind(bind)
    except OSError as e:
        s.close()
        raise UsageError("cannot listen on %s:%d (%s)" % (bind[0], bind[1], e.strerror or e),
                         "choose another with --bind HOST:PORT")
    try:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, addr = s.recvfrom(2048)
            except (socket.timeout, OSError):
                continue
            b = parse_answer(data, addr)
            if b is not None:
                b.via = "announce"
                found[b.id] = b  # the latest announce of a board wins (its address may change)
    finally:
        s.close()
    return list(found.values())


# --- the targets file ------------------------------------------------------------------

def _target_name(b: Board) -> str:
    n = re.sub(r"[^A-Za-z0-9_-]", "-", b.name).strip("-")
    return n or "pico-" + b.id[-6:]


def match_targets(boards: list, table: dict) -> None:
    """Set each board's target (and whether it has a key) from the targets file:
    by device_id, else by host and port."""
    for b in boards:
        for name, e in table.items():
            if (str(e.get("device_id", "")).lower() == b.id) or \
                    (not e.get("device_id") and e.get("host") == b.host
                     and int(e.get("port", lineproto.TCP_PORT)) == b.port):
                b.target, b.key = name, bool(e.get("key_file"))
                break


def add(path: Path, boards: list) -> list:
    """Record each board not yet in the targets file as [targets.NAME] with
    host, port and device_id (NAME: its name, else pico-<id tail>; made unique);
    a known board whose address changed gets its host and port updated.
    -> [(board, "added" | "updated" | "known")]. The key still comes from
    provisioning: a new entry has no key_file."""
    table, _ = targets_mod.load_file(path)
    match_targets(boards, table)
    done = []
    for b in boards:
        if b.target is not None:
            e = table[b.target]
            if e.get("host") == b.host and int(e.get("port", lineproto.TCP_PORT)) == b.port:
                done.append((b, "known"))
                continue
            fields = dict(e, host=b.host, port=b.port, device_id=b.id)
            targets_mod.record(path, b.target, fields)
            done.append((b, "updated"))
            continue
        name = base = _target_name(b)
        if name in table or name in targets_mod.BUILTINS:
            name = base = "%s-%s" % (base, b.id[-6:])
        i = 2
        while name in table or name in targets_mod.BUILTINS:
            name = "%s-%d" % (base, i)
            i += 1
        targets_mod.record(path, name, {"host": b.host, "port": b.port, "device_id": b.id})
        table[name] = {"host": b.host, "port": b.port, "device_id": b.id}
        b.target, b.key = name, False
        done.append((b, "added"))
    return done


# --- the command ------------------------------------------------------------------------------

def _row(b: Board) -> str:
    ver = b.version or "-"
    tgt = "-" if b.target is None else b.target + ("" if b.key else " (needs key)")
    return "%-16s %-16s %-21s %-10s %s" % (b.name or "-", b.id, "%s:%d" % (b.host, b.port), ver, tgt)


def cmd_discover(ctx) -> int:
    """`mpota discover`: probe (or --listen), one row per board, --add records them."""
    from rich.markup import escape

    a, out = ctx.args, ctx.out
    if a.usb:
        from . import usb

        return usb.cmd_discover_usb(ctx)
    t0 = time.monotonic()
    if a.listen is not None:
        bind = targets_mod.parse_hostport(a.bind, lineproto.TCP_PORT)
        out.say("listening for announces on %s:%d for %g s" % (bind[0], bind[1], a.listen))
        boards = listen(bind, a.listen)
    else:
        addrs = [x for spec in a.to for x in parse_to(spec, a.probe_port)]
        boards = discover(addrs, a.probe_port if (a.broadcast or not addrs) else None, a.wait)
    took = time.monotonic() - t0
    path = targets_mod.targets_path(a.targets)
    boards.sort(key=lambda b: (b.name, b.id))
    if a.add:
        done = dict((b.id, what) for b, what in add(path, boards))
    else:
        match_targets(boards, targets_mod.load_file(path)[0])
        done = {}
    out.say("%-16s %-16s %-21s %-10s %s" % ("NAME", "ID", "ADDRESS", "VERSION", "TARGET"))
    for b in boards:
        f = b.fields()
        if b.id in done:
            f["added"] = done[b.id]
        what = done.get(b.id, "known")
        out.event("board", escape(_row(b) + ("  " + what if what != "known" else "")), **f)
    n_new = sum(1 for w in done.values() if w == "added")
    out.event("discovered", "%d board%s in %.1f s%s" % (
        len(boards), "" if len(boards) == 1 else "s", took,
        "; %d added to %s (no key yet: provision them, or set key_file)" % (n_new, path) if n_new else ""),
        count=len(boards), seconds=round(took, 3), added=n_new, targets_file=str(path) if a.add else None)
    if a.add and n_new:
        out.result("%d new target%s in %s" % (n_new, "" if n_new == 1 else "s", path))
    return 0
