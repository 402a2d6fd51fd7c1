# mqttcmd: what the board does with a command from its broker (docs/mqtt.md).
# Loaded by mpota_mqtt for a command (and at each connect, to resume an
# install or report a trial's outcome); released once no update session is
# open (agent._LIFE).
#
# A command acts only when it parses (mpota_command.parse), holds against
# this board (mpota_command.check: fleet, target, a seq newer than the last
# acted on, a known op with valid fields) and its Ed25519 signature verifies
# with a key of the trust store (mpota_trust) -- the cheap checks first, so a
# stale or misaddressed flood costs no signature math. The seq is stored
# (atomically, in PATH) BEFORE acting, so a replay after a reset is refused.
# Each transition goes through the module that owns it: ops.op_confirm and
# rareops.op_rollback (the slot record's Slots methods), update.op_begin /
# op_commit (the update session a LAN push uses) through mpota_pull.
import gc
import sys
import uos as os
import ujson as json
import asyncio
from micropython import const

import mpota_hal as hal

import mpota_command as command
from mpota_command import CommandError
from mpota_lineproto import ProtoError, error_name, E_INTERNAL, E_RESTARTING, E_NO_MEMORY

PATH = "/mpota_cmd.json"  # {"seq": N, "op", "result", and during an install: "install" (its body), "phase"}
_T_CONNECT = const(10000)  # ms for the TCP connect and for CONNACK
RATE_LIMITED = "rate_limited"  # (a reason of the board's own, besides mpota_command's)
_RESET_MS = 500  # a command that resets waits this long at most for its last event's PUBACK (_reset)
_EVERY_MS = const(5000)  # ignored commands: a burst of _BURST reports, then one per _EVERY_MS
_BURST = const(6)  # (and never twice for one seq)
# Signature checks: a burst of _VERIFY_BURST, then one per _VERIFY_MS. Each blocks the event
# loop (pure-Python Ed25519: the app's tasks wait), so a flood of well-addressed forgeries
# must not buy them without bound; a command dropped for it is fetched again (mpota_mqtt: redo).
_VERIFY_MS = const(5000)
_VERIFY_BURST = const(3)


def load(path=PATH):
    """The command record; {"seq": None} when it exists but cannot be read
    (fail closed: no command acts until it is repaired, or a replay could)."""
    try:
        f = open(path)
    except OSError:
        return {"seq": 0}
    try:
        r = json.load(f)
        if isinstance(r, dict) and isinstance(r.get("seq"), int):
            return r
    except ValueError:
        pass
    finally:
        f.close()
    return {"seq": None}


def store(rec, path=PATH):
    """Replace the record atomically: a new file, then one rename (littlefs
    commits a rename in one metadata block, as slots.py's record)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.rename(tmp, path)


# -- the packets a connect and a publish need (mpota_mqtt keeps only the reading) --
def _rlen(n):
    # the remaining-length varint of a fixed header
    b = bytearray()
    while True:
        d = n & 0x7F
        n >>= 7
        b.append(d | 0x80 if n else d)
        if not n:
            return b


def _str(s):
    # an MQTT UTF-8 string: u16 length then the bytes
    if isinstance(s, str):
        s = s.encode()
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


def next_pid(cl):
    cl.pid = cl.pid % 65535 + 1
    return cl.pid


async def publish(cl, topic, msg, retain=False, qos=0):
    """Publish `msg` (bytes or str) on `topic` (str or bytes); at QoS 1 the
    PUBACK is awaited by the connection's tick (a missing one drops it)."""
    if isinstance(topic, str):
        topic = topic.encode()
    if isinstance(msg, str):
        msg = msg.encode()
    t = _str(topic)
    pid = b""
    if qos:
        i = next_pid(cl)
        pid = bytes((i >> 8, i & 0xFF))
        if not cl.unacked:
            cl.unacked = i
            cl.t_pub = hal.ticks_ms()
        cl.last = i
    hdr = bytes((0x30 | (qos << 1) | (1 if retain else 0),)) + _rlen(len(t) + len(pid) + len(msg))
    await cl.send(hdr, t, pid, msg)


