# discover: what the agent does for discovery each time its listener starts
# (agent.run): bind the discovery socket, make the answer, send the announce.
# Then agent.settle() releases this module (a connection-scope module,
# agent._LIFE); only the socket, its poll and the answer stay, and
# agent._housekeeping (resident) answers probes at each tick.
#
# The probe is a UDP datagram starting with {"mpota":"discover" sent to the
# agent's TCP port number (8472); the answer and the announce are one JSON
# object: {"mpota": "here", "id", "name" (wifi.hostname), "port" (TCP)},
# plus "version" (the running app's) and "agent" only with
# "discover_version": true. docs/protocol.md, "Discovery".
#
# udp_socket() is also the bind of the legacy UDP service (udp.py) and of
# SMP over UDP (smpudp.py).
import usocket


def udp_socket(host, port):
    """A non-blocking UDP socket bound to host:port; OSError when it cannot be bound."""
    s = usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM)
    try:
        s.setsockopt(usocket.SOL_SOCKET, usocket.SO_REUSEADDR, 1)
        s.bind(usocket.getaddrinfo(host, port, 0, usocket.SOCK_DGRAM)[0][-1])
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def hello(dev):
    """The answer to a probe, and the announce (bytes)."""
    import ujson
    cfg = dev.cfg
    d = {"mpota": "here", "id": dev.id, "name": (cfg.get("wifi") or {}).get("hostname") or "",
         "port": cfg["tcp_port"]}
    if cfg["discover_version"]:
        d["version"] = dev.app.get("version")
        d["agent"] = dev.VERSION
    return ujson.dumps(d).encode()


def start(dev, host, port):
    """-> (socket, poll, answer) for agent._housekeeping, or None (discovery off, or
    the port taken); sends the announce when the config asks for one."""
    cfg = dev.cfg
    msg = hello(dev)
    d = None
    if cfg["discover"]:
        import uselect
        try:
            s = udp_socket(host, port)
            p = uselect.poll()
            p.register(s, uselect.POLLIN)
            d = (s, p, msg)
        except OSError as e:
            print("mpota: discovery unavailable: %s" % e)
    to = cfg["announce"]
    if to:  # "HOST:PORT", its form checked by config.py
        h, _, p = to.rpartition(":")
        s = d[0] if d is not None else usocket.socket(usocket.AF_INET, usocket.SOCK_DGRAM)
        try:
            s.sendto(msg, usocket.getaddrinfo(h, int(p), 0, usocket.SOCK_DGRAM)[0][-1])
            print("mpota: announced to %s" % to)
        except OSError as e:
            print("mpota: announce to %s failed: %s" % (to, e))
        if d is None:
            s.close()
    return d
