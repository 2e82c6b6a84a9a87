"""
Unit tests for pgtls.fastwrite: relayed bytes are sent at once when the
transport is idle, and otherwise take Twisted's own write path, in order.

The transports are Twisted's real socket transports over a socketpair
(tests/unit/socketpairs.py); TLS is real too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from socketpairs import Pair, Producer, TLSPair, drain, server_options
from twisted.internet import main
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import tls as twisted_tls

from pgtls.fastwrite import relay_write

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
