# main: the mpota boot manager (runs at power-on, as the board runs main.py).
#
#  1. load the config and the slot record; decide which slot runs, counting
#     trial boots and rolling back after max_trials unconfirmed ones (the
#     record is committed BEFORE the app runs, so a hang, crash, watchdog bite
#     or power cut during the trial still counts);
#  2. verify the chosen image and mount its littlefs body read-only at /app;
#     a slot that cannot start is marked bad and the confirmed one is tried;
#  3. start the agent as an asyncio task, then run /app/main.py's main()
#     (sync or async) beside it. An app exception is caught and reported in
#     status; the agent keeps serving. No valid app: the agent runs alone.
#
# A sync main() runs inside the event loop: it must return (set up timers,
# IRQs) or the agent starves; a long-running app is `async def main()`.
# App modules share the flat module namespace with the agent's, so an app
# should not name a module like one of device/*.py (config, slots, ...).
import gc
import sys

# One module at a time with a collection in between: compiling a .py needs
# several times its size in transient heap, and leftovers fragment it.
gc.collect()
import hal  # noqa: E402
import config  # noqa: E402
gc.collect()
import native  # noqa: E402,F401  (the codec, the largest resident part)
gc.collect()
import slots as S  # noqa: E402
gc.collect()
import service  # noqa: E402
gc.collect()
import asyncio  # noqa: E402

APP_MOUNT = "/app"


def _load_app(sl, i):
    """Verify and mount slot i, import its main.py; returns the module."""
    import mcuboot
    import appfs
    path = sl.path(i)
    info = mcuboot.verify(path)  # header, TLVs and SHA-256 (ImageError)
    if not info.get("body_is_littlefs"):
        raise ValueError("the image body is not a littlefs")
    appfs.mount(path, info["hdr_size"], info["img_size"], APP_MOUNT)
    # This file may itself be sys.modules["main"] (the board and the sim
    # import it): step aside while /app/main.py imports under that name.
    mine = sys.modules.pop("main", None)
    sys.path.insert(0, APP_MOUNT)
    try:
        mod = __import__("main")
    finally:
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
        import appfs
        appfs.umount(APP_MOUNT)
    except Exception:
        pass


def _err(e):
    return "%s: %s" % (type(e).__name__, e)


def boot():
    cfg, errors = config.load(overrides=hal.config_overrides())
    note = ""
    for e in errors:
        print("mpota: config: " + e)
    if errors:
        note = "; config: " + "; ".join(errors)
    sl = S.Slots(slot_size=cfg["slot_size"], max_trials=cfg["max_trials"])
    i = sl.boot()
    mod = None
    while i is not None:
        try:
            mod = _load_app(sl, i)
            break
        except Exception as e:  # corrupt image, mount, import: try the fallback
            _unload_app()
            print("mpota: slot %s: %s" % (S.NAMES[i], _err(e)))
            i = sl.failed(i, _err(e))
    print("mpota: " + sl.note)
    dev = service.Device(cfg, sl, note)
    service.DEVICE = dev
    del sys.modules["config"]  # not needed after boot: its code can be freed
    if mod is not None:
        dev.app = {"state": "loaded", "name": getattr(mod, "NAME", "app"), "error": None}
    return dev, mod


async def _run_app(dev, mod):
    app = dev.app
    app["state"] = "running"
    try:
        r = mod.main()
        if hasattr(r, "send"):  # async def main(): a coroutine to await
            await r
        app["state"] = "stopped"
    except Exception as e:
        app["state"] = "crashed"
        app["error"] = _err(e)
        print("mpota: app crashed:")
        sys.print_exception(e)
    gc.collect()


async def _agent(dev, ready):
    # Compile what an update needs now, while the heap is unfragmented,
    # rather than halfway through a session.
    for m in ("agent", "ops", "slotio", "update", "mcuboot"):
        gc.collect()
        __import__(m)
    gc.collect()
    import agent
    while True:
        try:
            await agent.run(dev, ready)
        except Exception as e:  # keep the device updatable whatever happened
            print("mpota: agent failed, restarting:")
            sys.print_exception(e)
            await asyncio.sleep(1)


async def _main(dev, mod):
    ready = asyncio.Event()
    t = asyncio.create_task(_agent(dev, ready))
    if dev.cfg["wdt"]:
        hal.wdt_start(dev.cfg["wdt"])
    if mod is not None:
        # Let the agent listen first (a sync main() blocks the loop), but do
        # not hold the app back for long if Wi-Fi is slow.
        try:
            await asyncio.wait_for(ready.wait(), 30)
        except asyncio.TimeoutError:
            pass
        await _run_app(dev, mod)
    else:
        print("mpota: no application: agent only")
    await t


def run():
    dev, mod = boot()
    gc.collect()
    asyncio.run(_main(dev, mod))


if __name__ in ("__main__", "main"):
    run()
