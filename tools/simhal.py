# simhal: the simulator's stand-in for device/mpota_hal.py (same public names).
#
# tools/simpoweron.py imports this before it mounts the simulated flash,
# calls configure(), and leaves it in sys.modules['simhal']; device/mpota_hal.py
# then rebinds its functions to these. Nothing here touches real hardware.
# On a board this seam is C, so it is kept small: it stays in the heap.
import gc
import sys
import time

PLATFORM = "sim"

EXIT_RESET = 3  # tools/sim.py restarts the device with the flash intact
EXIT_WATCHDOG = 4  # ... and reports reset_cause 'watchdog'

# Plain builtins: no Python function of our own to keep in the heap.
ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff
mem_free = gc.mem_free
mem_alloc = gc.mem_alloc


def status_extra(r):
    r["sim_flash"] = _flash.stats()  # the simulator's flash operation counters

_ring = []  # the log ring (log_tee), once the device keeps logs


def print_exception(e):
    sys.print_exception(e)
    if _ring:
        sys.print_exception(e, _ring[0])


def log_tee(ring):
    # The unix port has no os.dupterm: print() is teed instead (builtins can be
    # overridden there), and print_exception above. What an app writes with
    # sys.print_exception() or sys.stdout.write() itself reaches only the
    # launcher's output (the board's dupterm takes all of it).
    import builtins

    real = builtins.print

    def tee(*a, **k):
        real(*a, **k)
        if k.get("file") is None:
            k["file"] = ring
            real(*a, **k)

    builtins.print = tee
    _ring.append(ring)
    return True


_cfg = {}  # only the handoff fields asked for later (not its deploy list)
_flash = None
_power_save = True
_wdt_timeout = None
_wdt_last = 0
_wdt_beat = [None, b""]  # the launcher's STATE/wdt (open for the device's life), what each feed writes


def configure(cfg, flash):
    # cfg: the launcher's handoff dict (see tools/sim.py); flash: the SimFlash
    global _cfg, _flash
    _cfg = {}
    for k in ("reset_cause", "resets", "boot_count", "device_id", "host", "tcp_port", "udp_port",
              "legacy_udp", "smp_port", "auth", "mqtt", "fleet", "listen"):
        if k in cfg:
            _cfg[k] = cfg[k]
    _flash = flash
    if cfg.get("wdt_file"):  # opened while the host's files are mounted (as simwifi's)
        _wdt_beat[0] = open(cfg["wdt_file"], "wb")  # noqa: SIM115 (open for the device's life)
    if cfg.get("wifi_file"):  # --wifi: the simulated link (tools/simwifi.py)
        import simwifi

        simwifi.configure(cfg["wifi_file"], cfg.get("host", "127.0.0.1"))
        g = globals()
        for n in ("wlan_join", "wlan_state", "wlan_ip", "wlan_rssi", "wlan_leave"):
            g[n] = getattr(simwifi, n)


def _exit(status):
    sys.stdout.flush()
    if _flash is not None:
        _flash.sync()
    import uos  # (not `os`: the app's /app is on sys.path, and its os.py would stand in)

    uos.unsetenv("MICROPYINSPECT")  # sim.py --usb: an exit, not the REPL (that is for Ctrl-C)
    sys.exit(status)


def reset():
    print("sim: reset")
    _exit(EXIT_RESET)


def reset_cause():
    return _cfg.get("reset_cause", "power_on")


def resets():
    # resets since the launcher's last power-on (tools/sim.py counts them)
    return _cfg.get("resets", 0)


def boot_count():
    # starts of this simulated device (1 = first power-on of this state dir)
    return _cfg.get("boot_count", 1)


def unique_id():
    return _cfg.get("device_id", "51a0000000000000")


def _beat():
    # tell the launcher (tools/sim.py) the watchdog was fed: it rewrites the
    # timeout into STATE/wdt, and the launcher watches that file's mtime
    f = _wdt_beat[0]
    if f is not None:
        f.seek(0)
        f.write(_wdt_beat[1])


def wdt_start(timeout_ms):
    # The sim has no timer interrupt. Two halves emulate the watchdog: a feed
    # that comes later than the timeout -- where a board would have been
    # reset -- simulates the reset here, at once; a hang that never feeds
    # again (a loop at import, a blocked event loop) is caught by the
    # launcher, which sees no feed in STATE/wdt for the timeout + 2 s.
    global _wdt_timeout, _wdt_last
    if _wdt_timeout is None:
        _wdt_timeout = max(1, min(int(timeout_ms), 8388))
        _wdt_beat[1] = str(_wdt_timeout).encode()
    _wdt_last = time.ticks_ms()
    _beat()


def wdt_feed():
    global _wdt_last
    if _wdt_timeout is None:
        return
    now = time.ticks_ms()
    late = time.ticks_diff(now, _wdt_last)
    if late > _wdt_timeout:
        print("sim: watchdog reset (%d ms since the last feed > %d ms)" % (late, _wdt_timeout))
        _exit(EXIT_WATCHDOG)
    _wdt_last = now
    _beat()


def _no_link(*args):
    # without --wifi there is no station link to manage: wlan_state() is None
    # and the agent listens at once (--wifi: configure() binds simwifi's)
    return None


wlan_join = wlan_state = wlan_ip = wlan_rssi = wlan_leave = _no_link


def wlan_power_save(enabled):
    global _power_save
    _power_save = bool(enabled)


def power_save_state():
    return _power_save


def config_overrides():
    c = _cfg
    o = {"host": c.get("host", "127.0.0.1"), "tcp_port": c.get("tcp_port", 8472),
         "udp_port": c.get("udp_port", 8473), "legacy_udp": bool(c.get("legacy_udp")),
         "auth": bool(c.get("auth", True))}
    for k in ("mqtt", "fleet"):  # --mqtt, --fleet (else the config file decides)
        if c.get(k):
            o[k] = c[k]
    if c.get("listen") is False:  # --no-listen
        o["listen"] = False
    if c.get("smp_port"):  # --smp-port N: SMP on (else the config file decides)
        o["smp_udp"] = True
        o["smp_port"] = c["smp_port"]
    return o


def flash_info():
    return {"block_size": 4096, "block_count": 212 if _flash is None else _flash.block_count}


def flash():
    # the SimFlash (op counters: flash().stats())
    return _flash
