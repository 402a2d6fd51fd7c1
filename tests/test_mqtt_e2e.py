"""Issue 21 end to end: simulated boards that bind nothing (tools/sim.py --no-listen),
calling home through a real Mosquitto, pull releases that `mpota publish` put in a
folder served by `mpota serve`'s server, driven by `mpota rollout --via` and seen by
`mpota fleet --via`. The tests share one broker, one server and 4 boards, and run in
order: 1.1.0 to one board (confirmed), 1.2.0 crashing on every board (the canary
stops it), 1.3.0 to all in waves (the one running it... none: each is pushed)."""
import asyncio
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from fleetsim import Fleet
from mosquitto import Broker

from mpota import cli, images, keys, mqtt
from mpota.httpserve import make_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
COUNT = 4
APP = '''import asyncio
import mpota


async def main():
    if %r:
        raise RuntimeError("version %s fails")
    mpota.confirm()
    while True:
        await asyncio.sleep(1)
'''


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
            site = type("Site", (), {})()
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
    folder = site.dir / ("app-" + version)
    folder.mkdir()
    (folder / "main.py").write_text(APP % (crash, version))
    img = images.build_folder(folder, version, site.key)
    assert cli.main(["publish", str(folder), "--version", version, "--sign-key", site.key, "--dir",
                     str(site.dir / "rel"), "--base-url", site.base, "--targets", os.devnull, "-q"]) == 0
    return site.dir / "rel" / (img.sha256 + ".bin"), img


def run(capsys, *args):
    code = cli.main([str(a) for a in args] + ["--targets", os.devnull, "--json"])
    return code, [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def fleet_rows(site, capsys):
    code, evs = run(capsys, "fleet", "--via", site.broker.url)
    return {e["target"]: e for e in evs if e["event"] == "board"}


async def retained_states(site):
    async with mqtt.Link(site.broker.url) as link:
        return {i: link.state(i) for i in site.ids}


def test_a_board_the_host_cannot_reach_installs_a_published_release_and_the_host_sees_it_confirmed(site, capsys):
    dev = site.ids[0]
    port = site.fleet.boards[0].tcp_port
    with pytest.raises(OSError):  # no route from the host: the board binds nothing
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    rows = fleet_rows(site, capsys)
    assert set(rows) == set(site.ids) and rows[dev]["state"] == "no app"
    path, img = release(site, "1.1.0")
    code, evs = run(capsys, "-t", dev, "rollout", path, "--via", site.broker.url, "--sign-key", site.key,
                    "--soak", "1s", "--state-dir", site.dir / "rollouts", "--wait", "60")
    assert code == 0, (evs[-1].get("failed"), site.fleet.boards[0].tail(30))
    end = evs[-1]
    assert (end["event"], end["healthy"]) == ("complete", 1)
    row = fleet_rows(site, capsys)[dev]
    assert (row["version"], row["state"]) == ("1.1.0+0", "confirmed")
    assert row["slots"][row["running"]] == "confirmed"


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


def test_a_waved_rollout_reaches_every_board_and_skips_the_one_running_it(site, capsys):
    path, img = release(site, "1.3.0")
    dev = site.ids[1]
    code, evs = run(capsys, "-t", dev, "rollout", path, "--via", site.broker.url, "--sign-key", site.key,
                    "--soak", "1s", "--state-dir", site.dir / "rollouts")
    assert code == 0
    code, evs = run(capsys, "-t", "@broker", "rollout", path, "--via", site.broker.url, "--sign-key", site.key,
                    "--canary", "1", "--waves", "50%,100%", "--soak", "1s", "--state-dir", site.dir / "rollouts")
    assert code == 0, (evs[-1].get("failed"), site.fleet.boards[0].tail(30))
    end = evs[-1]
    assert (end["healthy"], end["skipped"]) == (COUNT - 1, 1)
    skipped = [e["target"] for e in evs if e["event"] == "board" and e["state"] == "skipped"]
    assert skipped == [dev]
    rows = fleet_rows(site, capsys)
    assert {r["version"] for r in rows.values()} == {"1.3.0+0"}
    assert Path(path).exists()
