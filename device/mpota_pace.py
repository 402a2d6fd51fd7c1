# pace: the amplification limit of the datagram services (legacy UDP, SMP).
# A reply larger than its request would let a spoofed source be sent more
# than it cost to ask: the excess draws on a token bucket of RATE bytes a
# second, BURST at most. A reply that overdraws it is still sent unchanged,
# and the service reads nothing more until the debt is paid (pace()), so a
# flood gets back at most BURST + RATE bytes a second (plus the one reply
# that overdraws) more than it sent.
import asyncio

import mpota_hal as hal

RATE = 8192
BURST = 4096


class Pace:
    def __init__(self, sock):
        self.s = sock
        self.req = 0  # the length of the datagram being answered
        self.tokens = BURST
        self.tt = hal.ticks_ms()

    def sendto(self, b, addr):
        n = len(b) - self.req
        if n > 0:
            self.tokens -= n
        try:
            self.s.sendto(b, addr)
        except OSError:
            pass  # the peer retries

    async def pace(self):
        # refill the bucket; while in debt, wait until it is paid
        now = hal.ticks_ms()
        self.tokens = min(BURST, self.tokens + hal.ticks_diff(now, self.tt) * RATE // 1000)
        self.tt = now
        if self.tokens < 0:
            ms = (-self.tokens * 1000 + RATE - 1) // RATE
            await asyncio.sleep_ms(ms)
            self.tokens += ms * RATE // 1000
            self.tt = hal.ticks_ms()
