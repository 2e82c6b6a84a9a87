"""
Real libpq clients through a real ``twistd pgtls``: psql 15 (libpq 15, run
as a subprocess) and psycopg (bundled libpq 17+) against every sslmode with
ssl on and off, hostssl/hostnossl rules, direct SSL, SCRAM with and without
channel binding, cancel over SSL, the upstream going away and coming back,
max_connections and the connection log.

pgtls relays to the upstream over a Unix socket, so the upstream cannot tell
whether a client used SSL: "SSL in use" is always checked on the client side
(psql's ``\\conninfo``, psycopg's ``pgconn.ssl_in_use``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from libpqclients import Runner, client_env, conninfo, psql_argv, run_psql, run_psycopg
from pgserver import ALICE, ALICE_PASSWORD, TEST_DB, PostgresServer
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir

from pgtls.tls import certs

if TYPE_CHECKING:
    from conftest import PgtlsLauncher

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SSL_REQUIRED = "server does not support SSL, but SSL was required"
NO_HBA_ENTRY = (
    'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "postgres", database "postgres", {}'
)

# -- servers and certificates ---------------------------------------------


@pytest.fixture(scope="module")
def other_root(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> str:
    """A root certificate file holding another CA than the one that signed pgtls's."""
    path = tmp_path_factory.mktemp("other-ca") / "root.crt"
    certs.write_pem(str(path), pki.other_ca.cert)
    return str(path)


def ssl_params(mode: str, pki: Pki, no_root_cert: str) -> dict[str, str]:
    """
    sslmode and sslrootcert: the test CA for the verify modes, a missing file
    for the others (so ``require`` does not verify, whatever ~/.postgresql holds).
    """
    return {"sslmode": mode, "sslrootcert": str(pki.ca_file) if mode[0] == "v" else no_root_cert}


def _module_server(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    postgres: PostgresServer,
    name: str,
    **options: Any,
) -> Iterator[PgtlsServer]:
    port = free_port()
    datadir = make_datadir(
        tmp_path_factory.mktemp(name), pki, postgres.conninfo(), port=port, **options
    )
    with PgtlsServer(datadir, port) as server:
        yield server


@pytest.fixture(scope="module")
def ssl_on(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, postgres: PostgresServer
) -> Iterator[PgtlsServer]:
    """pgtls with ssl = on, a host ... trust rule, log_connections = on."""
    yield from _module_server(
        tmp_path_factory, pki, postgres, "ssl-on", settings=["log_connections = on"]
    )


@pytest.fixture(scope="module")
def ssl_off(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, postgres: PostgresServer
) -> Iterator[PgtlsServer]:
    """pgtls with ssl = off and a host ... trust rule."""
    yield from _module_server(tmp_path_factory, pki, postgres, "ssl-off", ssl=False)


@pytest.fixture(scope="module")
def hostssl_only(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, postgres: PostgresServer
) -> Iterator[PgtlsServer]:
    """pgtls admitting SSL sessions only (one hostssl rule)."""
    yield from _module_server(
        tmp_path_factory,
        pki,
        postgres,
        "hostssl",
        hba_lines=["hostssl all all 127.0.0.1/32 trust"],
    )


@pytest.fixture(scope="module")
def hostnossl_only(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, postgres: PostgresServer
) -> Iterator[PgtlsServer]:
    """pgtls admitting plaintext sessions only (one hostnossl rule)."""
    yield from _module_server(
        tmp_path_factory,
        pki,
        postgres,
        "hostnossl",
        hba_lines=["hostnossl all all 127.0.0.1/32 trust"],
    )


def at(server: PgtlsServer, host: str = "localhost", **params: object) -> dict[str, object]:
    """Connection parameters for ``server`` as postgres/postgres, plus ``params``."""
    return {"host": host, "port": server.port, "user": "postgres", "dbname": "postgres", **params}


def new_log(server: PgtlsServer, mark: int, text: str, timeout: float = 10.0) -> str:
    """Wait until ``text`` is in the log after offset ``mark``; return that part."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log_text()[mark:]
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged within {timeout}s:\n{log}")
        time.sleep(0.05)


# -- sslmode against ssl = on / ssl = off ---------------------------------


@pytest.mark.parametrize("mode", SSLMODES)
def test_sslmode_with_ssl_on(
    client: Runner, mode: str, ssl_on: PgtlsServer, pki: Pki, no_root_cert: str
) -> None:
    """
    With ssl = on every sslmode connects; disable and allow (plaintext first,
    which the host rule admits) stay plaintext, prefer and stricter use SSL.
    """
    outcome = client(at(ssl_on, **ssl_params(mode, pki, no_root_cert)))
    assert outcome.connected, outcome.error
    assert outcome.value == "postgres"
    assert outcome.ssl is (mode not in ("disable", "allow"))


def test_verify_full_by_ip_address(client: Runner, ssl_on: PgtlsServer, pki: Pki) -> None:
    """verify-full to host=127.0.0.1 matches the IP address in the certificate's SAN."""
    outcome = client(at(ssl_on, "127.0.0.1", sslmode="verify-full", sslrootcert=pki.ca_file))
    assert outcome.connected, outcome.error
    assert outcome.ssl


