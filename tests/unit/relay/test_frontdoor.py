"""
Tests for pgtls.relay.frontdoor: the front door Protocol, driven with Twisted's
fakes (the fakes and the data directory are in doors.py).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, cast

import pytest
from doors import (
    ALICE,
    CANCEL,
    CLIENT,
    HELLO,
    MITM_DETAIL,
    TLS13,
    TRUST_ALL,
    UPSTREAM_HOST,
    UPSTREAM_PORT,
    Conn,
    Door,
    Pki,
    client_cert_tls,
    fatal,
    make_door,
    relayed_session,
    summary_of,
    texts,
    tls_session,
)
from OpenSSL import SSL
from twisted.internet.address import IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim

from pgtls.core import wire
from pgtls.relay.frontdoor import Phase, client_address
from pgtls.relay.reactor import is_direct
from pgtls.relay.upstream import CANCEL_TIMEOUT
from pgtls.tls.serverctx import NoApplicationProtocol, TLSInfo


def test_a_client_connection_is_dispatched_directly(door: Door) -> None:
    """From its first byte, it skips the relay reactor's per-event log context."""
    conn = door.connect()
    assert is_direct(conn.transport)


# -- negotiation -------------------------------------------------------------


def test_ssl_request_answers_s_and_starts_tls(door: Door) -> None:
    """SSLRequest with ssl = on: exactly b"S", then startTLS with the server context."""
    conn = door.connect()
    conn.send(wire.ssl_request())
    assert conn.answer() == b"S"
    assert conn.transport.tls_started == [door.factory.tls]
    assert conn.protocol.phase is Phase.HANDSHAKE
    assert not conn.closed
    assert door.reactor.tcpClients == []


def test_startup_inside_tls_is_admitted_after_the_handshake(door: Door) -> None:
    """After the handshake the TLS handle is described and a StartupMessage inside TLS passes."""
    conn = tls_session(door)
    assert door.described == [conn.transport.handle]
    assert conn.protocol.tls_info == TLS13
    conn.send(ALICE)
    upstream = door.accept_upstream()
    assert upstream.transport.value() == ALICE
    assert conn.answer() == b""


def test_ssl_request_split_byte_by_byte(door: Door) -> None:
    """An SSLRequest that arrives a byte at a time is answered once, when complete."""
    conn = door.connect()
    request = wire.ssl_request()
    for byte in request[:-1]:
        conn.send(bytes([byte]))
        assert conn.answer() == b""
    conn.send(request[-1:])
    assert conn.answer() == b"S"


def test_ssl_off_answers_n_and_plaintext_startup_works(plain_door: Door) -> None:
    """SSLRequest with ssl = off: b"N", no TLS, and the plaintext StartupMessage is relayed."""
    conn = plain_door.connect()
    conn.send(wire.ssl_request())
    assert conn.take() == b"N"
    assert conn.transport.tls_started == []
    conn.send(ALICE)
    upstream = plain_door.accept_upstream()
    assert upstream.transport.value() == ALICE
    assert conn.protocol.tls_info is None


def test_bytes_after_ssl_request_are_refused_once_tls_is_up(door: Door) -> None:
    """
    SSLRequest and a StartupMessage in one write (CVE-2021-23214): S, the
    handshake, then FATAL 08P01 inside TLS and a close, as PostgreSQL 15
    does; the plaintext bytes never reach the upstream.
    """
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(wire.ssl_request() + ALICE)
        assert conn.take() == b"S"
        assert conn.transport.tls_started == [door.factory.tls]
        assert not conn.closed
        conn.handshake()
    assert fatal(conn.take()) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "08P01",
        "M": "received unencrypted data after SSL request",
        "D": MITM_DETAIL,
    }
    assert conn.closed
    conn.send(ALICE)
    assert door.reactor.tcpClients == []
    assert conn.answer() == b""
    assert "received unencrypted data after SSL request (host=192.0.2.7)" in texts(events)


def test_bytes_after_ssl_request_with_ssl_off_are_refused(plain_door: Door) -> None:
    """SSLRequest plus pipelined bytes with ssl = off: N, then the 08P01 FATAL in plaintext."""
    conn = plain_door.connect()
    conn.send(wire.ssl_request() + ALICE)
    answer = conn.answer()
    assert answer[:1] == b"N"
    assert fatal(answer[1:])["M"] == "received unencrypted data after SSL request"
    assert fatal(answer[1:])["C"] == "08P01"
    assert fatal(answer[1:])["D"] == MITM_DETAIL
    assert conn.closed
    assert plain_door.reactor.tcpClients == []


def test_gssenc_request_answers_n_and_goes_on(door: Door) -> None:
    """GSSENCRequest: b"N" (no GSSAPI), then SSLRequest is still answered S."""
    conn = door.connect()
    conn.send(wire.gssenc_request())
    assert conn.take() == b"N"
    assert not conn.closed
    conn.send(wire.ssl_request())
    assert conn.take() == b"S"
    conn.handshake()
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE


def test_gssenc_request_then_plaintext_startup(door: Door) -> None:
    """After N to GSSENCRequest a plaintext StartupMessage is admitted."""
    conn = door.connect()
    conn.send(wire.gssenc_request())
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE
    assert conn.answer() == b"N"


def test_bytes_after_gssenc_request_are_refused(door: Door) -> None:
    """GSSENCRequest plus pipelined bytes: N, then FATAL 08P01 and a close."""
    conn = door.connect()
    conn.send(wire.gssenc_request() + ALICE)
    answer = conn.answer()
    assert answer[:1] == b"N"
    assert fatal(answer[1:]) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "08P01",
        "M": "received unencrypted data after GSSAPI encryption request",
        "D": MITM_DETAIL,
    }
    assert conn.closed
    assert door.reactor.tcpClients == []


