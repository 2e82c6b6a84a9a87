"""
Integration-test fixtures: a real PostgreSQL server as pgtls's upstream.

Every test in this directory is marked ``integration``.  Missing PostgreSQL
binaries fail the tests that need them (CI must install PostgreSQL), rather
than skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PostgresNotInstalled, PostgresServer, find_bindir

_HERE = Path(__file__).resolve().parent
_SESSION_SERVER = pytest.StashKey[PostgresServer]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected under tests/integration as ``integration``."""
    # This hook sees the whole session's items, not only this directory's.
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """
    A started PostgreSQL server shared by the session, closed at its end.

    Listens on a Unix socket only; see :class:`pgserver.PostgresServer` for
    its roles (``postgres`` trusted, ``alice`` with a SCRAM password) and the
    ``pgtls_test`` database.  Tests may stop and start it.
    """
    try:
        bindir = find_bindir()
    except PostgresNotInstalled as e:
        pytest.fail(str(e), pytrace=False)
    with PostgresServer(bindir=bindir) as server:
        request.session.stash[_SESSION_SERVER] = server
        try:
            yield server
        finally:
            del request.session.stash[_SESSION_SERVER]


@pytest.fixture(autouse=True)
def _postgres_back_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    After each test, start the session's server again if the test stopped it,
    so that one failing stop/start test does not fail every later test.
    """
    yield
    server = request.session.stash.get(_SESSION_SERVER, None)
    if server is not None and not server.running:
        server.start()
