# smp: the SMP (MCUmgr Simple Management Protocol) service, so that
# smpclient, smpmgr and Zephyr's mcumgr manage an mpota board unchanged.
# smpudp.py (resident when "smp_udp" is on) imports it on a datagram and
# releases it, with cbor.py, once no SMP upload session is open: an idle
# device holds none of this. docs/protocol.md section 8 is its specification.
#
# One SMP message per datagram: an 8-byte header (v1 or v2), then a CBOR map
# (shared/mpota_cbor.py). Every request gets exactly one reply, sent from the same
# socket to the sender (smpclient never retransmits: a lost reply fails its
# operation). Served: OS group (0) echo, reset, MCUmgr parameters; image
# group (1) state read/write, upload, erase. With "auth" on only the reads
# and echo: every other write is refused with MGMT_ERR_EACCESSDENIED (11),
# so an unauthenticated peer can neither change the slots, reset the device
# nor hold the update session. Errors: v2 requests get
# {"err": {"group", "rc"}} with the group's own codes, v1 requests {"rc"}
# with the MGMT_ERR code Zephyr translates them to.
#
# An SMP upload is an ordinary update session (kind "smp"): update.py's rules
# (busy while another session is open, refused on trial or after a rollback
# until the reset, never older than the active version, the security-counter
# floor, signatures where keys are trusted), slots.Slots' transitions (begin,
# finish, mark_pending, make_permanent, confirm) and upload.py's writer.
# update.py and upload.py are imported inside the functions that use them,
# never kept in this module's globals: the agent releases them after a
# session, and a global here would keep a second copy.
#
# Heap: the datagram is the only receive buffer (MicroPython's recvfrom
# allocates it; there is no recvfrom_into); decoding makes a small dict whose
# byte strings are views into it (an upload chunk goes to the flash writer
# without a copy); every reply is built in one buffer made at import.
import sys
import ubinascii as binascii

from micropython import const

import mpota_cbor as cbor
import mpota_hal as hal
import mpota_lineproto as lineproto
import mpota_slots as slots
from mpota_slots import COMPLETE, PENDING, TRIAL, CONFIRMED, BAD
from mpota_lineproto import (ProtoError, E_BUSY, E_INCORRECT_STATE, E_NO_SPACE, E_WRITE_FAILED, E_BAD_IMAGE,
                       E_VERSION_REFUSED, E_SIGNATURE_INVALID, E_OUT_OF_RANGE)

KIND = "smp"  # the session kind (status shows it), also its owner: one SMP service per device

_TX = const(512)  # every reply but a long echo (that one gets a buffer of its own)
_HDR = const(8)
_BUF_SIZE = const(1536)  # what smpudp.py receives (MCUmgr parameters report it)

_G_OS = const(0)
_G_IMG = const(1)

# MGMT_ERR (v1 "rc"; also v2 when no group applies)
_EUNKNOWN = const(1)
_ENOMEM = const(2)
_EINVAL = const(3)
_ENOENT = const(5)
_EBADSTATE = const(6)
_EMSGSIZE = const(7)
_ENOTSUP = const(8)
_EACCESSDENIED = const(11)

# IMG_MGMT_ERR (image group, v2)
_I_UNKNOWN = const(1)
_I_NO_IMAGE = const(3)
_I_HASH_NOT_FOUND = const(8)
_I_NO_FREE_SLOT = const(9)
_I_FLASH_WRITE_FAILED = const(12)
_I_INVALID_SLOT = const(14)
_I_BUSY = const(16)  # FLASH_CONTEXT_ALREADY_SET: another update session holds the slot
_I_NO_UPLOAD = const(17)  # FLASH_CONTEXT_NOT_SET: a chunk without an upload in progress
_I_INVALID_OFFSET = const(20)
_I_INVALID_LENGTH = const(21)
_I_BAD_MAGIC = const(23)
_I_INVALID_HASH = const(24)
_I_NOT_NEWER = const(27)
_I_ALREADY_PENDING = const(28)
_I_TOO_LARGE = const(30)
_I_OVERRUN = const(31)
_I_CONFIRM_DENIED = const(32)
_I_TEST_ACTIVE_DENIED = const(33)

# native error -> image group code (anything else: UNKNOWN)
_FROM_NATIVE = {E_BUSY: _I_BUSY, E_INCORRECT_STATE: _I_NO_FREE_SLOT, E_NO_SPACE: _I_TOO_LARGE,
                E_WRITE_FAILED: _I_FLASH_WRITE_FAILED, E_BAD_IMAGE: _I_INVALID_HASH,
                E_SIGNATURE_INVALID: _I_INVALID_HASH, E_VERSION_REFUSED: _I_NOT_NEWER,
                E_OUT_OF_RANGE: _I_INVALID_OFFSET}

