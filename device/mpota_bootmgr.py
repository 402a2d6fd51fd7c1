# bootmgr: the boot manager's work before the agent starts (main.py runs it
# once, then drops it from sys.modules so none of this code stays in the heap).
#
#  1. load the config and the slot record; decide which slot runs, counting
#     trial boots and rolling back after max_trials unconfirmed ones (the
#     record is committed BEFORE the app runs, so a hang, crash, watchdog bite
#     or power cut during the trial still counts);
#  2. verify the chosen image and mount its littlefs body read-only at /app;
#     a slot that cannot start is marked bad and the confirmed one is tried;
#  3. start the watchdog (always on a trial: trial_wdt), then import
#     /app/main.py and build the agent.Device the agent serves.
#
# The app cannot replace the agent: an image with a module named like one of
# the agent's files (/*.py, /*.mpy) or without a main.py does not start, and
# /app goes on sys.path only for the import of its main, then at the end.
#
# Every boot-only module (config, bootslots) is imported with a
# collection first and dropped after use: compiling a .py needs several
# times its size in transient heap, and what stays resident should be packed
# low in the heap, not interleaved with dead boot code.
import gc
import sys

import mpota_hal as hal
import mpota_slots as slots

APP_MOUNT = "/app"
KEY_PATH = "/mpota_key.bin"
# The oldest MicroPython the agent runs on: apps mount with the `vfs` module,
# new in 1.23 (1.22 has only os.mount). host/provision.py and tools/mpy_check.py
# hold the same floor (README, "Supported MicroPython").
MIN_VERSION = (1, 23, 0)


def unsupported(v=None):
    """None on a MicroPython the agent supports, else why not (one line).
    Here, not in a resident module: the message is dropped with bootmgr."""
    v = v or sys.implementation.version
    if tuple(v[:3]) >= MIN_VERSION:
        return None
    return ("MicroPython %d.%d.%d is not supported: mpota needs %d.%d or newer (the app filesystem "
            "needs the vfs module); flash a newer RPI_PICO_W firmware. The agent does not start."
            % (v[0], v[1], v[2], MIN_VERSION[0], MIN_VERSION[1]))


# The boot scope: what only boot() uses, each dropped after its use and the
# rest when boot() returns (the runtime scopes are agent._LIFE's; mcuboot,
# trust and ed25519 also serve update sessions later, loaded again then).
# appfs stays while an app is mounted (its block device lives there).
_BOOT = ("mpota_halboot", "mpota_config", "mpota_bootslots", "mpota_mcuboot", "mpota_trust", "mpota_ed25519",
         "mpota_appfs", "mpota_command")


def _use(name):
    gc.collect()
    return __import__(name)


def _drop(name):
    # Forget a module boot() loaded, and empty its globals: MicroPython's GC
    # is conservative, so one stale word on the C stack pointing at the
    # module or at one of its functions would keep all of its code alive for
    # good (measured: 9 KB held through an update-mode boot; 8-10 KB of
    # mpota_slots and mpota_lineproto at agent 0.5.0's idle). Only for
    # modules nothing made by them outlives the boot, and the connection
    # modules only all at once (_end: slots.name is lineproto's function).
    m = sys.modules.pop(name, None)
    if m is not None:
        m.__dict__.clear()


def _err(e):
    return "%s: %s" % (type(e).__name__, e)


