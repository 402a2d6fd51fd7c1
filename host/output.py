"""How the CLI talks to people and programs: rich text, one JSON object per line, or quiet.

- human: messages on stdout, a progress bar (bytes, KiB/s, ETA) on stderr,
  errors and hints on stderr. Lines are never wrapped by us (a terminal wraps
  them itself; a log or a pipe gets whole lines for grep), and colour and
  bars appear only on a terminal;
- json: every event is one JSON object on its own stdout line
  (`{"event": "progress", ...}`), no bar, no colour; errors are events too;
- quiet: errors, plus the one-line answer of a command that has one
  (`status -q`: what runs; see `result()`).

While a bar shows, messages go through the bar's own console, so they land
above it instead of on it. A fleet run (several devices at once) uses
FleetOutput: one live view with a row per device (bar, bytes, rate, ETA,
state), its messages above, prefixed with the device's name; without a
terminal, plain prefixed lines. It ends with a summary table (or a `summary`
event).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .errors import MpotaError

UNIT = 1024  # one unit system everywhere: KiB and KiB/s


def fmt_size(n) -> str:
    if n is None:
        return "-"
    return "%d B" % n if n < UNIT else "%.1f KiB" % (n / UNIT)


def fmt_rate(bytes_per_s) -> str:
    return "%.1f KiB/s" % (bytes_per_s / UNIT)


def _console(file, **kw) -> Console:
    # soft_wrap: rich does not break lines (a pipe would otherwise get 80-column pieces).
    return Console(file=file, highlight=False, soft_wrap=True, **kw)


class _Rate(ProgressColumn):
    """Transfer rate in KiB/s (rich's own column says kB/s)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else fmt_rate(speed), style="progress.data.speed")


def _bars(console: Console, state: bool = False) -> Progress:
    cols = [TextColumn("{task.description}"), BarColumn(bar_width=20), DownloadColumn(binary_units=True),
            _Rate(), TimeRemainingColumn()]
    if state:
        cols.append(TextColumn("{task.fields[state]}"))
    # redirect_*: we print through progress.console ourselves (see _print).
    return Progress(*cols, console=console, transient=False, redirect_stdout=False, redirect_stderr=False)


class Output:
    def __init__(self, mode: str = "human", stdout=None, stderr=None):
        assert mode in ("human", "json", "quiet")
        self.mode = mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.console = _console(self.stdout)
        self.err_console = _console(self.stderr, stderr=True)
        self._progress: Optional[Progress] = None
        self._task = None
        self._last_json = 0.0
        self._last_done = -1
        # The CLI's hook that adds hints naming its commands and flags (commands.with_cli_hint).
        self.hinter: Optional[Callable[[MpotaError], MpotaError]] = None

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
            self._print(text)

    def say(self, text: str) -> None:
        """Human-only text (nothing in json or quiet mode)."""
        if self.mode == "human":
            self._print(text)

    def result(self, text: str) -> None:
        """A command's one-line answer: shown in human and quiet mode."""
        if self.mode != "json":
            self._print(text)

    def _print(self, text: str, err: bool = False) -> None:
        live = self._live()
        console = self.err_console if err else self.console
        if live is not None and console.is_terminal:
            live.console.print(text)  # above the bars, not on them
        else:
            console.print(text)

    def _live(self) -> Optional[Progress]:
        return self._progress

    def error(self, err: MpotaError, who: str = "") -> None:
        if self.hinter is not None:
            err = self.hinter(err)
        if self.mode == "json":
            self.event("error", **err.as_dict())
            return
        self._print("[bold red]error:[/] %s%s" % (escape(who) + ": " if who else "", escape(err.message)), err=True)
        if err.hint:
            self._print("[yellow]hint:[/] %s" % escape(err.hint), err=True)

    def warn(self, text: str) -> None:
        if self.mode == "json":
            self.event("warning", message=text)
        elif self.mode == "human":
            self._print("[yellow]warning:[/] %s" % escape(text), err=True)

    # --- progress -----------------------------------------------------------

    def progress_start(self, description: str, total: int) -> None:
        self._last_done = -1
        if self.mode == "human" and self.err_console.is_terminal:
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


class FleetOutput(Output):
    """Output of a run over several devices; `device(name)` is one device's view.
    Its own events (the summary, an error before any device started) carry the
    whole `-t` value as their "target"."""

    def __init__(self, mode: str = "human", spec: str = "", board_view: bool = False):
        super().__init__(mode)
        self.spec = spec
        self.board_view = board_view  # end with fleet_table (status over several devices)
        self._devices: dict = {}
        self.bars: Optional[Progress] = None
        if mode == "human" and self.err_console.is_terminal:  # one live view, on a terminal only
            self.bars = _bars(self.err_console, state=True)

    def _live(self) -> Optional[Progress]:
        return self.bars

    def event(self, name: str, text: Optional[str] = None, /, **fields) -> None:
        super().event(name, text, **{"target": self.spec, **fields})

    def device(self, name: str) -> "DeviceOutput":
        self._devices[name] = DeviceOutput(self, name)
        return self._devices[name]

    def seen_of(self, name: str) -> dict:
        """The events device `name` reported (none: it never started)."""
        d = self._devices.get(name)
        return d.seen if d is not None else {}

    def boards(self, rows: list) -> None:
        """The boards at a glance (fleet.board_row rows): the table, for people only
        (--json: each status event holds it all)."""
        if self.mode == "human":
            self.console.print(fleet_table(rows, min(self.console.width, 200)))

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
        table = Table("target", "result", "version", "time", box=None, pad_edge=False)
        for r in rows:
            table.add_row(escape(r["target"]), "[green]ok[/]" if r["ok"] else "[red]%s[/]" % escape(r["result"]),
                          escape(r.get("version") or "-"), "%.1f s" % r["seconds"])
        if self.mode == "human":
            self.console.print(table)
        ok = sum(1 for r in rows if r["ok"])
        self.result("%d of %d devices ok; exit code %d" % (ok, len(rows), exit_code))


# The state column of a device's row, from the last event it reported.
_STATES = {"begin": "uploading", "resume": "uploading", "reconnect": "reconnecting",
           "busy_wait": "busy, waiting", "update_mode": "restarting (update mode)",
           "uploaded": "committing", "committed": "committed",
           "reset": "resetting", "back": "back", "booted": "on trial", "unchanged": "already runs",
           "done": "[green]done[/]",
           "error": "[red]failed[/]"}


class DeviceOutput(Output):
    """One device's events within a fleet run: a row of the shared live view."""

    def __init__(self, fleet: FleetOutput, name: str):
        super().__init__(fleet.mode)
        self.name = name
        self.fleet = fleet
        self.console, self.err_console = fleet.console, fleet.err_console
        self.hinter = fleet.hinter
        self._row = None
        if fleet.bars is not None:
            self._row = fleet.bars.add_task(escape(name), total=None, state="waiting")
        self.seen: dict = {}  # event name -> fields of its last occurrence (for the summary)

    def _live(self) -> Optional[Progress]:
        return self.fleet.bars

    def _state(self, name: str) -> None:
        if self._row is not None and name in _STATES:
            self.fleet.bars.update(self._row, state=_STATES[name])  # type: ignore[union-attr]

    def event(self, name: str, text: Optional[str] = None, /, **fields) -> None:
        self.seen[name] = fields
        self._state(name)
        if self.mode == "json":
            super().event(name, **{"target": self.name, **fields})
        elif text:
            super().event(name, self._prefix(text))

    def say(self, text: str) -> None:
        super().say(self._prefix(text))

    def result(self, text: str) -> None:
        super().result(self._prefix(text))

    def error(self, err: MpotaError, who: str = "") -> None:
        self.seen["error"] = err.as_dict()
        self._state("error")
        if self.mode == "json":
            if self.hinter is not None:
                err = self.hinter(err)
            Output.event(self, "error", **{"target": self.name, **err.as_dict()})
            return
        super().error(err, self.name)

    def _prefix(self, text: str) -> str:
        p = "[bold]%s[/]: " % escape(self.name)
        return "\n".join(p + line for line in text.split("\n"))

    def progress_start(self, description: str, total: int) -> None:
        if self.mode == "json":
            super().progress_start(description, total)
        elif self._row is not None:  # again (a resumed upload): the same row
            self.fleet.bars.reset(self._row, total=total, state=_STATES["begin"])  # type: ignore[union-attr]

    def progress(self, done: int, total: int) -> None:
        if self._row is not None:
            self.fleet.bars.update(self._row, completed=done, total=total)  # type: ignore[union-attr]
        elif self.mode == "json":
            super().progress(done, total)

    def progress_stop(self) -> None:
        pass  # the row stays on the shared view until the run ends


# --- the fleet at a glance (`mpota fleet`: rows of fleet.board_row) ----------------------

# a slot's state in one letter (docs/cli.md, `mpota fleet`)
_SLOT_WORD = {"confirmed": "C", "trial": "T", "pending": "P", "empty": "-", "writing": "W", "complete": "K",
              "bad": "B"}
_REASON = {"power_on": "power", "reset": "reset", "watchdog": "wdog", "unknown": "?"}


def fmt_uptime(seconds) -> str:
    """At most 6 characters: 42s, 17m03s, 5h12m, 3d04h, 123d."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    d = s // 86400
    return "%dd%02dh" % (d, s % 86400 // 3600) if d < 100 else "%dd" % d


def _slots_cell(r: dict) -> str:
    # a:C* b:T  (* the running slot)
    return " ".join("%s:%s%s" % (n, _SLOT_WORD.get(st, st or "?"), "*" if n == r["running"] else "")
                    for n, st in r["slots"].items()) or "?"


def _reset_cell(r: dict) -> str:
    why = _REASON.get(r["boot_reason"], r["boot_reason"] or "-")
    return why if not r["resets"] else "%s %d" % (why, r["resets"])


def _link_cell(r: dict) -> str:
    if r["rssi"] is not None:
        return "%ddBm" % r["rssi"]
    return r["link"] or "-"


def _fleet_cells(r: dict) -> list:
    """(plain text, style) per column of one board's row."""
    if not r["ok"]:
        e = r["error"] or {}
        return [(r["target"], ""), ("-", ""), ("-", ""), ("no answer", "red"), ("-", ""), ("-", ""), ("-", ""),
                ("-", ""), (e.get("message") or "no answer", "red")]
    state = r["state"] or "-"
    app = r["app_error"] or r["app_state"] or "-"  # an error: the app crashed
    return [(r["target"], ""), (r["version"] or "-", ""), (_slots_cell(r), ""),
            (state, "yellow" if state.startswith("trial") else "green" if state == "confirmed" else ""),
            (fmt_uptime(r["uptime_s"]), ""), (_reset_cell(r), ""), (_link_cell(r), ""), (r["agent"] or "-", ""),
            (app, "red" if r["app_error"] else "")]


FLEET_COLUMNS = ("board", "version", "slots", "state", "up", "reset", "link", "agent", "app")
# longer cells end in an ellipsis; a board's name up to 16: a device id (16 hex digits) names a board over MQTT
_FLEET_MAX = {"board": 16, "version": 9, "state": 9, "reset": 8, "link": 7, "agent": 7}
_APP_MIN = 8


def fleet_table(rows: list, width: int = 80) -> Table:
    """One line per board in `width` columns (80 hold it): each column as wide as
    its longest cell (board and version capped), the last app error -- or why the
    board did not answer -- in what is left, cut with an ellipsis."""
    cells = [_fleet_cells(r) for r in rows]
    widths = [min(_FLEET_MAX.get(h, 99), max([len(h)] + [len(c[i][0]) for c in cells]))
              for i, h in enumerate(FLEET_COLUMNS[:-1])]
    rest = width - sum(widths) - len(widths)  # one space between columns
    if rest < _APP_MIN:  # the board's name gives way first (a longest name: 16 + 72 columns)
        widths[0] = max(8, widths[0] - (_APP_MIN - rest))
        rest = max(_APP_MIN, width - sum(widths) - len(widths))
    t = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0), collapse_padding=True)
    for h, w in zip(FLEET_COLUMNS, [w + 1 for w in widths] + [rest]):  # + the space after it
        t.add_column(h, no_wrap=True, overflow="ellipsis", width=w, header_style="bold")
    for c in cells:
        t.add_row(*(Text(text, style=style) for text, style in c))
    return t
