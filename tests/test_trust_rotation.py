"""Key rotation over the network (`mpota trust`, device/mpota_trustkeys.py op_trust)
and the early refusal of an image whose key the device does not trust (`begin`
with the image's key id), end to end: the real CLI against the simulator,
loopback only. Also a power cut at every flash operation of a trust change."""
import json
import shutil
import sys

import pytest

from mpota import keys
from mpota.images import build_app_image
from devconn import DevConn
from simproc import Sim
from conftest import INTERPRETERS, REPO, interp_label
from test_cli_e2e import cli, ev, events, make_app, status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for n in ("old", "new", "attacker"):
        out[n] = d / (n + ".pem")
        keys.keygen(out[n])
    return out


def fp(pem):
    """A key's fingerprint as the device shows it: its key id's first 8 bytes, hex."""
    return keys.key_id(pem)[:8].hex()


def trust(sim, *args):
    r = cli("-t", "127.0.0.1:%d" % sim.tcp_port, "--json", "trust", *args, key=sim.key)
    return r, (ev(events(r), "trust") if r.returncode == 0 else json.loads(r.stdout.splitlines()[-1]))


def push(sim, app, version, pem):
    return cli("-t", "127.0.0.1:%d" % sim.tcp_port, "--json", "push", app, "--version", version,
               "--sign-key", pem, key=sim.key)


def test_rotate_keys_with_signed_statements(tmp_path, pems):
    old, new, attacker = pems["old"], pems["new"], pems["attacker"]
    app = make_app(tmp_path / "app")
    with Sim(state=tmp_path / "dev", flags=["--trust", str(old)]) as sim:
        r, t = trust(sim)
        assert r.returncode == 0 and t["keys"] == [fp(old)] and t["seq"] == 0, (r.stdout, r.stderr)
        assert status(sim)["trust"]["keys"] == [fp(old)]
        assert push(sim, app, "1.0.0", old).returncode == 0
        # a change signed by a key the device does not trust
        r, e = trust(sim, "--add", new, "--signed-by", attacker)
        assert r.returncode != 0 and e["code"] == "signature_invalid", (r.stdout, r.stderr)
        assert "not signed by a trusted key" in e["message"]
        # add the new key (seq 1), drop it (seq 2); the add replayed is refused
        r, t = trust(sim, "--add", new, "--signed-by", old)
        assert r.returncode == 0 and t["keys"] == [fp(old), fp(new)] and t["seq"] == 1, r.stderr
        c = DevConn(sim.tcp_port, sim.key)
        assert c.ok("trust", change=keys.key_change(old, "drop", new, 2))["keys"] == [fp(old)]
        replay = c.err("trust", "bad_request", change=keys.key_change(old, "add", new, 1))
        assert "above 2" in replay["error"]["message"], replay
        assert c.ok("trust")["keys"] == [fp(old)]
        c.close()
        r, t = trust(sim, "--add", new, "--signed-by", old)
        assert r.returncode == 0 and t["keys"] == [fp(old), fp(new)] and t["seq"] == 3, r.stderr
        # the key of the running confirmed image stays until an image signed by another runs
        r, e = trust(sim, "--drop", old, "--signed-by", new)
        assert r.returncode != 0 and e["code"] == "incorrect_state" and "running image" in e["message"], e
        # an image signed by the new key, then the old key dropped
        r = push(sim, app, "2.0.0", new)
        assert r.returncode == 0 and ev(events(r), "done")["state"] == "confirmed", r.stderr
        r, t = trust(sim, "--drop", old, "--signed-by", new)
        assert r.returncode == 0 and t["keys"] == [fp(new)] and t["seq"] == 4, r.stderr
        # an image signed by the old key is refused (at begin, naming both keys)
        r = push(sim, app, "3.0.0", old)
        assert r.returncode != 0 and "signature_invalid" in r.stdout, r.stdout
        assert fp(old) in r.stdout and fp(new) in r.stdout, r.stdout
        # the last key stays
        r, e = trust(sim, "--drop", new, "--signed-by", new)
        assert r.returncode != 0 and e["code"] == "incorrect_state", r.stdout
        assert "last trusted key" in e["message"]
        st = status(sim)
        assert st["trust"]["keys"] == [fp(new)] and st["trust"]["seq"] == 4
        assert st["slots"][st["running"]]["version"].startswith("2.0.0")
        r = cli("-t", "127.0.0.1:%d" % sim.tcp_port, "status", key=sim.key)
        assert "keys    %s\n" % fp(new) in r.stdout, r.stdout
    # the host shows the same fingerprint for a key file
    r = cli("--json", "pubkey", new)
    assert ev(events(r), "pubkey")["fingerprint"] == fp(new) == keys.fingerprint(new)


