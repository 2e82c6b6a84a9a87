"""
Tests for pgtls.relay.proxyheader: the PROXY protocol header read before a load
balancer's client's first packet, bytes in, header or error out.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proxyheaders import (
    LOCAL,
    PROXY,
    TCP4,
    TCP6,
    UDP4,
    UNIX,
    UNSPEC,
    V2_SIGNATURE,
    v2,
    v2_tcp4,
    v2_tcp6,
)

from pgtls.core import wire
from pgtls.relay.proxyheader import (
    MAX_V1_HEADER,
    MAX_V2_HEADER,
    InvalidProxyHeader,
    ProxyHeader,
    ProxyHeaderReader,
)

STARTUP = wire.startup_message({"user": "alice", "database": "app"})


def read(*chunks: bytes) -> tuple[ProxyHeader, bytes]:
    """Feed chunks one by one; the header must be complete after the last one only."""
    reader = ProxyHeaderReader()
    for chunk in chunks[:-1]:
        reader.receive_data(chunk)
        assert reader.next_event() is wire.NEED_DATA
    reader.receive_data(chunks[-1])
    header = reader.next_event()
    assert isinstance(header, ProxyHeader)
    return header, reader.trailing_data


def refused(data: bytes) -> str:
    """The reason a reader gives for refusing ``data``."""
    reader = ProxyHeaderReader()
    reader.receive_data(data)
    with pytest.raises(InvalidProxyHeader) as caught:
        reader.next_event()
    return str(caught.value)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


VALID = [
    (
        b"PROXY TCP4 198.51.100.9 10.0.0.1 51234 5432\r\n",
        ProxyHeader(1, (ip("198.51.100.9"), 51234)),
    ),
    (b"PROXY TCP6 2001:db8::9 fd00::1 51234 5432\r\n", ProxyHeader(1, (ip("2001:db8::9"), 51234))),
    (b"PROXY TCP6 ::ffff:198.51.100.9 ::1 1 2\r\n", ProxyHeader(1, (ip("198.51.100.9"), 1))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None)),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", ProxyHeader(1, None)),
    (v2_tcp4("198.51.100.9", 51234), ProxyHeader(2, (ip("198.51.100.9"), 51234))),
    (v2_tcp6("2001:db8::9", 0), ProxyHeader(2, (ip("2001:db8::9"), 0))),
    (v2_tcp6("::ffff:198.51.100.9", 65535), ProxyHeader(2, (ip("198.51.100.9"), 65535))),
    (v2(LOCAL, UNSPEC), ProxyHeader(2, None)),
    # A LOCAL header's address block is skipped, whatever it says.
    (v2(LOCAL, TCP4, b"\x01" * 12), ProxyHeader(2, None)),
    (v2(PROXY, UNSPEC), ProxyHeader(2, None)),
    (v2(PROXY, UNIX, b"/run/client".ljust(108, b"\0") * 2), ProxyHeader(2, None)),
    (v2(PROXY, UDP4, b"\x01" * 12), ProxyHeader(2, None)),
]
VALID_IDS = [
    "v1-tcp4",
    "v1-tcp6",
    "v1-tcp6-mapped",
    "v1-unknown",
    "v1-unknown-addresses",
    "v2-tcp4",
    "v2-tcp6",
    "v2-tcp6-mapped",
    "v2-local",
    "v2-local-with-addresses",
    "v2-unspec",
    "v2-unix",
    "v2-udp",
]


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
def test_a_whole_header(data: bytes, expected: ProxyHeader) -> None:
    """A header in one read gives the client's address, or None when it names none."""
    assert read(data) == (expected, b"")


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
def test_byte_by_byte(data: bytes, expected: ProxyHeader) -> None:
    """A header read one byte at a time waits for its last byte, then is complete."""
    assert read(*(data[i : i + 1] for i in range(len(data)))) == (expected, b"")


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
def test_every_split_with_the_startup_message(data: bytes, expected: ProxyHeader) -> None:
    """Header and StartupMessage in two reads, split anywhere: the packet is left whole."""
    whole = data + STARTUP
    for cut in range(1, len(whole)):
        reader = ProxyHeaderReader()
        reader.receive_data(whole[:cut])
        header = reader.next_event()
        if header is wire.NEED_DATA:
            assert cut < len(data)
            reader.receive_data(whole[cut:])
            header = reader.next_event()
            trailing = reader.trailing_data
        else:
            trailing = reader.trailing_data + whole[cut:]
        assert (header, trailing) == (expected, STARTUP)


