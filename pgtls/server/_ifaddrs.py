"""
This machine's interface addresses with their netmasks, for pg_hba.conf's
``samehost`` and ``samenet`` (PostgreSQL's pg_foreach_ifaddr).

getifaddrs(3) is called through ctypes; where that is not possible the
answer is the loopback interfaces alone, so ``samehost`` still admits local
clients.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import sys

__all__ = ["local_networks"]

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

LOOPBACK: tuple[Interface, ...] = (
    ipaddress.IPv4Interface("127.0.0.1/8"),
    ipaddress.IPv6Interface("::1/128"),
)

# BSD-derived systems start struct sockaddr with a length byte, then a
# one-byte family; Linux has a two-byte family and no length.
_SA_LEN = sys.platform.startswith(("darwin", "freebsd", "openbsd", "netbsd", "dragonfly"))


class _IfAddrs(ctypes.Structure):
    """struct ifaddrs: the same layout on Linux and the BSDs."""


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
    ("ifa_netmask", ctypes.c_void_p),
    ("ifa_ifu", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]

# (offset of the address in its sockaddr, address length) per family.
_LAYOUT: dict[int, tuple[int, int]] = {
    int(socket.AF_INET): (4, 4),
    int(socket.AF_INET6): (8, 16),
}


def local_networks() -> list[Interface]:
    """
    This machine's IPv4 and IPv6 interface addresses, each with its netmask.

    :return: the interfaces in getifaddrs order without duplicates; the
        loopback interfaces when getifaddrs cannot be used or fails.
    """
    try:
        found = _getifaddrs()
    except (OSError, AttributeError, ValueError):
        return list(LOOPBACK)
    return found or list(LOOPBACK)


def _getifaddrs() -> list[Interface]:
    """
    Walk getifaddrs(3).

    :raises OSError: getifaddrs failed.
    :raises AttributeError: the C library has no getifaddrs.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    getifaddrs = libc.getifaddrs
    freeifaddrs = libc.freeifaddrs
    head = ctypes.POINTER(_IfAddrs)()
    if getifaddrs(ctypes.byref(head)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "getifaddrs failed")
    try:
        return _walk(head)
    finally:
        freeifaddrs(head)


def _walk(head: ctypes._Pointer[_IfAddrs]) -> list[Interface]:
    """The usable entries of the getifaddrs list starting at ``head``."""
    found: list[Interface] = []
    node = head
    while node:
        entry = node.contents
        interface = _interface(entry.ifa_addr, entry.ifa_netmask)
        if interface is not None and interface not in found:
            found.append(interface)
        node = entry.ifa_next
    return found


def _interface(addr: int | None, netmask: int | None) -> Interface | None:
    """One interface from its address and netmask sockaddrs, or None if unusable."""
    if not addr or not netmask:
        return None
    family = _family(addr)
    if family not in _LAYOUT:
        return None
    ip = _address_bytes(addr, family)
    mask = int.from_bytes(_address_bytes(netmask, family), "big")
    prefix = _prefix_length(mask, len(ip) * 8)
    if prefix is None:
        return None  # a non-contiguous netmask cannot be an ipaddress interface
    if family == socket.AF_INET:
        return ipaddress.IPv4Interface((ip, prefix))
    return ipaddress.IPv6Interface((ip, prefix))


def _family(sockaddr: int) -> int:
    """sa_family of the sockaddr at ``sockaddr``."""
    if _SA_LEN:
        return ctypes.c_uint8.from_address(sockaddr + 1).value
    return ctypes.c_ushort.from_address(sockaddr).value


def _address_bytes(sockaddr: int, family: int) -> bytes:
    """
    The address bytes of a sockaddr of ``family``.  A BSD netmask sockaddr
    may be shorter than its family's (sa_len says so): the rest is zero.
    """
    offset, length = _LAYOUT[family]
    available = length
    if _SA_LEN:
        available = max(0, min(length, ctypes.c_uint8.from_address(sockaddr).value - offset))
    return ctypes.string_at(sockaddr + offset, available).ljust(length, b"\0")


def _prefix_length(mask: int, width: int) -> int | None:
    """The prefix length of a contiguous netmask, or None if it is not one."""
    prefix = bin(mask).count("1")
    all_ones = (1 << width) - 1
    if mask != all_ones ^ ((1 << (width - prefix)) - 1):
        return None
    return prefix
