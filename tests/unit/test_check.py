"""``pgtls check``: the start-up validation, without listening."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgtls.cli import main


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
