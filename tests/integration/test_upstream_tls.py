"""
The upstream leg over TLS, against a real PostgreSQL 15 with ``ssl = on``
and a hostssl-only pg_hba.conf (tlsupstream.py), a plaintext-only cluster,
and a second pgtls standing in for a PostgreSQL 17 upstream (direct SSL,
an expired certificate).  Clients are psycopg (libpq) and psql.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgtlsLauncher
from pgserver import PostgresServer
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir
from tlsupstream import CERT_USER, UpstreamPki, tls_only_server

PGTLS = os.path.join(os.path.dirname(sys.executable), "pgtls")


@pytest.fixture(scope="module")
def upstream_pki(tmp_path_factory: pytest.TempPathFactory) -> UpstreamPki:
    return UpstreamPki(tmp_path_factory.mktemp("upstream-pki"))


@pytest.fixture(scope="module")
def tls_pg(upstream_pki: UpstreamPki) -> Iterator[PostgresServer]:
    """PostgreSQL 15, ssl = on, TCP rules hostssl only, certuser by certificate."""
    server = tls_only_server(upstream_pki)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def plain_pg() -> Iterator[PostgresServer]:
    """PostgreSQL 15 on 127.0.0.1 without SSL: it answers SSLRequest with N."""
    with PostgresServer(tcp=True) as server:
        yield server


@pytest.fixture(scope="module")
def nossl_pg(upstream_pki: UpstreamPki) -> Iterator[PostgresServer]:
    """PostgreSQL 15 with ssl = on whose TCP rule is hostnossl: it refuses sessions over SSL."""
    with PostgresServer(
        tcp=True,
        ssl_cert_file=upstream_pki.server_cert,
        ssl_key_file=upstream_pki.server_key,
        hba=("local all all trust", "hostnossl all all 127.0.0.1/32 trust"),
    ) as server:
        yield server


def tcp_upstream(server: PostgresServer, **keywords: object) -> str:
    """A pgtls.upstream conninfo for the server's TCP port, with TLS keywords."""
    words = {"host": "127.0.0.1", "port": server.port, **keywords}
    return " ".join(f"{key}={value}" for key, value in words.items())


def front(
    pgtls: PgtlsLauncher, upstream: str, name: str = "front", *, ssl: bool = False
) -> PgtlsServer:
    return pgtls.start(name, upstream=upstream, ssl=ssl)


def connect(server: PgtlsServer, user: str = "postgres", **params: str) -> psycopg.Connection:
    params.setdefault("sslmode", "disable")
    return psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user=user,
        dbname="postgres",
        connect_timeout=20,
        **params,
    )


def upstream_ssl(conn: psycopg.Connection) -> bool:
    """Whether the upstream sees this session's connection (pgtls's leg) as SSL."""
    row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0])


def refused_57p03(server: PgtlsServer) -> str:
    """Connect, expect FATAL 57P03 without upstream details; return the message."""
    with pytest.raises(psycopg.OperationalError) as caught:
        connect(server).close()
    message = str(caught.value)
    assert "the database system is not accepting connections" in message
    return message


def failure_line(server: PgtlsServer, text: str) -> str:
    """The one log line saying why the upstream leg failed; it holds ``text``."""
    log = server.wait_for_log(text)
    lines = [line for line in log.splitlines() if "could not connect to the upstream" in line]
    assert len(lines) == 1, lines
    return lines[0]


# -- every sslmode against a TLS-only upstream ------------------------------


@pytest.mark.parametrize("sslmode", ["prefer", "require", "verify-ca", "verify-full"])
def test_sslmodes_that_reach_a_tls_only_upstream(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki, sslmode: str
) -> None:
    """prefer, require, verify-ca, verify-full: the session runs, over TLS on the upstream leg."""
    keywords: dict[str, object] = {"sslmode": sslmode}
    if sslmode.startswith("verify"):
        keywords["sslrootcert"] = upstream_pki.ca_file
    server = front(pgtls, tcp_upstream(tls_pg, **keywords))
    with connect(server) as conn:
        assert upstream_ssl(conn)
        assert conn.execute("SELECT 6 * 7").fetchone() == (42,)