async def connect(cl):
    """Open the connection: CONNECT with the last will, CONNACK, SUBSCRIBE."""
    dev = cl.dev
    will = json.dumps({"id": dev.id, "online": False})
    vh = b"\x00\x04MQTT\x04" + bytes((0x02 | 0x04 | 0x08 | 0x20, cl.ka >> 8, cl.ka & 0xFF))
    # clean session; will: QoS 1, retained
    body = vh + _str("mpota-" + dev.id) + _str(cl.base + "state") + _str(will)
    cl.r, cl.w = await asyncio.wait_for_ms(asyncio.open_connection(cl.host, cl.port), _T_CONNECT)
    await cl.send(b"\x10" + _rlen(len(body)), body)
    b0, n = await asyncio.wait_for_ms(cl.packet(), _T_CONNECT)
    if b0 != 0x20 or n != 2:
        raise OSError("mqtt: no CONNACK")
    if cl.buf[1]:
        raise OSError("mqtt: the broker refused the connection (code %d)" % cl.buf[1])
    i = next_pid(cl)
    sub = bytes((i >> 8, i & 0xFF)) + _str(cl.cmd) + b"\x01" + _str(cl.all) + b"\x01"
    await cl.send(b"\x82" + _rlen(len(sub)), sub)


# -- what the board says (on .../events and .../state) ---------------------------
async def event(cl, seq, name, **kw):
    """Publish one event (docs/mqtt.md) on .../events; False when not connected."""
    if not cl.up:
        return False
    d = {"seq": seq, "event": name}
    d.update(kw)
    await publish(cl, cl.base + "events", json.dumps(d), False, 1)
    return True


def token(b, every, burst):
    """Take a token from bucket b ([last refill ms, tokens]), refilled one per
    `every` ms up to `burst`; False when it is empty."""
    now = hal.ticks_ms()
    k = hal.ticks_diff(now, b[0]) // every
    if k:
        b[1] = min(burst, b[1] + k) if k > 0 else b[1]
        b[0] = now
    if b[1] <= 0:
        return False
    b[1] -= 1
    return True


async def ignored(cl, seq, reason, message):
    """Report a command the board did not act on: never twice for one seq,
    and from a bucket of _BURST reports refilled one per _EVERY_MS
    (a flood of forged commands cannot make the board talk more)."""
    if seq == cl.rep_seq or not token(cl.rep, _EVERY_MS, _BURST):
        return
    print("mpota: mqtt: command %d ignored (%s): %s" % (seq, reason, message))
    cl.rep_seq = seq
    await event(cl, seq, "rejected", reason=reason, message=message)


async def state(dev, cl):
    """Publish the board's state, retained: the status op's fields (ops.status),
    its id, the last command acted on, online."""
    import mpota_slots as slots
    import mpota_ops as ops
    slots.attach(dev)
    try:
        rec = load()
        if rec.get("phase") == "trial":
            await outcome(dev, cl, rec)  # the app's own confirm ended the trial?
        st = ops.status(dev)
        st["id"] = dev.id
        st["online"] = True
        st["cmd_seq"] = rec["seq"]
        st["cmd_result"] = rec.get("result")
        msg = json.dumps(st)
    finally:
        st = rec = ops = slots = None
        if dev.ag is not None:
            dev.ag.settle(False)  # the record and the modules go again once the device is quiet
    cl.dirty = False
    cl.t_state = hal.ticks_ms()
    await publish(cl, cl.base + "state", msg, True, 1)


def _verify(body, sig):
    import mpota_trust as trust  # (released with the session scope; ed25519 for the call only)
    t = trust.load()
    if t["error"]:
        raise CommandError(command.NO_KEY, "trust store unusable: %s" % t["error"])
    if not t["keys"]:
        raise CommandError(command.NO_KEY, "this board trusts no key (/mpota_trust.json): every command is "
                           "ignored")
    msg = command.signed_message(body)
    for k in t["keys"]:
        if trust.verify_signature(k, msg, sig):
            return
    raise CommandError(command.BAD_SIGNATURE, "the signature does not verify with any key this board trusts")


