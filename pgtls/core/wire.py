"""
The first packets of a PostgreSQL connection, without I/O.

:class:`StartupReader` is fed the bytes a client sends before its session
starts and turns them into events (:class:`SSLRequest`,
:class:`GSSENCRequest`, :class:`DirectTLS`, :class:`CancelRequest`,
:class:`StartupMessage`, :class:`Closed`) or raises a :class:`ProtocolError`
that carries PostgreSQL's answer.  It follows PostgreSQL 15/17's
``ProcessStartupPacket`` (src/backend/tcop/backend_startup.c): the same
length limits, the same order of checks, the same messages and SQLSTATEs.

The encoders are pure functions returning bytes: :func:`error_response` and
:func:`v2_error` for the server side, and :func:`ssl_request`,
:func:`gssenc_request`, :func:`cancel_request`, :func:`startup_message` for
clients and tests.  :func:`parse_error_response` reads an ErrorResponse back.

Nothing here touches a socket or imports Twisted.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from pgtls.core.pgfiles import parse_bool

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_PACKET_LENGTH",
    "NAMEDATALEN",
    "NEED_DATA",
    "PROTOCOL_3_0",
    "SSL_REQUEST_CODE",
    "TLS_HANDSHAKE_RECORD",
    "CancelRequest",
    "Closed",
    "DirectTLS",
    "Event",
    "GSSENCRequest",
    "IncompleteStartupPacket",
    "InvalidLength",
    "InvalidReplicationValue",
    "InvalidStartupLayout",
    "NeedData",
    "NoUserName",
    "ProtocolError",
    "SSLRequest",
    "StartupMessage",
    "StartupReader",
    "UnencryptedDataAfterGSSENCRequest",
    "UnencryptedDataAfterSSLRequest",
    "UnsupportedProtocol",
    "cancel_request",
    "error_response",
    "gssenc_request",
    "parse_error_response",
    "ssl_request",
    "startup_message",
    "v2_error",
]

#: Largest payload (packet minus its length word) PostgreSQL reads at startup.
MAX_STARTUP_PACKET_LENGTH: Final = 10000
#: PostgreSQL's NAMEDATALEN: user and database names are cut to one byte
#: less (ProcessStartupPacket, before pg_hba.conf is read).
NAMEDATALEN: Final = 64
#: Code word of an SSLRequest (1234.5679).
SSL_REQUEST_CODE: Final = 80877103
#: Code word of a GSSENCRequest (1234.5680).
GSSENC_REQUEST_CODE: Final = 80877104
#: Code word of a CancelRequest (1234.5678).
CANCEL_REQUEST_CODE: Final = 80877102
#: Protocol version 3.0 as the StartupMessage's code word.
PROTOCOL_3_0: Final = 196608
#: First byte of a TLS handshake record: a ClientHello sent without SSLRequest.
TLS_HANDSHAKE_RECORD: Final = 0x16

_LENGTH_WORD = struct.Struct("!I")
_CANCEL_PACKET = struct.Struct("!IIii")
_CANCEL_PACKET_LENGTH = _CANCEL_PACKET.size
# The length word and the code word: the smallest packet PostgreSQL reads.
_MIN_PACKET_LENGTH = 8
_MAX_PACKET_LENGTH = MAX_STARTUP_PACKET_LENGTH + 4
# The parameters whose values PostgreSQL cuts to NAMEDATALEN - 1 bytes.
_NAME_PARAMETERS = frozenset((b"user", b"database"))
_SUPPORTED_MAJOR = 3
_MAN_IN_THE_MIDDLE_DETAIL = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


#: Returned by :meth:`StartupReader.next_event` when more bytes are needed.
NEED_DATA: Final = _Sentinel.NEED_DATA
#: The type of :data:`NEED_DATA`, for annotations (``if event is NEED_DATA``).
NeedData: TypeAlias = Literal[_Sentinel.NEED_DATA]


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS; the server must answer ``S`` or ``N``."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; pgtls answers ``N``."""


