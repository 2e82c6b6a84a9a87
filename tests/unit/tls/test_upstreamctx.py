"""
Tests for pgtls.tls.upstreamctx (the upstream leg's client context) and the
start-up warning of pgtls.server.upstreamcheck.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgtls.core.conninfo import parse_conninfo, resolve_files
from pgtls.server.loader import StartupError, load_server_config
from pgtls.server.upstreamcheck import upstream_warnings
from pgtls.tls import certs
from pgtls.tls.negotiation import FailureReason
from pgtls.tls.upstreamctx import (
    UpstreamTLSError,
    Verification,
    check_client_key_permissions,
    describe_handshake_failure,
    load_upstream_tls,
)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    ca = certs.make_ca("ctx CA")
    certs.write_pem(str(tmp_path / "ca.crt"), ca.cert)
    client = certs.issue_client_cert(ca, "app")
    certs.write_pem(str(tmp_path / "app.crt"), client.cert)
    certs.write_key(str(tmp_path / "app.key"), client.key)
    certs.write_key(str(tmp_path / "enc.key"), client.key, passphrase=b"secret")
    certs.write_pem(str(tmp_path / "root.crl"), certs.make_crl(ca))
    return tmp_path


def upstream(text: str, directory: Path):  # type: ignore[no-untyped-def]
    return resolve_files(parse_conninfo(text), str(directory))


def test_no_context_without_tls(files: Path) -> None:
    """A Unix socket or sslmode=disable: no client context at all."""
    assert load_upstream_tls(upstream("host=/run/pg sslmode=require", files)) is None
    assert load_upstream_tls(upstream("host=db sslmode=disable", files)) is None


def test_verifying_context(files: Path) -> None:
    """verify-full with a root file, a CRL and a client certificate loads and verifies."""
    tls = load_upstream_tls(
        upstream(
            "host=db sslmode=verify-full sslrootcert=ca.crt sslcrl=root.crl "
            "sslcert=app.crt sslkey=app.key",
            files,
        )
    )
    assert tls is not None and tls.verifies
    assert tls.certificate is not None
    connection, verification = tls.new_connection()
    assert connection.get_servername() == b"db"
    assert verification == Verification()


def test_require_without_root_does_not_verify(files: Path) -> None:
    """require: encrypted, unverified (libpq), unless a root file is named."""
    tls = load_upstream_tls(upstream("host=db sslmode=require", files))
    assert tls is not None and not tls.verifies
    named = load_upstream_tls(upstream("host=db sslmode=require sslrootcert=ca.crt", files))
    assert named is not None and named.verifies


def test_no_sni_for_an_address_or_sslsni_0(files: Path) -> None:
    """SNI carries a host name only: not an IP literal, not with sslsni=0."""
    for text in ("host=10.0.0.1 sslmode=require", "host=db sslmode=require sslsni=0"):
        tls = load_upstream_tls(upstream(text, files))
        assert tls is not None
        assert tls.new_connection()[0].get_servername() is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sslmode=verify-ca", "sslmode=verify-ca needs sslrootcert"),
        ("sslmode=verify-full sslrootcert=nope.crt", 'root certificate file "'),
        ("sslmode=require sslrootcert=ca.crt sslcrl=nope.crl", "revocation list file"),
        ("sslmode=require sslcrl=root.crl", "needs sslrootcert"),
        ("sslmode=require sslcert=app.crt", "certificate present, but not private key file"),
        ("sslmode=require sslkey=app.key", "is set but sslcert is not"),
        ("sslmode=require sslcert=nope.crt sslkey=app.key", "could not open certificate file"),
        ("sslmode=require sslcert=app.crt sslkey=enc.key", "could not load private key file"),
    ],
)
def test_bad_files(files: Path, text: str, message: str) -> None:
    """A missing or unusable file named in pgtls.upstream stops the start."""
    with pytest.raises(UpstreamTLSError, match=message):
        load_upstream_tls(upstream(f"host=db {text}", files))


def test_encrypted_key_with_sslpassword(files: Path) -> None:
    """sslpassword decrypts an encrypted client key."""
    tls = load_upstream_tls(
        upstream("host=db sslmode=require sslcert=app.crt sslkey=enc.key sslpassword=secret", files)
    )
    assert tls is not None and tls.certificate is not None


def test_key_permissions_as_libpq(files: Path) -> None:
    """A key of pgtls's user must be 0600 or less; a root-owned key may be 0640."""
    key = files / "app.key"
    key.chmod(0o640)
    euid = os.stat(key).st_uid
    with pytest.raises(UpstreamTLSError, match="has group or world access"):
        check_client_key_permissions(str(key), euid=euid)
    if euid == 0:
        # Owned by root, group-readable, read by another user: allowed (libpq's rule).
        check_client_key_permissions(str(key), euid=12345)
    key.chmod(0o600)
    check_client_key_permissions(str(key), euid=euid)
    with pytest.raises(UpstreamTLSError, match="is not a regular file"):
        check_client_key_permissions(str(files), euid=euid)


