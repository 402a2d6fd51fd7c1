"""An app may not ship a top-level module in the agent's namespace (main, mpota,
mpota_*), nor lack main.py (issue 8, isolation): `mpota build`/`push` refuse such a
folder or image file, naming the file; the device, given one anyway (signed by a
trusted key), refuses to boot it and keeps running the previous image. Every other
name is the app's (issues 17.1, 18.1), built-ins included: tests/test_isolation.py."""
import hashlib
import subprocess
import sys

import pytest

from conftest import REPO
from mpota import deploy, images, keys
from mpota.errors import BadImage, UsageError

MAIN = "def main():\n    print('app: up')\n"


def _app(tmp_path, files):
    d = tmp_path / "app"
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def _image_file(tmp_path, files, key=None, version="1.0.0"):
    """An image whose app holds `files`, made without the build checks (as another tool could)."""
    body = images._lfs_image({k: v.encode() for k, v in files.items()}, 8)
    p = tmp_path / "app.img"
    p.write_bytes(images.build_app_image(body, version=version, key=key))
    return p


def test_the_agent_modules_are_the_device_files():
    names = deploy.agent_modules()
    assert names == {p.stem for p in (REPO / "device").glob("*.py")}
    assert {"mpota_auth", "mpota_agent", "mpota_hal", "mpota_slots", "main", "mpota"} <= names
    assert all(deploy.agent_name(n) for n in names - {"main"})


@pytest.mark.parametrize("rel", ["mpota_auth.py", "mpota_agent.mpy", "mpota_hal/__init__.py", "mpota.py",
                                 "mpota_future.py"])
def test_build_refuses_an_app_that_shadows_an_agent_module(tmp_path, rel):
    d = _app(tmp_path, {"main.py": MAIN, rel: "x = 1\n"})
    with pytest.raises(UsageError) as ei:
        images.load(str(d), "1.0.0")
    top = rel.partition("/")[0] + ("/" if "/" in rel else "")
    assert "%s/%s is in the agent's namespace" % (d, top) in ei.value.message
    assert "main, mpota and mpota_* are the agent's names" in ei.value.hint


def test_nested_or_unrelated_names_are_fine(tmp_path):
    d = _app(tmp_path, {"main.py": MAIN, "lib/mpota_auth.py": "x = 1\n", "sensors.py": "y = 2\n"})
    assert images.load(str(d), "1.0.0").version == "1.0.0+0"


def test_build_refuses_an_app_without_main_before_asking_for_a_version(tmp_path):
    d = _app(tmp_path, {"app.py": MAIN})
    with pytest.raises(UsageError, match="has no main.py") as ei:
        images.load(str(d))
    assert "main()" in ei.value.hint


@pytest.mark.parametrize("files,words", [
    ({"main.py": MAIN, "mpota_auth.py": "ok = True\n"}, "app.img/mpota_auth.py is in the agent's namespace"),
    ({"app.py": MAIN}, "has no main.py"),
])
def test_an_image_file_is_checked_the_same_way(tmp_path, files, words):
    p = _image_file(tmp_path, files)
    with pytest.raises(BadImage, match=words):
        images.load(str(p))


def test_cli_build_and_push_refuse_before_connecting(tmp_path):
    d = _app(tmp_path, {"main.py": MAIN, "mpota_trust.py": "x = 1\n"})
    flash = [sys.executable, str(REPO / "host" / "flash.py")]
    for args in (["build", d, "--version", "1.0.0", "-o", tmp_path / "x.img"],
                 ["-t", "127.0.0.1:9", "push", d, "--version", "1.0.0"]):  # port 9: nobody there
        r = subprocess.run(flash + [str(a) for a in args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "mpota_trust.py is in the agent's namespace" in r.stderr and "hint:" in r.stderr
    assert not (tmp_path / "x.img").exists()


@pytest.mark.slow
def test_the_device_refuses_to_commit_a_signed_shadowing_or_mainless_image(tmp_path):
    """Signed by the trusted key, so only the name rules stop them: the device mounts
    each at commit and refuses it there, naming the file (boot checks the same again),
    and the confirmed image keeps running."""
    from simproc import Sim
    from test_agent_e2e import APP1, DevConn, reset_and_wait

    key = tmp_path / "k.pem"
    keys.keygen(key)
    good = images.build_app_image(_app(tmp_path, {"main.py": APP1}), version="1.0.0", key=str(key))
    bad = {"shadow": {"main.py": MAIN, "mpota_auth.py": "def check(*a):\n    return True\n"},
           "mainless": {"app.py": MAIN}}
    with Sim(state=tmp_path / "dev", flags=["--trust", str(key)]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        c.push(good, "1.0.0+0")
        c = reset_and_wait(sim, c, sim.key)
        c.ok("confirm")
        for n, (name, files) in enumerate(bad.items(), start=2):
            version = "%d.0.0+0" % n
            (tmp_path / name).mkdir()
            img = _image_file(tmp_path / name, files, key=str(key), version=version).read_bytes()
            c.ok("begin", size=len(img), sha256=hashlib.sha256(img).hexdigest(), version=version)
            c.upload(img)
            e = c.err("commit", "bad_image")["error"]["message"]
            word = "mpota_auth is in the agent's namespace" if name == "shadow" else "no main.py"
            assert word in e, (name, e)
            c = reset_and_wait(sim, c, sim.key)
            st = c.ok("status")
            assert st["running"] == st["active"] and st["slots"][st["running"]]["version"] == "1.0.0+0", (name, st)
            assert st["pending"] is None, (name, st)
        c.close()
