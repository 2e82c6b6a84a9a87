"""
The front door's connection policy as a sans-IO state machine.

A :class:`Session` takes events (bytes from the client, TLS handshake done,
the pg_hba.conf verdict, the upstream connected or failed, the
authentication timer, a fast shutdown, the connection lost) and returns
actions for its driver (pgtls.relay.frontdoor) to perform: send bytes, start TLS,
forward a cancel request, check pg_hba.conf, connect the upstream, relay,
close.  It decides the answer to SSLRequest (``S`` or ``N``), refuses
plaintext sent after it (CVE-2021-23214), requires ALPN on direct TLS and a
client certificate where one is required, and applies max_connections and
the shutdown.  It does no I/O and imports nothing from twisted.internet, so
its tests drive it with events alone.

Which event is legal in which state is one table, :data:`TRANSITIONS`, as
h11's ``EVENT_TRIGGERED_TRANSITIONS``: a (state, event type) pair that is
not in it is an error and closes the connection.  The table names where an
event leads when the policy accepts it; when the policy refuses it, the
connection ends (:attr:`State.CLOSED`), and an SSLRequest or GSSENCRequest
answered ``N`` leaves the state as it was.  How the connection ended is
recorded once, as an :class:`Ending`; a later attempt to end it is ignored,
as h11 latches its error.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, get_args

from pgtls.core import wire

__all__ = [
    "ALPN_POSTGRESQL",
    "ENCRYPTIONS",
    "OUTCOMES",
    "TRANSITIONS",
    "Action",
    "Admit",
    "Close",
    "ConnectUpstream",
    "ConnectionLost",
    "DataReceived",
    "DropUpstream",
    "Encryption",
    "Ending",
    "Event",
    "ForwardCancel",
    "Gate",
    "HandshakeDone",
    "HbaAdmitted",
    "HbaRefused",
    "Log",
    "Outcome",
    "ProxyHeaderInvalid",
    "ProxyHeaderRead",
    "Relay",
    "Send",
    "Session",
    "Shutdown",
    "StartTLS",
    "State",
    "StopRelay",
    "StopUpstream",
    "TimerFired",
    "UpstreamClosed",
    "UpstreamConnected",
    "UpstreamFailed",
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

ALPN_POSTGRESQL = b"postgresql"


class State(enum.Enum):
    """Where a connection is; each event is legal in some states only."""

    PROXY = "proxy"  # reading a load balancer's PROXY protocol header
    STARTUP = "startup"  # reading negotiation and startup packets
    HANDSHAKE = "handshake"  # TLS handshake under way
    ADMITTING = "admitting"  # pg_hba.conf decision pending (host name lookup)
    CONNECTING = "connecting"  # upstream connection under way; client paused
    RELAYING = "relaying"
    CANCELLING = "cancelling"
    CLOSED = "closed"


# --- events in ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyHeaderRead:
    """The driver read a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeaderInvalid:
    """The PROXY protocol header was invalid; ``message`` says why."""

    message: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes from the client (outside TLS, or decrypted)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The client's TLS handshake completed with this ALPN and client certificate (or none)."""

    alpn: bytes | None
    client_cert: bool


@dataclass(frozen=True, slots=True)
class HbaAdmitted:
    """pg_hba.conf admits the session."""


@dataclass(frozen=True, slots=True)
class HbaRefused:
    """pg_hba.conf refuses the session: the metrics label, SQLSTATE and message."""

    reason: str
    sqlstate: str
    message: str


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    """The upstream leg is ready for the client's StartupMessage."""


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """The upstream leg could not be opened; ``reason`` is the metrics label."""

    reason: str


@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    """The upstream closed a relayed session."""


@dataclass(frozen=True, slots=True)
class TimerFired:
    """authentication_timeout passed before the session was relayed."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """A fast shutdown ends the connection."""


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The client connection is gone; ``tls_reason`` is OpenSSL's, if a handshake failed."""

    tls_reason: str | None = None


Event: TypeAlias = (
    ProxyHeaderRead
    | ProxyHeaderInvalid
    | DataReceived
    | HandshakeDone
    | HbaAdmitted
    | HbaRefused
    | UpstreamConnected
    | UpstreamFailed
    | UpstreamClosed
    | TimerFired
    | Shutdown
    | ConnectionLost
)

