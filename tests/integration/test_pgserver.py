"""The throwaway PostgreSQL upstream used by the integration tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest
from pgserver import (
    ALICE,
    ALICE_PASSWORD,
    TEST_DB,
    PostgresError,
    PostgresNotInstalled,
    PostgresServer,
    find_bindir,
)

from pgtls.tls.certs import issue_server_cert, make_ca, write_key, write_pem


def test_marked_integration(request: pytest.FixtureRequest) -> None:
    """Tests under tests/integration get the ``integration`` marker."""
    assert request.node.get_closest_marker("integration") is not None


def test_psql_select_one(postgres: PostgresServer) -> None:
    """psql over the Unix socket reaches the server and returns bare rows."""
    assert postgres.psql("select 1") == "1"
    assert postgres.psql("select 1, 'a' union all select 2, 'b'") == "1|a\n2|b"


def test_psql_error_raises(postgres: PostgresServer) -> None:
    """An SQL error in psql() raises PostgresError carrying psql's message."""
    with pytest.raises(PostgresError, match="no_such_table"):
        postgres.psql("select * from no_such_table")


def test_psycopg_over_unix_socket(postgres: PostgresServer) -> None:
    """psycopg connects through the socket directory; the session is not TCP."""
    with psycopg.connect(
        host=postgres.socket_dir, port=postgres.port, user="postgres", dbname="postgres"
    ) as conn:
        row = conn.execute("select 1, inet_server_addr()").fetchone()
    assert row == (1, None)
    assert os.path.exists(postgres.socket_path)


def test_conninfo_names_socket(postgres: PostgresServer) -> None:
    """conninfo() is the libpq string for pgtls.upstream, and libpq accepts it."""
    assert postgres.conninfo() == f"host={postgres.socket_dir} port={postgres.port}"
    with psycopg.connect(postgres.conninfo(), user="postgres") as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_settings(postgres: PostgresServer) -> None:
    """The server is socket-only, unsynced and allows 300 connections."""
    assert postgres.psql("show listen_addresses") == ""
    assert postgres.psql("show fsync") == "off"
    assert postgres.psql("show max_connections") == "300"
    assert postgres.tcp_host is None
    with (
        socket.socket() as sock,
        pytest.raises(ConnectionRefusedError),
    ):
        sock.connect(("127.0.0.1", postgres.port))


def test_alice_scram_password(postgres: PostgresServer) -> None:
    """alice logs in to pgtls_test with her password, stored as SCRAM."""
    stored = postgres.psql(f"select rolpassword from pg_authid where rolname = '{ALICE}'")
    assert stored.startswith("SCRAM-SHA-256$")
    with psycopg.connect(
        host=postgres.socket_dir,
        port=postgres.port,
        user=ALICE,
        password=ALICE_PASSWORD,
        dbname=TEST_DB,
    ) as conn:
        row = conn.execute("select current_user, current_database()").fetchone()
    assert row == (ALICE, TEST_DB)


def test_alice_wrong_password_refused(postgres: PostgresServer) -> None:
    """The socket is not trusted for alice: a wrong password is refused."""
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=postgres.socket_dir,
            port=postgres.port,
            user=ALICE,
            password="wrong",
            dbname=TEST_DB,
        )
    with pytest.raises(PostgresError, match="password"):
        postgres.psql("select 1", user=ALICE, db=TEST_DB)
    assert postgres.psql("select 1", user=ALICE, db=TEST_DB, password=ALICE_PASSWORD) == "1"


def test_stop_start_keeps_data(postgres: PostgresServer) -> None:
    """stop() takes the upstream down (socket gone) and start() brings it back
    with its data, on the same socket."""
    postgres.psql("create table kept (x int); insert into kept values (42)", db=TEST_DB)
    try:
        postgres.stop()
        assert not postgres.running
        assert not os.path.exists(postgres.socket_path)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres.conninfo(), user="postgres", dbname="postgres")
        postgres.start()
        assert postgres.running
        assert postgres.psql("select x from kept", db=TEST_DB) == "42"
    finally:
        postgres.psql("drop table if exists kept", db=TEST_DB)
    assert "database system is shut down" in postgres.log_text()


def test_find_bindir_picks_newest(tmp_path: Path) -> None:
    """The newest major version with all the tools wins, numerically."""
    for version, complete in [("9.6", True), ("13", True), ("16", False), ("x", True)]:
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        tools = ["initdb", "pg_ctl", "pg_isready", "psql"] if complete else ["psql"]
        for tool in tools:
            (bindir / tool).touch(mode=0o755)
    assert find_bindir(root=tmp_path, environ={}) == tmp_path / "13" / "bin"


def test_find_bindir_missing_says_what_to_install(tmp_path: Path) -> None:
    """Without binaries the error names Debian's postgresql package."""
    with pytest.raises(PostgresNotInstalled, match="apt-get install postgresql"):
        find_bindir(root=tmp_path / "nothing", environ={})


def test_tcp_with_ssl(tmp_path: Path) -> None:
    """With tcp and certificate files the server speaks SSL on 127.0.0.1,
    verifiable against the CA; close() removes its directory."""
    ca = make_ca()
    server_cert = issue_server_cert(ca, ["localhost", "127.0.0.1"])
    write_pem(str(tmp_path / "root.crt"), ca.cert)
    write_pem(str(tmp_path / "server.crt"), server_cert.cert)
    write_key(str(tmp_path / "server.key"), server_cert.key)
    server = PostgresServer(
        bindir=find_bindir(),
        tcp=True,
        ssl_cert_file=tmp_path / "server.crt",
        ssl_key_file=tmp_path / "server.key",
        ssl_ca_file=tmp_path / "root.crt",
    )
    with server:
        assert server.tcp_host == "127.0.0.1"
        with psycopg.connect(
            host="127.0.0.1",
            port=server.port,
            user="postgres",
            dbname="postgres",
            sslmode="verify-full",
            sslrootcert=str(tmp_path / "root.crt"),
        ) as conn:
            row = conn.execute(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
            ).fetchone()
        assert row == (True,)
    assert not server.base_dir.exists()


def test_ssl_needs_tcp(tmp_path: Path) -> None:
    """SSL files without tcp=True are refused before anything is created."""
    with pytest.raises(ValueError, match="tcp=True"):
        PostgresServer(
            bindir=tmp_path,
            ssl_cert_file=tmp_path / "server.crt",
            ssl_key_file=tmp_path / "server.key",
        )
