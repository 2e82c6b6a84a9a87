"""
Tests for pgtls.core.wire: the first packets of a connection, as PostgreSQL reads them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtls.core.wire import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET_LENGTH,
    NEED_DATA,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    TLS_HANDSHAKE_RECORD,
    CancelRequest,
    Closed,
    DirectTLS,
    Event,
    GSSENCRequest,
    IncompleteStartupPacket,
    InvalidLength,
    InvalidReplicationValue,
    InvalidStartupLayout,
    NoUserName,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    StartupReader,
    UnencryptedDataAfterGSSENCRequest,
    UnencryptedDataAfterSSLRequest,
    UnsupportedProtocol,
    cancel_request,
    error_response,
    gssenc_request,
    parse_error_response,
    ssl_request,
    startup_message,
    v2_error,
)

EVENT_TYPES = (SSLRequest, GSSENCRequest, DirectTLS, CancelRequest, StartupMessage, Closed)
# A few bytes of a TLS 1.x ClientHello record header and body.
CLIENT_HELLO = bytes([TLS_HANDSHAKE_RECORD]) + b"\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
TRAILING = b"trailing bytes"
LIBPQ_STARTUP = startup_message(
    {"user": "alice", "database": "shop", "application_name": "psql", "client_encoding": "UTF8"}
)


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def halves(data: bytes) -> list[bytes]:
    middle = len(data) // 2
    return [chunk for chunk in (data[:middle], data[middle:]) if chunk]


SPLITTERS = pytest.mark.parametrize("split", [whole, bytewise, halves])


def feed(reader: StartupReader, chunks: Iterable[bytes]) -> list[Event]:
    """Feed ``chunks`` one by one, draining events after each; let errors propagate."""
    events: list[Event] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        while (event := reader.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Closed):
                return events
    return events


def first_event(data: bytes, split: Callable[[bytes], list[bytes]]) -> tuple[Event, bytes]:
    """
    Feed ``data`` split by ``split`` until the first event, then the rest
    without parsing; return that event and what is left buffered.
    """
    reader = StartupReader()
    chunks = split(data)
    while chunks:
        reader.receive_data(chunks.pop(0))
        if (event := reader.next_event()) is not NEED_DATA:
            break
    else:
        raise AssertionError("no event")
    for chunk in chunks:
        reader.receive_data(chunk)
    return event, reader.buffered


def read(data: bytes, split: Callable[[bytes], list[bytes]] = whole) -> list[Event]:
    """Events from a fresh reader fed ``data`` split by ``split``."""
    return feed(StartupReader(), split(data))


def read_error(data: bytes, *, eof: bool = False) -> ProtocolError:
    """The ProtocolError a fresh reader raises for ``data`` (and EOF)."""
    reader = StartupReader()
    with pytest.raises(ProtocolError) as info:
        feed(reader, [data, b""] if eof else [data])
    return info.value


def packet(code: int, body: bytes = b"", length: int | None = None) -> bytes:
    """A packet with ``code``, ``body`` and a length word (right by default)."""
    if length is None:
        length = 8 + len(body)
    return struct.pack("!II", length, code) + body


def v3_body(body: bytes) -> bytes:
    """A protocol 3.0 packet with the given parameter bytes."""
    return packet(PROTOCOL_3_0, body)


# --- constants and encoders -------------------------------------------------


def test_codes_are_postgresql_numbers() -> None:
    """The request codes are PostgreSQL's 1234.5678/5679/5680 and 3.0 is 3 << 16."""
    assert SSL_REQUEST_CODE == 1234 << 16 | 5679 == 80877103
    assert GSSENC_REQUEST_CODE == 1234 << 16 | 5680 == 80877104
    assert CANCEL_REQUEST_CODE == 1234 << 16 | 5678 == 80877102
    assert PROTOCOL_3_0 == 3 << 16 == 196608
    assert MAX_STARTUP_PACKET_LENGTH == 10000
    assert TLS_HANDSHAKE_RECORD == 0x16


def test_request_encoders_exact_bytes() -> None:
    """SSLRequest, GSSENCRequest and CancelRequest encode to libpq's bytes."""
    assert ssl_request() == bytes.fromhex("00000008 04d2162f")
    assert gssenc_request() == bytes.fromhex("00000008 04d21630")
    assert cancel_request(4242, -2) == bytes.fromhex("00000010 04d2162e 00001092 fffffffe")


def test_cancel_request_rejects_out_of_range() -> None:
    """A PID or key outside int32 is a ValueError, not a struct.error."""
    with pytest.raises(ValueError):
        cancel_request(2**31, 0)
    with pytest.raises(ValueError):
        cancel_request(1, -(2**31) - 1)


