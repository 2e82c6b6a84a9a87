"""
SCRAM channel binding through pgtls, with real libpq clients (psql 15 and
psycopg's libpq) and a real PostgreSQL 15 upstream where alice must log in
with a SCRAM password; and each session's backend PID in pgtls's log.

The upstream leg is TCP: plaintext to a PostgreSQL without SSL
(``sslmode=disable``), or pgtls's own TLS leg (``sslmode=verify-full``) to
a PostgreSQL with ``ssl = on``.  The upstream sees a TLS session that is
not the client's, so:

- plaintext leg: ``channel_binding=prefer`` works, ``require`` fails;
- TLS leg, another certificate upstream: a binding client is refused
  (``SCRAM channel binding check failed``) and pgtls logs why and what to
  do; ``disable`` works;
- TLS leg, pgtls's certificate and key on the upstream too: binding works
  end to end, ``require`` included.

pgtls also compares the certificates and says so, in its log and in
``pgtls check``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from libpqclients import RUNNERS, Runner
from pgserver import ALICE, ALICE_PASSWORD, TEST_DB, PostgresServer, find_bindir
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir
from tlsupstream import UpstreamPki

from pgtls.admin.check import check_report
from pgtls.tls import certs

CHECK_FAILED = "SCRAM channel binding check failed"
NOT_OFFERED = (
    "channel binding is required, but server did not offer an authentication "
    "method that supports channel binding"
)
PGTLS_EXPLAINS = (
    "upstream refused SCRAM channel binding for host=127.0.0.1 user=alice: "
    "SCRAM channel binding check failed: the client bound its password exchange to "
    "pgtls's certificate, and the upstream checks it against its own; SCRAM clients "
    "must connect with channel_binding=disable, or pgtls must present the upstream's "
    "own certificate and key (ssl_cert_file, ssl_key_file)"
)


def plaintext_leg(port: int) -> str:
    """pgtls.upstream for a plaintext TCP leg to 127.0.0.1:``port``."""
    return f"host=127.0.0.1 port={port} sslmode=disable"


def tls_leg(port: int, root_cert: Path) -> str:
    """pgtls.upstream for pgtls's own TLS leg to 127.0.0.1:``port``, verified as libpq would."""
    return f"host=127.0.0.1 port={port} sslmode=verify-full sslrootcert={root_cert}"


def alice(server: PgtlsServer, channel_binding: str, no_root_cert: str) -> dict[str, object]:
    """alice's connection to pgtls over TLS, with this channel_binding."""
    return {
        "host": "localhost",
        "port": server.port,
        "user": ALICE,
        "dbname": TEST_DB,
        "sslmode": "require",
        "sslrootcert": no_root_cert,
        "channel_binding": channel_binding,
    }


def pgtls_in_front_of(root: Path, pki: Pki, upstream: str) -> Iterator[PgtlsServer]:
    """pgtls (ssl on, pki's certificate) relaying to the conninfo ``upstream``."""
    listen = free_port()
    datadir = make_datadir(root, pki, upstream, port=listen)
    with PgtlsServer(datadir, listen) as server:
        yield server


def upstream_server(**options: Any) -> PostgresServer:
    """A PostgreSQL on 127.0.0.1 whose alice logs in with SCRAM (pgserver's DEFAULT_HBA)."""
    return PostgresServer(bindir=find_bindir(), tcp=True, **options)


# -- the plaintext upstream leg ----------------------------------------------


