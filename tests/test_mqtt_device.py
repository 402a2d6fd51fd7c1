"""The board side of MQTT + HTTP (docs/mqtt.md), end to end with the real engines:
a real Mosquitto (tools/mosquitto.py), the real HTTP Range server (host/httpserve.py),
paho-mqtt on the test side, and a simulated board that binds nothing (--no-listen), so
the broker is its only way in.

One board for the module (its story runs in file order): a signed install pulled over
HTTP (the server drops the connection once in the middle: resumed by Range), the trial
confirmed by a command; then commands that must be ignored (forged, replayed, another
key, another board, another fleet, a flood); a broker restart; a second install beside
the running app, whose ticks keep advancing, confirmed by the app itself."""
import json
import socket
import threading
import time

import paho.mqtt.client as paho
import pytest

from mosquitto import Broker
from simproc import Sim

from mpota import httpserve, keys
from mpota.client import sector_digests
from mpota.codec import mpota_command as command
from mpota.images import build_app_image

pytestmark = pytest.mark.timeout(180)  # each wait below is bounded; this bounds a hang of the whole

FLEET = "site-7"
TICK_APP = """NAME = "ticker"
import asyncio
async def main():
    n = 0
    while True:
        print("app: %s tick %d" % (VERSION, n))
        n += 1
        await asyncio.sleep_ms(100)
"""
SELF_CONFIRM = """
import mpota
_main = main
async def main():
    print("app: confirming")
    mpota.confirm()
    await _main()
"""


def _image(tmp, name, version, key, extra="", lines=3000):
    d = tmp / name
    d.mkdir()
    # filler: an image of a few blocks, so the download has a middle to cut
    (d / "main.py").write_text("VERSION = %r\n" % name + TICK_APP + extra + "#" * 60 + "\n")
    (d / "data.txt").write_text("".join("%06d\n" % i for i in range(lines)))
    return build_app_image(d, version=version, key=str(key))


class Files(httpserve.RangeHandler):
    """The Range server, plus faults: drop the connection after `drop_at` body
    bytes once, and pace the body (`pace` s per KB) so a download takes time."""
    drop_at = None
    pace = 0.0
    log = None

    def copyfile(self, source, outputfile):
        left = self._left
        sent = 0
        while left:
            buf = source.read(min(1024, left))
            if not buf:
                break
            cut = type(self).drop_at
            if cut is not None and sent + len(buf) > cut:
                type(self).drop_at = None
                outputfile.write(buf[:cut - sent])
                outputfile.flush()
                self._sent = sent + cut - sent
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            try:
                outputfile.write(buf)
            except OSError:  # the board went (a power cut): as any server sees it
                self.close_connection = True
                break
            left -= len(buf)
            sent += len(buf)
            if self.pace:
                time.sleep(self.pace)
        self._sent = sent

    def send_head(self):
        type(self).log.append((self.headers.get("Range"),))
        return super().send_head()


