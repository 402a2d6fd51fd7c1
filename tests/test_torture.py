"""Short versions of the torture harness (tools/torture.py runs the parts
tools/torture_powercut.py, tools/torture_link.py, tools/torture_fuzz.py and
tools/torture_races.py; `make torture` runs the full counts): about 20 power
cuts over every state transition, 3 updates through a hostile link, 5,000 fuzz
messages at a board-like heap, and one round of each operator race. Each
prints its figures; every violation fails.

The device bugs the harness found (a long op name gave an internal error; a
write to a peer that had gone was answered as an internal error; `begin`
after a rollback erased the rollback target) are fixed and stay as
regression tests."""
import json
import random

import pytest

import torture
from torture_common import install, make_image
from torture_fuzz import fuzz
from torture_link import hostile_link
from torture_powercut import PowerCuts
from torture_races import races, settled
from devconn import DevConn
from simproc import Sim

pytestmark = pytest.mark.slow


def _args(*argv):
    return torture.parse_args(["--seed", "20240611"] + list(argv))


def test_power_cuts_short(tmp_path, capsys):
    with capsys.disabled():
        print()
        assert PowerCuts(tmp_path, random.Random(1)).run(20)


def test_hostile_link_short(tmp_path, capsys):
    with capsys.disabled():
        print()
        assert hostile_link(tmp_path, random.Random(2), _args("--updates", "3", "--clean", "1"))


def test_fuzz_short(tmp_path, capsys):
    with capsys.disabled():
        print()
        assert fuzz(tmp_path, random.Random(3), _args("--fuzz", "5000"))


def test_races_short(tmp_path, capsys):
    with capsys.disabled():
        print()
        assert races(tmp_path, random.Random(4), _args("--races", "2"))


# -- device bugs found by the harness (regression tests) ----------------------------

def test_long_op_name_is_unsupported_not_internal(tmp_path):
    with Sim(state=tmp_path / "dev") as sim:
        c = DevConn(sim.tcp_port)
        r = c.req("x" * 300)
        c.close()
        assert r["ok"] is False and r["error"]["code"] == "unsupported", r
        assert "Traceback" not in sim.output


def test_begin_after_rollback_keeps_a_bootable_image(tmp_path):
    rng = random.Random(5)
    v1 = make_image(tmp_path, "v1", "1.0.0+0", 0, rng)
    v2 = make_image(tmp_path, "v2", "2.0.0+0", 0, rng)
    v3 = make_image(tmp_path, "v3", "3.0.0+0", 20000, rng)
    with Sim(state=tmp_path / "dev", flags=["--no-auth"]) as sim:
        c = install(sim, [v1, v2])  # a: v1 confirmed; b: v2 confirmed, running
        assert c.ok("rollback")["slot"] == "a"  # a boots at the next reset
        b = c.req("begin", size=len(v3.data), sha256=v3.sha, version=v3.version)
        if b["ok"]:  # the operator gives up half way
            c.upload(v3.data, b["offset"], stop_at=len(v3.data) // 2)
            c.ok("abort")
        st, bad = settled(sim, None, {v1.sha: v1, v2.sha: v2, v3.sha: v3})
        assert not bad and st["running"] == "a", json.dumps(st)
