"""A script written against the reference BootloaderMessenger API runs unchanged.

SCRIPT below uses only what bootloader-protocol-api-reference.md documents
(constructor, get_version, start_update, chunked write, stop_update,
read_address, send_and_recv, ErrorResponse as RuntimeError "error: N"); it
runs in its own interpreter with host/ and shared/ on PYTHONPATH, against the
simulator's legacy UDP service.
"""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from simproc import Sim

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SCRIPT = r'''
import binascii
import math
import sys

from bootloader_messenger import BootloaderMessenger
from bootloader_messages import Header, VersionRequest, MAX_WRITE_PAYLOAD_SIZE


def flash_firmware(ip, port, firmware_path):
    messenger = BootloaderMessenger((ip, port))
    try:
        api, bootloader, note = messenger.get_version()
        print("API: %d.%d" % (api[0], api[1]))
        print("Bootloader: %d.%d.%d" % bootloader)
        print("Note: %s" % note.decode("utf-8").rstrip("\x00"))
        assert isinstance(note, bytes) and len(note) == 128

        with open(firmware_path, "rb") as f:
            firmware = bytearray(f.read())

        if not messenger.start_update(len(firmware)):
            raise Exception("Failed to start update")

        chunk_size = 512
        total_chunks = int(math.ceil(len(firmware) / float(chunk_size)))
        for i in range(total_chunks):
            offset = i * chunk_size
            chunk = firmware[offset:offset + chunk_size]
            if not messenger.write(chunk):
                raise Exception("Write failed at chunk %d" % i)

        crc = binascii.crc32(firmware) & 0xFFFFFFFF
        if not messenger.stop_update(crc):
            raise Exception("CRC validation failed")

        # Read back through read_address and compare.
        back = bytearray()
        for offset in range(0, len(firmware), 256):
            response = messenger.read_address(offset, min(256, len(firmware) - offset))
            back += bytearray(response.data)
        assert back == firmware, "read-back differs"
        print("read-back OK %d bytes" % len(back))

        # Low-level path, as in the reference's send_and_recv example.
        response = messenger.send_and_recv(VersionRequest.make())
        print("opcode 0x%02X" % Header.extract(response).op_code)

        # Errors surface as RuntimeError carrying the code.
        try:
            messenger.write(b"x")  # no session open any more
        except RuntimeError as e:
            print("RuntimeError: %s" % e)
            assert "error: 1" in str(e), e

        # A bad payload size is refused before sending.
        try:
            messenger.write(bytes(MAX_WRITE_PAYLOAD_SIZE + 1))
        except AssertionError:
            print("AssertionError for oversize write")
        return True
    finally:
        messenger.close()


if __name__ == "__main__":
    ok = flash_firmware(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    print("RESULT", ok)
'''


def test_reference_script_runs_unchanged(tmp_path):
    script = tmp_path / "flash_reference.py"
    script.write_text(SCRIPT)
    img = tmp_path / "app.img"
    from mpota.images import build_app_image
    img.write_bytes(build_app_image(str(REPO / "examples" / "hello"), version="1.0.0"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "host"), str(REPO / "shared")]))
    # The legacy service has no authentication: the device serves it only with auth off.
    with Sim(state=tmp_path / "dev", flags=["--legacy-udp", "--no-auth"]) as sim:
        r = subprocess.run([sys.executable, str(script), "127.0.0.1", str(sim.udp_port), str(img)],
                           capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "RESULT True" in r.stdout
        assert "read-back OK %d bytes" % img.stat().st_size in r.stdout
        assert "opcode 0x02" in r.stdout
        assert "RuntimeError: " in r.stdout and "AssertionError for oversize write" in r.stdout


def test_messenger_resolves_names_and_logs_packets(tmp_path, caplog):
    import logging

    from mpota.bootloader_messenger import BootloaderMessenger

    with Sim(state=tmp_path / "dev", flags=["--legacy-udp", "--no-auth"]) as sim:
        caplog.set_level(logging.DEBUG, logger="bootloader_messenger")
        m = BootloaderMessenger(("localhost", sim.udp_port))
        try:
            api, bl, note = m.get_version()
        finally:
            m.close()
    assert len(api) == 2 and len(bl) == 3
    assert any(r.message.startswith("TX ") for r in caplog.records)
    assert any(r.message.startswith("RX ") for r in caplog.records)


def test_a_new_update_start_takes_over_an_abandoned_legacy_session_never_a_native_one(tmp_path):
    """A reference client that dies mid-update leaves its session open; another one
    (a restarted client: another UDP port) starts afresh at once, as the reference
    device does (legacy frames are served with auth off: a datagram cannot
    authenticate). A native session is never taken over."""
    import binascii
    import hashlib

    from mpota.bootloader_messenger import BootloaderMessenger, LegacyError
    from test_agent_e2e import APP1, DevConn, app_image

    img = bytes(app_image(tmp_path, "app", APP1, "1.0.0+0"))
    with Sim(state=tmp_path / "dev", flags=["--legacy-udp", "--no-auth"]) as sim:
        with BootloaderMessenger(("127.0.0.1", sim.udp_port)) as dead:
            assert dead.start_update(len(img)) and dead.write(img[:1024])
        with BootloaderMessenger(("127.0.0.1", sim.udp_port)) as m:
            assert m.start_update(len(img)), "the abandoned legacy session kept the device busy"
            for off in range(0, len(img), 1024):
                assert m.write(img[off:off + 1024])
            assert m.stop_update(binascii.crc32(img))
        c = DevConn(sim.tcp_port)
        c.ok("begin", size=len(img), sha256=hashlib.sha256(img).hexdigest(), version="1.0.0+0")
        with BootloaderMessenger(("127.0.0.1", sim.udp_port)) as m, pytest.raises(LegacyError, match="busy"):
            m.start_update(len(img))  # a legacy UpdateStart never takes over a native session
        st = c.ok("status")
        assert st["session"] is not None and st["session"]["kind"] == "native", st
        c.close()