class Watch:
    """paho on the test side: every message under mpota/FLEET/, with the sim's output
    line index at its arrival (what the app printed meanwhile)."""

    def __init__(self, port, sim_ref):
        self.msgs = []
        self.cond = threading.Condition()
        self.sim_ref = sim_ref
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("mpota/%s/#" % FLEET, 1)
        self.c.loop_start()

    def _on(self, c, u, m):
        sim = self.sim_ref[0]
        with self.cond:
            self.msgs.append((m.topic, m.payload, m.retain, sim.mark() if sim else 0, time.monotonic()))
            self.cond.notify_all()

    def wait(self, pred, timeout=30, what="a message", since=0):
        end = time.monotonic() + timeout
        i = since
        with self.cond:
            while True:
                while i < len(self.msgs):
                    t, p, r, mark, ts = self.msgs[i]
                    i += 1
                    try:
                        d = json.loads(p)
                    except ValueError:
                        continue
                    if pred(t, d):
                        return d, mark
                left = end - time.monotonic()
                if left <= 0:
                    sim = self.sim_ref[0]
                    told = [ln for ln in sim.output.splitlines() if " tick " not in ln][-40:] if sim else []
                    raise AssertionError("no %s in %ss; got:\n%s\nboard:\n%s" % (what, timeout, "\n".join(
                        "%s %s" % (t, p[:200]) for t, p, *_ in self.msgs[-8:]), "\n".join(told)))
                self.cond.wait(min(left, 0.5))

    def arrival(self, pred):
        """When the first message that pred(topic, dict) holds for arrived (time.monotonic())."""
        with self.cond:
            for t, p, *_, ts in self.msgs:
                try:
                    d = json.loads(p)
                except ValueError:
                    continue
                if pred(t, d):
                    return ts
        raise AssertionError("no such message")

    def events(self, dev, seq=None):
        with self.cond:
            out = [json.loads(p) for t, p, *_ in self.msgs if t == "mpota/%s/%s/events" % (FLEET, dev)]
        return [e for e in out if seq is None or e["seq"] == seq]

    def event(self, dev, seq, name, timeout=30):
        return self.wait(lambda t, d: t.endswith(dev + "/events") and d.get("seq") == seq and d["event"] == name,
                         timeout, "event %s for seq %d" % (name, seq))

    def state(self, dev, pred, timeout=30, since=0):
        return self.wait(lambda t, d: t.endswith(dev + "/state") and d.get("online") and pred(d), timeout,
                         "matching state", since)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


class Board:
    def __init__(self, tmp):
        self.tmp = tmp
        self.seq = int(time.time() * 1000)
        self.sent = {}

    def next_seq(self):
        self.seq += 1
        return self.seq

    def send(self, body, key=None, topic=None, sig=None):
        """Sign `body` with `key` (default: the trusted one) and publish it, retained, QoS 1."""
        b = command.body_bytes(body)
        s = sig if sig is not None else keys.load(key or self.key).sign_digest(command.signed_message(b))
        p = command.pack(s, b)
        self.sent[body["seq"]] = p
        self.publish(topic or "mpota/%s/%s/cmd" % (FLEET, self.id), p)
        return body["seq"]

    def publish(self, topic, payload):
        self.watch.c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)

    def cmd(self, op, **kw):
        d = {"seq": self.next_seq(), "fleet": FLEET, "to": self.id, "op": op}
        d.update(kw)
        return d

    def install(self, img):
        import hashlib
        sha = hashlib.sha256(img).hexdigest()
        (self.dir / ("%s.bin" % sha)).write_bytes(img)
        (self.dir / ("%s.sectors" % sha)).write_bytes(sector_digests(img))  # as `mpota publish` writes it
        return self.cmd("install", url="http://127.0.0.1:%d/%s.bin" % (self.http.server_port, sha), sha256=sha,
                        size=len(img), version=None)

    def ticks(self, since, until=None, version=None):
        lines = self.sim.output.splitlines()[since:until]
        return [ln for ln in lines if ln.startswith("app: ") and " tick " in ln and (version is None or version in ln)]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mqtt")
    b = Board(tmp)
    b.key, b.other = tmp / "trusted.pem", tmp / "other.pem"
    keys.keygen(b.key)
    keys.keygen(b.other)
    b.dir = tmp / "www"
    b.dir.mkdir()
    Files.log = []
    handler = type("H", (Files,), {})
    b.handler = handler
    from functools import partial
    b.http = httpserve.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(b.dir)))
    b.http.daemon_threads = True
    threading.Thread(target=b.http.serve_forever, daemon=True).start()
    ref = [None]
    with Broker() as broker:
        b.broker = broker
        b.watch = Watch(broker.port, ref)
        sim = Sim(state=tmp / "dev", flags=["--mqtt", broker.hostport, "--fleet", FLEET, "--no-listen",
                                            "--trust", str(b.key)])
        ref[0] = b.sim = sim
        b.id = sim.device_id
        try:
            yield b
        finally:
            sim.stop()
            b.watch.close()
            b.http.shutdown()


