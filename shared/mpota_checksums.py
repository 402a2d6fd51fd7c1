# Checksums shared by the device and the host: CRC-32C for native chunks,
# CRC-32 (zlib/binascii) for the reference protocol, and the 8-bit sum of the
# reference frames. One import name, fastest available body per interpreter.
try:  # MicroPython: u-names reach the firmware's module whatever an app ships (docs/security.md)
    import ubinascii as binascii
except ImportError:  # CPython
    import binascii

import sys

_pkg = None
if sys.implementation.name != "micropython":
    # CPython: the crc32c package (hardware CRC32C where the CPU has it). Never
    # tried on MicroPython, where a name the firmware lacks is searched on
    # sys.path, among the app's files (an app's crc32c.py would stand in).
    try:
        from crc32c import crc32c as _pkg
    except ImportError:
        pass

if _pkg is not None:
    def crc32c(data, crc=0):
        return _pkg(data, crc)

    def sum8(data):
        return sum(data) & 0xFF

else:
    # MicroPython: a 256-entry table (1 KiB, built once at import) walked by
    # viper at native speed; plain Python where viper is not compiled in.
    try:
        import uarray as array
    except ImportError:  # CPython without the crc32c package
        import array

    _T = array.array("I", [0] * 256)
    for _i in range(256):
        _c = _i
        for _k in range(8):
            _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
        _T[_i] = _c
    del _i, _c, _k

    try:
        import micropython

        @micropython.viper
        def _crc_viper(crc: uint, data, n: int, tbl) -> uint:
            t = ptr32(tbl)
            p = ptr8(data)
            c = crc ^ uint(0xFFFFFFFF)
            i = 0
            while i < n:
                c = uint(t[(c ^ uint(p[i])) & 0xFF]) ^ (c >> 8)
                i += 1
            return c ^ uint(0xFFFFFFFF)

        @micropython.viper
        def _sum_viper(data, n: int) -> int:
            p = ptr8(data)
            s = 0
            i = 0
            while i < n:
                s += p[i]
                i += 1
            return s & 0xFF

        def crc32c(data, crc=0):
            return _crc_viper(crc, data, len(data), _T)

        def sum8(data):
            return _sum_viper(data, len(data))

    except (ImportError, AttributeError, SyntaxError, NameError):  # pragma: no cover - no viper
        def crc32c(data, crc=0):
            t = _T
            c = crc ^ 0xFFFFFFFF
            for b in data:
                c = t[(c ^ b) & 0xFF] ^ (c >> 8)
            return c ^ 0xFFFFFFFF

        def sum8(data):
            return sum(data) & 0xFF


def crc32(data, crc=0):
    """Unsigned CRC-32 as zlib/binascii compute it (the reference's WriteRequest CRC)."""
    return binascii.crc32(data, crc) & 0xFFFFFFFF
