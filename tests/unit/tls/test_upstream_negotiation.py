"""
Tests for pgtls.tls.negotiation: the upstream leg's negotiation as libpq's
PQconnectPoll does it, driven with events and bytes, no I/O.
"""

from __future__ import annotations

import pytest

from pgtls.core.conninfo import parse_conninfo
from pgtls.tls import certs
from pgtls.tls.negotiation import (
    Attempt,
    Fail,
    FailureReason,
    Negotiation,
    Ready,
    Retry,
    SendSSLRequest,
    StartTLS,
    Wait,
    first_attempt,
)

CA = certs.make_ca("negotiation test CA")
DB1 = certs.issue_server_cert(CA, ["db1"]).cert


def negotiation(conninfo: str) -> Negotiation:
    return Negotiation(parse_conninfo(conninfo))


@pytest.mark.parametrize(
    ("conninfo", "attempt"),
    [
        ("host=/run/pg sslmode=require", Attempt.PLAIN),  # a Unix socket never uses TLS
        ("host=db sslmode=disable", Attempt.PLAIN),
        ("host=db sslmode=allow", Attempt.PLAIN),
        ("host=db", Attempt.SSL_REQUEST),  # libpq's default: prefer
        ("host=db sslmode=require", Attempt.SSL_REQUEST),
        ("host=db sslmode=verify-full sslrootcert=x", Attempt.SSL_REQUEST),
        ("host=db sslmode=require sslnegotiation=direct", Attempt.DIRECT),
    ],
)
def test_first_attempt(conninfo: str, attempt: Attempt) -> None:
    """How the first connection begins follows sslmode and sslnegotiation, as in libpq."""
    assert first_attempt(parse_conninfo(conninfo)) is attempt


def test_plain_is_ready_at_once() -> None:
    """disable: the StartupMessage goes at once, without SSLRequest."""
    assert negotiation("host=db sslmode=disable").connected() == Ready(tls=False)


@pytest.mark.parametrize("sslmode", ["prefer", "require", "verify-ca", "verify-full"])
def test_s_starts_tls(sslmode: str) -> None:
    """SSLRequest, then S: the handshake starts."""
    n = negotiation(f"host=db sslmode={sslmode} sslrootcert=x")
    assert n.connected() == SendSSLRequest()
    assert n.data_received(b"") == Wait()
    assert n.data_received(b"S") == StartTLS()


def test_bytes_after_s_are_refused() -> None:
    """CVE-2021-23222: bytes after S before the handshake fail the leg."""
    n = negotiation("host=db sslmode=require")
    n.connected()
    assert n.data_received(b"SX") == Fail(
        FailureReason.INVALID_RESPONSE, "received unencrypted data after SSL response"
    )


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_n_fails_when_tls_is_required(sslmode: str) -> None:
    """N with require or verify-*: libpq's message."""
    n = negotiation(f"host=db sslmode={sslmode} sslrootcert=x")
    n.connected()
    assert n.data_received(b"N") == Fail(
        FailureReason.SSL_NOT_SUPPORTED, "server does not support SSL, but SSL was required"
    )


def test_n_goes_on_in_plaintext_with_prefer() -> None:
    """prefer: N means plaintext on the same connection."""
    n = negotiation("host=db")
    n.connected()
    assert n.data_received(b"N") == Ready(tls=False)
    assert not n.tls


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"E", "server sent an error response during SSL exchange"),
        (b"X", "received invalid response to SSL negotiation: X"),
        (b"\x00", "received invalid response to SSL negotiation: \x00"),
    ],
)
def test_other_answers_fail(answer: bytes, message: str) -> None:
    """E or any other byte: libpq's messages, no fallback."""
    n = negotiation("host=db")
    n.connected()
    assert n.data_received(answer) == Fail(FailureReason.INVALID_RESPONSE, message)


def test_verify_full_checks_the_host_name() -> None:
    """A certificate for db1 and host=db.internal: libpq's mismatch message."""
    n = negotiation("host=db.internal sslmode=verify-full sslrootcert=x")
    n.connected()
    n.data_received(b"S")
    assert n.handshake_done(None, DB1) == Fail(
        FailureReason.HOST_NAME_MISMATCH,
        'server certificate for "db1" does not match host name "db.internal"',
    )


