"""
Bulk traffic through a real ``twistd pgtls`` over SSL: a 200 MB COPY out and
a 50 MB COPY in arrive intact, and 200 SSL sessions run at once.

Each test prints how long its transfer took (``pytest -s`` shows it);
durations are reported, never asserted.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgserver import PostgresServer
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir

CONNECT_TIMEOUT = 10
TRANSFER_TIMEOUT = 120

# 200,000 rows of 1000 x's and the row number: 201,288,895 bytes.
COPY_OUT_ROWS = 200_000
COPY_OUT_SQL = (
    f"COPY (SELECT repeat('x', 1000) || i FROM generate_series(1, {COPY_OUT_ROWS}) i) TO STDOUT"
)
COPY_IN_BYTES = 50 * 1024 * 1024
COPY_IN_CHUNK = 256 * 1024
SESSIONS = 200
# The client pauses this long after the first block of the COPY out; the
# upstream produces the whole 200 MB in about a second.
SLOW_READER_PAUSE = 3.0
# Socket buffers and Twisted's write buffer: a few MB; the data is 200 MB.
RSS_GROWTH_LIMIT = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, postgres: PostgresServer
) -> Iterator[PgtlsServer]:
    """pgtls with ssl = on, room for the concurrent sessions below."""
    port = free_port()
    datadir = make_datadir(
        tmp_path_factory.mktemp("bulk"),
        pki,
        postgres.conninfo(),
        port=port,
        settings=[f"max_connections = {SESSIONS + 20}"],
    )
    with PgtlsServer(datadir, port) as started:
        yield started


def conninfo(server: PgtlsServer, pki: Pki, **extra: str) -> str:
    """verify-full to pgtls as postgres/postgres."""
    params = {
        "host": "localhost",
        "port": str(server.port),
        "user": "postgres",
        "dbname": "postgres",
        "sslmode": "verify-full",
        "sslrootcert": str(pki.ca_file),
        "connect_timeout": str(CONNECT_TIMEOUT),
        **extra,
    }
    return " ".join(f"{key}={value}" for key, value in params.items())


def report(name: str, value: float, unit: str = "s") -> None:
    """Print a measurement for the test report (``pytest -s`` shows it)."""
    print(f"{name}: {value:.2f} {unit}")


# -- COPY out --------------------------------------------------------------


def expected_copy_out() -> tuple[int, str]:
    """Byte count and sha256 of COPY_OUT_SQL's output, computed without the server."""
    digest = hashlib.sha256()
    size = 0
    xs = b"x" * 1000
    for i in range(1, COPY_OUT_ROWS + 1):
        line = xs + b"%d\n" % i
        digest.update(line)
        size += len(line)
    return size, digest.hexdigest()


def test_copy_out_200mb(server: PgtlsServer, pki: Pki) -> None:
    """About 200 MB of COPY TO STDOUT through pgtls over SSL arrive byte for byte."""
    digest = hashlib.sha256()
    size = 0
    started = time.monotonic()
    with (
        psycopg.connect(conninfo(server, pki)) as conn,
        conn.cursor() as cursor,
        cursor.copy(COPY_OUT_SQL) as copy,
    ):
        assert conn.pgconn.ssl_in_use
        for block in copy:
            digest.update(block)
            size += len(block)
    report("copy_out_seconds", time.monotonic() - started)
    assert (size, digest.hexdigest()) == expected_copy_out()


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def upstream_wait_event(postgres: PostgresServer, app: str) -> str | None:
    """What the upstream backend of the session named ``app`` waits for."""
    with psycopg.connect(postgres.conninfo(), user="postgres", dbname="postgres") as conn:
        row = conn.execute(
            "select wait_event from pg_stat_activity where application_name = %s", (app,)
        ).fetchone()
    return None if row is None else row[0]


def test_copy_out_slow_reader(server: PgtlsServer, pki: Pki, postgres: PostgresServer) -> None:
    """
    A client that stops reading in the middle of a 200 MB COPY out makes
    pgtls stop reading the upstream (flow control): the upstream backend
    waits to write (ClientWrite), pgtls's memory grows by far less than the
    data, and the data still arrives intact.
    """
    assert server.process is not None
    pid = server.process.pid
    app = f"slow-{uuid.uuid4().hex[:12]}"
    digest = hashlib.sha256()
    size = 0
    waits: list[str | None] = []
    with (
        psycopg.connect(conninfo(server, pki, application_name=app)) as conn,
        conn.cursor() as cursor,
    ):
        before = rss_bytes(pid)
        started = time.monotonic()
        with cursor.copy(COPY_OUT_SQL) as copy:
            for block in copy:
                if size == 0:
                    time.sleep(SLOW_READER_PAUSE)
                    during = rss_bytes(pid)
                    waits.append(upstream_wait_event(postgres, app))
                digest.update(block)
                size += len(block)
        report("copy_out_slow_reader_seconds", time.monotonic() - started)
    grown = during - before
    report("pgtls_rss_growth", grown / 2**20, "MiB")
    assert waits == ["ClientWrite"]
    assert grown < RSS_GROWTH_LIMIT, f"pgtls grew by {grown} bytes while the client paused"
    assert (size, digest.hexdigest()) == expected_copy_out()


