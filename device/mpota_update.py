# update: the update session ops (begin, commit, abort) and the checks that
# the legacy service shares (one session at a time, image validation).
# Loaded with a session and released when it ends (service.py).
import sys
import gc
import ubinascii as binascii

import mpota_hal as hal
import mpota_lineproto as lineproto
import mpota_slots as slots
import mpota_slotio as slotio  # (resident)
from mpota_slots import name
from mpota_lineproto import (ProtoError, E_INCORRECT_STATE, E_BAD_REQUEST, E_BUSY, E_VERIFY_FAILED,
                   E_BAD_IMAGE, E_VERSION_REFUSED, field)

_CHECK_MOUNT = "/mpota_check"  # where commit mounts a new app to look at its names
# mpota_upload (the slot writer) is imported where a session needs it: a lean
# begin answers `restarting` beside the app without loading it


def may_update(dev, owner, client=None):
    """Raise unless `owner` may open the update session now. `client`: the
    client id of a native begin (authenticated): a native session that the
    same client id opened on another connection is taken over at once (that
    connection, silent behind a frozen relay or half-open, is closed); any
    other owner's session is busy until it ends or times out."""
    s = dev.session
    if s is not None and s.owner is not owner:
        import mpota_upload as upload
        if client is None or s.client != client or s.kind != upload.NATIVE:
            raise ProtoError(E_BUSY, "an update session is open on another connection")
        import mpota_connpolicy as connpolicy
        connpolicy.close(dev.ag, s.owner)
    if s is not None:
        dev.close_session()  # the owner re-opens
    dev.sl.writable(dev.app["state"] == "crashed")


def restart_if_lean(dev, i, size):
    # lean mode: once the request is known to be acceptable (slots.restart_for_update)
    if dev.mode == "lean":
        dev.sl.fits(i, size)
        slots.restart_for_update(dev)


def older(dev, i, v):
    # v older than the active confirmed version (another slot than i)?
    a = dev.sl.active()
    if v is None or a is None or a == i:
        return None
    cur = dev.sl.slot(a)["version"]
    if cur is not None and tuple(v) < lineproto.parse_version(cur):
        return cur
    return None


def validate(dev, i, size, allow_down, buf=None):
    """Check the stored image: -> (version str, is an app image). `buf`:
    scratch of at least 1 KB (_buf)."""
    import mpota_mcuboot as mcuboot
    f = dev.sl.open(i)
    try:
        info = mcuboot.verify(f, 0, size, hal.wdt_feed, buf or _buf(dev))
    except mcuboot.ImageError as e:
        raise ProtoError(getattr(e, "code", E_BAD_IMAGE), "slot %s: %s" % (name(i), e))
    except (OSError, ValueError) as e:
        raise ProtoError(E_BAD_IMAGE, "slot %s: %s" % (name(i), e))
    finally:
        f.close()
    # the parser goes before the signature check and the app check, which need
    # the heap beside the app (its scope is the session: a later use loads it)
    mcuboot = None
    sys.modules.pop("mpota_mcuboot", None)
    ver = info["version_str"]
    cur = None if allow_down else older(dev, i, info["version"])
    if cur:
        raise ProtoError(E_VERSION_REFUSED, "version %s is older than the active %s" % (ver, cur))
    # Only signed images become bootable once a key is trusted (docs/security.md);
    # the result is cached in the record, bound to the image hash, for boot.
    cnt = slots.counter(info)
    slots.check_counter(cnt, dev.sl.floor())
    signer = None
    if slots.trusting():  # the verifier is loaded only where keys are trusted
        import mpota_trust as trust
        signer = trust.check_image(info, trust.load())
    proof = {"signer": binascii.hexlify(signer).decode() if signer else None,
             "image_hash": binascii.hexlify(info["sha256"]).decode(), "sec_cnt": cnt}
    # an application body is a littlefs (mounted at /app); others are stored only
    is_app = bool(info.get("body_is_littlefs"))
    if is_app:
        _check_app(dev.sl, i, info)
    return ver, is_app, proof


