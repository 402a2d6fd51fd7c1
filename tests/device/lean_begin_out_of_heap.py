# Run by tests/test_lean.py under MicroPython with device/ on sys.path, after
# a first line that sets WORK (a folder of the test's own): a lean `begin`
# whose handler cannot be loaded beside the app (MemoryError in route) still
# restarts the board into update mode, where the image is checked -- unless
# the slot record refuses any update now (on trial, rolled back). Other
# requests, and the full stack, answer no_memory. In update mode a refused
# begin sends the board back to its app. Prints one line per case.
import json

import boardstub  # noqa: E402,F401  (hal's board: tests/device/boardstub.py)

import mpota_agent as agent  # noqa: E402
import mpota_dispatch as dispatch  # noqa: E402
import mpota_slots as slots  # noqa: E402
import uos as os  # noqa: E402

slots.UPDATE_FLAG = WORK + "/update_flag"  # noqa: F821 (set by the test)
SHA = "ab" * 32
_route = dispatch.route
FAIL = []  # the op whose handler runs out of heap


def route(dev, c, op, lean):
    m = _route(dev, c, op, lean)  # (attaches the record, imports the handler)
    if op in FAIL:
        raise MemoryError
    return m


dispatch.route = route


class C(dispatch.Peer):
    authed = True

    def __init__(self):
        self.lines = []

    def out(self, b):
        self.lines.append(json.loads(b))


def flagged():
    try:
        os.stat(slots.UPDATE_FLAG)
    except OSError:
        return False
    os.rmdir(slots.UPDATE_FLAG)
    return True


class Other:  # an update session another connection owns
    owner = client = None


def case(what, mode, op, req, trial=False, fail=True, session=None):
    dev = agent.Device({"auth": True, "slot_size": 65536, "max_trials": 3, "mode": mode}, key=bytes(32))
    rec = slots.new_record()
    rec["active"] = 0
    rec["slots"][0].update({"state": "confirmed", "size": 100, "sha256": SHA, "version": "1.0.0+0"})
    if trial:
        rec["trial"] = 0
    dev.sl = slots.Slots(rec, root=WORK)  # noqa: F821
    dev.sl.running = 0
    dev.app["state"] = "running"
    dev.session = session
    FAIL[:] = [op] if fail else []
    c = C()
    released = []
    req["op"] = op
    dispatch.serve(dev, c, None, mode != "live", released.append, json.dumps(req).encode())
    r = c.lines[-1]
    print(what, "ok" if r["ok"] else r["error"]["code"], "flag" if flagged() else "-",
          dev.reset_ms, len(released))


BEGIN = {"size": 1000, "sha256": "cd" * 32}
case("lean begin", "lean", "begin", dict(BEGIN))
case("lean begin on trial", "lean", "begin", dict(BEGIN), trial=True)
case("lean status", "lean", "status", {})
case("live begin", "live", "begin", dict(BEGIN))
case("update begin refused", "update", "begin", {"size": 100, "sha256": SHA}, fail=False)
case("update begin busy", "update", "begin", dict(BEGIN), fail=False, session=Other())
