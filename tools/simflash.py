# NOR flash simulator for the unix-port MicroPython (tools/, never deployed).
#
# A block device with MicroPython's block protocol, backed by a file, that
# keeps the rules of the Pico W's W25Q flash so that erase/program bugs show
# up in the simulator instead of on a board:
#   - erase sets a whole 4096-byte block to 0xFF;
#   - programming can only clear bits; a program that would turn a 0 back into
#     a 1 raises OSError (and says so on stderr) -- never silently "works";
#   - writeblocks(n, buf) erases then programs (as rp2.Flash does),
#     writeblocks(n, buf, off) only programs, ioctl(6, n) erases one block;
#   - programs go in 256-byte pages.
# Optional timing model 'w25q' sleeps the typical W25Q figures for real.
# Every erase and every page program is counted; with cut_after=N, N
# operations complete and the next one is torn half way, then the process is
# killed (SIGKILL, as abrupt as pulling the plug).
import os
import sys
import time

import micropython
from micropython import const

BLOCK = const(4096)
PAGE = const(256)
PICO_W_BLOCKS = const(212)  # 848 KiB filesystem of RPI_PICO_W

# W25QxxJV typical figures (docs/board.md): 4 KiB erase 45 ms, page program 0.6 ms.
TIMINGS = {"none": (0, 0), "w25q": (45, 600)}  # (erase ms, page program us)


@micropython.viper
def _first_set_bit_violation(old: ptr8, new: ptr8, n: int) -> int:  # noqa: F821
    # index of the first byte where `new` has a 1 that `old` lacks, else -1
    i = 0
    while i < n:
        if new[i] & (old[i] ^ 0xFF):
            return i
        i += 1
    return -1


def _create(path, size):
    # a fresh chip is erased: all 0xFF
    ff = b"\xff" * BLOCK
    with open(path, "wb") as f:
        n = 0
        while n < size:
            f.write(ff)
            n += BLOCK


class SimFlash:
    def __init__(self, path, block_count=PICO_W_BLOCKS, timing="none", cut_after=None):
        if timing not in TIMINGS:
            raise ValueError("simflash: timing must be one of %s" % ", ".join(TIMINGS))
        self.block_count = block_count
        self.size = block_count * BLOCK
        try:
            have = os.stat(path)[6]
        except OSError:
            have = -1
        if have < 0:
            _create(path, self.size)
        elif have != self.size:
            raise OSError("simflash: %s is %d bytes, expected %d (%d blocks)"
                          % (path, have, self.size, block_count))
        self.path = path
        self._f = open(path, "r+b")  # noqa: SIM115 (open for the device's life)
        # One page of scratch: on the board the flash driver is C and costs
        # the Python heap nothing, so the simulator keeps its share small.
        self._old = bytearray(PAGE)  # read-modify buffer, reused
        self._oldmv = memoryview(self._old)
        self._ff = b"\xff" * PAGE
        self.erase_ms, self.page_us = TIMINGS[timing]
        self.timing = timing
        self.erases = 0
        self.programs = 0  # page programs
        self.bytes_programmed = 0
        self.cut_after = cut_after  # None: disarmed; else total ops allowed
        self._armed_at = 0

    # -- op counter and power cut --------------------------------------------
    def arm(self, cut_after):
        # cut after `cut_after` more operations (None disarms)
        ops = self.erases + self.programs
        self._armed_at = ops
        self.cut_after = None if cut_after is None else ops + cut_after

    def _kill(self, what):
        # The torn operation is already in the file (unbuffered posix writes):
        # now drop dead without flushing or unwinding anything.
        self._f.flush()
        sys.stderr.write("simflash: POWER CUT during %s (after %d complete operations)\n"
                         % (what, self.erases + self.programs - self._armed_at))
        os.system("kill -9 $PPID")
        # not reached unless kill failed
        time.sleep_ms(1000)
        raise OSError("simflash: power cut could not kill the process")

    # -- primitives ------------------------------------------------------------
    def _check(self, addr, length):
        if addr < 0 or addr + length > self.size:
            raise OSError("simflash: access 0x%x..0x%x outside the flash (0x%x bytes)"
                          % (addr, addr + length, self.size))

    def erase(self, block):
        if block < 0 or block >= self.block_count:
            raise OSError("simflash: erase of block %d outside 0..%d" % (block, self.block_count - 1))
        f = self._f
        f.seek(block * BLOCK)
        torn = self.cut_after is not None and self.erases + self.programs >= self.cut_after
        # torn erase: first half erased, second half still holds old data
        for _ in range(BLOCK // PAGE // 2 if torn else BLOCK // PAGE):
            f.write(self._ff)
        if torn:
            self._kill("erase of block %d" % block)
        self.erases += 1
        if self.erase_ms:
            time.sleep_ms(self.erase_ms)

    def program(self, addr, data):
        # Program `data` at byte address `addr`, page by page (one read and
        # one write per page).
        n = len(data)
        self._check(addr, n)
        src = memoryview(data)
        f = self._f
        done = 0
        while done < n:
            a = addr + done
            seg = min(n - done, PAGE - a % PAGE)  # one page at a time
            old = self._oldmv[:seg]
            new = src[done:done + seg]
            f.seek(a)
            f.readinto(old)
            bad = _first_set_bit_violation(old, new, seg)
            if bad >= 0:
                msg = ("simflash: program at 0x%x would set bits 0->1 (flash 0x%02x, data 0x%02x): "
                       "NOR flash can only clear bits -- the block was not erased first"
                       % (a + bad, old[bad], new[bad]))
                sys.stderr.write(msg + "\n")
                raise OSError(msg)
            pages = (a + seg - 1) // PAGE - a // PAGE + 1
            ops = self.erases + self.programs
            if self.cut_after is not None and ops + pages > self.cut_after:
                # the tripping page is torn: everything before it, then half of it
                k = self.cut_after - ops  # pages that complete
                page = a // PAGE + k
                end = max(a, page * PAGE)  # where the torn page's data starts
                page_end = min((page + 1) * PAGE, a + seg)
                torn = end + (page_end - end) // 2
                f.seek(a)
                f.write(new[: torn - a])
                self.programs += k
                self._kill("page program at 0x%x" % end)
            f.seek(a)
            f.write(new)
            self.programs += pages
            self.bytes_programmed += seg
            if self.page_us:
                time.sleep_us(self.page_us * pages)
            done += seg

    # -- MicroPython block protocol --------------------------------------------
    def readblocks(self, n, buf, off=0):
        addr = n * BLOCK + off
        self._check(addr, len(buf))
        self._f.seek(addr)
        self._f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:
            # rp2.Flash: erase every block the buffer covers, then program
            nb = (len(buf) + BLOCK - 1) // BLOCK
            for i in range(nb):
                self.erase(n + i)
            self.program(n * BLOCK, buf)
        else:
            self.program(n * BLOCK + off, buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.block_count
        if op == 5:  # block size
            return BLOCK
        if op == 6:  # erase block
            self.erase(arg)
            return 0
        if op == 3:  # sync
            self._f.flush()
        return 0 if 1 <= op <= 3 else None  # init, deinit, sync

    def sync(self):
        self._f.flush()

    def close(self):
        self._f.close()

    def stats(self):
        return {"erases": self.erases, "programs": self.programs, "ops": self.erases + self.programs,
                "bytes_programmed": self.bytes_programmed, "timing": self.timing}
