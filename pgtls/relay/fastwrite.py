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
be bypassed: :mod:`pgtls.relay.pump` encrypts on its own only then.
:func:`start_tls` layers TLS on a socket transport as its ``startTLS``
does, but the TLS layer's own records (the handshake's flights, alerts,
close_notify) go through :func:`send_or_queue` too, rather than each
waiting one epoll round trip for the reactor; and the layer is set up with
less work per connection (one factory for all, no copied declarations).

This leans on Twisted's internals (the socket transport's send queue, the
TLS layer's buffers and set-up), reached only through
:mod:`pgtls._internals`.  When :mod:`pgtls.relay.fastpath` has turned the fast
path off, :func:`send_or_queue` is the transport's ``write`` and
:func:`start_tls` is ``transport.startTLS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.tcp import Connection

from pgtls import _internals
from pgtls._internals import owned, tls_ready
from pgtls.relay import fastpath

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["send_or_queue", "start_tls", "tls_ready"]


def send_or_queue(transport: Any, data: Buffer, queue: Callable[[bytes], object]) -> None:
    """
    Send ``data`` on the transport's socket if it is idle (a connected
    Twisted socket transport with nothing queued and no close under way);
    give what was not sent to ``queue`` (Twisted's buffered write for that
    socket), as bytes of its own: ``data`` may be a view of a buffer that is
    used again.  With the fast path off, it all goes to ``queue``.

    A socket error is left for Twisted to meet again on its next write, so
    the connection ends the way it always does.  (:mod:`pgtls.relay.pump` calls
    :func:`pgtls._internals.send_or_queue` itself, for every message.)
    """
    if fastpath.on():
        _internals.send_or_queue(transport, data, queue)
    else:
        queue(owned(data))


def start_tls(transport: Any, creator: object) -> None:
    """
    Layer server-side TLS on a connection, as ``transport.startTLS(creator)``
    does.  On a socket transport, with the fast path on, the TLS layer's
    records are sent at once, the layer's factory is shared by every
    connection, and the layer does not copy the transport's interfaces
    (see :func:`pgtls._internals.start_tls_on_socket`).  Any other
    transport, or the fast path off: ``transport.startTLS``.

    :param creator: the server's IOpenSSLServerConnectionCreator.
    """
    if not isinstance(transport, Connection) or not fastpath.on():
        transport.startTLS(creator)
        return
    _internals.start_tls_on_socket(transport, creator)
