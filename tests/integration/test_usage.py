"""
``twistd pgtls`` usage errors, run through the real twistd: one line
``pgtls: …`` and exit status 1, as ``postgres -x`` answers, not twistd's
usage text followed by the error.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pgtlsproc import TWISTD

HINT = " (see twistd pgtls --help)"


def twistd_pgtls(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``twistd --nodaemon --pidfile= pgtls ARGS`` without $PGDATA."""
    env = {k: v for k, v in os.environ.items() if k != "PGDATA"}
    return subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "pgtls", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no data directory: give -D DIR or set PGDATA"),
        (["-D", "data", "-c", "ssl"], "-c takes NAME=VALUE, not 'ssl'"),
        (["-D", "data", "-x"], "option -x not recognized"),
        (["-D", "data", "--bogus"], "option --bogus not recognized"),
    ],
)
def test_usage_error_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """A usage error of pgtls's own: exactly one line on stderr, nothing on stdout, status 1."""
    result = twistd_pgtls(args, tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"pgtls: {message}{HINT}\n"


def test_help_is_still_the_usage_text(tmp_path: Path) -> None:
    """--help is not an error: the usage text on stdout, status 0."""
    result = twistd_pgtls(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: twistd [options] pgtls" in result.stdout
