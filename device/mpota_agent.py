# agent: the resident part of mpota, run as asyncio tasks beside the app.
#
# Only what must stay in RAM between connections lives here (docs/memory.md):
# the Device's state, the TCP listener, housekeeping (watchdog, silent
# sessions, memory samples) and the app runner. Everything that serves a
# connection -- conn.py (the per-connection loop), service.py (routing),
# framing, proto, the handlers and the slot record -- is imported when a
# peer connects and released (settle()) when the last one has gone and no
# update session is open, so an idle device holds only this module.
#
# UDP (udp.py, only when the legacy service is on): a polled datagram
# socket; with it on, the connection modules stay loaded.
# main() is the device's event loop: the agent and the app's main() beside it.
import gc
import sys
import asyncio
from micropython import const

import mpota_hal as hal


DEVICE = None  # the running Device (bootmgr sets it; mpota.py reads it)

# Module lifetimes, declared once (docs/memory.md, "Lifetimes"): every
# module the agent loads and releases, by the scope that releases it
# (Device.end_request, Agent.settle). Not here: the resident ones (agent,
# hal; wifi, udp, smpudp and their pace once started; logring while "log_size" > 0)
# and the boot scope (bootmgr._BOOT).
# One copy of each at a time: a module is never released while an object
# made by it (a session, the slot record) is alive. The scopes (bits):
_REQUEST = const(2)  # after each request (service.idle, leanconn._done)
_SESSION = const(4)  # after a request, once no update session is open (also smp.py, out of heap)
_CONNECTION = const(8)  # once the device is quiet: no connection, no session (Agent.settle)
_LEAN_REQUEST = const(16)  # lean connections: after each request, once no session (the slot record)
# ... and which modules bootmgr._intern imports at boot for their names, per
# mode: a connection's modules and the handlers of the everyday requests and `begin`
I_LEAN = const(32)
I_LIVE = const(64)
_CI = const(8 | 32 | 64)
# _MODS: each module's name less "mpota_" (mods() gives the names), in one
# string: a tuple of 31 strings cost 1,120 B of resident heap, this 336 B
# (32-bit v1.27, .mpy)
_MODS = ("ops auth hmac_sha256 trustkeys "
         "update upload mcuboot trust ed25519 rareops "
         "legacy "
         "lineproto connpolicy dispatch linemac slots "
         "leanconn conn service framing proto checksums "
         "session smp cbor discover usb "
         "mqttcmd pull command logs")
_LIFE = bytes((  # one per _MODS entry, in its order (tests/test_device_imports.py checks the two)
    _REQUEST | I_LEAN | I_LIVE, _REQUEST | I_LEAN | I_LIVE, _REQUEST | I_LEAN | I_LIVE, _REQUEST,
    _SESSION | I_LEAN | I_LIVE, _SESSION | I_LEAN | I_LIVE, _SESSION, _SESSION, _SESSION, _SESSION,
    _SESSION,  # legacy: pinned while the legacy UDP service runs (udp.py imports it)
    _CI, _CI, _CI, _CI, _CI | _LEAN_REQUEST,
    _CONNECTION | I_LEAN, _CONNECTION | I_LIVE, _CONNECTION | I_LIVE, _CONNECTION | I_LIVE,
    _CONNECTION | I_LIVE, _CONNECTION | I_LIVE,
    _CONNECTION | I_LIVE, _CONNECTION, _CONNECTION,
    _CONNECTION,  # discover: the listener's start (agent.run) opens the sockets, its settle() drops it
    _CONNECTION,  # usb: imported by the host's raw-REPL snippet only (host/usb.py); end() resets
    _SESSION, _SESSION, _SESSION,  # mqttcmd, pull, command: a command, or an install's whole download
    _REQUEST))  # logs: the logs op; a crash loads it too (_crashed) and drops it at once


def mods(bits):
    """The modules (full names) whose lifetime in _LIFE has any of `bits`."""
    out = []
    i = 0
    for b in _LIFE:
        j = _MODS.find(" ", i)
        if j < 0:
            j = len(_MODS)
        if b & bits:
            out.append("mpota_" + _MODS[i:j])
        i = j + 1
    return out


def _shield():
    # Put the firmware's io and socket in sys.modules, which the import system
    # consults before the filesystem; returns what was there (_unshield puts it
    # back). asyncio loads its parts on first use, and asyncio/event.py imports
    # `io`, start_server `socket`, by their plain names, when the app's files
    # are on sys.path: an app's io.py or socket.py would stand in for them
    # (docs/security.md). Nothing awaits inside, so no other task sees it.
    import uio
    import usocket
    m = sys.modules
    had = m.get("io"), m.get("socket")
    m["io"], m["socket"] = uio, usocket
    return had


