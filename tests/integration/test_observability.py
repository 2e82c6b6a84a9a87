"""
Logs and metrics of a real ``twistd pgtls``: the Prometheus endpoint that
``pgtls.metrics_listen`` turns on, scraped over HTTP after real psql and
psycopg sessions, and the JSON-lines log of ``twistd --logger=pgtls.logs.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from metricsscrape import JsonLoggedServer, Samples, scrape, series, value
from pgtlsproc import PgtlsServer, Pki, free_port

from pgtls.tls import certs

if TYPE_CHECKING:
    from conftest import PgtlsLauncher

CONNECT_TIMEOUT = 10
PROCESS_TIMEOUT = 30
# The rules: postgres may connect from 127.0.0.1, anyone else is refused.
HBA = ["host all postgres 127.0.0.1/32 trust"]


def psql(port: int, *, user: str = "postgres", **params: str) -> subprocess.CompletedProcess[str]:
    """Run psql 15 (libpq 15) once: ``select 1`` through pgtls on 127.0.0.1."""
    words = {"host": "127.0.0.1", "port": str(port), "user": user, "dbname": "postgres", **params}
    return subprocess.run(
        ["psql", " ".join(f"{key}={value}" for key, value in words.items()), "-Atc", "select 1"],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env={**os.environ, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT)},
    )


def scrape_until(port: int, name: str, labels: Mapping[str, str], expected: float) -> Samples:
    """
    Scrape until ``name{labels}`` reaches ``expected``: pgtls counts a
    connection when it sees it close, a moment after the client exits.
    """
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.fixture
def other_root(pki: Pki, tmp_path: Path) -> str:
    """A CA that did not sign pgtls's certificate: verify-ca against it fails the handshake."""
    path = tmp_path / "other-root.crt"
    certs.write_pem(str(path), pki.other_ca.cert)
    return str(path)


def test_metrics_after_real_sessions(pgtls: PgtlsLauncher, pki: Pki, other_root: str) -> None:
    """
    With pgtls.metrics_listen, /metrics counts what happened: an SSL and a
    plaintext session relayed, a pg_hba.conf refusal, a failed handshake,
    the TLS version and cipher, bytes each way and the upstream connect time.
    """
    metrics_port = free_port()
    server = pgtls.start(
        hba_lines=HBA,
        settings=[f"pgtls.metrics_listen = 'tcp:{metrics_port}:interface=127.0.0.1'"],
    )
    assert f"serving metrics on tcp:{metrics_port}:interface=127.0.0.1" in server.wait_for_log(
        "serving metrics on"
    )
    before = scrape(metrics_port)
    assert value(before, "pgtls_sessions_total", outcome="relayed", encryption="ssl") == 0
    assert value(before, "pgtls_refusals_total", reason="no_hba_entry") == 0
    assert value(before, "process_open_fds") is not None

    ssl = psql(server.port, sslmode="require")
    assert ssl.returncode == 0, ssl.stderr + server.log_text()
    with psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user="postgres",
        dbname="postgres",
        sslmode="disable",
        connect_timeout=CONNECT_TIMEOUT,
    ) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        during = scrape(metrics_port)
        assert value(during, "pgtls_sessions_active", encryption="none") == 1
        assert value(during, "pgtls_sessions_active", encryption="ssl") == 0
    refused = psql(server.port, user="alice", sslmode="require")
    assert "no pg_hba.conf entry" in refused.stderr
    failed = psql(server.port, sslmode="verify-ca", sslrootcert=other_root)
    assert "certificate verify failed" in failed.stderr

    samples = scrape_until(
        metrics_port,
        "pgtls_sessions_total",
        {"outcome": "handshake_failed", "encryption": "ssl"},
        1,
    )
    assert series(samples, "pgtls_sessions_total") == {
        frozenset({("outcome", "relayed"), ("encryption", "ssl")}): 1,
        frozenset({("outcome", "relayed"), ("encryption", "none")}): 1,
        frozenset({("outcome", "refused"), ("encryption", "ssl")}): 1,
        frozenset({("outcome", "handshake_failed"), ("encryption", "ssl")}): 1,
        # PgtlsServer.start() saw the port open with a connect and a close.
        frozenset({("outcome", "closed"), ("encryption", "none")}): 1,
    }
    assert series(samples, "pgtls_refusals_total") == {frozenset({("reason", "no_hba_entry")}): 1}
    # The client rejected pgtls's certificate: OpenSSL names the alert it sent.
    assert series(samples, "pgtls_handshake_failures_total") == {
        frozenset({("reason", "tlsv1 alert unknown ca")}): 1
    }
    assert value(samples, "pgtls_sessions_active", encryption="ssl") == 0
    assert value(samples, "pgtls_sessions_active", encryption="none") == 0
    # Two handshakes completed (the relayed and the refused SSL sessions),
    # with psql 15's default TLS 1.3; none is open any more.
    handshakes = series(samples, "pgtls_tls_handshakes_total")
    assert sum(handshakes.values()) == 2
    assert {dict(labels)["version"] for labels in handshakes} == {"TLSv1.3"}
    assert not series(samples, "pgtls_tls_connections_active")
    # Startup packets and queries went up, results came down.
    assert (value(samples, "pgtls_relayed_bytes_total", direction="up") or 0) > 100
    assert (value(samples, "pgtls_relayed_bytes_total", direction="down") or 0) > 100
    assert value(samples, "pgtls_upstream_connect_seconds_count") == 2
    assert 0 < (value(samples, "pgtls_upstream_connect_seconds_sum") or 0) < 2