def test_install_pulled_with_a_resumed_drop_then_confirmed(board, tmp_path):
    b = board
    b.sim.wait_for_line("mpota: ready tcp=off", 30)
    with pytest.raises(OSError):  # nothing to connect to: the broker is the only way in
        socket.create_connection(("127.0.0.1", b.sim.tcp_port), timeout=2).close()
    b.watch.state(b.id, lambda d: d["online"] and d["cmd_seq"] == 0 and d["running"] is None)
    img = _image(tmp_path, "v1", "1.0.0+0", b.key)
    body = b.install(img)
    body["version"] = "1.0.0"
    b.handler.drop_at = len(img) // 3  # once: the first GET ends there
    seq = b.send(body)
    done, _ = b.watch.event(b.id, seq, "installed", 60)
    assert done["state"] == "pending" and done["version"] == "1.0.0+0", done
    # it resets into the trial once the broker has acknowledged that event (mpota_mqttcmd._reset):
    # the outcome is never cut by the reset (how soon is the bench's: no timed assertion here)
    b.watch.wait(lambda t, d: t.endswith(b.id + "/state") and d.get("online") is False, 30, "the last will")
    gap = b.watch.arrival(lambda t, d: t.endswith(b.id + "/state") and d.get("online") is False) - \
        b.watch.arrival(lambda t, d: t.endswith(b.id + "/events") and d.get("seq") == seq and
                        d["event"] == "installed")
    assert gap > 0, "the last will came before the installed event"
    prog = [e["percent"] for e in b.watch.events(b.id, seq) if e["event"] == "progress"]
    assert prog == [25, 50, 75], prog
    assert Files.log[0] == ("bytes=0-%d" % (len(img) - 1),) and len(Files.log) == 2, Files.log
    resumed_at = int(Files.log[1][0][6:].split("-")[0])
    assert 0 < resumed_at <= len(img) // 3, Files.log  # the second GET asked for the rest only
    st, _ = b.watch.state(b.id, lambda d: d["online"] and d["trial"] and d["running"] == "a", 60)
    assert st["cmd_seq"] == seq and st["slots"]["a"]["version"] == "1.0.0+0"
    b.sim.wait_for_line("app: v1 tick 3", 30)
    seq2 = b.send(b.cmd("confirm"))
    ev, _ = b.watch.event(b.id, seq2, "confirmed")
    assert ev["slot"] == "a"
    b.watch.event(b.id, seq, "confirmed")  # the install's own outcome
    st, _ = b.watch.state(b.id, lambda d: d["cmd_seq"] == seq2 and not d["trial"] and d["active"] == "a")


def test_forged_replayed_foreign_and_misaddressed_commands_are_ignored(board):
    b = board
    st, _ = b.watch.state(b.id, lambda d: d["active"] == "a" and not d["trial"])
    last = st["cmd_seq"]
    m0 = b.sim.mark()
    n0 = len(b.watch.msgs)
    # a packet longer than the board's buffer (1,280 B) is read through it and dropped: the
    # connection stays up and the commands after it are served
    b.publish("mpota/%s/%s/cmd" % (FLEET, b.id), b"mpota-cmd-v1 " + b"x" * 20000)
    cases = [
        ("bad_signature", lambda: b.send(b.cmd("reset"), sig=bytes(64))),  # forged
        ("bad_signature", lambda: b.send(b.cmd("reset"), key=b.other)),  # signed by a key it does not trust
        ("wrong_target", lambda: b.send(dict(b.cmd("reset"), to="51" + "00" * 7))),  # for another board
        ("wrong_fleet", lambda: b.send(dict(b.cmd("reset"), fleet="elsewhere"))),
    ]
    for reason, do in cases:
        seq = do()
        ev, _ = b.watch.event(b.id, seq, "rejected", 15)
        assert ev["reason"] == reason, ev
    # replayed: the exact bytes of the install it acted on (wait out the report bucket)
    old = min(b.sent)
    b.publish("mpota/%s/%s/cmd" % (FLEET, b.id), b.sent[old])
    ev, _ = b.watch.event(b.id, old, "rejected", 15)
    assert ev["reason"] == "old_seq", ev
    # on the fleet's topic a command must say "to": "*"
    seq = b.send(b.cmd("reset"), topic="mpota/%s/all/cmd" % FLEET)
    ev, _ = b.watch.event(b.id, seq, "rejected", 15)
    assert ev["reason"] == "wrong_target", ev
    # a flood of forged commands, well addressed (each would cost a signature check), then a
    # genuine one: the reports are rate-limited, the checks too (the genuine one is dropped
    # with the rest), and the board reconnects to get the retained, genuine one again
    t0 = time.monotonic()
    m1 = b.sim.mark()
    flood = [b.send(b.cmd("reset"), sig=bytes(64)) for _ in range(20)]
    good = b.send(b.cmd("logs"))
    ev, _ = b.watch.event(b.id, good, "logs", 40)
    told = [e for e in b.watch.events(b.id) if e["seq"] in flood]
    assert len(told) <= 1 + int(time.monotonic() - t0) // 5, told  # the burst of 6 is spent above
    b.sim.wait_for_line("reconnecting for the commands dropped", 1, since=m1)
    with b.watch.cond:
        logs = [json.loads(p) for t, p, *_ in b.watch.msgs if t.endswith(b.id + "/logs")]
        states = [json.loads(p) for t, p, *_ in b.watch.msgs[n0:] if t.endswith(b.id + "/state")]
    assert logs and logs[-1]["seq"] == good and logs[-1]["app"]["state"] == "running", logs
    assert "app: v1 tick" in logs[-1]["data"] and logs[-1]["cursor"] > 0, logs[-1]  # the console's ring
    assert {s["cmd_seq"] for s in states if s.get("online")} <= {last, good}, states  # none other acted on
    assert "sim: boot #3" not in b.sim.output  # nothing reset it
    assert sum("mqtt connected" in ln for ln in b.sim.output.splitlines()[m0:m1]) == 0  # the big one: no drop
    assert len(b.ticks(m0, version="v1")) >= 20  # the app ran throughout
    b.sim.wait_for_line("app: v1 tick", 5, since=b.sim.mark())


