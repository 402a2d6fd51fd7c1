# pull: an install's image, pulled over HTTP/1.1 with Range (docs/mqtt.md)
# into the inactive slot through the update session a LAN push uses
# (update.op_begin, the session's Writer, update.op_commit: the same checks).
# Loaded only while an install runs (mpota_mqttcmd), released with the
# session scope (agent._LIFE).
#
# GET with "Range: bytes=N-" where N is what the slot already holds: 206 with
# a matching Content-Range, or 200 when N == 0. The body streams through the
# pull's own buffer of _BUF bytes (readinto; lwIP hands over at most one
# 800-byte segment per read on a board, so a bigger one would not read more
# at a time): nothing sized by the image is allocated. A drop resumes with a new Range (bounded retries with
# backoff); a reset resumes too (op_begin resumes a partial upload of the same
# size and sha256). Plain http:// only: the image's SHA-256 (from the signed
# command) and its Ed25519 signature make it safe for integrity.
import asyncio
from micropython import const

import ubinascii as binascii

import mpota_hal as hal
import mpota_update as update
import mpota_upload as upload
import mpota_command as command
from mpota_lineproto import ProtoError, E_BAD_REQUEST, E_TIMEOUT

_T_IO = const(15000)  # ms a connect, the headers or any read may take
_HDR_MAX = const(1024)  # response headers longer than this are refused
_BUF = const(1024)  # (not 4 KB in one piece: beside an app that fragmented the heap it may not exist)
_TRIES = const(6)  # connections in a row that add no byte before the install fails
_MIN_DELAY = const(1000)
_MAX_DELAY = const(16000)  # below the session timeout ("timeout", 30 s by default)


class PullError(Exception):
    """An HTTP answer the pull cannot use; `retry`: another try may help (5xx)."""

    def __init__(self, message, retry=False):
        super().__init__(message)
        self.message = message
        self.retry = retry


async def begin(dev, owner, d, buf=None):
    """Open or resume the update session for install body `d` (update.op_begin:
    every check of a push's begin) -> the session. Where the target slot
    holds an image and the server has the new one's sector digests (publish
    writes <sha256>.sectors beside <sha256>.bin), the sectors the slot holds
    already are kept: only the others are downloaded and written."""
    import mpota_slots as slots
    slots.attach(dev)  # (held while the session is open: settle() waits for its end)
    req = {"size": d["size"], "sha256": d["sha256"], "version": d["version"],
           "client": "mqtt", "allow_downgrade": d.get("allow_downgrade")}
    sl = dev.sl
    i = sl.inactive()
    if sl.file_size(i) > 0 and not sl.resumable(i, d["size"], d["sha256"]):
        held = await _held(dev, sl, d, i, buf or bytearray(_BUF))  # (dev.pulling: mpota_mqttcmd.install)
        if held is not None:
            req["held"] = binascii.hexlify(held).decode()
            req["held_from"] = slots.NAMES[i]
    update.op_begin(dev, owner, req)
    return dev.session


