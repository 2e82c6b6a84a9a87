"""
The distribution's metadata: its version is ``pgtls.__version__`` (kept in
that one place; setup.cfg reads it), and it carries the MIT licence text.
"""

from __future__ import annotations

import configparser
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


def test_setup_cfg_ships_every_package_and_template() -> None:
    """
    setup.cfg lists every package under pgtls (a non-editable install has
    only those) and its package data takes every sample file in
    pgtls/admin/templates, which ``pgtls init`` writes.
    """
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    packages = set(setup["options"]["packages"].split())
    inits = (REPO / "pgtls").rglob("__init__.py")
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in inits}
    assert on_disk <= packages
    patterns = setup["options.package_data"]["pgtls.admin"].split()
    admin = REPO / "pgtls" / "admin"
    shipped = {path for pattern in patterns for path in admin.glob(pattern)}
    templates = set((admin / "templates").iterdir())
    assert templates
    assert templates <= shipped
