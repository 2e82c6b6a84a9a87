"""Tests for pgtls.admin.cli: the ``pgtls`` command's arguments, output and exit status."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

import pgtls
from pgtls.admin.cli import main


def _one_error_line(err: str) -> str:
    """The single ``pgtls: ...`` line an error prints, checked to be alone."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pgtls: ")
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints pgtls's version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pgtls {pgtls.__version__}\n"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """pgtls --help names init and client-cert, with an example."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "init" in out
    assert "client-cert" in out
    assert "pgtls init /srv/pgtls" in out


def test_init_help_says_what_it_writes(capsys: pytest.CaptureFixture[str]) -> None:
    """pgtls init --help names every file it writes, the options and examples."""
    assert main(["init", "--help"]) == 0
    out = capsys.readouterr().out
    for word in (
        "postgresql.conf",
        "pg_hba.conf",
        "pg_ident.conf",
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "root.crt",
        "0600",
        "0700",
        "verify-full",
        "--hostname",
        "--upstream",
        "--client-ca",
        "--port",
        "--listen",
        "examples:",
    ):
        assert word in out, word


def test_client_cert_help_says_what_it_writes(capsys: pytest.CaptureFixture[str]) -> None:
    """pgtls client-cert --help explains the files, --out and sslcert/sslkey, with examples."""
    assert main(["client-cert", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("NAME.crt", "NAME.key", "--out", "sslcert", "root.crt", "examples:"):
        assert word in out, word


def test_no_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """pgtls without a command prints one pgtls: line and exits 1."""
    assert main([]) == 1
    assert "COMMAND" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["frobnicate"], "invalid choice"),
        (["init"], "required: DIR"),
        (["init", "d", "--bogus"], "unrecognized arguments: --bogus"),
        (["init", "d", "--port", "http"], "invalid port 'http'"),
        (["init", "d", "--port", "70000"], "invalid port '70000'"),
        (["client-cert", "d"], "required: NAME"),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    words: str,
) -> None:
    """A bad command line prints one pgtls: line pointing to --help, exits 1, writes nothing."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert words in line
    assert "--help" in line
    assert os.listdir(tmp_path) == []


def test_init_writes_the_directory_and_prints_psql(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """pgtls init DIR writes the data files and prints the verify-full psql line."""
    directory = tmp_path / "data"
    assert main(["init", str(directory), "--hostname", "localhost", "--port", "6432"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert (
        'psql "host=localhost port=6432 user=postgres dbname=postgres sslmode=verify-full'
        f' sslrootcert={directory / "ca.crt"}"\n' in captured.out
    )
    assert stat.S_IMODE((directory / "server.key").stat().st_mode) == 0o600
    assert "port = 6432" in (directory / "postgresql.conf").read_text().splitlines()


def test_init_options_reach_the_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Repeated --hostname, --listen, --upstream and --client-ca all take effect."""
    argv = [
        "init",
        str(tmp_path),
        "--hostname",
        "db.example.com",
        "--hostname",
        "10.0.0.5",
        "--listen",
        "*",
        "--upstream",
        "host=/run/postgresql port=5433",
        "--client-ca",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    conf = (tmp_path / "postgresql.conf").read_text().splitlines()
    assert "listen_addresses = '*'" in conf
    assert "pgtls.upstream = 'host=/run/postgresql port=5433'" in conf
    assert (tmp_path / "root.crt").exists()
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["db.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert 'psql "host=db.example.com ' in out
    assert f"pgtls client-cert {tmp_path} USER" in out


def test_init_refuses_an_existing_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A second init into the same DIR exits 1 with one line naming the file; nothing changes."""
    assert main(["init", str(tmp_path), "--hostname", "localhost"]) == 0
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    capsys.readouterr()
    assert main(["init", str(tmp_path), "--hostname", "localhost", "--client-ca"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"pgtls: {tmp_path / 'postgresql.conf'} already exists; nothing was written"
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_init_bad_hostname(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A host name no certificate can carry is one pgtls: line and exit 1."""
    assert main(["init", str(tmp_path / "d"), "--hostname", "no such"]) == 1
    assert "'no such'" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "d").exists()


def test_client_cert_issues_and_prints_parameters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgtls client-cert DIR NAME writes NAME.crt/NAME.key here and prints sslcert/sslkey."""
    assert main(["init", str(tmp_path / "d"), "--hostname", "localhost", "--client-ca"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["client-cert", "d", "alice"]) == 0
    out = capsys.readouterr().out
    assert f"sslcert={tmp_path / 'alice.crt'} sslkey={tmp_path / 'alice.key'}" in out
    cert = x509.load_pem_x509_certificate((tmp_path / "alice.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600


def test_client_cert_out(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--out PREFIX decides the file names."""
    assert main(["init", str(tmp_path / "d"), "--hostname", "localhost"]) == 0
    prefix = tmp_path / "pg" / "postgresql"
    assert main(["client-cert", str(tmp_path / "d"), "bob", "--out", str(prefix)]) == 0
    assert f"sslkey={prefix}.key" in capsys.readouterr().out
    assert Path(f"{prefix}.crt").is_file()


def test_client_cert_without_ca(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """client-cert on a directory with no CA is one pgtls: line naming ca.crt, exit 1."""
    assert main(["client-cert", str(tmp_path), "alice", "--out", str(tmp_path / "a")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "ca.crt") in line
    assert os.listdir(tmp_path) == []


def test_client_cert_refuses_to_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Issuing the same NAME twice to the same place exits 1 naming the existing file."""
    assert main(["init", str(tmp_path / "d"), "--hostname", "localhost"]) == 0
    out = str(tmp_path / "alice")
    assert main(["client-cert", str(tmp_path / "d"), "alice", "--out", out]) == 0
    capsys.readouterr()
    assert main(["client-cert", str(tmp_path / "d"), "alice", "--out", out]) == 1
    assert "alice.crt already exists" in _one_error_line(capsys.readouterr().err)