# --- actions out ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Write ``answer`` (``S``, or nothing for direct TLS), start TLS, then feed it ``hello``."""

    answer: bytes
    hello: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """
    Close the client connection.  ``graceful``: through the transport (a
    TLS layer sends close_notify) and then its socket; else the socket only.
    """

    graceful: bool = True


@dataclass(frozen=True, slots=True)
class Log:
    """Log ``message`` about the client (warn, else info)."""

    message: str
    warn: bool


@dataclass(frozen=True, slots=True)
class ForwardCancel:
    """Stop the timer, send this CancelRequest to the upstream, then close."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class Admit:
    """Pause the client and ask pg_hba.conf about this StartupMessage."""

    startup: wire.StartupMessage


@dataclass(frozen=True, slots=True)
class ConnectUpstream:
    """The session is admitted: count it and open the upstream leg."""


@dataclass(frozen=True, slots=True)
class Relay:
    """Stop the timer, send ``first`` upstream, relay both ways."""

    startup: bytes
    buffered: bytes


@dataclass(frozen=True, slots=True)
class DropUpstream:
    """An upstream leg came for a connection that is gone: close it."""


@dataclass(frozen=True, slots=True)
class StopRelay:
    """Stop relaying the client's bytes."""


@dataclass(frozen=True, slots=True)
class StopUpstream:
    """Stop relaying the upstream's bytes and close the upstream leg."""


Action: TypeAlias = (
    Send
    | StartTLS
    | Close
    | Log
    | ForwardCancel
    | Admit
    | ConnectUpstream
    | Relay
    | DropUpstream
    | StopRelay
    | StopUpstream
)

_CLOSE = Close()
_CONNECT_UPSTREAM = ConnectUpstream()
_DROP_UPSTREAM = DropUpstream()
_STOP_RELAY = StopRelay()
_STOP_UPSTREAM = StopUpstream()
_CLOSE_SOCKET = Close(graceful=False)
_N = Send(b"N")
_NONE: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class Ending:
    """
    How a connection ended, for the session summary and the metrics: a
    fixed word, the reason label that goes with it (a refusal's kind,
    OpenSSL's reason), and the words of the log (PostgreSQL's message).
    """

    outcome: Outcome
    reason: str | None
    detail: str


#: A connection that ended without anything to say.
CLOSED_BEFORE_STARTUP = Ending("closed", None, "closed before startup")

_S = State
_EVERY_EVENT_ENDS: dict[type, State] = {
    TimerFired: _S.CLOSED,
    Shutdown: _S.CLOSED,
    ConnectionLost: _S.CLOSED,
}

#: {state: {event type: next state}}: the only legal (state, event) pairs,
#: and where each leads when the policy accepts the event.  The first-packet
#: events (pgtls.core.wire) are read by the session from DataReceived in STARTUP.
TRANSITIONS: dict[State, dict[type, State]] = {
    _S.PROXY: {
        ProxyHeaderRead: _S.STARTUP,
        ProxyHeaderInvalid: _S.CLOSED,
        **_EVERY_EVENT_ENDS,
    },
    _S.STARTUP: {
        DataReceived: _S.STARTUP,
        wire.SSLRequest: _S.HANDSHAKE,
        wire.GSSENCRequest: _S.STARTUP,
        wire.DirectTLS: _S.HANDSHAKE,
        wire.CancelRequest: _S.CANCELLING,
        wire.StartupMessage: _S.ADMITTING,
        wire.Closed: _S.CLOSED,
        **_EVERY_EVENT_ENDS,
    },
    _S.HANDSHAKE: {
        DataReceived: _S.HANDSHAKE,  # ignored: TLS's bytes, or after a failure
        HandshakeDone: _S.STARTUP,
        **_EVERY_EVENT_ENDS,
    },
    _S.ADMITTING: {
        DataReceived: _S.ADMITTING,  # read before the pause: kept for the upstream
        HbaAdmitted: _S.CONNECTING,
        HbaRefused: _S.CLOSED,
        **_EVERY_EVENT_ENDS,
    },
    _S.CONNECTING: {
        DataReceived: _S.CONNECTING,  # likewise
        UpstreamConnected: _S.RELAYING,
        UpstreamFailed: _S.CLOSED,
        **_EVERY_EVENT_ENDS,
    },
    _S.RELAYING: {
        DataReceived: _S.RELAYING,  # the driver relays these itself
        UpstreamClosed: _S.CLOSED,
        Shutdown: _S.CLOSED,
        ConnectionLost: _S.CLOSED,
    },
    _S.CANCELLING: {
        DataReceived: _S.CANCELLING,  # ignored
        Shutdown: _S.CLOSED,
        ConnectionLost: _S.CLOSED,
    },
    _S.CLOSED: {
        # What comes after the end: late bytes, a leg or verdict that arrives
        # for a client that is gone.  Nothing more is done.
        DataReceived: _S.CLOSED,
        HandshakeDone: _S.CLOSED,
        HbaAdmitted: _S.CLOSED,
        HbaRefused: _S.CLOSED,
        UpstreamConnected: _S.CLOSED,
        UpstreamFailed: _S.CLOSED,
        UpstreamClosed: _S.CLOSED,
        Shutdown: _S.CLOSED,
        ConnectionLost: _S.CLOSED,
    },
}


