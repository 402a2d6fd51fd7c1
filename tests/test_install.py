"""`pip install <clone>` in a fresh virtual environment gives a working `mpota`
command with the runtime dependencies only (no pytest, ruff, mypy, hypothesis).

The install fetches the runtime dependencies from the package index (with the
pins of requirements.txt as constraints); the clone itself is copied first, so
the build proves the package's file set and writes nothing into the clone.
"""
import os
import shutil
import subprocess
import venv

import pytest

from conftest import REPO
from simproc import Sim

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DEV_ONLY = ("pytest", "ruff", "mypy", "hypothesis")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    for part in ("host", "shared"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, src / part)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-c", str(REPO / "requirements.txt"), str(src)],
                       capture_output=True, text=True, timeout=800)
    assert r.returncode == 0, r.stdout + r.stderr
    return env_dir


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MPOTA_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(MPOTA_TARGETS=os.devnull, **extra)
    return env


def test_runtime_dependencies_only(installed):
    r = subprocess.run([str(installed / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                       capture_output=True, text=True, timeout=120)
    names = {line.split("==")[0].lower() for line in r.stdout.splitlines()}
    assert "mpota" in names and "rich" in names and "imgtool" in names
    assert not names & set(DEV_ONLY), names & set(DEV_ONLY)


def test_help_version_and_push_to_the_simulator(installed, tmp_path):
    mpota = str(installed / "bin" / "mpota")
    r = subprocess.run([mpota, "--help"], capture_output=True, text=True, timeout=60,
                       env=_clean_env(), cwd=str(tmp_path))
    assert r.returncode == 0 and "push" in r.stdout, r.stderr
    r = subprocess.run([mpota, "--version"], capture_output=True, text=True, timeout=60,
                       env=_clean_env(), cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.startswith("mpota ") and "(protocol 1)" in r.stdout, r.stderr
    with Sim(state=tmp_path / "dev") as sim:
        r = subprocess.run([mpota, "-t", "127.0.0.1:%d" % sim.tcp_port, "push", str(REPO / "examples" / "hello")],
                           capture_output=True, text=True, timeout=300,
                           env=_clean_env(MPOTA_KEY=sim.key.hex()), cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running and confirmed" in r.stdout
