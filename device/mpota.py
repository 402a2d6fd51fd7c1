# mpota: the API an application uses.
#
#   import mpota
#   mpota.confirm()   # "this version works": ends the trial, no rollback
#   mpota.status()    # dict, the same as the agent's status op
#
# Both work only under the mpota boot manager (device/main.py).
import service


def _dev():
    d = service.DEVICE
    if d is None:
        raise RuntimeError("mpota: the boot manager is not running (main.py)")
    return d


def confirm():
    """Confirm the running slot. True when it is confirmed after the call
    (also when it already was); False when no slot runs (no OTA image)."""
    d = _dev()
    if d.sl.running is None:
        return False
    d.sl.confirm()
    return True


def status():
    import ops
    return ops.status(_dev())
