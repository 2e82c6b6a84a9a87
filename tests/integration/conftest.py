"""
Integration-test fixtures: a real PostgreSQL server as pgtls's upstream.

Every test in this directory is marked ``integration``.  Missing PostgreSQL
binaries fail the tests that need them (CI must install PostgreSQL), rather
than skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from libpqclients import RUNNERS, Runner
from pgserver import PostgresNotInstalled, PostgresServer, find_bindir
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir

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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate for localhost, 127.0.0.1 and ::1."""
    return Pki(tmp_path_factory.mktemp("pki"))


class PgtlsLauncher:
    """Makes data directories and starts ``twistd pgtls`` on them; stops them all."""

    def __init__(self, tmp_path: Path, pki: Pki, postgres: PostgresServer) -> None:
        self.tmp_path = tmp_path
        self.pki = pki
        self.postgres = postgres
        self.servers: list[PgtlsServer] = []

    def datadir(self, name: str = "pgtls", **options: Any) -> Path:
        options.setdefault("port", free_port())
        options.setdefault("upstream", self.postgres.conninfo())
        return make_datadir(self.tmp_path / name, self.pki, **options)

    def start(
        self, name: str = "pgtls", *, extra_args: Sequence[str] = (), **options: Any
    ) -> PgtlsServer:
        port = options.setdefault("port", free_port())
        server = PgtlsServer(self.datadir(name, **options), port, extra_args=extra_args)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def pgtls(tmp_path: Path, pki: Pki, postgres: PostgresServer) -> Iterator[PgtlsLauncher]:
    """Start pgtls servers in front of the session's PostgreSQL; stopped after the test."""
    launcher = PgtlsLauncher(tmp_path, pki, postgres)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(params=sorted(RUNNERS))
def client(request: pytest.FixtureRequest) -> Runner:
    """Each test using this runs once with psql 15 and once with psycopg."""
    return RUNNERS[request.param]


@pytest.fixture(scope="module")
def no_root_cert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A root certificate file that does not exist: sslmode=require verifies nothing."""
    return str(tmp_path_factory.mktemp("client") / "absent-root.crt")
