"""shared/mpota_cbor.py: the same vectors (tests/vectors/cbor.json, from cbor2 and the
smp package) under CPython, the unix-port MicroPython and, where it exists, the
32-bit v1.27 build; plus its allocation profile on the 32-bit build."""
import json
import runpy
import subprocess
import sys

import pytest

from conftest import REPO, run_micropython

RUNNER = REPO / "tests" / "vectors" / "run_cbor_vectors.py"
VECTORS = REPO / "tests" / "vectors" / "cbor.json"
sys.path.insert(0, str(REPO / "tools"))
import boardbuilds  # noqa: E402  (tools/)

I386 = boardbuilds.i386()


def _count():
    return len(json.loads(VECTORS.read_text())["vectors"])


def test_cbor_vectors_cpython(capsys):
    failed = runpy.run_path(str(RUNNER))["main"]()
    out = capsys.readouterr().out
    assert failed == 0, out
    assert "cpython: %d cbor vectors passed, 0 failed" % _count() in out


def test_cbor_vectors_micropython(micropython):
    r = run_micropython([str(RUNNER)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "micropython: %d cbor vectors passed, 0 failed" % _count() in r.stdout


@pytest.mark.skipif(I386 is None, reason="no ../shared/tools/micropython-1.27-i386 (fresh clone)")
def test_cbor_vectors_micropython_i386():
    r = subprocess.run([str(I386), str(RUNNER)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "micropython: %d cbor vectors passed, 0 failed" % _count() in r.stdout


def test_cbor_vectors_file_is_current(tmp_path):
    fresh = tmp_path / "cbor.json"
    subprocess.run([sys.executable, str(REPO / "tools" / "gen_cbor_vectors.py"), str(fresh)], check=True,
                   capture_output=True)
    assert fresh.read_bytes() == VECTORS.read_bytes(), "tests/vectors/cbor.json is stale: run tools/gen_cbor_vectors.py"


ALLOC = r"""
import gc, sys
sys.path.insert(0, "shared")
import mpota_cbor as cbor
buf = bytearray(64)
req = bytes.fromhex("%s")


def run():  # in a function: module-level stores would grow the globals dict
    gc.collect()
    a = gc.mem_alloc()
    n = cbor.head(buf, 0, 5, 1)
    n = cbor.put_text(buf, n, b"off")
    n = cbor.put_int(buf, n, 123456)
    b = gc.mem_alloc()
    d = cbor.loads(req)
    c = gc.mem_alloc()
    print("encode", b - a, "decode", c - b, len(d["data"]))


run()
run()
"""


def test_cbor_reply_encoding_allocates_nothing(micropython):
    # the upload hot path: {"off": n} built with head/put_text/put_int into a
    # preallocated buffer; decoding a 1 KB chunk costs a dict and small views,
    # never a copy of the data
    import cbor2
    req = cbor2.dumps({"off": 4096, "data": bytes(1024)})
    r = run_micropython(["-c", ALLOC % req.hex()])
    assert r.returncode == 0, r.stderr
    words = r.stdout.splitlines()[-1].split()
    assert words[0] == "encode" and int(words[1]) == 0, r.stdout
    assert int(words[3]) < 1024 and words[4] == "1024", r.stdout  # no copy of the chunk
