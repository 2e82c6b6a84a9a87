"""
A pg_hba.conf with several bad lines, compared with PostgreSQL 15 (issue 16
item 11): PostgreSQL's load_hba logs every bad line and goes on, then
refuses to start (``could not load pg_hba.conf``) or, on SIGHUP, keeps the
rules in force (``pg_hba.conf was not reloaded``).  pgtls names the same
lines with the same reasons: at start one ``pgtls: FILE:LINE: reason`` line
each, on reload one log line each and then ``pg_hba.conf was not reloaded``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from pgserver import PostgresServer
from pgtlsproc import PgtlsServer, Pki

TIMEOUT = 20.0
ROOT = os.geteuid() == 0

GOOD = ["local all all trust", "host all all 127.0.0.1/32 trust"]
BAD = [
    "local all all trust",
    "host all all 1.2.3.4/99 trust",
    "host all all 127.0.0.1/32 trust",
    "host all all 127.0.0.1/32 bogus",
    "hostx all all all trust",
    "host all all 127.0.0.1/32 md5 clientcert=maybe",
]

# PostgreSQL's log: the error, then the line it is about.
PG_ERROR = re.compile(
    r'LOG:  (?P<reason>.*)\n.*CONTEXT:  line (?P<line>\d+) of configuration file "(?P<path>[^"]*)"'
)


def postgres_errors(log: str, hba_file: Path) -> list[tuple[int, str]]:
    """(line, reason) of each pg_hba.conf error in a PostgreSQL log."""
    found = []
    for match in PG_ERROR.finditer(log):
        assert match["path"] == str(hba_file), match[0]
        found.append((int(match["line"]), match["reason"]))
    return found


def pgtls_errors(text: str, hba_file: Path) -> list[tuple[int, str]]:
    """(line, reason) of each ``FILE:LINE: reason`` about pg_hba.conf in pgtls's output."""
    pattern = re.compile(rf"{re.escape(str(hba_file))}:(\d+): (.*)$", re.MULTILINE)
    return [(int(line), reason) for line, reason in pattern.findall(text)]


def postgres_start_errors(tmp_path: Path) -> list[tuple[int, str]]:
    """Start PostgreSQL 15 on BAD: it exits; the errors it logged first."""
    with PostgresServer() as postgres:
        postgres.stop()
        hba_file = postgres.data_dir / "pg_hba.conf"
        hba_file.write_text("\n".join(BAD) + "\n")
        argv = [str(postgres.bindir / "postgres"), "-D", str(postgres.data_dir)]
        if ROOT:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(
            argv,
            cwd=postgres.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=TIMEOUT * 3,
            check=False,
        )
    assert done.returncode != 0
    assert "FATAL:  could not load pg_hba.conf" in done.stderr, done.stderr
    return postgres_errors(done.stderr, hba_file)


def test_start_names_every_bad_line_as_postgresql_15(pgtls, tmp_path: Path) -> None:
    """pgtls refuses to start with one line per bad pg_hba.conf line, PostgreSQL's lines."""
    expected = postgres_start_errors(tmp_path)
    assert [line for line, _reason in expected] == [2, 4, 5, 6]

    datadir = pgtls.datadir(hba_lines=BAD)
    done = subprocess.run(
        PgtlsServer(datadir, 0).command(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert all(line.startswith(f"pgtls: {datadir / 'pg_hba.conf'}:") for line in lines), lines
    assert pgtls_errors(done.stderr, datadir / "pg_hba.conf") == expected


def test_reload_names_every_bad_line_as_postgresql_15(pgtls, pki: Pki) -> None:
    """
    On SIGHUP both log every bad line and ``pg_hba.conf was not reloaded``,
    and keep the rules in force.
    """
    with PostgresServer(hba=GOOD, settings={"log_connections": "on"}) as postgres:
        hba_file = postgres.data_dir / "pg_hba.conf"
        hba_file.write_text("\n".join(BAD) + "\n")
        postgres.settled_log()  # every earlier line is in the log
        before = len(postgres.log_text())
        postgres.psql("select pg_reload_conf()")
        deadline = time.monotonic() + TIMEOUT
        while "pg_hba.conf was not reloaded" not in postgres.log_text()[before:]:
            assert time.monotonic() < deadline, postgres.log_text()[before:]
            time.sleep(0.05)
        expected = postgres_errors(postgres.log_text()[before:], hba_file)
    assert [line for line, _reason in expected] == [2, 4, 5, 6]

    server = pgtls.start(hba_lines=GOOD)
    pgtls_hba = server.datadir / "pg_hba.conf"
    pgtls_hba.write_text("\n".join(BAD) + "\n")
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    log = server.wait_for_log("pg_hba.conf was not reloaded", TIMEOUT)
    assert pgtls_errors(log, pgtls_hba) == expected
    assert log.count("pg_hba.conf was not reloaded") == 1
    # The rules in force still admit.
    done = subprocess.run(
        [
            "psql",
            f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres sslmode=disable",
            "-Atc",
            "select 1",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
