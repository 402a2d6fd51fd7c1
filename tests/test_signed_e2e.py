"""Signed images on the agent: with a trusted key installed (sim --trust), an
unsigned image or one signed by another key is refused at commit and never
becomes bootable; a properly signed one is committed, boots on trial and runs."""
from mpota import keys
from simproc import Sim
from test_agent_e2e import APP1, DevConn, reset_and_wait


def test_only_images_signed_by_a_trusted_key_boot(tmp_path):
    mine, other = tmp_path / "mine.pem", tmp_path / "other.pem"
    keys.keygen(mine)
    keys.keygen(other)
    from mpota.images import build_app_image
    good = build_app_image(_app(tmp_path), version="1.0.0+0", key=str(mine))
    foreign = build_app_image(_app(tmp_path), version="1.0.0+0", key=str(other))
    unsigned = build_app_image(_app(tmp_path), version="1.0.0+0")
    with Sim(state=tmp_path / "dev", flags=["--trust", str(mine)]) as sim:
        c = DevConn(sim.tcp_port, sim.key)
        for img in (unsigned, foreign):
            try:
                c.push(img, "1.0.0+0")
                raise AssertionError("an image not signed by the trusted key was committed")
            except AssertionError as e:
                assert "signature_invalid" in str(e), e
        st = c.ok("status")
        assert st["slots"]["a"]["state"] == "complete" and st["pending"] is None  # stored, not bootable
        assert c.push(good, "1.0.0+0")["state"] == "pending"
        c = reset_and_wait(sim, c, sim.key)
        st = c.ok("status")
        assert st["running"] == "a" and st["trial"], st
        c.close()


def _app(tmp_path):
    d = tmp_path / "app"
    if not d.exists():
        d.mkdir()
        (d / "main.py").write_text(APP1)
    return d
