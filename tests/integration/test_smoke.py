"""A first end-to-end look: psql through pgtls, SSL on and off."""

from __future__ import annotations

import subprocess

import psycopg
from pgtlsproc import FAST_PATH


def test_psql_verify_full(pgtls, pki) -> None:
    """psql 15 connects through pgtls with sslmode=verify-full and sees TLS."""
    server = pgtls.start()
    out = subprocess.run(
        [
            "psql",
            f"host=localhost port={server.port} user=postgres dbname=postgres "
            f"sslmode=verify-full sslrootcert={pki.ca_file}",
            "-Atc",
            "select 42",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr + server.log_text()
    assert out.stdout.strip() == "42"
    # Relayed sessions are dispatched by pgtls's own reactor (pgtls.relay.reactor),
    # or by Twisted's when the fast path is off.
    reactor = (
        "pgtls.relay.reactor.RelayReactor"
        if FAST_PATH
        else "twisted.internet.epollreactor.EPollReactor"
    )
    assert f"reactor class: {reactor}" in server.log_text()


def test_psycopg_direct(pgtls, pki) -> None:
    """libpq 17+ direct SSL (sslnegotiation=direct) works through pgtls."""
    server = pgtls.start()
    with psycopg.connect(
        host="localhost",
        port=server.port,
        user="postgres",
        dbname="postgres",
        sslmode="verify-full",
        sslrootcert=str(pki.ca_file),
        sslnegotiation="direct",
        connect_timeout=10,
    ) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use
