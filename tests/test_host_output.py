"""What people see: one live view for several devices, plain unwrapped lines off a
terminal, KiB/s everywhere, status with space, status -q."""
import io
import re
import sys

from mpota import commands
from mpota.errors import NoSpace
from mpota.output import FleetOutput, Output


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_are_not_wrapped_off_a_terminal():
    out, err = io.StringIO(), io.StringIO()
    o = Output("human", stdout=out, stderr=err)
    long = "word " * 60
    o.say(long)
    o.error(NoSpace("x " * 70, "y " * 70))
    assert out.getvalue() == long + "\n"
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert "\x1b[" not in out.getvalue() + err.getvalue()  # no colour codes in a log
    o.progress_start("upload", 100)  # no bar off a terminal
    o.progress(50, 100)
    o.progress_stop()
    assert err.getvalue().count("\n") == 2


def test_one_live_view_rows_per_device_lines_above(monkeypatch):
    tty = Terminal()
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.setattr(sys, "stderr", tty)
    fleet = FleetOutput("human", "a,b")
    fleet.err_console.width = 100
    fleet.start()
    a, b = fleet.device("pico-a"), fleet.device("pico-b")
    a.event("begin", "uploading to slot a", slot="a")
    a.progress_start("upload", 200 * 1024)
    a.progress(100 * 1024, 200 * 1024)
    b.error(NoSpace("too big"))
    a.event("done", "done: 1.0.0", version="1.0.0")
    fleet.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.getvalue())
    assert "pico-a" in text and "pico-b" in text and "failed" in text
    assert "pico-a: uploading to slot a" in text and "error: pico-b: too big" in text
    assert "KiB" in text and "kB/s" not in text
    assert fleet.bars is not None and len(fleet.bars.tasks) == 2  # one row per device


def test_rates_are_kib_per_second():
    from mpota.output import _Rate, fmt_rate

    assert fmt_rate(2048) == "2.0 KiB/s"
    task = type("T", (), {"finished_speed": None, "speed": 3 * 1024})()
    assert str(_Rate().render(task)) == "3.0 KiB/s"


def test_status_shows_slot_size_and_free_space_when_reported():
    out = io.StringIO()
    o = Output("human", stdout=out, stderr=io.StringIO())
    st = {"running": "a", "slot_size": 368640, "free": 200000, "max_image": 368640,
          "slots": {"a": {"state": "confirmed", "version": "1.0.0+0", "size": 20552}}}
    commands.print_status(o, st)
    text = out.getvalue()
    assert "slot size 360.0 KiB" in text and "free 195.3 KiB" in text and "largest image 360.0 KiB" in text
    out.truncate(0)
    commands.print_status(o, {"running": None, "slots": {}})
    assert "space" not in out.getvalue()  # an agent that reports neither


def test_quiet_shows_the_one_line_answer_only():
    out = io.StringIO()
    o = Output("quiet", stdout=out, stderr=io.StringIO())
    o.say("detail")
    o.event("x", "an event")
    o.result("pico: slot a, 1.0.0+0, confirmed, app running")
    assert out.getvalue() == "pico: slot a, 1.0.0+0, confirmed, app running\n"
