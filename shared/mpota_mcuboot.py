# mcuboot: parse and verify MCUboot images (as `imgtool create` lays them out)
# on the device, streaming from a file through one small reused buffer.
#
#   [header 32 B][pad to hdr_size][body img_size B]
#   [protected TLVs: info 0x6908 + TLVs, protect_tlv_size B, optional]
#   [TLVs: info 0x6907, total u16 (info included), then type u8, pad u8, len u16, value]
#
# IMAGE_TLV_SHA256 (0x10) = sha256(everything before the unprotected TLV info).
# Signatures (ED25519 0x24, ...) sign that digest; they are located here and
# returned, and checked elsewhere.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import uhashlib as hashlib
    import uio as io
    import ustruct as struct
except ImportError:  # CPython
    import hashlib
    import io
    import struct

MAGIC = 0x96F3B83D
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_SHA256 = 0x10
TLV_ED25519 = 0x24
TLV_SEC_CNT = 0x50  # protected: u32 security counter (imgtool --security-counter)
SIG_TLVS = (0x20, 0x22, 0x23, 0x24)  # RSA2048, ECDSASIG, RSA3072, ED25519
F_UNSUPPORTED = 0x0000004 | 0x0000008 | 0x0000200 | 0x0000400  # encrypted, compressed
E_BAD_IMAGE = 0x0D  # native error number (docs/protocol.md section 3)
HDR_FMT = "<IIHHIIBBHI"  # magic load_addr hdr_size ptlv img_size flags maj min rev build



class ImageError(Exception):
    def __init__(self, message, code=E_BAD_IMAGE):
        super().__init__(message)
        self.code = code
        self.message = message


def _read(f, pos, n, buf):
    # exactly n bytes at pos into buf[:n] (n <= len(buf)) or ImageError
    f.seek(pos)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(mv[got:n])
        if not k:
            raise ImageError("truncated image: needed %d bytes at %d" % (n, pos + got))
        got += k
    return mv


def parse_header(data):
    """The 32-byte header as a dict (no checks beyond the magic)."""
    magic, load, hdr, ptlv, size, flags, maj, mnr, rev, build = struct.unpack_from(HDR_FMT, data, 0)
    if magic != MAGIC:
        raise ImageError("not an MCUboot image: magic 0x%08x, expected 0x%08x" % (magic, MAGIC))
    return {"load_addr": load, "hdr_size": hdr, "protect_tlv_size": ptlv, "img_size": size,
            "flags": flags, "version": (maj, mnr, rev, build),
            "version_str": "%d.%d.%d+%d" % (maj, mnr, rev, build)}


