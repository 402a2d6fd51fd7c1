# ed25519: Ed25519 signature VERIFICATION (RFC 8032, section 5.1.7), no
# signing, in plain MicroPython big ints (mpz on the board). Loaded only to
# check an image or a trust statement, then dropped (docs/security.md).
#
#   verify(pub32, msg, sig64) -> True/False
#
# It computes R' = [S]B + [k](-A) with k = SHA-512(R || A || msg) mod L and
# accepts when R' encodes to the 32 bytes R of the signature (the
# cofactorless check that ref10, libsodium and OpenSSL make; encoding is
# canonical, so a non-canonical R never matches). S >= L, a public key whose
# y >= p or that is not on the curve, and x = 0 with the sign bit set are
# refused.
#
# Speed (the RP2040 has no crypto hardware): points in extended twisted
# Edwards coordinates (X:Y:Z:T), x = X/Z, y = Y/Z, xy = T/Z; one interleaved
# (Straus) double-and-add over both scalars in signed sliding windows (odd
# digits -15..15, tables of 1,3,..,15 times B and -A); T is computed only
# when an addition follows; the one inversion and the square root use the
# addition chains of ref10 over a multiply that folds 2^256 = 38 instead of
# dividing.
#
# SHA-512: MicroPython's hashlib has none (extmod/modhashlib.c offers sha256,
# sha1 and md5 only), so a compact one-shot SHA-512 is here, used only when
# hashlib lacks sha512 (CPython has it; the tests run both).
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import uhashlib as hashlib
    import ustruct as struct
    from uarray import array
except ImportError:  # CPython (tests/test_trust.py, test_ed25519.py)
    import hashlib
    import struct
    from array import array

_hashlib_sha512 = getattr(hashlib, "sha512", None)  # None on every MicroPython build

_P = (1 << 255) - 19
_L = (1 << 252) + 27742317777372353535851937790883648493
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = _D * 2 % _P
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960


def _mul(a, b):
    # a*b, congruent mod p, |result| < 2^257 for |a|, |b| < 2^270: two folds
    # of 2^256 = 38 (mod p) cost less than `% p` (an mpz division: about 80 vs
    # 110 us on a Cortex-M0 at 125 MHz, measured under qemu -icount).
    c = a * b
    c = (c & 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF) + (c >> 256) * 38
    return (c & 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF) + (c >> 256) * 38


def _mul1(a, b):
    # a*b with one fold: |result| < 2^267 for |a|, |b| < 2^260, for products
    # that only feed sums going into _mul (which takes up to 2^270)
    c = a * b
    return (c & 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF) + (c >> 256) * 38


def _sqn(x, n):
    for _ in range(n):
        x = _mul(x, x)
    return x


def _pow250(z):
    # (z^(2^250-1), z^11): the common head of ref10's inversion and square-root
    # chains; 249 squarings in Python beat the built-in pow(), which divides
    z2 = _mul(z, z)
    z9 = _mul(z, _sqn(z2, 2))
    z11 = _mul(z2, z9)
    t = _mul(z9, _mul(z11, z11))  # 2^5 - 1
    t10 = _mul(_sqn(t, 5), t)  # 2^10 - 1
    t20 = _mul(_sqn(t10, 10), t10)
    t50 = _mul(_sqn(_mul(_sqn(t20, 20), t20), 10), t10)
    t100 = _mul(_sqn(t50, 50), t50)
    return _mul(_sqn(_mul(_sqn(t100, 100), t100), 50), t50), z11


def _inv(z):
    t, z11 = _pow250(z)
    return _mul(_sqn(t, 5), z11) % _P  # z^(2^255 - 21) = z^(p-2)


def _recover_x(y, sign):
    # x from y and the sign bit (RFC 8032 5.1.3), or None
    p = _P
    y2 = _mul(y, y)
    u = y2 - 1
    v = _mul(_D, y2) + 1
    v3 = _mul(_mul(v, v), v)
    uv3 = _mul(u, v3)
    uv7 = _mul(uv3, _mul(v3, v))
    t, _ = _pow250(uv7)
    x = _mul(uv3, _mul(_sqn(t, 2), uv7)) % p  # u v^3 (u v^7)^((p-5)/8)
    vx2 = _mul(v, _mul(x, x)) % p
    u %= p
    if vx2 != u:
        if vx2 != (p - u) % p:
            return None
        x = x * _SQRT_M1 % p
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = p - x
    return x


