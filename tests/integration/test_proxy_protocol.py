"""
pgtls behind a real HAProxy in TCP mode (``send-proxy-v2`` and ``send-proxy``):
the client's address in the PROXY header is the one pg_hba.conf, the logs
and the metrics see.

Addresses on loopback tell the parties apart: HAProxy connects to pgtls from
127.0.0.3 (its ``source``), the one address in pgtls.proxy_protocol_networks
and one that pg_hba.conf does not admit; libpq clients reach HAProxy from
127.0.0.1, which pg_hba.conf admits; a raw client bound to 127.0.0.2, which
pg_hba.conf does not admit, plays the outsider.  A session admitted through
HAProxy is therefore admitted on the header's address, never on HAProxy's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from haproxyproc import HAProxy
from metricsscrape import JsonLoggedServer, scrape, series, value
from pgtlsproc import PgtlsServer, Pki, free_port

from pgtls.core import wire

if TYPE_CHECKING:
    from conftest import PgtlsLauncher

TIMEOUT = 10
BALANCER = "127.0.0.3"
OUTSIDER = "127.0.0.2"
HBA = ["host all postgres 127.0.0.1/32 trust"]
STARTUP = wire.startup_message({"user": "postgres", "database": "postgres"})


def start_pgtls(pgtls: PgtlsLauncher, *settings: str) -> tuple[PgtlsServer, int]:
    """pgtls with JSON logs and metrics, trusting headers from HAProxy's address."""
    port = free_port()
    metrics_port = free_port()
    datadir = pgtls.datadir(
        port=port,
        hba_lines=HBA,
        settings=[
            f"pgtls.proxy_protocol_networks = '{BALANCER}'",
            "log_connections = on",
            f"pgtls.metrics_listen = 'tcp:{metrics_port}:interface=127.0.0.1'",
            *settings,
        ],
    )
    server = JsonLoggedServer(datadir, port)
    pgtls.servers.append(server)
    server.start()
    return server, metrics_port


@pytest.fixture(params=["send-proxy-v2", "send-proxy"])
def haproxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Which HAProxy option to test, and where its files go."""
    yield request.param, tmp_path / "haproxy"


def events(server: PgtlsServer) -> list[dict[str, Any]]:
    """The JSON events logged so far; a line pgtls is still writing waits for the next read."""
    text = server.log_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wait_for_event(
    server: PgtlsServer, text: str, *, count: int = 1, outcome: str | None = None
) -> list[dict[str, Any]]:
    """
    Wait until ``count`` events whose text starts with ``text`` (and whose
    outcome is ``outcome``, when given) are logged; return the log's events.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        logged = events(server)
        matching = [
            event
            for event in logged
            if event["text"].startswith(text) and outcome in (None, event.get("outcome"))
        ]
        if len(matching) >= count:
            return logged
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged within {TIMEOUT}s:\n{server.log_text()}")
        time.sleep(0.05)


def raw_exchange(port: int, data: bytes, *, source: str) -> tuple[bytes, int]:
    """
    From ``source``, connect to 127.0.0.1:``port``, send ``data`` and read to
    the end; return what came back and the local port the client had.
    """
    with socket.socket() as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        local_port = sock.getsockname()[1]
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, local_port


def psql(port: int, **params: str) -> subprocess.CompletedProcess[str]:
    words = {"host": "127.0.0.1", "port": str(port), "user": "postgres", "dbname": "postgres"}
    words.update(params)
    return subprocess.run(
        ["psql", " ".join(f"{k}={v}" for k, v in words.items()), "-Atc", "select 1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGCONNECT_TIMEOUT": str(TIMEOUT)},
    )