# -- COPY in ---------------------------------------------------------------


def copy_in_data() -> tuple[bytes, int]:
    """About 50 MB of ``n<TAB>payload`` lines, payloads all different; and the row count."""
    lines = []
    size = 0
    n = 0
    while size < COPY_IN_BYTES:
        n += 1
        payload = hashlib.sha256(b"%d" % n).hexdigest() * 15
        line = f"{n}\t{payload}\n".encode()
        lines.append(line)
        size += len(line)
    return b"".join(lines), n


CREATE_TABLE = "create temp table copied (n int primary key, payload text not null)"
CHECK_TABLE = (
    "select count(*), md5(string_agg(n || E'\\t' || payload, E'\\n' order by n) || E'\\n') "
    "from copied"
)


@pytest.fixture(scope="module")
def copy_in() -> tuple[bytes, int, str]:
    """The COPY in data, its row count and its md5."""
    data, rows = copy_in_data()
    return data, rows, hashlib.md5(data).hexdigest()


def test_copy_in_50mb_psycopg(
    server: PgtlsServer, pki: Pki, copy_in: tuple[bytes, int, str]
) -> None:
    """50 MB of COPY FROM STDIN from psycopg over SSL reach the upstream intact."""
    data, rows, md5 = copy_in
    with psycopg.connect(conninfo(server, pki)) as conn:
        assert conn.pgconn.ssl_in_use
        conn.execute(CREATE_TABLE)
        started = time.monotonic()
        with conn.cursor() as cursor, cursor.copy("copy copied from stdin") as copy:
            view = memoryview(data)
            for offset in range(0, len(data), COPY_IN_CHUNK):
                copy.write(view[offset : offset + COPY_IN_CHUNK])
        report("copy_in_psycopg_seconds", time.monotonic() - started)
        assert conn.execute(CHECK_TABLE).fetchone() == (rows, md5)


def test_copy_in_50mb_psql(server: PgtlsServer, pki: Pki, copy_in: tuple[bytes, int, str]) -> None:
    """50 MB of COPY FROM STDIN fed to psql 15 over SSL reach the upstream intact."""
    data, rows, md5 = copy_in
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT))
    argv = ["psql", "--no-psqlrc", "--no-password", "-At", "-v", "ON_ERROR_STOP=1"]
    for command in (r"\conninfo", CREATE_TABLE, "copy copied from stdin", CHECK_TABLE):
        argv += ["-c", command]
    started = time.monotonic()
    done = subprocess.run(
        [*argv, "-d", conninfo(server, pki)],
        env=env,
        input=data,
        capture_output=True,
        timeout=TRANSFER_TIMEOUT,
        check=False,
    )
    report("copy_in_psql_seconds", time.monotonic() - started)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    lines = done.stdout.decode().splitlines()
    assert any(line.startswith("SSL connection (protocol: ") for line in lines)
    assert lines[-1] == f"{rows}|{md5}"


# -- many sessions at once --------------------------------------------------


async def _open_sessions(dsn: str, count: int) -> list[psycopg.AsyncConnection[Any]]:
    """Open ``count`` sessions concurrently; on any failure close those that opened."""
    results = await asyncio.gather(
        *(psycopg.AsyncConnection.connect(dsn) for _ in range(count)), return_exceptions=True
    )
    conns = [r for r in results if isinstance(r, psycopg.AsyncConnection)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(conn.close() for conn in conns))
        raise failures[0]
    return conns


async def _backend_pid(conn: psycopg.AsyncConnection[Any]) -> int:
    cursor = await conn.execute("select pg_backend_pid()")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _run_sessions(dsn: str, postgres: PostgresServer, app: str) -> tuple[list[int], int]:
    """Open SESSIONS sessions, ask each its backend pid, count them upstream, close."""
    conns = await _open_sessions(dsn, SESSIONS)
    try:
        assert all(conn.pgconn.ssl_in_use for conn in conns)
        pids = await asyncio.gather(*(_backend_pid(conn) for conn in conns))
        async with await psycopg.AsyncConnection.connect(
            postgres.conninfo(), user="postgres", dbname="postgres"
        ) as direct:
            cursor = await direct.execute(
                "select count(*) from pg_stat_activity where application_name = %s", (app,)
            )
            row = await cursor.fetchone()
        assert row is not None
        return list(pids), int(row[0])
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))


def test_200_concurrent_ssl_sessions(
    server: PgtlsServer, pki: Pki, postgres: PostgresServer
) -> None:
    """
    200 SSL sessions open at the same time through one pgtls: each has a
    backend of its own, and the upstream sees all 200 at once.
    """
    app = f"bulk-{uuid.uuid4().hex[:12]}"
    dsn = conninfo(server, pki, application_name=app)
    started = time.monotonic()
    pids, upstream_count = asyncio.run(
        asyncio.wait_for(_run_sessions(dsn, postgres, app), TRANSFER_TIMEOUT)
    )
    report("sessions_seconds", time.monotonic() - started)
    assert len(pids) == SESSIONS
    assert len(set(pids)) == SESSIONS
    assert upstream_count == SESSIONS
