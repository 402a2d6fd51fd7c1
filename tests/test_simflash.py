"""tools/simflash.py under the unix-port MicroPython: NOR rules, ops, power cut, littlefs."""
import textwrap

import pytest
from conftest import REPO, run_micropython

SIZE = 212 * 4096

PRELUDE = """
import sys
sys.path.insert(0, %r)
from simflash import SimFlash
""" % str(REPO / "tools")


def mp(code, timeout=120):
    """Run `code` under micropython with SimFlash importable."""
    return run_micropython(["-c", PRELUDE + textwrap.dedent(code)], timeout=timeout)


def ok(code, timeout=120):
    r = mp(code, timeout)
    assert r.returncode == 0, "micropython failed:\n%s\n%s" % (r.stdout, r.stderr)
    return r.stdout


def test_fresh_flash_is_erased_and_ioctl(tmp_path):
    f = tmp_path / "flash.bin"
    out = ok("""
        fl = SimFlash(%r)
        print(fl.ioctl(4, 0), fl.ioctl(5, 0), fl.ioctl(1, 0), fl.ioctl(2, 0), fl.ioctl(3, 0))
        b = bytearray(4096)
        fl.readblocks(211, b)
        print(b == b'\\xff' * 4096, fl.stats()['ops'])
        try:
            fl.readblocks(212, b)
        except OSError as e:
            print('OOR', e)
    """ % str(f))
    lines = out.split("\n")
    assert lines[0] == "212 4096 0 0 0"
    assert lines[1] == "True 0"
    assert lines[2].startswith("OOR") and "outside the flash" in lines[2]
    assert f.read_bytes() == b"\xff" * SIZE


def test_erase_program_rules_and_counters(tmp_path):
    f = tmp_path / "flash.bin"
    out = ok("""
        fl = SimFlash(%r)
        fl.writeblocks(1, bytes([0xA5]) * 4096)          # erase + 16 pages
        print(fl.erases, fl.programs)
        fl.writeblocks(1, bytes([0x5A]) * 4096)          # erase again: allowed
        fl.writeblocks(2, b'\\xf0' * 10, 250)            # program only, spans 2 pages
        fl.writeblocks(2, b'\\x30' * 10, 250)            # clears bits only: fine
        fl.writeblocks(2, b'\\x30' * 4, 250)             # the same value again: fine
        try:                                             # 0xFF would leave 0x30, not 0xFF
            fl.writeblocks(2, b'\\xff', 251)
        except OSError as e:
            print(fl.erases, fl.programs, 'would set bits 0->1' in str(e))
        fl.ioctl(6, 3)                                   # erase block 3 only
        print(fl.erases)
    """ % str(f))
    assert out.split("\n")[:3] == ["1 16", "2 37 True", "3"]
    data = f.read_bytes()
    assert data[4096:8192] == b"\x5a" * 4096
    assert data[8192:8192 + 250] == b"\xff" * 250
    assert data[8192 + 250:8192 + 260] == b"\x30" * 10
    assert data[8192 + 260:12288] == b"\xff" * (4096 - 260)
    assert data[12288:16384] == b"\xff" * 4096


def test_programming_a_zero_back_to_one_fails_loudly(tmp_path):
    f = tmp_path / "flash.bin"
    r = mp("""
        fl = SimFlash(%r)
        fl.writeblocks(0, b'\\x0f' * 512, 0)
        try:
            fl.writeblocks(0, b'\\x0f' * 300 + b'\\x1f' + b'\\x0f' * 211, 0)
        except OSError as e:
            print('RAISED', e)
        fl.writeblocks(0, b'\\x00' * 512)   # without offset: erased first, so fine
    """ % str(f))
    assert r.returncode == 0, r.stderr
    assert "RAISED" in r.stdout and "0x12c would set bits 0->1" in r.stdout
    assert "not erased" in r.stderr  # said on stderr too, in case the caller swallows it
    assert f.read_bytes()[:4096] == b"\x00" * 512 + b"\xff" * (4096 - 512)