def test_second_ssl_request_inside_tls_is_an_unsupported_protocol(door: Door) -> None:
    """After S and the handshake another SSLRequest is FATAL 0A000 1234.5679, as in PostgreSQL."""
    conn = tls_session(door)
    conn.send(wire.ssl_request())
    assert fatal(conn.answer()) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "0A000",
        "M": "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
    }
    assert conn.closed


# -- direct TLS --------------------------------------------------------------


def test_direct_tls_hands_the_hello_to_the_tls_layer(door: Door) -> None:
    """A first byte 0x16 starts TLS at once; the ClientHello bytes go to the TLS layer, not back."""
    conn = door.connect()
    conn.send(HELLO)
    assert conn.transport.tls_started == [door.factory.tls]
    assert conn.transport.protocol.received == HELLO
    assert conn.answer() == b""
    assert conn.protocol.phase is Phase.HANDSHAKE


def test_direct_tls_with_alpn_postgresql_goes_on_to_startup(door: Door) -> None:
    """Direct TLS with ALPN postgresql: the StartupMessage inside TLS is relayed."""
    conn = door.connect()
    conn.send(HELLO)
    conn.handshake()
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE
    assert conn.answer() == b""


def test_ssl_request_inside_direct_tls_is_answered_n(door: Door) -> None:
    """Inside direct TLS an SSLRequest is answered N, as PostgreSQL 17 does; startup goes on."""
    conn = door.connect()
    conn.send(HELLO)
    conn.handshake()
    conn.send(wire.ssl_request())
    assert conn.answer() == b"N"
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE


def test_direct_tls_without_alpn_is_closed_silently(door: Door) -> None:
    """Direct TLS whose handshake chose no ALPN: closed without a byte, and logged."""
    door.tls_info = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None, None)
    conn = door.connect()
    conn.send(HELLO)
    with capturedLogs() as events:
        conn.handshake()
    assert conn.closed
    assert conn.answer() == b""
    assert (
        "received direct SSL connection request without ALPN protocol negotiation "
        "extension (host=192.0.2.7)"
    ) in texts(events)
    conn.send(ALICE)
    assert door.reactor.tcpClients == []


def test_ssl_request_without_alpn_is_fine(door: Door) -> None:
    """ALPN is required of direct TLS only: after SSLRequest a handshake without it goes on."""
    door.tls_info = TLSInfo("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", 256, None, None)
    conn = tls_session(door)
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE


def test_direct_tls_with_ssl_off_is_closed_silently(plain_door: Door) -> None:
    """A ClientHello to a server with ssl = off: no TLS, no answer, closed."""
    conn = plain_door.connect()
    conn.send(HELLO)
    assert conn.transport.tls_started == []
    assert conn.answer() == b""
    assert conn.closed


# -- bad packets -------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [0, 3, 7, wire.MAX_STARTUP_PACKET_LENGTH + 5, 0x7FFFFFFF],
    ids=["zero", "three", "seven", "10005", "huge"],
)
def test_bad_length_closes_silently(door: Door, length: int) -> None:
    """A length word below 8 or above 10004: closed without a byte, logged as PostgreSQL does."""
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(length.to_bytes(4, "big") + b"\x00\x03\x00\x00")
    assert conn.answer() == b""
    assert conn.closed
    assert "invalid length of startup packet (host=192.0.2.7)" in texts(events)


def test_partial_packet_then_eof_is_logged_as_incomplete(door: Door) -> None:
    """A client that leaves inside its startup packet is logged, as PostgreSQL logs it."""
    conn = door.connect()
    conn.send(ALICE[:10])
    with capturedLogs() as events:
        conn.protocol.connectionLost(Failure(ConnectionDone()))
    assert "incomplete startup packet (host=192.0.2.7)" in texts(events)


def test_empty_connection_is_not_logged(door: Door) -> None:
    """A client that connects and leaves without a byte is not logged (PostgreSQL 12+)."""
    conn = door.connect()
    with capturedLogs() as events:
        conn.protocol.connectionLost(Failure(ConnectionDone()))
    assert not any("startup packet" in text for text in texts(events))


def test_cancel_with_wrong_length_closes_silently(door: Door) -> None:
    """A CancelRequest code in a packet that is not 16 bytes: silent close."""
    conn = door.connect()
    conn.send(b"\x00\x00\x00\x0c" + wire.CANCEL_REQUEST_CODE.to_bytes(4, "big") + b"\x00" * 4)
    assert conn.answer() == b""
    assert conn.closed
    assert door.reactor.tcpClients == []


def test_missing_user_is_fatal_28000(door: Door) -> None:
    """A StartupMessage without user: FATAL 28000 with PostgreSQL's text, then close."""
    conn = door.connect()
    conn.send(wire.startup_message({"database": "app"}))
    assert fatal(conn.answer()) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": "no PostgreSQL user name specified in startup packet",
    }
    assert conn.closed
    assert door.reactor.tcpClients == []


def test_unsupported_protocol_is_fatal_0a000(door: Door) -> None:
    """Protocol 4.0: FATAL 0A000 `unsupported frontend protocol 4.0: server supports 3.0 to 3.0`."""
    conn = door.connect()
    conn.send(wire.startup_message({"user": "alice"}, major=4))
    assert fatal(conn.answer()) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "0A000",
        "M": "unsupported frontend protocol 4.0: server supports 3.0 to 3.0",
    }
    assert conn.closed


def test_protocol_2_gets_a_version_2_error(door: Door) -> None:
    """Protocol 2.0: PostgreSQL 14+'s version-2 error bytes exactly, then close."""
    conn = door.connect()
    conn.send(wire.startup_message({"user": "alice"}, major=2))
    assert conn.answer() == (
        b"EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n\x00"
    )
    assert conn.closed