def test_broker_restart_is_survived(board):
    b = board
    m0 = b.sim.mark()
    n0 = len(b.watch.msgs)
    b.watch.c.loop_stop()
    b.broker.restart(down=1.0)  # no persistence: the retained states are gone with it
    b.watch = Watch(b.broker.port, [b.sim])
    b.sim.wait_for_line("mpota: mqtt connected", 30, since=m0)
    st, _ = b.watch.state(b.id, lambda d: d["online"] and d["active"] == "a", 30)  # republished, retained
    assert n0 and st["app"]["state"] == "running"
    assert len(b.ticks(m0, version="v1")) >= 10


def test_second_install_beside_the_running_app_confirmed_by_the_app(board, tmp_path):
    b = board
    img = _image(tmp_path, "v2", "2.0.0+0", b.key, extra=SELF_CONFIRM)
    body = b.install(img)
    body["version"] = "2.0.0"
    b.handler.pace = 0.01  # about 100 KB/s: a download that takes a while
    try:
        seq = b.send(body)
        _, m1 = b.watch.event(b.id, seq, "progress", 30)
        _, m2 = b.watch.event(b.id, seq, "installed", 60)
    finally:
        b.handler.pace = 0.0
    assert len(b.ticks(m1, m2, version="v1")) >= 2, "the app stood still during the download"
    b.sim.wait_for_line("app: confirming", 60)
    b.watch.event(b.id, seq, "confirmed", 30)  # the app's own confirm, reported with the install's seq
    st, _ = b.watch.state(b.id, lambda d: d["active"] == "b" and not d["trial"], 30)
    assert st["slots"]["b"]["version"] == "2.0.0+0" and st["cmd_seq"] == seq
    # the same release again (a resumed rollout, a retry): nothing to pull, no reset
    n, m0 = len(Files.log), b.sim.mark()
    again = b.send(dict(body, seq=b.next_seq()))
    ev, _ = b.watch.event(b.id, again, "installed", 30)
    assert ev["already"] and ev["state"] == "running" and ev["slot"] == "b", ev
    assert len(Files.log) == n and "sim: reset" not in b.sim.output.splitlines()[m0:], Files.log[n:]