def test_startup_message_exact_bytes() -> None:
    """A StartupMessage is length, version, name/value C strings and a final NUL."""
    assert startup_message({"user": "bob"}) == (
        b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00"
    )
    assert startup_message([("user", "a"), ("user", "b")], major=3, minor=2) == (
        b"\x00\x00\x00\x17\x00\x03\x00\x02user\x00a\x00user\x00b\x00\x00"
    )


@pytest.mark.parametrize(
    ("parameters", "major", "minor"),
    [
        ({"us\0er": "bob"}, 3, 0),
        ({"user": "b\0b"}, 3, 0),
        ({"": "bob"}, 3, 0),
        ({"user": "bob"}, 65536, 0),
        ({"user": "bob"}, 3, -1),
    ],
)
def test_startup_message_rejects_what_cannot_be_encoded(
    parameters: dict[str, str], major: int, minor: int
) -> None:
    """NUL inside a string, an empty name or a version over 16 bits is a ValueError."""
    with pytest.raises(ValueError):
        startup_message(parameters, major=major, minor=minor)


def test_error_response_exact_bytes() -> None:
    """An ErrorResponse is E, length, S, V, C, M (then D, H) fields and a NUL."""
    assert error_response("28000", "no PostgreSQL user name specified in startup packet") == (
        b"E\x00\x00\x00\x4f"
        b"SFATAL\x00VFATAL\x00C28000\x00"
        b"Mno PostgreSQL user name specified in startup packet\x00"
        b"\x00"
    )
    assert error_response("57P03", "m", severity="ERROR", detail="d", hint="h") == (
        b"E\x00\x00\x00\x23SERROR\x00VERROR\x00C57P03\x00Mm\x00Dd\x00Hh\x00\x00"
    )


@pytest.mark.parametrize(("sqlstate", "message"), [("2800", "m"), ("28000!", "m"), ("28000", "\0")])
def test_error_response_rejects_malformed(sqlstate: str, message: str) -> None:
    """A SQLSTATE that is not 5 alphanumerics, or a NUL in a text, is a ValueError."""
    with pytest.raises(ValueError):
        error_response(sqlstate, message)


def test_v2_error_exact_bytes() -> None:
    """A protocol 2 error is E, "FATAL:  ", the message, a newline and a NUL."""
    assert v2_error("boom") == b"EFATAL:  boom\n\x00"


def test_parse_error_response_round_trip() -> None:
    """parse_error_response returns every field of an encoded ErrorResponse."""
    data = error_response("08P01", "msg é", detail="det", hint="hi")
    assert parse_error_response(data) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "08P01",
        "M": "msg é",
        "D": "det",
        "H": "hi",
    }


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"N\x00\x00\x00\x05\x00",
        b"E\x00\x00\x00\x06\x00",
        b"E\x00\x00\x00\x05\x00\x00",
        b"E\x00\x00\x00\x08SX\x00",
        b"E\x00\x00\x00\x07SXY",
        error_response("08P01", "m") + b"S",
    ],
)
def test_parse_error_response_rejects_malformed(data: bytes) -> None:
    """Anything but exactly one well-formed ErrorResponse is a ValueError."""
    with pytest.raises(ValueError):
        parse_error_response(data)


# --- each packet kind: whole, byte by byte, with trailing bytes -------------


@SPLITTERS
def test_ssl_request(split: Callable[[bytes], list[bytes]]) -> None:
    """An SSLRequest gives SSLRequest and consumes exactly its 8 bytes."""
    assert read(ssl_request(), split) == [SSLRequest()]
    assert first_event(ssl_request() + TRAILING, split) == (SSLRequest(), TRAILING)


def test_ssl_request_leaves_trailing_bytes_buffered() -> None:
    """Bytes sent with an SSLRequest stay in ``buffered`` for the CVE-2021-23214 check."""
    reader = StartupReader()
    reader.receive_data(ssl_request() + TRAILING)
    assert reader.next_event() == SSLRequest()
    assert reader.buffered == TRAILING
    assert reader.take_buffered() == TRAILING
    assert reader.buffered == b""
    assert reader.next_event() is NEED_DATA


@SPLITTERS
def test_gssenc_request(split: Callable[[bytes], list[bytes]]) -> None:
    """A GSSENCRequest gives GSSENCRequest and consumes exactly its 8 bytes."""
    assert read(gssenc_request(), split) == [GSSENCRequest()]
    assert first_event(gssenc_request() + TRAILING, split) == (GSSENCRequest(), TRAILING)


@SPLITTERS
def test_cancel_request(split: Callable[[bytes], list[bytes]]) -> None:
    """A CancelRequest gives its PID, key and the 16 bytes, then the reader stops."""
    data = cancel_request(31337, -123456)
    expected = CancelRequest(31337, -123456, data)
    assert read(data, split) == [expected]
    assert first_event(data + TRAILING, split) == (expected, TRAILING)
    reader = StartupReader()
    assert feed(reader, split(data + TRAILING)) == [expected]
    assert reader.buffered == TRAILING


