# halboot: the seam's boot-time half. What the boot manager reads once --
# why the board started, its unique id, config overrides -- lives here and
# not in hal.py, so none of this code stays in the heap: bootmgr imports it,
# stores the answers in the Device and drops it. Under the simulator every
# public name is rebound to simhal's, as in hal.py.
import sys

import umachine as machine

import mpota_hal as hal

SCRATCH1 = hal.SCRATCH0 + 4  # WATCHDOG SCRATCH1: the resets since power-on


def reset_cause():
    # Reads and clears the reset mark (hal.reset): call it once per boot, or
    # a later real watchdog bite would be taken for a reset.
    c = machine.reset_cause()
    mark = machine.mem32[hal.SCRATCH0] == hal.RESET_MARK
    machine.mem32[hal.SCRATCH0] = 0
    # resets since power-on (resets()): SCRATCH1 survives a watchdog reset,
    # power-on clears it (and so do we, whatever it held)
    n = 0 if c == machine.PWRON_RESET else (machine.mem32[SCRATCH1] + 1) & 0xFFFF
    machine.mem32[SCRATCH1] = n
    if c == machine.PWRON_RESET:
        return "power_on"
    if c == machine.WDT_RESET:
        return "reset" if mark else "watchdog"
    return "unknown"


def resets():
    # resets (any cause but power-on) since the last power-on; after reset_cause()
    return machine.mem32[SCRATCH1] & 0xFFFF


def unique_id():
    return "".join("%02x" % x for x in machine.unique_id())


def config_overrides():
    # The simulator passes its launcher flags here; a board has none.
    return {}


def flash_info():
    # The filesystem is the flash region mpota can use (docs/board.md).
    import uos as os

    st = os.statvfs("/")
    return {"block_size": st[0], "block_count": st[2]}


_API = ("reset_cause", "resets", "unique_id", "config_overrides", "flash_info")

_sim = sys.modules.get("simhal")
if _sim is not None:
    _g = globals()
    for _n in _API:
        _g[_n] = getattr(_sim, _n)
    del _g, _n
