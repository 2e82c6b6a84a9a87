"""
SCRAM channel binding through pgtls, with real libpq clients (psql 15 and
psycopg's libpq) and a real PostgreSQL 15 upstream where alice must log in
with a SCRAM password; and each session's backend PID in pgtls's log.

The upstream leg is TCP: plaintext to a PostgreSQL without SSL, or TLS to a
PostgreSQL with ``ssl = on``.  The TLS leg is made by stunnel in client mode
(``protocol = pgsql``: it sends the SSLRequest and speaks TLS to
PostgreSQL) and, where pgtls.upstream takes ``sslmode``, by pgtls itself.
Either way the upstream sees a TLS session that is not the client's, so the
channel-binding matrix is the same:

- plaintext leg: ``channel_binding=prefer`` works, ``require`` fails;
- TLS leg, another certificate upstream: a binding client is refused
  (``SCRAM channel binding check failed``) and pgtls logs why and what to
  do; ``disable`` works;
- TLS leg, pgtls's certificate and key on the upstream too: binding works
  end to end, ``require`` included.

On pgtls's own TLS leg, pgtls also compares the certificates and says so.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pgserver import ALICE, ALICE_PASSWORD, TEST_DB, PostgresServer, find_bindir
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir
from test_libpq import RUNNERS, Runner

from pgtls import certs
from pgtls.conninfo import parse_conninfo

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


def _upstream_tls() -> bool:
    """Whether pgtls.upstream takes libpq's sslmode (pgtls with a TLS upstream leg)."""
    try:
        parse_conninfo("host=127.0.0.1 sslmode=require")
    except ValueError:
        return False
    return True


UPSTREAM_TLS = _upstream_tls()
#: Who makes the TLS upstream leg: stunnel between pgtls and PostgreSQL, and
#: pgtls itself where it can.
LEGS = ["pgtls", "stunnel"] if UPSTREAM_TLS else ["stunnel"]


def plaintext_leg(port: int) -> str:
    """
    pgtls.upstream for a plaintext TCP leg to 127.0.0.1:``port``: with
    sslmode=disable where pgtls knows sslmode, whose default (prefer) would
    try TLS first.
    """
    return f"host=127.0.0.1 port={port}" + (" sslmode=disable" if UPSTREAM_TLS else "")


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


def pgtls_in_front_of(root: Path, pki: Pki, upstream: str) -> Iterator[PgtlsServer]:
    """pgtls (ssl on, pki's certificate) relaying to the conninfo ``upstream``."""
    listen = free_port()
    datadir = make_datadir(root, pki, upstream, port=listen)
    with PgtlsServer(datadir, listen) as server:
        yield server


@dataclass(frozen=True)
class Front:
    """pgtls in front of a TLS upstream leg, and who makes the leg."""

    server: PgtlsServer
    leg: str


def tls_leg_pgtls(leg: str, root: Path, pki: Pki, upstream: PostgresServer) -> Iterator[Front]:
    """
    pgtls in front of ``upstream`` over a TLS leg: its own (``sslmode=require``
    in pgtls.upstream), or stunnel's in between.
    """
    if leg == "pgtls":
        conninfo = f"host=127.0.0.1 port={upstream.port} sslmode=require"
        for server in pgtls_in_front_of(root / "pgtls", pki, conninfo):
            yield Front(server, leg)
        return
    for port in tls_leg(stunnel(), root / "stunnel", upstream):
        for server in pgtls_in_front_of(root / "pgtls", pki, plaintext_leg(port)):
            yield Front(server, leg)


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


@pytest.fixture(scope="module", params=LEGS)
def other_cert_leg(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[Front]:
    """pgtls over a TLS leg to a PostgreSQL with a certificate of its own."""
    root = tmp_path_factory.mktemp("other-cert-leg")
    own = certs.issue_server_cert(certs.make_ca("upstream CA"), ["db.internal"])
    certs.write_pem(str(root / "db.crt"), own.cert)
    certs.write_key(str(root / "db.key"), own.key)
    with upstream_server(ssl_cert_file=root / "db.crt", ssl_key_file=root / "db.key") as pg:
        yield from tls_leg_pgtls(request.param, root, pki, pg)


def test_binding_to_pgtls_certificate_is_refused_and_explained(
    client: Runner, other_cert_leg: Front, no_root_cert: str
) -> None:
    """
    channel_binding=prefer over a TLS leg: the upstream offers PLUS, the
    client binds to pgtls's certificate, the upstream refuses; pgtls's log
    says why and what to do.
    """
    outcome = client(alice(other_cert_leg.server, "prefer", no_root_cert), password=ALICE_PASSWORD)
    assert not outcome.connected
    assert f"FATAL:  {CHECK_FAILED}" in outcome.error
    log = other_cert_leg.server.wait_for_log(PGTLS_EXPLAINS)
    if other_cert_leg.leg == "pgtls":
        # pgtls's own leg saw the upstream's certificate, and warned once.
        verdict = "[pgtls.frontdoor.FrontDoorFactory#warn] channel binding: pgtls's certificate"
        assert log.count(verdict) == 1, log


def test_require_is_refused_too(client: Runner, other_cert_leg: Front, no_root_cert: str) -> None:
    """channel_binding=require: the same refusal."""
    outcome = client(alice(other_cert_leg.server, "require", no_root_cert), password=ALICE_PASSWORD)
    assert not outcome.connected
    assert f"FATAL:  {CHECK_FAILED}" in outcome.error


def test_disable_works(client: Runner, other_cert_leg: Front, no_root_cert: str) -> None:
    """channel_binding=disable, as pgtls's log advises: SCRAM without binding, logged in."""
    outcome = client(alice(other_cert_leg.server, "disable", no_root_cert), password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    assert (outcome.ssl, outcome.value) == (True, ALICE)


# -- a TLS upstream leg, pgtls's own certificate -----------------------------


@pytest.fixture(scope="module", params=LEGS)
def shared_cert_leg(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[Front]:
    """pgtls over a TLS leg to a PostgreSQL that presents pgtls's certificate and key."""
    root = tmp_path_factory.mktemp("shared-cert-leg")
    certs.write_pem(str(root / "server.crt"), pki.server.cert)
    certs.write_key(str(root / "server.key"), pki.server.key)
    with upstream_server(ssl_cert_file=root / "server.crt", ssl_key_file=root / "server.key") as pg:
        yield from tls_leg_pgtls(request.param, root, pki, pg)


@pytest.mark.parametrize("channel_binding", ["prefer", "require"])
def test_a_shared_certificate_binds_end_to_end(
    client: Runner, shared_cert_leg: Front, no_root_cert: str, channel_binding: str
) -> None:
    """
    The same certificate and key on pgtls and the upstream: the client's
    tls-server-end-point hash is the upstream's, and binding passes,
    channel_binding=require included.
    """
    params = alice(shared_cert_leg.server, channel_binding, no_root_cert)
    outcome = client(params, password=ALICE_PASSWORD)
    assert outcome.connected, outcome.error
    assert (outcome.ssl, outcome.value) == (True, ALICE)
    log = shared_cert_leg.server.log_text()
    assert "refused SCRAM channel binding" not in log
    assert "channel binding: pgtls's certificate" not in log
    if shared_cert_leg.leg == "pgtls":
        assert (
            "[pgtls.frontdoor.FrontDoorFactory#info] channel binding: pgtls presents the "
            "upstream's own certificate"
        ) in log
