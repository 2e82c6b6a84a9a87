"""
scripts/install staged with ``--root DIR`` (issue 16): the virtual
environment in DIR/opt/pgtls runs twistd with the pgtls plugin and names
/opt/pgtls, not DIR, wherever it names itself; the units in
DIR/etc/systemd/system pass ``systemd-analyze verify --root=DIR`` with the
programs they run present in the stage; the pgtls user goes into
DIR/etc/passwd; a second run upgrades in place and leaves a data directory
alone.

pip installs from the package index (or its cache), as scripts/setup.sh
does.  The first install takes some 20 s, the second some 10 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pgtls
from pgtls.admin import initdir

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/pgtls"
INSTALL_TIMEOUT = 600
TIMEOUT = 60
# Installing the user into DIR/etc/passwd takes useradd --root, which chroots.
AS_ROOT = os.geteuid() == 0


@dataclass
class Staged:
    root: Path
    first: subprocess.CompletedProcess[str]

    @property
    def venv(self) -> Path:
        return self.root / PREFIX.lstrip("/")

    def python(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the staged interpreter (the scripts' '#!' names /opt/pgtls)."""
        return subprocess.run(
            [str(self.venv / "bin" / "python"), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.root,
        )


def install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )


def analyzable_root(root: Path) -> None:
    """
    What ``systemd-analyze verify --root`` needs besides pgtls's units:
    systemd's own units (the default dependencies) and the kill of
    ExecReload=.
    """
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    kill = shutil.which("kill")
    assert kill is not None
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(kill, root / "usr/bin/kill")


def minimal_etc(root: Path) -> None:
    """The account files of a root with only root in them."""
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    root = tmp_path_factory.mktemp("root")
    analyzable_root(root)
    if AS_ROOT:
        minimal_etc(root)
    first = install("--root", str(root))
    assert first.returncode == 0, first.stdout + first.stderr
    yield Staged(root, first)
    shutil.rmtree(root)


def test_help() -> None:
    """--help says what it does and exits 0; an unknown argument is a usage error."""
    done = install("--help")
    assert (done.returncode, done.stderr) == (0, ""), done
    assert "Usage: bash scripts/install [--root DIR]" in done.stdout
    assert "constraints/tested.txt" in done.stdout
    done = install("--prefix", "/usr")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "unknown argument: --prefix" in done.stderr