def _unshield(had):
    m = sys.modules
    for n, v in zip(("io", "socket"), had):
        if v is None:
            m.pop(n, None)
        else:
            m[n] = v


_UPDATE_MODE_MS = const(120000)  # lean mode's update boot waits this long for the peer
_TICK_MS = const(200)  # housekeeping's period


class Device:
    """What the agent knows between connections. Resident, so small: the
    behaviour is in service.py and the handlers, loaded with a connection."""
    VERSION = "0.5.0"
    trust = None  # status's "trust" (the trusted keys' fingerprints): set at boot and by each key change
    log = None  # the console's ring (mpota_logring.Ring; None: "log_size" 0)
    last_crash = None  # the saved traceback's summary line (bootmgr reads it, logs.save_tb renews it)
    tb_writes = 0  # traceback files written this boot (logs.save_tb bounds them)
    pulling = False  # an MQTT install between its command and its session (mpota_pull.begin): settle() waits

    def __init__(self, cfg, running=None, note="", key=None, mem_base=0, id="", boot_reason="unknown",
                 resets=0):
        self.cfg = cfg
        self.running = running  # slot index whose app runs (bootmgr), None: no app
        self.note = note  # boot facts (slot choice, config errors) for status
        self.key = key  # 32 bytes (/mpota_key.bin), None: no key installed
        self.mem_base = mem_base  # heap in use before the agent (firmware, VFS)
        self.id = id  # the board's unique id, hex (halboot)
        self.auth_on = bool(cfg.get("auth", True))
        self.mode = cfg.get("mode", "live")  # live | lean | update (bootmgr)
        self.sl = None  # slots.Slots while connections are served (slots.attach)
        self.session = None  # the one update session (upload.Session)
        self.app = {"state": "none", "name": None, "error": None}
        self.t0 = hal.ticks_ms()
        self.mem_peak = 0
        self.mem_idle = 0  # mem_alloc when last quiet (settle), for status
        self.reset_ms = -1  # >= 0: reset after the reply is flushed and this delay
        self.boot_reason = boot_reason  # halboot.reset_cause()
        self.resets = resets  # resets since power-on (halboot.resets())
        # The scratch buffer for READ_DATA / legacy replies (scratch()),
        # dropped with the connection modules.
        self.buf = None
        self.mv = None
        self.legacy_udp = False  # the legacy UDP service keeps the modules loaded
        self.ag = None  # the Agent serving it (agent._main)
        self.chal = None  # the auth challenges' state (auth.challenge), from the first hello

    def uptime(self):
        return hal.ticks_diff(hal.ticks_ms(), self.t0)

    def sample_mem(self):
        # mem_peak: the highest LIVE heap seen. MicroPython collects only when
        # the heap is full, so a raw mem_alloc() high-water would be the heap
        # size: collect first. From housekeeping while a session runs and at
        # the end of a commit, never per read.
        gc.collect()
        a = gc.mem_alloc()
        if a > self.mem_peak:
            self.mem_peak = a

    def scratch(self):
        if self.buf is None:
            gc.collect()  # 4 KB in one piece: make the room first
            self.buf = bytearray(4110)  # lineproto.MAX_FRAME
            self.mv = memoryview(self.buf)
        return self.mv

    def open_session(self, s):
        self.session = s
        hal.wlan_power_save(False)  # power saving: ~200 ms RTT (docs/board.md)

    def close_session(self):
        s = self.session
        if s is not None:
            self.session = None
            s.w.close()
            hal.wlan_power_save(True)

    async def after_reply(self):
        # a reset asked for by the request just answered (op reset, lean
        # begin), once the reply is flushed; every transport calls this
        if self.reset_ms >= 0:
            await asyncio.sleep_ms(self.reset_ms)
            self.close_session()
            hal.reset()

    def end_request(self, lean=False, scope=_REQUEST):
        """After each request (service.idle, leanconn._done; smp.py when one
        ran out of heap): release what only the request needed; once no
        update session is open, what only a session needed too, and on a lean
        connection (`lean`) that conn.py does not share, the slot record.
        Agent.settle passes every scope. A module is collected once nothing
        refers to it (a reimport loads it again); the legacy UDP service
        keeps legacy.py (udp.py imports it)."""
        if self.session is None and not (lean and (self.legacy_udp or "mpota_conn" in sys.modules)):
            scope |= _SESSION
            if lean:
                self.sl = None
                scope |= _LEAN_REQUEST
            elif not self.legacy_udp:
                self.buf = self.mv = None
        m = sys.modules
        for n in mods(scope):
            if not (self.legacy_udp and n == "mpota_legacy"):
                m.pop(n, None)


