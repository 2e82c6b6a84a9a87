"""
The client's host name for pg_hba.conf host-name rules, verified as
PostgreSQL's check_hostname verifies it: a reverse look-up of the address,
then a forward look-up of that name, which must give the address back.

This does blocking DNS I/O: the Twisted shell runs it in a thread, and
pgtls.core.hba matches its answer (``Client.hostname``) without any I/O.
"""

from __future__ import annotations

import ipaddress
import socket

from pgtls.core.hba.decisions import IPAddress, unmapped

__all__ = ["resolve_client_hostname"]


def resolve_client_hostname(address: IPAddress) -> str | None:
    """
    Look up the verified host name of a client address.

    An IPv4-mapped IPv6 address is looked up as its IPv4 address, as pgtls
    matches such clients against IPv4 rules.

    :param address: the client's IP address.
    :return: the name that the reverse look-up gave, when a forward look-up
        of that name gives ``address`` back; None when either look-up fails
        or the forward look-up does not include the address (PostgreSQL's
        "forward lookup does not match").
    """
    address = unmapped(address)
    name = _reverse(address)
    if name is None:
        return None
    return name if _forward_includes(name, address) else None


def _reverse(address: IPAddress) -> str | None:
    """The host name of ``address`` (NI_NAMEREQD: no numeric fallback), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        sockaddr: tuple[str, int] | tuple[str, int, int, int] = (
            str(address).split("%", 1)[0],
            0,
            0,
            _scope_id(address),
        )
    else:
        sockaddr = (str(address), 0)
    try:
        host, _port = socket.getnameinfo(sockaddr, socket.NI_NAMEREQD)
    except (OSError, UnicodeError):
        return None
    return host


def _scope_id(address: ipaddress.IPv6Address) -> int:
    """The numeric scope of a link-local address (0 when none or unknown)."""
    scope = address.scope_id
    if not scope:
        return 0
    if scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        return 0


def _forward_includes(name: str, address: IPAddress) -> bool:
    """Whether a forward look-up of ``name`` gives ``address`` (same family)."""
    try:
        results = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    for family, _type, _proto, _canon, sockaddr in results:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            found = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            continue
        if found.version == address.version and int(found) == int(address):
            return True
    return False
