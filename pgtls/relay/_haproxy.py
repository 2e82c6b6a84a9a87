"""
Twisted's PROXY protocol parsers, read one header at a time.

``twisted.protocols.haproxy`` exports only ``proxyEndpoint``, a wrapper that
would sit between the socket and every relayed message.  pgtls reads the
header once, before the session, with the parsers that wrapper uses, which
are private: :mod:`pgtls._internals` imports them (``V1Parser``,
``V2Parser``, ``ProxyInfo``, ``InvalidProxyHeader``).  Their one-shot
``parse`` class methods take a complete header; pgtls.relay.proxyheader finds where
the header ends and bounds its size, and calls the two functions here.
"""

from __future__ import annotations

from pgtls._internals import InvalidProxyHeader, ProxyInfo, V1Parser, V2Parser

__all__ = ["V2_SIGNATURE", "InvalidProxyHeader", "ProxyInfo", "parse_v1", "parse_v2"]

#: The twelve bytes every version 2 header starts with.
V2_SIGNATURE: bytes = V2Parser.PREFIX

# V1Parser requires a space after UNKNOWN, so it refuses the shortest
# header the specification allows (and HAProxy sends), "PROXY UNKNOWN".
_V1_BARE_UNKNOWN = b"PROXY UNKNOWN"


def parse_v1(line: bytes) -> ProxyInfo:
    """
    Parse a version 1 header line.

    :param line: the header without its CRLF.
    :return: what the line says; no source for UNKNOWN.
    :raises InvalidProxyHeader: the line is not a valid header.  Twisted lets
        a ValueError out for a port that is not a number; it is converted.
    """
    if line == _V1_BARE_UNKNOWN:
        return ProxyInfo(line, None, None)
    try:
        return V1Parser.parse(line)
    except ValueError:
        raise InvalidProxyHeader() from None


def parse_v2(header: bytes) -> ProxyInfo:
    """
    Parse a complete version 2 header (16 bytes and the length they announce).

    :return: what the header says; no source for LOCAL and the UNSPEC family.
    :raises InvalidProxyHeader: the header is not valid.
    """
    return V2Parser.parse(header)