def verify(src, offset=0, size=None, feed=None, buf=None):
    """Check the image at `offset` of `src` (a path, an open binary file, or
    the image's bytes):
    header, TLV layout and SHA-256. `size`: bytes available from `offset`
    (bounds every field). Returns the header dict plus tlv_off, total_size,
    sha256 (bytes, from the TLV), has_signature, sig_type, signature, keyhash
    (sha256 of the signing key as imgtool embeds it: KEYHASH, or hashed from
    PUBKEY), security_counter (int from the protected SEC_CNT TLV, or None),
    body_is_littlefs. Raises ImageError (.code = 0x0D bad_image).
    `feed`: called every 16 KiB hashed (the device's hal.wdt_feed: a full
    slot hashes for 0.5-0.8 s on the RP2040). `buf`: scratch of at least
    1024 bytes (the device's commit passes the connection's; else one is
    made for the call)."""
    if isinstance(src, str):
        with open(src, "rb") as f:
            if size is None:
                f.seek(0, 2)
                size = f.tell() - offset
            return verify(f, offset, size, feed, buf)
    if isinstance(src, (bytes, bytearray, memoryview)):  # host side: an image in memory
        src = io.BytesIO(src)
    f = src
    if size is None:
        f.seek(0, 2)
        size = f.tell() - offset
    if buf is None:
        buf = bytearray(1024)  # per call: a resident buffer would sit idle between commits
    info = parse_header(_read(f, offset, 32, buf))
    hdr = info["hdr_size"]
    tlv_off = hdr + info["img_size"]
    if info["flags"] & F_UNSUPPORTED:
        raise ImageError("encrypted or compressed images are not supported (flags 0x%x)" % info["flags"])
    if hdr < 32 or tlv_off + 4 > size:
        raise ImageError("truncated image: header says %d + %d bytes + TLVs, %d stored"
                         % (hdr, info["img_size"], size))

    # TLV areas: optional protected one (hashed), then the unprotected one.
    mv = _read(f, offset + tlv_off, 4, buf)
    magic, total = struct.unpack_from("<HH", mv, 0)
    ptlv = info["protect_tlv_size"]
    prot_end = tlv_off
    if magic == TLV_PROT_INFO_MAGIC:
        if total != ptlv:
            raise ImageError("protected TLV area is %d bytes, header says %d" % (total, ptlv))
        prot_end = tlv_off + total
        if prot_end + 4 > size:
            raise ImageError("truncated image: protected TLVs run past the end")
        mv = _read(f, offset + prot_end, 4, buf)
        magic, total = struct.unpack_from("<HH", mv, 0)
    elif ptlv:
        raise ImageError("header announces %d bytes of protected TLVs, none found" % ptlv)
    if magic != TLV_INFO_MAGIC:
        raise ImageError("no TLV area: magic 0x%04x at %d, expected 0x%04x" % (magic, prot_end, TLV_INFO_MAGIC))
    end = prot_end + total
    if total < 4 or end > size:
        raise ImageError("truncated image: TLV area of %d bytes at %d runs past the %d bytes stored"
                         % (total, prot_end, size))

    sha = sig = keyhash = cnt = None
    sig_type = None
    # the protected area yields only the security counter (it is hashed, so
    # signed); the unprotected one the digest, signature and key
    for p, stop in ((tlv_off + 4, prot_end), (prot_end + 4, end)):
        while p < stop:  # every step moves p forward by >= 4, so this ends
            if p + 4 > stop:
                raise ImageError("TLV at %d crosses the end of the TLV area" % p)
            mv = _read(f, offset + p, 4, buf)
            t, ln = struct.unpack_from("<BxH", mv, 0)
            if p + 4 + ln > stop:
                raise ImageError("TLV 0x%02x at %d (%d bytes) crosses the end of the TLV area" % (t, p, ln))
            if stop == prot_end:
                if t == TLV_SEC_CNT and ln == 4:
                    cnt = struct.unpack_from("<I", _read(f, offset + p + 4, 4, buf), 0)[0]
            elif t == TLV_SHA256:
                if ln != 32:
                    raise ImageError("SHA256 TLV of %d bytes" % ln)
                sha = bytes(_read(f, offset + p + 4, 32, buf)[:32])
            elif t == TLV_KEYHASH and ln == 32:
                keyhash = bytes(_read(f, offset + p + 4, 32, buf)[:32])
            elif t == TLV_PUBKEY and ln <= 128:  # --public-key-format full: the same key id
                keyhash = hashlib.sha256(_read(f, offset + p + 4, ln, buf)[:ln]).digest()
            elif t in SIG_TLVS and ln <= 512:
                sig_type = t
                sig = bytes(_read(f, offset + p + 4, ln, buf)[:ln])
            p += 4 + ln
    if sha is None:
        raise ImageError("no SHA256 TLV (0x10): cannot check the image")

    # SHA-256 over header + body + protected TLVs, full buffers where possible
    h = hashlib.sha256()
    f.seek(offset)
    left = prot_end
    n = len(buf)
    k = 0
    while left >= n:
        if f.readinto(buf) != n:
            raise ImageError("truncated image while hashing")
        h.update(buf)
        left -= n
        k += 1
        if feed is not None and not k & 15:
            feed()
    if left:
        mv = _read(f, offset + prot_end - left, left, buf)
        h.update(mv[:left])
    digest = h.digest()
    if digest != sha:
        raise ImageError("SHA-256 mismatch: the image is corrupt (TLV %s, computed %s)"
                         % (_hex(sha), _hex(digest)))

    lfs = False
    if info["img_size"] >= 16:
        lfs = bytes(_read(f, offset + hdr + 8, 8, buf)[:8]) == b"littlefs"
    info["tlv_off"] = tlv_off
    info["total_size"] = end
    info["sha256"] = sha
    info["has_signature"] = sig is not None
    info["sig_type"] = sig_type
    info["signature"] = sig
    info["keyhash"] = keyhash
    info["security_counter"] = cnt
    info["body_is_littlefs"] = lfs
    return info


def _hex(b):
    return "".join("%02x" % x for x in b)