@SPLITTERS
def test_startup_message(split: Callable[[bytes], list[bytes]]) -> None:
    """A StartupMessage gives its version, parameters in order and the packet as received."""
    expected = StartupMessage(
        3,
        0,
        (
            ("user", "alice"),
            ("database", "shop"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
        ),
        LIBPQ_STARTUP,
    )
    assert read(LIBPQ_STARTUP, split) == [expected]
    reader = StartupReader()
    assert feed(reader, split(LIBPQ_STARTUP + TRAILING)) == [expected]
    assert reader.take_buffered() == TRAILING
    assert reader.buffered == b""


def test_startup_message_ends_parsing() -> None:
    """After a StartupMessage, later bytes (even another packet) are only buffered."""
    reader = StartupReader()
    reader.receive_data(LIBPQ_STARTUP)
    assert isinstance(reader.next_event(), StartupMessage)
    reader.receive_data(ssl_request())
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() is NEED_DATA
    assert reader.buffered == ssl_request()


@SPLITTERS
def test_direct_tls(split: Callable[[bytes], list[bytes]]) -> None:
    """A first byte 0x16 gives DirectTLS at once and consumes nothing."""
    reader = StartupReader()
    chunks = split(CLIENT_HELLO)
    reader.receive_data(chunks[0])
    assert reader.next_event() == DirectTLS()
    assert feed(reader, chunks[1:]) == []
    assert reader.buffered == CLIENT_HELLO


def test_direct_tls_then_startup_inside_tls() -> None:
    """After DirectTLS and encryption_started(), the reader reads the StartupMessage."""
    reader = StartupReader()
    reader.receive_data(CLIENT_HELLO)
    assert reader.next_event() == DirectTLS()
    assert reader.take_buffered() == CLIENT_HELLO
    reader.encryption_started()
    assert feed(reader, [LIBPQ_STARTUP]) == [read(LIBPQ_STARTUP)[0]]


def test_direct_tls_eof_during_handshake() -> None:
    """EOF before encryption_started() after DirectTLS is Closed: the TLS layer reports it."""
    reader = StartupReader()
    assert feed(reader, [CLIENT_HELLO, b""]) == [DirectTLS(), Closed()]


def test_direct_tls_only_first() -> None:
    """0x16 is DirectTLS only as the connection's first byte; later it is a length word."""
    assert first_event(ssl_request() + CLIENT_HELLO, whole) == (SSLRequest(), CLIENT_HELLO)
    error = read_error(ssl_request() + CLIENT_HELLO)
    assert isinstance(error, InvalidLength)
    error = read_error(gssenc_request() + CLIENT_HELLO)
    assert isinstance(error, InvalidLength)
    reader = StartupReader()
    reader.receive_data(b"\x00")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\x16\x00\x00")
    with pytest.raises(InvalidLength):
        reader.next_event()


def test_closed_on_empty_eof() -> None:
    """EOF with nothing buffered is Closed (PostgreSQL logs nothing), and stays Closed."""
    reader = StartupReader()
    reader.receive_data(b"")
    assert reader.next_event() == Closed()
    assert reader.next_event() == Closed()


def test_closed_after_negotiation() -> None:
    """EOF right after an SSLRequest answered N is Closed too."""
    assert feed(StartupReader(), [ssl_request(), b""]) == [SSLRequest(), Closed()]


def test_receive_after_eof_is_a_caller_bug() -> None:
    """Bytes after EOF are a RuntimeError (the shell's bug), repeated EOF is harmless."""
    reader = StartupReader()
    reader.receive_data(b"")
    reader.receive_data(b"")
    with pytest.raises(RuntimeError):
        reader.receive_data(b"x")


# --- negotiation state ------------------------------------------------------

SECOND_SSL = b"E\x00\x00\x00\x5fSFATAL\x00VFATAL\x00C0A000\x00" + (
    b"Munsupported frontend protocol 1234.5679: server supports 3.0 to 3.0\x00\x00"
)


def test_second_ssl_request_is_unsupported_protocol() -> None:
    """After an SSLRequest, another one is protocol 1234.5679: a v3 FATAL 0A000."""
    reader = StartupReader()
    reader.receive_data(ssl_request() + ssl_request())
    assert reader.next_event() == SSLRequest()
    with pytest.raises(UnsupportedProtocol) as info:
        reader.next_event()
    assert (info.value.major, info.value.minor) == (1234, 5679)
    assert info.value.response() == SECOND_SSL
    assert parse_error_response(SECOND_SSL)["M"] == info.value.message


def test_second_gssenc_request_is_unsupported_protocol() -> None:
    """After a GSSENCRequest, another one is protocol 1234.5680."""
    reader = StartupReader()
    reader.receive_data(gssenc_request() + gssenc_request())
    assert reader.next_event() == GSSENCRequest()
    with pytest.raises(UnsupportedProtocol) as info:
        reader.next_event()
    assert info.value.message == (
        "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0"
    )


@pytest.mark.parametrize(
    ("first", "second", "first_event", "second_event"),
    [
        (ssl_request(), gssenc_request(), SSLRequest(), GSSENCRequest()),
        (gssenc_request(), ssl_request(), GSSENCRequest(), SSLRequest()),
    ],
)
def test_refused_negotiation_allows_the_other(
    first: bytes, second: bytes, first_event: Event, second_event: Event
) -> None:
    """SSL refused then GSS, or GSS refused then SSL, are both negotiations; a third is not."""
    reader = StartupReader()
    assert feed(reader, [first, second]) == [first_event, second_event]
    reader.receive_data(first)
    with pytest.raises(UnsupportedProtocol):
        reader.next_event()
    reader = StartupReader()
    assert feed(reader, [first, second, LIBPQ_STARTUP])[2] == read(LIBPQ_STARTUP)[0]


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [(ssl_request(), (1234, 5679)), (gssenc_request(), (1234, 5680))],
)
def test_no_negotiation_after_encryption(request_bytes: bytes, code: tuple[int, int]) -> None:
    """Inside TLS (after S and the handshake) SSLRequest and GSSENCRequest are not special."""
    reader = StartupReader()
    reader.receive_data(ssl_request())
    assert reader.next_event() == SSLRequest()
    reader.encryption_started()
    reader.receive_data(request_bytes)
    with pytest.raises(UnsupportedProtocol) as info:
        reader.next_event()
    assert (info.value.major, info.value.minor) == code


