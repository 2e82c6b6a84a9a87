"""
User and database names longer than NAMEDATALEN - 1 (63) bytes, compared
with PostgreSQL 15: ProcessStartupPacket cuts both names to 63 bytes before
pg_hba.conf is read, and every message names the cut names.  pgtls cuts them
the same way, matches on them, and relays them cut, so that a long name
cannot slip past a rule written for its first 63 bytes.
"""

from __future__ import annotations

import os
import subprocess

from pgserver import PostgresServer

TIMEOUT = 10.0

U63 = "u" * 63
U100 = "u" * 100
D100 = "d" * 100


def client_env() -> dict[str, str]:
    """The environment for libpq: no PG* variables from the caller, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def psql(port: int, user: str, dbname: str) -> subprocess.CompletedProcess[str]:
    """``select current_user`` with psql 15 on 127.0.0.1:``port``, no SSL."""
    info = (
        f"host=127.0.0.1 port={port} user={user} dbname={dbname} sslmode=disable "
        f"connect_timeout={int(TIMEOUT)}"
    )
    return subprocess.run(
        ["psql", "--no-psqlrc", "--no-password", info, "-Atc", "select current_user"],
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )


def fatal_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one FATAL message psql printed."""
    assert result.returncode != 0, result.stdout
    assert result.stderr.count("FATAL:") == 1, result.stderr
    return result.stderr.split("FATAL:  ", 1)[1].rstrip("\n")


def test_refusal_names_the_cut_names_as_postgresql_15(pgtls) -> None:
    """
    A 100-byte user and database against a ``reject`` line for the 63-byte
    user: PostgreSQL 15 and pgtls both refuse with ``pg_hba.conf rejects
    connection``, naming the 63-byte user and database.
    """
    hba = [f"host all {U63} 127.0.0.1/32 reject", "host all all 127.0.0.1/32 trust"]
    with PostgresServer(tcp=True, hba=["local all all trust", *hba]) as postgres:
        expected = fatal_line(psql(postgres.port, U100, D100))
    assert expected == (
        f'pg_hba.conf rejects connection for host "127.0.0.1", user "{U63}", '
        f'database "{"d" * 63}", no encryption'
    )
    server = pgtls.start(hba_lines=hba)
    assert fatal_line(psql(server.port, U100, D100)) == expected
    log = server.log_text()
    assert f"user={U63} database={'d' * 63}" in log
    assert U100 not in log and D100 not in log


def test_long_user_cannot_bypass_a_reject_rule_for_its_prefix(pgtls, postgres) -> None:
    """
    The role of the first 63 bytes exists upstream, and a rule rejects it:
    the 100-byte name is refused as well.  Without the rule the upstream
    logs in the 63-byte role, the identity pgtls admitted.
    """
    postgres.psql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{U63}') "
        f'THEN CREATE ROLE "{U63}" LOGIN; END IF; END $$'
    )
    refusing = pgtls.start(
        "refusing",
        hba_lines=[f"host all {U63} 127.0.0.1/32 reject", "host all all 127.0.0.1/32 trust"],
    )
    assert fatal_line(psql(refusing.port, U100, "postgres")) == (
        f'pg_hba.conf rejects connection for host "127.0.0.1", user "{U63}", '
        'database "postgres", no encryption'
    )
    admitting = pgtls.start("admitting", hba_lines=[f"host all {U63} 127.0.0.1/32 trust"])
    result = psql(admitting.port, U100, "postgres")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{U63}\n"
