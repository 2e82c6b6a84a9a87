"""
Tests for pgtls.relay.sessionlog: what a connection's log lines say, from
plain values (no Twisted).  test_frontdoor asserts the same lines as the
front door logs them.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from OpenSSL import SSL

from pgtls.core.session import CLOSED_BEFORE_STARTUP, Ending
from pgtls.core.wire import StartupMessage
from pgtls.relay.sessionlog import (
    UNKNOWN,
    authorized_fields,
    encryption_words,
    peer,
    session_event,
    session_time,
    ssl_reason,
)
from pgtls.tls.serverctx import NoApplicationProtocol, TLSInfo

TLS13 = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, b"postgresql", None)
CLIENT = IPv4Address("192.0.2.7")
RELAYED = Ending("relayed", None, "closed by the client")


def startup(*parameters: tuple[str, str]) -> StartupMessage:
    return StartupMessage(3, 0, parameters, b"")


ALICE = startup(("user", "alice"), ("database", "app"))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00:00.000"),
        (0.0019, "0:00:00.001"),
        (59.999, "0:00:59.999"),
        (3723.25, "1:02:03.250"),
        (100 * 3600, "100:00:00.000"),
    ],
)
def test_session_time_is_postgresqls(seconds: float, text: str) -> None:
    """H:MM:SS.mmm with milliseconds cut, not rounded, and hours unbounded."""
    assert session_time(seconds) == text


def test_peer_brackets_ipv6_only() -> None:
    """host:port for IPv4, [host]:port for IPv6."""
    assert peer(CLIENT, 5432) == "192.0.2.7:5432"
    assert peer(IPv6Address("2001:db8::1"), 5432) == "[2001:db8::1]:5432"


def test_encryption_words() -> None:
    """The SSL part of `connection authorized`: empty without TLS."""
    assert encryption_words(None) == ""
    assert encryption_words(TLS13) == (
        " SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)"
    )


def authorized_line(message: StartupMessage, info: TLSInfo | None) -> str:
    fields = authorized_fields(message, info)
    return "{kind}connection authorized: user={user}{in_database}{app}{ssl}".format(**fields)


def test_authorized_line_of_a_plaintext_session_with_application_name() -> None:
    """PostgreSQL's words: the database and application_name, no SSL part."""
    message = startup(("user", "bob"), ("application_name", "psql"))
    assert authorized_line(message, None) == (
        "connection authorized: user=bob database=bob application_name=psql"
    )


def test_authorized_line_of_a_tls_session() -> None:
    """With TLS: the protocol, cipher and bits PostgreSQL names."""
    assert authorized_line(ALICE, TLS13) == (
        "connection authorized: user=alice database=app SSL enabled "
        "(protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)"
    )


@pytest.mark.parametrize("replication", ["true", "database"])
def test_authorized_line_of_a_walsender_names_no_database(replication: str) -> None:
    """A walsender's line says `replication connection` and names no database."""
    message = startup(("user", "alice"), ("database", "app"), ("replication", replication))
    fields = authorized_fields(message, None)
    assert authorized_line(message, None) == "replication connection authorized: user=alice"
    # The event still carries the database for JSON logs.
    assert fields["database"] == "app"


def test_ssl_reason_is_openssls_first_reason() -> None:
    """The first non-empty reason in OpenSSL's error queue."""
    error = SSL.Error([("SSL routines", "", ""), ("SSL routines", "", "certificate verify failed")])
    assert ssl_reason(error) == "certificate verify failed"


def test_ssl_reason_without_a_queue_is_the_errors_text() -> None:
    """An SSL.Error that carries no queue: its own text."""
    assert ssl_reason(SSL.Error("odd")) == "odd"


def test_ssl_reason_of_an_alpn_abort_is_its_typed_reason() -> None:
    """NoApplicationProtocol carries its reason."""
    assert ssl_reason(NoApplicationProtocol([b"h2"])) == "no application protocol"


def test_ssl_reason_of_anything_else_is_eof() -> None:
    """A client that left mid-handshake: PostgreSQL's `EOF detected`."""
    assert ssl_reason(ConnectionResetError()) == "EOF detected"


def event(**changes: Any) -> tuple[str, dict[str, Any]]:
    """session_event for a relayed TLS session from 192.0.2.7:40000, with these changes."""
    values: dict[str, Any] = {
        "address": CLIENT,
        "port": 40000,
        "proxy": None,
        "startup": ALICE,
        "tls": TLS13,
        "ending": RELAYED,
        "bytes_up": 100,
        "bytes_down": 2000,
        "duration": 1.23456,
        "backend_pid": 4242,
    }
    return session_event(**{**values, **changes})


def test_session_event_of_a_relayed_tls_session() -> None:
    """Every field for log shippers, and the text in one line."""
    summary, fields = event(proxy=(IPv4Address("10.0.0.1"), 1234))
    assert summary == (
        "host=192.0.2.7 port=40000 user=alice database=app ssl=on protocol=TLSv1.3 "
        "cipher=TLS_AES_256_GCM_SHA384 outcome=relayed backend_pid=4242 bytes_up=100 "
        "bytes_down=2000 duration=1.235: closed by the client"
    )
    assert fields == {
        "peer": "192.0.2.7:40000",
        "host": "192.0.2.7",
        "port": 40000,
        "proxy": "10.0.0.1:1234",
        "user": "alice",
        "database": "app",
        "ssl": True,
        "protocol": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "outcome": "relayed",
        "reason": None,
        "detail": "closed by the client",
        "bytes_up": 100,
        "bytes_down": 2000,
        "duration": 1.23456,
        "backend_pid": 4242,
    }


def test_session_event_without_startup_shows_unknown_names_in_the_text_only() -> None:
    """No StartupMessage: `[unknown]` in the text as PostgreSQL's %u and %d; None in the fields."""
    summary, fields = event(
        address=IPv6Address("2001:db8::7"),
        port=5,
        startup=None,
        tls=None,
        ending=CLOSED_BEFORE_STARTUP,
        bytes_up=0,
        bytes_down=0,
        duration=0.5,
        backend_pid=None,
    )
    assert summary == (
        f"host=2001:db8::7 port=5 user={UNKNOWN} database={UNKNOWN} ssl=off "
        "outcome=closed bytes_up=0 bytes_down=0 duration=0.500: closed before startup"
    )
    assert fields["peer"] == "[2001:db8::7]:5"
    assert fields["user"] is fields["database"] is fields["proxy"] is None
    assert fields["protocol"] is fields["cipher"] is fields["backend_pid"] is None
    assert fields["ssl"] is False
