# connpolicy: who may connect and how long a connection may stay silent,
# for both connection modules (conn.py, leanconn.py). Loaded with a
# connection and released with it (agent._LIFE): an idle device holds only
# the listener (agent.py).
import asyncio

import mpota_hal as hal
from mpota_lineproto import error_line, E_BUSY, E_TIMEOUT


_YOUNG_MS = 500  # a stranger is not pushed out before its first message can arrive


async def admit(ag, c):
    """Let connection c join ag.conns, served by the current task; False when
    it may not (it was told why). Authenticated connections count against
    max_conn. A stranger (not authenticated) beyond the max_unauth quota
    pushes out another stranger (_victim), or is refused when none may go."""
    cfg = ag.dev.cfg
    c.task = asyncio.current_task()
    unauth = [x for x in ag.conns if not x.authed]
    if not c.authed and len(unauth) >= cfg["max_unauth"]:
        old = _victim(unauth)
        if old is None:
            c.w.write(error_line(None, E_BUSY, "too many peers authenticating: try again"))
            await c.w.drain()
            return False
        close(ag, old)
    if len(ag.conns) - len(unauth) < cfg["max_conn"]:
        ag.conns.append(c)
        return True
    c.w.write(error_line(None, E_BUSY, "too many connections"))
    await c.w.drain()
    return False


def close(ag, c):
    """Close connection c, served by another task (pushed out, or its update
    session taken over: update.may_update). Its own task is cancelled, so it
    leaves the poller and closes its socket itself: closing a socket that
    another task still waits on would leave a stale poll entry whose file
    descriptor the next connection may get."""
    c.task.cancel()
    if ag is not None and c in ag.conns:
        ag.conns.remove(c)


def _victim(unauth):
    # The stranger a newcomer pushes out: the oldest that holds a challenge
    # (it loses nothing: its peer answers the challenge on a new connection,
    # auth.redeem), else the oldest that has had _YOUNG_MS to send its first
    # message and holds none; None while every stranger is younger (then the
    # newcomer, which has sent nothing yet either, is refused). So a flood of
    # hellos cannot push out an operator between hello and auth, and idle or
    # dripping sockets still give way (docs/security.md).
    for x in unauth:
        if x.nonce is not None:
            return x
    now = hal.ticks_ms()
    for x in unauth:
        if hal.ticks_diff(now, x.t0) >= _YOUNG_MS:
            return x
    return None


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
