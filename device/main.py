# main: the mpota boot manager (runs at power-on, as the board runs main.py).
#
# Kept tiny on purpose: this module's code stays alive for the device's
# whole life (its last line never returns), so the work is elsewhere:
#  1. compile the agent's resident modules first, one at a time with a
#     collection in between (compiling a .py needs several times its size in
#     transient heap), so they sit packed at the bottom of the heap;
#  2. bootmgr.py: config, slot choice (trials, rollback), verify and mount
#     the app, build the Device -- then it is dropped and its code freed;
#  3. agent.main(): the agent as an asyncio task, the app's main() beside it.
#
# App modules share the flat module namespace with the agent's, so an app
# should not name a module like one of device/*.py (config, slots, ...).
import gc
import sys

for _m in ("proto", "slots", "service", "slotio", "ops", "update", "mcuboot", "agent"):
    gc.collect()
    __import__(_m)
gc.collect()
import bootmgr  # noqa: E402

_dev, _app = bootmgr.boot()
del bootmgr
sys.modules.pop("bootmgr", None)
gc.collect()
sys.modules["agent"].main(_dev, _app)
