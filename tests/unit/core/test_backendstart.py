"""
Tests for pgtls.core.backendstart: the upstream's startup messages, read while
they are relayed, and the upstream's channel-binding refusals.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from backends import (
    CHECK_FAILED,
    SCRAM_STARTUP,
    auth,
    byte_by_byte,
    fields,
    in_halves,
    key_data,
    message,
    parameter,
    ready,
    sasl,
    whole,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtls.core.backendstart import (
    BYTE_BUDGET,
    MAX_MESSAGE_LENGTH,
    NEED_DATA,
    Authentication,
    BackendKeyData,
    BackendStartReader,
    ChannelBindingRefusal,
    ErrorResponse,
    Event,
    GaveUp,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
    channel_binding_refusal,
)

EVENT_TYPES = (
    Authentication,
    ParameterStatus,
    BackendKeyData,
    NegotiateProtocolVersion,
    ErrorResponse,
    NoticeResponse,
    ReadyForQuery,
    GaveUp,
)


SCRAM_EVENTS: list[Event] = [
    Authentication(10, ("SCRAM-SHA-256",)),
    Authentication(11),
    Authentication(12),
    Authentication(0),
    ParameterStatus("application_name", "psql"),
    ParameterStatus("server_version", "15.8 (Debian 15.8-0+deb12u1)"),
    BackendKeyData(4242),
    ReadyForQuery("I"),
]


def read(chunks: list[bytes], *, parameters: bool = True) -> list[Event]:
    """Feed ``chunks`` one by one, pulling every event after each."""
    reader = BackendStartReader(parameters=parameters)
    events: list[Event] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        while (event := reader.next_event()) is not NEED_DATA:
            events.append(event)
    return events


SPLITS = pytest.mark.parametrize("split", [whole, byte_by_byte, in_halves])


@SPLITS
def test_a_scram_startup(split: Callable[[bytes], list[bytes]]) -> None:
    """A whole SCRAM startup gives one event a message, however it arrives."""
    assert read(split(b"".join(SCRAM_STARTUP))) == SCRAM_EVENTS


def test_each_message_in_its_own_read() -> None:
    """One message a read, as a slow upstream sends them."""
    assert read(SCRAM_STARTUP) == SCRAM_EVENTS


def test_split_across_reads_mid_header_and_mid_body() -> None:
    """A message cut in its length word, and another cut in its body."""
    stream = b"".join(SCRAM_STARTUP)
    cut1, cut2 = 3, len(SCRAM_STARTUP[0]) + 9
    assert read([stream[:cut1], stream[cut1:cut2], stream[cut2:]]) == SCRAM_EVENTS


def test_the_plus_mechanism_is_read() -> None:
    """An upstream on TLS offers SCRAM-SHA-256-PLUS first."""
    assert read([sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")]) == [
        Authentication(10, ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"))
    ]


def test_md5_and_cleartext_requests() -> None:
    """Authentication codes other than SASL carry no mechanisms."""
    assert read([auth(5, b"salt"), auth(3)]) == [Authentication(5), Authentication(3)]


def test_backend_key_data_of_protocol_3_2_has_a_longer_key() -> None:
    """Protocol 3.2 (PostgreSQL 18) sends up to 256 bytes of key."""
    assert read([key_data(77, bytes(32))]) == [BackendKeyData(77)]


def test_negotiate_protocol_version() -> None:
    """NegotiateProtocolVersion: newest minor version and unrecognized options."""
    body = struct.pack("!ii", 0x30000, 2) + b"_pq_.a\0_pq_.b\0"
    assert read([message(b"v", body), ready()]) == [
        NegotiateProtocolVersion(0, ("_pq_.a", "_pq_.b")),
        ReadyForQuery("I"),
    ]


def test_a_notice_does_not_end_the_reading() -> None:
    """A NoticeResponse during startup is an event; reading goes on."""
    notice = fields(b"N", ("S", "WARNING"), ("C", "01000"), ("M", "hello"))
    events = read([notice, key_data(5), ready()])
    assert isinstance(events[0], NoticeResponse)
    assert events[0].message == "hello"
    assert events[1:] == [BackendKeyData(5), ReadyForQuery("I")]


def test_ready_for_query_ends_the_reading() -> None:
    """After ReadyForQuery the reader is done: later bytes, even garbage, are ignored."""
    reader = BackendStartReader()
    reader.receive_data(ready() + b"T\0\0\0\x06\0\0" + b"garbage")
    assert reader.next_event() == ReadyForQuery("I")
    assert reader.done
    reader.receive_data(b"more garbage")
    assert reader.next_event() is NEED_DATA


def test_an_error_response_ends_the_reading() -> None:
    """An ErrorResponse is the last event; its fields are read in order."""
    events = read([sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"), CHECK_FAILED, ready()])
    assert events[0] == Authentication(10, ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"))
    (error,) = events[1:]
    assert isinstance(error, ErrorResponse)
    assert (error.sqlstate, error.message, error.get("S")) == (
        "28000",
        "SCRAM channel binding check failed",
        "FATAL",
    )


@pytest.mark.parametrize(
    "garbage",
    [
        b"X\0\0\0\x04",  # a message type not sent at startup
        b"R\0\0\0\x03",  # a length shorter than the length word
        b"R" + struct.pack("!I", MAX_MESSAGE_LENGTH + 1),  # too long
        message(b"R", b"\0\0"),  # too short for its code
        message(b"S", b"name-without-value\0"),
        message(b"S", b"name\0value"),  # unterminated
        message(b"K", b"\0\0\0\x01"),  # no secret key
        message(b"K", bytes(4 + 257)),  # a secret key too long
        message(b"Z", b"X"),  # an unknown transaction status
        message(b"Z", b"II"),
        message(b"E", b"Mno terminator\0"),
        message(b"E", b"Mmessage\0\0trailing\0"),
        sasl(),  # no mechanism
        auth(10, b"SCRAM-SHA-256\0"),  # list not terminated
        message(b"v", struct.pack("!ii", 0, 1)),  # one option announced, none sent
        message(b"v", struct.pack("!ii", 0, 0) + b"x\0"),
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
    ],
)
def test_garbage_gives_up(garbage: bytes) -> None:
    """Anything PostgreSQL does not send at startup: the reader gives up, silently and for good."""
    reader = BackendStartReader()
    reader.receive_data(garbage + key_data(1) + ready())
    event = reader.next_event()
    assert isinstance(event, GaveUp)
    assert reader.done
    assert reader.next_event() is NEED_DATA


def test_events_before_garbage_are_kept() -> None:
    """Messages before the garbage are read; the reader gives up at the garbage."""
    events = read([key_data(9) + b"\xff\xff\xff\xff\xff"])
    assert events[0] == BackendKeyData(9)
    assert isinstance(events[1], GaveUp)


def test_the_byte_budget() -> None:
    """A startup longer than the budget gives up at the message that crosses it."""
    notice = fields(b"N", ("M", "x" * 60000))
    count = BYTE_BUDGET // len(notice)
    events = read([notice] * (count + 1) + [key_data(1)])
    assert len(events) == count + 1
    assert all(isinstance(event, NoticeResponse) for event in events[:count])
    assert isinstance(events[-1], GaveUp)


def test_a_long_message_is_bounded_before_it_arrives() -> None:
    """A length word past the limit gives up at once, without waiting for the body."""
    reader = BackendStartReader()
    reader.receive_data(b"E" + struct.pack("!I", 2**31))
    assert isinstance(reader.next_event(), GaveUp)


def test_the_buffer_is_bounded_without_next_event() -> None:
    """Fed and never asked, the reader keeps no more than one message's worth."""
    reader = BackendStartReader()
    for _ in range(100):
        reader.receive_data(bytes(10000))
    assert len(reader._buffer) <= MAX_MESSAGE_LENGTH + 10000


