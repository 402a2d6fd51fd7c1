# legacy: the reference bootloader frames (opcodes 0x01-0x0C, 0xFF) with the
# semantics of docs/protocol.md section 1.1, for UDP datagrams (udp.py) and
# TCP alike. Imported on the first reference frame (or when legacy_udp is
# on), so a device that speaks only native pays nothing for it.
# Replies are built in the device's scratch buffer (no per-frame allocation
# beyond the views); the payload is parsed by hand from the checked frame.
import ubinascii as binascii

import mpota_hal as hal
import mpota_proto as proto
from mpota_proto import REF_REQUESTS
from mpota_lineproto import (ProtoError, E_UNSUPPORTED, E_INCORRECT_STATE, E_BAD_FRAME, E_CRC_MISMATCH,
                       E_OUT_OF_RANGE, E_AUTH_REQUIRED, E_TOO_LARGE)
from mpota_framing import frame_into

import mpota_upload as upload
import mpota_update as update

MAX_WRITE = 1024


def _u32(f, i):
    return (f[i] << 24) | (f[i + 1] << 16) | (f[i + 2] << 8) | f[i + 3]


def _reply(dev, c, op, body_len):
    c.out(dev.mv[:frame_into(dev.buf, op, body_len)])


def error(dev, c, code):
    dev.scratch()
    dev.buf[5] = code
    _reply(dev, c, 0xFF, 1)


def _empty(dev, c, op):
    _reply(dev, c, op, 0)


def handle(dev, c, f):
    op = f[1]
    body = len(f) - 6  # bytes between header and checksum
    if op == 0x01 and not body:
        return c.out(proto.version_frame(dev.VERSION))  # open to all: no scratch buffer for it
    dev.scratch()  # every other reply is built in it
    try:
        if op == 0x01:
            raise ProtoError(E_BAD_FRAME, "")  # a VersionRequest with a body
        if op not in REF_REQUESTS:
            # responses (0x02, 0x04, ...) and unknown opcodes
            raise ProtoError(E_UNSUPPORTED, "")
        if not c.authed:
            return error(dev, c, E_AUTH_REQUIRED)
        if op == 0x03:
            if body != 4:
                raise ProtoError(E_BAD_FRAME, "")
            _start(dev, c, _u32(f, 5))
            return _empty(dev, c, 0x04)
        if op == 0x07:
            if body < 5:
                raise ProtoError(E_BAD_FRAME, "")
            if body - 4 > MAX_WRITE:
                raise ProtoError(E_TOO_LARGE, "")
            _write(dev, c, f, body - 4)
            return _empty(dev, c, 0x08)
        if op == 0x05:
            if body != 4:
                raise ProtoError(E_BAD_FRAME, "")
            return _stop(dev, c, _u32(f, 5))
        if op == 0x0B:
            if body != 8:
                raise ProtoError(E_BAD_FRAME, "")
            return _read(dev, c, _u32(f, 5), _u32(f, 9))
        if op == 0x09:
            if body:
                raise ProtoError(E_BAD_FRAME, "")
            _empty(dev, c, 0x0A)
            dev.reset_ms = 100
            return
    except ProtoError as e:
        error(dev, c, e.code)


def _start(dev, c, size):
    s = dev.session
    if s is not None and s.kind == upload.LEGACY:
        dev.close_session()  # a new UpdateStart starts afresh, as the reference device does
    update.may_update(dev, c)
    sl = dev.sl
    i = sl.inactive()
    update.restart_if_lean(dev, i, size)
    sl.begin(i, size, legacy=True)
    dev.open_session(upload.open_session(sl, upload.LEGACY, c, i, size, None, 0))


def _own(dev, c):
    s = dev.session
    if s is None or s.owner is not c or s.kind != upload.LEGACY:
        raise ProtoError(E_INCORRECT_STATE, "")
    return s


def _write(dev, c, f, n):
    s = _own(dev, c)
    data = f[5:5 + n]
    if binascii.crc32(data) != _u32(f, 5 + n):
        raise ProtoError(E_CRC_MISMATCH, "")
    if s.w.pos + n > s.size:
        raise ProtoError(E_OUT_OF_RANGE, "")
    s.w.write(data)
    s.crc = binascii.crc32(data, s.crc)
    s.t = hal.ticks_ms()


def _stop(dev, c, want):
    s = _own(dev, c)
    got = s.crc & 0xFFFFFFFF
    i = s.slot
    whole = s.w.pos == s.size
    dev.close_session()
    sl = dev.sl
    if got == want and whole:
        sha = update.digest_hex(dev, i, s.size)
        try:
            ver, is_app, proof = update.validate(dev, i, s.size, False)
        except ProtoError:
            ver, is_app, proof = None, False, None  # stored and CRC-checked, not bootable
        sl.finish(i, sha, ver, is_app, proof)
    # The reference UpdateStopResponse carries the device CRC as a signed i32.
    b = dev.buf
    b[5] = got >> 24
    b[6] = (got >> 16) & 0xFF
    b[7] = (got >> 8) & 0xFF
    b[8] = got & 0xFF
    _reply(dev, c, 0x06, 4)


def _read(dev, c, addr, n):
    i = dev.sl.rec["legacy_slot"]
    if i is None:
        raise ProtoError(E_INCORRECT_STATE, "")
    if n < 1 or n > MAX_WRITE:
        raise ProtoError(E_OUT_OF_RANGE, "")
    import mpota_rareops as rareops
    rareops.read_into(dev, i, addr, dev.mv[5:5 + n])
    _reply(dev, c, 0x0C, n)


# -- the UDP service -----------------------------------------------------------
