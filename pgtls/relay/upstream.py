"""
The upstream leg: connecting to the upstream PostgreSQL server, the protocol
that relays its bytes to the client when no pump does (the pump, the relayed
session's fast path, is :mod:`pgtls.relay.pump`), and forwarding cancel requests.

Flow control follows twisted.protocols.portforward: :func:`splice` registers
each transport as the streaming producer of the other, so a slow reader on
one side pauses reading on the other and neither side buffers without bound.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from cryptography import x509
from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IProtocolFactory,
    IReactorSocket,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from pgtls.core.conninfo import Upstream

__all__ = [
    "QuietFactory",
    "UNIXAtOnceEndpoint",
    "UpstreamFactory",
    "UpstreamProtocol",
    "send_cancel",
    "send_cancel_on",
    "set_nodelay",
    "upstream_endpoint",
]

# A cancel is one 16-byte packet; the upstream answers by closing.  Past this
# the upstream is not answering and the client has waited long enough.
CANCEL_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0


class RelayPeer(TypingProtocol):
    """What the client side of a session offers the upstream leg."""

    transport: Any

    def upstream_lost(self, reason: Failure) -> None: ...


def set_nodelay(transport: object) -> None:
    """Small PostgreSQL messages must not wait for Nagle (2.5x connection rate)."""
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


def upstream_endpoint(reactor: object, upstream: Upstream) -> IStreamClientEndpoint:
    """The endpoint for ``upstream``: a Unix socket file or a TCP host."""
    from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

    timeout = upstream.connect_timeout or DEFAULT_CONNECT_TIMEOUT
    if upstream.is_unix:
        endpoint = UNIXClientEndpoint(reactor, upstream.unix_socket_path, timeout=timeout)
        if IReactorSocket.providedBy(reactor):
            return UNIXAtOnceEndpoint(reactor, upstream.unix_socket_path, endpoint)
        return endpoint
    return HostnameEndpoint(reactor, upstream.host.encode("idna"), upstream.port, timeout=timeout)


@implementer(IStreamClientEndpoint)
class UNIXAtOnceEndpoint:
    """
    A Unix socket endpoint that connects at once when the server accepts
    at once, as a local PostgreSQL does while its listen queue has room.

    Twisted's UNIX client connects a reactor turn later, through a
    connector and the endpoint's wrapping protocol; the session waits for
    that turn, and its Python costs a measurable share of a connection's
    work (README.rst, "Development").  This one connects a non-blocking socket itself and hands
    it to the reactor (``adoptStreamConnection``); when the connect would
    block or fails, ``fallback`` (the UNIXClientEndpoint) connects as
    always, and reports a failure its way.
    """

    def __init__(self, reactor: Any, path: str, fallback: IStreamClientEndpoint) -> None:
        self._reactor = reactor
        self._path = path
        self._fallback = fallback

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        ) as sock:
            try:
                sock.connect(self._path)
            except OSError:
                return self._fallback.connect(factory)
            built = _Built(factory)
            try:
                # The reactor's transport takes a duplicate of the descriptor.
                self._reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, built)
            except Exception:
                # Out of descriptors, say: a failed connect, as the endpoint's.
                return defer.fail()
        if built.protocol is None:
            return defer.fail(ConnectError(string="no protocol for the upstream connection"))
        return defer.succeed(built.protocol)


class _Built:
    """A factory's stand-in that keeps the protocol it builds."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory
        self.protocol: Any = None

    def buildProtocol(self, addr: IAddress) -> Any:
        self.protocol = self._factory.buildProtocol(addr)
        return self.protocol


class QuietFactory(Factory):
    """
    A factory of upstream connections: not ``noisy``, or every session
    would log ``Starting factory`` and ``Stopping factory``.
    """

    noisy = False


