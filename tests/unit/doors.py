"""
A front door on Twisted's fakes, for the unit tests of the relay and of
what it feeds (counters, logs).

The client side is a StringTransport that records startTLS; the TLS layer
is simulated: the test calls ``handshakeCompleted()`` itself and then feeds
"decrypted" bytes to ``dataReceived``, and ``describe_tls`` returns the
TLSInfo the test chose.  The upstream is reached through a real
TCP4ClientEndpoint on a MemoryReactorClock: ``reactor.tcpClients[-1]`` gives
the factory, which the test connects to a StringTransport (or refuses).
Settings, rules and the TLS context are loaded from a real data directory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from pgtls.core import wire
from pgtls.core.hba import ClientCert
from pgtls.relay.frontdoor import FrontDoor, FrontDoorFactory
from pgtls.server.loader import load_server_config
from pgtls.tls import certs
from pgtls.tls.serverctx import TLSInfo

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
UPSTREAM_HOST = "10.98.76.54"
UPSTREAM_PORT = 6543
TLS13 = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, b"postgresql", None)
TRUST_ALL = ("host all all 0.0.0.0/0 trust",)
MITM_DETAIL = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)
ALICE = wire.startup_message({"user": "alice", "database": "app"})


HELLO = bytes([wire.TLS_HANDSHAKE_RECORD]) + b"\x03\x01\x00\x05hello"

CANCEL = wire.cancel_request(4242, -17)


# -- a data directory --------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: certs.Issued
    server: certs.Issued


def write_datadir(
    path: Path,
    pki: Pki,
    *,
    ssl: bool,
    client_ca: bool = False,
    hba: Sequence[str] = TRUST_ALL,
    settings: Sequence[str] = (),
) -> str:
    """A data directory with the server certificate, a CA if asked, and these rules."""
    path.mkdir(parents=True, exist_ok=True)
    certs.write_pem(str(path / "server.crt"), pki.server.cert)
    certs.write_key(str(path / "server.key"), pki.server.key)
    if client_ca:
        certs.write_pem(str(path / "root.crt"), pki.ca.cert)
    lines = [f"ssl = {'on' if ssl else 'off'}", *settings]
    (path / "postgresql.conf").write_text("\n".join(lines) + "\n")
    (path / "pg_hba.conf").write_text("\n".join(hba) + "\n")
    return str(path)


# -- fakes -------------------------------------------------------------------


class FakeTLSLayer:
    """
    Stands in for the TLS protocol that startTLS puts under the transport;
    its ``transport`` is the bypass to the TCP connection below TLS.
    """

    def __init__(self) -> None:
        self.received = b""
        self.transport = StringTransport()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ClientTransport(StringTransport):
    """
    A StringTransport that records startTLS and then looks like a TCP
    transport with TLS started: ``TLS`` is true and ``protocol`` is the TLS
    layer.  Its own loseConnection() stands for the TLS close (close_notify).
    """

    def __init__(self, peer: IPv4Address | IPv6Address) -> None:
        super().__init__(peerAddress=peer)
        self.tls_started: list[object] = []
        self.handle = object()
        # What the transport delivers to; startTLS puts the TLS layer here.
        self.protocol: Any = None

    def startTLS(self, context: object) -> None:
        self.tls_started.append(context)
        self.protocol = FakeTLSLayer()
        self.TLS = True

    def getHandle(self) -> object:
        return self.handle


@dataclass
class Conn:
    """One client connection to the front door."""

    protocol: FrontDoor
    transport: ClientTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def handshake(self) -> None:
        """The TLS layer reports a finished handshake."""
        self.protocol.handshakeCompleted()

    def answer(self) -> bytes:
        data: bytes = self.transport.value()
        return data

    def take(self) -> bytes:
        """What the client got since the last take()."""
        data: bytes = self.transport.value()
        self.transport.clear()
        return data

    def lost(self, reason: Exception | None = None) -> None:
        """The connection is gone (the reactor's connectionLost)."""
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))

    @property
    def socket_closed(self) -> bool:
        """The TCP connection is being closed (below TLS, if TLS was started)."""
        if self.transport.protocol is None:
            return bool(self.transport.disconnecting)
        return bool(self.transport.protocol.transport.disconnecting)

    @property
    def closed(self) -> bool:
        """The connection is being closed, by TLS or below it."""
        return bool(self.transport.disconnecting) or self.socket_closed


