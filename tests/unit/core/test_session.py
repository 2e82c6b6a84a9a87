"""
Tests for pgtls.core.session: the front door's connection policy, driven with
events and no I/O, as h11's tests drive its state machine.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from pgtls.core import wire
from pgtls.core.session import (
    TRANSITIONS,
    Action,
    Admit,
    Close,
    ConnectionLost,
    ConnectUpstream,
    DataReceived,
    DropUpstream,
    Ending,
    Event,
    ForwardCancel,
    HandshakeDone,
    HbaAdmitted,
    HbaRefused,
    Log,
    ProxyHeaderInvalid,
    ProxyHeaderRead,
    Relay,
    Send,
    Session,
    Shutdown,
    StartTLS,
    State,
    StopRelay,
    StopUpstream,
    TimerFired,
    UpstreamClosed,
    UpstreamConnected,
    UpstreamFailed,
)

STARTUP = wire.startup_message({"user": "alice", "database": "shop"})
CANCEL = wire.cancel_request(42, 7)
CLIENT_HELLO = bytes([wire.TLS_HANDSHAKE_RECORD, 3, 1, 0, 5]) + b"hello"
CLOSE = Close()


@dataclass
class Gate:
    """The listening side as the session sees it."""

    shutting_down: bool = False
    sessions: int = 0
    max_connections: int = 10
    tls_offered: bool = True
    require_client_cert: bool = False


def read(packet: bytes) -> wire.StartupMessage:
    """The StartupMessage a fresh reader makes of ``packet``."""
    reader = wire.StartupReader()
    reader.receive_data(packet)
    event = reader.next_event()
    assert isinstance(event, wire.StartupMessage)
    return event


def fatal(sqlstate: str, message: str, detail: str | None = None) -> Send:
    return Send(wire.error_response(sqlstate, message, detail=detail))


def at(state: State, gate: Gate | None = None) -> Session:
    """A session brought to ``state`` the ordinary way, by events only."""
    gate = gate if gate is not None else Gate()
    if state is State.PROXY:
        return Session(gate, proxy=True)
    session = Session(gate)
    if state is State.STARTUP:
        pass
    elif state is State.HANDSHAKE:
        session.handle(DataReceived(wire.ssl_request()))
    elif state is State.CANCELLING:
        session.handle(DataReceived(CANCEL))
    elif state is State.CLOSED:
        session.handle(ConnectionLost())
    else:
        session.handle(DataReceived(STARTUP))
        if state is not State.ADMITTING:
            session.handle(HbaAdmitted())
            if state is not State.CONNECTING:
                session.handle(UpstreamConnected())
    assert session.state is state
    return session


#: One event of each type the table names, and the bytes that make the
#: session read each first-packet event.
EVENTS: dict[type, Event] = {
    ProxyHeaderRead: ProxyHeaderRead(),
    ProxyHeaderInvalid: ProxyHeaderInvalid("PROXY header: bad signature"),
    DataReceived: DataReceived(b"\x00\x00"),
    HandshakeDone: HandshakeDone(b"postgresql", client_cert=False),
    HbaAdmitted: HbaAdmitted(),
    HbaRefused: HbaRefused("no_hba_entry", "28000", "no pg_hba.conf entry"),
    UpstreamConnected: UpstreamConnected(),
    UpstreamFailed: UpstreamFailed("refused"),
    UpstreamClosed: UpstreamClosed(),
    TimerFired: TimerFired(),
    Shutdown: Shutdown(),
    ConnectionLost: ConnectionLost(),
}
PACKETS: dict[type, bytes] = {
    wire.SSLRequest: wire.ssl_request(),
    wire.GSSENCRequest: wire.gssenc_request(),
    wire.DirectTLS: CLIENT_HELLO,
    wire.CancelRequest: CANCEL,
    wire.StartupMessage: STARTUP,
    wire.Closed: b"",
}

TABLE = [
    (state, kind, target) for state, row in TRANSITIONS.items() for kind, target in row.items()
]
ILLEGAL = [(state, kind) for state in State for kind in EVENTS if kind not in TRANSITIONS[state]]


def test_the_table_has_a_row_for_every_state_and_closed_is_final() -> None:
    """Every state has its legal events; nothing leads out of CLOSED."""
    assert set(TRANSITIONS) == set(State)
    assert set(TRANSITIONS[State.CLOSED].values()) == {State.CLOSED}
    assert all(ConnectionLost in row for row in TRANSITIONS.values())


@pytest.mark.parametrize(("state", "kind", "target"), TABLE, ids=str)
def test_every_transition_in_the_table(state: State, kind: type, target: State) -> None:
    """Each (state, event) pair the table allows leads where the table says."""
    session = at(state)
    if kind in PACKETS:
        session.handle(DataReceived(PACKETS[kind]))
    else:
        session.handle(EVENTS[kind])
    assert session.state is target


@pytest.mark.parametrize(("state", "kind"), ILLEGAL, ids=str)
def test_a_pair_not_in_the_table_closes(state: State, kind: type) -> None:
    """An event not legal in a state is an error: logged, recorded, closed."""
    session = at(state)
    ended = session.ended
    actions = session.handle(EVENTS[kind])
    message = f"unexpected {kind.__name__} in state {state.value}"
    assert actions == (Log(message, warn=True), CLOSE)
    assert session.state is State.CLOSED
    if not ended:
        assert session.ending == Ending("protocol_error", None, message)


def test_the_ending_is_recorded_once() -> None:
    """A second ending is ignored, as h11 latches its error; the record is frozen."""
    session = at(State.CANCELLING)
    assert session.ending == Ending("cancel", None, "cancel request forwarded")
    assert session.handle(Shutdown()) == (CLOSE,)
    session.handle(ConnectionLost())
    assert session.ending == Ending("cancel", None, "cancel request forwarded")
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.ending.outcome = "refused"  # type: ignore[misc]


def test_a_connection_that_says_nothing_is_closed_before_startup() -> None:
    session = at(State.STARTUP)
    assert not session.ended
    assert session.handle(ConnectionLost()) == ()
    assert session.ending == Ending("closed", None, "closed before startup")


def test_the_session_imports_nothing_from_twisted() -> None:
    """The policy is pure: importing it loads no part of Twisted."""
    code = (
        "import sys, pgtls.core.session; print([m for m in sys.modules if m.startswith('twisted')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- SSLRequest, GSSENCRequest, direct TLS -----------------------------------


def test_ssl_request_is_answered_s_and_tls_starts() -> None:
    session = at(State.STARTUP)
    assert session.handle(DataReceived(wire.ssl_request())) == (StartTLS(b"S", b""),)
    assert session.encryption == "ssl"
    assert session.handle(HandshakeDone(None, client_cert=False)) == ()
    assert session.state is State.STARTUP
    actions = session.handle(DataReceived(STARTUP))
    assert actions == (Admit(read(STARTUP)),)


def test_ssl_request_without_tls_is_answered_n() -> None:
    """pgtls's ssl off: N, and the client may go on in plaintext."""
    session = at(State.STARTUP, Gate(tls_offered=False))
    assert session.handle(DataReceived(wire.ssl_request())) == (Send(b"N"),)
    assert session.state is State.STARTUP
    assert session.encryption == "none"


