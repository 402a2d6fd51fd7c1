# Run by tests/test_attacks.py under MicroPython with device/ on sys.path:
# the heap runs out inside `auth` after the MAC was checked (growing the
# decoder, starting the session). The peer must stay a stranger (no
# session, not authenticated) and get an unsealed, retryable no_memory.
import json
import binascii


import boardstub  # noqa: E402,F401  (hal's board: tests/device/boardstub.py)

import mpota_agent as agent  # noqa: E402
import mpota_conn as conn  # noqa: E402
import mpota_service as service  # noqa: E402
import mpota_dispatch as dispatch  # noqa: E402
from mpota_hmac_sha256 import host_mac  # noqa: E402

KEY = bytes(range(32))


class Writer:
    def __init__(self):
        self.out = []

    def write(self, b):
        self.out.append(bytes(b))


def attempt(where):
    dev = agent.Device({"auth": True, "slot_size": 0, "max_trials": 3}, key=KEY)
    w = Writer()
    c = conn.Conn(dev, None, w)
    import mpota_auth as auth
    c.nonce = auth.challenge(dev)  # as hello issues it (a made-up nonce is refused)
    hn = b"\x02" * 16
    if where == "grow":
        def grow(*a):
            raise MemoryError
        c.dec.grow = grow
    else:  # the session's keys
        import mpota_session as session

        def start(*a):
            raise MemoryError
        session.start = start
    req = {"op": "auth", "nonce": binascii.hexlify(hn).decode(),
           "mac": binascii.hexlify(host_mac(KEY, dev.id, c.nonce, hn)).decode()}
    dispatch.serve(dev, c, None, False, service.idle, json.dumps(req).encode())
    r = json.loads(w.out[-1])
    print(where, c.authed, c.sess is None, len(w.out), r["error"]["code"], r["error"]["retry"])


attempt("grow")
attempt("session")
