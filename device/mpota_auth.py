# auth: the HMAC-SHA256 challenge-response of docs/protocol.md section 2.2.
# The key never leaves the device: it is not logged, not reported, not
# readable through any op (it is outside the slots). The boot manager
# compiles this module only when auth is on, and reads the key itself.
#
# Challenges (the device nonces of hello) are not tied to the connection that
# asked: one may be answered on another connection (`auth` with
# "challenge"), once. So a peer whose connection a flood of strangers pushed
# out between hello and auth (connpolicy.admit) answers on a new connection
# at once, with no second round trip to lose. A challenge is
# counter(4 bytes) + SHA-256(boot secret + counter)[:12]: the device keeps
# no list of them, only dev.chal = [secret, next counter, used bits of the
# last WINDOW counters] (60 bytes of heap, made at the first hello).
import uhashlib as hashlib
import ubinascii as binascii
import uos as os

WINDOW = 128  # challenges issued after this many newer ones are expired


def _cookie(secret, ctr):
    c = bytes((ctr >> 24 & 0xFF, ctr >> 16 & 0xFF, ctr >> 8 & 0xFF, ctr & 0xFF))
    h = hashlib.sha256(secret)
    h.update(c)
    return c + h.digest()[:12]


def challenge(dev):
    """A new 16-byte device nonce for hello."""
    st = dev.chal
    if st is None:
        st = dev.chal = [os.urandom(16), 0, bytearray(WINDOW // 8)]
    ctr = st[1]
    st[1] = (ctr + 1) & 0x7FFFFFFF
    st[2][(ctr % WINDOW) >> 3] &= ~(1 << (ctr & 7))  # not used yet
    return _cookie(st[0], ctr)


def redeem(dev, nonce):
    """True when `nonce` is one of the last WINDOW challenges and was never
    redeemed; it is spent from now on (one auth attempt per challenge,
    whatever its outcome)."""
    st = dev.chal
    if st is None or nonce is None or len(nonce) != 16:
        return False
    ctr = (nonce[0] << 24) | (nonce[1] << 16) | (nonce[2] << 8) | nonce[3]
    if not 0 < (st[1] - ctr) & 0x7FFFFFFF <= WINDOW or _cookie(st[0], ctr) != nonce:
        return False
    i = (ctr % WINDOW) >> 3
    bit = 1 << (ctr & 7)
    if st[2][i] & bit:
        return False
    st[2][i] |= bit
    return True


def check(key, device_id, dev_nonce, host_nonce_hex, mac_hex):
    """The device's MAC (bytes) when the host's MAC is right, else None."""
    if key is None or dev_nonce is None:
        return None
    try:
        hn = binascii.unhexlify(host_nonce_hex)
        mac = binascii.unhexlify(mac_hex)
    except (ValueError, TypeError):
        return None
    if len(hn) < 8 or len(hn) > 64:
        return None
    from mpota_hmac_sha256 import host_mac, device_mac, compare_digest
    want = host_mac(key, device_id, dev_nonce, hn)
    if not compare_digest(want, mac):
        return None
    return device_mac(key, device_id, dev_nonce, hn)
