"""
Tests for pgtls.relay.counters: the counters a FrontDoorFactory keeps, driven with
the front door harness of test_frontdoor (fake transports, a
MemoryReactorClock), and the service that serves them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from doors import (
    ALICE,
    CANCEL,
    CLIENT,
    HELLO,
    TLS13,
    Door,
    Pki,
    make_door,
    relayed_session,
    tls_session,
)
from OpenSSL import SSL

from pgtls.core import wire
from pgtls.core.hba import ClientCert, Refusal, RefusalKind
from pgtls.relay.counters import ENCRYPTIONS, OUTCOMES, REFUSAL_REASONS, Metrics, refusal_reason
from pgtls.tls.serverctx import TLSInfo

CIPHER = TLS13.cipher


def metered(door: Door) -> Metrics:
    """Give the door's factory a fresh Metrics, as makeService does with metrics on."""
    metrics = Metrics()
    door.factory.metrics = metrics
    return metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def sessions(metrics: Metrics, outcome: str, encryption: str) -> float | None:
    return sample(metrics, "pgtls_sessions_total", outcome=outcome, encryption=encryption)


def only_session(metrics: Metrics) -> tuple[str, str]:
    """The one (outcome, encryption) counted so far; fails if there is not exactly one."""
    counted = [
        (outcome, encryption)
        for outcome in OUTCOMES
        for encryption in ENCRYPTIONS
        if sessions(metrics, outcome, encryption)
    ]
    assert len(counted) == 1, counted
    assert sessions(metrics, *counted[0]) == 1
    return counted[0]


def refusals(metrics: Metrics) -> dict[str, float]:
    """The refusal reasons counted so far, with their counts."""
    return {
        reason: value
        for reason in REFUSAL_REASONS
        if (value := sample(metrics, "pgtls_refusals_total", reason=reason))
    }


# -- the counters ------------------------------------------------------------


def test_every_fixed_label_starts_at_zero() -> None:
    """Outcomes, encryptions, refusal reasons and directions are exported at 0 before any event."""
    metrics = Metrics()
    for outcome in OUTCOMES:
        for encryption in ENCRYPTIONS:
            assert sessions(metrics, outcome, encryption) == 0
    for encryption in ENCRYPTIONS:
        assert sample(metrics, "pgtls_sessions_active", encryption=encryption) == 0
    for reason in REFUSAL_REASONS:
        assert sample(metrics, "pgtls_refusals_total", reason=reason) == 0
    for direction in ("up", "down"):
        assert sample(metrics, "pgtls_relayed_bytes_total", direction=direction) == 0
    assert sample(metrics, "pgtls_upstream_connect_seconds_count") == 0


def test_each_metrics_has_its_own_registry() -> None:
    """Two Metrics never share a value (each has a registry of its own)."""
    first, second = Metrics(), Metrics()
    first.session_admitted("ssl")
    assert sample(first, "pgtls_sessions_active", encryption="ssl") == 1
    assert sample(second, "pgtls_sessions_active", encryption="ssl") == 0


def test_relayed_tls_session(door: Door) -> None:
    """A TLS session: active while relayed, then one relayed/ssl session, TLS version and cipher."""
    metrics = metered(door)
    conn, upstream = relayed_session(door)
    assert sample(metrics, "pgtls_sessions_active", encryption="ssl") == 1
    assert sample(metrics, "pgtls_sessions_active", encryption="none") == 0
    tls = {"version": "TLSv1.3", "cipher": CIPHER}
    assert sample(metrics, "pgtls_tls_handshakes_total", **tls) == 1
    assert sample(metrics, "pgtls_tls_connections_active", **tls) == 1
    assert sessions(metrics, "relayed", "ssl") == 0  # counted when it ends
    upstream.lost()
    conn.lost()
    assert only_session(metrics) == ("relayed", "ssl")
    assert sample(metrics, "pgtls_sessions_active", encryption="ssl") == 0
    assert sample(metrics, "pgtls_tls_connections_active", **tls) == 0
    assert sample(metrics, "pgtls_tls_handshakes_total", **tls) == 1


def test_relayed_plaintext_session(plain_door: Door) -> None:
    """A plaintext session is counted with encryption none and no TLS series."""
    metrics = metered(plain_door)
    conn = plain_door.connect()
    conn.send(ALICE)
    plain_door.accept_upstream()
    assert sample(metrics, "pgtls_sessions_active", encryption="none") == 1
    conn.lost()
    assert only_session(metrics) == ("relayed", "none")
    assert sample(metrics, "pgtls_sessions_active", encryption="none") == 0
    assert sample(metrics, "pgtls_tls_handshakes_total", version="TLSv1.3", cipher=CIPHER) is None


