"""The host's side of MQTT and HTTP (issue 21): signed commands the board's codec
verifies, `mpota publish` and `mpota serve` (Range: 206, 416, HEAD, a resumed
pull), and host/mqtt.py's Link and MqttTransport against a real Mosquitto
(tests/conftest.py `mosquitto`)."""
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as paho
import pytest
from conftest import REPO

from mpota import cli, images, keys, mqtt, release
from mpota.errors import DeviceTimeout, Unreachable, UsageError
from mpota.httpserve import make_server, parse_range

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    p = tmp_path_factory.mktemp("key") / "signing.pem"
    keys.keygen(str(p))
    return str(p)


@pytest.fixture(scope="module")
def image(tmp_path_factory, key):
    d = tmp_path_factory.mktemp("app")
    (d / "main.py").write_text("def main():\n    pass\n")
    return images.build_folder(d, "1.2.0", key)


# --- signed commands -----------------------------------------------------------------------

def test_a_host_signed_command_verifies_on_the_board_and_a_changed_byte_does_not(key, mp_build):
    payload = mqtt.sign(mqtt.signing_key(key), {"seq": 5, "fleet": "f", "to": "ab12", "op": "confirm"})
    pub = keys.public_raw(key)
    forged = payload.replace(b'"op":"confirm"', b'"op":"rollback"')
    code = """
import sys
sys.path[:0] = [%r, %r]
import mpota_command as command, mpota_trust as trust
for p in (%r, %r):
    d, body, sig = command.parse(p)
    print(trust.verify_signature(%r, command.signed_message(body), sig), command.check(d, "ab12", "f", 4))
""" % (str(REPO / "shared"), str(REPO / "device"), payload, forged, pub)
    r = subprocess.run([mp_build, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "confirm", "False", "rollback"]


def test_seqs_are_milliseconds_since_the_epoch_and_strictly_increase():
    clock = mqtt.SeqClock()
    seqs = [clock.next() for _ in range(50)]
    assert seqs == sorted(set(seqs))
    assert abs(seqs[0] - time.time() * 1000) < 5000


def test_a_public_key_cannot_sign_and_no_key_is_a_clear_error(key, tmp_path):
    pub = tmp_path / "pub.pem"
    pub.write_bytes(keys.load(key).get_public_pem())
    with pytest.raises(keys.KeyFileError, match="public key"):
        mqtt.signing_key(str(pub))
    with pytest.raises(UsageError, match="signed"):
        mqtt.signing_key(None)


def test_boards_are_named_by_device_id_target_or_group_and_at_broker(tmp_path):
    tf = tmp_path / "targets.toml"
    tf.write_text('[targets.kitchen]\nhost = "10.0.0.5"\ndevice_id = "E6614C31"\n'
                  '[targets.nolabel]\nhost = "10.0.0.6"\n[groups]\nsite = ["kitchen", "ab12cd"]\n')
    assert mqtt.expand_specs("@site,ff00", str(tf)) == ["kitchen", "ab12cd", "ff00"]
    assert mqtt.expand_specs("kitchen,@broker", str(tf)) == ["kitchen", "@broker"]
    assert mqtt.device_id("kitchen", str(tf)) == "e6614c31"
    assert mqtt.device_id("AB12CD", str(tf)) == "ab12cd"
    with pytest.raises(UsageError, match="no device_id"):
        mqtt.device_id("nolabel", str(tf))
    with pytest.raises(UsageError):
        mqtt.expand_specs("not-a-board", str(tf))
    with pytest.raises(UsageError, match="mqtt://"):
        mqtt.parse_url("http://127.0.0.1:1883")
    assert mqtt.parse_url("mqtt://127.0.0.1") == ("127.0.0.1", 1883)


# --- publish and serve ---------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    log = []
    s = make_server(tmp_path, port=0, on_request=lambda *a: log.append(a))
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    s.base = "http://127.0.0.1:%d" % s.server_port
    s.dir = tmp_path
    s.log = log
    yield s
    s.shutdown()
    s.server_close()


def get(url, rng=None, method="GET", headers=None):
    h = dict(headers or {})
    if rng:
        h["Range"] = rng
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=h, method=method), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_serve_answers_ranges_206_past_the_end_416_and_head_without_a_body(server):
    data = os.urandom(10000)
    (server.dir / "x.bin").write_bytes(data)
    u = server.base + "/x.bin"
    st, h, body = get(u)
    assert (st, body, h["Accept-Ranges"]) == (200, data, "bytes")
    st, h, body = get(u, "bytes=100-199")
    assert (st, h["Content-Range"], body) == (206, "bytes 100-199/10000", data[100:200])
    st, h, body = get(u, "bytes=9990-")
    assert (st, h["Content-Range"], body) == (206, "bytes 9990-9999/10000", data[9990:])
    st, h, body = get(u, "bytes=-10")
    assert (st, body) == (206, data[-10:])
    st, h, body = get(u, "bytes=9000-20000")  # an end past the file: cut to it
    assert (st, h["Content-Range"], body) == (206, "bytes 9000-9999/10000", data[9000:])
    st, h, body = get(u, "bytes=10000-")
    assert (st, h["Content-Range"], body) == (416, "bytes */10000", b"")
    st, h, body = get(u, "bytes=0-1,5-6")  # several ranges: ignored, the whole file (RFC 9110)
    assert (st, body) == (200, data)
    st, h, body = get(u, "bytes=100-", headers={"If-Range": '"another-version"'})
    assert (st, body) == (200, data)
    st, h, body = get(u, "bytes=100-", method="HEAD")
    assert (st, h["Content-Length"], h["Content-Range"], body) == (206, "9900", "bytes 100-9999/10000", b"")
    assert get(server.base + "/")[0] == 404                 # no listing
    assert get(server.base + "/../../etc/passwd")[0] == 404  # only the folder's files
    assert [x[:4] for x in server.log if x[2] == 416] == [("GET", "/x.bin", 416, 0)]