def test_bad_layout_is_fatal_08p01(door: Door) -> None:
    """A StartupMessage without its final terminator: FATAL 08P01 invalid startup packet layout."""
    conn = door.connect()
    body = b"user\x00alice\x00"  # no final NUL
    conn.send((len(body) + 8).to_bytes(4, "big") + wire.PROTOCOL_3_0.to_bytes(4, "big") + body)
    fields = fatal(conn.answer())
    assert fields["C"] == "08P01"
    assert fields["M"] == "invalid startup packet layout: expected terminator as last byte"
    assert conn.closed


# -- cancel requests ---------------------------------------------------------


def test_cancel_is_forwarded_and_closed_when_the_upstream_closes(plain_door: Door) -> None:
    """
    A CancelRequest: its 16 bytes go to the upstream unchanged, nothing goes
    back to the client, and the client is closed when the upstream closes.
    """
    conn = plain_door.connect()
    conn.send(CANCEL)
    assert plain_door.reactor.tcpClients[-1][:2] == (UPSTREAM_HOST, UPSTREAM_PORT)
    upstream = plain_door.accept_upstream()
    assert upstream.transport.value() == CANCEL
    assert len(upstream.transport.value()) == 16
    assert not conn.closed
    upstream.lost()
    assert conn.closed
    assert conn.answer() == b""
    assert plain_door.reactor.getDelayedCalls() == []


def test_cancel_inside_tls_is_forwarded(door: Door) -> None:
    """A CancelRequest after S and the handshake is forwarded too."""
    conn = tls_session(door)
    conn.send(CANCEL)
    assert door.accept_upstream().transport.value() == CANCEL


def test_cancel_gives_up_on_an_unreachable_upstream(plain_door: Door) -> None:
    """No upstream connection within CANCEL_TIMEOUT: the attempt stops, the client is closed."""
    conn = plain_door.connect()
    conn.send(CANCEL)
    # The startup timer is done with: only the cancel's own bound remains.
    assert [call.getTime() for call in plain_door.reactor.getDelayedCalls()] == [CANCEL_TIMEOUT]
    plain_door.reactor.advance(CANCEL_TIMEOUT - 0.001)
    assert not conn.closed
    plain_door.reactor.advance(0.001)
    assert plain_door.reactor.connectors[-1].stoppedConnecting
    assert conn.closed
    assert conn.answer() == b""


def test_cancel_gives_up_on_a_silent_upstream(plain_door: Door) -> None:
    """An upstream that takes the cancel and never closes is aborted after CANCEL_TIMEOUT."""
    conn = plain_door.connect()
    conn.send(CANCEL)
    upstream = plain_door.accept_upstream()
    plain_door.reactor.advance(CANCEL_TIMEOUT)
    assert upstream.transport.disconnected  # abortConnection
    assert not conn.closed
    upstream.lost()  # what the reactor reports after the abort
    assert conn.closed


def test_cancel_with_a_refused_upstream_closes_the_client(plain_door: Door) -> None:
    """A refused upstream connection ends the cancel at once; the client sees only a close."""
    conn = plain_door.connect()
    conn.send(CANCEL)
    plain_door.refuse_upstream()
    assert conn.closed
    assert conn.answer() == b""
    assert plain_door.reactor.getDelayedCalls() == []


# -- admission ---------------------------------------------------------------


def test_no_hba_entry_is_fatal_28000(tmp_path: Path, pki: Pki) -> None:
    """No matching pg_hba.conf line: PostgreSQL's 28000 message, then close, no upstream."""
    door = make_door(tmp_path, pki, hba=["hostnossl all all 0.0.0.0/0 trust"])
    conn = tls_session(door)
    with capturedLogs() as events:
        conn.send(ALICE)
    assert fatal(conn.answer()) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": 'no pg_hba.conf entry for host "192.0.2.7", user "alice", database "app", '
        "SSL encryption",
    }
    assert conn.closed
    assert door.reactor.tcpClients == []
    assert (
        'refused host=192.0.2.7 user=alice database=app: no pg_hba.conf entry for host "192.0.2.7",'
        ' user "alice", database "app", SSL encryption'
    ) in texts(events)


def test_reject_line_is_fatal_and_its_detail_stays_in_the_log(tmp_path: Path, pki: Pki) -> None:
    """A reject line: 28000 `pg_hba.conf rejects connection ...`; the line is only logged."""
    door = make_door(tmp_path, pki, ssl=False, hba=["host all bob 0.0.0.0/0 reject", *TRUST_ALL])
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(wire.startup_message({"user": "bob", "database": "app"}))
    answer = conn.answer()
    assert fatal(answer) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": 'pg_hba.conf rejects connection for host "192.0.2.7", user "bob", database "app", '
        "no encryption",
    }
    assert b"pg_hba.conf line 1" not in answer
    (refusal,) = [text for text in texts(events) if text.startswith("refused ")]
    assert "line 1" in refusal


def test_refusal_inside_tls_closes_the_socket_too(tmp_path: Path, pki: Pki) -> None:
    """
    A refusal inside TLS: the FATAL, the TLS close, and the TCP close at
    once.  The TLS close alone waits for the client's close_notify, which
    the transport, paused while pg_hba.conf decided, would never read.
    """
    door = make_door(tmp_path, pki, hba=["hostnossl all all 0.0.0.0/0 trust"])
    conn = tls_session(door)
    conn.send(ALICE)
    assert conn.transport.producerState == "paused"
    assert fatal(conn.answer())["C"] == "28000"
    assert conn.transport.disconnecting
    assert conn.socket_closed