def test_staged_units_verify(staged: Staged) -> None:
    """
    The installed units pass systemd-analyze verify in the stage, which
    holds the programs they start (at /opt/pgtls/bin, found under --root).
    """
    units = staged.root / "etc/systemd/system"
    installed = sorted(p.name for p in units.iterdir())
    repository = sorted(
        p.name for pattern in ("*.service", "*.socket") for p in (REPO / "etc").glob(pattern)
    )
    assert installed == repository
    service = (units / "pgtls.service").read_text()
    programs = re.findall(r"^Exec\w*=[-@:+!]*(\S+)", service, flags=re.MULTILINE)
    assert f"{PREFIX}/bin/pgtls" in programs and f"{PREFIX}/bin/twistd" in programs
    for program in programs:
        if program.startswith(PREFIX):
            assert os.access(staged.root / program.lstrip("/"), os.X_OK), program
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not found: install Debian's systemd package"
    done = subprocess.run(
        [analyze, "verify", f"--root={staged.root}", *(str(units / name) for name in installed)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_staged_twistd_lists_pgtls(staged: Staged) -> None:
    """The staged twistd finds the pgtls plugin; the staged pgtls runs."""
    done = staged.python(str(staged.venv / "bin" / "twistd"), "--help")
    assert done.returncode == 0, done
    assert re.search(r"^\s+pgtls\s+PostgreSQL SSL front door", done.stdout, re.MULTILINE), done
    done = staged.python(str(staged.venv / "bin" / "twistd"), "pgtls", "--help")
    assert done.returncode == 0, done
    assert "  twistd --nodaemon --pidfile= pgtls -D /var/lib/pgtls\n" in done.stdout
    done = staged.python(str(staged.venv / "bin" / "pgtls"), "--version")
    assert (done.returncode, done.stdout) == (0, f"pgtls {pgtls.__version__}\n"), done


def test_staged_init_writes_the_sample_files(staged: Staged, tmp_path: Path) -> None:
    """
    The staged pgtls has its package data: ``pgtls init`` writes the sample
    postgresql.conf, pg_hba.conf and pg_ident.conf from pgtls/admin/templates,
    exactly as the source tree does.
    """
    datadir = tmp_path / "data"
    done = staged.python(str(staged.venv / "bin" / "pgtls"), "init", str(datadir))
    assert done.returncode == 0, done
    assert (datadir / "pg_hba.conf").read_text() == initdir.pg_hba_conf_text()
    assert (datadir / "pg_ident.conf").read_text() == initdir.pg_ident_conf_text()
    assert (datadir / "postgresql.conf").read_text() == initdir.postgresql_conf_text(
        initdir.InitOptions()
    )


def test_staged_tree_names_its_final_place(staged: Staged) -> None:
    """
    Nothing in the stage names the staging directory: the scripts' '#!'
    lines name /opt/pgtls/bin/python, pyvenv.cfg /opt/pgtls, and the link
    in /usr/local/bin points to /opt/pgtls/bin/pgtls.
    """
    for name in ("pgtls", "twistd"):
        first = (staged.venv / "bin" / name).read_text().splitlines()[0]
        assert first == f"#!{PREFIX}/bin/python", name
    assert f"command = /usr/bin/python3 -m venv {PREFIX}" in (
        (staged.venv / "pyvenv.cfg").read_text().splitlines()
    )
    assert os.readlink(staged.root / "usr/local/bin/pgtls") == f"{PREFIX}/bin/pgtls"
    mentions = [
        path
        for path in staged.venv.rglob("*")
        if path.is_file() and not path.is_symlink() and bytes(staged.root) in path.read_bytes()
    ]
    assert mentions == []


def test_staged_user(staged: Staged) -> None:
    """
    With DIR/etc/passwd (and root, for useradd --root), the system user
    pgtls is added there; without, the installer says it did not add it.
    """
    if AS_ROOT:
        users = (staged.root / "etc/passwd").read_text().splitlines()
        entry = next(line for line in users if line.startswith("pgtls:"))
        fields = entry.split(":")
        assert int(fields[2]) < 1000, entry
        assert fields[5:] == ["/var/lib/pgtls", "/usr/sbin/nologin"], entry
    else:
        assert "the system user pgtls was not created" in staged.first.stderr


def test_next_steps(staged: Staged) -> None:
    """The installer ends with what to do next."""
    out = staged.first.stdout
    assert f"is installed in {staged.root}{PREFIX}" in out
    assert "  pgtls init /var/lib/pgtls --upstream" in out
    assert "  chown -R pgtls: /var/lib/pgtls" in out
    assert "  systemctl enable --now pgtls" in out


def test_second_run_upgrades_in_place(staged: Staged) -> None:
    """
    Run again on the same stage, the installer reinstalls pgtls (a damaged
    module is whole again), keeps the user, and leaves a data directory as
    it was; the units still verify and twistd still lists pgtls.
    """
    module = next(staged.venv.glob("lib/python3*/site-packages/pgtls/__init__.py"))
    text = module.read_text()
    module.write_text("raise SystemExit('damaged')\n")
    datadir = staged.root / "var/lib/pgtls"
    datadir.mkdir(parents=True)
    (datadir / "postgresql.conf").write_text("port = 5433\n")
    passwd = (staged.root / "etc/passwd").read_text() if AS_ROOT else None

    again = install("--root", str(staged.root))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "creating the virtual environment" not in again.stderr
    assert module.read_text() == text
    assert [p.name for p in datadir.iterdir()] == ["postgresql.conf"]
    assert (datadir / "postgresql.conf").read_text() == "port = 5433\n"
    if AS_ROOT:
        assert (staged.root / "etc/passwd").read_text() == passwd
    test_staged_units_verify(staged)
    test_staged_twistd_lists_pgtls(staged)
    test_staged_tree_names_its_final_place(staged)
