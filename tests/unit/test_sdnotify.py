"""
Tests for pgtls.sdnotify: $NOTIFY_SOCKET addresses, the message format, and
datagrams received on a real AF_UNIX socket bound by the test.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgtls.sdnotify import Notifier, format_state, monotonic_usec, notify_address


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
