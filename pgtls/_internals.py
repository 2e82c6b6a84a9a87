"""
Every use of Twisted's and pyOpenSSL's private internals, in one place.

The relay's fast path (:mod:`pgtls.relay.pump`, :mod:`pgtls.relay.fastwrite`,
:mod:`pgtls.relay.reactor`) reaches below the two libraries' public APIs:
pyOpenSSL's binding of OpenSSL (``OpenSSL._util``) and an SSL Connection's
``_ssl`` and memory BIOs; Twisted's TLS layer's private state and set-up
(its factory's connection creator, ``_get_default_clock``,
``twisted.internet._newtls``); a socket transport's send queue; the epoll
reactor's poller and selectables.  This module is the only one that does;
the others use its names.  An upgrade that moves one of them breaks this
module alone, and :mod:`pgtls.relay.fastpath`'s self-test, run at start, notices
and turns the fast path off: pgtls then serves every session through the
public path (``transport.startTLS``, ordinary protocols, the stock reactor).

Three upstream bodies are copied here, changed: Twisted's
``TLSMemoryBIOProtocol.makeConnection``, ``_newtls.startTLS`` and
``EPollReactor.doPoll`` (:func:`copied` names them, and the unit tests
fail when Twisted's own body changes, so that the copy is reviewed).

The TLS primitives are not tied to the server side: :func:`tls_handles`,
:func:`tls_ready` and :func:`tls_read_again` take any of Twisted's TLS
layers, client or server, so a session with TLS on both legs can decrypt
and encrypt each the same way.

The PROXY protocol reader (:mod:`pgtls.relay._haproxy`) uses Twisted's parsers,
which ``twisted.protocols.haproxy`` keeps private (it exports only
``proxyEndpoint``, a wrapper that would sit under every relayed message):
:class:`V1Parser`, :class:`V2Parser`, :class:`ProxyInfo` and
:class:`InvalidProxyHeader`, re-exported here under their own names.

Names used for every relayed message (``lib``, ``ffi``,
:func:`send_or_queue`, :func:`tls_ready`) are bound once, at import.
"""

from __future__ import annotations

import errno
import select
import sys
from collections.abc import Callable
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.protocols import tls as twisted_tls
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python import log
from zope.interface import directlyProvides

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "CREATOR_NAMES",
    "DIRECT",
    "IMPORT_ERROR",
    "NULL",
    "WANT_READ",
    "InvalidProxyHeader",
    "ProxyInfo",
    "V1Parser",
    "V2Parser",
    "close_reactor",
    "copied",
    "ffi",
    "has_tls_connection",
    "lib",
    "owned",
    "poll",
    "send_or_queue",
    "start_tls_on_socket",
    "tls_handles",
    "tls_read_again",
    "tls_ready",
]

# -- pyOpenSSL's binding -------------------------------------------------------

# Missing private modules leave the names None and say why; the self-test
# reports it, and nothing on the fast path runs.
IMPORT_ERROR: str | None = None
lib: Any = None
ffi: Any = None
_newtls: Any = None
try:
    from OpenSSL._util import ffi, lib
    from twisted.internet import _newtls
except ImportError as error:  # pragma: no cover - only a broken install
    IMPORT_ERROR = f"{type(error).__name__}: {error}"

NULL: Any = ffi.NULL if ffi is not None else None
WANT_READ: int = lib.SSL_ERROR_WANT_READ if lib is not None else -1

# The buffer :func:`tls_handles` moves a BIO's bytes through (at most one
# 64 KiB read's records wait there).
_MOVE = 2**17
_MOVE_BUFFER: Any = ffi.new("char[]", _MOVE) if ffi is not None else None


def has_tls_connection(tls: Any) -> bool:
    """Whether a Twisted TLS layer has its OpenSSL connection (it has once connected)."""
    return getattr(tls, "_tlsConnection", None) is not None


def tls_handles(tls: Any) -> tuple[Any, Any, Any]:
    """
    The OpenSSL objects under a Twisted TLS layer (client or server), for
    ``lib``'s calls: ``(SSL*, receive BIO, send BIO)``.

    The layer gets new, empty memory BIOs first, holding any bytes left in
    the old ones: a memory BIO keeps the largest buffer it ever held, and
    after the handshake that is the flights of both sides, about 4 KiB per
    session that an idle session would otherwise carry to its end.
    """
    connection = tls._tlsConnection
    ssl = connection._ssl
    into_ssl = _fresh_bio(connection._into_ssl)
    from_ssl = _fresh_bio(connection._from_ssl)
    # The SSL object owns its BIOs: this frees the old two.
    lib.SSL_set_bio(ssl, into_ssl, from_ssl)
    connection._into_ssl = into_ssl
    connection._from_ssl = from_ssl
    return ssl, into_ssl, from_ssl


def _fresh_bio(old: Any) -> Any:
    """A new memory BIO holding what is left in ``old`` (which stays as it was)."""
    bio = lib.BIO_new(lib.BIO_s_mem())
    if bio == NULL:
        raise MemoryError("BIO_new")
    while True:
        size = lib.BIO_read(old, _MOVE_BUFFER, _MOVE)
        if size <= 0:
            return bio
        lib.BIO_write(bio, _MOVE_BUFFER, size)


def tls_read_again(tls: Any) -> None:
    """
    Have the TLS layer read its receive BIO as it does after a socket read:
    it meets what OpenSSL reported (close_notify, a broken session) and ends
    the connection its own way.
    """
    tls._flushReceiveBIO()


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


# -- a socket transport's send queue -------------------------------------------


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
        queue(owned(data))
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        queue(owned(data))
        return
    if sent < len(data):  # type: ignore[arg-type]
        queue(bytes(memoryview(data)[sent:]))