def test_ssl_request_inside_direct_tls_is_answered_n() -> None:
    session = at(State.STARTUP)
    session.handle(DataReceived(CLIENT_HELLO))
    session.handle(HandshakeDone(b"postgresql", client_cert=False))
    assert session.handle(DataReceived(wire.ssl_request())) == (Send(b"N"),)


@pytest.mark.parametrize(
    ("request_bytes", "error"),
    [
        (wire.ssl_request(), wire.UnencryptedDataAfterSSLRequest()),
        (wire.gssenc_request(), wire.UnencryptedDataAfterGSSENCRequest()),
    ],
)
def test_bytes_after_a_request_answered_n_are_refused(
    request_bytes: bytes, error: wire.ProtocolError
) -> None:
    session = at(State.STARTUP, Gate(tls_offered=False))
    actions = session.handle(DataReceived(request_bytes + STARTUP))
    assert actions == (Send(b"N"), Log(error.message, warn=True), Send(error.response()), CLOSE)
    assert session.ending == Ending("protocol_error", None, error.message)


def test_plaintext_after_ssl_request_is_refused_once_tls_is_up() -> None:
    """CVE-2021-23214: bytes sent before S are dropped, and the session refused."""
    session = at(State.STARTUP)
    assert session.handle(DataReceived(wire.ssl_request() + STARTUP)) == (StartTLS(b"S", b""),)
    error = wire.UnencryptedDataAfterSSLRequest()
    actions = session.handle(HandshakeDone(None, client_cert=False))
    assert actions == (Log(error.message, warn=True), Send(error.response()), CLOSE)
    assert session.startup is None


