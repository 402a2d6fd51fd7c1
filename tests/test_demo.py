"""`make demo` (tools/demo.py) runs from start to end, tells its story and fits 80 columns."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_shows_signed_updates_a_refused_tampered_image_a_rollback_and_a_canary_stopping_a_rollout():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py")], capture_output=True, text=True,
                       timeout=280, cwd=str(REPO))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for words in ("done: 1.0.0+0 running and confirmed", "done: 2.0.0+0 running and confirmed",
                  "signature_invalid", "(exit code 5, as expected)", "still running 2.0.0, confirmed",
                  "3.0.0+0 running on trial", "sim: watchdog reset", "rolled back a -> b after 3 unconfirmed",
                  "boot    watchdog: rolled back a -> b",
                  # the rollout scene: 1.0.0 to 4 boards, then a crashing 1.1.0 stopped by the canary
                  "done: rollout ", "4 healthy, 0 skipped (ran it already), 0 failed, 0 untouched",
                  "FAILED pico-1, rolled back by the host, to 1.0.0+0",
                  "app crashed: RuntimeError: sensor bus not found",
                  "paused after wave 1: 1 failed, more than --max-failures 0",
                  "0 healthy, 0 skipped (ran it already), 1 failed, 3 untouched", "(exit code 6, as expected)",
                  "paused after wave 1/3", "wave 3/3          2 boards  2 untouched", "4 of 4 boards answered",
                  "the canary pico-1 runs 1.0.0 again, confirmed; 0 other boards touched",
                  # its traceback: in the rollout's view and status, and with its console in `mpota logs`
                  "    its traceback (`mpota -t pico-1 logs`):",
                  "--- last crash (saved on the board, survives resets) ---"):
        assert words in out, words
    wide = [ln for ln in out.splitlines() if len(ln) > 80]
    assert not wide, wide
