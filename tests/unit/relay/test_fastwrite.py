"""
Unit tests for pgtls.relay.fastwrite: relayed bytes are sent at once when the
transport is idle, and otherwise take Twisted's own write path, in order;
so are the records of a TLS layer that start_tls started; a TLS layer is
bypassed only in its plain state.

The transports are Twisted's real socket transports over a socketpair
(tests/unit/socketpairs.py); TLS is real too.
"""

from __future__ import annotations

from typing import Any

import pytest
from OpenSSL import SSL
from socketpairs import Pair, Producer, TLSPair, drain, server_options
from twisted.internet import main
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import providedBy

from pgtls.relay.fastwrite import send_or_queue, start_tls, tls_ready


def send(transport: Any, data: bytes) -> None:
    """What the pump does with bytes for a transport: its write() is the queue."""
    send_or_queue(transport, data, transport.write)


# -- sending at once --------------------------------------------------------


def test_idle_plain_transport_sends_at_once(pair: Pair) -> None:
    """With nothing queued, the bytes are on the socket before send_or_queue returns."""
    send(pair.transport, b"SELECT 1")
    assert pair.peer_read() == b"SELECT 1"
    assert not pair.waiting()
    assert pair.transport._tempDataLen == 0


def test_queued_bytes_keep_their_place(pair: Pair) -> None:
    """Bytes already queued by write() go first; relayed bytes queue behind them."""
    pair.transport.write(b"first ")
    send(pair.transport, b"second")
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
    send(small_pair.transport, data)
    assert small_pair.waiting()
    assert 0 < small_pair.transport._tempDataLen < len(data)
    assert producer.events == ["pause"]
    assert drain(small_pair) == data
    assert producer.events == ["pause", "resume"]


def test_closing_transport_takes_write(pair: Pair) -> None:
    """After loseConnection() the bytes take write(), sent before the close."""
    pair.transport.loseConnection()
    send(pair.transport, b"last words")
    assert pair.peer_read() == b""
    assert pair.transport.doWrite() is main.CONNECTION_DONE


def test_socket_error_is_left_to_twisted(pair: Pair) -> None:
    """A send error queues the bytes; Twisted's own write then reports the lost connection."""
    pair.peer.close()
    send(pair.transport, b"into the void")
    assert pair.waiting()
    assert pair.transport.doWrite() is main.CONNECTION_LOST


def test_unix_descriptors_in_flight_take_write(pair: Pair) -> None:
    """A UNIX transport with file descriptors queued sends nothing out of turn."""
    pair.transport._sendmsgQueue = [0]
    send(pair.transport, b"after the descriptor")
    assert pair.peer_read() == b""
    assert pair.transport._tempDataLen == len(b"after the descriptor")


def test_other_transports_get_write() -> None:
    """A transport that is not a Twisted socket transport gets write()."""
    transport = StringTransport()
    send(transport, b"abc")
    assert transport.value() == b"abc"


def test_a_view_is_copied_before_it_is_queued(pair: Pair) -> None:
    """
    The pump's buffers are used again by the next read: what is queued is a
    copy, not a view of them.
    """
    buffer = bytearray(b"relayed bytes")
    pair.transport.write(b"queued ")
    send_or_queue(pair.transport, memoryview(buffer), pair.transport.write)
    buffer[:] = b"overwritten!!"
    assert drain(pair) == b"queued relayed bytes"


# -- the TLS layer's own records ---------------------------------------------


def test_handshake_flight_is_sent_at_once(pair: Pair, clock: MemoryReactorClock) -> None:
    """The server's answer to a ClientHello is on the socket when the read returns."""
    handshake = TLSPair(pair, handshake=False)
    handshake.client_hello()
    assert not pair.waiting()
    flight = pair.peer_read()
    assert flight[:1] == b"\x16"  # a handshake record
    handshake.deliver(flight)
    assert handshake.client.get_protocol_version_name() != "Unknown"


