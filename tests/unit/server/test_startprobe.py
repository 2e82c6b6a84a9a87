"""Tests for pgtls.server.startprobe: the channel-binding check at start, with fakes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent

from pgtls.core.conninfo import parse_conninfo
from pgtls.server.startprobe import StartProbeService

TLS_LEG = "host=127.0.0.1 port=5433 sslmode=verify-full sslrootcert=root.crt"


class FakeTLS:
    def __init__(self, certificate: object) -> None:
        self.certificate = certificate


class FakeSettings:
    def __init__(self, upstream: str) -> None:
        self.upstream = parse_conninfo(upstream)


class FakeFactory:
    """What the service uses of FrontDoorFactory: legs it opens, certificates it sees."""

    def __init__(self, upstream: str = TLS_LEG, *, ours: object = "pgtls cert") -> None:
        self.settings = FakeSettings(upstream)
        self.tls = FakeTLS(ours)
        self.upstream_tls = object() if self.settings.upstream.uses_tls else None
        self.shutting_down = False
        self.legs: list[defer.Deferred[Any]] = []
        self.seen: list[object] = []

    def open_upstream(self, startup: bytes | None = None) -> defer.Deferred[Any]:
        assert startup is None, "the probe sends no StartupMessage"
        leg: defer.Deferred[Any] = defer.Deferred()
        self.legs.append(leg)
        return leg

    def upstream_certificate_seen(self, cert: object) -> None:
        self.seen.append(cert)


class FakeLeg:
    def __init__(self, peer_certificate: object | None) -> None:
        self.peer_certificate = peer_certificate
        self.transport = StringTransport()


def started(factory: FakeFactory) -> tuple[StartProbeService, MemoryReactor]:
    reactor = MemoryReactor()
    service = StartProbeService(reactor, factory)  # type: ignore[arg-type]
    service.startService()
    # Nothing happens before the reactor runs: serving and READY=1 come first.
    assert factory.legs == []
    reactor.run()
    return service, reactor


def texts(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


def test_the_upstream_certificate_is_judged_and_the_leg_closed() -> None:
    factory = FakeFactory()
    started(factory)
    (leg,) = factory.legs
    opened = FakeLeg("upstream cert")
    leg.callback(opened)
    assert factory.seen == ["upstream cert"]
    assert opened.transport.disconnecting
    assert opened.transport.value() == b"", "nothing is sent upstream"


def test_a_failed_leg_says_the_check_waits() -> None:
    factory = FakeFactory()
    started(factory)
    with capturedLogs() as events:
        factory.legs[0].errback(error.ConnectionRefusedError())
    (line,) = texts(events)
    assert line == (
        "channel binding: could not check the upstream server's certificate at start "
        "(127.0.0.1:5433: Connection refused); the check waits for the first session"
    )
    assert factory.seen == []


def test_a_plaintext_answer_says_no_binding_is_offered() -> None:
    factory = FakeFactory("host=127.0.0.1 port=5433 sslmode=prefer")
    started(factory)
    opened = FakeLeg(None)
    with capturedLogs() as events:
        factory.legs[0].callback(opened)
    (line,) = texts(events)
    assert line.startswith("channel binding: the upstream leg is not TLS")
    assert opened.transport.disconnecting


def test_a_shutdown_cancels_the_leg_quietly() -> None:
    factory = FakeFactory()
    service, _ = started(factory)
    with capturedLogs() as events:
        service.stopService()
    assert factory.legs[0].called
    assert texts(events) == []


def test_no_leg_without_tls_upstream_or_for_clients() -> None:
    for factory in (
        FakeFactory("host=/run/postgresql port=5432"),
        FakeFactory("host=127.0.0.1 port=5433 sslmode=disable"),
        FakeFactory(ours=None),
    ):
        started(factory)
        assert factory.legs == []
