# main: the mpota boot manager (runs at power-on, as the board runs main.py).
#
# Kept tiny on purpose: this module's code stays alive for the device's
# whole life (its last line never returns), so the work is elsewhere:
#  1. the agent's resident module is loaded first, so it sits packed at the
#     bottom of the heap (a RAM choice: each module imports what it needs);
#  2. bootmgr.py: config, slot choice (trials, rollback), verify and mount
#     the app, build the Device -- then it is dropped and its code freed;
#  3. agent.main(): the agent as an asyncio task, the app's main() beside it.
# docs/memory.md says what each step costs.
import gc
import sys

gc.collect()
_base = gc.mem_alloc()  # the firmware's and the filesystem's share, not ours
import mpota_agent as agent  # noqa: E402
import mpota_bootmgr as bootmgr  # noqa: E402

_why = bootmgr.unsupported()  # below bootmgr.MIN_VERSION: a clear refusal, then the REPL
if _why:
    print("mpota: " + _why)
else:
    _dev, _app = bootmgr.boot(_base)
    bootmgr.__dict__.clear()  # its code goes even if a stale word still points at it (bootmgr._drop)
    del bootmgr
    sys.modules.pop("mpota_bootmgr", None)
    gc.collect()
    agent.main(_dev, _app)