def test_admitted_startup_reaches_the_upstream_unchanged_with_what_followed(door: Door) -> None:
    """
    The StartupMessage goes to the upstream byte for byte, followed by the
    bytes that came after it in the same write and while connecting.
    """
    startup = wire.startup_message(
        [("user", "alice"), ("database", "app"), ("options", "-c x=1"), ("user", "alice")]
    )
    conn = tls_session(door)
    conn.send(startup + b"p\x00\x00\x00\x09pass\x00")
    assert conn.transport.producerState == "paused"
    conn.send(b"Q\x00\x00\x00\x05")  # arrived before the pause took hold
    assert door.reactor.tcpClients[-1][:2] == (UPSTREAM_HOST, UPSTREAM_PORT)
    upstream = door.accept_upstream()
    assert upstream.transport.value() == startup + b"p\x00\x00\x00\x09pass\x00Q\x00\x00\x00\x05"
    assert conn.answer() == b""


def test_relay_both_ways(door: Door) -> None:
    """Once relayed, client bytes go to the upstream and upstream bytes to the client, unchanged."""
    conn, upstream = relayed_session(door)
    conn.send(b"Q\x00\x00\x00\x0dselect 1\x00")
    assert upstream.transport.value() == b"Q\x00\x00\x00\x0dselect 1\x00"
    upstream.send(b"Z\x00\x00\x00\x05I")
    assert conn.answer() == b"Z\x00\x00\x00\x05I"
    conn.send(wire.ssl_request())  # no longer special: just bytes
    assert upstream.transport.value().endswith(wire.ssl_request())


def test_a_relayed_session_keeps_only_what_it_needs(door: Door) -> None:
    """
    An idle relayed session holds no startup reader and only the user and
    database of its StartupMessage; every session's upstream connection
    comes from one shared factory.
    """
    first, _ = relayed_session(door)
    second, _ = relayed_session(door)
    for conn in (first, second):
        with pytest.raises(AssertionError):
            conn.protocol.reader  # noqa: B018
        startup = conn.protocol.startup
        assert startup is not None
        assert startup.packet == b""
        assert [name for name, _ in startup.parameters] == ["user", "database"]
    factories = [cast(Any, client[2])._wrappedFactory for client in door.reactor.tcpClients]
    assert len(factories) == 2
    assert factories[0] is factories[1] is door.factory.upstream_factory


def phase_of(conn: Conn) -> Phase:
    """The connection's phase, read anew each call (mypy narrows an attribute it saw)."""
    phase: Phase = conn.protocol.phase
    return phase


def test_flow_control_both_ways(door: Door) -> None:
    """Each transport is registered, streaming, as the other's producer."""
    conn, upstream = relayed_session(door)
    assert conn.transport.producer is upstream.transport
    assert conn.transport.streaming is True
    assert upstream.transport.producer is conn.transport
    assert upstream.transport.streaming is True


def test_client_is_paused_while_the_upstream_connects(door: Door) -> None:
    """From the StartupMessage until the upstream accepts, the client is not read; then it is."""
    conn = tls_session(door)
    assert conn.transport.producerState == "producing"
    conn.send(ALICE)
    assert conn.transport.producerState == "paused"
    assert phase_of(conn) is Phase.CONNECTING
    door.accept_upstream()
    assert conn.transport.producerState == "producing"
    assert phase_of(conn) is Phase.RELAYING


def test_upstream_close_closes_the_client(door: Door) -> None:
    """
    When the upstream closes, the client is closed after what it was sent;
    the upstream is unregistered as its producer first, or a TLS transport
    would wait for it and never close.
    """
    conn, upstream = relayed_session(door)
    upstream.send(b"E-upstream-error")
    upstream.lost()
    assert conn.answer() == b"E-upstream-error"
    assert conn.transport.producer is None
    assert conn.transport.disconnecting
    assert conn.socket_closed
    conn.send(b"X\x00\x00\x00\x04")
    assert upstream.transport.value() == b""


def test_client_close_closes_the_upstream(door: Door) -> None:
    """When the client goes, the upstream connection is closed (its producer unregistered)."""
    conn, upstream = relayed_session(door)
    conn.lost()
    assert upstream.transport.disconnecting
    assert upstream.transport.producer is None
    assert door.factory.sessions == 0
    upstream.lost()
    assert conn.answer() == b""


def test_upstream_refusal_is_fatal_57p03_without_its_address(door: Door) -> None:
    """
    An upstream that cannot be reached: FATAL 57P03, which names neither
    the upstream's address nor its port; the reason is logged.
    """
    conn = tls_session(door)
    conn.send(ALICE)
    with capturedLogs() as events:
        door.refuse_upstream()
    answer = conn.answer()
    assert fatal(answer) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "57P03",
        "M": "the database system is not accepting connections",
        "D": "pgtls could not connect to the upstream server.",
    }
    assert UPSTREAM_HOST.encode() not in answer
    assert str(UPSTREAM_PORT).encode() not in answer
    assert conn.transport.disconnecting
    assert conn.socket_closed
    (warning,) = [e for e in events if e["log_level"] is LogLevel.warn]
    # The line names the upstream (pgtls.upstream's default socket here) and
    # why, in libpq's words, not the client (issue 16, item 5).
    assert formatEvent(warning) == (
        "could not connect to the upstream server at "
        "/var/run/postgresql/.s.PGSQL.5432: Connection refused"
    )
    assert warning["upstream_failure"] == "connection_refused"
    conn.lost()
    assert door.factory.sessions == 0


def test_client_leaving_while_connecting_cancels_the_attempt(door: Door) -> None:
    """A client leaving while the upstream connects: the attempt is cancelled, its slot freed."""
    conn = tls_session(door)
    conn.send(ALICE)
    assert door.factory.sessions == 1
    conn.lost()
    assert door.reactor.connectors[-1].stoppedConnecting
    assert door.factory.sessions == 0
    assert door.reactor.getDelayedCalls() == []