class Agent:
    """The connections of one device (conn.py serves each one)."""

    def __init__(self, dev):
        self.dev = dev
        dev.ag = self
        self.conns = []  # every open conn.Conn, oldest first
        self.listening = False  # housekeeping stops feeding the watchdog without it
        self.idle_due = False  # mem_idle to measure at housekeeping's next tick (settle)
        self.disc = None  # discovery: (socket, its poll, the answer) while listening (_disc_open)

    async def serve(self, r, w):
        try:
            await _serve(self, r, w)
        except (OSError, asyncio.CancelledError):
            pass  # reset by peer, broken pipe; or evicted to make room (connpolicy.admit)
        except MemoryError:
            gc.collect()  # its slot is freed (conn.py, leanconn.py): the peer may retry
        except Exception as e:  # a bug must not take the listener with it
            _crashed(self.dev, "agent request failed", e)
        try:
            w.close()
            await w.wait_closed()
        except Exception:
            pass
        self.settle()

    def settle(self, measure=True):
        """Release every connection module once the device is quiet, and
        measure mem_idle then. measure=False (mpota.py, called inside the
        app's call, whose frames still hold the modules and the reply it
        loaded: 7.8 KB too many on the 32-bit build) leaves the measure to
        housekeeping's next tick, from a frame of its own."""
        dev = self.dev
        if self.conns or dev.session is not None or dev.legacy_udp or dev.pulling:
            return
        dev.sl = None
        dev.end_request(False, _REQUEST | _CONNECTION | _LEAN_REQUEST)  # (and the session scope, buf)
        gc.collect()
        if measure:
            dev.mem_idle = gc.mem_alloc()
        self.idle_due = not measure


async def _serve(ag, r, w):
    # its own frame, so nothing refers to the connection's module once it
    # returns. Lean mode serves the everyday JSON ops with leanconn.py, a
    # fraction of the full stack (conn.py), which it hands over to for the rest.
    if ag.dev.mode == "lean":
        import mpota_leanconn as m
    else:
        import mpota_conn as m
    await m.serve(ag, r, w)


