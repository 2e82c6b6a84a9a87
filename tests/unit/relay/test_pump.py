"""
Unit tests for pgtls.relay.pump: a relayed session's reads, decrypted or encrypted
and sent to the other side at once, in order, with Twisted's queues, flow
control and TLS endings left as they were.

The client is a Twisted TLS transport over a socketpair, the upstream a plain
one (tests/unit/socketpairs.py); the test calls ``doRead`` as the reactor
would when a socket is readable.
"""

from __future__ import annotations

import contextlib
import hashlib
import select
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from OpenSSL._util import lib
from socketpairs import Pair, Producer, TLSPair, drain, opened
from twisted.internet import main
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import tls as twisted_tls

from pgtls.relay import pump
from pgtls.relay.reactor import is_direct


class Counts:
    """The session's byte counts, as FrontDoor and UpstreamProtocol keep them."""

    def __init__(self) -> None:
        self.bytes_up = 0
        self.bytes_down = 0


class Session:
    """A TLS client transport and an upstream transport with a pump between them."""

    def __init__(self, client: TLSPair | Pair, upstream: Pair) -> None:
        self.client = client
        self.upstream = upstream
        self.counts = Counts()
        made = pump.start(client.transport, upstream.transport, self.counts, self.counts)
        assert made is not None
        self.pump = made

    @property
    def tls(self) -> TLSPair:
        assert isinstance(self.client, TLSPair)
        return self.client

    def client_sends(self, data: bytes) -> object:
        """The client encrypts ``data`` and its socket turns readable."""
        self.tls.client.sendall(data)
        self.tls.pair.peer.sendall(self.tls.client.bio_read(1 << 20))
        return self.tls.transport.doRead()

    def upstream_sends(self, data: bytes) -> object:
        self.upstream.peer.sendall(data)
        return self.upstream.transport.doRead()


@pytest.fixture
def upstream() -> Iterator[Pair]:
    """The upstream's end: a second pair beside the client's."""
    yield from opened()


@pytest.fixture
def session(tls_pair: TLSPair, upstream: Pair) -> Session:
    return Session(tls_pair, upstream)


# -- what the pump leans on ---------------------------------------------------


def test_pyopenssl_internals_are_there(tls_pair: TLSPair) -> None:
    """The binding calls and Connection attributes the pump uses (an upgrade may drop them)."""
    for name in ("SSL_read", "SSL_write", "SSL_get_error", "BIO_read", "BIO_write"):
        assert callable(getattr(lib, name))
    connection = tls_pair.tls._tlsConnection
    assert isinstance(connection, SSL.Connection)
    for name in ("_ssl", "_into_ssl", "_from_ssl"):
        assert getattr(connection, name) is not None
    assert callable(tls_pair.tls._flushReceiveBIO)


def test_start_declines_other_transports(upstream: Pair) -> None:
    """Not a socket transport on both sides: Twisted's path serves the session."""
    assert pump.start(object(), upstream.transport, Counts(), Counts()) is None
    assert pump.start(upstream.transport, object(), Counts(), Counts()) is None
    assert "doRead" not in upstream.transport.__dict__


def test_a_relayed_session_is_dispatched_directly(session: Session) -> None:
    """Both legs skip the relay reactor's per-event log context (pgtls.relay.reactor)."""
    assert is_direct(session.tls.transport)
    assert is_direct(session.upstream.transport)


def test_stop_gives_back_doread(session: Session) -> None:
    assert "doRead" in session.tls.transport.__dict__
    session.pump.stop()
    assert "doRead" not in session.tls.transport.__dict__
    assert "doRead" not in session.upstream.transport.__dict__
    assert not is_direct(session.tls.transport)
    assert not is_direct(session.upstream.transport)
    # Twisted's own path again: decrypted bytes reach the protocol on top.
    session.client_sends(b"after the pump")
    assert session.tls.pair.protocol.received == b"after the pump"
    assert session.upstream.peer_read() == b""


def test_start_renews_the_bios_keeping_their_bytes(tls_pair: TLSPair, upstream: Pair) -> None:
    """
    New BIOs (the handshake's grown buffers go), and what waited in the old
    ones comes out of the new: half a record from the client, a record for it.
    """
    connection = tls_pair.tls._tlsConnection
    old = (connection._into_ssl, connection._from_ssl)
    tls_pair.client.sendall(b"half now, half later")
    record = tls_pair.client.bio_read(1 << 16)
    connection.bio_write(record[:10])
    connection.send(b"waiting for the client")
    session = Session(tls_pair, upstream)
    assert (connection._into_ssl, connection._from_ssl) != old
    assert connection._into_ssl not in old and connection._from_ssl not in old
    tls_pair.pair.peer.sendall(record[10:])
    assert tls_pair.transport.doRead() is None
    assert upstream.peer_read() == b"half now, half later"
    session.upstream_sends(b" and more")
    assert tls_pair.receive() == b"waiting for the client and more"


