"""
Fixtures for every unit test.

A logged failure is a bug (house style: ``log.failure`` is for bugs, and an
unhandled error in a Deferred is logged as one when it is collected), so a
test that logs one fails even if its assertions pass.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from doors import Door, Pki, make_door
from services import Received, write_datadir
from socketpairs import clock, pair, small_pair, tls_pair  # noqa: F401 (fixtures)
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from pgtls.relay import fastpath
from pgtls.tls import certs


@pytest.fixture(autouse=True)
def logged_failures() -> Iterator[list[LogEvent]]:
    """
    Collect the failures logged through twisted.logger during a test, and
    fail the test at teardown if any is left.

    A test that means to provoke one asks for this fixture and removes the
    events it expected from the list it yields.
    """
    failures: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
        # Unhandled errors in Deferreds are logged when collected; the young
        # generations hold what the test made, and are cheap to collect.
        gc.collect(1)
    finally:
        globalLogPublisher.removeObserver(observe)
    if failures:
        report = "\n\n".join(
            f"{formatEvent(event)}\n{event['log_failure'].getTraceback()}" for event in failures
        )
        pytest.fail(f"{len(failures)} failure(s) logged:\n{report}", pytrace=False)


@pytest.fixture(autouse=True)
def fast_path_restored() -> Iterator[None]:
    """The fast path's switch as it was: makeService and some tests turn it."""
    before = fastpath.on()
    yield
    fastpath.set_on(before)


@pytest.fixture(scope="session")
def pki() -> Pki:
    """A CA and a server certificate for localhost, for the front door's data directories."""
    ca = certs.make_ca("unit test CA")
    return Pki(ca, certs.issue_server_cert(ca, ["localhost"]))


@pytest.fixture
def door(tmp_path: Path, pki: Pki) -> Door:
    """ssl = on, every IPv4 client trusted, default settings."""
    return make_door(tmp_path, pki)


@pytest.fixture
def plain_door(tmp_path: Path, pki: Pki) -> Door:
    """ssl = off, every IPv4 client trusted."""
    return make_door(tmp_path, pki, ssl=False)


@pytest.fixture(scope="session")
def server_cert() -> certs.Issued:
    ca = certs.make_ca("service test CA")
    return certs.issue_server_cert(ca, ["localhost"])


@pytest.fixture
def datadir(tmp_path: Path, server_cert: certs.Issued) -> Path:
    return write_datadir(tmp_path / "data", server_cert)


@pytest.fixture
def received(tmp_path: Path) -> Iterator[Received]:
    listener = Received(tmp_path / "notify")
    yield listener
    listener.close()
