# connpolicy: who may connect and how long a connection may stay silent,
# for both connection modules (conn.py, leanconn.py). Loaded with a
# connection and released with it (agent.settle): an idle device holds only
# the listener (agent.py).
import asyncio

import mpota_hal as hal
from mpota_lineproto import error_line, E_BUSY, E_TIMEOUT


async def admit(ag, c):
    """Let connection c join ag.conns, served by the current task; False when
    it may not (it was told why). A stranger (not authenticated) beyond the
    max_unauth quota evicts the OLDEST stranger; authenticated connections
    count against max_conn."""
    cfg = ag.dev.cfg
    c.task = asyncio.current_task()
    unauth = [x for x in ag.conns if not x.authed]
    if not c.authed and len(unauth) >= cfg["max_unauth"]:
        # Its own task is cancelled, so it leaves the poller and closes its
        # socket itself: closing a socket that another task still waits on
        # would leave a stale poll entry whose file descriptor the next
        # connection may get.
        unauth[0].task.cancel()
        ag.conns.remove(unauth[0])
    if len(ag.conns) - len(unauth) < cfg["max_conn"]:
        ag.conns.append(c)
        return True
    c.w.write(error_line(None, E_BUSY, "too many connections"))
    await c.w.drain()
    return False


async def receive(ag, c, mv):
    """Read into memoryview mv for connection c within its deadline: a
    stranger's auth_timeout since it connected, an authenticated peer's
    `timeout` of silence. -> the bytes read, or 0 when c is to close (the
    peer closed, or a deadline passed: it is told)."""
    cfg = ag.dev.cfg
    if c.authed:
        left = cfg["timeout"] * 1000
    else:
        left = cfg["auth_timeout"] * 1000 - hal.ticks_diff(hal.ticks_ms(), c.t0)
    try:
        if left > 0:
            return await asyncio.wait_for_ms(c.r.readinto(mv), left)
    except asyncio.TimeoutError:
        pass
    if c.authed:
        why = "no data for %d s: closing" % cfg["timeout"]
    else:
        why = "not authenticated within %d s: closing" % cfg["auth_timeout"]
    c.out(error_line(None, E_TIMEOUT, why))
    await c.w.drain()
    return 0