_tx = bytearray(_TX)
_to = [None, None]  # (socket, address) of the datagram being answered


def _v1_rc(rc):
    # Zephyr's img_mgmt_translate_error_code, for v1 (original protocol) clients
    if rc in (3, 4):
        return _ENOENT
    if rc in (9, 27, 28):
        return _EBADSTATE
    if rc == 15:
        return _ENOMEM
    if rc in (14, 19, 20, 21, 22, 24, 25):
        return _EINVAL
    return _EUNKNOWN


class SmpError(Exception):
    def __init__(self, rc, group=_G_IMG):
        self.rc = rc
        self.group = group  # None: a MGMT_ERR code (no group's list applies)


# -- replies ------------------------------------------------------------------------

def _send(req, body, off=0, match=None):
    """Reply to header `req` with the map `body` (a dict) -- or, when body is
    None, {"off": off} (+ "match") built without a dict (the upload path)."""
    buf = _tx
    while True:
        try:
            if body is None:
                n = cbor.head(buf, _HDR, 5, 1 if match is None else 2)
                n = cbor.put_text(buf, n, b"off")
                n = cbor.put_int(buf, n, off)
                if match is not None:
                    n = cbor.put_text(buf, n, b"match")
                    n = cbor.put_bool(buf, n, match)
            else:
                n = cbor.put(buf, _HDR, body)
            break
        except IndexError:
            buf = bytearray(len(buf) * 4)  # a long echo: a buffer for this reply only
    ln = n - _HDR
    buf[0] = (req[0] & 0x18) | ((req[0] & 7) + 1)  # same version; READ_RSP / WRITE_RSP
    buf[1] = 0
    buf[2] = ln >> 8
    buf[3] = ln & 0xFF
    for k in range(4, 8):  # group, sequence, command as asked
        buf[k] = req[k]
    try:
        _to[0].sendto(memoryview(buf)[:n], _to[1])
    except OSError:
        pass  # the client reports its timeout


def _error(req, rc, group):
    if group is None or not (req[0] & 0x18):  # no group, or an SMP v1 request
        if group == _G_IMG:
            rc = _v1_rc(rc)
        elif group is not None:
            rc = _EUNKNOWN
        _send(req, {"rc": rc})
    else:
        _send(req, {"err": {"group": group, "rc": rc}})


# -- the service ---------------------------------------------------------------------

def handle(dev, sock, data, addr):
    """One datagram: answer it (exactly one reply when it has a header)."""
    if len(data) < _HDR:
        return  # not SMP: nothing to answer to
    _to[0] = sock
    _to[1] = addr
    mv = memoryview(data)
    req = mv[:_HDR]
    ln = (data[2] << 8) | data[3]
    try:
        if len(data) != _HDR + ln:
            raise SmpError(_EMSGSIZE if len(data) < _HDR + ln else _EINVAL, None)
        op = data[0] & 7
        if op not in (0, 2):
            raise SmpError(_EINVAL, None)  # a response sent to us
        try:
            m = cbor.loads(mv[_HDR:]) if ln else {}
        except cbor.CBORError:
            raise SmpError(_EINVAL, None)
        if not isinstance(m, dict):
            raise SmpError(_EINVAL, None)
        group = (data[4] << 8) | data[5]
        cmd = data[7]
        write = op == 2
        if write and dev.auth_on and (group, cmd) != (_G_OS, 0):
            # SMP has no operator authentication: with auth on it only reads
            # (image state, MCUmgr parameters) and echoes (docs/security.md)
            raise SmpError(_EACCESSDENIED, None)
        if group == _G_IMG:
            if cmd == 1 and write:
                return _upload(dev, req, m)
            if cmd == 0:
                return _send(req, _state_write(dev, m) if write else _state_read(dev))
            if cmd == 5 and write:
                return _erase(dev, req, m)
        elif group == _G_OS:
            if cmd == 0 and write:
                d = m.get("d")
                if not isinstance(d, str):
                    raise SmpError(_EINVAL, None)
                return _send(req, {"r": d})
            if cmd == 6 and not write:
                return _send(req, {"buf_size": _BUF_SIZE, "buf_count": 1})
            if cmd == 5 and write:
                _send(req, {})
                dev.reset_ms = 100  # smpudp: reset once the reply is out
                return
        raise SmpError(_ENOTSUP, None)
    except SmpError as e:
        _error(req, e.rc, e.group)
    except ProtoError as e:
        _error(req, _FROM_NATIVE.get(e.code, _I_UNKNOWN), _G_IMG)
    except MemoryError:
        dev.end_request()
        _error(req, _ENOMEM, None)
    except Exception as e:  # a bug must not cost the client its answer
        sys.print_exception(e)
        _error(req, _EUNKNOWN, None)
    finally:
        _to[0] = _to[1] = None


