"""
The fast path's self-test, run once at start by ``twistd pgtls``
(:func:`pgtls.relay.fastpath.start` takes its answer).

A real TLS handshake over a socketpair on a reactor of its own, then records
relayed both ways through the pump, checked byte for byte: it proves the
private internals of Twisted and pyOpenSSL that the fast path uses
(:mod:`pgtls._internals`) before any client's session depends on them.  The
fast path's modules are imported inside :func:`self_test`, so that even an
import that fails is an answer, not a crash.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import main
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["self_test"]

# Records of several sizes each way: small ones (a query, its answer) and
# one larger than a TLS record, which the pump splits and OpenSSL joins.
_UP = (b"Q\x00\x00\x00\x0dselect 1\x00", bytes(range(256)) * 160)
_DOWN = (b"Z\x00\x00\x00\x05I", bytes(range(255, -1, -1)) * 170)
_TIMEOUT = 5.0


def self_test(timeout: float = _TIMEOUT) -> str | None:
    """
    Prove the fast path's internals on a real TLS socket pair: a handshake
    through :func:`pgtls._internals.start_tls_on_socket` (server side) and
    Twisted's own TLS (client side), on a reactor of its own, then
    :data:`_UP` relayed from the client to a plain upstream socket and
    :data:`_DOWN` back, through a :class:`pgtls.relay.pump.Pump` and
    :class:`pgtls.relay.reactor.RelayReactor`'s dispatch.

    :return: None when every byte arrived, in order, through the pump;
        else what failed, in one line.
    """
    from pgtls import _internals

    if _internals.IMPORT_ERROR is not None:
        return _internals.IMPORT_ERROR
    try:
        return _Trial(timeout).run()
    except _Failed as failed:
        return str(failed)
    except Exception as error:  # anything at all: the fast path is off
        return f"{type(error).__name__}: {error}"


class _Recorder(Protocol):
    """An application protocol keeping what it receives."""

    transport: Any

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = main.CONNECTION_DONE) -> None:  # type: ignore[assignment]
        self.lost = reason


@implementer(IHandshakeListener)
class _Door(_Recorder):
    """pgtls's side of the client connection: starts TLS as the front door does."""

    def __init__(self, creator: Any, clock: Any) -> None:
        super().__init__()
        self.creator = creator
        self.clock = clock
        self.handshake_done = False

    def connectionMade(self) -> None:
        from pgtls import _internals
        from pgtls.relay.reactor import dispatch_directly

        dispatch_directly(self.transport)
        _internals.start_tls_on_socket(self.transport, self.creator, self.clock)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class _Contexts:
    """Both sides' OpenSSL connections: a throwaway certificate, no verification."""

    def __init__(self) -> None:
        from OpenSSL import SSL

        from pgtls.tls import certs

        ca = certs.make_ca("pgtls self-test")
        server = certs.issue_server_cert(ca, ["localhost"])
        self.server = SSL.Context(SSL.TLS_METHOD)
        _use(self.server, server.cert, server.key)
        self.client = SSL.Context(SSL.TLS_METHOD)
        self._ssl = SSL

    def serverConnectionForTLS(self, tlsProtocol: object) -> Any:
        return self._ssl.Connection(self.server, None)

    def clientConnectionForTLS(self, tlsProtocol: object) -> Any:
        connection = self._ssl.Connection(self.client, None)
        connection.set_connect_state()
        return connection


def _use(context: Any, cert: Any, key: Any) -> None:
    """Give ``context`` a certificate and key, as this pyOpenSSL takes them."""
    from OpenSSL import crypto

    try:
        context.use_certificate(cert)
    except TypeError:  # pyOpenSSL before 24.3 takes its own X509 only
        context.use_certificate(crypto.X509.from_cryptography(cert))
    try:
        context.use_privatekey(key)
    except TypeError:  # pyOpenSSL before 24.3 takes its own PKey only
        context.use_privatekey(crypto.PKey.from_cryptography_key(key))


class _Failed(Exception):
    """What a transport raised during the self-test: its text is the failure."""

    def __str__(self) -> str:
        return str(self.args[0])


def _arrived(received: bytes, expected: bytes) -> bool:
    """All of ``expected`` came, or something else did: time to compare."""
    return len(received) >= len(expected) or not expected.startswith(received)