def test_power_cut_during_program_leaves_a_torn_page(tmp_path):
    f = tmp_path / "flash.bin"
    r = mp("""
        fl = SimFlash(%r)
        fl.ioctl(6, 5)
        fl.arm(3)                         # the erase above is not counted
        fl.writeblocks(5, b'\\x00' * 2048, 0)   # pages 1-3 complete, page 4 torn
        print('SURVIVED')
    """ % str(f))
    assert r.returncode in (-9, 137), (r.returncode, r.stdout, r.stderr)
    assert "SURVIVED" not in r.stdout
    assert "POWER CUT during page program at 0x5300 (after 3 complete operations)" in r.stderr
    blk = f.read_bytes()[5 * 4096:6 * 4096]
    assert blk[:768] == b"\x00" * 768          # three whole pages
    assert blk[768:768 + 128] == b"\x00" * 128  # half of the torn page
    assert blk[768 + 128:] == b"\xff" * (4096 - 768 - 128)


def test_power_cut_during_erase_leaves_a_partly_erased_block(tmp_path):
    f = tmp_path / "flash.bin"
    r = mp("""
        fl = SimFlash(%r)
        fl.writeblocks(7, b'\\x11' * 4096)
        fl.arm(0)
        fl.ioctl(6, 7)
        print('SURVIVED')
    """ % str(f))
    assert r.returncode in (-9, 137), (r.returncode, r.stdout, r.stderr)
    assert "SURVIVED" not in r.stdout and "POWER CUT during erase of block 7" in r.stderr
    blk = f.read_bytes()[7 * 4096:8 * 4096]
    assert blk[:2048] == b"\xff" * 2048 and blk[2048:] == b"\x11" * 2048


def test_littlefs_on_simflash_survives_remount(tmp_path):
    f = tmp_path / "flash.bin"
    ok("""
        import vfs
        fl = SimFlash(%r)
        vfs.VfsLfs2.mkfs(fl, progsize=256)
        vfs.mount(vfs.VfsLfs2(fl, progsize=256), '/flash')
        with open('/flash/a.txt', 'w') as fo:
            fo.write('hello ' * 1000)
        import os
        os.mkdir('/flash/d')
        with open('/flash/d/b.bin', 'wb') as fo:
            fo.write(bytes(range(256)) * 100)
        vfs.umount('/flash')
    """ % str(f))
    out = ok("""
        import vfs, os
        fl = SimFlash(%r)
        vfs.mount(vfs.VfsLfs2(fl, progsize=256), '/flash')
        print(sorted(os.listdir('/flash')), open('/flash/a.txt').read() == 'hello ' * 1000,
              open('/flash/d/b.bin', 'rb').read() == bytes(range(256)) * 100)
    """ % str(f))
    assert out.strip() == "['a.txt', 'd'] True True"
    # the same image mounts with littlefs-python (the host side) too
    from littlefs import LittleFS

    fs = LittleFS(block_size=4096, block_count=212, prog_size=256, mount=False)
    fs.context.buffer = bytearray(f.read_bytes())
    fs.mount()
    with fs.open("d/b.bin", "rb") as fh:
        assert fh.read() == bytes(range(256)) * 100


def test_wrong_size_file_is_refused(tmp_path):
    f = tmp_path / "flash.bin"
    f.write_bytes(b"\xff" * 4096)
    r = mp("fl = SimFlash(%r)" % str(f))
    assert r.returncode != 0 and "expected 868352" in r.stdout + r.stderr


@pytest.mark.parametrize("timing", ["none", pytest.param("w25q", marks=pytest.mark.slow)])
def test_benchmark_256k(tmp_path, timing):
    """Prints throughput of 256 KiB erase+program and read; asserts only the data."""
    f = tmp_path / "flash.bin"
    out = ok("""
        import time
        fl = SimFlash(%r, timing=%r)
        buf = bytearray(4096)
        for i in range(4096):
            buf[i] = i & 0xFF
        t0 = time.ticks_us()
        for n in range(64):
            fl.writeblocks(n, buf)
        tw = time.ticks_diff(time.ticks_us(), t0)
        rb = bytearray(4096)
        t0 = time.ticks_us()
        good = 0
        for n in range(64):
            fl.readblocks(n, rb)
            good += rb == buf
        tr = time.ticks_diff(time.ticks_us(), t0)
        print(good, fl.erases, fl.programs, tw, tr)
    """ % (str(f), timing))
    good, erases, programs, tw, tr = (int(x) for x in out.split())
    assert (good, erases, programs) == (64, 64, 1024)
    print("\nsimflash %s: write 256 KiB in %.1f ms = %.0f KB/s; read %.1f ms = %.0f KB/s"
          % (timing, tw / 1000, 262144 / tw * 1000, tr / 1000, 262144 / tr * 1000))