def test_verify_full_wrong_host_name(client: Runner, ssl_on: PgtlsServer, pki: Pki) -> None:
    """verify-full to a name the certificate does not carry fails with libpq's mismatch error."""
    params = at(
        ssl_on,
        "wrong.example",
        hostaddr="127.0.0.1",
        sslmode="verify-full",
        sslrootcert=pki.ca_file,
    )
    outcome = client(params)
    assert not outcome.connected
    assert (
        'server certificate for "localhost" (and 2 other names) does not match host name '
        '"wrong.example"'
    ) in outcome.error


def test_verify_ca_with_another_root(client: Runner, ssl_on: PgtlsServer, other_root: str) -> None:
    """
    verify-ca with a root certificate of another CA fails the handshake on
    the client; pgtls logs the client's alert as PostgreSQL does.
    """
    mark = len(ssl_on.log_text())
    outcome = client(at(ssl_on, sslmode="verify-ca", sslrootcert=other_root))
    assert not outcome.connected
    assert "SSL error: certificate verify failed" in outcome.error
    log = new_log(ssl_on, mark, "could not accept SSL connection: tlsv1 alert unknown ca")
    assert "connection authorized" not in log


@pytest.mark.parametrize("mode", SSLMODES)
def test_sslmode_with_ssl_off(
    client: Runner, mode: str, ssl_off: PgtlsServer, pki: Pki, no_root_cert: str
) -> None:
    """
    With ssl = off pgtls answers N: disable, allow and prefer go on in
    plaintext; require and the verify modes fail with libpq's own message.
    """
    outcome = client(at(ssl_off, **ssl_params(mode, pki, no_root_cert)))
    if mode in ("disable", "allow", "prefer"):
        assert outcome.connected, outcome.error
        assert not outcome.ssl
        assert outcome.value == "postgres"
    else:
        assert not outcome.connected
        assert SSL_REQUIRED in outcome.error


# -- pg_hba.conf: hostssl and hostnossl ------------------------------------


def test_hostssl_only_refuses_plaintext(
    client: Runner, hostssl_only: PgtlsServer, no_root_cert: str
) -> None:
    """A plaintext session under a hostssl-only pg_hba.conf gets PostgreSQL's exact FATAL."""
    outcome = client(at(hostssl_only, sslmode="disable", sslrootcert=no_root_cert))
    assert not outcome.connected
    assert NO_HBA_ENTRY.format("no encryption") in outcome.error


def test_hostssl_only_allow_retries_with_ssl(
    client: Runner, hostssl_only: PgtlsServer, no_root_cert: str
) -> None:
    """
    sslmode=allow tries plaintext first; refused by the hostssl rule, libpq
    opens a new connection with SSL, which is admitted.
    """
    mark = len(hostssl_only.log_text())
    outcome = client(at(hostssl_only, sslmode="allow", sslrootcert=no_root_cert))
    assert outcome.connected, outcome.error
    assert outcome.ssl
    new_log(hostssl_only, mark, NO_HBA_ENTRY.format("no encryption").removeprefix("FATAL:  "))


def test_hostnossl_only_prefer_falls_back(
    client: Runner, hostnossl_only: PgtlsServer, no_root_cert: str
) -> None:
    """
    sslmode=prefer under a hostnossl-only pg_hba.conf: the SSL attempt is
    refused, libpq retries without SSL on a new connection and succeeds.
    """
    mark = len(hostnossl_only.log_text())
    outcome = client(at(hostnossl_only, sslmode="prefer", sslrootcert=no_root_cert))
    assert outcome.connected, outcome.error
    assert not outcome.ssl
    new_log(hostnossl_only, mark, NO_HBA_ENTRY.format("SSL encryption").removeprefix("FATAL:  "))


def test_hostnossl_only_refuses_ssl(
    client: Runner, hostnossl_only: PgtlsServer, no_root_cert: str
) -> None:
    """sslmode=require under a hostnossl-only pg_hba.conf gets the SSL encryption FATAL."""
    outcome = client(at(hostnossl_only, sslmode="require", sslrootcert=no_root_cert))
    assert not outcome.connected
    assert NO_HBA_ENTRY.format("SSL encryption") in outcome.error


