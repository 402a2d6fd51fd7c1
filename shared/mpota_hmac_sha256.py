# HMAC-SHA256 (RFC 2104) from hashlib alone: the board has hashlib.sha256 but
# no hmac module (and no sha256().copy()), so the pads are hashed each time.
# Also the mutual challenge-response MACs of docs/protocol.md section 2.2.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import uhashlib as hashlib
except ImportError:  # CPython
    import hashlib

_BLOCK = 64


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = bytearray(_BLOCK)
    k[:len(key)] = key
    ipad = bytearray(_BLOCK)
    opad = bytearray(_BLOCK)
    for i in range(_BLOCK):
        ipad[i] = k[i] ^ 0x36
        opad[i] = k[i] ^ 0x5C
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def compare_digest(a, b):
    """Constant-time equality: the time depends on the length only, not on where bytes differ."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def derive(label, role, key, device_id, dev_nonce, host_nonce):
    """HMAC-SHA256(key, label|role|device|dev_nonce host_nonce): the auth MACs
    (label mpota-auth-v1) and the session keys (mpota-session-v1, session.py)."""
    if isinstance(device_id, str):
        device_id = device_id.encode()
    return hmac_sha256(key, label + b"|" + role + b"|" + bytes(device_id) + b"|"
                       + bytes(dev_nonce) + bytes(host_nonce))


def host_mac(key, device_id, dev_nonce, host_nonce):
    """What the host sends to prove it holds the device key."""
    return derive(b"mpota-auth-v1", b"host", key, device_id, dev_nonce, host_nonce)


def device_mac(key, device_id, dev_nonce, host_nonce):
    """What the device answers to prove it holds the same key (mutual auth)."""
    return derive(b"mpota-auth-v1", b"device", key, device_id, dev_nonce, host_nonce)