def test_direct_tls_hands_the_client_hello_over() -> None:
    session = at(State.STARTUP)
    assert session.handle(DataReceived(CLIENT_HELLO)) == (StartTLS(b"", CLIENT_HELLO),)
    assert session.state is State.HANDSHAKE


def test_direct_tls_without_alpn_is_refused() -> None:
    session = at(State.STARTUP)
    session.handle(DataReceived(CLIENT_HELLO))
    actions = session.handle(HandshakeDone(None, client_cert=False))
    assert actions == (
        Log(
            "received direct SSL connection request without ALPN protocol negotiation extension",
            warn=False,
        ),
        CLOSE,
    )
    assert session.ending == Ending("refused", "direct_ssl_no_alpn", "direct SSL without ALPN")


def test_direct_tls_when_tls_is_off_is_closed() -> None:
    session = at(State.STARTUP, Gate(tls_offered=False))
    assert session.handle(DataReceived(CLIENT_HELLO)) == (CLOSE,)
    assert session.ending == Ending("refused", "direct_ssl_off", "direct SSL rejected: ssl is off")


def test_a_bad_packet_is_a_protocol_error() -> None:
    session = at(State.STARTUP)
    error = wire.InvalidLength()
    actions = session.handle(DataReceived(b"\x00\x00\x00\x04"))
    # PostgreSQL logs it and closes without an answer.
    assert actions == (Log(error.message, warn=True), CLOSE)
    assert session.ending.outcome == "protocol_error"


# -- admission ---------------------------------------------------------------

CERT_REQUIRED = (
    "client_cert_required",
    fatal("28000", "connection requires a valid client certificate"),
)


@pytest.mark.parametrize(
    ("gate", "reason", "answer"),
    [
        (
            Gate(shutting_down=True),
            "shutting_down",
            fatal("57P03", "the database system is shutting down"),
        ),
        (Gate(sessions=10), "too_many_clients", fatal("53300", "sorry, too many clients already")),
    ],
)
def test_a_startup_message_is_refused_by_limits(gate: Gate, reason: str, answer: Send) -> None:
    session = at(State.STARTUP, gate)
    assert session.handle(DataReceived(STARTUP)) == (answer, CLOSE)
    assert session.ending.outcome == "refused"
    assert session.ending.reason == reason
    assert session.startup is not None and session.startup.user == "alice"


@pytest.mark.parametrize("packet", [STARTUP, CANCEL])
def test_tls_without_a_required_client_certificate_is_refused(packet: bytes) -> None:
    session = at(State.HANDSHAKE, Gate(require_client_cert=True))
    session.handle(HandshakeDone(None, client_cert=False))
    assert session.handle(DataReceived(packet)) == (CERT_REQUIRED[1], CLOSE)
    assert session.ending.reason == CERT_REQUIRED[0]


def test_a_required_client_certificate_is_not_asked_of_plaintext() -> None:
    """pg_hba.conf decides for plaintext clients (hostssl lines do not match them)."""
    session = at(State.STARTUP, Gate(require_client_cert=True))
    assert type(session.handle(DataReceived(STARTUP))[0]) is Admit


def test_a_cancel_request_is_forwarded() -> None:
    session = at(State.STARTUP)
    assert session.handle(DataReceived(CANCEL)) == (ForwardCancel(CANCEL),)
    assert session.ending == Ending("cancel", None, "cancel request forwarded")


def test_admission_rechecks_max_connections() -> None:
    """A host name look-up may have let others in meanwhile."""
    gate = Gate()
    session = at(State.ADMITTING, gate)
    gate.sessions = 10
    assert session.handle(HbaAdmitted()) == (
        fatal("53300", "sorry, too many clients already"),
        CLOSE,
    )


def test_admitted_sessions_connect_upstream() -> None:
    session = at(State.ADMITTING)
    assert session.handle(HbaAdmitted()) == (ConnectUpstream(),)


def test_a_pg_hba_refusal_is_sent() -> None:
    session = at(State.ADMITTING)
    actions = session.handle(HbaRefused("hba_reject", "28000", "pg_hba.conf rejects connection"))
    assert actions == (fatal("28000", "pg_hba.conf rejects connection"), CLOSE)
    assert session.ending == Ending("refused", "hba_reject", "pg_hba.conf rejects connection")


# -- upstream and relay --------------------------------------------------------


