"""Part `fuzz` of the torture harness (tools/torture.py): mutated binary
frames and JSON lines, unauthenticated and authenticated, at a board-like heap;
no crash, no hang, no state or flash change from unauthenticated input, ping
answered after every batch."""
from __future__ import annotations

import binascii
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from torture_common import REPO, install, make_image, say, tracebacks
from devconn import DevConn
from mpota.codec import bootloader_messages as bm
from mpota.codec import mpota_hostframes as hostframes
from mpota.codec import mpota_lineproto as lineproto
from mpota.codec import mpota_proto as proto
from simproc import Sim, SimError
import boardbuilds

# the 32-bit build where this machine has it (boardbuilds: ../shared/tools or MPOTA_BOARD_TOOLS)
I386 = Path(boardbuilds.i386() or REPO.parent / "shared" / "tools" / boardbuilds.I386)


_OPS = ("hello", "auth", "ping", "status", "begin", "commit", "abort", "confirm", "rollback", "read",
        "erase", "reset", "frobnicate", "", "HELLO")
_FIELDS = ("id", "size", "sha256", "slot", "version", "offset", "length", "nonce", "mac", "delay_ms",
           "allow_downgrade", "op")


def _value(rng: random.Random):
    k = rng.randrange(14)
    if k == 0:
        return rng.choice([0, 1, -1, 2 ** 31, 2 ** 32 - 1, 2 ** 63, -2 ** 63, 10 ** 30, 4096, 368640])
    if k == 1:
        return rng.randrange(-5, 70000)
    if k == 2:
        return rng.choice(["a", "b", "c", "inactive", "", "A", "\u0000", "\u00e9", "0"])
    if k == 3:
        return rng.randbytes(rng.choice((16, 32, 8, 0))).hex()
    if k == 4:
        return rng.choice([True, False, None])
    if k == 5:
        return rng.random() * 10 ** rng.randrange(0, 20)
    if k == 6:
        return [_value(rng) for _ in range(rng.randrange(3))]
    if k == 7:
        return {"x": _value(rng)} if rng.random() < 0.8 else {}
    if k == 8:
        return "x" * rng.randrange(0, 1200)
    if k == 9:
        return rng.choice(["1.0.0+0", "255.255.65535+4294967295", "1.2", "1.2.3.4", "-1.0.0", "9" * 30])
    if k == 10:
        return "%d.%d.%d+%d" % tuple(rng.randrange(0, 70000) for _ in range(4))
    return rng.choice(["a", "b"]) if k == 11 else rng.randrange(0, 5000) if k == 12 else "0" * 64


def _json_seed(rng: random.Random) -> bytes:
    req: dict = {"op": rng.choice(_OPS)}
    for _ in range(rng.randrange(5)):
        req[rng.choice(_FIELDS)] = _value(rng)
    if rng.random() < 0.1:
        del req["op"]
    return json.dumps(req).encode() + b"\n"


def _frame_seed(rng: random.Random) -> bytes:
    k = rng.randrange(12)
    if k == 0:
        return bytes(bm.VersionRequest.make())
    if k == 1:
        return bytes(bm.UpdateStartRequest.make(rng.choice([0, 1, 100, 368640, 2 ** 32 - 1])))
    if k == 2:
        return bytes(bm.UpdateStopRequest.make(rng.randrange(2 ** 32)))
    if k == 3:
        d = rng.randbytes(rng.randrange(1, 1100))  # over 1024: too_large
        return bytes(hostframes.make_frame(0x07, d + binascii.crc32(d).to_bytes(4, "big")))
    if k == 4:
        return bytes(bm.ReadAddressRequest.make(rng.randrange(2 ** 32), rng.choice([0, 1, 1024, 1025, 2 ** 32 - 1])))
    if k == 5:
        return bytes(hostframes.encode_data(rng.choice([0, 1, 4096, 2 ** 32 - 1, rng.randrange(400000)]),
                                            rng.randbytes(rng.choice([1, 16, 4096, 4097]))))
    if k == 6:
        return bytes(hostframes.encode_read(rng.choice("ab"), rng.randrange(400000), rng.randrange(1, 5000)))
    if k == 7:
        return bytes(hostframes.encode_nerror(rng.randrange(256), rng.randrange(256), rng.randrange(2 ** 32), 0))
    if k == 8:
        return bytes(hostframes.encode_ack(rng.randrange(2 ** 32)))
    if k == 9:
        return bytes(hostframes.make_frame(rng.randrange(256), rng.randbytes(rng.randrange(0, 64))))
    if k == 10:
        return bytes(bm.ResetRequest.make())
    return bytes(hostframes.make_frame(rng.choice([0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0xFF, 0x20, 0x2E]),
                                       rng.randbytes(rng.randrange(0, 140))))


