"""
The upstream's startup messages as bytes, and ways to split them, for the
tests of what reads them (pgtls.core.backendstart, the front door).
"""

from __future__ import annotations

import struct

from pgtls.core import wire


def message(kind: bytes, body: bytes) -> bytes:
    """One backend message: type byte, length word, body."""
    return kind + struct.pack("!I", len(body) + 4) + body


def auth(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!i", code) + extra)


def sasl(*mechanisms: str) -> bytes:
    return auth(10, b"".join(m.encode() + b"\0" for m in mechanisms) + b"\0")


def parameter(name: str, value: str) -> bytes:
    return message(b"S", name.encode() + b"\0" + value.encode() + b"\0")


def key_data(pid: int, key: bytes = b"\x12\x34\x56\x78") -> bytes:
    return message(b"K", struct.pack("!i", pid) + key)


def ready(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def fields(kind: bytes, *pairs: tuple[str, str]) -> bytes:
    body = b"".join(code.encode() + text.encode() + b"\0" for code, text in pairs) + b"\0"
    return message(kind, body)


# What PostgreSQL 15 sends a SCRAM client over a plaintext connection, from
# its AuthenticationSASL to ReadyForQuery (continue/final data abridged).
SCRAM_STARTUP = [
    sasl("SCRAM-SHA-256"),
    auth(11, b"r=nonce,s=salt,i=4096"),
    auth(12, b"v=signature"),
    auth(0),
    parameter("application_name", "psql"),
    parameter("server_version", "15.8 (Debian 15.8-0+deb12u1)"),
    key_data(4242),
    ready(),
]
CHECK_FAILED = wire.error_response("28000", "SCRAM channel binding check failed")


def whole(data: bytes) -> list[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def in_halves(data: bytes) -> list[bytes]:
    return [data[: len(data) // 2], data[len(data) // 2 :]]