# -- authentication_timeout --------------------------------------------------


def test_authentication_timeout_closes_silently(tmp_path: Path, pki: Pki) -> None:
    """A client silent for authentication_timeout: closed without a byte, only the session line."""
    door = make_door(tmp_path, pki, settings=["authentication_timeout = 5s"])
    conn = door.connect()
    conn.send(b"\x00\x00")
    door.reactor.advance(4.999)
    assert not conn.closed
    with capturedLogs() as events:
        door.reactor.advance(0.001)
        conn.lost()
    assert conn.closed
    assert not conn.transport.disconnected  # a FIN, as PostgreSQL's exit: no reset
    assert conn.answer() == b""
    # Only pgtls's own access-log line, none of PostgreSQL's.
    (summary,) = [e for e in events if e["log_level"] >= LogLevel.info]
    assert (summary["log_format"], summary["outcome"]) == ("session {summary}", "timeout")


def test_session_line_without_startup_shows_unknown_names(tmp_path: Path, pki: Pki) -> None:
    """
    No StartupMessage: the text shows ``user=[unknown] database=[unknown]``,
    as PostgreSQL's log_line_prefix shows missing names; the fields stay None.
    """
    door = make_door(tmp_path, pki, settings=["authentication_timeout = 5s"])
    conn = door.connect()
    with capturedLogs() as events:
        door.reactor.advance(5)
        conn.lost()
    (summary,) = [e for e in events if e["log_format"] == "session {summary}"]
    assert (summary["user"], summary["database"]) == (None, None)
    assert " user=[unknown] database=[unknown] " in summary["summary"]
    assert "None" not in formatEvent(summary)


def test_authentication_timeout_during_the_handshake(door: Door) -> None:
    """After S, a handshake that never ends is cut at the timeout, not logged as an SSL error."""
    conn = door.connect()
    conn.send(wire.ssl_request())
    door.reactor.advance(60)
    # The TCP connection under TLS is closed at once: no TLS shutdown mid-handshake.
    assert conn.socket_closed
    assert not conn.transport.disconnecting
    with capturedLogs() as events:
        conn.lost()
    (summary,) = [e for e in events if e["log_level"] >= LogLevel.info]
    assert (summary["log_format"], summary["outcome"]) == ("session {summary}", "timeout")


def test_authentication_timeout_does_not_fire_after_admission(door: Door) -> None:
    """Once relayed, the session outlives authentication_timeout; no timer is left behind."""
    conn, _upstream = relayed_session(door)
    assert door.reactor.getDelayedCalls() == []
    door.reactor.advance(3600)
    assert not conn.closed


def test_closed_connection_leaves_no_timer(door: Door) -> None:
    """A client that leaves during startup takes its timer with it."""
    conn = door.connect()
    assert len(door.reactor.getDelayedCalls()) == 1
    conn.lost()
    assert door.reactor.getDelayedCalls() == []


# -- limits and certificates ------------------------------------------------


def test_max_connections(tmp_path: Path, pki: Pki) -> None:
    """
    Past max_connections: FATAL 53300 `sorry, too many clients already`;
    a session that ends frees its slot, and refused clients never take one.
    """
    door = make_door(tmp_path, pki, ssl=False, settings=["max_connections = 1"])
    first = door.connect()
    first.send(ALICE)
    door.accept_upstream()
    assert door.factory.sessions == 1
    second = door.connect()
    second.send(ALICE)
    assert fatal(second.answer()) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "53300",
        "M": "sorry, too many clients already",
    }
    assert second.closed
    second.lost()
    assert door.factory.sessions == 1
    first.lost()
    assert door.factory.sessions == 0
    third = door.connect()
    third.send(ALICE)
    assert third.answer() == b""
    assert door.factory.sessions == 1


def test_required_client_cert_missing_is_fatal_28000(tmp_path: Path, pki: Pki) -> None:
    """root.crt and clientcert required: a TLS client without a certificate gets 28000."""
    door = make_door(tmp_path, pki, client_ca=True)
    assert door.factory.tls is not None and door.factory.tls.require_client_cert
    conn = tls_session(door)
    conn.send(ALICE)
    assert fatal(conn.answer()) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": "connection requires a valid client certificate",
    }
    assert conn.closed
    assert door.reactor.tcpClients == []


def test_required_client_cert_missing_refuses_a_cancel_too(tmp_path: Path, pki: Pki) -> None:
    """A CancelRequest inside TLS without the required certificate is not forwarded."""
    door = make_door(tmp_path, pki, client_ca=True)
    conn = tls_session(door)
    conn.send(CANCEL)
    assert fatal(conn.answer())["M"] == "connection requires a valid client certificate"
    assert door.reactor.tcpClients == []


def test_required_client_cert_present_is_admitted(tmp_path: Path, pki: Pki) -> None:
    """With a verified client certificate the session passes."""
    door = make_door(tmp_path, pki, client_ca=True)
    door.tls_info = client_cert_tls("alice")
    conn = tls_session(door)
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE


def test_optional_client_cert_missing_is_admitted(tmp_path: Path, pki: Pki) -> None:
    """pgtls.clientcert = optional: no certificate is fine unless pg_hba.conf asks for one."""
    door = make_door(tmp_path, pki, client_ca=True, settings=["pgtls.clientcert = optional"])
    conn = tls_session(door)
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE


# -- logging -----------------------------------------------------------------


def test_log_connections_on(tmp_path: Path, pki: Pki) -> None:
    """log_connections = on: PostgreSQL's `connection received` and `connection authorized`."""
    door = make_door(tmp_path, pki, settings=["log_connections = on"])
    with capturedLogs() as events:
        conn = tls_session(door)
        conn.send(ALICE)
    lines = texts(events)
    assert "connection received: host=192.0.2.7 port=40000" in lines
    assert (
        "connection authorized: user=alice database=app "
        "SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)"
    ) in lines


