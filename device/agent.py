# agent: the network side of mpota, run as asyncio tasks beside the app.
#
# TCP: asyncio.start_server; per connection one StreamDecoder (its buffer is
# the only receive buffer), `readinto` straight into decoder.space(), every
# read under wait_for so a silent peer is dropped. Binary frames and JSON
# lines share the connection (service.Device.dispatch tells them apart).
#
# Connection policy: a peer that has not authenticated gets a small buffer,
# a few seconds in all to authenticate (bytes do not extend that) and a small
# quota of its own (max_unauth); when that quota is full, the OLDEST such
# connection is closed to make room, so idle or dripping sockets can never
# keep an operator out. Authenticated connections count against max_conn.
#
# UDP (legacy.udp, loaded only when the legacy service is on): MicroPython
# asyncio has no datagram endpoint, so a non-blocking socket is polled from a
# task; one reference frame per datagram.
# main() is the device's event loop: the agent and the app's main() beside it.
import gc
import sys
import socket
import asyncio

import hal
import proto
import framing
from proto import error_line, E_BUSY, E_TIMEOUT

_ACK_LEN = framing.HEADER_SIZE + 5  # ACK frame: acked u32
_NERR_LEN = framing.HEADER_SIZE + 12  # NERROR frame: 11-byte body


class Conn:
    def __init__(self, dev, r, w):
        self.r = r
        self.w = w
        self.authed = not dev.auth_on
        if self.authed:
            self.dec = framing.StreamDecoder(proto.MAX_FRAME, proto.MAX_LINE)
        else:
            self.dec = framing.StreamDecoder(proto.MAX_LINE_PRE_AUTH, proto.MAX_LINE_PRE_AUTH)
        self.nonce = None
        self.ack_due = False
        self.ack_val = 0
        self.t0 = hal.ticks_ms()
        self.ackb = None  # the data path's replies, made once authenticated
        self.nerrb = None
        self.task = None  # the task serving it (agent.Agent.serve)
        self.gone = False  # a write failed: the peer reset or closed

    def out(self, b):
        # A peer that is gone must not look like a handler's failure (which
        # would be answered with an internal error): note it, and the
        # connection loop closes after this batch.
        if not self.gone:
            try:
                self.w.write(b)
            except OSError:
                self.gone = True

    def ack(self, acked):
        if self.ackb is None:
            self.ackb = bytearray(_ACK_LEN)
        proto.ack_into(self.ackb, acked)
        self.out(self.ackb)

    def nerror(self, op, code, value=0, ref=0):
        if self.nerrb is None:
            self.nerrb = bytearray(_NERR_LEN)
        proto.nerror_into(self.nerrb, op, code, value, ref)
        self.out(self.nerrb)