def _fix_checksums(b: bytearray) -> None:
    # keep a mutated frame well-formed so that it reaches the handlers
    if len(b) >= 6 and b[0] == 0xE7:
        n = (b[2] << 8) | b[3]
        b[4] = (0xE7 + b[1] + b[2] + b[3]) & 0xFF
        end = min(len(b), 5 + n) - 1
        if end >= 5:
            b[end] = sum(b[:end]) & 0xFF


def mutate(rng: random.Random, seed: bytes) -> bytes:
    b = bytearray(seed)
    for _ in range(rng.choice((0, 1, 1, 2, 3, 6))):
        k = rng.randrange(9)
        if k == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif k == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif k == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 9))
        elif k == 3 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 9)]
        elif k == 4 and len(b) > 1:
            del b[rng.randrange(1, len(b)):]  # truncated
        elif k == 5 and len(b) >= 4 and b[0] == 0xE7:
            n = rng.choice([0, 1, 2, 5, 4105, 4106, 4200, 0xFFFF, rng.randrange(0x10000)])
            b[2], b[3] = n >> 8, n & 0xFF
        elif k == 6 and len(b) >= 2 and b[0] == 0xE7:
            b[1] = rng.randrange(256)
        elif k == 7:
            b += rng.choice([b"\r\n", b"\n", b"{", b"\xe7", b"\x00", b"}\n"])
        else:
            b[:0] = rng.choice([b"", b"\n", b" ", b"\xe7\xe7", b"\xff"])
    if b and b[0] == 0xE7 and rng.random() < 0.7:
        _fix_checksums(b)
    return bytes(b)


def _resets(msg: bytes) -> bool:
    """Would this message reset the device (frames: any embedded ResetRequest header; lines: op reset)?"""
    if b"\xe7\x09" in msg:
        return True
    for part in msg.split(b"\n"):
        try:
            req = json.loads(part.strip(b"\r\x00 \xe7\xff"))
        except ValueError:
            continue
        if isinstance(req, dict) and req.get("op") == "reset":
            return True
    return b"reset" in msg.lower() or b"\\u" in msg  # escapes could spell it


def fuzz_messages(rng: random.Random, n: int, authed: bool) -> list:
    out = []
    while len(out) < n:
        seed = _json_seed(rng) if rng.random() < 0.5 else _frame_seed(rng)
        m = mutate(rng, seed)
        if authed and _resets(m):
            continue  # an authenticated reset is allowed and would only cost time
        out.append(m)
    return out


_FLUSH = b"\n" * (lineproto.MAX_FRAME + 100)  # completes any half frame or line the batch left open


def _state(st: dict) -> dict:
    keep = ("active", "pending", "running", "trial", "trial_count", "slots", "session", "app", "boot_reason")
    d = {k: st[k] for k in keep}
    d["flash_ops"] = st.get("sim_flash", {}).get("ops")
    return d


def _answered(sim: Sim, op: str, key: Optional[bytes] = None, seconds: float = 20.0) -> dict:
    """`ping`, then `op`, on a fresh connection, retrying while the device is
    still reaping the batch's connection (it serves at most 4: `busy`)."""
    end = time.monotonic() + seconds
    while True:
        try:
            c = DevConn(sim.tcp_port, key, timeout=10)
            try:
                c.ok("ping")
                return c.ok(op)
            finally:
                c.close()
        except (OSError, EOFError, AssertionError) as e:
            if time.monotonic() > end or sim.returncode is not None:
                raise AssertionError("no answer to ping/%s for %.0f s: %s" % (op, seconds, e))
            time.sleep(0.1)


def _sealed(sess, msgs: list) -> bytes:
    """An authenticated batch: the session seals whole messages (protocol.md 2.6),
    so the mutated bytes are cut into what the device's decoder makes of them and
    each frame and line is sealed. Bytes that form neither cannot be sealed; on a
    session they end the connection (tests/test_attacks.py covers that)."""
    from mpota.codec.mpota_framing import K_FRAME, K_LINE
    dec = hostframes.Decoder(lineproto.MAX_FRAME, lineproto.MAX_LINE)
    out = []
    for m in msgs:
        for kind, v in dec.decode(m):
            if kind == K_FRAME:
                out.append(bytes(sess.seal(bytes(v))))
            elif kind == K_LINE:
                out.append(bytes(sess.seal(bytes(v) + b"\n")))
    return b"".join(out)


