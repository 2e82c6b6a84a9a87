"""
The front door watching the upstream's startup messages as it relays them:
the backend's PID in the session line, the log line for an upstream that
refuses SCRAM channel binding, and the watch's end at ReadyForQuery or an
ErrorResponse; and its verdict on the certificate a TLS upstream presents.
Driven with the front door harness of test_frontdoor (fake transports, so
the relay's no-pump path carries the bytes; test_pump covers the pump's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from backends import (
    CHECK_FAILED,
    SCRAM_STARTUP,
    byte_by_byte,
    fields,
    in_halves,
    key_data,
    ready,
    sasl,
    whole,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from doors import Door, Pki, make_door, relayed_session, summary_of
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from pgtls.core import wire
from pgtls.relay.upstream import UpstreamProtocol
from pgtls.tls import certs

REMEDY = (
    "SCRAM clients must connect with channel_binding=disable, or pgtls must present "
    "the upstream's own certificate and key (ssl_cert_file, ssl_key_file)"
)


def channel_binding_lines(events: Sequence[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "channel binding for" in e["log_format"]]


@pytest.mark.parametrize("split", [whole, byte_by_byte, in_halves])
def test_the_session_line_names_the_backend_pid(
    door: Door, split: Callable[[bytes], list[bytes]]
) -> None:
    """BackendKeyData's process ID goes in the session line and its event, however it arrives."""
    stream = b"".join(SCRAM_STARTUP)
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        for chunk in split(stream):
            upstream.send(chunk)
        conn.lost()
    summary = summary_of(events)
    assert summary["backend_pid"] == 4242
    assert "outcome=relayed backend_pid=4242 bytes_up=" in formatEvent(summary)


def test_the_relayed_bytes_are_unchanged(door: Door) -> None:
    """Watching changes nothing the client gets, garbage included."""
    conn, upstream = relayed_session(door)
    conn.take()
    stream = b"".join(SCRAM_STARTUP) + b"T\0\0\0\x06\0\0D-garbage"
    for chunk in in_halves(stream):
        upstream.send(chunk)
    assert conn.take() == stream


def test_the_watch_ends_at_ready_for_query(door: Door) -> None:
    """After ReadyForQuery the reader is dropped; a later BackendKeyData is not read."""
    conn, upstream = relayed_session(door)
    upstream.send(b"".join(SCRAM_STARTUP))
    assert conn.protocol._backend is None
    assert conn.protocol.upstream is not None
    assert conn.protocol.upstream.watch is None
    upstream.send(key_data(1))
    assert conn.protocol.backend_pid == 4242


def test_the_watch_ends_when_the_reader_gives_up(door: Door) -> None:
    """Bytes that are no startup message: no PID, no reader kept, the session goes on."""
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        upstream.send(b"not a PostgreSQL server")
        assert conn.protocol._backend is None
        upstream.send(key_data(7) + ready())
        conn.lost()
    summary = summary_of(events)
    assert summary["backend_pid"] is None
    assert "backend_pid" not in formatEvent(summary)
    assert [e for e in events if e["log_level"] >= LogLevel.warn] == []


def test_no_backend_pid_for_a_refused_session(tmp_path: Path, pki: Pki) -> None:
    """A session refused by pg_hba.conf never reached a backend."""
    door = make_door(tmp_path, pki, hba=["host all all 0.0.0.0/0 reject"])
    with capturedLogs() as events:
        conn = door.connect()
        conn.send(wire.ssl_request())
        conn.handshake()
        conn.send(wire.startup_message({"user": "alice"}))
        conn.lost()
    assert summary_of(events)["backend_pid"] is None


