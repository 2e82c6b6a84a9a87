"""
Unit tests for pgtls.relay.upstream's upstream endpoint: a Unix socket upstream is
connected at once when it accepts at once, and through Twisted's
UNIXClientEndpoint otherwise.

The listening side is a real Unix socket; the reactor is a stand-in that
adopts the connected descriptor as Twisted's reactors do (it duplicates it).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorSocket, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from zope.interface import implementer

from pgtls.core.conninfo import parse_conninfo
from pgtls.relay.upstream import UNIXAtOnceEndpoint, upstream_endpoint


# Only adoptStreamConnection, all UNIXAtOnceEndpoint calls; declared so
# that relay.upstream_endpoint's providedBy check sees a socket reactor.
@implementer(IReactorSocket)
class AdoptingReactor:  # type: ignore[misc]
    """Adopts a connected socket as a reactor does: a duplicate, and the factory's protocol."""

    def __init__(self) -> None:
        self.adopted: list[socket.socket] = []

    def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
        adopted = socket.fromfd(fd, family, socket.SOCK_STREAM)
        self.adopted.append(adopted)
        factory.buildProtocol(UNIXAddress(adopted.getsockname()))

    def close(self) -> None:
        for adopted in self.adopted:
            adopted.close()


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """The fallback endpoint: records the factories it is asked to connect."""

    def __init__(self) -> None:
        self.factories: list[object] = []

    def connect(self, factory: object) -> defer.Deferred[Any]:
        self.factories.append(factory)
        return defer.Deferred()


@pytest.fixture
def reactor() -> Iterator[AdoptingReactor]:
    adopting = AdoptingReactor()
    yield adopting
    adopting.close()


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / ".s.PGSQL.5432")


def listening(path: str, backlog: int = 5) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(backlog)
    return server


def result(deferred: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_accepting_server_is_connected_at_once(reactor: AdoptingReactor, path: str) -> None:
    """The Deferred has fired with the factory's protocol, on the adopted connection."""
    fallback = RecordingEndpoint()
    with listening(path) as server:
        connected = UNIXAtOnceEndpoint(reactor, path, fallback).connect(
            Factory.forProtocol(Protocol)
        )
        protocol = result(connected)
        assert isinstance(protocol, Protocol)
        assert fallback.factories == []
        [adopted] = reactor.adopted
        accepted, _ = server.accept()
        with accepted:
            adopted.sendall(b"startup")
            assert accepted.recv(16) == b"startup"


def test_failed_adoption_fails_the_connect(path: str) -> None:
    """The reactor cannot take the socket (no descriptor left): a failed Deferred, not a raise."""

    @implementer(IReactorSocket)
    class Exhausted:  # type: ignore[misc]  # only what the endpoint calls
        def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

    fallback = RecordingEndpoint()
    with listening(path):
        failure = result(
            UNIXAtOnceEndpoint(Exhausted(), path, fallback).connect(Factory.forProtocol(Protocol))
        )
    assert isinstance(failure, Failure)
    assert failure.check(OSError)
    assert fallback.factories == []


def test_missing_server_goes_to_the_fallback(reactor: AdoptingReactor, path: str) -> None:
    """No socket file: Twisted's endpoint connects, and fails, its way."""
    fallback = RecordingEndpoint()
    factory = Factory.forProtocol(Protocol)
    UNIXAtOnceEndpoint(reactor, path, fallback).connect(factory)
    assert fallback.factories == [factory]
    assert reactor.adopted == []


def test_full_listen_queue_goes_to_the_fallback(reactor: AdoptingReactor, path: str) -> None:
    """A connect that would block (EAGAIN: the queue is full) is not waited for here."""
    fallback = RecordingEndpoint()
    factory = Factory.forProtocol(Protocol)
    queued: list[socket.socket] = []
    with listening(path, backlog=0):
        try:
            while len(queued) < 10:
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                queued.append(client)
                client.connect(path)
        except BlockingIOError:
            UNIXAtOnceEndpoint(reactor, path, fallback).connect(factory)
        finally:
            for client in queued:
                client.close()
    assert fallback.factories == [factory]
    assert reactor.adopted == []


def test_unix_upstream_gets_the_at_once_endpoint() -> None:
    upstream = parse_conninfo("host=/run/postgresql port=5433")
    endpoint = upstream_endpoint(AdoptingReactor(), upstream)
    assert isinstance(endpoint, UNIXAtOnceEndpoint)


def test_reactor_without_adoption_gets_twisteds_endpoint() -> None:
    upstream = parse_conninfo("host=/run/postgresql port=5433")
    assert isinstance(upstream_endpoint(object(), upstream), UNIXClientEndpoint)


# Twisted before 25.5's MemoryReactor has no name resolver, and HostnameEndpoint
# warns about it (the real reactor has one).
@pytest.mark.filterwarnings(
    "ignore:Passing HostnameEndpoint a reactor that does not provide:DeprecationWarning"
)
def test_tcp_upstream_gets_a_hostname_endpoint() -> None:
    upstream = parse_conninfo("host=127.0.0.1 port=5433")
    assert isinstance(upstream_endpoint(MemoryReactor(), upstream), HostnameEndpoint)
