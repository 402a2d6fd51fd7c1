# hello: the smallest mpota application.
#
# The agent mounts the image at /app and runs main() beside itself. A new
# version boots on trial; calling mpota.confirm() after a successful start
# keeps it, and a version that never confirms is rolled back by the device.
# Runs on a Pico W and on the unix-port simulator (the LED is optional).
import asyncio

import mpota


NAME = "hello"  # shown by `flash.py status`


def version():
    """The running image's version (from the agent), else VERSION next to main.py."""
    try:
        st = mpota.status()
        return st["slots"][st["running"]]["version"]
    except Exception:  # outside the boot manager: fall back to the file
        pass
    try:
        d = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
        with open(d + "/VERSION") as f:
            return f.read().strip()
    except (OSError, NameError):
        return "unknown"


def led():
    # Only a board has machine.Pin("LED"); the simulator runs without it.
    try:
        import machine

        return machine.Pin("LED", machine.Pin.OUT)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None


async def main():
    v = version()
    print("hello: version %s started" % v)
    # A real app checks what it depends on (sensors, Wi-Fi, config) before
    # confirming; this one only needs to have started.
    r = mpota.confirm()
    if hasattr(r, "send"):  # tolerate an async confirm()
        await r
    print("hello: version %s confirmed" % v)
    pin = led()
    n = 0
    while True:
        if pin is not None:
            pin.toggle()
        n += 1
        if n % 60 == 0:
            print("hello: version %s alive" % v)
        await asyncio.sleep(1)
