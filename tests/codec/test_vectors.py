"""The one vector file (tests/vectors/protocol.json) under both interpreters."""
import json
import runpy
import subprocess
import sys

from conftest import REPO, run_micropython

RUNNER = REPO / "tests" / "vectors" / "run_vectors.py"
VECTORS = REPO / "tests" / "vectors" / "protocol.json"


def test_vectors_cpython(capsys):
    mod = runpy.run_path(str(RUNNER))
    failed = mod["main"]()
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out.strip().splitlines()[-1])
    assert failed == 0, out
    assert "cpython: %d vectors passed, 0 failed" % len(json.loads(VECTORS.read_text())["vectors"]) in out


def test_vectors_micropython(micropython, mp_build, capsys):
    r = run_micropython([str(RUNNER)], mp=mp_build)
    with capsys.disabled():
        print("\n" + (r.stdout.strip().splitlines() or ["(no output)"])[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(json.loads(VECTORS.read_text())["vectors"])
    assert "micropython: %d vectors passed, 0 failed" % n in r.stdout


def test_vectors_file_is_current(tmp_path):
    """The committed vectors are exactly what tools/gen_vectors.py builds."""
    fresh = tmp_path / "protocol.json"
    subprocess.run([sys.executable, str(REPO / "tools" / "gen_vectors.py"), str(fresh)], check=True,
                   capture_output=True)
    assert fresh.read_bytes() == VECTORS.read_bytes(), "tests/vectors/protocol.json is stale: run make vectors"


def test_every_reference_message_has_vectors():
    from mpota.codec import bootloader_messages as bm
    vs = json.loads(VECTORS.read_text())["vectors"]
    covered = {v["cls"] for v in vs if v["kind"] == "message"}
    assert covered == {c.__name__ for c in bm.MESSAGES.values()}
    bad = {v["cls"] for v in vs if v["kind"] == "bad_message"}
    assert {"UpdateStartRequest", "WriteRequest", "ErrorResponse", "VersionRequest"} <= bad
