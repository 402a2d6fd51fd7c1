# usb: the agent's protocol over the board's USB serial console, for a host
# that drives the raw REPL (host/usb.py, through mpremote's SerialTransport).
#
# The host interrupts the board (Ctrl-C stops the app and the agent's event
# loop; the Device, its slot record and any update session stay in RAM),
# then runs small snippets in the raw REPL:
#   import mpota_usb as _u; _u.start()  a new peer (the last one's session is
#                                       closed, its bytes kept: a cable pull resumes)
#   _u.feed(b"<base64>")                bytes in, replies out
#   _u.close()                          the peer goes, as a TCP close
#   _u.end()                            reset: back to the agent and the app
# The bytes are the same JSON lines and frames as a TCP connection's, served
# by a conn.Conn through service.dispatch and the one op table (dispatch.py):
# the same handlers, session, checks and slot record as a network peer. The
# peer is authenticated by the cable (Peer.wired: docs/security.md): whoever
# holds it can rewrite every file through the same raw REPL anyway.
#
# The watchdog: every call feeds it (hal.wdt_feed); the host's calls follow
# each other within milliseconds. A host that goes away (cable pulled) stops
# feeding, so a board with a watchdog resets into its agent and app after
# `wdt` ms (the upload resumes from what reached flash); one without waits in
# the REPL until the host comes back.
#
# Lifetime: loaded by the host's snippet only (never by the agent), released
# with the connection modules (agent._LIFE) or by end()'s reset.
# Heap: the Conn (its 4.1 KB decoder, as a TCP connection's) while open; per
# feed the decoded input and the base64 reply, both transient.
import ubinascii as binascii

import mpota_agent as agent
import mpota_hal as hal

_peer = None  # the open Conn


class _Out:
    """The Conn's stream writer: replies collect here until feed() prints them."""

    def __init__(self):
        self.b = bytearray()

    def write(self, b):
        self.b += b

    def close(self):
        pass


def _dev():
    hal.wdt_feed()
    d = agent.DEVICE
    if d is None:
        raise RuntimeError("mpota: the agent is not running on this board (main.py)")
    return d


def start():
    """A new peer for this USB session; the device id for the host."""
    global _peer
    dev = _dev()
    close()
    import mpota_slots as slots
    import mpota_conn as conn

    slots.attach(dev)
    c = conn.Conn(dev, None, _Out())
    c.wired = True
    c.authed = True  # the cable (docs/security.md)
    c.grow()
    _peer = c
    print("mpota-usb %s" % dev.id)


def feed(b64):
    """Serve the bytes in `b64` (base64) and print the replies: one line
    `<` base64 `>`, then `R` when a reset is due (op reset)."""
    dev = _dev()
    c = _peer
    if c is None:
        raise RuntimeError("mpota: no USB peer (start() first)")
    import mpota_service as service

    data = binascii.a2b_base64(b64)
    mv = memoryview(data)
    i = 0
    n = len(data)
    while i < n:
        sp = c.dec.space()
        k = min(len(sp), n - i)
        sp[:k] = mv[i:i + k]
        c.dec.advance(k)
        i += k
        service.dispatch(dev, c)
    mv = data = None
    out = c.w.b
    c.w.b = bytearray()
    print("<%s>%s" % (binascii.b2a_base64(out).decode().strip(), "R" if dev.reset_ms >= 0 else ""))


def close():
    """The peer goes (as a TCP close): its update session is closed, the
    bytes it wrote kept for resume (service.drop)."""
    global _peer
    c = _peer
    _peer = None
    if c is not None:
        import mpota_service as service

        service.drop(agent.DEVICE, c)


def end():
    """Reset into the agent and the app (a pending image boots on trial). On
    a trial the boot after this reset does not count against it: each USB
    command ends with one, and reading a trial's status must not roll it back."""
    dev = _dev()
    close()
    dev.close_session()
    import mpota_slots as slots
    slots.attach(dev)
    dev.sl.spare_trial()
    hal.reset()