def test_a_pull_cut_in_the_middle_resumes_with_range_on_one_kept_alive_connection(server):
    import http.client

    data = os.urandom(50000)
    (server.dir / "img.bin").write_bytes(data)
    c = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    c.request("GET", "/img.bin")
    r = c.getresponse()
    got = r.read(20000)  # the link drops here: the rest is never read
    c.close()
    c = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    for _ in range(2):  # keep-alive: two ranges on one connection (HTTP/1.1)
        c.request("GET", "/img.bin", headers={"Range": "bytes=%d-%d" % (len(got), len(got) + 14999)})
        r = c.getresponse()
        assert r.status == 206
        got += r.read()
    c.close()
    assert got == data


def test_parse_range_reads_only_one_byte_range():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=0-", 0) == "unsatisfiable"
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=5-3", 10) is None
    assert parse_range("items=0-1", 10) is None


def test_publish_stores_the_image_under_its_sha256_with_a_record_signed_by_the_key(image, key, tmp_path, server):
    r = release.publish(image, server.dir, mqtt.signing_key(key), server.base)
    assert r.bin == server.dir / (image.sha256 + ".bin") and r.bin.read_bytes() == image.data
    assert r.url == server.base + "/" + image.sha256 + ".bin"
    rec = release.read_record(r.record, key)
    assert (rec["version"], rec["sha256"], rec["size"]) == (image.version, image.sha256, image.size)
    release.check_url(r.url, image.size)
    img = images.load(str(r.bin))
    assert release.release_url(img) == r.url  # a rollout of DIR/SHA.bin finds its URL in the record
    other = tmp_path / "other.pem"
    keys.keygen(str(other))
    with pytest.raises(UsageError, match="does not verify"):
        release.read_record(r.record, str(other))
    d = json.loads(r.record.read_text())
    d["url"] = "http://elsewhere.invalid/x.bin"
    r.record.write_text(json.dumps(d))
    with pytest.raises(UsageError, match="differ"):
        release.read_record(r.record, key)
    with pytest.raises(UsageError, match="416|404|bytes"):
        release.check_url(server.base + "/missing.bin", image.size)
    with pytest.raises(UsageError, match="holds"):
        release.check_url(r.url, image.size + 1)