class Gate(Protocol):
    """What the session reads from the listening side when it decides."""

    @property
    def shutting_down(self) -> bool: ...

    @property
    def sessions(self) -> int: ...

    @property
    def max_connections(self) -> int: ...

    @property
    def tls_offered(self) -> bool: ...

    @property
    def require_client_cert(self) -> bool: ...


class Session:
    """
    One client connection's policy, from its first byte to its end.

    :ivar state: the :class:`State` it is in.
    :ivar startup: the client's StartupMessage, once read (brief once relayed).
    :ivar encryption: ``ssl`` once TLS was started.
    """

    __slots__ = (
        "_client_cert",
        "_direct_tls",
        "_ending",
        "_gate",
        "_reader",
        "_stranded_plaintext",
        "_tls_up",
        "encryption",
        "startup",
        "state",
    )

    def __init__(self, gate: Gate, *, proxy: bool = False) -> None:
        """
        :param gate: the listening side's limits and TLS settings.
        :param proxy: the connection starts with a PROXY protocol header.
        """
        self._gate = gate
        self.state = State.PROXY if proxy else State.STARTUP
        self._reader: wire.StartupReader | None = wire.StartupReader()
        self.startup: wire.StartupMessage | None = None
        self.encryption: Encryption = "none"
        self._ending: Ending | None = None
        self._direct_tls = False
        self._stranded_plaintext = False
        self._tls_up = False
        self._client_cert = False

    @property
    def reader(self) -> wire.StartupReader:
        """The first packets' reader, until relaying starts."""
        assert self._reader is not None, "no startup reading once relaying started"
        return self._reader

    @property
    def ending(self) -> Ending:
        """How the connection ended (so far: closed before startup)."""
        return self._ending if self._ending is not None else CLOSED_BEFORE_STARTUP

    @property
    def ended(self) -> bool:
        """Whether the ending is recorded."""
        return self._ending is not None

    def handle(self, event: Event) -> Sequence[Action]:
        """
        Take one event; return the actions to perform, in order.  An event
        not legal in the current state ends the connection.
        """
        state = self.state
        target = TRANSITIONS[state].get(type(event))
        if target is None:
            return self._illegal(type(event).__name__)
        if state is State.CLOSED:
            return (_DROP_UPSTREAM,) if type(event) is UpstreamConnected else _NONE
        if type(event) is DataReceived:
            return self._data(event)
        if type(event) is ConnectionLost:
            return self._lost(state, event)
        if type(event) is TimerFired:
            # PostgreSQL closes silently and logs nothing.
            self._end("timeout", None, "authentication timeout")
            return (_CLOSE_SOCKET,)
        if type(event) is Shutdown:
            return self._shutdown(state)
        if type(event) is ProxyHeaderRead:
            self.state = target
            return _NONE
        if type(event) is ProxyHeaderInvalid:
            self._end("protocol_error", None, event.message)
            return (_CLOSE,)
        if type(event) is HandshakeDone:
            return self._handshake_done(event, target)
        if type(event) is HbaRefused:
            return self._refuse(event.reason, event.sqlstate, event.message)
        if type(event) is HbaAdmitted:
            # max_connections again: a host name look-up may have let others in.
            if self._gate.sessions >= self._gate.max_connections:
                return self._refuse("too_many_clients", "53300", "sorry, too many clients already")
            self.state = target
            return (_CONNECT_UPSTREAM,)
        if type(event) is UpstreamConnected:
            return self._relay(target)
        if type(event) is UpstreamFailed:
            # 57P03 tells libpq not to retry the same server without SSL; the
            # upstream's address stays in the server log, never in the answer.
            return self._fatal(
                "upstream_unavailable",
                event.reason,
                "57P03",
                "the database system is not accepting connections",
                error_detail="pgtls could not connect to the upstream server.",
            )
        # UpstreamClosed, in RELAYING
        self._end("relayed", None, "upstream closed the connection")
        return (_STOP_RELAY, _CLOSE)

    # -- the first packets ------------------------------------------------

    def _data(self, event: DataReceived) -> Sequence[Action]:
        state = self.state
        if state is State.STARTUP:
            self.reader.receive_data(event.data)
            return self._read_packets()
        if state is State.ADMITTING or state is State.CONNECTING:
            # Read before the pause took hold: kept for the upstream.
            self.reader.receive_data(event.data)
        return _NONE

    def _read_packets(self) -> Sequence[Action]:
        actions: list[Action] = []
        reader = self.reader
        while self.state is State.STARTUP:
            try:
                packet = reader.next_event()
            except wire.ProtocolError as error:
                actions.extend(self._protocol_error(error))
                break
            if packet is wire.NEED_DATA:
                break
            target = TRANSITIONS[State.STARTUP].get(type(packet))
            if target is None:  # pragma: no cover - wire's events are all in the table
                actions.extend(self._illegal(type(packet).__name__))
                break
            actions.extend(self._packet(packet, target))
        return tuple(actions)

    def _packet(self, packet: wire.Event, target: State) -> Sequence[Action]:
        if isinstance(packet, wire.SSLRequest):
            return self._ssl_request(target)
        if isinstance(packet, wire.GSSENCRequest):
            # Built without GSSAPI: PostgreSQL's answer is N and go on.
            if self.reader.buffered:
                return (_N, *self._protocol_error(wire.UnencryptedDataAfterGSSENCRequest()))
            return (_N,)
        if isinstance(packet, wire.DirectTLS):
            if not self._gate.tls_offered:
                self._end("refused", "direct_ssl_off", "direct SSL rejected: ssl is off")
                return (_CLOSE,)
            self._direct_tls = True
            return self._start_tls(b"", self.reader.take_buffered(), target)
        if isinstance(packet, wire.CancelRequest):
            if self._client_cert_missing():
                return self._refuse_cert()
            self._end("cancel", None, "cancel request forwarded")
            self.state = target
            return (ForwardCancel(packet.packet),)
        if isinstance(packet, wire.StartupMessage):
            return self._startup(packet, target)
        # wire.Closed
        self._end("closed", None, "closed before startup")
        return (_CLOSE,)

    def _ssl_request(self, target: State) -> Sequence[Action]:
        if not self._gate.tls_offered or self._tls_up:
            # Off, or already inside direct TLS: PostgreSQL 17 answers N.
            if self.reader.buffered:
                return (_N, *self._protocol_error(wire.UnencryptedDataAfterSSLRequest()))
            return (_N,)
        # Bytes sent before the client could have seen our S were not
        # protected by TLS: they are dropped, never relayed, and the session
        # is refused once TLS is up (CVE-2021-23214), as PostgreSQL 15 does.
        self._stranded_plaintext = bool(self.reader.take_buffered())
        return self._start_tls(b"S", b"", target)

    def _start_tls(self, answer: bytes, hello: bytes, target: State) -> Sequence[Action]:
        self.state = target
        self.encryption = "ssl"
        return (StartTLS(answer, hello),)

    def _handshake_done(self, event: HandshakeDone, target: State) -> Sequence[Action]:
        self._tls_up = True
        self._client_cert = event.client_cert
        if self._stranded_plaintext:
            return self._protocol_error(wire.UnencryptedDataAfterSSLRequest())
        if self._direct_tls and event.alpn != ALPN_POSTGRESQL:
            self._end("refused", "direct_ssl_no_alpn", "direct SSL without ALPN")
            log = Log(
                "received direct SSL connection request without ALPN protocol "
                "negotiation extension",
                warn=False,
            )
            return (log, _CLOSE)
        self.reader.encryption_started()
        self.state = target
        return self._read_packets()

    def _client_cert_missing(self) -> bool:
        return self._tls_up and self._gate.require_client_cert and not self._client_cert

    def _refuse_cert(self) -> Sequence[Action]:
        return self._refuse(
            "client_cert_required", "28000", "connection requires a valid client certificate"
        )

    def _startup(self, startup: wire.StartupMessage, target: State) -> Sequence[Action]:
        self.startup = startup
        gate = self._gate
        if gate.shutting_down:
            # PostgreSQL refuses before authentication (CAC_SHUTDOWN).
            return self._refuse("shutting_down", "57P03", "the database system is shutting down")
        if self._client_cert_missing():
            return self._refuse_cert()
        if gate.sessions >= gate.max_connections:
            return self._refuse("too_many_clients", "53300", "sorry, too many clients already")
        self.state = target
        return (Admit(startup),)

    # -- the relay ----------------------------------------------------------

    def _relay(self, target: State) -> Sequence[Action]:
        startup = self.startup
        assert startup is not None, "an admitted session has its StartupMessage"
        self.state = target
        buffered = self.reader.take_buffered()
        # An idle session keeps neither the reader (which holds the whole
        # StartupMessage) nor more of the message than its last log line needs.
        self._reader = None
        self.startup = startup.brief()
        return (Relay(startup.packet, buffered),)

    # -- endings ------------------------------------------------------------

    def _shutdown(self, state: State) -> Sequence[Action]:
        """
        A fast shutdown, as PostgreSQL's backends end on SIGTERM: FATAL 57P01
        past the StartupMessage; a connection still negotiating closes
        without a word.
        """
        message = "terminating connection due to administrator command"
        if state is State.RELAYING:
            self._end("relayed", None, message)
            fatal = Send(wire.error_response("57P01", message))
            return (_STOP_RELAY, _STOP_UPSTREAM, fatal, _CLOSE)
        if state is State.ADMITTING or state is State.CONNECTING:
            return self._fatal("closed", None, "57P01", message)
        self._end("closed", None, "terminated by a fast shutdown")
        return (_CLOSE,)

    def _lost(self, state: State, event: ConnectionLost) -> Sequence[Action]:
        actions = _NONE
        if state is State.HANDSHAKE:
            self._end("handshake_failed", event.tls_reason, "TLS handshake failed")
        elif state is State.STARTUP:
            # The client left mid-packet: PostgreSQL logs it (or not), sends nothing.
            self.reader.receive_data(b"")
            try:
                self.reader.next_event()
            except wire.ProtocolError as error:
                self._end("protocol_error", None, error.message)
                if error.log:
                    actions = (Log(error.message, warn=False),)
        elif state is State.RELAYING:
            self._end("relayed", None, "client closed the connection")
        elif state is State.ADMITTING or state is State.CONNECTING:
            self._end("closed", None, "client left before the session started")
        self.state = State.CLOSED
        return actions

    def _protocol_error(self, error: wire.ProtocolError) -> Sequence[Action]:
        self._end("protocol_error", None, error.message)
        data = error.response()
        head: tuple[Action, ...] = (Log(error.message, warn=True),) if error.log else _NONE
        return (*head, Send(data), _CLOSE) if data else (*head, _CLOSE)

    def _refuse(self, reason: str, sqlstate: str, message: str) -> Sequence[Action]:
        """Refuse by rule or limit; ``reason`` is the metrics label (REFUSAL_REASONS)."""
        return self._fatal("refused", reason, sqlstate, message)

    def _fatal(
        self,
        outcome: Outcome,
        reason: str | None,
        sqlstate: str,
        message: str,
        *,
        error_detail: str | None = None,
    ) -> Sequence[Action]:
        self._end(outcome, reason, message)
        return (Send(wire.error_response(sqlstate, message, detail=error_detail)), _CLOSE)

    def _illegal(self, name: str) -> Sequence[Action]:
        """An event the table does not allow here: a bug in the driver; end the connection."""
        message = f"unexpected {name} in state {self.state.value}"
        self._end("protocol_error", None, message)
        return (Log(message, warn=True), _CLOSE)

    def _end(self, outcome: Outcome, reason: str | None, detail: str) -> None:
        """Record the ending once, and close; a second ending is ignored."""
        if self._ending is None:
            self._ending = Ending(outcome, reason, detail)
        self.state = State.CLOSED
