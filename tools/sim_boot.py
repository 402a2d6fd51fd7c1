# sim_boot: what the Pico W does from power-on to main.py, on the unix port.
#
#   micropython tools/sim_boot.py STATE/boot.json
#
# tools/sim.py writes the handoff file and runs this once per device start.
# simpoweron.power_on() does the board's _boot.py part (mount or format the
# simulated flash, deploy, make it '/', install simhal); then this script
# drops that module and runs boot.py (if any) and main.py as the board does.
# This file stays tiny: its code is alive for the device's whole life, and
# on a board none of this costs the Python heap anything.
import gc
import sys

import simpoweron

_boot_py = simpoweron.power_on(sys.argv)
del simpoweron
sys.modules.pop("simpoweron", None)
gc.collect()
if _boot_py:
    import boot  # noqa: F401  (as the board runs boot.py first)
import main  # noqa: F401,E402  (the boot manager; it runs at import)
