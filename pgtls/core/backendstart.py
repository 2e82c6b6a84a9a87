"""
The upstream's side of a session's startup, read without I/O.

:class:`BackendStartReader` is fed the bytes the upstream sends a relayed
client until the session is ready (ReadyForQuery) or refused (an
ErrorResponse), and turns them into events: :class:`Authentication`,
:class:`ParameterStatus`, :class:`BackendKeyData` (the backend's process
ID, which the session line reports), :class:`NoticeResponse`,
:class:`NegotiateProtocolVersion`, :class:`ReadyForQuery`,
:class:`ErrorResponse`.  pgtls only watches: the bytes are relayed unchanged
whatever the reader makes of them.  So it never raises on what it reads;
past a message length limit, a byte budget, or at anything it does not
expect, it gives up (:class:`GaveUp`) and reads no more.

:func:`channel_binding_refusal` tells whether an ErrorResponse is the
upstream refusing SCRAM channel binding (PostgreSQL's auth-scram.c), and
what an operator should do about it.

Nothing here touches a socket or imports Twisted.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

from pgtls.core.wire import NEED_DATA, NeedData

__all__ = [
    "BYTE_BUDGET",
    "CHANNEL_BINDING_REMEDY",
    "MAX_MESSAGE_LENGTH",
    "NEED_DATA",
    "Authentication",
    "BackendKeyData",
    "BackendStartReader",
    "ChannelBindingRefusal",
    "ErrorResponse",
    "Event",
    "GaveUp",
    "NeedData",
    "NegotiateProtocolVersion",
    "NoticeResponse",
    "ParameterStatus",
    "ReadyForQuery",
    "channel_binding_refusal",
]

#: Largest message (its length word's value) the reader takes: PostgreSQL's
#: limit on an authentication token (PG_MAX_AUTH_TOKEN_LENGTH) and a little.
MAX_MESSAGE_LENGTH: Final = 65535 + 8
#: Bytes of the startup phase the reader looks at before it gives up.  A
#: whole startup is about 500 bytes; GSSAPI tokens can take a few KiB.
BYTE_BUDGET: Final = 2**18

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!i")
_TWO_INT32 = struct.Struct("!ii")
_HEADER_SIZE = _HEADER.size
# A BackendKeyData's secret key: 4 bytes in protocol 3.0, at most 256 in 3.2.
_MAX_SECRET_KEY = 256
_AUTH_SASL = 10
_TRANSACTION_STATUS = frozenset("ITE")
# ReadyForQuery and ErrorResponse end the startup phase.
_FINAL = frozenset((b"Z", b"E"))
_NOTHING: frozenset[bytes] = frozenset()
_PARAMETER_STATUS = frozenset((b"S",))


# NEED_DATA (from pgtls.core.wire, one sentinel for both readers) is returned by
# BackendStartReader.next_event when more bytes are needed, and forever once
# the reader is done.


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authentication:
    """
    An Authentication* message (``R``).

    :ivar code: 0 for AuthenticationOk, 3 cleartext, 5 MD5, 7 GSSAPI,
        10 SASL, 11 SASLContinue, 12 SASLFinal, ...
    :ivar mechanisms: for AuthenticationSASL, the mechanisms the upstream
        offers in its order (``SCRAM-SHA-256-PLUS`` only on a TLS
        connection); empty for the other codes.
    """

    code: int
    mechanisms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    """A run-time parameter the upstream reports (``S``)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """
    The backend's cancel key (``K``).  Only the process ID is kept: the
    secret key lets anyone cancel the session's queries, and pgtls needs it
    for nothing.

    :ivar process_id: the backend's PID (pg_stat_activity.pid).
    """

    process_id: int


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """
    The upstream's answer to a newer minor protocol version or unknown
    ``_pq_.`` options (``v``).

    :ivar newest_minor: the newest minor version the upstream supports.
    :ivar unrecognized: the protocol options it did not recognize.
    """

    newest_minor: int
    unrecognized: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Fields:
    """The fields of an ErrorResponse or NoticeResponse, in message order."""

    fields: tuple[tuple[str, str], ...]

    def get(self, code: str) -> str | None:
        """The field with one-letter ``code`` (``"C"``, ``"M"`` ...), or None."""
        for key, value in self.fields:
            if key == code:
                return value
        return None

    @property
    def sqlstate(self) -> str | None:
        """The SQLSTATE (field ``C``)."""
        return self.get("C")

    @property
    def message(self) -> str | None:
        """The primary message (field ``M``), in the upstream's lc_messages."""
        return self.get("M")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    """The upstream refused the session (``E``); it closes the connection next."""


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    """A notice sent during startup (``N``)."""


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """
    The session is ready (``Z``): the startup phase is over.

    :ivar status: the transaction status, ``I`` (idle) after a startup.
    """

    status: str