# -- client to upstream -------------------------------------------------------


def test_client_bytes_reach_the_upstream_decrypted_at_once(session: Session) -> None:
    assert session.client_sends(b"Q\x00\x00\x00\x0dSELECT 1\x00") is None
    assert session.upstream.peer_read() == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert not session.upstream.waiting()
    assert session.counts.bytes_up == 14
    # The protocol on top (FrontDoor) is not involved.
    assert session.tls.pair.protocol.received == b""


def test_client_records_split_across_reads(session: Session) -> None:
    """A record that arrives in pieces is relayed once it is whole."""
    session.tls.client.sendall(b"x" * 1000)
    records = session.tls.client.bio_read(1 << 16)
    session.tls.pair.peer.sendall(records[:100])
    assert session.tls.transport.doRead() is None
    assert session.upstream.peer_read() == b""
    session.tls.pair.peer.sendall(records[100:])
    assert session.tls.transport.doRead() is None
    assert session.upstream.peer_read() == b"x" * 1000


def test_client_bytes_queue_behind_upstream_queue(session: Session) -> None:
    """Bytes already queued for the upstream go first."""
    session.upstream.transport.write(b"queued ")
    session.client_sends(b"then relayed")
    assert session.upstream.peer_read() == b""
    assert drain(session.upstream) == b"queued then relayed"


def test_client_close_notify_ends_tls_as_twisted_does(session: Session) -> None:
    """close_notify goes to the TLS layer, which answers it and ends the session."""
    session.tls.client.shutdown()
    session.tls.pair.peer.sendall(session.tls.client.bio_read(1 << 16))
    assert session.tls.transport.doRead() is None
    assert session.tls.tls._lostTLSConnection
    # The reactor writes the answer, then the socket closes.
    assert session.tls.transport.doWrite() is main.CONNECTION_DONE
    session.tls.client.bio_write(session.tls.pair.peer_read())
    with pytest.raises(SSL.ZeroReturnError):
        session.tls.client.recv(1 << 16)
    assert session.upstream.peer_read() == b""


def test_client_garbage_breaks_the_session_without_relaying(session: Session) -> None:
    """A forged record: nothing reaches the upstream and the TLS layer aborts."""
    session.tls.pair.peer.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    assert session.tls.transport.doRead() is None
    assert session.upstream.peer_read() == b""
    assert session.tls.tls._lostTLSConnection
    assert session.tls.transport.disconnecting or session.tls.transport.disconnected


def test_client_eof_is_connection_done(session: Session) -> None:
    session.tls.pair.peer.close()
    assert session.tls.transport.doRead() is main.CONNECTION_DONE


def test_client_nothing_to_read(session: Session) -> None:
    assert session.tls.transport.doRead() is None
    assert session.upstream.peer_read() == b""


def test_client_read_while_tls_closing_takes_twisted_path(session: Session) -> None:
    """Once the TLS layer is closing, reads are its own again."""
    session.tls.transport.loseConnection()
    session.client_sends(b"late")
    assert session.upstream.peer_read() == b""


def test_plain_session_both_ways(pair: Pair, upstream: Pair) -> None:
    """A session without TLS (an hba rule allowed it) is pumped too."""
    session = Session(pair, upstream)
    pair.peer.sendall(b"plain query")
    assert pair.transport.doRead() is None
    assert upstream.peer_read() == b"plain query"
    assert session.upstream_sends(b"plain answer") is None
    assert pair.peer_read() == b"plain answer"
    assert (session.counts.bytes_up, session.counts.bytes_down) == (11, 12)


# -- watching the upstream's first bytes ---------------------------------------


class Watcher:
    """Keeps what it is shown (copied) and wants ``reads`` reads in all."""

    def __init__(self, reads: int) -> None:
        self.reads = reads
        self.seen: list[bytes] = []

    def __call__(self, data: memoryview) -> bool:
        self.seen.append(bytes(data))
        return len(self.seen) < self.reads