def test_log_connections_cert_authenticated(tmp_path: Path, pki: Pki) -> None:
    """cert: PostgreSQL 14+'s `connection authenticated` line, between received and authorized."""
    door = make_door(
        tmp_path,
        pki,
        client_ca=True,
        settings=["log_connections = on"],
        hba=["host all bob 0.0.0.0/0 trust", "hostssl all all 0.0.0.0/0 cert"],
    )
    door.tls_info = client_cert_tls("alice", "CN=alice,O=Test")
    with capturedLogs() as events:
        conn = tls_session(door)
        conn.send(ALICE)
    hba_file = os.path.join(door.factory.settings.data_directory, "pg_hba.conf")
    assert [text for text in texts(events) if text.startswith("connection ")] == [
        "connection received: host=192.0.2.7 port=40000",
        f'connection authenticated: identity="CN=alice,O=Test" method=cert ({hba_file}:2)',
        "connection authorized: user=alice database=app "
        "SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)",
    ]
    (authenticated,) = [e for e in events if "identity" in e]
    assert (authenticated["file"], authenticated["line_number"]) == (hba_file, 2)


def test_log_connections_cert_authenticated_then_refused(tmp_path: Path, pki: Pki) -> None:
    """A CN that does not map: authenticated is logged, then the refusal, as PostgreSQL does."""
    door = make_door(
        tmp_path,
        pki,
        client_ca=True,
        settings=["log_connections = on"],
        hba=["hostssl all all 0.0.0.0/0 cert"],
    )
    door.tls_info = client_cert_tls("bob")
    with capturedLogs() as events:
        conn = tls_session(door)
        conn.send(ALICE)
    assert fatal(conn.answer())["M"] == 'certificate authentication failed for user "alice"'
    lines = [text for text in texts(events) if not text.startswith("session ")]
    hba_file = os.path.join(door.factory.settings.data_directory, "pg_hba.conf")
    assert lines[:2] == [
        "connection received: host=192.0.2.7 port=40000",
        f'connection authenticated: identity="CN=bob" method=cert ({hba_file}:1)',
    ]
    assert lines[2].startswith("refused host=192.0.2.7 user=alice database=app: ")


def authenticated_lines_of_admitted_alice(door: Door) -> list[str]:
    """Alice's session is admitted and relayed; the ``authenticated`` lines it logged."""
    with capturedLogs() as events:
        conn = tls_session(door)
        conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE
    return [text for text in texts(events) if "authenticated" in text]


@pytest.mark.parametrize(
    "line",
    ["hostssl all all 0.0.0.0/0 trust", "hostssl all all 0.0.0.0/0 trust clientcert=verify-full"],
)
def test_log_connections_trust_authenticates_no_one(tmp_path: Path, pki: Pki, line: str) -> None:
    """trust (with or without verify-full) calls no set_authn_id: no authenticated line."""
    door = make_door(tmp_path, pki, client_ca=True, settings=["log_connections = on"], hba=[line])
    door.tls_info = client_cert_tls("alice")
    assert authenticated_lines_of_admitted_alice(door) == []


def test_cert_authenticated_not_logged_without_log_connections(tmp_path: Path, pki: Pki) -> None:
    """log_connections = off: no authenticated line either."""
    door = make_door(tmp_path, pki, client_ca=True, hba=["hostssl all all 0.0.0.0/0 cert"])
    door.tls_info = client_cert_tls("alice")
    assert authenticated_lines_of_admitted_alice(door) == []


def test_log_connections_plaintext_with_application_name(tmp_path: Path, pki: Pki) -> None:
    """Without TLS the authorized line has no SSL part; application_name is shown when sent."""
    door = make_door(tmp_path, pki, ssl=False, settings=["log_connections = on"])
    with capturedLogs() as events:
        conn = door.connect()
        conn.send(wire.startup_message({"user": "alice", "application_name": "psql"}))
    assert "connection authorized: user=alice database=alice application_name=psql" in texts(events)


@pytest.mark.parametrize("replication", ["true", "database"])
def test_log_connections_replication(tmp_path: Path, pki: Pki, replication: str) -> None:
    """A walsender (replication=true or database) is a `replication connection`, no database."""
    door = make_door(
        tmp_path,
        pki,
        settings=["log_connections = on"],
        hba=["host replication all 0.0.0.0/0 trust", *TRUST_ALL],
    )
    with capturedLogs() as events:
        conn = tls_session(door)
        conn.send(
            wire.startup_message({"user": "rep", "database": "app", "replication": replication})
        )
    assert (
        "replication connection authorized: user=rep "
        "SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)"
    ) in texts(events)


def test_log_connections_off(door: Door) -> None:
    """log_connections = off (the default): neither line is logged."""
    with capturedLogs() as events:
        conn = tls_session(door)
        conn.send(ALICE)
    assert not [text for text in texts(events) if text.startswith("connection ")]


def test_log_disconnections_session_time(tmp_path: Path, pki: Pki) -> None:
    """log_disconnections = on: PostgreSQL's `disconnection: session time: H:MM:SS.mmm` line."""
    door = make_door(tmp_path, pki, settings=["log_disconnections = on"])
    conn, _upstream = relayed_session(door)
    door.reactor.advance(3723.25)
    with capturedLogs() as events:
        conn.lost()
    assert (
        "disconnection: session time: 1:02:03.250 user=alice database=app host=192.0.2.7 port=40000"
    ) in texts(events)