async def _held(dev, sl, d, i, buf):
    # begin's "held" for slot i: the sectors whose digest <sha256>.sectors names
    # (8 bytes a sector, as the sectors op) and the slot holds; None without that file
    host, port, path = command.split_url(d["url"])
    if not path.endswith(".bin"):
        return None
    n = (d["size"] + upload.SECTOR - 1) // upload.SECTOR
    try:
        r, w, p, got = await _open(dev, host, port, path[:-4] + ".sectors", None, buf)
        try:
            want = bytearray(8 * n)
            k = min(got - p, len(want))
            want[:k] = buf[p:p + k]
            while k < len(want):
                m = await asyncio.wait_for_ms(r.readinto(memoryview(want)[k:]), _T_IO)
                if not m:
                    return None
                k += m
        finally:
            w.close()
    except (PullError, OSError, asyncio.TimeoutError):
        return None  # a plain download
    held = bytearray((n + 7) // 8)
    k = 0
    while k < n:
        h = upload.sector_hashes(sl, i, k, 64, buf)[1]
        for j in range(len(h) // 8):
            if h[8 * j:8 * j + 8] == want[8 * (k + j):8 * (k + j) + 8]:
                held[(k + j) >> 3] |= 1 << ((k + j) & 7)
        if len(h) < 8 * 64:
            break
        k += 64
        await asyncio.sleep_ms(0)
    return held


def _num(t):
    t = t.strip()
    if not t.isdigit():
        raise PullError("bad number %r in the response" % t)
    return int(t)


def check_head(head, off, size, end=None):
    """The status line and headers (str, without the blank line) of the answer
    to "Range: bytes=off-" (to end-1 with `end`) for an image of `size` bytes
    (off None: no Range, a whole file of `size` bytes, None: any); PullError
    unless the body that follows is exactly those bytes."""
    if end is None:
        end = size
    lines = head.split("\r\n")
    st = lines[0].split(" ", 2)
    if len(st) < 2 or not st[0].startswith("HTTP/1."):
        raise PullError("not an HTTP/1.x answer: %r" % lines[0][:40])
    code = _num(st[1])
    if code >= 500:
        raise PullError("the server answered %d" % code, True)
    if code not in (200, 206):
        raise PullError("the server answered %d%s" % (code, " (redirects are not followed)"
                                                       if 300 <= code < 400 else ""))
    ln = rng = None
    for h in lines[1:]:
        k, _, v = h.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            ln = _num(v)
        elif k == "content-range":
            rng = v.strip()
        elif k == "transfer-encoding" and v.strip().lower() != "identity":
            raise PullError("chunked transfer encoding is not supported")
    if code == 200:
        if off or end != size:
            raise PullError("the server ignored the Range (200 for bytes=%d-%d)" % (off, end - 1))
        if ln is not None and size is not None and ln != size:
            raise PullError("the image is %d bytes, the command says %d" % (ln, size))
        return
    want = "bytes %d-%d/%d" % (off, end - 1, size)
    if rng != want:
        raise PullError("Content-Range %r, expected %r" % (rng, want))


async def _open(dev, host, port, path, rng, buf):
    # GET path (with "Range: bytes=RNG" unless None) -> (reader, writer, where
    # the body starts in buf, bytes read into buf), its headers checked by
    # check_head (a whole file without rng)
    r, w = await asyncio.wait_for_ms(asyncio.open_connection(host, port), _T_IO)
    try:
        w.write(("GET %s HTTP/1.1\r\nHost: %s:%d\r\n%sUser-Agent: mpota/%s\r\nConnection: close\r\n\r\n"
                 % (path, host, port, "Range: bytes=%d-%d\r\n" % rng[:2] if rng else "", dev.VERSION)).encode())
        await w.drain()
        mv = memoryview(buf)
        n = 0
        while True:
            k = await asyncio.wait_for_ms(r.readinto(mv[n:_HDR_MAX]), _T_IO)
            if not k:
                raise OSError("the server closed before its headers ended")
            n += k
            e = buf.find(b"\r\n\r\n", 0, n)
            if e >= 0:
                break
            if n >= _HDR_MAX:
                raise PullError("response headers longer than %d bytes" % _HDR_MAX)
        try:
            head = bytes(mv[:e]).decode()
        except UnicodeError:
            raise PullError("the response headers are not text")
        if rng:
            check_head(head, rng[0], rng[2], rng[1] + 1)
        else:
            check_head(head, 0, None)
        return r, w, e + 4, n
    except BaseException:
        w.close()
        raise


async def _get(dev, s, host, port, path, emit, seq, prog, buf):
    # the bytes from the watermark to the next sector the slot keeps (or the end): -> True once there
    size = s.size
    off = s.w.pos
    end = size
    held = s.w.held
    if held is not None:
        k = off // upload.SECTOR
        while k * upload.SECTOR < size and not upload.is_held(held, k):
            k += 1
        end = min(size, k * upload.SECTOR)
    r, w, p, n = await _open(dev, host, port, path, (off, end - 1, size), buf)
    try:
        mv = memoryview(buf)
        while True:
            if dev.session is not s:
                return False  # closed while the server was slow (silent session): run() begins again
            if n > p:
                k = min(n - p, end - s.w.pos)
                s.w.write(mv[p:p + k])  # a ProtoError (flash full, write failed) ends the install
                s.t = hal.ticks_ms()  # (housekeeping closes a silent session)
                q = s.w.pos * 4 // size
                if q > prog[0] and q < 4:
                    prog[0] = q
                    await emit(seq, "progress", offset=s.w.pos, size=size, percent=25 * q)
            if s.w.pos >= end:
                return True
            p = 0
            n = await asyncio.wait_for_ms(r.readinto(mv[:min(len(buf), end - s.w.pos)]), _T_IO)
            if not n:
                raise OSError("the server closed at byte %d of %d" % (s.w.pos, size))
    finally:
        w.close()


async def run(dev, cl, seq, d, emit):
    """Pull install body `d` into the open session of owner `cl`, then commit
    (update.op_commit); `emit(seq, name, **fields)` publishes an event.
    -> commit's reply plus "ms" and "rate" (bytes/s); ProtoError on failure."""
    host, port, path = command.split_url(d["url"])
    t0 = hal.ticks_ms()
    s = dev.session
    start = s.w.pos
    prog = [s.w.pos * 4 // s.size]
    tries = 0
    delay = _MIN_DELAY
    # the pull's own buffer, not the device's scratch one: the headers build up in it over
    # several reads, while a LAN request may use the scratch buffer in between
    buf = bytearray(_BUF)
    while True:
        if dev.session is not s:
            s = await begin(dev, cl, d, buf)  # closed meanwhile (a silent session): resumes from the bytes held
        if s.w.ahead:
            s.w.fill()  # the sectors the slot keeps, at the watermark (no I/O)
        if s.w.pos >= s.size:
            break
        had = s.w.pos
        why = "the session was closed (silent)"
        try:
            if await _get(dev, s, host, port, path, emit, seq, prog, buf):
                continue  # that run of sectors arrived: the next one
        except PullError as e:
            if not e.retry:
                raise ProtoError(E_BAD_REQUEST, "%s: %s" % (d["url"], e.message))
            why = e.message
        except (OSError, asyncio.TimeoutError) as e:
            why = "%s" % (e,) or "timeout"
        if s.w.pos >= s.size:
            break
        if s.w.pos > had:
            tries = 0
            delay = _MIN_DELAY
        tries += 1
        if tries >= _TRIES:
            raise ProtoError(E_TIMEOUT, "%s: gave up after %d tries without progress (%s)" % (d["url"], tries, why))
        print("mpota: pull: %s at byte %d: retrying in %d ms" % (why, s.w.pos, delay))
        s.t = hal.ticks_ms()
        await asyncio.sleep_ms(delay)
        s.t = hal.ticks_ms()
        delay = min(delay * 2, _MAX_DELAY)
    ms = max(1, hal.ticks_diff(hal.ticks_ms(), t0))
    got = s.size - start
    s = buf = None  # the commit reads the slot twice and checks the signature beside the app
    r = update.op_commit(dev, cl, {})
    r["ms"] = ms
    r["rate"] = got * 1000 // ms
    return r
