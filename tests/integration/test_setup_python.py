"""
The interpreter scripts/setup.sh makes .venv with (scripts/python.sh):
Debian's own python3 unless PGTLS_PYTHON names another, and a .venv of
another interpreter made again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "PGTLS_PYTHON"}
    environment.update(env)
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {REPO}/scripts/python.sh; {script}"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_pgtls_python_is_taken_as_given(tmp_path: Path) -> None:
    result = _bash("pick_python", tmp_path, PGTLS_PYTHON="/opt/python3.12/bin/python3")
    assert result.stdout == "/opt/python3.12/bin/python3\n", result.stderr


def test_debian_python_comes_before_path(tmp_path: Path) -> None:
    # A python3 of another build first on PATH does not win.
    shadow = tmp_path / "bin"
    shadow.mkdir()
    (shadow / "python3").symlink_to(sys.executable)
    result = _bash("pick_python", tmp_path, PATH=f"{shadow}:{os.environ['PATH']}")
    expected = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
    assert result.stdout == f"{expected}\n", result.stderr


def _fake_venv(root: Path, body: str) -> None:
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\n{body}\n")
    python.chmod(0o755)


@pytest.mark.parametrize(
    ("body", "other"),
    [
        ('echo "$REAL"', False),
        ("echo /opt/elsewhere/bin/python3.11", True),
        ("exit 1", True),
    ],
    ids=["same interpreter", "another interpreter", "does not start"],
)
def test_venv_from_other_python(tmp_path: Path, body: str, other: bool) -> None:
    _fake_venv(tmp_path, body)
    real = os.path.realpath(sys.executable)
    result = _bash(
        f"if venv_from_other_python {sys.executable}; then echo other; else echo same; fi",
        tmp_path,
        REAL=real,
    )
    assert result.stdout == ("other\n" if other else "same\n"), result.stderr