def test_one_summary_event_per_session(door: Door) -> None:
    """Each connection ends with one `session` event: who, how it ended, bytes each way."""
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        conn.send(b"abc")
        upstream.send(b"defgh")
        upstream.lost()
        conn.lost()
    (summary,) = [e for e in events if e["log_format"].startswith("session ")]
    assert summary["outcome"] == "relayed"
    assert summary["user"] == "alice"
    assert summary["ssl"] is True
    assert summary["protocol"] == "TLSv1.3"
    assert summary["bytes_up"] == len(ALICE) + 3
    assert summary["bytes_down"] == 5


def test_summary_of_a_refused_session_says_why(tmp_path: Path, pki: Pki) -> None:
    """A refused session's summary: outcome refused, detail the message the client got."""
    door = make_door(tmp_path, pki, ssl=False, settings=["max_connections = 1"])
    door.factory.sessions = 1
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(ALICE)
        conn.lost()
    (summary,) = [e for e in events if e["log_format"].startswith("session ")]
    assert summary["outcome"] == "refused"
    assert summary["detail"] == "sorry, too many clients already"


def test_log_namespaces_are_the_ones_operators_filter_on(door: Door, pki: Pki) -> None:
    """
    A connection's lines are in the namespace pgtls.relay.frontdoor.FrontDoor,
    the channel binding verdict in pgtls.relay.frontdoor.FrontDoorFactory,
    wherever their code lives: log filters and the integration tests name them.
    """
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        upstream.lost()
        conn.lost()
        door.factory.upstream_certificate_seen(pki.server.cert)
    summary = summary_of(events)
    assert summary["log_namespace"] == "pgtls.relay.frontdoor.FrontDoor"
    assert summary["log_source"] is conn.protocol
    (binding,) = [e for e in events if e["log_format"].startswith("channel binding: ")]
    assert binding["log_namespace"] == "pgtls.relay.frontdoor.FrontDoorFactory"
    assert binding["log_source"] is door.factory


