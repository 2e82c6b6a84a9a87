"""
Unit tests for pgtls.relay.reactor: opted-in descriptors are dispatched
without the legacy log context, everything else as Twisted does, and
endings and errors are handled as Twisted handles them.

Each test polls a reactor of its own (never run, never installed) over a
socketpair.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error, main
from twisted.python import log
from twisted.python.failure import Failure

from pgtls.relay.reactor import RelayReactor, dispatch_directly, is_direct


class Reader:
    """A readable descriptor that records what the reactor does with it."""

    def __init__(self, sock: socket.socket, result: object = None) -> None:
        self.sock = sock
        self.result = result
        self.reads: list[bytes] = []
        self.writes = 0
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Reader"

    def doRead(self) -> object:
        if isinstance(self.result, Exception):
            raise self.result
        self.reads.append(self.sock.recv(100))
        return self.result

    def doWrite(self) -> object:
        self.writes += 1
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def reactor(pair: tuple[socket.socket, socket.socket]) -> Iterator[Any]:
    """A reactor of the test's own, dropped before the sockets close."""
    reactor = RelayReactor()
    yield reactor
    reactor.removeAll()
    reactor.removeReader(reactor.waker)
    reactor.waker.connectionLost(None)
    reactor._poller.close()


@pytest.fixture
def logged_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The selectables that went through log.callWithLogger."""
    calls: list[object] = []
    real = log.callWithLogger

    def recording(logger: object, func: Any, *args: Any, **kw: Any) -> Any:
        calls.append(logger)
        return real(logger, func, *args, **kw)

    monkeypatch.setattr(log, "callWithLogger", recording)
    return calls


@pytest.mark.parametrize("writing", [False, True])
def test_a_direct_descriptor_skips_the_log_context(
    reactor: Any,
    pair: tuple[socket.socket, socket.socket],
    logged_calls: list[object],
    writing: bool,
) -> None:
    """
    Readable only (straight to doRead) or readable and writable (Twisted's
    own _doReadOrWrite): no log context either way.
    """
    reader = Reader(pair[0])
    dispatch_directly(reader)
    reactor.addReader(reader)
    if writing:
        reactor.addWriter(reader)
    pair[1].send(b"query")
    reactor.doIteration(0)
    assert reader.reads == [b"query"]
    assert reader.writes == (1 if writing else 0)
    assert logged_calls == []


def test_a_direct_descriptor_whose_peer_hung_up_ends(
    reactor: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    reader = Reader(pair[0], result=None)
    dispatch_directly(reader)
    reactor.addReader(reader)
    pair[1].close()
    # EPOLLIN | EPOLLHUP: the read finds the end of the stream.
    reader.doRead = lambda: main.CONNECTION_DONE  # type: ignore[method-assign]
    reactor.doIteration(0)
    assert [f.type for f in reader.lost] == [error.ConnectionDone]


def test_other_descriptors_keep_twisted_dispatch(
    reactor: Any, pair: tuple[socket.socket, socket.socket], logged_calls: list[object]
) -> None:
    reader = Reader(pair[0])
    reactor.addReader(reader)
    pair[1].send(b"query")
    reactor.doIteration(0)
    assert reader.reads == [b"query"]
    assert logged_calls == [reader]


def test_opting_out_restores_twisted_dispatch(
    reactor: Any, pair: tuple[socket.socket, socket.socket], logged_calls: list[object]
) -> None:
    reader = Reader(pair[0])
    dispatch_directly(reader)
    assert is_direct(reader)
    dispatch_directly(reader, False)
    assert not is_direct(reader)
    reactor.addReader(reader)
    pair[1].send(b"x")
    reactor.doIteration(0)
    assert logged_calls == [reader]


def test_a_direct_descriptor_ends_as_twisted_ends_it(
    reactor: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    reader = Reader(pair[0], result=main.CONNECTION_DONE)
    dispatch_directly(reader)
    reactor.addReader(reader)
    pair[1].send(b"bye")
    reactor.doIteration(0)
    assert [f.type for f in reader.lost] == [error.ConnectionDone]
    assert reader not in reactor.getReaders()


def test_an_error_in_a_direct_descriptor_is_logged_and_ends_it(
    reactor: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    reader = Reader(pair[0], result=RuntimeError("broken"))
    dispatch_directly(reader)
    reactor.addReader(reader)
    pair[1].send(b"x")
    seen: list[dict[str, Any]] = []
    log.addObserver(seen.append)
    try:
        reactor.doIteration(0)
    finally:
        log.removeObserver(seen.append)
    assert [f.type for f in reader.lost] == [RuntimeError]
    assert any(e.get("isError") and "broken" in str(e.get("failure")) for e in seen)
    assert reader not in reactor.getReaders()


def test_an_event_for_a_removed_descriptor_is_skipped(
    reactor: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    c, d = socket.socketpair()
    try:
        # Both are readable in one poll; whichever is dispatched first
        # removes the other, whose event must then be dropped.
        readers = [Reader(pair[0]), Reader(c)]
        for me, other in (readers, readers[::-1]):
            dispatch_directly(me)

            def read_and_remove(me: Reader = me, other: Reader = other) -> object:
                reactor.removeReader(other)
                return Reader.doRead(me)

            me.doRead = read_and_remove  # type: ignore[method-assign]
            reactor.addReader(me)
        pair[1].send(b"a")
        d.send(b"b")
        reactor.doIteration(0)
        assert sorted(len(r.reads) for r in readers) == [0, 1]
    finally:
        c.close()
        d.close()


def _installed(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()


def test_install_makes_it_the_reactor_when_none_is_chosen() -> None:
    out = _installed(
        "from pgtls.relay import reactor as relay_reactor\n"
        "print(relay_reactor.install())\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    assert out.split() == ["True", "RelayReactor"]


def test_install_leaves_a_chosen_reactor_alone() -> None:
    out = _installed(
        "from twisted.internet import pollreactor\n"
        "pollreactor.install()\n"
        "from pgtls.relay import reactor as relay_reactor\n"
        "print(relay_reactor.install())\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    assert out.split() == ["False", "PollReactor"]