def _load_app(sl, i):
    """Verify and mount slot i, import its main.py; returns the module."""
    f = sl.open(i)
    try:
        info = _use("mpota_mcuboot").verify(f, 0, sl.file_size(i), hal.wdt_feed)  # header, TLVs, SHA-256
    except Exception:
        f.close()
        raise
    try:
        if not info["body_is_littlefs"]:
            raise ValueError("the image body is not a littlefs")
        # the signature was verified at commit: check that result still holds
        s = sl.slot(i)
        slots.check_counter(slots.counter(info), sl.floor())
        if slots.trusting():
            tr = _use("mpota_trust")
            tr.check_boot(tr.load(), s.get("signer"), s.get("image_hash"), info)
            _drop("mpota_trust")
            _drop("mpota_ed25519")
        appfs = _use("mpota_appfs")
    except Exception:
        f.close()
        raise
    appfs.mount(f, info["hdr_size"], info["img_size"], APP_MOUNT)  # (it keeps f, or closes it)
    del info
    appfs.check_app(APP_MOUNT)  # commit checked it too; a slot may predate that
    gc.collect()
    # main.py is itself sys.modules["main"] (the board and the sim import
    # it): step aside while /app/main.py imports under that name.
    mine = sys.modules.pop("main", None)
    sys.path.insert(0, APP_MOUNT)
    try:
        mod = __import__("main")  # under the watchdog (boot): a hang here is reset
    finally:
        sys.path.remove(APP_MOUNT)
        sys.path.append(APP_MOUNT)  # after the agent's "/" from now on
        sys.modules.pop("main", None)
        if mine is not None:
            sys.modules["main"] = mine
    if not hasattr(mod, "main"):
        raise ValueError("/app/main.py defines no main()")
    return mod


def _unload_app():
    try:
        sys.path.remove(APP_MOUNT)
    except ValueError:
        pass
    try:
        _use("mpota_appfs").umount(APP_MOUNT)
    except Exception:
        pass


# The modules a connection loads in each mode (the handlers of the everyday
# requests, and of `begin`: agent.I_LEAN, agent.I_LIVE). _intern() imports
# them once at boot and drops them: that interns their names (qstrs, which
# MicroPython keeps for good) while the heap is still empty. The qstr pool
# grows by doubling, in ONE block of several KB; beside an app that holds
# most of the heap, such a block may not exist even when far more than that
# is free in pieces, and the first connection would fail on the pool, not on
# its own size.
def _intern(agent, mode):
    for n in agent.mods(agent.I_LEAN if mode == "lean" else agent.I_LIVE if mode == "live" else 0):
        try:
            __import__(n)
        except ImportError:
            pass  # a module the deploy left out fails where it is used, with its name
        hal.wdt_feed()  # compiling a .py deploy takes a while on a board


def _end(agent):
    # Every module with a runtime lifetime (agent._LIFE) that boot loaded --
    # the slot record's, the codec's, _intern's -- goes emptied: the first
    # connection loads them afresh. Nothing boot made with them outlives it
    # (the Device holds plain values; the app's mount, slotio's Reader).
    for n in agent.mods(0xFF):
        _drop(n)
    gc.collect()


def _log_ring(size):
    # The console's last `size` bytes in RAM (mpota_logring, resident), or
    # None: "log_size" 0, or the console's dupterm slot is someone else's.
    if not size:
        return None
    gc.collect()  # one piece of `size` bytes, low in the heap
    import mpota_logring as logring
    ring = logring.Ring(size)
    if hal.log_tee(ring):
        return ring
    sys.modules.pop("mpota_logring", None)
    print("mpota: logs: the console's dupterm slot is taken (webrepl?): no log ring")
    return None


def _last_crash():
    # the summary line of the traceback a crash saved (mpota_logs.TB_PATH), of
    # this boot's predecessors; status shows it
    try:
        with open("/mpota_tb.txt") as f:
            return f.readline(120).rstrip("\n") or None
    except OSError:
        return None


def _load_key():
    # The 32-byte session key, or None when absent or malformed; read here so
    # that auth.py is compiled only when a peer authenticates.
    try:
        with open(KEY_PATH, "rb") as f:
            k = f.read(64)
    except OSError:
        return None
    return k if len(k) == 32 else None


