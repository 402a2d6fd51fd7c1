# auth: the HMAC-SHA256 challenge-response of docs/protocol.md section 2.2.
# The key never leaves the device: it is not logged, not reported, not
# readable through any op (it is outside the slots). The boot manager
# compiles this module only when auth is on, and reads the key itself.
import ubinascii as binascii

from mpota_hmac_sha256 import host_mac, device_mac, compare_digest


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
    want = host_mac(key, device_id, dev_nonce, hn)
    if not compare_digest(want, mac):
        return None
    return device_mac(key, device_id, dev_nonce, hn)
