"""
The PROXY protocol header a load balancer puts before a client's bytes.

A connection from one of ``pgtls.proxy_protocol_networks`` begins with a
header in version 1 (text, HAProxy's ``send-proxy``) or version 2 (binary,
``send-proxy-v2``, what cloud load balancers send) that names the client's
address.  :class:`ProxyHeaderReader` finds where the header ends, bounds its size,
lets Twisted's parsers read it (through pgtls.relay._haproxy) and checks what they
leave unchecked; the bytes after the header are the client's and go on to
the first-packet reader (pgtls.core.wire).  No I/O here.

Specification: HAProxy's proxy-protocol.txt (Debian: /usr/share/doc/haproxy/).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from pgtls.core.hba.decisions import IPAddress, unmapped
from pgtls.core.wire import NEED_DATA, NeedData
from pgtls.relay import _haproxy

__all__ = [
    "MAX_V1_HEADER",
    "MAX_V2_HEADER",
    "InvalidProxyHeader",
    "ProxyHeader",
    "ProxyHeaderReader",
]


#: The longest version 1 header the specification allows, CRLF included.
MAX_V1_HEADER = 107
#: The longest version 2 header pgtls reads: 16 bytes and up to 4080 of
#: addresses and TLVs (HAProxy's, AWS's and Azure's TLVs take a few hundred).
MAX_V2_HEADER = 4096

_V1_SIGNATURE = b"PROXY "
_V2_SIGNATURE = _haproxy.V2_SIGNATURE
_V2_FIXED = 16


class InvalidProxyHeader(Exception):
    """
    The connection did not begin with a valid PROXY protocol header; ``str()``
    says why, for the log (the client is told nothing).
    """


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """
    A complete header.

    ``source`` is the client's address and port; None when the header names
    no client (version 1 ``UNKNOWN``, version 2 ``LOCAL`` as in HAProxy's
    health checks, or a family other than TCP over IPv4/IPv6), in which case
    the connection is the balancer's own and its own address stands.
    """

    version: int
    source: tuple[IPAddress, int] | None


class ProxyHeaderReader:
    """
    Reads one PROXY header: feed bytes with receive_data(), then next_event()
    gives the header or NEED_DATA; after the header, ``trailing_data`` holds
    the bytes that followed it.  Bytes that cannot begin a header are refused
    as soon as they arrive, so garbage costs no wait.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False
        self.trailing_data = b""

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the connection."""
        self._buffer += data

    def next_event(self) -> ProxyHeader | NeedData:
        """
        The header, once complete.

        :raises InvalidProxyHeader: the bytes are not a header, or it is longer
            than allowed.
        """
        assert not self._done, "one header per connection"
        buffer = self._buffer
        if not buffer:
            return NEED_DATA
        if buffer[:1] == _V1_SIGNATURE[:1]:
            header = self._v1(buffer)
        elif buffer[:1] == _V2_SIGNATURE[:1]:
            header = self._v2(buffer)
        else:
            raise InvalidProxyHeader("no PROXY protocol header")
        if header is not NEED_DATA:
            self._done = True
            self._buffer = b""
        return header

    def _v1(self, buffer: bytes) -> ProxyHeader | NeedData:
        if not buffer.startswith(_V1_SIGNATURE[: len(buffer)]):
            raise InvalidProxyHeader("no PROXY protocol header")
        end = buffer.find(b"\r\n", 0, MAX_V1_HEADER)
        if end < 0:
            if len(buffer) >= MAX_V1_HEADER:
                raise InvalidProxyHeader(
                    f"PROXY protocol version 1 header longer than {MAX_V1_HEADER} bytes"
                )
            return NEED_DATA
        line = buffer[:end]
        self.trailing_data = buffer[end + 2 :]
        try:
            info = _haproxy.parse_v1(line)
        except _haproxy.InvalidProxyHeader:
            raise InvalidProxyHeader("invalid PROXY protocol version 1 header") from None
        if info.source is not None and not _canonical_v1(line):
            raise InvalidProxyHeader("invalid PROXY protocol version 1 header")
        return ProxyHeader(1, _source(info))

    def _v2(self, buffer: bytes) -> ProxyHeader | NeedData:
        if not buffer.startswith(_V2_SIGNATURE[: len(buffer)]):
            raise InvalidProxyHeader("no PROXY protocol header")
        if len(buffer) < _V2_FIXED:
            return NEED_DATA
        # Twisted's parser would wait for as many bytes as the header says.
        size = _V2_FIXED + struct.unpack("!H", buffer[14:16])[0]
        if size > MAX_V2_HEADER:
            raise InvalidProxyHeader(
                f"PROXY protocol version 2 header of {size} bytes, more than {MAX_V2_HEADER}"
            )
        if len(buffer) < size:
            return NEED_DATA
        self.trailing_data = buffer[size:]
        try:
            info = _haproxy.parse_v2(buffer[:size])
        except _haproxy.InvalidProxyHeader:
            raise InvalidProxyHeader("invalid PROXY protocol version 2 header") from None
        return ProxyHeader(2, _source(info))


def _source(info: _haproxy.ProxyInfo) -> tuple[IPAddress, int] | None:
    """
    The client's address in a parsed header; None for a source that is not
    TCP over IP (a Unix socket, UDP), which names no client pg_hba.conf knows.

    :raises InvalidProxyHeader: the address is not an IP address (Twisted's
        version 1 parser takes any text for it).
    """
    source = info.source
    if source is None or getattr(source, "type", None) != "TCP":
        return None
    host = str(getattr(source, "host", ""))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidProxyHeader(f'invalid address "{host}" in PROXY protocol header') from None
    return unmapped(address), int(getattr(source, "port", 0))


def _canonical_v1(line: bytes) -> bool:
    """
    Whether a TCP4/TCP6 line is exactly the specification's: both addresses
    of the family named (no zone), ports in decimal from 0 to 65535 without sign or
    leading zero, nothing after them.  Twisted's parser lets any address
    text, ``+80`` and trailing fields through.
    """
    fields = line.split(b" ")
    if len(fields) != 6:
        return False
    family = {b"TCP4": 4, b"TCP6": 6}.get(fields[1])
    for text in fields[2:4]:
        if b"%" in text:
            return False  # an IPv6 zone, which means nothing on this host
        try:
            if ipaddress.ip_address(text.decode("ascii")).version != family:
                return False
        except ValueError:
            return False
    return all(
        text.isdigit() and text == str(int(text)).encode() and int(text) <= 65535
        for text in fields[4:]
    )