def _check_app(sl, i, info):
    # what boot would refuse (an agent module's name, no main.py) is refused
    # now, naming the file, before the image can become pending
    loaded = "mpota_appfs" in sys.modules  # the running app's mount lives there: keep it
    import mpota_appfs as appfs
    slot = name(i)
    gc.collect()  # (hashing read the slot a sector file at a time: let the mount find its caches)
    try:
        appfs.mount(sl.open(i), info["hdr_size"], info["img_size"], _CHECK_MOUNT, 32)  # names only
        try:
            appfs.check_app(_CHECK_MOUNT)
        finally:
            appfs.umount(_CHECK_MOUNT)
    except (OSError, ValueError) as e:
        raise ProtoError(E_BAD_IMAGE, "slot %s: %s" % (slot, e))
    finally:
        if not loaded:
            sys.modules.pop("mpota_appfs", None)


def _buf(dev):
    # the scratch buffer when there is one, else 1 KB for this request or session only
    return dev.buf if dev.buf is not None else bytearray(1024)


def digest_hex(dev, i, size, buf=None):
    import mpota_upload as upload
    return binascii.hexlify(upload.digest(dev.sl, i, size, buf or _buf(dev))).decode()


def op_begin(dev, c, req):
    try:
        return _begin(dev, c, req)
    except ProtoError:
        if dev.mode == "update" and dev.session is None:
            # the boot a lean begin restarted into for this image
            # (slots.restart_for_update), and the image refused: back to the app
            dev.reset_ms = 300
        raise


def _begin(dev, c, req):
    size = field(req, "size", int, required=True)
    sha = field(req, "sha256", str, required=True).lower()
    try:
        if len(binascii.unhexlify(sha)) != 32:
            raise ValueError()
    except ValueError:
        raise ProtoError(E_BAD_REQUEST, "\"sha256\" must be 64 hex digits")
    want = field(req, "slot", str, "inactive")
    ver = field(req, "version", str)
    down = field(req, "allow_downgrade", bool, False)
    client = field(req, "client", str)
    if client is not None and not 0 < len(client) <= 64:
        raise ProtoError(E_BAD_REQUEST, "\"client\" must be 1 to 64 characters")
    v = None if ver is None else lineproto.parse_version(ver)  # bad_request when malformed
    may_update(dev, c, client)
    sl = dev.sl
    run = sl.running
    if run is not None and sl.slot(run)["sha256"] == sha and not field(req, "force", bool, False):
        # written again into the other slot, it would replace the rollback copy
        raise ProtoError(E_INCORRECT_STATE, "this image already runs (slot %s): nothing to do (force: true "
                                            "installs it again)" % name(run))
    i = sl.inactive()
    if want != "inactive" and lineproto.slot_index(want) != i:
        raise ProtoError(E_INCORRECT_STATE, "slot %s is in use; the inactive slot is %s" % (want, name(i)))
    cur = None if down else older(dev, i, v)
    if cur:
        raise ProtoError(E_VERSION_REFUSED, "version %s is older than the active %s (allow_downgrade)" % (ver, cur))
    kid = field(req, "key_id", str)
    if kid is not None and slots.trusting():
        # the host names the image's signing key: an image that commit would
        # refuse for its key is refused before its bytes are sent
        import mpota_trust as trust
        trust.check_signer(trust.load(), trust.unhex(kid, 32, "\"key_id\"") if kid else b"")
    held = _held(field(req, "held", str), size)
    src = lineproto.slot_index(field(req, "held_from", str, name(i)))
    restart_if_lean(dev, i, size)
    import mpota_upload as upload
    if src != i:  # another slot's sectors (the running one): a plain upload that copies them
        if sl.file_size(src) <= 0:
            held = None
        off = sl.begin(i, size, sha, ver)
    else:
        if held is not None and (sl.resumable(i, size, sha) or not sl.begin_reuse(i, size, sha, ver)):
            held = None  # a plain upload: it resumes from its watermark, or there is no room to keep the old bytes
        off = 0 if held is not None else sl.begin(i, size, sha, ver)
        src = None
    s = upload.open_session(sl, upload.NATIVE, c, i, size, sha, off, down, held,
                            None if held is None else _buf(dev), src)
    s.client = client
    if field(req, "deflate", bool, False):
        try:
            import deflate  # noqa: F401 (since MicroPython 1.21; a firmware may leave it out)
        except ImportError:
            raise ProtoError(E_BAD_REQUEST, "this firmware has no deflate module: send DATA as it is")
        s.z = bytearray(upload.SECTOR)
    if held is not None and src is None:
        s.w.fill()  # the sectors kept from the start (no I/O): the offset a re-opened upload resumes at
    dev.open_session(s)
    # (c: a dispatch.Peer, or the MQTT client a pull writes for)
    r = {"slot": name(i), "offset": s.w.pos, "max_data": c.max_data,
         "window": lineproto.WINDOW}
    if held is not None:
        r["held"] = binascii.hexlify(held).decode()  # what the device keeps (a sector its file lacks is sent)
    return r


