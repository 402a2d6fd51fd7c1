# simwifi: the simulator's Wi-Fi station link (tools/sim.py --wifi), bound
# into simhal by simhal.configure() only then, so a simulator without --wifi
# does not carry it in its heap.
#
# The access point is "off" while the control file STATE/wifi starts with
# "down" (tests rewrite it in place: "down", "up"). The file is opened while
# the host's files are still mounted: afterwards the device sees only its
# flash, and this descriptor is the way out.
_wifi = [None, bytearray(1), "127.0.0.1"]  # the control file, a 1-byte read buffer, the address
_link = "down"  # up | down | no_ap (hal.wlan_state()'s words)


def configure(path, host):
    _wifi[0] = open(path, "rb")  # noqa: SIM115 (open for the device's life)
    _wifi[2] = host


def _ap_on():
    f, b, _ = _wifi
    f.seek(0)
    return f.readinto(b) != 1 or b[0] != 0x64  # "d"own


def wlan_join(cfg):
    global _link
    _link = "up" if _ap_on() else "no_ap"


def wlan_state():
    global _link
    if _link == "up" and not _ap_on():
        _link = "down"  # the access point went: the board sees the link drop
    return _link


def wlan_ip():
    return _wifi[2] if _link == "up" else None


def wlan_leave():
    global _link
    _link = "down"
