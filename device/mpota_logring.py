# logring: the last few KiB of the console -- the app's output and the
# agent's own -- in one buffer allocated at boot (docs/memory.md, "Logs").
# Resident while "log_size" (/mpota.json) is not 0; with 0 it is never loaded.
#
# The console reaches it through the hal seam (hal.log_tee): on a board
# os.dupterm() makes it a second console, so every print() and every
# traceback MicroPython writes lands here; the simulator tees print() and
# hal.print_exception(). A write never allocates (dupterm would switch off a
# stream whose write raised, MemoryError included): a slice store is built
# on the stack (py/vm.c), a wrapping write goes byte by byte.
# The logs op (device/mpota_logs.py) reads it by cursor: the number of bytes
# written since boot, modulo 2**29 (a small int on the 32-bit build).
import uio as io
from micropython import const

MASK = const(0x1FFFFFFF)


class Ring(io.IOBase):
    def __init__(self, size):
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.n = 0  # the cursor: bytes written since boot, modulo MASK + 1
        self.p = 0  # where the next byte goes in buf
        self.kept = 0  # bytes held (up to size)

    def write(self, b):
        n = len(b)
        z = len(self.buf)
        s = n - z if n > z else 0  # a write longer than the ring keeps its tail
        p = self.p
        if s == 0 and p + n <= z:
            self.mv[p:p + n] = b  # the slice object is on the stack: no allocation
            p += n
            if p == z:
                p = 0
        else:
            buf = self.buf
            for i in range(s, n):  # range in a for loop allocates nothing
                buf[p] = b[i]
                p += 1
                if p == z:
                    p = 0
        self.p = p
        self.n = (self.n + n) & MASK
        k = self.kept + n
        self.kept = z if k > z else k
        return n

    def readinto(self, b):
        return None  # no input: dupterm reads "nothing yet"

    def ioctl(self, req, arg):
        return 0  # poll: never readable
