"""
The address column of pg_hba.conf: IP networks, all, samehost, samenet and
host names, read with the C library's rules for numeric addresses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pgtls.core.hba.cnumbers import c_int, c_signed
from pgtls.core.hba.decisions import Client, Interface, IPAddress
from pgtls.core.pgfiles import ascii_lower

__all__ = [
    "AddressRule",
    "AnyAddress",
    "HostName",
    "Network",
    "NoAddress",
    "SameHost",
    "SameNet",
    "cidr_mask",
    "client_addresses",
    "numeric_address",
]


def client_addresses(address: IPAddress) -> tuple[IPAddress, ...]:
    """The client address, plus its IPv4 form when it is IPv4-mapped IPv6."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return (address, address.ipv4_mapped)
    return (address,)


@dataclass(frozen=True, slots=True)
class NoAddress:
    """A ``local`` line: pgtls has no Unix socket, so no TCP client matches."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """Never."""
        return False


@dataclass(frozen=True, slots=True)
class AnyAddress:
    """``all``."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """Every address."""
        return True


@dataclass(frozen=True, slots=True)
class Network:
    """An address with a mask (CIDR or a separate, possibly non-contiguous, mask)."""

    version: int
    address: int
    mask: int

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """Same family and equal under the mask."""
        return any(
            c.version == self.version and (int(c) ^ self.address) & self.mask == 0
            for c in candidates
        )


@dataclass(frozen=True, slots=True)
class SameHost:
    """``samehost``: any address of this machine."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """The client address is one of the interface addresses."""
        return any(
            c.version == i.version and int(c) == int(i.ip) for c in candidates for i in local
        )


@dataclass(frozen=True, slots=True)
class SameNet:
    """``samenet``: any address in a subnet this machine is directly on."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """The client address is in one of the interfaces' networks."""
        return any(
            c.version == i.version and (int(c) ^ int(i.ip)) & int(i.netmask) == 0
            for c in candidates
            for i in local
        )


@dataclass(frozen=True, slots=True)
class HostName:
    """A host name, or a ``.suffix`` of one, matched against the verified name."""

    pattern: str

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """hba.c hostname_match: ASCII case-insensitive, whole name or suffix."""
        if client.hostname is None:
            return False
        actual = ascii_lower(client.hostname)
        pattern = ascii_lower(self.pattern)
        if pattern.startswith("."):
            return actual.endswith(pattern)
        return actual == pattern


AddressRule = NoAddress | AnyAddress | Network | SameHost | SameNet | HostName


_INET_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """
    An IPv4 address in any form inet_aton accepts (what getaddrinfo with
    AI_NUMERICHOST accepts): 1 to 4 parts, each decimal, 0-octal or 0x-hex,
    the last one filling the remaining bytes (``127.1``, ``0x7f.0.0.1``).
    """
    parts = text.split(".")
    if len(parts) > 4 or not all(_INET_PART.fullmatch(part) for part in parts):
        return None
    values = [c_int(part) for part in parts]
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = 0
    for value in leading:
        number = (number << 8) | value
    return ipaddress.IPv4Address((number << (8 * (4 - len(leading)))) | last)


def numeric_address(text: str) -> IPAddress | None:
    """A numeric IPv4 or IPv6 address (zone allowed), or None if ``text`` is not one."""
    v4 = _inet_aton(text)
    if v4 is not None:
        return v4
    if ":" not in text:
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def cidr_mask(bits: str, version: int) -> int | None:
    """The mask for ``/bits`` (strtol syntax), or None if out of range or not a number."""
    width = 32 if version == 4 else 128
    count = c_signed(bits)
    if count is None or not 0 <= count <= width:
        return None
    return ((1 << count) - 1) << (width - count)