class UpstreamProtocol(Protocol):
    """
    The server side of a relayed session; bytes go to the client unchanged.

    It is built by the factory shared by every session and meets its client
    when the connect Deferred fires (the client sets ``client``), which is
    before the upstream can send a byte or close.
    """

    transport: Any
    client: RelayPeer
    #: Whether the leg is encrypted (TLS negotiated with the upstream); the
    #: StartupMessage and every relayed byte then go through transport.write.
    tls = False
    #: The upstream's certificate on a TLS leg (pgtls.relay.upstreamleg sets it).
    peer_certificate: x509.Certificate | None = None
    #: The leg sent the StartupMessage itself (to see whether the upstream
    #: refuses it, see pgtls.relay.upstreamleg), and read ``pending`` after it.
    startup_sent = False
    pending = b""
    #: Shown the upstream's bytes, once relayed, until it returns False
    #: (without a pump; the pump shows them itself).
    watch: Callable[[bytes], bool] | None = None

    def __init__(self) -> None:
        self.bytes_down = 0

    def connectionMade(self) -> None:
        set_nodelay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        # Reached only without a pump (see FrontDoor.upstream_connected).
        self.bytes_down += len(data)
        self.client.transport.write(data)
        if self.watch is not None and not self.watch(data):
            self.watch = None

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.client.upstream_lost(reason)


class UpstreamFactory(QuietFactory):
    """
    The factory of every session's upstream connection: one shared, not one
    per session, which an idle session would otherwise keep to its end.
    """

    protocol = UpstreamProtocol


def splice(client: Any, upstream: Any) -> None:
    """Make each transport the streaming producer of the other."""
    client.registerProducer(upstream, True)
    upstream.registerProducer(client, True)


class _CancelForwarder(Protocol):
    """Writes one CancelRequest and waits for the upstream to hang up."""

    transport: Any

    def __init__(self, packet: bytes, done: defer.Deferred[None]) -> None:
        self.packet = packet
        self.done = done

    def connectionMade(self) -> None:
        self.transport.write(self.packet)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if not self.done.called:
            self.done.callback(None)


class _CancelSink:
    """The client side of a cancel sent on an opened leg: it waits for the close."""

    class _Discard:
        def write(self, data: bytes) -> None:
            pass  # the upstream answers a cancel with nothing but its close

    transport = _Discard()

    def __init__(self, done: defer.Deferred[None]) -> None:
        self.done = done

    def upstream_lost(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback(None)


def send_cancel_on(
    opening: defer.Deferred[Any], packet: bytes, clock: IReactorTime
) -> defer.Deferred[None]:
    """
    Forward a CancelRequest on an upstream leg being opened (TLS negotiated
    as the sslmode says, see pgtls.relay.upstreamleg) and wait, a bounded time,
    for the upstream to close the connection.

    :param opening: fires with the UpstreamProtocol once the leg is ready.
    :return: fires with None whatever happens: a cancel has no reply.
    """
    done: defer.Deferred[None] = defer.Deferred()
    sink = _CancelSink(done)
    opened: list[Any] = []

    def ready(protocol: Any) -> None:
        opened.append(protocol)
        protocol.client = sink
        protocol.transport.write(packet)

    opening.addCallback(ready)
    return _bounded(done, opening, lambda: opened[0].transport if opened else None, clock)


def send_cancel(
    endpoint: IStreamClientEndpoint, packet: bytes, clock: IReactorTime
) -> defer.Deferred[None]:
    """
    Forward a CancelRequest packet to a plaintext upstream and wait, a
    bounded time, for the upstream to close the connection (its only answer).

    The Deferred fires with None whatever happens: a cancel has no reply.
    """
    done: defer.Deferred[None] = defer.Deferred()
    forwarder = _CancelForwarder(packet, done)
    connecting = endpoint.connect(QuietFactory.forProtocol(lambda: forwarder))
    return _bounded(done, connecting, lambda: forwarder.transport, clock)


def _bounded(
    done: defer.Deferred[None],
    connecting: defer.Deferred[Any],
    transport: Callable[[], Any],
    clock: IReactorTime,
) -> defer.Deferred[None]:
    """
    Bound a cancel's wait: ``done`` fires with None when the connection
    fails or after CANCEL_TIMEOUT, when the connection (``transport()``,
    None until connected) is aborted.
    """

    def give_up(failure: Failure) -> None:
        if not done.called:
            done.callback(None)

    connecting.addErrback(give_up)

    def on_timeout() -> None:
        connected = transport()
        if connected is not None:
            connected.abortConnection()
        connecting.cancel()

    timer = clock.callLater(CANCEL_TIMEOUT, on_timeout)

    def stop_timer(result: None) -> None:
        if timer.active():
            timer.cancel()

    done.addCallback(stop_timer)
    return done
