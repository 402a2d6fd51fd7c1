# mpota: the API an application uses.
#
#   import mpota
#   mpota.confirm()   # "this version works": ends the trial, no rollback
#   mpota.status()    # dict, the same as the agent's status op
#
# Both work only under the mpota boot manager (device/main.py). They load
# the slot record for the call (an idle agent holds none) and let the
# agent release it again.
import sys

import mpota_agent as agent


def _dev():
    d = agent.DEVICE
    if d is None:
        raise RuntimeError("mpota: the boot manager is not running (main.py)")
    return d


def _with_slots(fn):
    d = _dev()
    import mpota_slots as slots
    slots.attach(d)
    try:
        return fn(d)
    finally:
        if d.ag is not None:
            d.ag.settle(False)  # mem_idle: measured once this call has returned


def confirm():
    """Confirm the running slot. True when it is confirmed after the call
    (also when it already was); False when no slot runs (no OTA image)."""
    d = _dev()
    if d.running is None:
        return False
    _with_slots(lambda d: d.sl.confirm())
    m = sys.modules.get("mpota_mqtt")
    if m is not None:
        m.poke()  # the broker hears of it (docs/mqtt.md)
    return True


def status():
    def st(d):
        import mpota_ops as ops
        return ops.status(d)
    return _with_slots(st)
