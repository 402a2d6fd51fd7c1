"""One command over several devices at once (`-t a -t b`, `-t a,b`, `-t GROUP`).

Each device runs exactly the handler it runs alone, in a Context of its own
whose output is its row of the shared view; `parallel` devices at a time; one
device's failure never stops the others. The run ends with a summary and one
exit code, the most serious one.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

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
    out.summary(results, code)
    return code


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
