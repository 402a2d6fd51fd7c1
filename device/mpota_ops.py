# ops: the everyday JSON-line requests (docs/protocol.md section 2): hello,
# auth, ping, status, confirm, reset. Each op_<name>(dev, c, req) returns the
# reply fields or raises ProtoError; service.py routes lines here (and to
# update.py and rareops.py) and turns either into one reply line.
import sys
import gc
import ubinascii as binascii

import mpota_hal as hal
import mpota_lineproto as lineproto
from mpota_lineproto import slot_name
from mpota_lineproto import ProtoError, E_AUTH_FAILED, E_BAD_REQUEST


def op_hello(dev, c, req):
    if dev.auth_on and not c.wired:  # (a wired peer: the cable authenticates it)
        import mpota_auth as auth  # released after the request (service.idle)
        c.nonce = auth.challenge(dev)
    else:
        c.nonce = None
    r = {"proto": lineproto.PROTO, "agent": dev.VERSION, "device": dev.id,
         "auth": "hmac-sha256" if dev.auth_on and not c.wired else "none",
         "nonce": binascii.hexlify(c.nonce).decode() if c.nonce else None}
    if c.authed:  # the rest only to an authenticated peer (discovery needs the above)
        r.update(limits(dev, c))
        r["max_image"] = max_image(dev)  # not in the auth reply: it needs the slot record (a lean auth has none)
    return r


def limits(dev, c):
    return {"max_frame": lineproto.MAX_FRAME - lineproto.MAX_DATA + c.max_data, "max_data": c.max_data,
            "max_line": lineproto.MAX_LINE, "window": lineproto.WINDOW,
            "slot_size": dev.cfg["slot_size"], "mode": dev.mode,
            "features": ["native", "legacy", "json", "resume", "read", "sectors", "deflate"]
            + (["auth"] if dev.auth_on else [])}


def op_auth(dev, c, req):
    if not dev.auth_on:
        return {"auth": "none"}
    hn = lineproto.field(req, "nonce", str, required=True)
    mac = lineproto.field(req, "mac", str, required=True)
    ch = lineproto.field(req, "challenge", str)  # a hello's nonce, maybe of another connection
    nonce = c.nonce
    c.nonce = None  # one attempt per hello
    if ch is not None:
        try:
            nonce = binascii.unhexlify(ch)
        except ValueError:
            raise ProtoError(E_BAD_REQUEST, "\"challenge\" must be hex")
    if nonce is None:
        raise ProtoError(E_AUTH_FAILED, "send hello first (each hello allows one auth attempt)")
    if dev.key is None:
        raise ProtoError(E_AUTH_FAILED, "this device has no key (/mpota_key.bin)")
    import mpota_auth as auth  # released after the request (service.idle), as hmac_sha256
    if not auth.redeem(dev, nonce):
        raise ProtoError(E_AUTH_FAILED, "challenge unknown, expired or already answered: send hello again")
    dm = auth.check(dev.key, dev.id, nonce, hn, mac)
    if dm is None:
        c.authed = False
        raise ProtoError(E_AUTH_FAILED, "wrong MAC")
    # The connection grows its buffer for an authenticated peer and starts
    # the session: from here on every message both ways carries a MAC (this
    # reply first). It is authenticated only once its session exists (out of
    # heap before that: an unsealed no_memory, and the peer is still a stranger).
    c.secure(dev, nonce, hn)
    c.authed = True
    r = {"mac": binascii.hexlify(dm).decode()}
    r.update(limits(dev, c))
    return r


def op_ping(dev, c, req):
    return {"pong": True, "uptime_ms": dev.uptime()}


def op_status(dev, c, req):
    return status(dev, c.authed)


def status(dev, full=True):
    """The status reply; without `full` (an unauthenticated peer) only what
    discovery needs."""
    v = sys.implementation.version
    r = {"platform": hal.PLATFORM, "impl": sys.implementation.name,
         "mp_version": "%d.%d.%d" % (v[0], v[1], v[2]), "agent": dev.VERSION,
         "proto": lineproto.PROTO, "device": dev.id, "running": slot_name(dev.running),
         "auth": "hmac-sha256" if dev.auth_on else "none", "mode": dev.mode}
    if not full:
        return r
    s = dev.session
    sl = dev.sl
    rec = sl.rec
    dev.sample_mem()  # collects first, so mem_free below is the live figure
    r.update({"active": slot_name(rec["active"]), "pending": slot_name(rec["pending"]),
              "trial": sl.on_trial(), "trial_count": rec["trials"], "max_trials": sl.max_trials,
              "slots": {"a": sl.info(0), "b": sl.info(1)},
              "slot_size": sl.slot_size, "max_image": max_image(dev),
              "app": dev.app,
              "session": None if s is None else {"slot": slot_name(s.slot), "size": s.size,
                                                 "offset": s.w.pos, "kind": s.kind},
              "mem_free": gc.mem_free(), "mem_alloc": gc.mem_alloc(), "mem_peak": dev.mem_peak,
              "mem_base": dev.mem_base, "mem_idle": dev.mem_idle,
              "uptime_ms": dev.uptime(), "boot_reason": dev.boot_reason,
              "resets": dev.resets, "floor": sl.floor(), "boot_note": dev.note,
              "last_crash": dev.last_crash})
    r["trust"] = trust_status(dev)
    w = sys.modules.get("mpota_wifi")
    if w is not None and w.LINK is not None:  # the station link (device/mpota_wifi.py)
        r.update(w.LINK.status())
    hal.status_extra(r)  # the simulator's flash counters; nothing on a board
    return r


def trust_status(dev):
    # which signing keys the device trusts (trust.summary): made at boot and by
    # each key change (a few hundred bytes), so a status never loads trust.py
    if dev.trust is None:  # (a Device not made by bootmgr: tests)
        had = "mpota_trust" in sys.modules
        import mpota_trust as trust
        try:
            dev.trust = trust.summary(trust.load())
        finally:
            if not had:
                sys.modules.pop("mpota_trust", None)
    return dev.trust


def max_image(dev):
    return dev.sl.space(dev.sl.inactive())


def op_confirm(dev, c, req):
    import mpota_slots as slots
    return {"slot": slot_name(dev.sl.confirm()), "state": slots.CONFIRMED}


def op_reset(dev, c, req):
    dev.reset_ms = lineproto.int_range(req, "delay_ms", 0, 10000, 100)
    return {}