def _field(m, key, typ, default=None):
    v = m.get(key, default)
    if v is None:
        return default
    if typ is int and (v is True or v is False):
        raise SmpError(_EINVAL, None)
    if typ is bytes:
        if not isinstance(v, (bytes, memoryview)):
            raise SmpError(_EINVAL, None)
    elif not isinstance(v, typ):
        raise SmpError(_EINVAL, None)
    return v


def _ours(dev):
    s = dev.session
    return s if s is not None and s.kind == KIND else None


# -- image group: upload ---------------------------------------------------------------

def _upload(dev, req, m):
    off = _field(m, "off", int)
    data = _field(m, "data", bytes)
    if off is None or data is None:
        raise SmpError(_EINVAL, None)
    if _field(m, "image", int, 0) not in (0, 1):  # smpmgr --slot 1 sends image 1: same slot
        raise SmpError(_I_INVALID_SLOT)
    if off == 0:
        return _upload_first(dev, req, m, data)
    s = _ours(dev)
    if s is None:
        raise SmpError(_I_NO_UPLOAD)
    size = s.size
    n = len(data)
    if off > size:
        raise SmpError(_I_INVALID_OFFSET)
    if off + n > size:
        raise SmpError(_I_OVERRUN)
    w = s.w
    if off == w.pos and n:
        w.write(data)
        s.t = hal.ticks_ms()  # the idle clock housekeeping checks
        if w.pos == size:
            return _upload_done(dev, req, s)
    _send(req, None, w.pos)  # a wrong offset: "continue from here"


def _upload_first(dev, req, m, data):
    import mpota_update as update
    import mpota_upload as upload
    size = _field(m, "len", int)
    if size is None or size < 1:
        raise SmpError(_I_INVALID_LENGTH)
    sha = _field(m, "sha", bytes)
    if sha is not None and len(sha) != 32:
        raise SmpError(_I_INVALID_HASH)
    sha_hex = None if sha is None else binascii.hexlify(sha).decode()
    if len(data) > size:
        raise SmpError(_I_OVERRUN)
    s = _ours(dev)
    # the same upload again (smpclient restarts from 0 after an error): resume
    if s is not None and sha_hex is not None and s.sha == sha_hex and s.size == size:
        return _send(req, None, s.w.pos)
    if len(data) >= 4 and (data[0], data[1], data[2], data[3]) != (0x3D, 0xB8, 0xF3, 0x96):
        raise SmpError(_I_BAD_MAGIC)  # not an MCUboot image: refused before a byte is stored
    update.may_update(dev, KIND)  # busy (another session), on trial, rolled back until reset
    sl = dev.sl
    i = sl.inactive()
    ver = None
    if len(data) >= 32:
        import mpota_mcuboot as mcuboot
        v = mcuboot.parse_header(data)["version"]
        ver = lineproto.format_version(v)
        r = sl.running
        cur = None if r is None else sl.slot(r)["version"]
        if m.get("upgrade") is True and cur is not None and v <= lineproto.parse_version(cur):
            raise SmpError(_I_NOT_NEWER)
        if update.older(dev, i, v):  # the native rule: never older than the active version
            raise SmpError(_I_NOT_NEWER)
    off = sl.begin(i, size, sha_hex, ver)
    s = upload.open_session(sl, KIND, KIND, i, size, sha_hex, off)
    dev.open_session(s)
    if off == 0 and data:
        s.w.write(data)
    if s.w.pos == size:
        return _upload_done(dev, req, s)
    _send(req, None, s.w.pos)


def _upload_done(dev, req, s):
    import mpota_update as update
    i = s.slot
    size = s.size
    sl = dev.sl
    dev.close_session()  # syncs the sector being written
    sha_hex = update.digest_hex(dev, i, size)
    if s.sha is not None and sha_hex != s.sha:
        sl.erase(i)  # not the bytes that were announced: nothing to keep
        return _send(req, None, size, False)
    try:
        ver, is_app, proof = update.validate(dev, i, size, False)
    except ProtoError:
        sl.finish(i, sha_hex, None, False)  # stored, not bootable
        raise
    finally:
        dev.sample_mem()  # the peak of an SMP update: hashing and the image check
    sl.slot(i)["app"] = is_app  # bootable once tested (state read); finish commits it
    sl.finish(i, sha_hex, ver, False, proof)  # complete; "test" makes it pending
    _send(req, None, size, None if s.sha is None else True)


# -- image group: state ----------------------------------------------------------------

_LISTED = (COMPLETE, PENDING, TRIAL, CONFIRMED, BAD)


