"""
SCRAM channel binding through pgtls, with real libpq clients (psql 15 and
psycopg's libpq) and a real PostgreSQL 15 upstream where alice must log in
with a SCRAM password; and each session's backend PID in pgtls's log.

The upstream leg is TCP: plaintext to a PostgreSQL without SSL, or TLS to a
PostgreSQL with ``ssl = on`` through stunnel in client mode (``protocol =
pgsql``: it sends the SSLRequest and speaks TLS to PostgreSQL), which
stands in for a TLS upstream leg: what the upstream sees is a TLS session
that is not the client's, as with any TLS-terminating relay.  So the
channel-binding matrix holds whoever makes the TLS leg:

- plaintext leg: ``channel_binding=prefer`` works, ``require`` fails;
- TLS leg, another certificate upstream: a binding client is refused
  (``SCRAM channel binding check failed``) and pgtls logs why and what to
  do; ``disable`` works;
- TLS leg, pgtls's certificate and key on the upstream too: binding works
  end to end, ``require`` included.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgserver import ALICE, ALICE_PASSWORD, TEST_DB, PostgresServer, find_bindir
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir
from test_libpq import RUNNERS, Runner

from pgtls import certs

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
_START_TIMEOUT = 20.0


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


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {_START_TIMEOUT}s")


@pytest.fixture(scope="module")
def stunnel() -> str:
    """stunnel's executable (Debian's stunnel4 package, which scripts/test installs)."""
    for name in ("stunnel4", "stunnel"):
        found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
        if found:
            return found
    pytest.fail("stunnel not found: install Debian's stunnel4 package", pytrace=False)


def tls_leg(executable: str, root: Path, upstream: PostgresServer) -> Iterator[int]:
    """
    stunnel in client mode on 127.0.0.1: plaintext in, PostgreSQL's
    SSLRequest and TLS out to ``upstream``; yields its port, stops it after.
    """
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "stunnel.conf"
    config.write_text(
        "\n".join(
            [
                "foreground = yes",
                "pid =",
                "debug = 4",
                f"output = {root / 'stunnel.log'}",
                "[upstream]",
                "client = yes",
                f"accept = 127.0.0.1:{port}",
                f"connect = 127.0.0.1:{upstream.port}",
                "protocol = pgsql",
            ]
        )
        + "\n"
    )
    process = subprocess.Popen(
        [executable, str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process, "stunnel")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def pgtls_in_front_of(root: Path, pki: Pki, host: str, port: int) -> Iterator[PgtlsServer]:
    """pgtls (ssl on, pki's certificate) relaying to ``host:port`` over TCP."""
    listen = free_port()
    datadir = make_datadir(root, pki, f"host={host} port={port}", port=listen)
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
                tmp_path_factory.mktemp("plain-leg"), pki, "127.0.0.1", upstream.port
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
def other_cert_leg(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, stunnel: str
) -> Iterator[PgtlsServer]:
    """pgtls over a TLS leg to a PostgreSQL with a certificate of its own."""
    root = tmp_path_factory.mktemp("other-cert-leg")
    own = certs.issue_server_cert(certs.make_ca("upstream CA"), ["db.internal"])
    certs.write_pem(str(root / "db.crt"), own.cert)
    certs.write_key(str(root / "db.key"), own.key)
    with upstream_server(ssl_cert_file=root / "db.crt", ssl_key_file=root / "db.key") as pg:
        for port in tls_leg(stunnel, root / "stunnel", pg):
            yield from pgtls_in_front_of(root / "pgtls", pki, "127.0.0.1", port)


def test_binding_to_pgtls_certificate_is_refused_and_explained(
    client: Runner, other_cert_leg: PgtlsServer, no_root_cert: str
) -> None:
    """
    channel_binding=prefer over a TLS leg: the upstream offers PLUS, the
    client binds to pgtls's certificate, the upstream refuses; pgtls's log
    says why and what to do.
    """
    outcome = client(alice(other_cert_leg, "prefer", no_root_cert), password=ALICE_PASSWORD)
    assert not outcome.connected
    assert f"FATAL:  {CHECK_FAILED}" in outcome.error
    other_cert_leg.wait_for_log(PGTLS_EXPLAINS)


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
def shared_cert_leg(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, stunnel: str
) -> Iterator[PgtlsServer]:
    """pgtls over a TLS leg to a PostgreSQL that presents pgtls's certificate and key."""
    root = tmp_path_factory.mktemp("shared-cert-leg")
    certs.write_pem(str(root / "server.crt"), pki.server.cert)
    certs.write_key(str(root / "server.key"), pki.server.key)
    with upstream_server(ssl_cert_file=root / "server.crt", ssl_key_file=root / "server.key") as pg:
        for port in tls_leg(stunnel, root / "stunnel", pg):
            yield from pgtls_in_front_of(root / "pgtls", pki, "127.0.0.1", port)


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
    assert "channel binding" not in shared_cert_leg.log_text()