def test_negotiation_after_direct_tls() -> None:
    """
    After direct TLS, PostgreSQL 17 reads packets with neither negotiation
    done: one SSLRequest (and one GSSENCRequest) is an event again (the
    shell answers N), a second one is an unsupported protocol.
    """
    reader = StartupReader()
    reader.receive_data(CLIENT_HELLO)
    assert reader.next_event() == DirectTLS()
    reader.take_buffered()
    reader.encryption_started()
    assert feed(reader, [ssl_request(), gssenc_request()]) == [SSLRequest(), GSSENCRequest()]
    reader.receive_data(ssl_request())
    with pytest.raises(UnsupportedProtocol):
        reader.next_event()


def test_cancel_after_negotiation() -> None:
    """A CancelRequest may follow an SSLRequest (refused, or inside TLS)."""
    cancel = cancel_request(7, 8)
    assert read(ssl_request() + cancel) == [SSLRequest(), CancelRequest(7, 8, cancel)]
    reader = StartupReader()
    feed(reader, [ssl_request()])
    reader.encryption_started()
    assert feed(reader, [cancel]) == [CancelRequest(7, 8, cancel)]


@pytest.mark.parametrize("length", [12, 16, 10004])
def test_ssl_request_length_not_checked(length: int) -> None:
    """Any length 8..10004 with the SSL code word is an SSLRequest; its body is skipped."""
    data = packet(SSL_REQUEST_CODE, b"\xff" * (length - 8))
    reader = StartupReader()
    reader.receive_data(data + TRAILING)
    assert reader.next_event() == SSLRequest()
    assert reader.buffered == TRAILING


def test_gssenc_request_length_not_checked() -> None:
    """Any length 8..10004 with the GSS code word is a GSSENCRequest."""
    assert read(packet(GSSENC_REQUEST_CODE, b"abcd")) == [GSSENCRequest()]


def test_encryption_started_misuse() -> None:
    """encryption_started() needs a preceding SSLRequest/DirectTLS and an empty buffer."""
    with pytest.raises(RuntimeError):
        StartupReader().encryption_started()
    reader = StartupReader()
    reader.receive_data(gssenc_request())
    assert reader.next_event() == GSSENCRequest()
    with pytest.raises(RuntimeError):
        reader.encryption_started()
    reader = StartupReader()
    reader.receive_data(ssl_request() + b"x")
    assert reader.next_event() == SSLRequest()
    with pytest.raises(RuntimeError):
        reader.encryption_started()
    reader.take_buffered()
    reader.encryption_started()
    with pytest.raises(RuntimeError):
        reader.encryption_started()


# --- lengths ----------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 3, 4, 7, 10005, 0x7FFFFFFF, 0xFFFFFFFF])
def test_invalid_length_from_length_word_alone(length: int) -> None:
    """Length < 8 or > 10004 is InvalidLength as soon as the 4-byte word is in: silent, logged."""
    reader = StartupReader()
    reader.receive_data(struct.pack("!I", length))
    with pytest.raises(InvalidLength) as info:
        reader.next_event()
    error = info.value
    assert (error.sqlstate, error.message) == ("08P01", "invalid length of startup packet")
    assert (error.send, error.log, error.response()) == (False, True, b"")