@dataclass(frozen=True, slots=True)
class GaveUp:
    """
    The reader met something it does not read (or too much of it) and
    stopped; the session goes on, relayed as ever.

    :ivar reason: what it met, for a debug line.
    """

    reason: str


Event: TypeAlias = (
    Authentication
    | ParameterStatus
    | BackendKeyData
    | NegotiateProtocolVersion
    | ErrorResponse
    | NoticeResponse
    | ReadyForQuery
    | GaveUp
)


# --- the reader -------------------------------------------------------------


class BackendStartReader:
    """
    Turn the bytes an upstream sends during a session's startup into events.

    Feed bytes with :meth:`receive_data`, then call :meth:`next_event` until
    it returns :data:`NEED_DATA`.  :class:`ReadyForQuery`,
    :class:`ErrorResponse` and :class:`GaveUp` end the reading: :attr:`done`
    is then true, later bytes are ignored and :meth:`next_event` returns
    :data:`NEED_DATA`.  The events depend on the bytes only, never on how
    they were split.
    """

    __slots__ = ("_buffer", "_position", "_skip", "_start", "done")

    def __init__(self, *, parameters: bool = True) -> None:
        """
        :param parameters: whether to report ParameterStatus messages; when
            False they are framed (their length checked) but not read, which
            saves most of the work of a startup (most of its messages).
        """
        # Bytes received and not yet read; the next message starts at
        # _position.  Messages are parsed in place, one copy each.
        self._buffer = b""
        self._position = 0
        # Where the buffer's first byte is in the upstream's stream.
        self._start = 0
        self._skip = _NOTHING if parameters else _PARAMETER_STATUS
        #: True once the startup phase is over, or the reader gave up.
        self.done = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """
        Take the next bytes the upstream sent (copied: ``data`` may be a
        view of a buffer that is reused).
        """
        if self.done:
            return
        left = len(self._buffer) - self._position
        if left > MAX_MESSAGE_LENGTH:
            # Enough is buffered for next_event to decide; more is no use.
            return
        if left:
            self._buffer = self._buffer[self._position :] + bytes(data)
        else:
            self._buffer = bytes(data)
        self._start += self._position
        self._position = 0

    def next_event(self) -> Event | NeedData:
        """The next event, or :data:`NEED_DATA`; never raises."""
        if self.done:
            return NEED_DATA
        buffer = self._buffer
        size = len(buffer)
        start = self._position
        skip = self._skip
        budget = BYTE_BUDGET - self._start
        header = _HEADER.unpack_from
        while size - start >= _HEADER_SIZE:
            kind, length = header(buffer, start)
            end = start + 1 + length
            if kind in skip and 4 <= length <= MAX_MESSAGE_LENGTH and end <= budget:
                if end > size:
                    break
                start = end
                continue
            self._position = start
            return self._message(kind, length, end)
        self._position = start
        return NEED_DATA

    def _message(self, kind: bytes, length: int, end: int) -> Event | NeedData:
        """The message of type ``kind`` at the read position, ending at ``end``."""
        parse = _PARSERS.get(kind)
        if parse is None:
            return self._give_up(f"message type {kind!r}")
        if length < 4 or length > MAX_MESSAGE_LENGTH:
            return self._give_up(f"message length {length}")
        if self._start + end > BYTE_BUDGET:
            return self._give_up(f"more than {BYTE_BUDGET} bytes")
        buffer = self._buffer
        if len(buffer) < end:
            return NEED_DATA
        start = self._position
        self._position = end
        event = parse(buffer[start + _HEADER_SIZE : end])
        if event is None:
            return self._give_up(f"malformed message of type {kind!r}")
        if kind in _FINAL:
            self._finish()
        return event

    def _give_up(self, reason: str) -> GaveUp:
        self._finish()
        return GaveUp(reason)

    def _finish(self) -> None:
        self.done = True
        self._buffer = b""
        self._position = 0


# --- message bodies ---------------------------------------------------------
# Each returns the event, or None when the body is not what PostgreSQL sends.


def _strings(body: bytes) -> list[str] | None:
    """NUL-terminated strings filling ``body`` exactly, decoded leniently."""
    if body[-1:] != b"\0":
        return None
    return [part.decode("utf-8", "replace") for part in body[:-1].split(b"\0")]


def _authentication(body: bytes) -> Authentication | None:
    if len(body) < 4:
        return None
    (code,) = _INT32.unpack_from(body)
    if code != _AUTH_SASL:
        return Authentication(code)
    # A list of mechanism names, each NUL-terminated, then an empty one.
    names = _strings(body[4:])
    if names is None or len(names) < 2 or names[-1] != "" or "" in names[:-1]:
        return None
    return Authentication(code, tuple(names[:-1]))