def test_handshake_failure_words() -> None:
    """A verification error names OpenSSL's reason and a typed label."""
    from OpenSSL import SSL

    error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert describe_handshake_failure(Verification(10, 0), error) == (
        FailureReason.CERTIFICATE_EXPIRED,
        "SSL error: certificate verify failed (certificate has expired)",
    )
    assert describe_handshake_failure(Verification(23, 0), error)[0] is (
        FailureReason.CERTIFICATE_REVOKED
    )
    alert = SSL.Error([("SSL routines", "", "tlsv1 alert protocol version")])
    assert describe_handshake_failure(None, alert) == (
        FailureReason.HANDSHAKE_FAILED,
        "SSL error: tlsv1 alert protocol version",
    )


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        ("host=db.internal", True),
        ("host=10.1.2.3 sslmode=allow", True),
        ("host=db.internal sslmode=require", False),
        ("host=127.0.0.1 sslmode=disable", False),
        ("host=localhost", False),
        ("host=::1", False),
        ("host=/run/pg", False),
    ],
)
def test_start_warning_for_a_remote_upstream_without_tls(text: str, warned: bool) -> None:
    """A TCP upstream off this machine with sslmode below require: one warning."""
    warnings = upstream_warnings(parse_conninfo(text))
    assert bool(warnings) is warned
    if warned:
        assert "use sslmode=verify-full" in warnings[0]


def start_error(datadir: Path, conf: str) -> str:
    """The start-up error of a data directory with this postgresql.conf."""
    (datadir / "postgresql.conf").write_text(conf)
    (datadir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    (datadir / "pg_ident.conf").write_text("")
    with pytest.raises(StartupError) as caught:
        load_server_config(str(datadir))
    return str(caught.value)


def test_start_error_names_the_line(tmp_path: Path) -> None:
    """A file error in pgtls.upstream is a start-up error at postgresql.conf:line."""
    message = start_error(
        tmp_path,
        "port = 6432\npgtls.upstream = 'host=db sslmode=verify-full sslrootcert=missing.crt'\n",
    )
    assert message.startswith(
        f'{tmp_path}/postgresql.conf:2: invalid value for parameter "pgtls.upstream": '
        f'root certificate file "{tmp_path}/missing.crt" does not exist'
    )


def test_probe_unix_socket_answers(tmp_path: Path) -> None:
    """pgtls check: a listening Unix socket answers; a missing one is a warning."""
    import socket

    from pgtls.server.upstreamcheck import probe_upstream

    upstream = parse_conninfo(f"host={tmp_path} port=5499")
    missing = probe_upstream(upstream, None, timeout=2)
    assert missing[1] == (
        f"  warning: the upstream server at {tmp_path}/.s.PGSQL.5499 does not answer: "
        "No such file or directory"
    )
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(upstream.unix_socket_path)
        listening.listen()
        lines = probe_upstream(upstream, None, timeout=2)
    assert lines[1] == (
        f"  the upstream server at {tmp_path}/.s.PGSQL.5499 answers (no SSL on this leg)"
    )


def test_probe_tcp_n_and_silence(tmp_path: Path) -> None:
    """pgtls check on TCP: N with prefer answers without SSL; N with require is a warning."""
    import socket
    import threading

    from pgtls.server.upstreamcheck import probe_upstream

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]

        def answer_n() -> None:
            for _ in range(2):
                conn, _ = listening.accept()
                with conn:
                    conn.recv(8)
                    conn.sendall(b"N")

        thread = threading.Thread(target=answer_n)
        thread.start()
        prefer = parse_conninfo(f"host=127.0.0.1 port={port}")
        require = parse_conninfo(f"host=127.0.0.1 port={port} sslmode=require")
        assert probe_upstream(prefer, load_upstream_tls(prefer), timeout=5)[1] == (
            f"  the upstream server at 127.0.0.1:{port} answers without SSL"
        )
        assert probe_upstream(require, load_upstream_tls(require), timeout=5)[1] == (
            f"  warning: could not connect to the upstream server at 127.0.0.1:{port}: "
            "server does not support SSL, but SSL was required"
        )
        thread.join(5)


def test_bad_upstream_value_hides_sslpassword(tmp_path: Path) -> None:
    """A start-up error that shows pgtls.upstream's text never shows its sslpassword."""
    conf = "pgtls.upstream = 'host=db sslpassword=hunter2 sslmode=bogus'\n"
    message = start_error(tmp_path, conf)
    assert f"{tmp_path}/postgresql.conf:1: " in message
    assert 'invalid sslmode value: "bogus"' in message
    assert "hunter2" not in message and "sslpassword=********" in message