def test_an_install_cut_by_a_power_cut_resumes_by_itself_after_the_reboot(board, tmp_path):
    b = board
    img = _image(tmp_path, "v3", "3.0.0+0", b.key, extra=SELF_CONFIRM, lines=20000)  # ~150 KB: past a sync
    body = b.install(img)
    body["version"] = "3.0.0"
    n = len(Files.log)
    m0 = len(b.watch.msgs)
    b.handler.pace = 0.01
    try:
        seq = b.send(body)
        b.watch.wait(lambda t, d: d.get("seq") == seq and d.get("percent") == 75, 60, "75 %")
        b.sim.power_cut(timeout=None)  # the board dies mid-download, whatever it had not synced is lost
        done, _ = b.watch.event(b.id, seq, "installed", 90)  # no new command: it resumed by itself
    finally:
        b.handler.pace = 0.0
    ranges = [int(r[0][6:].split("-")[0]) for r in Files.log[n:] if r[0]]  # (not the .sectors GETs)
    assert len(ranges) == 2 and ranges[0] == 0 and 0 < ranges[1] < len(img), ranges  # the rest only
    assert "sim: power cut" in b.sim.output
    b.watch.event(b.id, seq, "confirmed", 60)
    st, _ = b.watch.state(b.id, lambda d: d["active"] == "a" and not d["trial"], 30, since=m0)
    assert st["slots"]["a"]["version"] == "3.0.0+0"


def _requested(log):
    # the image bytes the board asked for: the Range GETs (the .sectors GETs have none)
    return sum(int(b) - int(a) + 1 for a, b in (r[0][6:].split("-") for r in log if r[0]))


def test_a_pull_downloads_only_the_sectors_the_target_slot_lacks(board, tmp_path):
    """Two one-file changes of the running app: the second one's target slot
    holds the first's files, so the board keeps those sectors (the release's
    <sha256>.sectors against its own) and downloads and writes only the rest."""
    b = board
    src = tmp_path / "src"
    for k, version in enumerate(("4.0.0+0", "4.0.1+0", "4.0.2+0")):
        (src / str(k)).mkdir(parents=True)
        img = _image(src / str(k), "v4", version, b.key, extra=SELF_CONFIRM + "# edit %d\n" % k, lines=20000)
        body = b.install(img)
        body["version"] = version.split("+")[0]
        n = len(Files.log)
        seq = b.send(body)
        done, _ = b.watch.event(b.id, seq, "installed", 90)
        b.watch.event(b.id, seq, "confirmed", 60)
        asked = _requested(Files.log[n:])
    print("pulled %d of %d bytes (the rest kept)" % (asked, len(img)))
    # the last two differ in main.py's sector, the header and the TLVs: the slot held the rest
    assert asked <= 4 * 4096 and asked < len(img) // 8, (asked, len(img), Files.log[n:])
    b.sim.wait_for_line("app: v4 tick", 30)


def test_a_lean_board_restarts_into_update_mode_for_the_pull(board, tmp_path):
    """Lean mode takes no image beside the app: the install command restarts the board
    into update mode (mpota_update.restart_if_lean), where it resumes the install by
    itself, then boots the new image on trial."""
    b = board
    cfg = tmp_path / "lean.json"
    cfg.write_text('{"mode": "lean"}')
    with Sim(state=tmp_path / "lean", flags=["--mqtt", b.broker.hostport, "--fleet", FLEET, "--no-listen",
                                             "--trust", str(b.key), "--config", str(cfg)]) as sim:
        dev = sim.device_id
        m0 = len(b.watch.msgs)
        b.watch.state(dev, lambda d: d["mode"] == "lean", since=m0)
        img = _image(tmp_path, "v9", "9.0.0+0", b.key)
        body = b.install(img)
        body.update(to=dev, version="9.0.0")
        seq = b.send(body, topic="mpota/%s/%s/cmd" % (FLEET, dev))
        b.watch.event(dev, seq, "restarting", 30)
        sim.wait_for_line("update mode (lean): the app does not start", 30)
        done, _ = b.watch.event(dev, seq, "installed", 60)
        assert done["state"] == "pending", done
        st, _ = b.watch.state(dev, lambda d: d["trial"] and d["mode"] == "lean", 60, since=m0)
        assert st["slots"]["a"]["version"] == "9.0.0+0" and st["app"]["state"] == "running", st
