"""
Tests for pgtls.server.listening: the ports systemd or a previous process
passed (socket activation).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from services import (
    texts,
)
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs

from pgtls.core.conf import Settings
from pgtls.relay.frontdoor import FrontDoorFactory
from pgtls.server.listening import ListenService, inherited_descriptions
from pgtls.server.loader import StartupError

# -- socket activation -------------------------------------------------------


def listening_socket(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.listen()
    return sock


PassSockets = Callable[..., dict[str, str]]


@pytest.fixture
def passed_sockets(monkeypatch: pytest.MonkeyPatch) -> PassSockets:
    """
    Make sockets look passed by systemd: the environment the process started
    with (returned, for inherited_descriptions), and what Twisted's systemd
    endpoint holds, read from LISTEN_FDS when it was imported.
    """
    from twisted.internet.endpoints import _SystemdParser
    from twisted.python.systemd import ListenFDs

    def pass_sockets(*socks: socket.socket | int, names: Sequence[str]) -> dict[str, str]:
        fds = [s if isinstance(s, int) else s.fileno() for s in socks]
        held = ListenFDs(fds, list(names)) if names else ListenFDs([], ())
        monkeypatch.setattr(_SystemdParser, "_sddaemon", held)
        environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(len(fds))}
        if names:
            environ["LISTEN_FDNAMES"] = ":".join(names)
        return environ

    return pass_sockets


def test_no_passed_sockets() -> None:
    """Without LISTEN_PID and LISTEN_FDS nothing was passed: bind listen_addresses as usual."""
    assert inherited_descriptions(MemoryReactor(), {"PATH": "/usr/bin"}) == []


def test_passed_sockets_meant_for_another_process(passed_sockets: PassSockets) -> None:
    """LISTEN_PID is not ours (inherited from a parent): none are ours."""
    with listening_socket() as v4:
        environ = passed_sockets(v4, names=["pgtls"])
        environ["LISTEN_PID"] = str(os.getpid() + 1)
        assert inherited_descriptions(MemoryReactor(), environ) == []


def test_unnamed_passed_sockets_are_adopted(passed_sockets: PassSockets) -> None:
    """
    Sockets passed without LISTEN_FDNAMES (systemd-socket-activate without
    --fdname), which Twisted's systemd endpoint drops, are adopted by
    descriptor, from the first one on, each with its family.
    """
    with listening_socket() as v4, listening_socket(socket.AF_INET6) as v6:
        first = 900  # two descriptors in a row, as systemd passes them from 3
        os.dup2(v4.fileno(), first)
        os.dup2(v6.fileno(), first + 1)
        try:
            environ = passed_sockets(first, first + 1, names=[])
            reactor = MemoryReactor()
            inherited = inherited_descriptions(reactor, environ, start=first)
            assert [type(e) for e in inherited] == [AdoptedStreamServerEndpoint] * 2
            assert [(e.fileno, e.addressFamily) for e in inherited] == [  # type: ignore[union-attr]
                (first, socket.AF_INET),
                (first + 1, socket.AF_INET6),
            ]
        finally:
            os.close(first)
            os.close(first + 1)


def test_unnamed_passed_socket_of_another_kind_is_a_startup_error(
    passed_sockets: PassSockets,
) -> None:
    """An unnamed passed socket is checked as a named one is: a StartupError naming it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        environ = passed_sockets(udp, names=[])
        with pytest.raises(
            StartupError, match=r"socket 0 passed by systemd \(unnamed\) is not a TCP socket"
        ):
            inherited_descriptions(MemoryReactor(), environ, start=udp.fileno())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"LISTEN_FDS": "two"}, 'LISTEN_FDS "two" is not a number of sockets'),
        (
            {"LISTEN_FDNAMES": "pgtls:other"},
            r"systemd passed 1 socket\(s\) \(LISTEN_FDS\) but named 2 \(LISTEN_FDNAMES\)",
        ),
    ],
)
def test_inconsistent_listen_variables_are_a_startup_error(
    passed_sockets: PassSockets, changes: dict[str, str], message: str
) -> None:
    """LISTEN_FDS and LISTEN_FDNAMES that do not agree stop the start; never ignored."""
    with listening_socket() as v4:
        environ = passed_sockets(v4, names=["pgtls"]) | changes
        with pytest.raises(StartupError, match=message):
            inherited_descriptions(MemoryReactor(), environ)