# -- direct SSL (libpq 17+) ------------------------------------------------


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_direct_ssl(mode: str, ssl_on: PgtlsServer, pki: Pki, no_root_cert: str) -> None:
    """sslnegotiation=direct (TLS ClientHello first, ALPN postgresql) works in every mode."""
    params = at(ssl_on, sslnegotiation="direct", **ssl_params(mode, pki, no_root_cert))
    outcome = run_psycopg(params)
    assert outcome.connected, outcome.error
    assert outcome.ssl
    assert outcome.value == "postgres"


def test_direct_ssl_with_ssl_off(ssl_off: PgtlsServer, no_root_cert: str) -> None:
    """
    With ssl = off a direct TLS ClientHello is closed without an answer, as
    PostgreSQL 17 does: the client sees the connection end during the
    handshake (OpenSSL 3 and 1.1 word that differently), not a reply.
    """
    outcome = run_psycopg(
        at(ssl_off, sslmode="require", sslnegotiation="direct", sslrootcert=no_root_cert)
    )
    assert not outcome.connected
    silent_close = r"SSL (error: unexpected eof while reading|SYSCALL error: EOF detected)"
    assert re.search(silent_close, outcome.error), outcome.error


# -- SCRAM through pgtls ---------------------------------------------------


def _alice(server: PgtlsServer, channel_binding: str, no_root_cert: str) -> dict[str, object]:
    return {
        "host": "localhost",
        "port": server.port,
        "user": ALICE,
        "dbname": TEST_DB,
        "sslmode": "require",
        "sslrootcert": no_root_cert,
        "channel_binding": channel_binding,
    }