def test_a_watcher_sees_what_was_relayed_until_it_has_enough(
    tls_pair: TLSPair, upstream: Pair
) -> None:
    """
    The watcher is shown each read of the upstream once it is relayed,
    unchanged; when it says it has enough, the plain upstream_read reads again.
    """
    counts = Counts()
    watcher = Watcher(reads=2)
    made = pump.start(tls_pair.transport, upstream.transport, counts, counts, watcher)
    assert made is not None
    assert upstream.transport.doRead == made.upstream_read_watched
    for data in (b"R\0\0\0\x08\0\0\0\0", b"Z\0\0\0\x05I", b"after"):
        upstream.peer.sendall(data)
        assert upstream.transport.doRead() is None
    assert watcher.seen == [b"R\0\0\0\x08\0\0\0\0", b"Z\0\0\0\x05I"]
    assert made.watch is None
    assert upstream.transport.doRead == made.upstream_read
    tls_pair.deliver(tls_pair.pair.peer_read())
    assert tls_pair.plaintext == b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05Iafter"
    assert counts.bytes_down == 9 + 6 + 5


def test_a_watcher_is_not_shown_an_empty_read(pair: Pair, upstream: Pair) -> None:
    """A read that finds nothing, or the upstream's EOF, shows the watcher nothing."""
    counts = Counts()
    watcher = Watcher(reads=5)
    pump.start(pair.transport, upstream.transport, counts, counts, watcher)
    assert upstream.transport.doRead() is None
    upstream.peer.shutdown(2)
    assert upstream.transport.doRead() is main.CONNECTION_DONE
    assert watcher.seen == []


# -- upstream to client -------------------------------------------------------


def test_upstream_bytes_reach_the_client_encrypted_at_once(
    session: Session, clock: MemoryReactorClock
) -> None:
    assert session.upstream_sends(b"DataRow") is None
    records = session.tls.pair.peer_read()
    assert records[:1] == b"\x17"
    assert b"DataRow" not in records
    assert not session.tls.pair.waiting()
    assert not clock.getDelayedCalls()
    session.tls.deliver(records)
    assert session.tls.plaintext == b"DataRow"
    assert session.counts.bytes_down == 7


def test_upstream_bytes_queue_behind_gathered_writes(
    session: Session, clock: MemoryReactorClock
) -> None:
    """Bytes held back by Twisted's small-write gathering (a FATAL, say) go first."""
    session.tls.transport.write(b"first ")
    session.upstream_sends(b"second")
    assert session.tls.pair.peer_read() == b""
    clock.advance(0)
    assert session.tls.receive() == b"first second"


def test_upstream_eof_is_connection_done(session: Session) -> None:
    session.upstream.peer.close()
    assert session.upstream.transport.doRead() is main.CONNECTION_DONE


def test_upstream_bytes_while_tls_closing_take_twisted_path(session: Session) -> None:
    """The TLS layer closing: its write() decides (it drops them)."""
    session.tls.transport.loseConnection()
    drain(session.tls.pair)
    session.upstream_sends(b"too late")
    assert drain(session.tls.pair) == b""


def test_upstream_bulk_fills_the_queue_and_pauses_the_producer(
    small_pair: Pair, upstream: Pair, clock: MemoryReactorClock
) -> None:
    """More than the client's socket takes: the rest queues in order and the upstream is paused."""
    tls = TLSPair(small_pair)
    session = Session(tls, upstream)
    producer = Producer()
    tls.transport.registerProducer(producer, True)
    data = hashlib.sha256(b"bulk").digest() * 8192  # 256 KiB: four reads at least
    push(upstream.peer, data, upstream.transport, lambda: None)
    assert "pause" in producer.events
    session.upstream_sends(b"tail")
    drain(small_pair, deliver=tls.deliver)
    assert tls.plaintext == data + b"tail"


