"""
Fixtures for every unit test.

A logged failure is a bug (house style: ``log.failure`` is for bugs, and an
unhandled error in a Deferred is logged as one when it is collected), so a
test that logs one fails even if its assertions pass.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from socketpairs import clock, pair, small_pair, tls_pair  # noqa: F401 (fixtures)
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from pgtls import fastpath


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
