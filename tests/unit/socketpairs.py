"""
Real Twisted socket transports for unit tests of the relay's write and read
paths: a transport on one end of a socketpair (the peer a plain socket), a
MemoryReactorClock standing in for the reactor, and TLS on top with a
memory-BIO client driven by hand.

A test sees which sockets wait for the reactor (``reactor.writers``), calls
``doWrite``/``doRead`` as the reactor would, and reads what reached the peer.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import tls as twisted_tls
from zope.interface import implementer

from pgtls.relay.fastwrite import start_tls
from pgtls.tls import certs

SMALL_BUFFER = 4096


class Sink(Protocol):
    """The protocol on top of a transport under test: keeps what it is sent."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Producer:
    """A streaming producer that records being paused and resumed."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class ServerConnection(tcp.Connection):
    """Twisted's socket transport, on the server side of a TLS handshake when it starts TLS."""

    _tlsClientDefault = False


class Pair:
    """A Twisted socket transport on one end of a socketpair, a plain socket on the other."""

    def __init__(self, *, small: bool = False) -> None:
        ours, theirs = socket.socketpair()
        if small:
            # Small kernel buffers, so a send takes only part of a big write.
            for end in (ours, theirs):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        theirs.setblocking(False)
        self.peer = theirs
        self.reactor = MemoryReactorClock()
        self.protocol = Sink()
        self.transport: Any = ServerConnection(ours, self.protocol, self.reactor)
        self.transport.connected = 1
        self.protocol.makeConnection(self.transport)

    def waiting(self) -> bool:
        """Whether the transport waits for the reactor to send queued bytes."""
        return self.transport in self.reactor.writers

    def peer_read(self) -> bytes:
        """All the peer can read now."""
        data = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 16)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.peer.close()
        self.transport.socket.close()


def opened(*, small: bool = False) -> Iterator[Pair]:
    """A fixture's body: a Pair, closed after the test."""
    made = Pair(small=small)
    yield made
    made.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    yield from opened()


@pytest.fixture
def small_pair() -> Iterator[Pair]:
    yield from opened(small=True)


def drain(pair: Pair, deliver: Any = None) -> bytes:
    """Let the reactor write the queue while the peer reads, until both are done."""
    got = b""
    for _ in range(100_000):
        chunk = pair.peer_read()
        got += chunk
        if deliver is not None and chunk:
            deliver(chunk)
        if pair.waiting():
            assert pair.transport.doWrite() is None
        elif not chunk:
            return got
    raise AssertionError("the queue never drained")


@implementer(IOpenSSLServerConnectionCreator)
class ServerOptions:
    """A TLS server's context: a throwaway CA's certificate for localhost."""

    def __init__(self) -> None:
        ca = certs.make_ca()
        server = certs.issue_server_cert(ca, ["localhost"])
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.use_certificate(server.cert)
        self.context.use_privatekey(server.key)

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


_OPTIONS: list[ServerOptions] = []


def server_options() -> ServerOptions:
    """Made once: key generation is the slow part (hypothesis shuns fixtures too)."""
    if not _OPTIONS:
        _OPTIONS.append(ServerOptions())
    return _OPTIONS[0]


class TLSPair:
    """
    A Pair whose transport has started TLS as a server, as pgtls starts it
    (pgtls.relay.fastwrite.start_tls), and a memory-BIO client; the handshake is
    done unless ``handshake`` is false (see :meth:`client_hello`).
    """

    def __init__(self, pair: Pair, *, handshake: bool = True) -> None:
        self.pair = pair
        self.transport = pair.transport
        start_tls(self.transport, server_options())
        self.tls: Any = self.transport.protocol
        context = SSL.Context(SSL.TLS_METHOD)
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()
        self.plaintext = b""
        if handshake:
            self._handshake()

    def _handshake(self) -> None:
        for _ in range(50):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            else:
                if self.tls._handshakeDone:
                    return
            self._client_to_server()
            self.deliver(drain(self.pair))
        raise AssertionError("no handshake")

    def client_hello(self) -> None:
        """The client's first flight, read by the server; nothing else is done."""
        with contextlib.suppress(SSL.WantReadError):
            self.client.do_handshake()
        self._client_to_server()

    def _client_to_server(self) -> None:
        try:
            self.pair.peer.sendall(self.client.bio_read(1 << 16))
        except SSL.WantReadError:
            return
        # The client's flights are small: one read takes each whole.
        assert self.transport.doRead() is None

    def deliver(self, records: bytes) -> None:
        """Feed bytes from the server to the client and decrypt what it can."""
        if not records:
            return
        self.client.bio_write(records)
        while True:
            try:
                self.plaintext += self.client.recv(1 << 16)
            except SSL.WantReadError:
                return

    def receive(self) -> bytes:
        """Everything the client can decrypt now, after the reactor wrote the queue."""
        self.deliver(drain(self.pair, deliver=None))
        got, self.plaintext = self.plaintext, b""
        return got


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> MemoryReactorClock:
    """The clock of the TLS layer's small-write gathering (it asks Twisted's hook)."""
    clock = MemoryReactorClock()
    monkeypatch.setattr(twisted_tls, "_get_default_clock", lambda: clock)
    return clock


@pytest.fixture
def tls_pair(pair: Pair, clock: MemoryReactorClock) -> TLSPair:
    return TLSPair(pair)