def test_handshake_failure_is_logged_with_openssl_reason(door: Door) -> None:
    """A connection lost mid-handshake logs `could not accept SSL connection: REASON`."""
    conn = door.connect()
    conn.send(wire.ssl_request())
    with capturedLogs() as events:
        conn.lost(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert "could not accept SSL connection: certificate verify failed (host=192.0.2.7)" in texts(
        events
    )


def test_alpn_abort_is_logged_with_its_typed_reason(door: Door) -> None:
    """A handshake the ALPN callback aborted logs the reason the exception carries."""
    conn = door.connect()
    conn.send(wire.ssl_request())
    with capturedLogs() as events:
        conn.lost(NoApplicationProtocol([b"h2"]))
    assert "could not accept SSL connection: no application protocol (host=192.0.2.7)" in texts(
        events
    )


def test_client_leaving_after_s_is_logged_as_eof(door: Door) -> None:
    """A client that closes after S without a handshake: `... EOF detected`."""
    conn = door.connect()
    conn.send(wire.ssl_request())
    with capturedLogs() as events:
        conn.lost()
    assert "could not accept SSL connection: EOF detected (host=192.0.2.7)" in texts(events)


# -- host names --------------------------------------------------------------


def test_host_name_rules_look_the_client_up(tmp_path: Path, pki: Pki) -> None:
    """A host-name line makes pgtls look the client's address up, and a match admits it."""
    door = make_door(tmp_path, pki, ssl=False, hba=["host all all client.example.test trust"])
    conn = door.connect()
    conn.send(ALICE)
    ((address, looking_up),) = door.lookups
    assert address == ipaddress.ip_address("192.0.2.7")
    assert door.reactor.tcpClients == []
    assert conn.transport.producerState == "paused"
    looking_up.callback("client.example.test")
    assert door.accept_upstream().transport.value() == ALICE


def test_host_name_lookup_failure_refuses(tmp_path: Path, pki: Pki) -> None:
    """No verified host name: the host-name line does not match, and the client is refused."""
    door = make_door(tmp_path, pki, ssl=False, hba=["host all all client.example.test trust"])
    conn = door.connect()
    conn.send(ALICE)
    door.lookups[0][1].callback(None)
    assert fatal(conn.answer())["M"] == (
        'no pg_hba.conf entry for host "192.0.2.7", user "alice", database "app", no encryption'
    )
    assert conn.closed


def test_no_lookup_without_host_name_rules(plain_door: Door) -> None:
    """Rules with addresses only: no host name lookup at all."""
    conn = plain_door.connect()
    conn.send(ALICE)
    assert plain_door.lookups == []
    assert plain_door.accept_upstream().transport.value() == ALICE


def test_client_leaving_during_the_lookup(tmp_path: Path, pki: Pki) -> None:
    """A client gone before its lookup ends: the answer is ignored, nothing is sent or opened."""
    door = make_door(tmp_path, pki, ssl=False, hba=["host all all client.example.test trust"])
    conn = door.connect()
    conn.send(ALICE)
    conn.lost()
    door.lookups[0][1].callback("client.example.test")
    assert door.reactor.tcpClients == []
    assert conn.answer() == b""
    assert door.factory.sessions == 0


def test_max_connections_is_checked_again_after_the_lookup(tmp_path: Path, pki: Pki) -> None:
    """Two clients looked up at once with one slot left: the second to finish gets 53300."""
    door = make_door(
        tmp_path,
        pki,
        ssl=False,
        hba=["host all all client.example.test trust"],
        settings=["max_connections = 1"],
    )
    first, second = door.connect(), door.connect()
    first.send(ALICE)
    second.send(ALICE)
    for _address, looking_up in door.lookups:
        looking_up.callback("client.example.test")
    assert first.answer() == b""
    assert fatal(second.answer())["M"] == "sorry, too many clients already"
    assert door.factory.sessions == 1
    assert len(door.reactor.tcpClients) == 1


def test_ipv4_mapped_client_is_matched_as_ipv4(tmp_path: Path, pki: Pki) -> None:
    """A dual-stack listener's ::ffff:192.0.2.7 matches IPv4 rules and is logged as 192.0.2.7."""
    door = make_door(tmp_path, pki, ssl=False, hba=["host all all 192.0.2.0/24 trust"])
    conn = door.connect(IPv6Address("TCP", "::ffff:192.0.2.7", 40000))
    conn.send(ALICE)
    assert door.accept_upstream().transport.value() == ALICE
    assert str(conn.protocol.address) == "192.0.2.7"


def test_client_address_drops_the_scope() -> None:
    """A link-local client's %scope is not part of the address matched and logged."""
    assert client_address(IPv6Address("TCP", "fe80::1%eth0", 5)) == (
        ipaddress.ip_address("fe80::1"),
        5,
    )


# -- the whole path through iosim --------------------------------------------


class RecordingProtocol(Protocol):
    """Either end of a connection in the iosim test: keeps what it got."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = True


def test_plaintext_session_through_iosim(plain_door: Door) -> None:
    """
    A plaintext session end to end over iosim pumps: startup and query
    reach the upstream, its answer reaches the client, its close closes the
    client.
    """
    client = RecordingProtocol()
    front = plain_door.factory.buildProtocol(CLIENT)
    client_pump = iosim.connect(
        front,
        iosim.FakeTransport(front, isServer=True, peerAddress=CLIENT),
        client,
        iosim.FakeTransport(client, isServer=False),
    )
    assert client.transport is not None
    client.transport.write(ALICE + b"Q\x00\x00\x00\x0dselect 1\x00")
    client_pump.flush()
    server = RecordingProtocol()
    wrapper = plain_door.reactor.tcpClients[-1][2].buildProtocol(None)
    upstream_pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True),
        wrapper,
        iosim.FakeTransport(wrapper, isServer=False),
    )
    assert server.received == ALICE + b"Q\x00\x00\x00\x0dselect 1\x00"
    assert server.transport is not None
    server.transport.write(b"Z\x00\x00\x00\x05I")
    upstream_pump.flush()
    client_pump.flush()
    assert client.received == b"Z\x00\x00\x00\x05I"
    server.transport.loseConnection()
    upstream_pump.flush()
    client_pump.flush()
    assert client.lost
    assert plain_door.factory.sessions == 0


# -- shutdown ----------------------------------------------------------------

ADMIN_SHUTDOWN = ("57P01", "terminating connection due to administrator command")


def test_connections_are_registered_until_lost(door: Door) -> None:
    """Every client connection is in factory.connections from connectionMade to connectionLost."""
    first, second = door.connect(), door.connect()
    assert door.factory.connections == {first.protocol, second.protocol}
    first.lost()
    assert door.factory.connections == {second.protocol}


def test_when_idle_fires_when_the_last_connection_goes(door: Door) -> None:
    """when_idle() fires at once without connections, else when the last one is lost."""
    fired: list[object] = []
    door.factory.when_idle().addCallback(fired.append)
    assert fired == [None]
    first, second = door.connect(), door.connect()
    door.factory.when_idle().addCallback(fired.append)
    first.lost()
    assert fired == [None]
    second.lost()
    assert fired == [None, None]


def test_shutting_down_refuses_a_startup_with_57p03(door: Door) -> None:
    """
    While shutting down, a StartupMessage (after SSL negotiation, as in
    PostgreSQL) gets FATAL 57P03 `the database system is shutting down`;
    nothing reaches the upstream.
    """
    door.factory.shutting_down = True
    conn = tls_session(door)
    conn.send(ALICE)
    fields = fatal(conn.answer())
    assert (fields["C"], fields["M"]) == ("57P03", "the database system is shutting down")
    assert conn.socket_closed
    assert door.reactor.tcpClients == []


def test_terminate_a_relayed_session(door: Door) -> None:
    """
    terminate() stops the upstream leg (both producers unregistered, upstream
    closed) and then writes FATAL 57P01 to the client, once; the upstream's
    later close does not touch the client again.
    """
    conn, upstream = relayed_session(door)
    upstream.send(b"Z\x00\x00\x00\x05I")
    conn.take()
    conn.protocol.terminate()
    fields = fatal(conn.answer())
    assert (fields["C"], fields["M"]) == ADMIN_SHUTDOWN
    assert conn.transport.producer is None
    assert upstream.transport.producer is None
    assert upstream.transport.disconnecting
    assert conn.closed and conn.socket_closed
    answer = conn.answer()
    upstream.lost()
    conn.protocol.terminate()
    assert conn.answer() == answer
    conn.lost()
    assert door.factory.sessions == 0
    assert door.factory.connections == set()


def test_terminate_while_connecting_upstream(door: Door) -> None:
    """Admitted but the upstream not yet connected: FATAL 57P01, and the attempt is cancelled."""
    conn = tls_session(door)
    conn.send(ALICE)
    assert conn.protocol.phase is Phase.CONNECTING
    conn.protocol.terminate()
    fields = fatal(conn.answer())
    assert (fields["C"], fields["M"]) == ADMIN_SHUTDOWN
    conn.lost()
    assert door.reactor.connectors[-1].stoppedConnecting


@pytest.mark.parametrize("step", ["connected", "ssl_request", "handshake"])
def test_terminate_before_the_startup_closes_silently(door: Door, step: str) -> None:
    """A connection still negotiating is closed without a message, as a backend exits quietly."""
    conn = door.connect()
    if step != "connected":
        conn.send(wire.ssl_request())
        conn.take()
    if step == "handshake":
        conn.handshake()
    conn.protocol.terminate()
    assert conn.answer() == b""
    assert conn.socket_closed