def test_garbage_is_invalid_length() -> None:
    """An HTTP request is an absurd length word, hence a silent InvalidLength."""
    assert isinstance(read_error(b"GET / HTTP/1.1\r\n"), InvalidLength)


def test_length_8_is_smallest() -> None:
    """Length 8 is read: an 8-byte 3.0 packet has no terminator (layout error)."""
    assert isinstance(read_error(packet(PROTOCOL_3_0)), InvalidStartupLayout)


@SPLITTERS
def test_length_10004_is_largest(split: Callable[[bytes], list[bytes]]) -> None:
    """A 10004-byte StartupMessage (payload 10000) is accepted; 10005 is not."""
    data = startup_message({"user": "bob", "options": "x" * 9977})
    assert len(data) == 10004
    (event,) = read(data, split)
    assert isinstance(event, StartupMessage)
    assert event.get("options") == "x" * 9977
    longer = startup_message({"user": "bob", "options": "x" * 9978})
    assert isinstance(read_error(longer[:4]), InvalidLength)


def test_cancel_with_wrong_length() -> None:
    """A cancel code with a length other than 16 is InvalidLength, once the packet is in."""
    for length in (12, 20):
        data = packet(CANCEL_REQUEST_CODE, b"\x00" * (length - 8))
        reader = StartupReader()
        reader.receive_data(data[:-1])
        assert reader.next_event() is NEED_DATA
        reader.receive_data(data[-1:])
        with pytest.raises(InvalidLength):
            reader.next_event()


# --- incomplete packets -----------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3])
def test_partial_length_word_then_eof(size: int) -> None:
    """1-3 bytes then EOF is IncompleteStartupPacket: silent, logged."""
    error = read_error(LIBPQ_STARTUP[:size], eof=True)
    assert isinstance(error, IncompleteStartupPacket)
    assert (error.sqlstate, error.message) == ("08P01", "incomplete startup packet")
    assert (error.send, error.log, error.response()) == (False, True, b"")


@pytest.mark.parametrize("negotiation", [ssl_request(), gssenc_request()])
def test_partial_length_word_after_negotiation_not_logged(negotiation: bytes) -> None:
    """After an SSL or GSS negotiation, a partial length word then EOF is not logged."""
    reader = StartupReader()
    with pytest.raises(IncompleteStartupPacket) as info:
        feed(reader, [negotiation + LIBPQ_STARTUP[:2], b""])
    assert (info.value.send, info.value.log) == (False, False)


def test_partial_length_word_inside_tls_not_logged() -> None:
    """Inside TLS, a partial length word then EOF is not logged either."""
    reader = StartupReader()
    feed(reader, [ssl_request()])
    reader.encryption_started()
    with pytest.raises(IncompleteStartupPacket) as info:
        feed(reader, [b"\x00", b""])
    assert info.value.log is False


@pytest.mark.parametrize("prefix", [b"", ssl_request()])
def test_partial_body_then_eof(prefix: bytes) -> None:
    """A declared length longer than the data, then EOF, is logged even after negotiation."""
    error = read_error(prefix + LIBPQ_STARTUP[:-1], eof=True)
    assert isinstance(error, IncompleteStartupPacket)
    assert error.log is True


def test_partial_body_waits() -> None:
    """A declared length longer than the data, without EOF, waits for more."""
    assert read(LIBPQ_STARTUP[:-1]) == []


# --- StartupMessage layout and content --------------------------------------

LAYOUT_RESPONSE = b"E\x00\x00\x00\x5bSFATAL\x00VFATAL\x00C08P01\x00" + (
    b"Minvalid startup packet layout: expected terminator as last byte\x00\x00"
)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"user\x00bob\x00",
        b"user\x00bob",
        b"user\x00",
        b"user",
        b"user\x00bob\x00\x00\x00",
        b"user\x00bob\x00\x00x",
        b"user\x00bob\x00xy",
        b"\x00\x00",
    ],
)
def test_invalid_layout(body: bytes) -> None:
    """A list that does not end exactly on its terminator is a sent, logged FATAL 08P01."""
    error = read_error(v3_body(body))
    assert isinstance(error, InvalidStartupLayout)
    assert (error.send, error.log) == (True, True)
    assert error.response() == LAYOUT_RESPONSE


def test_single_byte_in_terminator_place_accepted() -> None:
    """Like PostgreSQL, one non-NUL byte where the terminator belongs passes the check."""
    (event,) = read(v3_body(b"user\x00bob\x00x"))
    assert isinstance(event, StartupMessage)
    assert event.parameters == (("user", "bob"),)


