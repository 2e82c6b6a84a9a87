"""
The relay's fast path and its way back (pgtls.relay.fastpath), with a real
``twistd pgtls`` in front of a real PostgreSQL: when the private internals
it rests on are broken, pgtls logs one warning and serves through Twisted's
public path; when it is switched off, it says so and serves the same way.

The internals are broken the way an upgrade would break them: a
``sitecustomize`` module on the server's PYTHONPATH renames, before pgtls
starts, the Twisted attribute the fast path looks for (Twisted already
renamed it once, ``_createConnection`` to ``_creatorCallable``).
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from pgtlsproc import FAST_PATH

WARNING = "the relay's fast path failed its self-test"


def query_over_tls(port: int, ca_file: Path) -> None:
    """psycopg over TLS (verify-full): a query and a 1 MB answer come back whole."""
    with psycopg.connect(
        host="localhost",
        port=port,
        user="postgres",
        dbname="postgres",
        sslmode="verify-full",
        sslrootcert=str(ca_file),
        connect_timeout=10,
    ) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 42").fetchone() == (42,)
        row = conn.execute("select repeat('x', 1000000)").fetchone()
        assert row is not None and row[0] == "x" * 1_000_000


def test_broken_internals_warn_once_and_relay_through_the_public_path(
    pgtls, pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Twisted that renamed what the fast path uses: one warning, and sessions still work."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import pgtls._internals\npgtls._internals.CREATOR_NAMES = ('_renamedByAnUpgrade',)\n"
    )
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{path}" if path else str(site))
    monkeypatch.delenv("PGTLS_FAST_PATH", raising=False)
    server = pgtls.start()
    query_over_tls(server.port, pki.ca_file)
    log = server.log_text()
    assert log.count(WARNING) == 1, log
    (line,) = [line for line in log.splitlines() if WARNING in line]
    assert "_renamedByAnUpgrade" in line
    assert "Traceback" not in log
    # The stock reactor, not the fast path's.
    assert "reactor class: twisted.internet.epollreactor.EPollReactor" in log


def test_switched_off_in_postgresql_conf(pgtls, pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """pgtls.fast_path = off: said once at start, no self-test, sessions work."""
    monkeypatch.delenv("PGTLS_FAST_PATH", raising=False)
    server = pgtls.start(settings=["pgtls.fast_path = off"])
    query_over_tls(server.port, pki.ca_file)
    log = server.log_text()
    assert "the relay's fast path is off (pgtls.fast_path = off)" in log
    assert WARNING not in log
    assert "reactor class: twisted.internet.epollreactor.EPollReactor" in log


@pytest.mark.skipif(not FAST_PATH, reason="this run has the fast path off")
def test_on_by_default(pgtls, pki) -> None:
    """Where the internals behave, the self-test passes quietly and the fast path serves."""
    server = pgtls.start()
    query_over_tls(server.port, pki.ca_file)
    log = server.log_text()
    assert "fast path" not in log
    assert "reactor class: pgtls.relay.reactor.RelayReactor" in log