def fuzz_batch(sim: Sim, msgs: list, key: Optional[bytes], timeout: float = 20.0) -> dict:
    """Send a batch on one connection (authenticated when `key`), then the flush
    and a ping; read every reply until the ping's. -> reply counts by kind/code."""
    import threading
    c = DevConn(sim.tcp_port, key, timeout=timeout)
    counts: dict = {}
    try:
        sync = b'{"op":"ping","id":"sync-7f3a"}\n'
        if c.sess is None:
            blob = b"".join(msgs) + _FLUSH + sync
        else:
            blob = _sealed(c.sess, msgs) + bytes(c.sess.seal(sync))
        err: list = []

        def send():
            try:
                c.s.sendall(blob)
            except OSError as e:
                err.append(e)
        t = threading.Thread(target=send, daemon=True)
        t.start()
        from mpota.codec.mpota_framing import K_FRAME, K_LINE
        while True:
            kind, v = c.event()
            if kind == K_LINE:
                try:
                    r = json.loads(v)
                except ValueError:
                    counts["bad_json_reply"] = counts.get("bad_json_reply", 0) + 1
                    continue
                if r.get("id") == "sync-7f3a":
                    break
                code = "ok" if r.get("ok") else (r.get("error") or {}).get("code", "?")
            elif kind == K_FRAME:
                code = "frame 0x%02x" % v[1]
                if v[1] == 0xFF and len(v) > 5:
                    code += " " + lineproto.error_name(v[5])
                elif v[1] == proto.OP_NERROR:
                    code += " " + lineproto.error_name(v[6])
            else:
                code = "undecodable"
            counts[code] = counts.get(code, 0) + 1
        t.join(timeout)
    finally:
        c.close()
    return counts


def fuzz(work: Path, rng: random.Random, a) -> bool:
    t0 = time.monotonic()
    if I386.exists():
        flags, where = ["--micropython", str(I386), "--heap", "160K"], "micropython-1.27-i386 at --heap 160K"
    else:
        flags, where = ["--heap", "256K"], ".venv micropython (64-bit) at --heap 256K"
    v1 = make_image(work, "v1", "1.0.0+0", 0, rng)
    v2 = make_image(work, "v2", "2.0.0+0", 0, rng)
    crashes = hangs = changes = pings = sent = 0
    totals: dict = {}
    failures: list = []
    with Sim(state=work / "dev", flags=flags + ["--flash-timing", "none"]) as sim:
        key = sim.key
        c = install(sim, [v1], key)
        c.push(v2.data, v2.version)  # something for hostile input to damage: a pending image
        c.close()
        batch_no = 0
        signatures: dict = {}
        dumps: list = []
        while sent < a.fuzz:
            authed = batch_no % 2 == 1
            n = min(a.batch, a.fuzz - sent)
            msgs = fuzz_messages(rng, n, authed)
            batch_no += 1
            mark = sim.mark()
            before = _state(_answered(sim, "status", key))
            try:
                counts = fuzz_batch(sim, msgs, key if authed else None)
                for k, v in counts.items():
                    totals[k] = totals.get(k, 0) + v
            except (OSError, EOFError, AssertionError) as e:
                hangs += 1
                failures.append("batch %d (%s): no answer to the sync ping: %s" % (
                    batch_no, "auth" if authed else "unauth", e))
            sent += n
            try:
                after = _state(_answered(sim, "status", key))
                pings += 1
            except (OSError, EOFError, AssertionError, SimError) as e:
                failures.append("batch %d: no ping answer after it: %s" % (batch_no, e))
                hangs += 1
                break
            if not authed and after != before:
                changes += 1
                failures.append("batch %d (unauthenticated) changed the state: %s -> %s"
                                % (batch_no, json.dumps(before), json.dumps(after)))
            new = sim.lines[mark:]
            restarted = any(ln.startswith("sim: boot #") for ln in new) or sim.returncode is not None
            tb = tracebacks(new)
            if restarted or tb:
                crashes += 1
                for sig in tb:
                    signatures[sig] = signatures.get(sig, 0) + 1
                failures.append("batch %d (%s): the device %s" % (
                    batch_no, "auth" if authed else "unauth",
                    "restarted:\n" + "\n".join(new[-20:]) if restarted else "printed tracebacks: " + "; ".join(tb)))
            if failures and failures[-1].startswith("batch %d " % batch_no):
                if a.verbose:
                    say(failures[-1])
                dump = work / ("fuzz-fail-%d.json" % batch_no)
                dump.write_text(json.dumps({"auth": authed, "messages": [m.hex() for m in msgs]}))
                dumps.append(dump)
            if sim.returncode is not None:
                break
    shown = [f for f in failures if "printed tracebacks" not in f]  # hangs, restarts, state changes: all
    shown += [f for f in failures if "printed tracebacks" in f][:5]
    for f in shown:
        say("VIOLATION fuzz: %s" % f)
    for sig, k in sorted(signatures.items(), key=lambda kv: -kv[1]):
        say("  device traceback in %d batches: %s" % (k, sig))
    if dumps:
        keep = Path(tempfile.gettempdir()) / "mpota-fuzz-fail.json"
        shutil.copy(dumps[0], keep)
        say("  first failing batch (hex messages) kept in %s" % keep)
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:8]
    say("  replies: %s" % ", ".join("%s %d" % kv for kv in top))
    say("fuzz: %d messages (%d batches, unauthenticated and authenticated alternating) on %s: "
        "crashes %d, hangs %d, unauthenticated state changes %d, ping answered after %d/%d batches (%.1f s)"
        % (sent, batch_no, where, crashes, hangs, changes, pings, batch_no, time.monotonic() - t0))
    return not failures and sent >= a.fuzz