def test_bytes_are_counted_when_the_session_ends(door: Door) -> None:
    """
    Bytes each way come from the relay's own counters at the session's end:
    nothing is counted per chunk while relaying.
    """
    metrics = metered(door)
    conn, upstream = relayed_session(door)
    conn.send(b"abc")
    upstream.send(b"defgh")
    conn.send(b"ij")
    assert sample(metrics, "pgtls_relayed_bytes_total", direction="up") == 0
    assert sample(metrics, "pgtls_relayed_bytes_total", direction="down") == 0
    conn.lost()
    assert sample(metrics, "pgtls_relayed_bytes_total", direction="up") == len(ALICE) + 5
    assert sample(metrics, "pgtls_relayed_bytes_total", direction="down") == 5


def test_upstream_connect_time(door: Door) -> None:
    """The time from admission to the upstream's accept goes into the histogram."""
    metrics = metered(door)
    conn = tls_session(door)
    conn.send(ALICE)
    door.reactor.advance(0.002)
    door.accept_upstream()
    name = "pgtls_upstream_connect_seconds"
    assert sample(metrics, f"{name}_count") == 1
    assert sample(metrics, f"{name}_sum") == pytest.approx(0.002)
    assert sample(metrics, f"{name}_bucket", le="0.001") == 0
    assert sample(metrics, f"{name}_bucket", le="0.0025") == 1


def test_upstream_unavailable(door: Door) -> None:
    """A refused upstream: outcome upstream_unavailable, no connect time, no active session left."""
    metrics = metered(door)
    conn = tls_session(door)
    conn.send(ALICE)
    assert sample(metrics, "pgtls_sessions_active", encryption="ssl") == 1
    door.refuse_upstream()
    conn.lost()
    assert only_session(metrics) == ("upstream_unavailable", "ssl")
    assert sample(metrics, "pgtls_sessions_active", encryption="ssl") == 0
    assert sample(metrics, "pgtls_upstream_connect_seconds_count") == 0
    assert refusals(metrics) == {}
    # Counted by its typed reason; every other reason is there at 0.
    assert sample(metrics, "pgtls_upstream_failures_total", reason="connection_refused") == 1
    assert sample(metrics, "pgtls_upstream_failures_total", reason="host_name_mismatch") == 0


def test_client_leaving_while_connecting(door: Door) -> None:
    """A client gone before the upstream answered: closed, and no longer active."""
    metrics = metered(door)
    conn = tls_session(door)
    conn.send(ALICE)
    conn.lost()
    assert only_session(metrics) == ("closed", "ssl")
    assert sample(metrics, "pgtls_sessions_active", encryption="ssl") == 0


# -- refusals ----------------------------------------------------------------


def test_no_hba_entry(tmp_path: Path, pki: Pki) -> None:
    """No matching pg_hba.conf line: refused, reason no_hba_entry."""
    door = make_door(tmp_path, pki, hba=["hostnossl all all 0.0.0.0/0 trust"])
    metrics = metered(door)
    conn = tls_session(door)
    conn.send(ALICE)
    conn.lost()
    assert only_session(metrics) == ("refused", "ssl")
    assert refusals(metrics) == {"no_hba_entry": 1}
    assert sample(metrics, "pgtls_sessions_active", encryption="ssl") == 0


def test_hba_reject(tmp_path: Path, pki: Pki) -> None:
    """A reject line: refused, reason hba_reject."""
    door = make_door(tmp_path, pki, ssl=False, hba=["host all all 0.0.0.0/0 reject"])
    metrics = metered(door)
    conn = door.connect()
    conn.send(ALICE)
    conn.lost()
    assert only_session(metrics) == ("refused", "none")
    assert refusals(metrics) == {"hba_reject": 1}


def test_too_many_clients(tmp_path: Path, pki: Pki) -> None:
    """max_connections reached: refused, reason too_many_clients; the active session stays."""
    door = make_door(tmp_path, pki, ssl=False, settings=["max_connections = 1"])
    metrics = metered(door)
    first = door.connect()
    first.send(ALICE)
    door.accept_upstream()
    second = door.connect()
    second.send(ALICE)
    second.lost()
    assert only_session(metrics) == ("refused", "none")
    assert refusals(metrics) == {"too_many_clients": 1}
    assert sample(metrics, "pgtls_sessions_active", encryption="none") == 1
    first.lost()
    assert sample(metrics, "pgtls_sessions_active", encryption="none") == 0


def test_required_client_cert_missing(tmp_path: Path, pki: Pki) -> None:
    """root.crt without a client certificate: refused, reason client_cert_required."""
    door = make_door(tmp_path, pki, client_ca=True)
    metrics = metered(door)
    conn = tls_session(door)
    conn.send(ALICE)
    conn.lost()
    assert refusals(metrics) == {"client_cert_required": 1}


def test_cert_name_mismatch(tmp_path: Path, pki: Pki) -> None:
    """The cert method with a certificate for another user: refused, reason cert_auth_failed."""
    door = make_door(tmp_path, pki, client_ca=True, hba=["hostssl all all 0.0.0.0/0 cert"])
    door.tls_info = TLSInfo("TLSv1.3", CIPHER, 256, None, ClientCert("mallory", "CN=mallory"))
    metrics = metered(door)
    conn = tls_session(door)
    conn.send(ALICE)
    conn.lost()
    assert refusals(metrics) == {"cert_auth_failed": 1}


