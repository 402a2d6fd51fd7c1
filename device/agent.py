# agent: the network side of mpota, run as asyncio tasks beside the app.
#
# TCP: asyncio.start_server; per connection one StreamDecoder (its buffer is
# the only receive buffer), `readinto` straight into decoder.space(), every
# read under wait_for so a silent peer is dropped. Binary frames and JSON
# lines share the connection (service.Device.dispatch tells them apart).
# UDP (legacy.udp, compiled only when the legacy service is on): MicroPython
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
        self.dec = framing.StreamDecoder(proto.MAX_FRAME, proto.MAX_LINE)
        self.authed = not dev.auth_on
        self.nonce = None
        self.ack_due = False
        self.ack_val = 0
        # preallocated replies for the data path (write() copies any rest)
        self.ackb = bytearray(_ACK_LEN)
        self.nerrb = bytearray(_NERR_LEN)

    def out(self, b):
        self.w.write(b)

    def ack(self, acked):
        proto.ack_into(self.ackb, acked)
        self.w.write(self.ackb)

    def nerror(self, op, code, value=0, ref=0):
        proto.nerror_into(self.nerrb, op, code, value, ref)
        self.w.write(self.nerrb)


async def maybe_reset(dev):
    if dev.reset_ms >= 0:
        await asyncio.sleep_ms(dev.reset_ms)
        dev.reset_now()


async def _serve(dev, r, w):
    timeout = dev.cfg.get("timeout", 30)
    if dev.nconn >= dev.cfg.get("max_conn", 4):
        try:
            w.write(error_line(None, E_BUSY, "too many connections"))
            await w.drain()
            w.close()
        except OSError:
            pass
        return
    dev.nconn += 1
    c = Conn(dev, r, w)
    dec = c.dec
    try:
        while True:
            try:
                n = await asyncio.wait_for(r.readinto(dec.space()), timeout)
            except asyncio.TimeoutError:
                w.write(error_line(None, E_TIMEOUT, "no data for %d s: closing" % timeout))
                await w.drain()
                break
            if not n:
                break
            dec.advance(n)
            dev.dispatch(c)
            await w.drain()
            dev.sample_mem()
            await maybe_reset(dev)
    except OSError:
        pass  # reset by peer, broken pipe: just close
    except Exception as e:
        sys.print_exception(e)
    finally:
        dev.nconn -= 1
        dev.drop(c)
        try:
            w.close()
            await w.wait_closed()
        except Exception:
            pass


async def _housekeeping(dev, udp_peer_timeout):
    # Feed the watchdog, close an abandoned UDP legacy session, track memory.
    while True:
        hal.wdt_feed()
        s = dev.session
        if s is not None and type(s.owner) is not Conn:  # the legacy UDP peer
            if hal.ticks_diff(hal.ticks_ms(), s.t) > udp_peer_timeout:
                print("mpota: legacy UDP session idle: closed")
                dev.close_session()
        if s is not None:
            dev.sample_mem()
        await asyncio.sleep_ms(200)


def _addr(host, port, kind):
    return socket.getaddrinfo(host, port, 0, kind)[0][-1]


async def run(dev, ready=None):
    """Connect Wi-Fi (board), listen, print the ready line, serve forever."""
    cfg = dev.cfg
    asyncio.create_task(_housekeeping(dev, cfg["timeout"] * 1000))
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
    while True:
        try:
            srv = await asyncio.start_server(lambda r, w: _serve(dev, r, w), host, tcp, backlog=2)
            break
        except OSError as e:
            print("mpota: cannot listen on %s:%d (%s): retrying" % (host, tcp, e))
            await asyncio.sleep(2)
    udp = "off"
    if cfg["legacy_udp"]:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(_addr(host, cfg["udp_port"], socket.SOCK_DGRAM))
            s.setblocking(False)
            import legacy
            asyncio.create_task(legacy.udp(dev, s))
            udp = "%s:%d" % (ip, cfg["udp_port"])
        except OSError as e:
            print("mpota: legacy UDP unavailable: %s" % e)
    print("mpota: ready tcp=%s:%d udp=%s auth=%s" % (ip, tcp, udp, "on" if dev.auth_on else "off"))
    if ready is not None:
        ready.set()
    await srv.wait_closed()


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


async def _agent(dev, ready):
    while True:
        try:
            await run(dev, ready)
        except Exception as e:  # keep the device updatable whatever happened
            print("mpota: agent failed, restarting:")
            sys.print_exception(e)
            await asyncio.sleep(1)


async def _main(dev, mod):
    ready = asyncio.Event()
    t = asyncio.create_task(_agent(dev, ready))
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
