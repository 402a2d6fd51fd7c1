"""The board's HTTP pull (device/mpota_pull.py) against a hostile web server: the
server is untrusted (docs/mqtt.md, "Threat model"), so whatever it answers must end
in a clear error or a resumed install, never an internal error, and never a write
through a session that is no longer open. One board (real Mosquitto, a simulated
board that binds nothing) and a raw socket server on 127.0.0.1 whose answer to each
connection is scripted by the test."""
import hashlib
import json
import queue
import socket
import threading
import time

import pytest

from mosquitto import Broker
from simproc import Sim

from mpota import keys
from test_mqtt_device import FLEET, Board, Watch, _image

pytestmark = pytest.mark.timeout(120)


class Hostile:
    """A TCP server on 127.0.0.1 that answers each connection with the next
    scripted behaviour: f(sock, request bytes, image bytes). Every connection
    and its Range header is logged."""

    def __init__(self):
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(4)
        self.s.settimeout(0.5)
        self.port = self.s.getsockname()[1]
        self.script = queue.Queue()
        self.log = []
        self.img = b""
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            try:
                c, _ = self.s.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            c.settimeout(20)
            req = b""
            while b"\r\n\r\n" not in req and len(req) < 4096:
                k = c.recv(1024)
                if not k:
                    return
                req += k
            rng = [ln for ln in req.decode().split("\r\n") if ln.lower().startswith("range:")]
            self.log.append(rng[0].split(":", 1)[1].strip() if rng else None)
            try:
                f = self.script.get_nowait()
            except queue.Empty:
                f = honest
            f(c, req, self.img, rng[0] if rng else "")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.s.close()


def honest(c, req, img, rng):
    off = int(rng.split("=")[1].split("-")[0]) if rng else 0
    if off:
        head = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n" % (off, len(img) - 1, len(img))
    else:
        head = "HTTP/1.1 200 OK\r\n"
    c.sendall((head + "Content-Length: %d\r\n\r\n" % (len(img) - off)).encode() + img[off:])


def slow_headers(c, req, img, rng):
    # the status line one byte at a time, each well within the pull's read timeout,
    # together far longer than the board's session timeout ("timeout": 1 s)
    for ch in b"HTTP/1.1 200 OK\r\n":
        c.sendall(bytes((ch,)))
        time.sleep(0.25)
    c.sendall(b"Content-Length: %d\r\n\r\n" % len(img) + img)


def latin1_header(c, req, img, rng):
    c.sendall(b"HTTP/1.1 200 OK\r\nServer: caf\xe9\r\nContent-Length: %d\r\n\r\n" % len(img) + img)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    b = Board(tmp)
    b.key = tmp / "trusted.pem"
    keys.keygen(b.key)
    cfg = tmp / "mpota.json"
    cfg.write_text(json.dumps({"timeout": 1}))  # a session silent for 1 s is closed (resumable)
    b.srv = Hostile()
    ref = [None]
    with Broker() as broker:
        b.watch = Watch(broker.port, ref)
        sim = Sim(state=tmp / "dev", flags=["--mqtt", broker.hostport, "--fleet", FLEET, "--no-listen",
                                            "--trust", str(b.key), "--config", str(cfg)])
        ref[0] = b.sim = sim
        b.id = sim.device_id
        try:
            b.watch.state(b.id, lambda d: d["cmd_seq"] == 0)
            yield b
        finally:
            sim.stop()
            b.watch.close()
            b.srv.close()


def _install(b, img, tmp):
    sha = hashlib.sha256(img).hexdigest()
    b.srv.img = img
    return b.send(b.cmd("install", url="http://127.0.0.1:%d/%s.bin" % (b.srv.port, sha), sha256=sha,
                        size=len(img), version="1.0.0"))


def _outcome(b, seq):
    d, _ = b.watch.wait(lambda t, d: t.endswith(b.id + "/events") and d.get("seq") == seq
                        and d["event"] in ("installed", "error"), 60, "the outcome of %d" % seq)
    return d


def test_non_text_response_headers_are_a_clear_error(board, tmp_path):
    b = board
    # (a header byte that is not UTF-8 raised UnicodeError: "internal error")
    img = _image(tmp_path, "v0", "1.0.0+0", b.key, lines=300)
    b.srv.script.put(latin1_header)
    seq = _install(b, img, tmp_path)
    d = _outcome(b, seq)
    assert d["event"] == "error" and d["error"] == "bad_request", d
    assert "not text" in d["message"] and "internal" not in d["message"], d