def _table(x, y):
    # odd multiples 1,3,..,15 of the affine point (x, y), each in the form an
    # addition wants: (Y-X, Y+X, 2d*T, 2Z)
    mul = _mul
    d2 = _D2
    X, Y, Z, T = x, y, 1, mul(x, y)
    out = [(Y - X, Y + X, mul(T, d2), 2)]
    X2, Y2, Z2, e, h = _dbl(X, Y, Z)
    q = (Y2 - X2, Y2 + X2, mul(mul(e, h), d2), 2 * Z2)  # 2P
    for _ in range(7):  # P += 2P
        X, Y, Z, T = _add(X, Y, Z, T, q)
        out.append((Y - X, Y + X, mul(T, d2), 2 * Z))
    return out


def _dbl(X, Y, Z):
    # 2(X:Y:Z) -> (X, Y, Z, e, h) (dbl-2008-hwcd, a = -1); T = e*h, left to
    # the caller: it is needed only when an addition follows
    mul = _mul
    mul1 = _mul1
    a = mul1(X, X)
    b = mul1(Y, Y)
    c = mul1(Z, Z)
    e = mul1(X + Y, X + Y) - a - b
    g = b - a
    f = g - c - c
    h = -a - b
    return mul(e, f), mul(g, h), mul(f, g), e, h


def _add(X, Y, Z, T, q):
    # (X:Y:Z:T) + q, q = (Y-X, Y+X, 2d*T, 2Z) (add-2008-hwcd-3, a = -1)
    mul = _mul
    mul1 = _mul1
    a = mul1(Y - X, q[0])
    b = mul1(Y + X, q[1])
    c = mul1(T, q[2])
    d = mul1(Z, q[3])
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return mul(e, f), mul(g, h), mul(f, g), mul(e, h)


def _slide(n):
    # n (< 2^253) as signed odd digits in -15..15, little-endian, 256 of them
    # (ref10's slide(): a sliding window, small ints only), in 256 bytes made
    # at once (a list grew in pieces of up to 1 KB, beside an app's heap)
    raw = n.to_bytes(32, "little")
    r = array("b", bytes(256))
    for i in range(256):
        r[i] = (raw[i >> 3] >> (i & 7)) & 1
    for i in range(256):
        if not r[i]:
            continue
        for w in range(1, 7):
            if i + w >= 256:
                break
            if not r[i + w]:
                continue
            add = r[i + w] << w
            if r[i] + add <= 15:
                r[i] += add
                r[i + w] = 0
            elif r[i] - add >= -15:
                r[i] -= add
                for j in range(i + w, 256):
                    if not r[j]:
                        r[j] = 1
                        break
                    r[j] = 0
            else:
                break
    return r


def _pick(tab, digit):
    # digit * Q from the table of odd multiples; -Q: swap Y-X and Y+X, negate 2dT
    if digit > 0:
        return tab[digit >> 1]
    q = tab[(-digit) >> 1]
    return (q[1], q[0], -q[2], q[3])


def _scalarmult2(s, k, ax, ay):
    # [s]B + [k](ax, ay) -> (X, Y, Z); s, k < 2^253
    mul = _mul
    tb = _table(_BX, _BY)
    ta = _table(ax, ay)
    ds = _slide(s)
    dk = _slide(k)
    i = 255
    while i >= 0 and not ds[i] and not dk[i]:
        i -= 1
    X, Y, Z, T = 0, 1, 1, 0
    while i >= 0:
        u = ds[i]
        v = dk[i]
        X, Y, Z, e, h = _dbl(X, Y, Z)
        if u or v:
            T = mul(e, h)
            if u:
                X, Y, Z, T = _add(X, Y, Z, T, _pick(tb, u))
            if v:
                X, Y, Z, T = _add(X, Y, Z, T, _pick(ta, v))
        i -= 1
    return X, Y, Z


