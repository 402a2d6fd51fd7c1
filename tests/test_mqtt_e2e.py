"""Issue 21 end to end: simulated boards that bind nothing (tools/sim.py --no-listen),
calling home through a real Mosquitto, pull releases that `mpota publish` put in a
folder served by `mpota serve`'s server, driven by `mpota rollout --via` and seen by
`mpota fleet --via`. The tests share one broker, one server and 4 boards, and run in
order: 1.1.0 to one board (confirmed), then to all in waves (that one is skipped),
then 1.2.0, crashing on every board: the canary stops it, and so does the next wave
after a resume. The last test needs no Mosquitto: `mpota serve --mqtt-broker` is
the broker."""
import asyncio
import json
import os
import socket
import threading

import pytest

from fleetsim import Fleet, app_folder
from mosquitto import Broker

from mpota import cli, images, keys, mqtt
from mpota.httpserve import make_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
COUNT = 4


class Site:
    """Where a test's releases go (dir, key, base URL) and, for the shared one, its broker and boards."""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("mqtt-e2e")
    key = d / "signing.pem"
    keys.keygen(str(key))
    (d / "rel").mkdir()
    server = make_server(d / "rel", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with Broker() as broker:
        flags = ["--mqtt", broker.hostport, "--no-listen", "--trust", str(key)]
        # 256K: the 64-bit unix build's objects are larger than the board's, and checking
        # the images' Ed25519 signature does not fit beside the agent in 160K there
        with Fleet(COUNT, d / "fleet", heap="256K", flags=flags) as fleet:
            site = Site()
            site.dir, site.key, site.broker, site.fleet = d, str(key), broker, fleet
            site.base = "http://127.0.0.1:%d" % server.server_port
            site.ids = [b.device_id for b in fleet.boards]
            asyncio.run(online(broker.url, site.ids))
            yield site
    server.shutdown()
    server.server_close()


async def online(url, ids):
    async with mqtt.Link(url) as link:
        await link.wait_online(ids, 60)


def release(site, version, crash=False):
    """`mpota publish` of an app version: -> the path of DIR/SHA256.bin."""
    folder = app_folder(site.dir, version, crash)
    img = images.build_folder(folder, version, site.key)
    assert cli.main(["publish", str(folder), "--version", version, "--sign-key", site.key, "--dir",
                     str(site.dir / "rel"), "--base-url", site.base, "--targets", os.devnull, "-q"]) == 0
    return site.dir / "rel" / (img.sha256 + ".bin"), img


def run(capsys, *args):
    code = cli.main([str(a) for a in args] + ["--targets", os.devnull, "--json"])
    return code, [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def fleet_rows(url, capsys):
    code, evs = run(capsys, "fleet", "--via", url)
    return {e["target"]: e for e in evs if e["event"] == "board"}


async def retained_states(site):
    async with mqtt.Link(site.broker.url) as link:
        return {i: link.state(i) for i in site.ids}


def test_a_board_the_host_cannot_reach_installs_a_published_release_and_the_host_sees_it_confirmed(site, capsys):
    dev = site.ids[0]
    port = site.fleet.boards[0].tcp_port
    with pytest.raises(OSError):  # no route from the host: the board binds nothing
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    rows = fleet_rows(site.broker.url, capsys)
    assert set(rows) == set(site.ids) and rows[dev]["state"] == "no app"
    path, img = release(site, "1.1.0")
    site.v110 = img
    code, evs = run(capsys, "-t", dev, "rollout", path, "--via", site.broker.url, "--sign-key", site.key,
                    "--soak", "1s", "--state-dir", site.dir / "rollouts", "--wait", "60")
    assert code == 0, (evs[-1].get("failed"), site.fleet.boards[0].tail(30))
    end = evs[-1]
    assert (end["event"], end["healthy"]) == ("complete", 1)
    row = fleet_rows(site.broker.url, capsys)[dev]
    assert (row["version"], row["state"]) == ("1.1.0+0", "confirmed")
    assert row["slots"][row["running"]] == "confirmed"


def test_a_waved_rollout_reaches_every_board_and_skips_the_one_running_it(site, capsys):
    path = site.dir / "rel" / (site.v110.sha256 + ".bin")  # test 1 put it on board 0
    # (--wait 120: three boards install at once, each checking an Ed25519 signature, beside the
    # suite's other worker; at the default 60 s one board's outcome came late in 3 of 10 suite runs)
    code, evs = run(capsys, "-t", "@broker", "rollout", path, "--via", site.broker.url, "--sign-key", site.key,
                    "--canary", "1", "--waves", "50%,100%", "--soak", "1s", "--state-dir", site.dir / "rollouts",
                    "--wait", "120")
    bad = [e for e in evs if e.get("event") == "board" and e.get("state") not in ("healthy", "skipped")]
    assert code == 0, (evs[-1].get("failed"), bad, [b.tail(30) for b in site.fleet.boards])
    end = evs[-1]
    assert (end["healthy"], end["skipped"]) == (COUNT - 1, 1)
    skipped = [e["target"] for e in evs if e["event"] == "board" and e["state"] == "skipped"]
    assert skipped == [site.ids[0]]
    rows = fleet_rows(site.broker.url, capsys)
    assert {(r["version"], r["state"]) for r in rows.values()} == {("1.1.0+0", "confirmed")}


def test_a_failing_canary_stops_a_waved_rollout_with_no_other_board_touched(site, capsys):
    before = asyncio.run(retained_states(site))
    path, img = release(site, "1.2.0", crash=True)
    code, evs = run(capsys, "-t", ",".join(site.ids), "rollout", path, "--via", site.broker.url, "--sign-key",
                    site.key, "--canary", "1", "--waves", "50%,100%", "--soak", "1s", "--state-dir",
                    site.dir / "rollouts", "--wait", "60")
    assert code == 6, evs[-1]
    end = evs[-1]
    assert (end["event"], end["wave"], end["untouched"]) == ("paused", 2, COUNT - 1)  # paused after wave 1
    canary = site.ids[0]
    assert "app crashed" in end["failed"][canary]["error"]
    assert end["failed"][canary]["rolled_back"].startswith("by the host")
    after = asyncio.run(retained_states(site))
    for dev in site.ids[1:]:  # not one command reached them
        assert after[dev]["cmd_seq"] == before[dev]["cmd_seq"]
    st = after[canary]
    assert st["slots"][st["running"]]["version"] == "1.1.0+0"  # back on its confirmed version
    # resume needs no --via, key or URL again: the plan keeps them; wave 2's board fails the same way
    code, evs = run(capsys, "rollout", "resume", end["id"], "--state-dir", site.dir / "rollouts", "--wait", "60")
    end = evs[-1]
    assert (code, end["event"], end["untouched"], end["failures"]) == (6, "paused", COUNT - 2, 2), end
    assert end["failed"][site.ids[1]]["rolled_back"].startswith("by the host")


def test_an_image_signed_by_a_key_the_board_does_not_trust_is_refused_as_over_the_lan(site, capsys, tmp_path):
    other = tmp_path / "other.pem"
    keys.keygen(str(other))
    # the image by another key, the commands by ours
    img = images.build_folder(app_folder(tmp_path, "9.0.0"), "9.0.0", str(other))
    path = tmp_path / "app.img"
    path.write_bytes(img.data)
    assert cli.main(["publish", str(path), "--sign-key", site.key, "--dir", str(site.dir / "rel"), "--base-url",
                     site.base, "--targets", os.devnull, "-q"]) == 0
    dev = site.ids[3]
    code, evs = run(capsys, "-t", dev, "rollout", site.dir / "rel" / (img.sha256 + ".bin"), "--via",
                    site.broker.url, "--sign-key", site.key, "--soak", "1s", "--state-dir", site.dir / "rollouts")
    end = evs[-1]
    assert (code, end["event"]) == (6, "paused")
    assert "signature_invalid" in end["failed"][dev]["error"], end["failed"]
    retries = [e for e in evs if e["event"] == "retry"]
    assert retries == []  # a refusal is final: no second install
    row = fleet_rows(site.broker.url, capsys)[dev]
    assert row["version"] == "1.1.0+0"


def test_serve_with_its_embedded_broker_is_the_whole_flow_on_one_machine_without_mosquitto(tmp_path, capsys):
    """`mpota serve --mqtt-broker` (amqtt) alone carries a board's release: no Mosquitto."""
    import subprocess
    import sys

    from conftest import free_port
    from simproc import Sim

    key = tmp_path / "signing.pem"
    keys.keygen(str(key))
    site = Site()
    site.dir, site.key = tmp_path, str(key)
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "mpota", "serve", "--dir", str(tmp_path / "rel"), "--port", "0",
                            "--mqtt-broker", "--mqtt-port", str(port), "--json"], stdout=subprocess.PIPE, text=True)
    try:
        (tmp_path / "rel").mkdir()
        lines = [json.loads(srv.stdout.readline()) for _ in range(2)]
        assert [e["event"] for e in lines] == ["broker", "serving"]
        site.base = "http://127.0.0.1:%d" % lines[1]["port"]
        url = "mqtt://127.0.0.1:%d" % port
        with Sim(state=tmp_path / "board", flags=["--mqtt", "127.0.0.1:%d" % port, "--no-listen", "--trust",
                                                   str(key), "--heap", "256K"]) as board:
            asyncio.run(online(url, [board.device_id]))
            path, img = release(site, "2.0.0")
            code, evs = run(capsys, "-t", "@broker", "rollout", path, "--via", url, "--sign-key", key, "--soak", "1s",
                            "--state-dir", tmp_path / "rollouts")
            assert code == 0, evs[-1]
            row = fleet_rows(url, capsys)[board.device_id]
            assert (row["version"], row["state"]) == ("2.0.0+0", "confirmed")
    finally:
        srv.terminate()
        srv.wait(10)
