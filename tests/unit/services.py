"""
A ``twistd pgtls`` service on Twisted's fakes, for the unit tests of the
services: a data directory, a front door factory with its notify and
shutdown services on a MemoryReactorClock, and a datagram socket standing in
for systemd's NOTIFY_SOCKET.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from pgtls.core import wire
from pgtls.relay.frontdoor import FrontDoorFactory
from pgtls.server.loader import load_server_config
from pgtls.server.sdnotify import Notifier, NotifyService
from pgtls.server.shutdown import ShutdownService
from pgtls.tls import certs

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)


ALICE = wire.startup_message({"user": "alice", "database": "app"})


def write_datadir(
    path: Path,
    server: certs.Issued,
    *,
    conf: Sequence[str] = ("ssl = on",),
    hba: Sequence[str] = ("host all all 0.0.0.0/0 trust",),
) -> Path:
    """A data directory with a server certificate and these two files."""
    path.mkdir(parents=True, exist_ok=True)
    certs.write_pem(str(path / "server.crt"), server.cert)
    certs.write_key(str(path / "server.key"), server.key)
    (path / "postgresql.conf").write_text("\n".join(conf) + "\n")
    (path / "pg_hba.conf").write_text("\n".join(hba) + "\n")
    return path


def texts(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


class Received:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def messages(self) -> list[dict[str, str]]:
        """Every notification received since last asked, as dictionaries."""
        got: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return got
            got.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def close(self) -> None:
        self.sock.close()


class ServerReactor(MemoryReactorClock):
    """A MemoryReactorClock that runs its when-running hooks on demand and counts stop()."""

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0
        self.from_thread: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def start_running(self) -> None:
        self.running = True
        for hook, args, kwargs in self.whenRunningHooks:
            hook(*args, **kwargs)

    def stop(self) -> None:
        self.stops += 1

    def callFromThread(self, function: Callable[..., object], *args: object) -> None:
        self.from_thread.append((function, args))


class Server:
    """A factory from a data directory, its notify and shutdown services, and its clients."""

    def __init__(
        self, datadir: Path, notifier: Notifier | None = None, *, grace: float = 5.0
    ) -> None:
        config = load_server_config(str(datadir))
        self.reactor = ServerReactor()
        self.factory = FrontDoorFactory(config.settings, config.rules, config.tls, self.reactor)
        self.notify = NotifyService(self.reactor, self.factory, notifier or Notifier(None))
        self.shutdown = ShutdownService(self.reactor, self.factory, self.notify, grace=grace)

    def start(self) -> None:
        self.notify.startService()
        self.shutdown.startService()
        self.reactor.start_running()

    def connect(self) -> tuple[Any, StringTransport]:
        """A new plaintext client connection."""
        protocol = self.factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        return protocol, transport

    def session(self) -> tuple[Any, StringTransport, StringTransport]:
        """A client relayed to a fake upstream: its protocol, client and upstream transports."""
        protocol, client = self.connect()
        protocol.dataReceived(ALICE)
        _address, factory, _timeout, _check = self.reactor.unixClients[-1]
        upstream = StringTransport()
        factory.buildProtocol(None).makeConnection(upstream)
        assert upstream.value() == ALICE
        return protocol, client, upstream


def lose(protocol: Any) -> None:
    """The reactor reports the client connection closed."""
    protocol.connectionLost(Failure(ConnectionDone()))


def fatal(data: bytes) -> tuple[str, str]:
    """SQLSTATE and message of the one FATAL ErrorResponse that ``data`` ends with."""
    fields = wire.parse_error_response(data[data.rindex(b"E") :])
    assert fields["S"] == "FATAL"
    return fields["C"], fields["M"]
