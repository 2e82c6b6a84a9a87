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
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

if TYPE_CHECKING:
    from pgtls.relay.frontdoor import FrontDoorFactory

__all__ = [
    "STATUS_INTERVAL",
    "Notifier",
    "NotifyService",
    "format_state",
    "monotonic_usec",
    "notify_address",
]

# A datagram to a busy systemd may block for a moment; the reactor thread
# must not wait longer than this.
_SEND_TIMEOUT = 1.0

#: How often STATUS= is refreshed for systemd (only sent when it changed).
STATUS_INTERVAL = 1.0


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


class NotifyService(Service):
    """
    Tells systemd (``Type=notify``) how pgtls is: READY=1 once the reactor
    runs, RELOADING=1 and READY=1 around a reload, STOPPING=1 when a
    shutdown starts, and a STATUS= line with the session count, refreshed
    when it changes.  Without $NOTIFY_SOCKET it sends nothing and runs no
    timer.
    """

    def __init__(
        self,
        reactor: Any,
        factory: FrontDoorFactory,
        notifier: Notifier,
        *,
        interval: float = STATUS_INTERVAL,
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.notifier = notifier
        self.interval = interval
        self.status: str | None = None
        #: Sent with the first READY=1 by a process started by SIGUSR2, so
        #: that systemd follows it (the unit's NotifyAccess=all lets it).
        self.main_pid: int | None = None
        self._stopping = False
        self._muted = False
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.notifier.enabled:
            # Ready means accepting: the ports accept once the reactor runs.
            self.reactor.callWhenRunning(self._ready)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _ready(self) -> None:
        if self._stopping:
            return
        if self.main_pid is not None:
            self._send(MAINPID=self.main_pid, READY=1)
        else:
            self._send(READY=1)
        self._loop = LoopingCall(self.update_status)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def status_text(self) -> str:
        """The STATUS= line: the state and the session count."""
        if self.factory.shutting_down:
            count = len(self.factory.connections)
            return f"shutting down; {count} connection{'' if count == 1 else 's'} left"
        count = self.factory.sessions
        return f"ready to accept connections; {count} session{'' if count == 1 else 's'}"

    def update_status(self) -> None:
        """Send STATUS= if it changed since last sent."""
        if self.status_text() != self.status:
            self._send()

    def reloading(self) -> None:
        """A reload starts (RELOADING=1 with the CLOCK_MONOTONIC time systemd asks for)."""
        if not self._stopping:
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def reloaded(self) -> None:
        """The reload is done, whatever it applied: ready again."""
        if not self._stopping:
            self._send(READY=1)

    def stopping(self) -> None:
        """A shutdown starts: STOPPING=1, and READY=1 never again."""
        self._stopping = True
        self._send(STOPPING=1)

    def hand_over(self) -> None:
        """
        A new process has told systemd it is the main process: say nothing
        more (a STOPPING=1 from here would stop the service).
        """
        self._muted = True
        self._stopping = True

    def take_back(self) -> None:
        """The new process ended: this one is systemd's main process again, and ready."""
        self._muted = False
        self._stopping = False
        self._send(MAINPID=os.getpid(), READY=1)

    def _send(self, **fields: str | int) -> None:
        if not self.notifier.enabled or self._muted:
            return
        self.status = self.status_text()
        self.notifier.notify(**fields, STATUS=self.status)