async def _housekeeping(ag):
    # Feed the watchdog while the listener is up; close an update session
    # that went silent (it stays resumable); track memory during sessions.
    dev = ag.dev
    idle_ms = dev.cfg["timeout"] * 1000
    n = 0
    quiet = 0
    while True:
        if ag.listening:
            hal.wdt_feed()
        d = ag.disc
        if d is not None:
            # discovery (mpota_discover.py opened it): one answer a tick (5 a
            # second) to a probe at least as long as the answer (no amplification:
            # docs/security.md); up to 4 more queued datagrams are dropped, so a
            # flood delays the next probe by a tick at most. Nothing is allocated
            # while none is queued (ipoll).
            for _ in d[1].ipoll(0):
                m = d[2]
                for _ in range(5):
                    try:
                        b, a = d[0].recvfrom(512)
                        if m is not None and len(b) >= len(m) and b.startswith(b'{"mpota":"discover"'):
                            d[0].sendto(m, a)
                            m = None
                    except OSError:
                        break  # the queue is empty (or the answer could not go: the peer asks again)
                b = a = m = None
        if ag.idle_due:
            ag.settle()  # measures, if still quiet (else the next settle does)
        s = dev.session
        if dev.mode == "update" and s is None and not ag.conns:
            # update mode (lean) that nobody uses: back to the app
            quiet += _TICK_MS
            if quiet > _UPDATE_MODE_MS:
                print("mpota: update mode unused for %d s: restarting" % (_UPDATE_MODE_MS // 1000))
                hal.reset()
        else:
            quiet = 0
        if s is not None:
            if hal.ticks_diff(hal.ticks_ms(), s.t) > idle_ms:
                print("mpota: update session silent for %d s: closed (resumable)" % (idle_ms // 1000))
                dev.close_session()
                ag.settle()
            n += 1
            if n % 5 == 0:
                dev.sample_mem()
        s = d = None  # holding the session over the sleep would keep it (and its modules) from settle()
        await asyncio.sleep_ms(_TICK_MS)


async def run(ag, ready=None):
    """Connect Wi-Fi (board), listen, print the ready line, serve until the
    listener fails (the caller starts again)."""
    dev = ag.dev
    cfg = dev.cfg
    host = cfg["host"]
    link = None
    if hal.PLATFORM == "rp2" or hal.wlan_state() is not None:
        import mpota_wifi as wifi  # resident from here: the link task (device/mpota_wifi.py)
        link = wifi.start(cfg.get("wifi") or {})
        await link.up.wait()  # the app runs meanwhile; wifi.py feeds the watchdog
        ip = link.ip
        hal.wlan_power_save(dev.session is None)
    else:
        ip = host
    tcp = cfg["tcp_port"]
    srv = None
    udp = None
    smp = None
    try:
        if not cfg["listen"]:  # (config: only with "mqtt", whose module is resident then)
            import mpota_mqtt as mqtt
            srv = mqtt.NoListener()
            mqtt = None
        while srv is None:
            try:
                had = _shield()
                try:
                    srv = await asyncio.start_server(ag.serve, host, tcp, backlog=2)
                finally:
                    _unshield(had)
            except OSError as e:
                print("mpota: cannot listen on %s:%d (%s): retrying" % (host, tcp, e))
                await asyncio.sleep(2)
        udp_note = "off"
        if cfg["legacy_udp"] and cfg["listen"]:  # keeps the connection modules loaded (udp.py)
            import mpota_udp as legacy_udp
            try:
                udp = legacy_udp.start(dev, host, cfg["udp_port"])
                udp_note = "%s:%d" % (ip, cfg["udp_port"])
            except OSError as e:
                print("mpota: legacy UDP unavailable: %s" % e)
        if cfg["smp_udp"] and cfg["listen"]:  # SMP (MCUmgr) over UDP: smpudp.py stays, smp.py loads per request
            import mpota_smpudp as smpudp
            smp = smpudp.start(dev, host, cfg["smp_port"])
        if (cfg["discover"] or cfg["announce"]) and cfg["listen"]:
            import mpota_discover as disc  # released by settle() below (_CONNECTION)
            ag.disc = disc.start(dev, host, tcp)
            disc = None
        ag.listening = True
        ag.settle()
        print("mpota: ready tcp=%s udp=%s auth=%s mode=%s" % (
            "%s:%d" % (ip, tcp) if cfg["listen"] else "off", udp_note, "on" if dev.auth_on else "off", dev.mode))
        if ready is not None:
            ready.set()
        if link is not None:
            link.on_down = srv.close  # a lost link ends this run(); _agent() waits for the next
            if not link.up.is_set():  # lost while the listener started
                srv.close()
        await srv.wait_closed()
    finally:
        if link is not None:
            link.on_down = None
        ag.listening = False
        if srv is not None:
            srv.close()  # never two listeners on one port
        if udp is not None:
            udp.close()
        if ag.disc is not None:
            ag.disc[0].close()
            ag.disc = None
        if smp is not None:
            smp.cancel()  # the task closes its socket


# -- the device's event loop (main.py calls main() after bootmgr.boot()) --------

async def _run_app(dev, mod):
    app = dev.app
    app["state"] = "running"
    try:
        r = mod.main()
        if hasattr(r, "send"):  # async def main(): a coroutine to await
            await r
        app["state"] = "stopped"
    except Exception as e:
        app["state"] = "crashed"
        app["error"] = "%s: %s" % (type(e).__name__, e)
        _crashed(dev, "app crashed", e)
    m = sys.modules.get("mpota_mqtt")
    if m is not None:
        m.poke()  # the broker's retained state says it (docs/mqtt.md)
    gc.collect()


def _crashed(dev, what, e):
    # on the console (and so in the log ring), then in the traceback file
    # that survives a reset (mpota_logs.save_tb, bounded)
    print("mpota: %s:" % what)
    hal.print_exception(e)
    import mpota_logs as logs  # released at once: crashes are rare (agent._LIFE)
    logs.save_tb(dev, what, e)
    logs = None
    sys.modules.pop("mpota_logs", None)


async def _agent(ag, ready):
    while True:
        try:
            await run(ag, ready)
        except Exception as e:  # keep the device updatable whatever happened
            _crashed(ag.dev, "agent failed", e)
        await asyncio.sleep(1)


async def _main(dev, mod):
    ag = Agent(dev)
    had = _shield()
    try:
        ready = asyncio.Event()  # loads asyncio/event.py (mpota_wifi uses it too)
    finally:
        _unshield(had)
    asyncio.create_task(_housekeeping(ag))
    t = asyncio.create_task(_agent(ag, ready))
    if dev.cfg["mqtt"]:  # calls home through a broker (docs/mqtt.md): resident from here
        import mpota_mqtt as mqtt
        asyncio.create_task(mqtt.run(dev, ready))
        mqtt = None
    # the watchdog, if any, runs since bootmgr.boot() (before the app's
    # import); housekeeping and the Wi-Fi link feed it from here
    if mod is not None:
        # Let the agent listen first (a sync main() blocks the loop), but do
        # not hold the app back for long if Wi-Fi is slow.
        try:
            await asyncio.wait_for(ready.wait(), 30)
        except asyncio.TimeoutError:
            pass
        await _run_app(dev, mod)
    elif dev.mode == "update":
        print("mpota: update mode: the app does not start, the heap serves the transfer")
    else:
        print("mpota: no application: agent only")
    await t


def main(dev, mod):
    """Serve forever; `mod` is the app's main module (None: agent only).
    A sync main() runs inside the event loop: it must return (set up timers,
    IRQs) or the agent starves; a long-running app is `async def main()`."""
    asyncio.run(_main(dev, mod))