def _image(dev, i):
    """Slot i as SMP sees it: (MCUboot hash or None, version tuple or None,
    bootable). From the record: the hash checked when the image was stored
    ("image_hash"); only a record from before that key reads the slot."""
    s = dev.sl.slot(i)
    st = s["state"]
    ver = s["version"]
    if ver is None:
        return None, None, False  # it failed its check: stored, never bootable
    h = s.get("image_hash")
    if h is None:
        import mpota_mcuboot as mcuboot
        f = dev.sl.open(i)
        try:
            h = mcuboot.verify(f, 0, dev.sl.file_size(i), hal.wdt_feed)["sha256"]
        except (mcuboot.ImageError, OSError, ValueError):
            return None, None, False
        finally:
            f.close()
    else:
        h = binascii.unhexlify(h)
    # native commits make an app pending at once (a complete one is no app);
    # SMP uploads stay complete until "test" and say whether they are an app
    ok = st in (PENDING, TRIAL, CONFIRMED) or (st == COMPLETE and s.get("app") is True)
    return h, lineproto.parse_version(ver), ok


def _version(v):
    # as Zephyr's img_mgmt prints it: major.minor.revision[.build]
    if v is None:
        return "0.0.0"
    if v[3]:
        return "%d.%d.%d.%d" % v
    return "%d.%d.%d" % (v[0], v[1], v[2])


def _state_read(dev):
    sl = dev.sl
    r = sl.running
    nxt = sl.active()  # what boots at the next reset when nothing is pending
    out = []
    for i in (0, 1):
        st = sl.state(i)
        if st not in _LISTED:
            continue
        h, v, ok = _image(dev, i)
        perm = nxt == i and r != i  # boots next as confirmed, without a trial
        e = {"image": 0, "slot": i, "version": _version(v),
             "bootable": ok and st != BAD,
             "pending": st == PENDING or perm,
             "confirmed": st == CONFIRMED and not perm,
             "active": i == r, "permanent": perm}
        if h is not None:
            e["hash"] = h
        out.append(e)
    return {"images": out, "splitStatus": 0}


def _find(dev, h):
    for i in (0, 1):
        if dev.sl.state(i) in _LISTED and _image(dev, i)[0] == h:
            return i
    raise SmpError(_I_HASH_NOT_FOUND)


def _state_write(dev, m):
    h = _field(m, "hash", bytes)
    confirm = m.get("confirm") is True
    if h is None and not confirm:
        raise SmpError(_EINVAL, None)
    sl = dev.sl
    r = sl.running
    i = r if h is None else _find(dev, bytes(h))
    if i is None:
        raise SmpError(_I_NO_IMAGE)
    if i == r:
        if not confirm:
            raise SmpError(_I_TEST_ACTIVE_DENIED)
        _confirm_running(sl)
        return _state_read(dev)
    s = sl.slot(i)
    if s["state"] == BAD:
        # it failed its trial: never confirm (or test) it again (the smpmgr#105 trap)
        raise SmpError(_I_CONFIRM_DENIED)
    if s["state"] == PENDING and not confirm:
        return _state_read(dev)  # tested already
    import mpota_update as update
    update.may_update(dev, KIND)  # busy, on trial, rolled back until the reset: as a native update
    h, v, ok = _image(dev, i)
    if not ok:
        raise SmpError(_I_CONFIRM_DENIED)  # not an application, or not checked
    # the rules of the commit again, from the record (the floor or the active
    # version may have moved since the upload)
    slots.check_counter(s.get("sec_cnt"), sl.floor())
    if update.older(dev, i, v):
        raise SmpError(_I_NOT_NEWER)
    if confirm:
        sl.make_permanent(i)  # boots confirmed; the floor rises once it runs
    else:
        sl.mark_pending(i)  # a trial at the next reset
    return _state_read(dev)


def _confirm_running(sl):
    try:
        sl.confirm()  # ends a trial; raises the anti-rollback floor (also for a permanent image)
    except ProtoError:
        raise SmpError(_I_ALREADY_PENDING)  # rolled back: the other slot boots next


# -- image group: erase ------------------------------------------------------------------

def _erase(dev, req, m):
    sl = dev.sl
    i = _field(m, "slot", int)
    if i is None:
        i = sl.inactive()
    if i not in (0, 1):
        raise SmpError(_I_INVALID_SLOT)
    if i == sl.running or i == sl.active():
        raise SmpError(_I_NO_FREE_SLOT)  # running, or what boots (or falls back) at the next reset
    s = dev.session
    if s is not None and s.slot == i:
        if s.kind != KIND:
            raise SmpError(_I_BUSY)
        dev.close_session()  # our own upload: erasing abandons it
    sl.erase(i)
    _send(req, {})
