"""The reference `BootloaderMessenger`: stop-and-wait UDP client of the legacy service.

Signatures, return values and exceptions follow
bootloader-protocol-api-reference.md, so scripts written against the reference
run unchanged with host/ and shared/ on sys.path:

- every call sends one datagram and waits up to 10 s for one answer
  (`socket.timeout` otherwise);
- an ErrorResponse raises RuntimeError("... error: N (name)");
- a malformed or unexpected answer raises AssertionError from `extract()`;
- every packet is logged at DEBUG on the `bootloader_messenger` logger.

Addresses are resolved with getaddrinfo (names, IPv4 and IPv6).
"""
from __future__ import annotations

import binascii
import logging
import socket
from typing import Optional, Tuple

_NAMES = ("MAX_PACKET_SIZE ErrorResponse Header ReadAddressRequest ReadAddressResponse ResetRequest "
          "ResetResponse UpdateStartRequest UpdateStartResponse UpdateStopRequest UpdateStopResponse "
          "VersionRequest VersionResponse WriteRequest WriteResponse")
if __package__:  # the package mpota (mpota.bootloader_messenger): its codec is mpota.codec
    from .codec import bootloader_messages as _bm
    from .codec.mpota_lineproto import error_name
else:  # the reference's way: a script with host/ and shared/ on sys.path
    import bootloader_messages as _bm  # type: ignore[no-redef]
    from mpota_lineproto import error_name  # type: ignore[no-redef]  # the codec's error table
(MAX_PACKET_SIZE, ErrorResponse, Header, ReadAddressRequest, ReadAddressResponse, ResetRequest,
 ResetResponse, UpdateStartRequest, UpdateStartResponse, UpdateStopRequest, UpdateStopResponse,
 VersionRequest, VersionResponse, WriteRequest, WriteResponse) = [getattr(_bm, n) for n in _NAMES.split()]

logger = logging.getLogger("bootloader_messenger")


TIMEOUT = 10.0
# Answers are at most 5 + 1024 + 1 bytes; a larger buffer shows oversized
# datagrams to extract() (which names the fault) instead of truncating them.
_RECV_SIZE = 65535


class LegacyError(RuntimeError):
    """An ErrorResponse: the reference's RuntimeError ("... error: N (name)"), which
    also carries the number (`num`) and the codec's name for it (`code`)."""

    def __init__(self, num: int):
        self.num = num
        self.code = error_name(num)
        super().__init__("Bootloader returned error: %d (%s)" % (num, self.code))


def _resolve(host, port, family=socket.AF_UNSPEC):
    """(family, sockaddr) for a UDP peer; IPv4 first when a name has both (the
    device's lwIP stack is usually IPv4-only)."""
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    fam, _, _, _, sockaddr = infos[0]
    return fam, sockaddr


class BootloaderMessenger:
    """High-level interface for bootloader communication (not thread-safe)."""

    def __init__(self, server_address: Tuple[str, int], client_address: Optional[str] = None):
        host, port = server_address[0], int(server_address[1])
        self.family, self.server_address = _resolve(host, port)
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            if client_address:
                _, local = _resolve(client_address, 0, self.family)
                self.sock.bind(local)
            self.sock.settimeout(TIMEOUT)
        except Exception:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    # Context manager support is an addition; the reference API is unchanged.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_version(self):
        """((api_major, api_minor), (bl_major, bl_minor, bl_build), note bytes)."""
        r = VersionResponse.extract(self.send_and_recv(VersionRequest.make()))
        return ((r.api_major, r.api_minor),
                (r.bootloader_major, r.bootloader_minor, r.bootloader_build),
                r.note)

    def start_update(self, image_size: int) -> bool:
        resp = self.send_and_recv(UpdateStartRequest.make(image_size))
        return Header.extract(resp).op_code == UpdateStartResponse.OpCode

    def write(self, data: bytes) -> bool:
        resp = self.send_and_recv(WriteRequest.make(data))
        return Header.extract(resp).op_code == WriteResponse.OpCode

    def stop_update(self, crc_value: int) -> bool:
        """True when the device's CRC-32 of what it holds equals `crc_value`."""
        resp = self.send_and_recv(UpdateStopRequest.make(crc_value))
        if Header.extract(resp).op_code != UpdateStopResponse.OpCode:
            return False
        device_crc = UpdateStopResponse.extract(resp).crc
        # The device's CRC travels signed (i32); binascii's is unsigned.
        return (device_crc & 0xFFFFFFFF) == (crc_value & 0xFFFFFFFF)

    def reset(self) -> bool:
        ResetResponse.extract(self.send_and_recv(ResetRequest.make()))
        return True

    def read_address(self, address: int, length: int):
        resp = self.send_and_recv(ReadAddressRequest.make(address, length))
        return ReadAddressResponse.extract(resp)

    def send_and_recv(self, msg: bytes) -> bytes:
        assert len(msg) <= MAX_PACKET_SIZE, "packet of %d bytes exceeds MAX_PACKET_SIZE (%d)" % (
            len(msg), MAX_PACKET_SIZE)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("TX %s %s", self._peer(), binascii.hexlify(bytes(msg[:64])).decode()
                         + ("..(%d bytes)" % len(msg) if len(msg) > 64 else ""))
        self.sock.sendto(bytes(msg), self.server_address)
        while True:
            data, addr = self.sock.recvfrom(_RECV_SIZE)  # socket.timeout after 10 s
            # Datagrams from anyone but the device are not answers (stray or spoofed).
            if addr[:2] == self.server_address[:2]:
                break
            logger.debug("RX from unexpected %s ignored", addr)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("RX %s %s", self._peer(), binascii.hexlify(data[:64]).decode()
                         + ("..(%d bytes)" % len(data) if len(data) > 64 else ""))
        if len(data) >= 2 and data[0] == 0xE7 and data[1] == ErrorResponse.OpCode:
            err = ErrorResponse.extract(data)
            raise LegacyError(err.error)
        return data

    def _peer(self):
        return "%s:%s" % (self.server_address[0], self.server_address[1])
