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
from pgserver import ALICE, ALICE_PASSWORD, TEST_DB, PostgresServer, find_bindir
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir
from test_libpq import RUNNERS, Runner
from tlsupstream import UpstreamPki

from pgtls import certs
from pgtls.check import check_report

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


@pytest.fixture(params=sorted(RUNNERS))
def client(request: pytest.FixtureRequest) -> Runner:
    """Each test using this runs once with psql 15 and once with psycopg."""
    return RUNNERS[request.param]


@pytest.fixture(scope="module")
def no_root_cert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A root certificate file that does not exist: sslmode=require verifies nothing."""
    return str(tmp_path_factory.mktemp("client") / "absent-root.crt")


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
    verdict = "[pgtls.frontdoor.FrontDoorFactory#warn] channel binding: pgtls's certificate"
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
        "[pgtls.frontdoor.FrontDoorFactory#info] channel binding: pgtls presents the "
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
