"""
Admission end to end (issue 4): pg_hba.conf and pg_ident.conf decide, a
refusal is the FATAL ErrorResponse PostgreSQL 15 sends (src/backend/libpq/hba.c and auth.c), a
refused connection never reaches the upstream, and SIGHUP re-reads the rules
and the reloadable settings while the certificate in use stays until a
restart (README.rst, "Reload").

Clients are libpq (psql 15 and psycopg's libpq) with explicit sslmodes: with
``sslmode=prefer`` libpq retries without SSL after an SSL refusal and shows
both errors.  libpq does not show a refusal's SQLSTATE, so each refusal is
also read with a raw socket and decoded.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psycopg
import pytest
from pgserver import ALICE_PASSWORD, TEST_DB, PostgresServer
from pgtlsproc import PgtlsServer, Pki, free_port

from pgtls.core import wire
from pgtls.tls import certs

# Bounds every client: a server that waits instead of answering fails the
# test rather than hanging it.
TIMEOUT = 10.0

RELOADING = "received SIGHUP, reloading configuration files"
NOT_RELOADED = "pg_hba.conf was not reloaded"

Cert = tuple[str, str]


# --- clients ------------------------------------------------------------------


def client_env(password: str | None = None) -> dict[str, str]:
    """The environment for libpq: no PG* variables from the caller, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def conninfo(
    port: int,
    *,
    sslmode: str,
    user: str,
    dbname: str,
    cert: Cert | None,
    rootcert: str | os.PathLike[str],
) -> str:
    """
    A libpq conninfo for pgtls on 127.0.0.1 that checks its certificate for
    ``localhost`` under verify-full (hostaddr keeps libpq off ::1, where
    pgtls does not listen).
    """
    parts = [
        "host=localhost",
        "hostaddr=127.0.0.1",
        f"port={port}",
        f"user={user}",
        f"dbname={dbname}",
        f"sslmode={sslmode}",
        f"sslrootcert={rootcert}",
        f"connect_timeout={int(TIMEOUT)}",
    ]
    if cert is not None:
        parts += [f"sslcert={cert[0]}", f"sslkey={cert[1]}"]
    return " ".join(parts)


