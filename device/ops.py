# ops: the JSON-line requests (docs/protocol.md section 2) except the update
# session ones (update.py) and the rarely used slot ones (slotops.py, compiled
# on first use). Each op_<name>(dev, c, req) returns the reply fields or
# raises ProtoError; line() turns either into one reply line.
import os
import sys
import gc
import binascii

import hal
import proto
import slots as S
from proto import (ProtoError, reply_line, error_line, E_UNSUPPORTED, E_BAD_REQUEST,
                    E_OUT_OF_RANGE, E_AUTH_REQUIRED, E_AUTH_FAILED, E_NO_MEMORY)
from service import VERSION

_OPEN = ("hello", "auth", "ping", "status")  # served before authentication
_UPDATE = ("begin", "commit", "abort")
_SLOT = ("rollback", "read", "erase")  # slotops.py


def name(i):
    return None if i is None else S.NAMES[i]


def field(req, key, typ, default=None, required=False):
    v = req.get(key, default)
    if v is None and not required:
        return default
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ProtoError(E_BAD_REQUEST, "field \"%s\" must be %s" % (key, typ.__name__))
    return v


def int_range(req, key, lo, hi, default=None):
    v = field(req, key, int, default, default is None)
    if not lo <= v <= hi:
        raise ProtoError(E_OUT_OF_RANGE, "\"%s\" must be in %d..%d" % (key, lo, hi))
    return v


def slot_field(req):
    return proto.slot_index(field(req, "slot", str, required=True))


def line(dev, c, ln):
    rid = None
    try:
        req = proto.parse_request(ln)
        rid = req.get("id")
        op = req["op"]
        fn = None
        if op not in _UPDATE and op not in _SLOT:
            fn = getattr(sys.modules[__name__], "op_" + op, None)
            if fn is None:
                raise ProtoError(E_UNSUPPORTED, "unknown op \"%s\"" % op)
        # Authenticate before compiling anything on a peer's behalf.
        if not c.authed and op not in _OPEN:
            raise ProtoError(E_AUTH_REQUIRED, "authenticate first (hello, auth)")
        if op in _UPDATE:
            import update
            fn = getattr(update, "op_" + op)
        elif op in _SLOT:
            import slotops  # rare ops: compiled on first use
            fn = getattr(slotops, "op_" + op)
        c.out(reply_line(rid, fn(dev, c, req)))
    except ProtoError as e:
        c.out(error_line(rid, e.code, e.message))
    except MemoryError:
        # Typically compiling a rare op while the app holds the heap: say so,
        # with the request's id, rather than a generic internal error.
        gc.collect()
        c.out(error_line(rid, E_NO_MEMORY, "out of memory (%d bytes free): retry, or reset first" % gc.mem_free()))


def op_hello(dev, c, req):
    c.nonce = os.urandom(16) if dev.auth_on else None
    return {"proto": proto.PROTO, "agent": VERSION, "device": dev.id,
            "max_frame": proto.MAX_FRAME, "max_data": proto.MAX_DATA,
            "max_line": proto.MAX_LINE, "window": proto.WINDOW,
            "slot_size": dev.sl.slot_size,
            "features": ["native", "legacy", "json", "resume", "read"] + (["auth"] if dev.auth_on else []),
            "auth": "hmac-sha256" if dev.auth_on else "none",
            "nonce": binascii.hexlify(c.nonce).decode() if c.nonce else None}


def op_auth(dev, c, req):
    if not dev.auth_on:
        return {"auth": "none"}
    hn = field(req, "nonce", str, required=True)
    mac = field(req, "mac", str, required=True)
    nonce = c.nonce
    c.nonce = None  # one attempt per hello
    if nonce is None:
        raise ProtoError(E_AUTH_FAILED, "send hello first (each hello allows one auth attempt)")
    if dev.key is None:
        raise ProtoError(E_AUTH_FAILED, "this device has no key (/mpota_key.bin)")
    import auth  # compiled at boot when auth is on (bootmgr), never mid-session
    dm = auth.check(dev.key, dev.id, nonce, hn, mac)
    if dm is None:
        c.authed = False
        raise ProtoError(E_AUTH_FAILED, "wrong MAC")
    c.authed = True
    return {"mac": binascii.hexlify(dm).decode()}


def op_ping(dev, c, req):
    return {"pong": True, "uptime_ms": dev.uptime()}


def op_status(dev, c, req):
    return status(dev)


def status(dev):
    sl = dev.sl
    rec = sl.rec
    s = dev.session
    dev.sample_mem()  # collects first, so mem_free below is the live figure
    v = sys.implementation.version
    r = {"platform": hal.PLATFORM, "impl": sys.implementation.name,
            "mp_version": "%d.%d.%d" % (v[0], v[1], v[2]), "agent": VERSION,
            "proto": proto.PROTO, "device": dev.id,
            "active": name(rec["active"]), "pending": name(rec["pending"]),
            "running": name(sl.running), "trial": sl.on_trial(),
            "trial_count": rec["tc"], "max_trials": sl.max_trials,
            "slots": {"a": sl.info(0), "b": sl.info(1)},
            "app": dev.app,
            "session": None if s is None else {"slot": name(s.slot), "size": s.size,
                                               "offset": s.w.pos, "kind": s.kind},
            "auth": "hmac-sha256" if dev.auth_on else "none",
            "mem_free": gc.mem_free(), "mem_alloc": gc.mem_alloc(), "mem_peak": dev.mem_peak,
            "uptime_ms": dev.uptime(), "boot_reason": dev.boot_reason,
            "boot_note": sl.note + dev.note}
    sim = sys.modules.get("simhal")
    if sim is not None:  # the simulator's flash operation counters
        r["sim_flash"] = sim.flash().stats()
    return r


def op_confirm(dev, c, req):
    return {"slot": name(dev.sl.confirm()), "state": S.CONFIRMED}


def op_reset(dev, c, req):
    dev.reset_ms = int_range(req, "delay_ms", 0, 10000, 100)
    return {}
