"""How the CLI talks to people and programs: rich text, one JSON object per line, or quiet.

- human: messages on stdout, a progress bar (bytes, rate, ETA) on stderr,
  errors and hints on stderr;
- json: every event is one JSON object on its own stdout line
  (`{"event": "progress", ...}`), no bar, no colour; errors are events too;
- quiet: only errors (stderr).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

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

    def event(self, name: str, text: Optional[str] = None, **fields) -> None:
        """One thing that happened: a JSON line, or `text` for people (if given)."""
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
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24), DownloadColumn(binary_units=True),
                TransferSpeedColumn(), TimeRemainingColumn(), console=self.err_console, transient=False)
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


def _esc(text: str) -> str:
    from rich.markup import escape
    return escape(text)
