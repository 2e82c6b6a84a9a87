"""
Tests for pgtls.server.shutdown: PostgreSQL's smart and fast shutdowns,
driven on a MemoryReactorClock.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import (
    ALICE,
    Server,
    fatal,
    lose,
    texts,
)
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from pgtls.core import wire

# -- ShutdownService ---------------------------------------------------------


@pytest.fixture
def shutdown_signals_restored() -> Iterator[None]:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("shutdown_signals_restored")
def test_shutdown_signal_handlers_go_in_once_the_reactor_runs(datadir: Path) -> None:
    """
    SIGTERM and SIGINT are taken over once the reactor runs (it installs its
    own when it starts); each hands its shutdown mode to the reactor thread.
    """
    server = Server(datadir)
    before = signal.getsignal(signal.SIGTERM)
    server.shutdown.startService()
    assert signal.getsignal(signal.SIGTERM) is before
    server.reactor.start_running()
    term, interrupt = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert callable(term) and callable(interrupt)
    term(signal.SIGTERM, None)
    interrupt(signal.SIGINT, None)
    assert server.reactor.from_thread == [
        (server.shutdown.request, ("smart",)),
        (server.shutdown.request, ("fast",)),
    ]


def test_smart_shutdown_without_connections_stops_at_once(datadir: Path) -> None:
    """SIGTERM with no connection: logged as PostgreSQL logs it, and the reactor stops."""
    server = Server(datadir)
    server.start()
    with capturedLogs() as events:
        server.shutdown.request("smart")
    assert texts(events) == ["received smart shutdown request"]
    assert server.reactor.stops == 1
    assert server.factory.shutting_down


def test_smart_shutdown_waits_for_the_session_and_refuses_new_ones(datadir: Path) -> None:
    """
    SIGTERM: the open session goes on relaying; a new client gets FATAL 57P03
    `the database system is shutting down` after its StartupMessage; the
    reactor stops when the session ends.
    """
    server = Server(datadir)
    server.start()
    protocol, client, upstream = server.session()
    with capturedLogs() as events:
        server.shutdown.request("smart")
    assert texts(events) == [
        "received smart shutdown request",
        "waiting for 1 connection(s) to end (at most 30s)",
    ]
    assert server.reactor.stops == 0
    protocol.dataReceived(b"Q\x00\x00\x00\x0dselect 1\x00")
    assert upstream.value().endswith(b"select 1\x00")
    late, late_client = server.connect()
    late.dataReceived(ALICE)
    assert fatal(late_client.value()) == ("57P03", "the database system is shutting down")
    assert late_client.disconnecting
    lose(late)
    assert server.reactor.stops == 0
    server.shutdown.request("smart")  # a second SIGTERM changes nothing
    assert server.reactor.stops == 0 and not client.disconnecting
    lose(protocol)
    assert server.reactor.stops == 1


def test_smart_shutdown_still_forwards_cancel_requests(datadir: Path) -> None:
    """During a smart shutdown a CancelRequest is forwarded, as PostgreSQL still takes them."""
    server = Server(datadir)
    server.start()
    server.session()
    server.shutdown.request("smart")
    canceller, _transport = server.connect()
    canceller.dataReceived(wire.cancel_request(1234, 5678))
    assert len(server.reactor.unixClients) == 2


def test_smart_shutdown_timeout_terminates_what_is_left(datadir: Path) -> None:
    """When pgtls.smart_shutdown_timeout expires, the open sessions get FATAL 57P01 and close."""
    (datadir / "postgresql.conf").write_text("ssl = on\npgtls.smart_shutdown_timeout = 10s\n")
    server = Server(datadir)
    server.start()
    protocol, client, upstream = server.session()
    server.shutdown.request("smart")
    server.reactor.advance(9.9)
    assert client.value() == b""
    with capturedLogs() as events:
        server.reactor.advance(0.1)
    assert texts(events) == [
        "pgtls.smart_shutdown_timeout expired with 1 connection(s) open: "
        "terminating them as in a fast shutdown"
    ]
    assert fatal(client.value()) == (
        "57P01",
        "terminating connection due to administrator command",
    )
    assert client.disconnecting and upstream.disconnecting
    lose(protocol)
    assert server.reactor.stops == 1


def test_smart_shutdown_timeout_zero_waits_without_limit(datadir: Path) -> None:
    """pgtls.smart_shutdown_timeout = 0: no limit, no timer."""
    (datadir / "postgresql.conf").write_text("ssl = on\npgtls.smart_shutdown_timeout = 0\n")
    server = Server(datadir)
    server.start()
    server.session()
    with capturedLogs() as events:
        server.shutdown.request("smart")
    assert texts(events)[-1] == "waiting for 1 connection(s) to end"
    assert server.reactor.getDelayedCalls() == []
    server.reactor.advance(3600)
    assert server.reactor.stops == 0


def test_fast_shutdown_terminates_every_session(datadir: Path) -> None:
    """
    SIGINT: logged as PostgreSQL logs it; each relayed session has its
    upstream leg closed (producers unregistered) and gets FATAL 57P01; a
    client still negotiating is closed without a message.
    """
    server = Server(datadir)
    server.start()
    protocol, client, upstream = server.session()
    upstream_protocol = protocol.upstream
    upstream_protocol.dataReceived(b"Z\x00\x00\x00\x05I")
    idle, idle_client = server.connect()
    with capturedLogs() as events:
        server.shutdown.request("fast")
    assert texts(events) == ["received fast shutdown request", "aborting any active transactions"]
    assert client.value().startswith(b"Z\x00\x00\x00\x05I")
    assert fatal(client.value()) == ("57P01", "terminating connection due to administrator command")
    assert client.producer is None and upstream.producer is None
    assert upstream.disconnecting and client.disconnecting
    assert idle_client.value() == b"" and idle_client.disconnecting
    lose(idle)
    assert server.reactor.stops == 0
    lose(protocol)
    upstream_protocol.connectionLost(Failure(ConnectionDone()))
    assert server.reactor.stops == 1


def test_fast_shutdown_aborts_connections_that_do_not_close(datadir: Path) -> None:
    """A client that does not let its connection close within the grace period is aborted."""
    server = Server(datadir, grace=2.0)
    server.start()
    protocol, client, _upstream = server.session()
    server.shutdown.request("fast")
    assert not client.disconnected
    with capturedLogs() as events:
        server.reactor.advance(2.0)
    assert texts(events) == ["1 connection(s) did not close within 2.0s: aborting them"]
    assert client.disconnected
    lose(protocol)
    assert server.reactor.stops == 1


def test_fast_request_during_a_smart_shutdown(datadir: Path) -> None:
    """SIGINT during a smart shutdown makes it fast; a SIGTERM after that changes nothing."""
    server = Server(datadir)
    server.start()
    protocol, client, _upstream = server.session()
    server.shutdown.request("smart")
    with capturedLogs() as events:
        server.shutdown.request("fast")
        server.shutdown.request("smart")
    assert texts(events) == ["received fast shutdown request", "aborting any active transactions"]
    assert fatal(client.value())[0] == "57P01"
    lose(protocol)
    assert server.reactor.stops == 1
    # The smart timer is gone with the fast shutdown; only the grace timer was left, cancelled.
    assert server.reactor.getDelayedCalls() == []


def test_stop_service_without_a_signal_is_a_fast_shutdown(datadir: Path) -> None:
    """
    The reactor stopped some other way: stopService ends the sessions as a
    fast shutdown would and returns a Deferred that fires once they are gone.
    """
    server = Server(datadir)
    server.start()
    protocol, client, _upstream = server.session()
    done = server.shutdown.stopService()
    assert fatal(client.value())[0] == "57P01"
    result: list[object] = []
    done.addCallback(result.append)
    assert result == []
    lose(protocol)
    assert result == [None]
    assert server.reactor.stops == 0  # the reactor is already stopping
    assert server.reactor.getDelayedCalls() == []


def test_stop_service_after_a_shutdown_has_nothing_to_wait_for(datadir: Path) -> None:
    """After our own shutdown stopped the reactor, stopService finds no connection left."""
    server = Server(datadir)
    server.start()
    server.shutdown.request("smart")
    result: list[object] = []
    server.shutdown.stopService().addCallback(result.append)
    assert result == [None]
    assert server.reactor.stops == 1