def test_metrics_are_off_by_default(pgtls: PgtlsLauncher) -> None:
    """Without pgtls.metrics_listen nothing serves metrics and pgtls says nothing of them."""
    server = pgtls.start()
    ok = psql(server.port, sslmode="disable")
    assert ok.returncode == 0, ok.stderr
    assert "metrics" not in server.log_text()


@pytest.mark.parametrize("description", ["9187", "tcp:abc"])
def test_bad_metrics_listen_stops_the_start(pgtls: PgtlsLauncher, description: str) -> None:
    """
    A pgtls.metrics_listen that is not an endpoint string: one line at its
    file and line, in our words, exit status 1.
    """
    datadir = pgtls.datadir(settings=[f"pgtls.metrics_listen = '{description}'"])
    result = subprocess.run(
        [*PgtlsServer(datadir, 0).command()],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"pgtls: {datadir}/postgresql.conf:5: invalid value for parameter "
        f'"pgtls.metrics_listen": "{description}": not a server endpoint string '
        "(write one such as tcp:9187:interface=127.0.0.1)\n"
    )


def test_json_logs(pgtls: PgtlsLauncher) -> None:
    """
    twistd --logger=pgtls.logs.json: every line of output is one JSON
    object; each session's summary carries its named fields, and the
    PostgreSQL-style lines keep their text.
    """
    port = free_port()
    datadir = pgtls.datadir(
        port=port, hba_lines=HBA, settings=["log_connections = on", "log_disconnections = on"]
    )
    server = JsonLoggedServer(datadir, port)
    pgtls.servers.append(server)
    server.start()
    ok = psql(port, sslmode="require")
    assert ok.returncode == 0, ok.stderr
    refused = psql(port, user="alice", sslmode="disable")
    assert "no pg_hba.conf entry" in refused.stderr
    server.wait_for_log("no_hba_entry")
    server.stop()

    lines = server.log_text().splitlines()
    events: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert all(isinstance(event, dict) and "text" in event for event in events)
    texts = [event["text"] for event in events]
    assert any(text.startswith("connection received: host=127.0.0.1 port=") for text in texts)
    assert (
        "connection authorized: user=postgres database=postgres application_name=psql "
        "SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)"
    ) in texts
    summaries = [event for event in events if event["text"].startswith("session ")]
    # The first is PgtlsServer.start()'s probe: a connect and a close.
    probe, relayed, refusal = summaries
    assert (probe["outcome"], probe["user"], probe["bytes_up"]) == ("closed", None, 0)
    assert " user=[unknown] database=[unknown] " in probe["text"]
    assert relayed["peer"] == f"127.0.0.1:{relayed['port']}"
    assert (relayed["user"], relayed["database"]) == ("postgres", "postgres")
    assert (relayed["ssl"], relayed["protocol"]) == (True, "TLSv1.3")
    assert relayed["cipher"] == "TLS_AES_256_GCM_SHA384"
    assert relayed["outcome"] == "relayed"
    assert relayed["bytes_up"] > 0 and relayed["bytes_down"] > 0
    assert isinstance(relayed["backend_pid"], int) and relayed["backend_pid"] > 0
    assert 0 < relayed["duration"] < PROCESS_TIMEOUT
    assert relayed["level"] == "info"
    assert (refusal["user"], refusal["ssl"], refusal["protocol"]) == ("alice", False, None)
    assert (refusal["outcome"], refusal["reason"]) == ("refused", "no_hba_entry")
    assert refusal["detail"] == (
        'no pg_hba.conf entry for host "127.0.0.1", user "alice", database "postgres", '
        "no encryption"
    )
    assert refusal["bytes_down"] == 0
    assert (probe["backend_pid"], refusal["backend_pid"]) == (None, None)


def test_scrape_of_a_stopped_server_fails(pgtls: PgtlsLauncher) -> None:
    """Stopping pgtls closes the metrics port too."""
    metrics_port = free_port()
    server = pgtls.start(
        settings=[f"pgtls.metrics_listen = 'tcp:{metrics_port}:interface=127.0.0.1'"]
    )
    assert scrape(metrics_port)
    server.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(metrics_port)