def test_headers_dripped_past_the_session_timeout_resume_the_install(board, tmp_path):
    # The session closed (silent) while the server dripped its headers: the pull
    # wrote the body through the closed session's writer (AttributeError: "internal
    # error"). It must begin again (resume) and finish.
    b = board
    img = _image(tmp_path, "v1", "1.0.0+0", b.key, lines=300)
    b.srv.log.clear()
    b.srv.script.put(slow_headers)
    seq = _install(b, img, tmp_path)
    d = _outcome(b, seq)
    assert d["event"] == "installed" and d["state"] == "pending", d
    assert b.sim.wait_for_line("update session silent", 1)
    assert len(b.srv.log) == 2, b.srv.log  # the dripped answer, then one that completed


def endless_drip(c, req, img, rng):
    # a right answer whose body comes one byte at a time, each well within the read
    # timeout: without end (bounded here at 60 s, or until the board hangs up)
    off = int(rng.split("=")[1].split("-")[0]) if rng else 0
    head = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n" % (off, len(img) - 1, len(img)) \
        if off else "HTTP/1.1 200 OK\r\n"
    c.sendall((head + "Content-Length: %d\r\n\r\n" % (len(img) - off)).encode() + img[off:len(img) // 2])
    end = time.monotonic() + 60
    for i in range(max(off, len(img) // 2), len(img)):
        if time.monotonic() > end:
            return
        c.sendall(img[i:i + 1])
        time.sleep(0.2)


def test_a_newer_install_replaces_a_download_that_a_server_drips_for_ever(board, tmp_path):
    # The server dripped one byte at a time: the download never ended, and every
    # newer signed install was refused "busy" (a reset resumed the same download):
    # the server, not the key, decided what the board did. A newer install replaces it.
    b = board
    b.sim.wait_for_line("app: v1 tick", 30)  # (the install above booted on trial)
    b.send(b.cmd("confirm"))
    b.watch.state(b.id, lambda d: d["active"] == "a" and not d["trial"], 60)
    img = _image(tmp_path, "v2", "1.0.1+0", b.key, lines=300)
    b.srv.log.clear()
    b.srv.script.put(endless_drip)
    seq = _install(b, img, tmp_path)
    b.watch.event(b.id, seq, "progress", 30)  # the drip has begun
    seq2 = _install(b, img, tmp_path)  # the same image from a server that answers (the script's end)
    d = _outcome(b, seq2)
    assert d["event"] == "installed" and d["state"] == "pending" and d["version"] == "1.0.1+0", d
    assert len(b.srv.log) == 2 and b.srv.log[1] != "bytes=0-", b.srv.log  # the second GET resumed
    assert not [e for e in b.watch.events(b.id, seq) if e["event"] in ("installed", "error")]


def test_a_failed_pull_leaves_a_lan_upload_s_session_open(tmp_path):
    # The pull's session closed (silent) while the server dripped its headers; an
    # operator's LAN upload began meanwhile; the pull's next begin was "busy" and its
    # failure path closed the session it did not own: the operator's upload lost it.
    import asyncio
    from mpota.client import Client

    key = tmp_path / "trusted.pem"
    keys.keygen(key)
    cfg = tmp_path / "mpota.json"
    cfg.write_text(json.dumps({"timeout": 3}))
    srv = Hostile()
    go = threading.Event()

    def drip_until_told(c, req, img, rng):
        end = time.monotonic() + 30
        for ch in b"HTTP/1.1 200 OK\r\n" + b"X-Pad: 0\r\n" * 90:
            if go.is_set() or time.monotonic() > end:
                return  # then close: the pull begins again
            c.sendall(bytes((ch,)))
            time.sleep(0.25)

    srv.script.put(drip_until_told)
    b = Board(tmp_path)
    b.key = key
    ref = [None]
    try:
        with Broker() as broker:
            b.watch = Watch(broker.port, ref)
            b.sim = ref[0] = Sim(state=tmp_path / "dev", flags=["--mqtt", broker.hostport, "--fleet", FLEET,
                                                                "--trust", str(key), "--config", str(cfg)])
            b.id = b.sim.device_id
            b.srv = srv
            b.watch.state(b.id, lambda d: d["cmd_seq"] == 0)
            seq = _install(b, _image(tmp_path, "v1", "1.0.0+0", key, lines=300), tmp_path)
            b.sim.wait_for_line("update session silent", 20)

            async def lan():
                async with Client("127.0.0.1", b.sim.tcp_port, key=b.sim.key) as c:
                    r = await c.begin(5000, "ab" * 32, version="2.0.0")
                    assert r["offset"] == 0, r
                    go.set()
                    ev = await asyncio.get_running_loop().run_in_executor(None, _outcome, b, seq)
                    assert ev["event"] == "error" and ev["error"] == "busy", ev
                    return await c.abort()  # the operator's session is still its own

            r = asyncio.run(lan())
            assert r["slot"] == "a" and r["offset"] == 0, r
    finally:
        if b.sim is not None:
            b.sim.stop()
        b.watch.close()
        srv.close()