def test_header_with_ssl_request_in_one_read() -> None:
    """What follows the header in the same read is the client's: here an SSLRequest."""
    assert read(v2_tcp4("198.51.100.9", 1) + wire.ssl_request()) == (
        ProxyHeader(2, (ip("198.51.100.9"), 1)),
        wire.ssl_request(),
    )


def test_v2_tlvs_are_skipped() -> None:
    """TLVs after the addresses (AWS's VPC endpoint, HAProxy's unique id) are part of the header."""
    addresses = (
        socket.inet_aton("198.51.100.9") + socket.inet_aton("10.0.0.1") + b"\x00\x01\x15\x38"
    )
    tlvs = b"\xea\x00\x17\x01vpce-0123456789abcdef0" + b"\x04\x00\x02\x00\x00"
    header = v2(PROXY, TCP4, addresses, tlvs)
    assert read(header + STARTUP) == (ProxyHeader(2, (ip("198.51.100.9"), 1)), STARTUP)


def test_the_longest_headers_allowed() -> None:
    """A v1 line of 107 bytes with its CRLF, and a v2 header of MAX_V2_HEADER bytes, are read."""
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_HEADER - 16) + b"\r\n"
    assert len(line) == MAX_V1_HEADER
    assert read(line) == (ProxyHeader(1, None), b"")
    padding = (
        b"\x04" + struct.pack("!H", MAX_V2_HEADER - 16 - 12 - 3) + b"\0" * (MAX_V2_HEADER - 31)
    )
    header = v2(PROXY, TCP4, socket.inet_aton("198.51.100.9") * 2 + b"\0\1\0\2", padding)
    assert len(header) == MAX_V2_HEADER
    assert read(header) == (ProxyHeader(2, (ip("198.51.100.9"), 1)), b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (STARTUP, "no PROXY protocol header"),
        (wire.ssl_request(), "no PROXY protocol header"),
        (b"\x16\x03\x01", "no PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXX", "no PROXY protocol header"),
        (b"proxy TCP4", "no PROXY protocol header"),
        (b"\r\n\r\n\x00\r\nQUIX", "no PROXY protocol header"),
        (b"PROXY UNKNOWN " + b"x" * 100, "PROXY protocol version 1 header longer than 107 bytes"),
        (
            b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n",
            "PROXY protocol version 1 header longer than 107 bytes",
        ),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 lb.example 5.6.7.8 1 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 x 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 ::1 ::2 1 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "invalid PROXY protocol version 1 header"),
        (b"PROXY \xff\r\n", "invalid PROXY protocol version 1 header"),
        (V2_SIGNATURE + b"\x11\x11\x00\x00", "invalid PROXY protocol version 2 header"),
        (V2_SIGNATURE + b"\x22\x11\x00\x00", "invalid PROXY protocol version 2 header"),
        (V2_SIGNATURE + b"\x21\x41\x00\x00", "invalid PROXY protocol version 2 header"),
        (V2_SIGNATURE + b"\x21\x13\x00\x00", "invalid PROXY protocol version 2 header"),
        (v2(PROXY, TCP4, b"\x01" * 11), "invalid PROXY protocol version 2 header"),
        (v2(PROXY, TCP6, b"\x01" * 12), "invalid PROXY protocol version 2 header"),
        (
            V2_SIGNATURE + b"\x21\x11\x0f\xf1",
            f"PROXY protocol version 2 header of 4097 bytes, more than {MAX_V2_HEADER}",
        ),
        (
            V2_SIGNATURE + b"\x21\x11\xff\xff",
            f"PROXY protocol version 2 header of 65551 bytes, more than {MAX_V2_HEADER}",
        ),
    ],
)
def test_invalid(data: bytes, reason: str) -> None:
    """Bytes that are not a valid header are refused, with the reason for the log."""
    assert refused(data) == reason