def psql(
    server: PgtlsServer,
    pki: Pki,
    *,
    sslmode: str,
    user: str = "postgres",
    dbname: str = "postgres",
    cert: Cert | None = None,
    rootcert: str | os.PathLike[str] | None = None,
    password: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``select current_user`` with psql 15 through ``server``."""
    info = conninfo(
        server.port,
        sslmode=sslmode,
        user=user,
        dbname=dbname,
        cert=cert,
        rootcert=rootcert or pki.ca_file,
    )
    return subprocess.run(
        ["psql", "--no-psqlrc", "--no-password", info, "-Atc", "select current_user"],
        env=client_env(password),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )


def assert_session(result: subprocess.CompletedProcess[str], user: str) -> None:
    """psql got through and the upstream ran its query as ``user``."""
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{user}\n"


def assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """psql shows exactly one FATAL, ``message``, and no retry."""
    assert result.returncode != 0, result.stdout
    assert result.stderr.count("FATAL:") == 1, result.stderr
    assert result.stderr.endswith(f"failed: FATAL:  {message}\n"), result.stderr


def connect(
    server: PgtlsServer,
    pki: Pki,
    *,
    sslmode: str,
    user: str = "postgres",
    dbname: str = "postgres",
    password: str | None = None,
) -> psycopg.Connection[tuple[object, ...]]:
    """A psycopg session through ``server`` (verify-full checks pgtls's certificate)."""
    return psycopg.connect(
        conninfo(
            server.port,
            sslmode=sslmode,
            user=user,
            dbname=dbname,
            cert=None,
            rootcert=pki.ca_file,
        ),
        password=password,
        autocommit=True,
    )


def tls_context(pki: Pki, cert: Cert | None = None) -> ssl.SSLContext:
    """A raw client's TLS context: verifies pgtls for localhost, offers ``cert``."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def read_to_eof(stream: socket.socket) -> bytes:
    """Everything the server sends until it ends the connection (or TLS)."""
    data = b""
    while chunk := stream.recv(65536):
        data += chunk
    return data


def refusal(
    server: PgtlsServer,
    user: str,
    database: str = "postgres",
    *,
    tls: ssl.SSLContext | None,
) -> dict[str, str]:
    """
    Send a StartupMessage (inside TLS when ``tls`` is given) and decode the
    answer, which must be one ErrorResponse and then the end of the
    connection.
    """
    with open_stream(server, tls) as stream:
        stream.sendall(wire.startup_message({"user": user, "database": database}))
        return wire.parse_error_response(read_to_eof(stream))


@contextlib.contextmanager
def open_stream(server: PgtlsServer, tls: ssl.SSLContext | None) -> Iterator[socket.socket]:
    """A connection to ``server``, in TLS after SSLRequest when ``tls`` is given."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        if tls is None:
            yield sock
            return
        sock.sendall(wire.ssl_request())
        assert sock.recv(1) == b"S"
        # wrap_socket takes the descriptor over: close the wrapper itself.
        with tls.wrap_socket(sock, server_hostname="localhost") as stream:
            yield stream


def assert_fatal(fields: dict[str, str], sqlstate: str, message: str) -> None:
    """The decoded ErrorResponse is PostgreSQL's FATAL with this SQLSTATE and message."""
    assert (fields["S"], fields["V"], fields["C"], fields["M"]) == (
        "FATAL",
        "FATAL",
        sqlstate,
        message,
    ), fields
    # Why a connection was refused is for the server log, never the client.
    assert "D" not in fields, fields


def no_entry(user: str, database: str, encryption: str) -> str:
    """PostgreSQL's refusal when no pg_hba.conf line matches a client on 127.0.0.1."""
    return (
        f'no pg_hba.conf entry for host "127.0.0.1", user "{user}", '
        f'database "{database}", {encryption}'
    )


def rejects(user: str, database: str, encryption: str) -> str:
    """PostgreSQL's refusal by a ``reject`` line, for a client on 127.0.0.1."""
    return (
        f'pg_hba.conf rejects connection for host "127.0.0.1", user "{user}", '
        f'database "{database}", {encryption}'
    )


# --- servers --------------------------------------------------------------------


def reload(server: PgtlsServer) -> None:
    """
    Send SIGHUP and wait until pgtls has started the reload.  The reload runs
    in one reactor callback, so any connection accepted from now on is
    admitted by whatever it loaded.
    """
    before = server.log_text().count(RELOADING)
    server.reload()
    deadline = time.monotonic() + TIMEOUT
    while server.log_text().count(RELOADING) <= before:
        assert time.monotonic() < deadline, f"SIGHUP not handled:\n{server.log_text()}"
        time.sleep(0.05)


def start_with_ident(pgtls, ident_lines: Sequence[str], **options: object) -> PgtlsServer:
    """Start pgtls (as ``pgtls.start`` does) with these pg_ident.conf lines."""
    port = free_port()
    datadir = pgtls.datadir(port=port, **options)
    write_lines(datadir / "pg_ident.conf", ident_lines)
    server = PgtlsServer(datadir, port)
    pgtls.servers.append(server)  # stopped with the others after the test
    return server.start()


def restart(server: PgtlsServer) -> None:
    """Stop and start ``server`` on the same data directory and port."""
    server.stop()
    server.start()


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` as a configuration file, one a line."""
    path.write_text("".join(f"{line}\n" for line in lines))


def rewrite_conf(server: PgtlsServer, changes: Mapping[str, str]) -> None:
    """Set (or add) settings in the server's postgresql.conf; values are written as is."""
    path = server.datadir / "postgresql.conf"
    lines = path.read_text().splitlines()
    for name, value in changes.items():
        lines = [line for line in lines if not line.startswith(f"{name} =")]
        lines.append(f"{name} = {value}")
    write_lines(path, lines)


class UpstreamCounter:
    """Counts the connections the upstream PostgreSQL has received."""

    def __init__(self, postgres: PostgresServer) -> None:
        self.postgres = postgres

    def settled_count(self) -> int:
        """
        How many connections the upstream has logged, once every earlier one
        is in its log (the control session of settled_log() included).
        """
        return self.postgres.settled_log(TIMEOUT).count("connection received: host=[local]")


@pytest.fixture
def upstream(postgres: PostgresServer) -> Iterator[UpstreamCounter]:
    """The upstream logs every connection it receives while the test runs."""
    postgres.psql("ALTER SYSTEM SET log_connections = on; SELECT pg_reload_conf();")
    try:
        yield UpstreamCounter(postgres)
    finally:
        postgres.psql("ALTER SYSTEM RESET log_connections; SELECT pg_reload_conf();")


class ClientCerts:
    """
    Client certificates (CN = the user, O = Test) issued by the test CA,
    one per user, written once into a directory of this module's own.
    """

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.pki = pki
        self.directory = directory
        self._issued: dict[tuple[str, bool], Cert] = {}

    def __call__(self, user: str, *, other_ca: bool = False) -> Cert:
        """(cert path, key path) for ``user``; from ``pki.other_ca`` if asked."""
        if (user, other_ca) not in self._issued:
            ca = self.pki.other_ca if other_ca else self.pki.ca
            issued = certs.issue_client_cert(ca, user, organization="Test")
            base = self.directory / f"{user}{'-other-ca' if other_ca else ''}"
            certs.write_pem(f"{base}.crt", issued.cert)
            certs.write_key(f"{base}.key", issued.key)
            self._issued[user, other_ca] = (f"{base}.crt", f"{base}.key")
        return self._issued[user, other_ca]


@pytest.fixture(scope="module")
def client_cert(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> ClientCerts:
    """Issues client certificates; see :class:`ClientCerts`."""
    return ClientCerts(pki, tmp_path_factory.mktemp("clients"))


# --- refusals ---------------------------------------------------------------------


def test_no_entry_names_the_encryption(pgtls, pki) -> None:
    """
    With no matching line the client gets FATAL 28000 ``no pg_hba.conf entry
    for host "…", user "…", database "…", SSL encryption`` over TLS and
    ``…, no encryption`` in plaintext.
    """
    server = pgtls.start(
        hba_lines=[
            "hostnossl all postgres 127.0.0.1/32 trust",
            f"hostssl {TEST_DB} alice 127.0.0.1/32 scram-sha-256",
        ]
    )
    ssl_refusal = no_entry("postgres", "postgres", "SSL encryption")
    assert_refused(psql(server, pki, sslmode="require"), ssl_refusal)
    assert_fatal(refusal(server, "postgres", tls=tls_context(pki)), "28000", ssl_refusal)

    plain_refusal = no_entry("alice", TEST_DB, "no encryption")
    assert_refused(
        psql(server, pki, sslmode="disable", user="alice", dbname=TEST_DB), plain_refusal
    )
    assert_fatal(refusal(server, "alice", TEST_DB, tls=None), "28000", plain_refusal)

    log = server.wait_for_log(f"refused host=127.0.0.1 user=alice database={TEST_DB}")
    assert plain_refusal in log


def test_hostssl_and_hostnossl_admit_their_transport_only(pgtls, pki) -> None:
    """
    hostnossl admits plaintext and hostssl admits TLS; with sslmode=prefer
    libpq's SSL attempt is refused and its plaintext retry is admitted, as
    with PostgreSQL.
    """
    server = pgtls.start(
        hba_lines=[
            "hostnossl all postgres 127.0.0.1/32 trust",
            f"hostssl {TEST_DB} alice 127.0.0.1/32 scram-sha-256",
        ]
    )
    with connect(server, pki, sslmode="disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    with connect(
        server, pki, sslmode="verify-full", user="alice", dbname=TEST_DB, password=ALICE_PASSWORD
    ) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("alice",)
    with connect(server, pki, sslmode="prefer") as conn:
        assert not conn.pgconn.ssl_in_use
    assert no_entry("postgres", "postgres", "SSL encryption") in server.log_text()


def test_reject_line(pgtls, pki) -> None:
    """
    A matching ``reject`` line refuses with FATAL 28000 ``pg_hba.conf rejects
    connection for …`` and its encryption words; first match wins, so the
    lines below it never see that connection, while others pass.
    """
    server = pgtls.start(
        hba_lines=[
            f"host {TEST_DB} postgres 127.0.0.1/32 reject",
            "host all all 127.0.0.1/32 trust",
        ]
    )
    for sslmode, tls, encryption in [
        ("disable", None, "no encryption"),
        ("require", tls_context(pki), "SSL encryption"),
    ]:
        message = rejects("postgres", TEST_DB, encryption)
        assert_refused(psql(server, pki, sslmode=sslmode, dbname=TEST_DB), message)
        assert_fatal(refusal(server, "postgres", TEST_DB, tls=tls), "28000", message)
    assert_session(psql(server, pki, sslmode="verify-full"), "postgres")

    # prefer: libpq shows the SSL refusal, then that of its plaintext retry.
    result = psql(server, pki, sslmode="prefer", dbname=TEST_DB)
    assert result.returncode != 0
    first = result.stderr.index(rejects("postgres", TEST_DB, "SSL encryption"))
    assert result.stderr.index(rejects("postgres", TEST_DB, "no encryption")) > first
    log = server.log_text()
    assert f'line 1: "host {TEST_DB} postgres 127.0.0.1/32 reject"' in log


def test_refused_connections_never_reach_the_upstream(pgtls, pki, upstream, client_cert) -> None:
    """
    Connections refused by pg_hba.conf (no entry, reject, failed cert
    check) open no connection to the upstream; an admitted one does.
    """
    server = pgtls.start(
        client_ca=True,
        hba_lines=[
            f"hostssl {TEST_DB} alice 127.0.0.1/32 cert",
            f"host {TEST_DB} postgres 127.0.0.1/32 reject",
            "hostnossl postgres postgres 127.0.0.1/32 trust",
        ],
    )
    bob = client_cert("bob")
    before = upstream.settled_count()
    assert_refused(
        psql(server, pki, sslmode="require", user="alice", dbname=TEST_DB, cert=bob),
        'certificate authentication failed for user "alice"',
    )
    for sslmode in ("disable", "require", "prefer"):
        assert psql(server, pki, sslmode=sslmode, dbname=TEST_DB, cert=bob).returncode != 0
    assert_refused(
        psql(server, pki, sslmode="require", cert=bob),
        no_entry("postgres", "postgres", "SSL encryption"),
    )
    assert upstream.settled_count() == before + 1  # the control session only

    assert_session(psql(server, pki, sslmode="disable"), "postgres")
    assert upstream.settled_count() == before + 3  # pgtls's session and a control


def test_refusal_over_tls_closes_the_socket(pgtls, pki) -> None:
    """
    After a FATAL inside TLS pgtls sends close_notify and closes the socket
    at once, as PostgreSQL's exiting backend does, without waiting for the
    client's close_notify.
    """
    server = pgtls.start(hba_lines=["host all postgres 127.0.0.1/32 reject"])
    with open_stream(server, tls_context(pki)) as stream:
        stream.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        fields = wire.parse_error_response(read_to_eof(stream))  # ends at close_notify
        assert fields["M"] == rejects("postgres", "postgres", "SSL encryption")
        # Below TLS, on a duplicate of the descriptor: the FIN, no more bytes.
        with socket.socket(fileno=os.dup(stream.fileno())) as raw:
            raw.settimeout(TIMEOUT)
            assert raw.recv(1) == b""


# --- client certificates --------------------------------------------------------


def test_cert_method_matches_the_common_name(pgtls, pki, client_cert) -> None:
    """
    ``cert`` admits a client whose certificate CN is the requested user
    (the upstream then asks its own password); another CN gets FATAL 28000
    ``certificate authentication failed for user "…"``, and the reason is
    logged only.
    """
    server = pgtls.start(client_ca=True, hba_lines=[f"hostssl {TEST_DB} alice 127.0.0.1/32 cert"])
    alice, bob = client_cert("alice"), client_cert("bob")
    result = psql(
        server,
        pki,
        sslmode="verify-full",
        user="alice",
        dbname=TEST_DB,
        cert=alice,
        password=ALICE_PASSWORD,
    )
    assert_session(result, "alice")

    message = 'certificate authentication failed for user "alice"'
    result = psql(server, pki, sslmode="verify-full", user="alice", dbname=TEST_DB, cert=bob)
    assert_refused(result, message)
    fields = refusal(server, "alice", TEST_DB, tls=tls_context(pki, bob))
    assert_fatal(fields, "28000", message)
    reason = "provided user name (alice) and authenticated user name (bob) do not match"
    server.wait_for_log(reason)
    assert "authenticated user name" not in result.stderr


def test_cert_from_an_unknown_ca_fails_the_handshake(pgtls, pki, client_cert) -> None:
    """A client certificate root.crt does not vouch for fails the TLS handshake."""
    server = pgtls.start(client_ca=True, hba_lines=["hostssl all all 127.0.0.1/32 trust"])
    stranger = client_cert("postgres", other_ca=True)
    result = psql(server, pki, sslmode="verify-full", cert=stranger)
    assert result.returncode != 0
    assert "SSL error" in result.stderr, result.stderr
    assert "FATAL" not in result.stderr
    server.wait_for_log("could not accept SSL connection")


def test_cert_with_a_regex_map(pgtls, pki, client_cert) -> None:
    """
    ``cert map=NAME`` looks the CN up in pg_ident.conf, where a ``/regex``
    SYSTEM-USERNAME maps several certificates to one role; a CN the map does
    not cover is refused and the log names the map.
    """
    server = start_with_ident(
        pgtls,
        ["staff /^(alice|carol)$ postgres"],
        client_ca=True,
        hba_lines=["hostssl all postgres 127.0.0.1/32 cert map=staff"],
    )
    for user in ("alice", "carol"):
        assert_session(psql(server, pki, sslmode="verify-full", cert=client_cert(user)), "postgres")
    message = 'certificate authentication failed for user "postgres"'
    assert_refused(psql(server, pki, sslmode="verify-full", cert=client_cert("bob")), message)
    server.wait_for_log('no match in usermap "staff" for user "postgres" authenticated as "bob"')


def test_cert_with_clientname_dn_and_a_dn_map(pgtls, pki, client_cert) -> None:
    """
    With ``clientname=DN`` the certificate's whole subject in RFC 2253 form
    (``CN=alice,O=Test``) is the name looked up in the map; a regex map with
    ``\\1`` turns it into the role, an exact line maps one DN to another role.
    """
    server = start_with_ident(
        pgtls,
        [
            'dn "/^CN=([a-z]+),O=Test$" \\1',
            'dn "CN=carol,O=Test" postgres',
        ],
        client_ca=True,
        hba_lines=["hostssl all all 127.0.0.1/32 cert clientname=DN map=dn"],
    )
    alice, carol = client_cert("alice"), client_cert("carol")
    result = psql(
        server,
        pki,
        sslmode="verify-full",
        user="alice",
        dbname=TEST_DB,
        cert=alice,
        password=ALICE_PASSWORD,
    )
    assert_session(result, "alice")
    assert_session(psql(server, pki, sslmode="verify-full", cert=carol), "postgres")

    message = 'certificate authentication failed for user "postgres"'
    assert_refused(psql(server, pki, sslmode="verify-full", cert=alice), message)
    assert_fatal(refusal(server, "postgres", tls=tls_context(pki, alice)), "28000", message)
    server.wait_for_log(
        'no match in usermap "dn" for user "postgres" authenticated as "CN=alice,O=Test"'
    )


def test_clientcert_verify_ca(pgtls, pki, client_cert) -> None:
    """
    ``clientcert=verify-ca`` refuses a client without a certificate with
    FATAL 28000 ``connection requires a valid client certificate`` and
    admits any certificate root.crt vouches for, whatever its CN.
    """
    server = pgtls.start(
        client_ca=True,
        settings=["pgtls.clientcert = optional"],
        hba_lines=["hostssl all all 127.0.0.1/32 trust clientcert=verify-ca"],
    )
    message = "connection requires a valid client certificate"
    assert_refused(psql(server, pki, sslmode="verify-full"), message)
    assert_fatal(refusal(server, "postgres", tls=tls_context(pki)), "28000", message)
    assert_session(psql(server, pki, sslmode="verify-full", cert=client_cert("bob")), "postgres")


def test_clientcert_verify_full(pgtls, pki, client_cert) -> None:
    """
    ``clientcert=verify-full`` also needs the CN to be the user: a mismatch
    gets the method's own failure, FATAL 28000 ``"trust" authentication
    failed for user "…"``, and the log says ``CN mismatch``.
    """
    server = pgtls.start(
        client_ca=True,
        settings=["pgtls.clientcert = optional"],
        hba_lines=["hostssl all all 127.0.0.1/32 trust clientcert=verify-full"],
    )
    postgres_cert, alice = client_cert("postgres"), client_cert("alice")
    assert_session(psql(server, pki, sslmode="verify-full", cert=postgres_cert), "postgres")

    message = '"trust" authentication failed for user "postgres"'
    assert_refused(psql(server, pki, sslmode="verify-full", cert=alice), message)
    assert_fatal(refusal(server, "postgres", tls=tls_context(pki, alice)), "28000", message)
    server.wait_for_log(
        'certificate validation (clientcert=verify-full) failed for user "postgres": CN mismatch'
    )
    assert_refused(
        psql(server, pki, sslmode="verify-full"), "connection requires a valid client certificate"
    )


def test_root_crt_requires_a_certificate_by_default(pgtls, pki, client_cert) -> None:
    """
    With root.crt and the default ``pgtls.clientcert = required`` (PostgreSQL
    8.2's rule) an SSL client without a certificate is refused even by a
    trust line; plaintext clients are not asked for one.
    """
    server = pgtls.start(client_ca=True)
    message = "connection requires a valid client certificate"
    assert_refused(psql(server, pki, sslmode="verify-full"), message)
    assert_fatal(refusal(server, "postgres", tls=tls_context(pki)), "28000", message)
    assert_session(psql(server, pki, sslmode="verify-full", cert=client_cert("bob")), "postgres")
    assert_session(psql(server, pki, sslmode="disable"), "postgres")


def test_clientcert_without_a_root_store(pgtls, pki) -> None:
    """
    A clientcert line without root.crt refuses with FATAL F0000 ``client
    certificates can only be checked if a root certificate store is
    available``.
    """
    server = pgtls.start(hba_lines=["hostssl all all 127.0.0.1/32 trust clientcert=verify-ca"])
    message = "client certificates can only be checked if a root certificate store is available"
    assert_refused(psql(server, pki, sslmode="verify-full"), message)
    assert_fatal(refusal(server, "postgres", tls=tls_context(pki)), "F0000", message)


# --- SIGHUP -----------------------------------------------------------------------


def test_reload_applies_new_rules_to_new_connections(pgtls, pki) -> None:
    """
    After SIGHUP the new pg_hba.conf decides every new connection, while a
    session admitted under the old rules runs on.
    """
    server = pgtls.start()
    with connect(server, pki, sslmode="verify-full") as conn:
        write_lines(
            server.datadir / "pg_hba.conf",
            ["host all postgres 127.0.0.1/32 reject", "host all all 127.0.0.1/32 trust"],
        )
        assert_session(psql(server, pki, sslmode="verify-full"), "postgres")  # not yet read
        reload(server)
        assert_refused(
            psql(server, pki, sslmode="verify-full"),
            rejects("postgres", "postgres", "SSL encryption"),
        )
        assert conn.execute("select 42").fetchone() == (42,)
    result = psql(
        server, pki, sslmode="disable", user="alice", dbname=TEST_DB, password=ALICE_PASSWORD
    )
    assert_session(result, "alice")
    assert NOT_RELOADED not in server.log_text()


def test_reload_of_a_broken_pg_hba_keeps_the_rules(pgtls, pki) -> None:
    """
    A pg_hba.conf that fails to parse is not half-applied: the rules in force
    stay, and the log has ``FILE:LINE: reason`` and ``pg_hba.conf was not
    reloaded``; a later good file is read.
    """
    server = pgtls.start(hba_lines=["host all all 127.0.0.1/32 trust"])
    hba_file = server.datadir / "pg_hba.conf"
    write_lines(hba_file, ["host all all 127.0.0.1/32 reject", "host all all 127.0.0.1/32 bogus"])
    reload(server)
    server.wait_for_log(NOT_RELOADED)
    assert f'{hba_file}:2: invalid authentication method "bogus"' in server.log_text()
    assert_session(psql(server, pki, sslmode="verify-full"), "postgres")

    write_lines(hba_file, ["host all all 127.0.0.1/32 reject"])
    reload(server)
    assert_refused(
        psql(server, pki, sslmode="disable"), rejects("postgres", "postgres", "no encryption")
    )
    assert server.log_text().count(NOT_RELOADED) == 1


def test_reload_swaps_pg_ident_and_keeps_it_when_broken(pgtls, pki, client_cert) -> None:
    """
    SIGHUP re-reads pg_ident.conf with pg_hba.conf: a changed map applies to
    the next connection; a map that fails to parse leaves the old one in
    force and is logged with its line.
    """
    server = start_with_ident(
        pgtls,
        ["staff alice postgres"],
        client_ca=True,
        hba_lines=["hostssl all postgres 127.0.0.1/32 cert map=staff"],
    )
    alice, carol = client_cert("alice"), client_cert("carol")
    message = 'certificate authentication failed for user "postgres"'
    assert_session(psql(server, pki, sslmode="verify-full", cert=alice), "postgres")
    assert_refused(psql(server, pki, sslmode="verify-full", cert=carol), message)

    ident_file = server.datadir / "pg_ident.conf"
    write_lines(ident_file, ["staff carol postgres"])
    reload(server)
    assert_session(psql(server, pki, sslmode="verify-full", cert=carol), "postgres")
    assert_refused(psql(server, pki, sslmode="verify-full", cert=alice), message)

    write_lines(ident_file, ["staff alice postgres", "staff /( postgres"])
    reload(server)
    log = server.wait_for_log("was not reloaded")
    assert re.search(rf"{re.escape(str(ident_file))}:2: .*regular expression", log), log
    assert_session(psql(server, pki, sslmode="verify-full", cert=carol), "postgres")
    assert_refused(psql(server, pki, sslmode="verify-full", cert=alice), message)


#: Every restart-only setting with a new value that parses (ssl among them).
RESTART_ONLY_CHANGES = {
    "ssl": "off",
    "port": "1",
    "listen_addresses": "'localhost'",
    "max_connections": "1",
    "ssl_cert_file": "'other.crt'",
    "ssl_key_file": "'other.key'",
    "ssl_ca_file": "'other-root.crt'",
    "ssl_crl_file": "'other-root.crl'",
    "ssl_ciphers": "'HIGH'",
    "ssl_prefer_server_ciphers": "off",
    "ssl_min_protocol_version": "'TLSv1.3'",
    "ssl_max_protocol_version": "'TLSv1.3'",
    "ssl_ecdh_curve": "'secp384r1'",
    "ssl_passphrase_command": "'echo secret'",
    "pgtls.upstream": "'host=/nonexistent port=5432'",
    "pgtls.clientcert": "optional",
}


def test_reload_ignores_restart_only_settings(pgtls, pki) -> None:
    """
    Each restart-only setting changed in postgresql.conf is logged as
    ``parameter "NAME" cannot be changed without restarting the server`` and
    ignored: with ``ssl = off`` and the rest, pgtls still speaks TLS on the
    same port to the same upstream.
    """
    server = pgtls.start()
    rewrite_conf(server, RESTART_ONLY_CHANGES)
    reload(server)
    for name in RESTART_ONLY_CHANGES:
        server.wait_for_log(f'parameter "{name}" cannot be changed without restarting the server')
    with connect(server, pki, sslmode="verify-full") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("postgres",)
        with connect(server, pki, sslmode="require"):
            pass  # max_connections is still 100
    assert_session(psql(server, pki, sslmode="disable"), "postgres")
    assert "changed to" not in server.log_text()


def test_reload_applies_reloadable_settings(pgtls, pki) -> None:
    """
    ``log_connections`` and ``authentication_timeout`` changed in
    postgresql.conf take effect for connections after SIGHUP.
    """
    server = pgtls.start()
    assert_session(psql(server, pki, sslmode="verify-full"), "postgres")
    assert "connection received" not in server.log_text()

    rewrite_conf(server, {"log_connections": "on", "authentication_timeout": "1s"})
    reload(server)
    server.wait_for_log('parameter "log_connections" changed to "on"')
    server.wait_for_log('parameter "authentication_timeout" changed to "1s"')
    assert_session(psql(server, pki, sslmode="verify-full"), "postgres")
    log = server.wait_for_log("connection authorized: user=postgres database=postgres")
    assert "connection received: host=127.0.0.1 port=" in log

    # A client that sends nothing is closed silently after the new timeout.
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 5


def test_reload_of_a_broken_postgresql_conf_changes_no_setting(pgtls, pki) -> None:
    """
    A postgresql.conf with an error applies none of its changes (PostgreSQL's
    ``configuration file "…" contains errors; no changes were applied``),
    while the pg_hba.conf read by the same SIGHUP still takes effect.
    """
    server = pgtls.start()
    conf_file = server.datadir / "postgresql.conf"
    rewrite_conf(server, {"log_connections": "on", "no_such_setting": "1"})
    write_lines(server.datadir / "pg_hba.conf", ["host all all 127.0.0.1/32 reject"])
    reload(server)
    log = server.wait_for_log(
        f'configuration file "{conf_file}" contains errors; no changes were applied'
    )
    assert 'unrecognized configuration parameter "no_such_setting"' in log
    assert_refused(
        psql(server, pki, sslmode="disable"), rejects("postgres", "postgres", "no encryption")
    )
    assert "connection received" not in server.log_text()


def test_certificate_changes_only_at_restart(pgtls, pki, tmp_path) -> None:
    """
    A new server.crt/server.key on disk is not used after SIGHUP (clients
    verifying against the old CA still connect, the new CA's do not); after
    a restart the new certificate is served.
    """
    server = pgtls.start()
    other_ca_file = tmp_path / "other-ca.crt"
    certs.write_pem(str(other_ca_file), pki.other_ca.cert)
    replacement = certs.issue_server_cert(pki.other_ca, ["localhost", "127.0.0.1", "::1"])
    for name in ("server.crt", "server.key"):
        (server.datadir / name).unlink()  # write_pem and write_key never overwrite
    certs.write_pem(str(server.datadir / "server.crt"), replacement.cert)
    certs.write_key(str(server.datadir / "server.key"), replacement.key)

    reload(server)
    assert_session(psql(server, pki, sslmode="verify-full"), "postgres")
    result = psql(server, pki, sslmode="verify-full", rootcert=other_ca_file)
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr, result.stderr

    restart(server)
    assert_session(psql(server, pki, sslmode="verify-full", rootcert=other_ca_file), "postgres")
    result = psql(server, pki, sslmode="verify-full")
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr, result.stderr
