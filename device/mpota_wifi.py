# wifi: the station link as one asyncio task -- join, watch, rejoin with
# backoff -- so the event loop (the app's main() and the agent's timeouts)
# never waits on the radio.
#
# Loaded by agent.run() on a board (and in the simulator with --wifi), then
# resident: the task and one Link (2.9 KB as .mpy on the 32-bit v1.27 build). It polls
# hal.wlan_state() with asyncio.sleep_ms; hal holds the only network.WLAN
# calls. The agent listens while the link is up; when it goes, the Link
# closes the listener (on_down) and the agent waits for the next join.
#
# Watchdog: while the link is up, housekeeping feeds it (the agent is
# listening). While the link is down this task feeds it, but only for
# `down_reset_s` (config wifi.down_reset_s, default 900 s; 0 = always): a
# board that cannot rejoin for that long is reset by the watchdog, which
# also restarts a wedged radio. Without a watchdog it retries forever.
import asyncio
from micropython import const

import mpota_hal as hal

_POLL_MS = const(250)  # while joining or backing off
_WATCH_MS = const(1000)  # while up
_JOIN_MS = const(15000)  # one join attempt
_BACKOFF_MAX_MS = const(30000)


class Link:
    def __init__(self, cfg):
        self.cfg = cfg  # the config's "wifi" object
        self.state = "connecting"  # up | down | connecting (status "link")
        self.ip = None
        self.drops = 0  # times an up link was lost
        self.joins = 0  # join attempts
        self.error = None  # why the last attempt failed (status "link_error")
        self.down_t = hal.ticks_ms()  # when the link was last lost (or the task started)
        self.up = asyncio.Event()  # set while the link is up
        self.on_down = None  # the agent's listener close(), while it listens
        try:
            s = int(cfg.get("down_reset_s", 900))
        except (TypeError, ValueError):
            s = 900
        self.feed_ms = s * 1000 if s > 0 else -1

    def status(self):
        return {"link": self.state, "ip": self.ip, "link_drops": self.drops,
                "link_joins": self.joins, "link_error": self.error}

    def _feed(self):
        # the agent is healthy while it rejoins, for a bounded time
        if self.feed_ms < 0 or hal.ticks_diff(hal.ticks_ms(), self.down_t) < self.feed_ms:
            hal.wdt_feed()

    async def _wait(self, ms):
        while ms > 0:
            await asyncio.sleep_ms(_POLL_MS)
            self._feed()
            ms -= _POLL_MS

    async def _join(self):
        # one attempt: True once up, False after a failure or a timeout
        self.joins += 1
        try:
            hal.wlan_join(self.cfg)
        except ValueError as e:  # no ssid: a config error, report and keep trying
            self.error = str(e)
            return False
        t0 = hal.ticks_ms()
        while hal.ticks_diff(hal.ticks_ms(), t0) < _JOIN_MS:
            await asyncio.sleep_ms(_POLL_MS)
            self._feed()
            st = hal.wlan_state()
            if st == "up":
                return True
            if st == "bad_auth" or st == "no_ap" or st == "fail":
                self.error = st
                break
        else:
            self.error = "timeout"
        hal.wlan_leave()
        return False

    async def run(self):
        backoff = 1000
        while True:
            self.state = "connecting"
            if not await self._join():
                print("mpota: wifi: join failed (%s), retrying in %d s" % (self.error, backoff // 1000))
                self.state = "down"
                await self._wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_MS)
                continue
            backoff = 1000
            self.ip = hal.wlan_ip()
            self.error = None
            self.state = "up"
            print("mpota: wifi up, ip %s" % self.ip)
            self.up.set()
            while hal.wlan_state() == "up":
                await asyncio.sleep_ms(_WATCH_MS)
            # lost: stop listening, then rejoin
            self.up.clear()
            self.state = "down"
            self.ip = None
            self.drops += 1
            self.down_t = hal.ticks_ms()
            print("mpota: wifi down (link lost %d times): rejoining" % self.drops)
            f = self.on_down
            if f is not None:
                f()
            hal.wlan_leave()


LINK = None  # the one Link (start())


def start(cfg):
    """The running Link; the first call starts its task."""
    global LINK
    if LINK is None:
        LINK = Link(cfg)
        asyncio.create_task(LINK.run())
    return LINK