def _parameter_status(body: bytes) -> ParameterStatus | None:
    # Most of a startup: a name and a value, each NUL-terminated.
    parts = body.split(b"\0")
    if len(parts) != 3 or parts[2]:
        return None
    return ParameterStatus(parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace"))


def _backend_key_data(body: bytes) -> BackendKeyData | None:
    if not 8 <= len(body) <= 4 + _MAX_SECRET_KEY:
        return None
    (pid,) = _INT32.unpack_from(body)
    return BackendKeyData(pid)


def _negotiate_protocol_version(body: bytes) -> NegotiateProtocolVersion | None:
    if len(body) < 8:
        return None
    newest, count = _TWO_INT32.unpack_from(body)
    options = _strings(body[8:]) if len(body) > 8 else []
    if options is None or len(options) != count:
        return None
    return NegotiateProtocolVersion(newest & 0xFFFF, tuple(options))


def _fields(body: bytes) -> tuple[tuple[str, str], ...] | None:
    # Fields: a type byte and a NUL-terminated value each, then a NUL.
    if body[-1:] != b"\0":
        return None
    pairs = []
    position = 0
    last = len(body) - 1
    while position < last:
        end = body.find(b"\0", position + 1)
        if body[position] == 0 or end < 0:
            return None
        pairs.append((chr(body[position]), body[position + 1 : end].decode("utf-8", "replace")))
        position = end + 1
    if position != last:
        return None
    return tuple(pairs)


def _error_response(body: bytes) -> ErrorResponse | None:
    fields = _fields(body)
    return None if fields is None else ErrorResponse(fields)


def _notice_response(body: bytes) -> NoticeResponse | None:
    fields = _fields(body)
    return None if fields is None else NoticeResponse(fields)


def _ready_for_query(body: bytes) -> ReadyForQuery | None:
    status = body.decode("latin-1")
    if status not in _TRANSACTION_STATUS or len(body) != 1:
        return None
    return ReadyForQuery(status)


_PARSERS = {
    b"R": _authentication,
    b"S": _parameter_status,
    b"K": _backend_key_data,
    b"v": _negotiate_protocol_version,
    b"E": _error_response,
    b"N": _notice_response,
    b"Z": _ready_for_query,
}


# --- channel binding --------------------------------------------------------


class ChannelBindingRefusal(enum.Enum):
    """
    How an upstream on TLS refuses a SCRAM client's channel binding
    (PostgreSQL 15's src/backend/libpq/auth-scram.c, both SQLSTATE 28000).
    """

    #: read_client_final_message: the client bound to another certificate
    #: than the upstream's (SCRAM-SHA-256-PLUS through a relay).
    CHECK_FAILED = "SCRAM channel binding check failed"
    #: read_client_first_message: a client on TLS that was offered no
    #: SCRAM-SHA-256-PLUS says so (gs2 flag ``y``), and an upstream on TLS
    #: takes that for a downgrade by a man in the middle.
    NEGOTIATION_ERROR = "SCRAM channel binding negotiation error"

    @property
    def why(self) -> str:
        """Why a client through pgtls meets this refusal, in a log line's words."""
        return _WHY[self]


#: What an operator reads after the upstream's message; the same remedy for both.
CHANNEL_BINDING_REMEDY: Final = (
    "SCRAM clients must connect with channel_binding=disable, or pgtls must present "
    "the upstream's own certificate and key (ssl_cert_file, ssl_key_file)"
)
_WHY = {
    ChannelBindingRefusal.CHECK_FAILED: (
        "the client bound its password exchange to pgtls's certificate, "
        "and the upstream checks it against its own"
    ),
    ChannelBindingRefusal.NEGOTIATION_ERROR: (
        "the client, on TLS to pgtls but offered no SCRAM-SHA-256-PLUS, said it "
        "could bind, and the upstream, on TLS, takes that for a downgrade"
    ),
}


_INVALID_AUTHORIZATION_SPECIFICATION = "28000"
# The routine (field R) is never translated, unlike the message.
_ROUTINES = {
    "read_client_final_message": ChannelBindingRefusal.CHECK_FAILED,
    "read_client_first_message": ChannelBindingRefusal.NEGOTIATION_ERROR,
}


def channel_binding_refusal(error: ErrorResponse) -> ChannelBindingRefusal | None:
    """
    Which channel-binding refusal ``error`` is, or None for any other error.

    Matched on PostgreSQL's English message, or, for an upstream with
    another lc_messages, on SQLSTATE 28000 from the SCRAM routine that
    raises it: the only 28000 errors of those routines are these two.
    """
    if error.sqlstate != _INVALID_AUTHORIZATION_SPECIFICATION:
        return None
    message = error.message
    for refusal in ChannelBindingRefusal:
        if message == refusal.value:
            return refusal
    routine = error.get("R")
    return _ROUTINES.get(routine) if routine is not None else None