@dataclass(frozen=True, slots=True)
class DirectTLS:
    """
    The connection's first byte starts a TLS handshake record (libpq 17's
    ``sslnegotiation=direct``).  Nothing was consumed: the ClientHello is
    still in :attr:`StartupReader.buffered`.
    """


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """
    A request to cancel the query of another session.

    :ivar process_id: the backend PID, as PostgreSQL reads it (signed int32).
    :ivar secret_key: the secret key (signed int32).
    :ivar packet: the 16 bytes as received, to be forwarded unchanged.
    """

    process_id: int
    secret_key: int
    packet: bytes


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """
    A protocol 3.x StartupMessage that PostgreSQL would accept.

    :ivar major: protocol major version (always 3).
    :ivar minor: protocol minor version; above 0 the upstream answers with
        NegotiateProtocolVersion.
    :ivar parameters: ``(name, value)`` pairs in packet order, decoded as
        UTF-8 with replacement characters; a name may occur more than once.
        ``user`` and ``database`` values are cut to ``NAMEDATALEN - 1``
        bytes, as PostgreSQL cuts them before it reads pg_hba.conf.
    :ivar packet: the packet to relay: as received, or, when a name was
        cut, rebuilt with the cut names (and nothing else changed).
    """

    major: int
    minor: int
    parameters: tuple[tuple[str, str], ...]
    packet: bytes

    def get(self, name: str, default: str | None = None) -> str | None:
        """
        Return the value of parameter ``name``; the last occurrence wins, as
        in PostgreSQL.

        :param name: the parameter name, e.g. ``"user"``.
        :param default: returned when the parameter is absent.
        """
        for key, value in reversed(self.parameters):
            if key == name:
                return value
        return default

    @property
    def user(self) -> str:
        """The user name (never empty for a message the reader returned)."""
        return self.get("user") or ""

    @property
    def database(self) -> str:
        """The database; missing or empty means the user name, as in PostgreSQL."""
        return self.get("database") or self.user

    def brief(self) -> StartupMessage:
        """
        This message with only its user and database and no packet: what a
        relayed session still needs of it (for its last log line), without
        the bytes an idle session would otherwise hold to its end.
        """
        return StartupMessage(self.major, self.minor, _brief(self.user, self.database), b"")

    @property
    def application_name(self) -> str | None:
        """The ``application_name`` parameter, or None."""
        return self.get("application_name")

    @property
    def replication(self) -> str | None:
        """The raw ``replication`` parameter, or None."""
        return self.get("replication")

    @property
    def walsender(self) -> Literal["physical", "logical"] | None:
        """
        What the ``replication`` parameter makes of this connection in
        PostgreSQL: ``"physical"`` (a true value: only pg_hba.conf's
        ``replication`` keyword matches it), ``"logical"`` (``database``:
        matched like a normal connection to its database) or None.

        Every occurrence counts in order, as in ProcessStartupPacket, where
        ``database`` sets a flag that a later boolean does not clear.
        """
        walsender = logical = False
        for name, value in self.parameters:
            if name != "replication":
                continue
            if value == "database":
                walsender = logical = True
            else:
                walsender = bool(_parse_bool(value.encode("utf-8")))
        if not walsender:
            return None
        return "logical" if logical else "physical"


# A pool's idle sessions share one user and database: one tuple for them all.
@functools.lru_cache(maxsize=256)
def _brief(user: str, database: str) -> tuple[tuple[str, str], ...]:
    return (("user", user), ("database", database))


@dataclass(frozen=True, slots=True)
class Closed:
    """The client closed the connection between packets (nothing to log)."""


#: Everything :meth:`StartupReader.next_event` returns besides NEED_DATA.
Event: TypeAlias = SSLRequest | GSSENCRequest | DirectTLS | CancelRequest | StartupMessage | Closed


# --- errors -----------------------------------------------------------------


class ProtocolError(Exception):
    """
    The client broke the startup protocol.  Each instance carries what
    PostgreSQL does about it.

    :ivar sqlstate: the SQLSTATE of the FATAL error.
    :ivar message: the primary message, exactly PostgreSQL's.
    :ivar detail: the DETAIL, or None.
    :ivar hint: the HINT, or None.
    :ivar send: True if the client gets an ErrorResponse, False for a silent close.
    :ivar log: True if PostgreSQL writes it to the server log.
    """

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        send: bool = True,
        log: bool = True,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.send = send
        self.log = log

    def response(self) -> bytes:
        """Return the bytes to write to the client before closing (b"" if none)."""
        if not self.send:
            return b""
        return error_response(self.sqlstate, self.message, detail=self.detail, hint=self.hint)


