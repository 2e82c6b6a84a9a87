"""
Free TCP ports for the servers the tests and the benchmark start.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]


def _ephemeral_ports() -> range:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


# Ports handed out by this process, never handed out again.
_GIVEN: set[int] = set()


def free_port() -> int:
    """
    A TCP port free a moment ago on both 127.0.0.1 and ::1, outside the
    kernel's ephemeral range when it can be.  A port from that range (what
    binding port 0 gives) may be taken at any moment as the local port of an
    outgoing connection, a probe's or a client's, and a server then fails to
    listen on it.
    """
    unused = [p for p in range(10000, 30000) if p not in _GIVEN]
    ephemeral = _ephemeral_ports()
    candidates = [p for p in unused if p not in ephemeral] or unused
    for port in random.sample(candidates, min(200, len(candidates))):
        try:
            with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
                v4.bind(("127.0.0.1", port))
                v6.bind(("::1", port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no TCP port free on both 127.0.0.1 and ::1")