def test_behind_haproxy(pgtls: PgtlsLauncher, pki: Pki, haproxy: tuple[str, Path]) -> None:
    """
    Through HAProxy, pg_hba.conf admits and refuses on the client's own
    address; TLS (require, verify-full, direct SSL) works after the header; the
    logs and the metrics name the client, not HAProxy.
    """
    send_proxy, directory = haproxy
    server, metrics_port = start_pgtls(pgtls)
    with HAProxy(directory, server.port, send_proxy=send_proxy, source=BALANCER) as balancer:
        # libpq from 127.0.0.1: admitted, though HAProxy's own 127.0.0.3 is not.
        ok = psql(balancer.port, sslmode="require")
        assert (ok.returncode, ok.stdout.strip()) == (0, "1"), ok.stderr + server.log_text()
        with psycopg.connect(
            f"host=localhost hostaddr=127.0.0.1 port={balancer.port} user=postgres "
            f"dbname=postgres sslmode=verify-full sslrootcert={pki.ca_file} "
            f"connect_timeout={TIMEOUT}"
        ) as conn:
            assert conn.info.pgconn.ssl_in_use
            assert conn.execute("select 1").fetchone() == (1,)
        with psycopg.connect(
            f"host=localhost hostaddr=127.0.0.1 port={balancer.port} user=postgres "
            f"dbname=postgres sslmode=verify-full sslrootcert={pki.ca_file} "
            f"sslnegotiation=direct connect_timeout={TIMEOUT}"
        ) as conn:
            assert conn.info.pgconn.ssl_in_use
        plain = psql(balancer.port, sslmode="disable")
        assert plain.returncode == 0, plain.stderr

        # The outsider on 127.0.0.2: refused on its own address.
        answer, outsider_port = raw_exchange(balancer.port, STARTUP, source=OUTSIDER)
        fields = wire.parse_error_response(answer)
        assert (fields["S"], fields["C"], fields["M"]) == (
            "FATAL",
            "28000",
            f'no pg_hba.conf entry for host "{OUTSIDER}", user "postgres", '
            'database "postgres", no encryption',
        )
        wait_for_event(server, f"session host={OUTSIDER} port={outsider_port} ")
        # Each session's line comes when pgtls sees its end, a moment after
        # the client's; the metrics are counted at the same time.
        logged = wait_for_event(server, "session host=127.0.0.1 ", count=4, outcome="relayed")
    texts = [event["text"] for event in logged]
    assert f"connection received: host={OUTSIDER} port={outsider_port}" in texts
    assert any(text.startswith("connection received: host=127.0.0.1 port=") for text in texts)
    # HAProxy's health checks and start probe are the balancer's own
    # connections, closed before a packet: the only warning is the refusal.
    assert [e["text"] for e in logged if e["level"] in ("warn", "error", "critical")] == [
        f"refused host={OUTSIDER} user=postgres database=postgres: {fields['M']}"
    ]
    sessions = [event for event in logged if event["text"].startswith("session ")]
    relayed = [s for s in sessions if s["outcome"] == "relayed"]
    assert len(relayed) == 4
    assert {(s["host"], s["ssl"]) for s in relayed} == {("127.0.0.1", True), ("127.0.0.1", False)}
    assert all(s["proxy"].startswith(f"{BALANCER}:") for s in relayed)
    (refused,) = [s for s in sessions if s["outcome"] == "refused"]
    assert (refused["host"], refused["port"], refused["reason"]) == (
        OUTSIDER,
        outsider_port,
        "no_hba_entry",
    )
    assert refused["detail"] == fields["M"]

    samples = scrape(metrics_port)
    assert series(samples, "pgtls_refusals_total") == {frozenset({("reason", "no_hba_entry")}): 1}
    assert value(samples, "pgtls_sessions_total", outcome="relayed", encryption="ssl") == 3
    assert value(samples, "pgtls_sessions_total", outcome="relayed", encryption="none") == 1
    # Five client connections named by their header (HAProxy's start probe
    # may add one); v1's health checks name HAProxy itself, v2's are LOCAL.
    assert (value(samples, "pgtls_proxy_headers_total", result="proxied") or 0) >= 5
    assert value(samples, "pgtls_proxy_headers_total", result="invalid") == 0


def test_a_header_from_elsewhere_is_refused(pgtls: PgtlsLauncher) -> None:
    """
    From an address outside pgtls.proxy_protocol_networks a PROXY header is
    a first packet with an absurd length: closed without a byte and logged
    as PostgreSQL logs it; the forged address is never used.
    """
    server, _ = start_pgtls(pgtls)
    forged = f"PROXY TCP4 127.0.0.1 127.0.0.1 5555 {server.port}\r\n".encode() + STARTUP
    for header in (forged, b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11\x00\x0c" + bytes(12) + STARTUP):
        answer, _port = raw_exchange(server.port, header, source=OUTSIDER)
        assert answer == b""
    logged = wait_for_event(server, f"invalid length of startup packet (host={OUTSIDER})")
    assert not any(e["text"].startswith("connection authorized") for e in logged)


def test_the_balancer_without_a_header_is_closed(pgtls: PgtlsLauncher) -> None:
    """From pgtls.proxy_protocol_networks, a StartupMessage without a header: silent close."""
    server, _ = start_pgtls(pgtls)
    answer, _port = raw_exchange(server.port, STARTUP, source=BALANCER)
    assert answer == b""
    wait_for_event(
        server, f"closed connection from load balancer {BALANCER}: no PROXY protocol header"
    )


def test_a_reload_changes_the_networks(pgtls: PgtlsLauncher) -> None:
    """
    SIGHUP applies a new pgtls.proxy_protocol_networks to the connections
    accepted after it: emptied, the balancer's address is an ordinary client's.
    """
    server, _ = start_pgtls(pgtls)
    conf = server.datadir / "postgresql.conf"
    conf.write_text(conf.read_text() + "pgtls.proxy_protocol_networks = ''\n")
    server.reload()
    wait_for_event(server, 'parameter "pgtls.proxy_protocol_networks" changed to ""')
    answer, _port = raw_exchange(server.port, STARTUP, source=BALANCER)
    assert wire.parse_error_response(answer)["M"] == (
        f'no pg_hba.conf entry for host "{BALANCER}", user "postgres", '
        'database "postgres", no encryption'
    )
