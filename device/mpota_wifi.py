# wifi: the station link as one asyncio task -- join, watch, rejoin with
# backoff -- so the event loop (the app's main() and the agent's timeouts)
# never waits on the radio.
#
# Loaded by agent.run() on a board (and in the simulator with --wifi), then
# resident: the task and one Link (3.2 KB as .mpy on the 32-bit v1.27 build). It polls
# hal.wlan_state() with asyncio.sleep_ms; hal holds the only network.WLAN
# calls. The agent listens while the link is up; when it goes, the Link
# closes the listener (on_down) and the agent waits for the next join.
#
# A radio call that raises (rp2: wlan.active(True) raises OSError EPERM when
# the CYW43 does not start; connect(), status(), ifconfig(), disconnect() can
# raise too) is a failed attempt: the task reports it (status "link_error",
# e.g. "OSError: [Errno 1] EPERM"), backs off and tries again; it never ends.
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
                "link_joins": self.joins, "link_error": self.error,
                "rssi": hal.wlan_rssi() if self.state == "up" else None}

    def _feed(self):
        # the agent is healthy while it rejoins, for a bounded time
        if self.feed_ms < 0 or hal.ticks_diff(hal.ticks_ms(), self.down_t) < self.feed_ms:
            hal.wdt_feed()

    async def _wait(self, ms):
        while ms > 0:
            await asyncio.sleep_ms(_POLL_MS)
            self._feed()
            ms -= _POLL_MS

    def _fail(self, e):
        # a radio call raised (rp2: OSError EPERM when the CYW43 does not
        # start; connect() can raise too): the attempt failed, the task goes on
        self.error = str(e) if isinstance(e, ValueError) else "%s: %s" % (type(e).__name__, e)

    def _leave(self):
        try:
            hal.wlan_leave()
        except Exception as e:
            self._fail(e)

    async def _join(self):
        # one attempt: True once up (self.ip set), False after a failure or a
        # timeout. Any exception of a radio call is a failed attempt.
        self.joins += 1
        try:
            hal.wlan_join(self.cfg)  # ValueError: no ssid, a config error
            t0 = hal.ticks_ms()
            while hal.ticks_diff(hal.ticks_ms(), t0) < _JOIN_MS:
                await asyncio.sleep_ms(_POLL_MS)
                self._feed()
                st = hal.wlan_state()
                if st == "up":
                    self.ip = hal.wlan_ip()
                    return True
                if st == "bad_auth" or st == "no_ap" or st == "fail":
                    self.error = st
                    break
            else:
                self.error = "timeout"
        except Exception as e:
            self._fail(e)
        self._leave()
        return False

    async def _watch(self):
        # while up: returns when the link is lost, or a radio call raised
        try:
            while hal.wlan_state() == "up":
                await asyncio.sleep_ms(_WATCH_MS)
        except Exception as e:
            self._fail(e)

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
            self.error = None
            self.state = "up"
            print("mpota: wifi up, ip %s" % self.ip)
            self.up.set()
            await self._watch()
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
            self._leave()


LINK = None  # the one Link (start())


def start(cfg):
    """The running Link; the first call starts its task."""
    global LINK
    if LINK is None:
        LINK = Link(cfg)
        asyncio.create_task(LINK.run())
    return LINK