def verify(pub, msg, sig):
    """True when `sig` (64 bytes) is a valid Ed25519 signature of `msg`
    (bytes) by the public key `pub` (32 bytes); False otherwise."""
    if len(pub) != 32 or len(sig) != 64:
        return False
    p = _P
    y = int.from_bytes(pub, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= p:
        return False
    x = _recover_x(y, sign)
    if x is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    k = int.from_bytes(sha512(bytes(sig[:32]) + bytes(pub) + bytes(msg)), "little") % _L
    X, Y, Z = _scalarmult2(s, k, p - x, y)  # [S]B - [k]A
    zi = _inv(Z)
    x = X * zi % p
    y = Y * zi % p
    return (y | (x & 1) << 255).to_bytes(32, "little") == bytes(sig[:32])


# -- SHA-512 (FIPS 180-4), one shot, for builds whose hashlib lacks it --------

_K = (
    b"\x42\x8a\x2f\x98\xd7\x28\xae\x22\x71\x37\x44\x91\x23\xef\x65\xcd\xb5\xc0\xfb\xcf\xec\x4d\x3b\x2f"
    b"\xe9\xb5\xdb\xa5\x81\x89\xdb\xbc\x39\x56\xc2\x5b\xf3\x48\xb5\x38\x59\xf1\x11\xf1\xb6\x05\xd0\x19"
    b"\x92\x3f\x82\xa4\xaf\x19\x4f\x9b\xab\x1c\x5e\xd5\xda\x6d\x81\x18\xd8\x07\xaa\x98\xa3\x03\x02\x42"
    b"\x12\x83\x5b\x01\x45\x70\x6f\xbe\x24\x31\x85\xbe\x4e\xe4\xb2\x8c\x55\x0c\x7d\xc3\xd5\xff\xb4\xe2"
    b"\x72\xbe\x5d\x74\xf2\x7b\x89\x6f\x80\xde\xb1\xfe\x3b\x16\x96\xb1\x9b\xdc\x06\xa7\x25\xc7\x12\x35"
    b"\xc1\x9b\xf1\x74\xcf\x69\x26\x94\xe4\x9b\x69\xc1\x9e\xf1\x4a\xd2\xef\xbe\x47\x86\x38\x4f\x25\xe3"
    b"\x0f\xc1\x9d\xc6\x8b\x8c\xd5\xb5\x24\x0c\xa1\xcc\x77\xac\x9c\x65\x2d\xe9\x2c\x6f\x59\x2b\x02\x75"
    b"\x4a\x74\x84\xaa\x6e\xa6\xe4\x83\x5c\xb0\xa9\xdc\xbd\x41\xfb\xd4\x76\xf9\x88\xda\x83\x11\x53\xb5"
    b"\x98\x3e\x51\x52\xee\x66\xdf\xab\xa8\x31\xc6\x6d\x2d\xb4\x32\x10\xb0\x03\x27\xc8\x98\xfb\x21\x3f"
    b"\xbf\x59\x7f\xc7\xbe\xef\x0e\xe4\xc6\xe0\x0b\xf3\x3d\xa8\x8f\xc2\xd5\xa7\x91\x47\x93\x0a\xa7\x25"
    b"\x06\xca\x63\x51\xe0\x03\x82\x6f\x14\x29\x29\x67\x0a\x0e\x6e\x70\x27\xb7\x0a\x85\x46\xd2\x2f\xfc"
    b"\x2e\x1b\x21\x38\x5c\x26\xc9\x26\x4d\x2c\x6d\xfc\x5a\xc4\x2a\xed\x53\x38\x0d\x13\x9d\x95\xb3\xdf"
    b"\x65\x0a\x73\x54\x8b\xaf\x63\xde\x76\x6a\x0a\xbb\x3c\x77\xb2\xa8\x81\xc2\xc9\x2e\x47\xed\xae\xe6"
    b"\x92\x72\x2c\x85\x14\x82\x35\x3b\xa2\xbf\xe8\xa1\x4c\xf1\x03\x64\xa8\x1a\x66\x4b\xbc\x42\x30\x01"
    b"\xc2\x4b\x8b\x70\xd0\xf8\x97\x91\xc7\x6c\x51\xa3\x06\x54\xbe\x30\xd1\x92\xe8\x19\xd6\xef\x52\x18"
    b"\xd6\x99\x06\x24\x55\x65\xa9\x10\xf4\x0e\x35\x85\x57\x71\x20\x2a\x10\x6a\xa0\x70\x32\xbb\xd1\xb8"
    b"\x19\xa4\xc1\x16\xb8\xd2\xd0\xc8\x1e\x37\x6c\x08\x51\x41\xab\x53\x27\x48\x77\x4c\xdf\x8e\xeb\x99"
    b"\x34\xb0\xbc\xb5\xe1\x9b\x48\xa8\x39\x1c\x0c\xb3\xc5\xc9\x5a\x63\x4e\xd8\xaa\x4a\xe3\x41\x8a\xcb"
    b"\x5b\x9c\xca\x4f\x77\x63\xe3\x73\x68\x2e\x6f\xf3\xd6\xb2\xb8\xa3\x74\x8f\x82\xee\x5d\xef\xb2\xfc"
    b"\x78\xa5\x63\x6f\x43\x17\x2f\x60\x84\xc8\x78\x14\xa1\xf0\xab\x72\x8c\xc7\x02\x08\x1a\x64\x39\xec"
    b"\x90\xbe\xff\xfa\x23\x63\x1e\x28\xa4\x50\x6c\xeb\xde\x82\xbd\xe9\xbe\xf9\xa3\xf7\xb2\xc6\x79\x15"
    b"\xc6\x71\x78\xf2\xe3\x72\x53\x2b\xca\x27\x3e\xce\xea\x26\x61\x9c\xd1\x86\xb8\xc7\x21\xc0\xc2\x07"
    b"\xea\xda\x7d\xd6\xcd\xe0\xeb\x1e\xf5\x7d\x4f\x7f\xee\x6e\xd1\x78\x06\xf0\x67\xaa\x72\x17\x6f\xba"
    b"\x0a\x63\x7d\xc5\xa2\xc8\x98\xa6\x11\x3f\x98\x04\xbe\xf9\x0d\xae\x1b\x71\x0b\x35\x13\x1c\x47\x1b"
    b"\x28\xdb\x77\xf5\x23\x04\x7d\x84\x32\xca\xab\x7b\x40\xc7\x24\x93\x3c\x9e\xbe\x0a\x15\xc9\xbe\xbc"
    b"\x43\x1d\x67\xc4\x9c\x10\x0d\x4c\x4c\xc5\xd4\xbe\xcb\x3e\x42\xb6\x59\x7f\x29\x9c\xfc\x65\x7e\x2a"
    b"\x5f\xcb\x6f\xab\x3a\xd6\xfa\xec\x6c\x44\x19\x8c\x4a\x47\x58\x17"
)


def sha512(data):
    """SHA-512 digest (64 bytes) of `data`: hashlib's when it has one."""
    if _hashlib_sha512 is not None:
        return _hashlib_sha512(data).digest()
    return _sha512(data)


def _sha512(data):
    m = 0xFFFFFFFFFFFFFFFF
    n = len(data)
    data = bytes(data) + b"\x80" + bytes((111 - n) % 128) + (n * 8).to_bytes(16, "big")
    hs = [0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
          0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179]
    w = [0] * 80  # the schedule, made once (grown by appends it was up to 5 ever larger pieces)
    for off in range(0, len(data), 128):
        w[:16] = struct.unpack_from(">16Q", data, off)
        for t in range(16, 80):
            x = w[t - 15]
            y = w[t - 2]
            s0 = ((x >> 1 | x << 63) ^ (x >> 8 | x << 56) ^ x >> 7) & m
            s1 = ((y >> 19 | y << 45) ^ (y >> 61 | y << 3) ^ y >> 6) & m
            w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & m
        a, b, c, d, e, f, g, h = hs
        for t in range(80):
            t1 = (h + (((e >> 14 | e << 50) ^ (e >> 18 | e << 46) ^ (e >> 41 | e << 23)) & m)
                  + (g ^ (e & (f ^ g))) + struct.unpack_from(">Q", _K, t * 8)[0] + w[t])
            t2 = (((a >> 28 | a << 36) ^ (a >> 34 | a << 30) ^ (a >> 39 | a << 25)) & m) + ((a & b) | (c & (a | b)))
            h = g
            g = f
            f = e
            e = (d + t1) & m
            d = c
            c = b
            b = a
            a = (t1 + t2) & m
        hs = [(v + u) & m for v, u in zip(hs, (a, b, c, d, e, f, g, h))]
    return b"".join(v.to_bytes(8, "big") for v in hs)
