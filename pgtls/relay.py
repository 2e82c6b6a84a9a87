"""
The upstream leg: connecting to the upstream PostgreSQL server, the two-way
pump between a client and it, and forwarding cancel requests.

Flow control follows twisted.protocols.portforward: each transport is
registered as the streaming producer of the other, so a slow reader on one
side pauses reading on the other and neither side buffers without bound.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import (
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from pgtls.conninfo import Upstream

__all__ = [
    "QuietFactory",
    "UpstreamFactory",
    "UpstreamProtocol",
    "send_cancel",
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
        return UNIXClientEndpoint(reactor, upstream.unix_socket_path, timeout=timeout)
    return HostnameEndpoint(reactor, upstream.host.encode("idna"), upstream.port, timeout=timeout)


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

    def __init__(self) -> None:
        self.bytes_down = 0

    def connectionMade(self) -> None:
        set_nodelay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        # Reached only without a pump (see FrontDoor.upstream_connected).
        self.bytes_down += len(data)
        self.client.transport.write(data)

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


def send_cancel(
    endpoint: IStreamClientEndpoint, packet: bytes, clock: IReactorTime
) -> defer.Deferred[None]:
    """
    Forward a CancelRequest packet to the upstream and wait, a bounded time,
    for the upstream to close the connection (its only answer).

    The Deferred fires with None whatever happens: a cancel has no reply.
    """
    done: defer.Deferred[None] = defer.Deferred()
    forwarder = _CancelForwarder(packet, done)
    connecting = endpoint.connect(QuietFactory.forProtocol(lambda: forwarder))

    def give_up(failure: Failure) -> None:
        if not done.called:
            done.callback(None)

    connecting.addErrback(give_up)

    def on_timeout() -> None:
        if forwarder.transport is not None:
            forwarder.transport.abortConnection()
        connecting.cancel()

    timer = clock.callLater(CANCEL_TIMEOUT, on_timeout)

    def stop_timer(result: None) -> None:
        if timer.active():
            timer.cancel()

    done.addCallback(stop_timer)
    return done