@pytest.fixture(scope="module")
def plain_leg(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[tuple[PgtlsServer, PostgresServer]]:
    """pgtls over a plaintext TCP leg to a PostgreSQL without SSL."""
    with upstream_server() as upstream:
        yield from (
            (server, upstream)
            for server in pgtls_in_front_of(
                tmp_path_factory.mktemp("plain-leg"), pki, plaintext_leg(upstream.port)
            )
        )


def test_prefer_works_over_a_plaintext_leg(
    client: Runner, plain_leg: tuple[PgtlsServer, PostgresServer], no_root_cert: str
) -> None:
    """libpq's default channel_binding=prefer: SCRAM without binding, logged in."""
    server, _ = plain_leg
    outcome = client(alice(server, "prefer", no_root_cert), password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    assert (outcome.ssl, outcome.value) == (True, ALICE)


def test_require_fails_over_a_plaintext_leg(
    client: Runner, plain_leg: tuple[PgtlsServer, PostgresServer], no_root_cert: str
) -> None:
    """channel_binding=require: the upstream offers no PLUS, and libpq refuses, as it does."""
    server, _ = plain_leg
    outcome = client(alice(server, "require", no_root_cert), password=ALICE_PASSWORD)
    assert not outcome.connected
    assert NOT_OFFERED in outcome.error


def test_the_session_line_names_the_backend_pid(
    client: Runner, plain_leg: tuple[PgtlsServer, PostgresServer], no_root_cert: str
) -> None:
    """backend_pid in the session line is the session's own pg_backend_pid()."""
    server, _ = plain_leg
    params = alice(server, "prefer", no_root_cert)
    outcome = client(params, "select pg_backend_pid()", password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    pid = int(outcome.value)
    log = server.wait_for_log(f" backend_pid={pid} ")
    (line,) = [line for line in log.splitlines() if f" backend_pid={pid} " in line]
    assert re.search(r"session host=127\.0\.0\.1 port=\d+ user=alice database=pgtls_test", line)
    assert "outcome=relayed" in line


# -- a TLS upstream leg, another certificate ---------------------------------


@pytest.fixture(scope="module")
def other_cert_leg(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[PgtlsServer]:
    """pgtls over its TLS leg to a PostgreSQL with a certificate of its own (another CA)."""
    root = tmp_path_factory.mktemp("other-cert-leg")
    upstream_pki = UpstreamPki(root / "upstream-pki")
    with upstream_server(
        ssl_cert_file=upstream_pki.server_cert, ssl_key_file=upstream_pki.server_key
    ) as pg:
        yield from pgtls_in_front_of(root / "pgtls", pki, tls_leg(pg.port, upstream_pki.ca_file))


def test_binding_to_pgtls_certificate_is_refused_and_explained(
    client: Runner, other_cert_leg: PgtlsServer, no_root_cert: str
) -> None:
    """
    channel_binding=prefer over a TLS leg: the upstream offers PLUS, the
    client binds to pgtls's certificate, the upstream refuses; pgtls's log
    says why and what to do, and warned once of the certificates.
    """
    outcome = client(alice(other_cert_leg, "prefer", no_root_cert), password=ALICE_PASSWORD)
    assert not outcome.connected
    assert f"FATAL:  {CHECK_FAILED}" in outcome.error
    log = other_cert_leg.wait_for_log(PGTLS_EXPLAINS)
    verdict = "[pgtls.relay.frontdoor.FrontDoorFactory#warn] channel binding: pgtls's certificate"
    assert log.count(verdict) == 1, log


def test_require_is_refused_too(
    client: Runner, other_cert_leg: PgtlsServer, no_root_cert: str
) -> None:
    """channel_binding=require: the same refusal."""
    outcome = client(alice(other_cert_leg, "require", no_root_cert), password=ALICE_PASSWORD)
    assert not outcome.connected
    assert f"FATAL:  {CHECK_FAILED}" in outcome.error


def test_disable_works(client: Runner, other_cert_leg: PgtlsServer, no_root_cert: str) -> None:
    """channel_binding=disable, as pgtls's log advises: SCRAM without binding, logged in."""
    outcome = client(alice(other_cert_leg, "disable", no_root_cert), password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    assert (outcome.ssl, outcome.value) == (True, ALICE)


# -- a TLS upstream leg, pgtls's own certificate -----------------------------


@pytest.fixture(scope="module")
def shared_cert_leg(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[PgtlsServer]:
    """pgtls over its TLS leg to a PostgreSQL that presents pgtls's certificate and key."""
    root = tmp_path_factory.mktemp("shared-cert-leg")
    certs.write_pem(str(root / "server.crt"), pki.server.cert)
    certs.write_key(str(root / "server.key"), pki.server.key)
    with upstream_server(ssl_cert_file=root / "server.crt", ssl_key_file=root / "server.key") as pg:
        yield from pgtls_in_front_of(root / "pgtls", pki, tls_leg(pg.port, pki.ca_file))


@pytest.mark.parametrize("channel_binding", ["prefer", "require"])
def test_a_shared_certificate_binds_end_to_end(
    client: Runner, shared_cert_leg: PgtlsServer, no_root_cert: str, channel_binding: str
) -> None:
    """
    The same certificate and key on pgtls and the upstream: the client's
    tls-server-end-point hash is the upstream's, and binding passes,
    channel_binding=require included.
    """
    params = alice(shared_cert_leg, channel_binding, no_root_cert)
    outcome = client(params, password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    assert (outcome.ssl, outcome.value) == (True, ALICE)
    log = shared_cert_leg.log_text()
    assert "refused SCRAM channel binding" not in log
    assert "channel binding: pgtls's certificate" not in log
    assert (
        "[pgtls.relay.frontdoor.FrontDoorFactory#info] channel binding: pgtls presents the "
        "upstream's own certificate"
    ) in log


def test_the_session_line_names_the_backend_pid_on_a_tls_leg(
    client: Runner, shared_cert_leg: PgtlsServer, no_root_cert: str
) -> None:
    """
    On a TLS leg too (relayed by the fast path when it is on), backend_pid
    in the session line is the session's own pg_backend_pid().
    """
    params = alice(shared_cert_leg, "require", no_root_cert)
    outcome = client(params, "select pg_backend_pid()", password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    pid = int(outcome.value)
    log = shared_cert_leg.wait_for_log(f" backend_pid={pid} ")
    (line,) = [line for line in log.splitlines() if f" backend_pid={pid} " in line]
    assert "ssl=on" in line and "outcome=relayed" in line


def test_check_reports_the_certificates(
    other_cert_leg: PgtlsServer, shared_cert_leg: PgtlsServer
) -> None:
    """pgtls check's probe: a warning for another certificate, a note for pgtls's own."""
    other = check_report(str(other_cert_leg.datadir))
    assert "  warning: channel binding: pgtls's certificate (subject CN=localhost" in other
    shared = check_report(str(shared_cert_leg.datadir))
    assert "  note: channel binding: pgtls presents the upstream's own certificate" in shared


# -- the check at start, before any client -----------------------------------

# What PostgreSQL 15 would log for a leg closed badly before its startup packet.
UPSTREAM_COMPLAINTS = ("incomplete startup packet", "could not receive data", "SSL error")


def _started_without_clients(
    root: Path, pki: Pki, upstream_conninfo: str, expected: str
) -> PgtlsServer:
    """Start pgtls, wait for ``expected`` in its log (no client connects), stop it."""
    listen = free_port()
    with PgtlsServer(make_datadir(root, pki, upstream_conninfo, port=listen), listen) as server:
        server.wait_for_log(expected)
        # The readiness probe of PgtlsServer.start waits in the listen
        # backlog until the reactor accepts it: stopping before then would
        # lose its session line.
        server.wait_for_log("user=[unknown]")
    return server


@pytest.mark.parametrize("shared", [False, True], ids=["other-cert", "shared-cert"])
def test_the_certificates_are_compared_at_start(tmp_path: Path, pki: Pki, shared: bool) -> None:
    """
    At start, before any client, pgtls opens one upstream leg, judges the
    upstream's certificate (a warning for another one, a note for its own),
    and closes the leg before any StartupMessage: the upstream complains of
    nothing.
    """
    if shared:
        certs.write_pem(str(tmp_path / "server.crt"), pki.server.cert)
        certs.write_key(str(tmp_path / "server.key"), pki.server.key)
        cert, key, ca = tmp_path / "server.crt", tmp_path / "server.key", pki.ca_file
        expected = (
            "[pgtls.relay.frontdoor.FrontDoorFactory#info] channel binding: pgtls presents the "
            "upstream's own certificate"
        )
    else:
        upstream_pki = UpstreamPki(tmp_path / "upstream-pki")
        cert, key, ca = upstream_pki.server_cert, upstream_pki.server_key, upstream_pki.ca_file
        expected = (
            "[pgtls.relay.frontdoor.FrontDoorFactory#warn] channel binding: pgtls's certificate"
        )
    settings = {"log_connections": "on"}
    with upstream_server(ssl_cert_file=cert, ssl_key_file=key, settings=settings) as pg:
        server = _started_without_clients(tmp_path / "pgtls", pki, tls_leg(pg.port, ca), expected)
        upstream_log = pg.settled_log()
    log = server.log_text()
    assert log.count("channel binding:") == 1, log
    # Only the readiness probe of PgtlsServer.start, which sends nothing, connected.
    assert "user=[unknown]" in log and "outcome=relayed" not in log, log
    assert "connection received: host=127.0.0.1" in upstream_log
    for complaint in UPSTREAM_COMPLAINTS:
        assert complaint not in upstream_log, upstream_log


def test_an_upstream_down_at_start_waits_for_the_first_session(
    tmp_path: Path, pki: Pki, no_root_cert: str
) -> None:
    """The upstream is down at start: one line says so, and pgtls serves all the same."""
    port = free_port()
    listen = free_port()
    datadir = make_datadir(tmp_path, pki, tls_leg(port, pki.ca_file), port=listen)
    with PgtlsServer(datadir, listen) as server:
        log = server.wait_for_log("the check waits for the first session")
        assert (
            f"channel binding: could not check the upstream server's certificate at start "
            f"(127.0.0.1:{port}: Connection refused)"
        ) in log
        client = RUNNERS[sorted(RUNNERS)[0]]
        outcome = client(alice(server, "disable", no_root_cert), password=ALICE_PASSWORD)
        # Served: the FATAL pgtls gives for an unreachable upstream.
        assert not outcome.connected
        assert "the database system is not accepting connections" in outcome.error
        assert server.process is not None and server.process.poll() is None
