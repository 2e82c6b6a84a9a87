"""``pgtls check``: the start-up validation, without listening."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from cryptography import x509

from pgtls.admin.check import channel_binding_lines
from pgtls.admin.cli import main
from pgtls.server.loader import load_server_config
from pgtls.tls import certs


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    assert main(["init", str(directory), "--port", "6499", "--hostname", "localhost"]) == 0
    return directory


def test_check_ok(datadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh `pgtls init` directory passes, and the report names what it loaded."""
    capsys.readouterr()
    assert main(["check", "-D", str(datadir)]) == 0
    out = capsys.readouterr().out
    assert "  port = 6499" in out
    assert "  ssl = on" in out
    assert "names: localhost" in out
    assert "client certificates: not requested" in out
    assert "pg_hba.conf: 2 rule(s)" in out
    assert out.endswith("pgtls check: OK, the server would start\n")


def test_check_override(datadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-c NAME=VALUE is applied as twistd pgtls -c would."""
    capsys.readouterr()
    assert main(["check", "-D", str(datadir), "-c", "port=7000", "-c", "ssl=off"]) == 0
    out = capsys.readouterr().out
    assert "  port = 7000" in out
    assert "ssl: off" in out


def test_check_refuses_readable_key(datadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key others can read stops the check with PostgreSQL's one-line message, exit 1."""
    os.chmod(datadir / "server.key", 0o644)
    capsys.readouterr()
    assert main(["check", "-D", str(datadir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith('pgtls: private key file "server.key" has group or world')
    assert err.count("\n") == 1


def test_check_bad_conf_names_file_and_line(
    datadir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad postgresql.conf line is reported as FILE:LINE: reason."""
    conf = datadir / "postgresql.conf"
    lines = conf.read_text().splitlines()
    conf.write_text("\n".join([*lines, "no_such_setting = 1"]) + "\n")
    capsys.readouterr()
    assert main(["check", "-D", str(datadir)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f'pgtls: {conf}:{len(lines) + 1}: unrecognized configuration parameter "no_such_setting"\n'
    )


def test_check_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A data directory that does not exist is one clear line."""
    assert main(["check", "-D", str(tmp_path / "nope")]) == 1
    assert "data directory does not exist" in capsys.readouterr().err


def test_check_names_every_bad_hba_line(datadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Several bad pg_hba.conf lines: one `pgtls: FILE:LINE: reason` line for each, exit 1."""
    hba_file = datadir / "pg_hba.conf"
    hba_file.write_text("hostx all all all trust\nhost all all 127.0.0.1/32 bogus\n")
    capsys.readouterr()
    assert main(["check", "-D", str(datadir)]) == 1
    assert capsys.readouterr().err == (
        f'pgtls: {hba_file}:1: invalid connection type "hostx"\n'
        f'pgtls: {hba_file}:2: invalid authentication method "bogus"\n'
    )


def test_check_refuses_a_bad_metrics_listen(
    datadir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pgtls.metrics_listen Twisted cannot parse stops the check at its source, in our words."""
    capsys.readouterr()
    assert main(["check", "-D", str(datadir), "-c", "pgtls.metrics_listen=tcp:abc"]) == 1
    assert capsys.readouterr().err == (
        'pgtls: command line: invalid value for parameter "pgtls.metrics_listen": "tcp:abc": '
        "not a server endpoint string (write one such as tcp:9187:interface=127.0.0.1)\n"
    )


def test_check_notes_channel_binding_on_a_unix_socket_upstream(
    datadir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Unix-socket upstream never uses TLS: prefer works, require fails, and check says so."""
    capsys.readouterr()
    assert main(["check", "-D", str(datadir), "-c", "pgtls.upstream=host=/tmp"]) == 0
    out = capsys.readouterr().out
    assert "  note: channel binding: the upstream leg is not TLS" in out
    assert "channel_binding=require fails" in out


def test_check_says_nothing_of_channel_binding_with_ssl_off(
    datadir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clients never use TLS to pgtls, so never bind: nothing to say."""
    capsys.readouterr()
    assert main(["check", "-D", str(datadir), "-c", "ssl=off"]) == 0
    assert "channel binding" not in capsys.readouterr().out


def test_channel_binding_lines_for_a_tls_upstream_leg(datadir: Path) -> None:
    """The upstream's certificate: a note when it is pgtls's own, a warning when not."""
    config = load_server_config(str(datadir))
    ours = x509.load_pem_x509_certificate((datadir / "server.crt").read_bytes())
    other = certs.issue_server_cert(certs.make_ca("upstream CA"), ["db.internal"]).cert
    (same,) = channel_binding_lines(config, ours)
    assert same.startswith("  note: channel binding: pgtls presents the upstream's own")
    (different,) = channel_binding_lines(config, other)
    assert different.startswith("  warning: channel binding: pgtls's certificate (subject ")
    assert "channel_binding=disable" in different


def test_check_refuses_an_unresolvable_listen_address(
    datadir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    listen_addresses naming a host that does not resolve fails the check as
    it fails the server: at the line that set it, in PostgreSQL's words.
    """

    def getaddrinfo(*args: object, **kwargs: object) -> object:
        # No DNS query from a unit test: every name fails as .invalid does.
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    conf_file = datadir / "postgresql.conf"
    with conf_file.open("a") as f:
        f.write("listen_addresses = 'nosuchhost.invalid'\n")
    line = len(conf_file.read_text().splitlines())
    capsys.readouterr()
    assert main(["check", "-D", str(datadir)]) == 1
    assert capsys.readouterr().err == (
        f"pgtls: {conf_file}:{line}: listen_addresses: could not translate host name "
        '"nosuchhost.invalid", service "6499" to address: Name or service not known\n'
    )
    assert main(["check", "-D", str(datadir), "-c", "listen_addresses=nosuchhost.invalid"]) == 1
    assert capsys.readouterr().err.startswith(
        "pgtls: command line: listen_addresses: could not translate host name"
    )