def test_verify_full_matching_name_is_ready() -> None:
    """The right name: ready, encrypted, the certificate kept."""
    n = negotiation("host=db1 sslmode=verify-full sslrootcert=x")
    n.connected()
    n.data_received(b"S")
    assert n.handshake_done(None, DB1) == Ready(tls=True)
    assert n.peer_certificate == DB1


def test_verify_ca_does_not_check_the_name() -> None:
    """verify-ca: the chain only (OpenSSL's part), no host name check."""
    n = negotiation("host=db.internal sslmode=verify-ca sslrootcert=x")
    n.connected()
    n.data_received(b"S")
    assert n.handshake_done(None, DB1) == Ready(tls=True)


def test_direct_requires_alpn() -> None:
    """Direct negotiation: the server must select ALPN postgresql."""
    n = negotiation("host=db sslmode=require sslnegotiation=direct")
    assert n.connected() == StartTLS()
    assert n.handshake_done(None, DB1) == Fail(
        FailureReason.NO_ALPN,
        "direct SSL connection was established without ALPN protocol negotiation extension",
    )
    n = negotiation("host=db sslmode=require sslnegotiation=direct")
    n.connected()
    assert n.handshake_done(b"postgresql", DB1) == Ready(tls=True)


def test_handshake_failure_prefer_retries_in_plaintext() -> None:
    """prefer: a failed handshake means a new plaintext connection; require fails."""
    n = negotiation("host=db")
    n.connected()
    n.data_received(b"S")
    assert n.handshake_failed(FailureReason.HANDSHAKE_FAILED, "SSL error: x") == Retry(
        Attempt.PLAIN, "SSL error: x"
    )
    n = negotiation("host=db sslmode=require")
    n.connected()
    n.data_received(b"S")
    assert n.handshake_failed(FailureReason.HANDSHAKE_FAILED, "SSL error: x") == Fail(
        FailureReason.HANDSHAKE_FAILED, "SSL error: x"
    )


def test_close_during_negotiation() -> None:
    """The upstream hangs up before answering, or during the handshake."""
    n = negotiation("host=db sslmode=require")
    n.connected()
    assert n.connection_lost() == Fail(
        FailureReason.CLOSED, "server closed the connection unexpectedly"
    )
    n = negotiation("host=db sslmode=require")
    n.connected()
    n.data_received(b"S")
    assert n.connection_lost() == Fail(FailureReason.CLOSED, "SSL SYSCALL error: EOF detected")


def test_startup_refused_tries_the_other_encryption() -> None:
    """allow: refused in plaintext, try TLS; prefer: refused over TLS, try plaintext."""
    allow = negotiation("host=db sslmode=allow")
    assert allow.connected() == Ready(tls=False)
    assert allow.has_fallback()
    assert allow.startup_refused() == Retry(
        Attempt.SSL_REQUEST, "the server refused the session without SSL"
    )
    prefer = negotiation("host=db")
    prefer.connected()
    prefer.data_received(b"S")
    prefer.handshake_done(None, DB1)
    assert prefer.startup_refused() == Retry(
        Attempt.PLAIN, "the server refused the session over SSL"
    )
    # The second attempt has no further fallback; nor have require and N-prefer.
    second = Negotiation(parse_conninfo("host=db"), Attempt.PLAIN)
    second.connected()
    assert not second.has_fallback()
    n_prefer = negotiation("host=db")
    n_prefer.connected()
    n_prefer.data_received(b"N")
    assert not n_prefer.has_fallback()
    require = negotiation("host=db sslmode=require")
    require.connected()
    require.data_received(b"S")
    require.handshake_done(None, DB1)
    assert require.startup_refused() is None


def test_events_out_of_order_are_bugs() -> None:
    """An event the state does not expect raises: the shell has a bug."""
    n = negotiation("host=db sslmode=require")
    with pytest.raises(RuntimeError):
        n.data_received(b"S")