NO_USER_RESPONSE = (
    b"E\x00\x00\x00\x4fSFATAL\x00VFATAL\x00C28000\x00"
    b"Mno PostgreSQL user name specified in startup packet\x00\x00"
)


@pytest.mark.parametrize(
    "parameters",
    [
        {"database": "shop"},
        {"user": ""},
        [("user", "bob"), ("user", "")],
        {"User": "bob"},
    ],
)
def test_no_user_name(parameters: dict[str, str] | list[tuple[str, str]]) -> None:
    """A missing or empty user (the last one counts) is a sent FATAL 28000."""
    error = read_error(startup_message(parameters))
    assert isinstance(error, NoUserName)
    assert error.response() == NO_USER_RESPONSE


def test_layout_checked_before_user() -> None:
    """A bad layout is reported even when the user is missing too, as in PostgreSQL."""
    assert isinstance(read_error(v3_body(b"database\x00x\x00")), InvalidStartupLayout)


def test_startup_properties() -> None:
    """user, database (defaulting to user), application_name, replication, get()."""
    (event,) = read(startup_message([("user", "a"), ("user", "bob"), ("database", "")]))
    assert isinstance(event, StartupMessage)
    assert (event.user, event.database) == ("bob", "bob")
    assert event.application_name is None
    assert event.replication is None
    assert event.get("options") is None
    assert event.get("options", "-c x=1") == "-c x=1"
    (event,) = read(LIBPQ_STARTUP)
    assert isinstance(event, StartupMessage)
    assert (event.user, event.database, event.application_name) == ("alice", "shop", "psql")


def test_parameters_decoded_with_replacement() -> None:
    """Names and values are UTF-8; invalid bytes become U+FFFD, the packet stays intact."""
    data = v3_body(b"user\x00al\xffce\x00caf\xc3\xa9\x00ol\xc3\xa9\x00\x00")
    (event,) = read(data)
    assert isinstance(event, StartupMessage)
    assert event.parameters == (("user", "al\ufffdce"), ("café", "olé"))
    assert event.packet == data


def test_minor_version_above_zero_is_relayed() -> None:
    """3.x with x > 0 (and _pq_ options) is a StartupMessage: the upstream negotiates."""
    data = startup_message({"user": "bob", "_pq_.foo": "1"}, minor=1)
    (event,) = read(data)
    assert isinstance(event, StartupMessage)
    assert (event.major, event.minor, event.packet) == (3, 1, data)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (
            (2, 0),
            b"EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n\x00",
        ),
        (
            (0, 0),
            b"E\x00\x00\x00\x59SFATAL\x00VFATAL\x00C0A000\x00"
            b"Munsupported frontend protocol 0.0: server supports 3.0 to 3.0\x00\x00",
        ),
        (
            (0, 1),
            b"EFATAL:  unsupported frontend protocol 0.1: server supports 3.0 to 3.0\n\x00",
        ),
        (
            (1, 0),
            b"EFATAL:  unsupported frontend protocol 1.0: server supports 3.0 to 3.0\n\x00",
        ),
        (
            (2, 5),
            b"EFATAL:  unsupported frontend protocol 2.5: server supports 3.0 to 3.0\n\x00",
        ),
        (
            (4, 0),
            b"E\x00\x00\x00\x59SFATAL\x00VFATAL\x00C0A000\x00"
            b"Munsupported frontend protocol 4.0: server supports 3.0 to 3.0\x00\x00",
        ),
        (
            (65535, 65535),
            b"E\x00\x00\x00\x61SFATAL\x00VFATAL\x00C0A000\x00"
            b"Munsupported frontend protocol 65535.65535: server supports 3.0 to 3.0\x00\x00",
        ),
    ],
)
def test_unsupported_protocol(version: tuple[int, int], expected: bytes) -> None:
    """
    Major != 3 is a FATAL 0A000: in v2 format for majors below 3, else v3;
    0.0 is v3 too (PostgreSQL's send_message_to_frontend takes a protocol
    of 0 for "not set yet").
    """
    major, minor = version
    error = read_error(startup_message({"user": "bob"}, major=major, minor=minor))
    assert isinstance(error, UnsupportedProtocol)
    assert (error.major, error.minor, error.sqlstate) == (major, minor, "0A000")
    assert (error.send, error.log) == (True, True)
    assert error.response() == expected


def test_bare_version_zero_packet_gets_a_v3_error() -> None:
    """The 8-byte packet of version 0.0 and no body: PostgreSQL 15's v3 FATAL 0A000."""
    error = read_error(struct.pack("!II", 8, 0))
    assert isinstance(error, UnsupportedProtocol)
    assert error.response() == (
        b"E\x00\x00\x00\x59SFATAL\x00VFATAL\x00C0A000\x00"
        b"Munsupported frontend protocol 0.0: server supports 3.0 to 3.0\x00\x00"
    )


