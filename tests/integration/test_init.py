"""
``pgtls init`` and ``pgtls client-cert`` end to end (issue 3): the data
directory they write starts a real ``twistd pgtls``, and the psql lines they
print connect with sslmode=verify-full through it to a real PostgreSQL.

init's pg_hba.conf admits SSL clients with ``scram-sha-256`` lines, which
leave the password to the upstream: the test upstream trusts ``postgres``
and asks ``alice`` for her SCRAM password.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psycopg
import pytest
from pgserver import ALICE, ALICE_PASSWORD, PostgresServer
from pgtlsproc import TWISTD, PgtlsServer, free_port

PGTLS = os.path.join(os.path.dirname(sys.executable), "pgtls")
TIMEOUT = 30.0

NO_CLIENT_CERT = "FATAL:  connection requires a valid client certificate"


def pgtls_command(*args: str) -> str:
    """Run ``pgtls ARGS``; it must succeed; its standard output."""
    done = subprocess.run(
        [PGTLS, *args], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def init(directory: Path, postgres: PostgresServer, port: int, *options: str) -> str:
    """``pgtls init`` for localhost on 127.0.0.1:port in front of the test upstream."""
    return pgtls_command(
        "init",
        str(directory),
        "--hostname",
        "localhost",
        "--port",
        str(port),
        "--listen",
        "127.0.0.1",
        "--upstream",
        postgres.conninfo(),
        *options,
    )


def printed_line(output: str, after: str) -> str:
    """The line printed after the line ``after``, without its indentation."""
    lines = output.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == after)
    return lines[index + 1].strip()


def printed_psql(output: str, after: str) -> list[str]:
    """The psql command line printed after the line ``after``, as argv."""
    argv = shlex.split(printed_line(output, after))
    assert argv[0] == "psql", argv
    return argv


def run_psql(
    argv: list[str], home: Path, env: Mapping[str, str] = {}
) -> subprocess.CompletedProcess[str]:
    """Run a printed psql line (plus ``-w -Atc 'select current_user'``), PG* variables from env."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    environ.update(HOME=str(home), LC_ALL="C", PGCONNECT_TIMEOUT="10", **env)
    return subprocess.run(
        [*argv, "-w", "-Atc", "select current_user"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environ,
    )


def conninfo(argv: list[str], **changes: str | None) -> str:
    """The printed connection string with parameters changed (None: removed)."""
    params = dict(item.split("=", 1) for item in shlex.split(argv[1]))
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    return " ".join(f"{name}='{value}'" for name, value in params.items())


class PrintedStart(PgtlsServer):
    """The start command ``pgtls init`` printed, run as printed (with the venv's twistd)."""

    def __init__(self, argv: list[str], directory: Path, port: int, cwd: Path) -> None:
        super().__init__(directory, port)
        self.argv = argv
        self.cwd = cwd

    def command(self) -> list[str]:
        return [TWISTD, *self.argv[1:]]


def start(pgtls, directory: Path, port: int) -> PgtlsServer:
    """Start twistd pgtls on the directory; the pgtls fixture stops it."""
    server = PgtlsServer(directory, port)
    pgtls.servers.append(server)
    return server.start()


def test_init_start_and_connect_with_verify_full(
    pgtls, postgres: PostgresServer, tmp_path: Path
) -> None:
    """
    pgtls init, then twistd pgtls on its directory: the printed psql line
    connects with verify-full as postgres, alice connects with her password
    (checked by the upstream), and a plaintext client is refused by
    pg_hba.conf.
    """
    port = free_port()
    directory = tmp_path / "pgtls"
    output = init(directory, postgres, port)
    start_line = printed_line(output, "Start pgtls:")
    assert start_line == f"twistd --nodaemon --pidfile= pgtls -D {directory}"
    # Started as printed, in the foreground: it leaves no twistd.pid behind.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    server = PrintedStart(shlex.split(start_line), directory, port, cwd)
    pgtls.servers.append(server)
    server.start()
    argv = printed_psql(output, "Connect, checking the server's certificate:")
    assert "sslmode=verify-full" in argv[1]

    done = run_psql(argv, tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "postgres\n", ""), done

    as_alice = ["psql", conninfo(argv, user=ALICE)]
    done = run_psql(as_alice, tmp_path, {"PGPASSWORD": ALICE_PASSWORD})
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{ALICE}\n", ""), done
    done = run_psql(as_alice, tmp_path, {"PGPASSWORD": "not her password"})
    assert done.returncode == 2
    assert f'FATAL:  password authentication failed for user "{ALICE}"' in done.stderr

    plaintext = ["psql", conninfo(argv, sslmode="disable", sslrootcert=None)]
    done = run_psql(plaintext, tmp_path)
    assert done.returncode == 2
    assert (
        'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "postgres", '
        'database "postgres", no encryption'
    ) in done.stderr
    assert list(cwd.iterdir()) == []
    server.stop()
    assert list(cwd.iterdir()) == []


@pytest.fixture
def client_ca_dir(pgtls, postgres: PostgresServer, tmp_path: Path) -> tuple[Path, int, str]:
    """A running pgtls from ``pgtls init --client-ca``: (directory, port, init's output)."""
    port = free_port()
    directory = tmp_path / "pgtls"
    output = init(directory, postgres, port, "--client-ca")
    assert (directory / "root.crt").read_bytes() == (directory / "ca.crt").read_bytes()
    start(pgtls, directory, port)
    return directory, port, output


def test_client_cert_lets_alice_in(client_ca_dir, tmp_path: Path) -> None:
    """
    With --client-ca, the certificate from ``pgtls client-cert DIR alice``
    admits alice: the psql line client-cert prints connects (port from
    PGPORT: the line has none), and so does psycopg with the same files.
    """
    directory, port, _ = client_ca_dir
    output = pgtls_command("client-cert", str(directory), ALICE, "--out", str(tmp_path / ALICE))
    crt, key = tmp_path / f"{ALICE}.crt", tmp_path / f"{ALICE}.key"
    assert printed_line(output, "Add to the connection string:") == f"sslcert={crt} sslkey={key}"
    argv = printed_psql(output, "for example:")

    env = {"PGPASSWORD": ALICE_PASSWORD, "PGPORT": str(port)}
    done = run_psql(argv, tmp_path, env)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{ALICE}\n", ""), done

    with psycopg.connect(
        host="localhost",
        port=port,
        user=ALICE,
        password=ALICE_PASSWORD,
        dbname="postgres",
        sslmode="verify-full",
        sslrootcert=str(directory / "ca.crt"),
        sslcert=str(crt),
        sslkey=str(key),
        connect_timeout=10,
    ) as conn:
        assert conn.execute("select current_user").fetchone() == (ALICE,)


def test_client_ca_refuses_a_client_without_certificate(client_ca_dir, tmp_path: Path) -> None:
    """
    With --client-ca, an SSL client without a certificate is refused after
    the handshake with PostgreSQL 8.2's rule's FATAL, by psql and psycopg.
    """
    _, port, output = client_ca_dir
    argv = printed_psql(output, "Connect, checking the server's certificate:")
    done = run_psql(argv, tmp_path, {"PGPASSWORD": ALICE_PASSWORD})
    assert done.returncode == 2
    assert NO_CLIENT_CERT in done.stderr, done.stderr

    with pytest.raises(psycopg.OperationalError, match=NO_CLIENT_CERT):
        psycopg.connect(
            conninfo(argv),
            port=port,
            sslcertmode="disable",
            connect_timeout=10,
        )
