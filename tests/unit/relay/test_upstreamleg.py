"""
Tests for pgtls.relay.upstreamleg, the Twisted shell of the upstream negotiation:
fake transports and a fake clock, no sockets.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from pgtls.core.conninfo import parse_conninfo
from pgtls.relay.upstreamleg import NegotiatingUpstream, describe_failure
from pgtls.tls.negotiation import SSL_REQUEST, Action, Fail, FailureReason, Negotiation, Ready
from pgtls.tls.upstreamctx import load_upstream_tls

DB = parse_conninfo("host=db.internal port=5433 sslmode=require")


@pytest.mark.parametrize(
    ("failure", "reason", "message"),
    [
        (error.ConnectionRefusedError(), FailureReason.CONNECTION_REFUSED, "Connection refused"),
        (error.TimeoutError(), FailureReason.TIMEOUT, "timeout expired"),
        (
            error.DNSLookupError(),
            FailureReason.CONNECT_FAILED,
            'could not translate host name "db.internal" to address',
        ),
        (error.ConnectError(osError=2), FailureReason.CONNECT_FAILED, "No such file or directory"),
    ],
)
def test_connect_failures_in_libpqs_words(
    failure: Exception, reason: FailureReason, message: str
) -> None:
    """The endpoint's errors become libpq's words and a typed reason."""
    assert describe_failure(Failure(failure), DB) == (reason, message)


class Recorder:
    def __init__(self) -> None:
        self.actions: list[Action] = []

    def __call__(self, protocol: Any, action: Action) -> None:
        self.actions.append(action)
        if not isinstance(action, Ready):
            protocol.abort()


def leg(conninfo: str) -> tuple[NegotiatingUpstream, StringTransport, Recorder, MemoryReactorClock]:
    upstream = parse_conninfo(conninfo)
    tls = load_upstream_tls(upstream)
    assert tls is not None
    recorder = Recorder()
    clock = MemoryReactorClock()
    protocol = NegotiatingUpstream(Negotiation(upstream), tls, clock, recorder)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, recorder, clock


def test_n_with_require_fails_and_aborts() -> None:
    """SSLRequest goes out; N with require: the leg fails and the connection is aborted."""
    protocol, transport, recorder, clock = leg("host=db sslmode=require")
    assert transport.value() == SSL_REQUEST
    protocol.dataReceived(b"N")
    assert recorder.actions == [
        Fail(FailureReason.SSL_NOT_SUPPORTED, "server does not support SSL, but SSL was required")
    ]
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_n_with_prefer_is_ready_in_plaintext() -> None:
    """N with prefer: ready on the same connection, not encrypted, timer cancelled."""
    protocol, transport, recorder, clock = leg("host=db")
    protocol.dataReceived(b"N")
    assert recorder.actions == [Ready(tls=False)]
    assert not protocol.tls and not transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_negotiation_times_out() -> None:
    """An upstream that never answers the SSLRequest: connect_timeout, then abort."""
    _, transport, recorder, clock = leg("host=db sslmode=require connect_timeout=3")
    clock.advance(2.9)
    assert recorder.actions == []
    clock.advance(0.2)
    assert recorder.actions == [Fail(FailureReason.TIMEOUT, "timeout expired")]
    assert transport.disconnecting


def test_startup_is_sent_and_the_answer_kept_with_allow() -> None:
    """allow: the leg sends the StartupMessage itself; a non-error answer is kept for the client."""
    upstream = parse_conninfo("host=db sslmode=allow")
    tls = load_upstream_tls(upstream)
    assert tls is not None
    recorder = Recorder()
    protocol = NegotiatingUpstream(
        Negotiation(upstream), tls, MemoryReactorClock(), recorder, b"STARTUP"
    )
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b"STARTUP"
    assert recorder.actions == []
    protocol.dataReceived(b"R\x00\x00\x00\x08\x00\x00\x00\x00")
    assert recorder.actions == [Ready(tls=False)]
    assert protocol.startup_sent
    assert protocol.pending == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