def _device_trust():
    sys.path.insert(0, str(REPO / "device"))
    try:
        import mpota_trust
    finally:
        sys.path.remove(str(REPO / "device"))  # it would shadow PyPI's `smp` for later tests
    return mpota_trust


def test_trust_changes_need_auth_and_a_provisioned_store(tmp_path, pems):
    old = pems["old"]
    with Sim(state=tmp_path / "dev") as sim:  # no trusted key yet
        r, t = trust(sim)
        assert r.returncode == 0 and t["keys"] == [] and t["signed_images"] is False
        # status's summary, made at boot without loading trust.py, is what trust.py says of no store
        c = DevConn(sim.tcp_port, sim.key)
        assert c.ok("status")["trust"] == _device_trust().summary(_device_trust().load(str(tmp_path / "none")))
        c.close()
        r, e = trust(sim, "--add", old, "--signed-by", old)
        assert r.returncode != 0 and e["code"] == "incorrect_state", r.stdout
        r, t = trust(sim, "--provision", old)
        assert r.returncode == 0 and t["keys"] == [fp(old)] and t["signed_images"] is True, r.stderr
        r, e = trust(sim, "--provision", pems["new"])
        assert r.returncode != 0 and e["code"] == "incorrect_state", r.stdout
        c = DevConn(sim.tcp_port)  # a stranger
        c.err("trust", "auth_required")
        c.close()
    with Sim(state=tmp_path / "noauth", flags=["--no-auth"]) as sim:
        c = DevConn(sim.tcp_port)
        c.err("trust", "auth_required", provision=keys.public_raw(old).hex())
        assert c.ok("trust")["keys"] == []
        c.close()


def test_image_not_signed_by_a_trusted_key_is_refused_before_upload(tmp_path, pems):
    from mpota.push import image_key_id

    old, attacker = pems["old"], pems["attacker"]
    app = make_app(tmp_path / "app")
    unsigned = tmp_path / "unsigned.img"
    unsigned.write_bytes(build_app_image(app, "1.0.0+0"))
    foreign = tmp_path / "foreign.img"
    foreign.write_bytes(build_app_image(app, "1.0.0+0", key=str(attacker)))
    assert image_key_id(unsigned.read_bytes()) == ""
    assert image_key_id(foreign.read_bytes()) == keys.key_id(attacker).hex()
    with Sim(state=tmp_path / "dev", flags=["--trust", str(old)]) as sim:
        before = status(sim)
        for img, words in ((unsigned, "not signed"), (foreign, "signed by key %s" % fp(attacker))):
            r = cli("-t", "127.0.0.1:%d" % sim.tcp_port, "--json", "push", img, key=sim.key)
            assert r.returncode != 0, r.stdout
            err = json.loads(r.stdout.splitlines()[-1])
            assert err["code"] == "signature_invalid" and words in err["message"], err
            assert fp(old) in err["message"] or words == "not signed", err
            assert "begin" not in [e["event"] for e in events(r)]  # no DATA frame was sent
        st = status(sim)
        # nothing was written: the inactive slot is as it was, no session, no flash program
        assert st["session"] is None and st["slots"]["a"]["state"] == "empty", st
        assert st["sim_flash"]["programs"] == before["sim_flash"]["programs"], (before["sim_flash"], st["sim_flash"])