@pytest.mark.parametrize(
    "value", ["true", "on", "1", "yes", "t", "TRUE", "y", "database", "false", "of", "0", "n"]
)
def test_valid_replication_values(value: str) -> None:
    """replication takes PostgreSQL's booleans (any case, prefixes) or "database"."""
    (event,) = read(startup_message({"user": "bob", "replication": value}))
    assert isinstance(event, StartupMessage)
    assert event.replication == value


@pytest.mark.parametrize("value", ["", "o", "maybe", "truex", "Database", "2", " on"])
def test_invalid_replication_value(value: str) -> None:
    """Any other replication value is a sent FATAL 22023 with PostgreSQL's hint."""
    error = read_error(startup_message({"user": "bob", "replication": value}))
    assert isinstance(error, InvalidReplicationValue)
    fields = parse_error_response(error.response())
    assert fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "22023",
        "M": f'invalid value for parameter "replication": "{value}"',
        "H": 'Valid values are: "false", 0, "true", 1, "database".',
    }


def test_replication_checked_before_layout() -> None:
    """A bad replication value is met while scanning, before the layout check."""
    error = read_error(v3_body(b"replication\x00maybe\x00user\x00bob\x00"))
    assert isinstance(error, InvalidReplicationValue)


@pytest.mark.parametrize(
    ("values", "walsender"),
    [
        ([], None),
        (["off"], None),
        (["yes"], "physical"),
        (["database"], "logical"),
        (["true", "false"], None),
        (["database", "on"], "logical"),
        (["database", "off"], None),
    ],
)
def test_walsender(values: list[str], walsender: str | None) -> None:
    """walsender follows every replication occurrence in order, as PostgreSQL's flags do."""
    pairs = [("user", "bob"), *(("replication", value) for value in values)]
    (event,) = read(startup_message(pairs))
    assert isinstance(event, StartupMessage)
    assert event.walsender == walsender


# --- errors the shell raises ------------------------------------------------


def test_unencrypted_data_after_ssl_request_response() -> None:
    """The CVE-2021-23214 error is a sent FATAL 08P01 with PostgreSQL's DETAIL."""
    error = UnencryptedDataAfterSSLRequest()
    assert (error.send, error.log) == (True, True)
    assert error.response() == (
        b"E\x00\x00\x00\xa9SFATAL\x00VFATAL\x00C08P01\x00"
        b"Mreceived unencrypted data after SSL request\x00"
        b"DThis could be either a client-software bug or evidence of an attempted "
        b"man-in-the-middle attack.\x00\x00"
    )


def test_unencrypted_data_after_gssenc_request_response() -> None:
    """The GSS variant names the GSSAPI encryption request."""
    fields = parse_error_response(UnencryptedDataAfterGSSENCRequest().response())
    assert (fields["C"], fields["M"]) == (
        "08P01",
        "received unencrypted data after GSSAPI encryption request",
    )
    assert fields["D"].startswith("This could be either a client-software bug")


def test_errors_are_sticky() -> None:
    """Once next_event() raised, every later call raises the same error."""
    reader = StartupReader()
    reader.receive_data(struct.pack("!I", 3))
    with pytest.raises(InvalidLength) as first:
        reader.next_event()
    reader.receive_data(LIBPQ_STARTUP)
    with pytest.raises(InvalidLength) as second:
        reader.next_event()
    assert second.value is first.value