def test_sslmode_allow_retries_with_tls(pgtls: PgtlsLauncher, tls_pg: PostgresServer) -> None:
    """allow: plaintext first; the upstream refuses it (hostssl only), so TLS, as libpq does."""
    server = front(pgtls, tcp_upstream(tls_pg, sslmode="allow"))
    with connect(server) as conn:
        assert upstream_ssl(conn)


def test_sslmode_prefer_retries_without_tls(pgtls: PgtlsLauncher, nossl_pg: PostgresServer) -> None:
    """prefer: refused over TLS (hostnossl), so plaintext on a new connection, as libpq does."""
    server = front(pgtls, tcp_upstream(nossl_pg))
    with connect(server) as conn:
        assert not upstream_ssl(conn)
    server.wait_for_log("trying again without SSL (sslmode=prefer)")


def test_sslmode_disable_reaches_the_upstream_in_plaintext(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer
) -> None:
    """disable: no SSLRequest; the TLS-only upstream refuses, and its FATAL reaches the client."""
    server = front(pgtls, tcp_upstream(tls_pg, sslmode="disable"))
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        connect(server).close()


# -- verification failures ----------------------------------------------------


def test_verify_full_by_host_name(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """verify-full checks the host keyword (a SAN dNSName) while connecting to hostaddr."""
    upstream = (
        f"host=db.test hostaddr=127.0.0.1 port={tls_pg.port} sslmode=verify-full "
        f"sslrootcert={upstream_pki.ca_file}"
    )
    with connect(front(pgtls, upstream)) as conn:
        assert upstream_ssl(conn)


def test_verify_full_wrong_name(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """A name the certificate does not carry: 57P03 to the client, libpq's words in the log."""
    upstream = (
        f"host=db.internal hostaddr=127.0.0.1 port={tls_pg.port} sslmode=verify-full "
        f"sslrootcert={upstream_pki.ca_file}"
    )
    server = front(pgtls, upstream)
    message = refused_57p03(server)
    assert "db.internal" not in message and str(tls_pg.port) not in message
    line = failure_line(server, "does not match host name")
    assert (
        f"could not connect to the upstream server at 127.0.0.1:{tls_pg.port}: "
        'server certificate for "db.test" (and 2 other names) does not match host name '
        '"db.internal"'
    ) in line


def test_verify_ca_wrong_ca(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """A root file that did not sign the upstream's certificate: verify failed, logged."""
    server = front(
        pgtls,
        tcp_upstream(tls_pg, sslmode="verify-ca", sslrootcert=upstream_pki.other_ca_file),
    )
    refused_57p03(server)
    line = failure_line(server, "certificate verify failed")
    assert f"127.0.0.1:{tls_pg.port}: SSL error: certificate verify failed" in line
    # PostgreSQL sends its CA after the certificate: OpenSSL meets a
    # self-signed certificate it does not trust.
    assert "(self-signed certificate in certificate chain)" in line


def test_revoked_upstream_certificate(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """sslcrl revoking the upstream's certificate fails the leg; a CRL without it does not."""
    good = front(
        pgtls,
        tcp_upstream(
            tls_pg,
            sslmode="verify-full",
            sslrootcert=upstream_pki.ca_file,
            sslcrl=upstream_pki.crl_empty,
        ),
        name="crl-empty",
    )
    with connect(good) as conn:
        assert upstream_ssl(conn)
    revoked = front(
        pgtls,
        tcp_upstream(
            tls_pg,
            sslmode="verify-full",
            sslrootcert=upstream_pki.ca_file,
            sslcrl=upstream_pki.crl_revoking_server,
        ),
        name="crl-revoked",
    )
    refused_57p03(revoked)
    line = failure_line(revoked, "certificate revoked")
    assert "SSL error: certificate verify failed (certificate revoked)" in line


# -- an upstream without SSL --------------------------------------------------


def test_upstream_answering_n(pgtls: PgtlsLauncher, plain_pg: PostgresServer) -> None:
    """N: require fails with libpq's words; prefer goes on in plaintext on the same connection."""
    required = front(pgtls, tcp_upstream(plain_pg, sslmode="require"), name="require")
    refused_57p03(required)
    line = failure_line(required, "SSL was required")
    assert line.endswith(
        f"could not connect to the upstream server at 127.0.0.1:{plain_pg.port}: "
        "server does not support SSL, but SSL was required"
    )
    preferred = front(pgtls, tcp_upstream(plain_pg), name="prefer")
    with connect(preferred) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_unreachable_upstream_is_named_in_the_log(pgtls: PgtlsLauncher) -> None:
    """Issue 16, item 5: the line names the upstream's address and why, not the client."""
    port = free_port()
    server = front(pgtls, f"host=127.0.0.1 port={port} sslmode=require")
    refused_57p03(server)
    line = failure_line(server, "Connection refused")
    assert line.endswith(
        f"could not connect to the upstream server at 127.0.0.1:{port}: Connection refused"
    )


# -- client certificates ------------------------------------------------------


def test_client_certificate_for_a_cert_rule(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """sslcert/sslkey: pgtls presents them; the upstream's ``cert`` rule admits certuser."""
    cert, key = upstream_pki.client(CERT_USER)
    server = front(
        pgtls,
        tcp_upstream(
            tls_pg,
            sslmode="verify-full",
            sslrootcert=upstream_pki.ca_file,
            sslcert=cert,
            sslkey=key,
        ),
        name="with-cert",
    )
    with connect(server, user=CERT_USER) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (CERT_USER,)
    without = front(
        pgtls,
        tcp_upstream(tls_pg, sslmode="verify-full", sslrootcert=upstream_pki.ca_file),
        name="without-cert",
    )
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        connect(without, user=CERT_USER).close()


def test_readable_client_key_is_refused_at_start(
    tmp_path: Path, pki: Pki, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """A group-readable sslkey stops pgtls with postgresql.conf:line and libpq's words."""
    cert, key = upstream_pki.client(CERT_USER, name="readable")
    key.chmod(0o644)
    upstream = tcp_upstream(tls_pg, sslmode="require", sslcert=cert, sslkey=key)
    datadir = make_datadir(tmp_path / "d", pki, upstream, port=free_port(), ssl=False)
    done = subprocess.run(
        [PGTLS, "check", "-D", str(datadir)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert f"{datadir}/postgresql.conf:4: " in done.stderr
    assert '"pgtls.upstream"' in done.stderr
    assert f'private key file "{key}" has group or world access' in done.stderr


# -- cancel, bulk, pgtls check ------------------------------------------------


def test_cancel_through_a_tls_upstream(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """A CancelRequest reaches the upstream through the same TLS negotiation."""
    server = front(
        pgtls, tcp_upstream(tls_pg, sslmode="verify-full", sslrootcert=upstream_pki.ca_file)
    )
    with connect(server) as conn:
        timer = threading.Timer(1.0, conn.cancel)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(60)")
        finally:
            timer.cancel()
        assert time.monotonic() - started < 30
    log = tls_pg.log_text()
    assert "canceling statement due to user request" in log


# 200 MB each way takes about 3 s here; PGTLS_UPSTREAM_COPY_MB changes it.
COPY_MB = int(os.environ.get("PGTLS_UPSTREAM_COPY_MB", "200"))


def test_copy_both_ways_with_checksums(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """COPY in and out through both TLS legs: the bytes arrive unchanged, both ways."""
    server = front(
        pgtls,
        tcp_upstream(tls_pg, sslmode="verify-full", sslrootcert=upstream_pki.ca_file),
        ssl=True,
    )
    row = (b"x" * 1000) + b"\n"
    rows = COPY_MB * 1024
    sent = hashlib.sha256()
    with connect(server, sslmode="require") as conn:
        conn.execute("CREATE TEMP TABLE bulk (line text)")
        with conn.cursor().copy("COPY bulk FROM STDIN") as copy:
            chunk = row * 256
            for _ in range(rows // 256):
                copy.write(chunk)
                sent.update(chunk)
        received = hashlib.sha256()
        total = 0
        with conn.cursor().copy("COPY bulk TO STDOUT") as copy:
            for data in copy:
                received.update(data)
                total += len(data)
        assert total == rows * len(row)
        assert received.hexdigest() == sent.hexdigest()


def test_check_reports_the_upstream_certificate(
    tmp_path: Path, pki: Pki, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """pgtls check does the upstream handshake and names the certificate it got."""
    upstream = tcp_upstream(tls_pg, sslmode="verify-full", sslrootcert=upstream_pki.ca_file)
    datadir = make_datadir(tmp_path / "d", pki, upstream, port=free_port(), ssl=False)
    done = subprocess.run(
        [PGTLS, "check", "-D", str(datadir)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"the upstream server at 127.0.0.1:{tls_pg.port} answers with SSL" in out
    assert "certificate subject: CN=db.test" in out
    assert "issuer: CN=upstream test CA" in out
    assert "valid until: " in out
    assert "verification: chain and host name verified" in out


def test_check_warns_when_the_upstream_does_not_answer(tmp_path: Path, pki: Pki) -> None:
    """Issue 16, item 12: a silent upstream is a warning, and the check still passes."""
    port = free_port()
    datadir = make_datadir(
        tmp_path / "d", pki, f"host=127.0.0.1 port={port}", port=free_port(), ssl=False
    )
    done = subprocess.run(
        [PGTLS, "check", "-D", str(datadir)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"warning: the upstream server at 127.0.0.1:{port} does not answer: Connection refused"
        in done.stdout
    )
    assert done.stdout.endswith("pgtls check: OK, the server would start\n")


# -- a second pgtls as a PostgreSQL 17 upstream -------------------------------


def _pgtls_upstream(
    pgtls: PgtlsLauncher,
    postgres: PostgresServer,
    cert: Path,
    key: Path,
    name: str,
    settings: tuple[str, ...] = (),
) -> PgtlsServer:
    """A pgtls with ssl = on serving ``cert``: it accepts direct SSL, as PostgreSQL 17."""
    port = free_port()
    datadir = make_datadir(
        pgtls.tmp_path / name,
        pgtls.pki,
        postgres.conninfo(),
        port=port,
        ssl=True,
        settings=settings,
    )
    (datadir / "server.crt").unlink()
    (datadir / "server.key").unlink()
    (datadir / "server.crt").write_bytes(cert.read_bytes())
    (datadir / "server.key").write_bytes(key.read_bytes())
    (datadir / "server.key").chmod(0o600)
    server = PgtlsServer(datadir, port)
    pgtls.servers.append(server)
    return server.start()


def test_direct_ssl_to_the_upstream(
    pgtls: PgtlsLauncher, postgres: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """sslnegotiation=direct: TLS first with ALPN postgresql, to an upstream that accepts it."""
    inner = _pgtls_upstream(
        pgtls, postgres, upstream_pki.server_cert, upstream_pki.server_key, "inner"
    )
    upstream = (
        f"host=localhost hostaddr=127.0.0.1 port={inner.port} sslmode=verify-full "
        f"sslnegotiation=direct sslrootcert={upstream_pki.ca_file}"
    )
    with connect(front(pgtls, upstream)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_direct_ssl_to_postgresql_15_fails(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """PostgreSQL 15 does not accept direct SSL: the leg fails, logged, 57P03 to the client."""
    server = front(
        pgtls,
        tcp_upstream(
            tls_pg, sslmode="require", sslnegotiation="direct", sslrootcert=upstream_pki.ca_file
        ),
    )
    refused_57p03(server)
    line = failure_line(server, "SSL")
    assert f"upstream server at 127.0.0.1:{tls_pg.port}: SSL" in line


def test_expired_upstream_certificate(
    pgtls: PgtlsLauncher, postgres: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """An upstream certificate past its date fails verify-ca, with OpenSSL's words logged."""
    cert, key = upstream_pki.expired_server(pgtls.tmp_path / "expired")
    inner = _pgtls_upstream(pgtls, postgres, cert, key, "inner-expired")
    server = front(
        pgtls,
        f"host=127.0.0.1 port={inner.port} sslmode=verify-ca sslrootcert={upstream_pki.ca_file}",
    )
    refused_57p03(server)
    line = failure_line(server, "certificate has expired")
    assert "SSL error: certificate verify failed (certificate has expired)" in line


# -- flow control on each leg -------------------------------------------------

# Socket buffers and Twisted's write buffers: a few MB; the data is 100+ MB.
RSS_GROWTH_LIMIT = 48 * 1024 * 1024
SLOW_PAUSE = 3.0


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture
def verified_front(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> PgtlsServer:
    return front(
        pgtls,
        tcp_upstream(tls_pg, sslmode="verify-full", sslrootcert=upstream_pki.ca_file),
        ssl=True,
    )


def test_slow_client_pauses_the_tls_upstream(
    verified_front: PgtlsServer, tls_pg: PostgresServer
) -> None:
    """
    A client that stops reading mid COPY out: pgtls stops reading the TLS
    upstream leg, whose backend then waits to write; pgtls's memory grows by
    far less than the data, which arrives intact.
    """
    assert verified_front.process is not None
    pid = verified_front.process.pid
    rows = 100_000
    sql = f"COPY (SELECT repeat('x', 1000) || i FROM generate_series(1, {rows}) i) TO STDOUT"
    expected = hashlib.sha256()
    for i in range(1, rows + 1):
        expected.update(b"x" * 1000 + str(i).encode() + b"\n")
    digest = hashlib.sha256()
    with connect(verified_front, sslmode="require", application_name="slow-client") as conn:
        before = rss_bytes(pid)
        with conn.cursor().copy(sql) as copy:
            first = True
            for block in copy:
                if first:
                    first = False
                    time.sleep(SLOW_PAUSE)
                    during = rss_bytes(pid)
                    wait = tls_pg.psql(
                        "SELECT wait_event FROM pg_stat_activity "
                        "WHERE application_name = 'slow-client'"
                    )
                digest.update(block)
    assert wait == "ClientWrite"
    assert during - before < RSS_GROWTH_LIMIT
    assert digest.hexdigest() == expected.hexdigest()


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def test_slow_upstream_pauses_the_client(
    pgtls: PgtlsLauncher, tls_pg: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """
    An upstream busy for a while (pg_sleep) reads nothing: pgtls stops
    reading the client, whose writes stall after a few MB, not after the
    whole 128 MB it has to send; then everything is processed.  (The client
    leg is plaintext: Python's SSL socket cannot read in one thread while
    another writes.)
    """
    import socket

    server = front(
        pgtls, tcp_upstream(tls_pg, sslmode="verify-full", sslrootcert=upstream_pki.ca_file)
    )
    assert server.process is not None
    pid = server.process.pid
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        params = b"user\0postgres\0database\0postgres\0\0"
        sock.sendall((len(params) + 8).to_bytes(4, "big") + (196608).to_bytes(4, "big") + params)
        received = bytearray()
        while not received.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = sock.recv(65536)
            assert chunk, "closed during startup"
            received += chunk
        big = _message(b"Q", b"SELECT 1 -- " + b"x" * 65000 + b"\0")
        count = 2000
        sent = [0]

        def writer() -> None:
            sock.sendall(_message(b"Q", b"SELECT pg_sleep(5)\0"))
            for _ in range(count):
                sock.sendall(big)
                sent[0] += len(big)
            sock.sendall(_message(b"X", b""))

        before = rss_bytes(pid)
        thread = threading.Thread(target=writer, daemon=True)
        # The reader below runs only after the pause: the answers are small.
        thread.start()
        time.sleep(SLOW_PAUSE)
        stalled_at = sent[0]
        grown = rss_bytes(pid) - before
        answers = bytearray()
        sock.settimeout(120)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answers += chunk
        thread.join(30)
        assert stalled_at < 32 * 1024 * 1024, stalled_at
        assert grown < RSS_GROWTH_LIMIT
        assert sent[0] == count * len(big)
        assert answers.count(b"C\x00\x00\x00\x0dSELECT 1\x00") == count + 1


def test_handshake_alert(
    pgtls: PgtlsLauncher, postgres: PostgresServer, upstream_pki: UpstreamPki
) -> None:
    """No common protocol version: the handshake fails with OpenSSL's words, logged."""
    inner = _pgtls_upstream(
        pgtls,
        postgres,
        upstream_pki.server_cert,
        upstream_pki.server_key,
        "inner-tls12",
        ("ssl_max_protocol_version = 'TLSv1.2'",),
    )
    server = front(
        pgtls, f"host=127.0.0.1 port={inner.port} sslmode=require ssl_min_protocol_version=TLSv1.3"
    )
    refused_57p03(server)
    line = failure_line(server, "SSL error: ")
    assert (
        f"upstream server at 127.0.0.1:{inner.port}: SSL error: tlsv1 alert protocol version"
        in (line)
    )
