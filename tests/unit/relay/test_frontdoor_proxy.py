"""
Tests for the front door behind a load balancer (pgtls.proxy_protocol_networks):
the PROXY header read before the first packet, driven with the harness of
test_frontdoor (fake transports, a MemoryReactorClock).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from doors import (
    ALICE,
    CLIENT,
    HELLO,
    Door,
    Pki,
    fatal,
    make_door,
    texts,
)
from proxyheaders import LOCAL, UNSPEC, v2, v2_tcp4, v2_tcp6
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import LogLevel, capturedLogs

from pgtls.core import wire
from pgtls.core.conf import load_settings
from pgtls.relay.counters import PROXY_HEADER_RESULTS, Metrics
from pgtls.relay.frontdoor import Phase

BALANCER = CLIENT  # 192.0.2.7:40000
REAL = "198.51.100.9"
V1 = f"PROXY TCP4 {REAL} 10.0.0.1 51234 5432\r\n".encode()
V2 = v2_tcp4(REAL, 51234)
BEHIND_BALANCER = [
    "pgtls.proxy_protocol_networks = '192.0.2.0/24, 2001:db8:1b::/48'",
    "log_connections = on",
]
# Only the real client is let in; the balancer's own address is not.
REAL_ONLY = (f"host all all {REAL}/32 trust",)


@pytest.fixture
def door(tmp_path: Path, pki: Pki) -> Door:
    """ssl = on; 192.0.2.0/24 sends PROXY headers; only the real client is trusted."""
    return make_door(tmp_path, pki, hba=REAL_ONLY, settings=BEHIND_BALANCER)


def metered(door: Door) -> Metrics:
    metrics = Metrics()
    door.factory.metrics = metrics
    return metrics


def proxy_headers(metrics: Metrics) -> dict[str, float]:
    samples = {
        result: metrics.registry.get_sample_value("pgtls_proxy_headers_total", {"result": result})
        for result in PROXY_HEADER_RESULTS
    }
    return {result: value for result, value in samples.items() if value}


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_header_and_ssl_request_in_one_read(door: Door, header: bytes) -> None:
    """The SSLRequest after the header in the same read is answered; the session goes on."""
    conn = door.connect()
    conn.send(header + wire.ssl_request())
    assert conn.take() == b"S"
    assert len(conn.transport.tls_started) == 1
    conn.handshake()
    conn.send(ALICE)
    assert door.reactor.tcpClients, "admitted on the real client's address"
    assert (conn.protocol.address, conn.protocol.port) == (ipaddress.ip_address(REAL), 51234)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_header_and_direct_tls_in_one_read(door: Door, header: bytes) -> None:
    """A ClientHello right after the header starts direct TLS; the hello reaches the TLS layer."""
    conn = door.connect()
    conn.send(header + HELLO)
    assert conn.transport.tls_started == [door.factory.tls]
    assert conn.transport.protocol.received == HELLO
    assert conn.protocol.phase is Phase.HANDSHAKE


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_header_and_startup_byte_by_byte(door: Door, header: bytes) -> None:
    """Header and StartupMessage one byte at a time: admitted once the last byte is in."""
    conn = door.connect()
    data = header + ALICE
    for i in range(len(data)):
        conn.send(data[i : i + 1])
    assert conn.answer() == b""
    assert len(door.reactor.tcpClients) == 1
    upstream = door.accept_upstream()
    assert upstream.transport.value() == ALICE


def test_hba_refusal_names_the_real_client(tmp_path: Path, pki: Pki) -> None:
    """pg_hba.conf decides on the header's address: its refusal and log name the real client."""
    door = make_door(
        tmp_path, pki, ssl=False, hba=["host all all 192.0.2.0/24 trust"], settings=BEHIND_BALANCER
    )
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(V2 + ALICE)
        conn.lost()
    assert fatal(conn.answer())["M"] == (
        f'no pg_hba.conf entry for host "{REAL}", user "alice", database "app", no encryption'
    )
    assert door.reactor.tcpClients == []
    lines = texts(events)
    assert f"connection received: host={REAL} port=51234" in lines
    assert any(line.startswith(f"refused host={REAL} user=alice") for line in lines)


def test_connection_received_is_logged_after_the_header(door: Door) -> None:
    """`connection received` names the real client, so it waits for the header."""
    with capturedLogs() as events:
        conn = door.connect()
        conn.send(V1[:10])
    assert not any("connection received" in line for line in texts(events))
    with capturedLogs() as events:
        conn.send(V1[10:])
    assert texts(events) == [f"connection received: host={REAL} port=51234"]


def test_session_summary_names_client_and_balancer(door: Door) -> None:
    """The session event's host is the client's; ``proxy`` is the balancer that brought it."""
    with capturedLogs() as events:
        conn = door.connect()
        conn.send(V2 + ALICE)
        door.accept_upstream()
        conn.lost()
    (summary,) = [e for e in events if e["log_format"].startswith("session ")]
    assert (summary["host"], summary["port"], summary["proxy"]) == (REAL, 51234, "192.0.2.7:40000")
    assert summary["outcome"] == "relayed"
    assert summary["summary"].startswith(f"host={REAL} port=51234 ")


def test_ipv6_balancer_and_client(door: Door) -> None:
    """A balancer on IPv6 with a TCP6 header: the client's IPv6 address is used."""
    conn = door.connect(IPv6Address("TCP", "2001:db8:1b::5", 4444))
    conn.send(v2_tcp6("2001:db8:c::9", 7) + ALICE)
    assert (str(conn.protocol.address), conn.protocol.port) == ("2001:db8:c::9", 7)
    assert fatal(conn.answer())["M"].startswith('no pg_hba.conf entry for host "2001:db8:c::9"')


