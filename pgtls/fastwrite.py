"""
Writing relayed bytes at once.

A Twisted socket transport queues every ``write()`` and sends it when the
reactor next reports the socket writable, one epoll round trip later; its
TLS transport also holds small writes back for one reactor turn to gather
them into fewer records.  A relayed session writes once per read, so both
waits only add latency and CPU to every query.

:func:`send_or_queue` sends at once when the transport has nothing queued
and hands only the unsent rest to Twisted's own queue, which then does what
it always does (flow control included: a producer is paused when the queue
is full).  When the transport is not idle it all goes to the queue, behind
what was written earlier.  :func:`tls_ready` tells whether a TLS layer may
be bypassed: :mod:`pgtls.pump` encrypts on its own only then.
:func:`start_tls` layers TLS on a socket transport as its ``startTLS``
does, but the TLS layer's own records (the handshake's flights, alerts,
close_notify) go through :func:`send_or_queue` too, rather than each
waiting one epoll round trip for the reactor.

This leans on Twisted's internals (the socket transport's send queue, the
TLS layer's buffers); the unit tests pin each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet import _newtls
from twisted.internet.abstract import FileDescriptor
from twisted.internet.tcp import Connection
from twisted.protocols.tls import TLSMemoryBIOProtocol

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["send_or_queue", "start_tls", "tls_ready"]


def send_or_queue(transport: Any, data: Buffer, queue: Callable[[bytes], object]) -> None:
    """
    Send ``data`` on the transport's socket if it is idle (a connected
    Twisted socket transport with nothing queued and no close under way);
    give what was not sent to ``queue`` (Twisted's buffered write for that
    socket), as bytes of its own: ``data`` may be a view of a buffer that is
    used again.

    A socket error is left for Twisted to meet again on its next write, so
    the connection ends the way it always does.
    """
    # Inline rather than a helper: this runs for every relayed message.
    if (
        not isinstance(transport, Connection)
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnecting
        or transport._writeDisconnected
        or transport._tempDataLen
        or len(transport.dataBuffer) != transport.offset
        # A UNIX transport's file descriptors travel with its queued bytes.
        or getattr(transport, "_sendmsgQueue", None)
    ):
        queue(_owned(data))
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        queue(_owned(data))
        return
    if sent < len(data):  # type: ignore[arg-type]
        queue(bytes(memoryview(data)[sent:]))


def _owned(data: Buffer) -> bytes:
    """``data`` itself when it is bytes (they never change), else a copy."""
    return data if isinstance(data, bytes) else bytes(data)


class _SendAtOnce(FileDescriptor):
    """
    The socket methods a TLS layer writes its records through: Twisted's
    own (FileDescriptor's, which ``startTLS`` gives it), but ``write``
    sends at once when the socket is idle.  They are called unbound, with
    the socket transport as ``self``.
    """

    def write(self, data: Any) -> None:
        send_or_queue(self, data, partial(FileDescriptor.write, self))


def start_tls(transport: Any, context: object) -> None:
    """
    ``transport.startTLS(context)``, the records of the TLS layer sent at
    once (see :class:`_SendAtOnce`) when the transport is a socket
    transport; any other transport starts TLS its own way.
    """
    if isinstance(transport, Connection):
        # What ConnectionMixin.startTLS does, with another bypass.
        _newtls.startTLS(transport, context, True, _SendAtOnce)
    else:
        transport.startTLS(context)


def tls_ready(tls: Any) -> bool:
    """
    Whether the TLS layer may be bypassed now: handshake done, no close
    under way, and nothing held back by it (small-write gathering, a write
    waiting for the peer).
    """
    if not isinstance(tls, TLSMemoryBIOProtocol):
        return False
    aggregator = getattr(tls, "_aggregator", None)
    return bool(
        tls._handshakeDone
        and not tls.disconnecting
        and not tls._lostTLSConnection
        and not tls._aborted
        and not tls._appSendBuffer
        and not getattr(aggregator, "_buffer", None)
    )