def test_a_channel_binding_check_failure_is_explained(door: Door) -> None:
    """
    The upstream's `SCRAM channel binding check failed`: one warning saying
    why and what to do; the client gets the upstream's error unchanged.
    """
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        conn.take()
        upstream.send(sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"))
        upstream.send(message_continue := b"R\0\0\0\x0d\0\0\0\x0bdata!")
        upstream.send(CHECK_FAILED)
        upstream.lost()
        conn.lost()
    assert conn.take() == (
        sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256") + message_continue + CHECK_FAILED
    )
    (line,) = channel_binding_lines(events)
    assert line["log_level"] is LogLevel.warn
    assert formatEvent(line) == (
        "upstream refused SCRAM channel binding for host=192.0.2.7 user=alice: "
        "SCRAM channel binding check failed: the client bound its password exchange to "
        "pgtls's certificate, and the upstream checks it against its own; " + REMEDY
    )
    assert summary_of(events)["detail"] == "upstream closed the connection"


def test_a_channel_binding_negotiation_error_is_explained(door: Door) -> None:
    """The upstream's `SCRAM channel binding negotiation error` (gs2 flag y on TLS)."""
    error = fields(
        b"E",
        ("S", "FATAL"),
        ("V", "FATAL"),
        ("C", "28000"),
        ("M", "SCRAM channel binding negotiation error"),
        ("D", "The client supports SCRAM channel binding but thinks the server does not."),
        ("F", "auth-scram.c"),
        ("R", "read_client_first_message"),
    )
    with capturedLogs() as events:
        _conn, upstream = relayed_session(door)
        upstream.send(sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256") + error)
    (line,) = channel_binding_lines(events)
    text = formatEvent(line)
    assert ": SCRAM channel binding negotiation error: the client, on TLS to pgtls" in text
    assert text.endswith(REMEDY)


def test_other_upstream_errors_are_not_explained(door: Door) -> None:
    """A wrong password is the upstream's business: no line from pgtls."""
    error = wire.error_response("28P01", 'password authentication failed for user "alice"')
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        upstream.send(sasl("SCRAM-SHA-256") + error)
        assert conn.protocol._backend is None
    assert channel_binding_lines(events) == []


# -- the upstream's certificate ------------------------------------------------


def copy(cert: x509.Certificate) -> x509.Certificate:
    """The same certificate, as another object (as each handshake gives it)."""
    return x509.load_der_x509_certificate(cert.public_bytes(Encoding.DER))


def binding_lines(events: Sequence[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e["log_format"].startswith("channel binding: ")]


def test_a_shared_certificate_is_noted_once(door: Door, pki: Pki) -> None:
    """The upstream presents pgtls's own certificate: one info line, not one per session."""
    with capturedLogs() as events:
        for _ in range(3):
            door.factory.upstream_certificate_seen(copy(pki.server.cert))
    (line,) = binding_lines(events)
    assert line["log_level"] is LogLevel.info
    assert "can pass end to end, channel_binding=require included" in formatEvent(line)


def test_a_different_certificate_warns_once_per_certificate(door: Door, pki: Pki) -> None:
    """Another certificate: a warning, again only when the upstream's certificate changes."""
    other = certs.issue_server_cert(certs.make_ca("upstream CA"), ["db.internal"]).cert
    with capturedLogs() as events:
        door.factory.upstream_certificate_seen(copy(other))
        door.factory.upstream_certificate_seen(copy(other))
        door.factory.upstream_certificate_seen(copy(pki.server.cert))
    different, shared = binding_lines(events)
    assert different["log_level"] is LogLevel.warn
    assert "SCRAM clients must connect with channel_binding=disable" in formatEvent(different)
    assert shared["log_level"] is LogLevel.info


def test_no_verdict_when_clients_have_no_tls(tmp_path: Path, pki: Pki) -> None:
    """ssl = off: no client of pgtls can bind, so there is nothing to say."""
    door = make_door(tmp_path, pki, ssl=False)
    with capturedLogs() as events:
        door.factory.upstream_certificate_seen(copy(pki.server.cert))
    assert binding_lines(events) == []


def test_each_tls_leg_reports_its_certificate(door: Door, pki: Pki) -> None:
    """A leg that negotiated TLS hands the upstream's certificate to the factory's verdict."""
    other = certs.issue_server_cert(certs.make_ca("upstream CA"), ["db.internal"]).cert

    class TLSLeg(UpstreamProtocol):
        """What the upstream leg's TLS negotiation hands over: the peer's certificate set."""

        def __init__(self) -> None:
            super().__init__()
            self.peer_certificate = copy(other)

    door.factory.upstream_factory.protocol = TLSLeg
    with capturedLogs() as events:
        relayed_session(door)
        relayed_session(door)
    (line,) = binding_lines(events)
    assert line["log_level"] is LogLevel.warn