def test_direct_tls_without_alpn(door: Door) -> None:
    """Direct TLS that chose no ALPN: refused, reason direct_ssl_no_alpn."""
    door.tls_info = TLSInfo("TLSv1.3", CIPHER, 256, None, None)
    metrics = metered(door)
    conn = door.connect()
    conn.send(HELLO)
    conn.handshake()
    conn.lost()
    assert only_session(metrics) == ("refused", "ssl")
    assert refusals(metrics) == {"direct_ssl_no_alpn": 1}


def test_direct_tls_with_ssl_off(plain_door: Door) -> None:
    """A ClientHello to ssl = off: refused, reason direct_ssl_off."""
    metrics = metered(plain_door)
    conn = plain_door.connect()
    conn.send(HELLO)
    conn.lost()
    assert only_session(metrics) == ("refused", "none")
    assert refusals(metrics) == {"direct_ssl_off": 1}


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (RefusalKind.NO_HBA_ENTRY, "no_hba_entry"),
        (RefusalKind.HBA_REJECT, "hba_reject"),
        (RefusalKind.CLIENT_CERT_REQUIRED, "client_cert_required"),
        (RefusalKind.CLIENT_CA_MISSING, "client_ca_missing"),
        (RefusalKind.CERT_AUTH_FAILED, "cert_auth_failed"),
    ],
)
def test_refusal_reason_words(kind: RefusalKind, reason: str) -> None:
    """Each kind of pg_hba.conf refusal maps to its fixed word, never to the message."""
    refusal = Refusal("28000", 'no pg_hba.conf entry for host "h"', None, kind=kind)
    assert refusal_reason(refusal) == reason
    assert reason in REFUSAL_REASONS


def test_every_refusal_kind_has_a_label() -> None:
    """A new kind of pg_hba.conf refusal cannot reach the counter without its label."""
    assert {kind.value for kind in RefusalKind} <= set(REFUSAL_REASONS)


# -- the other endings -------------------------------------------------------


def test_handshake_failure_by_openssl_reason(door: Door) -> None:
    """A handshake that fails counts under OpenSSL's reason; the connection is handshake_failed."""
    metrics = metered(door)
    conn = door.connect()
    conn.send(wire.ssl_request())
    conn.lost(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert only_session(metrics) == ("handshake_failed", "ssl")
    failures = "pgtls_handshake_failures_total"
    assert sample(metrics, failures, reason="certificate verify failed") == 1
    assert refusals(metrics) == {}


def test_client_leaving_after_s_is_an_eof_handshake_failure(door: Door) -> None:
    """A client that closes after S without a handshake: reason EOF detected."""
    metrics = metered(door)
    conn = door.connect()
    conn.send(wire.ssl_request())
    conn.lost()
    assert sample(metrics, "pgtls_handshake_failures_total", reason="EOF detected") == 1


def test_protocol_error(door: Door) -> None:
    """A missing user (FATAL 28000 from the startup reader) is a protocol_error, not a refusal."""
    metrics = metered(door)
    conn = door.connect()
    conn.send(wire.startup_message({"database": "app"}))
    conn.lost()
    assert only_session(metrics) == ("protocol_error", "none")
    assert refusals(metrics) == {}


def test_authentication_timeout(tmp_path: Path, pki: Pki) -> None:
    """authentication_timeout: outcome timeout."""
    door = make_door(tmp_path, pki, settings=["authentication_timeout = 1"])
    metrics = metered(door)
    conn = door.connect()
    door.reactor.advance(1)
    conn.lost()
    assert only_session(metrics) == ("timeout", "none")


def test_cancel(plain_door: Door) -> None:
    """A CancelRequest: outcome cancel."""
    metrics = metered(plain_door)
    conn = plain_door.connect()
    conn.send(CANCEL)
    plain_door.accept_upstream().lost()
    conn.lost()
    assert only_session(metrics) == ("cancel", "none")


def test_empty_connection(door: Door) -> None:
    """A client that leaves without a byte: outcome closed."""
    metrics = metered(door)
    door.connect().lost()
    assert only_session(metrics) == ("closed", "none")


def test_no_metrics_by_default(door: Door) -> None:
    """A factory built without metrics keeps none, and sessions run as before."""
    assert door.factory.metrics is None
    conn, upstream = relayed_session(door)
    upstream.lost()
    conn.lost()


def test_client_address_is_not_a_label(door: Door) -> None:
    """No series carries the client's address, user or database (unbounded label values)."""
    metrics = metered(door)
    conn, upstream = relayed_session(door)
    upstream.lost()
    conn.lost()
    for family in metrics.registry.collect():
        for sample_ in family.samples:
            values = set(sample_.labels.values())
            assert not values & {str(CLIENT.host), "alice", "app"}, sample_
