"""
Tests for pgtls.server.logs (the JSON-lines observer for ``twistd --logger``) and
the per-session summary event the front door logs, driven with the front
door harness of test_frontdoor.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from doors import (
    ALICE,
    CLIENT,
    TLS13,
    Door,
    Pki,
    make_door,
    relayed_session,
    summary_of,
)
from OpenSSL import SSL
from twisted.internet.address import IPv6Address
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    capturedLogs,
    eventsFromJSONLogFile,
    formatEvent,
)

from pgtls.core import wire
from pgtls.relay.upstream import QuietFactory
from pgtls.server import logs

SUMMARY_FIELDS = {
    "peer",
    "host",
    "port",
    "user",
    "database",
    "ssl",
    "protocol",
    "cipher",
    "outcome",
    "reason",
    "detail",
    "bytes_up",
    "bytes_down",
    "duration",
    "backend_pid",
}


@pytest.fixture
def door(tmp_path: Path, pki: Pki) -> Door:
    """ssl = on, every client trusted."""
    return make_door(tmp_path, pki, hba=["host all all 0.0.0.0/0 trust", "host all all ::/0 trust"])


def json_lines(events: Sequence[LogEvent]) -> list[dict[str, Any]]:
    """``events`` written by the JSON observer, each line parsed on its own."""
    out = io.StringIO()
    observe = logs.json_observer(out)
    for event in events:
        observe(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(events)
    return [json.loads(line) for line in lines]


def publish(out: io.StringIO) -> Logger:
    """A Logger whose events go to the JSON observer writing to ``out``."""
    publisher = LogPublisher()
    publisher.addObserver(logs.json_observer(out))
    return Logger(namespace="pgtls.test", observer=publisher)


# -- the JSON observer -------------------------------------------------------


def test_json_observer_writes_one_object_a_line() -> None:
    """Each event is one line of plain JSON (no record separator), its named fields kept."""
    out = io.StringIO()
    log = publish(out)
    log.info("refused host={host} user={user}", host="192.0.2.7", user="alice")
    log.warn("second {n}", n=2)
    text = out.getvalue()
    assert "\x1e" not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["host"] == "192.0.2.7"
    assert first["user"] == "alice"
    assert first["text"] == "refused host=192.0.2.7 user=alice"
    assert first["level"] == "info"
    assert first["log_namespace"] == "pgtls.test"
    assert isinstance(first["log_time"], float)
    assert (second["n"], second["level"], second["text"]) == (2, "warn", "second 2")


def test_json_observer_is_read_back_by_twisted() -> None:
    """Twisted's eventsFromJSONLogFile reads the lines back into events with their fields."""
    out = io.StringIO()
    publish(out).info("session {peer} outcome={outcome}", peer="192.0.2.7:40000", outcome="relayed")
    (event,) = eventsFromJSONLogFile(io.StringIO(out.getvalue()))
    assert event["peer"] == "192.0.2.7:40000"
    assert event["log_level"] is LogLevel.info
    assert formatEvent(event) == "session 192.0.2.7:40000 outcome=relayed"


def test_json_observer_writes_a_failure_with_its_traceback() -> None:
    """A logged failure is one JSON line whose text carries the traceback."""
    out = io.StringIO()
    log = publish(out)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("unexpected {what}", what="error")
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["level"] == "critical"
    assert event["text"].startswith("unexpected error\nTraceback")
    assert "ZeroDivisionError" in event["text"]


def test_json_factory_writes_to_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    """pgtls.server.logs.json, the twistd --logger factory, writes JSON lines to standard output."""
    observe = logs.json()
    observe({"log_format": "hello {who}", "who": "journald", "log_level": LogLevel.info})
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["text"] == "hello journald"


# -- the session summary -----------------------------------------------------


def test_summary_of_a_relayed_tls_session(door: Door) -> None:
    """A TLS session's summary: who, TLS version and cipher, outcome, bytes each way, duration."""
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        conn.send(b"abc")
        upstream.send(b"defgh")
        door.reactor.advance(1.5)
        conn.lost()
    summary = summary_of(events)
    assert set(summary) >= SUMMARY_FIELDS
    assert {name: summary[name] for name in SUMMARY_FIELDS} == {
        "peer": "192.0.2.7:40000",
        "host": "192.0.2.7",
        "port": 40000,
        "user": "alice",
        "database": "app",
        "ssl": True,
        "protocol": "TLSv1.3",
        "cipher": TLS13.cipher,
        "outcome": "relayed",
        "reason": None,
        "detail": "client closed the connection",
        "bytes_up": len(ALICE) + 3,
        "bytes_down": 5,
        "duration": 1.5,
        # What the fake upstream sent is no startup message: no PID.
        "backend_pid": None,
    }
    assert summary["log_level"] is LogLevel.info
    assert formatEvent(summary) == "session " + summary["summary"]
    assert formatEvent(summary) == (
        "session host=192.0.2.7 port=40000 user=alice database=app ssl=on protocol=TLSv1.3 "
        f"cipher=TLS_AES_256_GCM_SHA384 outcome=relayed bytes_up={len(ALICE) + 3} "
        "bytes_down=5 duration=1.500: client closed the connection"
    )


