# udp: the legacy datagram service (legacy_udp on): one reference frame per
# datagram, handled by legacy.py. MicroPython asyncio has no datagram
# endpoint, so a non-blocking socket is polled from a task. While it runs,
# the connection modules stay loaded (agent.settle): legacy.py refers to them.
import sys
import asyncio

import mpota_legacy as legacy
import mpota_slots as slots
import mpota_service as service
import mpota_dispatch as dispatch
import mpota_pace as pace
from mpota_framing import check_frame
from mpota_lineproto import E_BAD_FRAME, E_TOO_LARGE


class UdpPeer(dispatch.Peer):
    """The legacy datagram service as a 'connection': replies go to the
    sender of the current datagram; the legacy session belongs to the service.
    Datagrams cannot authenticate (Peer.secure): authed only with auth off."""

    def __init__(self, dev, sock):
        self.dev = dev
        self.s = pace.Pace(sock)  # replies larger than their request are paced (mpota_pace)
        self.addr = None
        self.authed = not dev.auth_on

    def out(self, b):
        self.s.sendto(b, self.addr)

    def nerror(self, op, code, value=0, ref=0):
        legacy.error(self.dev, self, code)


def start(dev, host, port):
    """Bind the legacy service's socket and start serving it -> the socket
    (the caller closes it when the listener stops); OSError when it cannot."""
    import mpota_discover as disc  # the one UDP bind (a connection-scope module: agent._LIFE)
    s = disc.udp_socket(host, port)
    dev.legacy_udp = True  # before any settle(): keeps the connection modules loaded
    asyncio.create_task(serve(dev, s))
    return s


async def serve(dev, sock):
    # (started by start(), which has set dev.legacy_udp)
    slots.attach(dev)
    peer = UdpPeer(dev, sock)
    while True:
        try:
            data, addr = sock.recvfrom(legacy.MAX_WRITE + 64)
        except OSError:
            # nothing queued: poll again soon (faster while a session runs)
            s = dev.session
            await asyncio.sleep_ms(2 if s is not None and s.owner is peer else 10)
            continue
        peer.addr = addr
        peer.s.req = len(data)
        try:
            mv = memoryview(data)
            if len(data) > legacy.MAX_WRITE + 10:
                legacy.error(dev, peer, E_TOO_LARGE)
            elif check_frame(mv) is not None:
                legacy.error(dev, peer, E_BAD_FRAME)
            else:
                legacy.handle(dev, peer, mv)
        except Exception as e:
            sys.print_exception(e)
        service.idle(dev)
        await dev.after_reply()
        await peer.s.pace()
