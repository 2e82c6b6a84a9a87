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
waiting one epoll round trip for the reactor; and the layer is set up with
less work per connection (one factory for all, no copied declarations).

This leans on Twisted's internals (the socket transport's send queue, the
TLS layer's buffers and set-up); the unit tests pin each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet import _newtls
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.protocols import tls as twisted_tls
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from zope.interface import directlyProvides

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


class _ServerTLSLayer(BufferingTLSTransport):
    """
    Twisted's TLS layer (the one its TLS factory makes), without its copy
    of the transport's interfaces, and reading its send BIO only when
    OpenSSL has put something there.

    Its ``makeConnection`` declares each interface the socket transport
    provides on itself, one ``directlyProvides`` after the other, each
    replacing the one before: 250k instructions per connection
    (callgrind), a sixth of pgtls's Python per connection.  Without them
    the layer's interfaces are looked up, through its ``__getattr__``, on
    the socket transport itself: all of them, ISSLTransport included,
    rather than the last one.
    """

    def makeConnection(self, transport: Any) -> None:
        # TLSMemoryBIOProtocol.makeConnection as startTLS calls it (the
        # application's protocol is connected already), less the loop.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._checkHandshakeStatus()

    def _flushSendBIO(self) -> None:
        # Twisted's reads the send BIO even when it is empty, for pyOpenSSL
        # to raise WantReadError: most of its seven calls a connection.
        if _lib.BIO_get_mem_data(self._tlsConnection._from_ssl, _ffi.NULL) > 0:
            super()._flushSendBIO()


@lru_cache(maxsize=1)
def _tls_factory(creator: Any, clock: IReactorTime) -> TLSMemoryBIOFactory:
    """
    One TLS factory for every connection of a server; startTLS builds one
    per connection.  ``clock`` times the TLS layer's small-write gathering.
    """
    # No wrapped factory: startTLS's layer wraps a protocol that exists.
    factory = TLSMemoryBIOFactory(creator, False, None, clock)  # type: ignore[arg-type]
    factory.protocol = _ServerTLSLayer
    return factory


def start_tls(transport: Any, creator: object) -> None:
    """
    Layer server-side TLS on a connection, as ``transport.startTLS(creator)``
    does.  On a socket transport the TLS layer's records are sent at once
    (see :class:`_SendAtOnce`), the layer's factory is shared by every
    connection, and the layer does not copy the transport's interfaces
    (see :class:`_ServerTLSLayer`).  Any other transport starts TLS its own way.

    :param creator: the server's IOpenSSLServerConnectionCreator.
    """
    if not isinstance(transport, Connection):
        transport.startTLS(creator)
        return
    _start_tls_on_socket(transport, creator)


def _start_tls_on_socket(transport: Any, creator: Any) -> None:
    """What twisted.internet._newtls.startTLS does for a server connection."""
    producer, streaming = transport.producer, transport.streamingProducer
    if producer is not None:
        transport.unregisterProducer()
    # Twisted's TLS factory asks this hook for its clock (the reactor).
    factory = _tls_factory(creator, twisted_tls._get_default_clock())
    tls = factory.protocol(factory, transport.protocol, False)
    transport.protocol = tls
    transport.getHandle = tls.getHandle
    transport.getPeerCertificate = tls.getPeerCertificate
    directlyProvides(transport, ISSLTransport)
    transport.TLS = True
    tls.makeConnection(_newtls._BypassTLS(_SendAtOnce, transport))
    if producer is not None:
        transport.registerProducer(producer, streaming)


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