def test_serve_on_a_port_in_use_or_a_missing_folder_is_a_clear_error(server, tmp_path, capsys):
    assert cli.main(["serve", "--dir", str(server.dir), "--port", str(server.server_port)]) == 1
    assert "cannot serve on 127.0.0.1:%d" % server.server_port in capsys.readouterr().err
    assert cli.main(["serve", "--dir", str(tmp_path / "nothing")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_cli_publish_then_serve(image, key, tmp_path, capsys):
    src = tmp_path / "app.img"
    src.write_bytes(image.data)
    code = cli.main(["publish", str(src), "--sign-key", key, "--dir", str(tmp_path / "rel"),
                     "--base-url", "http://127.0.0.1:8080", "--targets", os.devnull, "--json"])
    assert code == 0
    ev = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert ev["event"] == "published" and ev["url"] == "http://127.0.0.1:8080/%s.bin" % image.sha256
    assert cli.main(["publish", str(src), "--dir", str(tmp_path / "rel"), "--targets", os.devnull]) == 1
    assert "signing key" in capsys.readouterr().err
    p = subprocess.Popen([sys.executable, "-m", "mpota", "serve", "--dir", str(tmp_path / "rel"), "--port",
                          "0", "--json"], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        first = json.loads(p.stdout.readline())
        assert first["event"] == "serving" and first["host"] == "127.0.0.1"
        st, h, body = get("http://127.0.0.1:%d/%s.bin" % (first["port"], image.sha256), "bytes=0-31")
        assert st == 206 and body == image.data[:32]
    finally:
        p.terminate()
        p.wait(10)


# --- the link to a real broker ------------------------------------------------------------

def retained(broker, items):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    for t, payload in items:
        c.publish(t, payload, qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def retained_now(broker, topic_, wait=1.0):
    """What a client subscribing now gets on `topic_` (the retained message), or None."""
    got = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, u, m: got.append(m.payload)
    c.connect("127.0.0.1", broker.port)
    c.subscribe(topic_, 1)
    c.loop_start()
    end = time.monotonic() + wait
    while not got and time.monotonic() < end:
        time.sleep(0.02)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else None


STATE = {"device": "aa01", "online": True, "running": "a", "cmd_seq": 0, "uptime_ms": 5000, "resets": 0,
         "app": {"state": "running"}, "slots": {"a": {"state": "confirmed", "version": "1.0.0", "sha256": "0" * 64}}}


def test_the_link_reads_retained_states_and_last_wills_and_publishes_retained_signed_commands(mosquitto, key):
    retained(mosquitto, [("mpota/default/aa01/state", json.dumps(STATE)),
                         ("mpota/default/bb02/state", json.dumps({"id": "bb02", "online": False})),
                         ("mpota/other/cc03/state", json.dumps(dict(STATE, device="cc03")))])

    async def go():
        async with mqtt.Link(mosquitto.url) as link:
            assert link.expand(["@broker"]) == ["aa01", "bb02"]  # only this fleet's boards
            assert link.status("aa01").running_version == "1.0.0"
            with pytest.raises(Unreachable, match="offline"):
                link.status("bb02")
            with pytest.raises(Unreachable, match="no state"):
                link.status("dd04")
            return await link.command("aa01", mqtt.signing_key(key), {"op": "confirm"})

    seq = asyncio.run(go())
    payload = retained_now(mosquitto, "mpota/default/aa01/cmd")  # retained: a board connecting later gets it
    body = mqtt.verify(key, payload)
    assert body == {"seq": seq, "fleet": "default", "to": "aa01", "op": "confirm"}


def test_a_push_to_a_board_that_never_answers_times_out_and_clears_its_retained_command(mosquitto, key, image):
    retained(mosquitto, [("mpota/default/aa01/state", json.dumps(STATE))])

    async def go():
        async with mqtt.Link(mosquitto.url) as link:
            t = mqtt.MqttTransport(link, lambda s: s, mqtt.signing_key(key), "http://127.0.0.1:9/x.bin", wait=1.0)
            t0 = time.monotonic()
            with pytest.raises(DeviceTimeout, match="no outcome of install"):
                await t.push("aa01", image)
            return time.monotonic() - t0

    took = asyncio.run(go())
    assert took < 5
    assert retained_now(mosquitto, "mpota/default/aa01/cmd", wait=0.5) is None


def test_an_unreachable_broker_is_a_clear_error():
    from conftest import free_port

    async def go():
        await mqtt.Link.open("mqtt://127.0.0.1:%d" % free_port(), timeout=3)

    with pytest.raises(Unreachable, match="cannot reach the MQTT broker"):
        asyncio.run(go())


def test_an_unreachable_broker_gets_a_hint_about_brokers_not_about_ping(capsys):
    from conftest import free_port

    assert cli.main(["fleet", "--via", "mqtt://127.0.0.1:%d" % free_port(), "--targets", os.devnull]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the MQTT broker" in err and "--mqtt-broker" in err and "ping" not in err


def test_fleet_via_shows_the_table_from_retained_states(mosquitto, tmp_path, capsys):
    retained(mosquitto, [("mpota/default/aa01/state", json.dumps(STATE)),
                         ("mpota/default/bb02/state", json.dumps({"id": "bb02", "online": False})),
                         ("mpota/site2/51b830786d0057ab/state", json.dumps(dict(STATE, device="51b830786d0057ab")))])
    code = cli.main(["fleet", "--via", mosquitto.url, "--targets", os.devnull, "--json"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    boards = {r["target"]: r for r in rows if r["event"] == "board"}
    assert boards["aa01"]["version"] == "1.0.0" and boards["aa01"]["state"] == "confirmed"
    assert boards["bb02"]["ok"] is False and "offline" in boards["bb02"]["error"]["message"]
    assert code == 2  # a board did not answer: unreachable, as on the LAN
    assert cli.main(["fleet", "--via", mosquitto.url, "--targets", os.devnull]) == 2
    out = capsys.readouterr().out
    assert "aa01" in out and "1.0.0" in out and "1 of 2 boards answered" in out
    assert cli.main(["fleet", "--via", mosquitto.url, "--fleet", "site2", "--targets", os.devnull]) == 0
    assert "51b830786d0057ab " in capsys.readouterr().out  # a whole device id: what -t takes


def test_the_link_survives_a_broker_restart_and_its_commands_get_through(mosquitto, key):
    async def go():
        async with mqtt.Link(mosquitto.url) as link:
            mosquitto.restart()  # every client dropped; paho reconnects and subscribes again
            seq = await link.command("aa01", mqtt.signing_key(key), {"op": "reset"})
            retained(mosquitto, [("mpota/default/aa01/state", json.dumps(dict(STATE, cmd_seq=seq)))])
            await link.wait(lambda: True if (link.state("aa01") or {}).get("cmd_seq") == seq else None, 10)
            return seq

    seq = asyncio.run(go())
    assert mqtt.verify(key, retained_now(mosquitto, "mpota/default/aa01/cmd"))["seq"] == seq


def test_serve_mqtt_broker_is_a_broker_with_retained_states_and_last_wills(tmp_path):
    from conftest import free_port

    from mpota.broker import EmbeddedBroker

    b = EmbeddedBroker("127.0.0.1", free_port()).start()
    try:
        retained(b, [("mpota/default/aa01/state", json.dumps(STATE))])
        board = paho.Client(paho.CallbackAPIVersion.VERSION2)  # a board that vanishes: its last will
        board.will_set("mpota/default/bb02/state", json.dumps({"id": "bb02", "online": False}), 1, True)
        board.connect("127.0.0.1", b.port)
        board.loop_start()
        board.publish("mpota/default/bb02/state", json.dumps(dict(STATE, device="bb02")), 1, True).wait_for_publish(5)
        board.loop_stop()
        board.socket().close()  # no DISCONNECT: the broker publishes the will

        async def go():
            async with mqtt.Link(b.url) as link:
                await link.wait(lambda: True if link.states.get("bb02", {}).get("online") is False else None, 10)
                return link.status("aa01").running_version, link.board_ids()

        assert asyncio.run(go()) == ("1.0.0", ["aa01", "bb02"])
    finally:
        b.stop()


def test_rollout_via_refuses_bad_input_before_any_board_is_touched(image, key, tmp_path, capsys, server):
    src = tmp_path / "app.img"
    src.write_bytes(image.data)
    common = ["--targets", os.devnull, "--state-dir", str(tmp_path / "ro")]
    url = "mqtt://127.0.0.1:9"  # never reached: each refusal comes first

    def refused(argv, text):
        assert cli.main(argv + common) == 1
        err = capsys.readouterr().err
        assert text in err, err

    refused(["rollout", str(src), "--via", url, "--sign-key", key], "name the boards")
    refused(["-t", "ab12", "rollout", str(src), "--via", url], "signed")
    refused(["-t", "ab12", "rollout", str(src), "--via", url, "--sign-key", key], "no URL for the image")
    refused(["-t", "ab12", "rollout", str(src), "--via", url, "--sign-key", key, "--base-url", server.base],
            "404")  # not published there
    refused(["-t", "ab12", "rollout", str(src), "--via", "http://127.0.0.1:1883", "--sign-key", key], "mqtt://")
    refused(["-t", "not-a-board", "rollout", str(src), "--via", url, "--sign-key", key], "not-a-board")
    assert not (tmp_path / "ro").exists()  # no rollout was saved


def test_a_boards_events_become_the_errors_a_lan_push_raises():
    from mpota import errors, rollout

    def fail(what, **e):
        return mqtt._failure("ab12", 7, [dict(e, seq=7)], what)

    e = fail("install", event="error", error="no_memory", message="the app holds the heap")
    assert isinstance(e, errors.DeviceError) and rollout.transient(e)  # the rollout installs again: it resumes
    e = fail("install", event="error", error="signature_invalid", message="signed by an untrusted key")
    assert isinstance(e, errors.SignatureInvalid) and not rollout.transient(e)
    assert isinstance(fail("install", event="error", error="version_refused", message="older"), errors.VersionRefused)
    assert fail("install", event="rejected", reason="rate_limited") is None  # the board fetches it again
    e = fail("confirm", event="rejected", reason="old_seq", message="seq 7 is not newer than 9")
    assert isinstance(e, mqtt.CommandFailed) and "old_seq" in e.message and not rollout.transient(e)
    assert isinstance(fail("install", event="rolled_back"), errors.NotTaken)
    assert fail("rollback", event="rolled_back") is None  # what a rollback asked for
    assert fail("install", event="progress", percent=50) is None
