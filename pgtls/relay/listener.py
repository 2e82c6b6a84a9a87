"""
The listening side of the relay, shared by every client connection: the
settings, rules and TLS in force, the session count and the live
connections (what a shutdown waits for), the way to the upstream, and the
verdict on the upstream's certificate for SCRAM channel binding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cryptography import x509
from twisted.internet import defer, threads
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from pgtls.core import hba
from pgtls.core.conf import Settings
from pgtls.core.conninfo import Upstream
from pgtls.core.hba.decisions import IPAddress
from pgtls.relay.counters import Metrics
from pgtls.relay.upstream import UpstreamFactory, upstream_endpoint
from pgtls.relay.upstreamleg import open_upstream
from pgtls.tls import channelbinding
from pgtls.tls.serverctx import ServerTLS, TLSInfo, describe_connection
from pgtls.tls.upstreamctx import UpstreamTLS

__all__ = ["Listener"]

#: A client connection (pgtls.relay.frontdoor.FrontDoor).
Door = TypeVar("Door")


class Listener(Generic[Door]):
    """
    What every client connection of the listening side shares: the
    settings, rules and TLS context in force, the session count and the live
    connections, how to reach the upstream, and the metrics.  A reload
    replaces ``settings`` and ``rules``; connections read them when they
    need them, so a new rule applies to every connection not yet admitted.

    pgtls.relay.frontdoor.FrontDoorFactory is this and the factory of its
    connections (``Door``).
    """

    # A descriptor: its namespace is that of the class it is read through,
    # pgtls.relay.frontdoor.FrontDoorFactory, which log filters name.
    log = Logger()

    def __init__(
        self,
        settings: Settings,
        rules: hba.Rules,
        tls: ServerTLS | None,
        reactor: Any,
        *,
        connect_upstream: Callable[[], IStreamClientEndpoint] | None = None,
        resolve_hostname: Callable[[IPAddress], defer.Deferred[str | None]] | None = None,
        describe_tls: Callable[[Any], TLSInfo] = describe_connection,
        metrics: Metrics | None = None,
        upstream_tls: UpstreamTLS | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.tls = tls
        self.reactor = reactor
        self.sessions = 0
        # Every live client connection, whatever its phase: what a shutdown
        # ends or waits for.
        self.connections: set[Door] = set()
        # Set by a shutdown: new sessions are refused as PostgreSQL refuses them.
        self.shutting_down = False
        self._idle_waiters: list[defer.Deferred[None]] = []
        self._connect_upstream = connect_upstream
        self.upstream_factory = UpstreamFactory()
        self._endpoint: tuple[Upstream, IStreamClientEndpoint] | None = None
        self._resolve_hostname = resolve_hostname
        # Tests with fake transports have no OpenSSL connection to describe.
        self.describe_tls = describe_tls
        # None when pgtls.metrics_listen is off: no metrics work at all.
        self.metrics = metrics
        # The upstream leg's TLS client context; None when it never uses TLS.
        self.upstream_tls = upstream_tls
        # The upstream certificate last judged for channel binding.
        self._upstream_certificate: x509.Certificate | None = None

    # -- what pgtls.core.session.Session reads when it decides (its Gate) ---------

    @property
    def max_connections(self) -> int:
        """The most sessions relayed at once (the settings in force)."""
        return self.settings.max_connections

    @property
    def tls_offered(self) -> bool:
        """Whether clients may use TLS (SSLRequest answered S, direct TLS)."""
        return self.tls is not None

    @property
    def require_client_cert(self) -> bool:
        """Whether a TLS client must present a certificate."""
        return self.tls is not None and self.tls.require_client_cert

    def upstream_certificate_seen(self, cert: x509.Certificate) -> None:
        """
        The upstream presented ``cert`` in a TLS handshake: say once, for
        each new one, whether SCRAM channel binding can pass through pgtls
        (see pgtls.tls.channelbinding).  Called by the upstream leg after each
        handshake; a repeat costs one comparison of DER bytes.
        """
        if cert == self._upstream_certificate:
            return
        self._upstream_certificate = cert
        ours = self.tls.certificate if self.tls is not None else None
        if ours is None:
            return  # no TLS for clients: none of them can bind
        verdict = channelbinding.verdict(ours, cert)
        if verdict.warning:
            self.log.warn("channel binding: {verdict}", verdict=verdict.text)
        else:
            self.log.info("channel binding: {verdict}", verdict=verdict.text)

    def upstream_endpoint(self) -> IStreamClientEndpoint:
        """
        The endpoint of the upstream server in the settings in force, one for
        every session: each connection would otherwise keep its own copy of
        the address.
        """
        if self._connect_upstream is not None:
            return self._connect_upstream()
        upstream = self.settings.upstream
        if self._endpoint is None or self._endpoint[0] != upstream:
            self._endpoint = (upstream, upstream_endpoint(self.reactor, upstream))
        return self._endpoint[1]

    def open_upstream(self, startup: bytes | None = None) -> defer.Deferred[Any]:
        """
        Open a leg to the upstream, TLS negotiated as pgtls.upstream's sslmode
        says (see pgtls.relay.upstreamleg); it fires with the UpstreamProtocol, ready
        for the client's StartupMessage.
        """
        return open_upstream(
            self.upstream_endpoint(),
            self.upstream_factory,
            self.settings.upstream,
            self.upstream_tls,
            self.reactor,
            startup,
        )

    def resolve_hostname(self, address: IPAddress) -> defer.Deferred[str | None]:
        """The client's verified host name, looked up off the reactor thread."""
        if self._resolve_hostname is not None:
            return self._resolve_hostname(address)
        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), hba.resolve_client_hostname, address
        )

    def when_idle(self) -> defer.Deferred[None]:
        """A Deferred that fires once no client connection is left (at once if none is)."""
        if not self.connections:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def connection_ended(self, door: Door) -> None:
        """Forget a connection that is gone; wake when_idle() waiters if it was the last."""
        self.connections.discard(door)
        if not self.connections:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
