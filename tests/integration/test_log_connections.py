"""
log_connections compared with PostgreSQL 15 (issue 16 item 7): the same
psql clients, with the same client certificates and the same pg_hba.conf,
against a PostgreSQL 15 with SSL and against pgtls, must give the same
``connection authenticated: identity="…" method=cert (FILE:LINE)`` lines,
in PostgreSQL's order: received, authenticated, then authorized or the
refusal.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import ALICE_PASSWORD, PostgresServer
from pgtlsproc import PgtlsServer, Pki

from pgtls.tls import certs

TIMEOUT = 10.0

# The same lines in both: pgtls loads the local line and never matches it;
# PostgreSQL's test harness needs it.
HBA = [
    "hostssl all postgres 127.0.0.1/32 trust clientcert=verify-full",
    "hostssl all all 127.0.0.1/32 cert",
    "local all all trust",
]

# (user, the certificate's CN): verify-full with trust authenticates no
# one; cert authenticates the DN, also when the CN then fails to map; the
# DN is OpenSSL's RFC 2253 text, escapes included.
CLIENTS = [
    ("postgres", "postgres"),
    ("alice", "alice"),
    ("bob", "alice"),
    ("carol", 'a,b+c=Zürich;<"x">'),
    ("carol", " lead#"),
]

AUTHENTICATED = re.compile(
    r'connection authenticated: identity="(.*)" method=(\S+) \((.*):(\d+)\)$'
)


def psql(port: int, pki: Pki, user: str, cert: tuple[str, str]) -> None:
    """One psql session attempt; its outcome is in the servers' logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env |= {"LC_ALL": "C", "PGPASSWORD": ALICE_PASSWORD}
    info = (
        f"host=localhost hostaddr=127.0.0.1 port={port} user={user} dbname=postgres "
        f"sslmode=verify-full sslrootcert={pki.ca_file} sslcert={cert[0]} sslkey={cert[1]} "
        f"connect_timeout={int(TIMEOUT)}"
    )
    subprocess.run(
        ["psql", "--no-psqlrc", "--no-password", info, "-Atc", "select 1"],
        env=env,
        capture_output=True,
        timeout=TIMEOUT * 3,
        check=False,
    )


def authenticated(log: str, hba_file: str) -> list[tuple[str, str, int]]:
    """(identity, method, line) of each ``connection authenticated`` line, in order."""
    found = []
    for line in log.splitlines():
        match = AUTHENTICATED.search(line)
        if match:
            identity, method, path, number = match.groups()
            assert path == hba_file, line
            found.append((identity, method, int(number)))
    return found


def connection_lines(log: str) -> list[str]:
    """The words after the prefix of every ``connection …`` line."""
    return [
        line[line.index("connection ") :]
        for line in log.splitlines()
        if re.search(r"\] (LOG: {2})?connection (received|authenticated|authorized)", line)
    ]


def settled(server: PgtlsServer, sessions: int) -> str:
    """pgtls's log once ``sessions`` client sessions (not the start-up probe) have ended."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        log = server.log_text()
        if len(re.findall(r" session host=\S+ port=\d+ user=(?!None)", log)) >= sessions:
            return log
        assert time.monotonic() < deadline, log
        time.sleep(0.05)


@pytest.fixture(scope="module")
def certificates(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """A client certificate (O=Test) per CLIENTS entry."""
    directory = tmp_path_factory.mktemp("log-connections-certs")
    paths = []
    for index, (_user, name) in enumerate(CLIENTS):
        issued = certs.issue_client_cert(pki.ca, name, organization="Test")
        base = directory / f"client{index}"
        certs.write_pem(f"{base}.crt", issued.cert)
        certs.write_key(f"{base}.key", issued.key)
        paths.append((f"{base}.crt", f"{base}.key"))
    return paths


@pytest.fixture(scope="module")
def postgres_ssl(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """PostgreSQL 15 with SSL, the test CA for client certificates, HBA, log_connections."""
    directory = tmp_path_factory.mktemp("pg-ssl")
    cert, key = directory / "server.crt", directory / "server.key"
    certs.write_pem(str(cert), pki.server.cert)
    certs.write_key(str(key), pki.server.key)
    with PostgresServer(
        tcp=True,
        ssl_cert_file=cert,
        ssl_key_file=key,
        ssl_ca_file=pki.ca_file,
        hba=HBA,
        settings={"log_connections": "on"},
    ) as server:
        yield server


def assert_alice_in_order(lines: list[str], hba_file: Path) -> None:
    """Alice's cert session logged received, authenticated (line 2), authorized, in order."""
    alice = lines.index(
        f'connection authenticated: identity="CN=alice,O=Test" method=cert ({hba_file}:2)'
    )
    assert lines[alice - 1].startswith("connection received: host=127.0.0.1 port=")
    assert lines[alice + 1].startswith("connection authorized: user=alice database=postgres")


def test_connection_authenticated_as_postgresql_logs_it(
    pgtls, pki: Pki, postgres_ssl: PostgresServer, certificates: list[tuple[str, str]]
) -> None:
    """Same clients, same pg_hba.conf: the same authenticated identities, methods and lines."""
    server = pgtls.start(client_ca=True, hba_lines=HBA, settings=["log_connections = on"])
    for (user, _name), cert in zip(CLIENTS, certificates, strict=True):
        psql(postgres_ssl.port, pki, user, cert)
        psql(server.port, pki, user, cert)
    pg_log = postgres_ssl.settled_log(TIMEOUT)
    expected = authenticated(pg_log, str(postgres_ssl.data_dir / "pg_hba.conf"))
    # PostgreSQL 15 logs cert's DN, whether or not the CN then maps, and
    # nothing for verify-full with trust.
    assert [(method, line) for _identity, method, line in expected] == [("cert", 2)] * 4
    assert expected[0][0] == "CN=alice,O=Test"
    log = settled(server, len(CLIENTS))
    assert authenticated(log, str(server.datadir / "pg_hba.conf")) == expected

    # Order per connection: received, authenticated, authorized (pgtls's
    # start-up probe and PostgreSQL's own control sessions aside).
    assert_alice_in_order(connection_lines(log), server.datadir / "pg_hba.conf")
    assert_alice_in_order(connection_lines(pg_log), postgres_ssl.data_dir / "pg_hba.conf")
