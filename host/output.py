"""How the CLI talks to people and programs: rich text, one JSON object per line, or quiet.

- human: messages on stdout, a progress bar (bytes, rate, ETA) on stderr,
  errors and hints on stderr;
- json: every event is one JSON object on its own stdout line
  (`{"event": "progress", ...}`), no bar, no colour; errors are events too;
- quiet: only errors (stderr).

A fleet run (several devices at once) uses FleetOutput: each device writes
through its own DeviceOutput, whose JSON events carry `"target"`, whose lines
are prefixed with the device's name and whose progress is one bar of a shared
display; the run ends with a summary table (or a `summary` event).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from errors import MpotaError


class Output:
    def __init__(self, mode: str = "human", stdout=None, stderr=None):
        assert mode in ("human", "json", "quiet")
        self.mode = mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.console = Console(file=self.stdout, highlight=False, soft_wrap=False)
        self.err_console = Console(file=self.stderr, highlight=False, stderr=True)
        self._progress: Optional[Progress] = None
        self._task = None
        self._last_json = 0.0
        self._last_done = -1

    # --- events -------------------------------------------------------------

    def event(self, name: str, text: Optional[str] = None, /, **fields) -> None:
        """One thing that happened: a JSON line, or `text` for people (if given).
        Positional-only, so that events may carry a field called `name`."""
        if self.mode == "json":
            obj = {"event": name}
            obj.update(fields)
            self.stdout.write(json.dumps(obj, default=str) + "\n")
            self.stdout.flush()
        elif self.mode == "human" and text:
            self.console.print(text)

    def say(self, text: str) -> None:
        """Human-only text (nothing in json or quiet mode)."""
        if self.mode == "human":
            self.console.print(text)

    def error(self, err: MpotaError) -> None:
        if self.mode == "json":
            self.event("error", **err.as_dict())
            return
        self.err_console.print("[bold red]error:[/] %s" % _esc(err.message))
        if err.hint:
            self.err_console.print("[yellow]hint:[/] %s" % _esc(err.hint))

    def warn(self, text: str) -> None:
        if self.mode == "json":
            self.event("warning", message=text)
        elif self.mode == "human":
            self.err_console.print("[yellow]warning:[/] %s" % _esc(text))

    # --- progress -----------------------------------------------------------

    def progress_start(self, description: str, total: int) -> None:
        self._last_done = -1
        if self.mode == "human":
            self._progress = _bars(self.err_console)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)
        elif self.mode == "json":
            self.event("progress_start", description=description, total=total)

    def progress(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)
        elif self.mode == "json":
            now = time.monotonic()
            # A line per 5% of the total or per 0.2 s, whichever comes first, plus the final one.
            step = max(1, total // 20)
            if done != self._last_done and (done >= total or now - self._last_json >= 0.2
                                            or done - max(self._last_done, 0) >= step):
                self._last_json = now
                self._last_done = done
                self.event("progress", done=done, total=total)

    def progress_stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _bars(console: Console, **kw) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False, **kw)


class FleetOutput(Output):
    """Output of a run over several devices; `device(name)` is one device's view.
    Its own events (the summary, an error before any device started) carry the
    whole `-t` value as their "target"."""

    def __init__(self, mode: str = "human", spec: str = ""):
        super().__init__(mode)
        self.spec = spec
        self.bars: Optional[Progress] = None
        if mode == "human":
            # No file: the console follows sys.stdout, which rich routes above the live
            # bars while they show (only when stdout is that terminal too).
            self.console = Console(highlight=False, soft_wrap=False)
            if self.err_console.is_terminal:  # bars only on a TTY; logs get the lines and the table
                self.bars = _bars(self.err_console, redirect_stdout=sys.stdout.isatty(),
                                  redirect_stderr=False)

    def event(self, name: str, text: Optional[str] = None, /, **fields) -> None:
        super().event(name, text, **{"target": self.spec, **fields})

    def device(self, name: str) -> "DeviceOutput":
        return DeviceOutput(self, name)

    def start(self) -> None:
        if self.bars is not None:
            self.bars.start()

    def stop(self) -> None:
        if self.bars is not None:
            self.bars.stop()

    def summary(self, rows: list, exit_code: int) -> None:
        """rows: dicts with target, ok, result, exit_code, version, seconds."""
        if self.mode == "json":
            self.event("summary", exit_code=exit_code, results=rows)
            return
        if self.mode != "human":
            return
        table = Table("target", "result", "version", "time", box=None, pad_edge=False)
        for r in rows:
            table.add_row(_esc(r["target"]), "[green]ok[/]" if r["ok"] else "[red]%s[/]" % _esc(r["result"]),
                          _esc(r.get("version") or "-"), "%.1f s" % r["seconds"])
        self.console.print(table)
        ok = sum(1 for r in rows if r["ok"])
        self.console.print("%d of %d devices ok; exit code %d" % (ok, len(rows), exit_code))


class DeviceOutput(Output):
    """One device's events within a fleet run."""

    def __init__(self, fleet: FleetOutput, name: str):
        super().__init__(fleet.mode)
        self.name = name
        self.console, self.err_console = fleet.console, fleet.err_console
        self._bars = fleet.bars
        self._bar = None
        self.seen: dict = {}  # event name -> fields of its last occurrence (for the summary)

    def event(self, name: str, text: Optional[str] = None, /, **fields) -> None:
        self.seen[name] = fields
        if self.mode == "json":
            super().event(name, **{"target": self.name, **fields})
        elif text:
            super().event(name, self._prefix(text))

    def say(self, text: str) -> None:
        super().say(self._prefix(text))

    def error(self, err: MpotaError) -> None:
        self.seen["error"] = err.as_dict()
        if self.mode == "json":
            self.event("error", **err.as_dict())
            return
        self.err_console.print("[bold red]error:[/] %s: %s" % (_esc(self.name), _esc(err.message)))
        if err.hint:
            self.err_console.print("[yellow]hint:[/] %s" % _esc(err.hint))

    def _prefix(self, text: str) -> str:
        p = "[bold]%s[/]: " % _esc(self.name)
        return "\n".join(p + line for line in text.split("\n"))

    def progress_start(self, description: str, total: int) -> None:
        if self.mode == "json":
            super().progress_start(description, total)
        elif self._bars is not None and self._bar is None:
            self._bar = self._bars.add_task(_esc(self.name), total=total)
        elif self._bar is not None:  # again (a resumed upload): the same bar
            self._bars.update(self._bar, completed=0, total=total)

    def progress(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bars.update(self._bar, completed=done, total=total)
        elif self.mode == "json":
            super().progress(done, total)

    def progress_stop(self) -> None:
        pass  # the bar stays on the shared display until the run ends


def _esc(text: str) -> str:
    from rich.markup import escape
    return escape(text)
