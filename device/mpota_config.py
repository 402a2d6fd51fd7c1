# config: /mpota.json merged with hal.config_overrides() (the simulator's flags).
#
# load() never raises: a missing file means defaults; a broken one gives the
# defaults plus a list of errors the boot manager prints and reports in
# status, so a typo cannot brick the agent that would fix it.
import ujson as json

PATH = "/mpota.json"

# key: (default, type, lower bound, upper bound); wifi is checked apart.
_SPEC = {
    "host": ("0.0.0.0", str, None, None),
    "tcp_port": (8472, int, 1, 65535),
    "udp_port": (8473, int, 1, 65535),
    "legacy_udp": (False, bool, None, None),
    "smp_udp": (False, bool, None, None),  # SMP (MCUmgr) over UDP: no operator auth (docs/security.md)
    "smp_port": (1337, int, 1, 65535),
    "auth": (True, bool, None, None),
    "max_trials": (3, int, 1, 100),
    # Two slots of 360 KiB leave 128 KiB of the Pico W's 848 KiB filesystem
    # for the agent's files, the state record and littlefs' spare blocks.
    "slot_size": (368640, int, 4096, 0x7FFFFFFF),
    "wdt": (0, int, 0, 8388),  # watchdog timeout in ms, 0 = off, else >= WDT_MIN_MS
    # the watchdog while an unconfirmed (trial) image runs, whatever "wdt" says: an
    # app that hangs the event loop resets the board, which counts as a failed trial
    "trial_wdt": (8000, int, 2000, 8388),
    "timeout": (30, int, 1, 3600),  # seconds a peer (or an update session) may stay silent
    "max_conn": (4, int, 1, 16),  # authenticated connections
    "max_unauth": (2, int, 1, 8),  # connections still authenticating (connpolicy.admit)
    "auth_timeout": (5, int, 1, 60),  # seconds to authenticate after connecting
    "mode": ("live", str, None, None),  # live (update beside the app) or lean
    # discovery (agent._answer): a UDP probe on tcp_port's number is answered with
    # the id, name (wifi.hostname) and TCP port; the app's version only when allowed
    "discover": (True, bool, None, None),
    "discover_version": (False, bool, None, None),
    "announce": ("", str, None, None),  # "HOST:PORT": say "here I am" there at each link-up
    # MQTT (docs/mqtt.md): "HOST:PORT" of the broker the board connects out to; "" = off
    # (nothing loaded). "fleet" is a topic level: 1-32 of [A-Za-z0-9_-].
    "mqtt": ("", str, None, None),
    "fleet": ("default", str, None, None),
    "mqtt_keepalive": (60, int, 5, 3600),
    # false: no TCP listener, no UDP port (a board behind NAT, managed only through "mqtt")
    "listen": (True, bool, None, None),
    # bytes of console output kept in RAM for the logs op (mpota_logring.Ring), 0 = none;
    # live mode only (lean mode keeps none: bootmgr._log_ring)
    "log_size": (2048, int, 0, 16384),
}
_MODES = ("live", "lean")
WDT_MIN_MS = 2000  # below this a flash erase (up to 400 ms) plus a slow reply bites: a reset loop
_WIFI = ("ssid", "password", "hostname", "country")


def _hostport(v):
    h, _, p = v.rpartition(":")
    try:
        return h and 0 < int(p) < 65536
    except ValueError:
        return False


def _fleet_ok(v):
    import mpota_command as command  # (boot scope: bootmgr._BOOT drops it)
    return command.name_ok(v)


def defaults():
    d = {}
    for k in _SPEC:
        d[k] = _SPEC[k][0]
    d["wifi"] = {}
    return d


def _check(cfg, src, errors):
    out = {}
    for k in src:
        v = src[k]
        if k == "wifi":
            if not isinstance(v, dict):
                errors.append("'wifi' must be an object with 'ssid' and 'password'")
                continue
            w = {}
            for wk in v:
                if wk in _WIFI and not isinstance(v[wk], str) and v[wk] is not None:
                    errors.append("'wifi.%s' must be a string" % wk)
                else:
                    w[wk] = v[wk]
            out["wifi"] = w
            continue
        spec = _SPEC.get(k)
        if spec is None:
            if not k.startswith("_"):  # "_comment" and friends are fine
                errors.append("unknown key '%s' (ignored)" % k)
            continue
        typ = spec[1]
        # bool is an int subclass: refuse true/false where a number belongs
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            errors.append("'%s' must be %s, got %r" % (k, typ.__name__, v))
            continue
        if typ is int and not (spec[2] <= v <= spec[3]):
            errors.append("'%s' must be in %d..%d, got %d" % (k, spec[2], spec[3], v))
            continue
        if k == "wdt" and 0 < v < WDT_MIN_MS:
            errors.append("'wdt' must be 0 (off) or %d..%d ms (shorter resets the board in a loop), got %d: "
                          "watchdog off" % (WDT_MIN_MS, spec[3], v))
            continue
        if k == "announce" and v and not _hostport(v):
            errors.append("'announce' must be \"HOST:PORT\" (port 1..65535), got %r: no announce" % v)
            continue
        if k == "mqtt" and v and not _hostport(v):
            errors.append("'mqtt' must be \"HOST:PORT\" (port 1..65535), got %r: MQTT off" % v)
            continue
        if k == "fleet" and not _fleet_ok(v):
            errors.append("'fleet' must be 1 to 32 of A-Z a-z 0-9 _ -, got %r: fleet \"default\"" % v)
            continue
        if k == "mode" and v not in _MODES:
            errors.append("'mode' must be one of %s, got %r" % (", ".join(_MODES), v))
            continue
        out[k] = v
    for k in out:
        cfg[k] = out[k]


def load(path=PATH, overrides=None):
    """-> (config dict, [error strings]). Overrides win over the file."""
    cfg = defaults()
    errors = []
    src = None
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = None  # no file: defaults
    if text is not None:
        try:
            src = json.loads(text)
        except ValueError as e:
            errors.append("%s is not valid JSON (%s): using defaults" % (path, e))
        if src is not None and not isinstance(src, dict):
            errors.append("%s must hold a JSON object: using defaults" % path)
            src = None
    if src:
        _check(cfg, src, errors)
    if overrides:
        _check(cfg, overrides, errors)
    if not cfg["listen"] and not cfg["mqtt"]:
        errors.append("'listen': false needs 'mqtt' (nothing else could reach the board): listening")
        cfg["listen"] = True
    return cfg, errors