@pytest.mark.parametrize(
    "header",
    [b"PROXY UNKNOWN\r\n", v2(LOCAL, UNSPEC)],
    ids=["v1-unknown", "v2-local"],
)
def test_local_keeps_the_balancers_address(tmp_path: Path, pki: Pki, header: bytes) -> None:
    """LOCAL (a health check) or UNKNOWN: the balancer's own connection, judged on its address."""
    door = make_door(
        tmp_path, pki, ssl=False, hba=["host all all 192.0.2.7/32 trust"], settings=BEHIND_BALANCER
    )
    metrics = metered(door)
    conn = door.connect()
    conn.send(header + ALICE)
    assert str(conn.protocol.address) == "192.0.2.7"
    assert conn.protocol.proxy == (ipaddress.ip_address("192.0.2.7"), 40000)
    assert len(door.reactor.tcpClients) == 1
    assert proxy_headers(metrics) == {"local": 1}


def test_health_check_connect_and_close_is_quiet(door: Door) -> None:
    """A LOCAL header then EOF (HAProxy's TCP check with send-proxy-v2): no warning."""
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(v2(LOCAL, UNSPEC))
        conn.lost()
    assert [e for e in events if e["log_level"] >= LogLevel.warn] == []
    assert conn.answer() == b""


@pytest.mark.parametrize(
    "data",
    [ALICE, wire.ssl_request(), b"\x16\x03\x01\x00", b"PROXY TCP4 lb.example 10.0.0.1 1 2\r\n"],
    ids=["startup", "ssl-request", "client-hello", "bad-v1"],
)
def test_no_valid_header_from_a_balancer_closes_silently(door: Door, data: bytes) -> None:
    """From a trusted network, anything but a valid header: closed without a byte, logged."""
    metrics = metered(door)
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(data)
        conn.lost()
    assert conn.answer() == b""
    assert conn.closed
    assert conn.transport.tls_started == []
    assert door.reactor.tcpClients == []
    assert any(
        line.startswith("closed connection from load balancer 192.0.2.7: ")
        for line in texts(events)
    )
    (summary,) = [e for e in events if e["log_format"].startswith("session ")]
    assert (summary["outcome"], summary["host"]) == ("protocol_error", "192.0.2.7")
    assert proxy_headers(metrics) == {"invalid": 1}


def test_an_incomplete_header_times_out(tmp_path: Path, pki: Pki) -> None:
    """A header still incomplete at authentication_timeout: closed silently, as a silent client."""
    door = make_door(tmp_path, pki, settings=[*BEHIND_BALANCER, "authentication_timeout = 5s"])
    conn = door.connect()
    conn.send(V1[:-1])
    door.reactor.advance(4.999)
    assert not conn.closed
    door.reactor.advance(0.001)
    assert conn.closed
    assert conn.answer() == b""


def test_a_fast_shutdown_closes_a_connection_reading_its_header(door: Door) -> None:
    """terminate() during the header: closed without a word, as before a startup packet."""
    conn = door.connect()
    conn.send(V2[:5])
    assert conn.protocol.phase is Phase.PROXY
    conn.protocol.terminate()
    assert conn.closed
    assert conn.answer() == b""


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_a_header_from_elsewhere_is_bad_input(tmp_path: Path, pki: Pki, header: bytes) -> None:
    """
    From outside the networks a header is a first packet with an absurd
    length: PostgreSQL's ``invalid length of startup packet``, a silent close.
    """
    door = make_door(tmp_path, pki, hba=["host all all 0.0.0.0/0 trust"], settings=BEHIND_BALANCER)
    conn = door.connect(IPv4Address("TCP", "203.0.113.5", 1111))
    with capturedLogs() as events:
        conn.send(header + ALICE)
    assert conn.answer() == b""
    assert conn.closed
    assert door.reactor.tcpClients == []
    assert "invalid length of startup packet (host=203.0.113.5)" in texts(events)


def test_without_the_setting_nothing_changes(tmp_path: Path, pki: Pki) -> None:
    """With the setting empty (the default), a balancer's connection is an ordinary client."""
    door = make_door(tmp_path, pki, ssl=False)
    conn = door.connect()
    conn.send(ALICE)
    assert conn.protocol.proxy is None
    assert len(door.reactor.tcpClients) == 1


def test_a_reload_applies_to_new_connections(tmp_path: Path, pki: Pki) -> None:
    """A reload that adds a network: connections accepted after it must send a header."""
    door = make_door(tmp_path, pki, ssl=False, hba=["host all all 0.0.0.0/0 trust"])
    before = door.connect()
    datadir = door.factory.settings.data_directory
    new = load_settings(datadir, {"pgtls.proxy_protocol_networks": "192.0.2.7"})
    door.factory.settings = replace(
        door.factory.settings, proxy_protocol_networks=new.proxy_protocol_networks
    )
    after = door.connect()
    before.send(ALICE)
    assert len(door.reactor.tcpClients) == 1, "accepted before the reload: no header expected"
    after.send(ALICE)
    assert after.closed and after.answer() == b""
    assert len(door.reactor.tcpClients) == 1


def test_metrics_count_proxied_connections(door: Door) -> None:
    """pgtls_proxy_headers_total counts headers that named a client; every result starts at 0."""
    metrics = metered(door)
    for result in PROXY_HEADER_RESULTS:
        sample = metrics.registry.get_sample_value("pgtls_proxy_headers_total", {"result": result})
        assert sample == 0
    for header in (V1, V2):
        conn = door.connect()
        conn.send(header + ALICE)
        conn.lost()
    assert proxy_headers(metrics) == {"proxied": 2}