# --- properties -------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)
_PACKETS = st.one_of(
    st.just(ssl_request()),
    st.just(gssenc_request()),
    st.builds(cancel_request, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
    st.builds(
        startup_message,
        st.lists(st.tuples(_TEXT.filter(bool), _TEXT), max_size=4)
        | st.just([("user", "u"), ("replication", "database")]),
        st.sampled_from([0, 2, 3, 3, 3, 4, 1234]),
        st.integers(0, 3),
    ),
    st.builds(
        packet,
        st.sampled_from(
            [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE, PROTOCOL_3_0, 0]
        ),
        st.binary(max_size=24),
        st.none() | st.integers(0, 40),
    ),
    st.binary(max_size=16),
    st.just(CLIENT_HELLO),
)
_STREAMS = st.lists(_PACKETS, max_size=4).map(b"".join)


def _chunks(data: st.DataObject, stream: bytes) -> list[bytes]:
    """Split ``stream`` at points drawn by hypothesis, without empty chunks."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = zip([0, *cuts], [*cuts, len(stream)], strict=True)
    return [stream[start:end] for start, end in bounds if end > start]


def _outcome(chunks: list[bytes], eof: bool) -> list[object]:
    """Events of a fresh reader, with a raised ProtocolError summarized at the end."""
    reader = StartupReader()
    try:
        return list(feed(reader, [*chunks, b""] if eof else chunks))
    except ProtocolError as error:
        return [(type(error), error.message, error.log)]


@settings(max_examples=200, deadline=None)
@given(st.data(), _STREAMS | st.binary(max_size=64), st.booleans())
def test_any_bytes_give_events_or_protocol_errors(
    data: st.DataObject, stream: bytes, eof: bool
) -> None:
    """Any bytes, split anyhow, with or without EOF, give events, NEED_DATA or a ProtocolError."""
    reader = StartupReader()
    for chunk in [*_chunks(data, stream), *([b""] if eof else [])]:
        reader.receive_data(chunk)
        while True:
            try:
                event = reader.next_event()
            except ProtocolError as error:
                response = error.response()
                assert (response != b"") == error.send
                if response and not isinstance(error, UnsupportedProtocol):
                    assert parse_error_response(response)["C"] == error.sqlstate
                return
            if event is NEED_DATA or isinstance(event, Closed):
                break
            assert isinstance(event, EVENT_TYPES)
            if isinstance(event, SSLRequest | DirectTLS) and data.draw(st.booleans()):
                reader.take_buffered()
                reader.encryption_started()


@settings(max_examples=200, deadline=None)
@given(st.data(), _STREAMS, st.booleans())
def test_splitting_does_not_change_the_outcome(
    data: st.DataObject, stream: bytes, eof: bool
) -> None:
    """However the bytes are split, the events and the error are those of one write."""
    assert _outcome(_chunks(data, stream), eof) == _outcome([stream] if stream else [], eof)


def test_startup_message_brief_keeps_user_and_database() -> None:
    """What a relayed session keeps: the names for its last log line, no packet."""
    full = StartupMessage(3, 0, (("user", "alice"), ("application_name", "psql")), b"packet")
    brief = full.brief()
    assert (brief.user, brief.database, brief.packet) == ("alice", "alice", b"")
    assert brief.application_name is None


# -- names longer than PostgreSQL's NAMEDATALEN - 1 ---------------------------


def test_names_of_63_bytes_are_kept_with_the_packet_unchanged() -> None:
    """User and database names of 63 bytes are not cut and the packet is relayed as received."""
    data = startup_message({"user": "u" * 63, "database": "d" * 63, "application_name": "x" * 80})
    [event] = read(data)
    assert isinstance(event, StartupMessage)
    assert (event.user, event.database) == ("u" * 63, "d" * 63)
    assert event.packet == data


@SPLITTERS
def test_long_names_are_cut_to_63_bytes_and_the_packet_rebuilt(
    split: Callable[[bytes], list[bytes]],
) -> None:
    """
    ProcessStartupPacket cuts user and database names to NAMEDATALEN - 1
    bytes: the event carries the cut names and a packet that differs from
    the one received in those two values only (order and other values kept).
    """
    data = startup_message(
        [
            ("user", "u" * 100),
            ("application_name", "a" * 100),
            ("database", "d" * 64),
            ("client_encoding", "UTF8"),
        ]
    )
    [event] = read(data + TRAILING, split)[:1]
    assert isinstance(event, StartupMessage)
    assert (event.user, event.database) == ("u" * 63, "d" * 63)
    assert event.application_name == "a" * 100
    assert event.packet == startup_message(
        [
            ("user", "u" * 63),
            ("application_name", "a" * 100),
            ("database", "d" * 63),
            ("client_encoding", "UTF8"),
        ]
    )


def test_a_long_user_is_also_the_default_database() -> None:
    """Without a database the default is the user name, cut the same way."""
    [event] = read(startup_message({"user": "u" * 100}))
    assert isinstance(event, StartupMessage)
    assert (event.user, event.database) == ("u" * 63, "u" * 63)
    assert event.packet == startup_message({"user": "u" * 63})


def test_names_are_cut_bytewise_even_inside_a_character() -> None:
    """
    PostgreSQL 15 cuts at byte 63 (not pg_mbcliplen): a two-byte character
    may be split; the upstream gets the 63 bytes, the name shows the
    half character as a replacement character.
    """
    name = "é" * 40  # 80 bytes in UTF-8
    [event] = read(startup_message({"user": name}))
    assert isinstance(event, StartupMessage)
    assert event.user == "é" * 31 + "\ufffd"
    cut = name.encode("utf-8")[:63]
    assert event.packet == packet(PROTOCOL_3_0, b"user\0" + cut + b"\0\0")


def test_every_long_occurrence_is_cut() -> None:
    """A repeated name: the last one counts, and no long one reaches the upstream."""
    [event] = read(startup_message([("user", "u" * 70), ("user", "bob")]))
    assert isinstance(event, StartupMessage)
    assert event.user == "bob"
    assert event.packet == startup_message([("user", "u" * 63), ("user", "bob")])