def test_summary_when_the_upstream_closes(door: Door) -> None:
    """A session the upstream ended says so."""
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        upstream.lost()
        conn.lost()
    assert summary_of(events)["detail"] == "upstream closed the connection"


def test_summary_of_a_plaintext_refusal(tmp_path: Path, pki: Pki) -> None:
    """A refused plaintext session: ssl=off, outcome refused, its reason, PostgreSQL's message."""
    door = make_door(tmp_path, pki, ssl=False, hba=["hostssl all all 0.0.0.0/0 trust"])
    conn = door.connect()
    with capturedLogs() as events:
        conn.send(ALICE)
        conn.lost()
    summary = summary_of(events)
    message = (
        'no pg_hba.conf entry for host "192.0.2.7", user "alice", database "app", no encryption'
    )
    assert (summary["ssl"], summary["protocol"], summary["cipher"]) == (False, None, None)
    assert (summary["outcome"], summary["reason"]) == ("refused", "no_hba_entry")
    assert formatEvent(summary) == (
        "session host=192.0.2.7 port=40000 user=alice database=app ssl=off outcome=refused "
        f"bytes_up=0 bytes_down=0 duration=0.000: {message}"
    )


def test_summary_of_a_failed_handshake(door: Door) -> None:
    """A failed handshake: no user yet, outcome handshake_failed, OpenSSL's reason."""
    conn = door.connect()
    conn.send(wire.ssl_request())
    with capturedLogs() as events:
        conn.lost(SSL.Error([("SSL routines", "", "no shared cipher")]))
    summary = summary_of(events)
    assert summary["outcome"] == "handshake_failed"
    assert summary["reason"] == "no shared cipher"
    assert (summary["user"], summary["database"], summary["ssl"]) == (None, None, False)


def test_summary_peer_of_an_ipv6_client(door: Door) -> None:
    """An IPv6 client's peer is written [address]:port."""
    conn = door.connect(IPv6Address("TCP", "2001:db8::7", 40001))
    with capturedLogs() as events:
        conn.lost()
    summary = summary_of(events)
    assert (summary["peer"], summary["host"]) == ("[2001:db8::7]:40001", "2001:db8::7")
    assert summary["outcome"] == "closed"


def test_a_whole_session_logs_as_json_lines(tmp_path: Path, pki: Pki) -> None:
    """Every event of a logged session serializes; the summary's fields keep their JSON types."""
    door = make_door(tmp_path, pki, settings=["log_connections = on", "log_disconnections = on"])
    with capturedLogs() as events:
        conn, upstream = relayed_session(door)
        upstream.send(b"xyz")
        conn.lost()
    lines = json_lines(events)
    texts = [line["text"] for line in lines]
    assert "connection received: host=192.0.2.7 port=40000" in texts
    (summary,) = [line for line in lines if line["text"].startswith("session ")]
    assert summary["ssl"] is True
    assert summary["bytes_down"] == 3
    assert summary["outcome"] == "relayed"
    assert summary["level"] == "info"
    assert isinstance(summary["duration"], float)


def test_no_startup_options_in_the_logs(tmp_path: Path, pki: Pki) -> None:
    """Startup parameters other than user, database and application_name are never logged."""
    door = make_door(tmp_path, pki, ssl=False, settings=["log_connections = on"])
    conn = door.connect()
    secret = "s3cr3t-value"
    startup = wire.startup_message(
        {"user": "alice", "database": "app", "options": f"-c app.token={secret}"}
    )
    with capturedLogs() as events:
        conn.send(startup)
        door.accept_upstream()
        conn.lost()
    assert events
    assert all(secret not in json.dumps(line) for line in json_lines(events))
    assert str(CLIENT.host) in json.dumps(json_lines(events))


def test_upstream_connections_log_no_factory_lines(door: Door) -> None:
    """
    The factory of each upstream connection is quiet: no `Starting factory`
    and `Stopping factory` lines for every session.
    """
    conn = door.connect()
    conn.send(wire.ssl_request())
    conn.handshake()
    conn.send(ALICE)
    wrapper: Any = door.reactor.tcpClients[-1][2]
    factory = wrapper._wrappedFactory
    assert isinstance(factory, QuietFactory)
    with capturedLogs() as events:
        factory.doStart()
        factory.doStop()
    assert list(events) == []