class Agent:
    """The connections of one device: who is connected, who authenticated."""

    def __init__(self, dev):
        self.dev = dev
        self.conns = []  # every open Conn, oldest first
        self.listening = False  # housekeeping stops feeding the watchdog without it

    def admit(self, c):
        # -> None when c may stay, else why not
        cfg = self.dev.cfg
        unauth = [x for x in self.conns if not x.authed]
        if not c.authed and len(unauth) >= cfg["max_unauth"]:
            # The oldest stranger makes room. Its own task is cancelled, so it
            # leaves the poller and closes its socket itself: closing a socket
            # that another task still waits on would leave a stale poll entry
            # whose file descriptor the next connection may get.
            unauth[0].task.cancel()
            self.conns.remove(unauth[0])
        if len(self.conns) - len(unauth) >= cfg["max_conn"]:
            return "too many connections"
        self.conns.append(c)
        return None

    async def serve(self, r, w):
        dev = self.dev
        c = None
        try:
            c = Conn(dev, r, w)
            c.task = asyncio.current_task()
            why = self.admit(c)
            if why:
                c = None
                w.write(error_line(None, E_BUSY, why))
                await w.drain()
                return
            await self._loop(c)
        except OSError:
            pass  # reset by peer, broken pipe: just close
        except asyncio.CancelledError:
            pass  # evicted to make room (Agent.admit): end quietly
        except MemoryError:
            gc.collect()  # the slot is freed below; the peer may retry
        except Exception as e:
            sys.print_exception(e)
        finally:
            if c is not None:
                if c in self.conns:
                    self.conns.remove(c)
                dev.drop(c)
            try:
                w.close()
                await w.wait_closed()
            except Exception:
                pass

    async def _loop(self, c):
        dev = self.dev
        r = c.r
        w = c.w
        dec = c.dec
        timeout = dev.cfg["timeout"] * 1000
        auth_ms = dev.cfg["auth_timeout"] * 1000
        while c in self.conns:
            if c.authed:
                left = timeout
            else:
                left = auth_ms - hal.ticks_diff(hal.ticks_ms(), c.t0)
                if left <= 0:
                    w.write(error_line(None, E_TIMEOUT, "not authenticated within %d s: closing" % (auth_ms // 1000)))
                    await w.drain()
                    break
            try:
                n = await asyncio.wait_for_ms(r.readinto(dec.space()), left)
            except asyncio.TimeoutError:
                if not c.authed:
                    continue  # the auth deadline above closes it
                w.write(error_line(None, E_TIMEOUT, "no data for %d s: closing" % (timeout // 1000)))
                await w.drain()
                break
            if not n:
                break
            dec.advance(n)
            dev.dispatch(c)
            if c.gone:
                break
            await w.drain()
            await dev.after_reply()


async def _housekeeping(ag):
    # Feed the watchdog while the listener is up; close an update session
    # that went silent (it stays resumable); track memory during sessions.
    dev = ag.dev
    idle_ms = dev.cfg["timeout"] * 1000
    n = 0
    while True:
        if ag.listening:
            hal.wdt_feed()
        s = dev.session
        if s is not None:
            if hal.ticks_diff(hal.ticks_ms(), s.t) > idle_ms:
                print("mpota: update session silent for %d s: closed (resumable)" % (idle_ms // 1000))
                dev.close_session()
                dev.idle()
            n += 1
            if n % 5 == 0:
                dev.sample_mem()
        await asyncio.sleep_ms(200)


def _addr(host, port, kind):
    return socket.getaddrinfo(host, port, 0, kind)[0][-1]


async def run(ag, ready=None):
    """Connect Wi-Fi (board), listen, print the ready line, serve until the
    listener fails (the caller starts again)."""
    dev = ag.dev
    cfg = dev.cfg
    host = cfg["host"]
    if hal.PLATFORM == "rp2":
        while True:
            try:
                ip = hal.wlan_connect(cfg.get("wifi") or {})
                print("mpota: wifi up, ip %s" % ip)
                break
            except Exception as e:
                print("mpota: wifi: %s (retrying in 10 s)" % e)
                await asyncio.sleep(10)
        hal.wlan_power_save(True)
    else:
        ip = host
    tcp = cfg["tcp_port"]
    srv = None
    udp = None
    smp = None
    try:
        while srv is None:
            try:
                srv = await asyncio.start_server(ag.serve, host, tcp, backlog=2)
            except OSError as e:
                print("mpota: cannot listen on %s:%d (%s): retrying" % (host, tcp, e))
                await asyncio.sleep(2)
        udp_note = "off"
        if cfg["legacy_udp"]:
            try:
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind(_addr(host, cfg["udp_port"], socket.SOCK_DGRAM))
                udp.setblocking(False)
                import legacy
                asyncio.create_task(legacy.udp(dev, udp))
                udp_note = "%s:%d" % (ip, cfg["udp_port"])
            except OSError as e:
                print("mpota: legacy UDP unavailable: %s" % e)
        if cfg["smp_udp"]:  # SMP (MCUmgr) over UDP: smpudp.py stays, smp.py loads per request
            import smpudp
            smp = smpudp.start(dev, host, cfg["smp_port"])
        ag.listening = True
        print("mpota: ready tcp=%s:%d udp=%s auth=%s" % (ip, tcp, udp_note, "on" if dev.auth_on else "off"))
        if ready is not None:
            ready.set()
        await srv.wait_closed()
    finally:
        ag.listening = False
        if srv is not None:
            srv.close()  # never two listeners on one port
        if udp is not None:
            udp.close()
        if smp is not None:
            smp.cancel()  # the task closes its socket


# -- the device's event loop (main.py calls main() after bootmgr.boot()) --------

def _err(e):
    return "%s: %s" % (type(e).__name__, e)


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
        app["error"] = _err(e)
        print("mpota: app crashed:")
        sys.print_exception(e)
    gc.collect()


async def _agent(ag, ready):
    while True:
        try:
            await run(ag, ready)
        except Exception as e:  # keep the device updatable whatever happened
            print("mpota: agent failed, restarting:")
            sys.print_exception(e)
        await asyncio.sleep(1)


async def _main(dev, mod):
    ag = Agent(dev)
    ready = asyncio.Event()
    asyncio.create_task(_housekeeping(ag))
    t = asyncio.create_task(_agent(ag, ready))
    if dev.cfg["wdt"]:
        hal.wdt_start(dev.cfg["wdt"])
    if mod is not None:
        # Let the agent listen first (a sync main() blocks the loop), but do
        # not hold the app back for long if Wi-Fi is slow.
        try:
            await asyncio.wait_for(ready.wait(), 30)
        except asyncio.TimeoutError:
            pass
        await _run_app(dev, mod)
    else:
        print("mpota: no application: agent only")
    await t


def main(dev, mod):
    """Serve forever; `mod` is the app's main module (None: agent only).
    A sync main() runs inside the event loop: it must return (set up timers,
    IRQs) or the agent starves; a long-running app is `async def main()`."""
    asyncio.run(_main(dev, mod))
