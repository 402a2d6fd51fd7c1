"""The bench's faithful link (tools/linkproxy.py): the Pico W's TCP window
(at most `window` bytes on the delay line unacknowledged) and its UDP queue
(datagrams beyond `queue` unanswered ones are dropped). Counts, not times."""
import asyncio

from linkproxy import LinkProxy, UdpDelay


def test_the_tcp_window_holds_bytes_in_flight_to_the_window():
    async def run():
        got = []
        first_chunk = asyncio.Event()

        async def sink(r, w):
            while True:
                data = await r.read(65536)
                if not data:
                    break
                got.append(len(data))
                first_chunk.set()
            w.close()

        srv = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        # a one-way delay of 0.25 s: window credit comes back 0.5 s after a byte is sent
        px = await LinkProxy("127.0.0.1", port, delay=0.25, window=6400).start()
        r, w = await asyncio.open_connection("127.0.0.1", px.port)
        w.write(bytes(64000))
        await w.drain()
        await first_chunk.wait()
        await asyncio.sleep(0.05)  # the first flight has landed; its credit is still on the way back
        first_flight = sum(got)
        w.close()
        await px.stop()
        srv.close()
        return first_flight

    assert asyncio.run(run()) == 6400


def test_the_udp_queue_drops_what_the_device_socket_cannot_hold():
    async def run():
        loop = asyncio.get_running_loop()
        seen = []

        class Device(asyncio.DatagramProtocol):  # reads nothing back: never answers
            def datagram_received(self, data, addr):
                seen.append(data)

        dev, _ = await loop.create_datagram_endpoint(Device, local_addr=("127.0.0.1", 0))
        relay = UdpDelay(("127.0.0.1", dev.get_extra_info("sockname")[1]), 0.01, queue=4)
        port = await relay.start()
        host, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port))
        for i in range(10):
            host.sendto(b"req%d" % i)
        for _ in range(50):
            if len(seen) + relay.dropped == 10:
                break
            await asyncio.sleep(0.02)
        host.close()
        relay.close()
        dev.close()
        return len(seen), relay.dropped

    assert asyncio.run(run()) == (4, 6)