class InvalidLength(ProtocolError):
    """The length word is out of range, or a CancelRequest is not 16 bytes."""

    def __init__(self) -> None:
        super().__init__("08P01", "invalid length of startup packet", send=False)


class IncompleteStartupPacket(ProtocolError):
    """
    EOF inside a packet.

    :param log: False when only part of a length word came right after an
        SSL or GSS negotiation, where PostgreSQL does not log it.
    """

    def __init__(self, *, log: bool = True) -> None:
        super().__init__("08P01", "incomplete startup packet", send=False, log=log)


class InvalidStartupLayout(ProtocolError):
    """The StartupMessage's parameter list does not end at its last byte."""

    def __init__(self) -> None:
        super().__init__("08P01", "invalid startup packet layout: expected terminator as last byte")


class NoUserName(ProtocolError):
    """The StartupMessage has no ``user`` parameter, or an empty one."""

    def __init__(self) -> None:
        super().__init__("28000", "no PostgreSQL user name specified in startup packet")


class InvalidReplicationValue(ProtocolError):
    """
    The ``replication`` parameter is neither a boolean nor ``database``.

    :param value: the value as received (decoded).
    """

    def __init__(self, value: str) -> None:
        super().__init__(
            "22023",
            f'invalid value for parameter "replication": "{value}"',
            hint='Valid values are: "false", 0, "true", 1, "database".',
        )
        self.value = value


class UnsupportedProtocol(ProtocolError):
    """
    The packet's code word is no protocol 3 version and no request
    PostgreSQL would honour in this state.

    :param major: the code word's high 16 bits.
    :param minor: the code word's low 16 bits.
    """

    def __init__(self, major: int, minor: int) -> None:
        super().__init__(
            "0A000",
            f"unsupported frontend protocol {major}.{minor}: "
            f"server supports {_SUPPORTED_MAJOR}.0 to {_SUPPORTED_MAJOR}.0",
        )
        self.major = major
        self.minor = minor

    def response(self) -> bytes:
        """
        Return the error in the client's protocol: PostgreSQL 14+ answers a
        2.x (or older) client in the version 2 format, except version 0.0,
        which to its send_message_to_frontend means "protocol not set yet"
        and gets the version 3 format.
        """
        if self.major < _SUPPORTED_MAJOR and (self.major, self.minor) != (0, 0):
            return v2_error(self.message)
        return super().response()


class UnencryptedDataAfterSSLRequest(ProtocolError):
    """Bytes followed an SSLRequest before the client could see the answer."""

    def __init__(self) -> None:
        super().__init__(
            "08P01",
            "received unencrypted data after SSL request",
            detail=_MAN_IN_THE_MIDDLE_DETAIL,
        )


class UnencryptedDataAfterGSSENCRequest(ProtocolError):
    """Bytes followed a GSSENCRequest before the client could see the answer."""

    def __init__(self) -> None:
        super().__init__(
            "08P01",
            "received unencrypted data after GSSAPI encryption request",
            detail=_MAN_IN_THE_MIDDLE_DETAIL,
        )


# --- encoders ---------------------------------------------------------------


def _cstring(text: str) -> bytes:
    """
    Encode ``text`` as a NUL-terminated UTF-8 string.

    :raises ValueError: if ``text`` contains a NUL character.
    """
    encoded = text.encode("utf-8")
    if b"\0" in encoded:
        raise ValueError(f"NUL character in protocol string {text!r}")
    return encoded + b"\0"


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """
    Encode a protocol 3 ErrorResponse.

    :param sqlstate: five-character SQLSTATE, e.g. ``"28000"``.
    :param message: the primary message (field ``M``).
    :param severity: sent as both ``S`` and the non-localized ``V``.
    :param detail: field ``D`` when given.
    :param hint: field ``H`` when given.
    :raises ValueError: if the SQLSTATE is malformed or a text contains NUL.
    """
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ValueError(f"malformed SQLSTATE {sqlstate!r}")
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail is not None:
        fields.append(("D", detail))
    if hint is not None:
        fields.append(("H", hint))
    body = b"".join(code.encode("ascii") + _cstring(text) for code, text in fields) + b"\0"
    return b"E" + _LENGTH_WORD.pack(len(body) + 4) + body


