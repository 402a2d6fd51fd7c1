# rareops: the rarely used slot operations -- reading a slot back (the
# binary READ frame and the JSON read op), erase, rollback.
# Loaded on use by service.py (and legacy.py's ReadAddress) and released
# after the request, so a device that only takes updates never holds it.
import ubinascii as binascii

import mpota_lineproto as lineproto
import mpota_slots as slots
from mpota_slots import name
from mpota_proto import OP_READ, OP_READ_DATA
from mpota_lineproto import (ProtoError, E_BUSY, E_OUT_OF_RANGE, E_AUTH_REQUIRED, E_BAD_FRAME, int_range, field,
                       slot_index)
from mpota_framing import HEADER_SIZE, frame_into
from mpota_checksums import crc32c


def _slot(req):
    return slot_index(field(req, "slot", str, required=True))


def read_into(dev, i, offset, mv):
    """Fill `mv` from slot i at `offset` (bounded by what the slot holds)."""
    s = dev.session
    if s is not None and s.slot == i:
        s.w.sync()  # make the session's bytes visible to a second handle
    have = dev.sl.file_size(i)
    if have <= 0:
        raise ProtoError(E_OUT_OF_RANGE, "slot %s is empty" % slots.NAMES[i])
    if offset + len(mv) > have:
        raise ProtoError(E_OUT_OF_RANGE, "read past the %d bytes of slot %s" % (have, slots.NAMES[i]))
    f = dev.sl.open(i)
    try:
        f.seek(offset)
        return f.readinto(mv)
    finally:
        f.close()


def read_frame(dev, c, f):
    # READ: slot u8, offset u32, length u16 -> READ_DATA built in dev.scratch()
    if not c.authed:
        return c.nerror(OP_READ, E_AUTH_REQUIRED)
    if len(f) != HEADER_SIZE + 8:
        return c.nerror(OP_READ, E_BAD_FRAME)
    slot = f[5]
    off = (f[6] << 24) | (f[7] << 16) | (f[8] << 8) | f[9]
    ln = (f[10] << 8) | f[11]
    if slot > 1 or ln < 1 or ln > lineproto.MAX_DATA:
        return c.nerror(OP_READ, E_OUT_OF_RANGE, 0, off)
    mv = dev.scratch()
    try:
        read_into(dev, slot, off, mv[13:13 + ln])
    except ProtoError as e:
        return c.nerror(OP_READ, e.code, 0, off)
    b = dev.buf
    crc = crc32c(mv[13:13 + ln])
    for k in range(4):
        b[8 - k] = (off >> (8 * k)) & 0xFF
        b[12 - k] = (crc >> (8 * k)) & 0xFF
    c.out(mv[:frame_into(b, OP_READ_DATA, 8 + ln)])


def op_rollback(dev, c, req):
    if dev.session is not None:
        raise ProtoError(E_BUSY, "an update session is open")
    return {"slot": name(dev.sl.rollback())}


def op_read(dev, c, req):
    i = _slot(req)
    off = int_range(req, "offset", 0, 0x7FFFFFFF)
    ln = int_range(req, "length", 1, lineproto.READ_JSON_MAX)
    mv = dev.scratch()[:ln]
    read_into(dev, i, off, mv)
    return {"slot": name(i), "offset": off, "length": ln,
            "data": binascii.b2a_base64(mv).decode().strip()}


def op_erase(dev, c, req):
    i = _slot(req)
    s = dev.session
    if s is not None and s.slot == i:
        raise ProtoError(E_BUSY, "an update session is writing slot %s" % name(i))
    dev.sl.erase(i)
    return {"slot": name(i), "state": slots.EMPTY}