def _held(v, size):
    # begin's "held": hex of one bit per 4 KiB sector of the image (bit k & 7
    # of byte k >> 3) that the peer found in the sectors op's hashes
    if v is None:
        return None
    try:
        b = bytearray(binascii.unhexlify(v))
    except ValueError:
        b = None
    n = (size + 8 * slotio.CHUNK - 1) // (8 * slotio.CHUNK)
    if b is None or len(b) != n:
        raise ProtoError(E_BAD_REQUEST, "\"held\" must be %d hex digits: one bit per 4 KiB sector" % (2 * n))
    return b


def op_sectors(dev, c, req):
    """What a slot holds now: the first 8 bytes of the SHA-256 of each 4 KiB
    sector of its file, from sector `first` (at most `count`, 1-64), for the
    peer to tell which sectors of a new image the device has already (begin
    "held", "held_from"). The slot: `slot` ("target": the one an upload goes
    to), else the one that runs (else the active one): it holds the last
    build, and an upload never writes it; else the slot an upload would go to."""
    first = lineproto.int_range(req, "first", 0, 0xFFFF, 0)
    count = lineproto.int_range(req, "count", 1, 64, 64)
    sl = dev.sl
    want = field(req, "slot", str)
    if want == "target":
        i = sl.inactive()  # where an upload goes
    elif want is not None:
        i = lineproto.slot_index(want)
    else:
        i = sl.running if sl.running is not None else sl.active()
        if i is None:
            i = sl.inactive()
    import mpota_upload as upload
    size, h = upload.sector_hashes(sl, i, first, count, _buf(dev))
    return {"slot": name(i), "size": size, "sector": upload.SECTOR, "first": first,
            "hashes": binascii.hexlify(h).decode(), "target": name(sl.inactive())}


def _own(dev, c):
    import mpota_upload as upload
    s = dev.session
    if s is None or s.owner is not c or s.kind != upload.NATIVE:
        raise ProtoError(E_INCORRECT_STATE, "no update session on this connection (begin first)")
    return s


def op_commit(dev, c, req):
    s = _own(dev, c)
    if s.w.pos < s.size:
        raise ProtoError(E_INCORRECT_STATE, "%d of %d bytes received" % (s.w.pos, s.size))
    i, size, want, down = s.slot, s.size, s.sha, s.allow_down
    s = None  # the session's buffers go before the slot is read twice
    sl = dev.sl
    dev.close_session()  # closes (syncs) the sector being written
    buf = _buf(dev)  # one scratch for both reads of the slot
    sha = digest_hex(dev, i, size, buf)
    if sha != want:
        sl.erase(i)
        raise ProtoError(E_VERIFY_FAILED, "slot %s holds sha256 %s, expected %s: upload again" % (name(i), sha, want))
    try:
        ver, is_app, proof = validate(dev, i, size, down, buf)
    except ProtoError:
        sl.finish(i, sha, None, False)  # stored, not bootable
        raise
    finally:
        dev.sample_mem()  # the peak of an update: hashing and the image check
    sl.finish(i, sha, ver, is_app, proof)
    return {"slot": name(i), "sha256": sha, "version": ver, "state": sl.state(i)}


def op_abort(dev, c, req):
    s = _own(dev, c)
    dev.close_session()
    return {"slot": name(s.slot), "offset": s.w.pos}
