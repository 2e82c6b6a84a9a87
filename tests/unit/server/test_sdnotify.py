"""
Tests for pgtls.server.sdnotify: $NOTIFY_SOCKET addresses, the message format, and
datagrams received on a real AF_UNIX socket bound by the test, and the
NotifyService that tells systemd how the server is.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import (
    Received,
    Server,
    lose,
)

from pgtls.server.sdnotify import (
    Notifier,
    format_state,
    monotonic_usec,
    notify_address,
)
from pgtls.server.tap import ReloadService


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound to a path, as systemd's notify socket is."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def test_notify_address_forms() -> None:
    """A path is used as is, '@' is the abstract namespace; unset, empty or vsock: mean none."""
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@pgtls/notify") == b"\0pgtls/notify"
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("vsock:2:1234") is None


def test_format_state_keeps_the_order() -> None:
    """Assignments are NAME=VALUE lines in the order given; integers are written in decimal."""
    assert format_state({"READY": 1, "STATUS": "ready; 0 sessions"}) == (
        b"READY=1\nSTATUS=ready; 0 sessions"
    )


@pytest.mark.parametrize(
    ("name", "value"), [("STATUS", "a\nREADY=1"), ("A=B", "1"), ("", "1"), ("X\n", "1")]
)
def test_format_state_refuses_forged_assignments(name: str, value: str) -> None:
    """A newline (or an '=' in a name) would forge an assignment: ValueError."""
    with pytest.raises(ValueError, match="cannot notify"):
        format_state({name: value})


def test_notify_sends_one_datagram(listener: tuple[str, socket.socket]) -> None:
    """notify() sends its assignments as one datagram to the socket's path."""
    path, sock = listener
    notifier = Notifier(path)
    assert notifier.enabled
    assert notifier.notify(READY=1, STATUS="ready") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=ready"


def test_notify_abstract_namespace() -> None:
    """'@name' in $NOTIFY_SOCKET reaches a socket bound in the abstract namespace."""
    name = f"pgtls-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify(STOPPING=1) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_from_environment_without_notify_socket() -> None:
    """Without NOTIFY_SOCKET the notifier is disabled and sends nothing, successfully."""
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.notify(READY=1) is False


def test_notify_to_a_missing_socket_is_not_an_error(tmp_path: Path) -> None:
    """A socket that is gone (systemd restarted) makes notify() return False, not raise."""
    assert Notifier(str(tmp_path / "gone")).notify(READY=1) is False


def test_notify_validates_even_when_disabled() -> None:
    """A forged assignment is a bug whether or not systemd listens."""
    with pytest.raises(ValueError, match="cannot notify"):
        Notifier(None).notify(STATUS="two\nlines")


def test_monotonic_usec_is_clock_monotonic_in_microseconds() -> None:
    """MONOTONIC_USEC is CLOCK_MONOTONIC in whole microseconds."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert isinstance(value, int)
    assert before <= value <= after


# -- NotifyService -----------------------------------------------------------


def test_notify_ready_once_running_then_status_when_it_changes(
    datadir: Path, received: Received
) -> None:
    """
    READY=1 with a STATUS line is sent once the reactor runs (not at
    startService); then STATUS= again only when the session count changed.
    """
    server = Server(datadir, Notifier(received.path))
    server.notify.startService()
    assert received.messages() == []
    server.reactor.start_running()
    assert received.messages() == [
        {"READY": "1", "STATUS": "ready to accept connections; 0 sessions"}
    ]
    server.reactor.advance(1.0)
    assert received.messages() == []
    protocol, _client, _upstream = server.session()
    server.reactor.advance(1.0)
    assert received.messages() == [{"STATUS": "ready to accept connections; 1 session"}]
    lose(protocol)
    server.reactor.advance(1.0)
    assert received.messages() == [{"STATUS": "ready to accept connections; 0 sessions"}]
    server.notify.stopService()
    assert server.reactor.getDelayedCalls() == []


def test_notify_reload_and_stopping(datadir: Path, received: Received) -> None:
    """
    A reload sends RELOADING=1 with MONOTONIC_USEC, then READY=1; a shutdown
    STOPPING=1; after it, a reload no longer says READY=1.
    """
    server = Server(datadir, Notifier(received.path))
    reload = ReloadService(server.reactor, server.factory, {}, server.notify)
    server.start()
    received.messages()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reload.reload()
    reloading, ready = received.messages()
    assert reloading.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    assert ready == {"READY": "1", "STATUS": "ready to accept connections; 0 sessions"}
    server.shutdown.request("smart")
    assert received.messages() == [{"STOPPING": "1", "STATUS": "shutting down; 0 connections left"}]
    reload.reload()
    assert received.messages() == []


def test_reload_that_fails_still_says_ready(datadir: Path, received: Received) -> None:
    """A reload whose files do not parse changes nothing, and is still followed by READY=1."""
    server = Server(datadir, Notifier(received.path))
    reload = ReloadService(server.reactor, server.factory, {}, server.notify)
    server.start()
    received.messages()
    (datadir / "postgresql.conf").write_text("ssl = maybe\n")
    (datadir / "pg_hba.conf").write_text("host all\n")
    reload.reload()
    assert [sorted(m) for m in received.messages()] == [
        ["MONOTONIC_USEC", "RELOADING"],
        ["READY", "STATUS"],
    ]


def test_notify_without_notify_socket_does_nothing(datadir: Path) -> None:
    """Without NOTIFY_SOCKET: no when-running hook, no timer, and every call is a no-op."""
    server = Server(datadir)
    server.notify.startService()
    server.reactor.start_running()
    server.notify.reloading()
    server.notify.reloaded()
    server.notify.stopping()
    assert server.reactor.whenRunningHooks == []
    assert server.reactor.getDelayedCalls() == []
    assert server.notify.status is None