class _Counts:
    """The byte counts a pump keeps (FrontDoor and UpstreamProtocol keep them for real)."""

    def __init__(self) -> None:
        self.bytes_up = 0
        self.bytes_down = 0


class _Trial:
    """One run of the self-test; see :func:`self_test`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.protocols: list[Any] = []
        self.errors: list[str] = []

    def run(self) -> str | None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from pgtls import _internals
        from pgtls.relay.pump import Pump
        from pgtls.relay.reactor import RelayReactor

        self.reactor = reactor = RelayReactor()
        try:
            contexts = _Contexts()
            door = _Door(contexts, reactor)
            client = _Recorder()
            upstream = _Recorder()
            peer = _Recorder()
            client_tls = TLSMemoryBIOFactory(
                contexts, True, Factory.forProtocol(lambda: client), reactor
            )
            self.protocols = [door, client, upstream, peer]
            self._connect(Factory.forProtocol(lambda: door), client_tls)
            self._connect(Factory.forProtocol(lambda: upstream), Factory.forProtocol(lambda: peer))
            self._guard(
                door.transport, upstream.transport, client.transport.transport, peer.transport
            )
            self._until("the TLS handshake", lambda: door.handshake_done)
            counts = _Counts()
            pump = Pump(door.transport, door.transport.protocol, upstream.transport, counts, counts)
            if (door.transport.doRead, upstream.transport.doRead) != (
                pump.client_read,
                pump.upstream_read,
            ):
                return "the pump did not take the sockets' reads"
            self._guard(door.transport, upstream.transport)
            for data in _UP:
                client.transport.write(data)
            up = b"".join(_UP)
            self._until("the client's records at the upstream", lambda: _arrived(peer.received, up))
            for data in _DOWN:
                peer.transport.write(data)
            down = b"".join(_DOWN)
            self._until(
                "the upstream's bytes at the client", lambda: _arrived(client.received, down)
            )
            pump.stop()
            if peer.received != up:
                return "the client's records reached the upstream changed"
            if client.received != down:
                return "the upstream's bytes reached the client changed"
            relayed = (counts.bytes_up, counts.bytes_down)
            if door.received or upstream.received or relayed != (len(up), len(down)):
                return "the records did not go through the pump"
            return None
        finally:
            self._close()
            with contextlib.suppress(Exception):
                _internals.close_reactor(reactor)

    def _connect(self, ours: Any, theirs: Any) -> None:
        """A socketpair, each end a transport of the test's reactor."""
        pair = socket.socketpair()
        try:
            for end, factory in zip(pair, (ours, theirs), strict=True):
                # The reactor's transport takes a duplicate of the descriptor.
                self.reactor.adoptStreamConnection(end.fileno(), socket.AF_UNIX, factory)
        finally:
            for end in pair:
                end.close()

    def _guard(self, *transports: Any) -> None:
        """
        Catch what the transports' reads and writes raise, to report it as
        the failure; the reactor would log it as an unhandled error.
        """
        for transport in transports:
            for name in ("doRead", "doWrite"):
                setattr(transport, name, self._caught(getattr(transport, name)))

    def _caught(self, method: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            try:
                return method()
            except Exception as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                return main.CONNECTION_LOST

        return call

    def _until(self, what: str, done: Callable[[], bool]) -> None:
        """Run the test's reactor until ``done()``, or fail naming ``what``."""
        reactor = self.reactor
        while not done():
            if self.errors:
                raise _Failed(self.errors[0])
            for protocol in self.protocols:
                if protocol.lost is not None:
                    raise _Failed(f"a connection closed: {protocol.lost.getErrorMessage()}")
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"{what} did not arrive within {self.timeout:g}s")
            reactor.runUntilCurrent()
            reactor.doIteration(0.01)

    def _close(self) -> None:
        for protocol in self.protocols:
            transport = protocol.transport
            # The client's is Twisted's TLS layer; the socket is beneath it.
            transport = getattr(transport, "transport", None) or transport
            if transport is not None and transport.connected:
                # A half-made connection may fail to end: its socket closes all the same.
                with contextlib.suppress(Exception):
                    transport.connectionLost(Failure(main.CONNECTION_DONE))
                with contextlib.suppress(Exception):
                    transport.socket.close()