def test_received_views_are_copied() -> None:
    """A view of a buffer that is then reused (the relay's) is copied at once."""
    buffer = bytearray(key_data(31337))
    reader = BackendStartReader()
    reader.receive_data(memoryview(buffer)[:7])
    buffer[:] = bytes(len(buffer))
    reader.receive_data(key_data(31337)[7:])
    assert reader.next_event() == BackendKeyData(31337)


# -- without ParameterStatus -----------------------------------------------


@SPLITS
def test_parameters_can_go_unread(split: Callable[[bytes], list[bytes]]) -> None:
    """parameters=False: the same startup without its ParameterStatus events."""
    events = read(split(b"".join(SCRAM_STARTUP)), parameters=False)
    assert events == [e for e in SCRAM_EVENTS if not isinstance(e, ParameterStatus)]


def test_unread_parameters_are_still_framed() -> None:
    """A ParameterStatus too long, or past the budget, gives up as any message does."""
    too_long = b"S" + struct.pack("!I", MAX_MESSAGE_LENGTH + 1)
    events = read([key_data(3) + too_long + ready()], parameters=False)
    assert events[0] == BackendKeyData(3)
    assert isinstance(events[1], GaveUp)
    assert len(events) == 2
    short = read([b"S\0\0\0\x03" + ready()], parameters=False)
    assert len(short) == 1 and isinstance(short[0], GaveUp)
    value = "x" * 60000
    many = [parameter("p", value)] * (BYTE_BUDGET // 60000 + 1)
    ending = read([*many, key_data(1)], parameters=False)
    assert len(ending) == 1 and isinstance(ending[0], GaveUp)


def test_an_unread_parameter_split_anywhere() -> None:
    """A ParameterStatus cut in its header or body is skipped once whole."""
    stream = parameter("server_version", "15.8") + key_data(8) + ready()
    for cut in range(1, len(stream)):
        assert read([stream[:cut], stream[cut:]], parameters=False) == [
            BackendKeyData(8),
            ReadyForQuery("I"),
        ]


# -- any bytes ---------------------------------------------------------------

_MESSAGES = st.one_of(
    st.sampled_from([*SCRAM_STARTUP, CHECK_FAILED, sasl("A", "B"), ready(b"T")]),
    st.builds(
        message,
        st.sampled_from([b"R", b"S", b"K", b"v", b"E", b"N", b"Z"]),
        st.binary(max_size=24),
    ),
    st.binary(max_size=12),
)
_STREAMS = st.lists(_MESSAGES, max_size=8).map(b"".join)


def _chunks(data: st.DataObject, stream: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = zip([0, *cuts], [*cuts, len(stream)], strict=True)
    return [stream[start:end] for start, end in bounds if end > start]


@settings(max_examples=300, deadline=None)
@given(st.data(), _STREAMS | st.binary(max_size=80))
def test_any_bytes_give_events_or_a_give_up(data: st.DataObject, stream: bytes) -> None:
    """
    Any bytes, split anyhow, give events and at most one ending (ReadyForQuery,
    ErrorResponse or GaveUp), never an exception; and the same events as one read.
    """
    events = read(_chunks(data, stream))
    assert all(isinstance(event, EVENT_TYPES) for event in events)
    endings = [e for e in events if isinstance(e, ReadyForQuery | ErrorResponse | GaveUp)]
    assert len(endings) <= 1
    if endings:
        assert events[-1] is endings[0]
    assert events == read([stream])


@settings(max_examples=300, deadline=None)
@given(st.data(), _STREAMS | st.binary(max_size=80))
def test_unread_parameters_change_nothing_else(data: st.DataObject, stream: bytes) -> None:
    """
    parameters=False: any bytes, split anyhow, never raise, and give the
    events of a full reading without its ParameterStatus, up to where that
    reading gave up (an unread ParameterStatus is not checked inside).
    """
    events = read(_chunks(data, stream), parameters=False)
    assert events == read([stream], parameters=False)
    full = [e for e in read([stream]) if not isinstance(e, ParameterStatus)]
    if not any(isinstance(e, GaveUp) for e in full):
        assert events == full
    else:
        assert events[: len(full) - 1] == full[:-1]


# -- channel-binding refusals ------------------------------------------------


def error(*pairs: tuple[str, str]) -> ErrorResponse:
    (event,) = read([fields(b"E", *pairs)])
    assert isinstance(event, ErrorResponse)
    return event


def test_check_failed_is_recognized() -> None:
    """PostgreSQL 15's read_client_final_message refusal."""
    assert channel_binding_refusal(
        error(("C", "28000"), ("M", "SCRAM channel binding check failed"))
    ) is (ChannelBindingRefusal.CHECK_FAILED)


def test_negotiation_error_is_recognized() -> None:
    """PostgreSQL 15's read_client_first_message refusal of the gs2 flag y."""
    refusal = channel_binding_refusal(
        error(
            ("S", "FATAL"),
            ("C", "28000"),
            ("M", "SCRAM channel binding negotiation error"),
            ("D", "The client supports SCRAM channel binding but thinks the server does not."),
        )
    )
    assert refusal is ChannelBindingRefusal.NEGOTIATION_ERROR


@pytest.mark.parametrize(
    ("routine", "refusal"),
    [
        ("read_client_final_message", ChannelBindingRefusal.CHECK_FAILED),
        ("read_client_first_message", ChannelBindingRefusal.NEGOTIATION_ERROR),
    ],
)
def test_a_translated_message_is_recognized_by_its_routine(
    routine: str, refusal: ChannelBindingRefusal
) -> None:
    """An upstream with another lc_messages: SQLSTATE 28000 and the routine name decide."""
    translated = error(
        ("C", "28000"), ("M", "échec de la vérification de la liaison"), ("R", routine)
    )
    assert channel_binding_refusal(translated) is refusal


@pytest.mark.parametrize(
    "pairs",
    [
        (("C", "28P01"), ("M", 'password authentication failed for user "alice"')),
        (
            ("C", "28000"),
            ("M", 'no pg_hba.conf entry for host "127.0.0.1"'),
            ("R", "ClientAuthentication"),
        ),
        (("C", "08P01"), ("M", "SCRAM channel binding check failed")),
        (("C", "08P01"), ("M", "malformed SCRAM message"), ("R", "read_client_first_message")),
        (("M", "SCRAM channel binding check failed"),),
    ],
)
def test_other_errors_are_not_channel_binding_refusals(pairs: tuple[tuple[str, str], ...]) -> None:
    """Wrong passwords, hba refusals, protocol violations: not channel binding."""
    assert channel_binding_refusal(error(*pairs)) is None
