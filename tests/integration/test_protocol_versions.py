"""
Unsupported protocol versions compared with PostgreSQL 15 (issue 16 item
10): the same first packet to both, the same answer, byte for byte, except
the source location fields (F, L, R) PostgreSQL adds to a v3 ErrorResponse
and pgtls, which has no such source, never sends.  A 2.x (or 0.x, 1.x)
client gets protocol 2's format, except version 0.0, which PostgreSQL 14+
answers in v3 (its send_message_to_frontend reads 0 as "not set yet").
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from pgserver import PostgresServer

TIMEOUT = 10.0

# (major, minor, body after the version word)
PACKETS = [
    (0, 0, b""),
    (0, 0, b"user\0alice\0\0"),
    (0, 1, b""),
    (1, 0, b""),
    (1, 1, b"user\0alice\0\0"),
    (2, 0, b"user\0alice\0\0"),
    (2, 5, b""),
    (3, 99, b""),  # a layout error: 3.x is supported, the packet is empty
    (4, 0, b"user\0alice\0\0"),
    (65535, 65535, b""),
    (1234, 5678, b""),  # CancelRequest's code of the wrong length: closed silently
]

LOCATION_FIELDS = frozenset(b"FLR")


def answer(port: int, packet: bytes) -> bytes:
    """Send ``packet`` as the first bytes of a connection; all the server sends until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(packet)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def without_location(data: bytes) -> bytes:
    """A v3 ErrorResponse without its F, L and R fields; anything else unchanged."""
    if not data.startswith(b"E") or data[1:2] != b"\0":
        return data
    (length,) = struct.unpack_from("!I", data, 1)
    assert len(data) == 1 + length, data
    fields = data[5:-1].split(b"\0")[:-1]
    kept = b"".join(field + b"\0" for field in fields if field[0] not in LOCATION_FIELDS) + b"\0"
    return b"E" + struct.pack("!I", len(kept) + 4) + kept


@pytest.fixture(scope="module")
def postgres_tcp() -> Iterator[PostgresServer]:
    """PostgreSQL 15 on 127.0.0.1, to ask the same questions."""
    with PostgresServer(tcp=True) as server:
        yield server


@pytest.mark.parametrize(("major", "minor", "body"), PACKETS)
def test_answer_is_postgresql_15s(
    pgtls, postgres_tcp: PostgresServer, major: int, minor: int, body: bytes
) -> None:
    """pgtls answers an unsupported (or malformed) first packet as PostgreSQL 15 does."""
    packet = struct.pack("!II", 8 + len(body), (major << 16) | minor) + body
    expected = answer(postgres_tcp.port, packet)
    server = pgtls.start()
    assert answer(server.port, packet) == without_location(expected)


def test_version_zero_is_answered_in_v3(pgtls) -> None:
    """The issue's reproduction: ``struct.pack('!II', 8, 0)`` gets a v3 FATAL 0A000."""
    server = pgtls.start()
    assert answer(server.port, struct.pack("!II", 8, 0)) == (
        b"E\x00\x00\x00\x59SFATAL\x00VFATAL\x00C0A000\x00"
        b"Munsupported frontend protocol 0.0: server supports 3.0 to 3.0\x00\x00"
    )
