"""
The channel-binding check at start: one upstream leg, opened and closed.

When the upstream leg may use TLS, pgtls opens one leg as a session would
(:meth:`~pgtls.relay.listener.Listener.open_upstream`: the same endpoint
and negotiation), hands the certificate the upstream presents to
:meth:`~pgtls.relay.listener.Listener.upstream_certificate_seen`, which
logs whether SCRAM channel binding can pass, and closes the leg with a TLS
close_notify before any StartupMessage: PostgreSQL logs nothing for a
connection that sends no startup packet (ProcessStartupPacket stays quiet
on EOF), only ``connection received`` with log_connections on.

It runs once the reactor runs, so it never delays serving or READY=1; it
is bounded by the leg's connect_timeout and cancelled by a shutdown.  If
the leg fails, one line says the check waits for the first session.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgtls.relay.frontdoor import FrontDoorFactory
from pgtls.relay.upstreamleg import describe_failure, peer_certificate_of
from pgtls.tls import channelbinding

__all__ = ["StartProbeService"]


class StartProbeService(Service):
    """Checks the upstream's certificate for channel binding once, at start."""

    log = Logger()

    def __init__(self, reactor: Any, factory: FrontDoorFactory) -> None:
        self.reactor = reactor
        self.factory = factory
        self._opening: defer.Deferred[Any] | None = None

    def wanted(self) -> bool:
        """A TCP upstream with sslmode other than disable, and TLS for clients."""
        upstream = self.factory.settings.upstream
        return (
            upstream.uses_tls
            and self.factory.upstream_tls is not None
            and self.factory.tls is not None
            and self.factory.tls.certificate is not None
        )

    def startService(self) -> None:
        super().startService()
        if self.wanted():
            self.reactor.callWhenRunning(self._probe)

    def stopService(self) -> None:
        super().stopService()
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()

    def _probe(self) -> None:
        if not self.running or self.factory.shutting_down:
            return
        opening = self.factory.open_upstream()
        self._opening = opening
        opening.addCallbacks(self._opened, self._failed)

    def _opened(self, protocol: Any) -> None:
        self._opening = None
        certificate = peer_certificate_of(protocol)
        # Closed before anything is sent: close_notify, then FIN.
        protocol.transport.loseConnection()
        if certificate is not None:
            self.factory.upstream_certificate_seen(certificate)
        else:
            # sslmode allow or prefer, and a plaintext leg.
            assert self.factory.tls is not None and self.factory.tls.certificate is not None
            verdict = channelbinding.verdict(self.factory.tls.certificate, None)
            self.log.info("channel binding: {verdict}", verdict=verdict.text)

    def _failed(self, failure: Failure) -> None:
        self._opening = None
        if failure.check(defer.CancelledError) and not self.running:
            return  # a shutdown: nothing to say
        upstream = self.factory.settings.upstream
        _, why = describe_failure(failure, upstream)
        self.log.info(
            "channel binding: could not check the upstream server's certificate at "
            "start ({upstream}: {why}); the check waits for the first session",
            upstream=upstream.address,
            why=why,
        )
