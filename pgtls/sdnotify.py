"""
sd_notify(3) for a service that systemd runs with ``Type=notify``.

systemd names a datagram socket in ``$NOTIFY_SOCKET`` (a path, or ``@name``
in the abstract namespace); the service sends it newline-separated
``NAME=VALUE`` assignments such as ``READY=1`` or ``STATUS=...``.  Without
the variable there is no one to tell, and nothing is sent.

Twisted supports the other half of systemd's protocol, socket activation
(twisted.python.systemd.ListenFDs and the ``systemd:`` endpoint); it has
nothing for notification, hence this module.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "format_state", "monotonic_usec", "notify_address"]

# A datagram to a busy systemd may block for a moment; the reactor thread
# must not wait longer than this.
_SEND_TIMEOUT = 1.0


def notify_address(value: str | None) -> str | bytes | None:
    """
    The socket address that ``$NOTIFY_SOCKET`` names.

    :param value: the variable's value, or None when it is not set.
    :return: a file system path, a bytes address in the abstract namespace
        (``@`` becomes a NUL byte), or None when there is nothing to notify
        (unset, empty, or a kind of address other than AF_UNIX, such as
        ``vsock:``, which pgtls does not speak).
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def format_state(fields: Mapping[str, str | int]) -> bytes:
    """
    One notification: ``NAME=VALUE`` lines in the order given.

    :raises ValueError: a name or value holds a newline (or a name an ``=``),
        which would forge another assignment.
    """
    lines = []
    for name, value in fields.items():
        text = str(value)
        if not name or "=" in name or "\n" in name or "\n" in text:
            raise ValueError(f"cannot notify {name!r}={text!r}")
        lines.append(f"{name}={text}")
    return "\n".join(lines).encode("utf-8")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the ``MONOTONIC_USEC`` that goes with ``RELOADING=1``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to systemd, or nothing when it did not ask for them."""

    def __init__(self, address: str | bytes | None) -> None:
        """
        :param address: where to send (see :func:`notify_address`); None sends nothing.
        """
        self.address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A Notifier for ``$NOTIFY_SOCKET`` of ``environ`` (default: this process's)."""
        env = os.environ if environ is None else environ
        return cls(notify_address(env.get("NOTIFY_SOCKET")))

    @property
    def enabled(self) -> bool:
        """Whether systemd listens: notifications are sent."""
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """
        Send one notification, e.g. ``notify(READY=1, STATUS="...")``.

        :return: whether it was sent; False when disabled or when the socket
            refused it (systemd gone, queue full): a notification is never
            worth failing for.
        :raises ValueError: see :func:`format_state`.
        """
        message = format_state(fields)
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT)
                sock.sendto(message, self.address)
        except OSError:
            return False
        return True