def boot(mem_base=0):
    """-> (agent.Device, the app's main module or None). `mem_base`: the
    heap in use before the agent started (reported in status)."""
    hb = _use("mpota_halboot")
    why = hb.reset_cause()  # first: it reads and clears the reset mark
    resets = hb.resets()
    uid = hb.unique_id()
    ov = hb.config_overrides()
    del hb
    _drop("mpota_halboot")
    cfg, errors = _use("mpota_config").load(overrides=ov)
    del ov
    _drop("mpota_config")
    # first: the lines below land in it. Lean mode keeps none: its point is the app's heap
    # (and an update boot's is the transfer's); the traceback file works in every mode.
    ring = _log_ring(cfg["log_size"] if cfg["mode"] == "live" else 0)
    note = ""
    for e in errors:
        print("mpota: config: " + e)
    if errors:
        note = "; config: " + "; ".join(errors)
    del errors
    sb = _use("mpota_bootslots")
    sl = sb.open_slots(slot_size=cfg["slot_size"], max_trials=cfg["max_trials"])
    if cfg["mode"] == "lean" and slots.file_size(slots.UPDATE_FLAG) >= 0:
        # Lean mode asked for an update (slots.restart_for_update): this boot serves the
        # transfer with the whole heap; the app does not start and no trial
        # is counted. The flag goes first, so the next reset boots as usual.
        slots.remove(slots.UPDATE_FLAG)
        cfg["mode"] = "update"
        i = None
        sl.note = "update mode (lean): the app does not start"
    else:
        i = sb.boot(sl)
    # The watchdog starts here, before anything of the app runs (its import
    # included): a trial always has one (trial_wdt, whatever "wdt" says), so
    # a trial that hangs anywhere is reset, and that reset counts as one of
    # its max_trials (sb.boot committed the count above). It cannot be
    # stopped: after a fallback or a confirm the agent keeps feeding it.
    wdt = cfg["wdt"] or (cfg["trial_wdt"] if sl.on_trial() else 0)
    if wdt:
        hal.wdt_start(wdt)
    # status shows the trust summary, made once (mpota_trustkeys.op_trust
    # renews it); without a trust store, as trust.summary() would say it, but
    # without loading trust.py (its names would stay interned: docs/memory.md)
    trust = {"signed_images": False, "keys": [], "warning": slots.NO_KEY_WARNING, "seq": 0}
    if slots.trusting():
        tr = _use("mpota_trust")  # _load_app checks signatures with it, then drops it: one import
        trust = tr.summary(tr.load())
        del tr
    mod = None
    while i is not None:
        try:
            mod = _load_app(sl, i)
            break
        except Exception as e:  # corrupt image, mount, import: try the fallback
            _unload_app()
            print("mpota: slot %s: %s" % (sb.NAMES[i], _err(e)))
            i = sb.failed(sl, i, _err(e))
    if mod is not None and not sl.on_trial():
        # a confirmed image started: its counter is the floor from now on (one
        # made permanent over SMP never had a trial whose confirm raised it)
        sl.raise_floor(i)
    del sb
    _drop("mpota_bootslots")  # (before the agent loads: it packs low in the heap)
    print("mpota: " + sl.note)
    import mpota_agent as agent
    for n in _BOOT:  # the boot scope ends
        if n != "mpota_appfs" or mod is None:  # (a mounted app keeps it)
            _drop(n)
    dev = agent.Device(cfg, sl.running, sl.note + note, _load_key() if cfg["auth"] else None, mem_base,
                       uid, why, resets)
    agent.DEVICE = dev
    dev.trust = trust
    dev.log = ring
    dev.last_crash = _last_crash()  # (read early in boot instead, it cost 1,152 B more idle: 32-bit build)
    if mod is not None:
        # version: status's app.version, a crash's summary line (mpota_logs.save_tb), and
        # discovery's answer where "discover_version" allows (mpota_discover)
        dev.app = {"state": "loaded", "name": getattr(mod, "NAME", "app"), "error": None,
                   "version": sl.info(sl.running)["version"]}
        _intern(agent, cfg["mode"])
    _end(agent)
    return dev, mod
