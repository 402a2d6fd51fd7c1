"""Everyday host-tool traps (issue 17, items 6-9 and 11, and the key-file and
targets-file modes): each test fails on the code before its fix. Unit-level
where the host alone decides; against the simulator (loopback only) where the
device's answer matters."""
import os
import subprocess
import sys
from types import SimpleNamespace


from conftest import REPO
from mpota import commands
from mpota.errors import device_error

FLASH = str(REPO / "host" / "flash.py")


def run_cli(*args, env_extra=None, cwd=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["MPOTA_TARGETS"] = os.devnull
    env.update(env_extra or {})
    return subprocess.run([sys.executable, FLASH] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(cwd or REPO))


def _ctx(command="push", spec="s1"):
    return SimpleNamespace(prog="mpota", spec=spec, command=command, args=SimpleNamespace())


# --- 9. the anti-rollback refusal names --security-counter -----------------------------

def test_anti_rollback_hint_names_security_counter_not_allow_downgrade():
    err = device_error("version_refused", "security counter 1 is below this device's floor 3 "
                       "(anti-rollback: no flag allows it)", op="commit")
    hint = commands.with_cli_hint(err, _ctx()).hint
    assert "--security-counter N" in hint and "at least 3" in hint
    assert "push it with --allow-downgrade" not in hint
    # an older version (no counter involved) still gets the downgrade flag
    err = device_error("version_refused", "version 1.0.0 is older than the active 2.0.0", op="begin")
    assert "--allow-downgrade" in commands.with_cli_hint(err, _ctx()).hint
