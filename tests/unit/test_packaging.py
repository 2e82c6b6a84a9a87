"""
The distribution's metadata: its version is ``pgtls.__version__`` (kept in
that one place; setup.cfg reads it), and it carries the MIT licence text.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pgtls

REPO = Path(__file__).resolve().parents[2]


def test_distribution_version_is_the_package_version() -> None:
    """setup.cfg takes the version from pgtls.__version__, which pip installed."""
    assert metadata.version("pgtls") == pgtls.__version__
    assert "version = attr: pgtls.__version__" in (REPO / "setup.cfg").read_text().splitlines()


def test_license_travels_with_the_distribution() -> None:
    """LICENSE is MIT, and the metadata names it as the licence file."""
    meta = metadata.metadata("pgtls")
    assert meta["License"] == "MIT"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the pgtls authors\n")