def test_garbage_is_refused_at_its_first_byte() -> None:
    """A first byte that begins no header is refused at once, without waiting for more."""
    assert refused(b"\x00") == "no PROXY protocol header"
    assert refused(b"P\x00") == "no PROXY protocol header"
    assert refused(b"\r\x00") == "no PROXY protocol header"


def test_a_v2_header_announcing_too_much_is_refused_before_it_arrives() -> None:
    """The 16 fixed bytes suffice to refuse a header longer than the cap."""
    with pytest.raises(InvalidProxyHeader):
        read(V2_SIGNATURE + b"\x21\x11\x10\x00")


def test_nothing_yet_needs_data() -> None:
    """Before any byte, and on a prefix of either signature, the reader waits."""
    reader = ProxyHeaderReader()
    assert reader.next_event() is wire.NEED_DATA
    reader.receive_data(b"PROXY TCP4 1.2")
    assert reader.next_event() is wire.NEED_DATA
    reader = ProxyHeaderReader()
    reader.receive_data(V2_SIGNATURE + b"\x21\x11\x00")
    assert reader.next_event() is wire.NEED_DATA


@given(st.lists(st.binary(max_size=64), max_size=12))
def test_any_bytes_give_a_header_need_data_or_an_invalid_header(chunks: list[bytes]) -> None:
    """Whatever arrives, in any chunks: a header, NEED_DATA or InvalidProxyHeader, nothing else."""
    reader = ProxyHeaderReader()
    for chunk in chunks:
        reader.receive_data(chunk)
        try:
            result = reader.next_event()
        except InvalidProxyHeader:
            return
        if isinstance(result, ProxyHeader):
            return
        assert result is wire.NEED_DATA


@given(
    st.one_of(
        st.builds(lambda data: V2_SIGNATURE + data, st.binary(min_size=4, max_size=80)),
        st.builds(
            lambda command, family, body, slack: v2(command, family, body)[
                : 16 + len(body) - slack
            ],
            st.sampled_from([PROXY, LOCAL, 0x22, 0x11]),
            st.sampled_from([TCP4, UDP4, TCP6, 0x22, UNIX, 0x32, UNSPEC, 0x14, 0x41]),
            st.binary(max_size=240),
            st.integers(min_value=0, max_value=2),
        ),
        st.builds(lambda data: b"PROXY " + data, st.binary(max_size=120)),
        st.builds(
            lambda family, data: b"PROXY " + family + b" " + data + b"\r\n",
            st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN"]),
            st.binary(max_size=90),
        ),
    )
)
def test_near_headers_never_raise_anything_else(data: bytes) -> None:
    """Signatures followed by anything: Twisted's parsers' other exceptions never leak out."""
    reader = ProxyHeaderReader()
    reader.receive_data(data)
    try:
        result = reader.next_event()
    except InvalidProxyHeader:
        return
    assert result is wire.NEED_DATA or isinstance(result, ProxyHeader)


@given(
    st.sampled_from([data for data, _ in VALID]),
    st.binary(max_size=200),
    st.lists(st.integers(min_value=0, max_value=400), max_size=5),
)
def test_the_bytes_after_a_header_are_kept_whatever_the_reads(
    header: bytes, after: bytes, cuts: list[int]
) -> None:
    """However the reads cut a header and what follows it, the bytes after it come out whole."""
    whole = header + after
    points = sorted({min(cut, len(whole)) for cut in cuts} | {0, len(whole)})
    reader = ProxyHeaderReader()
    result: object = wire.NEED_DATA
    rest = b""
    for start, end in itertools.pairwise(points):
        if result is wire.NEED_DATA:
            reader.receive_data(whole[start:end])
            result = reader.next_event()
            if isinstance(result, ProxyHeader):
                rest = reader.trailing_data
        else:
            rest += whole[start:end]
    assert isinstance(result, ProxyHeader)
    assert rest == after
