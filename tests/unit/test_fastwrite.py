"""
Unit tests for pgtls.fastwrite: relayed bytes are sent at once when the
transport is idle, and otherwise take Twisted's own write path, in order.

The transports are Twisted's real socket transports over a socketpair, with
a MemoryReactorClock standing in for the reactor: a test sees which sockets
wait for the reactor (``reactor.writers``), calls ``doWrite``/``doRead`` as
the reactor would, and reads what reached the peer.  TLS is real too
(pyOpenSSL), the peer being a memory-BIO client driven by hand.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import main, tcp
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import tls as twisted_tls
from zope.interface import implementer

from pgtls import certs
from pgtls.fastwrite import relay_write

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


@pytest.fixture
def pair() -> Iterator[Pair]:
    made = Pair()
    yield made
    made.close()


@pytest.fixture
def small_pair() -> Iterator[Pair]:
    made = Pair(small=True)
    yield made
    made.close()


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


# -- plain transports -------------------------------------------------------


def test_idle_plain_transport_sends_at_once(pair: Pair) -> None:
    """With nothing queued, the bytes are on the socket before relay_write returns."""
    relay_write(pair.transport, b"SELECT 1")
    assert pair.peer_read() == b"SELECT 1"
    assert not pair.waiting()
    assert pair.transport._tempDataLen == 0


def test_queued_bytes_keep_their_place(pair: Pair) -> None:
    """Bytes already queued by write() go first; relayed bytes queue behind them."""
    pair.transport.write(b"first ")
    relay_write(pair.transport, b"second")
    assert pair.peer_read() == b""
    assert drain(pair) == b"first second"


def test_unsent_rest_is_queued_and_pauses_the_producer(small_pair: Pair) -> None:
    """
    What the socket does not take goes to Twisted's queue, in order, and a
    full queue pauses the registered producer as write() would.
    """
    producer = Producer()
    small_pair.transport.registerProducer(producer, True)
    data = bytes(range(256)) * 4096  # 1 MiB
    relay_write(small_pair.transport, data)
    assert small_pair.waiting()
    assert 0 < small_pair.transport._tempDataLen < len(data)
    assert producer.events == ["pause"]
    assert drain(small_pair) == data
    assert producer.events == ["pause", "resume"]


def test_closing_transport_takes_write(pair: Pair) -> None:
    """After loseConnection() the bytes take write(), sent before the close."""
    pair.transport.loseConnection()
    relay_write(pair.transport, b"last words")
    assert pair.peer_read() == b""
    assert pair.transport.doWrite() is main.CONNECTION_DONE


def test_socket_error_is_left_to_twisted(pair: Pair) -> None:
    """A send error queues the bytes; Twisted's own write then reports the lost connection."""
    pair.peer.close()
    relay_write(pair.transport, b"into the void")
    assert pair.waiting()
    assert pair.transport.doWrite() is main.CONNECTION_LOST


def test_unix_descriptors_in_flight_take_write(pair: Pair) -> None:
    """A UNIX transport with file descriptors queued sends nothing out of turn."""
    pair.transport._sendmsgQueue = [0]
    relay_write(pair.transport, b"after the descriptor")
    assert pair.peer_read() == b""
    assert pair.transport._tempDataLen == len(b"after the descriptor")


def test_other_transports_get_write() -> None:
    """A transport that is not a Twisted socket transport gets write()."""
    transport = StringTransport()
    relay_write(transport, b"abc")
    assert transport.value() == b"abc"