def test_handshake_flight_queues_behind_queued_bytes(pair: Pair, clock: MemoryReactorClock) -> None:
    """Bytes queued before TLS started (an ``S``) are sent before the server's flight."""
    pair.transport.write(b"S")
    handshake = TLSPair(pair, handshake=False)
    handshake.client_hello()
    assert pair.peer_read() == b""
    sent = drain(pair)
    assert sent[:2] == b"S\x16"


def test_tls_close_is_sent_at_once(tls_pair: TLSPair) -> None:
    """A close_notify needs no reactor turn either."""
    tls_pair.transport.loseConnection()
    assert not tls_pair.pair.waiting()
    tls_pair.client.bio_write(tls_pair.pair.peer_read())
    with pytest.raises(SSL.ZeroReturnError):
        tls_pair.client.recv(1)


def test_start_tls_marks_the_transport_as_startTLS_does(tls_pair: TLSPair) -> None:
    """The socket transport gains ISSLTransport and the handle of its TLS connection."""
    transport = tls_pair.transport
    assert transport.TLS
    assert transport.getHandle() is tls_pair.tls._tlsConnection
    assert ISSLTransport.providedBy(transport)
    assert ITCPTransport.providedBy(transport)


def test_tls_layer_declares_no_interfaces_of_its_own(tls_pair: TLSPair) -> None:
    """
    Twisted's layer would declare the socket transport's interfaces on
    itself, one at a time (a sixth of pgtls's Python per connection); this
    one finds them on the transport, all of them.
    """
    assert "__provides__" not in vars(tls_pair.tls)
    assert set(providedBy(tls_pair.tls)) == set(providedBy(tls_pair.transport))
    assert ISSLTransport.providedBy(tls_pair.tls)


def test_empty_send_bio_is_not_read(tls_pair: TLSPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushing an empty send BIO asks OpenSSL first, rather than read for an exception."""
    reads: list[int] = []
    connection = tls_pair.tls._tlsConnection
    original = connection.bio_read

    def recording_read(size: int) -> bytes:
        reads.append(size)
        data: bytes = original(size)
        return data

    monkeypatch.setattr(connection, "bio_read", recording_read)
    tls_pair.tls._flushSendBIO()
    assert reads == []
    tls_pair.transport.loseConnection()  # a close_notify waits in the BIO: it is read
    assert reads


def test_connections_share_one_tls_factory(clock: MemoryReactorClock) -> None:
    """Connections of one server share a TLS factory; each leaves it when it closes."""
    creator = server_options()
    pairs = [Pair(), Pair()]
    try:
        for pair in pairs:
            start_tls(pair.transport, creator)
        first, second = (pair.transport.protocol for pair in pairs)
        assert first.factory is second.factory
        assert set(first.factory.protocols) == {first, second}
        first.connectionLost(Failure(main.CONNECTION_DONE))
        assert set(first.factory.protocols) == {second}
    finally:
        for pair in pairs:
            pair.close()


def test_other_transports_start_tls_their_way() -> None:
    started: list[object] = []

    class Recording(StringTransport):
        def startTLS(self, context: object) -> None:
            started.append(context)

    context = object()
    start_tls(Recording(), context)
    assert started == [context]


# -- the TLS layer's state ----------------------------------------------------


def test_tls_ready_after_the_handshake(tls_pair: TLSPair) -> None:
    assert tls_ready(tls_pair.tls)


def test_tls_not_ready_before_the_handshake(pair: Pair, clock: MemoryReactorClock) -> None:
    start_tls(pair.transport, server_options())
    assert not tls_ready(pair.transport.protocol)


def test_tls_not_ready_while_gathering_writes(tls_pair: TLSPair) -> None:
    """Bytes held back by Twisted's small-write gathering must go first."""
    tls_pair.transport.write(b"held")
    assert not tls_ready(tls_pair.tls)


def test_tls_not_ready_while_closing(tls_pair: TLSPair) -> None:
    tls_pair.transport.loseConnection()
    assert not tls_ready(tls_pair.tls)


def test_tls_ready_only_for_twisted_tls() -> None:
    assert not tls_ready(StringTransport())
