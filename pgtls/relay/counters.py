"""
Prometheus metrics of the front door: the counters a session updates.

A FrontDoorFactory given a :class:`Metrics` updates it at a few points of each
connection's life: TLS handshake done, session admitted, upstream
connected, connection ended.  Nothing happens per relayed chunk: the bytes
each way are added from the relay's own counters when a session ends, so
the relay's hot path costs the same with metrics on or off.

Each :class:`Metrics` has its own CollectorRegistry, so two factories (or two
tests) never share values; :mod:`pgtls.server.metrics` serves one over HTTP.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from pgtls.core import hba
from pgtls.core.session import ENCRYPTIONS, OUTCOMES, Encryption, Outcome
from pgtls.tls.negotiation import FailureReason
from pgtls.tls.serverctx import TLSInfo

__all__ = [
    "ENCRYPTIONS",
    "OUTCOMES",
    "PROXY_HEADER_RESULTS",
    "REFUSAL_REASONS",
    "Encryption",
    "Metrics",
    "Outcome",
    "ProxyHeaderResult",
    "refusal_reason",
]

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
