"""`make demo` (tools/demo.py) runs from start to end, tells its story and fits 80 columns."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_shows_signed_updates_a_refused_tampered_image_and_a_rollback():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py")], capture_output=True, text=True,
                       timeout=280, cwd=str(REPO))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for words in ("done: 1.0.0+0 running and confirmed", "done: 2.0.0+0 running and confirmed",
                  "signature_invalid", "(exit code 5, as expected)", "still running 2.0.0, confirmed",
                  "3.0.0+0 running on trial", "sim: watchdog reset", "rolled back a -> b after 3 unconfirmed",
                  "boot    watchdog: rolled back a -> b"):
        assert words in out, words
    wide = [ln for ln in out.splitlines() if len(ln) > 80]
    assert not wide, wide