def owned(data: Buffer) -> bytes:
    """``data`` itself when it is bytes (they never change), else a copy."""
    return data if isinstance(data, bytes) else bytes(data)


# -- Twisted's TLS layer, started on a socket transport --------------------------

# What Twisted calls its TLS factory's connection creator: _createConnection
# (a method) up to 25.5, _creatorCallable (an attribute) since.
CREATOR_NAMES = ("_creatorCallable", "_createConnection")


def _creator(factory: Any) -> Callable[[Any], Any]:
    """The factory's callable that makes a TLS layer's OpenSSL connection."""
    for name in CREATOR_NAMES:
        made = getattr(factory, name, None)
        if made is not None:
            return made  # type: ignore[no-any-return]
    raise AttributeError(
        f"TLSMemoryBIOFactory has none of {', '.join(CREATOR_NAMES)} (Twisted changed it)"
    )


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
    replacing the one before: a sixth of pgtls's Python per connection
    (README.rst, "Development", has the measurement).  Without them
    the layer's interfaces are looked up, through its ``__getattr__``, on
    the socket transport itself: all of them, ISSLTransport included,
    rather than the last one.
    """

    def makeConnection(self, transport: Any) -> None:
        # TLSMemoryBIOProtocol.makeConnection as startTLS calls it (the
        # application's protocol is connected already), less the loop.
        self._tlsConnection = self.factory.pgtls_create_connection(self)  # type: ignore[attr-defined]
        self._appSendBuffer = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._checkHandshakeStatus()

    def _flushSendBIO(self) -> None:
        # Twisted's reads the send BIO even when it is empty, for pyOpenSSL
        # to raise WantReadError: most of its seven calls a connection.
        if lib.BIO_get_mem_data(self._tlsConnection._from_ssl, NULL) > 0:
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
    # Found once, under whichever name this Twisted gives it.
    factory.pgtls_create_connection = _creator(factory)  # type: ignore[attr-defined]
    return factory


def start_tls_on_socket(transport: Any, creator: Any, clock: IReactorTime | None = None) -> None:
    """
    What ``twisted.internet._newtls.startTLS`` does for a server connection
    on a socket transport, with the TLS layer's records sent at once (see
    :class:`_SendAtOnce`), one layer factory for every connection, and no
    copy of the transport's interfaces (see :class:`_ServerTLSLayer`).

    :param creator: the server's IOpenSSLServerConnectionCreator.
    :param clock: the layer's clock; Twisted's own choice (the reactor) when None.
    """
    producer, streaming = transport.producer, transport.streamingProducer
    if producer is not None:
        transport.unregisterProducer()
    if clock is None:
        # Twisted's TLS factory asks this hook for its clock (the reactor).
        clock = twisted_tls._get_default_clock()
    factory = _tls_factory(creator, clock)
    tls = factory.protocol(factory, transport.protocol, False)
    transport.protocol = tls
    transport.getHandle = tls.getHandle
    transport.getPeerCertificate = tls.getPeerCertificate
    directlyProvides(transport, ISSLTransport)
    transport.TLS = True
    tls.makeConnection(_newtls._BypassTLS(_SendAtOnce, transport))
    if producer is not None:
        transport.registerProducer(producer, streaming)


# -- the epoll reactor ---------------------------------------------------------


# The attribute that opts a descriptor in (see pgtls.relay.reactor); on the
# transport rather than a set of file descriptors kept here, it lives and
# dies with the transport, so a descriptor number used again by a later
# connection never inherits it.
DIRECT = "_pgtlsDispatchDirectly"
_READABLE = getattr(select, "EPOLLIN", 1)


def poll(reactor: Any, timeout: float | None) -> None:
    """
    ``EPollReactor.doPoll``, dispatching a descriptor that has the attribute
    :data:`DIRECT` set without the legacy log context, and its plain read
    event straight to its ``doRead``.  A reactor class takes it as its
    ``doPoll`` method (``reactor`` is then ``self``).
    """
    if timeout is None:
        timeout = -1
    try:
        events = reactor._poller.poll(timeout, len(reactor._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = reactor._selectables
    dispatch = reactor._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        if not getattr(selectable, DIRECT, False):
            log.callWithLogger(selectable, dispatch, selectable, fd, event)
            continue
        try:
            if event == _READABLE:
                # The relay's common case: _doReadOrWrite's read
                # branch, without its checks for the cases this is not.
                try:
                    why = selectable.doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    reactor._disconnectSelectable(selectable, why, True)
            else:
                dispatch(selectable, fd, event)
        except Exception:
            # What the transport raises is caught above or by
            # _doReadOrWrite; this is what callWithLogger would
            # catch beyond it (an error while disconnecting).
            log.err(None, "directly dispatched socket event")


def close_reactor(reactor: Any) -> None:
    """
    Release what an epoll reactor that never ran holds (its waker and
    poller), after its descriptors were removed: the self-test's reactor.
    """
    reactor.removeAll()
    waker = getattr(reactor, "waker", None)
    if waker is not None:
        reactor.removeReader(waker)
        waker.connectionLost(None)
    reactor._poller.close()


def copied() -> dict[str, Any]:
    """
    The upstream functions whose bodies this module copies (changed), or
    whose behaviour an override here relies on, by their names under
    ``twisted.protocols`` or ``twisted.internet``.
    """
    from twisted.internet import epollreactor

    return {
        "tls.TLSMemoryBIOProtocol.makeConnection": TLSMemoryBIOProtocol.makeConnection,
        "tls.TLSMemoryBIOProtocol._flushSendBIO": TLSMemoryBIOProtocol._flushSendBIO,
        "_newtls.startTLS": getattr(_newtls, "startTLS", None),
        "epollreactor.EPollReactor.doPoll": epollreactor.EPollReactor.doPoll,
    }