def v2_error(message: str) -> bytes:
    """
    Encode a FATAL error in protocol 2's format: ``E``, the text, newline, NUL,
    and no length word.

    :param message: the primary message.
    :raises ValueError: if ``message`` contains NUL.
    """
    return b"E" + _cstring(f"FATAL:  {message}\n")


def _packet(code: int, body: bytes = b"") -> bytes:
    """Frame ``code`` and ``body`` with the length word that counts itself."""
    return _LENGTH_WORD.pack(len(body) + 8) + _LENGTH_WORD.pack(code) + body


def ssl_request() -> bytes:
    """Encode an SSLRequest (8 bytes)."""
    return _packet(SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    """Encode a GSSENCRequest (8 bytes)."""
    return _packet(GSSENC_REQUEST_CODE)


def cancel_request(process_id: int, secret_key: int) -> bytes:
    """
    Encode a CancelRequest (16 bytes).

    :param process_id: the backend PID (signed int32).
    :param secret_key: the secret key from BackendKeyData (signed int32).
    :raises ValueError: if either does not fit a signed int32.
    """
    try:
        return _CANCEL_PACKET.pack(
            _CANCEL_PACKET_LENGTH, CANCEL_REQUEST_CODE, process_id, secret_key
        )
    except struct.error as error:
        raise ValueError(f"cancel request fields out of int32 range: {error}") from error


def startup_message(
    parameters: Mapping[str, str] | Iterable[tuple[str, str]],
    major: int = 3,
    minor: int = 0,
) -> bytes:
    """
    Encode a StartupMessage.

    :param parameters: names and values, a mapping or ``(name, value)`` pairs
        (pairs may repeat a name).
    :param major: protocol major version.
    :param minor: protocol minor version.
    :raises ValueError: on an empty name, a NUL inside a string, or a version
        that does not fit 16 bits.
    """
    if not (0 <= major <= 0xFFFF and 0 <= minor <= 0xFFFF):
        raise ValueError(f"protocol version {major}.{minor} out of range")
    pairs = parameters.items() if isinstance(parameters, Mapping) else parameters
    body = bytearray()
    for name, value in pairs:
        if not name:
            raise ValueError("empty parameter name would end the parameter list")
        body += _cstring(name) + _cstring(value)
    body += b"\0"
    return _packet(major << 16 | minor, bytes(body))


def parse_error_response(data: bytes) -> dict[str, str]:
    """
    Decode one protocol 3 ErrorResponse into ``{field code: value}``.

    :param data: exactly one ErrorResponse message, nothing before or after.
    :raises ValueError: if ``data`` is not exactly that.
    """
    if len(data) < 6 or data[:1] != b"E":
        raise ValueError(f"not an ErrorResponse: {data[:16]!r}")
    (length,) = _LENGTH_WORD.unpack_from(data, 1)
    if length != len(data) - 1:
        raise ValueError(f"ErrorResponse length {length} does not match {len(data) - 1} bytes")
    fields: dict[str, str] = {}
    position = 5
    while data[position] != 0:
        end = data.find(b"\0", position + 1)
        if end < 0:
            raise ValueError("unterminated ErrorResponse field")
        fields[chr(data[position])] = data[position + 1 : end].decode("utf-8")
        position = end + 1
        if position >= len(data):
            raise ValueError("ErrorResponse lacks its final NUL")
    if position != len(data) - 1:
        raise ValueError("bytes after the ErrorResponse terminator")
    return fields


# --- the reader -------------------------------------------------------------


class StartupReader:
    """
    Turn the bytes a client sends before its session into events.

    Feed bytes with :meth:`receive_data`, then call :meth:`next_event` until
    it returns :data:`NEED_DATA`.  Bytes after an event stay buffered: the
    next call parses the next packet.  :class:`StartupMessage`,
    :class:`CancelRequest` and :class:`Closed` end the startup phase; after
    them :meth:`next_event` parses nothing more (:data:`NEED_DATA`, or
    :class:`Closed` again) and later bytes wait in :attr:`buffered`.  After a
    :class:`DirectTLS` event the buffered bytes belong to TLS:
    :meth:`next_event` returns :data:`NEED_DATA` until
    :meth:`encryption_started`.  A raised :class:`ProtocolError` is raised
    again by every later call.

    Negotiation follows PostgreSQL's ``ssl_done``/``gss_done``: after an
    SSLRequest event another SSLRequest is an unsupported protocol
    version (1234.5679), likewise for GSS, and after
    :meth:`encryption_started` both are.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._ssl_done = False
        self._gss_done = False
        # Nothing consumed or reported yet: a TLS record may still start here.
        self._at_start = True
        # After DirectTLS, until encryption_started(): the bytes are TLS's.
        self._awaiting_tls = False
        # The last event was SSLRequest or DirectTLS.
        self._may_encrypt = False
        self._final: Event | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> bytes:
        """Bytes received and not consumed by an event."""
        return bytes(self._buffer)

    def take_buffered(self) -> bytes:
        """Return the bytes received and not consumed, and forget them."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def receive_data(self, data: bytes) -> None:
        """
        Add bytes received from the client.

        :param data: the bytes; ``b""`` means the client closed its side.
        :raises RuntimeError: if bytes come after EOF (a caller bug).
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data() called with bytes after EOF")
        self._buffer += data

    def encryption_started(self) -> None:
        """
        Record that TLS is up, after ``S`` and its handshake or after direct
        TLS.  After ``S``, SSLRequest and GSSENCRequest are no longer special;
        after direct TLS they are read as events once more, as PostgreSQL 17
        does (the shell answers them ``N``).

        :raises RuntimeError: if the last event was not SSLRequest or
            DirectTLS, or plaintext bytes are still buffered (they were
            sent before encryption and must not be read as if after it).
        """
        if not self._may_encrypt:
            raise RuntimeError("encryption_started() must follow SSLRequest or DirectTLS")
        if self._buffer:
            raise RuntimeError("plaintext bytes still buffered; take_buffered() them first")
        # PostgreSQL 17 reads the packets after direct TLS with neither
        # negotiation done (so an SSLRequest is answered N), after S with both.
        done = not self._awaiting_tls
        self._ssl_done = self._gss_done = done
        self._awaiting_tls = self._may_encrypt = False

    def next_event(self) -> Event | NeedData:
        """
        Parse the next packet.

        :return: the next event, or :data:`NEED_DATA` if the packet is not
            complete yet (or nothing more is to be parsed).
        :raises ProtocolError: if the client broke the protocol; the
            exception says what to send and whether to log.
        """
        if self._error is not None:
            raise self._error
        if self._final is not None:
            return self._final if isinstance(self._final, Closed) else NEED_DATA
        try:
            event = self._next()
        except ProtocolError as error:
            self._error = error
            raise
        if event is not NEED_DATA:
            self._at_start = False
            self._may_encrypt = isinstance(event, SSLRequest | DirectTLS)
            if isinstance(event, CancelRequest | StartupMessage | Closed):
                self._final = event
        return event

    def _next(self) -> Event | NeedData:
        """Parse one packet; the state changes are next_event()'s."""
        if self._awaiting_tls:
            return Closed() if self._eof else NEED_DATA
        buffer = self._buffer
        if self._at_start and buffer[:1] == bytes([TLS_HANDSHAKE_RECORD]):
            self._awaiting_tls = True
            return DirectTLS()
        if len(buffer) < 4:
            return self._short_length_word()
        (total,) = _LENGTH_WORD.unpack_from(buffer)
        # Checked before buffering the body: a bogus length is never waited for.
        if not _MIN_PACKET_LENGTH <= total <= _MAX_PACKET_LENGTH:
            raise InvalidLength()
        if len(buffer) < total:
            if self._eof:
                raise IncompleteStartupPacket()
            return NEED_DATA
        packet = bytes(buffer[:total])
        del buffer[:total]
        return self._classify(packet)

    def _short_length_word(self) -> Event | NeedData:
        """Handle fewer than 4 buffered bytes: wait, or EOF between or inside packets."""
        if not self._eof:
            return NEED_DATA
        if not self._buffer:
            return Closed()
        # PostgreSQL stays quiet when a client gives up right after negotiating.
        raise IncompleteStartupPacket(log=not (self._ssl_done or self._gss_done))

    def _classify(self, packet: bytes) -> Event:
        """
        Decide what a complete packet is, in ProcessStartupPacket's order.

        :raises ProtocolError: for every packet PostgreSQL refuses.
        """
        (code,) = _LENGTH_WORD.unpack_from(packet, 4)
        if code == CANCEL_REQUEST_CODE:
            if len(packet) != _CANCEL_PACKET_LENGTH:
                raise InvalidLength()
            _, _, process_id, secret_key = _CANCEL_PACKET.unpack(packet)
            return CancelRequest(process_id, secret_key, packet)
        # The body of a negotiation request is ignored, whatever its length.
        if code == SSL_REQUEST_CODE and not self._ssl_done:
            self._ssl_done = True
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE and not self._gss_done:
            self._gss_done = True
            return GSSENCRequest()
        major, minor = code >> 16, code & 0xFFFF
        if major != _SUPPORTED_MAJOR:
            raise UnsupportedProtocol(major, minor)
        raw = _parse_parameters(packet[8:])
        if any(_overlong_name(name, value) for name, value in raw):
            # PostgreSQL 15 cuts the names byte-wise (a multibyte character
            # may be split) and matches pg_hba.conf on the cut names: the
            # upstream gets them cut too, so that it logs in the identity
            # admitted here whatever its own NAMEDATALEN.
            raw = tuple(
                (name, value[: NAMEDATALEN - 1] if name in _NAME_PARAMETERS else value)
                for name, value in raw
            )
            packet = _packet(
                code, b"".join(name + b"\0" + value + b"\0" for name, value in raw) + b"\0"
            )
        parameters = tuple(
            (name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
            for name, value in raw
        )
        message = StartupMessage(major, minor, parameters, packet)
        if not message.user:
            raise NoUserName()
        return message


def _overlong_name(name: bytes, value: bytes) -> bool:
    """Whether PostgreSQL would cut this parameter's value (a user or database name)."""
    return name in _NAME_PARAMETERS and len(value) >= NAMEDATALEN


def _parse_parameters(body: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """
    Read ``name\\0value\\0`` pairs up to an empty name, as PostgreSQL does.

    PostgreSQL scans C strings in a copy of the body with one NUL appended
    and then only checks that the scan stopped on the body's last byte; the
    same rules here make pgtls see the parameters the upstream will see.

    :param body: the StartupMessage after its length and version words.
    :raises InvalidReplicationValue: for a bad ``replication`` value (checked
        as it is met, as PostgreSQL does, before the layout).
    :raises InvalidStartupLayout: if the list does not end on the last byte.
    """
    padded = body + b"\0"
    size = len(body)
    offset = 0
    pairs: list[tuple[bytes, bytes]] = []
    while offset < size:
        name_end = padded.index(b"\0", offset)
        if name_end == offset:
            break
        value_start = name_end + 1
        if value_start >= size:
            break
        value_end = padded.index(b"\0", value_start)
        name = padded[offset:name_end]
        value = padded[value_start:value_end]
        if name == b"replication" and value != b"database" and _parse_bool(value) is None:
            raise InvalidReplicationValue(value.decode("utf-8", "replace"))
        pairs.append((name, value))
        offset = value_end + 1
    if offset != size - 1:
        raise InvalidStartupLayout()
    return tuple(pairs)


def _parse_bool(value: bytes) -> bool | None:
    """
    Read a boolean the way PostgreSQL's parse_bool does.

    :param value: the raw parameter value.
    :return: the boolean, or None if PostgreSQL would refuse the value.
    """
    # Latin-1 maps each byte to one character, so a byte that is not ASCII
    # stays a character that no boolean word contains.
    return parse_bool(value.decode("latin-1"))
