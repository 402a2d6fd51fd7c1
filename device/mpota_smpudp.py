# smpudp: the resident part of SMP (MCUmgr) over UDP -- a socket and the
# task that waits on it. agent.py imports it only when the config has
# "smp_udp": true, so a device without SMP holds none of this.
#
# The task sleeps in asyncio's poller until a datagram is queued (no timer,
# no allocation while idle). The SMP service itself (smp.py, and cbor.py
# under it) is imported on the first datagram and released again once no SMP
# upload session is open: an idle device with SMP on holds this module, one
# task and a socket, nothing more. docs/protocol.md section 8 is the protocol.
import sys
import asyncio
from asyncio import core  # type: ignore[attr-defined]

from micropython import const


_RX = const(1536)  # >= 1472 (MTU 1500 less IPv4+UDP): smpclient fills datagrams to the MTU
_EAGAIN = const(11)


def start(dev, host, port):
    """Bind the SMP socket and start its task; -> the task (cancel it to close
    the socket), or None when the port cannot be bound."""
    import mpota_discover as disc  # the one UDP bind (a connection-scope module: agent._LIFE)
    try:
        s = disc.udp_socket(host, port)
    except OSError as e:
        print("mpota: SMP over UDP unavailable:", e)
        return None
    print("mpota: SMP (MCUmgr) on udp port", port,
          "(read-only: auth is on)" if dev.auth_on else "(no operator authentication)")
    return asyncio.create_task(_serve(dev, s))


async def _readable(sock):
    # what asyncio's own streams do: sleep until the poller says readable
    yield core._io_queue.queue_read(sock)


async def _serve(dev, sock):
    import mpota_pace as pace  # resident with the service (a few hundred bytes)
    paced = pace.Pace(sock)
    try:
        while True:
            ready = True
            if "mpota_smp" in sys.modules:
                # an SMP upload is open: wake now and then, so that the service is
                # released once housekeeping has closed a silent session
                try:
                    await asyncio.wait_for_ms(_readable(sock), 2000)
                except asyncio.TimeoutError:
                    ready = False
            else:
                await _readable(sock)
            if ready:
                try:
                    data, addr = sock.recvfrom(_RX)
                except OSError as e:
                    if e.errno == _EAGAIN:
                        continue
                    raise  # the socket is gone (closed under us): end the task
                paced.req = len(data)
                try:
                    import mpota_slots as slots
                    slots.attach(dev)  # the slot record, as for a TCP connection
                    slots = None
                    import mpota_smp as smp
                    smp.handle(dev, paced, data, addr)  # replies through the pacer (mpota_pace)
                except MemoryError:
                    # not even smp.py loads (the app holds the heap): answer
                    # {"rc": 2} (MGMT_ERR_ENOMEM) as the response to its read/write
                    try:
                        b = bytearray(data[:8] + b"\xa1\x62rc\x02")
                        b[0] = (b[0] & 0x18) | ((b[0] & 7) + 1)
                        b[1] = b[2] = 0
                        b[3] = 5
                        if len(data) >= 8:
                            paced.sendto(b, addr)
                    except (MemoryError, OSError):
                        pass  # the client times out
                smp = data = addr = b = None  # nothing here may keep the service alive
            await dev.after_reply()  # a reset the request asked for, once answered
            await paced.pace()  # amplification: a reply larger than its request draws on the bucket
            if dev.ag is not None:
                dev.ag.settle()  # no upload or connection open: forget the service
    finally:
        sock.close()
