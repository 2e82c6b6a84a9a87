"""
PROXY protocol version 2 headers as HAProxy's send-proxy-v2 writes them,
for the tests of the header reader and of the front door behind a balancer.
"""

from __future__ import annotations

import socket
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY, LOCAL = 0x21, 0x20
TCP4, UDP4, TCP6, UNIX, UNSPEC = 0x11, 0x12, 0x21, 0x31, 0x00


def v2(command: int, family: int, addresses: bytes = b"", tlvs: bytes = b"") -> bytes:
    """A version 2 header as HAProxy's send-proxy-v2 writes it."""
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp4(source: str, sport: int, dest: str = "10.0.0.1", dport: int = 5432) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack("!HH", sport, dport)
    return v2(PROXY, TCP4, addresses)


def v2_tcp6(source: str, sport: int, dest: str = "fd00::1", dport: int = 5432) -> bytes:
    addresses = (
        socket.inet_pton(socket.AF_INET6, source)
        + socket.inet_pton(socket.AF_INET6, dest)
        + struct.pack("!HH", sport, dport)
    )
    return v2(PROXY, TCP6, addresses)