def test_passed_sockets_keep_their_family(passed_sockets: PassSockets) -> None:
    """Each passed socket becomes a systemd: endpoint with its own family, in systemd's order."""
    with listening_socket() as v4, listening_socket(socket.AF_INET6) as v6:
        environ = passed_sockets(v4, v6, names=["pgtls", "pgtls"])
        assert inherited_descriptions(MemoryReactor(), environ) == [
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:index=1",
        ]
        # The descriptors stay open for the listening service.
        assert v4.getsockname()[1] > 0 and v6.getsockname()[1] > 0


def test_passed_udp_socket_is_a_startup_error(passed_sockets: PassSockets) -> None:
    """A datagram socket (ListenDatagram=) cannot serve PostgreSQL: a StartupError naming it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        environ = passed_sockets(udp, names=["pgtls"])
        with pytest.raises(StartupError, match=r'socket 0 \("pgtls"\) .* is not a TCP socket'):
            inherited_descriptions(MemoryReactor(), environ)


def test_passed_unix_socket_is_a_startup_error(passed_sockets: PassSockets, tmp_path: Path) -> None:
    """A Unix stream socket (ListenStream=/path) is refused: pg_hba.conf here has no local lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(tmp_path / "s"))
        unix.listen()
        environ = passed_sockets(unix, names=["pgtls"])
        with pytest.raises(StartupError, match="is not a TCP socket"):
            inherited_descriptions(MemoryReactor(), environ)


def test_passed_connected_socket_is_a_startup_error(passed_sockets: PassSockets) -> None:
    """A socket that does not listen (a unit with Accept=yes) is refused with the fix."""
    with socket.socket() as unbound:
        environ = passed_sockets(unbound, names=["pgtls"])
        with pytest.raises(
            StartupError, match=r"is not listening \(the socket unit needs Accept=no\)"
        ):
            inherited_descriptions(MemoryReactor(), environ)


@pytest.mark.parametrize("names", [["pgtls", "pgtls"], []], ids=["named", "unnamed"])
def test_listen_service_adopts_passed_sockets(
    tmp_path: Path, passed_sockets: PassSockets, names: list[str]
) -> None:
    """With passed sockets, each is adopted with its family and listen_addresses is not bound."""
    # Two descriptors in a row (unnamed sockets are found by number), left
    # open: the endpoint closes each one once it is adopted.
    first = 900
    fds = [first, first + 1]
    for fd, family in zip(fds, (socket.AF_INET, socket.AF_INET6), strict=True):
        with listening_socket(family) as sock:
            os.dup2(sock.fileno(), fd)
    environ = passed_sockets(*fds, names=names)
    reactor = MemoryReactor()
    settings = Settings(data_directory=str(tmp_path), listen_addresses="127.0.0.1", port=5432)
    factory = FrontDoorFactory(settings, None, None, reactor)  # type: ignore[arg-type]
    inherited = inherited_descriptions(reactor, environ, start=first)
    service = ListenService(reactor, factory, inherited)
    with capturedLogs() as events:
        service.privilegedStartService()
    assert reactor.adoptedPorts == [
        (fds[0], socket.AF_INET, factory),
        (fds[1], socket.AF_INET6, factory),
    ]
    assert reactor.tcpServers == []
    assert len(service.ports) == 2
    assert texts(events)[0] == (
        "using the 2 socket(s) passed by systemd; listen_addresses and port are not used"
    )
