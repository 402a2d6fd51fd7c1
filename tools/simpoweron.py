# simpoweron: what the Pico W does from power-on to main.py, on the unix port
# (tools/sim_boot.py runs power_on() and then drops this module: on a board
# this is the frozen _boot.py and costs the Python heap nothing, so the
# simulator must not keep its code or its locals alive while main.py runs).
#
# Like _boot.py, it mounts a littlefs (progsize 256) on the simulated NOR
# flash, formatting it when the mount fails; a fresh format (or --redeploy)
# then copies the device files into the flash root, as `mpremote cp
# device/*.py :` would. Then the posix filesystem goes away, the littlefs
# becomes '/', and simhal is configured.
import json
import os
import sys

# simhal and simflash live in tools/: imported while the posix VFS is mounted.
import simhal
import vfs
from simflash import SimFlash


def log(msg):
    print("sim: " + msg)


def copy(src, dst, buf=None):
    buf = buf or bytearray(1024)
    mv = memoryview(buf)
    total = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            n = fi.readinto(buf)
            if not n:
                break
            fo.write(mv[:n])
            total += n
    return total


def deploy(paths, key_file, root):
    buf = bytearray(1024)
    total = 0
    import os
    for src in paths:
        name = src.rsplit("/", 1)[-1]
        # foo.py beside foo.mpy would win the import: keep only what is deployed
        stem, ext = name.rsplit(".", 1)
        if ext in ("py", "mpy"):  # (not the config: mpota.json must not remove mpota.mpy)
            try:
                os.remove(root + "/" + stem + (".py" if ext == "mpy" else ".mpy"))
            except OSError:
                pass
        total += copy(src, root + "/" + name, buf)
    if key_file:
        with open(key_file) as f:
            key = bytes.fromhex(f.read().strip())
        with open(root + "/mpota_key.bin", "wb") as fo:
            fo.write(key)
    log("deployed %d files (%d bytes)%s" % (len(paths), total, " + device key" if key_file else ""))


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def power_on(argv):
    """Mount (or format and deploy) the flash as '/', configure simhal.
    Returns True when /boot.py is there to run before main.py."""
    if len(argv) < 2:
        print("usage: micropython tools/sim_boot.py STATE/boot.json (run by tools/sim.py)")
        sys.exit(2)
    with open(argv[1]) as f:
        cfg = json.load(f)

    flash = SimFlash(cfg["flash"], cfg.get("block_count", 212), cfg.get("timing", "none"))
    cut = cfg.get("cut_after")
    from_power_on = cut is not None and cfg.get("cut_from") == "power-on"
    if from_power_on:  # provisioning counts: the format and the deploy
        flash.arm(cut)
        log("power cut armed after %d flash operations from power-on" % cut)
    formatted = False
    try:
        fs = vfs.VfsLfs2(flash, progsize=256)
    except OSError:
        # _boot.py on rp2 does the same on any mount failure
        log("no filesystem on the flash: formatting littlefs2 (%d x 4096)" % flash.block_count)
        vfs.VfsLfs2.mkfs(flash, progsize=256)
        fs = vfs.VfsLfs2(flash, progsize=256)
        formatted = True

    if formatted or cfg.get("redeploy") or cfg.get("trust_file"):
        vfs.mount(fs, "/flash")
        if formatted or cfg.get("redeploy"):
            deploy(cfg.get("deploy", []), cfg.get("key_file"), "/flash")
        if cfg.get("trust_file"):
            copy(cfg["trust_file"], "/flash/mpota_trust.json")
            log("trust store installed (images must be signed)")
        vfs.umount("/flash")

    # simhal keeps only what the device asks for later (see simhal.configure)
    simhal.configure(cfg, flash)

    # From here on the device sees only its flash.
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")
    sys.path[:] = ["/", "", ".frozen", "/lib"]

    # The op counter (and the power cut) covers what the device code does.
    if from_power_on:
        log("main.py starts after %d flash operations" % flash.stats()["ops"])
    elif cut is not None:
        flash.arm(cut)
        log("power cut armed after %d flash operations" % cut)

    if not exists("/main.py"):
        log("/main.py is missing on the flash: nothing to run "
            "(deploy device/*.py with `tools/sim.py --redeploy`)")
        sys.exit(2)
    return exists("/boot.py")