def test_power_cut_anywhere_in_a_trust_change(tmp_path, pems):
    """The simulator tears flash operation N+1 and kills the device, for every
    operation the change takes: after the restart the device trusts the old
    key list or the new one, never none (trustkeys.save: write, then rename)."""
    old, new = pems["old"], pems["new"]
    base = tmp_path / "base"
    with Sim(state=base, flags=["--trust", str(old)]) as sim:
        key = sim.key
    stmt = keys.key_change(old, "add", new, 1)
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    with Sim(state=probe) as sim:
        c = DevConn(sim.tcp_port, key)
        start = c.ok("status")["sim_flash"]["ops"]
        assert c.ok("trust", change=stmt)["keys"] == [fp(old), fp(new)]
        end = c.ok("status")["sim_flash"]["ops"]
        c.close()
    assert end - start >= 2, (start, end)
    seen = {"old": 0, "new": 0}
    for n in range(start, end):
        state = tmp_path / ("cut%d" % n)
        shutil.copytree(base, state)
        with Sim(state=state, flags=["--power-cut-after", str(n)]) as sim:
            mark = sim.mark()
            try:
                c = DevConn(sim.tcp_port, key, timeout=10)
                c.req("trust", change=stmt)
            except (OSError, EOFError, AssertionError):
                pass  # the connection died with the device
            sim.wait_for_line("sim: power cut", timeout=30, since=mark)
            sim.wait_for_line("mpota: ready", timeout=30, since=mark)
            c = DevConn(sim.tcp_port, key)
            t = c.ok("trust")
            c.close()
        assert t["warning"] is None and t["signed_images"] is True, (n, t)
        if t["keys"] == [fp(old)]:
            assert t["seq"] == 0, (n, t)
            seen["old"] += 1
        else:
            assert t["keys"] == [fp(old), fp(new)] and t["seq"] == 1, (n, t)
            seen["new"] += 1
        shutil.rmtree(state)
    print("trust change: %d flash ops, after a cut: old %d, new %d" % (end - start, seen["old"], seen["new"]))
    assert seen["old"] >= 1 and seen["old"] + seen["new"] == end - start, seen


@pytest.mark.parametrize("mp", INTERPRETERS, ids=interp_label)
def test_lean_mode_trust_and_early_refusal(tmp_path, pems, mp):
    """Lean mode serves status (with the trusted keys) itself, hands `trust` to the
    full stack, and refuses at `begin` an image whose key it does not trust
    without restarting into update mode for it."""
    old, new = pems["old"], pems["new"]
    cfg = tmp_path / "mpota.json"
    cfg.write_text('{"mode": "lean"}')
    with Sim(state=tmp_path / "dev", flags=["--config", str(cfg), "--micropython", mp, "--trust", str(old)]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        try:
            assert c.ok("status")["trust"]["keys"] == [fp(old)]
            e = c.err("begin", "signature_invalid", size=4096, sha256="00" * 32, key_id=keys.key_id(new).hex())
            assert fp(new) in e["error"]["message"] and fp(old) in e["error"]["message"], e
            c.err("begin", "signature_invalid", size=4096, sha256="00" * 32, key_id="")
            c.err("begin", "bad_request", size=4096, sha256="00" * 32, key_id="abc")
            assert c.ok("trust", change=keys.key_change(old, "add", new, 1))["keys"] == [fp(old), fp(new)]
            st = c.ok("status")
            assert st["mode"] == "lean" and st["trust"]["keys"] == [fp(old), fp(new)] and st["trust"]["seq"] == 1
        finally:
            c.close()
        assert "Traceback" not in sim.output and "restarting" not in sim.output.lower()