def test_scram_login(client: Runner, ssl_on: PgtlsServer, no_root_cert: str) -> None:
    """
    alice logs in with her SCRAM password through pgtls over SSL; with
    channel_binding=prefer libpq falls back to SCRAM without binding.
    """
    outcome = client(_alice(ssl_on, "prefer", no_root_cert), password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    assert outcome.ssl
    assert outcome.value == ALICE


def test_scram_wrong_password(client: Runner, ssl_on: PgtlsServer, no_root_cert: str) -> None:
    """The upstream's password failure reaches the client unchanged."""
    outcome = client(_alice(ssl_on, "prefer", no_root_cert), password="not-" + ALICE_PASSWORD)
    assert not outcome.connected
    assert f'FATAL:  password authentication failed for user "{ALICE}"' in outcome.error


def test_scram_channel_binding_required(
    client: Runner, ssl_on: PgtlsServer, no_root_cert: str
) -> None:
    """
    channel_binding=require fails: the upstream leg is a Unix socket, so the
    upstream does not offer SCRAM-SHA-256-PLUS (a known limit of any TLS
    front end; see the spec, section 10).
    """
    outcome = client(_alice(ssl_on, "require", no_root_cert), password=ALICE_PASSWORD)
    assert not outcome.connected
    assert (
        "channel binding is required, but server did not offer an authentication "
        "method that supports channel binding"
    ) in outcome.error


# -- cancel over SSL -------------------------------------------------------

CANCEL_WAIT = 10.0
SLEEP_SECONDS = 30
# pgtls's per-connection debug summary; it names the TLS protocol only
# when the connection used TLS (the group is '' for a plaintext one).
CANCEL_SUMMARY = re.compile(r"ssl=\S+ (?:protocol=(\S+) cipher=\S+ )?outcome=cancel ")


def _sleep_sql(marker: str) -> str:
    return f"select pg_sleep({SLEEP_SECONDS}) /* {marker} */"


def wait_until_running(postgres: PostgresServer, marker: str) -> None:
    """
    Wait until a query holding ``marker`` runs in the upstream: a cancel
    that arrives before the query starts is ignored by PostgreSQL.
    """
    deadline = time.monotonic() + CANCEL_WAIT
    with psycopg.connect(
        postgres.conninfo(), user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select count(*) from pg_stat_activity where state = 'active' and query like %s",
                (f"%{marker}%",),
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"the query marked {marker} did not start within {CANCEL_WAIT}s")


@pytest.mark.parametrize("how", ["cancel_safe", "cancel"])
def test_psycopg_cancel(how: str, ssl_on: PgtlsServer, pki: Pki, postgres: PostgresServer) -> None:
    """
    A running pg_sleep in an SSL session is cancelled through pgtls, with
    libpq 17's encrypted cancel (cancel_safe) and the legacy plaintext
    PQcancel (cancel); the session stays usable afterwards.
    """
    mark = len(ssl_on.log_text())
    marker = f"cancel-{uuid.uuid4().hex}"
    params = at(ssl_on, sslmode="verify-full", sslrootcert=pki.ca_file)
    with psycopg.connect(conninfo(params), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        errors: list[BaseException] = []

        def cancel_when_running() -> None:
            try:
                wait_until_running(postgres, marker)
                getattr(conn, how)()
            except BaseException as error:
                errors.append(error)

        canceller = threading.Thread(target=cancel_when_running)
        started = time.monotonic()
        canceller.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(_sleep_sql(marker))
            elapsed = time.monotonic() - started
        finally:
            canceller.join(CANCEL_WAIT + 5)
        assert not errors, errors
        assert elapsed < CANCEL_WAIT, elapsed
        assert conn.execute("select 1").fetchone() == (1,)
    log = new_log(ssl_on, mark, "outcome=cancel ")
    expected = "TLSv1.3" if how == "cancel_safe" else ""
    assert CANCEL_SUMMARY.findall(log) == [expected]


def test_psql_cancel(ssl_on: PgtlsServer, pki: Pki, postgres: PostgresServer) -> None:
    """
    Ctrl-C in psql 15 during a query over SSL sends a (plaintext) cancel
    through pgtls; psql reports PostgreSQL's cancel message at once.
    """
    mark = len(ssl_on.log_text())
    marker = f"cancel-{uuid.uuid4().hex}"
    params = at(ssl_on, sslmode="verify-full", sslrootcert=pki.ca_file)
    with subprocess.Popen(
        psql_argv(params, _sleep_sql(marker)),
        env=client_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as psql:
        try:
            wait_until_running(postgres, marker)
            started = time.monotonic()
            psql.send_signal(signal.SIGINT)
            _, stderr = psql.communicate(timeout=CANCEL_WAIT)
        finally:
            if psql.poll() is None:
                psql.kill()
    assert time.monotonic() - started < CANCEL_WAIT
    assert "ERROR:  canceling statement due to user request" in stderr
    assert psql.returncode != 0
    log = new_log(ssl_on, mark, "outcome=cancel ")
    assert CANCEL_SUMMARY.findall(log) == [""]


# -- the upstream going away -----------------------------------------------


def test_upstream_down_and_back(
    ssl_on: PgtlsServer, pki: Pki, postgres: PostgresServer, no_root_cert: str
) -> None:
    """
    With the upstream down both clients get pgtls's FATAL, which does not
    reveal the upstream's address; its SQLSTATE 57P03 keeps sslmode=prefer
    from retrying without SSL (one attempt each).  Once the upstream is back
    they connect again.
    """
    params = at(ssl_on, **ssl_params("prefer", pki, no_root_cert))
    mark = len(ssl_on.log_text())
    postgres.stop()
    try:
        for run in (run_psql, run_psycopg):
            outcome = run(params)
            assert not outcome.connected
            assert "FATAL:  the database system is not accepting connections" in outcome.error
            assert "DETAIL:  pgtls could not connect to the upstream server." in outcome.error
            assert postgres.socket_dir not in outcome.error
    finally:
        postgres.start()
    attempts = ssl_on.log_text()[mark:].count("could not connect to the upstream server")
    assert attempts == 2
    for run in (run_psql, run_psycopg):
        outcome = run(params)
        assert outcome.connected, outcome.error
        assert outcome.ssl


# -- limits and log lines ---------------------------------------------------


def test_max_connections(client: Runner, pgtls: PgtlsLauncher, pki: Pki) -> None:
    """
    Past max_connections relayed sessions, a new SSL client gets PostgreSQL's
    53300 FATAL; when one session ends, a new one is admitted.
    """
    server = pgtls.start(settings=["max_connections = 2"])
    params = at(server, sslmode="verify-full", sslrootcert=pki.ca_file)
    held = [psycopg.connect(conninfo(params)) for _ in range(2)]
    try:
        refused = client(params)
        assert not refused.connected
        assert "FATAL:  sorry, too many clients already" in refused.error
        held.pop().close()
        admitted = client(params)
        assert admitted.connected, server.log_text()
        assert admitted.ssl
    finally:
        for conn in held:
            conn.close()


def test_log_connections(pgtls: PgtlsLauncher, pki: Pki, no_root_cert: str) -> None:
    """
    log_connections = on logs PostgreSQL's two lines per session: the
    client's address and port, then user, database, application_name and
    the SSL part with protocol, cipher and bits (absent for plaintext).
    """
    server = pgtls.start(settings=["log_connections = on"])
    # start() itself opened and closed a connection, logged as received.
    mark = len(server.wait_for_log("connection received"))
    ssl = run_psql(at(server, sslmode="verify-full", sslrootcert=pki.ca_file))
    plain = run_psql(at(server, sslmode="disable", sslrootcert=no_root_cert))
    assert ssl.connected and plain.connected
    log = new_log(server, mark, "application_name=psql\n")
    assert len(re.findall(r"\] connection received: host=127\.0\.0\.1 port=\d+\n", log)) == 2
    assert (
        "] connection authorized: user=postgres database=postgres application_name=psql "
        "SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)\n"
    ) in log
    assert "] connection authorized: user=postgres database=postgres application_name=psql\n" in log
