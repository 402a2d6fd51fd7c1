# hal: the seam between mpota and the hardware, its resident half (what the
# agent and Wi-Fi use while running; halboot.py holds what only boot reads).
#
# On a Pico W these functions drive the real rp2 peripherals. Under the
# simulator (tools/sim_boot.py) a module 'simhal' is already in sys.modules
# before main.py runs; then every public name here is rebound to simhal's at
# import time, so callers pay nothing per call and never test the platform.
import gc
import sys
import utime as time

import umachine as machine
import uos as os

PLATFORM = "rp2"

WDT_MAX_MS = 8388  # RP2040 watchdog limit (24-bit counter at 2 ticks/us)

# machine.reset() on rp2 comes back as WDT_RESET, like a real watchdog bite.
# To tell them apart, reset() leaves a mark in WATCHDOG SCRATCH0, which
# survives a watchdog reboot (pico-sdk keeps scratch0-3 for the user) and is
# cleared by power-on.
SCRATCH0 = 0x40058000 + 0x0C
RESET_MARK = 0x6D706F74  # "mpot"

_wdt = None
_wlan = None


def reset():
    machine.mem32[SCRATCH0] = RESET_MARK
    machine.reset()


# Plain builtins where they do the job: no Python function to keep in the heap.
ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff
mem_free = gc.mem_free
mem_alloc = gc.mem_alloc


def status_extra(r):
    pass  # the board adds nothing to status (the simulator: its flash counters)


# A traceback on the console (the log ring gets it through dupterm): the
# builtin itself on a board; the simulator's also writes it to the ring.
print_exception = sys.print_exception


def log_tee(ring):
    # Make `ring` (logring.Ring, a stream) a second console: os.dupterm()
    # sends it everything the firmware writes to stdout (rp2 has one dupterm
    # slot, MICROPY_PY_OS_DUPTERM = 1). False when the slot is taken (webrepl,
    # the app's boot.py): that one stays, and no log is kept.
    prev = os.dupterm(ring)
    if prev is not None:
        os.dupterm(prev)
        return False
    return True


def wdt_start(timeout_ms):
    # Cannot be stopped once started (hardware); a second call only feeds.
    global _wdt
    if _wdt is None:
        _wdt = machine.WDT(timeout=max(1, min(int(timeout_ms), WDT_MAX_MS)))
    _wdt.feed()


def wdt_feed():
    if _wdt is not None:
        _wdt.feed()


def wlan_join(cfg):
    # Start joining the access point of a config dict (ssid, password,
    # hostname, country) and return at once: device/mpota_wifi.py polls
    # wlan_state() from an asyncio task, so the event loop never waits here.
    global _wlan
    import network

    ssid = cfg.get("ssid")
    if not ssid:
        raise ValueError("wlan: no 'ssid' in the config")
    wlan = _wlan
    if wlan is None:
        if cfg.get("country"):
            network.country(cfg["country"])
        if cfg.get("hostname"):
            network.hostname(cfg["hostname"])
        wlan = network.WLAN(network.STA_IF)
        wdt_feed()
        wlan.active(True)  # loads the CYW43 firmware: one blocking call, fed before and after
        wdt_feed()
        _wlan = wlan
    wlan.connect(ssid, cfg.get("password") or "")


def wlan_state():
    # The link as one of "up", "joining", "down", "no_ap", "fail", "bad_auth"
    # (constant strings: polling allocates nothing). Never None on a board;
    # None where there is no station interface to manage (the simulator
    # without --wifi).
    wlan = _wlan
    if wlan is None:
        return "down"
    import network

    st = wlan.status()
    if st == network.STAT_GOT_IP:
        return "up" if wlan.isconnected() else "joining"
    if st == network.STAT_CONNECTING or st == 2:  # 2: CYW43_LINK_NOIP (joined, DHCP running)
        return "joining"
    if st == network.STAT_WRONG_PASSWORD:
        return "bad_auth"
    if st == network.STAT_NO_AP_FOUND:
        return "no_ap"
    if st == network.STAT_CONNECT_FAIL:
        return "fail"
    return "down"  # STAT_IDLE (CYW43_LINK_DOWN): never joined, or the link was lost


def wlan_ip():
    return _wlan.ifconfig()[0] if _wlan is not None else None


def wlan_rssi():
    # The station link's signal in dBm while it is up, else None (status: rssi).
    wlan = _wlan
    if wlan is None or not wlan.isconnected():
        return None
    try:
        return wlan.status("rssi")
    except OSError:
        return None  # a radio that refuses it: a status must not fail


def wlan_leave():
    # Drop a join that failed or a link that went, before the next join.
    if _wlan is not None:
        _wlan.disconnect()


def wlan_power_save(enabled):
    # Off while updating: power saving pushes the RTT to ~200 ms.
    # On restores the cyw43 default (PM_PERFORMANCE).
    if _wlan is not None:
        import network

        pm = network.WLAN.PM_PERFORMANCE if enabled else network.WLAN.PM_NONE
        try:
            _wlan.config(pm=pm)
        except OSError:
            pass  # a hint only: a radio that refuses it must not fail a begin or the listener


_API = ("reset", "ticks_ms", "ticks_diff", "wdt_start", "wdt_feed", "wlan_join", "wlan_state",
        "wlan_ip", "wlan_rssi", "wlan_leave", "wlan_power_save", "mem_free", "mem_alloc", "status_extra",
        "print_exception", "log_tee")

_sim = sys.modules.get("simhal")
if _sim is not None:
    _g = globals()
    # The board's functions stay referenced (never called): on a board their
    # code is in the heap for good, so the simulator's heap figures count it too.
    _board = tuple(_g[_n] for _n in _API)
    for _n in _API:
        _g[_n] = getattr(_sim, _n)
    _g["PLATFORM"] = "sim"
    del _g, _n