# -- TLS ----------------------------------------------------------------------


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
    """A Pair whose transport has started TLS as a server, and a memory-BIO client."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.transport = pair.transport
        self.transport.startTLS(server_options())
        self.tls: Any = self.transport.protocol
        context = SSL.Context(SSL.TLS_METHOD)
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()
        self.plaintext = b""
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


def test_tls_records_are_sent_at_once(tls_pair: TLSPair, clock: MemoryReactorClock) -> None:
    """After the handshake, relayed bytes are encrypted and on the socket at once."""
    relay_write(tls_pair.transport, b"DataRow")
    assert not tls_pair.pair.waiting()
    assert not clock.getDelayedCalls()
    assert tls_pair.receive() == b"DataRow"


def test_tls_never_sends_plaintext(tls_pair: TLSPair) -> None:
    """What reaches the socket of a TLS transport is records, not the bytes relayed."""
    secret = b"password 'alice-secret'" * 10
    relay_write(tls_pair.transport, secret)
    records = tls_pair.pair.peer_read()
    assert secret[:16] not in records
    assert records[:1] == b"\x17"  # TLS application_data record
    tls_pair.deliver(records)
    assert tls_pair.plaintext == secret


def test_tls_gathered_writes_keep_their_place(tls_pair: TLSPair, clock: MemoryReactorClock) -> None:
    """Bytes held back by Twisted's small-write gathering go first; relayed ones follow."""
    tls_pair.transport.write(b"first ")
    relay_write(tls_pair.transport, b"second")
    assert tls_pair.pair.peer_read() == b""
    clock.advance(0)
    assert tls_pair.receive() == b"first second"


def test_tls_big_write_is_chunked_into_records(small_pair: Pair, clock: MemoryReactorClock) -> None:
    """A write larger than a record and than the socket takes arrives whole and in order."""
    tls_pair = TLSPair(small_pair)
    producer = Producer()
    tls_pair.transport.registerProducer(producer, True)
    data = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB
    relay_write(tls_pair.transport, data)
    # The socket has records queued: the tail takes write(), behind them.
    relay_write(tls_pair.transport, b"tail")
    assert "pause" in producer.events
    clock.advance(0)
    drain(small_pair, deliver=tls_pair.deliver)
    assert tls_pair.plaintext == data + b"tail"


def test_tls_error_sends_what_was_encrypted_then_falls_back(
    tls_pair: TLSPair, clock: MemoryReactorClock
) -> None:
    """
    When OpenSSL refuses a record midway, the records made so far are sent
    and the rest takes the TLS transport's write(), in order.
    """
    connection = tls_pair.tls._tlsConnection
    real_send = connection.send
    calls = []

    def refuse_second(data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 2:
            raise SSL.WantReadError()
        sent: int = real_send(data)
        return sent

    connection.send = refuse_second
    data = bytes(range(256)) * 100  # 25,600 bytes: two records
    relay_write(tls_pair.transport, data)
    del connection.send
    assert calls == [16384, len(data) - 16384]
    assert tls_pair.receive() == data[:16384]
    clock.advance(0)
    assert tls_pair.receive() == data[16384:]


def test_tls_closing_takes_write(tls_pair: TLSPair) -> None:
    """After the TLS layer's loseConnection(), relayed bytes take write() (which drops them)."""
    tls_pair.transport.loseConnection()
    close_notify = drain(tls_pair.pair)
    relay_write(tls_pair.transport, b"too late")
    assert drain(tls_pair.pair) == b""
    tls_pair.client.bio_write(close_notify)
    with pytest.raises(SSL.ZeroReturnError):
        tls_pair.client.recv(1 << 16)


def test_tls_before_handshake_takes_write(pair: Pair, clock: MemoryReactorClock) -> None:
    """Before the handshake is done nothing is encrypted out of turn."""
    pair.transport.startTLS(server_options())
    relay_write(pair.transport, b"early")
    assert pair.peer_read() == b""
    assert pair.transport.protocol._aggregator._buffer == [b"early"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=8))
def test_tls_any_sizes_arrive_in_order(sizes: list[int]) -> None:
    """Any sequence of relayed writes, mixed with plain write()s, arrives whole and in order."""
    clock = MemoryReactorClock()
    saved = twisted_tls._get_default_clock
    twisted_tls._get_default_clock = lambda: clock
    pair = Pair(small=True)
    try:
        tls_pair = TLSPair(pair)
        expected = b""
        for index, size in enumerate(sizes):
            data = hashlib.sha256(str(index).encode()).digest() * (size // 32 + 1)
            data = data[:size]
            expected += data
            if index % 3 == 2:
                tls_pair.transport.write(data)
            else:
                relay_write(tls_pair.transport, data)
            tls_pair.deliver(pair.peer_read())
        clock.advance(0)
        drain(pair, deliver=tls_pair.deliver)
        assert hashlib.sha256(tls_pair.plaintext).digest() == hashlib.sha256(expected).digest()
    finally:
        twisted_tls._get_default_clock = saved
        pair.close()
