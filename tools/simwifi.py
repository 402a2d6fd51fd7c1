# simwifi: the simulator's Wi-Fi station link (tools/sim.py --wifi), bound
# into simhal by simhal.configure() only then, so a simulator without --wifi
# does not carry it in its heap.
#
# The control file STATE/wifi (tests rewrite it in place) says what the
# access point and the radio do, by its first byte:
#   "up"    the access point is on: a join succeeds;
#   "down"  it is off: a join fails (no_ap), an up link drops;
#   "error" the radio fails: a join raises OSError(1), EPERM, as rp2's
#           wlan.active(True) does when the CYW43 does not start; once a
#           join has started the radio (hal._wlan on a board), so does every
#           other radio call (state, ip, leave). Before that, wlan_state()
#           is "down" without a radio call, as on a board.
# The file is opened while the host's files are still mounted: afterwards
# the device sees only its flash, and this descriptor is the way out.
_wifi = [None, bytearray(1), "127.0.0.1"]  # the control file, a 1-byte read buffer, the address
_link = "down"  # up | down | no_ap (hal.wlan_state()'s words)
_active = False  # a join got the radio going (hal.py: _wlan is set)


def configure(path, host):
    _wifi[0] = open(path, "rb")  # noqa: SIM115 (open for the device's life)
    _wifi[2] = host


def _ap():
    # the control file's first byte: 0x64 "d"own, 0x65 "e"rror, else up
    f, b, _ = _wifi
    f.seek(0)
    c = b[0] if f.readinto(b) == 1 else 0
    if c == 0x65:
        raise OSError(1)  # EPERM
    return c != 0x64


def wlan_join(cfg):
    global _link, _active
    on = _ap()
    _active = True
    _link = "up" if on else "no_ap"


def wlan_state():
    global _link
    if not _active:
        return "down"
    if not _ap() and _link == "up":
        _link = "down"  # the access point went: the board sees the link drop
    return _link


def wlan_ip():
    if _active:
        _ap()
    return _wifi[2] if _link == "up" else None


RSSI = -58  # dBm: the simulated link's fixed signal


def wlan_rssi():
    return RSSI if _link == "up" else None


def wlan_leave():
    global _link
    _link = "down"
    if _active:
        _ap()