def test_relay_sends_the_startup_and_what_followed_it() -> None:
    session = at(State.ADMITTING)
    session.handle(DataReceived(b"Q\x00"))
    session.handle(HbaAdmitted())
    session.handle(DataReceived(b"\x00\x00"))
    assert session.handle(UpstreamConnected()) == (Relay(STARTUP, b"Q\x00\x00\x00"),)
    with pytest.raises(AssertionError):
        session.reader  # noqa: B018
    assert session.startup is not None and session.startup.packet == b""
    assert not session.ended


def test_an_upstream_for_a_client_that_left_is_dropped() -> None:
    session = at(State.CONNECTING)
    session.handle(ConnectionLost())
    assert session.handle(UpstreamConnected()) == (DropUpstream(),)
    assert session.handle(UpstreamFailed("refused")) == ()


def test_an_upstream_failure_is_57p03_without_its_address() -> None:
    session = at(State.CONNECTING)
    actions = session.handle(UpstreamFailed("refused"))
    message = "the database system is not accepting connections"
    detail = "pgtls could not connect to the upstream server."
    assert actions == (fatal("57P03", message, detail), CLOSE)
    assert session.ending == Ending("upstream_unavailable", "refused", message)


def test_the_upstream_closing_ends_the_relay() -> None:
    session = at(State.RELAYING)
    assert session.handle(UpstreamClosed()) == (StopRelay(), CLOSE)
    assert session.ending == Ending("relayed", None, "upstream closed the connection")


# -- timer, shutdown, connection lost -------------------------------------------

PAST_STARTUP = [State.ADMITTING, State.CONNECTING]
NEGOTIATING = [State.PROXY, State.STARTUP, State.HANDSHAKE]
TERMINATING = "terminating connection due to administrator command"


@pytest.mark.parametrize("state", [*NEGOTIATING, *PAST_STARTUP])
def test_the_authentication_timeout_closes_the_socket_silently(state: State) -> None:
    session = at(state)
    assert session.handle(TimerFired()) == (Close(graceful=False),)
    assert session.ending == Ending("timeout", None, "authentication timeout")


@pytest.mark.parametrize("state", NEGOTIATING)
def test_a_shutdown_closes_a_negotiating_connection_without_a_word(state: State) -> None:
    session = at(state)
    assert session.handle(Shutdown()) == (CLOSE,)
    assert session.ending == Ending("closed", None, "terminated by a fast shutdown")


@pytest.mark.parametrize("state", PAST_STARTUP)
def test_a_shutdown_terminates_a_session_being_admitted(state: State) -> None:
    session = at(state)
    assert session.handle(Shutdown()) == (fatal("57P01", TERMINATING), CLOSE)
    assert session.ending == Ending("closed", None, TERMINATING)


def test_a_shutdown_stops_the_relay_before_the_fatal() -> None:
    session = at(State.RELAYING)
    actions = session.handle(Shutdown())
    assert actions == (StopRelay(), StopUpstream(), fatal("57P01", TERMINATING), CLOSE)
    assert session.ending == Ending("relayed", None, TERMINATING)


@pytest.mark.parametrize(
    ("state", "event", "ending"),
    [
        (State.PROXY, ConnectionLost(), Ending("closed", None, "closed before startup")),
        (
            State.HANDSHAKE,
            ConnectionLost("unexpected eof"),
            Ending("handshake_failed", "unexpected eof", "TLS handshake failed"),
        ),
        (
            State.ADMITTING,
            ConnectionLost(),
            Ending("closed", None, "client left before the session started"),
        ),
        (
            State.CONNECTING,
            ConnectionLost(),
            Ending("closed", None, "client left before the session started"),
        ),
        (State.RELAYING, ConnectionLost(), Ending("relayed", None, "client closed the connection")),
    ],
)
def test_connection_lost_records_how(state: State, event: ConnectionLost, ending: Ending) -> None:
    session = at(state)
    assert session.handle(event) == ()
    assert session.ending == ending
    assert session.state is State.CLOSED


def test_a_client_leaving_mid_packet_is_logged_as_postgresql_does() -> None:
    session = at(State.STARTUP)
    session.handle(DataReceived(STARTUP[:6]))
    error = wire.IncompleteStartupPacket()
    actions: Sequence[Action] = session.handle(ConnectionLost())
    assert actions == (Log(error.message, warn=False),)
    assert session.ending == Ending("protocol_error", None, error.message)


def test_a_proxy_header_error_ends_the_connection() -> None:
    session = at(State.PROXY)
    assert session.handle(ProxyHeaderInvalid("bad signature")) == (CLOSE,)
    assert session.ending == Ending("protocol_error", None, "bad signature")
