"""
Prometheus metrics of the front door, and the HTTP endpoint that serves them.

A FrontDoorFactory given a :class:`Metrics` updates it at a few points of each
connection's life: TLS handshake done, session admitted, upstream
connected, connection ended.  Nothing happens per relayed chunk: the bytes
each way are added from the relay's own counters when a session ends, so
the relay's hot path costs the same with metrics on or off.

Each :class:`Metrics` has its own CollectorRegistry, so two factories (or two
tests) never share values.  With ``pgtls.metrics_listen`` set, a
:class:`MetricsService` serves the registry at ``/metrics`` with
prometheus_client's Twisted resource.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import Site

from pgtls import hba
from pgtls.conf import Settings
from pgtls.loader import StartupError, server_endpoint_problem
from pgtls.negotiation import FailureReason
from pgtls.tlsctx import TLSInfo

__all__ = [
    "ENCRYPTIONS",
    "OUTCOMES",
    "PROXY_HEADER_RESULTS",
    "REFUSAL_REASONS",
    "Encryption",
    "Metrics",
    "MetricsService",
    "Outcome",
    "ProxyHeaderResult",
    "metrics_service",
    "refusal_reason",
]

#: How a client connection ended; the ``outcome`` of logs and metrics.
Outcome = Literal[
    "relayed",  # admitted, relayed, then closed by either side
    "refused",  # a FATAL or a close by rule: pg_hba.conf, certificates, limits
    "protocol_error",  # bad first packets (PostgreSQL's FATAL or silent close)
    "handshake_failed",  # TLS did not complete
    "upstream_unavailable",  # admitted, but the upstream could not be reached
    "timeout",  # authentication_timeout
    "cancel",  # a CancelRequest, forwarded
    "closed",  # the client left before sending a startup packet
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

#: Whether the client connection used TLS (SSLRequest or direct SSL).
Encryption = Literal["ssl", "none"]
ENCRYPTIONS: tuple[Encryption, ...] = get_args(Encryption)

#: The ``reason`` label of pgtls_refusals_total.
REFUSAL_REASONS = (
    "no_hba_entry",  # no pg_hba.conf line matched
    "hba_reject",  # a reject line matched
    "client_cert_required",  # no client certificate where one is required
    "cert_auth_failed",  # the certificate's name does not map to the user
    "client_ca_missing",  # clientcert in pg_hba.conf without root.crt
    "too_many_clients",  # max_connections
    "shutting_down",  # a new session during a smart shutdown
    "direct_ssl_no_alpn",  # direct SSL without ALPN "postgresql"
    "direct_ssl_off",  # direct SSL while ssl = off
)

#: The ``result`` label of pgtls_proxy_headers_total.
ProxyHeaderResult = Literal[
    "proxied",  # the header named the client: its address is the client's
    "local",  # LOCAL or UNKNOWN (a health check): the balancer's own address
    "invalid",  # no valid header: closed without a word
]
PROXY_HEADER_RESULTS: tuple[ProxyHeaderResult, ...] = get_args(ProxyHeaderResult)

# Upstream connections are often a Unix socket (well under a millisecond)
# and sometimes a remote host: buckets from 250 us to 10 s.
_CONNECT_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def refusal_reason(refusal: hba.Refusal) -> str:
    """
    The ``reason`` label for a pg_hba.conf refusal: its kind's word, never
    the message, which names the host, user and database.
    """
    return refusal.kind.value


class Metrics:
    """
    The front door's counters, in a registry of their own.

    The methods are called on the reactor thread; prometheus_client's
    values are safe to read from the thread that renders ``/metrics``.
    Label children are looked up once and kept, since ``labels()`` takes a
    lock and a dictionary look-up on every call.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._sessions_active = Gauge(
            "pgtls_sessions_active",
            "Sessions admitted by pg_hba.conf and not yet ended (what max_connections limits).",
            ["encryption"],
            registry=self.registry,
        )
        self._sessions = Counter(
            "pgtls_sessions",
            "Client connections ended, by outcome and encryption.",
            ["outcome", "encryption"],
            registry=self.registry,
        )
        self._refusals = Counter(
            "pgtls_refusals",
            "Connections refused by pg_hba.conf, certificate checks or limits, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._handshake_failures = Counter(
            "pgtls_handshake_failures",
            "TLS handshakes that did not complete, by OpenSSL's reason.",
            ["reason"],
            registry=self.registry,
        )
        self._handshakes = Counter(
            "pgtls_tls_handshakes",
            "TLS handshakes completed, by protocol version and cipher.",
            ["version", "cipher"],
            registry=self.registry,
        )
        self._tls_active = Gauge(
            "pgtls_tls_connections_active",
            "Open client connections using TLS, by protocol version and cipher.",
            ["version", "cipher"],
            registry=self.registry,
        )
        self._bytes = Counter(
            "pgtls_relayed_bytes",
            "Bytes relayed, counted when a session ends: up = client to upstream, "
            "down = upstream to client.",
            ["direction"],
            registry=self.registry,
        )
        self._connect_seconds = Histogram(
            "pgtls_upstream_connect_seconds",
            "Time to connect to the upstream server, for connections that succeeded.",
            buckets=_CONNECT_BUCKETS,
            registry=self.registry,
        )
        self._upstream_failures = Counter(
            "pgtls_upstream_failures",
            "Admitted sessions whose upstream leg could not be opened (connect, SSL "
            "negotiation, certificate verification), by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._upstream_failures_by = {
            r: self._upstream_failures.labels(r.value) for r in FailureReason
        }
        self._proxy_headers = Counter(
            "pgtls_proxy_headers",
            "Connections from pgtls.proxy_protocol_networks, by what their PROXY header said.",
            ["result"],
            registry=self.registry,
        )
        # Every fixed label value is there from the start, at 0, so rate()
        # and absent() work before the first event of a kind.
        self._active_by = {e: self._sessions_active.labels(e) for e in ENCRYPTIONS}
        self._sessions_by = {
            (o, e): self._sessions.labels(o, e) for o in OUTCOMES for e in ENCRYPTIONS
        }
        self._refusals_by = {r: self._refusals.labels(r) for r in REFUSAL_REASONS}
        self._proxy_headers_by = {r: self._proxy_headers.labels(r) for r in PROXY_HEADER_RESULTS}
        self._bytes_up = self._bytes.labels("up")
        self._bytes_down = self._bytes.labels("down")
        self._tls_by: dict[tuple[str, str], tuple[Counter, Gauge]] = {}

    def tls_established(self, info: TLSInfo) -> None:
        """A TLS handshake completed with ``info``'s version and cipher."""
        handshakes, active = self._tls_children(info)
        handshakes.inc()
        active.inc()

    def proxy_header(self, result: ProxyHeaderResult) -> None:
        """Count a load balancer's connection by its header (:data:`PROXY_HEADER_RESULTS`)."""
        self._proxy_headers_by[result].inc()

    def session_admitted(self, encryption: Encryption) -> None:
        """pg_hba.conf admitted a session; it counts as active until it ends."""
        self._active_by[encryption].inc()

    def upstream_connected(self, seconds: float) -> None:
        """The upstream accepted a session's connection after ``seconds``."""
        self._connect_seconds.observe(seconds)

    def upstream_failed(self, reason: FailureReason) -> None:
        """A session's upstream leg failed (the client got FATAL 57P03)."""
        self._upstream_failures_by[reason].inc()

    def connection_ended(
        self,
        *,
        outcome: Outcome,
        encryption: Encryption,
        admitted: bool,
        reason: str | None,
        tls: TLSInfo | None,
        bytes_up: int,
        bytes_down: int,
    ) -> None:
        """
        Count a client connection that is gone.

        :param outcome: how it ended.
        :param encryption: whether it used TLS (or tried to).
        :param admitted: whether it was counted by :meth:`session_admitted`.
        :param reason: for ``refused``, one of :data:`REFUSAL_REASONS`; for
            ``handshake_failed``, OpenSSL's reason; else ignored.
        :param tls: what its handshake agreed on, if one completed.
        :param bytes_up: bytes relayed from the client to the upstream.
        :param bytes_down: bytes relayed from the upstream to the client.
        """
        self._sessions_by[outcome, encryption].inc()
        if admitted:
            self._active_by[encryption].dec()
        if outcome == "refused" and reason is not None:
            self._refusals.labels(reason).inc()
        elif outcome == "handshake_failed" and reason is not None:
            self._handshake_failures.labels(reason).inc()
        if tls is not None:
            self._tls_children(tls)[1].dec()
        if bytes_up:
            self._bytes_up.inc(bytes_up)
        if bytes_down:
            self._bytes_down.inc(bytes_down)

    def _tls_children(self, info: TLSInfo) -> tuple[Counter, Gauge]:
        key = (info.protocol, info.cipher)
        children = self._tls_by.get(key)
        if children is None:
            children = (self._handshakes.labels(*key), self._tls_active.labels(*key))
            self._tls_by[key] = children
        return children


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