def test_upstream_write_error_falls_back_after_sent_records(
    session: Session, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    OpenSSL refusing a record midway: the records made go first, the rest
    takes the TLS transport's write(), in order.
    """
    real = lib.SSL_write
    calls: list[int] = []

    class Binding:
        def __getattr__(self, name: str) -> Any:
            return getattr(lib, name)

        @staticmethod
        def SSL_write(ssl: Any, data: Any, size: int) -> int:
            calls.append(size)
            if len(calls) == 2:
                return -1
            written: int = real(ssl, data, size)
            return written

    monkeypatch.setattr(pump, "_lib", Binding())
    data = bytes(range(256)) * 100  # 25,600 bytes: two records
    session.upstream_sends(data)
    monkeypatch.undo()
    assert calls == [16384, len(data) - 16384]
    clock.advance(0)
    drain(session.tls.pair, deliver=session.tls.deliver)
    assert session.tls.plaintext == data


def readable(sock: Any) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def push(peer: Any, data: bytes, transport: Any, settle: Any) -> None:
    """
    Send ``data`` from a peer socket as fast as the kernel takes it, the
    transport reading as the reactor would, ``settle`` emptying the far side.
    """
    view = memoryview(data)
    while view:
        with contextlib.suppress(BlockingIOError):
            view = view[peer.send(view) :]
        while readable(transport.socket):
            assert transport.doRead() is None
        settle()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=70_000)),
        min_size=1,
        max_size=8,
    )
)
def test_any_sizes_both_ways_arrive_whole_and_in_order(steps: list[tuple[bool, int]]) -> None:
    """Any mix of reads on both sides, small kernel buffers, checksums at both ends."""
    clock = MemoryReactorClock()
    saved = twisted_tls._get_default_clock
    twisted_tls._get_default_clock = lambda: clock
    client, upstream = Pair(small=True), Pair(small=True)
    try:
        tls = TLSPair(client)
        session = Session(tls, upstream)
        sent_up = sent_down = got_up = b""

        def settle() -> None:
            nonlocal got_up
            got_up += drain(upstream)
            drain(client, deliver=tls.deliver)

        for index, (from_client, size) in enumerate(steps):
            data = (hashlib.sha256(str(index).encode()).digest() * (size // 32 + 1))[:size]
            if from_client:
                sent_up += data
                tls.client.sendall(data)
                push(client.peer, tls.client.bio_read(1 << 20), client.transport, settle)
            else:
                sent_down += data
                push(upstream.peer, data, upstream.transport, settle)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(sent_up).digest()
        assert hashlib.sha256(tls.plaintext).digest() == hashlib.sha256(sent_down).digest()
        assert (session.counts.bytes_up, session.counts.bytes_down) == (
            len(sent_up),
            len(sent_down),
        )
    finally:
        twisted_tls._get_default_clock = saved
        client.close()
        upstream.close()


# -- both legs on TLS (a TLS upstream leg) --------------------------------------


@pytest.fixture
def tls_upstream(clock: MemoryReactorClock) -> Iterator[TLSPair]:
    """The upstream's end on TLS too: the pump does not care which side began it."""
    for made in opened():
        yield TLSPair(made)


def test_both_legs_tls_are_pumped(tls_pair: TLSPair, tls_upstream: TLSPair) -> None:
    """
    Client and upstream on TLS: each read is decrypted from one session and
    encrypted into the other at once, in order, counted as plaintext.
    """
    counts = Counts()
    made = pump.start(tls_pair.transport, tls_upstream.transport, counts, counts)
    assert made is not None
    assert "doRead" in tls_upstream.transport.__dict__
    tls_pair.client.sendall(b"SELECT 1")
    tls_pair.pair.peer.sendall(tls_pair.client.bio_read(1 << 20))
    assert tls_pair.transport.doRead() is None
    assert tls_upstream.receive() == b"SELECT 1"
    answer = bytes(range(256)) * 300  # more than one record
    tls_upstream.client.sendall(answer)
    tls_upstream.pair.peer.sendall(tls_upstream.client.bio_read(1 << 20))
    got = b""
    for _ in range(10):
        # A read takes 64 KiB: the records of the answer take two.
        assert tls_upstream.transport.doRead() is None
        got += tls_pair.receive()
        if len(got) == len(answer):
            break
    assert got == answer
    assert (counts.bytes_up, counts.bytes_down) == (8, len(answer))
    made.stop()
    assert "doRead" not in tls_upstream.transport.__dict__


def test_a_watcher_on_a_tls_upstream_leg_sees_the_plaintext(
    tls_pair: TLSPair, tls_upstream: TLSPair
) -> None:
    """
    A TLS upstream leg: the watcher is shown what was decrypted and relayed,
    not the records; when it has enough, the plain upstream_read reads again.
    """
    counts = Counts()
    watcher = Watcher(reads=2)
    made = pump.start(tls_pair.transport, tls_upstream.transport, counts, counts, watcher)
    assert made is not None
    assert tls_upstream.transport.doRead == made.upstream_read_watched
    for data in (b"R\0\0\0\x08\0\0\0\0", b"Z\0\0\0\x05I", b"after"):
        tls_upstream.client.sendall(data)
        tls_upstream.pair.peer.sendall(tls_upstream.client.bio_read(1 << 20))
        assert tls_upstream.transport.doRead() is None
    assert watcher.seen == [b"R\0\0\0\x08\0\0\0\0", b"Z\0\0\0\x05I"]
    assert made.watch is None
    assert tls_upstream.transport.doRead == made.upstream_read
    assert tls_pair.receive() == b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05Iafter"
    assert counts.bytes_down == 9 + 6 + 5
