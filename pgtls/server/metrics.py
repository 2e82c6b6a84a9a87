"""
The HTTP endpoint that serves the front door's metrics
(:class:`pgtls.relay.counters.Metrics`).

With ``pgtls.metrics_listen`` set, a :class:`MetricsService` serves the
counters' registry at ``/metrics`` with prometheus_client's Twisted
resource.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import Site

from pgtls.core.conf import Settings
from pgtls.relay.counters import Metrics
from pgtls.server.loader import StartupError, server_endpoint_problem

__all__ = ["MetricsService", "MetricsSite", "metrics_service", "metrics_site"]


class MetricsSite(Site):
    """The metrics HTTP site; it writes no access log: a scrape every few seconds is not news."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


def metrics_site(registry: CollectorRegistry) -> Site:
    """
    The HTTP site that serves ``registry`` at ``/metrics``, in Prometheus's
    text format (or OpenMetrics, when the scraper asks for it).
    """
    # prometheus_client.twisted imports the global reactor: only here, when
    # the site is built inside a running twistd.
    from prometheus_client.twisted import MetricsResource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    return MetricsSite(root)


def metrics_service(reactor: Any, settings: Settings) -> MetricsService | None:
    """
    The metrics endpoint ``pgtls.metrics_listen`` asks for, with a fresh
    :class:`Metrics`; None when the setting is empty (the default: no metrics).

    :raises StartupError: the setting is not a valid endpoint string.
    """
    if not settings.metrics_listen:
        return None
    return MetricsService(reactor, settings.metrics_listen, Metrics())


class MetricsService(Service):
    """
    Serves a :class:`Metrics` on the ``pgtls.metrics_listen`` endpoint; the port
    is bound in privilegedStartService, with the PostgreSQL ports.
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, metrics: Metrics) -> None:
        """
        :param reactor: the reactor to listen with.
        :param description: a Twisted server endpoint string, such as
            ``tcp:9187:interface=127.0.0.1``.
        :param metrics: what to serve.
        :raises StartupError: the description is not a valid endpoint string.
        """
        try:
            self.endpoint = serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError, IndexError, OSError):
            # The load checked it (server_endpoint_problem): only a caller
            # that skipped the load comes here.
            problem = server_endpoint_problem(description)
            raise StartupError(
                f'invalid value for parameter "pgtls.metrics_listen": "{description}": {problem}'
            ) from None
        self.description = description
        self.metrics = metrics
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        outcome: list[Any] = []
        self.endpoint.listen(metrics_site(self.metrics.registry)).addBoth(outcome.append)
        if not outcome or isinstance(outcome[0], Failure):
            reason = outcome[0].getErrorMessage() if outcome else "did not bind"
            raise SystemExit(f"pgtls: could not listen for metrics on {self.description}: {reason}")
        self.port = outcome[0]
        self.log.info("serving metrics on {description}", description=self.description)
        super().privilegedStartService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        stopping = port.stopListening() if port is not None else None
        return stopping if stopping is not None else defer.succeed(None)
