# For the scripts in tests/device: the few hal calls the device paths they
# run make (mpota_hal.py takes its API from "simhal"); the rest of hal's API
# is never called there. Importing this module installs it.
import sys
import time


class Board:
    reset_cause = staticmethod(lambda: "power_on")
    unique_id = staticmethod(lambda: "e661-test")
    ticks_ms = staticmethod(time.ticks_ms)
    ticks_diff = staticmethod(time.ticks_diff)

    def __getattr__(self, name):
        return None


sys.modules["simhal"] = Board()