async def handle(dev, cl, payload, on_all):
    """One command payload from the board's topic (or the fleet's: `on_all`)."""
    if not len(payload):
        return  # the host cleared the retained command
    seq = 0
    rec = {"seq": None}
    try:
        d, body, sig = command.parse(payload)
        s = d.get("seq")
        seq = s if isinstance(s, int) and not isinstance(s, bool) else 0
        rec = load()
        if rec["seq"] is None:
            raise CommandError(command.MALFORMED, "the command record %s is unreadable: repair it" % PATH)
        op = command.check(d, dev.id, dev.cfg["fleet"], rec["seq"], on_all)
        if not token(cl.ver, _VERIFY_MS, _VERIFY_BURST):
            cl.redo = hal.ticks_ms()
            raise CommandError(RATE_LIMITED, "more commands than this board verifies (%d per %d s): dropped, "
                               "fetched again later" % (1, _VERIFY_MS // 1000))
        _verify(body, sig)
    except CommandError as e:
        if e.reason != command.OLD_SEQ or seq != rec["seq"]:  # (== : the retained copy of the last one)
            await ignored(cl, seq, e.reason, e.message)
        return
    new = {"seq": seq, "op": op}
    if op == "install":
        s = dev.session
        if s is not None and s.owner is not cl:
            await event(cl, seq, "error", error="busy", message="an update session is open")
            return  # not acted on: the seq is not spent
        await _stop_pull(dev, cl)  # (a newer signed install replaces the download in progress)
        new["install"] = d
        new["phase"] = "download"
    elif rec.get("install"):
        new["install"] = rec["install"]  # an install in progress stays (its resume, its outcome)
        new["phase"] = rec.get("phase")
    store(new)  # before acting
    cl.dirty = True
    if op == "install":
        return await install(dev, cl, new)
    try:
        if op == "confirm":
            import mpota_slots as slots
            import mpota_ops as ops
            slots.attach(dev)
            r = ops.op_confirm(dev, None, {})
            await done(cl, new, "confirmed", slot=r["slot"])
        elif op == "rollback":
            import mpota_slots as slots
            import mpota_rareops as rareops
            slots.attach(dev)
            r = rareops.op_rollback(dev, None, {})
            await done(cl, new, "rolled_back", slot=r["slot"])
            await _reset(dev, cl)  # as the LAN's rollback: rollback then reset
        elif op == "reset":
            await done(cl, new, "reset")
            await _reset(dev, cl)
        else:
            await publish(cl, cl.base + "logs", json.dumps(logs(dev, seq, d)))
            await done(cl, new, "logs")
    except ProtoError as e:
        await fail(cl, new, e.code, e.message)


def logs(dev, seq, d):
    """The reply to "logs": the console the board keeps (mpota_logs.op_logs, as
    the LAN op: the ring's bytes after the command's "since", at most its "max",
    and the saved traceback) with the app's last state and the boot facts."""
    had = "mpota_logs" in sys.modules
    import mpota_logs
    try:
        r = mpota_logs.op_logs(dev, None, {"since": d.get("since"), "max": d.get("max")})
    finally:
        if not had:
            sys.modules.pop("mpota_logs", None)  # (its lifetime is a request's: agent._LIFE)
    r.update({"seq": seq, "id": dev.id, "app": dev.app, "boot_note": dev.note, "boot_reason": dev.boot_reason,
              "resets": dev.resets})
    return r


async def done(cl, rec, result, seq=None, **kw):
    # the outcome: in the record (the retained state's cmd_result) and on events,
    # for rec's command (or `seq`: an install's outcome after later commands)
    rec["result"] = result
    store(rec)
    cl.dirty = True
    await event(cl, seq or rec["seq"], result, **kw)


async def fail(cl, rec, code, message):
    rec.pop("install", None)
    rec.pop("phase", None)
    await done(cl, rec, "error", error=error_name(code), message=message)


async def _reset(dev, cl):
    # once the broker has acknowledged the last event (its PUBACK: what was sent before is
    # there too), or after _RESET_MS: the outcome the host waits for is never cut by the
    # reset, and a board on a fast link resets at once (from the reader's task, which reads
    # the PUBACK, the wait is the bound: the reset and rollback commands)
    t = hal.ticks_ms()
    while cl.last and cl.up and hal.ticks_diff(hal.ticks_ms(), t) < _RESET_MS:
        await asyncio.sleep_ms(5)
    dev.reset_ms = 0
    await dev.after_reply()  # (closes the update session, if any, then hal.reset())


async def install(dev, cl, rec):
    """Open (or resume) the update session for rec's install, then pull the
    rest in a task of its own: the broker connection keeps being served."""
    ins = rec["install"]
    import mpota_slots as slots
    slots.attach(dev)
    r = dev.sl.running
    if r is not None and dev.sl.slot(r)["sha256"] == ins["sha256"]:  # (a rollout that is resumed, a retry)
        rec.pop("install")
        rec.pop("phase")
        return await done(cl, rec, "installed", slot=slots.NAMES[r], version=dev.sl.slot(r)["version"],
                          state="running", already=True)
    # until its session is open (pull.begin may first ask the server which sectors to keep), the
    # agent must not release the modules this task holds (agent.Agent.settle)
    dev.pulling = True
    cl.task = asyncio.create_task(_pull(dev, cl, rec))


async def _pull(dev, cl, rec):
    # the install's session, then its download
    import mpota_pull as pull  # released with the session scope (agent._LIFE)
    try:
        try:
            await pull.begin(dev, cl, rec["install"])
        except ProtoError as e:
            if e.code == E_RESTARTING:  # lean mode: restarting into update mode, where the install resumes
                await event(cl, rec["seq"], "restarting", message=e.message)
                await dev.after_reply()
            return await fail(cl, rec, e.code, e.message)
        finally:
            dev.pulling = False
        r = await pull.run(dev, cl, rec["seq"], rec["install"], lambda *a, **kw: event(cl, *a, **kw))
    except Exception as e:  # out of heap, or a bug: reported once, never retried at every connect
        return await _failed(dev, cl, rec, e)
    finally:
        cl.task = None
        dev.pulling = False  # (cancelled before it began: _stop_pull)
    if r["state"] == "pending":
        rec["phase"] = "trial"  # its outcome is reported after the reset (outcome())
        dev.reset_ms = _RESET_MS  # from here: no outcome() before the reset
    else:  # stored, not an app to boot (mcuboot images of other bodies)
        rec.pop("install")
        rec.pop("phase")
    await done(cl, rec, "installed", slot=r["slot"], version=r["version"], state=r["state"], ms=r["ms"],
               rate=r["rate"], mem_peak=dev.mem_peak, mem_base=dev.mem_base)
    if "phase" in rec:
        await _reset(dev, cl)  # into the trial


async def _stop_pull(dev, cl):
    # the download of an earlier install (a server that drips its bytes may keep it
    # going for ever): it ends (cancelled, its socket closed), its session closes
    # and its bytes stay (the same image resumes them)
    t = cl.task
    if t is not None:
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass
    _close_own(dev, cl)


def _close_own(dev, cl):
    # the pull's session, never one a LAN or USB peer opened meanwhile (the pull's begin was busy)
    s = dev.session
    if s is not None and s.owner is cl:
        dev.close_session()  # the bytes stay: a new install of the same image resumes them


async def _failed(dev, cl, rec, e):
    _close_own(dev, cl)
    if isinstance(e, ProtoError):
        return await fail(cl, rec, e.code, e.message)
    if isinstance(e, MemoryError):
        sys.print_exception(e)  # where: the serial console tells which piece did not fit
        gc.collect()
        return await fail(cl, rec, E_NO_MEMORY, "out of memory (%d bytes free): the app holds the heap"
                          % gc.mem_free())
    sys.print_exception(e)
    return await fail(cl, rec, E_INTERNAL, "internal error: %r" % (e,))


async def resume(dev, cl):
    """At each connect: an install that a drop or a reset cut resumes (the
    update session resumes from the bytes the slot holds); a trial that ended
    (confirmed, or rolled back by the boot manager) is reported."""
    rec = load()
    ins = rec.get("install") if rec["seq"] else None
    if not ins:
        return
    if rec.get("phase") == "download":
        if dev.session is None and getattr(cl, "task", None) is None:
            await install(dev, cl, rec)
        return
    await outcome(dev, cl, rec)


async def outcome(dev, cl, rec):
    """The trial of rec's install: confirmed, rolled back, or still on trial (nothing yet)."""
    if dev.reset_ms >= 0:
        return  # the reset into the trial is still to come
    import mpota_slots as slots
    slots.attach(dev)
    sl = dev.sl
    ins = rec["install"]
    r = sl.running
    if r is not None and sl.slot(r)["sha256"] == ins["sha256"]:
        if sl.on_trial():
            return
        res = "confirmed"
    else:
        res = "rolled_back"
    rec.pop("install")
    rec.pop("phase", None)
    await done(cl, rec, res, ins["seq"], version=ins["version"])