@dataclass
class Upstream:
    """The upstream end of one connection the front door opened."""

    protocol: IProtocol
    transport: StringTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lost(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@dataclass
class Door:
    """A FrontDoorFactory on a MemoryReactorClock, with its seams recorded."""

    reactor: MemoryReactorClock
    factory: FrontDoorFactory = field(init=False)
    tls_info: TLSInfo = TLS13
    described: list[object] = field(default_factory=list)
    lookups: list[tuple[IPAddress, defer.Deferred[str | None]]] = field(default_factory=list)

    def connect(self, peer: IPv4Address | IPv6Address = CLIENT) -> Conn:
        protocol = self.factory.buildProtocol(peer)
        transport = ClientTransport(peer)
        protocol.makeConnection(transport)
        return Conn(protocol, transport)

    def accept_upstream(self) -> Upstream:
        """Complete the last upstream connection attempt."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        address = IPv4Address("TCP", host, port)
        transport = StringTransport(peerAddress=address)
        protocol = factory.buildProtocol(address)
        assert protocol is not None
        protocol.makeConnection(transport)
        return Upstream(protocol, transport)

    def refuse_upstream(self) -> None:
        """Fail the last upstream connection attempt."""
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError("refused"))
        )

    def describe_tls(self, handle: object) -> TLSInfo:
        self.described.append(handle)
        return self.tls_info

    def resolve(self, address: IPAddress) -> defer.Deferred[str | None]:
        looking_up: defer.Deferred[str | None] = defer.Deferred()
        self.lookups.append((address, looking_up))
        return looking_up


def make_door(
    path: Path,
    pki: Pki,
    *,
    ssl: bool = True,
    client_ca: bool = False,
    hba: Sequence[str] = TRUST_ALL,
    settings: Sequence[str] = (),
) -> Door:
    datadir = write_datadir(
        path / "data", pki, ssl=ssl, client_ca=client_ca, hba=hba, settings=settings
    )
    config = load_server_config(datadir)
    reactor = MemoryReactorClock()
    door = Door(reactor)
    door.factory = FrontDoorFactory(
        config.settings,
        config.rules,
        config.tls,
        reactor,
        connect_upstream=lambda: TCP4ClientEndpoint(reactor, UPSTREAM_HOST, UPSTREAM_PORT),
        resolve_hostname=door.resolve,
        describe_tls=door.describe_tls,
    )
    return door


def fatal(data: bytes) -> dict[str, str]:
    """The fields of the one ErrorResponse in ``data``; it must be FATAL."""
    fields = wire.parse_error_response(data)
    assert fields["S"] == fields["V"] == "FATAL"
    return fields


def texts(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


def client_cert_tls(user: str, subject: str | None = None) -> TLSInfo:
    """A TLS 1.3 session whose client sent a verified certificate, CN ``user``."""
    cert = ClientCert(user, subject or f"CN={user}")
    return TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None, cert)


def tls_session(door: Door) -> Conn:
    """A client past SSLRequest, ``S`` and the handshake."""
    conn = door.connect()
    conn.send(wire.ssl_request())
    assert conn.take() == b"S"
    conn.handshake()
    return conn


def relayed_session(door: Door) -> tuple[Conn, Upstream]:
    """A TLS client admitted and relayed to a connected upstream."""
    conn = tls_session(door)
    conn.send(ALICE)
    upstream = door.accept_upstream()
    assert upstream.transport.value() == ALICE
    upstream.transport.clear()
    return conn, upstream


def summary_of(events: Sequence[LogEvent]) -> LogEvent:
    """The one session summary among ``events``."""
    (summary,) = [e for e in events if e["log_format"].startswith("session ")]
    return summary
