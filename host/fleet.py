"""One command over several devices at once (`-t a -t b`, `-t a,b`, `-t @GROUP`).

Each device runs exactly the handler it runs alone, in a Context of its own
whose output is its row of the shared view; `parallel` devices at a time; one
device's failure never stops the others. The run ends with a summary and one
exit code, the most serious one.

`mpota fleet` (and the end of `status` over several devices) shows one row per
board from its status (board_row, gather_rows, sort_rows).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Callable, Optional

from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Interrupted, MpotaError
from .output import FleetOutput
from .status import Status

log = logging.getLogger("mpota.fleet")


def fleet_exit_code(codes) -> int:
    """0 if every device succeeded, else the highest device exit code: the codes
    grow with how far an update got before it failed (1 nothing sent ... 6 uploaded
    but did not take), and 130 (interrupted) tops them all."""
    return max(codes, default=EXIT_OK)


async def run_fleet(specs: list, out: FleetOutput, make_context: Callable, parallel: int,
                    interrupt_hint: Callable) -> int:
    """make_context(spec, device_output) -> a cli.Context whose run() serves that device.
    interrupt_hint(device_output) -> the hint for a device cut short by Ctrl-C."""
    gate = asyncio.Semaphore(parallel)
    rows: dict = {}

    async def one(spec: str) -> None:
        dout = out.device(spec)
        t0 = time.monotonic()
        try:
            async with gate:
                t0 = time.monotonic()  # the device's own time, not its wait for a turn
                code = await make_context(spec, dout).run()
        except MpotaError as e:
            dout.error(e)
            code = e.exit_code
        except Exception as e:  # a bug met on one device must not take the others down
            log.debug("%s failed", spec, exc_info=True)
            dout.error(MpotaError("unexpected %s: %s" % (type(e).__name__, e), "run with -v and report it"))
            code = EXIT_USAGE
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels us; the connection closes
            code = EXIT_INTERRUPTED
            dout.error(Interrupted("interrupted", interrupt_hint(dout)))
        rows[spec] = _fleet_row(spec, dout, code, time.monotonic() - t0)

    out.start()
    tasks = [asyncio.create_task(one(s)) for s in specs]
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        # Ctrl-C: each device task has recorded itself as interrupted; wait for their
        # connections to close, then report instead of dying with a traceback.
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        out.stop()
    results = [rows.get(s) or _fleet_row(s, None, EXIT_INTERRUPTED, 0.0) for s in specs]
    code = fleet_exit_code(r["exit_code"] for r in results)
    if out.board_view:  # status: the boards at a glance, as `mpota fleet` shows them
        out.boards([_board_of(s, out.seen_of(s)) for s in specs])
    out.summary(results, code)
    return code


def _board_of(spec: str, seen: dict) -> dict:
    err = seen.get("error")
    st = seen.get("status")
    if st is not None:
        return board_row(spec, Status.of(st))
    return board_row(spec, None, MpotaError((err or {}).get("message") or "no answer"))


def _fleet_row(spec: str, dout, code: int, seconds: float) -> dict:
    seen = dout.seen if dout else {}
    err = seen.get("error") or {}
    version = (seen.get("done") or {}).get("version")
    st = seen.get("status")
    if version is None and st:  # status: the running version
        version = Status.of(st).running_version
    result = "ok" if code == EXIT_OK else "%s (%d)" % (err.get("code") or err.get("error") or "failed", code)
    return {"target": spec, "ok": code == EXIT_OK, "result": result, "exit_code": code,
            "version": version, "seconds": round(seconds, 2)}


# --- the fleet at a glance (`mpota fleet`) --------------------------------------------

SORT_KEYS = ("name", "version", "state", "uptime", "resets", "reset", "app", "rssi", "agent")


def board_row(spec: str, st: Optional[Status], err: Optional[MpotaError] = None) -> dict:
    """One board's row of `mpota fleet` (its --json object): what its status says,
    or, when it could not be read, the error (every other field None)."""
    row: dict = {"target": spec, "ok": err is None, "device": None, "version": None, "running": None,
                 "slots": {}, "state": None, "trial": None, "uptime_s": None, "boot_reason": None,
                 "resets": None, "app_state": None, "app_error": None, "link": None, "rssi": None,
                 "agent": None, "floor": None, "error": err.as_dict() if err is not None else None}
    if st is not None:
        row.update(device=st.device, version=st.running_version, running=st.running,
                   slots={n: s.state for n, s in sorted(st.slots.items())}, state=st.state,
                   trial=st.trial if st.full else None,
                   uptime_s=None if st.uptime_ms is None else round(st.uptime_ms / 1000, 1),
                   boot_reason=st.boot_reason, resets=st.resets, app_state=st.app_state,
                   app_error=st.app_error, link=st.link, rssi=st.rssi, agent=st.agent, floor=st.floor)
    return row


def _version_key(v: Optional[str]) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v or ""))


_SORT = {
    "name": lambda r: r["target"], "version": lambda r: _version_key(r["version"]),
    "state": lambda r: r["state"] or "", "uptime": lambda r: r["uptime_s"] or 0.0,
    "resets": lambda r: r["resets"] or 0, "reset": lambda r: r["boot_reason"] or "",
    "app": lambda r: (r["app_state"] or "", r["app_error"] or ""), "rssi": lambda r: -(r["rssi"] or -999),
    "agent": lambda r: _version_key(r["agent"]),
}


def sort_rows(rows: list, key: Optional[str]) -> list:
    """The rows by `key` (SORT_KEYS; None: as the targets were given), ties in the
    given order, boards without an answer last: never the order they answered in.
    rssi sorts the strongest first."""
    if not key:
        return list(rows)
    k = _SORT[key]
    return sorted(rows, key=lambda r: (key != "name" and not r["ok"], k(r)))


async def gather_rows(specs: list, read: Callable, parallel: int) -> list:
    """read(spec) -> the board's Status (an MpotaError: the board's row says it);
    `parallel` boards at a time; the rows in the order of `specs`."""
    gate = asyncio.Semaphore(parallel)

    async def one(spec: str) -> dict:
        async with gate:
            try:
                return board_row(spec, await read(spec))
            except MpotaError as e:
                return board_row(spec, None, e)
            except (OSError, ValueError) as e:  # a bug on one board must not hide the others
                log.debug("%s failed", spec, exc_info=True)
                return board_row(spec, None, MpotaError("unexpected %s: %s" % (type(e).__name__, e),
                                                        "run with -v and report it"))

    return list(await asyncio.gather(*(one(s) for s in specs)))
