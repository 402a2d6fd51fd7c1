"""100 simulated boards behind one real Mosquitto (issue 21), in `make test`: the
boards bind nothing (tools/sim.py --no-listen), so the host reaches them only
through the broker; a waved rollout reaches every one of them (each confirmed on
the new image, as its retained state shows), and a crashing version is stopped by
its canary with 0 other boards touched (their cmd_seq unchanged: no command reached
them; still on the old image). The setup is tools/mqttfleet.py's, which
tools/bench_mqtt.py (`make bench`) runs too."""
import socket
import time

import pytest
from mqttfleet import MqttFleet

from mpota import rollout

COUNT = 100
pytestmark = [pytest.mark.slow, pytest.mark.fleet100, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with MqttFleet(COUNT, tmp_path_factory.mktemp("mqtt-fleet100")) as s:
        print("\n%d boards: processes ready in %.1f s, all online on the broker %.1f s later"
              % (COUNT, s.ready_s, s.online_s))
        yield s


def running(st: dict) -> tuple:
    """(sha256, state) of the image a retained state says the board runs; (None, None): no app."""
    r = st.get("running")
    slot = st["slots"].get(r) if r else None
    return (slot["sha256"], slot["state"]) if slot else (None, None)


def test_the_boards_bind_nothing_and_are_all_online_on_the_broker(site):
    for b in site.sims.boards:  # no route from the host to any of them: --no-listen
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", b.tcp_port), timeout=1).close()
    states = site.states()
    assert all(states[i] and states[i]["online"] is True for i in site.ids)


def test_a_waved_rollout_through_the_broker_confirms_the_new_image_on_all_100(site):
    img = site.app("2.0.0")
    r = site.rollout(img, canary=1, waves="10%,50%,100%", soak=1, parallel=25, wait=120)
    print("\n100-board rollout through the broker at --parallel 25: %.1f s" % r.seconds)
    failed = {s: b.error for s, b in r.plan.boards.items() if b.state == rollout.FAILED}
    assert r.state == rollout.COMPLETE and r.plan.count(rollout.HEALTHY) == COUNT, failed
    assert [len(w) for w in r.plan.waves] == [1, 9, 40, 50]
    assert [e["healthy"] for e in r.events if e["event"] == "wave_done"] == [1, 9, 40, 50]
    states = site.states()
    assert {running(states[i]) for i in site.ids} == {(img.sha256, "confirmed")}
    assert all(states[i]["online"] is True for i in site.ids)
    site.v200 = img


def test_a_crashing_canary_stops_the_rollout_with_0_of_99_other_boards_touched(site):
    before = site.states()
    img = site.app("2.0.1", crash=True)
    t0 = time.monotonic()
    r = site.rollout(img, canary=1, waves="10%,50%,100%", soak=1, parallel=25, max_failures="3", wait=120)
    assert r.state == rollout.PAUSED and r.plan.reason == "the canary failed", r.plan.reason
    canary = site.ids[0]
    c = r.plan.board(canary)
    assert c.state == rollout.FAILED and c.rolled_back.startswith("by the host"), (c.error, c.rolled_back)
    assert r.plan.tried == 1 and r.plan.count(rollout.UNTOUCHED) == COUNT - 1
    assert {e["target"] for e in r.events if e["event"] == "board"} == {canary}
    after = site.states()
    touched = [i for i in site.ids if after[i]["cmd_seq"] != before[i]["cmd_seq"]]
    print("\ncrashing version: stopped by the canary in %.1f s; other boards touched: %d"
          % (time.monotonic() - t0, len([i for i in touched if i != canary])))
    assert touched == [canary]  # not one command reached the other 99
    for i in site.ids:  # every board on the image it ran before, the canary rolled back to it
        assert running(after[i]) == running(before[i]) and running(after[i])[0] != img.sha256
        assert after[i]["online"] is True
